//! `faas exec`: `faas exec -- ls -la /`, `faas exec -c 'echo hi'` (shell),
//! `faas exec --language python -c 'print(1)'`. Prints the program's stdout and stderr and
//! exits with its exit code (128+signal when killed, 124 on timeout, like `timeout(1)`).

use std::io::{Read, Write};

use anyhow::{Context, bail};
use faas_api::{Command, ExecStatus, ExecuteRequest, ExecutionResult, Mode, StreamEvent};
use reqwest::Method;

use crate::client::{Client, runtime};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Language of the code given with -c (python, javascript, bash, sh).
    #[arg(long, short = 'l')]
    language: Option<String>,
    /// Code (with --language) or a shell command line (without).
    #[arg(short = 'c', long = "code")]
    code: Option<String>,
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[arg(long)]
    memory_mb: Option<u64>,
    /// CPU cores, fractional.
    #[arg(long)]
    cpu: Option<f64>,
    #[arg(long)]
    pids: Option<u32>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    #[arg(long)]
    workdir: Option<String>,
    /// Text for the program's stdin; "-" passes this command's own stdin.
    #[arg(long)]
    stdin: Option<String>,
    /// ephemeral (default) or cached (a warm sandbox from the pool).
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Mode>,
    /// Cached mode: keep the sandbox for the next call with --reuse.
    #[arg(long)]
    reuse: bool,
    /// Run the code (-c) in this language context.
    #[arg(long)]
    context: Option<String>,
    /// Print the whole result as JSON instead of streaming the program's output.
    #[arg(long)]
    json: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true)]
    argv: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<()> {
    let req = request(args.stdin_text()?, &args)?;
    let client = Client::from_env()?;
    let body = serde_json::to_value(&req)?;
    let result = if args.json {
        let answer =
            runtime()?.block_on(client.call(Method::POST, "/api/v1/execute", Some(&body)))?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        serde_json::from_value(answer).context("unexpected result shape")?
    } else {
        let result = stream(&client, "/api/v1/execute/stream", &body)?;
        if result.stdout_truncated || result.stderr_truncated {
            eprintln!("faas: output truncated at {} bytes", result.limits.output_bytes);
        }
        match result.status {
            ExecStatus::Timeout => {
                eprintln!("faas: timed out after {} ms", result.limits.timeout_ms)
            }
            ExecStatus::Oom => {
                eprintln!("faas: out of memory (limit {} MiB)", result.limits.memory_mb)
            }
            _ => {}
        }
        result
    };
    std::process::exit(exit_code(&result))
}

/// Runs through a streaming route, printing output as it arrives.
pub(crate) fn stream(
    client: &Client,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<ExecutionResult> {
    let mut result = None;
    let mut failure = None;
    runtime()?.block_on(client.stream(path, body, |_, data| {
        match serde_json::from_str::<StreamEvent>(data) {
            Ok(StreamEvent::Stdout { data }) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(data.as_bytes()).and_then(|()| out.flush());
            }
            Ok(StreamEvent::Stderr { data }) => {
                let _ = std::io::stderr().write_all(data.as_bytes());
            }
            Ok(StreamEvent::Exit(r)) => result = Some(*r),
            Ok(StreamEvent::Error { error }) => {
                failure = Some(anyhow::anyhow!("{}: {}", error.code, error.message))
            }
            Err(e) => failure = Some(anyhow::anyhow!("unreadable event from the server: {e}")),
        }
    }))?;
    if let Some(e) = failure {
        return Err(e);
    }
    result.context("the stream ended without a result")
}

impl ExecArgs {
    fn stdin_text(&self) -> anyhow::Result<Option<String>> {
        match self.stdin.as_deref() {
            Some("-") => {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
                Ok(Some(text))
            }
            other => Ok(other.map(str::to_owned)),
        }
    }
}

fn request(stdin: Option<String>, args: &ExecArgs) -> anyhow::Result<ExecuteRequest> {
    let mut req = ExecuteRequest {
        image: args.image.clone(),
        stdin,
        workdir: args.workdir.clone(),
        timeout_ms: args.timeout_ms,
        memory_mb: args.memory_mb,
        cpu: args.cpu,
        pids: args.pids,
        mode: args.mode.unwrap_or_default(),
        reuse: args.reuse,
        context_id: args.context.clone(),
        ..ExecuteRequest::default()
    };
    req.env = pairs("--env", &args.env)?;
    match (&args.code, args.argv.is_empty(), &args.language) {
        (Some(_), false, _) => bail!("give either -c or a command after --, not both"),
        (Some(code), true, Some(lang)) => {
            req.code = Some(code.clone());
            req.language = Some(lang.clone());
        }
        (Some(code), true, None) if args.context.is_some() => req.code = Some(code.clone()),
        (Some(line), true, None) => req.command = Some(Command::Shell(line.clone())),
        (None, false, None) => req.command = Some(Command::Argv(args.argv.clone())),
        (None, false, Some(_)) => bail!("--language needs the code in -c"),
        (None, true, _) => bail!("nothing to run: give -c CODE or a command after --"),
    }
    Ok(req)
}

/// `KEY=VALUE` arguments as a map.
pub(crate) fn pairs(
    flag: &str,
    args: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    args.iter()
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("{flag} {pair}: expected KEY=VALUE"))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of ephemeral, cached, checkpointed, branched, persistent".to_owned())
}

pub(crate) fn exit_code(result: &ExecutionResult) -> i32 {
    let signal_number = |name: &str| match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGABRT" => 6,
        "SIGKILL" => 9,
        "SIGSEGV" => 11,
        "SIGPIPE" => 13,
        "SIGTERM" => 15,
        "SIGXCPU" => 24,
        "SIGXFSZ" => 25,
        _ => 0,
    };
    match (result.status, result.exit_code, &result.signal) {
        (ExecStatus::Timeout, _, _) => 124,
        (_, Some(code), _) => code,
        (_, None, Some(sig)) => 128 + signal_number(sig),
        _ => 1,
    }
}
