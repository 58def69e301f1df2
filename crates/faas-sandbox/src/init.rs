//! Code that runs inside a new sandbox, as PID 1 of its own pid namespace, right after the
//! launcher cloned it. It builds the sandbox's world (cgroup, mounts, hostname, loopback),
//! then either forks the payload and reports on the status pipe how it ended (one-shot
//! mode), or execs the agent with its control pipes on [`AGENT_REQUESTS_FD`] and
//! [`AGENT_EVENTS_FD`] (agent mode, `spec.agent`). When PID 1 exits the kernel kills everything else in the namespace, so
//! nothing outlives a sandbox.
//!
//! Everything here runs in a forked copy of the single-threaded launcher and ends in
//! `_exit` or `exec`; errors are written to the status pipe as one line each:
//! `setup <stage> <errno>` (building the sandbox failed), `payload <stage> <errno>` (the
//! payload could not be started), `exit <code>` or `signal <number>` (how it ended).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use faas_confine::{Confinement, Failure, Filters, check, errno};

use crate::spec::{
    AGENT_EVENTS_FD, AGENT_PATH, AGENT_REQUESTS_FD, LaunchMessage, LaunchSpec, RestoreSpec,
};

/// Where the sandbox's file descriptors sit once arranged (the agent's pipes take 4 and 5
/// in agent mode, which has no blob).
const FD_STATUS: i32 = 3;
const FD_BLOB: i32 = 4;
const FD_FIRST_CGROUP: i32 = 6;

/// What the launcher prepared once for all sandboxes.
pub(crate) struct Context {
    pub filters: Filters,
    pub last_cap: u32,
    /// Mount point of each sandbox's scratch tmpfs, inside its private mount namespace.
    pub scratch: PathBuf,
}

type Step = Result<(), Failure>;

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
    if msg.spec.agent.is_some() {
        exec_agent();
    }
    // SAFETY: the launcher is single-threaded, so the child of this fork is consistent.
    match unsafe { libc::fork() } {
        -1 => fail("setup", Failure { stage: "fork", errno: errno() }),
        0 => payload(ctx, &msg.spec),
        pid => supervise(pid),
    }
}

/// Moves the received descriptors to fixed numbers and closes everything else the launcher
/// had open (its socket above all).
fn arrange_fds(msg: &LaunchMessage, fds: &[i32]) -> Step {
    let mut targets = vec![0, 1, 2, FD_STATUS];
    if msg.spec.agent.is_some() {
        targets.extend([AGENT_REQUESTS_FD, AGENT_EVENTS_FD]);
    } else if msg.has_blob {
        targets.push(FD_BLOB);
    }
    targets.extend((0..msg.cgroup_fds as i32).map(|i| FD_FIRST_CGROUP + i));
    if targets.len() != fds.len() {
        return Err(Failure { stage: "fds", errno: libc::EINVAL });
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
    for unused in [AGENT_REQUESTS_FD, AGENT_EVENTS_FD] {
        if !targets.contains(&unused) {
            // SAFETY: closing a launcher descriptor in our copy of the table.
            unsafe { libc::close(unused) };
        }
    }
    let first_free = FD_FIRST_CGROUP + msg.cgroup_fds as i32;
    // SAFETY: closes our copies of every other descriptor.
    unsafe { libc::syscall(libc::SYS_close_range, first_free as u32, u32::MAX, 0u32) };
    // The status pipe must not survive an exec: only PID 1 keeps it, so its EOF tells the
    // server that PID 1 has exec'd the agent, or (one-shot) that the sandbox is gone.
    // SAFETY: fcntl on our own descriptor.
    check(unsafe { libc::fcntl(FD_STATUS, libc::F_SETFD, libc::FD_CLOEXEC) }, "fds")
}

/// Moves this process into the sandbox's cgroups and a cgroup namespace rooted there.
fn join_cgroups(cgroup_fds: usize) -> Step {
    // SAFETY: writes to and closes descriptors we own; unshare has no preconditions.
    unsafe {
        for i in 0..cgroup_fds as i32 {
            // "0" moves the writing process; our pid here would be 1, not the host's.
            check(libc::write(FD_FIRST_CGROUP + i, b"0".as_ptr().cast(), 1) as i32, "cgroup join")?;
            libc::close(FD_FIRST_CGROUP + i);
        }
        check(libc::unshare(libc::CLONE_NEWCGROUP), "cgroup namespace")
    }
}

fn setup(ctx: &Context, spec: &LaunchSpec, cgroup_fds: usize) -> Step {
    join_cgroups(cgroup_fds)?;
    // SAFETY (whole block): plain syscalls on valid C strings and descriptors we own.
    unsafe {
        // If the launcher dies, so does this sandbox (and with PID 1, all of it).
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL), "pdeathsig")?;
        // The launcher ignores SIGCHLD (the kernel reaps for it); PID 1 must wait itself.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::umask(0);
    }
    mount_root(ctx, spec)?;
    let hostname = spec.hostname.as_bytes();
    // SAFETY: valid buffer and length.
    check(unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) }, "hostname")?;
    loopback_up()?;
    write_files(spec)?;
    faas_confine::mkdir_owned(Path::new(&spec.workdir), spec.uid, spec.gid)
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
    stage: &'static str,
) -> Step {
    let (source, target, fstype, data) =
        (cstr(source.as_bytes()), cpath(target), cstr(fstype.as_bytes()), cstr(data.as_bytes()));
    let data_ptr = if data.is_empty() { std::ptr::null() } else { data.as_ptr().cast() };
    // SAFETY: all pointers are valid C strings (or NULL) for the duration of the call.
    check(
        unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data_ptr) },
        stage,
    )
}

