//! Snapshots, restores, branches and merges. Each runs on a task of its own: a client
//! that goes away mid-way must not leave an instance frozen or paused, or a restore half
//! done.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use faas_api::{
    BranchRequest, BranchResponse, CreateSnapshotRequest, Instance, MergeRequest, MergeResult,
    RestoreSnapshotRequest, Snapshot, SnapshotList, SnapshotTree,
};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::{ApiJson, OptionalJson};

#[utoipa::path(
    post,
    path = "/api/v1/snapshots",
    operation_id = "create_snapshot",
    tag = "snapshots",
    request_body = faas_api::CreateSnapshotRequest,
    responses((status = 201, description = "The snapshot", body = faas_api::Snapshot))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let engine = state.engine.clone();
    let snapshot =
        detached(async move { engine.create_snapshot(&caller.tenant, req).await }).await?;
    Ok((StatusCode::CREATED, Json(snapshot)))
}

/// Runs `work` to its end whatever happens to the request.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, faas_engine::EngineError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(|e| ApiError::Internal(e.to_string()))?.map_err(Into::into)
}

#[utoipa::path(
    get,
    path = "/api/v1/snapshots",
    operation_id = "list_snapshots",
    tag = "snapshots",
    responses((status = 200, description = "The caller's snapshots", body = faas_api::SnapshotList))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SnapshotList>, ApiError> {
    Ok(Json(SnapshotList { snapshots: state.engine.list_snapshots(&caller.tenant).await? }))
}

#[utoipa::path(
    get,
    path = "/api/v1/snapshots/{id}",
    operation_id = "get_snapshot",
    tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 200, description = "The snapshot", body = faas_api::Snapshot))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(state.engine.snapshot(&caller.tenant, &id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/snapshots/{id}/tree",
    operation_id = "snapshot_tree",
    tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 200, description = "The lineage below the snapshot", body = faas_api::SnapshotTree))
)]
pub async fn tree(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SnapshotTree>, ApiError> {
    Ok(Json(state.engine.snapshot_tree(&caller.tenant, &id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/snapshots/{id}",
    operation_id = "delete_snapshot",
    tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 204, description = "Deleted"))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_snapshot(&caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/snapshots/{id}/restore",
    operation_id = "restore_snapshot",
    tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    request_body(content = Option<faas_api::RestoreSnapshotRequest>, description = "Optional"),
    responses((status = 201, description = "A new running instance in the snapshot state", body = faas_api::Instance))
)]
pub async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<RestoreSnapshotRequest>,
) -> Result<(StatusCode, Json<Instance>), ApiError> {
    let engine = state.engine.clone();
    let instance =
        detached(async move { engine.restore_snapshot(&caller.tenant, &id, req).await }).await?;
    Ok((StatusCode::CREATED, Json(instance)))
}

#[utoipa::path(
    post,
    path = "/api/v1/branches/merge",
    operation_id = "merge_branches",
    tag = "snapshots",
    request_body = faas_api::MergeRequest,
    responses((status = 201, description = "The merged filesystem snapshot", body = faas_api::MergeResult))
)]
pub async fn merge(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<MergeRequest>,
) -> Result<(StatusCode, Json<MergeResult>), ApiError> {
    let engine = state.engine.clone();
    let merged = detached(async move { engine.merge_branches(&caller.tenant, req).await }).await?;
    Ok((StatusCode::CREATED, Json(merged)))
}

#[utoipa::path(
    post,
    path = "/api/v1/branches",
    operation_id = "branch",
    tag = "snapshots",
    request_body = faas_api::BranchRequest,
    responses((status = 201, description = "The branches, all running", body = faas_api::BranchResponse))
)]
pub async fn branch(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<BranchRequest>,
) -> Result<(StatusCode, Json<BranchResponse>), ApiError> {
    let engine = state.engine.clone();
    let branches = detached(async move { engine.branch(&caller.tenant, req).await }).await?;
    Ok((StatusCode::CREATED, Json(branches)))
}
