//! Language contexts: a Python or Node interpreter kept alive in a sandbox of its own,
//! whose globals survive between runs, like a notebook kernel. A context takes a sandbox
//! from the warm pool and keeps it until it is deleted or idle too long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_api::{ContextInfo, CreateContextRequest};
use faas_sandbox::{AgentSandbox, RunIo, RunOutcome};

use crate::plan::invalid;
use crate::pool::{PoolKey, Pools, discard};
use crate::{Engine, EngineError, Tenant};

/// Each context's interpreter has this name inside its sandbox.
const INTERPRETER: &str = "main";
const LANGUAGES: [&str; 2] = ["python", "javascript"];

/// The interpreter a context language names.
pub(crate) fn context_language(language: &str) -> Result<&'static str, EngineError> {
    match language.to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => Ok("python"),
        "javascript" | "js" | "node" | "nodejs" => Ok("javascript"),
        _ => Err(invalid("language", format!("contexts exist for {}", LANGUAGES.join(", ")))),
    }
}

struct Entry {
    info: Mutex<ContextInfo>,
    tenant: String,
    /// Locked for the length of a run: one run at a time per context.
    sandbox: tokio::sync::Mutex<Option<AgentSandbox>>,
    last_used: Mutex<Instant>,
    runs: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Contexts {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

impl Contexts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's context `id`; another tenant's is not found.
    fn get(&self, tenant: &Tenant, id: &str) -> Result<Arc<Entry>, EngineError> {
        self.lock()
            .get(id)
            .filter(|e| e.tenant == tenant.0)
            .cloned()
            .ok_or_else(|| EngineError::NotFound { kind: "context", id: id.to_owned() })
    }

    /// Deletes contexts idle longer than `timeout`.
    pub fn expire(&self, timeout: Duration) {
        let expired: Vec<Arc<Entry>> = {
            let mut entries = self.lock();
            let ids: Vec<String> = entries
                .iter()
                .filter(|(_, e)| {
                    e.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| entries.remove(id)).collect()
        };
        for entry in expired {
            tokio::spawn(async move {
                if let Some(sandbox) = entry.sandbox.lock().await.take() {
                    discard(sandbox);
                }
            });
        }
    }
}

impl Engine {
    pub async fn create_context(
        &self,
        tenant: &Tenant,
        req: CreateContextRequest,
    ) -> Result<ContextInfo, EngineError> {
        let language = context_language(&req.language)?;
        let max = self.config.pools.max_contexts_per_tenant;
        let image = self.image(req.image.as_deref())?;
        let limits = self.sandbox_limits(req.memory_mb, req.cpu, req.pids)?;
        let env = self.env(&image, req.env)?;
        let _permit = self.admit()?;
        let info = ContextInfo {
            id: format!("ctx_{}", uuid::Uuid::now_v7().simple()),
            language: language.into(),
            image: image.name.clone(),
            created_at_ms: crate::execute::now_ms(),
            runs: 0,
        };
        let entry = Arc::new(Entry {
            info: Mutex::new(info.clone()),
            tenant: tenant.0.clone(),
            sandbox: tokio::sync::Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
            runs: AtomicU64::new(0),
        });
        // The slot is taken before any await, so concurrent creations cannot pass the cap.
        {
            let mut entries = self.contexts.lock();
            if entries.values().filter(|e| e.tenant == tenant.0).count() >= max {
                return Err(EngineError::Conflict {
                    message: format!("a tenant may hold at most {max} contexts"),
                });
            }
            entries.insert(info.id.clone(), Arc::clone(&entry));
        }
        let key = PoolKey::new(tenant, &image, &limits, None);
        let created = async {
            let (sandbox, _) = self.pools.checkout(&key, &image).await?;
            let confine = self.confine("/home/user");
            match sandbox.context_create(INTERPRETER, language, env, confine).await {
                Ok(()) => Ok(sandbox),
                Err(e) => {
                    discard(sandbox);
                    Err(EngineError::from(e))
                }
            }
        }
        .await;
        match created {
            Ok(sandbox) => {
                *entry.sandbox.lock().await = Some(sandbox);
                Ok(info)
            }
            Err(e) => {
                self.contexts.lock().remove(&info.id);
                Err(e)
            }
        }
    }

    pub fn context(&self, tenant: &Tenant, id: &str) -> Result<ContextInfo, EngineError> {
        let entry = self.contexts.get(tenant, id)?;
        let mut info = entry.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        info.runs = entry.runs.load(Ordering::Relaxed);
        Ok(info)
    }

    pub fn list_contexts(&self, tenant: &Tenant) -> Vec<ContextInfo> {
        let ids: Vec<String> = self
            .contexts
            .lock()
            .iter()
            .filter(|(_, e)| e.tenant == tenant.0)
            .map(|(id, _)| id.clone())
            .collect();
        let mut list: Vec<ContextInfo> =
            ids.iter().filter_map(|id| self.context(tenant, id).ok()).collect();
        list.sort_by_key(|c| c.created_at_ms);
        list
    }

    pub async fn delete_context(&self, tenant: &Tenant, id: &str) -> Result<(), EngineError> {
        let entry = self.contexts.get(tenant, id)?;
        self.contexts.lock().remove(id);
        if let Some(sandbox) = entry.sandbox.lock().await.take() {
            discard(sandbox);
        }
        Ok(())
    }

    /// Runs code in a context: one run at a time (409 while another is running).
    pub(crate) async fn run_in_context(
        &self,
        tenant: &Tenant,
        id: &str,
        code: String,
        timeout: Duration,
        io: RunIo,
    ) -> Result<RunOutcome, EngineError> {
        let entry = self.contexts.get(tenant, id)?;
        let guard = entry.sandbox.try_lock().map_err(|_| EngineError::Conflict {
            message: format!("context {id} is running other code"),
        })?;
        let sandbox = guard
            .as_ref()
            .ok_or_else(|| EngineError::NotFound { kind: "context", id: id.to_owned() })?;
        *entry.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        entry.runs.fetch_add(1, Ordering::Relaxed);
        match sandbox.context_run(INTERPRETER, code, timeout, io).await {
            Ok(outcome) => Ok(outcome),
            Err(faas_sandbox::RunError::Agent(faas_sandbox::agent::AgentError::Refused {
                message,
                ..
            })) if message.starts_with("no context") => Err(EngineError::Conflict {
                message: format!(
                    "context {id} lost its interpreter (killed at a timeout?); create a new one"
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Expires idle contexts every few seconds, for as long as the engine lives.
pub(crate) fn spawn_janitor(engine: std::sync::Weak<Engine>, pools: std::sync::Weak<Pools>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let (Some(engine), Some(_)) = (engine.upgrade(), pools.upgrade()) else {
                return;
            };
            engine
                .contexts
                .expire(Duration::from_secs(engine.config.pools.context_idle_timeout_secs));
        }
    });
}
