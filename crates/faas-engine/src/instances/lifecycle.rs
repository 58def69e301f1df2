//! Create, start, stop, delete, get and list.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use faas_api::{CreateInstanceRequest, Instance, InstanceLimits, InstanceStatus};
use faas_sandbox::{AgentSandbox, AgentSpec, LaunchSpec, Limits};

use super::Live;
use crate::execute::now_ms;
use crate::plan::invalid;
use crate::{Engine, EngineError, Tenant};

const MIN_DISK_MB: u64 = 16;
const MAX_METADATA: usize = 64;

/// Distinguishes successive sandboxes (and cgroups) of one instance.
static STARTS: AtomicU64 = AtomicU64::new(0);

/// A fresh name for an instance's next sandbox (and its cgroup).
/// The mode an instance's sandbox starts for: an execution's (its scratch instances), or
/// persistent.
pub(crate) fn start_mode(record: &Instance) -> &'static str {
    match record.metadata.get(crate::stateful::SCRATCH).map(String::as_str) {
        Some("checkpointed") => "checkpointed",
        Some("branched") => "branched",
        _ => "persistent",
    }
}

pub(crate) fn sandbox_id(instance_id: &str) -> String {
    format!("{instance_id}_{}", STARTS.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if metadata.len() > MAX_METADATA {
        return Err(invalid("metadata", format!("at most {MAX_METADATA} entries")));
    }
    for (k, v) in metadata {
        if k.starts_with("faas.") {
            return Err(invalid("metadata", "keys starting with 'faas.' are the server's"));
        }
        if k.is_empty() || k.len() > 64 || v.len() > 512 || k.contains('\0') || v.contains('\0') {
            return Err(invalid("metadata", "keys are 1 to 64 bytes, values at most 512"));
        }
    }
    Ok(())
}

impl Engine {
    pub(crate) fn instance_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("instances").join(id)
    }

    pub(crate) fn instance_disk(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("disk.img")
    }

    /// Records a new instance (status creating) and adds it to the registry, within the
    /// tenant's quota.
    pub(crate) async fn register_instance(
        &self,
        tenant: &Tenant,
        mut record: Instance,
    ) -> Result<Arc<Live>, EngineError> {
        let quotas = match record.metadata.contains_key(crate::stateful::SCRATCH) {
            false => Some(self.admit_instance(tenant, record.limits.memory_mb, 1).await?),
            true => None,
        };
        let now = now_ms();
        record.status = InstanceStatus::Creating;
        record.created_at_ms = now;
        record.started_at_ms = None;
        record.last_activity_ms = now;
        record.error = None;
        let id = record.id.clone();
        let live = Arc::new(Live::new(tenant.0.clone(), record.clone()));
        {
            // Counted and taken under one lock: concurrent creations cannot both pass.
            let mut instances = self.instances.lock();
            if let Some(quotas) = &quotas {
                self.instance_fits(&instances, &tenant.0, quotas, record.limits.memory_mb, 1)?;
            }
            instances.insert(id.clone(), Arc::clone(&live));
        }
        if let Err(e) = self.store.put_instance(&tenant.0, &record).await {
            self.instances.lock().remove(&id);
            return Err(e.into());
        }
        Ok(live)
    }

    pub async fn create_instance(
        &self,
        tenant: &Tenant,
        req: CreateInstanceRequest,
    ) -> Result<Instance, EngineError> {
        self.create_instance_as(tenant, req, None).await
    }

    /// `scratch`: the execution the instance is made for (it is marked as such).
    pub(crate) async fn create_instance_as(
        &self,
        tenant: &Tenant,
        req: CreateInstanceRequest,
        scratch: Option<&str>,
    ) -> Result<Instance, EngineError> {
        if req.network {
            return Err(EngineError::Unsupported {
                what: "network access".into(),
                why: "sandboxes have no network egress on this server yet; use network: false"
                    .into(),
            });
        }
        self.pools.agent()?;
        let image = self.image(req.image.as_deref())?;
        let limits = self.sandbox_limits(req.memory_mb, req.cpu, req.pids)?;
        let c = &self.config.instances;
        let disk_mb = req.disk_mb.unwrap_or(c.default_disk_mb);
        if !(MIN_DISK_MB..=c.max_disk_mb).contains(&disk_mb) {
            return Err(invalid(
                "disk_mb",
                format!("must be between {MIN_DISK_MB} and {}", c.max_disk_mb),
            ));
        }
        for (field, value) in
            [("ttl_seconds", req.ttl_seconds), ("idle_timeout_seconds", req.idle_timeout_seconds)]
        {
            if value.is_some_and(|v| v == 0 || v > c.max_timeout_secs) {
                return Err(invalid(
                    field,
                    format!("must be between 1 and {}", c.max_timeout_secs),
                ));
            }
        }
        validate_metadata(&req.metadata)?;
        self.env(&image, req.env.clone())?;

        let now = now_ms();
        let record = Instance {
            id: format!("in_{}", uuid::Uuid::now_v7().simple()),
            status: InstanceStatus::Creating,
            image: image.name.clone(),
            limits: InstanceLimits {
                memory_mb: limits.memory_mb,
                cpu: limits.cpu,
                pids: limits.pids,
                disk_mb,
            },
            env: req.env,
            metadata: crate::stateful::mark_scratch(req.metadata, scratch),
            ttl_seconds: req.ttl_seconds,
            idle_timeout_seconds: req.idle_timeout_seconds,
            on_timeout: req.on_timeout,
            created_at_ms: now,
            started_at_ms: None,
            last_activity_ms: now,
            error: None,
            snapshot_id: None,
        };
        let live = self.register_instance(tenant, record.clone()).await?;
        let _guard = live.lifecycle.lock().await;
        if let Err(e) = self.make_disk(&record.id, disk_mb).await {
            self.transition(&live, InstanceStatus::Failed, Some(format!("creating its disk: {e}")))
                .await?;
            return Err(e);
        }
        self.boot(&live).await
    }

    /// A sparse ext4 image of `disk_mb`: blocks are used only as files are written.
    async fn make_disk(&self, id: &str, disk_mb: u64) -> Result<(), EngineError> {
        let dir = self.instance_dir(id);
        let image = dir.join("disk.img");
        let io =
            |source: std::io::Error| EngineError::Io { what: "creating an instance disk", source };
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let file = tokio::fs::File::create(&image).await.map_err(io)?;
        file.set_len(disk_mb << 20).await.map_err(io)?;
        drop(file);
        // No journal: no kernel thread per mounted disk; the disk is unmounted cleanly by
        // the kernel whenever its sandbox ends.
        let out = tokio::process::Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "lazy_itable_init=1,nodiscard",
                "-m",
                "0",
            ])
            .arg(&image)
            .output()
            .await
            .map_err(io)?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(io(std::io::Error::other(format!("mkfs.ext4 failed: {message}"))));
        }
        Ok(())
    }

    /// Starts the instance's sandbox on its disk: creating -> running (or failed).
    pub(crate) async fn boot(&self, live: &Live) -> Result<Instance, EngineError> {
        live.contexts.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let record = live.record();
        metrics::counter!("faas_sandbox_starts_total", "mode" => start_mode(&record)).increment(1);
        let started = self.start_sandbox(&record).await;
        self.booted(live, started).await
    }

    /// Takes a started (or restored) sandbox into the instance: creating -> running, or
    /// failed with why.
    pub(crate) async fn booted(
        &self,
        live: &Live,
        started: Result<AgentSandbox, EngineError>,
    ) -> Result<Instance, EngineError> {
        match started {
            Ok(sandbox) => {
                *live.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(sandbox));
                self.transition(live, InstanceStatus::Running, None).await
            }
            Err(e) => {
                self.transition(live, InstanceStatus::Failed, Some(format!("starting: {e}")))
                    .await?;
                Err(e)
            }
        }
    }

    async fn start_sandbox(&self, record: &Instance) -> Result<AgentSandbox, EngineError> {
        let agent = self.pools.agent()?.clone();
        let image = self.image(Some(&record.image))?;
        let spec = LaunchSpec {
            argv: Vec::new(),
            env: Vec::new(),
            workdir: "/".into(),
            hostname: "sandbox".into(),
            rootfs: image.rootfs,
            binds: image.binds,
            scratch_bytes: self.config.limits.scratch_mb << 20,
            files: Vec::new(),
            uid: self.config.sandbox_uid,
            gid: self.config.sandbox_gid,
            max_file_bytes: self.config.limits.max_file_mb << 20,
            max_open_files: self.config.limits.max_open_files,
            disk_image: Some(self.instance_disk(&record.id)),
            agent: Some(AgentSpec { binary: agent }),
        };
        let limits = Limits {
            memory_bytes: record.limits.memory_mb << 20,
            cpus: record.limits.cpu,
            // The agent (PID 1) counts too.
            pids: record.limits.pids + 1,
        };
        Ok(self.sandboxes.start_agent(sandbox_id(&record.id), spec, limits).await?)
    }

    pub async fn instance(&self, tenant: &Tenant, id: &str) -> Result<Instance, EngineError> {
        Ok(self.live(tenant, id)?.record())
    }

    /// The tenant's instances, optionally those in one status and with matching metadata.
    pub fn list_instances(
        &self,
        tenant: &Tenant,
        status: Option<InstanceStatus>,
        metadata: &BTreeMap<String, String>,
    ) -> Vec<Instance> {
        let mut list: Vec<Instance> = self
            .instances
            .lock()
            .values()
            .filter(|l| l.tenant == tenant.0)
            .map(|l| l.record())
            .filter(|r| status.is_none_or(|s| r.status == s))
            .filter(|r| metadata.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
            .collect();
        list.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        list
    }

    /// running -> stopping -> stopped; the disk (the instance's files) stays.
    pub async fn stop_instance(&self, tenant: &Tenant, id: &str) -> Result<Instance, EngineError> {
        let live = self.live(tenant, id)?;
        let _guard = live.lifecycle.lock().await;
        self.transition(&live, InstanceStatus::Stopping, None).await?;
        let sandbox = live.sandbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        live.contexts.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(sandbox) = sandbox
            && let Err(e) = sandbox.destroy().await
        {
            tracing::warn!(instance = %id, error = %e, "stopping the sandbox");
        }
        self.transition(&live, InstanceStatus::Stopped, None).await
    }

    /// stopped | failed -> creating -> running, on the same disk.
    pub async fn start_instance(&self, tenant: &Tenant, id: &str) -> Result<Instance, EngineError> {
        let live = self.live(tenant, id)?;
        let _guard = live.lifecycle.lock().await;
        let record = live.record();
        if matches!(record.status, InstanceStatus::Stopped | InstanceStatus::Failed) {
            self.admit_instance(tenant, record.limits.memory_mb, 0).await?;
        }
        self.transition(&live, InstanceStatus::Creating, None).await?;
        self.boot(&live).await
    }

    /// Kills the sandbox if it runs and removes the instance and its files for good.
    pub async fn delete_instance(&self, tenant: &Tenant, id: &str) -> Result<(), EngineError> {
        let live = self.live(tenant, id)?;
        let _guard = live.lifecycle.lock().await;
        // What it used is read before its sandbox (and cgroup) go.
        let charge = self.instance_charge(&live, true);
        let sandbox = live.sandbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sandbox) = sandbox {
            let _ = sandbox.destroy().await;
        }
        self.transition_charged(&live, InstanceStatus::Deleted, None, charge).await?;
        self.instances.lock().remove(id);
        // Its SSH keys and public port tokens die with it.
        self.store.revoke_credentials(&tenant.0, id, None, None, None).await?;
        if let Err(e) = tokio::fs::remove_dir_all(self.instance_dir(id)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(instance = %id, error = %e, "removing the instance's files");
        }
        Ok(())
    }
}
