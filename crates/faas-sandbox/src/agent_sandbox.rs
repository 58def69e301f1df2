//! Long-lived sandboxes: PID 1 is the agent, and work happens through it. Warm pools,
//! language contexts and (later) persistent instances are built on these.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_agent::protocol::{Confine, Event, Request, Stream};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::agent::{AgentClient, AgentError, ControlPipes, Message};
use crate::cgroup::{Cgroup, CgroupUsage, Limits};
use crate::run::{
    Capture, RunEnd, RunError, RunIo, RunOutcome, Sandboxes, cancelled, kill, pipe_pair,
    setup_failure, wait_exit,
};
use crate::spec::LaunchSpec;

/// Extra time the host allows past a run's own timeout before it kills the whole sandbox
/// (the agent enforces the timeout; this is the net under it).
const AGENT_SLACK: Duration = Duration::from_secs(5);

/// A command for the agent to run.
#[derive(Debug)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub confine: Confine,
    pub timeout: Duration,
    pub io: RunIo,
}

/// A sandbox whose PID 1 is the agent. Dropping it kills the sandbox; [`destroy`] also
/// waits for it to be gone and removes its cgroup.
///
/// [`destroy`]: AgentSandbox::destroy
pub struct AgentSandbox {
    pub(crate) id: String,
    pub(crate) sandboxes: Arc<Sandboxes>,
    pub(crate) cgroup: std::sync::Mutex<Option<Cgroup>>,
    pub(crate) pidfd: Arc<OwnedFd>,
    /// PID 1 as the host sees it.
    pub(crate) pid: i32,
    /// What the sandbox was built from (a checkpoint records it).
    pub(crate) spec: LaunchSpec,
    /// The agent's control pipes' inodes (requests, events): a checkpoint names them so.
    pub(crate) pipe_inodes: (u64, u64),
    pub(crate) agent: Arc<AgentClient>,
    pub created_at: Instant,
    pub limits: Limits,
    /// The sandbox user: files are read and written with its identity.
    uid: u32,
    gid: u32,
    /// Time the sandbox spent paused or frozen (checkpoints, disk copies): the host's
    /// deadlines do not count it.
    pub(crate) held: Hold,
    /// The page server of a lazy restore, while it runs: a checkpoint waits for it.
    pub(crate) lazy_pages: tokio::sync::Mutex<Option<Arc<OwnedFd>>>,
    /// Set when the host killed the sandbox (a missed deadline): it takes no more work.
    killed: std::sync::atomic::AtomicBool,
    uses: std::sync::atomic::AtomicU64,
}

impl Sandboxes {
    /// Starts a sandbox with the agent as PID 1 and waits until the agent answers.
    pub async fn start_agent(
        self: &Arc<Self>,
        id: String,
        spec: LaunchSpec,
        limits: Limits,
    ) -> Result<AgentSandbox, RunError> {
        debug_assert!(spec.agent.is_some(), "start_agent needs spec.agent");
        let cgroup = self.cgroups().create(&id, &limits)?;
        let started = self.launch_agent(&id, &spec, &cgroup).await;
        self.agent_sandbox(id, cgroup, spec, limits, started).await
    }

    /// Wraps a started (or restored) agent, or cleans up after one that failed to start.
    pub(crate) async fn agent_sandbox(
        self: &Arc<Self>,
        id: String,
        cgroup: Cgroup,
        spec: LaunchSpec,
        limits: Limits,
        started: Result<StartedAgent, RunError>,
    ) -> Result<AgentSandbox, RunError> {
        match started {
            Ok(StartedAgent { pid, pidfd, agent, pipe_inodes, lazy_pages }) => Ok(AgentSandbox {
                id,
                sandboxes: Arc::clone(self),
                cgroup: std::sync::Mutex::new(Some(cgroup)),
                pidfd,
                pid,
                pipe_inodes,
                agent: Arc::new(agent),
                created_at: Instant::now(),
                limits,
                uid: spec.uid,
                gid: spec.gid,
                spec,
                held: Hold::default(),
                lazy_pages: tokio::sync::Mutex::new(lazy_pages.map(Arc::new)),
                killed: std::sync::atomic::AtomicBool::new(false),
                uses: std::sync::atomic::AtomicU64::new(0),
            }),
            Err(e) => {
                let pidfd = self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if let Some(pidfd) = pidfd {
                    kill(pidfd.as_raw_fd());
                    let _ = wait_exit(&pidfd).await;
                }
                cgroup.kill_all();
                let _ = cgroup.remove().await;
                Err(e)
            }
        }
    }

