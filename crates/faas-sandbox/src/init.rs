//! Code that runs inside a new sandbox, as PID 1 of its own pid namespace, right after the
//! launcher cloned it. It builds the sandbox's world (cgroup, mounts, hostname, loopback),
//! forks the payload, and reports on the status pipe how the payload ended. When PID 1
//! exits the kernel kills everything else in the namespace, so nothing outlives a run.
//!
//! Everything here runs in a forked copy of the single-threaded launcher and ends in
//! `_exit`; errors are written to the status pipe as one line each:
//! `setup <stage> <errno>` (building the sandbox failed), `payload <stage> <errno>` (the
//! payload could not be started), `exit <code>` or `signal <number>` (how it ended).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::seccomp::Filters;
use crate::spec::{LaunchMessage, LaunchSpec};

/// Where the sandbox's file descriptors sit once arranged.
const FD_STATUS: i32 = 3;
const FD_BLOB: i32 = 4;
const FD_FIRST_CGROUP: i32 = 5;

/// What the launcher prepared once for all sandboxes.
pub(crate) struct Context {
    pub filters: Filters,
    pub last_cap: u32,
    /// Mount point of each sandbox's scratch tmpfs, inside its private mount namespace.
    pub scratch: PathBuf,
}

/// A failed step: which one, and the errno.
struct Failure {
    stage: &'static str,
    errno: i32,
}

type Step = Result<(), Failure>;

fn check(ret: libc::c_int, stage: &'static str) -> Step {
    if ret < 0 {
        Err(Failure {
            stage,
            errno: errno(),
        })
    } else {
        Ok(())
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cstr(bytes: &[u8]) -> CString {
    // Paths and strings were validated by the server: no NUL inside.
    CString::new(bytes).unwrap_or_default()
}

fn cpath(path: &Path) -> CString {
    cstr(path.as_os_str().as_bytes())
}

fn report(line: &str) {
    // SAFETY: writes a valid buffer to a descriptor we own.
    unsafe { libc::write(FD_STATUS, line.as_ptr().cast(), line.len()) };
}

fn fail(kind: &str, failure: Failure) -> ! {
    report(&format!("{kind} {} {}\n", failure.stage, failure.errno));
    // SAFETY: _exit never returns and skips atexit handlers that belong to the launcher.
    unsafe { libc::_exit(1) }
}

/// Entry point in the cloned child. `fds` are the descriptors received with `msg`.
pub(crate) fn run(ctx: &Context, msg: &LaunchMessage, fds: &[i32]) -> ! {
    if arrange_fds(msg, fds).is_err() {
        // No status pipe to report on: the server sees EOF without a result.
        // SAFETY: see fail().
        unsafe { libc::_exit(1) }
    }
    if let Err(f) = setup(ctx, &msg.spec, msg.cgroup_fds) {
        fail("setup", f);
    }
    // SAFETY: the launcher is single-threaded, so the child of this fork is consistent.
    match unsafe { libc::fork() } {
        -1 => fail(
            "setup",
            Failure {
                stage: "fork",
                errno: errno(),
            },
        ),
        0 => payload(ctx, &msg.spec),
        pid => supervise(pid),
    }
}

/// Moves the received descriptors to fixed numbers and closes everything else the launcher
/// had open (its socket above all).
fn arrange_fds(msg: &LaunchMessage, fds: &[i32]) -> Step {
    let mut targets = vec![0, 1, 2, FD_STATUS];
    if msg.has_blob {
        targets.push(FD_BLOB);
    }
    targets.extend((0..msg.cgroup_fds as i32).map(|i| FD_FIRST_CGROUP + i));
    if targets.len() != fds.len() {
        return Err(Failure {
            stage: "fds",
            errno: libc::EINVAL,
        });
    }
    // First out of the way of the targets, then onto them.
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: fcntl on descriptors we received.
        let h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64) };
        check(h, "fds")?;
        high.push(h);
    }
    for (h, t) in high.iter().zip(&targets) {
        // SAFETY: dup2 onto small numbers; whatever was there belonged to the launcher.
        check(unsafe { libc::dup2(*h, *t) }, "fds")?;
    }
    let first_free = FD_FIRST_CGROUP + msg.cgroup_fds as i32;
    if !msg.has_blob {
        // SAFETY: closing a launcher descriptor in our copy of the table.
        unsafe { libc::close(FD_BLOB) };
    }
    // SAFETY: closes our copies of every other descriptor.
    unsafe { libc::syscall(libc::SYS_close_range, first_free as u32, u32::MAX, 0u32) };
    // The status pipe must not survive the payload's exec: only PID 1 keeps it, so its EOF
    // tells the server that PID 1, and with it the whole sandbox, is gone.
    // SAFETY: fcntl on our own descriptor.
    check(
        unsafe { libc::fcntl(FD_STATUS, libc::F_SETFD, libc::FD_CLOEXEC) },
        "fds",
    )
}

