//! `faas instances create|list|get|exec|ssh|cp|stop|start|rm`: persistent instances.
//!
//! `cp` copies a file, or a directory with `-r` (as a tar stream, so the local `tar` is
//! used), between this machine and an instance; the instance side is written `ID:/path`.
//! `ssh` asks for a fresh key, logs in with the system's OpenSSH client (checking the
//! server's host key), and revokes the key when the session ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use faas_api::{
    Command, CreateInstanceRequest, Instance, InstanceExecRequest, InstanceList, SshAccess,
    TimeoutAction,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, runtime};
use crate::commands::exec::{exit_code, pairs, stream};

#[derive(Debug, clap::Subcommand)]
pub enum InstancesCmd {
    /// Create and start an instance; prints its id.
    Create(CreateArgs),
    /// List your instances.
    List {
        /// Only those with this status (running, stopped, failed, ...).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one instance as JSON.
    Get {
        id: String,
    },
    /// Run a command in a running instance, streaming its output; exits with its status.
    Exec(ExecArgs),
    /// Log in with OpenSSH (a key is issued for the session and revoked after).
    Ssh {
        id: String,
        /// A command to run instead of a login shell, and extra ssh arguments before `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Copy between here and an instance: `faas instances cp ./a ID:/home/user/a`.
    Cp {
        from: String,
        to: String,
        /// Copy a directory (as a tar stream).
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    Stop {
        id: String,
    },
    Start {
        id: String,
    },
    /// Delete an instance and its files.
    Rm {
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    memory_mb: Option<u64>,
    #[arg(long)]
    cpu: Option<f64>,
    #[arg(long)]
    pids: Option<u32>,
    /// Size of the instance's disk, in MiB.
    #[arg(long)]
    disk_mb: Option<u64>,
    /// Seconds until the instance is stopped (or deleted, with --on-timeout delete).
    #[arg(long)]
    ttl: Option<u64>,
    /// Seconds without activity until the same happens.
    #[arg(long)]
    idle_timeout: Option<u64>,
    #[arg(long, value_parser = ["stop", "delete"])]
    on_timeout: Option<String>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// KEY=VALUE labels to find it by, repeatable.
    #[arg(long = "meta")]
    metadata: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    id: String,
    /// A shell command line.
    #[arg(short = 'c')]
    command: Option<String>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    #[arg(long)]
    workdir: Option<String>,
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Start it in the background and print its process id.
    #[arg(long)]
    background: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true)]
    argv: Vec<String>,
}

/// `path` as a query value.
fn query(path: &str) -> String {
    url::form_urlencoded::byte_serialize(path.as_bytes()).collect()
}

pub fn run(cmd: InstancesCmd) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let rt = runtime()?;
    let call = |method, path: &str, body: Option<Value>| {
        rt.block_on(client.call(method, path, body.as_ref()))
    };
    match cmd {
        InstancesCmd::Create(args) => {
            let on_timeout = match args.on_timeout.as_deref() {
                Some("delete") => TimeoutAction::Delete,
                _ => TimeoutAction::Stop,
            };
            let req = CreateInstanceRequest {
                image: args.image,
                env: pairs("--env", &args.env)?,
                memory_mb: args.memory_mb,
                cpu: args.cpu,
                pids: args.pids,
                disk_mb: args.disk_mb,
                network: false,
                ttl_seconds: args.ttl,
                idle_timeout_seconds: args.idle_timeout,
                on_timeout,
                metadata: pairs("--meta", &args.metadata)?,
            };
            let answer = call(Method::POST, "/api/v1/instances", Some(serde_json::to_value(req)?))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                let instance: Instance = serde_json::from_value(answer)?;
                println!("{}", instance.id);
            }
        }
        InstancesCmd::List { status, json } => {
            let path = match status {
                Some(s) => format!("/api/v1/instances?status={}", query(&s)),
                None => "/api/v1/instances".into(),
            };
            let answer = call(Method::GET, &path, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let list: InstanceList = serde_json::from_value(answer)?;
            println!("{:<38} {:<9} {:<10} {:>7} {:>6}", "ID", "STATUS", "IMAGE", "MEM_MB", "CPU");
            for i in list.instances {
                println!(
                    "{:<38} {:<9} {:<10} {:>7} {:>6}",
                    i.id,
                    i.status.as_str(),
                    i.image,
                    i.limits.memory_mb,
                    i.limits.cpu
                );
            }
        }
        InstancesCmd::Get { id } => {
            let answer = call(Method::GET, &format!("/api/v1/instances/{id}"), None)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        InstancesCmd::Exec(args) => {
            drop(rt);
            return exec(&client, args);
        }
        InstancesCmd::Ssh { id, command } => {
            drop(rt);
            return ssh(&client, &id, &command);
        }
        InstancesCmd::Cp { from, to, recursive } => {
            rt.block_on(copy(&client, &from, &to, recursive))?;
        }
        InstancesCmd::Stop { id } => {
            call(Method::POST, &format!("/api/v1/instances/{id}/stop"), Some(json!({})))?;
            eprintln!("stopped {id}");
        }
        InstancesCmd::Start { id } => {
            call(Method::POST, &format!("/api/v1/instances/{id}/start"), Some(json!({})))?;
            eprintln!("started {id}");
        }
        InstancesCmd::Rm { id } => {
            call(Method::DELETE, &format!("/api/v1/instances/{id}"), None)?;
            eprintln!("deleted {id}");
        }
    }
    Ok(())
}

fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<()> {
    let command = match (args.command, args.argv.is_empty()) {
        (Some(line), true) => Command::Shell(line),
        (None, false) => Command::Argv(args.argv),
        (Some(_), false) => bail!("give either -c or a command after --, not both"),
        (None, true) => bail!("nothing to run: give -c COMMAND or a command after --"),
    };
    let req = InstanceExecRequest {
        command: Some(command),
        env: pairs("--env", &args.env)?,
        workdir: args.workdir,
        timeout_ms: args.timeout_ms,
        background: args.background,
        ..InstanceExecRequest::default()
    };
    let body = serde_json::to_value(req)?;
    if args.background {
        let path = format!("/api/v1/instances/{}/exec", args.id);
        let answer = runtime()?.block_on(client.call(Method::POST, &path, Some(&body)))?;
        println!("{}", answer["id"].as_str().unwrap_or_default());
        return Ok(());
    }
    let result = stream(client, &format!("/api/v1/instances/{}/exec/stream", args.id), &body)?;
    std::process::exit(exit_code(&result))
}

/// Logs in with the system's `ssh`, trusting only the host key the API names.
fn ssh(client: &Client, id: &str, command: &[String]) -> anyhow::Result<()> {
    let rt = runtime()?;
    let answer =
        rt.block_on(client.call(Method::GET, &format!("/api/v1/instances/{id}/ssh"), None))?;
    let access: SshAccess = serde_json::from_value(answer).context("unexpected answer")?;
    let dir = private_dir()?;
    let key = dir.join("key");
    let known_hosts = dir.join("known_hosts");
    write_private(&key, access.private_key.as_bytes())?;
    let host_entry = match access.port {
        22 => access.host.clone(),
        port => format!("[{}]:{port}", access.host),
    };
    write_private(&known_hosts, format!("{host_entry} {}\n", access.host_public_key).as_bytes())?;
    let status = std::process::Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-p", &access.port.to_string()])
        .arg(format!("{}@{}", access.user, access.host))
        .args(command)
        .status()
        .context("running ssh (is the OpenSSH client installed?)");
    // The key served this session only.
    let _ = std::fs::remove_dir_all(&dir);
    let revoke = format!("/api/v1/instances/{id}/ssh/keys/{}", access.key_id);
    let _ = rt.block_on(client.call(Method::DELETE, &revoke, None));
    std::process::exit(status?.code().unwrap_or(255))
}

/// A directory only this user can read, for the session's key.
fn private_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base =
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let dir = base.join(format!("faas-ssh-{}", hex::encode(seed)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("{}", dir.display()))?;
    Ok(dir)
}

fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    file.write_all(content)?;
    Ok(())
}

/// `ID:/path` on the instance side, or a local path.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && path.starts_with('/')).then_some((id, path))
}

