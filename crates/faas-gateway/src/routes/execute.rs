use axum::Json;
use axum::extract::{Path, State};
use faas_api::{ExecuteRequest, ExecutionResult};
use faas_engine::Streams;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

#[utoipa::path(
    post,
    path = "/api/v1/execute",
    operation_id = "execute",
    tag = "execute",
    request_body = faas_api::ExecuteRequest,
    responses((status = 200, description = "The run ended (status says how)", body = faas_api::ExecutionResult))
)]
pub async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecutionResult>, ApiError> {
    Ok(Json(state.engine.execute(&caller.tenant, req, Streams::default()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}",
    operation_id = "get_execution",
    tag = "execute",
    params(("id" = String, Path, description = "Execution id")),
    responses((status = 200, description = "The stored record", body = faas_api::ExecutionResult))
)]
pub async fn get_execution(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionResult>, ApiError> {
    Ok(Json(state.engine.execution(&caller.tenant, &id).await?))
}
