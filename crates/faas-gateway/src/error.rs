//! The one place where failures become HTTP responses:
//! `{"error": {"code": "...", "message": "..."}}` with the right status. Internal details
//! go to the log, not to the client.

use std::any::Any;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use faas_api::{ErrorBody, ErrorDetail};
use faas_engine::EngineError;
use faas_sandbox::RunError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")]
    MissingKey,
    #[error("invalid or revoked API key")]
    BadKey,
    #[error("this needs an admin key")]
    AdminOnly,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("request body larger than the server's limit")]
    TooLarge,
    #[error("could not read the request body")]
    Body,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("store failure")]
    Store(#[from] faas_store::StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(
        "rate limit: this key may send {limit} requests at once and {per_second} per second after; see Retry-After"
    )]
    RateLimited { limit: u32, per_second: u32 },
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MissingKey | ApiError::BadKey => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::AdminOnly => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::MalformedJson(_) | ApiError::Body => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RouteNotFound | ApiError::NotFound { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Engine(e) => match e {
                EngineError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
                EngineError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                EngineError::Unsupported { .. } => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
                EngineError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
                EngineError::QuotaExceeded { transient: true, .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
                }
                EngineError::QuotaExceeded { transient: false, .. } => {
                    (StatusCode::FORBIDDEN, "quota_exceeded")
                }
                EngineError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
                EngineError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
                EngineError::DiskFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
                EngineError::BadGateway { .. } => (StatusCode::BAD_GATEWAY, "bad_gateway"),
                EngineError::Sandbox(RunError::Agent(
                    faas_sandbox::agent::AgentError::TooLarge(_),
                )) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
                EngineError::Sandbox(RunError::Setup { .. }) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "sandbox_failed")
                }
                EngineError::Sandbox(RunError::Checkpoint(_)) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "checkpoint_failed")
                }
                EngineError::Sandbox(_)
                | EngineError::Store(_)
                | EngineError::Io { .. }
                | EngineError::Startup { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

fn body(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message } };
    (status, axum::Json(body)).into_response()
}

impl ApiError {
    /// The JSON body of this error, for channels that are not a plain response (streams).
    pub fn detail(&self) -> ErrorDetail {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %faas_engine::error_chain(self), "request failed");
            "internal error; the server log has the details".into()
        } else {
            self.to_string()
        };
        ErrorDetail { code: code.into(), message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            let detail = faas_engine::error_chain(&self);
            tracing::error!(error = %detail, "request failed");
            match &self {
                // The failing setup step is useful to the operator and reveals nothing.
                ApiError::Engine(EngineError::Sandbox(
                    e @ (RunError::Setup { .. } | RunError::Checkpoint(_)),
                )) => e.to_string(),
                _ => "internal error; the server log has the details".into(),
            }
        } else {
            self.to_string()
        };
        let mut response = body(status, code, message);
        if status == StatusCode::SERVICE_UNAVAILABLE
            || matches!(self, ApiError::Engine(EngineError::QuotaExceeded { transient: true, .. }))
        {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A panic in a handler becomes a JSON 500, never a dropped connection.
pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = what, "handler panicked");
    body(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the server log has the details".into(),
    )
}
