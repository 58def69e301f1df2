//! The `faas` binary. Parses arguments, loads configuration, sets up logging, and hands
//! over to a library: the gateway (`serve`), the HTTP client (`exec`, `keys`), the engine's
//! checks (`doctor`), or the sandbox launcher when re-executed by the server.

mod client;
mod commands;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "faas", version, about = "Run untrusted code in fast, isolated sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the server (needs root: namespaces, mounts, cgroups).
    Serve(ServeArgs),
    /// Run a command or code in a sandbox on the server.
    Exec(commands::exec::ExecArgs),
    /// Persistent instances: create, exec, ssh, copy files, stop, start, delete.
    Instances {
        #[command(subcommand)]
        command: commands::instances::InstancesCmd,
    },
    /// Manage API keys (admin).
    Keys {
        #[command(subcommand)]
        command: commands::keys::KeysCmd,
    },
    /// Usage and costs: the current month, a period by day, mode or image, or single charges.
    Usage(commands::usage::UsageArgs),
    /// Report which kernel features and tools this host has, and what a missing one disables.
    Doctor,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "FAAS_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "FAAS_LISTEN")]
    listen: Option<SocketAddr>,
    #[arg(long, env = "FAAS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "FAAS_RUN_DIR")]
    run_dir: Option<PathBuf>,
    #[arg(long, env = "FAAS_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    // The launcher role comes first: it must stay single-threaded and lean.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(faas_sandbox::launcher::LAUNCHER_ARG)) {
        let scratch =
            args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/faas/scratch"));
        faas_sandbox::launcher::launcher_main(scratch);
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Exec(args) => commands::exec::run(args),
        Cmd::Instances { command } => commands::instances::run(command),
        Cmd::Keys { command } => commands::keys::run(command),
        Cmd::Usage(args) => commands::usage::run(args),
        Cmd::Doctor => commands::doctor::run(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut config = match &args.config {
        Some(path) => faas_engine::Config::from_file(path)?,
        None => faas_engine::Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(dir) = args.run_dir {
        config.run_dir = dir;
    }
    if let Some(n) = args.max_concurrent {
        config.max_concurrent_sandboxes = n;
    }
    let admin_key = std::env::var("FAAS_API_KEY").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()?;
    runtime
        .block_on(faas_gateway::serve(config, admin_key))
        .map_err(|e| anyhow::Error::new(e).context("faas serve"))
}
