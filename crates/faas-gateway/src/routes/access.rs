//! Ways into an instance without the API key, each a secret scoped to one instance:
//!
//! - `GET /api/v1/instances/{id}/ssh` issues an SSH key pair for the built-in SSH server
//!   (the private half is in the answer only); `DELETE` revokes every key of the instance,
//!   `DELETE .../ssh/keys/{key_id}` one.
//! - `POST /api/v1/instances/{id}/public-ports` {port} exposes a port at `/p/{token}/`;
//!   `GET` lists the exposed ports, `DELETE .../public-ports/{port}` closes one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use faas_api::{ExposePortRequest, PublicPort, SshAccess};
use faas_engine::EngineError;
use faas_store::CredentialKind;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Caller, hash_key, random_hex};
use crate::error::ApiError;
use crate::json::ApiJson;

/// Where the SSH server listens, as `GET .../ssh` reports it.
#[derive(Debug, Clone)]
pub struct SshEndpoint {
    pub port: u16,
    pub public_host: Option<String>,
    pub host_key_fingerprint: String,
    pub host_public_key: String,
}

/// The host name the caller reached the API at (without its port).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let name = match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => host.split(':').next()?.to_owned(),
    };
    (!name.is_empty()).then_some(name)
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/ssh",
    operation_id = "issue_ssh",
    tag = "access",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "A fresh key pair and how to connect", body = faas_api::SshAccess))
)]
pub async fn issue_ssh(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SshAccess>, ApiError> {
    let Some(endpoint) = &state.ssh else {
        return Err(ApiError::Engine(EngineError::Unsupported {
            what: "SSH".into(),
            why: "the SSH server is disabled in this server's configuration ([ssh] enabled)".into(),
        }));
    };
    let key = faas_ssh::issue_key(&id)
        .map_err(|e| ApiError::Internal(format!("generating a key: {e}")))?;
    let credential = state
        .engine
        .add_credential(&caller.tenant, &id, CredentialKind::SshKey, None, key.fingerprint)
        .await?;
    let host = endpoint
        .public_host
        .clone()
        .or_else(|| request_host(&headers))
        .unwrap_or_else(|| "127.0.0.1".into());
    let command = format!("ssh -i instance_key -p {} {id}@{host}", endpoint.port);
    Ok(Json(SshAccess {
        host,
        port: endpoint.port,
        user: id,
        key_id: credential.id,
        private_key: key.private_key,
        public_key: key.public_key,
        host_key_fingerprint: endpoint.host_key_fingerprint.clone(),
        host_public_key: endpoint.host_public_key.clone(),
        command,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}/ssh",
    operation_id = "revoke_ssh",
    tag = "access",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "How many keys were revoked: an object with revoked, a count", body = Object))
)]
pub async fn revoke_ssh(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let n =
        state.engine.revoke_credentials(&caller.tenant, &id, CredentialKind::SshKey, None).await?;
    Ok(Json(json!({ "revoked": n })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}/ssh/keys/{key_id}",
    operation_id = "revoke_ssh_key",
    tag = "access",
    params(("id" = String, Path, description = "Instance id"), ("key_id" = String, Path, description = "SSH key id")),
    responses((status = 204, description = "Revoked"))
)]
pub async fn revoke_ssh_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.engine.revoke_credential(&caller.tenant, &id, CredentialKind::SshKey, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/public-ports",
    operation_id = "expose_port",
    tag = "access",
    params(("id" = String, Path, description = "Instance id")),
    request_body = faas_api::ExposePortRequest,
    responses((status = 201, description = "The public URL (its token shown once)", body = faas_api::PublicPort))
)]
pub async fn expose_port(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExposePortRequest>,
) -> Result<(StatusCode, Json<PublicPort>), ApiError> {
    if req.port == 0 {
        return Err(ApiError::InvalidRequest("port must be between 1 and 65535".into()));
    }
    let token = format!("pt_{}", random_hex(24));
    let credential = state
        .engine
        .add_credential(
            &caller.tenant,
            &id,
            CredentialKind::PortToken,
            Some(req.port),
            hash_key(&token),
        )
        .await?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    Ok((
        StatusCode::CREATED,
        Json(PublicPort {
            port: req.port,
            url: Some(format!("http://{host}/p/{token}/")),
            token: Some(token),
            created_at_ms: credential.created_at_ms,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}/public-ports",
    operation_id = "list_public_ports",
    tag = "access",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "The exposed ports: an object with ports, a list of PublicPort", body = Object))
)]
pub async fn public_ports(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tokens = state.engine.credentials(&caller.tenant, &id, CredentialKind::PortToken).await?;
    let ports: Vec<PublicPort> = tokens
        .into_iter()
        .map(|c| PublicPort {
            port: c.port.unwrap_or_default(),
            url: None,
            token: None,
            created_at_ms: c.created_at_ms,
        })
        .collect();
    Ok(Json(json!({ "ports": ports })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}/public-ports/{port}",
    operation_id = "close_public_port",
    tag = "access",
    params(("id" = String, Path, description = "Instance id"), ("port" = u16, Path, description = "Port")),
    responses((status = 204, description = "Closed"))
)]
pub async fn close_port(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, u16)>,
) -> Result<StatusCode, ApiError> {
    let kind = CredentialKind::PortToken;
    match state.engine.revoke_credentials(&caller.tenant, &id, kind, Some(port)).await? {
        0 => Err(ApiError::Engine(EngineError::NotFound {
            kind: "public port",
            id: port.to_string(),
        })),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}