fn mkdir(path: &Path, mode: libc::mode_t, stage: &'static str) -> Step {
    let p = cpath(path);
    // SAFETY: valid C string.
    if unsafe { libc::mkdir(p.as_ptr(), mode) } < 0 && errno() != libc::EEXIST {
        return Err(Failure { stage, errno: errno() });
    }
    Ok(())
}

fn bind_read_only(source: &Path, target: &Path) -> Step {
    use libc::{MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT};
    mount(&source.to_string_lossy(), target, "", MS_BIND | MS_REC, "", "bind mount")?;
    let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
    mount("none", target, "", flags, "", "bind mount read-only")
}

/// Where `mount_layers` puts the sandbox's root.
fn overlay_root(ctx: &Context) -> PathBuf {
    ctx.scratch.join("root")
}

/// The root filesystem's layers in the private mount namespace: the scratch tmpfs, the
/// disk image if any, and the overlay of the image on them. Returns the overlay's path.
fn mount_layers(ctx: &Context, spec: &LaunchSpec) -> Result<PathBuf, Failure> {
    use libc::{MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_REC};
    mount("none", Path::new("/"), "", MS_REC | MS_PRIVATE, "", "make mounts private")?;
    let scratch = &ctx.scratch;
    let size = spec.scratch_bytes;
    let scratch_opts = format!("size={size},mode=0755");
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, &scratch_opts, "scratch tmpfs")?;
    let layer = match &spec.disk_image {
        Some(image) => {
            let disk = scratch.join("disk");
            mkdir(&disk, 0o755, "disk dir")?;
            let (device, fd) = attach_loop(image, false)?;
            let mounted = mount(
                &device.to_string_lossy(),
                &disk,
                "ext4",
                MS_NOSUID | MS_NODEV,
                "",
                "mount disk",
            );
            // SAFETY: our descriptor; once mounted, the mount holds the device.
            unsafe { libc::close(fd) };
            mounted?;
            disk
        }
        None => scratch.to_path_buf(),
    };
    let (upper, work, root) = (layer.join("upper"), layer.join("work"), overlay_root(ctx));
    for dir in [&upper, &work, &root] {
        mkdir(dir, 0o755, "scratch dirs")?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.rootfs.display(),
        upper.display(),
        work.display()
    );
    mount("overlay", &root, "overlay", MS_NOSUID, &options, "overlay root")?;
    Ok(root)
}

