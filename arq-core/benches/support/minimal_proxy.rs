//! The `gateway` benchmark's reference proxy and instruction-count client: a minimal
//! hyper-util proxy and a sequential keep-alive client. A file of its own because arq-auth's
//! `gateway_auth` includes `gateway.rs` and has no direct hyper dependency.
//!
//! Included by path (`#[path = "support/minimal_proxy.rs"] mod minimal_proxy;`).
#![allow(dead_code, reason = "each benchmark mode uses part of it")]

use std::net::SocketAddr;

/// The reference: a minimal proxy over hyper-util's pooled legacy client, forwarding
/// every request to `upstream` as it came (path and query, headers, streamed body) and the
/// response back, with no edge stack, header hygiene, resilience or metrics. It is what the
/// gateway's proxy path is compared with, in wrk runs and in instruction counts.
pub(crate) fn start_minimal_proxy(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
) -> SocketAddr {
    start_minimal_proxy_with(rt, upstream, false)
}

/// [`start_minimal_proxy`], its connections served by hyper-util's `auto` builder (HTTP/1.1 and
/// h2c, upgrades on: what arq's server and `axum::serve` use) instead of hyper's HTTP/1.1 one:
/// what the server's connection type alone costs, per request and per idle connection.
pub(crate) fn start_minimal_proxy_with(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    auto: bool,
) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_minimal_proxy(listener, upstream, auto));
        addr
    })
}

async fn serve_minimal_proxy(listener: tokio::net::TcpListener, upstream: SocketAddr, auto: bool) {
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let client = client.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
                    client.request(req).await
                }
            });
            if auto {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
    }
}

/// `iters` sequential `GET /hello` requests over one keep-alive connection to `addr`, each
/// answer read to its end: the client of the instruction-count mode (cheap and the same for
/// every target, so it cancels out of a difference).
pub(crate) async fn sequential_gets(addr: SocketAddr, iters: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let request = format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..iters {
        stream.write_all(request.as_bytes()).await.unwrap();
        buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "{addr} closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            if response_complete(&buf) {
                break;
            }
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }
}

/// Whether `buf` holds a whole response (`Content-Length` or chunked).
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    match head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(len) => body.len() >= len,
        None => body.ends_with(b"0\r\n\r\n"),
    }
}
