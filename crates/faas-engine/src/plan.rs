//! A request checked and resolved into what a run needs, whatever the mode serves it.

use std::collections::BTreeMap;

use faas_api::{AppliedLimits, Command, ExecuteRequest, Mode};
use faas_sandbox::Confine;

use crate::images::{DEFAULT_IMAGE, Image};
use crate::{Engine, EngineError, languages};

const MAX_ENV_VARS: usize = 1024;
const MAX_PATH_LEN: usize = 4096;
const MIN_MEMORY_MB: u64 = 8;
const MIN_CPU: f64 = 0.01;
const DEFAULT_WORKDIR: &str = "/home/user";

pub(crate) struct Plan {
    pub image: Image,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// Files written into the sandbox before the run (the code of a `code` request).
    pub files: Vec<(String, Vec<u8>)>,
    pub stdin: Vec<u8>,
    pub limits: AppliedLimits,
    pub mode: Mode,
    /// `Some` with `reuse: true` (the key names the kept sandbox).
    pub reuse: Option<String>,
    pub context_id: Option<String>,
    /// For context runs: the code itself.
    pub code: Option<String>,
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::Invalid { field, reason: reason.into() }
}

fn no_nul(field: &'static str, s: &str) -> Result<(), EngineError> {
    if s.contains('\0') { Err(invalid(field, "must not contain NUL bytes")) } else { Ok(()) }
}

/// Limits the caller may leave out: the server's defaults fill in.
pub(crate) struct LimitRequest {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub cpu: Option<f64>,
    pub pids: Option<u32>,
}

impl Engine {
    pub(crate) fn plan(&self, req: ExecuteRequest) -> Result<Plan, EngineError> {
        match req.mode {
            Mode::Ephemeral | Mode::Cached => {}
            Mode::Persistent => {
                return Err(invalid(
                    "mode",
                    "persistent sandboxes are instances: POST /api/v1/instances, then their exec",
                ));
            }
            // Served by the stateful runs, which plan a copy in mode ephemeral.
            Mode::Checkpointed | Mode::Branched => {
                return Err(invalid("mode", "checkpointed and branched runs are planned apart"));
            }
        }
        if req.checkpoint_after || req.snapshot_id.is_some() {
            return Err(invalid(
                "snapshot_id",
                "checkpoint_after and snapshot_id go with mode 'checkpointed'",
            ));
        }
        if req.parent_snapshot.is_some() || req.count.is_some() {
            return Err(invalid(
                "parent_snapshot",
                "parent_snapshot and count go with mode 'branched'",
            ));
        }
        if req.network {
            return Err(EngineError::Unsupported {
                what: "network access".into(),
                why: "sandboxes have no network egress on this server yet (each runs in an empty network namespace); use network: false".into(),
            });
        }
        if req.reuse && req.mode != Mode::Cached {
            return Err(invalid("reuse", "reuse applies to mode 'cached'"));
        }
        if req.reuse_key.is_some() && !req.reuse {
            return Err(invalid("reuse_key", "reuse_key goes with reuse: true"));
        }
        let image = self.image(req.image.as_deref())?;
        let limits = self.limits(&LimitRequest {
            timeout_ms: req.timeout_ms,
            memory_mb: req.memory_mb,
            cpu: req.cpu,
            pids: req.pids,
        })?;

        let (argv, files, code) = match (req.command, req.code) {
            (Some(_), Some(_)) => {
                return Err(invalid("command", "give either command or code, not both"));
            }
            (None, None) => return Err(invalid("command", "one of command or code is required")),
            (Some(_), None) if req.context_id.is_some() => {
                return Err(invalid("context_id", "a context runs code, not commands"));
            }
            (Some(command), None) => {
                if req.language.is_some() {
                    return Err(invalid("language", "language goes with code, not command"));
                }
                (command_argv(command)?, Vec::new(), None)
            }
            (None, Some(code)) if req.context_id.is_some() => (Vec::new(), Vec::new(), Some(code)),
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
                let argv = language.argv.iter().map(|s| s.to_string()).collect();
                (argv, vec![(language.file.to_owned(), code.into_bytes())], None)
            }
        };
        let env = self.env(&image, req.env)?;
        let workdir = req.workdir.unwrap_or_else(|| DEFAULT_WORKDIR.into());
        no_nul("workdir", &workdir)?;
        if !workdir.starts_with('/') || workdir.len() > MAX_PATH_LEN {
            return Err(invalid("workdir", "must be an absolute path"));
        }
        let reuse = req.reuse.then(|| req.reuse_key.unwrap_or_default());
        if let Some(key) = &reuse
            && key.len() > 200
        {
            return Err(invalid("reuse_key", "at most 200 bytes"));
        }
        Ok(Plan {
            image,
            argv,
            env,
            workdir,
            files,
            stdin: req.stdin.unwrap_or_default().into_bytes(),
            limits,
            mode: req.mode,
            reuse,
            context_id: req.context_id,
            code,
        })
    }

    pub(crate) fn image(&self, name: Option<&str>) -> Result<Image, EngineError> {
        let name = name.unwrap_or(DEFAULT_IMAGE);
        self.images
            .resolve(name)
            .ok_or_else(|| EngineError::NotFound { kind: "image", id: name.to_owned() })
    }

    /// The image's environment with the request's on top, as `KEY=VALUE`.
    pub(crate) fn env(
        &self,
        image: &Image,
        extra: BTreeMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        let mut env: BTreeMap<String, String> = image.env.iter().cloned().collect();
        if extra.len() > MAX_ENV_VARS {
            return Err(invalid("env", format!("at most {MAX_ENV_VARS} variables")));
        }
        for (key, value) in extra {
            if key.is_empty() || key.contains('=') {
                return Err(invalid("env", format!("bad variable name '{key}'")));
            }
            no_nul("env", &key)?;
            no_nul("env", &value)?;
            env.insert(key, value);
        }
        Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
    }

    pub(crate) fn limits(&self, req: &LimitRequest) -> Result<AppliedLimits, EngineError> {
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
            return Err(invalid("pids", format!("must be between 1 and {}", c.max_pids)));
        }
        Ok(AppliedLimits { timeout_ms, memory_mb, cpu, pids, output_bytes: c.output_bytes })
    }

    /// A long-lived sandbox's limits: the request's, or the defaults (no timeout applies).
    pub(crate) fn sandbox_limits(
        &self,
        memory_mb: Option<u64>,
        cpu: Option<f64>,
        pids: Option<u32>,
    ) -> Result<AppliedLimits, EngineError> {
        self.limits(&LimitRequest { timeout_ms: None, memory_mb, cpu, pids })
    }

    /// Who a process in a sandbox runs as, and its per-process limits.
    pub(crate) fn confine(&self, workdir: &str) -> Confine {
        Confine {
            uid: self.config.sandbox_uid,
            gid: self.config.sandbox_gid,
            workdir: workdir.to_owned(),
            max_file_bytes: self.config.limits.max_file_mb << 20,
            max_open_files: self.config.limits.max_open_files,
        }
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
