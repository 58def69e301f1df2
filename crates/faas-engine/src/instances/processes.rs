//! Background processes of an instance: `exec` with `background: true` answers at once with
//! a process id; the process runs on, its output kept (up to the output cap) and broadcast
//! to whoever streams it, until it ends, is killed, or the instance stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_api::{ExecutionResult, ProcessInfo};
use faas_sandbox::{OutputChunk, signal_name};
use tokio::sync::{broadcast, mpsc, watch};

use crate::execute::now_ms;
use crate::{Engine, EngineError, Tenant};

/// The most processes one instance keeps a record of (finished ones are dropped first).
const MAX_PROCESSES: usize = 64;

pub(crate) struct Process {
    pub id: String,
    pub argv: Vec<String>,
    pub started_at_ms: u64,
    /// Output so far, for streams that join late.
    pub output: Mutex<Vec<OutputChunk>>,
    pub live: broadcast::Sender<OutputChunk>,
    pub result: watch::Receiver<Option<ExecutionResult>>,
    pub signals: mpsc::UnboundedSender<i32>,
}

impl Process {
    pub fn info(&self) -> ProcessInfo {
        let result = self.result.borrow().clone();
        ProcessInfo {
            id: self.id.clone(),
            argv: self.argv.clone(),
            status: if result.is_some() { "finished" } else { "running" }.into(),
            started_at_ms: self.started_at_ms,
            result,
        }
    }
}

/// A background process being followed: what it printed so far, what comes next, and
/// its result once it ends.
pub struct Following {
    pub past: Vec<OutputChunk>,
    pub live: broadcast::Receiver<OutputChunk>,
    pub result: watch::Receiver<Option<ExecutionResult>>,
}

#[derive(Default)]
pub(crate) struct Processes {
    map: Mutex<HashMap<String, Arc<Process>>>,
}

impl Processes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a process, dropping the oldest finished ones past the cap.
    pub fn insert(&self, process: Arc<Process>) -> Result<(), EngineError> {
        let mut map = self.lock();
        if map.len() >= MAX_PROCESSES {
            let mut finished: Vec<(u64, String)> = map
                .values()
                .filter(|p| p.result.borrow().is_some())
                .map(|p| (p.started_at_ms, p.id.clone()))
                .collect();
            finished.sort();
            for (_, id) in finished.into_iter().take(map.len() + 1 - MAX_PROCESSES) {
                map.remove(&id);
            }
            if map.len() >= MAX_PROCESSES {
                return Err(EngineError::Conflict {
                    message: format!(
                        "an instance runs at most {MAX_PROCESSES} background processes"
                    ),
                });
            }
        }
        map.insert(process.id.clone(), process);
        Ok(())
    }
}

/// `SIGTERM`, `TERM` or `15`.
fn parse_signal(value: Option<&serde_json::Value>) -> Result<i32, EngineError> {
    let bad = || EngineError::Invalid {
        field: "signal",
        reason: "a signal name such as SIGTERM, or its number".into(),
    };
    match value {
        None => Ok(libc::SIGKILL),
        Some(serde_json::Value::Number(n)) => {
            let n = n.as_i64().ok_or_else(bad)?;
            if (1..=64).contains(&n) { Ok(n as i32) } else { Err(bad()) }
        }
        Some(serde_json::Value::String(name)) => {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
            (1..32).find(|n| signal_name(*n) == full).ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

impl Engine {
    fn process(&self, tenant: &Tenant, id: &str, pid: &str) -> Result<Arc<Process>, EngineError> {
        let live = self.live(tenant, id)?;
        let process = live.processes.lock().get(pid).cloned();
        process.ok_or_else(|| EngineError::NotFound { kind: "process", id: pid.to_owned() })
    }

    pub fn list_processes(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Vec<ProcessInfo>, EngineError> {
        let live = self.live(tenant, id)?;
        let mut list: Vec<ProcessInfo> = live.processes.lock().values().map(|p| p.info()).collect();
        list.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        Ok(list)
    }

    pub fn process_info(
        &self,
        tenant: &Tenant,
        id: &str,
        pid: &str,
    ) -> Result<ProcessInfo, EngineError> {
        Ok(self.process(tenant, id, pid)?.info())
    }

    /// Waits up to `timeout` for the process to end; answers with its state either way.
    pub async fn wait_process(
        &self,
        tenant: &Tenant,
        id: &str,
        pid: &str,
        timeout: Duration,
    ) -> Result<ProcessInfo, EngineError> {
        let process = self.process(tenant, id, pid)?;
        let mut result = process.result.clone();
        let _ = tokio::time::timeout(timeout, result.wait_for(Option::is_some)).await;
        Ok(process.info())
    }

    /// Sends a signal (a name such as `SIGTERM`, or a number; SIGKILL when `None`).
    pub fn signal_process(
        &self,
        tenant: &Tenant,
        id: &str,
        pid: &str,
        signal: Option<&serde_json::Value>,
    ) -> Result<ProcessInfo, EngineError> {
        let signal = parse_signal(signal)?;
        let process = self.process(tenant, id, pid)?;
        if process.result.borrow().is_some() {
            return Err(EngineError::Conflict { message: format!("process {pid} has ended") });
        }
        let _ = process.signals.send(signal);
        Ok(process.info())
    }

    /// The output so far and a subscription to what comes next, for streaming.
    pub fn follow_process(
        &self,
        tenant: &Tenant,
        id: &str,
        pid: &str,
    ) -> Result<Following, EngineError> {
        let process = self.process(tenant, id, pid)?;
        // Subscribe under the output lock, so no chunk falls between the copy and the feed.
        let output = process.output.lock().unwrap_or_else(|e| e.into_inner());
        let live = process.live.subscribe();
        Ok(Following { past: output.clone(), live, result: process.result.clone() })
    }
}

/// A new process record and the channels its run feeds.
pub(crate) fn new_process(
    argv: Vec<String>,
) -> (Arc<Process>, watch::Sender<Option<ExecutionResult>>, mpsc::UnboundedReceiver<i32>) {
    let (result_tx, result_rx) = watch::channel(None);
    let (signals_tx, signals_rx) = mpsc::unbounded_channel();
    let (live, _) = broadcast::channel(256);
    let process = Arc::new(Process {
        id: format!("proc_{}", uuid::Uuid::now_v7().simple()),
        argv,
        started_at_ms: now_ms(),
        output: Mutex::new(Vec::new()),
        live,
        result: result_rx,
        signals: signals_tx,
    });
    (process, result_tx, signals_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal(None).ok(), Some(libc::SIGKILL));
        assert_eq!(parse_signal(Some(&serde_json::json!("SIGTERM"))).ok(), Some(libc::SIGTERM));
        assert_eq!(parse_signal(Some(&serde_json::json!("int"))).ok(), Some(libc::SIGINT));
        assert_eq!(parse_signal(Some(&serde_json::json!(9))).ok(), Some(9));
        assert!(parse_signal(Some(&serde_json::json!("SIGNOPE"))).is_err());
        assert!(parse_signal(Some(&serde_json::json!(0))).is_err());
    }
}
