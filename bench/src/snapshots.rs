//! Snapshots: checkpoint and restore times for 1, 50 and 500 MiB of Python state (in a
//! context inside an instance), against creating a fresh instance (the previous way to get
//! a running sandbox); how long until 8 branches are ready; and the host memory 8 idle
//! branches of a 100 MiB state take against one restored copy.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::instances::{create, delete, exec_true, post};
use crate::{ADMIN_KEY, Args, Server, Stats, print_table};

/// An instance with a Python context holding `mib` MiB in one bytes object: pseudo-random
/// (no two pages alike, as real state; the same in every copy), every page written, so
/// every page is in the checkpoint.
async fn state_instance(
    client: &reqwest::Client,
    server: &Server,
    mib: u64,
) -> anyhow::Result<String> {
    let memory_mb = (mib * 2 + 256).max(512);
    let id = create(client, server, json!({"disk_mb": 64, "memory_mb": memory_mb})).await?;
    let url = format!("{}/api/v1/instances/{id}/contexts", server.url);
    let context = post(client, url, json!({"language": "python"})).await?;
    let context = context["id"].as_str().context("context id")?.to_owned();
    let code = format!(
        "import random\nr = random.Random(41)\ndata = b''.join(r.randbytes(1 << 20) for _ in range({mib}))\nx = 41"
    );
    let url = format!("{}/api/v1/instances/{id}/exec", server.url);
    let ran = post(client, url, json!({"code": code, "context_id": context, "timeout_ms": 120000}))
        .await?;
    ensure!(ran["exit_code"] == 0, "loading state: {ran}");
    Ok(id)
}

async fn snapshot(client: &reqwest::Client, server: &Server, id: &str) -> anyhow::Result<String> {
    let url = format!("{}/api/v1/snapshots", server.url);
    let snap = post(client, url, json!({"instance_id": id})).await?;
    Ok(snap["id"].as_str().context("snapshot id")?.to_owned())
}

async fn restore(client: &reqwest::Client, server: &Server, snap: &str) -> anyhow::Result<String> {
    let url = format!("{}/api/v1/snapshots/{snap}/restore", server.url);
    let instance = post(client, url, json!({})).await?;
    Ok(instance["id"].as_str().context("instance id")?.to_owned())
}

async fn delete_snapshot(
    client: &reqwest::Client,
    server: &Server,
    snap: &str,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/snapshots/{snap}", server.url);
    let resp = client.delete(&url).bearer_auth(ADMIN_KEY).send().await?;
    ensure!(resp.status().is_success(), "delete {snap}: {}", resp.status());
    Ok(())
}

/// The summed PSS of every process in the instances' sandboxes (their cgroups are named
/// after them), in MiB.
fn pss_mib(server: &Server, instances: &[String]) -> f64 {
    let hierarchies = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"];
    let mut kib = 0u64;
    for root in hierarchies {
        let Ok(entries) = std::fs::read_dir(std::path::Path::new(root).join(&server.parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !instances.iter().any(|id| name.starts_with(id.as_str())) {
                continue;
            }
            let procs =
                std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                    .unwrap_or_default();
                kib += rollup
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Pss:")?
                            .trim()
                            .strip_suffix("kB")?
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0);
            }
        }
        break;
    }
    kib as f64 / 1024.0
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Checkpoint and restore of one state size, `runs` times each.
async fn sizes(client: &reqwest::Client, server: &Server, args: &Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let runs = args.runs.min(30);
    let mut fresh = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let id = create(client, server, json!({"disk_mb": 64})).await?;
        exec_true(client, server, &id).await?;
        fresh.push(ms(start));
        delete(client, server, &id).await?;
    }
    rows.push(Stats { name: "fresh instance, create + first exec".into(), samples: fresh });
    for mib in [1u64, 50, 500] {
        let n = if mib >= 500 { runs.min(5) } else { runs };
        let id = state_instance(client, server, mib).await?;
        let mut checkpoints = Vec::new();
        for _ in 0..n {
            let start = Instant::now();
            let snap = snapshot(client, server, &id).await?;
            checkpoints.push(ms(start));
            // Packing into the blob store follows in the background: not timed, and not
            // left to compete with the next checkpoint.
            packed(client, server, &snap).await?;
            delete_snapshot(client, server, &snap).await?;
        }
        let snap = snapshot(client, server, &id).await?;
        let restores = restores(client, server, &snap, n).await?;
        delete_snapshot(client, server, &snap).await?;
        delete(client, server, &id).await?;
        rows.push(Stats {
            name: format!("checkpoint, {mib} MiB of Python state"),
            samples: checkpoints,
        });
        rows.push(Stats { name: format!("restore + first exec, {mib} MiB"), samples: restores });
    }
    print_table(
        "Snapshots: checkpoint and restore (reference: a fresh instance)",
        &rows,
        rows.len(),
    );
    Ok(())
}

