//! Snapshots and branches on CRIU: processes, files and servers continue in restores;
//! branches are independent; snapshots outlive a restart and their parents; tenants are
//! kept apart.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, Server};
use reqwest::Method;
use serde_json::{Value, json};

const CRIU: &str = "/usr/local/sbin/criu";

/// Skips the calling test, with the reason printed, when CRIU (>= 4.2, built by
/// scripts/setup.sh) is missing: the README's test command installs it.
macro_rules! require_criu {
    () => {
        require_root!();
        if !std::path::Path::new(CRIU).exists() {
            eprintln!("SKIPPED: {CRIU} is missing; scripts/setup.sh builds it");
            return;
        }
    };
}

async fn create(server: &Server, key: &str) -> String {
    let r = server.post("/api/v1/instances", key, json!({"disk_mb": 64})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

async fn exec(server: &Server, id: &str, command: &str) -> Value {
    let r = server
        .post(&format!("/api/v1/instances/{id}/exec"), ADMIN_KEY, json!({"command": command}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn background(server: &Server, id: &str, command: &str) {
    let body = json!({"command": command, "background": true});
    let r = server.post(&format!("/api/v1/instances/{id}/exec"), ADMIN_KEY, body).await;
    assert_eq!(r.status, 202, "{}", r.body);
}

async fn snapshot(server: &Server, key: &str, id: &str) -> Value {
    let r = server.post("/api/v1/snapshots", key, json!({"instance_id": id})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn restore(server: &Server, key: &str, snapshot: &str) -> String {
    let r = server.post(&format!("/api/v1/snapshots/{snapshot}/restore"), key, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["snapshot_id"], snapshot);
    r.body["id"].as_str().expect("id").to_owned()
}

async fn count(server: &Server, id: &str) -> u64 {
    let out = exec(server, id, "cat /tmp/count").await;
    out["stdout"].as_str().unwrap_or("").trim().parse().unwrap_or(0)
}

/// A shell counting in its own memory, writing the value to /tmp (a tmpfs CRIU carries).
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; \
                       mv /tmp/count.new /tmp/count; sleep 0.05; done";

#[tokio::test]
async fn a_restore_continues_processes_files_and_servers() {
    require_criu!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    background(&server, &id, COUNTER).await;
    background(&server, &id, "exec /usr/bin/python3 -m http.server 8080 --directory /home/user")
        .await;
    exec(&server, &id, "echo kept > /home/user/f && echo shm > /dev/shm/s && echo tmp > /tmp/t")
        .await;
    let ready = exec(
        &server,
        &id,
        "for i in $(seq 100); do /usr/bin/python3 -c \"import urllib.request as u; \
         u.urlopen('http://127.0.0.1:8080/f')\" 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
    )
    .await;
    assert_eq!(ready["exit_code"], 0, "the server inside did not come up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = count(&server, &id).await;
    assert!(before > 3, "the counter runs ({before})");

    let snap = snapshot(&server, ADMIN_KEY, &id).await;
    assert_eq!(snap["kind"], "memory");
    assert_eq!(snap["instance_id"], id.as_str());
    assert!(snap["size_bytes"].as_u64().unwrap_or(0) > 0);
    let listed = server.get("/api/v1/snapshots", ADMIN_KEY).await;
    assert_eq!(listed.body["snapshots"][0]["id"], snap["id"]);
    let snap_id = snap["id"].as_str().expect("id");
    // The original keeps running.
    assert!(count(&server, &id).await >= before);

    let copy = restore(&server, ADMIN_KEY, snap_id).await;
    let first = count(&server, &copy).await;
    assert!(first >= before, "the count continues from the checkpoint ({first} < {before})");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = count(&server, &copy).await;
    assert!(later > first, "the counter runs on in the copy ({later} <= {first})");
    assert_eq!(exec(&server, &copy, "cat /home/user/f").await["stdout"], "kept\n");
    // /dev is made anew, /tmp and /dev/shm come with the disk.
    let out = exec(&server, &copy, "cat /dev/shm/s /tmp/t && echo x > /dev/null && ls /dev").await;
    assert_eq!(
        out["stdout"],
        "shm\ntmp\nfd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n",
        "{out}"
    );
    // The server inside serves in the copy, through the port proxy.
    let r = server
        .request(
            Method::GET,
            &format!("/api/v1/instances/{copy}/ports/8080/f"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, Value::String("kept\n".into()));
    // Copy and original are independent from here on.
    exec(&server, &copy, "echo copy > /home/user/f").await;
    assert_eq!(exec(&server, &id, "cat /home/user/f").await["stdout"], "kept\n");
    // The copy's own processes list is fresh; new execs work as usual.
    assert_eq!(exec(&server, &copy, "echo $((40 + 2))").await["stdout"], "42\n");
}

#[tokio::test]
async fn eight_branches_each_see_only_their_own_writes() {
    require_criu!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    background(&server, &id, COUNTER).await;
    exec(&server, &id, "echo base > /home/user/base").await;
    let r =
        server.post("/api/v1/branches", ADMIN_KEY, json!({"instance_id": id, "count": 8})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let branches: Vec<String> = r.body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(branches.len(), 8);
    let snap_id = r.body["snapshot_id"].as_str().expect("snapshot").to_owned();
    for (n, branch) in branches.iter().enumerate() {
        exec(&server, branch, &format!("echo {n} > /home/user/mine-{n}")).await;
    }
    for (n, branch) in branches.iter().enumerate() {
        let out = exec(&server, branch, "cd /home/user && ls | tr '\\n' ' '").await;
        assert_eq!(out["stdout"], format!("base mine-{n} "), "branch {n}");
        assert!(count(&server, branch).await > 0, "branch {n} has the counter");
    }
    // More branches from the same snapshot, later.
    let r = server
        .post("/api/v1/branches", ADMIN_KEY, json!({"snapshot_id": snap_id, "count": 2}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let again = r.body["instances"][0]["id"].as_str().expect("id");
    assert_eq!(exec(&server, again, "ls /home/user").await["stdout"], "base\n");
}

#[tokio::test]
async fn snapshots_survive_a_restart_and_their_parents() {
    require_criu!();
    let mut server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    background(&server, &id, COUNTER).await;
    exec(&server, &id, "echo one > /home/user/f").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parent = snapshot(&server, ADMIN_KEY, &id).await;
    let parent_id = parent["id"].as_str().expect("id").to_owned();
    let child_source = restore(&server, ADMIN_KEY, &parent_id).await;
    exec(&server, &child_source, "echo two >> /home/user/f").await;
    let child = snapshot(&server, ADMIN_KEY, &child_source).await;
    assert_eq!(child["parent_id"], parent_id.as_str());
    let child_id = child["id"].as_str().expect("id").to_owned();

    // The lineage: parent -> the instance restored from it -> child.
    let tree = server.get(&format!("/api/v1/snapshots/{parent_id}/tree"), ADMIN_KEY).await;
    assert_eq!(tree.status, 200, "{}", tree.body);
    assert_eq!(tree.body["instances"][0]["id"], child_source.as_str(), "{}", tree.body);
    assert_eq!(tree.body["children"][0]["snapshot"]["id"], child_id.as_str(), "{}", tree.body);

    server.crash_and_restart().await;
    let after = restore(&server, ADMIN_KEY, &parent_id).await;
    assert_eq!(exec(&server, &after, "cat /home/user/f").await["stdout"], "one\n");
    assert!(count(&server, &after).await > 0, "processes restored after a restart");

    // Deleting the parent leaves the child whole.
    let deleted = server
        .request(Method::DELETE, &format!("/api/v1/snapshots/{parent_id}"), Some(ADMIN_KEY), None)
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(server.get(&format!("/api/v1/snapshots/{parent_id}"), ADMIN_KEY).await.status, 404);
    let grandchild = restore(&server, ADMIN_KEY, &child_id).await;
    let tree = server.get(&format!("/api/v1/snapshots/{child_id}/tree"), ADMIN_KEY).await;
    assert_eq!(tree.body["snapshot"]["parent_id"], parent_id.as_str());
    assert_eq!(tree.body["instances"][0]["id"], grandchild.as_str(), "{}", tree.body);
    assert_eq!(exec(&server, &grandchild, "cat /home/user/f").await["stdout"], "one\ntwo\n");
    // The instance restored from the deleted parent runs on.
    assert_eq!(exec(&server, &after, "cat /home/user/f").await["stdout"], "one\n");
}

#[tokio::test]
async fn a_stopped_instance_gives_a_filesystem_snapshot() {
    require_criu!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    exec(&server, &id, "echo files > /home/user/f").await;
    let stopped = server.post(&format!("/api/v1/instances/{id}/stop"), ADMIN_KEY, json!({})).await;
    assert_eq!(stopped.body["status"], "stopped");
    let snap = snapshot(&server, ADMIN_KEY, &id).await;
    assert_eq!(snap["kind"], "filesystem");
    let copy = restore(&server, ADMIN_KEY, snap["id"].as_str().expect("id")).await;
    assert_eq!(exec(&server, &copy, "cat /home/user/f").await["stdout"], "files\n");
}

#[tokio::test]
async fn tenants_never_reach_each_others_snapshots() {
    require_criu!();
    let server = Server::start().await;
    let alice = server.tenant_key("alice").await;
    let bob = server.tenant_key("bob").await;
    let id = create(&server, &alice).await;
    let snap = snapshot(&server, &alice, &id).await;
    let snap_id = snap["id"].as_str().expect("id");
    // Bob can neither capture Alice's instance nor see, restore, branch or delete hers.
    let r = server.post("/api/v1/snapshots", &bob, json!({"instance_id": id})).await;
    assert_eq!(r.status, 404);
    assert_eq!(server.get(&format!("/api/v1/snapshots/{snap_id}"), &bob).await.status, 404);
    let r = server.post(&format!("/api/v1/snapshots/{snap_id}/restore"), &bob, json!({})).await;
    assert_eq!(r.status, 404);
    let r =
        server.post("/api/v1/branches", &bob, json!({"snapshot_id": snap_id, "count": 2})).await;
    assert_eq!(r.status, 404);
    let r = server
        .request(Method::DELETE, &format!("/api/v1/snapshots/{snap_id}"), Some(&bob), None)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(server.get("/api/v1/snapshots", &bob).await.body["snapshots"], json!([]));
    // Alice still can.
    restore(&server, &alice, snap_id).await;
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    require_criu!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    let cases = [
        ("/api/v1/snapshots", json!({"instance_id": "in_nope"}), 404),
        ("/api/v1/snapshots", json!({"instance_id": id, "extra": 1}), 422),
        ("/api/v1/snapshots", json!({"instance_id": id, "name": ""}), 422),
        ("/api/v1/snapshots/sn_nope/restore", json!({}), 404),
        ("/api/v1/branches", json!({"instance_id": id, "count": 0}), 422),
        ("/api/v1/branches", json!({"instance_id": id, "count": 1000}), 422),
        ("/api/v1/branches", json!({"instance_id": id, "snapshot_id": "sn_x"}), 422),
        ("/api/v1/branches", json!({"count": 2}), 422),
    ];
    for (path, body, status) in cases {
        let r = server.post(path, ADMIN_KEY, body.clone()).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    }
    assert_eq!(server.get("/api/v1/snapshots", ADMIN_KEY).await.body["snapshots"], json!([]));
    let instances = server.get("/api/v1/instances", ADMIN_KEY).await;
    assert_eq!(instances.body["instances"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn without_criu_memory_snapshots_answer_501_and_files_still_work() {
    require_root!();
    let server = Server::start_with("[snapshots]\ncriu_path = \"/nonexistent/criu\"\n").await;
    let id = create(&server, ADMIN_KEY).await;
    let r = server.post("/api/v1/snapshots", ADMIN_KEY, json!({"instance_id": id})).await;
    assert_eq!(r.status, 501, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap_or("").contains("/nonexistent/criu"));
    server.post(&format!("/api/v1/instances/{id}/stop"), ADMIN_KEY, json!({})).await;
    assert_eq!(snapshot(&server, ADMIN_KEY, &id).await["kind"], "filesystem");
    let body = json!({"mode": "checkpointed", "checkpoint_after": true, "command": "true"});
    let r = server.post("/api/v1/execute", ADMIN_KEY, body).await;
    assert_eq!(r.status, 501, "{}", r.body);
}

async fn execute(server: &Server, body: Value) -> Value {
    let r = server.post("/api/v1/execute", ADMIN_KEY, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["exit_code"], 0, "{}", r.body);
    r.body
}

#[tokio::test]
async fn checkpointed_and_branched_runs_start_from_a_saved_state() {
    require_criu!();
    let server = Server::start().await;
    let load = "data = list(range(100000))\nx = 41\nopen('/home/user/f', 'w').write('base')\nprint('loaded')";
    let body = json!({"mode": "checkpointed", "checkpoint_after": true, "language": "python", "code": load});
    let first = execute(&server, body).await;
    assert_eq!(first["stdout"], "loaded\n");
    assert_eq!(first["mode"], "checkpointed");
    let saved = first["snapshot_id"].as_str().expect("snapshot_id").to_owned();
    let kept = server
        .get(&format!("/api/v1/executions/{}", first["id"].as_str().unwrap_or("")), ADMIN_KEY)
        .await;
    assert_eq!(kept.body["snapshot_id"], saved.as_str());
    // Each run from the snapshot starts from the same state: its changes are its own.
    let step = "x += 1\nprint(x, len(data), open('/home/user/f').read())";
    for _ in 0..2 {
        let body = json!({"mode": "checkpointed", "snapshot_id": saved, "language": "python", "code": step});
        let out = execute(&server, body).await;
        assert_eq!(out["stdout"], "42 100000 base\n");
        assert!(out.get("snapshot_id").is_none(), "{out}");
    }
    // A checkpoint of a restored run chains.
    let body = json!({"mode": "checkpointed", "snapshot_id": saved, "checkpoint_after": true, "language": "python", "code": step});
    let next = execute(&server, body).await["snapshot_id"].as_str().expect("id").to_owned();
    let body =
        json!({"mode": "checkpointed", "snapshot_id": next, "language": "python", "code": step});
    assert_eq!(execute(&server, body).await["stdout"], "43 100000 base\n");
    let parent = server.get(&format!("/api/v1/snapshots/{next}"), ADMIN_KEY).await;
    assert_eq!(parent.body["parent_id"], saved.as_str());
    // Branches run at once, each in its own copy.
    let write = "import os\nopen('/home/user/f', 'a').write(str(os.getpid()))\nx += 1\nprint(x, len(open('/home/user/f').read()) > 4)";
    let body = json!({"mode": "branched", "parent_snapshot": saved, "count": 3, "language": "python", "code": write});
    let out = execute(&server, body).await;
    assert_eq!(out["mode"], "branched");
    let branches = out["branches"].as_array().expect("branches");
    assert_eq!(branches.len(), 3);
    for b in branches {
        assert_eq!(b["stdout"], "42 True\n", "{b}");
    }
    assert_eq!(branches[0]["id"], out["id"]);
    let ids: std::collections::HashSet<&str> =
        branches.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids.len(), 3);
    // A command runs too (no context), from the snapshot's files.
    let body = json!({"mode": "branched", "parent_snapshot": saved, "command": "cat /home/user/f"});
    assert_eq!(execute(&server, body).await["stdout"], "base");
    // The runs' own instances are gone.
    let list = server.get("/api/v1/instances", ADMIN_KEY).await;
    assert_eq!(list.body["instances"], json!([]), "{}", list.body);
}

#[tokio::test]
async fn stateful_runs_refuse_bad_requests_before_starting_anything() {
    require_criu!();
    let server = Server::start().await;
    let body = json!({"mode": "checkpointed", "checkpoint_after": true, "command": "echo hi > /home/user/f"});
    let saved = execute(&server, body).await["snapshot_id"].as_str().expect("id").to_owned();
    let snapshots = server.get("/api/v1/snapshots", ADMIN_KEY).await.body["snapshots"].clone();
    for (case, status) in [
        (json!({"mode": "checkpointed", "command": "true"}), 422),
        (json!({"mode": "branched", "command": "true"}), 422),
        (json!({"mode": "branched", "parent_snapshot": saved, "count": 0, "command": "true"}), 422),
        (
            json!({"mode": "branched", "parent_snapshot": saved, "count": 99, "command": "true"}),
            422,
        ),
        (
            json!({"mode": "branched", "parent_snapshot": saved, "checkpoint_after": true, "command": "true"}),
            422,
        ),
        (
            json!({"mode": "checkpointed", "snapshot_id": saved, "memory_mb": 64, "command": "true"}),
            422,
        ),
        (
            json!({"mode": "checkpointed", "checkpoint_after": true, "context_id": "ctx_x", "code": "1"}),
            422,
        ),
        (json!({"mode": "checkpointed", "snapshot_id": saved}), 422),
        (json!({"mode": "ephemeral", "checkpoint_after": true, "command": "true"}), 422),
        (json!({"mode": "cached", "parent_snapshot": saved, "command": "true"}), 422),
        (json!({"mode": "persistent", "command": "true"}), 422),
        (json!({"mode": "branched", "parent_snapshot": "sn_missing", "command": "true"}), 404),
        (json!({"mode": "checkpointed", "snapshot_id": "sn_missing", "command": "true"}), 404),
    ] {
        let r = server.post("/api/v1/execute", ADMIN_KEY, case.clone()).await;
        assert_eq!(r.status, status, "{case}: {}", r.body);
    }
    let list = server.get("/api/v1/instances", ADMIN_KEY).await;
    assert_eq!(list.body["instances"], json!([]), "{}", list.body);
    assert_eq!(server.get("/api/v1/snapshots", ADMIN_KEY).await.body["snapshots"], snapshots);
    // Another tenant cannot start from the snapshot.
    let other = server.tenant_key("tenant-b").await;
    let body = json!({"mode": "branched", "parent_snapshot": saved, "command": "true"});
    assert_eq!(server.post("/api/v1/execute", &other, body).await.status, 404);
}

async fn python_context(server: &Server, id: &str) -> String {
    let r = server
        .post(&format!("/api/v1/instances/{id}/contexts"), ADMIN_KEY, json!({"language": "python"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

async fn run_in_context(server: &Server, id: &str, context: &str, code: &str) -> Value {
    let body = json!({"code": code, "context_id": context, "timeout_ms": 60_000});
    let r = server.post(&format!("/api/v1/instances/{id}/exec"), ADMIN_KEY, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["exit_code"], 0, "{}", r.body);
    r.body
}

#[tokio::test]
async fn a_python_context_keeps_its_globals_and_id_in_restores_and_branches() {
    require_criu!();
    let server = Server::start().await;
    let id = create(&server, ADMIN_KEY).await;
    let context = python_context(&server, &id).await;
    // 50 MiB of list (6.5 million pointers to small ints) and x.
    let n = 50 * 1024 * 1024 / 8;
    run_in_context(
        &server,
        &id,
        &context,
        &format!("x = 41\ndata = [i % 251 for i in range({n})]"),
    )
    .await;
    let expected_sum: u64 = (0..n as u64).map(|i| i % 251).sum();

    let snap = snapshot(&server, ADMIN_KEY, &id).await;
    let snap_id = snap["id"].as_str().expect("id");
    let copy = restore(&server, ADMIN_KEY, snap_id).await;
    let listed = server.get(&format!("/api/v1/instances/{copy}/contexts"), ADMIN_KEY).await;
    assert_eq!(listed.body["contexts"][0]["id"], context.as_str(), "{}", listed.body);
    let out = run_in_context(&server, &copy, &context, "print(x + 1, len(data), sum(data))").await;
    assert_eq!(out["stdout"], format!("42 {n} {expected_sum}\n"));

    // Branches carry the context under the same id, each with globals of its own.
    let r = server
        .post("/api/v1/branches", ADMIN_KEY, json!({"snapshot_id": snap_id, "count": 2}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    for (k, branch) in r.body["instances"].as_array().expect("instances").iter().enumerate() {
        let branch = branch["id"].as_str().expect("id");
        let out = run_in_context(&server, branch, &context, &format!("x += {k}\nprint(x)")).await;
        assert_eq!(out["stdout"], format!("{}\n", 41 + k));
    }
    // The original is untouched by all of them.
    let out = run_in_context(&server, &id, &context, "print(x)").await;
    assert_eq!(out["stdout"], "41\n");
    let r = server
        .request(
            Method::DELETE,
            &format!("/api/v1/instances/{id}/contexts/{context}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let body = json!({"code": "print(x)", "context_id": context});
    let r = server.post(&format!("/api/v1/instances/{id}/exec"), ADMIN_KEY, body).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// A snapshot of an instance holding two files, and two branches of it.
async fn two_branches(server: &Server) -> (String, String, String) {
    let id = create(server, ADMIN_KEY).await;
    exec(
        server,
        &id,
        "cd /home/user && echo base > shared && echo old > gone && mkdir dir && touch dir/f",
    )
    .await;
    let base = snapshot(server, ADMIN_KEY, &id).await["id"].as_str().expect("id").to_owned();
    let r =
        server.post("/api/v1/branches", ADMIN_KEY, json!({"snapshot_id": base, "count": 2})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ids: Vec<String> = r.body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    (base, ids[0].clone(), ids[1].clone())
}

#[tokio::test]
async fn a_merge_of_two_branches_holds_both_changes() {
    require_criu!();
    let server = Server::start().await;
    let (base, a, b) = two_branches(&server).await;
    exec(
        &server,
        &a,
        "cd /home/user && echo from-a > a && rm gone && echo same > both && rm -r dir",
    )
    .await;
    exec(
        &server,
        &b,
        "cd /home/user && echo from-b > b && echo changed > shared && echo same > both",
    )
    .await;
    // One branch is stopped, the other runs: both kinds are read.
    server.post(&format!("/api/v1/instances/{b}/stop"), ADMIN_KEY, json!({})).await;
    let body = json!({"base_snapshot_id": base, "instance_ids": [a, b], "name": "merged"});
    let r = server.post("/api/v1/branches/merge", ADMIN_KEY, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["snapshot"]["kind"], "filesystem");
    assert_eq!(r.body["snapshot"]["parent_id"], base.as_str());
    let changes = r.body["changes"].as_array().expect("changes");
    let find = |path: &str| changes.iter().find(|c| c["path"] == path).cloned();
    assert_eq!(find("/home/user/a").expect("a")["change"], "added");
    assert_eq!(find("/home/user/a").expect("a")["instance_id"], a.as_str());
    assert_eq!(find("/home/user/gone").expect("gone")["change"], "removed");
    assert_eq!(find("/home/user/shared").expect("shared")["change"], "modified");
    // A removed directory is one change, whatever it held.
    assert_eq!(find("/home/user/dir").expect("dir")["change"], "removed");
    assert!(find("/home/user/dir/f").is_none(), "{changes:?}");
    let merged = r.body["snapshot"]["id"].as_str().expect("id");
    let copy = restore(&server, ADMIN_KEY, merged).await;
    let out =
        exec(&server, &copy, "cd /home/user && ls | tr '\\n' ' ' && cat a b shared both").await;
    assert_eq!(out["stdout"], "a b both shared from-a\nfrom-b\nchanged\nsame\n");
}

#[tokio::test]
async fn a_conflicting_merge_names_the_path_and_writes_nothing() {
    require_criu!();
    let server = Server::start().await;
    let (base, a, b) = two_branches(&server).await;
    exec(&server, &a, "echo mine > /home/user/shared").await;
    exec(&server, &b, "echo yours > /home/user/shared").await;
    let before = server.get("/api/v1/snapshots", ADMIN_KEY).await.body["snapshots"].clone();
    let body = json!({"base_snapshot_id": base, "instance_ids": [a, b]});
    let r = server.post("/api/v1/branches/merge", ADMIN_KEY, body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("/home/user/shared"), "{message}");
    assert_eq!(server.get("/api/v1/snapshots", ADMIN_KEY).await.body["snapshots"], before);
    // A directory removed in one and written into in the other conflicts too.
    let (c, d) =
        (restore(&server, ADMIN_KEY, &base).await, restore(&server, ADMIN_KEY, &base).await);
    exec(&server, &c, "rm -r /home/user/dir").await;
    exec(&server, &d, "echo new > /home/user/dir/new").await;
    let body = json!({"base_snapshot_id": base, "instance_ids": [c, d]});
    let r = server.post("/api/v1/branches/merge", ADMIN_KEY, body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("/home/user/dir"), "{message}");
    let body = json!({"base_snapshot_id": base, "instance_ids": [a, c, a]});
    let r = server.post("/api/v1/branches/merge", ADMIN_KEY, body).await;
    assert_eq!(r.status, 422, "an instance twice: {}", r.body);
}

/// Waits for the packer to store the snapshot in the blob store; its stored bytes.
async fn packed(server: &Server, id: &str) -> u64 {
    for _ in 0..300 {
        let r = server.get(&format!("/api/v1/snapshots/{id}"), ADMIN_KEY).await;
        if let Some(bytes) = r.body["stored_bytes"].as_u64() {
            return bytes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("snapshot {id} was not packed in 30 s");
}

fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn snapshots_live_in_the_blob_store_deduplicated_and_outlive_their_parents() {
    require_criu!();
    // No hot cache: every restore unpacks from the blob store.
    let mut server = Server::start_with("[snapshots]\nhot_cache_mb = 0\n").await;
    let id = create(&server, ADMIN_KEY).await;
    let context = python_context(&server, &id).await;
    run_in_context(&server, &id, &context, "data = bytes(range(256)) * 40000\nx = 41").await;
    exec(&server, &id, "head -c 3000000 /dev/urandom > /home/user/noise").await;
    let parent = snapshot(&server, ADMIN_KEY, &id).await["id"].as_str().expect("id").to_owned();
    let parent_bytes = packed(&server, &parent).await;
    assert!(parent_bytes > 3_000_000, "the noise alone is 3 MB: {parent_bytes}");
    let evicted = server.data_dir.join("snapshots").join(&parent);
    for _ in 0..100 {
        if !evicted.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!evicted.exists(), "a packed snapshot leaves the hot cache of 0 MB");

    // A child of a restore shares most chunks: it stores far less than its parent.
    let copy = restore(&server, ADMIN_KEY, &parent).await;
    let out = run_in_context(&server, &copy, &context, "x += 1\nprint(x, len(data))").await;
    assert_eq!(out["stdout"], "42 10240000\n");
    let child = snapshot(&server, ADMIN_KEY, &copy).await["id"].as_str().expect("id").to_owned();
    let child_bytes = packed(&server, &child).await;
    assert!(child_bytes * 4 < parent_bytes, "child {child_bytes} vs parent {parent_bytes}");

    // Deleting the parent keeps the chunks the child holds; a restart loses nothing.
    let r = server
        .request(Method::DELETE, &format!("/api/v1/snapshots/{parent}"), Some(ADMIN_KEY), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    server.crash_and_restart().await;
    let again = restore(&server, ADMIN_KEY, &child).await;
    let out = run_in_context(&server, &again, &context, "x += 1\nprint(x, len(data))").await;
    assert_eq!(out["stdout"], "43 10240000\n");
    let noise = exec(&server, &again, "wc -c < /home/user/noise").await;
    assert_eq!(noise["stdout"], "3000000\n");

    // With every snapshot gone, so is every chunk.
    let r = server
        .request(Method::DELETE, &format!("/api/v1/snapshots/{child}"), Some(ADMIN_KEY), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let blobs = server.data_dir.join("blobs");
    for _ in 0..100 {
        if files_under(&blobs) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(files_under(&blobs), 0);
}

#[tokio::test]
async fn with_ksm_configured_restored_memory_is_mergeable() {
    require_criu!();
    let server = Server::start_with("[snapshots]\nksm = true\n").await;
    let id = create(&server, ADMIN_KEY).await;
    background(&server, &id, "exec sleep 600").await;
    let snap = snapshot(&server, ADMIN_KEY, &id).await["id"].as_str().expect("id").to_owned();
    // The original was not restored: its processes' memory is not marked.
    let check = "grep -h merge_any /proc/self/ksm_stat /proc/$(pgrep -x sleep)/ksm_stat";
    let stat = exec(&server, &id, check).await;
    assert_eq!(stat["stdout"], "ksm_merge_any: no\nksm_merge_any: no\n", "{stat}");
    // Restored processes (the sleep; the agent, whose children inherit it) are.
    let copy = restore(&server, ADMIN_KEY, &snap).await;
    let stat = exec(&server, &copy, check).await;
    assert_eq!(stat["stdout"], "ksm_merge_any: yes\nksm_merge_any: yes\n", "{stat}");
}

#[tokio::test]
async fn lazy_restores_serve_memory_on_demand_and_checkpoint_again() {
    require_criu!();
    // Every restore lazy: pages arrive as they are touched, the rest in the background.
    let server = Server::start_with("[snapshots]\nlazy_restore_min_mb = 0\n").await;
    let id = create(&server, ADMIN_KEY).await;
    let context = python_context(&server, &id).await;
    let load = "import random\ndata = random.Random(1).randbytes(48 << 20)\nx = 41";
    run_in_context(&server, &id, &context, load).await;
    let check = "x += 1\nimport hashlib\nprint(x, hashlib.sha256(data).hexdigest()[:12])";
    let expected = run_in_context(
        &server,
        &id,
        &context,
        "import hashlib\nprint(hashlib.sha256(data).hexdigest()[:12])",
    )
    .await;
    let digest = expected["stdout"].as_str().expect("stdout").trim().to_owned();
    // A shell loop: it vforks all the time, slowly in a lazy copy (page faults), and a
    // checkpoint must never catch it inside vfork.
    background(&server, &id, COUNTER).await;
    let first = snapshot(&server, ADMIN_KEY, &id).await["id"].as_str().expect("id").to_owned();
    let copy = restore(&server, ADMIN_KEY, &first).await;
    let out = run_in_context(&server, &copy, &context, check).await;
    assert_eq!(out["stdout"], format!("42 {digest}\n"));
    // A checkpoint right away waits for every page to be in place, and is whole.
    let second = snapshot(&server, ADMIN_KEY, &copy).await["id"].as_str().expect("id").to_owned();
    let again = restore(&server, ADMIN_KEY, &second).await;
    let out = run_in_context(&server, &again, &context, check).await;
    assert_eq!(out["stdout"], format!("43 {digest}\n"));
    let counted = count(&server, &again).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(count(&server, &again).await > counted, "the counter runs on in the copy");
}

/// Node runs several threads: a restore must leave them in their process's cgroups (CRIU
/// moved them to the dumped per-thread sets, which do not exist in the new sandbox, until
/// faas's patch 0004).
#[tokio::test]
async fn a_multithreaded_javascript_context_is_restored_and_branched() {
    require_criu!();
    let server = Server::start().await;
    let first = server
        .exec(json!({"language": "javascript", "mode": "checkpointed", "checkpoint_after": true,
                     "code": "let greeting = 'Hello'; console.log('ready')"}))
        .await;
    assert_eq!(first["stdout"], "ready\n", "{first}");
    let snapshot = first["snapshot_id"].as_str().expect("snapshot_id").to_owned();
    let again = server
        .exec(json!({"language": "javascript", "mode": "checkpointed", "snapshot_id": snapshot,
                     "code": "console.log(greeting + ' again')"}))
        .await;
    assert_eq!(again["stdout"], "Hello again\n", "{again}");
    let branched = server
        .exec(json!({"language": "javascript", "mode": "branched", "parent_snapshot": snapshot,
                     "count": 2, "code": "console.log(greeting + ' from a branch')"}))
        .await;
    let branches = branched["branches"].as_array().expect("branches");
    assert_eq!(branches.len(), 2);
    for b in branches {
        assert_eq!(b["stdout"], "Hello from a branch\n", "{b}");
    }
}
