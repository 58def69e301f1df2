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

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SnapshotList>, ApiError> {
    Ok(Json(SnapshotList { snapshots: state.engine.list_snapshots(&caller.tenant).await? }))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(state.engine.snapshot(&caller.tenant, &id).await?))
}

pub async fn tree(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SnapshotTree>, ApiError> {
    Ok(Json(state.engine.snapshot_tree(&caller.tenant, &id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_snapshot(&caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

pub async fn merge(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<MergeRequest>,
) -> Result<(StatusCode, Json<MergeResult>), ApiError> {
    let engine = state.engine.clone();
    let merged = detached(async move { engine.merge_branches(&caller.tenant, req).await }).await?;
    Ok((StatusCode::CREATED, Json(merged)))
}

pub async fn branch(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<BranchRequest>,
) -> Result<(StatusCode, Json<BranchResponse>), ApiError> {
    let engine = state.engine.clone();
    let branches = detached(async move { engine.branch(&caller.tenant, req).await }).await?;
    Ok((StatusCode::CREATED, Json(branches)))
}
