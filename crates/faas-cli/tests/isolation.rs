//! What a sandbox must never reach: host processes, files, network, privileges.

mod common;

use std::io::Read;
use std::net::TcpListener;

use common::Server;
use serde_json::json;

#[tokio::test]
async fn sees_no_host_process() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline | head -c 0; echo $$"})).await;
    let lines: Vec<&str> = r["stdout"].as_str().expect("stdout").lines().collect();
    let pids: u32 = lines[0].trim().parse().expect("count");
    // init, sh, ls, grep, wc: nothing else.
    assert!(pids <= 5, "the sandbox sees {pids} processes");
    assert_eq!(lines[1], "2", "the program is the second process of its own pid namespace");
    // Our own (host) pid is not visible inside.
    let mine = std::process::id();
    let r = server.exec(json!({"command": format!("test -e /proc/{mine}/cmdline && echo visible || echo hidden")})).await;
    assert_eq!(r["stdout"], "hidden\n");
}

#[tokio::test]
async fn cannot_write_the_image_or_the_host() {
    require_root!();
    let server = Server::start().await;
    let marker = format!("faas-escape-{}", std::process::id());
    let r = server
        .exec(json!({"command": format!(
            "touch /usr/bin/{marker} 2>/dev/null && echo usr-writable; \
             echo x >> /etc/passwd 2>/dev/null && echo etc-writable; \
             touch /{marker} 2>/dev/null && echo root-writable; \
             echo data > /tmp/{marker} && echo tmp-ok"
        )}))
        .await;
    assert_eq!(r["stdout"], "tmp-ok\n", "{r}");
    assert!(!std::path::Path::new(&format!("/usr/bin/{marker}")).exists());
    assert!(
        !std::path::Path::new(&format!("/tmp/{marker}")).exists(),
        "sandbox /tmp leaked to the host"
    );
    // The image is untouched for the next run.
    let r = server.exec(json!({"command": format!("cat /tmp/{marker} 2>&1; tail -c 2 /etc/passwd | od -c | head -1")})).await;
    assert!(r["stdout"].as_str().expect("stdout").contains("No such file"));
}

#[tokio::test]
async fn sees_no_host_secret_paths() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": "ls /root 2>&1; ls /var/lib 2>&1; cat /etc/shadow 2>&1; ls /sys 2>&1 | head -1"})).await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(out.contains("Permission denied") || out.contains("No such file"), "{out}");
    assert!(!out.contains("faas.db"));
    assert!(out.contains("/etc/shadow: No such file"), "{out}");
}

#[tokio::test]
async fn cannot_mount_or_make_namespaces_or_gain_privileges() {
    require_root!();
    let server = Server::start().await;
    let r = server
        .exec(json!({"command": "mount -t tmpfs none /tmp 2>/dev/null && echo mounted; \
            unshare -r true 2>/dev/null && echo unshared; \
            unshare -n true 2>/dev/null && echo netns; \
            grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; id -u"}))
        .await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(
        !out.contains("mounted") && !out.contains("unshared") && !out.contains("netns"),
        "{out}"
    );
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.trim_end().ends_with("1000"), "{out}");
    let r = server
        .exec(json!({"code": "import os\ntry:\n    os.setuid(0)\n    print('root')\nexcept PermissionError:\n    print('denied')", "language": "python"}))
        .await;
    assert_eq!(r["stdout"], "denied\n");
}

#[tokio::test]
async fn has_no_network_to_the_host() {
    require_root!();
    let server = Server::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let code = format!(
        "import socket\n\
         for host in ['127.0.0.1', '10.0.2.2', '8.8.8.8']:\n\
         \x20   s = socket.socket(); s.settimeout(2)\n\
         \x20   try:\n\
         \x20       s.connect((host, {port})); print(host, 'connected')\n\
         \x20   except OSError as e:\n\
         \x20       print(host, 'blocked', e.errno)\n"
    );
    let r = server.exec(json!({"code": code, "language": "python"})).await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(!out.contains("connected"), "{out}");
    assert_eq!(out.lines().count(), 3, "{r}");
    // Nothing reached the host's listener.
    let mut buf = [0u8; 1];
    let accepted = listener.accept().map(|(mut s, _)| s.read(&mut buf)).is_ok();
    assert!(!accepted, "a connection reached the host's loopback");
}

#[tokio::test]
async fn sandboxes_do_not_share_files_or_ipc() {
    require_root!();
    let server = Server::start().await;
    let r = server.exec(json!({"command": "echo secret > /tmp/shared; echo secret > /home/user/shared; ipcmk -M 4096 >/dev/null; echo ok"})).await;
    assert_eq!(r["stdout"], "ok\n", "{r}");
    let r = server.exec(json!({"command": "cat /tmp/shared /home/user/shared 2>&1; ipcs -m | grep -c '^0x' || true"})).await;
    let out = r["stdout"].as_str().expect("stdout");
    assert!(!out.contains("secret"), "{out}");
    assert!(out.trim_end().ends_with('0'), "{out}");
}