fn setup(ctx: &Context, spec: &LaunchSpec, cgroup_fds: usize) -> Step {
    // SAFETY (whole function): plain syscalls on valid C strings and descriptors we own.
    unsafe {
        for i in 0..cgroup_fds as i32 {
            // "0" moves the writing process; our pid here would be 1, not the host's.
            check(
                libc::write(FD_FIRST_CGROUP + i, b"0".as_ptr().cast(), 1) as i32,
                "cgroup join",
            )?;
            libc::close(FD_FIRST_CGROUP + i);
        }
        check(libc::unshare(libc::CLONE_NEWCGROUP), "cgroup namespace")?;
        // If the launcher dies, so does this sandbox (and with PID 1, all of it).
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
            "pdeathsig",
        )?;
        // The launcher ignores SIGCHLD (the kernel reaps for it); PID 1 must wait itself.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::umask(0);
    }
    mount_root(ctx, spec)?;
    let hostname = spec.hostname.as_bytes();
    // SAFETY: valid buffer and length.
    check(
        unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) },
        "hostname",
    )?;
    loopback_up()?;
    write_files(spec)?;
    make_workdir(spec)
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
    stage: &'static str,
) -> Step {
    let (source, target, fstype, data) = (
        cstr(source.as_bytes()),
        cpath(target),
        cstr(fstype.as_bytes()),
        cstr(data.as_bytes()),
    );
    // SAFETY: all pointers are valid C strings for the duration of the call.
    check(
        unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                if data.is_empty() {
                    std::ptr::null()
                } else {
                    data.as_ptr().cast()
                },
            )
        },
        stage,
    )
}

fn mkdir(path: &Path, mode: libc::mode_t, stage: &'static str) -> Step {
    let p = cpath(path);
    // SAFETY: valid C string.
    if unsafe { libc::mkdir(p.as_ptr(), mode) } < 0 && errno() != libc::EEXIST {
        return Err(Failure {
            stage,
            errno: errno(),
        });
    }
    Ok(())
}

