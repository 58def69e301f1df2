//! Metering and pricing: what a resource used (measured, never estimated), and what it
//! costs. Money is integer micro-units (1 = one millionth of the currency) end to end.
//!
//! A record's list price is its compute (CPU, memory, GPU) at the price list times its
//! mode's multiplier, plus storage and egress, summed in pico-units. A single charge (an
//! execution) is rounded up to a whole micro-unit; a meter that charges one resource
//! period after period (a running instance, a tenant's storage) carries the fraction
//! left over into the next period, so its charges add up to its exact price. Volume discounts apply by the tenant's list spend so far in the
//! calendar month (UTC): the part of a record above a tier's threshold gets that tier's
//! discount, so crossing a tier changes the rate from that point on.

use serde::{Deserialize, Serialize};

const KIB_PER_GIB: u128 = 1 << 20;
const BYTES_PER_GIB: u128 = 1 << 30;
/// A storage month: 30 days, in milliseconds.
const MONTH_MS: u128 = 30 * 86_400_000;
/// Prices are per unit in micro-units; terms are summed in pico-units (a millionth of a
/// micro-unit) so rounding happens once per record.
const PICO_PER_MICRO: u128 = 1_000_000;

/// What one resource used over one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metered {
    /// Unique per charge: a second write with the same id is ignored (no double billing).
    pub id: String,
    pub tenant: String,
    pub kind: UsageKind,
    /// The execution, instance or tenant (storage) measured.
    pub resource: String,
    /// The mode compute ran in (`ephemeral`, `cached`, `checkpointed`, `branched`,
    /// `persistent`); empty for storage.
    pub mode: String,
    pub image: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// CPU time used, from the cgroup (all cores together).
    pub cpu_us: u64,
    pub wall_us: u64,
    pub memory_peak_bytes: u64,
    pub memory_avg_bytes: u64,
    /// Memory held over time (KiB x ms): what GB-seconds are charged from.
    pub memory_kib_ms: u64,
    /// Snapshot storage held over time (KiB x ms of compressed, deduplicated chunks).
    pub storage_kib_ms: u64,
    /// Bytes sent to clients through port proxies.
    pub egress_bytes: u64,
    pub gpu_ms: u64,
    /// The list price as a meter settled it (whole micro-units, the fraction carried to
    /// its next period); `None`: the list price rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_list_micros: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageKind {
    #[default]
    Execution,
    Instance,
    Storage,
}

impl UsageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageKind::Execution => "execution",
            UsageKind::Instance => "instance",
            UsageKind::Storage => "storage",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "instance" => UsageKind::Instance,
            "storage" => UsageKind::Storage,
            _ => UsageKind::Execution,
        }
    }
}

/// A stored charge: the measurement and its price.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    #[serde(flatten)]
    pub metered: Metered,
    /// The price before discounts.
    pub list_micros: u64,
    /// The price charged: list minus the volume discount.
    pub cost_micros: u64,
}

/// The price list (`[pricing]` in the server's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pricing {
    /// Per second of CPU time (one core busy for one second).
    pub vcpu_second_micros: u64,
    /// Per GiB of memory held for one second.
    pub memory_gb_second_micros: u64,
    pub gpu_hour_micros: u64,
    /// Per GiB of snapshot storage held for 30 days.
    pub storage_gb_month_micros: u64,
    /// Per GiB sent through port proxies.
    pub egress_gb_micros: u64,
    /// Multipliers of compute by mode, in percent.
    pub mode_percent: ModePercent,
    /// Volume discounts by list spend in the calendar month; the first starts at 0.
    pub discounts: Vec<DiscountTier>,
}

