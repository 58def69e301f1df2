//! Warm pools: sandboxes started ahead of time, with the agent as PID 1, so a cached call
//! skips the sandbox start. One pool per (tenant, image, limits) - sandboxes never cross
//! tenants - plus one per reuse key. By default a call takes a fresh sandbox, which is
//! destroyed afterwards and replaced in the background; with `reuse` the sandbox goes back
//! to its pool for the next call. An empty pool still serves: the call starts a sandbox
//! itself and counts as a miss.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_api::{AppliedLimits, PoolInfo};
use faas_sandbox::{AgentSandbox, AgentSpec, LaunchSpec, Limits, Sandboxes};

use crate::config::{Config, PoolConfig};
use crate::images::Image;
use crate::{EngineError, Tenant};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub tenant: String,
    pub image: String,
    pub memory_mb: u64,
    /// Thousandths of a core, so the key can be hashed.
    pub cpu_milli: u64,
    pub pids: u32,
    pub reuse: Option<String>,
}

impl PoolKey {
    pub fn new(
        tenant: &Tenant,
        image: &Image,
        limits: &AppliedLimits,
        reuse: Option<String>,
    ) -> Self {
        Self {
            tenant: tenant.0.clone(),
            image: image.name.clone(),
            memory_mb: limits.memory_mb,
            cpu_milli: (limits.cpu * 1000.0).round() as u64,
            pids: limits.pids,
            reuse,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_mb << 20,
            cpus: self.cpu_milli as f64 / 1000.0,
            // The agent (PID 1) counts too.
            pids: self.pids + 1,
        }
    }
}

struct Pool {
    image: Image,
    idle: VecDeque<AgentSandbox>,
    target: u32,
    refilling: u32,
    hits: u64,
    misses: u64,
    refills: u64,
    refill_time: Duration,
    last_used: Instant,
}

impl Pool {
    fn new(image: &Image) -> Self {
        Self {
            image: image.clone(),
            idle: VecDeque::new(),
            target: 0,
            refilling: 0,
            hits: 0,
            misses: 0,
            refills: 0,
            refill_time: Duration::ZERO,
            last_used: Instant::now(),
        }
    }
}

pub(crate) struct Pools {
    sandboxes: Arc<Sandboxes>,
    agent: Option<PathBuf>,
    config: PoolConfig,
    uid: u32,
    gid: u32,
    scratch_bytes: u64,
    max_file_bytes: u64,
    max_open_files: u64,
    pools: Mutex<HashMap<PoolKey, Pool>>,
    seq: AtomicU64,
}