/// `count` branches of `snap`: their instance ids.
async fn branch(
    client: &reqwest::Client,
    server: &Server,
    snap: &str,
    count: u32,
) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/api/v1/branches", server.url);
    let made: Value = post(client, url, json!({"snapshot_id": snap, "count": count})).await?;
    Ok(made["instances"]
        .as_array()
        .context("instances")?
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect())
}

/// Waits until the server has stored the snapshot in its blob store (packing competes
/// for the CPU with whatever runs meanwhile; a snapshot is usually restored later).
async fn packed(client: &reqwest::Client, server: &Server, snap: &str) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/snapshots/{snap}", server.url);
    for _ in 0..600 {
        let got: Value = client.get(&url).bearer_auth(ADMIN_KEY).send().await?.json().await?;
        if got["stored_bytes"].is_u64() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("snapshot {snap} was not packed in 60 s")
}

/// `n` restores of `snap`, each until its first exec answers (the copy is deleted after).
async fn restores(
    client: &reqwest::Client,
    server: &Server,
    snap: &str,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    packed(client, server, snap).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let copy = restore(client, server, snap).await?;
        exec_true(client, server, &copy).await?;
        samples.push(ms(start));
        delete(client, server, &copy).await?;
    }
    Ok(samples)
}

/// Lazy (userfaultfd) against eager restores of each size, on servers set to one or the
/// other: where lazy wins.
async fn lazy_vs_eager(client: &reqwest::Client, args: &Args) -> anyhow::Result<()> {
    let runs = args.runs.min(30);
    let mut tables: Vec<Vec<Stats>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for (label, min_mb) in [("eager", 1u64 << 30), ("lazy", 0)] {
        let config = format!("[snapshots]\nlazy_restore_min_mb = {min_mb}\n");
        let server = Server::start_with(&args.faas, label, &config)?;
        for (i, mib) in [1u64, 50, 500].into_iter().enumerate() {
            let n = if mib >= 500 { runs.min(5) } else { runs };
            let id = state_instance(client, &server, mib).await?;
            let snap = snapshot(client, &server, &id).await?;
            let samples = restores(client, &server, &snap, n).await?;
            tables[i].push(Stats { name: format!("{label}, {mib} MiB"), samples });
            delete_snapshot(client, &server, &snap).await?;
            delete(client, &server, &id).await?;
        }
    }
    for (rows, mib) in tables.iter().zip([1, 50, 500]) {
        print_table(&format!("Restore + first exec of {mib} MiB: lazy against eager"), rows, 2);
    }
    Ok(())
}

/// 8 branches of a 100 MiB state: time until all run, and the host memory they hold.
async fn branches(client: &reqwest::Client, server: &Server, args: &Args) -> anyhow::Result<()> {
    let id = state_instance(client, server, 100).await?;
    let snap = snapshot(client, server, &id).await?;
    delete(client, server, &id).await?;
    packed(client, server, &snap).await?;
    let mut times = Vec::new();
    for _ in 0..args.runs.min(10) {
        let start = Instant::now();
        let url = format!("{}/api/v1/branches", server.url);
        let made = post(client, url, json!({"snapshot_id": snap, "count": 8})).await?;
        times.push(ms(start));
        for instance in made["instances"].as_array().context("instances")? {
            delete(client, server, instance["id"].as_str().context("id")?).await?;
        }
    }
    let one = Stats { name: "8 branches of 100 MiB, all running".into(), samples: times };
    print_table("Branches: time until all are ready", &[one], 1);

    // Proportional set size: pages the branches share (page cache of the images, the
    // agent binary, libraries) count once, split between them.
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    let single = restore(client, server, &snap).await?;
    settle().await;
    let one_copy = pss_mib(server, std::slice::from_ref(&single));
    delete(client, server, &single).await?;
    let ids = branch(client, server, &snap, 8).await?;
    settle().await;
    let eight = pss_mib(server, &ids);
    for id in &ids {
        delete(client, server, id).await?;
    }
    delete_snapshot(client, server, &snap).await?;
    println!(
        "\nmemory (PSS of every process) of one restored copy of a 100 MiB state: {one_copy:.0} MiB; of 8 idle branches: {eight:.0} MiB = {:.1}x one (target <= 2x)",
        eight / one_copy.max(1.0)
    );
    Ok(())
}

