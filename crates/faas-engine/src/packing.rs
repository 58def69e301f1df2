//! Snapshot data kept for good, and kept at hand. A snapshot is first written as a
//! directory (process images, disk image, agent) and recorded; the packer then stores it
//! as chunks in the blob store (content-addressed, zstd, deduplicated: faas-blobs) and
//! records the pack. The directories stay as a hot cache of `hot_cache_mb`, the least
//! recently used evicted first, and only once packed; restoring an evicted snapshot
//! unpacks it again. One packer task packs and releases in order, so that a chunk is never
//! removed while a pack is about to hold it; after a crash, start-up removes chunks no
//! pack holds and queues what was left undone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use faas_blobs::{BlobStore, Pack};
use tokio::sync::mpsc;

use crate::snapshots::{disk_usage, io_error};
use crate::{Engine, EngineError};

pub(crate) enum PackJob {
    Pack {
        tenant: String,
        id: String,
    },
    /// A deleted snapshot's chunks.
    Release {
        id: String,
    },
}

pub(crate) struct Packer {
    jobs: mpsc::UnboundedSender<PackJob>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    /// Snapshot directories in use (restores reading them) and when each was last used.
    hot: Mutex<HashMap<String, HotUse>>,
    /// One unpack at a time: two restores of an evicted snapshot unpack it once.
    unpacking: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct HotUse {
    users: usize,
    last_used: Option<SystemTime>,
}

impl Packer {
    pub(crate) fn new(blobs: Arc<dyn BlobStore>) -> (Self, mpsc::UnboundedReceiver<PackJob>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let packer =
            Self { jobs, blobs, hot: Mutex::default(), unpacking: tokio::sync::Mutex::new(()) };
        (packer, rx)
    }

    pub(crate) fn queue(&self, job: PackJob) {
        // The receiver lives as long as the engine.
        let _ = self.jobs.send(job);
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, HashMap<String, HotUse>> {
        self.hot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A snapshot's directory, kept from eviction while the lease lives.
pub(crate) struct HotLease<'a> {
    packer: &'a Packer,
    id: String,
}

impl Drop for HotLease<'_> {
    fn drop(&mut self) {
        let mut hot = self.packer.hot();
        let used = hot.entry(self.id.clone()).or_default();
        used.users = used.users.saturating_sub(1);
        used.last_used = Some(SystemTime::now());
    }
}

/// Runs the packer's jobs in order.
pub(crate) fn spawn(engine: Weak<Engine>, mut jobs: mpsc::UnboundedReceiver<PackJob>) {
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let Some(engine) = engine.upgrade() else { return };
            let (what, id, done) = match job {
                PackJob::Pack { tenant, id } => {
                    let mut done = engine.pack_snapshot(&tenant, &id).await;
                    if done.is_err() {
                        // What the failed pack stored, no pack holds.
                        let _ = engine.remove_unheld_chunks().await;
                        // A snapshot deleted while it was packed is no failure.
                        if let Ok(None) = engine.store.snapshot(&tenant, &id).await {
                            done = Ok(());
                        }
                    }
                    ("packing", id, done)
                }
                PackJob::Release { id } => {
                    let done = engine.release_snapshot(&id).await;
                    ("releasing", id, done)
                }
            };
            if let Err(e) = done {
                tracing::warn!(snapshot = %id, error = %crate::error_chain(&e), "{what} a snapshot");
            }
            // Only a pack makes a directory evictable; a release frees space.
            if what == "packing"
                && let Err(e) = engine.evict_hot().await
            {
                tracing::warn!(error = %crate::error_chain(&e), "evicting snapshot directories");
            }
        }
    });
}

impl Engine {
    /// Start-up: removes chunks no pack holds (a crash in the middle of a pack or a
    /// release), then queues the packs and releases left undone.
    pub(crate) async fn resume_packing(&self) -> Result<(), EngineError> {
        let work = self.store.pack_work().await?;
        let removed = self.remove_unheld_chunks().await?;
        if removed > 0 {
            tracing::info!(removed, "removed chunks no snapshot holds");
        }
        for id in work.unreleased {
            self.packer.queue(PackJob::Release { id });
        }
        for (tenant, id) in work.unpacked {
            self.packer.queue(PackJob::Pack { tenant, id });
        }
        Ok(())
    }