/// Builds the root filesystem in the private mount namespace and pivots into it:
/// tmpfs scratch -> overlay(image, scratch) -> read-only binds, /proc, /dev, /tmp.
fn mount_root(ctx: &Context, spec: &LaunchSpec) -> Step {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
    let root = mount_layers(ctx, spec)?;
    let size = spec.scratch_bytes;
    for bind in &spec.binds {
        bind_read_only(&bind.source, &root.join(bind.target.trim_start_matches('/')))?;
    }
    if let Some(agent) = &spec.agent {
        // A file bind needs a file to cover; it is created in the scratch layer.
        let target = root.join(AGENT_PATH.trim_start_matches('/'));
        if let Some(dir) = target.parent() {
            mkdir(dir, 0o755, "agent dir")?;
        }
        std::fs::write(&target, b"").map_err(|e| Failure {
            stage: "agent file",
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })?;
        bind_read_only(&agent.binary, &target)?;
    }
    // A sandbox with a disk (an instance) keeps /tmp and /dev/shm on it: every tmpfs is
    // one more archive CRIU writes at a checkpoint and unpacks (with a tar process) at
    // each restore. What is left in /dev's tmpfs is the same in every sandbox, so a
    // restore makes it anew (`make_dev`) instead.
    let on_disk = spec.disk_image.is_some();
    let dev = root.join("dev");
    make_dev(&dev)?;
    mount("proc", &root.join("proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", "proc")?;
    mask_proc(&root.join("proc"), &dev.join("null"))?;
    let pts_opts = "newinstance,ptmxmode=0666,mode=0620";
    mount("devpts", &dev.join("pts"), "devpts", MS_NOSUID | MS_NOEXEC, pts_opts, "devpts")?;
    let shm = dev.join("shm");
    let tmpfs_opts = format!("size={size},mode=1777");
    if on_disk {
        let (tmp, disk_shm) = (root.join("tmp"), root.join(DISK_SHM.trim_start_matches('/')));
        for dir in [&tmp, &disk_shm] {
            mkdir(dir, 0o1777, "tmp dirs")?;
            // SAFETY: a valid C string; an existing directory keeps its mode otherwise.
            check(unsafe { libc::chmod(cpath(dir).as_ptr(), 0o1777) }, "tmp mode")?;
        }
        let flags = libc::MS_BIND | MS_NOSUID | MS_NODEV;
        mount(&disk_shm.to_string_lossy(), &shm, "", flags, "", "dev/shm")?;
    } else {
        mount("tmpfs", &shm, "tmpfs", MS_NOSUID | MS_NODEV, &tmpfs_opts, "dev/shm")?;
        mount("tmpfs", &root.join("tmp"), "tmpfs", MS_NOSUID | MS_NODEV, &tmpfs_opts, "tmp")?;
    }
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
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), "detach old root")?;
        check(libc::chdir(cstr(b"/").as_ptr()), "chdir /")?;
    }
    Ok(())
}

/// Parts of /proc that reach the whole host, which no sandbox may write or read: the
/// sandbox has no user namespace, so its root (the agent) is the host's root. Directories
/// are bound read-only over themselves; files are covered with the sandbox's own
/// /dev/null (not the host's: a bind whose source mount is outside the namespace is one
/// CRIU cannot dump).
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
const PROC_MASKED: [&str; 7] =
    ["kcore", "keys", "timer_list", "sched_debug", "kallsyms", "kpagecount", "kpageflags"];

fn mask_proc(proc: &Path, null: &Path) -> Step {
    use libc::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT};
    for name in PROC_READ_ONLY {
        let path = proc.join(name);
        if path.exists() {
            mount(&path.to_string_lossy(), &path, "", MS_BIND | MS_REC, "", "mask /proc")?;
            let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
            mount("none", &path, "", flags, "", "mask /proc read-only")?;
        }
    }
    for name in PROC_MASKED {
        let path = proc.join(name);
        if path.exists() {
            mount(&null.to_string_lossy(), &path, "", MS_BIND, "", "mask /proc file")?;
        }
    }
    Ok(())
}

