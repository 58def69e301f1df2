//! Execute: results, limits and cleanup, against the real server and kernel.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

#[tokio::test]
async fn separates_stdout_stderr_and_exit_code() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": "echo out; echo err >&2; exit 3"})).await;
    assert_eq!(r["status"], "exited");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
    assert!(r["signal"].is_null());
    assert!(r["duration_ms"].as_f64().expect("duration") > 0.0);
    assert!(r["usage"]["cpu_ms"].as_f64().expect("cpu") > 0.0);
    assert!(r["usage"]["peak_memory_bytes"].as_u64().expect("memory") > 0);
}

#[tokio::test]
async fn reports_the_signal_that_ended_the_program() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": ["/bin/sh", "-c", "kill -SEGV $$"]})).await;
    assert_eq!(r["status"], "signaled");
    assert_eq!(r["signal"], "SIGSEGV");
    assert!(r["exit_code"].is_null());
}

#[tokio::test]
async fn passes_stdin_env_and_workdir() {
    require_root!();
    let server = Server::start().await;
    let r = server
        .exec(json!({"code": "import sys; print(sys.stdin.read().upper())", "language": "python", "stdin": "hi"}))
        .await;
    assert_eq!(r["stdout"], "HI\n", "{r}");
    let r = server
        .exec(json!({"command": "echo \"$FOO\" && pwd", "env": {"FOO": "bar baz"}, "workdir": "/home/user/project"}))
        .await;
    assert_eq!(r["stdout"], "bar baz\n/home/user/project\n");
}

#[tokio::test]
async fn runs_each_language() {
    require_root!();
    let server = Server::start().await;
    for (language, code) in [
        ("python", "print(6 * 7)"),
        ("javascript", "console.log(6 * 7)"),
        ("bash", "echo $((6 * 7))"),
        ("sh", "echo 42"),
    ] {
        let r = server.exec(json!({"code": code, "language": language})).await;
        assert_eq!(r["stdout"], "42\n", "{language}: {r}");
    }
    // Code larger than one argv string may be (128 KiB) still runs: it travels as a file.
    let big = format!("x = '{}'\nprint(len(x))", "a".repeat(300_000));
    let r = server.exec(json!({"code": big, "language": "python"})).await;
    assert_eq!(r["stdout"], "300000\n");
}

#[tokio::test]
async fn a_missing_program_exits_127() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": ["no-such-program"]})).await;
    assert_eq!(r["status"], "exited");
    assert_eq!(r["exit_code"], 127);
    assert!(r["stderr"].as_str().expect("stderr").contains("No such file"));
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    require_root!();
    let server = Server::start().await;
    let started = Instant::now();
    // A child that ignores SIGTERM and a background grandchild.
    let r = server
        .exec(json!({
            "command": "trap '' TERM; (trap '' TERM; sleep 4241) & (sleep 4242 &) ; sleep 4243",
            "timeout_ms": 500
        }))
        .await;
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["signal"], "SIGKILL");
    assert!(started.elapsed() < Duration::from_secs(5));
    for marker in ["sleep 4241", "sleep 4242", "sleep 4243"] {
        assert_eq!(common::host_processes_with(marker), 0, "{marker} survived");
    }
    assert!(server.live_cgroups().is_empty());
}

