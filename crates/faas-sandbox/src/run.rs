//! The server side of a sandbox: cgroup, descriptors, launch, and cleanup whatever happens.
//! One-shot runs (`Sandboxes::run`) read the payload's pipes directly; long-lived sandboxes
//! (`Sandboxes::start_agent`, see [`crate::agent_sandbox`]) talk to their agent. Each
//! one-shot run is driven by its own task, so a caller that goes away (a dropped HTTP
//! request) never leaves a sandbox or cgroup behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_agent::protocol::Stream;
use nix::fcntl::OFlag;
use nix::sys::memfd::{MFdFlags, memfd_create};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::agent::AgentError;
use crate::cgroup::{Cgroup, CgroupError, CgroupRoot, CgroupUsage, Limits};
use crate::launcher::{LaunchError, LauncherClient};
use crate::spec::{LAUNCH_PROTOCOL_VERSION, LaunchMessage, LaunchSpec, RestoreSpec};

/// How long a killed sandbox may take to disappear before we call it a bug.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("preparing the sandbox's descriptors")]
    Io(#[source] io::Error),
    #[error("sandbox setup failed at {stage}: {}", io::Error::from_raw_os_error(*errno))]
    Setup { stage: String, errno: i32 },
    #[error("the sandbox did not exit within {KILL_GRACE:?} of being killed")]
    Unkillable,
    #[error("the run's task failed")]
    Task(#[source] tokio::task::JoinError),
    /// CRIU could not checkpoint or restore the sandbox; the message says why.
    #[error("{0}")]
    Checkpoint(String),
}

/// A piece of output as it arrives, for callers that stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// Where a run's input comes from and where its output goes, besides the result.
#[derive(Debug, Default)]
pub struct RunIo {
    /// Written to stdin first.
    pub stdin: Vec<u8>,
    /// More stdin as it comes; stdin closes when this closes. `None`: close after `stdin`.
    pub stdin_stream: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    /// Receives output as it arrives (up to the limit), besides the result.
    pub sink: Option<mpsc::UnboundedSender<OutputChunk>>,
    /// Bytes kept of stdout and of stderr, each. Past that the stream is closed, so a flood
    /// ends with SIGPIPE instead of running on.
    pub output_limit: usize,
    /// Kills the run when its sender is dropped (a streaming client went away).
    pub cancel: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Signals for the run's process group as they are sent (agent sandboxes only).
    pub signals: Option<mpsc::UnboundedReceiver<i32>>,
}

/// Resolves when `cancel` fires; never when there is none.
pub(crate) async fn cancelled(cancel: &mut Option<tokio::sync::oneshot::Receiver<()>>) {
    match cancel {
        Some(rx) => {
            let _ = rx.await;
        }
        None => std::future::pending().await,
    }
}

/// One run, as the engine asks for it.
#[derive(Debug)]
pub struct RunRequest {
    /// Unique name; also the cgroup's name.
    pub id: String,
    pub spec: LaunchSpec,
    /// Contents of `spec.files`.
    pub blob: Vec<u8>,
    pub limits: Limits,
    pub timeout: Duration,
    pub io: RunIo,
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
    /// From the start request to the end of the program.
    pub wall: Duration,
    pub usage: CgroupUsage,
}

/// Collects one stream's output up to the limit, forwarding it to the sink as it comes.
pub(crate) struct Capture {
    stream: Stream,
    limit: usize,
    pub data: Vec<u8>,
    pub truncated: bool,
}

impl Capture {
    pub fn new(stream: Stream, limit: usize) -> Self {
        Self { stream, limit, data: Vec::new(), truncated: false }
    }

    /// Takes a chunk; returns false once the limit is passed (the stream should close).
    pub fn push(
        &mut self,
        chunk: &[u8],
        sink: Option<&mpsc::UnboundedSender<OutputChunk>>,
    ) -> bool {
        if self.truncated {
            return false;
        }
        let room = self.limit - self.data.len();
        let kept = &chunk[..chunk.len().min(room)];
        self.data.extend_from_slice(kept);
        if let Some(sink) = sink
            && !kept.is_empty()
        {
            let _ = sink.send(OutputChunk { stream: self.stream, data: kept.to_vec() });
        }
        if chunk.len() > room {
            self.truncated = true;
            return false;
        }
        true
    }
}

/// Every sandbox of this server: the launcher, the cgroup layout, and the live ones.
pub struct Sandboxes {
    launcher: LauncherClient,
    cgroups: CgroupRoot,
    pub(crate) live: Mutex<HashMap<String, Arc<OwnedFd>>>,
    started: AtomicU64,
}

/// A sandbox just launched: its cgroup and its PID 1's pidfd.
pub(crate) struct Launched {
    pub pid: i32,
    pub pidfd: Arc<OwnedFd>,
    pub started_at: Instant,
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

    /// Kills every live sandbox (server shutdown). Their owners then clean up.
    pub fn kill_all(&self) {
        for pidfd in self.live.lock().unwrap_or_else(|e| e.into_inner()).values() {
            kill(pidfd.as_raw_fd());
        }
    }

    /// Runs one sandbox to its end on a task of its own; awaiting the result is optional.
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<RunOutcome, RunError> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_to_end(req).await }).await.map_err(RunError::Task)?
    }

    /// Launches a sandbox whose descriptors are `fds` (stdin, stdout, stderr, status and any
    /// extras, in the order of [`LaunchMessage`]) plus the cgroup's, and registers it.
    pub(crate) async fn launch(
        &self,
        id: &str,
        spec: &LaunchSpec,
        cgroup: &Cgroup,
        mut fds: Vec<RawFd>,
        has_blob: bool,
        restore: Option<RestoreSpec>,
    ) -> Result<Launched, RunError> {
        let procs = cgroup.procs_files()?;
        fds.extend(procs.iter().map(|f| f.as_raw_fd()));
        let msg = LaunchMessage {
            version: LAUNCH_PROTOCOL_VERSION,
            spec: spec.clone(),
            has_blob,
            cgroup_fds: procs.len(),
            restore,
        };
        let started_at = Instant::now();
        let launched = self.launcher.launch(&msg, &fds).await?;
        self.started.fetch_add(1, Ordering::Relaxed);
        let pidfd = Arc::new(launched.pidfd);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), Arc::clone(&pidfd));
        Ok(Launched { pid: launched.pid, pidfd, started_at })
    }

    pub(crate) fn unregister(&self, id: &str) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    async fn run_to_end(&self, req: RunRequest) -> Result<RunOutcome, RunError> {
        let cgroup = self.cgroups.create(&req.id, &req.limits)?;
        let result = self.launch_and_wait(&cgroup, req).await;
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
        cgroup: &Cgroup,
        req: RunRequest,
    ) -> Result<RunOutcome, RunError> {
        let (stdin_r, stdin_w) = pipe_pair()?;
        let (stdout_r, stdout_w) = pipe_pair()?;
        let (stderr_r, stderr_w) = pipe_pair()?;
        let (status_r, status_w) = pipe_pair()?;
        let blob = if req.spec.files.is_empty() { None } else { Some(blob_fd(&req.blob)?) };
        let mut fds = vec![
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
            status_w.as_raw_fd(),
        ];
        fds.extend(blob.as_ref().map(|b| b.as_raw_fd()));
        let launched = self.launch(&req.id, &req.spec, cgroup, fds, blob.is_some(), None).await?;
        // Our copies of the sandbox's ends must go, or we would never see EOF.
        drop((stdin_r, stdout_w, stderr_w, status_w, blob));
        let pidfd = launched.pidfd;
        let _unregister = Unregister { sandboxes: self, id: &req.id, pidfd: &pidfd };

        let RunIo { stdin, stdin_stream, sink, output_limit, mut cancel, .. } = req.io;
        let stdin = write_stdin(stdin_w, stdin, stdin_stream);
        let stdout =
            read_capped(stdout_r, Capture::new(Stream::Stdout, output_limit), sink.clone());
        let stderr = read_capped(stderr_r, Capture::new(Stream::Stderr, output_limit), sink);
        let started_at = launched.started_at;
        let status = async {
            let text = read_capped(status_r, Capture::new(Stream::Stdout, 4096), None)
                .await
                .map(|c| c.data);
            (text, started_at.elapsed())
        };
        let collect = async { tokio::join!(stdout, stderr, status) };
        tokio::pin!(collect);
        tokio::pin!(stdin);
        let mut timed_out = false;
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut stdin_done = false;
        let mut killed = false;
        let (stdout, stderr, (status, wall)) = loop {
            tokio::select! {
                all = &mut collect => break all,
                _ = &mut stdin, if !stdin_done => stdin_done = true,
                _ = cancelled(&mut cancel), if !killed => {
                    killed = true;
                    kill(pidfd.as_raw_fd());
                }
                _ = &mut deadline, if !timed_out && !killed => {
                    timed_out = true;
                    kill(pidfd.as_raw_fd());
                    let all = tokio::time::timeout(KILL_GRACE, &mut collect).await.map_err(|_| RunError::Unkillable)?;
                    break all;
                }
            }
        };
        // Once PID 1 is fully gone, so is every process of the namespace.
        wait_exit(&pidfd).await?;

        let stdout = stdout.map_err(RunError::Io)?;
        let stderr = stderr.map_err(RunError::Io)?;
        let status = String::from_utf8_lossy(&status.map_err(RunError::Io)?).into_owned();
        let end = parse_status(&status, timed_out)?;
        Ok(RunOutcome {
            end,
            stdout: stdout.data,
            stderr: stderr.data,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            wall,
            usage: CgroupUsage::default(),
        })
    }
}

