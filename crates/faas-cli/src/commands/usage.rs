//! `faas usage`: what the caller's tenant (an admin: any tenant) used and what it costs.

use faas_api::{CurrentUsage, UsageRecordList, UsageReport, UsageSummary};
use reqwest::Method;

use crate::client::{Client, runtime};

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Start: milliseconds since the epoch, RFC 3339 or YYYY-MM-DD (UTC). Without `--from`,
    /// `--to` or `--group-by`: the current month, with its discount tier.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive), as `--from`.
    #[arg(long)]
    to: Option<String>,
    #[arg(long, value_parser = ["day", "mode", "image"])]
    group_by: Option<String>,
    /// Another tenant's usage (admin keys).
    #[arg(long)]
    tenant: Option<String>,
    /// Single charges instead of totals.
    #[arg(long)]
    records: bool,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Micro-units as a decimal amount.
fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn query(args: &UsageArgs) -> String {
    let pairs = [
        ("from", args.from.as_deref()),
        ("to", args.to.as_deref()),
        ("group_by", args.group_by.as_deref()),
        ("tenant", args.tenant.as_deref()),
    ];
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v)))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn row(key: &str, u: &UsageSummary) {
    println!(
        "{:<16} {:>8} {:>12.3} {:>14.3} {:>12.6} {:>12} {:>14} {:>14}",
        key,
        u.records,
        u.cpu_seconds,
        u.memory_gb_seconds,
        u.storage_gb_months,
        u.egress_bytes,
        money(u.list_micros),
        money(u.cost_micros)
    );
}

fn header(first: &str) {
    println!(
        "{:<16} {:>8} {:>12} {:>14} {:>12} {:>12} {:>14} {:>14}",
        first, "RECORDS", "CPU_S", "MEM_GB_S", "STORE_GB_MO", "EGRESS_B", "LIST", "COST"
    );
}

pub fn run(args: UsageArgs) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let rt = runtime()?;
    let current = args.from.is_none() && args.to.is_none() && args.group_by.is_none();
    let path = match (args.records, current) {
        (true, _) => format!("/api/v1/usage/records{}", query(&args)),
        (false, true) => format!("/api/v1/usage/current{}", query(&args)),
        (false, false) => format!("/api/v1/usage{}", query(&args)),
    };
    let answer = rt.block_on(client.call(Method::GET, &path, None))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    if args.records {
        let list: UsageRecordList = serde_json::from_value(answer)?;
        println!(
            "{:<40} {:<9} {:<12} {:>10} {:>10} {:>12} {:>12}",
            "ID", "KIND", "MODE", "CPU_MS", "WALL_MS", "LIST", "COST"
        );
        for r in &list.records {
            println!(
                "{:<40} {:<9} {:<12} {:>10.3} {:>10.3} {:>12} {:>12}",
                r.id,
                r.kind,
                r.mode,
                r.cpu_us as f64 / 1000.0,
                r.wall_us as f64 / 1000.0,
                money(r.list_micros),
                money(r.cost_micros)
            );
        }
        if list.truncated {
            eprintln!("(more records: narrow --from/--to)");
        }
    } else if current {
        let u: CurrentUsage = serde_json::from_value(answer)?;
        println!("tenant {}, {} (UTC)", u.tenant, u.month);
        header("MONTH");
        row(&u.month, &u.usage);
        println!(
            "discount tier: {}% from {}{}",
            u.discount_tier.percent,
            money(u.discount_tier.from_micros),
            u.next_tier
                .map(|t| format!("; next: {}% from {}", t.percent, money(t.from_micros)))
                .unwrap_or_default()
        );
        if u.spend_cap_micros > 0 {
            println!("spend cap: {}", money(u.spend_cap_micros));
        }
    } else {
        let report: UsageReport = serde_json::from_value(answer)?;
        header(report.group_by.as_deref().unwrap_or("").to_uppercase().as_str());
        for group in &report.groups {
            row(&group.key, &group.usage);
        }
        row("TOTAL", &report.total);
    }
    Ok(())
}
