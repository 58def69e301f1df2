//! Persistent instances: lifecycle, exec and files.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use faas_api::{
    ContextInfo, ContextList, CreateInstanceRequest, FileList, Instance, InstanceContextRequest,
    InstanceExecRequest, InstanceList, InstanceStatus, KillRequest, ProcessInfo, ProcessList,
};
use faas_engine::{FileRead, InstanceExecAnswer, Streams};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::{ApiJson, ApiQuery};

#[utoipa::path(
    post,
    path = "/api/v1/instances",
    operation_id = "create_instance",
    tag = "instances",
    request_body = faas_api::CreateInstanceRequest,
    responses((status = 201, description = "The running instance", body = faas_api::Instance))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateInstanceRequest>,
) -> Result<(StatusCode, Json<Instance>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.engine.create_instance(&caller.tenant, req).await?)))
}

/// `?status=running&metadata.owner=alice`: every parameter must be one of these.
#[utoipa::path(
    get,
    path = "/api/v1/instances",
    operation_id = "list_instances",
    tag = "instances",
    params(("status" = Option<faas_api::InstanceStatus>, Query, description = "Only instances in this state")),
    responses((status = 200, description = "The caller's instances; also filtered by metadata with metadata.KEY=VALUE", body = faas_api::InstanceList))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<InstanceList>, ApiError> {
    let mut status = None;
    let mut metadata = BTreeMap::new();
    for (key, value) in pairs {
        if key == "status" {
            let parsed =
                serde_json::from_value::<InstanceStatus>(serde_json::Value::String(value.clone()))
                    .map_err(|_| {
                        ApiError::InvalidRequest(format!("status: unknown status '{value}'"))
                    })?;
            status = Some(parsed);
        } else if let Some(name) = key.strip_prefix("metadata.") {
            metadata.insert(name.to_owned(), value);
        } else {
            return Err(ApiError::InvalidRequest(format!(
                "unknown parameter '{key}'; use status or metadata.<key>"
            )));
        }
    }
    Ok(Json(InstanceList {
        instances: state.engine.list_instances(&caller.tenant, status, &metadata),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}",
    operation_id = "get_instance",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "The instance", body = faas_api::Instance))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.engine.instance(&caller.tenant, &id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}",
    operation_id = "delete_instance",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Deleted with its files"))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_instance(&caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/stop",
    operation_id = "stop_instance",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Stopped; its files are kept", body = faas_api::Instance))
)]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.engine.stop_instance(&caller.tenant, &id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/start",
    operation_id = "start_instance",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Running again", body = faas_api::Instance))
)]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.engine.start_instance(&caller.tenant, &id).await?))
}

