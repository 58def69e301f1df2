//! The engine: what faas does, independent of HTTP. The gateway translates requests into
//! calls on [`Engine`] and maps [`EngineError`] to responses; the engine validates, applies
//! limits, picks an image, runs the sandbox and records the result.

pub mod config;
pub mod doctor;
mod error;
mod execute;
pub mod images;
mod languages;

use std::sync::Arc;

use faas_sandbox::{CgroupRoot, LauncherClient, Sandboxes};
use faas_store::{SqliteStore, Store};
use tokio::sync::Semaphore;

pub use config::Config;
pub use error::EngineError;
use images::{ImageStore, LocalImages};

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
}

impl Engine {
    /// Opens the store, clears what a crashed predecessor left, prepares images and starts
    /// the sandbox launcher.
    pub async fn start(config: Config) -> Result<Self, EngineError> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|source| EngineError::Startup {
            what: "creating the data directory",
            source: source.into(),
        })?;
        let store = SqliteStore::open(&data_dir.join("faas.db")).map_err(|source| {
            EngineError::Startup {
                what: "opening the store",
                source: source.into(),
            }
        })?;
        let lost = store.mark_interrupted_executions().await?;
        if lost > 0 {
            tracing::warn!(
                lost,
                "executions interrupted by the previous shutdown were marked lost"
            );
        }
        let cgroups =
            CgroupRoot::detect(&config.cgroup_parent).map_err(|source| EngineError::Startup {
                what: "detecting cgroups",
                source: source.into(),
            })?;
        let cleared = cgroups
            .clear_leftovers()
            .map_err(|source| EngineError::Startup {
                what: "clearing leftover cgroups",
                source: source.into(),
            })?;
        if cleared > 0 {
            tracing::warn!(cleared, "removed sandboxes left behind by a previous run");
        }
        let images = LocalImages::prepare(&config).map_err(|source| EngineError::Startup {
            what: "preparing images",
            source: source.into(),
        })?;
        let launcher = LauncherClient::start(config.scratch_dir())
            .await
            .map_err(|source| EngineError::Startup {
                what: "starting the launcher",
                source: source.into(),
            })?;
        tracing::info!(cgroup = cgroups.version().as_str(), "engine ready");
        Ok(Self {
            admission: Arc::new(Semaphore::new(config.max_concurrent_sandboxes)),
            sandboxes: Sandboxes::new(launcher, cgroups),
            images: Box::new(images),
            store: Arc::new(store),
            config,
        })
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

    /// Kills every running sandbox; their runs finish and clean up on their own.
    pub fn shutdown(&self) {
        self.admission.close();
        self.sandboxes.kill_all();
    }
}
