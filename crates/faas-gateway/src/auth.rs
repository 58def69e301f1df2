//! API keys: `faas_` + 48 hex digits of randomness, stored only as a SHA-256 hash (the key
//! is high-entropy, so a fast hash is enough and keeps each request cheap). Every request
//! but `/health` carries one; its tenant owns whatever the request creates.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use faas_api::Role;
use faas_engine::{Engine, Tenant};
use faas_store::KeyRecord;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::{AppState, ServeError};

pub const ADMIN_TENANT: &str = "admin";
const KEY_PREFIX: &str = "faas_";

/// Who is calling: the key's tenant and role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub role: Role,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin { Ok(()) } else { Err(ApiError::AdminOnly) }
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source failing is not something a server can continue without.
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    hex::encode(buf)
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh key and its record.
pub fn new_key(tenant: &str, name: Option<String>, role: Role) -> (String, KeyRecord) {
    let key = format!("{KEY_PREFIX}{}", random_hex(24));
    let record = KeyRecord {
        id: format!("key_{}", random_hex(8)),
        tenant: tenant.to_owned(),
        name,
        role,
        hash: hash_key(&key),
        created_at_ms: now_ms(),
        revoked: false,
        rate_tier: None,
    };
    (key, record)
}

fn presented_key(parts: &Parts) -> Option<&str> {
    let headers = &parts.headers;
    if let Some(value) =
        headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then_some(token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Keys seen recently, so that a request does not cost a store lookup. Revoking through
/// this server evicts at once; the TTL bounds how long a key revoked elsewhere (another
/// gateway of a cluster) keeps working.
#[derive(Default)]
pub struct KeyCache {
    entries: RwLock<HashMap<String, (KeyRecord, Instant)>>,
}

const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

impl KeyCache {
    fn get(&self, hash: &str) -> Option<KeyRecord> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(hash).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(k, _)| k.clone())
    }

    fn put(&self, record: KeyRecord) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
        }
        entries.insert(record.hash.clone(), (record, Instant::now()));
    }

    pub fn evict(&self, key_id: &str) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).retain(|_, (k, _)| k.id != key_id);
    }
}

/// The valid key a request presents: `None` without one, 401 for an unknown or revoked
/// one.
pub(crate) async fn resolve(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<KeyRecord>, ApiError> {
    let Some(key) = presented_key(parts) else { return Ok(None) };
    let hash = hash_key(key);
    let record = match state.keys.get(&hash) {
        Some(record) => record,
        None => {
            let record = state.engine.store().key_by_hash(&hash).await?.ok_or(ApiError::BadKey)?;
            state.keys.put(record.clone());
            record
        }
    };
    if record.revoked {
        return Err(ApiError::BadKey);
    }
    Ok(Some(record))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Resolved already by the rate limiter, when it ran.
        let record = match parts.extensions.remove::<KeyRecord>() {
            Some(record) => record,
            None => resolve(parts, state).await?.ok_or(ApiError::MissingKey)?,
        };
        Ok(Caller { tenant: Tenant(record.tenant), role: record.role })
    }
}

impl Caller {
    /// The tenant a request acts on: the caller's own, or for an admin any one named.
    pub fn tenant_or(&self, named: Option<String>) -> Result<Tenant, ApiError> {
        match named {
            Some(t) if t != self.tenant.0 => {
                self.require_admin()?;
                Ok(Tenant(t))
            }
            _ => Ok(self.tenant.clone()),
        }
    }
}

/// Makes sure an operator can get in: the key in FAAS_API_KEY becomes an admin key, or, on
/// a first start without one, a new admin key is written to `<data_dir>/admin.key` (0600).
pub async fn bootstrap_admin(
    engine: &Arc<Engine>,
    configured: Option<String>,
) -> Result<(), ServeError> {
    let store = engine.store();
    if let Some(key) = configured.filter(|k| !k.is_empty()) {
        let hash = hash_key(&key);
        match store.key_by_hash(&hash).await.map_err(ServeError::AdminKey)? {
            Some(existing) if existing.revoked => {
                tracing::warn!(id = %existing.id, "FAAS_API_KEY names a revoked key; it stays revoked")
            }
            Some(_) => {}
            None => {
                let record = KeyRecord {
                    id: format!("key_{}", random_hex(8)),
                    tenant: ADMIN_TENANT.into(),
                    name: Some("bootstrap (FAAS_API_KEY)".into()),
                    role: Role::Admin,
                    hash,
                    created_at_ms: now_ms(),
                    revoked: false,
                    rate_tier: None,
                };
                store.insert_key(record).await.map_err(ServeError::AdminKey)?;
            }
        }
        return Ok(());
    }
    if store.has_admin_key().await.map_err(ServeError::AdminKey)? {
        return Ok(());
    }
    let (key, record) = new_key(ADMIN_TENANT, Some("bootstrap (generated)".into()), Role::Admin);
    let path = engine.config().data_dir.join("admin.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(ServeError::AdminKeyFile)?;
    writeln!(file, "{key}").map_err(ServeError::AdminKeyFile)?;
    store.insert_key(record).await.map_err(ServeError::AdminKey)?;
    println!("faas admin key written to {}", path.display());
    Ok(())
}
