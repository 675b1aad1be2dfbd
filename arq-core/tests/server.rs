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
