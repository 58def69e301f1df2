//! Merging branches: a new filesystem snapshot whose files are a base snapshot's with
//! the changes of one or more instances (usually branches of it) applied. A change is a
//! path of an instance's writable layer that differs from the base's: added, modified or
//! removed (overlay whiteouts and opaque directories are paths like any other). Two
//! instances that change the same path differently, or one that removes or replaces a
//! directory another changes something under, conflict: the merge then reports the paths
//! and writes nothing.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use faas_api::{ChangeKind, InstanceStatus, MergeRequest, MergeResult, MergedChange};
use faas_sandbox::checkpoint::{copy_sparse, copy_sparse_durable};
use faas_sandbox::disk::{DiskImage, with_mounted};

use crate::plan::invalid;
use crate::{Engine, EngineError, Tenant};

/// What one path is in a writable layer (directories' times are left out: they change
/// whenever something inside does).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        opaque: bool,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
    },
    Symlink {
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    /// Whiteouts (0/0 character devices), FIFOs and other special files.
    Special {
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    },
}

/// A merge's outcome: the changes applied (branch index, path, kind), or the paths at
/// which the branches conflict.
type Merged = Result<Vec<(usize, PathBuf, ChangeKind)>, Vec<PathBuf>>;

#[derive(Debug, Clone, PartialEq)]
enum Change {
    Set(Node),
    Remove,
}

/// Every path under `root` (relative), without following symlinks.
fn scan(root: &Path) -> std::io::Result<BTreeMap<PathBuf, Node>> {
    let mut nodes = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&dir))? {
            let entry = entry?;
            let rel = dir.join(entry.file_name());
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let (mode, uid, gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
            let kind = meta.file_type();
            let node = if kind.is_dir() {
                stack.push(rel.clone());
                Node::Dir { mode, uid, gid, opaque: is_opaque(&path) }
            } else if kind.is_file() {
                Node::File { mode, uid, gid, size: meta.len() }
            } else if kind.is_symlink() {
                Node::Symlink { target: std::fs::read_link(&path)?, uid, gid }
            } else {
                Node::Special { mode: meta.mode(), uid, gid, rdev: meta.rdev() }
            };
            nodes.insert(rel, node);
        }
    }
    Ok(nodes)
}

const OPAQUE: &str = "trusted.overlay.opaque";

