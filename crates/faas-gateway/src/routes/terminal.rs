//! `GET /api/v1/instances/{id}/terminal?rows=&cols=&command=`: a WebSocket carrying an
//! interactive terminal in the instance (a login shell unless `command` is given).
//!
//! Client to server: binary messages are typed input; text messages are JSON,
//! `{"type":"input","data":"ls\r"}` or `{"type":"resize","rows":40,"cols":120}`.
//! Server to client: binary messages are the terminal's output, raw; when the program
//! ends, one text message `{"type":"exit","exit_code":0,"signal":null}`, then close.
//! Closing the socket hangs up the terminal (the program is killed).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use faas_engine::{InstanceSession, SessionSpec};
use faas_sandbox::{PtySize, RunEnd, SessionEvent, SessionInput, signal_name};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiQuery;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    #[serde(default = "default_rows")]
    rows: u16,
    #[serde(default = "default_cols")]
    cols: u16,
    command: Option<String>,
}

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

/// What a client sends as text.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Input { data: String },
    Resize { rows: u16, cols: u16 },
}

/// A terminal size a client may ask for: 1 to 1000 cells each way.
pub(crate) fn pty_size(rows: u16, cols: u16) -> Result<PtySize, ApiError> {
    if !(1..=1000).contains(&rows) || !(1..=1000).contains(&cols) {
        return Err(ApiError::InvalidRequest("rows and cols must be between 1 and 1000".into()));
    }
    Ok(PtySize { rows, cols })
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/terminal",
    operation_id = "terminal",
    tag = "streaming",
    params(("id" = String, Path, description = "Instance id"), TerminalQuery),
    responses((status = 101, description = "WebSocket with an interactive terminal"))
)]
pub async fn terminal(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<TerminalQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let spec = SessionSpec {
        command: query.command,
        pty: Some(pty_size(query.rows, query.cols)?),
        ..SessionSpec::default()
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::InvalidRequest(format!("this route is a WebSocket: {}", e.body_text()))
    })?;
    // Started before the upgrade, so a wrong instance or state answers as JSON; a failed
    // upgrade drops the session, which kills it.
    let session = state.engine.instance_session(&caller.tenant, &id, spec).await?;
    Ok(upgrade.on_upgrade(move |socket| relay(session, socket)).into_response())
}

async fn relay(mut attached: InstanceSession, mut socket: WebSocket) {
    let input = attached.session.input();
    loop {
        tokio::select! {
            event = attached.session.next() => match event {
                Some(SessionEvent::Output(_, data)) => {
                    if socket.send(Message::Binary(data.into())).await.is_err() {
                        return;
                    }
                }
                Some(SessionEvent::Exit(end)) => {
                    let _ = socket.send(Message::Text(exit_message(&end).into())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(message)) => {
                    if let Err(reason) = forward(&input, message).await {
                        let error = serde_json::json!({"type": "error", "message": reason});
                        let _ = socket.send(Message::Text(error.to_string().into())).await;
                    }
                }
                // The client went away: dropping the session hangs up the terminal.
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// Passes one client message to the terminal; an unreadable one is answered, not fatal.
async fn forward(input: &SessionInput, message: Message) -> Result<(), String> {
    let sent = match message {
        Message::Binary(data) => input.write(&data).await,
        Message::Text(text) => match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Input { data }) => input.write(data.as_bytes()).await,
            Ok(ClientMessage::Resize { rows, cols }) => {
                let size = pty_size(rows, cols).map_err(|e| e.to_string())?;
                input.resize(size).await
            }
            Err(e) => return Err(format!("unreadable message: {e}")),
        },
        _ => Ok(()),
    };
    sent.map_err(|e| e.to_string())
}

fn exit_message(end: &RunEnd) -> String {
    let (exit_code, signal) = match end {
        RunEnd::Exited(code) => (Some(*code), None),
        RunEnd::Signaled(signal) => (None, Some(signal_name(*signal))),
        RunEnd::TimedOut => (None, Some(signal_name(libc::SIGKILL))),
        RunEnd::NotStarted { .. } => (Some(127), None),
    };
    serde_json::json!({"type": "exit", "exit_code": exit_code, "signal": signal}).to_string()
}
