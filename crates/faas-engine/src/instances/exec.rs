//! Exec in a running instance: the same request and result as execute, in the instance's
//! sandbox, recorded as mode `persistent`; or, with `background`, a process that runs on.

use std::sync::Arc;
use std::time::Duration;

use faas_api::{
    AppliedLimits, ExecStatus, ExecuteRequest, ExecutionResult, InstanceExecRequest, Mode,
    ProcessInfo,
};
use faas_sandbox::{ExecRequest, OutputChunk};
use tokio::sync::mpsc;

use super::{Live, processes};
use crate::execute::{Streams, new_record, run_io};
use crate::plan::Plan;
use crate::{Engine, EngineError, Tenant};

/// A background process without a timeout of its own runs this long at most (the agent's
/// own ceiling).
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(7 * 86400);

/// What an instance exec answers: a result, or a started background process.
#[derive(Debug)]
pub enum InstanceExecAnswer {
    Finished(ExecutionResult),
    Started(ProcessInfo),
}

impl Engine {
    /// Runs a command in the instance and answers with its result; with `background`, starts
    /// it and answers at once with its process.
    pub async fn instance_exec(
        self: &Arc<Self>,
        tenant: &Tenant,
        id: &str,
        req: InstanceExecRequest,
        streams: Streams,
    ) -> Result<InstanceExecAnswer, EngineError> {
        if req.background {
            return self.start_background(tenant, id, req).map(InstanceExecAnswer::Started);
        }
        let result =
            self.instance_exec_with(tenant, id, req, streams, None, Mode::Persistent).await?;
        Ok(InstanceExecAnswer::Finished(result))
    }

    fn start_background(
        self: &Arc<Self>,
        tenant: &Tenant,
        id: &str,
        mut req: InstanceExecRequest,
    ) -> Result<ProcessInfo, EngineError> {
        let live = self.live(tenant, id)?;
        self.running(&live)?;
        req.background = false;
        // Without a timeout of its own, a background process runs until it ends or is killed.
        let timeout = req.timeout_ms.is_none().then_some(BACKGROUND_TIMEOUT);
        let argv = self.plan_instance_exec(&live, req.clone())?.argv;
        let (process, result_tx, signals) = processes::new_process(argv);
        live.processes.insert(Arc::clone(&process))?;
        let (sink, mut output) = mpsc::unbounded_channel::<OutputChunk>();
        let keeper = Arc::clone(&process);
        tokio::spawn(async move {
            while let Some(chunk) = output.recv().await {
                keeper.output.lock().unwrap_or_else(|e| e.into_inner()).push(chunk.clone());
                let _ = keeper.live.send(chunk);
            }
        });
        let engine = Arc::clone(self);
        let (tenant, id) = (tenant.clone(), id.to_owned());
        tokio::spawn(async move {
            let streams =
                Streams { sink: Some(sink), signals: Some(signals), ..Streams::default() };
            let run =
                engine.instance_exec_with(&tenant, &id, req, streams, timeout, Mode::Persistent);
            let result = match run.await {
                Ok(result) => result,
                Err(e) => {
                    let limits = AppliedLimits {
                        timeout_ms: 0,
                        memory_mb: 0,
                        cpu: 0.0,
                        pids: 0,
                        output_bytes: 0,
                    };
                    let mut result = new_record(Mode::Persistent, "", limits);
                    result.status = ExecStatus::Lost;
                    result.stderr = format!("faas: the process could not run to its end: {e}");
                    result
                }
            };
            let _ = result_tx.send(Some(result));
        });
        Ok(process.info())
    }

    pub(super) fn plan_instance_exec(
        &self,
        live: &Live,
        req: InstanceExecRequest,
    ) -> Result<Plan, EngineError> {
        let instance = live.record();
        let mut env = instance.env.clone();
        env.extend(req.env);
        self.plan(ExecuteRequest {
            context_id: req.context_id,
            command: req.command,
            code: req.code,
            language: req.language,
            image: Some(instance.image.clone()),
            stdin: req.stdin,
            env,
            workdir: req.workdir,
            timeout_ms: req.timeout_ms,
            ..ExecuteRequest::default()
        })
    }

    /// The run itself; `timeout` overrides the request's (background processes); `mode`
    /// is what the run is recorded as.
    pub(crate) async fn instance_exec_with(
        &self,
        tenant: &Tenant,
        id: &str,
        req: InstanceExecRequest,
        streams: Streams,
        timeout: Option<Duration>,
        mode: Mode,
    ) -> Result<ExecutionResult, EngineError> {
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        let instance = live.record();
        let plan = self.plan_instance_exec(&live, req)?;
        let mut limits = plan.limits;
        limits.memory_mb = instance.limits.memory_mb;
        limits.cpu = instance.limits.cpu;
        limits.pids = instance.limits.pids;
        let record = new_record(mode, &instance.image, limits);
        let io = run_io(&plan, streams);
        let timeout = timeout.unwrap_or(Duration::from_millis(plan.limits.timeout_ms));
        if let Some(context) = &plan.context_id {
            self.use_instance_context(&live, context)?;
            let code = plan.code.clone().unwrap_or_default();
            let run = async { Ok(sandbox.context_run(context, code, timeout, io).await?) };
            let result = self.record_run(tenant, record, Box::pin(run)).await;
            live.touch();
            return result;
        }
        let run = async {
            for (path, content) in &plan.files {
                sandbox.write_file(path, content, 0o644).await?;
            }
            let request = ExecRequest {
                argv: plan.argv.clone(),
                env: plan.env.clone(),
                confine: self.confine(&plan.workdir),
                timeout,
                io,
            };
            Ok(sandbox.exec(request).await?)
        };
        let result = self.record_run(tenant, record, Box::pin(run)).await;
        live.touch();
        result
    }
}
