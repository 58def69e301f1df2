//! The HTTP contract: auth, tenants, errors, admission, restart.

mod common;

use common::{ADMIN_KEY, Server};
use reqwest::Method;
use serde_json::{Value, json};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an API error: {body}"))
}

#[tokio::test]
async fn health_needs_no_key_but_everything_else_does() {
    require_root!();
    let server = Server::start().await;
    let health = server.request(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");
    let r = server
        .request(
            Method::POST,
            "/api/v1/execute",
            None,
            Some(json!({"command": "true"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r.body), "unauthorized");
    let r = server.post("/api/v1/execute", "faas_wrong", json!({"command": "true"})).await;
    assert_eq!(r.status, 401);
    // X-API-Key works as well as Bearer.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/execute", server.url))
        .header("X-API-Key", ADMIN_KEY)
        .body(json!({"command": "echo via-header"}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tenants_see_only_their_own_executions() {
    require_root!();
    let server = Server::start().await;
    let alice = server.tenant_key("alice").await;
    let bob = server.tenant_key("bob").await;
    let r = server.exec_as(&alice, json!({"command": "echo mine"})).await;
    let path = format!("/api/v1/executions/{}", r["id"].as_str().expect("id"));
    assert_eq!(server.get(&path, &alice).await.status, 200);
    let other = server.get(&path, &bob).await;
    assert_eq!(other.status, 404);
    assert_eq!(error_code(&other.body), "not_found");
    // Tenants cannot manage keys.
    let r = server.post("/api/v1/keys", &alice, json!({"tenant": "alice"})).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn revoked_keys_stop_working() {
    require_root!();
    let server = Server::start().await;
    let reply =
        server.post("/api/v1/keys", ADMIN_KEY, json!({"tenant": "carol", "name": "ci"})).await;
    let key = reply.body["key"].as_str().expect("key").to_owned();
    let id = reply.body["id"].as_str().expect("id").to_owned();
    assert_eq!(server.exec_as(&key, json!({"command": "true"})).await["exit_code"], 0);
    let listed = server.get("/api/v1/keys?tenant=carol", ADMIN_KEY).await;
    assert_eq!(listed.body["keys"].as_array().expect("keys").len(), 1);
    assert!(listed.body.to_string().find(&key).is_none(), "a listing must never show the secret");
    let r =
        server.request(Method::DELETE, &format!("/api/v1/keys/{id}"), Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 204);
    let r = server.post("/api/v1/execute", &key, json!({"command": "true"})).await;
    assert_eq!(r.status, 401);
    let r = server.request(Method::DELETE, "/api/v1/keys/key_nope", Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    require_root!();
    let server = Server::start_with("max_request_bytes = 65536\n").await;
    let raw = |body: &str| {
        server.request(Method::POST, "/api/v1/execute", Some(ADMIN_KEY), Some(body.to_owned()))
    };
    let r = raw("{\"command\": ").await;
    assert_eq!((r.status, error_code(&r.body)), (400, "bad_request"));
    let r = raw("{\"command\": \"true\", \"colour\": 1}").await;
    assert_eq!(r.status, 422);
    assert!(r.body["error"]["message"].as_str().expect("message").contains("colour"));
    let r = raw(&json!({"command": "x".repeat(100_000)}).to_string()).await;
    assert_eq!((r.status, error_code(&r.body)), (413, "payload_too_large"));
    let cases = [
        json!({"code": "1", "language": "cobol"}),
        json!({"code": "1"}),
        json!({}),
        json!({"command": "true", "code": "1", "language": "python"}),
        json!({"command": ""}),
        json!({"command": []}),
        json!({"command": "true", "timeout_ms": -1}),
        json!({"command": "true", "timeout_ms": 0}),
        json!({"command": "true", "timeout_ms": 1_000_000_000u64}),
        json!({"command": "true", "memory_mb": 1u64 << 40}),
        json!({"command": "true", "memory_mb": 1}),
        json!({"command": "true", "cpu": 1000}),
        json!({"command": "true", "cpu": -1}),
        json!({"command": "true", "pids": 0}),
        json!({"command": "true", "pids": 10_000_000}),
        json!({"command": "true", "env": {"A=B": "c"}}),
        json!({"command": "true", "workdir": "relative"}),
        json!({"command": ["a\u{0}b"]}),
        json!({"command": "true", "mode": "sideways"}),
    ];
    for case in cases {
        let r = server.post("/api/v1/execute", ADMIN_KEY, case.clone()).await;
        assert_eq!(r.status, 422, "{case} -> {} {}", r.status, r.body);
        assert!(!error_code(&r.body).is_empty());
    }
    let r = server
        .post("/api/v1/execute", ADMIN_KEY, json!({"command": "true", "image": "nope"}))
        .await;
    assert_eq!(r.status, 404);
    let r = server.get("/api/v1/executions/ex_missing", ADMIN_KEY).await;
    assert_eq!(r.status, 404);
    let r = server.request(Method::GET, "/api/v1/nothing-here", Some(ADMIN_KEY), None).await;
    assert_eq!((r.status, error_code(&r.body)), (404, "not_found"));
    let r = server.request(Method::PUT, "/api/v1/execute", Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 405);
    // Nothing was recorded for any of them: the server still works normally.
    assert_eq!(server.exec(json!({"command": "echo fine"})).await["stdout"], "fine\n");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    require_root!();
    let server = Server::start().await;
    let mut seen = std::collections::HashSet::new();
    for (path, key, status) in [
        ("/health", None, 200),
        ("/api/v1/executions/ex_missing", Some(ADMIN_KEY), 404),
        ("/api/v1/executions/ex_missing", None, 401),
    ] {
        let r = server.request(Method::GET, path, key, None).await;
        assert_eq!(r.status, status, "{path}");
        let id = r.headers.get("x-request-id").expect("x-request-id").to_str().expect("ascii");
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert!(seen.insert(id.to_owned()), "ids are unique");
    }
    // A caller's own id is kept, for its logs and ours.
    let resp = reqwest::Client::new()
        .get(format!("{}/health", server.url))
        .header("x-request-id", "caller-trace-7")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["x-request-id"], "caller-trace-7");
}

#[tokio::test]
async fn what_this_host_cannot_do_answers_501() {
    require_root!();
    let server = Server::start().await;
    for case in [json!({"command": "true", "network": true})] {
        let r = server.post("/api/v1/execute", ADMIN_KEY, case.clone()).await;
        assert_eq!(r.status, 501, "{case}");
        assert_eq!(error_code(&r.body), "unsupported");
        assert!(
            r.body["error"]["message"].as_str().expect("message").len() > 20,
            "the message must say why"
        );
    }
}

#[tokio::test]
async fn fifty_concurrent_runs_all_complete() {
    require_root!();
    let server = Server::start().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let run = server.exec_in_background(json!({"command": format!("sleep 0.2; echo run-{i}")}));
        tasks.push(tokio::spawn(async move {
            let r = run.await.expect("task").expect("request");
            (i, r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (i, status, body) = task.await.expect("task");
        match status {
            200 => {
                assert_eq!(body["stdout"], format!("run-{i}\n"));
                ok += 1;
            }
            503 => assert_eq!(error_code(&body), "overloaded"),
            other => panic!("run {i}: HTTP {other}: {body}"),
        }
    }
    assert_eq!(ok, 50, "the default admission limit (64) admits all 50");
    assert!(server.live_cgroups().is_empty());
}

#[tokio::test]
async fn the_admission_limit_answers_503() {
    require_root!();
    let server = Server::start_with("max_concurrent_sandboxes = 2\n").await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(server.exec_in_background(json!({"command": "sleep 1"})));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let resp = task.await.expect("task").expect("request");
        if resp.status() == 503 {
            assert_eq!(resp.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 4, "{statuses:?}");
}

#[tokio::test]
async fn a_killed_server_loses_no_record_and_leaves_no_sandbox() {
    require_root!();
    let mut server = Server::start().await;
    let done = server.exec(json!({"command": "echo before"})).await;
    // A run in flight when the server dies.
    let in_flight = server.exec_in_background(json!({"command": "sleep 4271"}));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(common::host_processes_with("sleep 4271") >= 1, "the run should be in flight");
    server.crash_and_restart().await;
    let _ = in_flight.await;
    // The sandbox died with the server (parent-death signal), or at the latest on restart.
    assert_eq!(common::host_processes_with("sleep 4271"), 0);
    assert!(server.live_cgroups().is_empty());
    let stored = server
        .get(&format!("/api/v1/executions/{}", done["id"].as_str().expect("id")), ADMIN_KEY)
        .await;
    assert_eq!(stored.body["stdout"], "before\n");
    assert_eq!(server.exec(json!({"command": "echo after"})).await["stdout"], "after\n");
}

#[tokio::test]
async fn a_dead_launcher_is_replaced() {
    require_root!();
    let server = Server::start().await;
    let before = server.launcher_pids();
    assert_eq!(before.len(), 1, "{before:?}");
    Server::kill_pid(before[0]);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = server.exec(json!({"command": "echo still-here"})).await;
    assert_eq!(r["stdout"], "still-here\n");
    let health = server.request(Method::GET, "/health", None, None).await;
    assert_eq!(health.body["launcher_restarts"], 1);
    let after = server.launcher_pids();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
}

#[tokio::test]
async fn graceful_shutdown_kills_running_sandboxes() {
    require_root!();
    let mut server = Server::start().await;
    let in_flight =
        server.exec_in_background(json!({"command": "sleep 4281", "timeout_ms": 60000}));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(common::host_processes_with("sleep 4281") >= 1);
    let started = std::time::Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(common::host_processes_with("sleep 4281"), 0);
    assert!(server.live_cgroups().is_empty());
    // The caller got an answer (the run, killed), not a dropped connection.
    let reply = in_flight.await.expect("task").expect("response");
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.expect("json");
    assert_eq!(body["status"], "signaled");
}

#[tokio::test]
async fn configured_origins_may_call_the_api_from_a_browser() {
    require_root!();
    let server = Server::start_with("cors_origins = [\"http://app.example\"]\n").await;
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{}/api/v1/execute", server.url))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase()
    };
    assert_eq!(allowed(&preflight, "access-control-allow-origin"), "http://app.example");
    assert!(allowed(&preflight, "access-control-allow-headers").contains("authorization"));
    let answer = http
        .get(format!("{}/api/v1/usage/current", server.url))
        .header("origin", "http://app.example")
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 200);
    assert_eq!(allowed(&answer, "access-control-allow-origin"), "http://app.example");
    let exposed = allowed(&answer, "access-control-expose-headers");
    assert!(
        exposed.contains("x-request-id") && exposed.contains("x-ratelimit-remaining"),
        "{exposed}"
    );
    let stranger = http
        .get(format!("{}/health", server.url))
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("get");
    assert!(stranger.headers().get("access-control-allow-origin").is_none());
    // Without the setting, no origin is allowed.
    let plain = Server::start().await;
    let none = http
        .get(format!("{}/health", plain.url))
        .header("origin", "http://app.example")
        .send()
        .await
        .expect("get");
    assert!(none.headers().get("access-control-allow-origin").is_none());
}
