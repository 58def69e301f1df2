//! The host's end of the agent protocol: two pipes per sandbox (requests out, events in),
//! a reader task that routes each event to whoever is waiting on its request id, and a
//! writer shared by callers.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_agent::protocol::{self, Event, Request};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// How long a single-answer request (a listing, a context start, ...) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent may take to pause for a checkpoint, and to resume after it.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new agent may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("the agent connection failed")]
    Io(#[source] std::io::Error),
    #[error("the agent did not say hello within {HELLO_TIMEOUT:?}")]
    NoHello,
    #[error("the agent speaks protocol version {0}, this server {server}", server = protocol::VERSION)]
    Version(u32),
    #[error("the agent is gone")]
    Gone,
    #[error("a request of {0} bytes is larger than the agent protocol allows")]
    TooLarge(usize),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent refused: {message}")]
    Refused { message: String, errno: Option<i32> },
}

/// One event and the bytes that came with it.
#[derive(Debug)]
pub struct Message {
    pub event: Event,
    pub data: Vec<u8>,
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

/// Events buffered per request. A request whose reader falls behind stops the connection's
/// reader task, then the socket, then the agent (its high-water mark), so a slow consumer
/// (a client downloading a large file) never makes the host buffer without bound; the cost
/// is that the instance's other requests wait meanwhile.
const ROUTE_BUFFER: usize = 32;

pub struct AgentClient {
    writer: tokio::sync::Mutex<pipe::Sender>,
    routes: Routes,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl AgentClient {
    /// Takes the host's ends of the control pipes (requests to write, events to read) and
    /// waits for the agent's hello.
    pub async fn connect(requests: OwnedFd, events: OwnedFd) -> Result<Self, AgentError> {
        Self::open(requests, events, false).await
    }

    /// Like [`connect`](Self::connect), for an agent restored from a checkpoint: its new
    /// pipes carry a `resume` first, which it answers with a fresh hello.
    pub async fn connect_restored(requests: OwnedFd, events: OwnedFd) -> Result<Self, AgentError> {
        Self::open(requests, events, true).await
    }

    async fn open(requests: OwnedFd, events: OwnedFd, restored: bool) -> Result<Self, AgentError> {
        let mut writer = pipe::Sender::from_owned_fd(requests).map_err(AgentError::Io)?;
        let mut read = pipe::Receiver::from_owned_fd(events).map_err(AgentError::Io)?;
        if restored {
            let mut frame = Vec::new();
            protocol::encode(&Request::Resume { id: 0, restored: true }, &[], &mut frame);
            writer.write_all(&frame).await.map_err(AgentError::Io)?;
        }
        let mut buf = Vec::new();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut read, &mut buf))
            .await
            .map_err(|_| AgentError::NoHello)??;
        let next_id = match hello.event {
            Event::Hello { version, next_id } if version == protocol::VERSION => next_id.max(1),
            Event::Hello { version, .. } => return Err(AgentError::Version(version)),
            _ => return Err(AgentError::NoHello),
        };
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let reader_routes = Arc::clone(&routes);
        let reader = tokio::spawn(async move {
            while let Ok(message) = next_frame(&mut read, &mut buf).await {
                let Some(id) = message.event.id() else {
                    continue;
                };
                let tx = reader_routes.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(message).await;
                }
            }
            // The agent is gone: every waiter sees its channel close.
            reader_routes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(Self {
            writer: tokio::sync::Mutex::new(writer),
            routes,
            next_id: AtomicU64::new(next_id),
            reader,
        })
    }

    /// A fresh request id with a channel for its events. Unsubscribe when done.
    pub fn subscribe(&self) -> (u64, mpsc::Receiver<Message>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ROUTE_BUFFER);
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        (id, rx)
    }

    pub fn unsubscribe(&self, id: u64) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    pub async fn send(&self, request: &Request, data: &[u8]) -> Result<(), AgentError> {
        if self.reader.is_finished() {
            return Err(AgentError::Gone);
        }
        let mut frame = Vec::with_capacity(64 + data.len());
        protocol::encode(request, data, &mut frame);
        // The agent ends the connection (and the sandbox) on an oversized frame: refuse it here.
        if frame.len() - 4 > protocol::MAX_FRAME {
            return Err(AgentError::TooLarge(frame.len()));
        }
        self.writer.lock().await.write_all(&frame).await.map_err(|_| AgentError::Gone)
    }

