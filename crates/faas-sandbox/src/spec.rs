//! What the launcher needs to build one sandbox. Sent from the server to the launcher
//! as JSON over a local socket, together with the file descriptors it refers to.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of the server <-> launcher message format. Both sides are the same binary, but a
/// launcher left running across an upgrade must refuse rather than misread.
pub const LAUNCH_PROTOCOL_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Program and arguments. A program without a `/` is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs, the payload's whole environment.
    pub env: Vec<String>,
    /// Absolute path inside the sandbox; created (owned by `uid`) when missing.
    pub workdir: String,
    pub hostname: String,
    /// Read-only lower layer of the root filesystem.
    pub rootfs: PathBuf,
    /// Host directories mounted read-only into the sandbox (for the host image: `/usr`).
    pub binds: Vec<BindMount>,
    /// Size of the sandbox's writable layer, `/tmp` and `/dev/shm` (each a tmpfs of this size,
    /// charged to the sandbox's memory cgroup).
    pub scratch_bytes: u64,
    /// Files written into the sandbox before the payload starts, read from the blob fd.
    pub files: Vec<FileSpec>,
    pub uid: u32,
    pub gid: u32,
    /// RLIMIT_FSIZE: the largest file the payload may write.
    pub max_file_bytes: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// An ext4 image file on the host holding the writable layer (persistent instances):
    /// attached to a loop device and mounted inside the sandbox's own mount namespace, so
    /// its size is the instance's disk quota and nothing is mounted on the host. Default:
    /// the writable layer lives on the scratch tmpfs and vanishes with the sandbox.
    #[serde(default)]
    pub disk_image: Option<PathBuf>,
    /// When set, PID 1 becomes the in-sandbox agent (a long-lived sandbox) instead of
    /// running `argv` once. `argv`, `env` and `workdir` are then unused.
    #[serde(default)]
    pub agent: Option<AgentSpec>,
}

/// The agent binary on the host; it is bound read-only at [`AGENT_PATH`] in the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub binary: PathBuf,
}

/// Where the agent binary appears inside a sandbox.
pub const AGENT_PATH: &str = "/.faas/agent";
/// The descriptors on which the agent finds its control pipes: requests to read, events
/// to write (see faas-agent's runtime).
pub const AGENT_REQUESTS_FD: i32 = 4;
pub const AGENT_EVENTS_FD: i32 = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the sandbox; must exist in the rootfs.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub mode: u32,
    /// Where the content starts in the blob, and how long it is.
    pub offset: u64,
    pub len: u64,
}

/// One launch request as it travels to the launcher. The file descriptors travel beside it
/// (SCM_RIGHTS) in this order: stdin, stdout, stderr, status, the agent's two control pipe
/// ends (requests, events) if `spec.agent` is set, else the blob if `has_blob`, then
/// `cgroup_fds` open `cgroup.procs` files the sandbox joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchMessage {
    pub version: u32,
    pub spec: LaunchSpec,
    pub has_blob: bool,
    pub cgroup_fds: usize,
    /// Instead of a new sandbox, restore one from a checkpoint: the launcher forks a
    /// helper that joins the cgroups, builds the root filesystem of `spec` in a mount
    /// namespace of its own and runs `criu restore` there. Its status line is
    /// `restored <pid>` or `setup <stage> <errno>`; the reply's pidfd is the helper's.
    #[serde(default)]
    pub restore: Option<RestoreSpec>,
}

/// A checkpoint to restore, and how its outside references map to this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub criu: PathBuf,
    /// CRIU's image directory (read only).
    pub images: PathBuf,
    /// Where CRIU writes its log and pid file.
    pub work_dir: PathBuf,
    /// The inodes the checkpoint knows the agent's control pipes by (requests, events):
    /// the pipes passed with this message take their place.
    pub pipe_inodes: (u64, u64),
    /// External mounts of the checkpoint (key, host path): the binds and the agent.
    pub externals: Vec<(String, PathBuf)>,
    /// CRIU's kernel probe cache (`CRIU_KDAT_DIR`), if the host has one.
    #[serde(default)]
    pub kdat_dir: Option<PathBuf>,
    /// The key of the network namespace the images leave out: the helper makes a new
    /// one (loopback up) and hands it to CRIU under this key.
    #[serde(default)]
    pub external_net: Option<String>,
    /// Mark every mapping of the restored tree mergeable by KSM (inherited from CRIU).
    #[serde(default)]
    pub ksm: bool,
    /// Restore memory on demand (userfaultfd): a `criu lazy-pages` daemon serves the
    /// pages as they are touched and fills in the rest in the background.
    #[serde(default)]
    pub lazy: bool,
    /// The key of the /dev mount the images leave out (the helper makes it anew).
    #[serde(default)]
    pub external_dev: Option<String>,
}

/// The launcher's answer; on success the sandbox's pidfd travels beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LaunchReply {
    Started { pid: i32 },
    Failed { error: String },
}