impl Default for Pricing {
    fn default() -> Self {
        Self {
            vcpu_second_micros: 14,
            memory_gb_second_micros: 2,
            gpu_hour_micros: 1_100_000,
            storage_gb_month_micros: 100_000,
            egress_gb_micros: 90_000,
            mode_percent: ModePercent::default(),
            discounts: vec![
                DiscountTier { from_micros: 0, percent: 0 },
                DiscountTier { from_micros: 100_000_000, percent: 10 },
                DiscountTier { from_micros: 1_000_000_000, percent: 20 },
                DiscountTier { from_micros: 10_000_000_000, percent: 30 },
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModePercent {
    pub ephemeral: u64,
    pub cached: u64,
    pub checkpointed: u64,
    pub branched: u64,
    pub persistent: u64,
}

impl Default for ModePercent {
    fn default() -> Self {
        Self { ephemeral: 100, cached: 80, checkpointed: 120, branched: 150, persistent: 200 }
    }
}

impl ModePercent {
    fn of(&self, mode: &str) -> u64 {
        match mode {
            "cached" => self.cached,
            "checkpointed" => self.checkpointed,
            "branched" => self.branched,
            "persistent" => self.persistent,
            _ => self.ephemeral,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscountTier {
    /// Month-to-date list spend from which this tier applies.
    pub from_micros: u64,
    pub percent: u64,
}

impl Pricing {
    /// Checks what serde cannot: tiers ascending from 0, percentages that make sense.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let tiers = &self.discounts;
        if tiers.first().is_some_and(|t| t.from_micros != 0) {
            return Err("pricing.discounts: the first tier must start at from_micros = 0".into());
        }
        if tiers.windows(2).any(|w| w[0].from_micros >= w[1].from_micros) {
            return Err("pricing.discounts: tiers must be in ascending order of from_micros".into());
        }
        if tiers.iter().any(|t| t.percent > 100) {
            return Err("pricing.discounts: a percent is at most 100".into());
        }
        Ok(())
    }

    /// The price of `m` before discounts, in micro-units, rounded up.
    pub fn list_micros(&self, m: &Metered) -> u64 {
        u64::try_from(self.list_pico(m).div_ceil(PICO_PER_MICRO)).unwrap_or(u64::MAX)
    }

    /// A meter's charge: `carry` pico-units left from its last period plus this one's
    /// price, as whole micro-units (rounded up when `last`) and the new carry.
    pub fn settle(&self, m: &Metered, carry: u64, last: bool) -> (u64, u64) {
        let pico = self.list_pico(m).saturating_add(carry as u128);
        let micros = if last { pico.div_ceil(PICO_PER_MICRO) } else { pico / PICO_PER_MICRO };
        let carry = if last { 0 } else { (pico % PICO_PER_MICRO) as u64 };
        (u64::try_from(micros).unwrap_or(u64::MAX), carry)
    }

    /// The price of `m` before discounts, in pico-units.
    pub fn list_pico(&self, m: &Metered) -> u128 {
        // Saturating: absurd prices or quantities cap the charge instead of wrapping it.
        let mul = |a: u64, b: u64| (a as u128).saturating_mul(b as u128);
        let compute = mul(m.cpu_us, self.vcpu_second_micros)
            .saturating_add(
                mul(m.memory_kib_ms, self.memory_gb_second_micros).saturating_mul(1000)
                    / KIB_PER_GIB,
            )
            .saturating_add(mul(m.gpu_ms, self.gpu_hour_micros).saturating_mul(10) / 36);
        let storage = mul(m.storage_kib_ms, self.storage_gb_month_micros)
            .saturating_mul(PICO_PER_MICRO)
            / (KIB_PER_GIB * MONTH_MS);
        let egress = mul(m.egress_bytes, self.egress_gb_micros).saturating_mul(PICO_PER_MICRO)
            / BYTES_PER_GIB;
        (compute.saturating_mul(self.mode_percent.of(&m.mode) as u128) / 100)
            .saturating_add(storage)
            .saturating_add(egress)
    }

    /// What a record listed at `list` costs when the month's list spend before it was
    /// `before`: each part of it gets the discount of the tier it falls in.
    pub fn cost_micros(&self, before: u64, list: u64) -> u64 {
        let end = before.saturating_add(list);
        let mut discount = 0u128;
        for (i, tier) in self.discounts.iter().enumerate() {
            let upper = self.discounts.get(i + 1).map_or(u64::MAX, |next| next.from_micros);
            let (lo, hi) = (before.max(tier.from_micros), end.min(upper));
            if hi > lo {
                discount += (hi - lo) as u128 * tier.percent.min(100) as u128 / 100;
            }
        }
        list - discount as u64
    }

    /// The tier a month-to-date list spend is in, and the next one.
    pub fn tier_at(&self, spend: u64) -> (Option<DiscountTier>, Option<DiscountTier>) {
        let i = self.discounts.iter().rposition(|t| t.from_micros <= spend);
        (i.map(|i| self.discounts[i]), self.discounts.get(i.map_or(0, |i| i + 1)).copied())
    }
}

/// The calendar month (UTC) a moment falls in, as `yyyymm`.
pub fn month_of(ms: u64) -> u32 {
    use chrono::Datelike;
    let at = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
    at.year() as u32 * 100 + at.month()
}

/// The first millisecond of the month `ms` falls in, and of the next.
pub fn month_bounds(ms: u64) -> (u64, u64) {
    use chrono::{Datelike, NaiveDate};
    let at = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
    let first = NaiveDate::from_ymd_opt(at.year(), at.month(), 1).unwrap_or_default();
    let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
    let start = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp_millis() as u64
    };
    (start(first), start(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(cpu_us: u64, mode: &str) -> Metered {
        Metered { cpu_us, mode: mode.into(), ..Default::default() }
    }

    #[test]
    fn list_prices_apply_the_mode_multiplier_to_compute_and_round_up_once() {
        let p = Pricing { vcpu_second_micros: 14, ..Default::default() };
        // 1 CPU-second: 14 micro-units; cached 80%: 11.2 -> 12; persistent: 28.
        assert_eq!(p.list_micros(&cpu(1_000_000, "ephemeral")), 14);
        assert_eq!(p.list_micros(&cpu(1_000_000, "cached")), 12);
        assert_eq!(p.list_micros(&cpu(1_000_000, "persistent")), 28);
        // A millisecond of CPU is 0.014: charged 1, never 0.
        assert_eq!(p.list_micros(&cpu(1_000, "ephemeral")), 1);
        assert_eq!(p.list_micros(&cpu(0, "ephemeral")), 0);
        // 1 GiB for one second of memory, 1 GiB for a month of storage, 1 GiB out.
        let m = Metered { memory_kib_ms: (1 << 20) * 1000, ..Default::default() };
        assert_eq!(p.list_micros(&m), 2);
        let s = Metered { storage_kib_ms: (1 << 20) * 30 * 86_400_000, ..Default::default() };
        assert_eq!(p.list_micros(&s), 100_000);
        let e = Metered { egress_bytes: 1 << 30, mode: "persistent".into(), ..Default::default() };
        assert_eq!(p.list_micros(&e), 90_000, "egress carries no mode multiplier");
    }

    #[test]
    fn meters_carry_fractions_so_periods_add_up_to_the_whole() {
        let p = Pricing::default();
        // 1 GiB of storage for 10 s is 0.386 micro-units; a month of such periods is 100000.
        let period = Metered { storage_kib_ms: (1 << 20) * 10_000, ..Default::default() };
        let (mut total, mut carry) = (0, 0);
        for _ in 0..259_199 {
            let (micros, left) = p.settle(&period, carry, false);
            total += micros;
            carry = left;
        }
        let (last, left) = p.settle(&period, carry, true);
        assert_eq!((total + last, left), (100_000, 0));
    }

    #[test]
    fn discounts_apply_from_the_threshold_on() {
        let p = Pricing::default();
        assert_eq!(p.cost_micros(0, 50_000_000), 50_000_000);
        // 100 below the 100-unit threshold, 100 above it at 10% off.
        assert_eq!(p.cost_micros(0, 200_000_000), 100_000_000 + 90_000_000);
        assert_eq!(p.cost_micros(100_000_000, 10), 9);
        assert_eq!(p.cost_micros(20_000_000_000, 100), 70);
        assert_eq!(p.tier_at(150_000_000).0, Some(p.discounts[1]));
        assert_eq!(p.tier_at(150_000_000).1, Some(p.discounts[2]));
    }

    #[test]
    fn months_are_utc_calendar_months() {
        // 2026-11-23T19:00:00Z
        let t = 1_795_460_400_000;
        assert_eq!(month_of(t), 202611);
        let (start, end) = month_bounds(t);
        assert_eq!(month_of(start), 202611);
        assert_eq!(month_of(start - 1), 202610);
        assert_eq!(month_of(end), 202612);
        assert_eq!(month_of(end - 1), 202611);
    }
}
