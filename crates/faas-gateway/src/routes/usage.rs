//! Usage, costs and quotas. A tenant reads its own; an admin any tenant's (`tenant=`).

use axum::Json;
use axum::extract::{Path, State};
use faas_api::{CurrentUsage, QuotaStatus, Quotas, UsageRecordList, UsageReport};
use faas_engine::Tenant;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::{ApiJson, ApiQuery};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Milliseconds since the epoch, an RFC 3339 time or a date (`2026-11-01`, UTC);
    /// default: the start of the current month.
    from: Option<String>,
    /// As `from`, exclusive; default: the start of the next month.
    to: Option<String>,
    /// `day`, `mode` or `image`; without it, the total only.
    group_by: Option<String>,
    /// Another tenant's (admin keys).
    tenant: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// As for `/usage`.
    from: Option<String>,
    to: Option<String>,
    tenant: Option<String>,
    /// How many (default 100, at most 1000).
    limit: Option<usize>,
    /// The id of the last record of the previous page.
    after: Option<String>,
}

/// A moment as the query gives it, in milliseconds since the epoch.
fn moment(field: &str, value: Option<&str>, default: u64) -> Result<u64, ApiError> {
    let Some(value) = value else { return Ok(default) };
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(value) {
        return u64::try_from(at.timestamp_millis()).map_err(|_| bad_moment(field));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let ms = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis());
        return ms.and_then(|ms| u64::try_from(ms).ok()).ok_or_else(|| bad_moment(field));
    }
    Err(bad_moment(field))
}

fn bad_moment(field: &str) -> ApiError {
    ApiError::InvalidRequest(format!(
        "{field}: milliseconds since the epoch, an RFC 3339 time or a date (YYYY-MM-DD)"
    ))
}

fn range(from: Option<&str>, to: Option<&str>) -> Result<(u64, u64), ApiError> {
    let (start, end) = faas_store::billing::month_bounds(crate::auth::now_ms());
    Ok((moment("from", from, start)?, moment("to", to, end)?))
}

#[utoipa::path(
    get,
    path = "/api/v1/usage",
    operation_id = "usage_report",
    tag = "usage",
    params(UsageQuery),
    responses((status = 200, description = "Usage and cost in the period", body = faas_api::UsageReport))
)]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let tenant = caller.tenant_or(query.tenant.clone())?;
    let (from, to) = range(query.from.as_deref(), query.to.as_deref())?;
    Ok(Json(state.engine.usage_report(&tenant, from, to, query.group_by.as_deref()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/usage/current",
    operation_id = "usage_current",
    tag = "usage",
    params(TenantQuery),
    responses((status = 200, description = "This month so far", body = faas_api::CurrentUsage))
)]
pub async fn current(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<CurrentUsage>, ApiError> {
    let tenant = caller.tenant_or(query.tenant)?;
    Ok(Json(state.engine.usage_current(&tenant).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/usage/records",
    operation_id = "usage_records",
    tag = "usage",
    params(RecordsQuery),
    responses((status = 200, description = "Single charges", body = faas_api::UsageRecordList))
)]
pub async fn records(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<RecordsQuery>,
) -> Result<Json<UsageRecordList>, ApiError> {
    let tenant = caller.tenant_or(query.tenant.clone())?;
    let (from, to) = range(query.from.as_deref(), query.to.as_deref())?;
    let limit = query.limit.unwrap_or(100);
    let after = query.after.as_deref();
    Ok(Json(state.engine.usage_records(&tenant, from, to, after, limit).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant: Option<String>,
}

/// `GET /api/v1/quotas`: the caller's quotas (an admin's: any tenant's).
#[utoipa::path(
    get,
    path = "/api/v1/quotas",
    operation_id = "get_quotas",
    tag = "usage",
    params(TenantQuery),
    responses((status = 200, description = "Quotas and what is in use", body = faas_api::QuotaStatus))
)]
pub async fn quotas(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<QuotaStatus>, ApiError> {
    let tenant = caller.tenant_or(query.tenant)?;
    Ok(Json(state.engine.quota_status(&tenant).await?))
}

/// `GET /api/v1/tenants/{tenant}/quotas` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/quotas",
    operation_id = "get_tenant_quotas",
    tag = "usage",
    params(("tenant" = String, Path, description = "Tenant")),
    responses((status = 200, description = "A tenant's quotas (admin)", body = faas_api::QuotaStatus))
)]
pub async fn tenant_quotas(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<QuotaStatus>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.engine.quota_status(&Tenant(tenant)).await?))
}

/// `PUT /api/v1/tenants/{tenant}/quotas` (admin): replaces the tenant's overrides.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/quotas",
    operation_id = "set_tenant_quotas",
    tag = "usage",
    params(("tenant" = String, Path, description = "Tenant")),
    request_body = faas_api::Quotas,
    responses((status = 200, description = "The tenant's quotas now", body = faas_api::QuotaStatus))
)]
pub async fn set_tenant_quotas(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(overrides): ApiJson<Quotas>,
) -> Result<Json<QuotaStatus>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.engine.set_quotas(&Tenant(tenant), overrides).await?))
}
