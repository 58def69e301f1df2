//! Instance disk images opened by the server itself (merging branches), without a
//! sandbox and without mounting anything the host sees: the work runs on a thread of its
//! own that enters a private mount namespace, where the images are attached to loop
//! devices and mounted. When the thread ends, its namespace and mounts go with it and the
//! loop devices free themselves.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::init::attach_loop;

/// One image to mount: read-only, or writable (synced and unmounted before returning).
#[derive(Debug, Clone)]
pub struct DiskImage {
    pub path: PathBuf,
    pub writable: bool,
}

/// Runs `work` with each of `images` mounted (ext4) at the directory of the same index.
/// `scratch` is an existing directory of the server's; inside the private namespace a
/// tmpfs covers it and holds the mount points.
pub fn with_mounted<T: Send + 'static>(
    scratch: &Path,
    images: Vec<DiskImage>,
    work: impl FnOnce(&[PathBuf]) -> T + Send + 'static,
) -> io::Result<T> {
    let scratch = scratch.to_owned();
    std::thread::Builder::new()
        .name("faas-disks".into())
        .spawn(move || {
            // Mount namespaces are per task: this thread's own, the server's untouched.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some("tmpfs"),
                &scratch,
                Some("tmpfs"),
                MsFlags::MS_NOSUID,
                Some("size=1m,mode=0700"),
            )?;
            let mut dirs = Vec::with_capacity(images.len());
            for (i, image) in images.iter().enumerate() {
                let dir = scratch.join(i.to_string());
                std::fs::create_dir(&dir)?;
                let (device, fd) = attach_loop(&image.path, !image.writable)
                    .map_err(|f| io::Error::from_raw_os_error(f.errno))?;
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                if !image.writable {
                    flags |= MsFlags::MS_RDONLY;
                }
                let mounted = mount(Some(&device), &dir, Some("ext4"), flags, None::<&str>);
                // SAFETY: our descriptor; once mounted, the mount holds the device.
                unsafe { libc::close(fd) };
                mounted?;
                dirs.push(dir);
            }
            let result = work(&dirs);
            for (dir, image) in dirs.iter().zip(&images) {
                if image.writable {
                    let root = std::fs::File::open(dir)?;
                    // SAFETY: syncfs on a descriptor we own.
                    if unsafe { libc::syncfs(root.as_raw_fd()) } < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    drop(root);
                    // Unmounted here, not lazily with the namespace: the image is complete
                    // when this returns.
                    umount2(dir, MntFlags::empty())?;
                }
            }
            Ok(result)
        })?
        .join()
        .map_err(|_| io::Error::other("the disk thread panicked"))?
}
