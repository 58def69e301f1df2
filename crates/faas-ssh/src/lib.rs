//! The SSH server built into faas. One listener for every instance: the user name is the
//! instance id, and the only way in is a key issued for that instance
//! (`GET /api/v1/instances/{id}/ssh`), whose fingerprint the store keeps. A key opens its
//! own instance only; revoking it, or deleting the instance, closes the door.
//!
//! Each session channel runs one program in the instance through the agent: a login shell
//! (`ssh host`), a command (`ssh host cmd`), or `sftp-server` for the `sftp` subsystem
//! (which modern `scp` uses too), on a pty when the client asks for one.

mod keys;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use faas_engine::{Engine, SessionSpec, Tenant};
use faas_sandbox::{PtySize, RunEnd, SessionEvent, SessionInput, Stream};
use faas_store::CredentialKind;
use russh::keys::PrivateKey;
use russh::server::{Auth, Handle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Sig};
use tokio::net::TcpListener;

pub use keys::{IssuedKey, fingerprint_of, issue_key, load_or_create_host_key, public_openssh};

/// Environment variables a client may pass (as OpenSSH's default `AcceptEnv`).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// At most this many variables per channel, and this long each.
const MAX_ENV: usize = 64;
const MAX_ENV_BYTES: usize = 4096;

/// How `sftp` is served: the image's own `sftp-server`, run as the user.
const SFTP_SERVER: &str = "for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
     /usr/lib/ssh/sftp-server /usr/libexec/sftp-server; do [ -x \"$p\" ] && exec \"$p\"; done; \
     echo 'faas: this image has no sftp-server' >&2; exit 127";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
    #[error("ssh: {0}")]
    Engine(#[from] faas_engine::EngineError),
}

/// Serves SSH on `listener` until the process ends.
pub async fn serve(engine: Arc<Engine>, listener: TcpListener, host_key: PrivateKey) {
    use russh::server::Server as _;
    let config = russh::server::Config {
        keys: vec![host_key],
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    };
    let mut server = Server { engine };
    if let Err(e) = server.run_on_socket(Arc::new(config), &listener).await {
        tracing::error!(error = %e, "the SSH server stopped");
    }
}

struct Server {
    engine: Arc<Engine>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection { engine: Arc::clone(&self.engine), peer, login: None, channels: HashMap::new() }
    }

    fn handle_session_error(&mut self, error: SshError) {
        tracing::debug!(%error, "ssh connection ended");
    }
}

/// One client connection.
struct Connection {
    engine: Arc<Engine>,
    peer: Option<SocketAddr>,
    /// The tenant and instance the key opened.
    login: Option<(Tenant, String)>,
    channels: HashMap<ChannelId, ChannelState>,
}

/// A session channel: what the client asked for, then the program once it runs.
#[derive(Default)]
struct ChannelState {
    pty: Option<PtySize>,
    term: Option<String>,
    env: Vec<(String, String)>,
    running: Option<Running>,
}