/// 200 with the result, or 202 with the process when `background` is set.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/exec",
    operation_id = "instance_exec",
    tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    request_body = faas_api::InstanceExecRequest,
    responses((status = 200, description = "The run ended", body = faas_api::ExecutionResult), (status = 202, description = "Started in the background (background: true)", body = faas_api::ProcessInfo))
)]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<InstanceExecRequest>,
) -> Result<Response, ApiError> {
    Ok(match state.engine.instance_exec(&caller.tenant, &id, req, Streams::default()).await? {
        InstanceExecAnswer::Finished(result) => Json(result).into_response(),
        InstanceExecAnswer::Started(process) => {
            (StatusCode::ACCEPTED, Json(process)).into_response()
        }
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/processes",
    operation_id = "list_processes",
    tag = "processes",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Background processes", body = faas_api::ProcessList))
)]
pub async fn processes(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProcessList>, ApiError> {
    Ok(Json(ProcessList { processes: state.engine.list_processes(&caller.tenant, &id)? }))
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/processes/{pid}",
    operation_id = "get_process",
    tag = "processes",
    params(("id" = String, Path, description = "Instance id"), ("pid" = String, Path, description = "Process id")),
    responses((status = 200, description = "The process", body = faas_api::ProcessInfo))
)]
pub async fn process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<ProcessInfo>, ApiError> {
    Ok(Json(state.engine.process_info(&caller.tenant, &id, &pid)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout_ms: Option<u64>,
}

/// Waits up to `timeout_ms` (default 30 s, at most 300 s) for the process to end.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/processes/{pid}/wait",
    operation_id = "wait_process",
    tag = "processes",
    params(("id" = String, Path, description = "Instance id"), ("pid" = String, Path, description = "Process id"), WaitQuery),
    responses((status = 200, description = "The process, ended or still running at the timeout", body = faas_api::ProcessInfo))
)]
pub async fn wait_process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<ProcessInfo>, ApiError> {
    let timeout = std::time::Duration::from_millis(query.timeout_ms.unwrap_or(30_000).min(300_000));
    Ok(Json(state.engine.wait_process(&caller.tenant, &id, &pid, timeout).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/processes/{pid}/kill",
    operation_id = "kill_process",
    tag = "processes",
    params(("id" = String, Path, description = "Instance id"), ("pid" = String, Path, description = "Process id")),
    request_body = faas_api::KillRequest,
    responses((status = 200, description = "The process, signalled", body = faas_api::ProcessInfo))
)]
pub async fn kill_process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<KillRequest>,
) -> Result<Json<ProcessInfo>, ApiError> {
    Ok(Json(state.engine.signal_process(&caller.tenant, &id, &pid, req.signal.as_ref())?))
}

/// Server-Sent Events of a background process: what it printed so far, what it prints
/// next, then `exit` with its result.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/processes/{pid}/stream",
    operation_id = "stream_process",
    tag = "processes",
    params(("id" = String, Path, description = "Instance id"), ("pid" = String, Path, description = "Process id")),
    responses((status = 200, description = "Server-Sent Events of the process output, then its end", content_type = "text/event-stream"))
)]
pub async fn stream_process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let faas_engine::Following { past, mut live, mut result } =
        state.engine.follow_process(&caller.tenant, &id, &pid)?;
    let (tx, rx) = mpsc::channel::<Result<axum::response::sse::Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut decoders = crate::routes::stream::Decoders::default();
        for chunk in past {
            if tx.send(Ok(crate::routes::stream::sse_event(&decoders.event(chunk)))).await.is_err()
            {
                return;
            }
        }
        loop {
            tokio::select! {
                chunk = live.recv() => match chunk {
                    Ok(chunk) => {
                        if tx.send(Ok(crate::routes::stream::sse_event(&decoders.event(chunk)))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
                // The result leaves the watch's guard at once: the guard must not live across
                // an await of this task.
                done = async { result.wait_for(Option::is_some).await.ok().and_then(|r| (*r).clone()) } => {
                    // Output sent before the end is already queued: pass it on, then finish.
                    while let Ok(chunk) = live.try_recv() {
                        let _ = tx.send(Ok(crate::routes::stream::sse_event(&decoders.event(chunk)))).await;
                    }
                    if let Some(done) = done {
                        let event = faas_api::StreamEvent::Exit(Box::new(done));
                        let _ = tx.send(Ok(crate::routes::stream::sse_event(&event))).await;
                    }
                    return;
                }
                _ = tx.closed() => return,
            }
        }
    });
    let events = crate::routes::stream::ReceiverStream(rx);
    Ok(axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

/// A read as a body stream: its first chunk, then the rest as they come.
struct Chunks(FileRead);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.0.first.take() {
            return Poll::Ready(Some(Ok(Bytes::from(first))));
        }
        self.0.rest.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Bytes::from(c))))
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/files",
    operation_id = "read_file",
    tag = "files",
    params(("id" = String, Path, description = "Instance id"), PathQuery),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"))
)]
pub async fn read_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let read = state.engine.read_instance_file(&caller.tenant, &id, &query.path).await?;
    Ok(stream_body(read, "application/octet-stream"))
}

/// `GET .../files/archive?path=`: the tree at `path` as a tar stream.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/files/archive",
    operation_id = "read_archive",
    tag = "files",
    params(("id" = String, Path, description = "Instance id"), PathQuery),
    responses((status = 200, description = "The tree as a tar stream", content_type = "application/x-tar"))
)]
pub async fn read_archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let read = state.engine.read_instance_archive(&caller.tenant, &id, &query.path).await?;
    Ok(stream_body(read, "application/x-tar"))
}

