//! The launcher: a single-threaded process that clones sandboxes on request.
//!
//! The server spawns it once (the faas binary re-executed with [`LAUNCHER_ARG`]) and talks
//! to it over a SOCK_SEQPACKET socket: one message per launch, JSON plus the sandbox's file
//! descriptors (SCM_RIGHTS); the answer carries the sandbox's pidfd. The launcher keeps no
//! state about sandboxes: the server owns their pipes, cgroups and pidfds, and the kernel
//! reaps them (SIGCHLD is ignored here). Launchers are spawned by one dedicated thread:
//! a launcher dies with the thread that spawned it (parent-death signal), and runtime worker
//! threads come and go.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use crate::init::{self, Context};
use crate::spec::{LAUNCH_PROTOCOL_VERSION, LaunchMessage, LaunchReply};
use faas_confine::Filters;

/// argv[1] that turns the faas binary into the launcher.
pub const LAUNCHER_ARG: &str = "__launcher";
/// The launcher finds its end of the socket here.
const SOCKET_FD: RawFd = 3;
const MAX_FDS: usize = 16;
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("talking to the launcher")]
    Io(#[source] io::Error),
    #[error("the launcher has exited")]
    Gone,
    #[error("the launcher could not start the sandbox: {0}")]
    Refused(String),
    #[error("malformed reply from the launcher")]
    Protocol,
}

/// One launcher process and our end of its socket.
struct LauncherProcess {
    child: Child,
    sock: AsyncFd<OwnedFd>,
}

