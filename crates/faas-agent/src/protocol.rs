//! The agent protocol, version [`VERSION`]. See docs/AGENT_PROTOCOL.md.
//!
//! A stream of frames in both directions:
//! `u32 length (big-endian, of what follows) | u32 header length | header (JSON) | data`.
//! The header names a message and the request `id` it belongs to; `data` carries raw
//! bytes (output, stdin, file content, TCP payload) so that binary data is never escaped.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 3;
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;
/// Data is sent in chunks of at most this size.
pub const CHUNK: usize = 64 * 1024;

/// Who a started process becomes, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confine {
    pub uid: u32,
    pub gid: u32,
    pub workdir: String,
    pub max_file_bytes: u64,
    pub max_open_files: u64,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Host to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Start a process. Answered by `started` (or `exit` with `start_error`), then output
    /// events, then `exit`. With `stdin: true` the process's stdin stays open for `stdin`
    /// messages; otherwise it reads EOF. With `pty` the process runs on a new terminal of
    /// that size (stdin, stdout and stderr all on it; output comes as `stdout`).
    Exec {
        id: u64,
        argv: Vec<String>,
        env: Vec<String>,
        confine: Confine,
        timeout_ms: Option<u64>,
        stdin: bool,
        #[serde(default)]
        pty: Option<PtySize>,
    },
    /// Resize a process's terminal (it gets SIGWINCH).
    Resize {
        id: u64,
        size: PtySize,
    },
    /// Data for a process's stdin (the frame's data); `eof` closes it.
    Stdin {
        id: u64,
        eof: bool,
    },
    /// Send a signal to a process's group.
    Signal {
        id: u64,
        signal: i32,
    },
    /// Stop reading one output stream: the writer then gets EPIPE/SIGPIPE (output caps).
    CloseOutput {
        id: u64,
        stream: Stream,
    },
    /// Start a language interpreter that keeps its globals between runs.
    ContextCreate {
        id: u64,
        context: String,
        language: String,
        env: Vec<String>,
        confine: Confine,
    },
    /// Run code in a context: output events with this id, then `exit`.
    /// (code is the frame's data, UTF-8)
    ContextRun {
        id: u64,
        context: String,
        timeout_ms: Option<u64>,
    },
    ContextDelete {
        id: u64,
        context: String,
    },
    /// Read a whole file: `file_data` chunks, then `done`.
    FileRead {
        id: u64,
        path: String,
        uid: u32,
        gid: u32,
    },
    /// Create or replace a file; content follows in `file_chunk` frames, then `file_end`.
    FileWrite {
        id: u64,
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    FileChunk {
        id: u64,
    },
    FileEnd {
        id: u64,
    },
    /// List a directory: `listing` with a JSON array of [`DirEntry`] as data.
    FileList {
        id: u64,
        path: String,
        uid: u32,
        gid: u32,
    },
    /// Remove a file, or a directory (with `recursive` when it is not empty): `done`.
    FileDelete {
        id: u64,
        path: String,
        recursive: bool,
        uid: u32,
        gid: u32,
    },
    /// Open a TCP connection to 127.0.0.1:port inside the sandbox: `connected`, then `tcp_data`
    /// both ways until `tcp_close`.
    Connect {
        id: u64,
        port: u16,
    },
    TcpData {
        id: u64,
    },
    TcpClose {
        id: u64,
    },
    /// Kill every process of the sandbox but the agent (a reused sandbox between calls):
    /// `done`.
    KillAll {
        id: u64,
    },
    Ping {
        id: u64,
    },
    /// Before a checkpoint: send everything pending, answer `paused`, then read no more
    /// output and send nothing until `resume`, so that the checkpoint holds no half-sent
    /// frame in either direction. The host sends nothing else in between.
    Pause {
        id: u64,
    },
    /// After a checkpoint. The original answers `done`. A copy restored from the checkpoint
    /// (`restored`, the first frame on its new channel) forgets every request of its
    /// previous host (their processes run on, their events are dropped) and answers with a
    /// new `hello` whose `next_id` is above every id it has seen.
    Resume {
        id: u64,
        restored: bool,
    },
}

