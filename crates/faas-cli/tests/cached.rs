//! Cached mode: warm pools, reuse, and results identical to ephemeral runs.

mod common;

use common::{ADMIN_KEY, Server};
use serde_json::{Value, json};

/// What must hold of a result.
type Check = fn(&Value) -> bool;

/// The foundation's matrix: each request, and what must hold of its result.
fn matrix() -> Vec<(Value, Check)> {
    vec![
        (json!({"command": "echo out; echo err >&2; exit 3"}), |r| {
            r["stdout"] == "out\n"
                && r["stderr"] == "err\n"
                && r["exit_code"] == 3
                && r["status"] == "exited"
        }),
        (json!({"command": ["/bin/sh", "-c", "kill -SEGV $$"]}), |r| {
            r["status"] == "signaled" && r["signal"] == "SIGSEGV"
        }),
        (
            json!({"code": "import sys; print(sys.stdin.read().upper())", "language": "python", "stdin": "hi"}),
            |r| r["stdout"] == "HI\n",
        ),
        (
            json!({"command": "echo \"$FOO\"; pwd", "env": {"FOO": "bar"}, "workdir": "/home/user/w"}),
            |r| r["stdout"] == "bar\n/home/user/w\n",
        ),
        (json!({"command": "trap '' TERM; sleep 4301 & sleep 4302", "timeout_ms": 400}), |r| {
            r["status"] == "timeout" && r["signal"] == "SIGKILL"
        }),
        (json!({"code": "x = bytearray(300 << 20)", "language": "python", "memory_mb": 64}), |r| {
            r["status"] == "oom"
        }),
        (json!({"command": "for i in $(seq 40); do sleep 4303 & done; wait", "pids": 8}), |r| {
            r["stderr"].as_str().is_some_and(|e| e.contains("fork"))
        }),
        (
            json!({"code": "import socket\ns = socket.socket(); s.settimeout(1)\nprint(s.connect_ex(('1.1.1.1', 80)) != 0)", "language": "python"}),
            |r| r["stdout"] == "True\n",
        ),
        (
            json!({"command": "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; touch /usr/x 2>&1 | grep -c Read-only"}),
            |r| r["stdout"] == "1000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n1\n",
        ),
        (json!({"command": "ls /proc | grep -cE '^[0-9]+$'"}), |r| {
            r["stdout"].as_str().and_then(|s| s.trim().parse::<u32>().ok()).is_some_and(|n| n <= 6)
        }),
        (json!({"command": ["no-such-program"]}), |r| r["exit_code"] == 127),
        (json!({"command": "yes flood"}), |r| {
            r["stdout_truncated"] == true && r["stdout"].as_str().map(str::len) == Some(65536)
        }),
        (json!({"command": "exec head -c 8M /dev/zero > /tmp/big"}), |r| r["signal"] == "SIGXFSZ"),
    ]
}

#[tokio::test]
async fn cached_results_match_ephemeral_ones() {
    require_root!();
    let server = Server::start_with("[limits]\noutput_bytes = 65536\nmax_file_mb = 4\n").await;
    for (request, holds) in matrix() {
        for mode in ["ephemeral", "cached"] {
            let mut req = request.clone();
            req["mode"] = json!(mode);
            let r = server.exec(req).await;
            assert!(holds(&r), "{mode}: {request} -> {r}");
            assert_eq!(r["mode"], mode);
        }
    }
    for marker in ["sleep 4301", "sleep 4302", "sleep 4303"] {
        assert_eq!(common::host_processes_with(marker), 0, "{marker} survived");
    }
}

#[tokio::test]
async fn fresh_sandboxes_share_nothing_and_reuse_keeps_state() {
    require_root!();
    let server = Server::start().await;
    let write = json!({"command": "echo secret > /tmp/f; echo secret > /home/user/f; echo ok", "mode": "cached"});
    let read =
        json!({"command": "cat /tmp/f /home/user/f 2>&1 | grep -c secret; true", "mode": "cached"});
    assert_eq!(server.exec(write.clone()).await["stdout"], "ok\n");
    assert_eq!(
        server.exec(read.clone()).await["stdout"],
        "0\n",
        "a fresh cached sandbox saw a previous call's files"
    );

    let mut reuse_write = write.clone();
    reuse_write["reuse"] = json!(true);
    let mut reuse_read = read.clone();
    reuse_read["reuse"] = json!(true);
    assert_eq!(server.exec(reuse_write).await["stdout"], "ok\n");
    assert_eq!(
        server.exec(reuse_read.clone()).await["stdout"],
        "2\n",
        "reuse: true keeps the sandbox"
    );

    // Another tenant with the same reuse key gets its own sandbox.
    let bob = server.tenant_key("bob").await;
    assert_eq!(server.exec_as(&bob, reuse_read).await["stdout"], "0\n");
}

