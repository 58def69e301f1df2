//! Tenant quotas: checked before any work starts, so a call over one changes nothing.
//! Sandboxes and memory in use free themselves (429: try again); instances, snapshot
//! storage and the month's spend wait for the tenant or an admin (403).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use faas_api::{InstanceStatus, QuotaStatus, QuotaUse, Quotas};

use crate::execute::now_ms;
use crate::{Engine, EngineError, Tenant};

/// What each tenant's executions hold right now (instances are counted from the registry).
#[derive(Default)]
pub(crate) struct TenantLoad {
    held: Arc<Mutex<HashMap<String, Held>>>,
    /// Admins' overrides, read from the store once per tenant.
    overrides: RwLock<HashMap<String, Quotas>>,
}

impl TenantLoad {
    /// What `tenant`'s executions hold now.
    fn held_by(&self, tenant: &str) -> Held {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(tenant).copied().unwrap_or_default()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    sandboxes: u64,
    memory_mb: u64,
}

/// Sandboxes and memory an execution holds against its tenant's quota, until dropped.
pub(crate) struct LoadPermit {
    held: Arc<Mutex<HashMap<String, Held>>>,
    tenant: String,
    taken: Held,
}

impl Drop for LoadPermit {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(&self.tenant) {
            h.sandboxes -= self.taken.sandboxes;
            h.memory_mb -= self.taken.memory_mb;
            if h.sandboxes == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

fn exceeded(quota: &'static str, transient: bool, message: String) -> EngineError {
    EngineError::QuotaExceeded { quota, transient, message }
}

impl Engine {
    /// The quotas in force for `tenant`: the admin's overrides over the configured defaults.
    pub(crate) async fn quotas(&self, tenant: &str) -> Result<Quotas, EngineError> {
        let cached =
            self.load.overrides.read().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned();
        let overrides = match cached {
            Some(o) => o,
            None => {
                let stored = self.store.quotas(tenant).await?;
                let o: Quotas =
                    stored.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or_default();
                self.load
                    .overrides
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(tenant.to_owned(), o.clone());
                o
            }
        };
        Ok(self.effective(&overrides))
    }

    fn effective(&self, o: &Quotas) -> Quotas {
        let d = &self.config.quotas;
        Quotas {
            max_concurrent_sandboxes: o
                .max_concurrent_sandboxes
                .or(Some(d.max_concurrent_sandboxes)),
            max_instances: o.max_instances.or(Some(d.max_instances)),
            max_memory_mb: o.max_memory_mb.or(Some(d.max_memory_mb)),
            max_snapshot_storage_mb: o.max_snapshot_storage_mb.or(Some(d.max_snapshot_storage_mb)),
            monthly_spend_cap_micros: o
                .monthly_spend_cap_micros
                .or(Some(d.monthly_spend_cap_micros)),
        }
    }

    /// Admits `sandboxes` sandboxes of `memory_mb` each for an execution, or says which
    /// quota stands in the way.
    pub(crate) async fn admit_tenant(
        &self,
        tenant: &Tenant,
        sandboxes: u64,
        memory_mb: u64,
    ) -> Result<LoadPermit, EngineError> {
        let quotas = self.quotas(&tenant.0).await?;
        self.check_spend(tenant, &quotas).await?;
        let taken = Held { sandboxes, memory_mb: memory_mb.saturating_mul(sandboxes) };
        // Instances and executions counted and taken under the registry's lock, which
        // instance creation holds too: concurrent calls cannot both pass.
        let instances = self.instances.lock();
        let (running, running_memory) = instance_load(&instances, &tenant.0);
        let mut held = self.load.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = held.get(&tenant.0).copied().unwrap_or_default();
        check_load(
            &quotas,
            (now.sandboxes + running, now.memory_mb + running_memory),
            (taken.sandboxes, taken.memory_mb),
        )?;
        drop(instances);
        let entry = held.entry(tenant.0.clone()).or_default();
        entry.sandboxes += taken.sandboxes;
        entry.memory_mb += taken.memory_mb;
        Ok(LoadPermit { held: Arc::clone(&self.load.held), tenant: tenant.0.clone(), taken })
    }

    /// Whether instances of `memory_mb` may start for `tenant`: `adding` new ones, or one
    /// that exists with 0. Answers the quotas in force. Scratch instances of executions
    /// are admitted with their execution.
    pub(crate) async fn admit_instance(
        &self,
        tenant: &Tenant,
        memory_mb: u64,
        adding: u64,
    ) -> Result<Quotas, EngineError> {
        let quotas = self.quotas(&tenant.0).await?;
        self.check_spend(tenant, &quotas).await?;
        let instances = self.instances.lock();
        self.instance_fits(&instances, &tenant.0, &quotas, memory_mb, adding)?;
        Ok(quotas)
    }

    /// Whether `adding` new instances (or one that exists, with 0) of `memory_mb` fit the
    /// tenant's quotas, counted under the registry's lock (`instances`).
    pub(crate) fn instance_fits(
        &self,
        instances: &HashMap<String, Arc<crate::instances::Live>>,
        tenant: &str,
        quotas: &Quotas,
        memory_mb: u64,
        adding: u64,
    ) -> Result<(), EngineError> {
        if adding > 0 {
            let held = crate::instances::held_in(instances, tenant);
            instance_count_allowed(quotas, held as u64, adding)?;
        }
        let (running, running_memory) = instance_load(instances, tenant);
        let executions = self.load.held_by(tenant);
        let starting = adding.max(1);
        check_load(
            quotas,
            (executions.sandboxes + running, executions.memory_mb + running_memory),
            (starting, memory_mb.saturating_mul(starting)),
        )
    }

