//! The server side of one sandbox run: cgroup, pipes, launch, stdin, capped output,
//! timeout, usage, and cleanup whatever happens. Each run is driven by its own task, so a
//! caller that goes away (a dropped HTTP request) never leaves a sandbox or cgroup behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::memfd::{MFdFlags, memfd_create};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::cgroup::{CgroupError, CgroupRoot, CgroupUsage, Limits};
use crate::launcher::{LaunchError, LauncherClient};
use crate::spec::{LAUNCH_PROTOCOL_VERSION, LaunchMessage, LaunchSpec};

/// How long a killed sandbox may take to disappear before we call it a bug.
const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("preparing the sandbox's descriptors")]
    Io(#[source] io::Error),
    #[error("sandbox setup failed at {stage}: {}", io::Error::from_raw_os_error(*errno))]
    Setup { stage: String, errno: i32 },
    #[error("the sandbox did not exit within {KILL_GRACE:?} of being killed")]
    Unkillable,
    #[error("the run's task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// One run, as the engine asks for it.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Unique name; also the cgroup's name.
    pub id: String,
    pub spec: LaunchSpec,
    /// Contents of `spec.files`.
    pub blob: Vec<u8>,
    pub limits: Limits,
    pub timeout: Duration,
    pub stdin: Vec<u8>,
    /// Bytes kept of stdout and of stderr, each. Past that the pipe is closed, so a flood
    /// ends with SIGPIPE instead of running on.
    pub output_limit: usize,
}

/// How the payload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Exited(i32),
    Signaled(i32),
    /// Killed at the deadline.
    TimedOut,
    /// The program could not be started (`stage` is `exec`, `chdir workdir`, ...).
    NotStarted {
        stage: String,
        errno: i32,
    },
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub end: RunEnd,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// From the launch request to PID 1's exit.
    pub wall: Duration,
    pub usage: CgroupUsage,
}

/// Every sandbox of this server: the launcher, the cgroup layout, and the live runs.
pub struct Sandboxes {
    launcher: LauncherClient,
    cgroups: CgroupRoot,
    live: Mutex<HashMap<String, Arc<OwnedFd>>>,
    started: AtomicU64,
}

impl Sandboxes {
    pub fn new(launcher: LauncherClient, cgroups: CgroupRoot) -> Arc<Self> {
        Arc::new(Self {
            launcher,
            cgroups,
            live: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
        })
    }

    pub fn cgroups(&self) -> &CgroupRoot {
        &self.cgroups
    }

    pub fn running(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn started_total(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn launcher_restarts(&self) -> u64 {
        self.launcher.restarts()
    }

    /// Runs one sandbox to its end on a task of its own; awaiting the result is optional.
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<RunOutcome, RunError> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_to_end(req).await })
            .await
            .map_err(RunError::Task)?
    }

    /// Kills every live sandbox (server shutdown). Their runs then end and clean up.
    pub fn kill_all(&self) {
        for pidfd in self.live.lock().unwrap_or_else(|e| e.into_inner()).values() {
            kill(pidfd.as_raw_fd());
        }
    }

    async fn run_to_end(&self, req: RunRequest) -> Result<RunOutcome, RunError> {
        let cgroup = self.cgroups.create(&req.id, &req.limits)?;
        let result = self.launch_and_wait(&cgroup, &req).await;
        if result.is_err() {
            cgroup.kill_all();
        }
        let usage = cgroup.usage();
        let removed = cgroup.remove().await;
        let mut outcome = result?;
        removed?;
        outcome.usage = usage;
        Ok(outcome)
    }

    async fn launch_and_wait(
        &self,
        cgroup: &crate::cgroup::Cgroup,
        req: &RunRequest,
    ) -> Result<RunOutcome, RunError> {
        let (stdin_r, stdin_w) = pipe_pair()?;
        let (stdout_r, stdout_w) = pipe_pair()?;
        let (stderr_r, stderr_w) = pipe_pair()?;
        let (status_r, status_w) = pipe_pair()?;
        let blob = if req.spec.files.is_empty() {
            None
        } else {
            Some(blob_fd(&req.blob)?)
        };
        let procs = cgroup.procs_files()?;

        let mut fds: Vec<RawFd> = vec![
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
            status_w.as_raw_fd(),
        ];
        fds.extend(blob.as_ref().map(|b| b.as_raw_fd()));
        fds.extend(procs.iter().map(|f| f.as_raw_fd()));
        let msg = LaunchMessage {
            version: LAUNCH_PROTOCOL_VERSION,
            spec: req.spec.clone(),
            has_blob: blob.is_some(),
            cgroup_fds: procs.len(),
        };

        let start = Instant::now();
        let launched = self.launcher.launch(&msg, &fds).await?;
        self.started.fetch_add(1, Ordering::Relaxed);
        // Our copies of the sandbox's ends must go, or we would never see EOF.
        drop((stdin_r, stdout_w, stderr_w, status_w, blob, procs));
        let pidfd = Arc::new(launched.pidfd);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), Arc::clone(&pidfd));
        let _unregister = Unregister {
            live: &self.live,
            id: &req.id,
            pidfd: &pidfd,
        };

        let stdin = write_stdin(stdin_w, &req.stdin);
        let stdout = read_capped(stdout_r, req.output_limit);
        let stderr = read_capped(stderr_r, req.output_limit);
        let status = async {
            let text = read_capped(status_r, 4096).await.map(|(bytes, _)| bytes);
            (text, start.elapsed())
        };
        let collect = async { tokio::join!(stdin, stdout, stderr, status) };
        tokio::pin!(collect);
        let mut timed_out = false;
        let (_, stdout, stderr, (status, wall)) = tokio::select! {
            all = &mut collect => all,
            _ = tokio::time::sleep(req.timeout) => {
                timed_out = true;
                kill(pidfd.as_raw_fd());
                tokio::time::timeout(KILL_GRACE, &mut collect).await.map_err(|_| RunError::Unkillable)?
            }
        };
        // Once PID 1 is fully gone, so is every process of the namespace.
        wait_exit(&pidfd).await?;

        let (stdout, stdout_truncated) = stdout.map_err(RunError::Io)?;
        let (stderr, stderr_truncated) = stderr.map_err(RunError::Io)?;
        let status = String::from_utf8_lossy(&status.map_err(RunError::Io)?).into_owned();
        let end = parse_status(&status, timed_out)?;
        Ok(RunOutcome {
            end,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            wall,
            usage: CgroupUsage::default(),
        })
    }
}

