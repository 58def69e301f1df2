//! Credentials that open one instance without an API key: SSH keys and public port tokens.
//! The gateway and the SSH server make the secrets; the engine keeps their hashes, scoped
//! to the tenant's instance, and checks them on every use.

use faas_store::{Credential, CredentialKind};

use crate::execute::now_ms;
use crate::{Engine, EngineError, Tenant};

/// The most valid credentials of one kind an instance may have.
const MAX_CREDENTIALS: usize = 64;

impl Engine {
    /// Records a credential for one of the tenant's instances (404 for anyone else's).
    pub async fn add_credential(
        &self,
        tenant: &Tenant,
        instance_id: &str,
        kind: CredentialKind,
        port: Option<u16>,
        hash: String,
    ) -> Result<Credential, EngineError> {
        self.live(tenant, instance_id)?;
        // Each is a row in the store: a bound keeps a script in a loop from growing it.
        if self.store.credentials(&tenant.0, instance_id, kind).await?.len() >= MAX_CREDENTIALS {
            return Err(EngineError::Conflict {
                message: format!(
                    "instance {instance_id} has {MAX_CREDENTIALS} {}s already; revoke some first",
                    kind.as_str()
                ),
            });
        }
        let credential = Credential {
            id: format!("cred_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.0.clone(),
            instance_id: instance_id.to_owned(),
            kind,
            port,
            hash,
            created_at_ms: now_ms(),
        };
        self.store.insert_credential(credential.clone()).await?;
        Ok(credential)
    }

    /// The credential with this hash and kind, if it is valid and its instance still exists.
    pub async fn credential(
        &self,
        hash: &str,
        kind: CredentialKind,
    ) -> Result<Option<Credential>, EngineError> {
        let Some(credential) = self.store.credential_by_hash(hash).await? else {
            return Ok(None);
        };
        let tenant = Tenant(credential.tenant.clone());
        let valid = credential.kind == kind && self.live(&tenant, &credential.instance_id).is_ok();
        Ok(valid.then_some(credential))
    }

    pub async fn credentials(
        &self,
        tenant: &Tenant,
        instance_id: &str,
        kind: CredentialKind,
    ) -> Result<Vec<Credential>, EngineError> {
        self.live(tenant, instance_id)?;
        Ok(self.store.credentials(&tenant.0, instance_id, kind).await?)
    }

    /// Revokes the instance's credentials of `kind` (for `port` only, if given).
    pub async fn revoke_credentials(
        &self,
        tenant: &Tenant,
        instance_id: &str,
        kind: CredentialKind,
        port: Option<u16>,
    ) -> Result<u64, EngineError> {
        self.live(tenant, instance_id)?;
        Ok(self.store.revoke_credentials(&tenant.0, instance_id, Some(kind), port, None).await?)
    }

    /// Revokes one credential of the instance; 404 when it has no such (valid) one.
    pub async fn revoke_credential(
        &self,
        tenant: &Tenant,
        instance_id: &str,
        kind: CredentialKind,
        id: &str,
    ) -> Result<(), EngineError> {
        self.live(tenant, instance_id)?;
        let store = &self.store;
        match store.revoke_credentials(&tenant.0, instance_id, Some(kind), None, Some(id)).await? {
            0 => Err(EngineError::NotFound { kind: kind.as_str(), id: id.to_owned() }),
            _ => Ok(()),
        }
    }
}
