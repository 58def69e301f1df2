//! Language contexts inside an instance: interpreters whose globals live as long as the
//! instance runs, and travel with it into snapshots, restores and branches (with their
//! ids). Code runs in them through the instance's exec with `context_id`.

use faas_api::{ContextInfo, InstanceContextRequest};

use crate::contexts::context_language;
use crate::execute::now_ms;
use crate::{Engine, EngineError, Tenant};

/// Contexts one instance may hold.
const MAX_CONTEXTS: usize = 16;

impl Engine {
    pub async fn create_instance_context(
        &self,
        tenant: &Tenant,
        id: &str,
        req: InstanceContextRequest,
    ) -> Result<ContextInfo, EngineError> {
        let live = self.live(tenant, id)?;
        // Under the lifecycle lock: a snapshot never holds a context half made.
        let _guard = live.lifecycle.lock().await;
        let sandbox = self.running(&live)?;
        let language = context_language(&req.language)?;
        let record = live.record();
        let image = self.image(Some(&record.image))?;
        let mut env = record.env.clone();
        env.extend(req.env);
        let env = self.env(&image, env)?;
        let info = ContextInfo {
            id: format!("ctx_{}", uuid::Uuid::now_v7().simple()),
            language: language.into(),
            image: record.image,
            created_at_ms: now_ms(),
            runs: 0,
        };
        {
            let mut contexts = live.contexts.lock().unwrap_or_else(|e| e.into_inner());
            if contexts.len() >= MAX_CONTEXTS {
                return Err(EngineError::Conflict {
                    message: format!("an instance may hold at most {MAX_CONTEXTS} contexts"),
                });
            }
            contexts.push(info.clone());
        }
        live.touch();
        let created =
            sandbox.context_create(&info.id, language, env, self.confine("/home/user")).await;
        if let Err(e) = created {
            live.contexts.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| c.id != info.id);
            return Err(e.into());
        }
        Ok(info)
    }

    pub fn instance_contexts(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Vec<ContextInfo>, EngineError> {
        let live = self.live(tenant, id)?;
        Ok(live.contexts.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    pub async fn delete_instance_context(
        &self,
        tenant: &Tenant,
        id: &str,
        context_id: &str,
    ) -> Result<(), EngineError> {
        let live = self.live(tenant, id)?;
        let _guard = live.lifecycle.lock().await;
        let sandbox = self.running(&live)?;
        let removed = {
            let mut contexts = live.contexts.lock().unwrap_or_else(|e| e.into_inner());
            let before = contexts.len();
            contexts.retain(|c| c.id != context_id);
            contexts.len() < before
        };
        if !removed {
            return Err(EngineError::NotFound { kind: "context", id: context_id.to_owned() });
        }
        Ok(sandbox.context_delete(context_id).await?)
    }

    /// Checks that the instance holds `context_id` and counts a run in it.
    pub(super) fn use_instance_context(
        &self,
        live: &super::Live,
        context_id: &str,
    ) -> Result<(), EngineError> {
        let mut contexts = live.contexts.lock().unwrap_or_else(|e| e.into_inner());
        let context = contexts
            .iter_mut()
            .find(|c| c.id == context_id)
            .ok_or_else(|| EngineError::NotFound { kind: "context", id: context_id.to_owned() })?;
        context.runs += 1;
        Ok(())
    }
}
