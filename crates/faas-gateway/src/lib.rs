//! The HTTP gateway: authenticates, parses, calls the engine, maps the answer. Handlers
//! hold no logic of their own beyond that translation.

mod auth;
mod error;
mod json;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use faas_engine::{Config, Engine};
use thiserror::Error;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::ApiError;

#[derive(Clone)]
pub(crate) struct AppState {
    engine: Arc<Engine>,
    keys: Arc<auth::KeyCache>,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Engine(#[from] faas_engine::EngineError),
    #[error("preparing the admin key")]
    AdminKey(#[source] faas_store::StoreError),
    #[error("writing the admin key file")]
    AdminKeyFile(#[source] std::io::Error),
    #[error("listening on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// Starts the engine and serves the API until SIGINT or SIGTERM. `admin_key` is the
/// operator's bootstrap key (FAAS_API_KEY), if any.
pub async fn serve(config: Config, admin_key: Option<String>) -> Result<(), ServeError> {
    let listen = config.listen;
    let body_limit = config.max_request_bytes;
    let engine = Engine::start(config).await?;
    auth::bootstrap_admin(&engine, admin_key).await?;

    let app = router(AppState { engine: Arc::clone(&engine), keys: Arc::default() }, body_limit);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind { addr: listen, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    // Tests and scripts read this line to find the port.
    println!("faas listening on http://{local}");
    tracing::info!(%local, "listening");
    let shutdown_engine = Arc::clone(&engine);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: killing running sandboxes");
            shutdown_engine.shutdown().await;
        })
        .await
        .map_err(ServeError::Serve)
}

fn router(state: AppState, body_limit: usize) -> Router {
    routes::routes()
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