/// `struct loop_info64` and `struct loop_config` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Attaches `image` to a free loop device that detaches itself once unmounted, which
/// happens when this sandbox's mount namespace goes away. Returns the device and an open
/// descriptor of it: close that only after mounting, or the device detaches at once.
pub(crate) fn attach_loop(image: &Path, read_only: bool) -> Result<(PathBuf, i32), Failure> {
    let fail = |stage| Failure { stage, errno: errno() };
    let ctl_path = cstr(b"/dev/loop-control");
    let image_c = cpath(image);
    // SAFETY: open/ioctl/close on descriptors we own, with a zeroed, correctly laid out
    // loop_config.
    unsafe {
        let ctl = libc::open(ctl_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        check(ctl, "loop control")?;
        let access = if read_only { libc::O_RDONLY } else { libc::O_RDWR };
        let file = libc::open(image_c.as_ptr(), access | libc::O_CLOEXEC);
        if file < 0 {
            libc::close(ctl);
            return Err(fail("open disk image"));
        }
        // Another sandbox may take the same free device first: try again.
        for _ in 0..32 {
            let n = libc::ioctl(ctl, LOOP_CTL_GET_FREE);
            if n < 0 {
                break;
            }
            let device = PathBuf::from(format!("/dev/loop{n}"));
            let dev = libc::open(cpath(&device).as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if dev < 0 {
                continue;
            }
            let mut config: LoopConfig = std::mem::zeroed();
            config.fd = file as u32;
            config.info.flags = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
            let configured = libc::ioctl(dev, LOOP_CONFIGURE, &config);
            let busy = configured < 0 && errno() == libc::EBUSY;
            if configured == 0 {
                libc::close(file);
                libc::close(ctl);
                return Ok((device, dev));
            }
            libc::close(dev);
            if !busy {
                let failure = fail("loop configure");
                libc::close(file);
                libc::close(ctl);
                return Err(failure);
            }
        }
        let failure = fail("loop device");
        libc::close(file);
        libc::close(ctl);
        Err(failure)
    }
}

/// The minimal /dev: character devices, the pty multiplexer and the usual links.
/// Where an instance's /dev/shm lives on its disk.
const DISK_SHM: &str = "/.faas/shm";

/// /dev: a small tmpfs with the device nodes, links, and mount points for devpts and
/// /dev/shm; the same in every sandbox.
pub(crate) fn make_dev(dev: &Path) -> Step {
    use libc::{MS_NOEXEC, MS_NOSUID};
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=65536,mode=0755", "dev tmpfs")?;
    make_devices(dev)?;
    mkdir(&dev.join("pts"), 0o755, "dev/pts")?;
    mkdir(&dev.join("shm"), 0o1777, "dev/shm")
}

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
        let made = unsafe {
            libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor))
        };
        check(made, "mknod")?;
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
        check(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr), "loopback flags")?;
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
            faas_confine::mkdir_owned(parent, spec.uid, spec.gid)?;
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
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: valid C string and buffer; the descriptor is closed before returning.
        unsafe {
            let fd = libc::open(c.as_ptr(), flags, file.mode);
            check(fd, "write file")?;
            let written = libc::write(fd, content.as_ptr().cast(), content.len());
            let owned = libc::fchown(fd, spec.uid, spec.gid);
            libc::close(fd);
            if written < 0 || written as usize != content.len() || owned < 0 {
                return Err(Failure { stage: "write file", errno: errno() });
            }
        }
    }
    if !spec.files.is_empty() {
        // SAFETY: closing our own descriptor; the payload does not need the blob.
        unsafe { libc::close(FD_BLOB) };
    }
    Ok(())
}

