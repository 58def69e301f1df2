//! Exec in a running instance: the same request and result as execute, in the instance's
//! sandbox, recorded as mode `persistent`.

use std::time::Duration;

use faas_api::{ExecuteRequest, ExecutionResult, InstanceExecRequest, Mode};
use faas_sandbox::ExecRequest;

use crate::execute::{Streams, new_record, run_io};
use crate::{Engine, EngineError, Tenant};

impl Engine {
    pub async fn instance_exec(
        &self,
        tenant: &Tenant,
        id: &str,
        req: InstanceExecRequest,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        if req.background {
            return Err(EngineError::Unsupported {
                what: "background processes".into(),
                why: "this server runs instance commands in the foreground only so far; leave background out".into(),
            });
        }
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        let instance = live.record();
        let mut env = instance.env.clone();
        env.extend(req.env);
        let plan = self.plan(ExecuteRequest {
            command: req.command,
            code: req.code,
            language: req.language,
            image: Some(instance.image.clone()),
            stdin: req.stdin,
            env,
            workdir: req.workdir,
            timeout_ms: req.timeout_ms,
            ..ExecuteRequest::default()
        })?;
        let mut limits = plan.limits;
        limits.memory_mb = instance.limits.memory_mb;
        limits.cpu = instance.limits.cpu;
        limits.pids = instance.limits.pids;
        let record = new_record(Mode::Persistent, &instance.image, limits);
        let io = run_io(&plan, streams);
        let run = async {
            for (path, content) in &plan.files {
                sandbox.write_file(path, content, 0o644).await?;
            }
            let request = ExecRequest {
                argv: plan.argv.clone(),
                env: plan.env.clone(),
                confine: self.confine(&plan.workdir),
                timeout: Duration::from_millis(plan.limits.timeout_ms),
                io,
            };
            Ok(sandbox.exec(request).await?)
        };
        let result = self.record_run(tenant, record, Box::pin(run)).await;
        live.touch();
        result
    }
}