/// Unregisters a sandbox however its owner's future ends, killing it first.
pub(crate) struct Unregister<'a> {
    pub sandboxes: &'a Sandboxes,
    pub id: &'a str,
    pub pidfd: &'a Arc<OwnedFd>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        // A run abandoned half-way must not leave its sandbox running.
        kill(self.pidfd.as_raw_fd());
        self.sandboxes.unregister(self.id);
    }
}

/// Turns PID 1's report into how the run ended.
fn parse_status(status: &str, timed_out: bool) -> Result<RunEnd, RunError> {
    let line = status.lines().next().unwrap_or_default();
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    // Stages may contain spaces ("chdir workdir"): the number is the last word.
    let (stage, number) = rest.rsplit_once(' ').unwrap_or(("", rest));
    let number = number.trim().parse::<i32>().ok();
    match kind {
        _ if timed_out => Ok(RunEnd::TimedOut),
        "exit" => Ok(RunEnd::Exited(number.unwrap_or(-1))),
        "signal" => Ok(RunEnd::Signaled(number.unwrap_or(libc::SIGKILL))),
        "payload" => {
            Ok(RunEnd::NotStarted { stage: stage.to_owned(), errno: number.unwrap_or(libc::EIO) })
        }
        "setup" => {
            Err(RunError::Setup { stage: stage.to_owned(), errno: number.unwrap_or(libc::EIO) })
        }
        // PID 1 died without a word: something killed the whole sandbox (the OOM killer
        // picking PID 1, or an operator). The cgroup's counters tell the engine which.
        _ => Ok(RunEnd::Signaled(libc::SIGKILL)),
    }
}

