//! `execute`: one program in a sandbox, ephemeral (a fresh sandbox started for the call) or
//! cached (a warm one from a pool, or a language context), recorded per tenant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faas_api::{ExecStatus, ExecuteRequest, ExecutionResult, Mode, Usage};
use faas_sandbox::{
    ExecRequest, FileSpec, LaunchSpec, Limits, OutputChunk, RunEnd, RunIo, RunOutcome, RunRequest,
    signal_name,
};
use tokio::sync::{mpsc, oneshot};

use crate::plan::Plan;
use crate::pool::{PoolKey, discard};
use crate::{Engine, EngineError, Tenant};

/// Optional live input and output of a run, for streaming callers.
#[derive(Debug, Default)]
pub struct Streams {
    /// Output as it is produced.
    pub sink: Option<mpsc::UnboundedSender<OutputChunk>>,
    /// Stdin as it arrives; stdin closes when this closes.
    pub stdin: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    /// Dropping the sender kills the run.
    pub cancel: Option<oneshot::Receiver<()>>,
    /// Signals for the run's processes (persistent instances).
    pub signals: Option<mpsc::UnboundedReceiver<i32>>,
}

/// How long a run may take before it is recorded as running.
const RUNNING_RECORD_AFTER: Duration = Duration::from_millis(100);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Engine {
    /// Runs one call to its end on a task of its own: a caller that goes away (a dropped
    /// HTTP request) neither loses the record and charge of a run under way nor leaves an
    /// execution's instances behind. Streaming callers cancel through `Streams::cancel`.
    pub async fn execute(
        self: &std::sync::Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        let (engine, tenant) = (std::sync::Arc::clone(self), tenant.clone());
        tokio::spawn(async move { Box::pin(engine.execute_here(&tenant, req, streams)).await })
            .await
            .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
    }

    async fn execute_here(
        self: &std::sync::Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        if matches!(req.mode, Mode::Checkpointed | Mode::Branched) {
            return Box::pin(self.execute_stateful(tenant, req, streams)).await;
        }
        let plan = self.plan(req)?;
        // A context's sandbox runs already: the call starts none, but it is charged.
        let _load = match plan.context_id {
            None => Some(self.admit_tenant(tenant, 1, plan.limits.memory_mb).await?),
            Some(_) => {
                self.check_spend(tenant, &self.quotas(&tenant.0).await?).await?;
                None
            }
        };
        let _permit = self.admit()?;
        let mode = if plan.context_id.is_some() { Mode::Cached } else { plan.mode };
        metrics::counter!("faas_executions_total", "mode" => mode.as_str()).increment(1);
        let record = new_record(mode, &plan.image.name, plan.limits);
        let io = run_io(&plan, streams);
        let id = record.id.clone();
        // Boxed: the run's future is deep (sandbox, agent, pools) and would otherwise sit on
        // the worker's stack.
        self.record_run(tenant, record, Box::pin(self.run_plan(tenant, id, plan, io))).await
    }

    /// A slot under the concurrent-sandbox limit, or 503.
    pub(crate) fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, EngineError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| EngineError::Overloaded { limit: self.config.max_concurrent_sandboxes })
    }

    /// Runs `run` and keeps its record. A run still going after RUNNING_RECORD_AFTER is
    /// recorded as running, so a crash leaves a `lost` record behind; a quicker one is
    /// written once, with its result.
    pub(crate) async fn record_run(
        &self,
        tenant: &Tenant,
        mut record: ExecutionResult,
        run: impl std::future::Future<Output = Result<RunOutcome, EngineError>>,
    ) -> Result<ExecutionResult, EngineError> {
        tokio::pin!(run);
        let mut recorded = false;
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(RUNNING_RECORD_AFTER) => {
                let (inserted, outcome) = tokio::join!(self.store.insert_execution(&tenant.0, &record, None), &mut run);
                inserted?;
                recorded = true;
                outcome
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                if recorded {
                    // No result will come: the record must not stay "running".
                    record.status = ExecStatus::Lost;
                    record.stderr = format!("faas: the run failed: {e}");
                    self.store.finish_execution(&record, None).await?;
                }
                return Err(e);
            }
        };
        fill_result(&mut record, outcome);
        // The result and its charge are written together: a crash loses both or neither.
        let charge = crate::metering::execution_charge(tenant, &record);
        if recorded {
            self.store.finish_execution(&record, charge.as_ref()).await?;
        } else {
            self.store.insert_execution(&tenant.0, &record, charge.as_ref()).await?;
        }
        Ok(record)
    }

    async fn run_plan(
        &self,
        tenant: &Tenant,
        id: String,
        plan: Plan,
        io: RunIo,
    ) -> Result<RunOutcome, EngineError> {
        let timeout = Duration::from_millis(plan.limits.timeout_ms);
        if let Some(context) = &plan.context_id {
            let code = plan.code.clone().unwrap_or_default();
            return self.run_in_context(tenant, context, code, timeout, io).await;
        }
        match plan.mode {
            Mode::Cached => Box::pin(self.run_cached(tenant, plan, io)).await,
            _ => Box::pin(self.run_ephemeral(id, plan, io)).await,
        }
    }

    async fn run_ephemeral(
        &self,
        id: String,
        plan: Plan,
        io: RunIo,
    ) -> Result<RunOutcome, EngineError> {
        metrics::counter!("faas_sandbox_starts_total", "mode" => "ephemeral").increment(1);
        let mut files = Vec::new();
        let mut blob = Vec::new();
        for (path, content) in plan.files {
            files.push(FileSpec {
                path,
                mode: 0o644,
                offset: blob.len() as u64,
                len: content.len() as u64,
            });
            blob.extend_from_slice(&content);
        }
        let request = RunRequest {
            id,
            spec: LaunchSpec {
                argv: plan.argv,
                env: plan.env,
                workdir: plan.workdir,
                hostname: "sandbox".into(),
                rootfs: plan.image.rootfs,
                binds: plan.image.binds,
                scratch_bytes: self.config.limits.scratch_mb << 20,
                files,
                uid: self.config.sandbox_uid,
                gid: self.config.sandbox_gid,
                max_file_bytes: self.config.limits.max_file_mb << 20,
                max_open_files: self.config.limits.max_open_files,
                disk_image: None,
                agent: None,
            },
            blob,
            limits: Limits {
                memory_bytes: plan.limits.memory_mb << 20,
                cpus: plan.limits.cpu,
                // One more than asked for: the sandbox's PID 1 counts too.
                pids: plan.limits.pids + 1,
            },
            timeout: Duration::from_millis(plan.limits.timeout_ms),
            io,
        };
        Ok(self.sandboxes.run(request).await?)
    }

    async fn run_cached(
        &self,
        tenant: &Tenant,
        plan: Plan,
        io: RunIo,
    ) -> Result<RunOutcome, EngineError> {
        let key = PoolKey::new(tenant, &plan.image, &plan.limits, plan.reuse.clone());
        let (sandbox, hit) = self.pools.checkout(&key, &plan.image).await?;
        let result = if hit { "hit" } else { "miss" };
        metrics::counter!("faas_pool_checkouts_total", "result" => result).increment(1);
        for (path, content) in &plan.files {
            if let Err(e) = sandbox.write_file(path, content, 0o644).await {
                discard(sandbox);
                return Err(e.into());
            }
        }
        let request = ExecRequest {
            argv: plan.argv,
            env: plan.env,
            confine: self.confine(&plan.workdir),
            timeout: Duration::from_millis(plan.limits.timeout_ms),
            io,
        };
        let outcome = sandbox.exec(request).await;
        match (&plan.reuse, &outcome) {
            (Some(_), Ok(_)) => self.pools.checkin(&key, sandbox).await,
            _ => discard(sandbox),
        }
        Ok(outcome?)
    }

    pub async fn execution(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<ExecutionResult, EngineError> {
        self.store
            .execution(&tenant.0, id)
            .await?
            .ok_or_else(|| EngineError::NotFound { kind: "execution", id: id.to_owned() })
    }
}

