//! One typed configuration, layered: defaults, then a TOML file, then environment and flags
//! (applied by the CLI). Unknown fields are refused so a typo never goes unnoticed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// The store, images and the generated admin key live here.
    pub data_dir: PathBuf,
    /// Runtime state that does not survive a reboot (the launcher's mount point).
    pub run_dir: PathBuf,
    /// Largest request body accepted (413 beyond).
    pub max_request_bytes: usize,
    /// Web origins (`https://app.example.com`, or `*`) whose pages may call the API from
    /// a browser (CORS). Empty: none, the browser's same-origin rule holds.
    pub cors_origins: Vec<String>,
    pub max_concurrent_sandboxes: usize,
    /// The unprivileged user every payload runs as.
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// Name of faas's parent cgroup in each hierarchy.
    pub cgroup_parent: String,
    /// The agent binary, PID 1 of long-lived sandboxes (pools, contexts). Default:
    /// `faas-agent` beside the faas executable.
    pub agent_path: Option<PathBuf>,
    pub limits: LimitsConfig,
    pub pools: PoolConfig,
    pub instances: InstanceConfig,
    pub snapshots: SnapshotConfig,
    pub ssh: SshConfig,
    /// Prices of what tenants use (money in integer micro-units).
    pub pricing: faas_store::Pricing,
    /// Every tenant's quotas unless an admin set others (`PUT /api/v1/tenants/{t}/quotas`).
    pub quotas: QuotaConfig,
    pub metering: MeteringConfig,
    pub rate_limits: RateLimitConfig,
    pub metrics: MetricsConfig,
}

/// Default quotas of a tenant; 0 means no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    pub max_concurrent_sandboxes: u64,
    pub max_instances: u64,
    pub max_memory_mb: u64,
    pub max_snapshot_storage_mb: u64,
    pub monthly_spend_cap_micros: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            max_concurrent_sandboxes: 64,
            max_instances: 100,
            max_memory_mb: 64 << 10,
            max_snapshot_storage_mb: 100 << 10,
            monthly_spend_cap_micros: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeteringConfig {
    /// How often running instances are charged (a crash of the server loses at most this
    /// much of a running instance's usage); each charge is one row in the store.
    pub interval_secs: u64,
    /// How often snapshot storage is charged besides every change of it (a pack or a
    /// release charges the period before it exactly).
    pub storage_interval_secs: u64,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self { interval_secs: 60, storage_interval_secs: 3600 }
    }
}

/// Token buckets per API key: each key's tier (`rate_tier`, else `default`) names one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub tiers: std::collections::BTreeMap<String, RateTier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTier {
    /// Tokens added per second: the sustained request rate.
    pub per_second: u32,
    /// The bucket's size: how many requests may come at once.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tiers: [
                ("default".to_owned(), RateTier { per_second: 50, burst: 100 }),
                ("admin".to_owned(), RateTier { per_second: 500, burst: 1000 }),
            ]
            .into(),
        }
    }
}

/// Prometheus metrics at `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` without a key (for a scraper on a private network); by default it
    /// needs an admin key.
    pub public: bool,
}

/// Snapshots and branches (CRIU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The CRIU binary (>= 4.2, with faas's patches: scripts/build-criu.sh).
    pub criu_path: PathBuf,
    pub max_per_tenant: usize,
    /// The most instances one branch call may make.
    pub max_branches: u32,
    /// Unpacked snapshot directories kept at hand for fast restores (the blob store holds
    /// every snapshot regardless); beyond it, the least recently used are evicted.
    pub hot_cache_mb: u64,
    /// Mark restored (and branched) memory mergeable by KSM, so that branches share their
    /// identical pages once the host's ksmd has scanned them. ksmd itself is host
    /// configuration (/sys/kernel/mm/ksm/run), which the server does not change. Merging
    /// spans every sandbox of the host, tenants included: it opens a timing side channel
    /// between them, so it is off by default.
    pub ksm: bool,
    /// Restores of checkpoints with at least this much memory load it on demand
    /// (userfaultfd lazy pages: the processes run at once, pages arrive as they are
    /// touched and the rest in the background); smaller ones load it all first, which is
    /// quicker for them. 0: always lazy.
    pub lazy_restore_min_mb: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            criu_path: "/usr/local/sbin/criu".into(),
            max_per_tenant: 100,
            max_branches: 16,
            hot_cache_mb: 16 << 10,
            ksm: false,
            lazy_restore_min_mb: 16,
        }
    }
}

/// The built-in SSH server (logins into instances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The host name clients are told to connect to; default: the one the API was reached
    /// at.
    pub public_host: Option<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 2222)), public_host: None }
    }
}

