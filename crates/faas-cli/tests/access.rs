//! Ways into an instance besides the API: the built-in SSH server driven by the real
//! OpenSSH client (shell, exit status, pty, scp, sftp), and public ports with a token.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{ADMIN_KEY, Server};
use serde_json::{Value, json};

async fn create(server: &Server, key: &str) -> String {
    let r = server.post("/api/v1/instances", key, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Skips the test, saying why, without the OpenSSH client (scripts/setup.sh installs it).
macro_rules! require_openssh {
    () => {
        if !have("ssh") || !have("scp") || !have("sftp") {
            eprintln!("SKIPPED: the OpenSSH client (ssh, scp, sftp) is not installed");
            return;
        }
    };
}

/// A key issued by the API, saved where OpenSSH accepts it (mode 0600).
struct Login {
    access: Value,
    key: PathBuf,
}

impl Login {
    async fn issue(server: &Server, id: &str, key: &str) -> Self {
        let r = server.get(&format!("/api/v1/instances/{id}/ssh"), key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let path = server.data_dir.join(format!("key-{}", r.body["key_id"].as_str().expect("id")));
        std::fs::write(&path, r.body["private_key"].as_str().expect("private key")).expect("key");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        // The host key the API names is the one the server shows: checked strictly.
        let known = format!(
            "[127.0.0.1]:{} {}\n",
            r.body["port"],
            r.body["host_public_key"].as_str().expect("host key")
        );
        std::fs::write(path.with_extension("known_hosts"), known).expect("known_hosts");
        Login { access: r.body, key: path }
    }

    fn port(&self) -> String {
        self.access["port"].to_string()
    }

    fn options(&self) -> Vec<String> {
        let known =
            format!("UserKnownHostsFile={}", self.key.with_extension("known_hosts").display());
        [
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &known,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.key.display().to_string()])
        .collect()
    }

    /// `ssh ... user@127.0.0.1 args`: (exit code, stdout, stderr).
    async fn ssh(&self, user: &str, args: &[&str]) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(self.options()).args(["-p", &self.port()]).arg(format!("{user}@127.0.0.1"));
        cmd.args(args);
        run(cmd).await
    }

    async fn scp(&self, from: &str, to: &str) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::new("scp");
        cmd.args(self.options()).args(["-P", &self.port(), from, to]);
        run(cmd).await
    }
}

