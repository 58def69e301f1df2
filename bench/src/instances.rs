//! Persistent instances: how long from `POST /instances` to the first exec's answer, how
//! fast an exec in a running instance answers (against a warm pooled sandbox, the closest
//! previous mode), and how much host memory each idle instance costs.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::{ADMIN_KEY, Args, Server, Stats, http_workload, print_table};

pub(crate) async fn post(
    client: &reqwest::Client,
    url: String,
    body: Value,
) -> anyhow::Result<Value> {
    let resp = client.post(&url).bearer_auth(ADMIN_KEY).body(body.to_string()).send().await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    ensure!(status.is_success(), "{url}: {status} {answer}");
    Ok(answer)
}

pub(crate) async fn delete(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/instances/{id}", server.url);
    let resp = client.delete(&url).bearer_auth(ADMIN_KEY).send().await?;
    ensure!(resp.status().is_success(), "delete {id}: {}", resp.status());
    Ok(())
}

pub(crate) async fn create(
    client: &reqwest::Client,
    server: &Server,
    body: Value,
) -> anyhow::Result<String> {
    let answer = post(client, format!("{}/api/v1/instances", server.url), body).await?;
    Ok(answer["id"].as_str().context("no id")?.to_owned())
}

pub(crate) async fn exec_true(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/instances/{id}/exec", server.url);
    let result = post(client, url, json!({"command": ["/usr/bin/true"]})).await?;
    if result["exit_code"] != 0 {
        bail!("exec in {id}: {result}");
    }
    Ok(())
}

/// Create, first exec, delete (not timed), `runs` times; then one instance's execs.
async fn latency(client: &reqwest::Client, server: &Server, args: &Args) -> anyhow::Result<()> {
    let runs = args.runs.min(100);
    let mut first_exec = Vec::with_capacity(runs);
    for i in 0..runs + 3 {
        let start = Instant::now();
        let id = create(client, server, json!({"disk_mb": 64})).await?;
        exec_true(client, server, &id).await?;
        if i >= 3 {
            first_exec.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        delete(client, server, &id).await?;
    }
    let quick = Args { runs, ..args.clone() };
    let ephemeral = json!({"command": ["/usr/bin/true"]});
    let reference =
        http_workload(client, server, "ephemeral `true` (fresh sandbox)", ephemeral, &quick)
            .await?;
    let created = Stats {
        name: "instance create (64 MiB disk) + first exec `true`".into(),
        samples: first_exec,
    };
    print_table(
        "Instances: create to first exec (reference: an ephemeral run)",
        &[reference, created],
        2,
    );

    let id = create(client, server, json!({})).await?;
    let mut execs = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let start = Instant::now();
        exec_true(client, server, &id).await?;
        if i >= args.warmup {
            execs.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    delete(client, server, &id).await?;
    let reuse = json!({"command": ["/usr/bin/true"], "mode": "cached", "reuse": true});
    let reference =
        http_workload(client, server, "cached, reuse `true` (warm pooled sandbox)", reuse, args)
            .await?;
    let execs = Stats { name: "exec `true` in a running instance".into(), samples: execs };
    print_table("Instances: exec latency (reference: cached reuse)", &[reference, execs], 2);
    Ok(())
}

/// Kernel-wide memory in use (MemTotal - MemAvailable), in KiB.
fn host_used_kib() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
            })
            .with_context(|| format!("{name} in /proc/meminfo"))
    };
    Ok(field("MemTotal:")? - field("MemAvailable:")?)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// Creates `count` idle instances and reports the host memory they take, per instance.
async fn density(client: &reqwest::Client, server: &Server, count: usize) -> anyhow::Result<()> {
    // Settle, drop clean caches so earlier runs' page cache does not blur the figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let before = host_used_kib()?;
    let server_before = rss_kib(server.child.id());
    let started = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        match create(client, server, json!({"disk_mb": 64})).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                println!("\nidle instances: creation {i} failed: {e}");
                break;
            }
        }
    }
    let create_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = host_used_kib()?;
    let server_after = rss_kib(server.child.id());
    let n = ids.len().max(1) as f64;
    let per = (after.saturating_sub(before)) as f64 / n / 1024.0;
    let server_per = (server_after.saturating_sub(server_before)) as f64 / n;
    println!(
        "\nidle instances: {} created in {create_secs:.1} s ({:.1} ms each); host memory in use rose {:.0} MiB = {per:.2} MiB per instance (server RSS {server_per:.0} KiB per instance); target <= 5 MiB",
        ids.len(),
        create_secs * 1000.0 / n,
        (after.saturating_sub(before)) as f64 / 1024.0,
    );
    // Every one still answers.
    let sample: Vec<&String> = ids.iter().step_by((ids.len() / 10).max(1)).collect();
    for id in sample {
        exec_true(client, server, id).await?;
    }
    let started = Instant::now();
    for id in &ids {
        delete(client, server, id).await?;
    }
    println!("deleted them in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

pub fn run(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    server: &Server,
    args: &Args,
) -> anyhow::Result<()> {
    runtime.block_on(latency(client, server, args))?;
    runtime.block_on(density(client, server, args.idle_instances))
}
