//! `faas-bench`: latency of ephemeral runs through the HTTP API, measured side by side with
//! references in the same process and the same minute: bubblewrap running the same command
//! (a namespace sandbox, without HTTP), and the host's own fork/exec (no sandbox at all).
//!
//! It starts its own server from the release binary, on a private data dir and cgroup
//! parent, runs every workload `--runs` times after a warm-up, and prints medians and p99
//! as a Markdown table for docs/BENCHMARKS.md.

mod instances;
mod snapshots;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "faas_bench_admin_key_0123456789abcdef";

#[derive(Debug, Clone, Parser)]
struct Args {
    /// Measured runs per workload (after the warm-up).
    #[arg(long, default_value_t = 300)]
    runs: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The faas binary to benchmark.
    #[arg(long, default_value = "target/release/faas")]
    faas: PathBuf,
    /// Which benchmarks: ephemeral, cached, instances, snapshots, or all.
    #[arg(long, default_value = "all")]
    only: String,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections of the throughput run.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Idle instances created for the memory-per-instance figure.
    #[arg(long, default_value_t = 1000)]
    idle_instances: usize,
}

struct Stats {
    name: String,
    samples: Vec<f64>,
}

impl Stats {
    fn percentile(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
        s[rank.min(s.len() - 1)]
    }
}

struct Server {
    child: Child,
    url: String,
    base: PathBuf,
    parent: String,
}

impl Server {
    fn start(faas: &PathBuf) -> anyhow::Result<Self> {
        Self::start_with(faas, "main", "")
    }

    /// A server named `name` (its own data and cgroups), with `extra` appended to its
    /// configuration.
    fn start_with(faas: &PathBuf, name: &str, extra: &str) -> anyhow::Result<Self> {
        let parent = format!("faas-bench-{}-{name}", std::process::id());
        let base = std::env::temp_dir().join(&parent);
        std::fs::create_dir_all(&base)?;
        let config = base.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\ncgroup_parent = \"{parent}\"\n[quotas]\nmax_instances = 0\nmax_concurrent_sandboxes = 0\nmax_memory_mb = 0\n[rate_limits]\nenabled = false\n[ssh]\nenabled = false\n{extra}",
                base.join("data").display(),
                base.join("run").display()
            ),
        )?;
        let mut child = Command::new(faas)
            .args(["serve", "--config"])
            .arg(&config)
            .env("FAAS_API_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("starting {} (build it with cargo build --release)", faas.display())
            })?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut url = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if let Some(u) = line?.strip_prefix("faas listening on ") {
                url = Some(u.to_owned());
                break;
            }
        }
        // The server's later log lines (warnings) go to the bench's stderr.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
        let url = url.context("the server did not start")?;
        Ok(Self { child, url, base, parent })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        for entry in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(entry.path().join(&self.parent));
        }
        let _ = std::fs::remove_dir(PathBuf::from("/sys/fs/cgroup").join(&self.parent));
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

async fn http_workload(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    body: Value,
    args: &Args,
) -> anyhow::Result<Stats> {
    http_workload_paced(client, server, name, body, args, Duration::ZERO).await
}

