//! `faas-bench`: latency of ephemeral runs through the HTTP API, measured side by side with
//! references in the same process and the same minute: bubblewrap running the same command
//! (a namespace sandbox, without HTTP), and the host's own fork/exec (no sandbox at all).
//!
//! It starts its own server from the release binary, on a private data dir and cgroup
//! parent, runs every workload `--runs` times after a warm-up, and prints medians and p99
//! as a Markdown table for docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "faas_bench_admin_key_0123456789abcdef";

#[derive(Debug, Parser)]
struct Args {
    /// Measured runs per workload (after the warm-up).
    #[arg(long, default_value_t = 300)]
    runs: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The faas binary to benchmark.
    #[arg(long, default_value = "target/release/faas")]
    faas: PathBuf,
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
        let parent = format!("faas-bench-{}", std::process::id());
        let base = std::env::temp_dir().join(&parent);
        std::fs::create_dir_all(&base)?;
        let config = base.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\ncgroup_parent = \"{parent}\"\n",
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
                format!(
                    "starting {} (build it with cargo build --release)",
                    faas.display()
                )
            })?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut url = None;
        for line in BufReader::new(stdout).lines() {
            if let Some(u) = line?.strip_prefix("faas listening on ") {
                url = Some(u.to_owned());
                break;
            }
        }
        let url = url.context("the server did not start")?;
        Ok(Self {
            child,
            url,
            base,
            parent,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
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
    let url = format!("{}/api/v1/execute", server.url);
    let body = body.to_string();
    let mut samples = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let start = Instant::now();
        let resp = client
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .body(body.clone())
            .send()
            .await?;
        let status = resp.status();
        let result: Value = resp.json().await?;
        let elapsed = start.elapsed();
        if !status.is_success() || result["exit_code"] != 0 {
            bail!("{name}: run failed: {result}");
        }
        if i >= args.warmup {
            samples.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    Ok(Stats {
        name: name.into(),
        samples,
    })
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
    Ok(Stats {
        name: name.into(),
        samples,
    })
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = Server::start(&args.faas)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?;
    let true_argv = ["/usr/bin/true"];
    let python_argv = ["/usr/bin/python3", "-c", "pass"];

    let mut rows = Vec::new();
    // Interleave each command's workloads so drifts in machine load hit all of them alike.
    for (command, label) in [
        (&true_argv[..], "true"),
        (&python_argv[..], "python3 -c pass"),
    ] {
        let body = json!({"command": command});
        rows.push(runtime.block_on(http_workload(
            &client,
            &server,
            &format!("faas ephemeral `{label}` (HTTP)"),
            body,
            &args,
        ))?);
        rows.push(process_workload(
            &format!("bubblewrap `{label}`"),
            &bwrap_argv(command),
            &args,
        )?);
        rows.push(process_workload(
            &format!("host fork/exec `{label}`"),
            command,
            &args,
        )?);
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "faas-bench: {} runs each after {} warm-up, kernel {}, {cores} cores\n",
        args.runs,
        args.warmup,
        kernel.trim()
    );
    println!("| workload | p50 ms | p99 ms | mean ms | p50 vs bubblewrap |");
    println!("|---|---:|---:|---:|---:|");
    for chunk in rows.chunks(3) {
        let bwrap_p50 = chunk[1].percentile(50.0);
        for s in chunk {
            let mean = s.samples.iter().sum::<f64>() / s.samples.len() as f64;
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2}x |",
                s.name,
                s.percentile(50.0),
                s.percentile(99.0),
                mean,
                s.percentile(50.0) / bwrap_p50
            );
        }
    }
    Ok(())
}
