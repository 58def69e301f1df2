//! What tenants use, measured from cgroups and recorded as charges in the store (which
//! prices them): an execution once, with its result, in the same transaction; a running
//! instance every `metering.interval_secs` and when it stops, in the transaction of the
//! stop; snapshot storage at every change and every interval. Charges carry ids derived
//! from what they measure, so a retried write never bills twice.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use faas_api::{
    CurrentUsage, DiscountTierInfo, ExecutionResult, Mode, UsageGroup as ApiGroup, UsageRecordInfo,
    UsageRecordList, UsageReport, UsageSummary,
};
use faas_store::billing::month_bounds;
use faas_store::{Metered, UsageGroup, UsageKind, UsageTotals};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::execute::now_ms;
use crate::instances::Live;
use crate::{Engine, EngineError, Tenant};

/// The charge of a finished execution. Runs in persistent mode are charged by their
/// instance's meter instead (their CPU is the instance's), so they get none. A run is not
/// sampled while it runs: its memory is charged at its peak for its wall time.
pub(crate) fn execution_charge(tenant: &Tenant, record: &ExecutionResult) -> Option<Metered> {
    if record.mode == Mode::Persistent || record.status == faas_api::ExecStatus::Lost {
        return None;
    }
    let wall_us = (record.duration_ms * 1000.0).round() as u64;
    let peak = record.usage.peak_memory_bytes;
    Some(Metered {
        id: record.id.clone(),
        tenant: tenant.0.clone(),
        kind: UsageKind::Execution,
        resource: record.id.clone(),
        mode: record.mode.as_str().to_owned(),
        image: record.image.clone(),
        start_ms: record.created_at_ms,
        end_ms: record.created_at_ms + wall_us / 1000,
        cpu_us: (record.usage.cpu_ms * 1000.0).round() as u64,
        wall_us,
        memory_peak_bytes: peak,
        memory_avg_bytes: peak,
        memory_kib_ms: (peak / 1024) * wall_us / 1000,
        ..Default::default()
    })
}

/// Where a running instance's metering stands: what was charged up to when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstanceMeter {
    since_ms: u64,
    cpu_ns: u64,
    /// Memory in use at `since_ms` (the average of a period is that of its two ends).
    memory_bytes: u64,
    /// The fraction of a micro-unit its charges so far left over.
    carry_pico: u64,
}

impl Engine {
    /// Starts metering an instance that has just become running (not an execution's own:
    /// its execution is charged).
    pub(crate) fn open_meter(&self, live: &Live) {
        if live.is_scratch() {
            return;
        }
        let Some(sandbox) = live.sandbox() else { return };
        let usage = sandbox.usage();
        *live.meter.lock().unwrap_or_else(|e| e.into_inner()) = Some(InstanceMeter {
            since_ms: now_ms(),
            cpu_ns: usage.cpu_ns,
            memory_bytes: sandbox.memory_in_use(),
            carry_pico: 0,
        });
    }

    /// What a running instance used since its last charge; `last` ends its metering (it
    /// is stopping), else a new period starts now.
    pub(crate) fn instance_charge(&self, live: &Live, last: bool) -> Option<Metered> {
        let mut meter = live.meter.lock().unwrap_or_else(|e| e.into_inner());
        let open = (*meter)?;
        let sandbox = live.sandbox()?;
        let now = now_ms();
        let usage = sandbox.usage();
        let memory = sandbox.memory_in_use();
        let record = live.record();
        let wall_ms = now.saturating_sub(open.since_ms);
        let avg = (open.memory_bytes + memory) / 2;
        let mut charge = Metered {
            id: format!("{}_{}", record.id, open.since_ms),
            tenant: live.tenant.clone(),
            kind: UsageKind::Instance,
            resource: record.id.clone(),
            mode: Mode::Persistent.as_str().to_owned(),
            image: record.image.clone(),
            start_ms: open.since_ms,
            end_ms: now,
            cpu_us: usage.cpu_ns.saturating_sub(open.cpu_ns) / 1000,
            wall_us: wall_ms * 1000,
            memory_peak_bytes: usage.peak_memory_bytes.max(memory),
            memory_avg_bytes: avg,
            memory_kib_ms: avg / 1024 * wall_ms,
            egress_bytes: live.egress.swap(0, Ordering::Relaxed),
            ..Default::default()
        };
        let (list, carry_pico) = self.config.pricing.settle(&charge, open.carry_pico, last);
        charge.settled_list_micros = Some(list);
        *meter = (!last).then_some(InstanceMeter {
            since_ms: now,
            cpu_ns: usage.cpu_ns.max(open.cpu_ns),
            memory_bytes: memory,
            carry_pico,
        });
        Some(charge)
    }

