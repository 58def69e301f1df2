//! Routes, one file per resource.

mod execute;
mod health;
mod keys;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health::health))
        .route("/api/v1/execute", post(execute::execute))
        .route("/api/v1/executions/{id}", get(execute::get_execution))
        .route("/api/v1/keys", post(keys::create).get(keys::list))
        .route("/api/v1/keys/{id}", delete(keys::revoke))
}
