//! Checkpoints of agent sandboxes with CRIU, and restores from them.
//!
//! A checkpoint is taken with the agent paused (no half-sent frame in either control
//! pipe) and the sandbox's cgroup frozen: the disk image is synced and copied while
//! nothing runs, then `criu dump` writes the processes' state (memory, files, sockets,
//! the namespaces' mounts, tmpfs contents) and the sandbox carries on. A restore builds
//! the root filesystem's layers on a copy of the disk in a helper process (see
//! `init::restore`) and runs `criu restore` there with new control pipes in place of
//! the checkpoint's, into a new cgroup; the agent then forgets its old host's requests.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::agent::{AgentClient, ControlPipes};
use crate::agent_sandbox::{AgentSandbox, StartedAgent};
use crate::cgroup::Limits;
use crate::run::{RunError, Sandboxes, pipe_pair, setup_failure};
use crate::spec::{AGENT_PATH, LaunchSpec, RestoreSpec};

/// How long a dump may take before it is given up (the sandbox stays frozen meanwhile).
const DUMP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a restore may take before it is given up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// The CRIU binary the host uses.
#[derive(Debug, Clone)]
pub struct Criu {
    pub binary: PathBuf,
    pub version: String,
    /// Where CRIU caches what it probed of the kernel (a tmpfs directory of root's), so
    /// each run skips the probe (faas's CRIU patch 0002 reads `CRIU_KDAT_DIR`).
    pub kdat_dir: Option<PathBuf>,
}

impl Criu {
    /// Checks that `binary` runs and is recent enough (4.2: older ones fail on current
    /// kernels, see docs/ARCHITECTURE.md).
    pub fn detect(binary: &Path) -> Result<Self, String> {
        let out = std::process::Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| format!("{} --version said nothing useful", binary.display()))?;
        let numbers: Vec<u32> = version.split('.').filter_map(|n| n.parse().ok()).collect();
        if numbers.as_slice() < [4, 2].as_slice() {
            return Err(format!("CRIU {version} at {} is older than 4.2", binary.display()));
        }
        Ok(Self { binary: binary.to_owned(), version, kdat_dir: None })
    }

    /// Picks the first of `candidates` on a tmpfs for CRIU's kernel probe cache, creating
    /// it (mode 0700) if needed; a directory root does not own is never used.
    pub fn with_kdat_cache(mut self, candidates: &[PathBuf]) -> Self {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        self.kdat_dir = candidates
            .iter()
            .find(|dir| {
                let parent = dir.parent().unwrap_or(Path::new("/"));
                let on_tmpfs = nix::sys::statfs::statfs(parent)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
                if !on_tmpfs {
                    return false;
                }
                let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
                std::fs::symlink_metadata(dir)
                    .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o077 == 0)
            })
            .cloned();
        self
    }
}

/// What a restore needs to know about a checkpoint besides its images: kept with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub criu_version: String,
    /// The agent's control pipes as the images name them (requests, events).
    pub pipe_inodes: (u64, u64),
    /// The sandbox's spec; at restore `disk_image` and the agent binary are replaced.
    pub spec: LaunchSpec,
    /// The network namespace was left out of the images (it holds only a loopback): a
    /// restore gives the tree a fresh one instead of replaying CRIU's `ip` and
    /// `iptables` dumps, which costs tens of milliseconds.
    #[serde(default)]
    pub external_net: bool,
    /// /dev (device nodes and links only, the same in every sandbox) was left out of the
    /// images: a restore makes it anew instead of unpacking CRIU's archive of it.
    #[serde(default)]
    pub external_dev: bool,
}

/// The external mounts' keys in a checkpoint: each bind by its position, and the agent.
fn external_keys(spec: &LaunchSpec) -> Vec<(String, String, PathBuf)> {
    let mut keys: Vec<(String, String, PathBuf)> = spec
        .binds
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("bind{i}"), b.target.clone(), b.source.clone()))
        .collect();
    if let Some(agent) = &spec.agent {
        keys.push(("agent".into(), AGENT_PATH.into(), agent.binary.clone()));
    }
    keys
}