    /// One round of the meter: running instances (and with `storage`, snapshot storage)
    /// are charged up to now, and the gauges set.
    async fn meter_once(&self, storage: bool) {
        let lives: Vec<Arc<Live>> = self.instances.lock().values().cloned().collect();
        let charges: Vec<Metered> =
            lives.iter().filter_map(|live| self.instance_charge(live, false)).collect();
        if !charges.is_empty()
            && let Err(e) = self.store.record_usage(charges).await
        {
            tracing::error!(error = %crate::error_chain(&e), "recording instance usage");
        }
        if storage && let Err(e) = self.store.meter_storage(now_ms()).await {
            tracing::error!(error = %crate::error_chain(&e), "recording snapshot storage");
        }
        match self.store.total_stored_bytes().await {
            Ok(bytes) => metrics::gauge!("faas_snapshot_stored_bytes").set(bytes as f64),
            Err(e) => tracing::warn!(error = %crate::error_chain(&e), "reading stored bytes"),
        }
        self.count_running_instances();
    }

    /// Sets the running-instances gauge.
    pub(crate) fn count_running_instances(&self) {
        let running = self
            .instances
            .lock()
            .values()
            .map(|l| l.record())
            .filter(|r| r.status == faas_api::InstanceStatus::Running)
            .filter(|r| !r.metadata.contains_key(crate::stateful::SCRATCH))
            .count();
        metrics::gauge!("faas_instances_running").set(running as f64);
    }

    /// The tenant's usage that ended in `[from_ms, to_ms)`, in groups.
    pub async fn usage_report(
        &self,
        tenant: &Tenant,
        from_ms: u64,
        to_ms: u64,
        group_by: Option<&str>,
    ) -> Result<UsageReport, EngineError> {
        let group = match group_by {
            None => UsageGroup::Total,
            Some("day") => UsageGroup::Day,
            Some("mode") => UsageGroup::Mode,
            Some("image") => UsageGroup::Image,
            Some(_) => {
                return Err(crate::plan::invalid("group_by", "must be day, mode or image"));
            }
        };
        if from_ms >= to_ms {
            return Err(crate::plan::invalid("from", "must be before to"));
        }
        // One query: the total is the groups added up.
        let rows = self.store.usage_summary(&tenant.0, from_ms, to_ms, group).await?;
        let mut total = UsageTotals::default();
        rows.iter().for_each(|(_, t)| total.add(t));
        let groups = if group == UsageGroup::Total { Vec::new() } else { rows };
        let groups = groups
            .into_iter()
            .map(|(key, totals)| ApiGroup {
                key: match group {
                    UsageGroup::Day => day_name(&key),
                    _ => key,
                },
                usage: summary(&totals),
            })
            .collect();
        Ok(UsageReport {
            tenant: tenant.0.clone(),
            from_ms,
            to_ms,
            group_by: group_by.map(str::to_owned),
            groups,
            total: summary(&total),
        })
    }

    /// The calendar month so far: usage, cost and the discount tier reached.
    pub async fn usage_current(&self, tenant: &Tenant) -> Result<CurrentUsage, EngineError> {
        let now = now_ms();
        let (from_ms, to_ms) = month_bounds(now);
        let total = self.store.usage_summary(&tenant.0, from_ms, to_ms, UsageGroup::Total).await?;
        let usage = total.first().map(|(_, t)| summary(t)).unwrap_or_default();
        let pricing = &self.config.pricing;
        let (tier, next) = pricing.tier_at(usage.list_micros);
        let info = |t: faas_store::billing::DiscountTier| DiscountTierInfo {
            from_micros: t.from_micros,
            percent: t.percent,
        };
        let month = faas_store::billing::month_of(now);
        Ok(CurrentUsage {
            tenant: tenant.0.clone(),
            month: format!("{}-{:02}", month / 100, month % 100),
            from_ms,
            to_ms,
            usage,
            discount_tier: tier
                .map(info)
                .unwrap_or(DiscountTierInfo { from_micros: 0, percent: 0 }),
            next_tier: next.map(info),
            spend_cap_micros: self.quotas(&tenant.0).await?.monthly_spend_cap_micros.unwrap_or(0),
        })
    }