fn is_opaque(path: &Path) -> bool {
    let (Ok(path), Ok(name)) = (CString::new(path.as_os_str().as_bytes()), CString::new(OPAQUE))
    else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    n == 1 && value[0] == b'y'
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Whether `a` (under `root_a`) and `b` (under `root_b`) are the same at `path`.
fn same(root_a: &Path, a: &Change, root_b: &Path, b: &Change, path: &Path) -> bool {
    match (a, b) {
        (Change::Set(Node::File { .. }), Change::Set(Node::File { .. })) if a == b => {
            same_content(&root_a.join(path), &root_b.join(path)).unwrap_or(false)
        }
        _ => a == b,
    }
}

/// The changes of `upper` against the base's `base_upper`.
fn diff(
    base_upper: &Path,
    base: &BTreeMap<PathBuf, Node>,
    upper: &Path,
) -> std::io::Result<BTreeMap<PathBuf, Change>> {
    let nodes = scan(upper)?;
    let mut changes = BTreeMap::new();
    for (path, node) in &nodes {
        let unchanged = base.get(path).is_some_and(|old| {
            let (a, b) = (Change::Set(old.clone()), Change::Set(node.clone()));
            same(base_upper, &a, upper, &b, path)
        });
        if !unchanged {
            changes.insert(path.clone(), Change::Set(node.clone()));
        }
    }
    for path in base.keys().filter(|p| !nodes.contains_key(*p)) {
        changes.insert(path.clone(), Change::Remove);
    }
    // Below a path this branch removed or replaced with a non-directory, nothing else
    // needs doing (paths sort by component: a path's descendants follow it).
    let mut cleared: Option<PathBuf> = None;
    changes.retain(|path, change| {
        if cleared.as_ref().is_some_and(|c| path.starts_with(c)) {
            return false;
        }
        if !matches!(change, Change::Set(Node::Dir { .. })) {
            cleared = Some(path.clone());
        }
        true
    });
    Ok(changes)
}

/// Paths at which the branches' changes disagree: the same path changed differently, or
/// a path one removes or replaces (anything but a directory's metadata) while another
/// changes something below it.
fn conflicts(uppers: &[PathBuf], changes: &[BTreeMap<PathBuf, Change>]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for i in 0..changes.len() {
        for j in (0..changes.len()).filter(|j| *j != i) {
            for (path, a) in &changes[i] {
                if i < j
                    && let Some(b) = changes[j].get(path)
                    && !same(&uppers[i], a, &uppers[j], b, path)
                {
                    found.push(path.clone());
                }
                let clears = !matches!(a, Change::Set(Node::Dir { .. }));
                // Paths sort by component: whatever is below `path` follows it.
                let below = changes[j]
                    .range(path.clone()..)
                    .take_while(|(p, _)| p.starts_with(path))
                    .any(|(p, _)| p != path);
                if clears && below {
                    found.push(path.clone());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn cpath(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Makes `target` what `source` is (`node`).
fn apply(source: &Path, target: &Path, change: &Change) -> std::io::Result<()> {
    let node = match change {
        Change::Remove => return remove(target),
        Change::Set(node) => node,
    };
    let existing = std::fs::symlink_metadata(target).ok();
    if let Node::Dir { mode, uid, gid, opaque } = node {
        if !existing.as_ref().is_some_and(|m| m.is_dir()) {
            remove(target)?;
            std::fs::create_dir(target)?;
        }
        chown(target, *uid, *gid)?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(*mode))?;
        let (path, name) = (cpath(target)?, cpath(Path::new(OPAQUE))?);
        // SAFETY: valid C strings and value buffers.
        let done = unsafe {
            if *opaque {
                libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0)
            } else {
                libc::lremovexattr(path.as_ptr(), name.as_ptr())
            }
        };
        let error = std::io::Error::last_os_error();
        // An opaque mark that cannot be set would let the base's files show through.
        if done < 0 && (*opaque || error.raw_os_error() != Some(libc::ENODATA)) {
            return Err(error);
        }
        return Ok(());
    }
    remove(target)?;
    match node {
        Node::File { mode, uid, gid, .. } => {
            std::fs::copy(source, target)?;
            chown(target, *uid, *gid)?;
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(*mode))?;
        }
        Node::Symlink { target: link, uid, gid } => {
            std::os::unix::fs::symlink(link, target)?;
            chown(target, *uid, *gid)?;
        }
        Node::Special { mode, uid, gid, rdev } => {
            let path = cpath(target)?;
            // SAFETY: a valid C string; the server holds CAP_MKNOD.
            if unsafe { libc::mknod(path.as_ptr(), *mode, *rdev) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            chown(target, *uid, *gid)?;
        }
        Node::Dir { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Diffs every branch against the base, and applies them to `merged` unless they
/// conflict. Runs with the disks mounted: [base, branches..., merged].
fn merge_mounted(dirs: &[PathBuf]) -> std::io::Result<Merged> {
    let upper = |d: &PathBuf| d.join("upper");
    let (base_dir, rest) = dirs.split_first().ok_or_else(|| std::io::Error::other("no base"))?;
    let (merged_dir, branch_dirs) =
        rest.split_last().ok_or_else(|| std::io::Error::other("no merge target"))?;
    let base_upper = upper(base_dir);
    let base = scan(&base_upper)?;
    let uppers: Vec<PathBuf> = branch_dirs.iter().map(upper).collect();
    let changes: Vec<BTreeMap<PathBuf, Change>> =
        uppers.iter().map(|u| diff(&base_upper, &base, u)).collect::<Result<_, _>>()?;
    let conflicting = conflicts(&uppers, &changes);
    if !conflicting.is_empty() {
        return Ok(Err(conflicting));
    }
    // One change per path (equal ones from several branches count once), parents first.
    let mut all: BTreeMap<PathBuf, (usize, Change)> = BTreeMap::new();
    for (i, set) in changes.iter().enumerate() {
        for (path, change) in set {
            all.entry(path.clone()).or_insert((i, change.clone()));
        }
    }
    let merged_upper = upper(merged_dir).canonicalize()?;
    let mut report = Vec::new();
    for (path, (i, change)) in &all {
        // This thread sees the host's files: a symlink in the merged layer must never
        // lead a write out of it (changes to a path's parents come first, so it cannot).
        let target = merged_upper.join(path);
        let parent = target.parent().unwrap_or(&merged_upper).canonicalize()?;
        if !parent.starts_with(&merged_upper) {
            return Err(std::io::Error::other(format!("/{} leads outside", path.display())));
        }
        apply(&uppers[*i].join(path), &target, change)?;
        let kind = match (change, base.contains_key(path)) {
            (Change::Remove, _) => ChangeKind::Removed,
            (_, true) => ChangeKind::Modified,
            (_, false) => ChangeKind::Added,
        };
        report.push((*i, path.clone(), kind));
    }
    Ok(Ok(report))
}

impl Engine {
    /// A filesystem snapshot: the base snapshot's files with the instances' changes.
    pub async fn merge_branches(
        &self,
        tenant: &Tenant,
        req: MergeRequest,
    ) -> Result<MergeResult, EngineError> {
        let max = self.config.snapshots.max_branches as usize;
        if req.instance_ids.is_empty() || req.instance_ids.len() > max {
            return Err(invalid("instance_ids", format!("between 1 and {max} instances")));
        }
        self.check_snapshot_storage(tenant).await?;
        let mut unique = req.instance_ids.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != req.instance_ids.len() {
            return Err(invalid("instance_ids", "each instance once"));
        }
        crate::instances::validate_metadata(&req.metadata)?;
        let (base, manifest) = self.snapshot_with_manifest(tenant, &req.base_snapshot_id).await?;
        let lives = req
            .instance_ids
            .iter()
            .map(|id| self.live(tenant, id))
            .collect::<Result<Vec<_>, _>>()?;
        let id = format!("sn_{}", uuid::Uuid::now_v7().simple());
        // Disk copies are as large as the disks: they go to the data directory, not to
        // the run directory's tmpfs.
        let work = self.snapshot_dir(&id).with_extension("merge");
        let partial = self.snapshot_dir(&id).with_extension("partial");
        let result = async {
            let _hot = self.hot_snapshot(&tenant.0, &base.id).await?;
            self.merge_into(&base.id, &lives, &work, &partial).await
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        let report = match result {
            Ok(Ok(report)) => report,
            Ok(Err(paths)) => {
                let _ = tokio::fs::remove_dir_all(&partial).await;
                let list: Vec<String> = paths.iter().map(|p| format!("/{}", p.display())).collect();
                return Err(EngineError::Conflict {
                    message: format!(
                        "the instances' changes conflict; nothing was merged: {}",
                        list.join(", ")
                    ),
                });
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&partial).await;
                return Err(e);
            }
        };
        let changes = report
            .into_iter()
            .map(|(i, path, change)| MergedChange {
                path: format!("/{}", path.display()),
                instance_id: req.instance_ids[i].clone(),
                change,
            })
            .collect();
        let snapshot =
            self.store_filesystem_snapshot(tenant, &id, &partial, &base, manifest, &req).await?;
        Ok(MergeResult { snapshot, changes })
    }

    /// Copies the disks, diffs and applies; the merged disk lands in `partial/disk.img`.
    async fn merge_into(
        &self,
        base_id: &str,
        lives: &[std::sync::Arc<crate::instances::Live>],
        work: &Path,
        partial: &Path,
    ) -> Result<Merged, EngineError> {
        let io =
            |what: &'static str| move |source: std::io::Error| EngineError::Io { what, source };
        tokio::fs::create_dir_all(work).await.map_err(io("preparing a merge"))?;
        tokio::fs::create_dir_all(partial).await.map_err(io("preparing a merge"))?;
        let mut images =
            vec![DiskImage { path: self.snapshot_dir(base_id).join("disk.img"), writable: false }];
        for (i, live) in lives.iter().enumerate() {
            let copy = work.join(format!("{i}.img"));
            let _guard = live.lifecycle.lock().await;
            let record = live.record();
            match record.status {
                InstanceStatus::Running => self.running(live)?.copy_disk(&copy).await?,
                InstanceStatus::Stopped | InstanceStatus::Failed => {
                    let source = self.instance_disk(&record.id);
                    let target = copy.clone();
                    tokio::task::spawn_blocking(move || copy_sparse(&source, &target))
                        .await
                        .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
                        .map_err(io("copying an instance's disk"))?;
                }
                status => {
                    return Err(EngineError::Conflict {
                        message: format!(
                            "instance {} is {}; it must be running or stopped",
                            record.id,
                            status.as_str()
                        ),
                    });
                }
            }
            images.push(DiskImage { path: copy, writable: false });
        }
        let merged = partial.join("disk.img");
        let (source, target) = (images[0].path.clone(), merged.clone());
        tokio::task::spawn_blocking(move || copy_sparse_durable(&source, &target))
            .await
            .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
            .map_err(io("copying the base disk"))?;
        images.push(DiskImage { path: merged, writable: true });
        let scratch = self.config.run_dir.join("disks");
        tokio::fs::create_dir_all(&scratch).await.map_err(io("preparing a merge"))?;
        let merged =
            tokio::task::spawn_blocking(move || with_mounted(&scratch, images, merge_mounted))
                .await
                .map_err(|e| EngineError::Sandbox(faas_sandbox::RunError::Task(e)))?
                .map_err(io("mounting disks for a merge"))?
                .map_err(io("merging"))?;
        Ok(merged)
    }
}
