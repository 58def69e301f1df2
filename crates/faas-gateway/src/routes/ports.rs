//! The port proxy: any HTTP request (WebSocket upgrades included) to
//! `/api/v1/instances/{id}/ports/{port}/{path}` goes to `port` on the instance's loopback,
//! through its agent, as `/{path}`. The caller's API key is not passed on. A port exposed
//! publicly is also reached at `/p/{token}/{path}` without a key.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use faas_engine::{Engine, EngineError, Tenant};
use faas_store::CredentialKind;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// Headers that belong to this hop or to our API, not to the instance's program.
const DROPPED: [&str; 3] = ["authorization", "x-api-key", "host"];

pub async fn proxy_root(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, u16)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(&state.engine, &caller.tenant, &id, port, "", req).await
}

pub async fn proxy(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, port, rest)): Path<(String, u16, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(&state.engine, &caller.tenant, &id, port, &rest, req).await
}

/// `/p/{token}/{path}`: a port exposed publicly, without an API key (see routes::access).
pub async fn public_root(
    State(state): State<AppState>,
    Path(token): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    public(&state.engine, &token, "", req).await
}

pub async fn public_proxy(
    State(state): State<AppState>,
    Path((token, rest)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    public(&state.engine, &token, &rest, req).await
}

async fn public(
    engine: &Engine,
    token: &str,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let hash = crate::auth::hash_key(token);
    let credential = engine.credential(&hash, CredentialKind::PortToken).await?;
    let Some(credential) = credential else {
        return Err(ApiError::Engine(EngineError::NotFound {
            kind: "public port",
            id: "(this token)".into(),
        }));
    };
    let tenant = Tenant(credential.tenant);
    let port = credential.port.unwrap_or_default();
    forward(engine, &tenant, &credential.instance_id, port, rest, req).await
}

async fn forward(
    engine: &Engine,
    tenant: &Tenant,
    id: &str,
    port: u16,
    rest: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let stream = engine.instance_connect(tenant, id, port).await?;
    let bad_gateway = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::Engine(EngineError::BadGateway {
            message: format!("port {port} of instance {id}: {what}: {e}"),
        })
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway("handshake", &e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });

    let client_upgrade =
        req.headers().contains_key(header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = match parts.uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    let mut outgoing = axum::http::Request::builder().method(parts.method).uri(path);
    for (name, value) in &parts.headers {
        if !DROPPED.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let host =
        HeaderValue::from_str(&format!("127.0.0.1:{port}")).map_err(|e| bad_gateway("host", &e))?;
    let outgoing =
        outgoing.header(header::HOST, host).body(body).map_err(|e| bad_gateway("request", &e))?;
    let mut response =
        sender.send_request(outgoing).await.map_err(|e| bad_gateway("request", &e))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream.await) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(upstream),
                )
                .await;
            }
        });
    }
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}