struct Running {
    input: SessionInput,
    /// Relays the program's output; aborting it drops the session, which kills the program.
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl Connection {
    fn login(&self) -> Result<&(Tenant, String), SshError> {
        self.login.as_ref().ok_or(SshError::Protocol(russh::Error::NotAuthenticated))
    }

    /// Starts `command` (a login shell with `None`) on a channel and relays its output.
    async fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), SshError> {
        let (tenant, instance) = self.login()?.clone();
        let Some(state) = self.channels.get_mut(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if state.running.is_some() {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let mut env: std::collections::BTreeMap<String, String> =
            state.env.iter().cloned().collect();
        if let Some(term) = &state.term {
            env.insert("TERM".into(), term.clone());
        }
        let spec = SessionSpec { command, pty: state.pty, env, workdir: None };
        let attached = match self.engine.instance_session(&tenant, &instance, spec).await {
            Ok(attached) => attached,
            Err(e) => {
                // Said on stderr with exit status 1, as a shell says why it cannot run
                // something (a bare failed request would leave the client guessing).
                session.channel_success(channel)?;
                session.extended_data(channel, 1, format!("faas: {e}\r\n").into_bytes())?;
                session.exit_status_request(channel, 1)?;
                session.eof(channel)?;
                session.close(channel)?;
                return Ok(());
            }
        };
        let input = attached.session.input();
        let relay = tokio::spawn(relay(attached, session.handle(), channel));
        state.running = Some(Running { input, relay });
        session.channel_success(channel)?;
        Ok(())
    }

    fn input(&self, channel: ChannelId) -> Option<SessionInput> {
        self.channels.get(&channel)?.running.as_ref().map(|r| r.input.clone())
    }
}

/// Sends a program's output to its channel, then its exit status, EOF and close. The
/// channel's window is the flow control: a client that reads slowly slows the program.
async fn relay(mut attached: faas_engine::InstanceSession, handle: Handle, channel: ChannelId) {
    let mut end = None;
    while let Some(event) = attached.session.next().await {
        match event {
            SessionEvent::Output(Stream::Stdout, data) => {
                if handle.data(channel, data).await.is_err() {
                    return;
                }
            }
            SessionEvent::Output(Stream::Stderr, data) => {
                if handle.extended_data(channel, 1, data).await.is_err() {
                    return;
                }
            }
            SessionEvent::Exit(run_end) => end = Some(run_end),
        }
    }
    match end {
        Some(RunEnd::Exited(code)) => {
            let _ = handle.exit_status_request(channel, code as u32).await;
        }
        Some(RunEnd::Signaled(signal)) => {
            let _ = handle
                .exit_signal_request(
                    channel,
                    to_ssh_signal(signal),
                    false,
                    String::new(),
                    "".into(),
                )
                .await;
        }
        // The sandbox went away, or the program never ran: no status, as sshd does
        // when its child vanishes.
        _ => {}
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// The signals SSH names (RFC 4254, 6.10) and their numbers here.
fn named_signals() -> [(Sig, i32); 12] {
    [
        (Sig::ABRT, libc::SIGABRT),
        (Sig::ALRM, libc::SIGALRM),
        (Sig::FPE, libc::SIGFPE),
        (Sig::HUP, libc::SIGHUP),
        (Sig::ILL, libc::SIGILL),
        (Sig::INT, libc::SIGINT),
        (Sig::KILL, libc::SIGKILL),
        (Sig::PIPE, libc::SIGPIPE),
        (Sig::QUIT, libc::SIGQUIT),
        (Sig::SEGV, libc::SIGSEGV),
        (Sig::TERM, libc::SIGTERM),
        (Sig::USR1, libc::SIGUSR1),
    ]
}

fn to_ssh_signal(signal: i32) -> Sig {
    named_signals().into_iter().find(|(_, n)| *n == signal).map(|(sig, _)| sig).unwrap_or_else(
        || Sig::Custom(faas_sandbox::signal_name(signal).trim_start_matches("SIG").into()),
    )
}

fn from_ssh_signal(signal: &Sig) -> Option<i32> {
    match signal {
        Sig::Custom(name) if name == "USR2" => Some(libc::SIGUSR2),
        // Sig has no PartialEq; the table holds unit variants only, so the variant decides.
        _ => {
            let wanted = std::mem::discriminant(signal);
            named_signals().into_iter().find(|(sig, _)| std::mem::discriminant(sig) == wanted)
        }
        .map(|(_, n)| n),
    }
}

/// A terminal size from a client, clamped to what the terminal route accepts.
fn pty_size(cols: u32, rows: u32) -> PtySize {
    let clamp = |v: u32, default: u16| if v == 0 { default } else { v.min(1000) as u16 };
    PtySize { rows: clamp(rows, 24), cols: clamp(cols, 80) }
}

impl russh::server::Handler for Connection {
    type Error = SshError;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, SshError> {
        let fingerprint = fingerprint_of(key.public_key);
        let credential = self.engine.credential(&fingerprint, CredentialKind::SshKey).await?;
        match credential {
            // The key must be one issued for the instance named as the user.
            Some(c) if c.instance_id == user => {
                tracing::info!(instance = %user, peer = ?self.peer, "ssh login");
                self.login = Some((Tenant(c.tenant), c.instance_id));
                Ok(Auth::Accept)
            }
            _ => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), SshError> {
        self.login()?;
        // Input comes through the handler's callbacks; the channel object is not read.
        self.channels.insert(channel.id(), ChannelState::default());
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), SshError> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.running.is_none() && term.len() <= 256 => {
                state.pty = Some(pty_size(cols, rows));
                state.term = Some(term.to_owned());
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), SshError> {
        match self.channels.get_mut(&channel) {
            Some(state)
                if accepted_env(name)
                    && state.env.len() < MAX_ENV
                    && name.len() + value.len() <= MAX_ENV_BYTES
                    && !value.contains('\0') =>
            {
                state.env.push((name.to_owned(), value.to_owned()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), SshError> {
        self.start(channel, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), SshError> {
        match std::str::from_utf8(data) {
            Ok(command) if !command.contains('\0') => {
                self.start(channel, Some(command.to_owned()), session).await
            }
            _ => Ok(session.channel_failure(channel)?),
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), SshError> {
        if name != "sftp" {
            return Ok(session.channel_failure(channel)?);
        }
        // The SFTP protocol needs a clean byte stream, never a terminal.
        if let Some(state) = self.channels.get_mut(&channel) {
            state.pty = None;
        }
        self.start(channel, Some(SFTP_SERVER.into()), session).await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), SshError> {
        if let Some(input) = self.input(channel) {
            let _ = input.resize(pty_size(cols, rows)).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), SshError> {
        if let Some(input) = self.input(channel) {
            // Awaited: a program that does not read its input slows the client down.
            let _ = input.write(data).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), SshError> {
        if let Some(input) = self.input(channel) {
            let _ = input.close().await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), SshError> {
        if let (Some(input), Some(signal)) = (self.input(channel), from_ssh_signal(&signal)) {
            let _ = input.signal(signal).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), SshError> {
        // Dropping the state ends the relay, and with it the program.
        self.channels.remove(&channel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_translate_both_ways() {
        for n in [libc::SIGHUP, libc::SIGINT, libc::SIGKILL, libc::SIGTERM, libc::SIGUSR2] {
            assert_eq!(from_ssh_signal(&to_ssh_signal(n)), Some(n));
        }
        assert_eq!(from_ssh_signal(&Sig::Custom("WINCH".into())), None);
    }
}
