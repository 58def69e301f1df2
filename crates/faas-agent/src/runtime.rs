//! The agent's event loop. One thread, one `poll`: the control pipes, a signalfd for
//! SIGCHLD, and every pipe and socket of the processes, contexts and connections it runs.
//! Output is read only while the host keeps up (backpressure), so a flood never grows the
//! agent's memory; the sandbox's cgroup charges the agent like any of its processes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use faas_confine::{Confinement, Filters};

use crate::protocol::{self, CHUNK, Confine, Event, PtySize, Request, StartError, Stream};

/// The control channel: requests arrive on one pipe, events leave on another (see
/// faas-sandbox's AGENT_REQUESTS_FD). Pipes, not a socket: a checkpoint's copy gets new
/// pipes in their place (CRIU's inherited descriptors), where a socket connected to the
/// server could not be restored.
pub const REQUESTS_FD: RawFd = 4;
pub const EVENTS_FD: RawFd = 5;
/// Past this much unsent output, stop reading from children until the host catches up.
const HIGH_WATER: usize = 4 << 20;
/// The most a TCP relay buffers toward a program that does not read.
const MAX_TCP_BACKLOG: usize = 16 << 20;
/// What is drained from a finished program's pipes at most (its background children may
/// keep writing).
const MAX_DRAIN: usize = 1 << 20;
/// The longest timeout honoured; larger ones are clamped.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86400);
/// How long a started process may take to exec before the agent gives up on it.
const EXEC_TIMEOUT_MS: i32 = 10_000;
/// A context whose run timed out gets SIGINT, then this long before SIGKILL.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

const PYTHON_DRIVER: &str = include_str!("drivers/python.py");
const NODE_DRIVER: &str = include_str!("drivers/node.js");

/// Runs the agent on the control pipes. Exits when the host hangs up (the server's ends
/// close when it exits, however it exits), which, the agent being PID 1, ends the sandbox.
pub fn main() -> ! {
    match Agent::new(REQUESTS_FD, EVENTS_FD) {
        Ok(mut agent) => {
            detach_stdio();
            agent.run()
        }
        Err(e) => {
            eprintln!("faas-agent: {e}");
            std::process::exit(1)
        }
    }
}

struct Proc {
    pid: i32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    /// The terminal's controlling side, for resizes (processes started with a pty).
    terminal: Option<OwnedFd>,
}

/// The agent's ends of a started process's descriptors 0, 1 and 2: pipes, or one terminal
/// (then `stderr` is `None`: the terminal carries both streams).
struct Stdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
}

struct Run {
    id: u64,
    deadline: Option<Instant>,
    interrupted_at: Option<Instant>,
    timed_out: bool,
}

struct Context {
    pid: i32,
    ctl: OwnedFd,
    ctl_buf: Vec<u8>,
    reply: OwnedFd,
    reply_buf: Vec<u8>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    creating: Option<u64>,
    running: Option<Run>,
}

struct Tcp {
    sock: OwnedFd,
    connecting: bool,
    out: Vec<u8>,
    closing: bool,
}

#[derive(Clone, Debug)]
enum Tag {
    Requests,
    Events,
    Signal,
    ProcOut(u64, Stream),
    ProcIn(u64),
    ContextReply(String),
    ContextOut(String, Stream),
    ContextIn(String),
    Tcp(u64),
}

struct Agent {
    requests: OwnedFd,
    events: OwnedFd,
    /// Between `pause` and `resume` (a checkpoint): only the control pipes are served.
    paused: bool,
    /// The largest request id seen, and the first id of the current host: events for
    /// smaller ids belong to the host before a restore and are dropped.
    max_id: u64,
    first_id: u64,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    sigfd: OwnedFd,
    /// Scratch space for reads, reused so no loop iteration zeroes a new buffer.
    scratch: Vec<u8>,
    procs: HashMap<u64, Proc>,
    by_pid: HashMap<i32, u64>,
    contexts: HashMap<String, Context>,
    reads: HashMap<u64, (File, u64)>,
    writes: HashMap<u64, File>,
    tcp: HashMap<u64, Tcp>,
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), i32> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(faas_confine::errno());
    }
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads what is available without blocking: Ok(None) would block, Ok(Some(0)) is EOF.
fn read_some(fd: RawFd, buf: &mut [u8]) -> Result<Option<usize>, i32> {
    // SAFETY: reads into a valid buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    match faas_confine::errno() {
        libc::EAGAIN | libc::EINTR => Ok(None),
        e => Err(e),
    }
}

/// Writes what the descriptor takes now; returns how much.
fn write_some(fd: RawFd, buf: &[u8]) -> Result<usize, i32> {
    // SAFETY: writes from a valid buffer.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = faas_confine::errno();
    if e == libc::ENOTSOCK {
        // SAFETY: as above, for pipes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        return match faas_confine::errno() {
            libc::EAGAIN | libc::EINTR => Ok(0),
            e => Err(e),
        };
    }
    match e {
        libc::EAGAIN | libc::EINTR => Ok(0),
        e => Err(e),
    }
}

