//! The agent binary driven over its control pipes, outside any sandbox (root needed: it
//! confines the processes it starts). Covers the requests no HTTP route uses yet: file
//! reads, TCP relays, signals, pings, pause and resume.

use std::io::{PipeReader, PipeWriter, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faas_agent::protocol::{self, Confine, Event, PtySize, Request, Stream};

struct Agent {
    child: Child,
    requests: PipeWriter,
    events: PipeReader,
    buf: Vec<u8>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Agent {
    fn start() -> Self {
        let (agent_requests, requests) = std::io::pipe().expect("pipe");
        let (events, agent_events) = std::io::pipe().expect("pipe");
        let (agent_requests, agent_events) =
            (OwnedFd::from(agent_requests), OwnedFd::from(agent_events));
        let fds = [
            (agent_requests.as_raw_fd(), faas_agent::runtime::REQUESTS_FD),
            (agent_events.as_raw_fd(), faas_agent::runtime::EVENTS_FD),
        ];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_faas-agent"));
        cmd.stdin(Stdio::null());
        // SAFETY: only fcntl and dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way of the targets first, then onto them.
                let high: Vec<i32> =
                    fds.iter().map(|(fd, _)| libc::fcntl(*fd, libc::F_DUPFD, 64)).collect();
                for (fd, (_, target)) in high.iter().zip(fds) {
                    if *fd < 0 || libc::dup2(*fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn agent");
        drop((agent_requests, agent_events));
        let mut agent = Self { child, requests, events, buf: Vec::new() };
        assert_eq!(agent.next().0, Event::Hello { version: protocol::VERSION, next_id: 1 });
        agent
    }

    fn send(&mut self, request: &Request, data: &[u8]) {
        let mut frame = Vec::new();
        protocol::encode(request, data, &mut frame);
        self.requests.write_all(&frame).expect("send");
    }

    /// Whether an event arrives within `wait`.
    fn quiet_for(&mut self, wait: Duration) -> bool {
        protocol::decode(&self.buf).expect("valid frame").is_none() && !self.readable(wait)
    }

    fn readable(&self, wait: Duration) -> bool {
        let mut pfd =
            libc::pollfd { fd: self.events.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) > 0 }
    }

    fn next(&mut self) -> (Event, Vec<u8>) {
        loop {
            if let Some((used, header, data)) = protocol::decode(&self.buf).expect("valid frame") {
                let event = serde_json::from_slice(header).expect("event");
                let data = data.to_vec();
                self.buf.drain(..used);
                return (event, data);
            }
            assert!(self.readable(Duration::from_secs(20)), "no event within 20 s");
            let mut chunk = [0u8; 65536];
            let n = self.events.read(&mut chunk).expect("read");
            assert!(n > 0, "the agent hung up");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn confine(workdir: &str) -> Confine {
    Confine {
        uid: 1000,
        gid: 1000,
        workdir: workdir.into(),
        max_file_bytes: 1 << 30,
        max_open_files: 1024,
    }
}

#[test]
fn files_round_trip_through_the_agent() {
    if !is_root() {
        eprintln!("SKIPPED: the agent needs root to confine what it starts");
        return;
    }
    let dir = std::env::temp_dir().join(format!("faas-agent-test-{}", std::process::id()));
    let path = dir.join("nested/data.bin").to_string_lossy().into_owned();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut agent = Agent::start();
    agent.send(
        &Request::FileWrite { id: 1, path: path.clone(), mode: 0o640, uid: 1000, gid: 1000 },
        &[],
    );
    for chunk in content.chunks(protocol::CHUNK) {
        agent.send(&Request::FileChunk { id: 1 }, chunk);
    }
    agent.send(&Request::FileEnd { id: 1 }, &[]);
    assert_eq!(agent.next().0, Event::Done { id: 1, size: content.len() as u64 });
    let meta = std::fs::metadata(&path).expect("written");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
    agent.send(&Request::FileRead { id: 2, path: path.clone(), uid: 1000, gid: 1000 }, &[]);
    let mut read = Vec::new();
    loop {
        match agent.next() {
            (Event::FileData { id: 2 }, data) => read.extend_from_slice(&data),
            (Event::Done { id: 2, size }, _) => {
                assert_eq!(size, content.len() as u64);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(read, content);
    agent.send(
        &Request::FileRead {
            id: 3,
            path: dir.join("missing").to_string_lossy().into_owned(),
            uid: 1000,
            gid: 1000,
        },
        &[],
    );
    assert!(matches!(agent.next().0, Event::Error { id: 3, errno: Some(libc::ENOENT), .. }));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn tcp_connections_are_relayed() {
    if !is_root() {
        eprintln!("SKIPPED: the agent needs root to confine what it starts");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf.to_ascii_uppercase()).expect("write");
    });
    let mut agent = Agent::start();
    agent.send(&Request::Connect { id: 1, port }, &[]);
    assert_eq!(agent.next().0, Event::Connected { id: 1 });
    agent.send(&Request::TcpData { id: 1 }, b"hello");
    let mut echoed = Vec::new();
    while echoed.len() < 5 {
        match agent.next() {
            (Event::TcpData { id: 1 }, data) => echoed.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"HELLO");
    server.join().expect("server");
    assert_eq!(agent.next().0, Event::TcpClosed { id: 1 });
    // A closed port is an error, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    agent.send(&Request::Connect { id: 2, port: closed }, &[]);
    assert!(matches!(agent.next().0, Event::Error { id: 2, errno: Some(libc::ECONNREFUSED), .. }));
}

#[test]
fn processes_take_signals_and_report_how_they_ended() {
    if !is_root() {
        eprintln!("SKIPPED: the agent needs root to confine what it starts");
        return;
    }
    let mut agent = Agent::start();
    agent.send(&Request::Ping { id: 1 }, &[]);
    assert_eq!(agent.next().0, Event::Pong { id: 1 });
    let argv = vec!["/bin/sh".into(), "-c".into(), "echo ready; exec sleep 30".into()];
    let env = vec!["PATH=/usr/bin:/bin".into()];
    agent.send(
        &Request::Exec {
            id: 2,
            argv,
            env,
            confine: confine("/tmp"),
            timeout_ms: None,
            stdin: false,
            pty: None,
        },
        &[],
    );
    assert!(matches!(agent.next().0, Event::Started { id: 2, .. }));
    assert_eq!(
        agent.next(),
        (Event::Output { id: 2, stream: Stream::Stdout }, b"ready\n".to_vec())
    );
    agent.send(&Request::Signal { id: 2, signal: libc::SIGTERM }, &[]);
    let (exit, _) = agent.next();
    assert_eq!(
        exit,
        Event::Exit {
            id: 2,
            exit_code: None,
            signal: Some(libc::SIGTERM),
            timed_out: false,
            start_error: None
        }
    );
    // A program that is not there never starts, and says why.
    let argv = vec!["/no/such/program".into()];
    agent.send(
        &Request::Exec {
            id: 3,
            argv,
            env: vec![],
            confine: confine("/tmp"),
            timeout_ms: None,
            stdin: false,
            pty: None,
        },
        &[],
    );
    match agent.next().0 {
        Event::Exit { id: 3, start_error: Some(e), .. } => assert_eq!(e.errno, libc::ENOENT),
        other => panic!("unexpected {other:?}"),
    }
    // The agent's own descriptor never leaks into what it starts.
    let argv = vec!["/bin/sh".into(), "-c".into(), "ls /proc/self/fd | wc -l".into()];
    agent.send(
        &Request::Exec {
            id: 4,
            argv,
            env: vec![],
            confine: confine("/tmp"),
            timeout_ms: Some(5000),
            stdin: false,
            pty: None,
        },
        &[],
    );
    let mut out = Vec::new();
    loop {
        match agent.next() {
            (Event::Output { id: 4, .. }, data) => out.extend_from_slice(&data),
            (Event::Exit { id: 4, exit_code, .. }, _) => {
                assert_eq!(exit_code, Some(0));
                break;
            }
            _ => {}
        }
    }
    // 0, 1, 2 and the directory ls reads.
    assert_eq!(String::from_utf8_lossy(&out).trim(), "4");
}

#[test]
fn file_requests_never_act_with_root_powers() {
    if !is_root() {
        eprintln!("SKIPPED: the agent needs root to confine what it starts");
        return;
    }
    let mut agent = Agent::start();
    // Files only root may touch stay out of reach: file requests act as the sandbox user.
    // (/proc/sys checks the effective uid instead; sandboxes mount it read-only.)
    let dir = std::env::temp_dir().join(format!("faas-agent-root-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "root only").expect("write");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let path = secret.to_string_lossy().into_owned();
    agent.send(&Request::FileRead { id: 1, path: path.clone(), uid: 1000, gid: 1000 }, &[]);
    assert!(matches!(agent.next().0, Event::Error { id: 1, errno: Some(libc::EACCES), .. }));
    let inside = dir.join("planted").to_string_lossy().into_owned();
    agent.send(&Request::FileWrite { id: 2, path: inside, mode: 0o644, uid: 1000, gid: 1000 }, &[]);
    assert!(matches!(agent.next().0, Event::Error { id: 2, errno: Some(libc::EACCES), .. }));
    agent.send(
        &Request::FileDelete { id: 3, path: path.clone(), recursive: false, uid: 1000, gid: 1000 },
        &[],
    );
    assert!(matches!(agent.next().0, Event::Error { id: 3, errno: Some(libc::EACCES), .. }));
    assert!(secret.exists());
    std::fs::remove_dir_all(&dir).ok();
    // A FIFO planted where a file is expected is refused, not waited on.
    let fifo = std::env::temp_dir().join(format!("faas-agent-fifo-{}", std::process::id()));
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: mkfifo on a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let path = fifo.to_string_lossy().into_owned();
    agent.send(&Request::FileRead { id: 4, path: path.clone(), uid: 1000, gid: 1000 }, &[]);
    assert!(matches!(agent.next().0, Event::Error { id: 4, errno: Some(libc::EINVAL), .. }));
    agent.send(&Request::Ping { id: 5 }, &[]);
    assert_eq!(agent.next().0, Event::Pong { id: 5 }, "the agent must still answer");
    std::fs::remove_file(fifo).ok();
    // Its own capabilities: only setuid, setgid and kill remain.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).expect("status");
    let eff =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff").trim().to_owned();
    assert_eq!(
        u64::from_str_radix(&eff, 16).expect("hex"),
        (1 << 5) | (1 << 6) | (1 << 7),
        "CapEff {eff}"
    );
}

#[test]
fn a_process_can_run_on_a_terminal_that_resizes() {
    if !is_root() {
        eprintln!("SKIPPED: the agent needs root to confine what it starts");
        return;
    }
    let mut agent = Agent::start();
    let script = "tty; stty size; read line; stty size";
    agent.send(
        &Request::Exec {
            id: 1,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            confine: confine("/tmp"),
            timeout_ms: Some(10_000),
            stdin: true,
            pty: Some(PtySize { rows: 40, cols: 100 }),
        },
        &[],
    );
    assert!(matches!(agent.next().0, Event::Started { id: 1, .. }));
    let mut out = String::new();
    let mut resized = false;
    let exit_code = loop {
        match agent.next() {
            (Event::Output { id: 1, stream }, data) => {
                assert_eq!(stream, Stream::Stdout, "a terminal carries both streams");
                out.push_str(&String::from_utf8_lossy(&data));
                if !resized && out.contains("40 100") {
                    resized = true;
                    agent.send(
                        &Request::Resize { id: 1, size: PtySize { rows: 30, cols: 120 } },
                        &[],
                    );
                    agent.send(&Request::Stdin { id: 1, eof: false }, b"go\n");
                }
            }
            (Event::Exit { id: 1, exit_code, .. }, _) => break exit_code,
            _ => {}
        }
    };
    assert_eq!(exit_code, Some(0), "{out}");
    assert!(out.starts_with("/dev/pts/"), "{out}");
    // Lines end in CR LF on a terminal; the typed line is echoed.
    assert!(out.contains("40 100\r\n"), "{out}");
    assert!(out.contains("go\r\n30 120\r\n"), "{out}");
}

#[test]
fn a_paused_agent_says_nothing_and_a_restored_one_forgets_its_old_host() {
    if !is_root() {
        eprintln!("SKIPPED: the agent needs root to confine what it starts");
        return;
    }
    let mut agent = Agent::start();
    // A process that prints every 50 ms.
    let argv = ["/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done"];
    let exec = Request::Exec {
        id: 7,
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        confine: confine("/tmp"),
        timeout_ms: Some(20_000),
        stdin: false,
        pty: None,
    };
    agent.send(&exec, &[]);
    assert!(matches!(agent.next().0, Event::Started { id: 7, .. }));
    agent.send(&Request::Pause { id: 8 }, &[]);
    loop {
        match agent.next().0 {
            Event::Paused { id: 8 } => break,
            Event::Output { id: 7, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(agent.quiet_for(Duration::from_millis(300)), "a paused agent sent an event");
    agent.send(&Request::Resume { id: 9, restored: false }, &[]);
    assert_eq!(agent.next().0, Event::Done { id: 9, size: 0 });
    assert!(matches!(agent.next().0, Event::Output { id: 7, .. }), "output flows again");
    // What a restored copy hears first on its new pipes: its old requests go quiet.
    agent.send(&Request::Resume { id: 0, restored: true }, &[]);
    let hello = loop {
        match agent.next().0 {
            Event::Output { id: 7, .. } => {}
            other => break other,
        }
    };
    assert_eq!(hello, Event::Hello { version: protocol::VERSION, next_id: 10 });
    assert!(agent.quiet_for(Duration::from_millis(300)), "events of old requests went on");
    agent.send(&Request::Ping { id: 10 }, &[]);
    assert_eq!(agent.next().0, Event::Pong { id: 10 });
}