/// Persistent instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    pub default_disk_mb: u64,
    pub max_disk_mb: u64,
    /// Deprecated: `[quotas] max_instances`, which it sets when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_tenant: Option<u64>,
    /// The longest TTL or idle timeout a request may set, in seconds.
    pub max_timeout_secs: u64,
    /// Largest file upload (`PUT .../files`).
    pub max_upload_mb: u64,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            default_disk_mb: 1024,
            max_disk_mb: 20 * 1024,
            max_per_tenant: None,
            max_timeout_secs: 30 * 86400,
            max_upload_mb: 1024,
        }
    }
}

/// Warm pools (cached mode) and language contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle sandboxes a pool keeps once a cached call has used it.
    pub default_idle: u32,
    /// The most idle sandboxes one pool may keep (prewarm is capped here).
    pub max_idle: u32,
    /// A pool nobody used for this long is emptied.
    pub idle_timeout_secs: u64,
    /// A reused sandbox (`reuse: true`) is replaced after this many calls.
    pub max_uses: u64,
    /// The memory limits of all idle pooled sandboxes together stay under this.
    pub memory_budget_mb: u64,
    /// A context nobody ran code in for this long is deleted.
    pub context_idle_timeout_secs: u64,
    pub max_contexts_per_tenant: usize,
    /// Reused sandboxes (`reuse: true`) one tenant may keep parked between calls.
    pub max_parked_per_tenant: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            default_idle: 2,
            max_idle: 32,
            idle_timeout_secs: 600,
            max_uses: 1000,
            memory_budget_mb: 8192,
            context_idle_timeout_secs: 1800,
            max_contexts_per_tenant: 16,
            max_parked_per_tenant: 16,
        }
    }
}

/// Defaults applied to a request that names no limit, and the most a request may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_memory_mb: u64,
    pub max_memory_mb: u64,
    pub default_cpu: f64,
    pub max_cpu: f64,
    pub default_pids: u32,
    pub max_pids: u32,
    /// Bytes kept of stdout and of stderr, each.
    pub output_bytes: u64,
    /// Size of a sandbox's writable layer, and of its /tmp and /dev/shm.
    pub scratch_mb: u64,
    /// Largest file a payload may write (RLIMIT_FSIZE).
    pub max_file_mb: u64,
    pub max_open_files: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("/var/lib/faas"),
            run_dir: PathBuf::from("/run/faas"),
            max_request_bytes: 10 * 1024 * 1024,
            cors_origins: Vec::new(),
            max_concurrent_sandboxes: 64,
            sandbox_uid: 1000,
            sandbox_gid: 1000,
            cgroup_parent: "faas".into(),
            agent_path: None,
            limits: LimitsConfig::default(),
            pools: PoolConfig::default(),
            instances: InstanceConfig::default(),
            snapshots: SnapshotConfig::default(),
            ssh: SshConfig::default(),
            pricing: faas_store::Pricing::default(),
            quotas: QuotaConfig::default(),
            metering: MeteringConfig::default(),
            rate_limits: RateLimitConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        Self {
            default_timeout_ms: 10_000,
            max_timeout_ms: 300_000,
            default_memory_mb: 512,
            max_memory_mb: 8192,
            default_cpu: 1.0_f64.min(cores),
            max_cpu: cores,
            default_pids: 256,
            max_pids: 4096,
            output_bytes: 1024 * 1024,
            scratch_mb: 256,
            max_file_mb: 256,
            max_open_files: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// The agent binary: configured, or `faas-agent` beside the running executable.
    pub fn agent_binary(&self) -> Option<PathBuf> {
        self.agent_path.clone().or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.join("faas-agent"))
        })
    }

    /// Where the launcher mounts each sandbox's scratch space (in the sandbox's own mount
    /// namespace, so nothing ever appears there on the host).
    pub fn scratch_dir(&self) -> PathBuf {
        self.run_dir.join("scratch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_fields() {
        assert!(toml::from_str::<Config>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").is_err());
        assert!(toml::from_str::<Config>("[limits]\nmax_timeout = 3\n").is_err());
    }

    #[test]
    fn layers_over_defaults() {
        let c: Config = toml::from_str("max_concurrent_sandboxes = 3\n[limits]\nmax_pids = 9\n")
            .expect("parses");
        assert_eq!(c.max_concurrent_sandboxes, 3);
        assert_eq!(c.limits.max_pids, 9);
        assert_eq!(c.limits.default_pids, LimitsConfig::default().default_pids);
    }
}
