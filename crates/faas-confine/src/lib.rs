//! Confinement of one process, in a forked child, just before it execs a user's program:
//! the capability sets emptied, an unprivileged uid, rlimits, default signal handling,
//! no_new_privs and the seccomp filters. Used by the one-shot sandbox's PID 1 and by the
//! in-sandbox agent, so both confine their children the same way.
//!
//! Everything here runs between fork and exec of a single-threaded parent and reports a
//! failure as `(stage, errno)` rather than allocating error chains.

pub mod seccomp;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use seccomp::{Filters, SeccompError};

/// A failed step before exec: which one, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub stage: &'static str,
    pub errno: i32,
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// `Err` with the current errno when a libc call returned a negative value.
pub fn check(ret: libc::c_int, stage: &'static str) -> Result<(), Failure> {
    if ret < 0 { Err(Failure { stage, errno: errno() }) } else { Ok(()) }
}

/// Who the process becomes and what it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    pub uid: u32,
    pub gid: u32,
    /// Absolute path the process starts in.
    pub workdir: String,
    /// RLIMIT_FSIZE.
    pub max_file_bytes: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// Create the workdir (as the user) when it is missing.
    pub create_workdir: bool,
    /// Descriptor 0 is a terminal that becomes the process's controlling terminal: a new
    /// session instead of a new process group (an interactive shell needs job control).
    pub terminal: bool,
}

/// The highest capability number of this kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn cstr(bytes: &[u8]) -> CString {
    // Callers validated their strings: no NUL inside.
    CString::new(bytes).unwrap_or_default()
}

/// `mkdir -p` with the caller's own identity.
fn mkdir_p(path: &Path) -> Result<(), Failure> {
    let mut current = std::path::PathBuf::from("/");
    for part in path.components().skip(1) {
        current.push(part);
        let c = cstr(current.as_os_str().as_bytes());
        // SAFETY: valid C string.
        if unsafe { libc::mkdir(c.as_ptr(), 0o755) } < 0 && errno() != libc::EEXIST {
            return Err(Failure { stage: "mkdir workdir", errno: errno() });
        }
    }
    Ok(())
}

/// `mkdir -p`, giving the directories it creates to `uid:gid`. For a root caller in a
/// sandbox no user process has touched yet (PID 1's setup): the path cannot be raced.
pub fn mkdir_owned(path: &Path, uid: u32, gid: u32) -> Result<(), Failure> {
    let mut current = std::path::PathBuf::from("/");
    for part in path.components().skip(1) {
        current.push(part);
        let c = cstr(current.as_os_str().as_bytes());
        // SAFETY: valid C string.
        unsafe {
            if libc::mkdir(c.as_ptr(), 0o755) == 0 {
                check(libc::chown(c.as_ptr(), uid, gid), "chown dir")?;
            } else if errno() != libc::EEXIST {
                return Err(Failure { stage: "mkdir workdir", errno: errno() });
            }
        }
    }
    Ok(())
}

/// Drops every privilege of the calling process (a forked child that will exec next).
/// Descriptors 0, 1 and 2 are kept; the caller closes the rest first. `filters` is `None`
/// when the parent already runs under them: seccomp filters and no_new_privs are inherited
/// through fork and exec, and attaching them costs about 0.3 ms per process.
///
/// `bounding` is the highest capability to drop from the bounding set, or `None` when the
/// parent's bounding set is already empty (see [`drop_bounding_set`]).
pub fn confine(
    filters: Option<&Filters>,
    bounding: Option<u32>,
    c: &Confinement,
) -> Result<(), Failure> {
    // SAFETY (whole block): plain syscalls on valid arguments.
    unsafe {
        if c.terminal {
            // A session leader is also its process group's leader, so a kill of the group
            // still reaches its children.
            check(libc::setsid(), "setsid")?;
            check(libc::ioctl(0, libc::TIOCSCTTY, 0), "controlling terminal")?;
        } else {
            // A process group of its own, so a timeout can kill the program and its
            // children. (Not setsid: a new session also costs a scheduler autogroup.)
            check(libc::setpgid(0, 0), "setpgid")?;
        }
        libc::umask(0o022);
        let limits = [
            (libc::RLIMIT_NOFILE, c.max_open_files),
            (libc::RLIMIT_FSIZE, c.max_file_bytes),
            (libc::RLIMIT_CORE, 0),
        ];
        for (resource, value) in limits {
            let rlim = libc::rlimit { rlim_cur: value, rlim_max: value };
            check(libc::setrlimit(resource, &rlim), "rlimit")?;
        }
        // The bounding set needs CAP_SETPCAP, so it goes before the uid change; the uid
        // change then clears the permitted and effective sets.
        if let Some(last_cap) = bounding {
            drop_bounding_set(last_cap)?;
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
        let groups = [c.gid];
        check(libc::setgroups(1, groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(c.gid, c.gid, c.gid), "setgid")?;
        check(libc::setresuid(c.uid, c.uid, c.uid), "setuid")?;
        // Only now, as the sandbox user: a workdir path the user controls (symlinks
        // included) can never lead a privileged mkdir or chdir anywhere.
        if c.create_workdir {
            mkdir_p(Path::new(&c.workdir))?;
        }
        let workdir = cstr(c.workdir.as_bytes());
        check(libc::chdir(workdir.as_ptr()), "chdir workdir")?;
        // Handled signals fall back to their defaults at exec, ignored ones stay ignored:
        // our parents ignore SIGPIPE (Rust's runtime does) and SIGCHLD (the launcher).
        for sig in [libc::SIGPIPE, libc::SIGCHLD] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    match filters {
        Some(filters) => install(filters),
        None => Ok(()),
    }
}

/// Empties the capability bounding set of the calling thread: no exec can grant a
/// capability afterwards. The permitted and effective sets are untouched, so a privileged
/// parent (the agent) can do this once and keep working, and its children inherit the
/// empty set.
pub fn drop_bounding_set(last_cap: u32) -> Result<(), Failure> {
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        check(
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) },
            "drop capabilities",
        )?;
    }
    Ok(())
}

/// Sets no_new_privs and attaches the seccomp filters to the calling thread.
pub fn install(filters: &Filters) -> Result<(), Failure> {
    filters.install().map_err(|e| Failure {
        stage: "seccomp",
        errno: match e {
            seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => {
                io.raw_os_error().unwrap_or(libc::EINVAL)
            }
            _ => libc::EINVAL,
        },
    })
}

/// execve with `execvp`'s PATH search (PATH taken from `env`). Returns only on failure.
pub fn exec(argv: &[String], env: &[String]) -> Failure {
    let argv_c: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect();
    let env_c: Vec<CString> = env.iter().map(|e| cstr(e.as_bytes())).collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let candidates: Vec<CString> = if program.contains('/') {
        vec![cstr(program.as_bytes())]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstr(Path::new(d).join(OsStr::new(program)).as_os_str().as_bytes()))
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
    Failure { stage: "exec", errno: last }
}
