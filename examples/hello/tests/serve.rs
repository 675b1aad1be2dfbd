//! The hello binary end to end: starts from config, serves through the edge stack, exposes
//! metrics and health, and exits 0 after SIGTERM while a request is in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn starts_serves_and_shuts_down_gracefully() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_arq-example-hello"))
        .env("ARQ__SERVER__ADDR", "127.0.0.1:0")
        .env("ARQ__TELEMETRY__LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest.to_owned();
        }
    };

    let hello = http_get(&addr, "/hello").await;
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert!(hello.to_ascii_lowercase().contains("x-request-id:"));
    assert!(hello.to_ascii_lowercase().contains("ratelimit-remaining:"));
    assert!(hello.ends_with("hello from arq\n"));

    let missing = http_get(&addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"));
    assert!(missing.contains("application/problem+json"));

    let ready = http_get(&addr, "/health/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let live = http_get(&addr, "/health/live").await;
    assert!(live.contains("\"pass\""));

    let metrics = http_get(&addr, "/metrics").await;
    assert!(metrics.contains("http_request_duration_seconds_count{method=\"GET\",route=\"/hello\",status_class=\"2xx\"} 1"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));

    // A request in flight (the server has not seen its end yet) when SIGTERM arrives.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.write_all(b"connection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // And nothing listens any more.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}
