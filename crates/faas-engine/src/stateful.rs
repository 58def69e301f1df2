//! The checkpointed and branched modes of execute. A run gets instances of its own (fresh,
//! or restored from a snapshot), marked as scratch so that a crash never leaves them
//! behind, and deleted when the call ends. Code with a language that has contexts runs in
//! one (a restored copy keeps its globals); checkpointed mode with `checkpoint_after`
//! snapshots the state a successful run leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use faas_api::{
    CreateInstanceRequest, CreateSnapshotRequest, ExecStatus, ExecuteRequest, ExecutionResult,
    InstanceContextRequest, InstanceExecRequest, Mode, RestoreSnapshotRequest,
};

use crate::execute::Streams;
use crate::plan::invalid;
use crate::{Engine, EngineError, Tenant};

/// The metadata key that marks an execute's own instance (its value: the mode). Tenants
/// cannot set `faas.` keys.
pub(crate) const SCRATCH: &str = "faas.execute";

pub(crate) fn mark_scratch(
    mut metadata: BTreeMap<String, String>,
    scratch: Option<&str>,
) -> BTreeMap<String, String> {
    if let Some(mode) = scratch {
        metadata.insert(SCRATCH.into(), mode.into());
    }
    metadata
}

impl Engine {
    pub(crate) async fn execute_stateful(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        self.check_stateful(&req)?;
        let count = if req.mode == Mode::Branched { req.count.unwrap_or(1) } else { 1 };
        // A run from a snapshot gets the snapshot's memory limit; a fresh one the request's.
        let memory_mb = match req.snapshot_id.as_ref().or(req.parent_snapshot.as_ref()) {
            Some(id) => self.snapshot(tenant, id).await?.limits.memory_mb,
            None => self.sandbox_limits(req.memory_mb, req.cpu, req.pids)?.memory_mb,
        };
        let _load = self.admit_tenant(tenant, u64::from(count), memory_mb).await?;
        if req.checkpoint_after {
            self.check_snapshot_storage(tenant).await?;
        }
        metrics::counter!("faas_executions_total", "mode" => req.mode.as_str())
            .increment(u64::from(count));
        let _permits =
            self.admission.clone().try_acquire_many_owned(count).map_err(|_| {
                EngineError::Overloaded { limit: self.config.max_concurrent_sandboxes }
            })?;
        if req.mode == Mode::Checkpointed {
            self.run_checkpointed(tenant, req, streams).await
        } else {
            self.run_branched(tenant, req, count, streams).await
        }
    }

    /// Everything a stateful run needs checked before any instance exists.
    fn check_stateful(&self, req: &ExecuteRequest) -> Result<(), EngineError> {
        if req.reuse || req.reuse_key.is_some() {
            return Err(invalid("reuse", "reuse applies to mode 'cached'"));
        }
        let from_snapshot = if req.mode == Mode::Checkpointed {
            if req.parent_snapshot.is_some() || req.count.is_some() {
                return Err(invalid(
                    "parent_snapshot",
                    "parent_snapshot and count go with mode 'branched'",
                ));
            }
            if !req.checkpoint_after && req.snapshot_id.is_none() {
                return Err(invalid(
                    "checkpoint_after",
                    "checkpointed mode needs checkpoint_after: true, a snapshot_id, or both",
                ));
            }
            req.snapshot_id.is_some()
        } else {
            if req.checkpoint_after || req.snapshot_id.is_some() {
                return Err(invalid(
                    "snapshot_id",
                    "checkpoint_after and snapshot_id go with mode 'checkpointed'; \
                     branched mode starts from parent_snapshot",
                ));
            }
            if req.parent_snapshot.is_none() {
                return Err(invalid("parent_snapshot", "branched mode needs parent_snapshot"));
            }
            let max = self.config.snapshots.max_branches;
            if req.count.is_some_and(|c| c == 0 || c > max) {
                return Err(invalid("count", format!("must be between 1 and {max}")));
            }
            true
        };
        let limits_given = req.memory_mb.is_some()
            || req.cpu.is_some()
            || req.pids.is_some()
            || req.image.is_some();
        if from_snapshot && limits_given {
            return Err(invalid(
                "image",
                "a run from a snapshot keeps the snapshot's image and limits (memory_mb, cpu, pids)",
            ));
        }
        if !from_snapshot && req.context_id.is_some() {
            return Err(invalid(
                "context_id",
                "a fresh run makes its own context; context_id names one of a snapshot's",
            ));
        }
        if req.checkpoint_after {
            self.criu()?;
        }
        // The command or code, environment, workdir and limits: as for any run.
        self.plan(ExecuteRequest {
            mode: Mode::Ephemeral,
            checkpoint_after: false,
            snapshot_id: None,
            parent_snapshot: None,
            count: None,
            ..req.clone()
        })?;
        Ok(())
    }