    /// Single charges in the order they were made, after the charge `after` (at most
    /// `limit`, 1 to 1000).
    pub async fn usage_records(
        &self,
        tenant: &Tenant,
        from_ms: u64,
        to_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<UsageRecordList, EngineError> {
        if !(1..=1000).contains(&limit) {
            return Err(crate::plan::invalid("limit", "must be between 1 and 1000"));
        }
        let mut records =
            self.store.usage_records(&tenant.0, from_ms, to_ms, after, limit + 1).await?;
        let truncated = records.len() > limit;
        records.truncate(limit);
        let records = records
            .into_iter()
            .map(|r| {
                let m = r.metered;
                UsageRecordInfo {
                    id: m.id,
                    kind: m.kind.as_str().to_owned(),
                    resource: m.resource,
                    mode: m.mode,
                    image: m.image,
                    start_ms: m.start_ms,
                    end_ms: m.end_ms,
                    cpu_us: m.cpu_us,
                    wall_us: m.wall_us,
                    memory_peak_bytes: m.memory_peak_bytes,
                    memory_avg_bytes: m.memory_avg_bytes,
                    memory_kib_ms: m.memory_kib_ms,
                    storage_kib_ms: m.storage_kib_ms,
                    egress_bytes: m.egress_bytes,
                    gpu_ms: m.gpu_ms,
                    list_micros: r.list_micros,
                    cost_micros: r.cost_micros,
                }
            })
            .collect();
        Ok(UsageRecordList { records, truncated })
    }
}

fn summary(t: &UsageTotals) -> UsageSummary {
    const KIB_PER_GIB: f64 = (1u64 << 20) as f64;
    UsageSummary {
        records: t.records,
        cpu_seconds: t.cpu_us as f64 / 1e6,
        wall_seconds: t.wall_us as f64 / 1e6,
        memory_gb_seconds: t.memory_kib_ms as f64 / KIB_PER_GIB / 1000.0,
        peak_memory_bytes: t.memory_peak_bytes,
        storage_gb_months: t.storage_kib_ms as f64 / KIB_PER_GIB / (30.0 * 86_400_000.0),
        egress_bytes: t.egress_bytes,
        gpu_hours: t.gpu_ms as f64 / 3_600_000.0,
        list_micros: t.list_micros,
        discount_micros: t.list_micros - t.cost_micros,
        cost_micros: t.cost_micros,
    }
}

/// `2026-11-23` for a day number since the epoch.
fn day_name(key: &str) -> String {
    let day: i64 = key.parse().unwrap_or(0);
    chrono::DateTime::from_timestamp(day * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| key.to_owned())
}

/// Charges running instances every `interval_secs` and snapshot storage every
/// `storage_interval_secs`.
pub(crate) fn spawn_meter(engine: Weak<Engine>, config: &crate::config::MeteringConfig) {
    let interval = Duration::from_secs(config.interval_secs.max(1));
    let storage_interval = Duration::from_secs(config.storage_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut storage_at = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(engine) = engine.upgrade() else { return };
            let storage = storage_at.elapsed() >= storage_interval;
            if storage {
                storage_at = tokio::time::Instant::now();
            }
            engine.meter_once(storage).await;
        }
    });
}

/// A connection to a port of an instance that counts the bytes coming out of it (egress,
/// charged with the instance's next period).
pub struct PortStream {
    inner: tokio::io::DuplexStream,
    egress: Arc<AtomicU64>,
}

impl PortStream {
    pub(crate) fn new(inner: tokio::io::DuplexStream, egress: Arc<AtomicU64>) -> Self {
        Self { inner, egress }
    }
}

impl AsyncRead for PortStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.egress.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
