use axum::Json;
use axum::extract::State;
use faas_api::{PoolInfo, PoolList, PrewarmRequest, Role};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;

/// Fills the caller's pool and answers once it is warm.
pub async fn prewarm(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<PrewarmRequest>,
) -> Result<Json<PoolInfo>, ApiError> {
    Ok(Json(state.engine.prewarm(&caller.tenant, req).await?))
}

/// The caller's pools; an admin sees every tenant's.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<PoolList> {
    let tenant = (caller.role != Role::Admin).then_some(&caller.tenant);
    Json(PoolList { pools: state.engine.pools(tenant) })
}