impl Pools {
    pub fn new(config: &Config, sandboxes: Arc<Sandboxes>) -> Arc<Self> {
        let agent = config.agent_binary().filter(|p| p.is_file());
        let pools = Arc::new(Self {
            sandboxes,
            agent,
            config: config.pools.clone(),
            uid: config.sandbox_uid,
            gid: config.sandbox_gid,
            scratch_bytes: config.limits.scratch_mb << 20,
            max_file_bytes: config.limits.max_file_mb << 20,
            max_open_files: config.limits.max_open_files,
            pools: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        });
        Arc::clone(&pools).spawn_janitor();
        pools
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent binary, or why long-lived sandboxes cannot start on this server.
    pub fn agent(&self) -> Result<&PathBuf, EngineError> {
        self.agent.as_ref().ok_or_else(|| EngineError::Unsupported {
            what: "cached mode and contexts".into(),
            why: "the faas-agent binary was not found (set agent_path, or install it beside the faas binary)".into(),
        })
    }

    fn spec(&self, image: &Image, agent: PathBuf) -> LaunchSpec {
        LaunchSpec {
            argv: Vec::new(),
            env: Vec::new(),
            workdir: "/".into(),
            hostname: "sandbox".into(),
            rootfs: image.rootfs.clone(),
            binds: image.binds.clone(),
            scratch_bytes: self.scratch_bytes,
            files: Vec::new(),
            uid: self.uid,
            gid: self.gid,
            max_file_bytes: self.max_file_bytes,
            max_open_files: self.max_open_files,
            disk_image: None,
            agent: Some(AgentSpec { binary: agent }),
        }
    }

    /// Starts one sandbox for `key` (not yet in any pool).
    pub async fn start(&self, key: &PoolKey, image: &Image) -> Result<AgentSandbox, EngineError> {
        let agent = self.agent()?.clone();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("sb_{}_{n}", uuid::Uuid::now_v7().simple());
        metrics::counter!("faas_sandbox_starts_total", "mode" => "cached").increment(1);
        Ok(self.sandboxes.start_agent(id, self.spec(image, agent), key.limits()).await?)
    }

    /// A sandbox for one call: a warm one when there is one (a hit), else a new one.
    /// Either way the pool is refilled in the background.
    pub async fn checkout(
        self: &Arc<Self>,
        key: &PoolKey,
        image: &Image,
    ) -> Result<(AgentSandbox, bool), EngineError> {
        self.agent()?;
        let warm = {
            let mut pools = self.lock();
            let default_idle = if key.reuse.is_some() { 1 } else { self.config.default_idle };
            let pool = pools.entry(key.clone()).or_insert_with(|| Pool::new(image));
            if pool.target == 0 {
                pool.target = default_idle.min(self.config.max_idle);
            }
            pool.last_used = Instant::now();
            let mut warm = None;
            while let Some(sandbox) = pool.idle.pop_front() {
                if sandbox.is_alive() {
                    warm = Some(sandbox);
                    break;
                }
            }
            if warm.is_some() {
                pool.hits += 1
            } else {
                pool.misses += 1
            }
            warm
        };
        let sandbox = match warm {
            Some(sandbox) => (sandbox, true),
            None => (self.start(key, image).await?, false),
        };
        // A reused sandbox comes back itself; a fresh-per-call pool needs a replacement.
        if key.reuse.is_none() {
            self.refill(key);
        }
        Ok(sandbox)
    }

    /// Returns a reused sandbox to its pool, or destroys it when spent. What the call left
    /// running is killed first: parked sandboxes hold no processes, and they count against
    /// the memory budget and the tenant's cap on parked sandboxes like warm ones.
    pub async fn checkin(self: &Arc<Self>, key: &PoolKey, sandbox: AgentSandbox) {
        if !sandbox.is_alive()
            || sandbox.uses() >= self.config.max_uses
            || sandbox.kill_processes().await.is_err()
        {
            return discard(sandbox);
        }
        let mut pools = self.lock();
        let over_budget =
            Self::idle_memory_mb(&pools) + key.memory_mb > self.config.memory_budget_mb;
        let parked: usize = pools
            .iter()
            .filter(|(k, _)| k.tenant == key.tenant && k.reuse.is_some())
            .map(|(_, p)| p.idle.len())
            .sum();
        match pools.get_mut(key) {
            Some(pool)
                if (pool.idle.len() as u32) < pool.target.max(1)
                    && !over_budget
                    && parked < self.config.max_parked_per_tenant =>
            {
                pool.idle.push_back(sandbox)
            }
            _ => {
                drop(pools);
                discard(sandbox);
            }
        }
    }

    fn idle_memory_mb(pools: &HashMap<PoolKey, Pool>) -> u64 {
        pools.iter().map(|(k, p)| k.memory_mb * (p.idle.len() as u64 + p.refilling as u64)).sum()
    }

    /// Starts sandboxes in the background until the pool holds its target.
    pub fn refill(self: &Arc<Self>, key: &PoolKey) {
        let this = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move { this.fill(&key).await });
    }

    /// Starts sandboxes one after the other until the pool holds its target, the memory
    /// budget is reached, or a start fails.
    async fn fill(&self, key: &PoolKey) {
        loop {
            let image = {
                let mut pools = self.lock();
                let used = Self::idle_memory_mb(&pools);
                let Some(pool) = pools.get_mut(key) else {
                    return;
                };
                let full = pool.idle.len() as u32 + pool.refilling >= pool.target;
                if full || used + key.memory_mb > self.config.memory_budget_mb {
                    return;
                }
                pool.refilling += 1;
                pool.image.clone()
            };
            let started = Instant::now();
            let result = self.start(key, &image).await;
            let mut pools = self.lock();
            let Some(pool) = pools.get_mut(key) else {
                return;
            };
            pool.refilling -= 1;
            match result {
                Ok(sandbox) => {
                    pool.refills += 1;
                    pool.refill_time += started.elapsed();
                    pool.idle.push_back(sandbox);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refilling a warm pool failed");
                    return;
                }
            }
        }
    }

