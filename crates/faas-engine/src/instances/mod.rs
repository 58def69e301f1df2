//! Persistent instances: long-running sandboxes a user or an agent works in, with exec and
//! files, that keep their files across stop and start, and across a crash of the server.
//!
//! An instance's writable layer is an ext4 image in `<data>/instances/<id>/disk.img`, as
//! large as its `disk_mb` (the quota), mounted inside the sandbox's own mount namespace.
//! The store holds each instance's record; this registry holds the live sandbox.

mod access;
mod archive;
mod contexts;
mod exec;
mod files;
mod lifecycle;
mod processes;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_api::{Instance, InstanceStatus, TimeoutAction};
use faas_sandbox::AgentSandbox;

use crate::execute::now_ms;
use crate::{Engine, EngineError, Tenant};

use crate::metering::InstanceMeter;
pub use exec::InstanceExecAnswer;
pub use files::FileRead;
pub(crate) use lifecycle::{sandbox_id, start_mode, validate_metadata};
pub use processes::Following;
pub use session::{InstanceSession, SessionSpec};

/// An instance the server knows, with its sandbox while it runs.
pub(crate) struct Live {
    pub(crate) tenant: String,
    record: Mutex<Instance>,
    sandbox: Mutex<Option<Arc<AgentSandbox>>>,
    /// Serialises create, start, stop, delete and snapshots of this instance.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    processes: processes::Processes,
    /// Its language contexts (their interpreters live in the sandbox; a snapshot carries
    /// them, a stop ends them).
    pub(crate) contexts: Mutex<Vec<faas_api::ContextInfo>>,
    /// Open interactive sessions (terminals, SSH channels): while any is, the instance is
    /// in use, not idle.
    attached: std::sync::atomic::AtomicUsize,
    /// What has been charged of its running sandbox, up to when.
    pub(crate) meter: Mutex<Option<InstanceMeter>>,
    /// Bytes sent out through its port proxies and not charged yet.
    pub(crate) egress: Arc<std::sync::atomic::AtomicU64>,
}

impl Live {
    pub(crate) fn new(tenant: String, record: Instance) -> Self {
        Self {
            tenant,
            record: Mutex::new(record),
            sandbox: Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            processes: Default::default(),
            contexts: Default::default(),
            attached: Default::default(),
            meter: Mutex::new(None),
            egress: Default::default(),
        }
    }

    pub(crate) fn record(&self) -> Instance {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn sandbox(&self) -> Option<Arc<AgentSandbox>> {
        self.sandbox.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this is an execution's own instance (checkpointed or branched run).
    pub(crate) fn is_scratch(&self) -> bool {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.metadata.contains_key(crate::stateful::SCRATCH)
    }

    pub(crate) fn touch(&self) {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).last_activity_ms = now_ms();
    }
}

#[derive(Default)]
pub(crate) struct Instances {
    live: Mutex<HashMap<String, Arc<Live>>>,
}

impl Instances {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many instances `tenant` holds (not counting executions' own).
    pub(crate) fn held_by(&self, tenant: &str) -> usize {
        held_in(&self.lock(), tenant)
    }
}

/// How many instances of `tenant` a registry (locked by the caller) holds, not counting
/// executions' own.
pub(crate) fn held_in(live: &HashMap<String, Arc<Live>>, tenant: &str) -> usize {
    live.values().filter(|l| l.tenant == tenant && !l.is_scratch()).count()
}

/// Whether the lifecycle allows `from -> to`.
fn allowed(from: InstanceStatus, to: InstanceStatus) -> bool {
    use InstanceStatus::*;
    matches!(
        (from, to),
        (Creating, Running | Failed)
            | (Running, Stopping | Failed)
            | (Stopping, Stopped | Failed)
            | (Stopped | Failed, Creating)
            | (Creating | Running | Stopping | Stopped | Failed, Deleted)
    )
}

impl Engine {
    /// The tenant's live instance; another tenant's is not found.
    pub(crate) fn live(&self, tenant: &Tenant, id: &str) -> Result<Arc<Live>, EngineError> {
        self.instances
            .lock()
            .get(id)
            .filter(|l| l.tenant == tenant.0)
            .cloned()
            .ok_or_else(|| EngineError::NotFound { kind: "instance", id: id.to_owned() })
    }

    /// Moves an instance to `to` (409 when its state does not allow it) and records it;
    /// leaving `running`, with the charge of its last period, in the same transaction.
    pub(crate) async fn transition(
        &self,
        live: &Live,
        to: InstanceStatus,
        error: Option<String>,
    ) -> Result<Instance, EngineError> {
        let from = live.record().status;
        // Only a move that will happen ends the meter (a refused one leaves it running).
        let charge = match from == InstanceStatus::Running && allowed(from, to) {
            true => self.instance_charge(live, true),
            false => None,
        };
        self.transition_charged(live, to, error, charge).await
    }