impl AgentSandbox {
    /// Checkpoints the running sandbox into `dir` (CRIU images in `dir/images`, the disk
    /// image copied to `disk_copy`); the sandbox keeps running.
    pub async fn checkpoint(
        &self,
        criu: &Criu,
        dir: &Path,
        disk_copy: Option<&Path>,
    ) -> Result<CheckpointRecord, RunError> {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).map_err(RunError::Io)?;
        self.wait_lazy_pages().await?;
        let freezer = self.freezer()?;
        let _held = self.held.begin();
        let work = async {
            freeze_outside_vfork(&freezer).await?;
            let dumped = async {
                if let (Some(source), Some(copy)) = (&self.spec.disk_image, disk_copy) {
                    let (pid, source, copy) = (self.pid, source.clone(), copy.to_owned());
                    tokio::task::spawn_blocking(move || {
                        sync_sandbox_fs(pid)?;
                        copy_sparse_durable(&source, &copy)
                    })
                    .await
                    .map_err(RunError::Task)?
                    .map_err(RunError::Io)?;
                }
                self.dump(criu, dir, &images, &freezer.dir).await
            }
            .await;
            // CRIU leaves a cgroup it found frozen frozen.
            let thawed = freezer.thaw();
            dumped?;
            thawed.map_err(RunError::from)
        };
        self.agent.while_paused(work).await??;
        Ok(CheckpointRecord {
            criu_version: criu.version.clone(),
            pipe_inodes: self.pipe_inodes,
            spec: self.spec.clone(),
            external_net: true,
            external_dev: self.spec.disk_image.is_some(),
        })
    }

    /// Waits until a lazy restore's page server has put every page in place: a frozen
    /// sandbox, or CRIU's dump, must not fault on pages still to come.
    async fn wait_lazy_pages(&self) -> Result<(), RunError> {
        let mut lazy = self.lazy_pages.lock().await;
        let Some(pidfd) = lazy.as_ref().map(Arc::clone) else { return Ok(()) };
        if !crate::run::exited_within(&pidfd, LAZY_PAGES_TIMEOUT).await? {
            return Err(RunError::Checkpoint("the restored memory is still being loaded".into()));
        }
        *lazy = None;
        Ok(())
    }

    fn freezer(&self) -> Result<crate::cgroup::Freezer, RunError> {
        let cgroup = self.cgroup.lock().unwrap_or_else(|e| e.into_inner());
        let cgroup =
            cgroup.as_ref().ok_or(RunError::Checkpoint("the sandbox is being destroyed".into()))?;
        cgroup.freezer().ok_or(RunError::Checkpoint(
            "this host has no cgroup freezer: running sandboxes cannot be held still".into(),
        ))
    }

    /// A consistent copy of the sandbox's disk image, taken with its processes frozen.
    pub async fn copy_disk(&self, to: &Path) -> Result<(), RunError> {
        let source = self
            .spec
            .disk_image
            .clone()
            .ok_or_else(|| RunError::Checkpoint("the sandbox has no disk image".into()))?;
        self.wait_lazy_pages().await?;
        let freezer = self.freezer()?;
        let _held = self.held.begin();
        freeze_outside_vfork(&freezer).await?;
        let (pid, to) = (self.pid, to.to_owned());
        let copied = tokio::task::spawn_blocking(move || {
            sync_sandbox_fs(pid)?;
            copy_sparse(&source, &to)
        })
        .await;
        let thawed = freezer.thaw();
        copied.map_err(RunError::Task)?.map_err(RunError::Io)?;
        Ok(thawed?)
    }

    async fn dump(
        &self,
        criu: &Criu,
        dir: &Path,
        images: &Path,
        freezer: &Path,
    ) -> Result<(), RunError> {
        let mut cmd = tokio::process::Command::new(&criu.binary);
        cmd.arg("dump")
            .arg("--tree")
            .arg(self.pid.to_string())
            .arg("--images-dir")
            .arg(images)
            .arg("--work-dir")
            .arg(dir)
            .args(["--log-file", "dump.log", "--leave-running"])
            .arg("--freeze-cgroup")
            .arg(freezer)
            // Connections are dumped (a restore closes them); the sandbox keeps them.
            .args(["--tcp-established", "--network-lock", "skip", "--skip-in-flight"])
            .args(["--file-locks", "--ghost-limit", "64M"])
            // A task in the middle of disk I/O stops only once it completes: on a busy
            // host that can take longer than CRIU's default 10 s.
            .args(["--timeout", "60"]);
        if let Some(dir) = &criu.kdat_dir {
            cmd.env("CRIU_KDAT_DIR", dir);
        }
        for (key, target, _) in external_keys(&self.spec) {
            cmd.arg("--external").arg(format!("mnt[{target}]:{key}"));
        }
        let net = std::fs::metadata(format!("/proc/{}/ns/net", self.pid)).map_err(RunError::Io)?;
        cmd.arg("--external").arg(format!("net[{}]:{EXTERNAL_NET}", net.ino()));
        if self.spec.disk_image.is_some() {
            cmd.arg("--external").arg(format!("mnt[/dev]:{EXTERNAL_DEV}"));
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(DUMP_TIMEOUT, cmd.status())
            .await
            .map_err(|_| RunError::Checkpoint(format!("criu dump took over {DUMP_TIMEOUT:?}")))?
            .map_err(RunError::Io)?;
        if !out.success() {
            return Err(criu_failed("dump", &dir.join("dump.log")));
        }
        Ok(())
    }
}

