//! `faas doctor`: which kernel features and tools this host has, and what each missing one
//! takes away. Read-only: it changes nothing on the host.

use std::path::Path;
use std::process::Command;

use faas_sandbox::CgroupRoot;

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What does not work without it.
    pub needed_for: &'static str,
}

pub fn run() -> Vec<Check> {
    let mut checks = Vec::new();
    let mut add =
        |name, ok, detail: String, needed_for| checks.push(Check { name, ok, detail, needed_for });

    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    add("root", euid == 0, format!("euid {euid}"), "every sandbox (namespaces, mounts, cgroups)");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    add("kernel", !kernel.is_empty(), kernel.trim().to_owned(), "everything");
    let missing_ns: Vec<&str> = ["pid", "mnt", "net", "uts", "ipc", "cgroup"]
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    add(
        "namespaces",
        missing_ns.is_empty(),
        if missing_ns.is_empty() {
            "pid mnt net uts ipc cgroup".into()
        } else {
            format!("missing: {missing_ns:?}")
        },
        "every sandbox",
    );
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let overlay = filesystems.lines().any(|l| l.trim_end().ends_with("overlay"));
    add(
        "overlayfs",
        overlay,
        if overlay { "available".into() } else { "not in /proc/filesystems".into() },
        "every sandbox (root filesystem)",
    );
    match CgroupRoot::probe("faas") {
        Ok(version) => add("cgroups", true, version.as_str().into(), "limits and usage"),
        Err(e) => add("cgroups", false, e.to_string(), "limits and usage"),
    }
    let seccomp = faas_confine::Filters::build();
    add(
        "seccomp",
        seccomp.is_ok(),
        seccomp.map(|_| "filter builds".into()).unwrap_or_else(|e| e.to_string()),
        "every sandbox",
    );
    let pidfd = Path::new("/proc/self/fdinfo").exists() && kernel_at_least(&kernel, 5, 10);
    add("pidfd + clone3", pidfd, "kernel >= 5.10".into(), "every sandbox");

    let loop_ok = Path::new("/dev/loop-control").exists();
    add(
        "loop devices",
        loop_ok,
        if loop_ok { "/dev/loop-control".into() } else { "no /dev/loop-control".into() },
        "persistent instances (each one's disk is a loop-mounted image)",
    );
    let mkfs = Command::new("mkfs.ext4").arg("-V").output().is_ok_and(|o| o.status.success());
    add(
        "mkfs.ext4",
        mkfs,
        if mkfs { "found".into() } else { "not found (package e2fsprogs)".into() },
        "persistent instances (their disks)",
    );
    criu_checks(&mut add);
    let bwrap = Command::new("bwrap").arg("--version").output().is_ok_and(|o| o.status.success());
    add(
        "bubblewrap",
        bwrap,
        if bwrap { "found".into() } else { "not found".into() },
        "the benchmark's reference run only",
    );
    for (name, path) in [("python3", "/usr/bin/python3"), ("node", "/usr/bin/node")] {
        let ok = Path::new(path).exists();
        add(name, ok, path.into(), "that language in the built-in host image");
    }
    add(
        "network egress",
        false,
        "not implemented: sandboxes get an empty network namespace".into(),
        "requests with network: true (answered 501)",
    );
    checks
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// CRIU: the version, faas's patch, the kernel features checkpoint and restore need, and
/// userfaultfd for lazy restores.
fn criu_checks(add: &mut impl FnMut(&'static str, bool, String, &'static str)) {
    let path = crate::config::SnapshotConfig::default().criu_path;
    let criu = faas_sandbox::Criu::detect(&path);
    let needed_for = "memory snapshots, restores and branches of running instances";
    add(
        "criu >= 4.2",
        criu.is_ok(),
        match &criu {
            Ok(criu) => format!("{}: {}", path.display(), criu.version),
            Err(why) => format!("{why} (scripts/setup.sh builds it)"),
        },
        needed_for,
    );
    let Ok(criu) = criu else { return };
    let stamp = std::fs::read_to_string("/usr/local/share/faas/criu.stamp").unwrap_or_default();
    add(
        "criu with faas's patch",
        !stamp.is_empty(),
        if stamp.is_empty() {
            "no stamp: an unpatched CRIU cannot dump sandbox processes without CAP_SYS_RESOURCE"
                .into()
        } else {
            stamp.trim().to_owned()
        },
        needed_for,
    );
    let check = |feature: Option<&str>| {
        let mut cmd = Command::new(&criu.binary);
        cmd.arg("check");
        if let Some(feature) = feature {
            cmd.args(["--feature", feature]);
        }
        match cmd.output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                let last = text.lines().last().unwrap_or("").trim().to_owned();
                (out.status.success(), last)
            }
            Err(e) => (false, e.to_string()),
        }
    };
    let (ok, detail) = check(None);
    add("checkpoint and restore", ok, format!("criu check: {detail}"), needed_for);
    let (ok, detail) = check(Some("uffd-noncoop"));
    add(
        "lazy pages (userfaultfd)",
        ok,
        format!("criu check --feature uffd-noncoop: {detail}"),
        "lazy restores of large checkpoints ([snapshots] lazy_restore_min_mb)",
    );
    // KSM is host configuration: faas marks restored memory mergeable when asked to
    // (`[snapshots] ksm = true`); ksmd must be running for pages to be shared.
    let run = std::fs::read_to_string("/sys/kernel/mm/ksm/run").map(|r| r.trim().to_owned());
    add(
        "ksm",
        run.is_ok(),
        match &run {
            Ok(r) if r == "1" => "ksmd is running".into(),
            Ok(r) => {
                format!("available, ksmd not running (run = {r}): echo 1 > /sys/kernel/mm/ksm/run")
            }
            Err(e) => format!("/sys/kernel/mm/ksm: {e}"),
        },
        "shared memory of branches ([snapshots] ksm = true)",
    );
}