    /// As `transition`, with the charge read by the caller (before it ended the sandbox).
    pub(crate) async fn transition_charged(
        &self,
        live: &Live,
        to: InstanceStatus,
        error: Option<String>,
        charge: Option<faas_store::Metered>,
    ) -> Result<Instance, EngineError> {
        let record = {
            let mut record = live.record.lock().unwrap_or_else(|e| e.into_inner());
            if !allowed(record.status, to) {
                return Err(EngineError::Conflict {
                    message: format!(
                        "instance {} is {}; it cannot become {}",
                        record.id,
                        record.status.as_str(),
                        to.as_str()
                    ),
                });
            }
            record.status = to;
            if to == InstanceStatus::Running {
                record.started_at_ms = Some(now_ms());
                record.last_activity_ms = now_ms();
                record.error = None;
            }
            if error.is_some() {
                record.error = error;
            }
            record.clone()
        };
        self.store.put_instance_charged(&live.tenant, &record, charge.as_ref()).await?;
        if to == InstanceStatus::Running {
            self.open_meter(live);
        }
        self.count_running_instances();
        Ok(record)
    }

    /// The running instance's sandbox, or 409.
    pub(crate) fn running(&self, live: &Live) -> Result<Arc<AgentSandbox>, EngineError> {
        let record = live.record();
        match (record.status, live.sandbox()) {
            (InstanceStatus::Running, Some(sandbox)) if sandbox.is_alive() => Ok(sandbox),
            (status, _) => Err(EngineError::Conflict {
                message: format!(
                    "instance {} is {}; it must be running",
                    record.id,
                    status.as_str()
                ),
            }),
        }
    }

    /// After a restart: instances that were running when the server stopped are failed now
    /// (their sandboxes died with it), with their files kept for a later start.
    pub(crate) async fn recover_instances(&self) -> Result<(), EngineError> {
        for (tenant, mut record) in self.store.live_instances().await? {
            if record.metadata.contains_key(crate::stateful::SCRATCH) {
                // An execute's own instance, left by a crash: its run has no result.
                record.status = InstanceStatus::Deleted;
                self.store.put_instance(&tenant, &record).await?;
                let _ = std::fs::remove_dir_all(self.instance_dir(&record.id));
                continue;
            }
            if matches!(
                record.status,
                InstanceStatus::Creating | InstanceStatus::Running | InstanceStatus::Stopping
            ) {
                record.status = InstanceStatus::Failed;
                record.error = Some(
                    "the server stopped while the instance ran; its files are kept: start it again"
                        .into(),
                );
                self.store.put_instance(&tenant, &record).await?;
            }
            let id = record.id.clone();
            self.instances.lock().insert(id, Arc::new(Live::new(tenant, record)));
        }
        Ok(())
    }

    /// Applies TTLs and idle timeouts (called every second by the janitor).
    async fn expire_instances(&self) {
        let now = now_ms();
        let due: Vec<(Tenant, String, TimeoutAction)> = self
            .instances
            .lock()
            .values()
            .filter_map(|live| {
                let r = live.record();
                let ttl_due = r.ttl_seconds.is_some_and(|ttl| now >= r.created_at_ms + ttl * 1000);
                let idle_due = r.status == InstanceStatus::Running
                    && live.attached.load(std::sync::atomic::Ordering::Relaxed) == 0
                    && r.idle_timeout_seconds
                        .is_some_and(|idle| now >= r.last_activity_ms + idle * 1000);
                let actionable = match r.on_timeout {
                    TimeoutAction::Stop => r.status == InstanceStatus::Running,
                    TimeoutAction::Delete => r.status != InstanceStatus::Deleted,
                };
                ((ttl_due || idle_due) && actionable)
                    .then(|| (Tenant(live.tenant.clone()), r.id.clone(), r.on_timeout))
            })
            .collect();
        for (tenant, id, action) in due {
            let result = match action {
                TimeoutAction::Stop => self.stop_instance(&tenant, &id).await.map(drop),
                TimeoutAction::Delete => self.delete_instance(&tenant, &id).await,
            };
            if let Err(e) = result {
                tracing::warn!(instance = %id, error = %e, "timeout action failed");
            }
        }
    }

    /// Kills every instance's sandbox (shutdown); records say running and become failed
    /// (files kept) at the next start.
    pub(crate) async fn stop_all_instances(&self) {
        let lives: Vec<Arc<Live>> = self.instances.lock().values().cloned().collect();
        // Their last periods are charged before their cgroups go (the processes are
        // killed already; the counters stay until the cgroup is removed).
        let charges: Vec<_> =
            lives.iter().filter_map(|live| self.instance_charge(live, true)).collect();
        if !charges.is_empty()
            && let Err(e) = self.store.record_usage(charges).await
        {
            tracing::error!(error = %crate::error_chain(&e), "charging instances at shutdown");
        }
        let sandboxes: Vec<Arc<AgentSandbox>> = lives.iter().filter_map(|l| l.sandbox()).collect();
        for sandbox in sandboxes {
            let _ = sandbox.destroy().await;
        }
    }
}

/// Expires instances every second, for as long as the engine lives.
pub(crate) fn spawn_janitor(engine: std::sync::Weak<Engine>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(engine) = engine.upgrade() else { return };
            engine.expire_instances().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus::*;

    #[test]
    fn the_lifecycle_allows_only_its_moves() {
        assert!(allowed(Creating, Running));
        assert!(allowed(Running, Stopping));
        assert!(allowed(Stopping, Stopped));
        assert!(allowed(Stopped, Creating));
        assert!(allowed(Failed, Creating));
        assert!(allowed(Stopped, Deleted));
        assert!(!allowed(Stopped, Stopping));
        assert!(!allowed(Running, Creating));
        assert!(!allowed(Deleted, Creating));
        assert!(!allowed(Deleted, Deleted));
        assert!(!allowed(Creating, Stopped));
    }
}
