//! Files of a running instance, through its agent. Paths resolve inside the sandbox's own
//! mount namespace (the agent runs there), so `..`, absolute paths and symlinks can only
//! ever name the sandbox's files, never the host's.

use faas_api::{FileEntry, FileList};
use faas_sandbox::RunError;
use faas_sandbox::agent::AgentError;
use tokio::sync::mpsc;

use crate::plan::invalid;
use crate::{Engine, EngineError, Tenant};

const MAX_PATH: usize = 4096;

/// A file being read: its first chunk and the rest as they come.
pub struct FileRead {
    pub first: Option<Vec<u8>>,
    pub rest: mpsc::Receiver<Vec<u8>>,
}

pub(super) fn check_path(path: &str) -> Result<(), EngineError> {
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
        return Err(invalid("path", "must be an absolute path inside the instance"));
    }
    Ok(())
}

/// What the agent's refusal means for the caller.
fn file_error(path: &str, e: RunError) -> EngineError {
    match e {
        RunError::Agent(AgentError::Refused { message, errno: Some(errno) }) => match errno {
            libc::ENOENT => EngineError::NotFound { kind: "path", id: path.to_owned() },
            libc::ENOSPC | libc::EDQUOT => {
                EngineError::DiskFull { message: format!("the instance's disk is full: {message}") }
            }
            libc::EROFS | libc::EACCES | libc::EPERM => EngineError::Forbidden { message },
            libc::EISDIR | libc::ENOTDIR | libc::ENOTEMPTY | libc::ELOOP | libc::EINVAL => {
                EngineError::Invalid { field: "path", reason: message }
            }
            _ => EngineError::Sandbox(RunError::Agent(AgentError::Refused {
                message,
                errno: Some(errno),
            })),
        },
        other => EngineError::Sandbox(other),
    }
}

impl Engine {
    pub async fn read_instance_file(
        &self,
        tenant: &Tenant,
        id: &str,
        path: &str,
    ) -> Result<FileRead, EngineError> {
        check_path(path)?;
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        let (tx, mut rx) = mpsc::channel(8);
        let owned_path = path.to_owned();
        let mut reading = tokio::spawn(async move { sandbox.read_file(&owned_path, tx).await });
        // Wait for the first chunk or the end: a missing file is a 404, not a broken body.
        let interrupted = || EngineError::Conflict { message: "the read was interrupted".into() };
        let early = tokio::select! {
            first = rx.recv() => Some(first),
            done = &mut reading => match done {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => return Err(file_error(path, e)),
                Err(_) => return Err(interrupted()),
            },
        };
        let first = match early {
            Some(Some(chunk)) => Some(chunk),
            // The channel closed before any data: the read has ended, one way or the other.
            Some(None) => match reading.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => return Err(file_error(path, e)),
                Err(_) => return Err(interrupted()),
            },
            // The read ended well first: whatever it sent waits in the channel.
            None => rx.recv().await,
        };
        Ok(FileRead { first, rest: rx })
    }

    /// Writes a file from chunks as they arrive; returns its size.
    pub async fn write_instance_file(
        &self,
        tenant: &Tenant,
        id: &str,
        path: &str,
        chunks: mpsc::Receiver<Vec<u8>>,
    ) -> Result<u64, EngineError> {
        check_path(path)?;
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        let written =
            sandbox.write_file_stream(path, 0o644, chunks).await.map_err(|e| file_error(path, e));
        live.touch();
        written
    }

    pub async fn list_instance_dir(
        &self,
        tenant: &Tenant,
        id: &str,
        path: &str,
    ) -> Result<FileList, EngineError> {
        check_path(path)?;
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        let entries = sandbox.list_dir(path).await.map_err(|e| file_error(path, e))?;
        let entries = entries
            .into_iter()
            .map(|e| FileEntry {
                name: e.name,
                kind: e.kind,
                size: e.size,
                mode: e.mode,
                modified_ms: e.modified_ms,
            })
            .collect();
        Ok(FileList { path: path.to_owned(), entries })
    }

    pub async fn delete_instance_path(
        &self,
        tenant: &Tenant,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), EngineError> {
        check_path(path)?;
        if path == "/" {
            return Err(invalid("path", "the root cannot be deleted"));
        }
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        sandbox.delete_path(path, recursive).await.map_err(|e| file_error(path, e))
    }
}

impl Engine {
    /// A byte stream to `port` on the instance's loopback, through its agent.
    pub async fn instance_connect(
        &self,
        tenant: &Tenant,
        id: &str,
        port: u16,
    ) -> Result<crate::PortStream, EngineError> {
        if port == 0 {
            return Err(invalid("port", "must be between 1 and 65535"));
        }
        let live = self.live(tenant, id)?;
        let sandbox = self.running(&live)?;
        live.touch();
        let stream = sandbox.connect(port).await.map_err(|e| match e {
            RunError::Agent(AgentError::Refused { message, .. }) => EngineError::BadGateway {
                message: format!("nothing answers on port {port} in instance {id}: {message}"),
            },
            other => EngineError::Sandbox(other),
        })?;
        Ok(crate::PortStream::new(stream, std::sync::Arc::clone(&live.egress)))
    }
}
