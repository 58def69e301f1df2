//! Streaming execution. `GET /api/v1/execute/stream` upgrades to a WebSocket: the client
//! sends one execute request, then optionally `{"type":"stdin","data":...}` and
//! `{"type":"close_stdin"}`; the server sends `stdout`/`stderr` events as output arrives
//! and a final `exit` event with the whole result. `POST /api/v1/execute/stream` sends the
//! same events as Server-Sent Events. Either way, a client that goes away kills the run.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use faas_api::{ExecuteRequest, ExecutionResult, InstanceExecRequest, StreamEvent, StreamInput};
use faas_engine::{Engine, EngineError, InstanceExecAnswer, Streams, Tenant};
use faas_sandbox::{OutputChunk, Stream};
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

/// Turns output chunks into text without splitting a UTF-8 character across events.
#[derive(Default)]
struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                // An incomplete character at the end waits for the next chunk.
                Err(e) if e.error_len().is_none() => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    self.pending.drain(..valid);
                    return out;
                }
                Err(e) => {
                    let upto = e.valid_up_to() + e.error_len().unwrap_or(1);
                    out.push_str(&String::from_utf8_lossy(&self.pending[..upto]));
                    self.pending.drain(..upto);
                }
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Decoders {
    stdout: Utf8Chunks,
    stderr: Utf8Chunks,
}

impl Decoders {
    pub(crate) fn event(&mut self, chunk: OutputChunk) -> StreamEvent {
        match chunk.stream {
            Stream::Stdout => StreamEvent::Stdout { data: self.stdout.push(&chunk.data) },
            Stream::Stderr => StreamEvent::Stderr { data: self.stderr.push(&chunk.data) },
        }
    }
}

fn final_event(
    result: Result<Result<ExecutionResult, EngineError>, tokio::task::JoinError>,
) -> StreamEvent {
    match result {
        Ok(Ok(result)) => StreamEvent::Exit(Box::new(result)),
        Ok(Err(e)) => StreamEvent::Error { error: ApiError::from(e).detail() },
        Err(_) => StreamEvent::Error {
            error: faas_api::ErrorDetail {
                code: "internal".into(),
                message: "the run's task failed".into(),
            },
        },
    }
}

/// What a stream runs: an execute request, or an exec in an instance.
enum Job {
    Execute(ExecuteRequest),
    Instance { id: String, req: InstanceExecRequest },
}

/// Where a WebSocket's first message goes.
#[derive(Clone)]
enum Target {
    Execute,
    Instance(String),
}

impl Target {
    fn job(&self, text: &str) -> Result<Job, serde_json::Error> {
        Ok(match self {
            Target::Execute => Job::Execute(serde_json::from_str(text)?),
            Target::Instance(id) => {
                Job::Instance { id: id.clone(), req: serde_json::from_str(text)? }
            }
        })
    }
}

/// Starts a run with live output; returns the output channel, stdin sender, the kill
/// switch (drop it to kill) and the run's task.
#[allow(clippy::type_complexity)]
fn start(
    engine: Arc<Engine>,
    tenant: Tenant,
    job: Job,
) -> (
    mpsc::UnboundedReceiver<OutputChunk>,
    mpsc::UnboundedSender<Vec<u8>>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<ExecutionResult, EngineError>>,
) {
    let (sink, output) = mpsc::unbounded_channel();
    let (stdin, stdin_rx) = mpsc::unbounded_channel();
    let (kill, cancel) = oneshot::channel();
    let streams =
        Streams { sink: Some(sink), stdin: Some(stdin_rx), cancel: Some(cancel), signals: None };
    let run = tokio::spawn(async move {
        match job {
            Job::Execute(req) => engine.execute(&tenant, req, streams).await,
            Job::Instance { id, req } => match engine.instance_exec(&tenant, &id, req, streams).await? {
                InstanceExecAnswer::Finished(result) => Ok(result),
                InstanceExecAnswer::Started(_) => Err(EngineError::Invalid {
                    field: "background",
                    reason: "a stream follows one run to its end; stream a background process from .../processes/{pid}/stream".into(),
                }),
            },
        }
    });
    (output, stdin, kill, run)
}

#[utoipa::path(
    get,
    path = "/api/v1/execute/stream",
    operation_id = "execute_websocket",
    tag = "streaming",
    responses((status = 101, description = "WebSocket: send an ExecuteRequest, then StreamInput messages; receive StreamEvent messages"))
)]
pub async fn websocket(
    State(state): State<AppState>,
    caller: Caller,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .on_upgrade(move |socket| session(state.engine, caller.tenant, socket, Target::Execute))
        .into_response()
}