/// Builds the root filesystem in the private mount namespace and pivots into it:
/// tmpfs scratch -> overlay(image, scratch) -> read-only binds, /proc, /dev, /tmp.
fn mount_root(ctx: &Context, spec: &LaunchSpec) -> Step {
    use libc::{
        MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
    };
    mount(
        "none",
        Path::new("/"),
        "",
        MS_REC | MS_PRIVATE,
        "",
        "make mounts private",
    )?;
    let scratch = &ctx.scratch;
    let size = spec.scratch_bytes;
    mount(
        "tmpfs",
        scratch,
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        &format!("size={size},mode=0755"),
        "scratch tmpfs",
    )?;
    let (upper, work, root) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("root"),
    );
    for dir in [&upper, &work, &root] {
        mkdir(dir, 0o755, "scratch dirs")?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.rootfs.display(),
        upper.display(),
        work.display()
    );
    mount(
        "overlay",
        &root,
        "overlay",
        MS_NOSUID,
        &options,
        "overlay root",
    )?;
    for bind in &spec.binds {
        let target = root.join(bind.target.trim_start_matches('/'));
        mount(
            &bind.source.to_string_lossy(),
            &target,
            "",
            MS_BIND | MS_REC,
            "",
            "bind mount",
        )?;
        let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
        mount("none", &target, "", flags, "", "bind mount read-only")?;
    }
    mount(
        "proc",
        &root.join("proc"),
        "proc",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
        "proc",
    )?;
    let dev = root.join("dev");
    mount(
        "tmpfs",
        &dev,
        "tmpfs",
        MS_NOSUID | MS_NOEXEC,
        "size=65536,mode=0755",
        "dev tmpfs",
    )?;
    make_devices(&dev)?;
    let pts = dev.join("pts");
    mkdir(&pts, 0o755, "dev/pts")?;
    mount(
        "devpts",
        &pts,
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
        "devpts",
    )?;
    let shm = dev.join("shm");
    mkdir(&shm, 0o1777, "dev/shm")?;
    let tmpfs_opts = format!("size={size},mode=1777");
    mount(
        "tmpfs",
        &shm,
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        &tmpfs_opts,
        "dev/shm",
    )?;
    mount(
        "tmpfs",
        &root.join("tmp"),
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        &tmpfs_opts,
        "tmp",
    )?;

    let root_c = cpath(&root);
    let dot = cstr(b".");
    // SAFETY: valid C strings; pivot_root(".", ".") stacks the old root under the new one,
    // and the detach removes it from this namespace.
    unsafe {
        check(libc::chdir(root_c.as_ptr()), "chdir root")?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as i32,
            "pivot_root",
        )?;
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            "detach old root",
        )?;
        check(libc::chdir(cstr(b"/").as_ptr()), "chdir /")?;
    }
    Ok(())
}

/// The minimal /dev: character devices, the pty multiplexer and the usual links.
fn make_devices(dev: &Path) -> Step {
    const DEVICES: [(&str, u32, u32); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in DEVICES {
        let path = cpath(&dev.join(name));
        // SAFETY: valid C string; umask is 0 so the mode is exact.
        check(
            unsafe {
                libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                )
            },
            "mknod",
        )?;
    }
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(|e| Failure {
            stage: "dev links",
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })?;
    }
    Ok(())
}

/// A new network namespace has only a loopback interface, and it is down.
fn loopback_up() -> Step {
    // SAFETY: an ioctl pair on a socket we own, with a zeroed ifreq naming "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(sock, "loopback socket")?;
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        check(
            libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr),
            "loopback flags",
        )?;
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr), "loopback up")?;
        libc::close(sock);
    }
    Ok(())
}

/// Writes the request's files (code, for example) from the blob. Runs after pivot_root, so
/// every path, symlinks included, resolves inside the sandbox.
fn write_files(spec: &LaunchSpec) -> Step {
    for file in &spec.files {
        let path = Path::new(&file.path);
        if let Some(parent) = path.parent() {
            mkdir_owned(parent, spec.uid, spec.gid)?;
        }
        let mut content = vec![0u8; file.len as usize];
        // SAFETY: reads into a buffer of exactly `len` bytes.
        let n = unsafe {
            libc::pread(
                FD_BLOB,
                content.as_mut_ptr().cast(),
                content.len(),
                file.offset as libc::off_t,
            )
        };
        if n < 0 || n as u64 != file.len {
            return Err(Failure {
                stage: "read blob",
                errno: if n < 0 { errno() } else { libc::EIO },
            });
        }
        let c = cpath(path);
        // SAFETY: valid C string and buffer; the descriptor is closed before returning.
        unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                file.mode,
            );
            check(fd, "write file")?;
            let written = libc::write(fd, content.as_ptr().cast(), content.len());
            let owned = libc::fchown(fd, spec.uid, spec.gid);
            libc::close(fd);
            if written < 0 || written as usize != content.len() || owned < 0 {
                return Err(Failure {
                    stage: "write file",
                    errno: errno(),
                });
            }
        }
    }
    Ok(())
}

