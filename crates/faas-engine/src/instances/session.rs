//! Interactive sessions in a running instance: the terminal WebSocket and SSH channels.
//! Their output streams to the client and is neither kept nor recorded as an execution;
//! the instance they run in is what is accounted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use faas_api::{Command, InstanceExecRequest};
use faas_sandbox::{PtySize, Session, SessionRequest};

use super::Live;
use crate::{Engine, EngineError, Tenant};

/// The shell of an interactive session without a command: bash where the image has it.
const LOGIN_SHELL: &str = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";

/// What to run interactively.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    /// A shell command line; `None` for a login shell.
    pub command: Option<String>,
    /// A terminal of this size; `None` for plain pipes (`ssh host cmd` without `-t`).
    pub pty: Option<PtySize>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

/// A session in an instance; while it is open the instance does not idle out.
pub struct InstanceSession {
    pub session: Session,
    live: Arc<Live>,
}

impl Drop for InstanceSession {
    fn drop(&mut self) {
        self.live.attached.fetch_sub(1, Ordering::Relaxed);
        self.live.touch();
    }
}

impl Engine {
    pub async fn instance_session(
        &self,
        tenant: &Tenant,
        id: &str,
        spec: SessionSpec,
    ) -> Result<InstanceSession, EngineError> {
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        let mut env = spec.env;
        if spec.pty.is_some() {
            env.entry("TERM".into()).or_insert_with(|| "xterm-256color".into());
        }
        let command = Command::Shell(spec.command.unwrap_or_else(|| LOGIN_SHELL.into()));
        let plan = self.plan_instance_exec(
            &live,
            InstanceExecRequest {
                command: Some(command),
                env,
                workdir: spec.workdir,
                ..InstanceExecRequest::default()
            },
        )?;
        let request = SessionRequest {
            argv: plan.argv,
            env: plan.env,
            confine: self.confine(&plan.workdir),
            pty: spec.pty,
        };
        let session = sandbox.session(request).await?;
        live.attached.fetch_add(1, Ordering::Relaxed);
        live.touch();
        Ok(InstanceSession { session, live })
    }
}
