//! Snapshots of instances and restores from them (one or many at once: branches).
//!
//! A snapshot of a running instance holds its processes (CRIU images), a copy of its disk
//! image taken while they were frozen, and the agent binary they ran; one of a stopped
//! instance holds its disk only (`kind: filesystem`). Each lives in
//! `<data>/snapshots/<id>/`, complete in itself: deleting one never touches another. The
//! store keeps the record and the manifest a restore needs, so a restore works after a
//! restart. A restore is a new instance on a copy of the disk, its processes continuing
//! where the snapshot left them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use faas_api::{
    BranchRequest, BranchResponse, CreateSnapshotRequest, Instance, InstanceStatus,
    RestoreSnapshotRequest, Snapshot, SnapshotKind, SnapshotTree, TreeInstance,
};
use faas_sandbox::checkpoint::{RestoreFrom, copy_sparse, copy_sparse_durable};
use faas_sandbox::{AgentSandbox, AgentSpec, CheckpointRecord, Criu, Limits};
use serde::{Deserialize, Serialize};

use crate::execute::now_ms;
use crate::instances::Live;
use crate::packing::PackJob;
use crate::plan::invalid;
use crate::{Engine, EngineError, Tenant};

/// Version of [`Manifest`]'s layout; a newer one is refused rather than misread.
const MANIFEST_VERSION: u32 = 1;

/// What a restore needs besides the files, kept in the store with the record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    version: u32,
    /// The instance as it was captured: image, limits, env, metadata, timeouts.
    instance: Instance,
    /// For memory snapshots: how the sandbox was built and how CRIU names its pipes.
    checkpoint: Option<CheckpointRecord>,
    /// The language contexts running in it (memory snapshots): restores keep their ids.
    #[serde(default)]
    contexts: Vec<faas_api::ContextInfo>,
}

/// `root` with the instances restored from it and, below each, the snapshots taken of them.
fn tree(root: Snapshot, all: &[Snapshot], instances: &[Instance]) -> SnapshotTree {
    let restored: Vec<&Instance> =
        instances.iter().filter(|i| i.snapshot_id.as_deref() == Some(&root.id)).collect();
    let children = all
        .iter()
        .filter(|s| s.parent_id.as_deref() == Some(&root.id))
        .map(|s| tree(s.clone(), all, instances))
        .collect();
    SnapshotTree {
        instances: restored
            .iter()
            .map(|i| TreeInstance { id: i.id.clone(), status: i.status })
            .collect(),
        children,
        snapshot: root,
    }
}

pub(crate) fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io { what, source }
}

