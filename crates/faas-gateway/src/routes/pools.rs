use axum::Json;
use axum::extract::State;
use faas_api::{PoolInfo, PoolList, PrewarmRequest, Role};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

/// Fills the caller's pool and answers once it is warm.
#[utoipa::path(
    post,
    path = "/api/v1/prewarm",
    operation_id = "prewarm",
    tag = "pools",
    request_body = faas_api::PrewarmRequest,
    responses((status = 200, description = "The pool after filling", body = faas_api::PoolInfo))
)]
pub async fn prewarm(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<PrewarmRequest>,
) -> Result<Json<PoolInfo>, ApiError> {
    Ok(Json(state.engine.prewarm(&caller.tenant, req).await?))
}

/// The caller's pools; an admin sees every tenant's.
#[utoipa::path(
    get,
    path = "/api/v1/pools",
    operation_id = "list_pools",
    tag = "pools",
    responses((status = 200, description = "The caller's pools (an admin's: all)", body = faas_api::PoolList))
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<PoolList> {
    let tenant = (caller.role != Role::Admin).then_some(&caller.tenant);
    Json(PoolList { pools: state.engine.pools(tenant) })
}
