//! The `faas` CLI against a real server.

mod common;

use std::process::Command;

use common::{ADMIN_KEY, Server};

fn faas(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .env("FAAS_URL", &server.url)
        .env("FAAS_API_KEY", ADMIN_KEY)
        .output()
        .expect("run faas")
}

#[tokio::test]
async fn exec_prints_output_and_exits_with_the_programs_code() {
    require_root!();
    let server = Server::start().await;
    let out = faas(
        &server,
        &["exec", "--language", "python", "-c", "import sys; print('hi'); sys.exit(4)"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(out.status.code(), Some(4));
    let out = faas(&server, &["exec", "--", "ls", "-la", "/"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("usr"));
    let out = faas(&server, &["exec", "--timeout-ms", "200", "-c", "sleep 5"]);
    assert_eq!(out.status.code(), Some(124));
    let out = faas(&server, &["exec", "--json", "-c", "echo json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["stdout"], "json\n");
}

#[tokio::test]
async fn keys_are_minted_listed_and_revoked() {
    require_root!();
    let server = Server::start().await;
    let out = faas(&server, &["keys", "create", "--tenant", "dave"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(key.starts_with("faas_"));
    let list = faas(&server, &["keys", "list", "--tenant", "dave"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let id = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a key row")
        .to_owned();
    assert!(faas(&server, &["keys", "revoke", &id]).status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(["exec", "-c", "true"])
        .env("FAAS_URL", &server.url)
        .env("FAAS_API_KEY", &key)
        .output()
        .expect("run faas");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
}

#[test]
fn doctor_reports_this_host() {
    require_root!();
    let out = Command::new(env!("CARGO_BIN_EXE_faas")).arg("doctor").output().expect("run faas");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for check in ["namespaces", "overlayfs", "cgroups", "seccomp", "criu"] {
        assert!(text.lines().any(|l| l.starts_with("ok") && l.contains(check)), "{check}: {text}");
    }
}
