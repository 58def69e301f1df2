//! Interactive processes in an agent sandbox: a terminal, an SSH channel. Unlike
//! [`AgentSandbox::exec`], nothing is collected: output goes to whoever reads the session,
//! as fast as they read it (the agent stops reading the program's output meanwhile), so a
//! long session that prints without end costs the host nothing.

use std::sync::Arc;

use faas_agent::protocol::{CHUNK, Confine, Event, PtySize, Request, Stream};
use tokio::sync::mpsc;

use crate::agent::{AgentClient, AgentError, Message};
use crate::agent_sandbox::AgentSandbox;
use crate::run::{RunEnd, RunError};

/// The longest a session may run (the agent's own ceiling).
const SESSION_TIMEOUT_MS: u64 = 7 * 86400 * 1000;

/// A program to run interactively.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub confine: Confine,
    /// Run on a new terminal of this size; otherwise on pipes (stdout and stderr apart).
    pub pty: Option<PtySize>,
}

#[derive(Debug)]
pub enum SessionEvent {
    Output(Stream, Vec<u8>),
    /// The program ended; no event follows.
    Exit(RunEnd),
}

/// A running interactive program. Dropping it before its exit kills it.
pub struct Session {
    input: SessionInput,
    events: mpsc::Receiver<Message>,
    ended: bool,
}

/// The writing side of a session; clones may be used from other tasks.
#[derive(Clone)]
pub struct SessionInput {
    agent: Arc<AgentClient>,
    id: u64,
}

impl AgentSandbox {
    /// Starts `req`; answers once the program runs (or with why it could not start).
    pub async fn session(&self, req: SessionRequest) -> Result<Session, RunError> {
        let agent = self.agent();
        let (id, mut events) = agent.subscribe();
        let exec = Request::Exec {
            id,
            argv: req.argv,
            env: req.env,
            confine: req.confine,
            timeout_ms: Some(SESSION_TIMEOUT_MS),
            stdin: true,
            pty: req.pty,
        };
        let started = async {
            agent.send(&exec, &[]).await?;
            match events.recv().await.map(|m| m.event) {
                Some(Event::Started { .. }) => Ok(()),
                Some(Event::Exit { start_error: Some(e), .. }) => {
                    Err(RunError::Setup { stage: e.stage, errno: e.errno })
                }
                Some(Event::Error { message, errno, .. }) => {
                    Err(AgentError::Refused { message, errno }.into())
                }
                _ => Err(AgentError::Gone.into()),
            }
        };
        if let Err(e) = started.await {
            agent.unsubscribe(id);
            return Err(e);
        }
        Ok(Session { input: SessionInput { agent, id }, events, ended: false })
    }
}

impl Session {
    pub fn input(&self) -> SessionInput {
        self.input.clone()
    }

    /// The next output or the exit; `None` after the exit, or when the sandbox is gone.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        while !self.ended {
            let Some(message) = self.events.recv().await else {
                self.ended = true;
                return None;
            };
            match message.event {
                Event::Output { stream, .. } => {
                    return Some(SessionEvent::Output(stream, message.data));
                }
                Event::Exit { exit_code, signal, timed_out, .. } => {
                    self.ended = true;
                    return Some(SessionEvent::Exit(match (timed_out, exit_code, signal) {
                        (true, ..) => RunEnd::TimedOut,
                        (false, Some(code), _) => RunEnd::Exited(code),
                        (false, None, sig) => RunEnd::Signaled(sig.unwrap_or(libc::SIGKILL)),
                    }));
                }
                // Nothing else is sent for a running process; skip rather than end.
                _ => {}
            }
        }
        None
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let SessionInput { agent, id } = self.input.clone();
        if !self.ended
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = agent.send(&Request::Signal { id, signal: libc::SIGKILL }, &[]).await;
                agent.unsubscribe(id);
            });
        } else {
            agent.unsubscribe(id);
        }
    }
}

impl SessionInput {
    /// Sends bytes to the program's stdin (its terminal's input with a pty).
    pub async fn write(&self, data: &[u8]) -> Result<(), RunError> {
        for piece in data.chunks(CHUNK) {
            self.agent.send(&Request::Stdin { id: self.id, eof: false }, piece).await?;
        }
        Ok(())
    }

    /// Closes stdin (on a terminal this changes nothing: a shell there reads ^D instead).
    pub async fn close(&self) -> Result<(), RunError> {
        Ok(self.agent.send(&Request::Stdin { id: self.id, eof: true }, &[]).await?)
    }

    pub async fn resize(&self, size: PtySize) -> Result<(), RunError> {
        Ok(self.agent.send(&Request::Resize { id: self.id, size }, &[]).await?)
    }

    pub async fn signal(&self, signal: i32) -> Result<(), RunError> {
        Ok(self.agent.send(&Request::Signal { id: self.id, signal }, &[]).await?)
    }
}
