//! Persistent instances: lifecycle, exec, files, timeouts, restart safety, isolation.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Server};
use reqwest::Method;
use serde_json::{Value, json};

async fn create(server: &Server, key: &str, body: Value) -> String {
    let r = server.post("/api/v1/instances", key, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    r.body["id"].as_str().expect("id").to_owned()
}

async fn exec(server: &Server, id: &str, command: &str) -> Value {
    let r = server
        .post(&format!("/api/v1/instances/{id}/exec"), ADMIN_KEY, json!({"command": command}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn put_file(server: &Server, id: &str, path: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{}/api/v1/instances/{id}/files?path={path}", server.url))
        .bearer_auth(ADMIN_KEY)
        .body(body)
        .send()
        .await
        .expect("request")
}

async fn get_file(server: &Server, id: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/instances/{id}/files?path={path}", server.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn execs_share_state_and_files_survive_stop_and_start() {
    require_root!();
    let server = Server::start().await;
    let id =
        create(&server, ADMIN_KEY, json!({"disk_mb": 128, "metadata": {"owner": "tests"}})).await;
    assert_eq!(
        exec(&server, &id, "echo 41 > /home/user/n; mkdir -p /home/user/d").await["exit_code"],
        0
    );
    let r = exec(&server, &id, "cat /home/user/n; ls -d /home/user/d").await;
    assert_eq!(r["stdout"], "41\n/home/user/d\n");
    assert_eq!(r["mode"], "persistent");

    let stopped = server.post(&format!("/api/v1/instances/{id}/stop"), ADMIN_KEY, json!({})).await;
    assert_eq!(stopped.body["status"], "stopped");
    // A stopped instance takes no exec: 409, and the record says why.
    let r = server
        .post(&format!("/api/v1/instances/{id}/exec"), ADMIN_KEY, json!({"command": "true"}))
        .await;
    assert_eq!(r.status, 409);
    let again = server.post(&format!("/api/v1/instances/{id}/stop"), ADMIN_KEY, json!({})).await;
    assert_eq!(again.status, 409);
    let started = server.post(&format!("/api/v1/instances/{id}/start"), ADMIN_KEY, json!({})).await;
    assert_eq!(started.body["status"], "running", "{}", started.body);
    assert_eq!(exec(&server, &id, "cat /home/user/n").await["stdout"], "41\n");

    let listed =
        server.get("/api/v1/instances?status=running&metadata.owner=tests", ADMIN_KEY).await;
    assert_eq!(listed.body["instances"].as_array().map(Vec::len), Some(1));
    let none = server.get("/api/v1/instances?metadata.owner=nobody", ADMIN_KEY).await;
    assert_eq!(none.body["instances"], json!([]));
    let deleted = server
        .request(Method::DELETE, &format!("/api/v1/instances/{id}"), Some(ADMIN_KEY), None)
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(server.get(&format!("/api/v1/instances/{id}"), ADMIN_KEY).await.status, 404);
    assert!(server.live_cgroups().is_empty());
    assert!(
        !server.data_dir.join("instances").join(&id).exists(),
        "files of a deleted instance remain"
    );
}

#[tokio::test]
async fn a_fifty_megabyte_file_round_trips_byte_identical() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({"disk_mb": 256})).await;
    let content: Vec<u8> =
        (0..50u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let resp = put_file(&server, &id, "/home/user/big.bin", content.clone()).await;
    assert_eq!(resp.status(), 200);
    let written: Value = resp.json().await.expect("json");
    assert_eq!(written["size"], 50u64 << 20);
    let (status, back) = get_file(&server, &id, "/home/user/big.bin").await;
    assert_eq!(status, 200);
    assert!(back == content, "the file came back different ({} bytes)", back.len());
    let r = exec(&server, &id, "stat -c '%s %U' /home/user/big.bin").await;
    assert_eq!(r["stdout"], format!("{} user\n", 50u64 << 20));
    let listing =
        server.get(&format!("/api/v1/instances/{id}/files/list?path=/home/user"), ADMIN_KEY).await;
    assert_eq!(listing.body["entries"][0]["name"], "big.bin");
    let del = server
        .request(
            Method::DELETE,
            &format!("/api/v1/instances/{id}/files?path=/home/user/big.bin"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(get_file(&server, &id, "/home/user/big.bin").await.0, 404);
}

#[tokio::test]
async fn the_disk_quota_holds() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({"disk_mb": 32})).await;
    let r = exec(
        &server,
        &id,
        "head -c 64M /dev/zero > /home/user/fill; echo $?; df -m /home/user | tail -1",
    )
    .await;
    assert!(r["stderr"].as_str().expect("stderr").contains("No space left"), "{r}");
    let resp = put_file(&server, &id, "/home/user/more", vec![7u8; 40 << 20]).await;
    assert_eq!(resp.status(), 507, "uploads past the quota are refused");
    // The host disk did not take the 64 MiB: the image is sparse and capped.
    let image = server.data_dir.join("instances").join(&id).join("disk.img");
    let allocated = std::fs::metadata(&image)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .expect("image");
    assert!(allocated <= 40 << 20, "image uses {allocated} bytes");
}

#[tokio::test]
async fn paths_never_reach_the_host() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    let marker = format!("faas-escape-{}", std::process::id());
    // `..` resolves inside the sandbox: this writes the sandbox's /tmp, not the host's.
    let resp =
        put_file(&server, &id, &format!("/home/user/../../../tmp/{marker}"), b"x".to_vec()).await;
    assert_eq!(resp.status(), 200);
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists());
    // A symlink the user plants to a host-looking path still names the sandbox's file.
    exec(&server, &id, "ln -s /etc/passwd /home/user/link").await;
    let (status, body) = get_file(&server, &id, "/home/user/link").await;
    assert!(status == 200 || status == 422, "{status}");
    if status == 200 {
        assert!(String::from_utf8_lossy(&body).contains("user:x:1000"), "not the sandbox's passwd");
    }
    // Host-wide /proc files can be neither written nor read, by the user or by the agent.
    for path in ["/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger"] {
        let resp = put_file(&server, &id, path, b"|/bin/false".to_vec()).await;
        assert!(matches!(resp.status().as_u16(), 403 | 422 | 404), "{path}: {}", resp.status());
        let r = exec(&server, &id, &format!("echo x > {path} 2>&1; echo $?")).await;
        assert_ne!(
            r["stdout"].as_str().expect("stdout").lines().last(),
            Some("0"),
            "{path} writable: {r}"
        );
    }
    let (status, body) = get_file(&server, &id, "/proc/kcore").await;
    assert!(status != 200 || body.is_empty(), "kcore readable");
    let core = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("host core_pattern");
    assert!(!core.contains("/bin/false"));
    // Writing as root-only places fails: the agent acts as the sandbox user.
    let resp = put_file(&server, &id, "/etc/evil", b"x".to_vec()).await;
    assert_eq!(resp.status(), 403);
    let bad = put_file(&server, &id, "relative/path", b"x".to_vec()).await;
    assert_eq!(bad.status(), 422);
}

#[tokio::test]
async fn ttl_and_idle_timeouts_fire() {
    require_root!();
    let server = Server::start().await;
    let ttl = create(&server, ADMIN_KEY, json!({"ttl_seconds": 1, "on_timeout": "delete"})).await;
    let idle = create(&server, ADMIN_KEY, json!({"idle_timeout_seconds": 2})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut ttl_gone, mut idle_stopped) = (false, false);
    while Instant::now() < deadline && !(ttl_gone && idle_stopped) {
        ttl_gone = server.get(&format!("/api/v1/instances/{ttl}"), ADMIN_KEY).await.status == 404;
        idle_stopped = server.get(&format!("/api/v1/instances/{idle}"), ADMIN_KEY).await.body["status"]
            == "stopped";
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ttl_gone, "the TTL did not delete the instance");
    assert!(idle_stopped, "the idle timeout did not stop the instance");
}

#[tokio::test]
async fn another_tenant_gets_404_on_every_route() {
    require_root!();
    let server = Server::start().await;
    let alice = server.tenant_key("alice").await;
    let bob = server.tenant_key("bob").await;
    let id = create(&server, &alice, json!({})).await;
    let base = format!("/api/v1/instances/{id}");
    for (method, path, body) in [
        (Method::GET, base.clone(), None),
        (Method::POST, format!("{base}/stop"), Some("{}")),
        (Method::POST, format!("{base}/start"), Some("{}")),
        (Method::POST, format!("{base}/exec"), Some("{\"command\":\"true\"}")),
        (Method::GET, format!("{base}/files?path=/etc/hostname"), None),
        (Method::PUT, format!("{base}/files?path=/tmp/x"), Some("x")),
        (Method::DELETE, format!("{base}/files?path=/tmp/x"), None),
        (Method::GET, format!("{base}/files/list?path=/"), None),
        (Method::GET, format!("{base}/processes"), None),
        (Method::GET, format!("{base}/ports/8000/"), None),
        (Method::GET, format!("{base}/ssh"), None),
        (Method::DELETE, format!("{base}/ssh"), None),
        (Method::DELETE, format!("{base}/ssh/keys/cred_x"), None),
        (Method::POST, format!("{base}/public-ports"), Some("{\"port\":8000}")),
        (Method::GET, format!("{base}/public-ports"), None),
        (Method::DELETE, format!("{base}/public-ports/8000"), None),
        (Method::DELETE, base.clone(), None),
    ] {
        let r = server.request(method.clone(), &path, Some(&bob), body.map(str::to_owned)).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
    }
    assert_eq!(server.get("/api/v1/instances", &bob).await.body["instances"], json!([]));
    assert_eq!(server.get(&base, &alice).await.body["status"], "running");
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    require_root!();
    let server = Server::start().await;
    for body in [
        json!({"disk_mb": 1}),
        json!({"disk_mb": 1u64 << 40}),
        json!({"ttl_seconds": 0}),
        json!({"memory_mb": 1}),
        json!({"colour": "blue"}),
        json!({"on_timeout": "explode"}),
    ] {
        let r = server.post("/api/v1/instances", ADMIN_KEY, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
    }
    let r = server.post("/api/v1/instances", ADMIN_KEY, json!({"network": true})).await;
    assert_eq!(r.status, 501);
    assert_eq!(server.get("/api/v1/instances", ADMIN_KEY).await.body["instances"], json!([]));
    let r = server.get("/api/v1/instances?colour=blue", ADMIN_KEY).await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn a_killed_server_keeps_every_instance_record_and_its_files() {
    require_root!();
    let mut server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    exec(&server, &id, "echo kept > /home/user/f").await;
    server.crash_and_restart().await;
    let record = server.get(&format!("/api/v1/instances/{id}"), ADMIN_KEY).await;
    assert_eq!(record.body["status"], "failed", "{}", record.body);
    assert!(record.body["error"].as_str().expect("error").contains("files are kept"));
    assert!(server.live_cgroups().is_empty(), "a sandbox survived the crash");
    let started = server.post(&format!("/api/v1/instances/{id}/start"), ADMIN_KEY, json!({})).await;
    assert_eq!(started.body["status"], "running", "{}", started.body);
    assert_eq!(get_file(&server, &id, "/home/user/f").await.1, b"kept\n");
}

#[tokio::test]
async fn background_processes_run_between_execs_and_can_be_streamed_and_killed() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    let started = server
        .post(
            &format!("/api/v1/instances/{id}/exec"),
            ADMIN_KEY,
            json!({"command": "i=0; while true; do echo tick $i; echo $i > /tmp/count; i=$((i+1)); sleep 0.2; done", "background": true}),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.body["status"], "running");
    let pid = started.body["id"].as_str().expect("process id").to_owned();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // It keeps running while other execs come and go, and they see what it does.
    let first: u32 = exec(&server, &id, "cat /tmp/count").await["stdout"]
        .as_str()
        .expect("out")
        .trim()
        .parse()
        .expect("n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later: u32 = exec(&server, &id, "cat /tmp/count").await["stdout"]
        .as_str()
        .expect("out")
        .trim()
        .parse()
        .expect("n");
    assert!(later > first, "the background process stopped counting ({first} -> {later})");
    let list = server.get(&format!("/api/v1/instances/{id}/processes"), ADMIN_KEY).await;
    assert_eq!(list.body["processes"][0]["id"], pid);
    assert_eq!(list.body["processes"][0]["status"], "running");

    // Its stream replays what it printed and goes on live; killing it ends the stream.
    let mut resp = reqwest::Client::new()
        .get(format!("{}/api/v1/instances/{id}/processes/{pid}/stream", server.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("stream");
    let mut text = String::new();
    while !text.contains("tick 0") {
        let chunk = resp.chunk().await.expect("chunk").expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let killed = server
        .post(
            &format!("/api/v1/instances/{id}/processes/{pid}/kill"),
            ADMIN_KEY,
            json!({"signal": "SIGTERM"}),
        )
        .await;
    assert_eq!(killed.status, 200, "{}", killed.body);
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("in time")
        .expect("chunk")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: exit"), "{text}");
    let waited = server
        .post(
            &format!("/api/v1/instances/{id}/processes/{pid}/wait?timeout_ms=5000"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(waited.body["status"], "finished", "{}", waited.body);
    assert_eq!(waited.body["result"]["signal"], "SIGTERM");
    assert!(waited.body["result"]["stdout"].as_str().expect("stdout").contains("tick 1"));
    let again = server
        .post(&format!("/api/v1/instances/{id}/processes/{pid}/kill"), ADMIN_KEY, json!({}))
        .await;
    assert_eq!(again.status, 409, "an ended process cannot be signalled");
    let bad = server
        .post(
            &format!("/api/v1/instances/{id}/processes/{pid}/kill"),
            ADMIN_KEY,
            json!({"signal": "SIGNOPE"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    let missing =
        server.get(&format!("/api/v1/instances/{id}/processes/proc_nope"), ADMIN_KEY).await;
    assert_eq!(missing.status, 404);
}

/// A WebSocket echo server in plain Python (no packages in the image): handshake, then
/// every text frame back, unmasked.
const WS_ECHO: &str = r#"
import base64, hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9000)); s.listen(4)
while True:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        req += c.recv(4096)
    key = [l.split(b": ")[1] for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    def read(n):
        b = b""
        while len(b) < n:
            b += c.recv(n - len(b))
        return b
    while True:
        h = read(2); op = h[0] & 15; n = h[1] & 127
        if n == 126: n = int.from_bytes(read(2), "big")
        mask = read(4); data = bytes(x ^ mask[i % 4] for i, x in enumerate(read(n)))
        if op == 8: break
        c.sendall(bytes([0x81, len(data)]) + data)
    c.close()
"#;

#[tokio::test]
async fn ports_are_proxied_for_http_and_websockets() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    exec(&server, &id, "mkdir -p /home/user/site && echo served > /home/user/site/page.txt").await;
    for (command, _) in [
        ("cd /home/user/site && exec python3 -m http.server 8000 --bind 127.0.0.1", 8000),
        ("exec python3 /tmp/ws.py", 9000),
    ] {
        if command.contains("ws.py") {
            let resp = put_file(&server, &id, "/tmp/ws.py", WS_ECHO.as_bytes().to_vec()).await;
            assert_eq!(resp.status(), 200);
        }
        let r = server
            .post(
                &format!("/api/v1/instances/{id}/exec"),
                ADMIN_KEY,
                json!({"command": command, "background": true}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Servers take a moment to listen.
    let url = format!("{}/api/v1/instances/{id}/ports/8000/page.txt", server.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let resp =
            reqwest::Client::new().get(&url).bearer_auth(ADMIN_KEY).send().await.expect("request");
        if resp.status() == 200 {
            break resp.text().await.expect("body");
        }
        assert!(Instant::now() < deadline, "the proxied server never answered: {}", resp.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body, "served\n");
    let listing = reqwest::Client::new()
        .get(format!("{}/api/v1/instances/{id}/ports/8000/?x=1", server.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert!(listing.text().await.expect("body").contains("page.txt"));
    // Nothing listens on this port: 502, not a hang.
    let closed = server.get(&format!("/api/v1/instances/{id}/ports/8999/"), ADMIN_KEY).await;
    assert_eq!(closed.status, 502, "{}", closed.body);
    // Without a key, or with another tenant's, there is no way in.
    let anonymous = reqwest::get(&url).await.expect("request");
    assert_eq!(anonymous.status(), 401);
    let bob = server.tenant_key("bob").await;
    assert_eq!(
        server.get(&format!("/api/v1/instances/{id}/ports/8000/page.txt"), &bob).await.status,
        404
    );

    // WebSockets go through too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut socket = loop {
        match server.websocket(&format!("/api/v1/instances/{id}/ports/9000/"), ADMIN_KEY).await {
            Ok(socket) => break socket,
            Err(e) => {
                assert!(Instant::now() < deadline, "websocket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    socket.send(Message::Text("ping through the proxy".into())).await.expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("in time")
        .expect("frame")
        .expect("ok");
    assert_eq!(echoed.into_text().expect("text").as_str(), "ping through the proxy");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test]
async fn a_slow_download_is_not_buffered_by_the_server() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({"disk_mb": 512})).await;
    let r = exec(&server, &id, "head -c 200M /dev/zero > /home/user/big && echo ok").await;
    assert_eq!(r["stdout"], "ok\n", "{r}");
    let before = rss_bytes(server.pid());
    let mut resp = reqwest::Client::new()
        .get(format!("{}/api/v1/instances/{id}/files?path=/home/user/big", server.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    // Take a little, then stall: the server must wait for us, not read ahead into memory.
    let mut got = 0usize;
    while got < 1 << 20 {
        got += resp.chunk().await.expect("chunk").expect("data").len();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_bytes(server.pid());
    assert!(
        during < before + (64 << 20),
        "the server buffered the download: {before} -> {during} bytes"
    );
    // And the rest still arrives, complete.
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        got += chunk.len();
    }
    assert_eq!(got, 200 << 20);
}

#[tokio::test]
async fn instance_exec_streams_over_websocket_and_sse() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    exec(&server, &id, "echo state > /home/user/s").await;
    let path = format!("/api/v1/instances/{id}/exec/stream");
    let mut socket = server.websocket(&path, ADMIN_KEY).await.expect("websocket");
    let req = json!({"command": "cat /home/user/s; read line; echo got $line; sleep 1; echo done"});
    socket.send(Message::Text(req.to_string().into())).await.expect("send");
    assert_eq!(common::next_json(&mut socket).await, json!({"type": "stdout", "data": "state\n"}));
    socket
        .send(Message::Text(json!({"type": "stdin", "data": "hello\n"}).to_string().into()))
        .await
        .expect("stdin");
    assert_eq!(
        common::next_json(&mut socket).await,
        json!({"type": "stdout", "data": "got hello\n"})
    );
    let started = Instant::now();
    let mut last = common::next_json(&mut socket).await;
    while last["type"] != "exit" {
        last = common::next_json(&mut socket).await;
    }
    assert!(started.elapsed() > Duration::from_millis(700), "output came only at the end");
    assert_eq!(last["mode"], "persistent");
    assert_eq!(last["stdout"], "state\ngot hello\ndone\n");

    let sse = reqwest::Client::new()
        .post(format!("{}/api/v1/instances/{id}/exec/stream", server.url))
        .bearer_auth(ADMIN_KEY)
        .body(json!({"command": "cat /home/user/s"}).to_string())
        .send()
        .await
        .expect("sse");
    let text = sse.text().await.expect("body");
    assert!(
        text.contains("event: stdout") && text.contains("state") && text.contains("event: exit"),
        "{text}"
    );
    let bob = server.tenant_key("bob").await;
    let other = server
        .post(&format!("/api/v1/instances/{id}/exec/stream"), &bob, json!({"command": "true"}))
        .await;
    assert_eq!(other.status, 404);
}

#[tokio::test]
async fn the_terminal_is_a_resizable_pty() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    let path = format!("/api/v1/instances/{id}/terminal?rows=40&cols=100");
    let mut socket = server.websocket(&path, ADMIN_KEY).await.expect("websocket");
    // Read the screen until `want` shows up; answers everything read so far.
    async fn screen_until(socket: &mut common::Socket, screen: &mut String, want: &str) {
        while !screen.contains(want) {
            let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
                .await
                .unwrap_or_else(|_| panic!("{want:?} never came; screen: {screen}"));
            match frame {
                Some(Ok(Message::Binary(data))) => screen.push_str(&String::from_utf8_lossy(&data)),
                Some(Ok(Message::Text(text))) => screen.push_str(&text),
                other => panic!("terminal ended: {other:?}; screen: {screen}"),
            }
        }
    }
    let mut screen = String::new();
    socket.send(Message::Binary(b"tty; stty size\r".to_vec().into())).await.expect("type");
    screen_until(&mut socket, &mut screen, "40 100").await;
    assert!(screen.contains("/dev/pts/"), "{screen}");
    let resize = json!({"type": "resize", "rows": 30, "cols": 120}).to_string();
    socket.send(Message::Text(resize.into())).await.expect("resize");
    let typed = json!({"type": "input", "data": "stty size; echo $TERM; exit 3\r"}).to_string();
    socket.send(Message::Text(typed.into())).await.expect("type");
    screen_until(&mut socket, &mut screen, "\"type\":\"exit\"").await;
    assert!(screen.contains("30 120"), "{screen}");
    assert!(screen.contains("xterm-256color"), "{screen}");
    assert!(screen.contains("\"exit_code\":3"), "{screen}");
    // A bad size is refused before any upgrade; another tenant's instance is not there.
    let bad = server.get(&format!("/api/v1/instances/{id}/terminal?rows=0"), ADMIN_KEY).await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    assert!(bad.body.to_string().contains("rows and cols"), "{:?}", bad.body);
    let plain = server.get(&format!("/api/v1/instances/{id}/terminal"), ADMIN_KEY).await;
    assert_eq!(plain.status, 422, "{:?}", plain.body);
    assert!(plain.body.to_string().contains("WebSocket"), "{:?}", plain.body);
    let other = server.tenant_key("other").await;
    let err = server.websocket(&format!("/api/v1/instances/{id}/terminal"), &other).await;
    assert!(err.is_err(), "another tenant opened the terminal");
}

/// Runs a host shell command and returns its stdout (test scaffolding around `tar`).
fn host_sh(script: &str) -> Vec<u8> {
    let out = std::process::Command::new("sh").args(["-c", script]).output().expect("sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test]
async fn trees_move_in_and_out_as_tar_streams() {
    require_root!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY, json!({})).await;
    let base = format!("{}/api/v1/instances/{id}/files/archive", server.url);
    let http = reqwest::Client::new();
    let made = exec(
        &server,
        &id,
        "mkdir -p /home/user/proj/sub && echo alpha > /home/user/proj/a.txt && head -c 1000000 /dev/urandom > /home/user/proj/sub/b.bin && ln -s a.txt /home/user/proj/link && sha256sum /home/user/proj/sub/b.bin | cut -d' ' -f1",
    )
    .await;
    let digest = made["stdout"].as_str().expect("stdout").trim().to_owned();

    // Out: a tar the host's tar reads, with the file, the binary and the symlink intact.
    let resp = http
        .get(format!("{base}?path=/home/user/proj"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    let archive = resp.bytes().await.expect("body");
    let dir = server.data_dir.join("untarred");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("x.tar"), &archive).expect("write");
    let d = dir.display();
    host_sh(&format!("cd {d} && mkdir out && tar -xf x.tar -C out"));
    assert_eq!(std::fs::read_to_string(dir.join("out/a.txt")).expect("a"), "alpha\n");
    assert_eq!(std::fs::read_link(dir.join("out/link")).expect("link").to_str(), Some("a.txt"));
    let host_digest = host_sh(&format!("sha256sum {d}/out/sub/b.bin | cut -d' ' -f1"));
    assert_eq!(String::from_utf8_lossy(&host_digest).trim(), digest);

    // In: the same archive lands in a new directory, owned by the instance's user.
    let resp = http
        .put(format!("{base}?path=/home/user/copy/deeper"))
        .bearer_auth(ADMIN_KEY)
        .body(archive.to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    let check = exec(
        &server,
        &id,
        "cd /home/user/copy/deeper && cat a.txt && readlink link && stat -c %U sub/b.bin && sha256sum sub/b.bin | cut -d' ' -f1",
    )
    .await;
    assert_eq!(check["stdout"], format!("alpha\na.txt\nuser\n{digest}\n"), "{check}");

    // A member that climbs out with `..` is refused by tar and lands nowhere.
    host_sh(&format!(
        "cd {d} && python3 -c \"import tarfile,io\nt=tarfile.open('evil.tar','w')\nfor name in ['../../../../tmp/evil-faas','ok.txt']:\n  i=tarfile.TarInfo(name); i.size=3; t.addfile(i,io.BytesIO(b'hi\\\\n'))\nt.close()\""
    ));
    let evil = std::fs::read(dir.join("evil.tar")).expect("evil");
    let resp = http
        .put(format!("{base}?path=/home/user/in"))
        .bearer_auth(ADMIN_KEY)
        .body(evil)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 422);
    let body = resp.text().await.expect("body");
    assert!(body.contains("Member name contains"), "{body}");
    let check =
        exec(&server, &id, "ls /home/user/in; test -e /tmp/evil-faas && echo ESCAPED").await;
    assert_eq!(check["stdout"], "ok.txt\n");
    assert!(!std::path::Path::new("/tmp/evil-faas").exists());

    // A path that is not there is a 404 before any byte; garbage is refused.
    let resp =
        http.get(format!("{base}?path=/nope")).bearer_auth(ADMIN_KEY).send().await.expect("get");
    assert_eq!(resp.status(), 404);
    let resp = http
        .put(format!("{base}?path=/home/user/junk"))
        .bearer_auth(ADMIN_KEY)
        .body(vec![7u8; 5000])
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 422);
}
