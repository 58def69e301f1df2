//! Images: the read-only root filesystems sandboxes start from.
//!
//! The built-in image `host` works on a fresh machine with no registry: a small skeleton
//! (its own /etc with only a synthetic passwd, hosts and the loader cache, empty mount
//! points) with the host's /usr bound read-only on top, which gives python3, node, bash
//! and sh. Imported rootfs tarballs and registry pulls join behind [`ImageStore`].

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use faas_sandbox::BindMount;

use crate::config::Config;

pub const DEFAULT_IMAGE: &str = "host";

/// A resolved image: what the launcher mounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub name: String,
    pub rootfs: PathBuf,
    pub binds: Vec<BindMount>,
    /// Environment every run of this image starts with (requests add to it).
    pub env: Vec<(String, String)>,
}

pub trait ImageStore: Send + Sync {
    /// The image called `name`, or `None`.
    fn resolve(&self, name: &str) -> Option<Image>;
    fn names(&self) -> Vec<String>;
}

/// Images kept in the data directory.
pub struct LocalImages {
    host: Image,
}

impl LocalImages {
    /// Builds the host image's skeleton afresh (a crashed predecessor's copy may be stale).
    pub fn prepare(config: &Config) -> io::Result<Self> {
        let dir = config.data_dir.join("images").join(DEFAULT_IMAGE);
        let rootfs = dir.join("rootfs");
        let staging = dir.join("rootfs.new");
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)?;
        let binds = build_host_skeleton(&staging, config.sandbox_uid, config.sandbox_gid)?;
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs)?;
        }
        fs::rename(&staging, &rootfs)?;
        check_overlay_path(&rootfs)?;
        let env = vec![
            ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("HOME".into(), "/home/user".into()),
            ("USER".into(), "user".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        Ok(Self { host: Image { name: DEFAULT_IMAGE.into(), rootfs, binds, env } })
    }
}

impl ImageStore for LocalImages {
    fn resolve(&self, name: &str) -> Option<Image> {
        (name == DEFAULT_IMAGE || name == "default").then(|| self.host.clone())
    }

    fn names(&self) -> Vec<String> {
        vec![DEFAULT_IMAGE.into()]
    }
}

/// overlayfs takes its lower directory in a comma- and colon-separated option string.
fn check_overlay_path(path: &Path) -> io::Result<()> {
    let s = path.to_string_lossy();
    if s.contains(',') || s.contains(':') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image path {s} has ',' or ':'"),
        ));
    }
    Ok(())
}

/// Lays out the host image's skeleton in `root` and returns the host directories to bind.
fn build_host_skeleton(root: &Path, uid: u32, gid: u32) -> io::Result<Vec<BindMount>> {
    let dir = |rel: &str, mode: u32| -> io::Result<()> {
        let path = root.join(rel);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    };
    for (rel, mode) in [
        ("usr", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("var/tmp", 0o1777),
        ("root", 0o700),
        ("home/user", 0o755),
    ] {
        dir(rel, mode)?;
    }
    std::os::unix::fs::chown(root.join("home/user"), Some(uid), Some(gid))?;

    let mut binds = vec![BindMount { source: "/usr".into(), target: "/usr".into() }];
    // Merged-/usr hosts have /bin -> usr/bin and so on; older ones have real directories,
    // which are bound like /usr.
    for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(name);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                symlink(fs::read_link(&host)?, root.join(name))?
            }
            Ok(meta) if meta.is_dir() => {
                dir(name, 0o755)?;
                binds.push(BindMount { source: host, target: format!("/{name}") });
            }
            _ => {}
        }
    }

    let etc = root.join("etc");
    fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nuser:x:{uid}:{gid}:user:/home/user:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
    )?;
    fs::write(etc.join("group"), format!("root:x:0:\nuser:x:{gid}:\nnogroup:x:65534:\n"))?;
    fs::write(etc.join("hostname"), "sandbox\n")?;
    fs::write(etc.join("hosts"), "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n")?;
    fs::write(etc.join("nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files dns\n")?;
    fs::write(etc.join("resolv.conf"), "")?;
    // What programs from the host's /usr expect to find in /etc: no secrets among them.
    for file in ["ld.so.cache", "ld.so.conf", "mime.types"] {
        let host = Path::new("/etc").join(file);
        if host.is_file() {
            fs::copy(&host, etc.join(file))?;
        }
    }
    if let Ok(target) = fs::read_link("/etc/localtime") {
        symlink(target, etc.join("localtime"))?;
    }
    copy_symlinks(Path::new("/etc/alternatives"), &etc.join("alternatives"))?;
    let certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if certs.is_file() {
        fs::create_dir_all(etc.join("ssl/certs"))?;
        fs::copy(certs, etc.join("ssl/certs/ca-certificates.crt"))?;
    }
    Ok(binds)
}

/// Copies a directory of symlinks (like /etc/alternatives) as symlinks.
fn copy_symlinks(from: &Path, to: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    fs::create_dir_all(to)?;
    for entry in entries.flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            symlink(target, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}