    pub(crate) async fn check_spend(
        &self,
        tenant: &Tenant,
        quotas: &Quotas,
    ) -> Result<(), EngineError> {
        let cap = quotas.monthly_spend_cap_micros.unwrap_or(0);
        if cap == 0 {
            return Ok(());
        }
        let (_, spent) =
            self.store.month_spend(&tenant.0, faas_store::billing::month_of(now_ms())).await?;
        if spent >= cap {
            return Err(exceeded(
                "monthly_spend_cap_micros",
                false,
                format!(
                    "quota monthly_spend_cap_micros: this month's spend ({spent} micro-units) has reached the cap of {cap}"
                ),
            ));
        }
        Ok(())
    }

    /// Whether the tenant's stored snapshot data is under its quota.
    pub(crate) async fn check_snapshot_storage(&self, tenant: &Tenant) -> Result<(), EngineError> {
        let max_mb = self.quotas(&tenant.0).await?.max_snapshot_storage_mb.unwrap_or(0);
        if max_mb == 0 {
            return Ok(());
        }
        let stored = self.store.stored_bytes(&tenant.0).await?;
        if stored >= max_mb.saturating_mul(1 << 20) {
            return Err(exceeded(
                "max_snapshot_storage_mb",
                false,
                format!(
                    "quota max_snapshot_storage_mb: the tenant stores {} MiB of snapshots, the most allowed is {max_mb} MiB",
                    stored >> 20
                ),
            ));
        }
        Ok(())
    }

    /// A tenant's quotas, overrides and what it uses of each.
    pub async fn quota_status(&self, tenant: &Tenant) -> Result<QuotaStatus, EngineError> {
        let quotas = self.quotas(&tenant.0).await?;
        let overrides = self
            .load
            .overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tenant.0)
            .cloned()
            .unwrap_or_default();
        let (instances, instance_memory) = instance_load(&self.instances.lock(), &tenant.0);
        let executions = self.load.held_by(&tenant.0);
        let month = faas_store::billing::month_of(now_ms());
        let in_use = QuotaUse {
            concurrent_sandboxes: executions.sandboxes + instances,
            instances: self.instances.held_by(&tenant.0) as u64,
            memory_mb: executions.memory_mb + instance_memory,
            snapshot_storage_bytes: self.store.stored_bytes(&tenant.0).await?,
            month_spend_micros: self.store.month_spend(&tenant.0, month).await?.1,
        };
        Ok(QuotaStatus { tenant: tenant.0.clone(), quotas, overrides, in_use })
    }

    /// Replaces a tenant's overrides (admin); fields left out take the defaults.
    pub async fn set_quotas(
        &self,
        tenant: &Tenant,
        overrides: Quotas,
    ) -> Result<QuotaStatus, EngineError> {
        if tenant.0.is_empty() || tenant.0.len() > 128 {
            return Err(crate::plan::invalid("tenant", "must be 1 to 128 characters"));
        }
        let json = (overrides != Quotas::default())
            .then(|| serde_json::to_string(&overrides).unwrap_or_default());
        self.store.set_quotas(&tenant.0, json).await?;
        self.load
            .overrides
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.0.clone(), overrides);
        self.quota_status(tenant).await
    }
}

/// Whether a tenant holding `held` instances may make `adding` more.
pub(crate) fn instance_count_allowed(
    quotas: &Quotas,
    held: u64,
    adding: u64,
) -> Result<(), EngineError> {
    let max = quotas.max_instances.unwrap_or(0);
    if max > 0 && held + adding > max {
        return Err(exceeded(
            "max_instances",
            false,
            format!(
                "quota max_instances: a tenant may hold {max} instances ({held} held, {adding} more asked for)"
            ),
        ));
    }
    Ok(())
}

/// Running (or starting) instances of a tenant that are not an execution's own, and
/// their memory limits added up.
fn instance_load(
    instances: &HashMap<String, Arc<crate::instances::Live>>,
    tenant: &str,
) -> (u64, u64) {
    instances
        .values()
        .filter(|l| l.tenant == tenant)
        .map(|l| l.record())
        .filter(|r| !r.metadata.contains_key(crate::stateful::SCRATCH))
        .filter(|r| {
            matches!(
                r.status,
                InstanceStatus::Creating | InstanceStatus::Running | InstanceStatus::Stopping
            )
        })
        .fold((0, 0), |(n, mb), r| (n + 1, mb + r.limits.memory_mb))
}

/// Whether `asked` (sandboxes, MiB) fits beside `used`: 429 when it will once others end,
/// 403 when it never can.
fn check_load(quotas: &Quotas, used: (u64, u64), asked: (u64, u64)) -> Result<(), EngineError> {
    let max = quotas.max_concurrent_sandboxes.unwrap_or(0);
    if max > 0 && used.0 + asked.0 > max {
        return Err(exceeded(
            "max_concurrent_sandboxes",
            asked.0 <= max,
            format!(
                "quota max_concurrent_sandboxes: a tenant may run {max} sandboxes at once ({} running, {} asked for)",
                used.0, asked.0
            ),
        ));
    }
    let max = quotas.max_memory_mb.unwrap_or(0);
    if max > 0 && used.1.saturating_add(asked.1) > max {
        return Err(exceeded(
            "max_memory_mb",
            asked.1 <= max,
            format!(
                "quota max_memory_mb: the tenant's running sandboxes may hold {max} MiB of memory ({} MiB held, {} MiB asked for)",
                used.1, asked.1
            ),
        ));
    }
    Ok(())
}