/// A response whose body is a read's chunks as they come.
fn stream_body(read: FileRead, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], Body::from_stream(Chunks(read))).into_response()
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Written {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

/// Sends the body's chunks to `tx`, refusing bodies over the upload limit (413).
async fn feed_body(body: Body, limit: u64, tx: mpsc::Sender<Vec<u8>>) -> Result<(), ApiError> {
    use futures_util_shim::next_chunk;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = next_chunk(&mut stream).await {
        let chunk = chunk.map_err(|_| ApiError::Body)?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::TooLarge);
        }
        // Once the write has failed (a full disk, say), the rest of the body is read and
        // dropped, so the client gets the answer instead of a broken pipe.
        let _ = tx.send(chunk.to_vec()).await;
    }
    Ok(())
}

/// Streams the body into the file, refusing bodies over the upload limit (413).
#[utoipa::path(
    put,
    path = "/api/v1/instances/{id}/files",
    operation_id = "write_file",
    tag = "files",
    params(("id" = String, Path, description = "Instance id"), PathQuery),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/octet-stream"),
    responses((status = 200, description = "Written", body = Written))
)]
pub async fn write_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
    body: Body,
) -> Result<Json<Written>, ApiError> {
    let limit = state.engine.config().instances.max_upload_mb << 20;
    let (tx, rx) = mpsc::channel(8);
    let write = state.engine.write_instance_file(&caller.tenant, &id, &query.path, rx);
    let (fed, written) = tokio::join!(feed_body(body, limit, tx), write);
    fed?;
    Ok(Json(Written { path: query.path, size: Some(written?) }))
}

/// `PUT .../files/archive?path=`: extracts a tar stream into `path` (created if missing).
#[utoipa::path(
    put,
    path = "/api/v1/instances/{id}/files/archive",
    operation_id = "write_archive",
    tag = "files",
    params(("id" = String, Path, description = "Instance id"), PathQuery),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/x-tar"),
    responses((status = 200, description = "Extracted", body = Written))
)]
pub async fn write_archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
    body: Body,
) -> Result<Json<Written>, ApiError> {
    let limit = state.engine.config().instances.max_upload_mb << 20;
    let (tx, rx) = mpsc::channel(8);
    let write = state.engine.write_instance_archive(&caller.tenant, &id, &query.path, rx);
    let (fed, written) = tokio::join!(feed_body(body, limit, tx), write);
    fed?;
    written?;
    Ok(Json(Written { path: query.path, size: None }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}/files",
    operation_id = "delete_path",
    tag = "files",
    params(("id" = String, Path, description = "Instance id"), PathQuery),
    responses((status = 204, description = "Deleted"))
)]
pub async fn delete_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_instance_path(&caller.tenant, &id, &query.path, query.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/files/list",
    operation_id = "list_dir",
    tag = "files",
    params(("id" = String, Path, description = "Instance id"), PathQuery),
    responses((status = 200, description = "The directory", body = faas_api::FileList))
)]
pub async fn list_dir(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<FileList>, ApiError> {
    Ok(Json(state.engine.list_instance_dir(&caller.tenant, &id, &query.path).await?))
}

/// `Stream::next` without a futures-util dependency for one call.
mod futures_util_shim {
    use std::pin::Pin;

    use futures_core::Stream;

    pub async fn next_chunk<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/contexts",
    operation_id = "create_instance_context",
    tag = "contexts",
    params(("id" = String, Path, description = "Instance id")),
    request_body = faas_api::InstanceContextRequest,
    responses((status = 201, description = "The new context", body = faas_api::ContextInfo))
)]
pub async fn create_context(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<InstanceContextRequest>,
) -> Result<(StatusCode, Json<ContextInfo>), ApiError> {
    let context = state.engine.create_instance_context(&caller.tenant, &id, req).await?;
    Ok((StatusCode::CREATED, Json(context)))
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/contexts",
    operation_id = "list_instance_contexts",
    tag = "contexts",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "The instance's contexts", body = faas_api::ContextList))
)]
pub async fn contexts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ContextList>, ApiError> {
    Ok(Json(ContextList { contexts: state.engine.instance_contexts(&caller.tenant, &id)? }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}/contexts/{context_id}",
    operation_id = "delete_instance_context",
    tag = "contexts",
    params(("id" = String, Path, description = "Instance id"), ("context_id" = String, Path, description = "Context id")),
    responses((status = 204, description = "Deleted"))
)]
pub async fn delete_context(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, context_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_instance_context(&caller.tenant, &id, &context_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