    async fn launch_agent(
        &self,
        id: &str,
        spec: &LaunchSpec,
        cgroup: &Cgroup,
    ) -> Result<StartedAgent, RunError> {
        let devnull = std::fs::File::open("/dev/null").map_err(RunError::Io)?;
        let (status_r, status_w) = pipe_pair()?;
        let pipes = ControlPipes::new().map_err(RunError::Io)?;
        let pipe_inodes = pipes.inodes().map_err(RunError::Io)?;
        // The agent's own stdout and stderr go to the server's stderr (its log) until it
        // has started.
        let fds = vec![
            devnull.as_raw_fd(),
            2,
            2,
            status_w.as_raw_fd(),
            pipes.agent_requests.as_raw_fd(),
            pipes.agent_events.as_raw_fd(),
        ];
        let launched = self.launch(id, spec, cgroup, fds, false, None).await?;
        let ControlPipes { host_requests, host_events, agent_requests, agent_events } = pipes;
        drop((status_w, agent_requests, agent_events, devnull));
        // EOF on the status pipe: PID 1 exec'd the agent (or wrote why it could not).
        let mut status = String::new();
        let mut rx = pipe::Receiver::from_owned_fd(status_r).map_err(RunError::Io)?;
        let read =
            tokio::time::timeout(Duration::from_secs(10), rx.read_to_string(&mut status)).await;
        if let Some(failure) = setup_failure(&status) {
            return Err(failure);
        }
        if !matches!(read, Ok(Ok(_))) {
            return Err(RunError::Setup { stage: "agent start".into(), errno: libc::ETIMEDOUT });
        }
        let agent = AgentClient::connect(host_requests, host_events).await?;
        Ok(StartedAgent {
            pid: launched.pid,
            pidfd: launched.pidfd,
            agent,
            pipe_inodes,
            lazy_pages: None,
        })
    }
}

/// A clock of the time a sandbox is held still.
#[derive(Default)]
pub(crate) struct Hold {
    total_ms: std::sync::atomic::AtomicU64,
    active: std::sync::atomic::AtomicU32,
}

impl Hold {
    /// Counts from now until the guard is dropped.
    pub(crate) fn begin(&self) -> HoldGuard<'_> {
        self.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HoldGuard { hold: self, since: Instant::now() }
    }

    fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

pub(crate) struct HoldGuard<'a> {
    hold: &'a Hold,
    since: Instant,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        let ms = self.since.elapsed().as_millis() as u64 + 1;
        self.hold.total_ms.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
        self.hold.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An agent that answered, before it is wrapped into an [`AgentSandbox`].
pub(crate) struct StartedAgent {
    pub pid: i32,
    pub pidfd: Arc<OwnedFd>,
    pub agent: AgentClient,
    pub pipe_inodes: (u64, u64),
    /// A lazy restore's page server (pidfd), until it has put every page in place.
    pub lazy_pages: Option<OwnedFd>,
}