    /// Runs `work` (a checkpoint) while the agent is paused: everything it had to say has
    /// been read, and no other request goes out until `work` is done and the agent resumed.
    pub async fn while_paused<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, AgentError> {
        let mut writer = self.writer.lock().await;
        let (id, mut rx) = self.subscribe();
        let result = async {
            write_frame(&mut writer, &Request::Pause { id }).await?;
            let paused = tokio::time::timeout(PAUSE_TIMEOUT, rx.recv()).await;
            let output = match paused {
                Ok(Some(Message { event: Event::Paused { .. }, .. })) => Ok(work.await),
                Ok(Some(_)) | Ok(None) => Err(AgentError::Gone),
                Err(_) => Err(AgentError::Timeout(PAUSE_TIMEOUT)),
            };
            // Resumed even when the pause was not confirmed in time: it may yet arrive.
            write_frame(&mut writer, &Request::Resume { id, restored: false }).await?;
            output
        }
        .await;
        drop(writer);
        if result.is_ok() {
            // Answered with `done`; a late `paused` may come first.
            let _ = tokio::time::timeout(PAUSE_TIMEOUT, async {
                while let Some(m) = rx.recv().await {
                    if matches!(m.event, Event::Done { .. }) {
                        break;
                    }
                }
            })
            .await;
        }
        self.unsubscribe(id);
        result
    }

    pub fn is_connected(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Sends a request and waits for its one answer (`ping`, `context_delete`, ...).
    pub async fn call(&self, make: impl FnOnce(u64) -> Request) -> Result<Message, AgentError> {
        let (id, mut rx) = self.subscribe();
        let sent = self.send(&make(id), &[]).await;
        let answer = match sent {
            Ok(()) => match tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await {
                Ok(answer) => answer.ok_or(AgentError::Gone),
                Err(_) => Err(AgentError::Timeout(CALL_TIMEOUT)),
            },
            Err(e) => Err(e),
        };
        self.unsubscribe(id);
        match answer? {
            Message { event: Event::Error { message, errno, .. }, .. } => {
                Err(AgentError::Refused { message, errno })
            }
            message => Ok(message),
        }
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn write_frame(writer: &mut pipe::Sender, request: &Request) -> Result<(), AgentError> {
    let mut frame = Vec::new();
    protocol::encode(request, &[], &mut frame);
    writer.write_all(&frame).await.map_err(|_| AgentError::Gone)
}

/// The control channel's four pipe ends: the host writes requests and reads events; the
/// agent's two ends go into the sandbox (or, for a restore, to CRIU).
pub struct ControlPipes {
    pub host_requests: OwnedFd,
    pub host_events: OwnedFd,
    pub agent_requests: OwnedFd,
    pub agent_events: OwnedFd,
}

/// Pipe capacity for the control channel: large enough that file transfers and output
/// flow in big writes.
const CONTROL_PIPE_BYTES: libc::c_int = 1 << 20;

impl ControlPipes {
    pub fn new() -> std::io::Result<Self> {
        let (agent_requests, host_requests) = pipe_cloexec()?;
        let (host_events, agent_events) = pipe_cloexec()?;
        for fd in [&host_requests, &host_events] {
            // SAFETY: fcntl on a pipe we own; a failure leaves the default size.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, CONTROL_PIPE_BYTES) };
        }
        Ok(Self { host_requests, host_events, agent_requests, agent_events })
    }

    /// The pipes' inode numbers (requests, events): how a checkpoint names them.
    pub fn inodes(&self) -> std::io::Result<(u64, u64)> {
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd).map(|st| st.st_ino);
        Ok((ino(&self.host_requests)?, ino(&self.host_events)?))
    }
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

async fn next_frame(read: &mut pipe::Receiver, buf: &mut Vec<u8>) -> Result<Message, AgentError> {
    loop {
        match protocol::decode(buf) {
            Ok(Some((used, header, data))) => {
                let event = serde_json::from_slice::<Event>(header).map_err(|e| {
                    AgentError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                });
                let data = data.to_vec();
                buf.drain(..used);
                return Ok(Message { event: event?, data });
            }
            Ok(None) => {}
            Err(e) => {
                return Err(AgentError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{e:?}"),
                )));
            }
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = read.read(&mut chunk).await.map_err(AgentError::Io)?;
        if n == 0 {
            return Err(AgentError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