/// A new record, status running, for a run about to start.
pub(crate) fn new_record(
    mode: Mode,
    image: &str,
    limits: faas_api::AppliedLimits,
) -> ExecutionResult {
    ExecutionResult {
        id: format!("ex_{}", uuid::Uuid::now_v7().simple()),
        status: ExecStatus::Running,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration_ms: 0.0,
        usage: Usage::default(),
        limits,
        mode,
        image: image.to_owned(),
        created_at_ms: now_ms(),
        snapshot_id: None,
        branches: Vec::new(),
    }
}

pub(crate) fn run_io(plan: &Plan, streams: Streams) -> RunIo {
    RunIo {
        stdin: plan.stdin.clone(),
        stdin_stream: streams.stdin,
        sink: streams.sink,
        output_limit: plan.limits.output_bytes as usize,
        cancel: streams.cancel,
        signals: streams.signals,
    }
}

fn fill_result(record: &mut ExecutionResult, outcome: RunOutcome) {
    let oom = outcome.usage.oom_kills > 0;
    let mut stderr = outcome.stderr;
    let (status, exit_code, signal) = match outcome.end {
        RunEnd::TimedOut => (ExecStatus::Timeout, None, Some(signal_name(libc::SIGKILL))),
        RunEnd::Exited(code) if oom => (ExecStatus::Oom, Some(code), None),
        RunEnd::Signaled(sig) if oom => (ExecStatus::Oom, None, Some(signal_name(sig))),
        RunEnd::Exited(code) => (ExecStatus::Exited, Some(code), None),
        RunEnd::Signaled(sig) => (ExecStatus::Signaled, None, Some(signal_name(sig))),
        RunEnd::NotStarted { stage, errno } => {
            // What a shell would say and return: 127 not found, 126 found but not runnable.
            let reason = std::io::Error::from_raw_os_error(errno);
            stderr
                .extend_from_slice(format!("faas: {}: {reason}\n", not_started(&stage)).as_bytes());
            (ExecStatus::Exited, Some(if errno == libc::ENOENT { 127 } else { 126 }), None)
        }
    };
    record.status = status;
    record.exit_code = exit_code;
    record.signal = signal;
    record.stdout = String::from_utf8_lossy(&outcome.stdout).into_owned();
    record.stderr = String::from_utf8_lossy(&stderr).into_owned();
    record.stdout_truncated = outcome.stdout_truncated;
    record.stderr_truncated = outcome.stderr_truncated;
    record.duration_ms = (outcome.wall.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    record.usage = Usage {
        cpu_ms: (outcome.usage.cpu_ns as f64 / 1000.0).round() / 1000.0,
        peak_memory_bytes: outcome.usage.peak_memory_bytes,
    };
}

fn not_started(stage: &str) -> String {
    match stage {
        "exec" => "cannot run the program".into(),
        "chdir workdir" => "cannot enter the working directory".into(),
        other => format!("cannot start the program ({other})"),
    }
}