/// Bytes a directory tree occupies on disk (sparse files count what they hold).
/// The process memory a checkpoint holds: CRIU's page images.
fn memory_bytes(images: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(images) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

impl Engine {
    pub(crate) fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("snapshots").join(id)
    }

    /// CRIU, or why snapshots are unavailable on this host (501).
    pub(crate) fn criu(&self) -> Result<&Criu, EngineError> {
        self.criu.as_ref().map_err(|why| EngineError::Unsupported {
            what: "capturing a running instance".into(),
            why: why.clone(),
        })
    }

    /// Removes what a crash left of snapshots being written.
    pub(crate) fn clear_partial_snapshots(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("snapshots")) else {
            return;
        };
        for entry in entries.flatten() {
            let unfinished = ["partial", "merge", "evicted", "unpacking"];
            if entry.path().extension().is_some_and(|e| unfinished.iter().any(|u| e == *u)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// A place for one more snapshot within the tenant's quota, counting captures still
    /// under way, held until the snapshot is stored (or given up).
    async fn snapshot_slot(&self, tenant: &Tenant) -> Result<SnapshotSlot<'_>, EngineError> {
        self.check_snapshot_storage(tenant).await?;
        let max = self.config.snapshots.max_per_tenant;
        let stored = self.store.list_snapshots(&tenant.0, false).await?.len();
        let mut capturing = self.capturing.lock().unwrap_or_else(|e| e.into_inner());
        let entry = capturing.entry(tenant.0.clone()).or_default();
        if stored + *entry >= max {
            return Err(EngineError::Conflict {
                message: format!("a tenant may hold at most {max} snapshots"),
            });
        }
        *entry += 1;
        Ok(SnapshotSlot { engine: self, tenant: tenant.0.clone() })
    }

    pub async fn create_snapshot(
        &self,
        tenant: &Tenant,
        req: CreateSnapshotRequest,
    ) -> Result<Snapshot, EngineError> {
        if req.name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 128) {
            return Err(invalid("name", "1 to 128 bytes"));
        }
        crate::instances::validate_metadata(&req.metadata)?;
        let live = self.live(tenant, &req.instance_id)?;
        let _slot = self.snapshot_slot(tenant).await?;
        let snapshot = {
            let _guard = live.lifecycle.lock().await;
            self.capture(tenant, &live, &req).await?
        };
        if req.stop && snapshot.kind == SnapshotKind::Memory {
            self.stop_instance(tenant, &req.instance_id).await?;
        }
        Ok(snapshot)
    }

    async fn capture(
        &self,
        tenant: &Tenant,
        live: &Live,
        req: &CreateSnapshotRequest,
    ) -> Result<Snapshot, EngineError> {
        let record = live.record();
        let id = format!("sn_{}", uuid::Uuid::now_v7().simple());
        let dir = self.snapshot_dir(&id);
        let partial = dir.with_extension("partial");
        tokio::fs::create_dir_all(&partial).await.map_err(io_error("creating a snapshot"))?;
        let started = Instant::now();
        let captured = match record.status {
            InstanceStatus::Running => {
                let sandbox = self.running(live)?;
                self.capture_running(&sandbox, &partial).await.map(Some)
            }
            InstanceStatus::Stopped | InstanceStatus::Failed => {
                let (source, copy) = (self.instance_disk(&record.id), partial.join("disk.img"));
                tokio::task::spawn_blocking(move || copy_sparse_durable(&source, &copy))
                    .await
                    .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
                    .map_err(io_error("copying the instance's disk"))
                    .map(|_| None)
            }
            status => Err(EngineError::Conflict {
                message: format!(
                    "instance {} is {}; it must be running or stopped",
                    record.id,
                    status.as_str()
                ),
            }),
        };
        let checkpoint = match captured {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&partial).await;
                return Err(e);
            }
        };
        let capture_ms = started.elapsed().as_secs_f64() * 1000.0;
        let snapshot = Snapshot {
            id: id.clone(),
            name: req.name.clone(),
            kind: if checkpoint.is_some() {
                SnapshotKind::Memory
            } else {
                SnapshotKind::Filesystem
            },
            instance_id: record.id.clone(),
            parent_id: record.snapshot_id.clone(),
            image: record.image.clone(),
            limits: record.limits,
            metadata: req.metadata.clone(),
            size_bytes: disk_usage(&partial),
            capture_ms,
            created_at_ms: now_ms(),
            merged_from: Vec::new(),
            stored_bytes: None,
            deleted_at_ms: None,
        };
        let contexts = match checkpoint {
            Some(_) => live.contexts.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => Vec::new(),
        };
        let manifest =
            Manifest { version: MANIFEST_VERSION, instance: record, checkpoint, contexts };
        let manifest = serde_json::to_string(&manifest).unwrap_or_default();
        tokio::fs::rename(&partial, &dir).await.map_err(io_error("storing a snapshot"))?;
        if let Err(e) = self.store.insert_snapshot(&tenant.0, &snapshot, &manifest).await {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e.into());
        }
        self.packer.queue(PackJob::Pack { tenant: tenant.0.clone(), id: snapshot.id.clone() });
        Ok(snapshot)
    }

    async fn capture_running(
        &self,
        sandbox: &AgentSandbox,
        dir: &Path,
    ) -> Result<CheckpointRecord, EngineError> {
        let criu = self.criu()?;
        let record = sandbox.checkpoint(criu, dir, Some(&dir.join("disk.img"))).await?;
        // The exact agent the processes ran (whatever the server's configured one is now):
        // a restore maps it in their place.
        let exe = PathBuf::from(format!("/proc/{}/exe", sandbox.pid()));
        tokio::fs::copy(&exe, dir.join("agent")).await.map_err(io_error("copying the agent"))?;
        Ok(record)
    }

    pub async fn snapshot(&self, tenant: &Tenant, id: &str) -> Result<Snapshot, EngineError> {
        Ok(self.snapshot_with_manifest(tenant, id).await?.0)
    }

    pub(crate) async fn snapshot_with_manifest(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<(Snapshot, Manifest), EngineError> {
        let (snapshot, manifest) = self
            .store
            .snapshot(&tenant.0, id)
            .await?
            .ok_or_else(|| EngineError::NotFound { kind: "snapshot", id: id.to_owned() })?;
        let manifest: Manifest =
            serde_json::from_str(&manifest).map_err(|e| EngineError::Conflict {
                message: format!("snapshot {id} has an unreadable manifest: {e}"),
            })?;
        if manifest.version > MANIFEST_VERSION {
            return Err(EngineError::Conflict {
                message: format!(
                    "snapshot {id} was written by a newer server (manifest version {})",
                    manifest.version
                ),
            });
        }
        Ok((snapshot, manifest))
    }

    pub async fn list_snapshots(&self, tenant: &Tenant) -> Result<Vec<Snapshot>, EngineError> {
        Ok(self.store.list_snapshots(&tenant.0, false).await?)
    }

    /// The lineage below a snapshot: instances restored from it, snapshots of those, and
    /// so on (deleted snapshots included, marked).
    pub async fn snapshot_tree(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<SnapshotTree, EngineError> {
        let root = self.snapshot(tenant, id).await?;
        let all = self.store.list_snapshots(&tenant.0, true).await?;
        let instances = self.list_instances(tenant, None, &Default::default());
        Ok(tree(root, &all, &instances))
    }

    /// Deletes a snapshot's files; its record stays (deleted) for its children's lineage.
    /// Instances restored from it are independent and keep running.
    pub async fn delete_snapshot(&self, tenant: &Tenant, id: &str) -> Result<(), EngineError> {
        if !self.store.delete_snapshot(&tenant.0, id).await? {
            return Err(EngineError::NotFound { kind: "snapshot", id: id.to_owned() });
        }
        if let Err(e) = tokio::fs::remove_dir_all(self.snapshot_dir(id)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(snapshot = %id, error = %e, "removing the snapshot's files");
        }
        // Its chunks go once no other snapshot holds them.
        self.packer.queue(PackJob::Release { id: id.to_owned() });
        Ok(())
    }

    /// Records a merge's result (`partial` holds its disk) as a filesystem snapshot, child
    /// of `base`.
    pub(crate) async fn store_filesystem_snapshot(
        &self,
        tenant: &Tenant,
        id: &str,
        partial: &Path,
        base: &Snapshot,
        base_manifest: Manifest,
        req: &faas_api::MergeRequest,
    ) -> Result<Snapshot, EngineError> {
        let snapshot = Snapshot {
            id: id.to_owned(),
            name: req.name.clone(),
            kind: SnapshotKind::Filesystem,
            instance_id: base.instance_id.clone(),
            parent_id: Some(base.id.clone()),
            image: base.image.clone(),
            limits: base.limits,
            metadata: req.metadata.clone(),
            size_bytes: disk_usage(partial),
            capture_ms: 0.0,
            created_at_ms: now_ms(),
            merged_from: req.instance_ids.clone(),
            stored_bytes: None,
            deleted_at_ms: None,
        };
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            instance: base_manifest.instance,
            checkpoint: None,
            contexts: Vec::new(),
        };
        let manifest = serde_json::to_string(&manifest).unwrap_or_default();
        let dir = self.snapshot_dir(id);
        tokio::fs::rename(partial, &dir).await.map_err(io_error("storing a snapshot"))?;
        if let Err(e) = self.store.insert_snapshot(&tenant.0, &snapshot, &manifest).await {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e.into());
        }
        self.packer.queue(PackJob::Pack { tenant: tenant.0.clone(), id: id.to_owned() });
        Ok(snapshot)
    }

    /// A new running instance in the snapshot's state.
    pub async fn restore_snapshot(
        &self,
        tenant: &Tenant,
        id: &str,
        req: RestoreSnapshotRequest,
    ) -> Result<Instance, EngineError> {
        self.restore_snapshot_as(tenant, id, req, None).await
    }

    /// `scratch`: the execution the instance is restored for (it is marked as such).
    pub(crate) async fn restore_snapshot_as(
        &self,
        tenant: &Tenant,
        id: &str,
        req: RestoreSnapshotRequest,
        scratch: Option<&str>,
    ) -> Result<Instance, EngineError> {
        let (snapshot, manifest) = self.snapshot_with_manifest(tenant, id).await?;
        if let Some(metadata) = &req.metadata {
            crate::instances::validate_metadata(metadata)?;
        }
        if manifest.checkpoint.is_some() {
            self.criu()?;
        }
        let mut record = manifest.instance.clone();
        record.id = format!("in_{}", uuid::Uuid::now_v7().simple());
        record.snapshot_id = Some(snapshot.id.clone());
        if let Some(metadata) = req.metadata {
            record.metadata = metadata;
        }
        // A snapshot taken by a checkpointed execute restores to an ordinary instance.
        record.metadata.remove(crate::stateful::SCRATCH);
        record.metadata = crate::stateful::mark_scratch(record.metadata, scratch);
        let live = self.register_instance(tenant, record).await?;
        let instance_id = live.record().id;
        let restored = async {
            let _guard = live.lifecycle.lock().await;
            let _hot = self.hot_snapshot(&tenant.0, &snapshot.id).await?;
            self.restore_into(&live, &snapshot.id, manifest).await
        }
        .await;
        if restored.is_err() {
            // A restore that fails leaves nothing behind: the error says why.
            let _ = self.delete_instance(tenant, &instance_id).await;
        }
        restored
    }

    async fn restore_into(
        &self,
        live: &Live,
        snapshot_id: &str,
        manifest: Manifest,
    ) -> Result<Instance, EngineError> {
        let instance_id = live.record().id;
        let started = Instant::now();
        let (source, copy) =
            (self.snapshot_dir(snapshot_id).join("disk.img"), self.instance_disk(&instance_id));
        let copied = async {
            tokio::fs::create_dir_all(copy.parent().unwrap_or(Path::new("/")))
                .await
                .map_err(io_error("creating the instance's directory"))?;
            tokio::task::spawn_blocking(move || copy_sparse(&source, &copy))
                .await
                .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
                .map_err(io_error("copying the snapshot's disk"))
        }
        .await;
        if let Err(e) = copied {
            self.transition(live, InstanceStatus::Failed, Some(format!("restoring: {e}"))).await?;
            return Err(e);
        }
        let copy_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &manifest.checkpoint {
            None => self.boot(live).await,
            Some(checkpoint) => {
                let restored = self.restore_sandbox(live, snapshot_id, checkpoint).await;
                let total = started.elapsed();
                let total_ms = total.as_secs_f64() * 1000.0;
                tracing::debug!(instance = %instance_id, copy_ms, total_ms, "restored");
                if restored.is_ok() {
                    metrics::histogram!("faas_restore_duration_seconds")
                        .record(total.as_secs_f64());
                }
                let instance = self.booted(live, restored).await?;
                *live.contexts.lock().unwrap_or_else(|e| e.into_inner()) = manifest.contexts;
                Ok(instance)
            }
        }
    }

    async fn restore_sandbox(
        &self,
        live: &Live,
        snapshot_id: &str,
        checkpoint: &CheckpointRecord,
    ) -> Result<AgentSandbox, EngineError> {
        let record = live.record();
        let dir = self.snapshot_dir(snapshot_id);
        let mut spec = checkpoint.spec.clone();
        spec.disk_image = Some(self.instance_disk(&record.id));
        spec.agent = Some(AgentSpec { binary: dir.join("agent") });
        let limits = Limits {
            memory_bytes: record.limits.memory_mb << 20,
            cpus: record.limits.cpu,
            pids: record.limits.pids + 1,
        };
        let sandbox_id = crate::instances::sandbox_id(&record.id);
        let mode = crate::instances::start_mode(&record);
        metrics::counter!("faas_sandbox_starts_total", "mode" => mode).increment(1);
        let work_dir = self.config.run_dir.join("restores").join(&sandbox_id);
        let restored = self
            .sandboxes
            .restore_agent(
                sandbox_id,
                RestoreFrom {
                    criu: self.criu()?,
                    images: &dir.join("images"),
                    work_dir: &work_dir,
                    record: checkpoint,
                    ksm: self.config.snapshots.ksm,
                    lazy: memory_bytes(&dir.join("images"))
                        >= self.config.snapshots.lazy_restore_min_mb << 20,
                },
                spec,
                limits,
            )
            .await;
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        Ok(restored?)
    }

    /// `count` instances restored at once from one snapshot, or from a running instance
    /// (snapshotted first). All or nothing: when one fails, the others are deleted.
    pub async fn branch(
        self: &Arc<Self>,
        tenant: &Tenant,
        req: BranchRequest,
    ) -> Result<BranchResponse, EngineError> {
        let max = self.config.snapshots.max_branches;
        if req.count == 0 || req.count > max {
            return Err(invalid("count", format!("must be between 1 and {max}")));
        }
        let snapshot_id = match (req.snapshot_id, req.instance_id) {
            (Some(id), None) => {
                // All or nothing: the quotas must allow every branch before any starts.
                let snapshot = self.snapshot(tenant, &id).await?;
                let memory_mb = snapshot.limits.memory_mb;
                self.admit_instance(tenant, memory_mb, u64::from(req.count)).await?;
                snapshot.id
            }
            (None, Some(instance_id)) => {
                let memory_mb = self.live(tenant, &instance_id)?.record().limits.memory_mb;
                self.admit_instance(tenant, memory_mb, u64::from(req.count)).await?;
                let req = CreateSnapshotRequest {
                    instance_id,
                    name: Some("branch point".into()),
                    ..Default::default()
                };
                self.create_snapshot(tenant, req).await?.id
            }
            _ => return Err(invalid("snapshot_id", "give either snapshot_id or instance_id")),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..req.count {
            let (engine, tenant, id) = (Arc::clone(self), tenant.clone(), snapshot_id.clone());
            tasks.spawn(async move {
                engine.restore_snapshot(&tenant, &id, RestoreSnapshotRequest::default()).await
            });
        }
        let mut instances = Vec::new();
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(instance)) => instances.push(instance),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(faas_sandbox::RunError::Task(e).into())),
            }
        }
        if let Some(e) = failure {
            for instance in &instances {
                let _ = self.delete_instance(tenant, &instance.id).await;
            }
            return Err(e);
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(BranchResponse { snapshot_id, instances })
    }
}

struct SnapshotSlot<'a> {
    engine: &'a Engine,
    tenant: String,
}

impl Drop for SnapshotSlot<'_> {
    fn drop(&mut self) {
        let mut capturing = self.engine.capturing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = capturing.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                capturing.remove(&self.tenant);
            }
        }
    }
}