/// A checkpoint to restore from: its images, its record, and where CRIU may write.
pub struct RestoreFrom<'a> {
    pub criu: &'a Criu,
    pub images: &'a Path,
    pub work_dir: &'a Path,
    pub record: &'a CheckpointRecord,
    /// Mark the restored memory mergeable by KSM (identical pages of branches shared).
    pub ksm: bool,
    /// Restore memory on demand (userfaultfd) rather than all before the tree runs.
    pub lazy: bool,
}

impl Sandboxes {
    /// Restores a checkpoint into a new sandbox `id`: `spec` is the checkpoint's with the
    /// new disk image (a copy of the checkpoint's) and the agent binary the checkpoint ran.
    pub async fn restore_agent(
        self: &Arc<Self>,
        id: String,
        from: RestoreFrom<'_>,
        spec: LaunchSpec,
        limits: Limits,
    ) -> Result<AgentSandbox, RunError> {
        // The restore helper and CRIU's own processes run in the cgroup until the tree is
        // back: they must not take the sandbox's own process budget.
        let restoring = Limits { pids: limits.pids.saturating_add(RESTORE_PIDS), ..limits };
        let cgroup = self.cgroups().create(&id, &restoring)?;
        let restore = RestoreSpec {
            criu: from.criu.binary.clone(),
            images: from.images.to_owned(),
            work_dir: from.work_dir.to_owned(),
            pipe_inodes: from.record.pipe_inodes,
            kdat_dir: from.criu.kdat_dir.clone(),
            external_net: from.record.external_net.then(|| EXTERNAL_NET.to_owned()),
            external_dev: from.record.external_dev.then(|| EXTERNAL_DEV.to_owned()),
            ksm: from.ksm,
            lazy: from.lazy,
            externals: external_keys(&spec).into_iter().map(|(k, _, source)| (k, source)).collect(),
        };
        let started = self.launch_restore(&id, &spec, &cgroup, restore).await.and_then(|agent| {
            cgroup.set_pids_max(limits.pids)?;
            Ok(agent)
        });
        self.agent_sandbox(id, cgroup, spec, limits, started).await
    }