async fn run(mut cmd: tokio::process::Command) -> (i32, String, String) {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the OpenSSH client finished in time")
        .expect("run the OpenSSH client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn openssh_logs_in_runs_commands_and_copies_files() {
    require_root!();
    require_openssh!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    let login = Login::issue(&server, &id, ADMIN_KEY).await;
    assert_eq!(login.access["user"], id.as_str());
    assert!(login.access["host_key_fingerprint"].as_str().expect("fp").starts_with("SHA256:"));

    let (code, out, err) = login.ssh(&id, &["echo hi"]).await;
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}");
    // Exit status, stderr and state shared with the API's execs.
    let (code, out, err) =
        login.ssh(&id, &["echo oops >&2; echo kept > /home/user/f; exit 7"]).await;
    assert_eq!((code, out.as_str(), err.as_str()), (7, "", "oops\n"));
    let r = server
        .post(
            &format!("/api/v1/instances/{id}/exec"),
            ADMIN_KEY,
            json!({"command": "cat /home/user/f; whoami"}),
        )
        .await;
    assert_eq!(r.body["stdout"], "kept\nuser\n", "{}", r.body);
    // A terminal when asked for.
    let (code, out, err) = login.ssh(&id, &["-tt", "tty"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/dev/pts/"), "{out:?}");

    // scp both ways (over SFTP, OpenSSH's default), byte for byte.
    let local = server.data_dir.join("upload.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &content).expect("write");
    let remote = format!("{id}@127.0.0.1:/home/user/upload.bin");
    let (code, _, err) = login.scp(&local.display().to_string(), &remote).await;
    assert_eq!(code, 0, "scp up: {err}");
    let back = server.data_dir.join("download.bin");
    let (code, _, err) = login.scp(&remote, &back.display().to_string()).await;
    assert_eq!(code, 0, "scp down: {err}");
    assert!(std::fs::read(&back).expect("read") == content, "scp round trip differs");
    let (_, out, _) = login.ssh(&id, &["stat -c %U:%s /home/user/upload.bin"]).await;
    assert_eq!(out, "user:300000\n");
    // The legacy scp protocol runs the image's scp inside the instance.
    let (code, _, err) = login.scp(&local.display().to_string(), &format!("{remote}.legacy")).await;
    assert_eq!(code, 0, "{err}");
    let mut cmd = tokio::process::Command::new("scp");
    cmd.args(login.options()).args(["-O", "-P", &login.port()]);
    cmd.args([&remote, &back.display().to_string()]);
    let (code, _, err) = run(cmd).await;
    assert_eq!(code, 0, "scp -O: {err}");
    assert!(std::fs::read(&back).expect("read") == content);
    // sftp as such.
    let batch = server.data_dir.join("batch");
    std::fs::write(&batch, "mkdir /home/user/viasftp\nls /home/user\n").expect("batch");
    let mut cmd = tokio::process::Command::new("sftp");
    cmd.args(login.options()).args(["-P", &login.port(), "-b"]).arg(&batch);
    cmd.arg(format!("{id}@127.0.0.1"));
    let (code, out, err) = run(cmd).await;
    assert_eq!(code, 0, "sftp: {err}");
    assert!(out.contains("viasftp"), "{out}");
    std::fs::remove_file(&login.key).ok();
}

#[tokio::test]
async fn ssh_keys_open_their_own_instance_only_and_can_be_revoked() {
    require_root!();
    require_openssh!();
    let server = Server::start().await;
    let mine = create(&server, ADMIN_KEY).await;
    let other_key = server.tenant_key("other").await;
    let theirs = create(&server, &other_key).await;
    let login = Login::issue(&server, &mine, ADMIN_KEY).await;
    // My key does not open their instance, nor does any user name but the instance id.
    let (code, _, _) = login.ssh(&theirs, &["true"]).await;
    assert_eq!(code, 255, "a key opened another tenant's instance");
    let (code, _, _) = login.ssh("root", &["true"]).await;
    assert_eq!(code, 255);
    // Another tenant can neither issue nor revoke keys for my instance.
    let r = server.get(&format!("/api/v1/instances/{mine}/ssh"), &other_key).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let path = format!("/api/v1/instances/{mine}/ssh");
    let r = server.request(reqwest::Method::DELETE, &path, Some(&other_key), None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(login.ssh(&mine, &["true"]).await.0, 0);

    // Revoking one key leaves the others; revoking all closes the door.
    let second = Login::issue(&server, &mine, ADMIN_KEY).await;
    let key_id = login.access["key_id"].as_str().expect("key id");
    let path = format!("/api/v1/instances/{mine}/ssh/keys/{key_id}");
    let r = server.request(reqwest::Method::DELETE, &path, Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(login.ssh(&mine, &["true"]).await.0, 255, "a revoked key still works");
    assert_eq!(second.ssh(&mine, &["true"]).await.0, 0);
    let path = format!("/api/v1/instances/{mine}/ssh");
    let r = server.request(reqwest::Method::DELETE, &path, Some(ADMIN_KEY), None).await;
    assert_eq!(r.body["revoked"], 1, "{}", r.body);
    assert_eq!(second.ssh(&mine, &["true"]).await.0, 255);
    // A stopped instance refuses the session with a reason.
    let third = Login::issue(&server, &mine, ADMIN_KEY).await;
    let r = server.post(&format!("/api/v1/instances/{mine}/stop"), ADMIN_KEY, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (code, _, err) = third.ssh(&mine, &["true"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("must be running"), "{err}");
    for l in [&login, &second, &third] {
        std::fs::remove_file(&l.key).ok();
    }
}

fn http_get(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn a_public_port_answers_without_a_key_until_closed() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    let r = server
        .post(
            &format!("/api/v1/instances/{id}/exec"),
            ADMIN_KEY,
            json!({"command": "mkdir -p /home/user/www && echo public > /home/user/www/index.txt && cd /home/user/www && python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1", "background": true}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = server
        .post(&format!("/api/v1/instances/{id}/public-ports"), ADMIN_KEY, json!({"port": 8000}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let url = r.body["url"].as_str().expect("url").to_owned();
    let token = r.body["token"].as_str().expect("token").to_owned();
    assert!(url.ends_with(&format!("/p/{token}/")), "{url}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(&format!("{url}index.txt"));
        if code == 200 {
            assert_eq!(body, "public\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the public port never answered: {code}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The listing never shows the token; a wrong token is a 404; another tenant can't close it.
    let list = server.get(&format!("/api/v1/instances/{id}/public-ports"), ADMIN_KEY).await;
    assert_eq!(list.body["ports"][0]["port"], 8000, "{}", list.body);
    assert!(!list.body.to_string().contains(&token));
    let wrong = url.replace(&token, "pt_0000");
    assert_eq!(http_get(&format!("{wrong}index.txt")).0, 404);
    let other = server.tenant_key("other").await;
    let path = format!("/api/v1/instances/{id}/public-ports/8000");
    let r = server.request(reqwest::Method::DELETE, &path, Some(&other), None).await;
    assert_eq!(r.status, 404);
    let r = server.request(reqwest::Method::DELETE, &path, Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(http_get(&format!("{url}index.txt")).0, 404, "a closed port still answers");
    // Deleting the instance revokes everything it had.
    let r = server
        .post(&format!("/api/v1/instances/{id}/public-ports"), ADMIN_KEY, json!({"port": 8000}))
        .await;
    let url = r.body["url"].as_str().expect("url").to_owned();
    assert_eq!(http_get(&format!("{url}index.txt")).0, 200);
    let r = server
        .request(reqwest::Method::DELETE, &format!("/api/v1/instances/{id}"), Some(ADMIN_KEY), None)
        .await;
    assert!(r.status < 300, "{}", r.body);
    assert_eq!(http_get(&format!("{url}index.txt")).0, 404);
}