/// The restore helper, a plain fork of the launcher in the host's namespaces. It builds
/// the root filesystem's layers in a mount namespace of its own (and a network namespace
/// when the images leave theirs out), starts the page server of a lazy restore, while
/// its child joins the new sandbox's cgroups (and a cgroup namespace rooted there, which
/// the restored tree inherits), enters those namespaces and runs `criu restore` with the
/// agent's new control pipes in place of the checkpoint's. CRIU detaches the restored
/// tree and exits; the launcher (a subreaper) inherits it. Reports `time <stage> <ms>`
/// lines as it goes, then `restored <pid>` (`restored <pid> <page server pid>` for a
/// lazy restore), `criu <exit status>` or `setup <stage> <errno>`.
pub(crate) fn restore(ctx: &Context, msg: &LaunchMessage, fds: &[i32]) -> ! {
    if arrange_fds(msg, fds).is_err() {
        // SAFETY: see fail().
        unsafe { libc::_exit(1) }
    }
    let Some(restore) = &msg.restore else {
        fail("setup", Failure { stage: "restore spec", errno: libc::EINVAL })
    };
    let path_env = cstr(b"PATH=/usr/sbin:/usr/bin:/sbin:/bin");
    let kdat_env = restore
        .kdat_dir
        .as_ref()
        .map(|dir| cstr(format!("CRIU_KDAT_DIR={}", dir.display()).as_bytes()));
    let env: Vec<*const libc::c_char> =
        [Some(path_env.as_ptr()), kdat_env.as_ref().map(|e| e.as_ptr())]
            .into_iter()
            .flatten()
            .chain(std::iter::once(std::ptr::null()))
            .collect();
    // SAFETY: plain syscalls without pointers.
    unsafe {
        // The helper must not outlive the launcher; CRIU, its child, must be waited for.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::umask(0);
    }
    let clock = std::time::Instant::now();
    let lap =
        |stage: &str| report(&format!("time {stage} {:.2}\n", clock.elapsed().as_secs_f64() * 1e3));
    // CRIU's process starts at once: joining the sandbox's cgroups costs it an RCU grace
    // period (~15 ms on cgroup v1), time this process spends on the namespaces, the
    // mounts and the page server. It waits for a byte on `go` before it runs CRIU.
    let (go_r, go_w) = match pipe_cloexec() {
        Ok(pair) => pair,
        Err(f) => fail("setup", f),
    };
    // SAFETY: fork of a single-threaded process; the child execs or _exits.
    let criu = unsafe { libc::fork() };
    if criu == 0 {
        // SAFETY: our copy of the parent's end.
        unsafe { libc::close(go_w) };
        run_criu(ctx, msg, restore, go_r, &env);
    }
    if criu < 0 {
        fail("setup", Failure { stage: "fork criu", errno: errno() });
    }
    // SAFETY: our copy of the child's end.
    unsafe { libc::close(go_r) };
    let give_up = |code: Option<i32>| -> ! {
        // SAFETY: killing and reaping our own child, then _exit.
        unsafe {
            libc::kill(criu, libc::SIGKILL);
            libc::waitpid(criu, std::ptr::null_mut(), 0);
            if let Some(code) = code {
                report(&format!("criu {code}\n"));
            }
            libc::_exit(1)
        }
    };
    // The page server for the restored memory stays outside the sandbox's cgroups: a
    // freeze of the sandbox must not freeze the process that serves its page faults. It
    // daemonizes once its socket is ready, and exits once every page is in place.
    let fill_env = cstr(format!("CRIU_LAZY_FILL_DELAY_MS={LAZY_FILL_DELAY_MS}").as_bytes());
    let page_server_env: Vec<*const libc::c_char> =
        std::iter::once(fill_env.as_ptr()).chain(env.iter().copied()).collect();
    let page_server = restore.lazy.then(|| spawn(&criu_lazy_pages_args(restore), &page_server_env));
    if let Err(f) = restore_namespaces(ctx, msg) {
        report(&format!("setup {} {}\n", f.stage, f.errno));
        give_up(None);
    }
    lap("setup");
    if let Some(pid) = page_server {
        match wait_for(pid) {
            0 => lap("page-server"),
            code => give_up(Some(code)),
        }
    }
    // SAFETY: writes one byte from a valid buffer to our pipe.
    if unsafe { libc::write(go_w, b"g".as_ptr().cast(), 1) } != 1 {
        give_up(Some(128));
    }
    let code = wait_for(criu);
    lap("criu");
    if code != 0 {
        // CRIU's process reported its own setup failures.
        if code != SETUP_FAILED {
            report(&format!("criu {code}\n"));
        }
        // SAFETY: see fail().
        unsafe { libc::_exit(1) }
    }
    let read_pid = |name: &str| std::fs::read_to_string(restore.work_dir.join(name));
    match read_pid("restored.pid") {
        Ok(pid) if restore.lazy => match read_pid("lazy-pages.pid") {
            Ok(lazy) => report(&format!("restored {} {}\n", pid.trim(), lazy.trim())),
            Err(e) => report(&format!("setup pidfile {}\n", e.raw_os_error().unwrap_or(libc::EIO))),
        },
        Ok(pid) => report(&format!("restored {}\n", pid.trim())),
        Err(e) => report(&format!("setup pidfile {}\n", e.raw_os_error().unwrap_or(libc::EIO))),
    }
    // SAFETY: see fail().
    unsafe { libc::_exit(0) }
}

/// How long a page server serves only faults before it pushes the remaining pages
/// (faas's CRIU patch 0003): branches restored together do not slow each other down
/// with background copies while they start.
const LAZY_FILL_DELAY_MS: u32 = 500;

/// The exit status CRIU's process uses when its own setup failed (it reported why).
const SETUP_FAILED: i32 = 126;

