use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use faas_api::{ContextInfo, ContextList, CreateContextRequest};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

#[utoipa::path(
    post,
    path = "/api/v1/contexts",
    operation_id = "create_context",
    tag = "contexts",
    request_body = faas_api::CreateContextRequest,
    responses((status = 201, description = "The new context", body = faas_api::ContextInfo))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateContextRequest>,
) -> Result<(StatusCode, Json<ContextInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.engine.create_context(&caller.tenant, req).await?)))
}

#[utoipa::path(
    get,
    path = "/api/v1/contexts",
    operation_id = "list_contexts",
    tag = "contexts",
    responses((status = 200, description = "The caller's contexts", body = faas_api::ContextList))
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<ContextList> {
    Json(ContextList { contexts: state.engine.list_contexts(&caller.tenant) })
}

#[utoipa::path(
    get,
    path = "/api/v1/contexts/{id}",
    operation_id = "get_context",
    tag = "contexts",
    params(("id" = String, Path, description = "Context id")),
    responses((status = 200, description = "The context", body = faas_api::ContextInfo))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ContextInfo>, ApiError> {
    Ok(Json(state.engine.context(&caller.tenant, &id)?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/contexts/{id}",
    operation_id = "delete_context",
    tag = "contexts",
    params(("id" = String, Path, description = "Context id")),
    responses((status = 204, description = "Deleted"))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_context(&caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
