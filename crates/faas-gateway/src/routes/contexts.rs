use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use faas_api::{ContextInfo, ContextList, CreateContextRequest};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateContextRequest>,
) -> Result<(StatusCode, Json<ContextInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.engine.create_context(&caller.tenant, req).await?)))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<ContextList> {
    Json(ContextList { contexts: state.engine.list_contexts(&caller.tenant) })
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ContextInfo>, ApiError> {
    Ok(Json(state.engine.context(&caller.tenant, &id)?))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_context(&caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
