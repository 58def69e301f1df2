//! The engine: what faas does, independent of HTTP. The gateway translates requests into
//! calls on [`Engine`] and maps [`EngineError`] to responses; the engine validates, applies
//! limits, picks an image and a mode, runs the sandbox and records the result.

pub mod config;
mod contexts;
pub mod doctor;
mod error;
mod execute;
pub mod images;
mod instances;
mod languages;
mod merge;
mod metering;
mod packing;
mod plan;
mod pool;
mod quotas;
mod snapshots;
mod stateful;

use std::sync::Arc;

use faas_api::{PoolInfo, PrewarmRequest};
use faas_sandbox::{CgroupRoot, LauncherClient, Sandboxes};
use faas_store::{SqliteStore, Store};
use tokio::sync::Semaphore;

pub use config::Config;
pub use error::{EngineError, error_chain};
pub use execute::Streams;
use images::{ImageStore, LocalImages};
pub use instances::{FileRead, Following, InstanceExecAnswer, InstanceSession, SessionSpec};
pub use metering::PortStream;
use pool::{PoolKey, Pools};

/// A tenant as the engine knows it: every record belongs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

pub struct Engine {
    config: Config,
    sandboxes: Arc<Sandboxes>,
    images: Box<dyn ImageStore>,
    store: Arc<dyn Store>,
    /// Bounds the sandboxes running at once; a call beyond it gets 503.
    admission: Arc<Semaphore>,
    pools: Arc<Pools>,
    contexts: contexts::Contexts,
    instances: instances::Instances,
    /// CRIU, or why this host cannot capture running instances.
    criu: Result<faas_sandbox::Criu, String>,
    /// Snapshots being captured, by tenant: they count against the quota.
    capturing: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Snapshot data into the blob store and back.
    packer: packing::Packer,
    /// What each tenant's executions hold against its quotas.
    load: quotas::TenantLoad,
}

fn startup(
    what: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> EngineError {
    move |source| EngineError::Startup { what, source }
}

impl Engine {
    /// Opens the store, clears what a crashed predecessor left, prepares images and starts
    /// the sandbox launcher.
    pub async fn start(mut config: Config) -> Result<Arc<Self>, EngineError> {
        if let Some(max) = config.instances.max_per_tenant.take() {
            tracing::warn!(
                max,
                "[instances] max_per_tenant is deprecated: use [quotas] max_instances"
            );
            config.quotas.max_instances = max;
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| startup("creating the data directory")(e.into()))?;
        config.pricing.validate().map_err(|e| startup("reading [pricing]")(e.into()))?;
        let store = SqliteStore::open(&config.data_dir.join("faas.db"), config.pricing.clone())
            .map_err(|e| startup("opening the store")(e.into()))?;
        let lost = store.mark_interrupted_executions().await?;
        if lost > 0 {
            tracing::warn!(
                lost,
                "executions interrupted by the previous shutdown were marked lost"
            );
        }
        let cgroups = CgroupRoot::detect(&config.cgroup_parent)
            .map_err(|e| startup("detecting cgroups")(e.into()))?;
        let cleared = cgroups
            .clear_leftovers()
            .map_err(|e| startup("clearing leftover cgroups")(e.into()))?;
        if cleared > 0 {
            tracing::warn!(cleared, "removed sandboxes left behind by a previous run");
        }
        let images =
            LocalImages::prepare(&config).map_err(|e| startup("preparing images")(e.into()))?;
        let launcher = LauncherClient::start(config.scratch_dir())
            .await
            .map_err(|e| startup("starting the launcher")(e.into()))?;
        tracing::info!(cgroup = cgroups.version().as_str(), "engine ready");
        let sandboxes = Sandboxes::new(launcher, cgroups);
        let pools = Pools::new(&config, Arc::clone(&sandboxes));
        if let Err(e) = pools.agent() {
            tracing::warn!(error = %e, "cached mode and contexts are unavailable");
        }
        let freezer = sandboxes.cgroups().has_freezer();
        let criu = faas_sandbox::Criu::detect(&config.snapshots.criu_path)
            .and_then(|criu| match freezer {
                true => Ok(criu),
                false => Err("this host has no cgroup freezer (v1 'freezer' hierarchy) to hold \
                              a sandbox still while it is captured"
                    .to_owned()),
            })
            .map(|criu| {
                let candidates = [config.run_dir.join("criu"), "/dev/shm/faas-criu".into()];
                criu.with_kdat_cache(&candidates)
            });
        if let Err(why) = &criu {
            tracing::warn!(%why, "snapshots of running instances are unavailable");
        }
        let blobs = faas_blobs::LocalBlobs::open(&config.data_dir.join("blobs"))
            .map_err(|e| startup("opening the blob store")(e.into()))?;
        let (packer, pack_jobs) = packing::Packer::new(Arc::new(blobs));
        let engine = Arc::new(Self {
            criu,
            packer,
            admission: Arc::new(Semaphore::new(config.max_concurrent_sandboxes)),
            sandboxes,
            images: Box::new(images),
            store: Arc::new(store),
            pools: Arc::clone(&pools),
            contexts: contexts::Contexts::default(),
            instances: instances::Instances::default(),
            capturing: Default::default(),
            load: Default::default(),
            config,
        });
        engine.recover_instances().await?;
        engine.clear_partial_snapshots();
        engine.resume_packing().await?;
        packing::spawn(Arc::downgrade(&engine), pack_jobs);
        contexts::spawn_janitor(Arc::downgrade(&engine), Arc::downgrade(&pools));
        instances::spawn_janitor(Arc::downgrade(&engine));
        metering::spawn_meter(Arc::downgrade(&engine), &engine.config.metering);
        Ok(engine)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn sandboxes(&self) -> &Arc<Sandboxes> {
        &self.sandboxes
    }

    /// Fills the caller's pool for an image and limits with `count` warm sandboxes.
    pub async fn prewarm(
        &self,
        tenant: &Tenant,
        req: PrewarmRequest,
    ) -> Result<PoolInfo, EngineError> {
        if req.count == 0 || req.count > self.config.pools.max_idle {
            return Err(plan::invalid(
                "count",
                format!("must be between 1 and {}", self.config.pools.max_idle),
            ));
        }
        let image = self.image(req.image.as_deref())?;
        let limits = self.sandbox_limits(req.memory_mb, req.cpu, req.pids)?;
        self.pools.prewarm(PoolKey::new(tenant, &image, &limits, None), &image, req.count).await
    }

    /// The caller's pools (an admin's `None`: everyone's).
    pub fn pools(&self, tenant: Option<&Tenant>) -> Vec<PoolInfo> {
        self.pools.list(tenant.map(|t| t.0.as_str()))
    }

    /// Refuses new work, kills every running sandbox and empties the pools.
    pub async fn shutdown(&self) {
        self.admission.close();
        self.sandboxes.kill_all();
        self.pools.drain().await;
        self.stop_all_instances().await;
    }
}