    /// Raises a pool's target to `count` (at most `max_idle`) and fills it.
    pub async fn prewarm(
        self: &Arc<Self>,
        key: PoolKey,
        image: &Image,
        count: u32,
    ) -> Result<PoolInfo, EngineError> {
        self.agent()?;
        {
            let mut pools = self.lock();
            let pool = pools.entry(key.clone()).or_insert_with(|| Pool::new(image));
            pool.target = pool.target.max(count.min(self.config.max_idle));
            pool.last_used = Instant::now();
        }
        self.fill(&key).await;
        let pools = self.lock();
        Ok(info(&key, pools.get(&key)))
    }

    /// The pools of one tenant, or of all with `None`.
    pub fn list(&self, tenant: Option<&str>) -> Vec<PoolInfo> {
        let pools = self.lock();
        let mut list: Vec<PoolInfo> = pools
            .iter()
            .filter(|(k, _)| tenant.is_none_or(|t| t == k.tenant))
            .map(|(k, p)| info(k, Some(p)))
            .collect();
        list.sort_by(|a, b| {
            (&a.tenant, &a.image, a.memory_mb).cmp(&(&b.tenant, &b.image, b.memory_mb))
        });
        list
    }

    /// Destroys every idle sandbox (server shutdown).
    pub async fn drain(&self) {
        let idle: Vec<AgentSandbox> = {
            let mut pools = self.lock();
            pools
                .values_mut()
                .flat_map(|p| {
                    p.target = 0;
                    p.idle.drain(..)
                })
                .collect()
        };
        for sandbox in idle {
            let _ = sandbox.destroy().await;
        }
    }

    /// Empties pools nobody used for `idle_timeout_secs`, and drops dead sandboxes.
    fn spawn_janitor(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let idle_timeout = Duration::from_secs(this.config.idle_timeout_secs);
                let mut expired = Vec::new();
                {
                    let mut pools = this.lock();
                    pools.retain(|_, pool| {
                        if pool.last_used.elapsed() > idle_timeout && pool.refilling == 0 {
                            expired.extend(pool.idle.drain(..));
                            return false;
                        }
                        let (alive, dead): (VecDeque<_>, VecDeque<_>) =
                            pool.idle.drain(..).partition(AgentSandbox::is_alive);
                        pool.idle = alive;
                        expired.extend(dead);
                        true
                    });
                }
                for sandbox in expired {
                    discard(sandbox);
                }
            }
        });
    }
}

/// Destroys a sandbox in the background (the caller's answer does not wait for it).
pub(crate) fn discard(sandbox: AgentSandbox) {
    tokio::spawn(async move {
        if let Err(e) = sandbox.destroy().await {
            tracing::warn!(error = %e, "destroying a sandbox failed");
        }
    });
}

fn info(key: &PoolKey, pool: Option<&Pool>) -> PoolInfo {
    let (idle, target, hits, misses, refills, refill_time) = pool
        .map(|p| (p.idle.len() as u32, p.target, p.hits, p.misses, p.refills, p.refill_time))
        .unwrap_or_default();
    PoolInfo {
        tenant: key.tenant.clone(),
        image: key.image.clone(),
        memory_mb: key.memory_mb,
        cpu: key.cpu_milli as f64 / 1000.0,
        pids: key.pids,
        reuse_key: key.reuse.clone(),
        idle,
        target,
        hits,
        misses,
        refills,
        refill_ms_mean: if refills == 0 {
            0.0
        } else {
            refill_time.as_secs_f64() * 1000.0 / refills as f64
        },
    }
}
