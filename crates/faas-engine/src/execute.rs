//! `execute`: one program in a fresh sandbox, with limits, recorded per tenant.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faas_api::{AppliedLimits, Command, ExecStatus, ExecuteRequest, ExecutionResult, Mode, Usage};
use faas_sandbox::{FileSpec, LaunchSpec, Limits, RunEnd, RunOutcome, RunRequest, signal_name};

use crate::images::{DEFAULT_IMAGE, Image};
use crate::{Engine, EngineError, Tenant, languages};

const MAX_ENV_VARS: usize = 1024;
const MAX_PATH_LEN: usize = 4096;
const MIN_MEMORY_MB: u64 = 8;
const MIN_CPU: f64 = 0.01;

/// A request checked and resolved: everything needed to run it.
struct Plan {
    image: Image,
    argv: Vec<String>,
    env: Vec<String>,
    workdir: String,
    files: Vec<FileSpec>,
    blob: Vec<u8>,
    stdin: Vec<u8>,
    limits: AppliedLimits,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn no_nul(field: &'static str, s: &str) -> Result<(), EngineError> {
    if s.contains('\0') {
        Err(invalid(field, "must not contain NUL bytes"))
    } else {
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    pub async fn execute(
        &self,
        tenant: &Tenant,
        req: ExecuteRequest,
    ) -> Result<ExecutionResult, EngineError> {
        let plan = self.plan(req)?;
        let _permit =
            self.admission
                .clone()
                .try_acquire_owned()
                .map_err(|_| EngineError::Overloaded {
                    limit: self.config.max_concurrent_sandboxes,
                })?;

        let id = format!("ex_{}", uuid::Uuid::now_v7().simple());
        let mut record = ExecutionResult {
            id: id.clone(),
            status: ExecStatus::Running,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 0.0,
            usage: Usage::default(),
            limits: plan.limits,
            mode: Mode::Ephemeral,
            image: plan.image.name.clone(),
            created_at_ms: now_ms(),
        };
        let run = RunRequest {
            id,
            spec: LaunchSpec {
                argv: plan.argv,
                env: plan.env,
                workdir: plan.workdir,
                hostname: "sandbox".into(),
                rootfs: plan.image.rootfs,
                binds: plan.image.binds,
                scratch_bytes: self.config.limits.scratch_mb << 20,
                files: plan.files,
                uid: self.config.sandbox_uid,
                gid: self.config.sandbox_gid,
                max_file_bytes: self.config.limits.max_file_mb << 20,
                max_open_files: self.config.limits.max_open_files,
            },
            blob: plan.blob,
            limits: Limits {
                memory_bytes: plan.limits.memory_mb << 20,
                cpus: plan.limits.cpu,
                // One more than asked for: the sandbox's PID 1 counts too.
                pids: plan.limits.pids + 1,
            },
            timeout: Duration::from_millis(plan.limits.timeout_ms),
            stdin: plan.stdin,
            output_limit: plan.limits.output_bytes as usize,
        };
        // The "running" record is written while the sandbox starts, off the critical path.
        let (inserted, outcome) = tokio::join!(
            self.store.insert_execution(&tenant.0, &record),
            self.sandboxes.run(run)
        );
        inserted?;
        fill_result(&mut record, outcome?);
        self.store.finish_execution(&record).await?;
        Ok(record)
    }

    pub async fn execution(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<ExecutionResult, EngineError> {
        self.store
            .execution(&tenant.0, id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                kind: "execution",
                id: id.to_owned(),
            })
    }

    fn plan(&self, req: ExecuteRequest) -> Result<Plan, EngineError> {
        if req.mode != Mode::Ephemeral {
            return Err(EngineError::Unsupported {
                what: format!("mode '{}'", req.mode.as_str()),
                why: "this server implements only the 'ephemeral' mode so far".into(),
            });
        }
        if req.network {
            return Err(EngineError::Unsupported {
                what: "network access".into(),
                why: "sandboxes have no network egress on this server yet (each runs in an empty network namespace); use network: false".into(),
            });
        }
        let image_name = req.image.as_deref().unwrap_or(DEFAULT_IMAGE);
        let image = self
            .images
            .resolve(image_name)
            .ok_or_else(|| EngineError::NotFound {
                kind: "image",
                id: image_name.to_owned(),
            })?;
        let limits = self.limits(&req)?;

        let (argv, files, blob) = match (req.command, req.code) {
            (Some(_), Some(_)) => {
                return Err(invalid("command", "give either command or code, not both"));
            }
            (None, None) => return Err(invalid("command", "one of command or code is required")),
            (Some(command), None) => {
                if req.language.is_some() {
                    return Err(invalid("language", "language goes with code, not command"));
                }
                (command_argv(command)?, Vec::new(), Vec::new())
            }
            (None, Some(code)) => {
                let name = req
                    .language
                    .as_deref()
                    .ok_or_else(|| invalid("language", "code needs a language"))?;
                let language = languages::find(name).ok_or_else(|| {
                    invalid(
                        "language",
                        format!("unknown language '{name}'; known: {}", languages::names()),
                    )
                })?;
                let file = FileSpec {
                    path: language.file.into(),
                    mode: 0o644,
                    offset: 0,
                    len: code.len() as u64,
                };
                (
                    language.argv.iter().map(|s| s.to_string()).collect(),
                    vec![file],
                    code.into_bytes(),
                )
            }
        };

        let mut env: BTreeMap<String, String> = image.env.iter().cloned().collect();
        if req.env.len() > MAX_ENV_VARS {
            return Err(invalid("env", format!("at most {MAX_ENV_VARS} variables")));
        }
        for (key, value) in req.env {
            if key.is_empty() || key.contains('=') {
                return Err(invalid("env", format!("bad variable name '{key}'")));
            }
            no_nul("env", &key)?;
            no_nul("env", &value)?;
            env.insert(key, value);
        }
        let workdir = req.workdir.unwrap_or_else(|| "/home/user".into());
        no_nul("workdir", &workdir)?;
        if !workdir.starts_with('/') || workdir.len() > MAX_PATH_LEN {
            return Err(invalid("workdir", "must be an absolute path"));
        }
        Ok(Plan {
            image,
            argv,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir,
            files,
            blob,
            stdin: req.stdin.unwrap_or_default().into_bytes(),
            limits,
        })
    }

    fn limits(&self, req: &ExecuteRequest) -> Result<AppliedLimits, EngineError> {
        let c = &self.config.limits;
        let timeout_ms = req.timeout_ms.unwrap_or(c.default_timeout_ms);
        if timeout_ms == 0 || timeout_ms > c.max_timeout_ms {
            return Err(invalid(
                "timeout_ms",
                format!("must be between 1 and {}", c.max_timeout_ms),
            ));
        }
        let memory_mb = req.memory_mb.unwrap_or(c.default_memory_mb);
        if !(MIN_MEMORY_MB..=c.max_memory_mb).contains(&memory_mb) {
            return Err(invalid(
                "memory_mb",
                format!("must be between {MIN_MEMORY_MB} and {}", c.max_memory_mb),
            ));
        }
        let cpu = req.cpu.unwrap_or(c.default_cpu);
        if !cpu.is_finite() || cpu < MIN_CPU || cpu > c.max_cpu {
            return Err(invalid(
                "cpu",
                format!("must be between {MIN_CPU} and {} cores", c.max_cpu),
            ));
        }
        let pids = req.pids.unwrap_or(c.default_pids);
        if pids == 0 || pids > c.max_pids {
            return Err(invalid(
                "pids",
                format!("must be between 1 and {}", c.max_pids),
            ));
        }
        Ok(AppliedLimits {
            timeout_ms,
            memory_mb,
            cpu,
            pids,
            output_bytes: c.output_bytes,
        })
    }
}

fn command_argv(command: Command) -> Result<Vec<String>, EngineError> {
    let argv = match command {
        Command::Shell(line) => {
            if line.trim().is_empty() {
                return Err(invalid("command", "must not be empty"));
            }
            vec!["/bin/sh".into(), "-c".into(), line]
        }
        Command::Argv(argv) => {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err(invalid("command", "the argv array needs a program"));
            }
            argv
        }
    };
    for arg in &argv {
        no_nul("command", arg)?;
    }
    Ok(argv)
}

fn fill_result(record: &mut ExecutionResult, outcome: RunOutcome) {
    let oom = outcome.usage.oom_kills > 0;
    let mut stderr = outcome.stderr;
    let (status, exit_code, signal) = match outcome.end {
        RunEnd::TimedOut => (ExecStatus::Timeout, None, Some(signal_name(libc::SIGKILL))),
        RunEnd::Exited(code) if oom => (ExecStatus::Oom, Some(code), None),
        RunEnd::Signaled(sig) if oom => (ExecStatus::Oom, None, Some(signal_name(sig))),
        RunEnd::Exited(code) => (ExecStatus::Exited, Some(code), None),
        RunEnd::Signaled(sig) => (ExecStatus::Signaled, None, Some(signal_name(sig))),
        RunEnd::NotStarted { stage, errno } => {
            // What a shell would say and return: 127 not found, 126 found but not runnable.
            let reason = std::io::Error::from_raw_os_error(errno);
            let program = record_program(&stage);
            stderr.extend_from_slice(format!("faas: {program}: {reason}\n").as_bytes());
            (
                ExecStatus::Exited,
                Some(if errno == libc::ENOENT { 127 } else { 126 }),
                None,
            )
        }
    };
    record.status = status;
    record.exit_code = exit_code;
    record.signal = signal;
    record.stdout = String::from_utf8_lossy(&outcome.stdout).into_owned();
    record.stderr = String::from_utf8_lossy(&stderr).into_owned();
    record.stdout_truncated = outcome.stdout_truncated;
    record.stderr_truncated = outcome.stderr_truncated;
    record.duration_ms = (outcome.wall.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    record.usage = Usage {
        cpu_ms: (outcome.usage.cpu_ns as f64 / 1000.0).round() / 1000.0,
        peak_memory_bytes: outcome.usage.peak_memory_bytes,
    };
}

fn record_program(stage: &str) -> String {
    match stage {
        "exec" => "cannot run the program".into(),
        "chdir workdir" => "cannot enter the working directory".into(),
        other => format!("cannot start the program ({other})"),
    }
}
