//! The agent: PID 1 of every sandbox that lives longer than one command. It runs commands
//! and language contexts, streams their output, reads and writes files and opens TCP
//! connections inside the sandbox, all on request of the host over one socket that does
//! not depend on the sandbox's network. [`protocol`] is shared with the host side;
//! [`runtime`] is the agent itself: single-threaded, poll-based, std and libc only, so it
//! builds as a small static binary and idles at a few hundred KiB.

pub mod protocol;
pub mod runtime;