    async fn launch_restore(
        &self,
        id: &str,
        spec: &LaunchSpec,
        cgroup: &crate::cgroup::Cgroup,
        restore: RestoreSpec,
    ) -> Result<StartedAgent, RunError> {
        let work_dir = restore.work_dir.clone();
        let restore_criu = restore.criu.canonicalize().unwrap_or_else(|_| restore.criu.clone());
        std::fs::create_dir_all(&work_dir).map_err(RunError::Io)?;
        let _ = std::fs::remove_file(work_dir.join("lazy-pages.pid"));
        let _ = std::fs::remove_file(work_dir.join("restored.pid"));
        let devnull = std::fs::File::open("/dev/null").map_err(RunError::Io)?;
        let (status_r, status_w) = pipe_pair()?;
        let pipes = ControlPipes::new().map_err(RunError::Io)?;
        let pipe_inodes = pipes.inodes().map_err(RunError::Io)?;
        let fd = devnull.as_raw_fd();
        let fds = vec![
            fd,
            fd,
            fd,
            status_w.as_raw_fd(),
            pipes.agent_requests.as_raw_fd(),
            pipes.agent_events.as_raw_fd(),
        ];
        // The helper's pidfd: it ends once CRIU has.
        let started = std::time::Instant::now();
        let helper = self.launch(id, spec, cgroup, fds, false, Some(restore)).await?;
        self.unregister(id);
        let ControlPipes { host_requests, host_events, agent_requests, agent_events } = pipes;
        drop((status_w, agent_requests, agent_events, devnull));
        let mut status = String::new();
        let mut rx = pipe::Receiver::from_owned_fd(status_r).map_err(RunError::Io)?;
        let read = tokio::time::timeout(RESTORE_TIMEOUT, rx.read_to_string(&mut status)).await;
        if read.is_err() {
            crate::run::kill(helper.pidfd.as_raw_fd());
            return Err(RunError::Checkpoint("the restore did not finish in time".into()));
        }
        let helper_ms = started.elapsed().as_secs_f64() * 1000.0;
        // `time` lines mark the helper's stages; the last line is its answer.
        let laps: Vec<&str> = status.lines().filter_map(|l| l.strip_prefix("time ")).collect();
        let line = status.lines().rfind(|l| !l.starts_with("time ")).unwrap_or("").trim();
        let (pid, lazy_pid): (i32, Option<i32>) = if let Some(pids) = line.strip_prefix("restored ")
        {
            let bad = || RunError::Checkpoint(format!("restore said {line:?}"));
            let mut pids = pids.split(' ').map(|p| p.parse::<i32>().map_err(|_| bad()));
            let pid = pids.next().ok_or_else(bad)??;
            (pid, pids.next().transpose()?)
        } else if line.starts_with("criu ") {
            return Err(criu_failed("restore", &work_dir.join("restore.log")));
        } else {
            return Err(setup_failure(line)
                .unwrap_or_else(|| RunError::Checkpoint("the restore helper died".into())));
        };
        let pidfd = pidfd_open(pid).map_err(RunError::Io)?;
        // The pid was read from a file: make sure it is the restored PID 1 in our cgroup.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cgroups.lines().any(|l| l.ends_with(&format!("/{id}"))) {
            return Err(RunError::Checkpoint(format!("restored pid {pid} is not in {id}")));
        }
        let pidfd = Arc::new(pidfd);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), Arc::clone(&pidfd));
        // The page server may have finished (and its pid been reused) already: only a
        // process that is CRIU's counts.
        let lazy_pages = lazy_pid.and_then(|pid| {
            let pidfd = pidfd_open(pid).ok()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            (exe == restore_criu).then_some(pidfd)
        });
        let agent = AgentClient::connect_restored(host_requests, host_events).await?;
        let connected_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(sandbox = %id, helper_ms, connected_ms, lazy = lazy_pages.is_some(),
            laps = %laps.join(", "), "criu restore");
        Ok(StartedAgent { pid, pidfd, agent, pipe_inodes, lazy_pages })
    }
}

/// Freezes the sandbox at a moment when no thread is inside vfork(): a vfork parent waits
/// in the kernel until its child execs, and CRIU, which stops the child, could then never
/// stop the parent (shells vfork for every command, Python's subprocess too).
async fn freeze_outside_vfork(freezer: &crate::cgroup::Freezer) -> Result<(), RunError> {
    for _ in 0..VFORK_RETRIES {
        freezer.freeze().await?;
        if !freezer.pids().into_iter().any(in_vfork) {
            return Ok(());
        }
        freezer.thaw()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(RunError::Checkpoint("a process stayed inside vfork() for a second".into()))
}

const VFORK_RETRIES: usize = 200;

/// Whether a thread of `pid` waits for its vfork child (where the kernel parks it).
fn in_vfork(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|task| {
        let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
        matches!(wchan.trim(), "kernel_clone" | "_do_fork" | "do_fork")
    })
}