#[tokio::test]
async fn prewarmed_pools_serve_hits_and_refill() {
    require_root!();
    let server = Server::start().await;
    let warm =
        server.post("/api/v1/prewarm", ADMIN_KEY, json!({"count": 3, "memory_mb": 128})).await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    assert_eq!(warm.body["idle"], 3);
    for _ in 0..2 {
        let r =
            server.exec(json!({"command": "echo warm", "mode": "cached", "memory_mb": 128})).await;
        assert_eq!(r["stdout"], "warm\n");
    }
    let pools = server.get("/api/v1/pools", ADMIN_KEY).await.body;
    let pool = pools["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["memory_mb"] == 128))
        .cloned()
        .expect("pool");
    assert_eq!(pool["hits"], 2, "{pool}");
    assert_eq!(pool["misses"], 0);
    assert!(pool["refill_ms_mean"].as_f64().expect("refill") > 0.0);
    // Another tenant does not see this pool.
    let bob = server.tenant_key("bob").await;
    assert_eq!(server.get("/api/v1/pools", &bob).await.body["pools"], json!([]));
    let bad = server.post("/api/v1/prewarm", ADMIN_KEY, json!({"count": 0})).await;
    assert_eq!(bad.status, 422);
}

#[tokio::test]
async fn an_empty_pool_still_serves_as_a_miss() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": "echo cold", "mode": "cached", "memory_mb": 96})).await;
    assert_eq!(r["stdout"], "cold\n");
    let pools = server.get("/api/v1/pools", ADMIN_KEY).await.body;
    assert_eq!(pools["pools"][0]["misses"], 1, "{pools}");
}

#[tokio::test]
async fn contexts_keep_globals_between_calls() {
    require_root!();
    let server = Server::start().await;
    for (language, set, get) in [
        ("python", "x = 41\ndata = list(range(1000))", "print(x + 1, len(data))"),
        (
            "javascript",
            "var x = 41; const data = Array.from({length: 1000}, (_, i) => i);",
            "console.log(x + 1, data.length)",
        ),
    ] {
        let created =
            server.post("/api/v1/contexts", ADMIN_KEY, json!({"language": language})).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().expect("id").to_owned();
        let r = server.exec(json!({"code": set, "context_id": id})).await;
        assert_eq!(r["exit_code"], 0, "{r}");
        let r = server.exec(json!({"code": get, "context_id": id})).await;
        assert_eq!(r["stdout"], "42 1000\n", "{language}: {r}");
        // An exception is a failed run, not a dead context.
        let r = server.exec(json!({"code": "throw_me_a_name_error_", "context_id": id})).await;
        assert_eq!(r["exit_code"], 1);
        assert!(!r["stderr"].as_str().expect("stderr").is_empty());
        let r = server.exec(json!({"code": get, "context_id": id})).await;
        assert_eq!(r["stdout"], "42 1000\n");
        let info = server.get(&format!("/api/v1/contexts/{id}"), ADMIN_KEY).await;
        assert_eq!(info.body["runs"], 4);
    }
}

#[tokio::test]
async fn a_context_survives_a_timeout_and_belongs_to_its_tenant() {
    require_root!();
    let server = Server::start().await;
    let alice = server.tenant_key("alice").await;
    let bob = server.tenant_key("bob").await;
    let created = server.post("/api/v1/contexts", &alice, json!({"language": "python"})).await;
    let id = created.body["id"].as_str().expect("id").to_owned();
    server.exec_as(&alice, json!({"code": "x = 1", "context_id": id})).await;
    let r = server
        .exec_as(&alice, json!({"code": "while True: pass", "context_id": id, "timeout_ms": 300}))
        .await;
    assert_eq!(r["status"], "timeout", "{r}");
    let r = server.exec_as(&alice, json!({"code": "print(x)", "context_id": id})).await;
    assert_eq!(r["stdout"], "1\n", "the interrupt must leave the globals: {r}");
    let other =
        server.post("/api/v1/execute", &bob, json!({"code": "print(x)", "context_id": id})).await;
    assert_eq!(other.status, 404);
    assert_eq!(server.get(&format!("/api/v1/contexts/{id}"), &bob).await.status, 404);
    let deleted = server
        .request(reqwest::Method::DELETE, &format!("/api/v1/contexts/{id}"), Some(&alice), None)
        .await;
    assert_eq!(deleted.status, 204);
    let gone =
        server.post("/api/v1/execute", &alice, json!({"code": "print(x)", "context_id": id})).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn reused_sandboxes_retire_after_max_uses() {
    require_root!();
    let server = Server::start_with("[pools]\nmax_uses = 2\n").await;
    let call = json!({"command": "cat /tmp/mark 2>/dev/null || echo new; echo used > /tmp/mark", "mode": "cached", "reuse": true});
    let outputs: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(server.exec(call.clone()).await["stdout"].clone());
        }
        v
    };
    // Two calls per sandbox: new, used, then a new sandbox: new, used.
    assert_eq!(outputs, vec![json!("new\n"), json!("used\n"), json!("new\n"), json!("used\n")]);
}

#[tokio::test]
async fn the_memory_budget_caps_idle_sandboxes() {
    require_root!();
    let server = Server::start_with("[pools]\nmemory_budget_mb = 200\n").await;
    let warm =
        server.post("/api/v1/prewarm", ADMIN_KEY, json!({"count": 8, "memory_mb": 64})).await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    assert_eq!(warm.body["idle"], 3, "200 MiB holds three idle 64 MiB sandboxes: {}", warm.body);
}

#[tokio::test]
async fn unused_pools_are_emptied() {
    require_root!();
    let server = Server::start_with("[pools]\nidle_timeout_secs = 1\n").await;
    let warm = server.post("/api/v1/prewarm", ADMIN_KEY, json!({"count": 2})).await;
    assert_eq!(warm.body["idle"], 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let pools = server.get("/api/v1/pools", ADMIN_KEY).await.body;
        if pools["pools"] == json!([]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the pool was never emptied: {pools}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(server.live_cgroups().is_empty(), "evicted sandboxes left cgroups");
}
