//! Whole directory trees in and out of an instance as tar streams. `tar` itself runs in
//! the instance as its user (through an interactive session, so nothing is buffered), so
//! member names with `..`, absolute names and symlinks inside the archive can only ever
//! reach what that user could reach in the sandbox.

use std::collections::BTreeMap;

use faas_sandbox::{RunEnd, SessionEvent, Stream};
use tokio::sync::mpsc;

use super::files::{FileRead, check_path};
use crate::{Engine, EngineError, SessionSpec, Tenant};

/// What is kept of tar's complaints for the error message.
const MAX_STDERR: usize = 16 * 1024;

/// Exit status of the scripts below when the path does not exist (EX_NOINPUT).
const MISSING: i32 = 66;
const CREATE: &str = r#"[ -e "$FAAS_PATH" ] || exit 66; cd -- "$FAAS_PATH" && exec tar -cf - ."#;
const EXTRACT: &str =
    r#"mkdir -p -- "$FAAS_PATH" && cd -- "$FAAS_PATH" && exec tar -xf - --no-same-owner"#;

fn spec(command: &str, path: &str) -> SessionSpec {
    SessionSpec {
        command: Some(command.into()),
        pty: None,
        // The path travels in the environment: nothing of it is parsed by the shell.
        env: BTreeMap::from([("FAAS_PATH".to_owned(), path.to_owned())]),
        workdir: Some("/".into()),
    }
}

fn push_stderr(stderr: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_STDERR.saturating_sub(stderr.len());
    stderr.extend_from_slice(&data[..data.len().min(room)]);
}

/// Why tar failed, as the caller should hear it.
fn tar_error(path: &str, end: Option<RunEnd>, stderr: &[u8]) -> EngineError {
    if matches!(end, Some(RunEnd::Exited(MISSING))) {
        return EngineError::NotFound { kind: "path", id: path.to_owned() };
    }
    let said = String::from_utf8_lossy(stderr).trim().to_owned();
    if said.contains("No space left") || said.contains("Disk quota exceeded") {
        return EngineError::DiskFull { message: format!("the instance's disk is full: {said}") };
    }
    let how = match end {
        Some(RunEnd::Exited(code)) => format!("tar exited with {code}"),
        Some(RunEnd::Signaled(signal)) => format!("tar was killed by signal {signal}"),
        _ => "the instance went away".into(),
    };
    EngineError::Invalid { field: "path", reason: format!("{how}: {said}") }
}

impl Engine {
    /// A tar stream of the tree at `path`. Files the user cannot read are left out (tar
    /// says so on its stderr, which is logged); a missing path is a 404 before any byte.
    pub async fn read_instance_archive(
        &self,
        tenant: &Tenant,
        id: &str,
        path: &str,
    ) -> Result<FileRead, EngineError> {
        check_path(path)?;
        let mut attached = self.instance_session(tenant, id, spec(CREATE, path)).await?;
        let mut stderr = Vec::new();
        // Wait for the first bytes of the archive or the end: a failure is an answer then.
        let first = loop {
            match attached.session.next().await {
                Some(SessionEvent::Output(Stream::Stdout, data)) => break data,
                Some(SessionEvent::Output(Stream::Stderr, data)) => push_stderr(&mut stderr, &data),
                Some(SessionEvent::Exit(end)) => return Err(tar_error(path, Some(end), &stderr)),
                None => return Err(tar_error(path, None, &stderr)),
            }
        };
        let (tx, rx) = mpsc::channel(8);
        let (instance, path) = (id.to_owned(), path.to_owned());
        tokio::spawn(async move {
            // Reads on only as the client takes the archive: a slow client slows tar.
            while let Some(event) = attached.session.next().await {
                match event {
                    SessionEvent::Output(Stream::Stdout, data) => {
                        if tx.send(data).await.is_err() {
                            return;
                        }
                    }
                    SessionEvent::Output(Stream::Stderr, data) => push_stderr(&mut stderr, &data),
                    SessionEvent::Exit(_) => break,
                }
            }
            if !stderr.is_empty() {
                let said = String::from_utf8_lossy(&stderr);
                tracing::info!(%instance, %path, tar = %said.trim(), "archive made with complaints");
            }
        });
        Ok(FileRead { first: Some(first), rest: rx })
    }

    /// Extracts a tar stream into `path` (created if missing) as the instance's user.
    pub async fn write_instance_archive(
        &self,
        tenant: &Tenant,
        id: &str,
        path: &str,
        mut chunks: mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), EngineError> {
        check_path(path)?;
        let mut attached = self.instance_session(tenant, id, spec(EXTRACT, path)).await?;
        let input = attached.session.input();
        // Stdin is fed while tar's output is read, so tar never stalls on a full pipe.
        let feed = async move {
            while let Some(chunk) = chunks.recv().await {
                if input.write(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = input.close().await;
            // Whatever is left of the body is read and dropped: the client gets an answer.
            while chunks.recv().await.is_some() {}
        };
        let watch = async {
            let mut stderr = Vec::new();
            loop {
                match attached.session.next().await {
                    Some(SessionEvent::Output(_, data)) => push_stderr(&mut stderr, &data),
                    Some(SessionEvent::Exit(RunEnd::Exited(0))) => return Ok(()),
                    Some(SessionEvent::Exit(end)) => {
                        return Err(tar_error(path, Some(end), &stderr));
                    }
                    None => return Err(tar_error(path, None, &stderr)),
                }
            }
        };
        let ((), result) = tokio::join!(feed, watch);
        result
    }
}
