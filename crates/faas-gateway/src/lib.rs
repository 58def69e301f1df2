//! The HTTP gateway: authenticates, parses, calls the engine, maps the answer. Handlers
//! hold no logic of their own beyond that translation.

mod auth;
mod error;
mod json;
mod limits;
mod openapi;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use faas_engine::{Config, Engine};
use thiserror::Error;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

#[derive(Clone)]
pub(crate) struct AppState {
    engine: Arc<Engine>,
    keys: Arc<auth::KeyCache>,
    /// The built-in SSH server, when enabled.
    ssh: Option<routes::SshEndpoint>,
    rates: Arc<limits::RateLimiter>,
    /// Renders `/metrics`.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
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
    #[error("configuration: {0}")]
    Config(String),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("the SSH host key {path}")]
    HostKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the engine and serves the API until SIGINT or SIGTERM. `admin_key` is the
/// operator's bootstrap key (FAAS_API_KEY), if any.
pub async fn serve(config: Config, admin_key: Option<String>) -> Result<(), ServeError> {
    let listen = config.listen;
    let body_limit = config.max_request_bytes;
    let cors = cors_layer(&config.cors_origins)?;
    let ssh_config = config.ssh.clone();
    let host_key_path = config.data_dir.join("ssh_host_ed25519_key");
    // Before the engine starts, so that none of its metrics is lost.
    let metrics = limits::install_recorder();
    let engine = Engine::start(config).await?;
    auth::bootstrap_admin(&engine, admin_key).await?;
    let ssh = match ssh_config.enabled {
        true => Some(start_ssh(&engine, &ssh_config, &host_key_path).await?),
        false => None,
    };

    let state = AppState {
        engine: Arc::clone(&engine),
        keys: Arc::default(),
        ssh,
        rates: Arc::default(),
        metrics,
    };
    let app = router(state, body_limit);
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
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

/// Binds the SSH server and serves it on a task of its own.
async fn start_ssh(
    engine: &Arc<Engine>,
    config: &faas_engine::config::SshConfig,
    host_key_path: &std::path::Path,
) -> Result<routes::SshEndpoint, ServeError> {
    let host_key = faas_ssh::load_or_create_host_key(host_key_path)
        .map_err(|source| ServeError::HostKey { path: host_key_path.to_owned(), source })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    println!("faas ssh on {local}");
    tracing::info!(%local, "ssh listening");
    let endpoint = routes::SshEndpoint {
        port: local.port(),
        public_host: config.public_host.clone(),
        host_key_fingerprint: faas_ssh::fingerprint_of(host_key.public_key()),
        host_public_key: faas_ssh::public_openssh(host_key.public_key()),
    };
    tokio::spawn(faas_ssh::serve(Arc::clone(engine), listener, host_key));
    Ok(endpoint)
}

fn router(state: AppState, body_limit: usize) -> Router {
    routes::routes()
        .0
        // Route layers run once a route matched: the metrics know its pattern.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::rate_limit))
        .route_layer(axum::middleware::from_fn(limits::http_metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(error::panic_response))
        // Every request gets an id (the caller's `x-request-id`, or a new UUID), which
        // its log lines carry and its response returns.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Lets pages of the configured origins call the API from a browser: preflights are
/// answered here, before auth (they carry no key), and the answers' own headers (request
/// id, rate limits) are readable by the page.
fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, ServeError> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| {
                    ServeError::Config(format!("cors_origins: {o:?} is not an origin"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    let methods =
        [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD];
    let name = HeaderName::from_static;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(methods)
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                name("x-api-key"),
                name("x-request-id"),
            ])
            .expose_headers([
                name("x-request-id"),
                name("x-ratelimit-limit"),
                name("x-ratelimit-remaining"),
                name("x-ratelimit-reset"),
                header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
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