/// Like `http_workload`, with a pause between calls (outside the measured time) so that a
/// fresh-per-call pool can refill, as it does at any rate below its refill rate.
async fn http_workload_paced(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    body: Value,
    args: &Args,
    pause: Duration,
) -> anyhow::Result<Stats> {
    let url = format!("{}/api/v1/execute", server.url);
    let body = body.to_string();
    let mut samples = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let start = Instant::now();
        let resp = client.post(&url).bearer_auth(ADMIN_KEY).body(body.clone()).send().await?;
        let status = resp.status();
        let result: Value = resp.json().await?;
        let elapsed = start.elapsed();
        if !status.is_success() || result["exit_code"] != 0 {
            bail!("{name}: run failed: {result}");
        }
        if i >= args.warmup {
            samples.push(elapsed.as_secs_f64() * 1000.0);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(Stats { name: name.into(), samples })
}

fn process_workload(name: &str, argv: &[&str], args: &Args) -> anyhow::Result<Stats> {
    let mut samples = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let start = Instant::now();
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", argv[0]))?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!("{name}: {status}");
        }
        if i >= args.warmup {
            samples.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    Ok(Stats { name: name.into(), samples })
}

/// bubblewrap with isolation comparable to a faas sandbox: every namespace, /usr read-only,
/// fresh /proc, /dev and /tmp.
fn bwrap_argv(command: &[&'static str]) -> Vec<&'static str> {
    let mut argv = vec![
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--",
    ];
    argv.extend_from_slice(command);
    argv
}

fn print_table(title: &str, rows: &[Stats], reference: usize) {
    println!("\n{title}\n");
    println!("| workload | p50 ms | p99 ms | mean ms | p50 vs reference |");
    println!("|---|---:|---:|---:|---:|");
    for chunk in rows.chunks(reference.max(1)) {
        let base = chunk[0].percentile(50.0);
        for s in chunk {
            let mean = s.samples.iter().sum::<f64>() / s.samples.len() as f64;
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2}x |",
                s.name,
                s.percentile(50.0),
                s.percentile(99.0),
                mean,
                s.percentile(50.0) / base
            );
        }
    }
}

fn ephemeral(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    server: &Server,
    args: &Args,
) -> anyhow::Result<()> {
    let true_argv = ["/usr/bin/true"];
    let python_argv = ["/usr/bin/python3", "-c", "pass"];
    let mut rows = Vec::new();
    // Interleave each command's workloads so drifts in machine load hit all of them alike.
    for (command, label) in [(&true_argv[..], "true"), (&python_argv[..], "python3 -c pass")] {
        rows.push(process_workload(&format!("bubblewrap `{label}`"), &bwrap_argv(command), args)?);
        let body = json!({"command": command});
        rows.push(runtime.block_on(http_workload(
            client,
            server,
            &format!("faas ephemeral `{label}` (HTTP)"),
            body,
            args,
        ))?);
        rows.push(process_workload(&format!("host fork/exec `{label}`"), command, args)?);
    }
    print_table("Ephemeral (reference: bubblewrap, same command)", &rows, 3);
    Ok(())
}

fn cached(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    server: &Server,
    args: &Args,
) -> anyhow::Result<()> {
    let true_argv = ["/usr/bin/true"];
    let python_argv = ["/usr/bin/python3", "-c", "pass"];
    runtime.block_on(async {
        let prewarm = client
            .post(format!("{}/api/v1/prewarm", server.url))
            .bearer_auth(ADMIN_KEY)
            .body(json!({"count": 4}).to_string())
            .send()
            .await?;
        anyhow::ensure!(prewarm.status().is_success(), "prewarm: {}", prewarm.text().await?);
        Ok(())
    })?;
    let mut rows = Vec::new();
    let settle = || std::thread::sleep(Duration::from_secs(1));
    for (command, label) in [(&true_argv[..], "true"), (&python_argv[..], "python3 -c pass")] {
        let name = |what: &str| format!("faas {what} `{label}` (HTTP)");
        // Reuse first: the other two destroy a sandbox per call, and the kernel tears their
        // network namespaces down in the background for a while afterwards.
        let reuse = json!({"command": command, "mode": "cached", "reuse": true});
        let reused =
            runtime.block_on(http_workload(client, server, &name("cached, reuse"), reuse, args))?;
        settle();
        let fresh = json!({"command": command, "mode": "cached"});
        let pause = Duration::from_millis(15);
        let fresh = runtime.block_on(http_workload_paced(
            client,
            server,
            &name("cached, fresh sandbox"),
            fresh,
            args,
            pause,
        ))?;
        settle();
        let ephemeral = runtime.block_on(http_workload(
            client,
            server,
            &name("ephemeral"),
            json!({"command": command}),
            args,
        ))?;
        settle();
        rows.extend([ephemeral, fresh, reused]);
    }
    print_table("Cached (reference: ephemeral, same command)", &rows, 3);
    let pools: Value = runtime.block_on(async {
        client
            .get(format!("{}/api/v1/pools", server.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?
            .json()
            .await
    })?;
    for pool in pools["pools"].as_array().into_iter().flatten() {
        println!(
            "\npool (reuse key {}): {} hits, {} misses, {} refills, mean start {:.2} ms",
            pool["reuse_key"],
            pool["hits"],
            pool["misses"],
            pool["refills"],
            pool["refill_ms_mean"].as_f64().unwrap_or(0.0)
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    runtime.block_on(throughput(server, args))?;
    runtime.block_on(refill_rate(client, server))?;
    Ok(())
}

/// How fast a pool fills: prewarm 16 small sandboxes of a new pool and time it.
async fn refill_rate(client: &reqwest::Client, server: &Server) -> anyhow::Result<()> {
    let started = Instant::now();
    let resp = client
        .post(format!("{}/api/v1/prewarm", server.url))
        .bearer_auth(ADMIN_KEY)
        .body(json!({"count": 16, "memory_mb": 64}).to_string())
        .send()
        .await?;
    let pool: Value = resp.json().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let idle = pool["idle"].as_f64().unwrap_or(0.0);
    println!(
        "\npool refill: {idle} sandboxes in {:.0} ms = {:.0} sandboxes/s",
        elapsed * 1000.0,
        idle / elapsed
    );
    Ok(())
}

/// Trivial cached calls (`true`, reuse: one warm sandbox per connection) from several
/// keep-alive connections at once, for a fixed time.
async fn throughput(server: &Server, args: &Args) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let url = format!("{}/api/v1/execute", server.url);
        let body = json!({"command": ["/usr/bin/true"], "mode": "cached", "reuse": true, "reuse_key": format!("conn-{c}")}).to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let resp =
                    client.post(&url).bearer_auth(ADMIN_KEY).body(body.clone()).send().await?;
                if resp.status().is_success() {
                    ok += 1
                } else {
                    failed += 1
                }
                let _ = resp.bytes().await?;
            }
            anyhow::Ok((ok, failed))
        }));
    }
    let started = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await??;
        ok += o;
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\nthroughput: {ok} cached `true` calls in {secs:.1} s over {} keep-alive connections = {:.0} calls/s ({failed} failed)",
        args.connections,
        ok as f64 / secs
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = Server::start(&args.faas)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "faas-bench: {} runs each after {} warm-up, kernel {}, {cores} cores",
        args.runs,
        args.warmup,
        kernel.trim()
    );
    if args.only == "all" || args.only == "ephemeral" {
        ephemeral(&runtime, &client, &server, &args)?;
    }
    if args.only == "all" || args.only == "cached" {
        cached(&runtime, &client, &server, &args)?;
    }
    if args.only == "all" || args.only == "instances" {
        instances::run(&runtime, &client, &server, &args)?;
    }
    if args.only == "all" || args.only == "snapshots" {
        snapshots::run(&runtime, &client, &server, &args)?;
    }
    Ok(())
}