/// `mkdir -p`, giving directories it creates to the sandbox user.
fn mkdir_owned(path: &Path, uid: u32, gid: u32) -> Step {
    let mut current = PathBuf::from("/");
    for part in path.components().skip(1) {
        current.push(part);
        let c = cpath(&current);
        // SAFETY: valid C string.
        unsafe {
            if libc::mkdir(c.as_ptr(), 0o755) == 0 {
                check(libc::chown(c.as_ptr(), uid, gid), "chown dir")?;
            } else if errno() != libc::EEXIST {
                return Err(Failure {
                    stage: "mkdir",
                    errno: errno(),
                });
            }
        }
    }
    Ok(())
}

fn make_workdir(spec: &LaunchSpec) -> Step {
    mkdir_owned(Path::new(&spec.workdir), spec.uid, spec.gid)
}

/// PID 1 after the fork: reap everything, report the payload's end, exit. Exiting kills
/// whatever the payload left behind (daemons, background children).
fn supervise(payload: libc::pid_t) -> ! {
    // SAFETY: closing our copies of the payload's stdio; waitpid on our children.
    unsafe {
        for fd in [0, 1, 2] {
            libc::close(fd);
        }
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == payload {
                if libc::WIFEXITED(status) {
                    report(&format!("exit {}\n", libc::WEXITSTATUS(status)));
                } else if libc::WIFSIGNALED(status) {
                    report(&format!("signal {}\n", libc::WTERMSIG(status)));
                }
                break;
            }
            if pid < 0 && errno() != libc::EINTR {
                break;
            }
        }
        libc::_exit(0)
    }
}

/// The payload: drop every privilege, then exec. Never returns.
fn payload(ctx: &Context, spec: &LaunchSpec) -> ! {
    if let Err(f) = drop_privileges(ctx, spec) {
        fail("payload", f);
    }
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a.as_bytes())).collect();
    let env: Vec<CString> = spec.env.iter().map(|e| cstr(e.as_bytes())).collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let program = spec.argv.first().map(String::as_str).unwrap_or_default();
    let candidates: Vec<CString> = if program.contains('/') {
        vec![cstr(program.as_bytes())]
    } else {
        let path = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cpath(&Path::new(d).join(OsStr::new(program))))
            .collect()
    };
    let mut last = libc::ENOENT;
    for candidate in &candidates {
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(candidate.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        let e = errno();
        // Like execvp: remember a permission error, keep looking after "not found".
        if e != libc::ENOENT && e != libc::ENOTDIR {
            last = e;
        }
    }
    fail(
        "payload",
        Failure {
            stage: "exec",
            errno: last,
        },
    )
}

fn drop_privileges(ctx: &Context, spec: &LaunchSpec) -> Step {
    // SAFETY (whole function): plain syscalls on valid arguments.
    unsafe {
        libc::syscall(libc::SYS_close_range, FD_BLOB as u32, u32::MAX, 0u32);
        check(libc::setsid(), "setsid")?;
        libc::umask(0o022);
        let workdir = cstr(spec.workdir.as_bytes());
        check(libc::chdir(workdir.as_ptr()), "chdir workdir")?;
        let limits = [
            (libc::RLIMIT_NOFILE, spec.max_open_files),
            (libc::RLIMIT_FSIZE, spec.max_file_bytes),
            (libc::RLIMIT_CORE, 0),
        ];
        for (resource, value) in limits {
            let rlim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            check(libc::setrlimit(resource, &rlim), "rlimit")?;
        }
        // The bounding set needs CAP_SETPCAP, so it goes before the uid change; the uid
        // change then clears the permitted and effective sets.
        for cap in 0..=ctx.last_cap {
            check(
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0),
                "drop capabilities",
            )?;
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ),
            "clear ambient capabilities",
        )?;
        let groups = [spec.gid];
        check(libc::setgroups(1, groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(spec.gid, spec.gid, spec.gid), "setgid")?;
        check(libc::setresuid(spec.uid, spec.uid, spec.uid), "setuid")?;
        // The launcher ignores SIGCHLD and Rust ignores SIGPIPE; the payload gets defaults.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    ctx.filters.install().map_err(|e| Failure {
        stage: "seccomp",
        errno: match e {
            seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => {
                io.raw_os_error().unwrap_or(libc::EINVAL)
            }
            _ => libc::EINVAL,
        },
    })
}