    /// Removes stored chunks no pack holds (only while no pack is under way: at start-up,
    /// or from the packer itself).
    async fn remove_unheld_chunks(&self) -> Result<usize, EngineError> {
        let held: HashSet<String> = self.store.chunk_digests().await?.into_iter().collect();
        let blobs = Arc::clone(&self.packer.blobs);
        let removed = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let mut removed = 0;
            for digest in blobs.list()? {
                if !held.contains(&digest.to_string()) {
                    blobs.remove(&digest)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
        .map_err(io_error("clearing unheld chunks"))?;
        Ok(removed)
    }

    async fn pack_snapshot(&self, tenant: &str, id: &str) -> Result<(), EngineError> {
        // Deleted meanwhile, or packed before a restart: nothing to do.
        let Some((mut snapshot, _)) = self.store.snapshot(tenant, id).await? else {
            return Ok(());
        };
        if self.store.pack(id).await?.is_some() {
            return Ok(());
        }
        let (blobs, dir, salt) =
            (Arc::clone(&self.packer.blobs), self.snapshot_dir(id), tenant.as_bytes().to_vec());
        let (pack, stats) =
            tokio::task::spawn_blocking(move || faas_blobs::pack(&*blobs, &salt, &dir))
                .await
                .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
                .map_err(io_error("packing a snapshot"))?;
        snapshot.stored_bytes = Some(stats.new_bytes);
        let chunks = stats.chunks.iter().map(|(d, n)| (d.to_string(), *n)).collect();
        let pack = serde_json::to_string(&pack).unwrap_or_default();
        self.store.insert_pack(tenant, &snapshot, &pack, chunks).await?;
        tracing::debug!(snapshot = %id, bytes = stats.bytes, new_chunks = stats.new_chunks,
            new_bytes = stats.new_bytes, "packed a snapshot");
        Ok(())
    }

    async fn release_snapshot(&self, id: &str) -> Result<(), EngineError> {
        let unheld = self.store.release_pack(id).await?;
        let blobs = Arc::clone(&self.packer.blobs);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for digest in unheld.iter().filter_map(|d| faas_blobs::Digest::parse(d)) {
                blobs.remove(&digest)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
        .map_err(io_error("removing a snapshot's chunks"))
    }

    /// Removes packed snapshot directories, least recently used first, until the hot
    /// cache fits its budget.
    async fn evict_hot(&self) -> Result<(), EngineError> {
        let budget = self.config.snapshots.hot_cache_mb << 20;
        let packed = self.store.pack_work().await?.packed;
        let mut candidates = Vec::new();
        let mut total = 0;
        for id in packed {
            let dir = self.snapshot_dir(&id);
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let size = disk_usage(&dir);
            total += size;
            candidates.push((meta.modified().ok(), id, size));
        }
        if total <= budget {
            return Ok(());
        }
        {
            let hot = self.packer.hot();
            for (modified, id, _) in &mut candidates {
                if let Some(used) = hot.get(id.as_str()).and_then(|u| u.last_used) {
                    *modified = Some(used);
                }
            }
        }
        candidates.sort();
        for (_, id, size) in candidates {
            if total <= budget {
                break;
            }
            let dir = self.snapshot_dir(&id);
            let evicted = dir.with_extension("evicted");
            {
                // Renamed under the lock: a restore either holds a lease first, or finds
                // the directory gone and unpacks it.
                let hot = self.packer.hot();
                if hot.get(&id).is_some_and(|u| u.users > 0) {
                    continue;
                }
                if std::fs::rename(&dir, &evicted).is_err() {
                    continue;
                }
            }
            total = total.saturating_sub(size);
            tokio::fs::remove_dir_all(&evicted).await.map_err(io_error("evicting a snapshot"))?;
        }
        Ok(())
    }

    /// The snapshot's directory, unpacked from the blob store if it was evicted, held
    /// from eviction while the lease lives.
    pub(crate) async fn hot_snapshot(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<HotLease<'_>, EngineError> {
        self.packer.hot().entry(id.to_owned()).or_default().users += 1;
        let lease = HotLease { packer: &self.packer, id: id.to_owned() };
        let dir = self.snapshot_dir(id);
        if dir.exists() {
            return Ok(lease);
        }
        let _one = self.packer.unpacking.lock().await;
        if dir.exists() {
            return Ok(lease);
        }
        let pack = self.store.pack(id).await?.ok_or_else(|| EngineError::Conflict {
            message: format!("snapshot {id}'s data is missing"),
        })?;
        let pack: Pack = serde_json::from_str(&pack)
            .map_err(|e| io_error("reading a snapshot's pack")(std::io::Error::other(e)))?;
        let (blobs, salt, unpacking) = (
            Arc::clone(&self.packer.blobs),
            tenant.as_bytes().to_vec(),
            dir.with_extension("unpacking"),
        );
        let target = dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&unpacking);
            faas_blobs::unpack(&*blobs, &salt, &pack, &unpacking)?;
            std::fs::rename(&unpacking, &target)
        })
        .await
        .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
        .map_err(io_error("unpacking a snapshot"))?;
        Ok(lease)
    }
}