impl LauncherProcess {
    /// Must run on the keeper thread: the launcher's parent-death signal fires when the
    /// thread that spawned it exits.
    fn spawn(scratch_dir: &Path) -> io::Result<(Child, OwnedFd)> {
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(LAUNCHER_ARG).arg(scratch_dir).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_fd == SOCKET_FD {
                    if libc::fcntl(SOCKET_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        set_nonblocking(ours.as_raw_fd())?;
        Ok((child, ours))
    }

    fn register((child, sock): (Child, OwnedFd)) -> io::Result<Self> {
        // SAFETY: the OwnedFd stays open, and the same descriptor, while the AsyncFd owns it.
        let sock = unsafe { AsyncFd::register(sock) }?;
        Ok(Self { child, sock })
    }

    async fn send(&self, body: &[u8], fds: &[RawFd]) -> Result<(), LaunchError> {
        self.sock
            .async_io(Interest::WRITABLE, |fd| {
                let cmsg = [ControlMessage::ScmRights(fds)];
                socket::sendmsg::<()>(
                    fd.as_raw_fd(),
                    &[IoSlice::new(body)],
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await
            .map(drop)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EPIPE) {
                    LaunchError::Gone
                } else {
                    LaunchError::Io(e)
                }
            })
    }

    async fn recv(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), LaunchError> {
        let (reply, fds) = self
            .sock
            .async_io(Interest::READABLE, |fd| recv_with_fds(fd.as_raw_fd(), 4096))
            .await
            .map_err(LaunchError::Io)?;
        if reply.is_empty() {
            return Err(LaunchError::Gone);
        }
        Ok((reply, fds))
    }
}

impl Drop for LauncherProcess {
    fn drop(&mut self) {
        // Closing the socket makes the launcher exit; reap it rather than leave a zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type SpawnReply = tokio::sync::oneshot::Sender<io::Result<(Child, OwnedFd)>>;

/// A started sandbox: its PID 1 as the host sees it, and a pidfd to signal and watch it.
#[derive(Debug)]
pub struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// The server's handle on the launcher. Launches are serialised on the socket; each one
/// costs the launcher a clone(), so this is not the bottleneck. A launcher that dies is
/// replaced on the next launch.
pub struct LauncherClient {
    process: Mutex<LauncherProcess>,
    /// Asks the keeper thread, which outlives every launcher it spawns, for a new one.
    keeper: std::sync::Mutex<std::sync::mpsc::Sender<SpawnReply>>,
    restarts: AtomicU64,
}

impl LauncherClient {
    /// Starts the keeper thread and the first launcher. `scratch_dir` is the mount point of
    /// every sandbox's scratch space (inside each sandbox's own mount namespace).
    pub async fn start(scratch_dir: PathBuf) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnReply>();
        std::thread::Builder::new().name("faas-launcher-keeper".into()).spawn(move || {
            for reply in rx {
                let _ = reply.send(LauncherProcess::spawn(&scratch_dir));
            }
        })?;
        let keeper = std::sync::Mutex::new(tx);
        let process = LauncherProcess::register(Self::spawn_with(&keeper).await?)?;
        Ok(Self { process: Mutex::new(process), keeper, restarts: AtomicU64::new(0) })
    }

    async fn spawn_with(
        keeper: &std::sync::Mutex<std::sync::mpsc::Sender<SpawnReply>>,
    ) -> io::Result<(Child, OwnedFd)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        keeper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(tx)
            .map_err(|_| io::Error::other("the launcher keeper thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("the launcher keeper thread is gone"))?
    }

    async fn replace(&self, process: &mut LauncherProcess) -> Result<(), LaunchError> {
        let fresh = Self::spawn_with(&self.keeper)
            .await
            .and_then(LauncherProcess::register)
            .map_err(LaunchError::Io)?;
        *process = fresh;
        let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(restarts = n, "the sandbox launcher had exited; started a new one");
        Ok(())
    }

    /// Asks for one sandbox. `fds` follow the order documented on [`LaunchMessage`].
    pub async fn launch(
        &self,
        msg: &LaunchMessage,
        fds: &[RawFd],
    ) -> Result<Launched, LaunchError> {
        let body = serde_json::to_vec(msg).map_err(|_| LaunchError::Protocol)?;
        let mut process = self.process.lock().await;
        match process.send(&body, fds).await {
            // Nothing was started: a new launcher can take the request.
            Err(LaunchError::Gone) => {
                self.replace(&mut process).await?;
                process.send(&body, fds).await?;
            }
            other => other?,
        }
        let (reply, mut received) = match process.recv().await {
            Ok(reply) => reply,
            // It died holding the request; whatever it cloned dies with it (parent-death
            // signal). This run fails, the next gets a new launcher.
            Err(LaunchError::Gone) => {
                self.replace(&mut process).await?;
                return Err(LaunchError::Gone);
            }
            Err(e) => return Err(e),
        };
        drop(process);
        match serde_json::from_slice::<LaunchReply>(&reply).map_err(|_| LaunchError::Protocol)? {
            LaunchReply::Started { pid } => {
                let pidfd = received.pop().ok_or(LaunchError::Protocol)?;
                Ok(Launched { pid, pidfd })
            }
            LaunchReply::Failed { error } => Err(LaunchError::Refused(error)),
        }
    }

    /// How many times a dead launcher was replaced.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it (close-on-exec).
fn recv_with_fds(fd: RawFd, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg =
        socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg_space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message truncated"));
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

fn send_reply(reply: &LaunchReply, fd: Option<RawFd>) {
    let body = serde_json::to_vec(reply).unwrap_or_default();
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    // A failed send means the server is gone; the next recv sees EOF and we exit.
    let _ = socket::sendmsg::<()>(
        SOCKET_FD,
        &[IoSlice::new(&body)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The launcher process's main loop. Never returns.
pub fn launcher_main(scratch_dir: PathBuf) -> ! {
    let ctx = match prepare(scratch_dir) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("faas launcher: {e}");
            std::process::exit(1);
        }
    };
    loop {
        let (body, fds) = match recv_with_fds(SOCKET_FD, MAX_MESSAGE) {
            Ok((body, _)) if body.is_empty() => std::process::exit(0),
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("faas launcher: receive: {e}");
                std::process::exit(1);
            }
        };
        match serde_json::from_slice::<LaunchMessage>(&body) {
            Ok(msg) if msg.version == LAUNCH_PROTOCOL_VERSION => {
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                let cloned = if msg.restore.is_some() {
                    clone_child(0, || init::restore(&ctx, &msg, &raw))
                } else {
                    clone_sandbox(&ctx, &msg, &raw)
                };
                match cloned {
                    Ok((pid, pidfd)) => {
                        drop(fds);
                        send_reply(&LaunchReply::Started { pid }, Some(pidfd.as_raw_fd()));
                    }
                    Err(e) => {
                        send_reply(&LaunchReply::Failed { error: format!("clone: {e}") }, None)
                    }
                }
            }
            Ok(msg) => send_reply(
                &LaunchReply::Failed {
                    error: format!("protocol version {} not supported", msg.version),
                },
                None,
            ),
            Err(e) => send_reply(&LaunchReply::Failed { error: format!("bad request: {e}") }, None),
        }
    }
}

fn prepare(scratch: PathBuf) -> Result<Context, String> {
    // The kernel reaps our children; the server watches them through pidfds.
    // SAFETY: setting a signal disposition in a single-threaded process.
    // Restored sandboxes are CRIU's children until it detaches them: as a subreaper the
    // launcher inherits them like the sandboxes it clones itself.
    // SAFETY: as above; prctl with integer arguments.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("scratch dir {}: {e}", scratch.display()))?;
    let filters = Filters::build().map_err(|e| e.to_string())?;
    let last_cap = faas_confine::last_cap();
    Ok(Context { filters, last_cap, scratch })
}

/// clone3 into new pid, mount, network, uts and ipc namespaces, with a pidfd.
fn clone_sandbox(ctx: &Context, msg: &LaunchMessage, fds: &[RawFd]) -> io::Result<(i32, OwnedFd)> {
    let namespaces = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC;
    clone_child(namespaces, || init::run(ctx, msg, fds))
}

/// clone3 with `namespaces` and a pidfd; the child runs `child` (which execs or exits).
fn clone_child(namespaces: libc::c_int, child: impl FnOnce()) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: (namespaces | libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of this
    // single-threaded process and continues on its own copy of the stack.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            child();
            // SAFETY: _exit in the child; never reached, the child functions end the process.
            unsafe { libc::_exit(1) }
        }
        pid => {
            // SAFETY: the kernel wrote a fresh pidfd for us.
            Ok((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
        }
    }
}
