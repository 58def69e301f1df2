//! Streaming: output as it is produced, stdin while running, disconnect kills.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Server};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn output_arrives_before_the_program_ends() {
    require_root!();
    let server = Server::start().await;
    for mode in ["ephemeral", "cached"] {
        let mut socket =
            server.websocket("/api/v1/execute/stream", ADMIN_KEY).await.expect("websocket");
        let code = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')";
        let req = json!({"code": code, "language": "python", "mode": mode});
        socket.send(Message::Text(req.to_string().into())).await.expect("send");
        let first = common::next_json(&mut socket).await;
        let first_at = Instant::now();
        assert_eq!(first, json!({"type": "stdout", "data": "first\n"}), "{mode}");
        let mut last = common::next_json(&mut socket).await;
        while last["type"] != "exit" {
            last = common::next_json(&mut socket).await;
        }
        assert!(
            first_at.elapsed() > Duration::from_millis(700),
            "{mode}: the first line came only at the end"
        );
        assert_eq!(last["stdout"], "first\nsecond\n");
        assert_eq!(last["exit_code"], 0);
    }
}

#[tokio::test]
async fn stdin_sent_over_the_socket_reaches_the_program() {
    require_root!();
    let server = Server::start().await;
    for mode in ["ephemeral", "cached"] {
        let mut socket =
            server.websocket("/api/v1/execute/stream", ADMIN_KEY).await.expect("websocket");
        let req = json!({"code": "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)", "language": "python", "mode": mode});
        socket.send(Message::Text(req.to_string().into())).await.expect("send");
        socket
            .send(Message::Text(json!({"type": "stdin", "data": "hello\n"}).to_string().into()))
            .await
            .expect("stdin");
        assert_eq!(
            common::next_json(&mut socket).await,
            json!({"type": "stdout", "data": "HELLO\n"}),
            "{mode}"
        );
        socket
            .send(Message::Text(json!({"type": "stdin", "data": "again\n"}).to_string().into()))
            .await
            .expect("stdin");
        assert_eq!(
            common::next_json(&mut socket).await,
            json!({"type": "stdout", "data": "AGAIN\n"})
        );
        socket
            .send(Message::Text(json!({"type": "close_stdin"}).to_string().into()))
            .await
            .expect("eof");
        let exit = common::next_json(&mut socket).await;
        assert_eq!(exit["type"], "exit", "{exit}");
        assert_eq!(exit["exit_code"], 0);
    }
}

#[tokio::test]
async fn closing_the_socket_kills_the_run() {
    require_root!();
    let server = Server::start().await;
    for (mode, marker) in [("ephemeral", "sleep 4311"), ("cached", "sleep 4312")] {
        let mut socket =
            server.websocket("/api/v1/execute/stream", ADMIN_KEY).await.expect("websocket");
        let req = json!({"command": format!("echo started; {marker}"), "mode": mode});
        socket.send(Message::Text(req.to_string().into())).await.expect("send");
        assert_eq!(common::next_json(&mut socket).await["data"], "started\n");
        assert!(common::host_processes_with(marker) >= 1);
        drop(socket);
        let deadline = Instant::now() + Duration::from_secs(5);
        while common::host_processes_with(marker) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(common::host_processes_with(marker), 0, "{mode}: the run outlived its client");
    }
}

#[tokio::test]
async fn server_sent_events_stream_too() {
    require_root!();
    let server = Server::start().await;
    let mut resp = reqwest::Client::new()
        .post(format!("{}/api/v1/execute/stream", server.url))
        .bearer_auth(ADMIN_KEY)
        .body(json!({"command": "echo one; sleep 1; echo two >&2"}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if first_at.is_none() && text.contains("one") {
            first_at = Some(started.elapsed());
        }
    }
    assert!(first_at.expect("stdout event") < Duration::from_millis(800), "{text}");
    assert!(
        text.contains("event: stdout")
            && text.contains("event: stderr")
            && text.contains("event: exit"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bad_first_message_gets_an_error_event() {
    require_root!();
    let server = Server::start().await;
    let mut socket =
        server.websocket("/api/v1/execute/stream", ADMIN_KEY).await.expect("websocket");
    socket.send(Message::Text("{\"nope\": 1}".into())).await.expect("send");
    let event = common::next_json(&mut socket).await;
    assert_eq!(event["type"], "error");
    assert_eq!(event["error"]["code"], "invalid_request");
}