    async fn run_checkpointed(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        let scratch = Some(Mode::Checkpointed.as_str());
        let instance = match &req.snapshot_id {
            Some(snapshot) => {
                let restore = RestoreSnapshotRequest::default();
                self.restore_snapshot_as(tenant, snapshot, restore, scratch).await?
            }
            None => {
                let create = CreateInstanceRequest {
                    image: req.image.clone(),
                    memory_mb: req.memory_mb,
                    cpu: req.cpu,
                    pids: req.pids,
                    ..CreateInstanceRequest::default()
                };
                self.create_instance_as(tenant, create, scratch).await?
            }
        };
        let result = self.checkpointed_in(tenant, &instance.id, &req, streams).await;
        self.delete_scratch(tenant, &instance.id).await;
        result
    }

    async fn checkpointed_in(
        &self,
        tenant: &Tenant,
        id: &str,
        req: &ExecuteRequest,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        let mut result = self.run_in(tenant, id, req, streams, Mode::Checkpointed).await?;
        // Only a run that succeeded leaves a state worth keeping.
        if req.checkpoint_after
            && result.status == ExecStatus::Exited
            && result.exit_code == Some(0)
        {
            let snapshot = CreateSnapshotRequest {
                instance_id: id.to_owned(),
                name: Some(format!("after {}", result.id)),
                ..CreateSnapshotRequest::default()
            };
            result.snapshot_id = Some(self.create_snapshot(tenant, snapshot).await?.id);
            // Charged already, when the run's result was written.
            self.store.finish_execution(&result, None).await?;
        }
        Ok(result)
    }

    async fn run_branched(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: ExecuteRequest,
        count: u32,
        streams: Streams,
    ) -> Result<ExecutionResult, EngineError> {
        let parent = req.parent_snapshot.clone().unwrap_or_default();
        // A missing snapshot is one 404, not `count` of them.
        self.snapshot(tenant, &parent).await?;
        let mut tasks = tokio::task::JoinSet::new();
        // Streaming callers follow the first branch.
        let mut streams = Some(streams);
        for index in 0..count {
            let (engine, tenant, req, parent) =
                (Arc::clone(self), tenant.clone(), req.clone(), parent.clone());
            let streams =
                if index == 0 { streams.take().unwrap_or_default() } else { Streams::default() };
            tasks.spawn(async move {
                let restore = RestoreSnapshotRequest::default();
                let scratch = Some(Mode::Branched.as_str());
                let instance =
                    engine.restore_snapshot_as(&tenant, &parent, restore, scratch).await?;
                let result =
                    engine.run_in(&tenant, &instance.id, &req, streams, Mode::Branched).await;
                engine.delete_scratch(&tenant, &instance.id).await;
                result.map(|r| (index, r))
            });
        }
        let mut results = Vec::new();
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(result)) => results.push(result),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(faas_sandbox::RunError::Task(e).into())),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        results.sort_by_key(|(index, _)| *index);
        let branches: Vec<ExecutionResult> = results.into_iter().map(|(_, r)| r).collect();
        let mut first =
            branches.first().cloned().ok_or_else(|| invalid("count", "no branch ran"))?;
        first.branches = branches;
        Ok(first)
    }

    /// Runs the request's command or code in instance `id`, recorded as `mode`.
    async fn run_in(
        &self,
        tenant: &Tenant,
        id: &str,
        req: &ExecuteRequest,
        streams: Streams,
        mode: Mode,
    ) -> Result<ExecutionResult, EngineError> {
        let context_id = match (&req.context_id, &req.code, &req.language) {
            (Some(context), _, _) => Some(context.clone()),
            (None, Some(_), Some(language)) => {
                self.context_for(tenant, id, language, &req.env).await?
            }
            _ => None,
        };
        let exec = InstanceExecRequest {
            command: req.command.clone(),
            code: req.code.clone(),
            language: if context_id.is_some() { None } else { req.language.clone() },
            stdin: req.stdin.clone(),
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            timeout_ms: req.timeout_ms,
            background: false,
            context_id,
        };
        self.instance_exec_with(tenant, id, exec, streams, None, mode).await
    }

    /// The instance's context for `language`: the first it holds (a restored one keeps its
    /// globals) or a new one; None for a language without contexts (its code runs as a
    /// program, and only files carry state).
    async fn context_for(
        &self,
        tenant: &Tenant,
        id: &str,
        language: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<String>, EngineError> {
        let Ok(language) = crate::contexts::context_language(language) else {
            return Ok(None);
        };
        let held = self.instance_contexts(tenant, id)?;
        if let Some(context) = held.iter().find(|c| c.language == language) {
            return Ok(Some(context.id.clone()));
        }
        let create = InstanceContextRequest { language: language.into(), env: env.clone() };
        Ok(Some(self.create_instance_context(tenant, id, create).await?.id))
    }

    async fn delete_scratch(&self, tenant: &Tenant, id: &str) {
        if let Err(e) = self.delete_instance(tenant, id).await {
            tracing::warn!(instance = %id, error = %e, "deleting an execute's instance");
        }
    }
}