impl Agent {
    fn new(requests: RawFd, events: RawFd) -> Result<Self, String> {
        let [requests, events] = [requests, events].map(|fd| {
            // SAFETY: F_GETFD only inspects the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("no control pipe on descriptor {fd}"));
            }
            // SAFETY: handed to us by PID 1's setup; we own it from here. Nothing the agent
            // starts may inherit it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            set_nonblocking(fd.as_raw_fd());
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            Ok(fd)
        });
        let (requests, events) = (requests?, events?);
        // The sandbox's lifetime is the control channel's (EOF when the server goes, see
        // main), not the launcher's: a restored sandbox's parent is CRIU, which exits.
        // SAFETY: prctl with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
        // SIGCHLD arrives on a descriptor, not as an interruption.
        // SAFETY: plain signal-mask calls on a zeroed, initialised set.
        let sigfd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(os_error("signalfd"));
            }
            OwnedFd::from_raw_fd(fd)
        };
        let filters = Filters::build().map_err(|e| e.to_string())?;
        // When the sandbox runs out of memory, the OOM killer must pick the program, never
        // the agent that reports on it.
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        // PID 1's setup ran with umask 0; files and directories the agent creates get the
        // usual 022.
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(0o022) };
        // The agent needs none of the syscalls the filters deny, so it runs under them
        // itself; every process it starts inherits them (and no_new_privs) for free.
        faas_confine::install(&filters).map_err(|f| format!("seccomp: errno {}", f.errno))?;
        // Likewise the bounding set: empty it once; the agent keeps its permitted set.
        faas_confine::drop_bounding_set(faas_confine::last_cap())
            .map_err(|f| format!("bounding set: errno {}", f.errno))?;
        // And of its own capabilities it keeps only what starting processes as the sandbox
        // user and signalling them needs: it is the host's root (no user namespace), so
        // nothing else it can do may depend on a path or request a tenant controls.
        keep_capabilities(&[CAP_KILL, CAP_SETGID, CAP_SETUID])
            .map_err(|e| format!("capabilities: {e}"))?;
        let mut agent = Self {
            requests,
            events,
            paused: false,
            max_id: 0,
            first_id: 0,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            sigfd,
            scratch: vec![0u8; CHUNK],
            procs: HashMap::new(),
            by_pid: HashMap::new(),
            contexts: HashMap::new(),
            reads: HashMap::new(),
            writes: HashMap::new(),
            tcp: HashMap::new(),
        };
        agent.send(&Event::Hello { version: protocol::VERSION, next_id: 1 }, b"");
        Ok(agent)
    }

    fn send(&mut self, event: &Event, data: &[u8]) {
        if event.id().is_some_and(|id| id < self.first_id) {
            return;
        }
        protocol::encode(event, data, &mut self.outbuf);
    }

    fn error(&mut self, id: u64, message: impl Into<String>, errno: Option<i32>) {
        self.send(&Event::Error { id, message: message.into(), errno }, b"");
    }

    fn run(&mut self) -> ! {
        let mut buf = vec![0u8; CHUNK];
        loop {
            self.flush();
            if !self.paused {
                self.pump_reads();
            }
            let (mut pollfds, tags) = self.poll_set();
            let timeout = self.poll_timeout();
            // SAFETY: pollfds is a valid array of the given length.
            let n =
                unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, timeout) };
            if n < 0 && faas_confine::errno() != libc::EINTR {
                eprintln!("faas-agent: {}", os_error("poll"));
                std::process::exit(1);
            }
            for (pfd, tag) in pollfds.iter_mut().zip(tags) {
                // A pause that arrived in this round holds everything but the channel.
                if self.paused && !matches!(tag, Tag::Requests | Tag::Events) {
                    continue;
                }
                if pfd.revents != 0 {
                    self.ready(tag, pfd.revents, &mut buf);
                }
            }
            if !self.paused {
                self.check_deadlines();
            }
        }
    }

    fn output_room(&self) -> bool {
        self.outbuf.len() < HIGH_WATER
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Tag>) {
        let mut fds = Vec::new();
        let mut tags = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, tag: Tag| {
            fds.push(libc::pollfd { fd, events, revents: 0 });
            tags.push(tag);
        };
        if self.output_room() {
            add(self.requests.as_raw_fd(), libc::POLLIN, Tag::Requests);
        }
        if !self.outbuf.is_empty() {
            add(self.events.as_raw_fd(), libc::POLLOUT, Tag::Events);
        }
        if self.paused {
            return (fds, tags);
        }
        add(self.sigfd.as_raw_fd(), libc::POLLIN, Tag::Signal);
        let room = self.output_room();
        for (id, p) in &self.procs {
            if room {
                if let Some(fd) = &p.stdout {
                    add(fd.as_raw_fd(), libc::POLLIN, Tag::ProcOut(*id, Stream::Stdout));
                }
                if let Some(fd) = &p.stderr {
                    add(fd.as_raw_fd(), libc::POLLIN, Tag::ProcOut(*id, Stream::Stderr));
                }
            }
            if let Some(fd) = &p.stdin
                && (!p.stdin_buf.is_empty() || p.stdin_eof)
            {
                add(fd.as_raw_fd(), libc::POLLOUT, Tag::ProcIn(*id));
            }
        }
        for (name, c) in &self.contexts {
            add(c.reply.as_raw_fd(), libc::POLLIN, Tag::ContextReply(name.clone()));
            if room {
                if let Some(fd) = &c.stdout {
                    add(
                        fd.as_raw_fd(),
                        libc::POLLIN,
                        Tag::ContextOut(name.clone(), Stream::Stdout),
                    );
                }
                if let Some(fd) = &c.stderr {
                    add(
                        fd.as_raw_fd(),
                        libc::POLLIN,
                        Tag::ContextOut(name.clone(), Stream::Stderr),
                    );
                }
            }
            if !c.ctl_buf.is_empty() {
                add(c.ctl.as_raw_fd(), libc::POLLOUT, Tag::ContextIn(name.clone()));
            }
        }
        for (id, t) in &self.tcp {
            let mut events = 0;
            if room && !t.connecting {
                events |= libc::POLLIN;
            }
            if t.connecting || !t.out.is_empty() {
                events |= libc::POLLOUT;
            }
            add(t.sock.as_raw_fd(), events, Tag::Tcp(*id));
        }
        (fds, tags)
    }

    fn poll_timeout(&self) -> i32 {
        if self.paused {
            return -1;
        }
        if !self.reads.is_empty() && self.output_room() {
            return 0;
        }
        let now = Instant::now();
        let deadlines = self.procs.values().filter_map(|p| p.deadline).chain(
            self.contexts.values().filter_map(|c| {
                c.running.as_ref().and_then(|r| match r.interrupted_at {
                    Some(at) => Some(at + INTERRUPT_GRACE),
                    None => r.deadline,
                })
            }),
        );
        match deadlines.min() {
            Some(d) => d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1,
            None => -1,
        }
    }

    /// Sends pending output to the host; exits if the host is gone.
    fn flush(&mut self) {
        while !self.outbuf.is_empty() {
            match write_some(self.events.as_raw_fd(), &self.outbuf) {
                Ok(0) => return,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(_) => std::process::exit(0),
            }
        }
    }

    fn ready(&mut self, tag: Tag, revents: libc::c_short, buf: &mut [u8]) {
        match tag {
            Tag::Requests => {
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_control(buf);
                }
            }
            // The next loop's flush writes; an error there means the host is gone.
            Tag::Events => {}
            Tag::Signal => self.reap(),
            Tag::ProcOut(id, stream) => self.read_proc_output(id, stream, buf),
            Tag::ProcIn(id) => self.write_proc_stdin(id),
            Tag::ContextReply(name) => self.read_context_reply(&name, buf),
            Tag::ContextOut(name, stream) => self.read_context_output(&name, stream, buf),
            Tag::ContextIn(name) => {
                if let Some(c) = self.contexts.get_mut(&name) {
                    match write_some(c.ctl.as_raw_fd(), &c.ctl_buf) {
                        Ok(n) => {
                            c.ctl_buf.drain(..n);
                        }
                        Err(_) => c.ctl_buf.clear(),
                    }
                }
            }
            Tag::Tcp(id) => self.tcp_ready(id, revents, buf),
        }
    }

    fn read_control(&mut self, buf: &mut [u8]) {
        loop {
            match read_some(self.requests.as_raw_fd(), buf) {
                Ok(Some(0)) | Err(_) => std::process::exit(0),
                Ok(Some(n)) => self.inbuf.extend_from_slice(&buf[..n]),
                Ok(None) => break,
            }
        }
        let mut used = 0;
        loop {
            match protocol::decode(&self.inbuf[used..]) {
                Ok(Some((n, header, data))) => {
                    let request = serde_json::from_slice::<Request>(header);
                    let data = data.to_vec();
                    used += n;
                    match request {
                        Ok(request) => self.handle(request, data),
                        Err(e) => eprintln!("faas-agent: unreadable request: {e}"),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("faas-agent: broken stream from the host: {e:?}");
                    std::process::exit(1);
                }
            }
        }
        self.inbuf.drain(..used);
    }

    fn handle(&mut self, request: Request, data: Vec<u8>) {
        self.max_id = self.max_id.max(request.id());
        match request {
            Request::Exec { id, argv, env, confine, timeout_ms, stdin, pty } => {
                if self.procs.contains_key(&id) {
                    return self.error(id, format!("request id {id} is in use"), None);
                }
                self.exec(id, &argv, &env, &confine, timeout_ms, stdin, pty)
            }
            Request::Resize { id, size } => {
                if let Some(terminal) = self.procs.get(&id).and_then(|p| p.terminal.as_ref()) {
                    // A failed resize leaves the old size; the process runs on regardless.
                    let _ = set_window_size(terminal, size);
                }
            }
            Request::Stdin { id, eof } => {
                if let Some(p) = self.procs.get_mut(&id)
                    && p.stdin.is_some()
                {
                    p.stdin_buf.extend_from_slice(&data);
                    p.stdin_eof |= eof;
                }
            }
            Request::Signal { id, signal } => self.signal(id, signal),
            Request::CloseOutput { id, stream } => {
                if let Some(p) = self.procs.get_mut(&id) {
                    match stream {
                        Stream::Stdout => p.stdout = None,
                        Stream::Stderr => p.stderr = None,
                    }
                }
            }
            Request::ContextCreate { id, context, language, env, confine } => {
                self.context_create(id, context, &language, &env, &confine)
            }
            Request::ContextRun { id, context, timeout_ms } => {
                let code = String::from_utf8_lossy(&data).into_owned();
                self.context_run(id, &context, &code, timeout_ms)
            }
            Request::ContextDelete { id, context } => {
                if let Some(c) = self.contexts.remove(&context) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(c.pid, libc::SIGKILL) };
                }
                self.send(&Event::Done { id, size: 0 }, b"");
            }
            Request::FileRead { id, path, uid, gid } => {
                match as_user(uid, gid, || open_regular(&path, libc::O_RDONLY, 0)) {
                    Ok(file) => {
                        self.reads.insert(id, (file, 0));
                    }
                    Err(e) => self.error(id, format!("{path}: {e}"), e.raw_os_error()),
                }
            }
            Request::FileWrite { id, path, mode, uid, gid } => {
                let opened = as_user(uid, gid, || {
                    if let Some(parent) = std::path::Path::new(&path).parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    open_regular(
                        &path,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                        mode & 0o7777,
                    )
                });
                match opened {
                    Ok(file) => {
                        self.writes.insert(id, file);
                    }
                    Err(e) => self.error(id, format!("{path}: {e}"), e.raw_os_error()),
                }
            }
            Request::FileChunk { id } => {
                if let Some(file) = self.writes.get_mut(&id)
                    && let Err(e) = file.write_all(&data)
                {
                    self.writes.remove(&id);
                    self.error(id, format!("write: {e}"), e.raw_os_error());
                }
            }
            Request::FileEnd { id } => {
                if let Some(file) = self.writes.remove(&id) {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.send(&Event::Done { id, size }, b"");
                }
            }
            Request::FileList { id, path, uid, gid } => match as_user(uid, gid, || list_dir(&path))
            {
                Ok(entries) => {
                    let json = serde_json::to_vec(&entries).unwrap_or_default();
                    self.send(&Event::Listing { id }, &json);
                }
                Err(e) => self.error(id, format!("{path}: {e}"), e.raw_os_error()),
            },
            Request::FileDelete { id, path, recursive, uid, gid } => {
                let removed = as_user(uid, gid, || {
                    let p = std::path::Path::new(&path);
                    match std::fs::symlink_metadata(p) {
                        Ok(m) if m.is_dir() && recursive => std::fs::remove_dir_all(p),
                        Ok(m) if m.is_dir() => std::fs::remove_dir(p),
                        Ok(_) => std::fs::remove_file(p),
                        Err(e) => Err(e),
                    }
                });
                match removed {
                    Ok(()) => self.send(&Event::Done { id, size: 0 }, b""),
                    Err(e) => self.error(id, format!("{path}: {e}"), e.raw_os_error()),
                }
            }
            Request::Connect { id, port } => self.connect(id, port),
            Request::TcpData { id } => {
                if let Some(t) = self.tcp.get_mut(&id) {
                    if t.out.len() + data.len() > MAX_TCP_BACKLOG {
                        self.tcp.remove(&id);
                        return self.send(&Event::TcpClosed { id }, b"");
                    }
                    t.out.extend_from_slice(&data);
                }
            }
            Request::TcpClose { id } => {
                // The host is done sending: shut our write side once the backlog is out,
                // and keep reading the answer until the program closes its side.
                if let Some(t) = self.tcp.get_mut(&id) {
                    t.closing = true;
                    if t.out.is_empty() {
                        // SAFETY: shutdown on a socket we own.
                        unsafe { libc::shutdown(t.sock.as_raw_fd(), libc::SHUT_WR) };
                    }
                }
            }
            Request::KillAll { id } => {
                // From PID 1, kill(-1) reaches every other process of the namespace.
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(-1, libc::SIGKILL) };
                self.send(&Event::Done { id, size: 0 }, b"");
            }
            Request::Ping { id } => self.send(&Event::Pong { id }, b""),
            Request::Pause { id } => {
                self.paused = true;
                self.send(&Event::Paused { id }, b"");
            }
            Request::Resume { id, restored: false } => {
                self.paused = false;
                self.send(&Event::Done { id, size: 0 }, b"");
            }
            Request::Resume { restored: true, .. } => self.restored(),
        }
    }

    /// The first request on the new channel of a restored copy: the previous host's
    /// requests are forgotten (processes and contexts run on; output, exits and answers
    /// for them are dropped; its file transfers and TCP relays close).
    fn restored(&mut self) {
        self.paused = false;
        self.first_id = self.max_id + 1;
        // Output still queued was meant for the previous host's channel (and may end in
        // the middle of a frame it had half taken).
        self.outbuf.clear();
        self.reads.clear();
        self.writes.clear();
        self.tcp.clear();
        for p in self.procs.values_mut() {
            p.stdin = None;
            p.stdin_buf.clear();
        }
        let next_id = self.first_id;
        self.send(&Event::Hello { version: protocol::VERSION, next_id }, b"");
    }

    /// A signal for a process's group, or for a context run (which the interpreter gets as
    /// an interrupt, followed by SIGKILL after the grace time if it does not answer).
    fn signal(&mut self, id: u64, signal: i32) {
        if let Some(p) = self.procs.get(&id) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(-p.pid, signal);
                libc::kill(p.pid, signal);
            }
            return;
        }
        for c in self.contexts.values_mut() {
            if let Some(run) = c.running.as_mut().filter(|r| r.id == id) {
                if run.interrupted_at.is_none() {
                    run.interrupted_at = Some(Instant::now());
                }
                // SAFETY: as above.
                unsafe { libc::kill(c.pid, libc::SIGINT) };
            }
        }
    }

    /// Forks a confined process with pipes (or, with `pty`, a new terminal) on 0, 1, 2 and
    /// `extra` descriptors on 3, 4, ... Returns after the exec succeeded (or with why not).
    fn spawn(
        &self,
        argv: &[String],
        env: &[String],
        confine: &Confine,
        pty: Option<PtySize>,
        extra: &[RawFd],
    ) -> Result<(i32, Stdio), StartError> {
        let fail = |stage: &str, errno: i32| StartError { stage: stage.into(), errno };
        if argv.is_empty() {
            return Err(fail("exec", libc::EINVAL));
        }
        let (ours, theirs) = match pty {
            None => {
                let (stdin_r, stdin_w) = pipe().map_err(|e| fail("pipe", e))?;
                let (stdout_r, stdout_w) = pipe().map_err(|e| fail("pipe", e))?;
                let (stderr_r, stderr_w) = pipe().map_err(|e| fail("pipe", e))?;
                let ours = Stdio { stdin: stdin_w, stdout: stdout_r, stderr: Some(stderr_r) };
                (ours, [stdin_r, stdout_w, stderr_w])
            }
            Some(size) => {
                let os =
                    |e: std::io::Error| fail("terminal", e.raw_os_error().unwrap_or(libc::EIO));
                let (controller, user) = open_pty(confine.uid, confine.gid, size).map_err(os)?;
                let stdin = controller.try_clone().map_err(os)?;
                let theirs = [user.try_clone().map_err(os)?, user.try_clone().map_err(os)?, user];
                (Stdio { stdin, stdout: controller, stderr: None }, theirs)
            }
        };
        let (status_r, status_w) = pipe().map_err(|e| fail("pipe", e))?;
        let confinement = Confinement {
            uid: confine.uid,
            gid: confine.gid,
            workdir: confine.workdir.clone(),
            max_file_bytes: confine.max_file_bytes,
            max_open_files: confine.max_open_files,
            create_workdir: true,
            terminal: pty.is_some(),
        };
        let mut sources: Vec<RawFd> = theirs.iter().map(AsRawFd::as_raw_fd).collect();
        sources.extend_from_slice(extra);
        sources.push(status_w.as_raw_fd());
        let status_fd = (sources.len() - 1) as i32;
        // SAFETY: the agent is single-threaded, so the child of this fork is consistent; it
        // only arranges descriptors, confines itself and execs (or reports and exits).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(fail("fork", faas_confine::errno()));
        }
        if pid == 0 {
            // SAFETY (child): descriptor shuffling on our own table, then exec or _exit.
            unsafe {
                // First out of the way of the targets, then onto them; any failure ends the
                // child before it could run with a stray descriptor (the agent's socket).
                let mut high = Vec::with_capacity(sources.len());
                for fd in &sources {
                    let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    if h < 0 {
                        libc::_exit(127);
                    }
                    high.push(h);
                }
                for (target, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, target as i32) < 0 {
                        libc::_exit(127);
                    }
                }
                if libc::fcntl(status_fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                    libc::_exit(127);
                }
                libc::syscall(libc::SYS_close_range, status_fd as u32 + 1, u32::MAX, 0u32);
                // The agent is immune to the OOM killer (see Agent::new); its children are not.
                let oom = b"/proc/self/oom_score_adj\0";
                let fd = libc::open(oom.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(127);
                }
                libc::close(fd);
                let failure = match faas_confine::confine(None, None, &confinement) {
                    Ok(()) => faas_confine::exec(argv, env),
                    Err(f) => f,
                };
                let line = format!("{} {}", failure.stage, failure.errno);
                libc::write(status_fd, line.as_ptr().cast(), line.len());
                libc::_exit(127);
            }
        }
        drop((theirs, status_w));
        // The child closes its end by exec (close-on-exec) or writes why it could not. A
        // child that never gets there (stopped by a signal, say) is given up on.
        let mut report = String::new();
        let mut pfd = libc::pollfd { fd: status_r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor we own.
        if unsafe { libc::poll(&mut pfd, 1, EXEC_TIMEOUT_MS) } <= 0 {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(fail("exec", libc::ETIMEDOUT));
        }
        let _ = File::from(status_r).read_to_string(&mut report);
        if let Some((stage, errno)) = report.trim().rsplit_once(' ') {
            // SAFETY: reaping the child that just failed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            return Err(fail(stage, errno.parse().unwrap_or(libc::EIO)));
        }
        for fd in
            [Some(&ours.stdin), Some(&ours.stdout), ours.stderr.as_ref()].into_iter().flatten()
        {
            set_nonblocking(fd.as_raw_fd());
        }
        Ok((pid, ours))
    }

    // One argument per field of `Request::Exec`.
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &mut self,
        id: u64,
        argv: &[String],
        env: &[String],
        confine: &Confine,
        timeout_ms: Option<u64>,
        stdin: bool,
        pty: Option<PtySize>,
    ) {
        match self.spawn(argv, env, confine, pty, &[]) {
            Ok((pid, stdio)) => {
                self.by_pid.insert(pid, id);
                let terminal = pty.and_then(|_| stdio.stdout.try_clone().ok());
                self.procs.insert(
                    id,
                    Proc {
                        pid,
                        stdout: Some(stdio.stdout),
                        stderr: stdio.stderr,
                        stdin: stdin.then_some(stdio.stdin),
                        stdin_buf: Vec::new(),
                        stdin_eof: false,
                        deadline: timeout_ms
                            .map(|ms| Instant::now() + Duration::from_millis(ms).min(MAX_TIMEOUT)),
                        timed_out: false,
                        terminal,
                    },
                );
                self.send(&Event::Started { id, pid }, b"");
            }
            Err(start_error) => self.send(
                &Event::Exit {
                    id,
                    exit_code: None,
                    signal: None,
                    timed_out: false,
                    start_error: Some(start_error),
                },
                b"",
            ),
        }
    }

    fn read_proc_output(&mut self, id: u64, stream: Stream, buf: &mut [u8]) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let slot = match stream {
            Stream::Stdout => &mut p.stdout,
            Stream::Stderr => &mut p.stderr,
        };
        let Some(fd) = slot else { return };
        match read_some(fd.as_raw_fd(), buf) {
            Ok(Some(0)) | Err(_) => *slot = None,
            Ok(Some(n)) => {
                let data = buf[..n].to_vec();
                self.send(&Event::Output { id, stream }, &data);
            }
            Ok(None) => {}
        }
    }

    fn write_proc_stdin(&mut self, id: u64) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let Some(fd) = &p.stdin else { return };
        if !p.stdin_buf.is_empty() {
            match write_some(fd.as_raw_fd(), &p.stdin_buf) {
                Ok(n) => {
                    p.stdin_buf.drain(..n);
                }
                Err(_) => {
                    p.stdin_buf.clear();
                    p.stdin = None;
                    return;
                }
            }
        }
        if p.stdin_buf.is_empty() && p.stdin_eof {
            p.stdin = None;
        }
    }

    /// Reaps every exited child: ends its exec or context, or just collects an orphan.
    fn reap(&mut self) {
        let mut info = [0u8; 128];
        while let Ok(Some(n)) = read_some(self.sigfd.as_raw_fd(), &mut info) {
            if n == 0 {
                break;
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our children without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let (code, signal) = if libc::WIFEXITED(status) {
                (Some(libc::WEXITSTATUS(status)), None)
            } else {
                (None, Some(libc::WTERMSIG(status)))
            };
            if let Some(id) = self.by_pid.remove(&pid) {
                self.finish_proc(id, code, signal);
            } else if let Some(name) =
                self.contexts.iter().find(|(_, c)| c.pid == pid).map(|(n, _)| n.clone())
            {
                self.context_died(&name, code, signal);
            }
        }
    }

    /// The process exited: forward what is left in its pipes, then report the exit.
    fn finish_proc(&mut self, id: u64, exit_code: Option<i32>, signal: Option<i32>) {
        let Some(mut p) = self.procs.remove(&id) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.scratch);
        for (stream, slot) in [(Stream::Stdout, p.stdout.take()), (Stream::Stderr, p.stderr.take())]
        {
            if let Some(fd) = slot {
                let mut drained = 0;
                while let Ok(Some(n)) = read_some(fd.as_raw_fd(), &mut buf) {
                    if n == 0 || drained > MAX_DRAIN {
                        break;
                    }
                    drained += n;
                    let data = buf[..n].to_vec();
                    self.send(&Event::Output { id, stream }, &data);
                }
            }
        }
        self.scratch = buf;
        self.send(
            &Event::Exit { id, exit_code, signal, timed_out: p.timed_out, start_error: None },
            b"",
        );
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for p in self.procs.values_mut() {
            if p.deadline.is_some_and(|d| d <= now) && !p.timed_out {
                p.timed_out = true;
                p.deadline = None;
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(-p.pid, libc::SIGKILL);
                    libc::kill(p.pid, libc::SIGKILL);
                }
            }
        }
        for c in self.contexts.values_mut() {
            let Some(run) = &mut c.running else { continue };
            match run.interrupted_at {
                None if run.deadline.is_some_and(|d| d <= now) => {
                    run.timed_out = true;
                    run.interrupted_at = Some(now);
                    // SAFETY: as above.
                    unsafe { libc::kill(c.pid, libc::SIGINT) };
                }
                Some(at) if at + INTERRUPT_GRACE <= now => {
                    // SAFETY: as above. The context is lost; reaping reports it.
                    unsafe { libc::kill(c.pid, libc::SIGKILL) };
                }
                _ => {}
            }
        }
    }

    fn context_create(
        &mut self,
        id: u64,
        name: String,
        language: &str,
        env: &[String],
        confine: &Confine,
    ) {
        if self.contexts.contains_key(&name) {
            return self.error(id, format!("context {name} exists"), None);
        }
        let argv: Vec<String> = match language {
            "python" => vec!["python3".into(), "-u".into(), "-c".into(), PYTHON_DRIVER.into()],
            "javascript" => vec!["node".into(), "-e".into(), NODE_DRIVER.into()],
            other => return self.error(id, format!("no context for language {other}"), None),
        };
        let (ctl_r, ctl_w) = match pipe() {
            Ok(p) => p,
            Err(e) => return self.error(id, "pipe", Some(e)),
        };
        let (reply_r, reply_w) = match pipe() {
            Ok(p) => p,
            Err(e) => return self.error(id, "pipe", Some(e)),
        };
        match self.spawn(&argv, env, confine, None, &[ctl_r.as_raw_fd(), reply_w.as_raw_fd()]) {
            Ok((pid, Stdio { stdout, stderr, .. })) => {
                drop((ctl_r, reply_w));
                set_nonblocking(ctl_w.as_raw_fd());
                set_nonblocking(reply_r.as_raw_fd());
                self.contexts.insert(
                    name,
                    Context {
                        pid,
                        ctl: ctl_w,
                        ctl_buf: Vec::new(),
                        reply: reply_r,
                        reply_buf: Vec::new(),
                        stdout: Some(stdout),
                        stderr,
                        creating: Some(id),
                        running: None,
                    },
                );
            }
            Err(e) => {
                self.error(id, format!("starting the interpreter: {}", e.stage), Some(e.errno))
            }
        }
    }

    fn context_run(&mut self, id: u64, name: &str, code: &str, timeout_ms: Option<u64>) {
        let Some(c) = self.contexts.get_mut(name) else {
            return self.error(id, format!("no context {name}"), None);
        };
        if c.creating.is_some() || c.running.is_some() {
            return self.error(id, format!("context {name} is busy"), None);
        }
        let mut line = serde_json::to_vec(&serde_json::json!({ "code": code })).unwrap_or_default();
        line.push(b'\n');
        c.ctl_buf.extend_from_slice(&line);
        c.running = Some(Run {
            id,
            deadline: timeout_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms).min(MAX_TIMEOUT)),
            interrupted_at: None,
            timed_out: false,
        });
    }

    fn read_context_output(&mut self, name: &str, stream: Stream, buf: &mut [u8]) {
        let Some(c) = self.contexts.get_mut(name) else {
            return;
        };
        let slot = match stream {
            Stream::Stdout => &mut c.stdout,
            Stream::Stderr => &mut c.stderr,
        };
        let Some(fd) = slot else { return };
        match read_some(fd.as_raw_fd(), buf) {
            Ok(Some(0)) | Err(_) => *slot = None,
            Ok(Some(n)) => {
                // Output between runs (a thread still printing) belongs to no one.
                if let Some(run) = &c.running {
                    let (id, data) = (run.id, buf[..n].to_vec());
                    self.send(&Event::Output { id, stream }, &data);
                }
            }
            Ok(None) => {}
        }
    }

    /// Drains a context's output pipes into the current run (its reply has arrived, so
    /// everything it printed is already in them).
    fn drain_context(&mut self, name: &str) {
        let mut buf = vec![0u8; CHUNK];
        for stream in [Stream::Stdout, Stream::Stderr] {
            let mut drained = 0;
            while drained <= MAX_DRAIN {
                let Some(c) = self.contexts.get_mut(name) else {
                    return;
                };
                let slot = match stream {
                    Stream::Stdout => &c.stdout,
                    Stream::Stderr => &c.stderr,
                };
                let Some(fd) = slot else { break };
                match read_some(fd.as_raw_fd(), &mut buf) {
                    Ok(Some(n)) if n > 0 => {
                        drained += n;
                        if let Some(run) = &c.running {
                            let (id, data) = (run.id, buf[..n].to_vec());
                            self.send(&Event::Output { id, stream }, &data);
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    fn read_context_reply(&mut self, name: &str, buf: &mut [u8]) {
        let Some(c) = self.contexts.get_mut(name) else {
            return;
        };
        match read_some(c.reply.as_raw_fd(), buf) {
            Ok(Some(n)) if n > 0 => c.reply_buf.extend_from_slice(&buf[..n]),
            Ok(None) => return,
            // EOF: the interpreter closed its reply pipe (or is exiting). Without it the
            // context is useless; ending it lets reaping report it and clear it away.
            _ => {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(c.pid, libc::SIGKILL) };
                return;
            }
        }
        while let Some(pos) =
            self.contexts.get(name).and_then(|c| c.reply_buf.iter().position(|b| *b == b'\n'))
        {
            let Some(c) = self.contexts.get_mut(name) else {
                return;
            };
            let line: Vec<u8> = c.reply_buf.drain(..=pos).collect();
            let reply: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
            if reply.get("ready").is_some() {
                if let Some(id) = c.creating.take() {
                    self.send(&Event::ContextReady { id }, b"");
                }
                continue;
            }
            self.drain_context(name);
            let Some(c) = self.contexts.get_mut(name) else {
                return;
            };
            let Some(run) = c.running.take() else {
                continue;
            };
            let exit_code = reply.get("exit_code").and_then(|v| v.as_i64()).unwrap_or(1) as i32;
            self.send(
                &Event::Exit {
                    id: run.id,
                    exit_code: Some(exit_code),
                    signal: None,
                    timed_out: run.timed_out,
                    start_error: None,
                },
                b"",
            );
        }
    }

    fn context_died(&mut self, name: &str, exit_code: Option<i32>, signal: Option<i32>) {
        self.drain_context(name);
        let Some(c) = self.contexts.remove(name) else {
            return;
        };
        if let Some(id) = c.creating {
            self.error(
                id,
                format!("the interpreter exited ({exit_code:?}, signal {signal:?})"),
                None,
            );
        }
        if let Some(run) = c.running {
            self.send(
                &Event::Exit {
                    id: run.id,
                    exit_code,
                    signal,
                    timed_out: run.timed_out,
                    start_error: None,
                },
                b"",
            );
        }
    }

    /// Streams file reads a chunk at a time while the host keeps up.
    fn pump_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.reads.keys().copied().collect();
        let mut buf = std::mem::take(&mut self.scratch);
        for id in ids {
            while self.output_room() {
                let Some((file, total)) = self.reads.get_mut(&id) else {
                    break;
                };
                match file.read(&mut buf) {
                    Ok(0) => {
                        let size = *total;
                        self.reads.remove(&id);
                        self.send(&Event::Done { id, size }, b"");
                        break;
                    }
                    Ok(n) => {
                        *total += n as u64;
                        let data = buf[..n].to_vec();
                        self.send(&Event::FileData { id }, &data);
                    }
                    Err(e) => {
                        self.reads.remove(&id);
                        self.error(id, format!("read: {e}"), e.raw_os_error());
                        break;
                    }
                }
            }
        }
        self.scratch = buf;
    }

    fn connect(&mut self, id: u64, port: u16) {
        // SAFETY: a non-blocking socket and a connect to a stack-allocated sockaddr_in.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                return self.error(id, os_error("socket"), Some(faas_confine::errno()));
            }
            let sock = OwnedFd::from_raw_fd(fd);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
                sin_zero: [0; 8],
            };
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let errno = faas_confine::errno();
            if rc < 0 && errno != libc::EINPROGRESS {
                return self.error(
                    id,
                    format!("connect to port {port}: {}", std::io::Error::from_raw_os_error(errno)),
                    Some(errno),
                );
            }
            self.tcp.insert(id, Tcp { sock, connecting: rc < 0, out: Vec::new(), closing: false });
            if rc == 0 {
                self.send(&Event::Connected { id }, b"");
            }
        }
    }

    fn tcp_ready(&mut self, id: u64, revents: libc::c_short, buf: &mut [u8]) {
        let Some(t) = self.tcp.get_mut(&id) else {
            return;
        };
        let fd = t.sock.as_raw_fd();
        if t.connecting {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into a correctly sized int.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if err != 0 {
                self.tcp.remove(&id);
                let message = format!("connect: {}", std::io::Error::from_raw_os_error(err));
                return self.error(id, message, Some(err));
            }
            t.connecting = false;
            self.send(&Event::Connected { id }, b"");
            return;
        }
        if revents & libc::POLLOUT != 0 && !t.out.is_empty() {
            match write_some(fd, &t.out) {
                Ok(n) => {
                    t.out.drain(..n);
                }
                Err(_) => {
                    self.tcp.remove(&id);
                    return self.send(&Event::TcpClosed { id }, b"");
                }
            }
            if t.out.is_empty() && t.closing {
                // SAFETY: shutdown on a socket we own.
                unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match read_some(fd, buf) {
                Ok(Some(0)) | Err(_) => {
                    self.tcp.remove(&id);
                    self.send(&Event::TcpClosed { id }, b"");
                }
                Ok(Some(n)) => {
                    let data = buf[..n].to_vec();
                    self.send(&Event::TcpData { id }, &data);
                }
                Ok(None) => {}
            }
        }
    }
}

use std::os::unix::fs::MetadataExt;

/// Capability numbers of <linux/capability.h>.
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// Sets the permitted and effective capability sets to exactly `caps`.
fn keep_capabilities(caps: &[u32]) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut data = [Data::default(); 2];
    for cap in caps {
        let (word, bit) = ((*cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let header = Header { version: VERSION_3, pid: 0 };
    // SAFETY: capset with a v3 header and two data words, as the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Points descriptors 0, 1 and 2 at the sandbox's own /dev/null once start-up went well:
/// until then they are the server's (start-up errors go to its log), but a descriptor to a
/// host file would tie every checkpoint of the sandbox to that file.
fn detach_stdio() {
    // SAFETY: open and dup2 on descriptors this process owns.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
}

/// Runs `f` with the filesystem identity of the sandbox user: the agent is root, and a
/// path a user controls must never lead it to files the user could not reach (the host's
/// /proc above all). Files it creates belong to the user without a chown.
fn as_user<T>(uid: u32, gid: u32, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    // SAFETY: setfsuid/setfsgid only change this (single) thread's filesystem identity.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
    let result = f();
    // SAFETY: as above, back to root's.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
    result
}

/// A new terminal pair of `size`: (controlling side for the agent, the process's side).
/// The terminal is opened with the user's filesystem identity, so devpts makes the user its
/// owner, as a login would.
fn open_pty(uid: u32, gid: u32, size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let os = std::io::Error::last_os_error;
    let controller = as_user(uid, gid, || {
        // SAFETY: open of a constant path.
        let fd = unsafe {
            libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
        };
        // SAFETY: a descriptor we just opened and own.
        if fd < 0 { Err(os()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
    })?;
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on our own terminal with valid arguments.
    unsafe {
        if libc::ioctl(controller.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(os());
        }
    }
    set_window_size(&controller, size)?;
    // SAFETY: as above; TIOCGPTPEER returns a new descriptor of the other side.
    let user = unsafe {
        libc::ioctl(
            controller.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if user < 0 {
        return Err(os());
    }
    // SAFETY: the new descriptor is ours.
    Ok((controller, unsafe { OwnedFd::from_raw_fd(user) }))
}

fn set_window_size(terminal: &OwnedFd, size: PtySize) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    if unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a regular file without following a final symlink and without blocking (a FIFO
/// planted at the path would otherwise stall the agent).
fn open_regular(path: &str, flags: i32, mode: u32) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(flags & libc::O_ACCMODE == libc::O_RDONLY)
        .write(flags & libc::O_ACCMODE == libc::O_WRONLY)
        .create(flags & libc::O_CREAT != 0)
        .truncate(flags & libc::O_TRUNC != 0)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

/// A directory's entries, sorted by name; symlinks are reported, not followed.
fn list_dir(path: &str) -> std::io::Result<Vec<protocol::DirEntry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let kind = if meta.is_symlink() {
            "symlink"
        } else if meta.is_dir() {
            "dir"
        } else if meta.is_file() {
            "file"
        } else {
            "other"
        };
        entries.push(protocol::DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind.into(),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            modified_ms: (meta.mtime().max(0) as u64) * 1000
                + (meta.mtime_nsec().max(0) as u64) / 1_000_000,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}
