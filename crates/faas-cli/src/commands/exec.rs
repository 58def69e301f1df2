//! `faas exec`: `faas exec -- ls -la /`, `faas exec -c 'echo hi'` (shell),
//! `faas exec --language python -c 'print(1)'`. Prints the program's stdout and stderr and
//! exits with its exit code (128+signal when killed, 124 on timeout, like `timeout(1)`).

use std::io::{Read, Write};

use anyhow::{Context, bail};
use faas_api::{Command, ExecStatus, ExecuteRequest, ExecutionResult};
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
    /// Print the whole result as JSON instead of the program's output.
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
    let answer = runtime()?.block_on(client.call(Method::POST, "/api/v1/execute", Some(&body)))?;
    let result: ExecutionResult =
        serde_json::from_value(answer.clone()).context("unexpected result shape")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        std::io::stdout().write_all(result.stdout.as_bytes())?;
        std::io::stderr().write_all(result.stderr.as_bytes())?;
        if result.stdout_truncated || result.stderr_truncated {
            eprintln!(
                "faas: output truncated at {} bytes",
                result.limits.output_bytes
            );
        }
        match result.status {
            ExecStatus::Timeout => {
                eprintln!("faas: timed out after {} ms", result.limits.timeout_ms)
            }
            ExecStatus::Oom => eprintln!(
                "faas: out of memory (limit {} MiB)",
                result.limits.memory_mb
            ),
            _ => {}
        }
    }
    std::process::exit(exit_code(&result))
}

impl ExecArgs {
    fn stdin_text(&self) -> anyhow::Result<Option<String>> {
        match self.stdin.as_deref() {
            Some("-") => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading stdin")?;
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
        ..ExecuteRequest::default()
    };
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair}: expected KEY=VALUE"))?;
        req.env.insert(k.to_owned(), v.to_owned());
    }
    match (&args.code, args.argv.is_empty(), &args.language) {
        (Some(_), false, _) => bail!("give either -c or a command after --, not both"),
        (Some(code), true, Some(lang)) => {
            req.code = Some(code.clone());
            req.language = Some(lang.clone());
        }
        (Some(line), true, None) => req.command = Some(Command::Shell(line.clone())),
        (None, false, None) => req.command = Some(Command::Argv(args.argv.clone())),
        (None, false, Some(_)) => bail!("--language needs the code in -c"),
        (None, true, _) => bail!("nothing to run: give -c CODE or a command after --"),
    }
    Ok(req)
}

fn exit_code(result: &ExecutionResult) -> i32 {
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
