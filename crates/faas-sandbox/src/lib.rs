//! The sandbox: everything that touches the kernel to isolate one run.
//!
//! - [`launcher`]: a single-threaded helper process (the faas binary re-executed) that
//!   receives launch requests over a socket and clones sandboxes. Forking from the
//!   multi-threaded server would be unsafe and slow; the launcher keeps the hot path short.
//! - `init` (private): the code that runs inside the new namespaces as PID 1: mounts the
//!   root filesystem, joins the cgroup, then forks the payload and reports how it ended.
//! - [`cgroup`]: per-sandbox limits and usage on cgroup v1 or v2, detected at start-up.
//! - [`run`]: the server side of one run: cgroup, pipes, launch, timeout, output caps,
//!   usage and cleanup, whatever happens.
//! - [`agent`] and `agent_sandbox`: long-lived sandboxes whose PID 1 is the agent
//!   (crate `faas-agent`), driven over the agent protocol.
//! - [`checkpoint`]: CRIU checkpoints of agent sandboxes and restores from them.
//! - [`disk`]: instance disk images mounted for the server itself (merges), privately.

pub mod agent;
mod agent_sandbox;
pub mod cgroup;
pub mod checkpoint;
pub mod disk;
mod init;
pub mod launcher;
pub mod run;
mod session;
pub mod spec;

pub use agent_sandbox::{AgentSandbox, ExecRequest};
pub use cgroup::{CgroupError, CgroupRoot, CgroupVersion, Limits};
pub use checkpoint::{CheckpointRecord, Criu};
pub use faas_agent::protocol::{Confine, PtySize, Stream};
pub use launcher::{LaunchError, LauncherClient};
pub use run::{OutputChunk, RunEnd, RunError, RunIo, RunOutcome, RunRequest, Sandboxes};
pub use session::{Session, SessionEvent, SessionInput, SessionRequest};
pub use spec::{AGENT_PATH, AgentSpec, BindMount, FileSpec, LaunchSpec};

/// `SIGKILL` for 9, and so on; unknown numbers read `SIG<n>`.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("SIG{signal}"))
}
