use axum::Json;
use axum::extract::{Path, State};
use faas_api::{ExecuteRequest, ExecutionResult};
use faas_engine::Streams;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

pub async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecutionResult>, ApiError> {
    Ok(Json(state.engine.execute(&caller.tenant, req, Streams::default()).await?))
}

pub async fn get_execution(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionResult>, ApiError> {
    Ok(Json(state.engine.execution(&caller.tenant, &id).await?))
}
