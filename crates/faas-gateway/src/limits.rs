//! Per-key rate limits and HTTP metrics, as middleware on every routed request.
//!
//! Rate limits are token buckets, one per API key, sized by the key's tier
//! (`[rate_limits.tiers]`): `burst` requests at once, refilled at `per_second`. Every
//! answer to a request with a valid key carries `X-RateLimit-Limit` (the bucket's size),
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the bucket is full); a
//! request finding it empty gets 429 with `Retry-After` (seconds until a token).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use faas_engine::config::RateTier;

use crate::AppState;

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One request's verdict and what the headers say.
struct Verdict {
    allowed: bool,
    limit: u32,
    remaining: u32,
    /// Seconds until the bucket is full again.
    reset: u64,
    /// Seconds until the next token.
    retry_after: u64,
}

impl RateLimiter {
    fn take(&self, key_id: &str, tier: RateTier) -> Verdict {
        let (rate, burst) = (f64::from(tier.per_second.max(1)), f64::from(tier.burst.max(1)));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Full buckets carry no state worth keeping.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key_id.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        Verdict {
            allowed,
            limit: burst as u32,
            remaining: bucket.tokens.floor() as u32,
            reset: ((burst - bucket.tokens) / rate).ceil() as u64,
            retry_after: ((1.0 - bucket.tokens).max(0.0) / rate).ceil().max(1.0) as u64,
        }
    }
}

fn set(response: &mut Response, name: &'static str, value: u64) {
    response.headers_mut().insert(HeaderName::from_static(name), HeaderValue::from(value));
}

/// Counts the request against its key's bucket; requests without a valid key pass on (to
/// the 401 of the handler, or to a route that needs none).
pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = &state.engine.config().rate_limits;
    if !config.enabled {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(Some(key)) = crate::auth::resolve(&parts, &state).await else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    // The handler's `Caller` takes it from here instead of hashing and looking it up again.
    parts.extensions.insert(key.clone());
    let tier_name = key.rate_tier.as_deref().unwrap_or(match key.role {
        faas_api::Role::Admin => "admin",
        faas_api::Role::Tenant => "default",
    });
    let tier = config.tiers.get(tier_name).or_else(|| config.tiers.get("default")).copied();
    let Some(tier) = tier else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let verdict = state.rates.take(&key.id, tier);
    let mut response = if verdict.allowed {
        next.run(Request::from_parts(parts, body)).await
    } else {
        let mut response = crate::error::ApiError::RateLimited {
            limit: verdict.limit,
            per_second: tier.per_second,
        }
        .into_response();
        set(&mut response, "retry-after", verdict.retry_after);
        response
    };
    set(&mut response, "x-ratelimit-limit", u64::from(verdict.limit));
    set(&mut response, "x-ratelimit-remaining", u64::from(verdict.remaining));
    set(&mut response, "x-ratelimit-reset", verdict.reset);
    response
}

/// Request counts and latencies by route (its pattern, never the ids in it) and status.
pub async fn http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("faas_http_requests_total", &labels).increment(1);
    metrics::histogram!("faas_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The Prometheus recorder of this process; `None` if another was installed first.
pub fn install_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .ok()?
        .install_recorder()
        .ok()?;
    metrics::describe_counter!("faas_http_requests_total", "HTTP requests by route and status");
    metrics::describe_histogram!(
        "faas_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route and status"
    );
    metrics::describe_counter!("faas_sandbox_starts_total", "Sandboxes started, by mode");
    metrics::describe_counter!("faas_pool_checkouts_total", "Warm-pool checkouts: hit or miss");
    metrics::describe_histogram!(
        "faas_restore_duration_seconds",
        metrics::Unit::Seconds,
        "Snapshot restores, from the request to a running instance"
    );
    metrics::describe_gauge!("faas_instances_running", "Instances running");
    metrics::describe_gauge!(
        "faas_snapshot_stored_bytes",
        metrics::Unit::Bytes,
        "Snapshot data in the blob store (compressed, deduplicated per tenant)"
    );
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}

/// `GET /metrics`: Prometheus text; an admin key unless `[metrics] public = true`.
pub async fn render(State(state): State<AppState>, request: Request) -> Response {
    if !state.engine.config().metrics.public {
        let (parts, _) = request.into_parts();
        match crate::auth::resolve(&parts, &state).await {
            Ok(Some(key)) if key.role == faas_api::Role::Admin => {}
            Ok(Some(_)) => return crate::error::ApiError::AdminOnly.into_response(),
            Ok(None) => return crate::error::ApiError::MissingKey.into_response(),
            Err(e) => return e.into_response(),
        }
    }
    let Some(handle) = &state.metrics else {
        return crate::error::ApiError::Internal("no metrics recorder".into()).into_response();
    };
    let mut response = (StatusCode::OK, handle.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
