//! The server over real sockets: graceful shutdown with requests in flight, HTTP/2 cleartext,
//! TLS with ALPN, mutual TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader, TlsConfig};
use arq_core::edge::EdgeStack;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{PeerCertificates, Server, ShutdownOutcome, with_operational_routes};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use http::{StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

fn config(vars: &[(&str, &str)]) -> ArqConfig {
    let mut all = vec![("ARQ__SERVER__ADDR", "127.0.0.1:0")];
    all.extend_from_slice(vars);
    ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("test")
            .vars(all),
    )
    .unwrap()
    .0
}

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .route(
            "/stuck",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "never"
            }),
        )
        .route(
            "/peer",
            get(|req: Request| async move {
                req.extensions()
                    .get::<PeerCertificates>()
                    .map_or(0, |c| c.0.len())
                    .to_string()
            }),
        )
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<ShutdownOutcome>,
}

async fn start(config: &ArqConfig) -> Running {
    let registry = MetricsRegistry::new();
    let health = Health::new(Duration::from_secs(1));
    let stack = EdgeStack::from_config(config, &registry).unwrap();
    let svc = stack.wrap(with_operational_routes(app(), &health, &registry));
    let server = Server::bind(&config.server, health).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(server.serve(svc, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        done,
    }
}

fn http1() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get_status(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    url: String,
) -> Result<(StatusCode, String), String> {
    let r = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests_and_fails_readiness_first() {
    let cfg = config(&[
        ("ARQ__SERVER__READINESS_DELAY", "300ms"),
        ("ARQ__SERVER__SHUTDOWN_TIMEOUT", "5s"),
    ]);
    let mut s = start(&cfg).await;
    let client = http1();
    let base = format!("http://{}", s.addr);
    assert_eq!(
        get_status(&client, format!("{base}/health/ready"))
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );

    // Five requests in flight on their own connections.
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let url = format!("{base}/slow");
            tokio::spawn(async move { get_status(&http1(), url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // During the readiness delay: still serving, but readiness fails.
    let (status, body) = get_status(&http1(), format!("{base}/health/ready"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"shutting_down\":true"), "{body}");

    for r in in_flight {
        let (status, body) = r.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
    }
    assert_eq!(s.done.await.unwrap(), ShutdownOutcome::Drained);
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_deadline_aborts_what_is_left() {
    let cfg = config(&[("ARQ__SERVER__SHUTDOWN_TIMEOUT", "200ms")]);
    let mut s = start(&cfg).await;
    let url = format!("http://{}/stuck", s.addr);
    let stuck = tokio::spawn(async move { get_status(&http1(), url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), s.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::DeadlineExpired { aborted: 1 });
    assert!(stuck.await.unwrap().is_err(), "the aborted request fails");
}

#[tokio::test]
async fn http2_cleartext_prior_knowledge() {
    let s = start(&config(&[])).await;
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let r = client
        .get(format!("http://{}/hello", s.addr).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"));

    // HTTP/1.1 on the same port.
    let (status, body) = get_status(&http1(), format!("http://{}/hello", s.addr))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
}

struct Pki {
    dir: std::path::PathBuf,
    ca_pem: String,
    client_cert: rustls_pki_types::CertificateDer<'static>,
    client_key: rustls_pki_types::PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("arq-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["orders-service".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
        client_cert: client.der().clone(),
        client_key: rustls_pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
    }
}

fn tls_client(pki: &Pki, with_cert: bool, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = if with_cert {
        b.with_client_auth_cert(vec![pki.client_cert.clone()], pki.client_key.clone_key())
            .unwrap()
    } else {
        b.with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_get(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    path: &str,
) -> Result<(Version, StatusCode, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(Body::empty())
        .unwrap();
    let response = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let version = response.version();
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((version, status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn tls_serves_http1_and_http2_by_alpn() {
    let pki = pki();
    let mut cfg = config(&[]);
    cfg.server.tls = Some(TlsConfig::new(
        pki.dir.join("server.pem"),
        pki.dir.join("server.key"),
    ));
    let s = start(&cfg).await;
    let (v, status, body) = tls_get(s.addr, &tls_client(&pki, false, &[b"h2"]), "/hello")
        .await
        .unwrap();
    assert_eq!(
        (v, status, body.as_str()),
        (Version::HTTP_2, StatusCode::OK, "hello")
    );
    let (v, status, _) = tls_get(s.addr, &tls_client(&pki, false, &[b"http/1.1"]), "/hello")
        .await
        .unwrap();
    assert_eq!((v, status), (Version::HTTP_11, StatusCode::OK));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// With `server.http2 = false`, TLS connections are HTTP/1.1 only, like cleartext ones: an
/// HTTP/2 client that skips ALPN and sends the preface anyway is not served.
#[tokio::test]
async fn with_http2_off_tls_serves_http1_only() {
    let pki = pki();
    let mut cfg = config(&[("ARQ__SERVER__HTTP2", "false")]);
    cfg.server.tls = Some(TlsConfig::new(
        pki.dir.join("server.pem"),
        pki.dir.join("server.key"),
    ));
    let s = start(&cfg).await;
    let connector = tls_client(&pki, false, &[b"http/1.1"]);
    let (v, status, body) = tls_get(s.addr, &connector, "/hello").await.unwrap();
    assert_eq!(
        (v, status, body.as_str()),
        (Version::HTTP_11, StatusCode::OK, "hello")
    );

    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("https://localhost/hello")
            .body(Body::empty())
            .unwrap();
        send.send_request(req)
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    })
    .await
    .expect("the server neither answered nor closed within 5 s");
    assert!(served.is_err(), "HTTP/2 was served: {served:?}");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = pki();
    let mut cfg = config(&[]);
    cfg.server.tls = Some(
        TlsConfig::new(pki.dir.join("server.pem"), pki.dir.join("server.key"))
            .with_client_ca(pki.dir.join("ca.pem")),
    );
    let s = start(&cfg).await;
    let without = tls_get(s.addr, &tls_client(&pki, false, &[b"http/1.1"]), "/peer").await;
    assert!(
        without.is_err(),
        "a client without a certificate got {without:?}"
    );
    let (_, status, body) = tls_get(s.addr, &tls_client(&pki, true, &[b"h2"]), "/peer")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn the_outbound_client_presents_its_certificate_to_a_mutual_tls_server() {
    use arq_core::client::{ClientError, HttpClient};
    let pki = pki();
    let mut cfg = config(&[]);
    cfg.server.tls = Some(
        TlsConfig::new(pki.dir.join("server.pem"), pki.dir.join("server.key"))
            .with_client_ca(pki.dir.join("ca.pem")),
    );
    let s = start(&cfg).await;
    let url = format!("https://localhost:{}/peer", s.addr.port());
    let registry = MetricsRegistry::new();
    let metrics = arq_core::client::ClientMetrics::register(&registry).unwrap();
    let with_cert = HttpClient::builder("peer")
        .tls_files(
            &pki.dir.join("ca.pem"),
            Some((&pki.dir.join("client.pem"), &pki.dir.join("client.key"))),
        )
        .unwrap()
        .metrics(metrics.clone())
        .build(&registry)
        .unwrap();
    let r = with_cert.get(&url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"1", "the server saw the client's certificate");

    let without = HttpClient::builder("peer")
        .tls_files(&pki.dir.join("ca.pem"), None)
        .unwrap()
        .metrics(metrics)
        .build(&registry)
        .unwrap();
    let err = without.get(&url).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn bad_tls_files_are_errors_not_panics() {
    let pki = pki();
    std::fs::write(pki.dir.join("garbage.pem"), "not a pem").unwrap();
    let mut cfg = config(&[]);
    cfg.server.tls = Some(TlsConfig::new(
        pki.dir.join("garbage.pem"),
        pki.dir.join("server.key"),
    ));
    let err = Server::bind(&cfg.server, Health::new(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    // Key does not match the certificate.
    std::fs::write(
        pki.dir.join("other.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    cfg.server.tls = Some(TlsConfig::new(
        pki.dir.join("server.pem"),
        pki.dir.join("other.key"),
    ));
    assert!(
        Server::bind(&cfg.server, Health::new(Duration::from_secs(1)))
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

// Slow clients (`server.header_read_timeout`). These run on real sockets and real time with a
// short timeout: the paused clock advances whenever the runtime has nothing to do, which is also
// when the server waits on a socket, so it would fire the timeout however the client behaved.
// The lower bounds cannot flake (tokio's timers never fire early, and each is counted from before
// the client connects, so before the server's timer starts); the upper bound is generous.

const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(300);

fn slow_client_config(http2: bool) -> ArqConfig {
    config(&[
        ("ARQ__SERVER__HEADER_READ_TIMEOUT", "300ms"),
        ("ARQ__SERVER__HTTP2", if http2 { "true" } else { "false" }),
    ])
}

/// Reads until the server closes the connection (end of stream, or an error such as a reset or
/// a TLS stream cut without close_notify) and returns when that happened; fails after 5 s.
async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> tokio::time::Instant {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return tokio::time::Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server still holds the connection 5 s later")
}

fn assert_not_before_timeout(what: &str, since: tokio::time::Instant, at: tokio::time::Instant) {
    let after = at - since;
    assert!(
        after >= HEADER_READ_TIMEOUT,
        "{what}: closed after {after:?}, before the {HEADER_READ_TIMEOUT:?} header read timeout"
    );
}

#[tokio::test]
async fn header_read_timeout_defaults_to_30s_and_zero_or_hours_are_refused() {
    assert_eq!(
        config(&[]).server.header_read_timeout,
        Duration::from_secs(30)
    );
    for bad in ["0s", "0ms", "2h"] {
        let err = ArqConfig::load_from(
            &ConfigLoader::new("/nonexistent")
                .environment("test")
                .vars([("ARQ__SERVER__HEADER_READ_TIMEOUT", bad)]),
        )
        .unwrap_err();
        let problem = &err.problems()[0];
        assert_eq!(problem.key, "server.header_read_timeout", "{err}");
        assert!(problem.message.contains("more than zero"), "{err}");
        assert!(
            err.to_string().contains("ARQ__SERVER__HEADER_READ_TIMEOUT"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected_after_the_timeout() {
    use tokio::io::AsyncWriteExt;
    for http2 in [true, false] {
        let s = start(&slow_client_config(http2)).await;
        // Nothing at all, part of a request head, part of the h2c preface (without HTTP/2, the
        // HTTP/1.1 parser refuses that request line at once).
        let partial_preface: &[u8] = if http2 { b"PRI * HTTP/2.0\r\n" } else { b"" };
        for sent in [
            &b""[..],
            b"GET /hello HTTP/1.1\r\nHost: x\r\n",
            partial_preface,
        ] {
            let what = format!("http2 = {http2}, sent {:?}", String::from_utf8_lossy(sent));
            let since = tokio::time::Instant::now();
            let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            tcp.write_all(sent).await.unwrap();
            let at = closed(&mut tcp).await;
            assert_not_before_timeout(&what, since, at);
        }
    }
}

#[tokio::test]
async fn a_request_head_trickled_a_header_at_a_time_is_cut_off_at_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(&slow_client_config(true)).await;
    let since = tokio::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    // A header every 50 ms: the connection is never idle, yet the head never ends.
    let trickle = tokio::spawn(async move {
        write.write_all(b"GET /hello HTTP/1.1\r\n").await?;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            write.write_all(format!("x-{i}: y\r\n").as_bytes()).await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let at = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 64];
        while let Ok(n) = read.read(&mut buf).await
            && n > 0
        {}
        tokio::time::Instant::now()
    })
    .await
    .expect("the server still holds the connection 5 s later");
    trickle.abort();
    assert_not_before_timeout("trickled head", since, at);
}

#[tokio::test]
async fn a_request_head_sent_within_the_timeout_is_answered_and_an_idle_keep_alive_connection_closes_after_it()
 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for http2 in [true, false] {
        let s = start(&slow_client_config(http2)).await;
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        // In two writes 100 ms apart: slow, but within the 300 ms.
        tcp.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let last_write = tokio::time::Instant::now();
        tcp.write_all(b"\r\n").await.unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"\r\n\r\nhello") {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("no response within 5 s")
                .unwrap();
            assert!(
                n > 0,
                "closed after {:?}",
                String::from_utf8_lossy(&response)
            );
            response.extend_from_slice(&buf[..n]);
        }
        assert!(
            response.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "http2 = {http2}: {}",
            String::from_utf8_lossy(&response)
        );
        // hyper's header read timer also runs while a keep-alive connection waits for its next
        // request (it starts once the response is written, so after `last_write`).
        let at = closed(&mut tcp).await;
        assert_not_before_timeout(&format!("idle keep-alive, http2 = {http2}"), last_write, at);
    }
}

#[tokio::test]
async fn over_tls_a_silent_or_slow_client_is_disconnected_after_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let pki = pki();
    for http2 in [true, false] {
        let mut cfg = slow_client_config(http2);
        cfg.server.tls = Some(TlsConfig::new(
            pki.dir.join("server.pem"),
            pki.dir.join("server.key"),
        ));
        let s = start(&cfg).await;
        for (alpn, sent) in [
            (&b"http/1.1"[..], &b""[..]),
            (b"http/1.1", b"GET /hello HTTP/1.1\r\nHost: x\r\n"),
            (b"h2", b""),
            (b"h2", b"PRI * HTTP/2.0\r\n"),
        ] {
            if alpn == b"h2" && !http2 {
                continue; // the handshake fails: no protocol in common
            }
            let what = format!(
                "http2 = {http2}, ALPN {}, sent {:?}",
                String::from_utf8_lossy(alpn),
                String::from_utf8_lossy(sent)
            );
            let since = tokio::time::Instant::now();
            let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tls_client(&pki, false, &[alpn])
                .connect(name, tcp)
                .await
                .unwrap();
            tls.write_all(sent).await.unwrap();
            tls.flush().await.unwrap();
            let at = closed(&mut tls).await;
            assert_not_before_timeout(&what, since, at);
        }
        // A prompt client is still served, over both protocols.
        let (v, status, body) = tls_get(s.addr, &tls_client(&pki, false, &[b"http/1.1"]), "/hello")
            .await
            .unwrap();
        assert_eq!(
            (v, status, body.as_str()),
            (Version::HTTP_11, StatusCode::OK, "hello")
        );
        if http2 {
            let (v, status, _) = tls_get(s.addr, &tls_client(&pki, false, &[b"h2"]), "/hello")
                .await
                .unwrap();
            assert_eq!((v, status), (Version::HTTP_2, StatusCode::OK));
        }
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_shutdown() {
    let pki = pki();
    for tls in [false, true] {
        // The default 30 s header read timeout: the stop signal has to end these connections.
        let mut cfg = config(&[("ARQ__SERVER__SHUTDOWN_TIMEOUT", "10s")]);
        if tls {
            cfg.server.tls = Some(TlsConfig::new(
                pki.dir.join("server.pem"),
                pki.dir.join("server.key"),
            ));
        }
        let mut s = start(&cfg).await;
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let _silent = if tls {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tls_client(&pki, false, &[b"h2"])
                .connect(name, tcp)
                .await
                .unwrap();
            Box::new(tls) as Box<dyn std::any::Any>
        } else {
            Box::new(tcp)
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.stop.take().unwrap().send(()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), s.done)
            .await
            .unwrap_or_else(|_| panic!("tls = {tls}: still draining 5 s later"))
            .unwrap();
        assert_eq!(outcome, ShutdownOutcome::Drained, "tls = {tls}");
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}