#[tokio::test]
async fn the_run_ends_with_its_program_and_takes_background_children_along() {
    require_root!();
    let server = Server::start().await;
    let started = Instant::now();
    let r = server.exec(json!({"command": "(sleep 4251 &); sleep 4252 & echo done"})).await;
    assert_eq!(r["stdout"], "done\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(common::host_processes_with("sleep 4251"), 0);
    assert_eq!(common::host_processes_with("sleep 4252"), 0);
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed() {
    require_root!();
    let server = Server::start().await;
    let r = server
        .exec(json!({"code": "x = bytearray(400 * 1024 * 1024); print('survived')", "language": "python", "memory_mb": 64}))
        .await;
    assert_eq!(r["status"], "oom", "{r}");
    assert_eq!(r["stdout"], "");
    let peak = r["usage"]["peak_memory_bytes"].as_u64().expect("peak");
    assert!(peak <= 64 << 20, "peak {peak} above the limit");
}

#[tokio::test]
async fn the_pids_limit_stops_a_fork_bomb() {
    require_root!();
    let server = Server::start().await;
    let r = server
        .exec(json!({"command": "for i in $(seq 50); do sleep 4261 & done; wait", "pids": 10, "timeout_ms": 5000}))
        .await;
    assert!(r["stderr"].as_str().expect("stderr").contains("fork"), "{r}");
    // A real fork bomb: it must end at the deadline and leave the host responsive.
    let r = server
        .exec(json!({"command": "f(){ f | f & }; f; sleep 3", "pids": 64, "timeout_ms": 2000}))
        .await;
    assert!(matches!(r["status"].as_str(), Some("timeout" | "exited")), "{r}");
    let started = Instant::now();
    let r = server.exec(json!({"command": "echo alive"})).await;
    assert_eq!(r["stdout"], "alive\n");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(common::host_processes_with("sleep 4261"), 0);
}

#[tokio::test]
async fn cpu_quota_is_enforced() {
    require_root!();
    let server = Server::start().await;
    // Half a core for ~1 s of wall time: about 0.5 s of CPU, never the full second.
    let r = server
        .exec(json!({
            "code": "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass",
            "language": "python",
            "cpu": 0.5
        }))
        .await;
    let cpu = r["usage"]["cpu_ms"].as_f64().expect("cpu");
    assert!(cpu > 300.0 && cpu < 750.0, "cpu {cpu} ms for 1 s at half a core");
}

#[tokio::test]
async fn an_output_flood_is_capped() {
    require_root!();
    let server = Server::start_with("[limits]\noutput_bytes = 65536\n").await;
    let started = Instant::now();
    let r = server.exec(json!({"command": "yes flood", "timeout_ms": 20000})).await;
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stdout"].as_str().expect("stdout").len(), 65536);
    assert!(started.elapsed() < Duration::from_secs(5), "a flood must not run to its timeout");
    let r = server.exec(json!({"command": "head -c 1000 /dev/zero | tr '\\0' x >&2"})).await;
    assert_eq!(r["stderr_truncated"], false);
    assert_eq!(r["stderr"].as_str().expect("stderr").len(), 1000);
}

#[tokio::test]
async fn file_size_and_scratch_space_are_limited() {
    require_root!();
    let server = Server::start_with("[limits]\nmax_file_mb = 4\nscratch_mb = 16\n").await;
    let r = server.exec(json!({"command": "exec head -c 8M /dev/zero > /tmp/big"})).await;
    assert_eq!(r["signal"], "SIGXFSZ", "{r}");
    // A disk filler hits the end of its own scratch space, nothing else.
    let r = server.exec(json!({"command": "for i in 1 2 3 4 5 6 7 8; do head -c 3M /dev/zero > /home/user/f$i || exit 9; done"})).await;
    assert_eq!(r["exit_code"], 9, "{r}");
    assert!(r["stderr"].as_str().expect("stderr").contains("No space left"));
}

#[tokio::test]
async fn a_thousand_runs_leave_nothing_behind() {
    require_root!();
    let server = Server::start().await;
    let mounts_before =
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().count();
    for i in 0..1000 {
        let r = server.exec(json!({"command": ["true"]})).await;
        assert_eq!(r["exit_code"], 0, "run {i}: {r}");
    }
    let mounts_after =
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().count();
    assert_eq!(mounts_before, mounts_after, "mounts leaked");
    assert!(server.live_cgroups().is_empty(), "cgroups leaked: {:?}", server.live_cgroups());
    let scratch = std::fs::read_dir(server.run_dir.join("scratch")).expect("scratch dir").count();
    assert_eq!(scratch, 0, "files left in the scratch mount point");
    let health = server.get("/health", common::ADMIN_KEY).await;
    assert_eq!(health.body["running_sandboxes"], 0);
}

#[tokio::test]
async fn executions_are_recorded() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": "echo recorded"})).await;
    let id = r["id"].as_str().expect("id");
    let stored = server.get(&format!("/api/v1/executions/{id}"), common::ADMIN_KEY).await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body, r);
}
