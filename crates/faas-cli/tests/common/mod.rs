//! Test harness: starts a real `faas serve` (root needed: namespaces, mounts, cgroups)
//! with its own data dir, run dir and cgroup parent, and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN_KEY: &str = "faas_test_admin_key_0123456789abcdef";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Skips the calling test, with the reason printed, when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("SKIPPED: this test needs root (namespaces, mounts, cgroups); run as root to exercise it");
            return;
        }
    };
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup_parent: String,
    config_path: PathBuf,
    http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts a server; `extra` is TOML appended to the test config (for example limits).
    pub async fn start_with(extra: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("faas-test-{}-{n}", std::process::id());
        let base = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("test dir");
        let config_path = base.join("config.toml");
        let (top, tables) = split_extra(extra);
        // The static agent scripts/test builds; else the one beside the faas binary.
        let agent = std::env::var("FAAS_AGENT")
            .map(|p| format!("agent_path = \"{p}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}\"\nrun_dir = \"{r}\"\ncgroup_parent = \"{name}\"\n{agent}{top}\n{tables}\n[ssh]\nlisten = \"127.0.0.1:0\"\n",
            d = base.join("data").display(),
            r = base.join("run").display(),
        );
        std::fs::write(&config_path, config).expect("config");
        let mut server = Self {
            child: None,
            url: String::new(),
            data_dir: base.join("data"),
            run_dir: base.join("run"),
            cgroup_parent: name,
            config_path,
            http: reqwest::Client::new(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_faas"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("FAAS_API_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn faas serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("faas listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                // The server's warnings show with a failing test's output.
                eprintln!("server: {line}");
            }
        });
        self.url =
            rx.recv_timeout(Duration::from_secs(30)).expect("server did not start within 30 s");
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL (no cleanup) and starts it again on the same state.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// SIGTERM, the graceful path; returns once the server has exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: kill on our own child's pid.
        unsafe { libc_kill(child.id() as i32, 15) };
        child.wait().expect("wait")
    }

    /// The server's own pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("server running")
    }

    /// Host pids of this server's launcher processes.
    pub fn launcher_pids(&self) -> Vec<i32> {
        let run_dir = self.run_dir.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains("__launcher") && text.contains(&run_dir) {
                pids.push(pid);
            }
        }
        pids
    }

    pub fn kill_pid(pid: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc_kill(pid, 9) };
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .timeout(Duration::from_secs(120));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply { status, body, headers }
    }

    /// POST /api/v1/execute as the admin on a task of its own, for runs in flight.
    pub fn exec_in_background(
        &self,
        req: Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let url = format!("{}/api/v1/execute", self.url);
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .body(req.to_string())
                .timeout(Duration::from_secs(120))
                .send()
                .await
        })
    }

    /// POST /api/v1/execute as the admin; panics unless 200.
    pub async fn exec(&self, req: Value) -> Value {
        self.exec_as(ADMIN_KEY, req).await
    }

    pub async fn exec_as(&self, key: &str, req: Value) -> Value {
        let reply = self.post("/api/v1/execute", key, req).await;
        assert_eq!(reply.status, 200, "execute failed: {}", reply.body);
        reply.body
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(reqwest::Method::POST, path, Some(key), Some(body.to_string())).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.request(reqwest::Method::GET, path, Some(key), None).await
    }

    /// A new tenant key, minted by the admin.
    pub async fn tenant_key(&self, tenant: &str) -> String {
        let reply = self.post("/api/v1/keys", ADMIN_KEY, json!({"tenant": tenant})).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["key"].as_str().expect("key").to_owned()
    }

    /// Sandbox cgroups that currently exist under this server's parent, in any hierarchy.
    pub fn live_cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for hierarchy in cgroup_hierarchies() {
            if let Ok(entries) = std::fs::read_dir(hierarchy.join(&self.cgroup_parent)) {
                found.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
        found
    }
}

fn split_extra(extra: &str) -> (String, String) {
    // Top-level keys must come before any [table] in TOML: split at the first table header
    // (a line that starts with `[`; an array value has a key before it).
    let mut offset = 0;
    for line in extra.split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            return (extra[..offset].to_owned(), extra[offset..].to_owned());
        }
        offset += line.len();
    }
    (extra.to_owned(), String::new())
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.to_owned()];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    dirs
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the graceful path, which kills running sandboxes.
            // SAFETY: kill on our own child's pid.
            unsafe { libc_kill(child.id() as i32, 15) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for hierarchy in cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(&self.cgroup_parent));
        }
        if let Some(base) = self.data_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Host processes whose command line contains `marker`.
pub fn host_processes_with(marker: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) && !text.contains("cargo") {
                n += 1;
            }
        }
    }
    n
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Server {
    /// Opens a WebSocket to `path` (which may carry a query) with `key`.
    pub async fn websocket(
        &self,
        path: &str,
        key: &str,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.url.replace("http://", "ws://") + path;
        let mut request = url.into_client_request()?;
        let auth = format!("Bearer {key}").parse().expect("header value");
        request.headers_mut().insert("authorization", auth);
        Ok(tokio_tungstenite::connect_async(request).await?.0)
    }
}

/// The next text message of a socket, as JSON (other messages are skipped).
pub async fn next_json(socket: &mut Socket) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("event in time")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}
