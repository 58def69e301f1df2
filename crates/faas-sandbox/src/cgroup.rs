//! Per-sandbox cgroups: limits (memory without swap, CPU quota, pids) and the usage read
//! back after a run. The host's layout is detected once at start-up: pure cgroup v2 where
//! its controllers are usable, cgroup v1 hierarchies otherwise.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// Controllers every sandbox needs.
/// `freezer` holds a sandbox still while it is checkpointed.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// v1 hierarchies used when present: without a freezer, running sandboxes cannot be
/// checkpointed (and say so), everything else works.
const V1_OPTIONAL: [&str; 1] = ["freezer"];
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// CFS period for the CPU quota.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {reason}")]
    Unavailable { reason: String },
    #[error("cgroup {path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still busy after killing its processes")]
    Busy { path: PathBuf },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { path: path.to_owned(), op, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// The limits one sandbox runs under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU cores (1.5 = one and a half cores of time per wall-clock second).
    pub cpus: f64,
    pub pids: u32,
}

/// Resources a sandbox used, read before its cgroup is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_ns: u64,
    pub peak_memory_bytes: u64,
    pub oom_kills: u64,
}

/// Where faas keeps its cgroups: one parent directory per hierarchy (v1) or one (v2).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    version: CgroupVersion,
    /// v1: (controller, parent dir) for each needed controller; hierarchies that carry
    /// several controllers appear once per controller with the same dir. v2: one entry.
    parents: Vec<(&'static str, PathBuf)>,
}