/// `GET /api/v1/instances/{id}/exec/stream`: the same protocol, in an instance.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/exec/stream",
    operation_id = "instance_exec_websocket",
    tag = "streaming",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 101, description = "WebSocket: as /api/v1/execute/stream, with an InstanceExecRequest"))
)]
pub async fn instance_websocket(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Refuse another tenant's (or no) instance before upgrading.
    state.engine.instance(&caller.tenant, &id).await?;
    Ok(upgrade
        .on_upgrade(move |socket| {
            session(state.engine, caller.tenant, socket, Target::Instance(id))
        })
        .into_response())
}

async fn send(socket: &mut WebSocket, event: &StreamEvent) -> bool {
    let text = serde_json::to_string(event).unwrap_or_default();
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn session(engine: Arc<Engine>, tenant: Tenant, mut socket: WebSocket, target: Target) {
    let job = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => match target.job(&text) {
                Ok(job) => break job,
                Err(e) => {
                    let error = ApiError::InvalidRequest(e.to_string()).detail();
                    send(&mut socket, &StreamEvent::Error { error }).await;
                    return;
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    let (mut output, stdin, kill, run) = start(engine, tenant, job);
    let mut stdin = Some(stdin);
    let mut decoders = Decoders::default();
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(chunk) => {
                    if !send(&mut socket, &decoders.event(chunk)).await {
                        drop(kill);
                        let _ = run.await;
                        return;
                    }
                }
                None => break,
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<StreamInput>(&text) {
                    Ok(StreamInput::Stdin { data }) => {
                        if let Some(tx) = &stdin {
                            let _ = tx.send(data.into_bytes());
                        }
                    }
                    Ok(StreamInput::CloseStdin) => stdin = None,
                    Err(e) => {
                        let error = ApiError::InvalidRequest(e.to_string()).detail();
                        send(&mut socket, &StreamEvent::Error { error }).await;
                    }
                },
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some(tx) = &stdin {
                        let _ = tx.send(bytes.to_vec());
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // Closed or broken: the client is gone, and so is its run.
                _ => {
                    drop(kill);
                    let _ = run.await;
                    return;
                }
            },
        }
    }
    let event = final_event(run.await);
    send(&mut socket, &event).await;
    let _ = socket.send(Message::Close(None)).await;
    drop(kill);
}

pub(crate) fn sse_event(event: &StreamEvent) -> Event {
    let name = match event {
        StreamEvent::Stdout { .. } => "stdout",
        StreamEvent::Stderr { .. } => "stderr",
        StreamEvent::Exit(_) => "exit",
        StreamEvent::Error { .. } => "error",
    };
    Event::default().event(name).data(serde_json::to_string(event).unwrap_or_default())
}

#[utoipa::path(
    post,
    path = "/api/v1/execute/stream",
    operation_id = "execute_sse",
    tag = "streaming",
    request_body = faas_api::ExecuteRequest,
    responses((status = 200, description = "Server-Sent Events, each data line a StreamEvent", content_type = "text/event-stream"))
)]
pub async fn sse(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Response {
    sse_response(state.engine, caller.tenant, Job::Execute(req))
}

/// `POST /api/v1/instances/{id}/exec/stream`: Server-Sent Events of an exec in an instance.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/exec/stream",
    operation_id = "instance_exec_sse",
    tag = "streaming",
    params(("id" = String, Path, description = "Instance id")),
    request_body = faas_api::InstanceExecRequest,
    responses((status = 200, description = "Server-Sent Events, each data line a StreamEvent", content_type = "text/event-stream"))
)]
pub async fn instance_sse(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<InstanceExecRequest>,
) -> Result<Response, ApiError> {
    state.engine.instance(&caller.tenant, &id).await?;
    Ok(sse_response(state.engine, caller.tenant, Job::Instance { id, req }))
}

fn sse_response(engine: Arc<Engine>, tenant: Tenant, job: Job) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let (mut output, stdin, kill, run) = start(engine, tenant, job);
        drop(stdin);
        let mut decoders = Decoders::default();
        loop {
            tokio::select! {
                chunk = output.recv() => match chunk {
                    Some(chunk) => {
                        if tx.send(Ok(sse_event(&decoders.event(chunk)))).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let _ = tx.send(Ok(sse_event(&final_event(run.await)))).await;
                        drop(kill);
                        return;
                    }
                },
                _ = tx.closed() => break,
            }
        }
        // The client went away: kill the run and let it record itself.
        drop(kill);
        let _ = run.await;
    });
    Sse::new(ReceiverStream(rx)).keep_alive(KeepAlive::default()).into_response()
}

/// A `Stream` over an mpsc receiver of SSE events, without tokio-stream for one adapter.
pub(crate) struct ReceiverStream(pub mpsc::Receiver<Result<Event, Infallible>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_chunks_never_split_a_character() {
        let mut c = Utf8Chunks::default();
        let snow = "☃".as_bytes();
        assert_eq!(c.push(&snow[..1]), "");
        assert_eq!(c.push(&snow[1..]), "☃");
        assert_eq!(c.push(b"a\xffb"), "a\u{fffd}b");
    }
}