/// A setup failure reported on the status pipe, if any (agent mode: EOF means exec'd).
pub(crate) fn setup_failure(status: &str) -> Option<RunError> {
    match parse_status(status, false) {
        Err(e) => Some(e),
        Ok(_) if status.is_empty() => None,
        Ok(_) => Some(RunError::Setup { stage: status.trim().to_owned(), errno: libc::EIO }),
    }
}

pub(crate) fn pipe_pair() -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| RunError::Io(e.into()))
}

fn blob_fd(content: &[u8]) -> Result<OwnedFd, RunError> {
    let fd =
        memfd_create(c"faas-files", MFdFlags::MFD_CLOEXEC).map_err(|e| RunError::Io(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(content).map_err(RunError::Io)?;
    Ok(OwnedFd::from(file))
}

pub(crate) fn kill(pidfd: RawFd) {
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

pub(crate) async fn wait_exit(pidfd: &Arc<OwnedFd>) -> Result<(), RunError> {
    match exited_within(pidfd, KILL_GRACE).await? {
        true => Ok(()),
        false => Err(RunError::Unkillable),
    }
}

/// Waits up to `timeout` for the process behind `pidfd` to end: whether it did.
pub(crate) async fn exited_within(
    pidfd: &Arc<OwnedFd>,
    timeout: Duration,
) -> Result<bool, RunError> {
    // SAFETY: the Arc keeps the pidfd open, and the same descriptor, while the AsyncFd lives.
    let fd = unsafe {
        AsyncFd::register_with_interest(Arc::clone(pidfd), tokio::io::Interest::READABLE)
    }
    .map_err(|e| RunError::Io(e.into()))?;
    match tokio::time::timeout(timeout, fd.readable()).await {
        Ok(Ok(_guard)) => Ok(true),
        Ok(Err(e)) => Err(RunError::Io(e)),
        Err(_) => Ok(false),
    }
}

async fn write_stdin(fd: OwnedFd, data: Vec<u8>, stream: Option<mpsc::UnboundedReceiver<Vec<u8>>>) {
    if data.is_empty() && stream.is_none() {
        return;
    }
    let Ok(mut tx) = pipe::Sender::from_owned_fd(fd) else {
        return;
    };
    // EPIPE when the program does not read it all: not an error of the run.
    if tx.write_all(&data).await.is_err() {
        return;
    }
    if let Some(mut stream) = stream {
        while let Some(chunk) = stream.recv().await {
            if tx.write_all(&chunk).await.is_err() {
                return;
            }
        }
    }
}

async fn read_capped(
    fd: OwnedFd,
    mut capture: Capture,
    sink: Option<mpsc::UnboundedSender<OutputChunk>>,
) -> io::Result<Capture> {
    let mut rx = pipe::Receiver::from_owned_fd(fd)?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = rx.read(&mut chunk).await?;
        // Dropping the pipe past the limit is what stops a flood.
        if n == 0 || !capture.push(&chunk[..n], sink.as_ref()) {
            return Ok(capture);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        assert_eq!(parse_status("exit 3\n", false).ok(), Some(RunEnd::Exited(3)));
        assert_eq!(parse_status("signal 9\n", false).ok(), Some(RunEnd::Signaled(9)));
        assert_eq!(parse_status("exit 0\n", true).ok(), Some(RunEnd::TimedOut));
        assert_eq!(
            parse_status("payload exec 2\n", false).ok(),
            Some(RunEnd::NotStarted { stage: "exec".into(), errno: 2 })
        );
        assert!(matches!(parse_status("setup overlay 22\n", false), Err(RunError::Setup { .. })));
        assert_eq!(parse_status("", false).ok(), Some(RunEnd::Signaled(libc::SIGKILL)));
        assert_eq!(
            parse_status("payload chdir workdir 13\n", false).ok(),
            Some(RunEnd::NotStarted { stage: "chdir workdir".into(), errno: 13 })
        );
        assert!(setup_failure("").is_none());
        assert!(setup_failure("setup exec agent 2\n").is_some());
    }

    #[test]
    fn capture_keeps_the_limit_and_reports_truncation() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut c = Capture::new(Stream::Stdout, 5);
        assert!(c.push(b"abc", Some(&tx)));
        assert!(!c.push(b"defg", Some(&tx)));
        assert_eq!(c.data, b"abcde");
        assert!(c.truncated);
        assert_eq!(rx.try_recv().map(|c| c.data).ok(), Some(b"abc".to_vec()));
        assert_eq!(rx.try_recv().map(|c| c.data).ok(), Some(b"de".to_vec()));
        let mut exact = Capture::new(Stream::Stderr, 3);
        assert!(exact.push(b"xyz", None));
        assert!(!exact.truncated);
    }
}