/// CRIU's process: joins the sandbox's cgroups (and a cgroup namespace rooted there),
/// waits for the helper to have built the namespaces, enters them and runs `criu restore`.
fn run_criu(
    ctx: &Context,
    msg: &LaunchMessage,
    restore: &RestoreSpec,
    go: i32,
    env: &[*const libc::c_char],
) -> ! {
    let setup_failed = |f: Failure| -> ! {
        report(&format!("setup {} {}\n", f.stage, f.errno));
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(SETUP_FAILED) }
    };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(f) = join_cgroups(msg.cgroup_fds) {
        setup_failed(f);
    }
    if restore.ksm {
        // Inherited by CRIU (exec) and the tree it forks: every mapping they make is
        // mergeable, so identical pages of branches can be shared once ksmd scans them.
        // SAFETY: prctl with integer arguments.
        if let Err(f) = check(unsafe { libc::prctl(libc::PR_SET_MEMORY_MERGE, 1, 0, 0, 0) }, "ksm")
        {
            setup_failed(f);
        }
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a valid buffer; a helper that gave up closes the pipe.
    if unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) } != 1 {
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(SETUP_FAILED) }
    }
    // SAFETY: getppid has no preconditions.
    let helper = unsafe { libc::getppid() };
    let enter = |kind: &str, nstype: libc::c_int| -> Result<i32, Failure> {
        let path = cstr(format!("/proc/{helper}/ns/{kind}").as_bytes());
        // SAFETY: open of a valid C string; setns on the descriptor we got.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            check(fd, "namespace fd")?;
            check(libc::setns(fd, nstype), "enter namespace")?;
            Ok(fd)
        }
    };
    let net_fd = match restore.external_net {
        // The fd stays open (no CLOEXEC): CRIU takes it as the tree's network namespace.
        Some(_) => match enter("net", libc::CLONE_NEWNET) {
            Ok(fd) => Some(fd),
            Err(f) => setup_failed(f),
        },
        None => None,
    };
    if let Err(f) = enter("mnt", libc::CLONE_NEWNS) {
        setup_failed(f);
    }
    let args = criu_restore_args(restore, &overlay_root(ctx), &ctx.scratch, net_fd);
    let argv: Vec<*const libc::c_char> =
        args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    // SAFETY: execve with NULL-terminated arrays of valid C strings.
    unsafe {
        libc::execve(argv[0], argv.as_ptr(), env.as_ptr());
    }
    setup_failed(Failure { stage: "exec criu", errno: errno() })
}

fn pipe_cloexec() -> Result<(i32, i32), Failure> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, "pipe")?;
    Ok((fds[0], fds[1]))
}

/// Starts `args` (a program and its arguments) with `env`: its pid. Fails the helper if
/// it cannot fork.
fn spawn(args: &[CString], env: &[*const libc::c_char]) -> libc::pid_t {
    let argv: Vec<*const libc::c_char> =
        args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    // SAFETY: fork of a single-threaded process; the child only execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: execve with NULL-terminated arrays of valid C strings.
        unsafe {
            libc::execve(argv[0], argv.as_ptr(), env.as_ptr());
            libc::_exit(127)
        }
    }
    if pid < 0 {
        fail("setup", Failure { stage: "fork", errno: errno() });
    }
    pid
}

/// Waits for our child `pid`: its exit status, or 128 when a signal ended it.
fn wait_for(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && errno() == libc::EINTR {}
    if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 }
}

fn criu_lazy_pages_args(restore: &RestoreSpec) -> Vec<CString> {
    let args: Vec<String> = vec![
        restore.criu.to_string_lossy().into_owned(),
        "lazy-pages".into(),
        "--daemon".into(),
        "--images-dir".into(),
        restore.images.to_string_lossy().into_owned(),
        "--work-dir".into(),
        restore.work_dir.to_string_lossy().into_owned(),
        "--log-file".into(),
        "lazy-pages.log".into(),
        "--pidfile".into(),
        "lazy-pages.pid".into(),
    ];
    args.into_iter().map(|a| cstr(a.as_bytes())).collect()
}