async fn copy(client: &Client, from: &str, to: &str, recursive: bool) -> anyhow::Result<()> {
    match (remote(from), remote(to)) {
        (None, Some((id, path))) => {
            let local = Path::new(from);
            if recursive {
                // The local tar writes the archive into the request as it goes.
                let mut tar = tokio::process::Command::new("tar")
                    .arg("-C")
                    .arg(local)
                    .args(["-cf", "-", "."])
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("running tar")?;
                let stdout = tar.stdout.take().context("tar's output")?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(stdout));
                let route = format!("/api/v1/instances/{id}/files/archive?path={}", query(path));
                client.send_body(Method::PUT, &route, body).await?;
                if !tar.wait().await?.success() {
                    bail!("tar could not read {}", local.display());
                }
            } else {
                let file = tokio::fs::File::open(local)
                    .await
                    .with_context(|| format!("{}", local.display()))?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                let route = format!("/api/v1/instances/{id}/files?path={}", query(path));
                client.send_body(Method::PUT, &route, body).await?;
            }
        }
        (Some((id, path)), None) => {
            let local = Path::new(to);
            if recursive {
                std::fs::create_dir_all(local).with_context(|| format!("{}", local.display()))?;
                let route = format!("/api/v1/instances/{id}/files/archive?path={}", query(path));
                let mut resp = client.download(&route).await?;
                let mut tar = tokio::process::Command::new("tar")
                    .arg("-C")
                    .arg(local)
                    .args(["-xf", "-"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .context("running tar")?;
                let mut stdin = tar.stdin.take().context("tar's input")?;
                while let Some(chunk) = resp.chunk().await? {
                    tokio::io::AsyncWriteExt::write_all(&mut stdin, &chunk).await?;
                }
                drop(stdin);
                if !tar.wait().await?.success() {
                    bail!("tar could not extract into {}", local.display());
                }
            } else {
                let route = format!("/api/v1/instances/{id}/files?path={}", query(path));
                let mut resp = client.download(&route).await?;
                let mut file = tokio::fs::File::create(local)
                    .await
                    .with_context(|| format!("{}", local.display()))?;
                while let Some(chunk) = resp.chunk().await? {
                    tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
                }
                tokio::io::AsyncWriteExt::flush(&mut file).await?;
            }
        }
        _ => bail!("one side must be a local path and the other ID:/absolute/path"),
    }
    Ok(())
}