impl AgentSandbox {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// PID 1 as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn agent(&self) -> Arc<AgentClient> {
        Arc::clone(&self.agent)
    }

    /// Whether the sandbox can still take work.
    pub fn is_alive(&self) -> bool {
        self.agent.is_connected() && !self.killed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Kills every process in the sandbox but the agent (a reused sandbox between calls).
    /// Not waited for: the agent handles requests in order, so whatever is sent next runs
    /// after the kill.
    pub async fn kill_processes(&self) -> Result<(), RunError> {
        let (id, _) = self.agent.subscribe();
        self.agent.unsubscribe(id);
        self.agent.send(&Request::KillAll { id }, &[]).await?;
        Ok(())
    }

    pub fn usage(&self) -> CgroupUsage {
        self.cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Cgroup::usage)
            .unwrap_or_default()
    }

    /// Memory the sandbox holds now.
    pub fn memory_in_use(&self) -> u64 {
        self.cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Cgroup::memory_in_use)
            .unwrap_or_default()
    }

    /// How many commands and context runs this sandbox has served.
    pub fn uses(&self) -> u64 {
        self.uses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs a command and collects its result, streaming output to `io.sink` on the way.
    pub async fn exec(&self, req: ExecRequest) -> Result<RunOutcome, RunError> {
        self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (id, mut rx) = self.agent.subscribe();
        let result = self.exec_inner(id, &mut rx, req).await;
        self.agent.unsubscribe(id);
        result
    }

    async fn exec_inner(
        &self,
        id: u64,
        rx: &mut tokio::sync::mpsc::Receiver<Message>,
        mut req: ExecRequest,
    ) -> Result<RunOutcome, RunError> {
        let before = self.begin_measure();
        let timeout_ms = req.timeout.as_millis() as u64;
        let has_stdin = !req.io.stdin.is_empty() || req.io.stdin_stream.is_some();
        let exec = Request::Exec {
            id,
            argv: req.argv,
            env: req.env,
            confine: req.confine,
            timeout_ms: Some(timeout_ms),
            stdin: has_stdin,
            pty: None,
        };
        let started = (Instant::now(), self.held.total());
        self.agent.send(&exec, &[]).await?;
        if has_stdin {
            self.feed_stdin(id, std::mem::take(&mut req.io.stdin), req.io.stdin_stream.take());
        }
        self.collect(id, rx, started, req.timeout, req.io, before).await
    }

    /// Sends stdin on a task of its own: it may arrive long after the process started.
    fn feed_stdin(
        &self,
        id: u64,
        first: Vec<u8>,
        stream: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
    ) {
        let agent = Arc::clone(&self.agent);
        tokio::spawn(async move {
            // Frames have a size limit: stdin goes in chunks.
            for piece in first.chunks(faas_agent::protocol::CHUNK) {
                if agent.send(&Request::Stdin { id, eof: false }, piece).await.is_err() {
                    return;
                }
            }
            if let Some(mut stream) = stream {
                while let Some(chunk) = stream.recv().await {
                    for piece in chunk.chunks(faas_agent::protocol::CHUNK) {
                        if agent.send(&Request::Stdin { id, eof: false }, piece).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = agent.send(&Request::Stdin { id, eof: true }, &[]).await;
        });
    }

    fn begin_measure(&self) -> CgroupUsage {
        if let Some(cgroup) = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            cgroup.reset_peak();
        }
        self.usage()
    }

    async fn collect(
        &self,
        id: u64,
        rx: &mut tokio::sync::mpsc::Receiver<Message>,
        (started, mut held): (Instant, Duration),
        timeout: Duration,
        io: RunIo,
        before: CgroupUsage,
    ) -> Result<RunOutcome, RunError> {
        let RunIo { sink, output_limit, mut cancel, mut signals, .. } = io;
        let mut stdout = Capture::new(Stream::Stdout, output_limit);
        let mut stderr = Capture::new(Stream::Stderr, output_limit);
        let mut deadline = tokio::time::Instant::from_std(started + timeout + AGENT_SLACK);
        let mut killed = false;
        let end = loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, rx.recv()) => next,
                Some(signal) = next_signal(&mut signals) => {
                    let _ = self.agent.send(&Request::Signal { id, signal }, &[]).await;
                    continue;
                }
                _ = cancelled(&mut cancel), if !killed => {
                    killed = true;
                    let _ = self.agent.send(&Request::Signal { id, signal: libc::SIGKILL }, &[]).await;
                    continue;
                }
            };
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => return Err(RunError::Agent(AgentError::Gone)),
                Err(_) => {
                    // Time the sandbox was held still (a checkpoint) does not count.
                    let now_held = self.held.total();
                    if self.held.is_active() || now_held > held {
                        deadline += (now_held - held).max(Duration::from_secs(1));
                        held = now_held;
                        continue;
                    }
                    // The agent missed its own deadline: the sandbox is not trustworthy.
                    self.killed.store(true, std::sync::atomic::Ordering::Relaxed);
                    kill(self.pidfd.as_raw_fd());
                    break RunEnd::TimedOut;
                }
            };
            match message.event {
                Event::Output { stream, .. } => {
                    let capture = if stream == Stream::Stdout { &mut stdout } else { &mut stderr };
                    if !capture.push(&message.data, sink.as_ref()) {
                        let _ = self.agent.send(&Request::CloseOutput { id, stream }, &[]).await;
                    }
                }
                Event::Exit { exit_code, signal, timed_out, start_error, .. } => {
                    break match (start_error, timed_out, exit_code, signal) {
                        (Some(e), ..) => RunEnd::NotStarted { stage: e.stage, errno: e.errno },
                        (None, true, ..) => RunEnd::TimedOut,
                        (None, false, Some(code), _) => RunEnd::Exited(code),
                        (None, false, None, signal) => {
                            RunEnd::Signaled(signal.unwrap_or(libc::SIGKILL))
                        }
                    };
                }
                Event::Error { message, errno, .. } => {
                    return Err(AgentError::Refused { message, errno }.into());
                }
                _ => {}
            }
        };
        let wall = started.elapsed();
        let after = self.usage();
        Ok(RunOutcome {
            end,
            stdout: stdout.data,
            stderr: stderr.data,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            wall,
            usage: CgroupUsage {
                cpu_ns: after.cpu_ns.saturating_sub(before.cpu_ns),
                peak_memory_bytes: after.peak_memory_bytes,
                oom_kills: after.oom_kills.saturating_sub(before.oom_kills),
            },
        })
    }

    /// Creates or replaces a file inside the sandbox, as the sandbox user.
    pub async fn write_file(&self, path: &str, content: &[u8], mode: u32) -> Result<u64, RunError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // One message holds it all: the stream splits it into frames.
        let _ = tx.send(content.to_vec()).await;
        drop(tx);
        self.write_file_stream(path, mode, rx).await
    }

    /// Starts a language context (a Python or Node interpreter keeping its globals).
    pub async fn context_create(
        &self,
        name: &str,
        language: &str,
        env: Vec<String>,
        confine: Confine,
    ) -> Result<(), RunError> {
        let answer = self
            .agent
            .call(|id| Request::ContextCreate {
                id,
                context: name.to_owned(),
                language: language.to_owned(),
                env,
                confine,
            })
            .await?;
        match answer.event {
            Event::ContextReady { .. } => Ok(()),
            other => Err(AgentError::Refused {
                message: format!("unexpected answer {other:?}"),
                errno: None,
            }
            .into()),
        }
    }

    /// Ends a language context (its interpreter is killed).
    pub async fn context_delete(&self, name: &str) -> Result<(), RunError> {
        self.agent.call(|id| Request::ContextDelete { id, context: name.to_owned() }).await?;
        Ok(())
    }

    /// Runs code in a context: a result like a process's, exit code 1 on an exception.
    pub async fn context_run(
        &self,
        name: &str,
        code: String,
        timeout: Duration,
        io: RunIo,
    ) -> Result<RunOutcome, RunError> {
        self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (id, mut rx) = self.agent.subscribe();
        let before = self.begin_measure();
        let started = (Instant::now(), self.held.total());
        let request = Request::ContextRun {
            id,
            context: name.to_owned(),
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        let result = match self.agent.send(&request, code.as_bytes()).await {
            Ok(()) => self.collect(id, &mut rx, started, timeout, io, before).await,
            Err(e) => Err(e.into()),
        };
        self.agent.unsubscribe(id);
        result
    }

    /// Kills the sandbox, waits until it is gone and removes its cgroup.
    pub async fn destroy(&self) -> Result<(), RunError> {
        kill(self.pidfd.as_raw_fd());
        let waited = wait_exit(&self.pidfd).await;
        self.sandboxes.unregister(&self.id);
        let cgroup = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(cgroup) = cgroup {
            cgroup.remove().await?;
        }
        waited
    }

    /// Reads a whole file from the sandbox, in chunks through `sink`.
    pub async fn read_file(
        &self,
        path: &str,
        sink: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<u64, RunError> {
        let (id, mut rx) = self.agent.subscribe();
        let result = async {
            self.agent
                .send(
                    &Request::FileRead { id, path: path.to_owned(), uid: self.uid, gid: self.gid },
                    &[],
                )
                .await?;
            loop {
                match rx.recv().await.ok_or(AgentError::Gone)? {
                    Message { event: Event::FileData { .. }, data } => {
                        sink.send(data).await.map_err(|_| AgentError::Gone)?;
                    }
                    Message { event: Event::Done { size, .. }, .. } => return Ok(size),
                    Message { event: Event::Error { message, errno, .. }, .. } => {
                        return Err(AgentError::Refused { message, errno }.into());
                    }
                    _ => {}
                }
            }
        }
        .await;
        self.agent.unsubscribe(id);
        result
    }

    /// Writes a file from chunks as they arrive, as the sandbox user; returns its size.
    pub async fn write_file_stream(
        &self,
        path: &str,
        mode: u32,
        mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<u64, RunError> {
        let (id, mut rx) = self.agent.subscribe();
        let result = async {
            self.agent
                .send(
                    &Request::FileWrite {
                        id,
                        path: path.to_owned(),
                        mode,
                        uid: self.uid,
                        gid: self.gid,
                    },
                    &[],
                )
                .await?;
            while let Some(chunk) = chunks.recv().await {
                for piece in chunk.chunks(faas_agent::protocol::CHUNK) {
                    self.agent.send(&Request::FileChunk { id }, piece).await?;
                }
                // An early refusal (say, a path under a file) ends the upload at once.
                if let Ok(Message { event: Event::Error { message, errno, .. }, .. }) =
                    rx.try_recv()
                {
                    return Err(AgentError::Refused { message, errno }.into());
                }
            }
            self.agent.send(&Request::FileEnd { id }, &[]).await?;
            match rx.recv().await.ok_or(AgentError::Gone)?.event {
                Event::Done { size, .. } => Ok(size),
                Event::Error { message, errno, .. } => {
                    Err(AgentError::Refused { message, errno }.into())
                }
                other => Err(AgentError::Refused {
                    message: format!("unexpected answer {other:?}"),
                    errno: None,
                }
                .into()),
            }
        }
        .await;
        self.agent.unsubscribe(id);
        result
    }

    /// Opens a TCP connection to `port` on the sandbox's loopback, through the agent, as a
    /// byte stream (no network setup needed: the sandbox has none).
    pub async fn connect(&self, port: u16) -> Result<tokio::io::DuplexStream, RunError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (id, mut rx) = self.agent.subscribe();
        if let Err(e) = self.agent.send(&Request::Connect { id, port }, &[]).await {
            self.agent.unsubscribe(id);
            return Err(e.into());
        }
        match tokio::time::timeout(crate::agent::CALL_TIMEOUT, rx.recv()).await {
            Ok(Some(Message { event: Event::Connected { .. }, .. })) => {}
            Ok(Some(Message { event: Event::Error { message, errno, .. }, .. })) => {
                self.agent.unsubscribe(id);
                return Err(AgentError::Refused { message, errno }.into());
            }
            _ => {
                self.agent.unsubscribe(id);
                return Err(AgentError::Gone.into());
            }
        }
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut read, mut write) = tokio::io::split(ours);
        let agent = Arc::clone(&self.agent);
        // From the sandbox to the caller.
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                match message.event {
                    Event::TcpData { .. } if write.write_all(&message.data).await.is_err() => break,
                    Event::TcpClosed { .. } | Event::Error { .. } => break,
                    _ => {}
                }
            }
            let _ = write.shutdown().await;
            agent.unsubscribe(id);
        });
        // From the caller to the sandbox.
        let agent = Arc::clone(&self.agent);
        tokio::spawn(async move {
            let mut buf = vec![0u8; faas_agent::protocol::CHUNK];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if agent.send(&Request::TcpData { id }, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = agent.send(&Request::TcpClose { id }, &[]).await;
        });
        Ok(theirs)
    }

    /// Lists a directory inside the sandbox.
    pub async fn list_dir(
        &self,
        path: &str,
    ) -> Result<Vec<faas_agent::protocol::DirEntry>, RunError> {
        let answer = self
            .agent
            .call(|id| Request::FileList {
                id,
                path: path.to_owned(),
                uid: self.uid,
                gid: self.gid,
            })
            .await?;
        serde_json::from_slice(&answer.data).map_err(|e| {
            AgentError::Refused { message: format!("bad listing: {e}"), errno: None }.into()
        })
    }

    /// Removes a file or directory inside the sandbox.
    pub async fn delete_path(&self, path: &str, recursive: bool) -> Result<(), RunError> {
        self.agent
            .call(|id| Request::FileDelete {
                id,
                path: path.to_owned(),
                recursive,
                uid: self.uid,
                gid: self.gid,
            })
            .await?;
        Ok(())
    }
}

/// The next signal to forward; never resolves when there is no channel.
async fn next_signal(
    signals: &mut Option<tokio::sync::mpsc::UnboundedReceiver<i32>>,
) -> Option<i32> {
    match signals {
        Some(rx) => match rx.recv().await {
            Some(signal) => Some(signal),
            None => {
                *signals = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

impl Drop for AgentSandbox {
    fn drop(&mut self) {
        // Dropped without destroy(): kill it and clean up in the background.
        let Some(cgroup) = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        kill(self.pidfd.as_raw_fd());
        self.sandboxes.unregister(&self.id);
        let pidfd = Arc::clone(&self.pidfd);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = wait_exit(&pidfd).await;
                let _ = cgroup.remove().await;
            });
        }
    }
}