/// How long a checkpoint waits for a lazy restore to finish loading memory.
const LAZY_PAGES_TIMEOUT: Duration = Duration::from_secs(60);

/// The keys the images know the sandbox's network namespace and /dev by.
const EXTERNAL_NET: &str = "net";
const EXTERNAL_DEV: &str = "dev";

/// Processes the restore helper and CRIU may add to a sandbox's cgroup while restoring.
const RESTORE_PIDS: u32 = 16;

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Flushes the sandbox's root filesystem (the overlay, so its upper layer, so the disk
/// image behind the loop device) through a descriptor of its root directory.
fn sync_sandbox_fs(pid: i32) -> io::Result<()> {
    let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(root.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies a (sparse) file: a reflink where the filesystem has them (XFS, btrfs), else
/// only its data extents, so the copy is as sparse as the source. Returns the bytes of
/// data copied (0 for a reflink).
pub fn copy_sparse(source: &Path, target: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(source)?;
    let dst = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(target)?;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE between two descriptors we own.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(0);
    }
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut copied = 0u64;
    let mut offset: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (offset as u64) < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(src.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole is left
                e => return Err(e),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = hole.min(len as i64);
        let mut at = data;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], at as u64)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], at as u64)?;
            at += n as i64;
            copied += n as u64;
        }
        offset = end;
    }
    Ok(copied)
}

/// [`copy_sparse`], on disk before it returns: for copies a record will point at.
pub fn copy_sparse_durable(source: &Path, target: &Path) -> io::Result<u64> {
    let copied = copy_sparse(source, target)?;
    std::fs::File::open(target)?.sync_all()?;
    Ok(copied)
}

/// A CRIU failure: its error lines go to the server's log (they name host paths and
/// addresses no tenant should see), the caller gets the kind of failure.
fn criu_failed(what: &str, log: &Path) -> RunError {
    let kept = keep_failed_log(what, log);
    let kept = kept.as_deref().unwrap_or(log);
    tracing::warn!(log = %kept.display(), errors = %criu_errors(log), "criu {what} failed");
    RunError::Checkpoint(format!("criu {what} failed; the server log has CRIU's errors"))
}

/// The most CRIU logs of failures kept for an operator (the newest).
const FAILED_LOGS_KEPT: usize = 20;

/// Copies a failed operation's CRIU log beside its work directories (`failed/`), since
/// those are removed: the error lines alone rarely say why.
fn keep_failed_log(what: &str, log: &Path) -> Option<std::path::PathBuf> {
    let work = log.parent()?;
    let dir = work.parent()?.join("failed");
    std::fs::create_dir_all(&dir).ok()?;
    let name = format!("{}.{what}.log", work.file_name()?.to_string_lossy());
    let kept = dir.join(name);
    std::fs::copy(log, &kept).ok()?;
    let mut logs: Vec<_> = std::fs::read_dir(&dir).ok()?.flatten().collect();
    if logs.len() > FAILED_LOGS_KEPT {
        logs.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        for old in &logs[..logs.len() - FAILED_LOGS_KEPT] {
            let _ = std::fs::remove_file(old.path());
        }
    }
    Some(kept)
}

/// The error lines of a CRIU log (the last few), for a message an operator can act on.
fn criu_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE for self"))
        .collect();
    let tail = &errors[errors.len().saturating_sub(3)..];
    if tail.is_empty() {
        format!("no error in {}", log.display())
    } else {
        tail.iter().map(|l| l.trim()).collect::<Vec<_>>().join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copies_keep_data_and_holes() {
        let dir = std::env::temp_dir().join(format!("faas-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        let f = std::fs::File::create(&src).expect("create");
        f.set_len(64 << 20).expect("len");
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"start", 0).expect("write");
        f.write_all_at(b"middle", 32 << 20).expect("write");
        drop(f);
        copy_sparse(&src, &dst).expect("copy");
        assert_eq!(std::fs::read(&src).expect("src"), std::fs::read(&dst).expect("dst"));
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&dst).expect("meta").blocks();
        assert!(blocks * 512 < 1 << 20, "the copy is sparse ({blocks} blocks)");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