/// The restored tree's namespaces, made in the helper for CRIU's process to enter: a
/// mount namespace with the root's layers (and a fresh /dev when the images leave it
/// out), and a network namespace with loopback up when the images leave theirs out.
fn restore_namespaces(ctx: &Context, msg: &LaunchMessage) -> Step {
    // SAFETY: unshare without pointers.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "mount namespace")?;
    let restore = msg.restore.as_ref();
    if restore.is_some_and(|r| r.external_net.is_some()) {
        // SAFETY: unshare without pointers.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "network namespace")?;
        loopback_up()?;
    }
    let root = mount_layers(ctx, &msg.spec)?;
    debug_assert_eq!(root, overlay_root(ctx));
    if restore.is_some_and(|r| r.external_dev.is_some()) {
        let dev = ctx.scratch.join("dev");
        mkdir(&dev, 0o755, "dev dir")?;
        make_dev(&dev)?;
    }
    Ok(())
}

fn criu_restore_args(
    restore: &RestoreSpec,
    root: &Path,
    scratch: &Path,
    net_fd: Option<i32>,
) -> Vec<CString> {
    let mut args: Vec<String> = vec![
        restore.criu.to_string_lossy().into_owned(),
        "restore".into(),
        "--images-dir".into(),
        restore.images.to_string_lossy().into_owned(),
        "--work-dir".into(),
        restore.work_dir.to_string_lossy().into_owned(),
        "--log-file".into(),
        "restore.log".into(),
        "--pidfile".into(),
        "restored.pid".into(),
        "--root".into(),
        root.to_string_lossy().into_owned(),
        "--restore-detached".into(),
        // The helper already put itself (so the restored tree) in the new cgroups.
        "--manage-cgroups=ignore".into(),
        // Connections of the checkpoint cannot continue in a copy.
        "--tcp-close".into(),
        "--inherit-fd".into(),
        format!("fd[{AGENT_REQUESTS_FD}]:pipe:[{}]", restore.pipe_inodes.0),
        "--inherit-fd".into(),
        format!("fd[{AGENT_EVENTS_FD}]:pipe:[{}]", restore.pipe_inodes.1),
    ];
    for (key, path) in &restore.externals {
        args.push("--external".into());
        args.push(format!("mnt[{key}]:{}", path.display()));
    }
    if restore.lazy {
        args.push("--lazy-pages".into());
    }
    if let Some(key) = &restore.external_dev {
        args.push("--external".into());
        args.push(format!("mnt[{key}]:{}", scratch.join("dev").display()));
    }
    if let (Some(fd), Some(key)) = (net_fd, &restore.external_net) {
        args.push("--inherit-fd".into());
        args.push(format!("fd[{fd}]:{key}"));
    }
    args.into_iter().map(|a| cstr(a.as_bytes())).collect()
}

/// Agent mode: PID 1 becomes the agent, which keeps its privileges inside the sandbox (it
/// confines each process it starts) and finds its control pipes on AGENT_REQUESTS_FD and
/// AGENT_EVENTS_FD.
fn exec_agent() -> ! {
    let path = cstr(AGENT_PATH.as_bytes());
    let argv = [path.as_ptr(), std::ptr::null()];
    let env = [std::ptr::null()];
    // A session of its own: PID 1 was born in the server's session, and CRIU dumps only
    // trees whose session leader is inside them (checkpoints of agent sandboxes).
    // SAFETY: setsid and execve with NULL-terminated arrays of valid C strings.
    unsafe {
        if libc::setsid() < 0 {
            fail("setup", Failure { stage: "setsid", errno: errno() });
        }
        libc::execve(path.as_ptr(), argv.as_ptr(), env.as_ptr());
    }
    fail("setup", Failure { stage: "exec agent", errno: errno() })
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
    // SAFETY: closes the status pipe's and every other extra descriptor in this child.
    unsafe { libc::syscall(libc::SYS_close_range, FD_STATUS as u32 + 1, u32::MAX, 0u32) };
    let confinement = Confinement {
        uid: spec.uid,
        gid: spec.gid,
        workdir: spec.workdir.clone(),
        max_file_bytes: spec.max_file_bytes,
        max_open_files: spec.max_open_files,
        // PID 1 made it before the payload existed.
        create_workdir: false,
        terminal: false,
    };
    if let Err(f) = faas_confine::confine(Some(&ctx.filters), Some(ctx.last_cap), &confinement) {
        fail("payload", f);
    }
    fail("payload", faas_confine::exec(&spec.argv, &spec.env))
}