/// Removes a run from the live set however its future ends.
struct Unregister<'a> {
    live: &'a Mutex<HashMap<String, Arc<OwnedFd>>>,
    id: &'a str,
    pidfd: &'a Arc<OwnedFd>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        // A run abandoned half-way must not leave its sandbox running.
        kill(self.pidfd.as_raw_fd());
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.id);
    }
}

/// Turns PID 1's report into how the run ended.
fn parse_status(status: &str, timed_out: bool) -> Result<RunEnd, RunError> {
    let mut words = status.lines().next().unwrap_or_default().split(' ');
    let kind = words.next().unwrap_or_default();
    let next_num =
        |words: &mut std::str::Split<'_, char>| words.next().and_then(|w| w.parse::<i32>().ok());
    match kind {
        _ if timed_out => Ok(RunEnd::TimedOut),
        "exit" => Ok(RunEnd::Exited(next_num(&mut words).unwrap_or(-1))),
        "signal" => Ok(RunEnd::Signaled(
            next_num(&mut words).unwrap_or(libc::SIGKILL),
        )),
        "payload" | "setup" => {
            let stage = words.next().unwrap_or_default().to_owned();
            let errno = next_num(&mut words).unwrap_or(libc::EIO);
            if kind == "payload" {
                Ok(RunEnd::NotStarted { stage, errno })
            } else {
                Err(RunError::Setup { stage, errno })
            }
        }
        // PID 1 died without a word: something killed the whole sandbox (the OOM killer
        // picking PID 1, or an operator). The cgroup's counters tell the engine which.
        _ => Ok(RunEnd::Signaled(libc::SIGKILL)),
    }
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| RunError::Io(e.into()))
}

fn blob_fd(content: &[u8]) -> Result<OwnedFd, RunError> {
    let fd =
        memfd_create(c"faas-files", MFdFlags::MFD_CLOEXEC).map_err(|e| RunError::Io(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(content).map_err(RunError::Io)?;
    Ok(OwnedFd::from(file))
}

fn kill(pidfd: RawFd) {
    // SAFETY: pidfd_send_signal on a pidfd we hold; ESRCH after exit is fine.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}

async fn wait_exit(pidfd: &Arc<OwnedFd>) -> Result<(), RunError> {
    // SAFETY: the Arc keeps the pidfd open, and the same descriptor, while the AsyncFd lives.
    let fd = unsafe {
        AsyncFd::register_with_interest(Arc::clone(pidfd), tokio::io::Interest::READABLE)
    }
    .map_err(|e| RunError::Io(e.into()))?;
    match tokio::time::timeout(KILL_GRACE, fd.readable()).await {
        Ok(Ok(_guard)) => Ok(()),
        Ok(Err(e)) => Err(RunError::Io(e)),
        Err(_) => Err(RunError::Unkillable),
    }
}

async fn write_stdin(fd: OwnedFd, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if let Ok(mut tx) = pipe::Sender::from_owned_fd(fd) {
        // EPIPE when the program does not read it all: not an error of the run.
        let _ = tx.write_all(data).await;
    }
}

async fn read_capped(fd: OwnedFd, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut rx = pipe::Receiver::from_owned_fd(fd)?;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = rx.read(&mut chunk).await?;
        if n == 0 {
            return Ok((out, false));
        }
        let room = limit - out.len();
        if n > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        assert_eq!(
            parse_status("exit 3\n", false).ok(),
            Some(RunEnd::Exited(3))
        );
        assert_eq!(
            parse_status("signal 9\n", false).ok(),
            Some(RunEnd::Signaled(9))
        );
        assert_eq!(parse_status("exit 0\n", true).ok(), Some(RunEnd::TimedOut));
        assert_eq!(
            parse_status("payload exec 2\n", false).ok(),
            Some(RunEnd::NotStarted {
                stage: "exec".into(),
                errno: 2
            })
        );
        assert!(matches!(
            parse_status("setup overlay 22\n", false),
            Err(RunError::Setup { .. })
        ));
        assert_eq!(
            parse_status("", false).ok(),
            Some(RunEnd::Signaled(libc::SIGKILL))
        );
    }
}