impl CgroupRoot {
    /// Detects the layout from /proc/self/mountinfo and creates the parent directories
    /// named `parent` (for example `faas`) under each hierarchy.
    pub fn detect(parent: &str) -> Result<Self, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err(Path::new("/proc/self/mountinfo"), "read"))?;
        let root = Self::from_mountinfo(&mountinfo, parent)?;
        root.prepare_parents()?;
        Ok(root)
    }

    /// Detects the layout without creating anything (for `faas doctor`).
    pub fn probe(parent: &str) -> Result<CgroupVersion, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err(Path::new("/proc/self/mountinfo"), "read"))?;
        Ok(Self::from_mountinfo(&mountinfo, parent)?.version)
    }

    fn from_mountinfo(mountinfo: &str, parent: &str) -> Result<Self, CgroupError> {
        let mut v2_mount = None;
        let mut v1: Vec<(&'static str, PathBuf)> = Vec::new();
        for line in mountinfo.lines() {
            // mount-id parent-id major:minor root mountpoint opts [optional...] - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = left.split(' ').nth(4).unwrap_or_default();
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let superopts = right.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" => v2_mount = Some(PathBuf::from(mountpoint)),
                "cgroup" => {
                    for controller in V1_CONTROLLERS.into_iter().chain(V1_OPTIONAL) {
                        if superopts.split(',').any(|o| o == controller)
                            && !v1.iter().any(|(c, _)| *c == controller)
                        {
                            v1.push((controller, Path::new(mountpoint).join(parent)));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(mount) = v2_mount {
            let available =
                fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            let usable =
                V2_CONTROLLERS.iter().all(|c| available.split_whitespace().any(|a| a == *c));
            if usable && !V1_CONTROLLERS.iter().any(|c| v1.iter().any(|(v, _)| v == c)) {
                return Ok(Self {
                    version: CgroupVersion::V2,
                    parents: vec![("", mount.join(parent))],
                });
            }
        }
        if V1_CONTROLLERS.iter().all(|c| v1.iter().any(|(v, _)| v == c)) {
            return Ok(Self { version: CgroupVersion::V1, parents: v1 });
        }
        Err(CgroupError::Unavailable {
            reason: format!(
                "need cgroup v2 with {V2_CONTROLLERS:?} enabled, or cgroup v1 hierarchies for {V1_CONTROLLERS:?}"
            ),
        })
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Whether sandboxes can be frozen (always on v2; v1 needs the freezer hierarchy).
    pub fn has_freezer(&self) -> bool {
        self.version == CgroupVersion::V2 || self.parents.iter().any(|(c, _)| *c == "freezer")
    }

    fn dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = self.parents.iter().map(|(_, d)| d.as_path()).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn prepare_parents(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            fs::create_dir_all(dir).map_err(io_err(dir, "create parent"))?;
        }
        if self.version == CgroupVersion::V2 {
            // Children of our parent need the controllers delegated to them.
            let parent = &self.parents[0].1;
            let enable =
                V2_CONTROLLERS.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
            if let Some(grandparent) = parent.parent() {
                write(&grandparent.join("cgroup.subtree_control"), &enable)?;
            }
            write(&parent.join("cgroup.subtree_control"), &enable)?;
        }
        Ok(())
    }

    /// Kills whatever a crashed predecessor left running and removes its cgroups.
    /// Returns how many cgroups were removed.
    pub fn clear_leftovers(&self) -> Result<usize, CgroupError> {
        let mut names = Vec::new();
        for dir in self.dirs() {
            let entries = fs::read_dir(dir).map_err(io_err(dir, "list"))?;
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        for name in &names {
            let cgroup = Cgroup::new(self.version, self.parents.clone(), name.clone());
            cgroup.kill_all();
            cgroup.remove_blocking()?;
        }
        Ok(names.len())
    }

    /// Creates the cgroup `name` with `limits` applied.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let cgroup = Cgroup::new(self.version, self.parents.clone(), name.to_owned());
        for dir in cgroup.dirs() {
            fs::create_dir(&dir).map_err(io_err(&dir, "create"))?;
        }
        if let Err(e) = cgroup.apply(limits) {
            let _ = cgroup.remove_blocking();
            return Err(e);
        }
        Ok(cgroup)
    }
}

/// One sandbox's cgroup (a directory in each hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    parents: Vec<(&'static str, PathBuf)>,
    name: String,
    /// The usage files, kept open: a long-lived sandbox reads them around every run.
    stats: std::sync::OnceLock<Option<StatFiles>>,
}

#[derive(Debug)]
struct StatFiles {
    cpu: File,
    peak: File,
    oom: File,
}

/// Reads a small cgroup file from its start.
fn pread_text(file: &File) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn key_in(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroup {
    fn new(version: CgroupVersion, parents: Vec<(&'static str, PathBuf)>, name: String) -> Self {
        Self { version, parents, name, stats: std::sync::OnceLock::new() }
    }

    fn dir_of(&self, controller: &str) -> PathBuf {
        let parent = match self.version {
            CgroupVersion::V2 => &self.parents[0].1,
            CgroupVersion::V1 => {
                &self.parents.iter().find(|(c, _)| *c == controller).expect("controller detected").1
            }
        };
        parent.join(&self.name)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.parents.iter().map(|(_, d)| d.join(&self.name)).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let quota = ((limits.cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        match self.version {
            CgroupVersion::V1 => {
                let memory = self.dir_of("memory");
                write(&memory.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                // Absent when swap accounting is off; then there is no swap to limit.
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limits.memory_bytes.to_string())?;
                }
                let cpu = self.dir_of("cpu");
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&self.dir_of("pids").join("pids.max"), &limits.pids.to_string())?;
            }
            CgroupVersion::V2 => {
                let dir = self.dir_of("");
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// Sets the process limit (lower than the count held, it only stops new ones).
    pub fn set_pids_max(&self, max: u32) -> Result<(), CgroupError> {
        write(&self.dir_of("pids").join("pids.max"), &max.to_string())
    }

    /// Opens `cgroup.procs` of every hierarchy, for the sandbox to write itself into.
    pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
        self.dirs()
            .into_iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new().write(true).open(&path).map_err(io_err(&path, "open"))
            })
            .collect()
    }

    fn stat_files(&self) -> Option<&StatFiles> {
        self.stats
            .get_or_init(|| {
                let (cpu, peak, oom) = match self.version {
                    CgroupVersion::V1 => {
                        let memory = self.dir_of("memory");
                        (
                            self.dir_of("cpuacct").join("cpuacct.usage"),
                            memory.join("memory.max_usage_in_bytes"),
                            memory.join("memory.oom_control"),
                        )
                    }
                    CgroupVersion::V2 => {
                        let dir = self.dir_of("");
                        (dir.join("cpu.stat"), dir.join("memory.peak"), dir.join("memory.events"))
                    }
                };
                Some(StatFiles {
                    cpu: File::open(cpu).ok()?,
                    peak: OpenOptions::new().read(true).write(true).open(peak).ok()?,
                    oom: File::open(oom).ok()?,
                })
            })
            .as_ref()
    }

    /// Reads what the sandbox used. Missing files read as zero rather than failing the run.
    pub fn usage(&self) -> CgroupUsage {
        if let Some(files) = self.stat_files() {
            let (cpu, peak, oom) =
                (pread_text(&files.cpu), pread_text(&files.peak), pread_text(&files.oom));
            return CgroupUsage {
                cpu_ns: match self.version {
                    CgroupVersion::V1 => cpu.trim().parse().unwrap_or(0),
                    CgroupVersion::V2 => key_in(&cpu, "usage_usec") * 1000,
                },
                peak_memory_bytes: peak.trim().parse().unwrap_or(0),
                oom_kills: key_in(&oom, "oom_kill"),
            };
        }
        match self.version {
            CgroupVersion::V1 => {
                let memory = self.dir_of("memory");
                CgroupUsage {
                    cpu_ns: read_u64(&self.dir_of("cpuacct").join("cpuacct.usage")),
                    peak_memory_bytes: read_u64(&memory.join("memory.max_usage_in_bytes")),
                    oom_kills: read_key(&memory.join("memory.oom_control"), "oom_kill"),
                }
            }
            CgroupVersion::V2 => {
                let dir = self.dir_of("");
                CgroupUsage {
                    cpu_ns: read_key(&dir.join("cpu.stat"), "usage_usec") * 1000,
                    peak_memory_bytes: read_u64(&dir.join("memory.peak")),
                    oom_kills: read_key(&dir.join("memory.events"), "oom_kill"),
                }
            }
        }
    }

    /// Memory charged to the sandbox now (page cache included, as the limit counts it).
    pub fn memory_in_use(&self) -> u64 {
        match self.version {
            CgroupVersion::V1 => read_u64(&self.dir_of("memory").join("memory.usage_in_bytes")),
            CgroupVersion::V2 => read_u64(&self.dir_of("").join("memory.current")),
        }
    }

    /// Restarts peak-memory tracking, so a long-lived sandbox can report each run's own
    /// peak. cgroup v1 only; on v2 the peak stays the sandbox's since its start.
    pub fn reset_peak(&self) {
        if self.version == CgroupVersion::V1
            && let Some(files) = self.stat_files()
        {
            use std::os::unix::fs::FileExt;
            let _ = files.peak.write_at(b"0", 0);
        }
    }

    /// SIGKILLs every process left in the cgroup.
    pub fn kill_all(&self) {
        // A frozen task only dies once thawed.
        if let Some(freezer) = self.freezer() {
            let _ = freezer.thaw();
        }
        for dir in self.dirs() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// The sandbox's freezer (CRIU freezes through its directory, `--freeze-cgroup`).
    /// None on a v1 host without a freezer hierarchy.
    pub fn freezer(&self) -> Option<Freezer> {
        let dir = match self.version {
            CgroupVersion::V1 if !self.parents.iter().any(|(c, _)| *c == "freezer") => {
                return None;
            }
            CgroupVersion::V1 => self.dir_of("freezer"),
            CgroupVersion::V2 => self.dir_of(""),
        };
        Some(Freezer { version: self.version, dir })
    }

    /// Removes the cgroup, retrying briefly while dying processes leave it.
    pub async fn remove(mut self) -> Result<(), CgroupError> {
        self.stats.take();
        for dir in self.dirs() {
            let mut attempt = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 200 => {
                        attempt += 1;
                        if attempt % 20 == 0 {
                            self.kill_all();
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(source) if source.raw_os_error() == Some(libc::EBUSY) => {
                        return Err(CgroupError::Busy { path: dir });
                    }
                    Err(source) => {
                        return Err(CgroupError::Io { path: dir, op: "remove", source });
                    }
                }
            }
        }
        Ok(())
    }

    fn remove_blocking(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            let mut attempt = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 200 => {
                        attempt += 1;
                        self.kill_all();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) if attempt >= 200 => return Err(CgroupError::Busy { path: dir }),
                    Err(source) => {
                        return Err(CgroupError::Io { path: dir, op: "remove", source });
                    }
                }
            }
        }
        Ok(())
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path, "write"))
}

fn read_u64(path: &Path) -> u64 {
    let mut s = String::new();
    File::open(path).and_then(|mut f| f.read_to_string(&mut s)).ok();
    s.trim().parse().unwrap_or(0)
}

/// Reads `key value` from a flat-keyed cgroup file such as `memory.events`.
fn read_key(path: &Path, key: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Holds every process of a sandbox still (a checkpoint's disk copy and dump).
#[derive(Debug, Clone)]
pub struct Freezer {
    version: CgroupVersion,
    pub dir: PathBuf,
}

impl Freezer {
    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn write(&self, frozen: bool) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => {
                write(&self.dir.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" })
            }
            CgroupVersion::V2 => {
                write(&self.dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            }
        }
    }

    fn is_frozen(&self) -> bool {
        match self.version {
            CgroupVersion::V1 => fs::read_to_string(self.dir.join("freezer.state"))
                .is_ok_and(|s| s.trim() == "FROZEN"),
            CgroupVersion::V2 => fs::read_to_string(self.dir.join("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1")),
        }
    }

    /// Freezes and waits until the kernel says every process is.
    pub async fn freeze(&self) -> Result<(), CgroupError> {
        for attempt in 0..400 {
            // Freezing can stall on a task in the middle of something; asking again helps
            // (cgroup v1).
            if attempt % 20 == 0 {
                self.write(true)?;
            }
            if self.is_frozen() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = self.write(false);
        Err(CgroupError::Io {
            path: self.dir.clone(),
            op: "freeze",
            source: io::Error::from_raw_os_error(libc::ETIMEDOUT),
        })
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.write(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/pids rw,relatime shared:14 - cgroup cgroup rw,pids
39 25 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:16 - cgroup cgroup rw,freezer
38 25 0:33 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw
";

    #[test]
    fn detects_v1_with_comounted_cpu() {
        let root = CgroupRoot::from_mountinfo(V1, "faas").expect("v1 detected");
        assert_eq!(root.version(), CgroupVersion::V1);
        let cpu = root.parents.iter().find(|(c, _)| *c == "cpuacct").map(|(_, d)| d.clone());
        assert_eq!(cpu, Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/faas")));
        assert_eq!(root.dirs().len(), 4);
    }

    #[test]
    fn a_v1_host_without_a_freezer_still_runs_sandboxes() {
        let without: String =
            V1.lines().filter(|l| !l.contains("freezer")).map(|l| l.to_owned() + "\n").collect();
        let root = CgroupRoot::from_mountinfo(&without, "faas").expect("v1 detected");
        assert_eq!(root.version(), CgroupVersion::V1);
        let cgroup = Cgroup::new(root.version, root.parents.clone(), "x".into());
        assert!(cgroup.freezer().is_none());
        let with = CgroupRoot::from_mountinfo(V1, "faas").expect("v1 detected");
        assert!(Cgroup::new(with.version, with.parents, "x".into()).freezer().is_some());
    }

    #[test]
    fn refuses_a_host_without_controllers() {
        let err = CgroupRoot::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n", "faas");
        assert!(matches!(err, Err(CgroupError::Unavailable { .. })));
    }

    #[test]
    fn reads_flat_keyed_files() {
        let dir = std::env::temp_dir().join(format!("faas-cg-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("memory.events");
        fs::write(&file, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").expect("write");
        assert_eq!(read_key(&file, "oom_kill"), 2);
        assert_eq!(read_key(&file, "absent"), 0);
        fs::remove_dir_all(&dir).ok();
    }
}
