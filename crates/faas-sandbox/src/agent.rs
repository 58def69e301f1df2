//! The host's end of the agent protocol: one socket per sandbox, a reader task that routes
//! each event to whoever is waiting on its request id, and a writer shared by callers.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_agent::protocol::{self, Event, Request};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

/// How long a single-answer request (a listing, a context start, ...) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
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
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    routes: Routes,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl AgentClient {
    /// Takes the host's end of the control socket and waits for the agent's hello.
    pub async fn connect(sock: OwnedFd) -> Result<Self, AgentError> {
        let std_sock = std::os::unix::net::UnixStream::from(sock);
        std_sock.set_nonblocking(true).map_err(AgentError::Io)?;
        let stream = UnixStream::from_std(std_sock).map_err(AgentError::Io)?;
        let (mut read, writer) = stream.into_split();
        let mut buf = Vec::new();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut read, &mut buf))
            .await
            .map_err(|_| AgentError::NoHello)??;
        match hello.event {
            Event::Hello { version } if version == protocol::VERSION => {}
            Event::Hello { version } => return Err(AgentError::Version(version)),
            _ => return Err(AgentError::NoHello),
        }
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
            next_id: AtomicU64::new(1),
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

async fn next_frame(
    read: &mut tokio::net::unix::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Result<Message, AgentError> {
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
