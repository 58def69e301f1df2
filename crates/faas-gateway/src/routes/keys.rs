use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use faas_api::{CreateKeyRequest, CreatedKey, KeyInfo, KeyList};
use faas_store::KeyRecord;
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Caller, new_key};
use crate::error::ApiError;
use crate::json::{ApiJson, ApiQuery};

fn info(record: KeyRecord) -> KeyInfo {
    KeyInfo {
        id: record.id,
        tenant: record.tenant,
        name: record.name,
        role: record.role,
        created_at_ms: record.created_at_ms,
        revoked: record.revoked,
        rate_tier: record.rate_tier,
    }
}

fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[utoipa::path(
    post,
    path = "/api/v1/keys",
    operation_id = "create_key",
    tag = "keys",
    request_body = faas_api::CreateKeyRequest,
    responses((status = 201, description = "The key: its secret is shown once", body = faas_api::CreatedKey))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require_admin()?;
    if !valid_tenant(&req.tenant) {
        return Err(ApiError::InvalidRequest("tenant: 1 to 64 of A-Z a-z 0-9 - _ .".into()));
    }
    if req.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::InvalidRequest("name: at most 200 bytes".into()));
    }
    let tiers = &state.engine.config().rate_limits.tiers;
    if let Some(tier) = req.rate_tier.as_deref().filter(|t| !tiers.contains_key(*t)) {
        let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
        return Err(ApiError::InvalidRequest(format!(
            "rate_tier: no tier '{tier}' (the server has: {})",
            known.join(", ")
        )));
    }
    let (key, mut record) = new_key(&req.tenant, req.name, req.role);
    record.rate_tier = req.rate_tier;
    state.engine.store().insert_key(record.clone()).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, info: info(record) })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/keys",
    operation_id = "list_keys",
    tag = "keys",
    params(ListQuery),
    responses((status = 200, description = "Keys (admin)", body = faas_api::KeyList))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<KeyList>, ApiError> {
    caller.require_admin()?;
    let keys = state.engine.store().list_keys(query.tenant.as_deref()).await?;
    Ok(Json(KeyList { keys: keys.into_iter().map(info).collect() }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    operation_id = "revoke_key",
    tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"))
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let revoked = state.engine.store().revoke_key(&id, None).await?;
    state.keys.evict(&id);
    if revoked { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::NotFound { kind: "key", id }) }
}