/// The host's ksmd, turned on (and made brisk) for the KSM figure, and put back as it was
/// afterwards: the server itself never changes it.
struct Ksmd {
    saved: Vec<(&'static str, String)>,
}

const KSM: &str = "/sys/kernel/mm/ksm";

impl Ksmd {
    fn enable() -> anyhow::Result<Self> {
        let mut ksmd = Self { saved: Vec::new() };
        for (file, value) in [("pages_to_scan", "20000"), ("sleep_millisecs", "10"), ("run", "1")] {
            let path = std::path::Path::new(KSM).join(file);
            let old = std::fs::read_to_string(&path).with_context(|| format!("{path:?}"))?;
            std::fs::write(&path, value).with_context(|| format!("writing {path:?}"))?;
            ksmd.saved.push((file, old.trim().to_owned()));
        }
        Ok(ksmd)
    }
}

impl Drop for Ksmd {
    fn drop(&mut self) {
        for (file, value) in self.saved.iter().rev() {
            let _ = std::fs::write(std::path::Path::new(KSM).join(file), value);
        }
    }
}

/// Polls the instances' PSS until ksmd has done its work (two readings within 0.5%),
/// 90 s at most; the PSS in MiB and how long it took.
async fn settled_pss(server: &Server, ids: &[String]) -> (f64, Duration) {
    let start = Instant::now();
    let mut last = pss_mib(server, ids);
    let mut steady = 0;
    while steady < 2 && start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = pss_mib(server, ids);
        steady = if (last - now).abs() <= last * 0.005 { steady + 1 } else { 0 };
        last = now;
    }
    (last, start.elapsed())
}

/// The same memory figure on a server that marks restored memory mergeable
/// (`[snapshots] ksm = true`), with ksmd running.
async fn ksm_branches(client: &reqwest::Client, args: &Args) -> anyhow::Result<()> {
    let server = Server::start_with(&args.faas, "ksm", "[snapshots]\nksm = true\n")?;
    let id = state_instance(client, &server, 100).await?;
    let snap = snapshot(client, &server, &id).await?;
    delete(client, &server, &id).await?;
    packed(client, &server, &snap).await?;
    let ksmd = Ksmd::enable()?;
    let single = restore(client, &server, &snap).await?;
    let (one_copy, _) = settled_pss(&server, std::slice::from_ref(&single)).await;
    delete(client, &server, &single).await?;
    let ids = branch(client, &server, &snap, 8).await?;
    let (eight, took) = settled_pss(&server, &ids).await;
    drop(ksmd);
    for id in &ids {
        delete(client, &server, id).await?;
    }
    println!(
        "with `ksm = true` and ksmd on (pages_to_scan 20000, sleep_millisecs 10): one copy {one_copy:.0} MiB; 8 idle branches {eight:.0} MiB = {:.1}x one, settled {:.0} s after the branch call",
        eight / one_copy.max(1.0),
        took.as_secs_f64()
    );
    Ok(())
}

pub fn run(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    server: &Server,
    args: &Args,
) -> anyhow::Result<()> {
    runtime.block_on(sizes(client, server, args))?;
    runtime.block_on(lazy_vs_eager(client, args))?;
    runtime.block_on(branches(client, server, args))?;
    runtime.block_on(ksm_branches(client, args))
}