/// Agent to host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// First frame on a new connection (and after a restore). Request ids below `next_id`
    /// belong to an earlier host: use larger ones.
    Hello {
        version: u32,
        #[serde(default)]
        next_id: u64,
    },
    Started {
        id: u64,
        pid: i32,
    },
    /// Output of a process or context run (the frame's data).
    Output {
        id: u64,
        stream: Stream,
    },
    /// A process or context run ended. `start_error` is set when it never started.
    Exit {
        id: u64,
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        start_error: Option<StartError>,
    },
    ContextReady {
        id: u64,
    },
    FileData {
        id: u64,
    },
    /// A file read or write finished; `size` is the file's size in bytes.
    /// A directory listing: JSON array of [`DirEntry`] as data.
    Listing {
        id: u64,
    },
    Done {
        id: u64,
        size: u64,
    },
    Connected {
        id: u64,
    },
    TcpData {
        id: u64,
    },
    TcpClosed {
        id: u64,
    },
    Pong {
        id: u64,
    },
    Paused {
        id: u64,
    },
    /// The request failed; `errno` when the kernel said why.
    Error {
        id: u64,
        message: String,
        errno: Option<i32>,
    },
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub modified_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartError {
    pub stage: String,
    pub errno: i32,
}

impl Request {
    pub fn id(&self) -> u64 {
        match self {
            Request::Exec { id, .. }
            | Request::Resize { id, .. }
            | Request::Stdin { id, .. }
            | Request::Signal { id, .. }
            | Request::CloseOutput { id, .. }
            | Request::ContextCreate { id, .. }
            | Request::ContextRun { id, .. }
            | Request::ContextDelete { id, .. }
            | Request::FileRead { id, .. }
            | Request::FileWrite { id, .. }
            | Request::FileChunk { id }
            | Request::FileEnd { id }
            | Request::FileList { id, .. }
            | Request::FileDelete { id, .. }
            | Request::Connect { id, .. }
            | Request::TcpData { id }
            | Request::TcpClose { id }
            | Request::KillAll { id }
            | Request::Ping { id }
            | Request::Pause { id }
            | Request::Resume { id, .. } => *id,
        }
    }
}

impl Event {
    pub fn id(&self) -> Option<u64> {
        match self {
            Event::Hello { .. } => None,
            Event::Started { id, .. }
            | Event::Output { id, .. }
            | Event::Exit { id, .. }
            | Event::ContextReady { id }
            | Event::FileData { id }
            | Event::Listing { id }
            | Event::Done { id, .. }
            | Event::Connected { id }
            | Event::TcpData { id }
            | Event::TcpClosed { id }
            | Event::Pong { id }
            | Event::Paused { id }
            | Event::Error { id, .. } => Some(*id),
        }
    }
}

/// Appends one frame to `out`.
pub fn encode<T: Serialize>(header: &T, data: &[u8], out: &mut Vec<u8>) {
    // Serialising these plain types cannot fail.
    let header = serde_json::to_vec(header).unwrap_or_default();
    let len = 4 + header.len() + data.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge(usize),
    Malformed,
}

/// A complete frame at the start of a buffer: bytes consumed, header, data.
pub type Frame<'a> = (usize, &'a [u8], &'a [u8]);

/// The complete frame at the start of `buf`, if there is one yet.
pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::TooLarge(len));
    }
    if len < 4 {
        return Err(DecodeError::Malformed);
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let hlen = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if hlen > len - 4 {
        return Err(DecodeError::Malformed);
    }
    let header = &buf[8..8 + hlen];
    let data = &buf[8 + hlen..4 + len];
    Ok(Some((4 + len, header, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut wire = Vec::new();
        encode(&Event::Output { id: 7, stream: Stream::Stderr }, b"\x00binary\xff", &mut wire);
        encode(&Event::Pong { id: 8 }, b"", &mut wire);
        assert_eq!(decode(&wire[..5]), Ok(None));
        let (used, header, data) = decode(&wire).expect("valid").expect("complete");
        let event: Event = serde_json::from_slice(header).expect("json");
        assert_eq!(event, Event::Output { id: 7, stream: Stream::Stderr });
        assert_eq!(data, b"\x00binary\xff");
        let (_, header, data) = decode(&wire[used..]).expect("valid").expect("complete");
        assert_eq!(serde_json::from_slice::<Event>(header).expect("json"), Event::Pong { id: 8 });
        assert!(data.is_empty());
    }

    #[test]
    fn refuses_oversized_and_malformed_frames() {
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(decode(&huge), Err(DecodeError::TooLarge(MAX_FRAME + 1)));
        let bad = [0, 0, 0, 4, 0, 0, 0, 9];
        assert_eq!(decode(&bad), Err(DecodeError::Malformed));
    }

    #[test]
    fn requests_keep_their_wire_names() {
        let json = serde_json::to_string(&Request::Ping { id: 1 }).expect("json");
        assert_eq!(json, r#"{"type":"ping","id":1}"#);
    }
}
