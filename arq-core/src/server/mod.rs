//! Server bootstrap: serve a service over HTTP/1.1 and HTTP/2 (h2c, or TLS through rustls with
//! optional client certificates), and shut down gracefully.
//!
//! Shutdown, when the `shutdown` future passed in completes (by default [`shutdown_signal`]:
//! SIGTERM or SIGINT):
//!
//! 1. readiness flips to failing ([`Health::set_shutting_down`]), so `/health/ready` answers 503;
//! 2. for `server.readiness_delay` the server keeps accepting, so load balancers notice first;
//! 3. the listener closes; idle keep-alive connections close; HTTP/2 connections get GOAWAY;
//! 4. in-flight requests get `server.shutdown_timeout` to finish; whatever is left is aborted.
//!
//! Slow clients: an HTTP/1 connection that takes longer than `server.header_read_timeout` to
//! send a request head, to send its first bytes, or to send its next request on a keep-alive
//! connection is closed without an answer (see [`ServerConfig::header_read_timeout`]).
//!
//! # Example
//! ```no_run
//! use arq_core::config::ArqConfig;
//! use axum::{Router, routing::get};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (config, _layers) = ArqConfig::load()?;
//! let app = Router::new().route("/hello", get(|| async { "hello" }));
//! arq_core::server::serve_app(&config, app, arq_core::server::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

mod background;
mod preface;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service;

pub use background::{BackgroundTask, StopSignal, Stopped};

use crate::config::{ArqConfig, ServerConfig};
use crate::edge::{EdgeError, EdgeStack};
use crate::health::Health;
use crate::metrics::MetricsRegistry;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS files are missing, unreadable or do not fit together.
    #[error("TLS configuration: {reason}")]
    Tls {
        /// What was wrong.
        reason: String,
    },
    /// The edge stack could not be built.
    #[error(transparent)]
    Edge(#[from] EdgeError),
}

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownOutcome {
    /// Every in-flight request finished within the deadline.
    Drained,
    /// The deadline passed; this many connections were aborted.
    DeadlineExpired {
        /// Connections still open when the deadline passed.
        aborted: usize,
    },
}

/// The client certificate chain of a mutual-TLS connection, in the request extensions.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<rustls_pki_types::CertificateDer<'static>>>);

/// Completes on SIGTERM or SIGINT (Ctrl-C): the default shutdown signal.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// The one call: builds the edge stack from `config` (metrics in the global registry), adds
/// `/metrics`, `/health/live` and `/health/ready` (with the checks `[health]` names), binds
/// `server.addr` and serves until `shutdown` completes.
pub async fn serve_app(
    config: &ArqConfig,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ShutdownOutcome, ServerError> {
    let registry = MetricsRegistry::global().clone();
    let health = Health::from_config(&config.health);
    let stack = EdgeStack::from_config(config, &registry)?;
    let app = with_operational_routes(router, &health, &registry);
    let server = Server::bind(&config.server, health).await?;
    tracing::info!(addr = %server.local_addr(), tls = config.server.tls.is_some(), "listening");
    Ok(server.serve(stack.wrap(app), shutdown).await)
}

/// Merges `/metrics` and the health routes into `router`.
pub fn with_operational_routes(
    router: Router,
    health: &Health,
    registry: &MetricsRegistry,
) -> Router {
    router
        .merge(health.router())
        .merge(crate::telemetry::metrics_router(registry.clone()))
}

/// A bound server, ready to serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http2: bool,
    readiness_delay: Duration,
    shutdown_timeout: Duration,
    header_read_timeout: Duration,
    health: Health,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `config.addr` and loads TLS files when configured.
    pub async fn bind(config: &ServerConfig, health: Health) -> Result<Self, ServerError> {
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.addr,
                    source,
                })?;
        Self::from_listener(listener, config, health)
    }

    /// Serves on an already-bound listener (tests bind `127.0.0.1:0`).
    pub fn from_listener(
        listener: TcpListener,
        config: &ServerConfig,
        health: Health,
    ) -> Result<Self, ServerError> {
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
        let tls = match &config.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                t,
                config.http2,
            )?)),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            tls,
            http2: config.http2,
            readiness_delay: config.readiness_delay,
            shutdown_timeout: config.shutdown_timeout,
            header_read_timeout: config.header_read_timeout,
            health,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `service` until `shutdown` completes, then shuts down gracefully (see the module
    /// docs). Each request carries `ConnectInfo<SocketAddr>` and, under mTLS,
    /// [`PeerCertificates`].
    pub async fn serve<S>(
        self,
        service: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> ShutdownOutcome
    where
        S: Service<http::Request<Incoming>, Response = Response, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        // Without a timer hyper ignores its default header read timeout, and slow clients could
        // hold connections for ever. The price: hyper boxes one tokio `Sleep` per request head
        // it waits for.
        let header_read_timeout = self.header_read_timeout;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        if !self.http2 {
            builder = builder.http1_only();
        }
        let graceful = GracefulShutdown::new();
        // Cleartext HTTP/1.1 connections are served by hyper's HTTP/1.1 connection directly
        // (see `serve_plain`), which `GracefulShutdown` cannot watch: they stop on this signal.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut delay: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;

        loop {
            tokio::select! {
                () = &mut shutdown, if delay.is_none() => {
                    self.health.set_shutting_down();
                    tracing::info!(delay_ms = self.readiness_delay.as_millis() as u64, "readiness now failing; draining soon");
                    delay = Some(Box::pin(tokio::time::sleep(self.readiness_delay)));
                }
                () = async { if let Some(d) = delay.as_mut() { d.await } }, if delay.is_some() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let svc = service.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let Some(acceptor) = self.tls.clone() else {
                        tasks.spawn(serve_plain(stream, peer, svc, builder, watcher, http1.clone(), self.http2, header_read_timeout, stopping.clone()));
                        continue;
                    };
                    let mut stopping = stopping.clone();
                    let (http1, http2) = (http1.clone(), self.http2);
                    tasks.spawn(async move {
                        let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                        let tls_stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let certs = tls_stream.get_ref().1.peer_certificates().map(|c| {
                            PeerCertificates(Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()))
                        });
                        if !http2 {
                            // hyper-util's `auto` connection serves an HTTP/2 preface even when
                            // told HTTP/1.1 only; with HTTP/2 off, hyper's HTTP/1.1 connection
                            // (whose parser rejects a preface) serves TLS too, as it does
                            // cleartext.
                            drop(watcher);
                            let hyper_svc = hyper_service(svc, peer, certs);
                            if let Err(e) = serve_http1(TokioIo::new(tls_stream), hyper_svc, &http1, &mut stopping).await {
                                tracing::debug!(error = %e, %peer, "connection ended with an error");
                            }
                            return;
                        }
                        // `auto` reads the first bytes to choose HTTP/1.1 or HTTP/2 before hyper's
                        // header read timeout starts; bound that read too.
                        let start = tokio::select! {
                            start = tokio::time::timeout(header_read_timeout, preface::read_start(tls_stream)) => start,
                            () = stopped(&mut stopping) => return,
                        };
                        let io = match start {
                            Ok(Ok(Some(io))) => io,
                            Ok(Ok(None)) => return,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "connection ended with an error");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "no request within the header read timeout; closed");
                                return;
                            }
                        };
                        let hyper_svc = hyper_service(svc, peer, certs);
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
                        if let Err(e) = watcher.watch(conn.into_owned()).await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                }
            }
        }

        drop(self.listener);
        tracing::info!(
            connections = tasks.len(),
            "listener closed; draining in-flight requests"
        );
        let _ = stop.send(true);
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            graceful.shutdown().await;
            while tasks.join_next().await.is_some() {}
        })
        .await;
        match drained {
            Ok(()) => {
                tracing::info!("all requests drained; stopped");
                ShutdownOutcome::Drained
            }
            Err(_) => {
                let aborted = tasks.len();
                tracing::warn!(
                    aborted,
                    "shutdown deadline passed; aborting remaining connections"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                ShutdownOutcome::DeadlineExpired { aborted }
            }
        }
    }
}

/// Completes once `serve` starts draining (at once when it already has).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Serves one cleartext connection. HTTP/1.1, the common case, runs on hyper's HTTP/1.1
/// connection itself rather than hyper-util's `auto` one, which sniffs the version on its own:
/// an idle keep-alive connection then holds about 6 KiB less (the gateway bench's idle
/// connections: 20.8 → 14.8 KiB each; a minimal hyper proxy served through `auto` holds
/// 7.9 KiB more than through hyper's HTTP/1.1 connection). h2c (prior knowledge) still goes
/// through `auto`.
#[allow(
    clippy::too_many_arguments,
    reason = "one connection's share of `serve`'s state"
)]
async fn serve_plain<S>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    svc: S,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    http1: hyper::server::conn::http1::Builder,
    http2: bool,
    header_read_timeout: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let h2 = if http2 {
        // Peeking waits for the client's first bytes, before hyper's header read timeout starts.
        let sniff =
            tokio::time::timeout(header_read_timeout, preface::opens_with_h2_preface(&stream));
        tokio::select! {
            h2 = sniff => match h2 {
                Ok(Ok(h2)) => h2,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no request within the header read timeout; closed");
                    return;
                }
            },
            () = stopped(&mut stopping) => return,
        }
    } else {
        false
    };
    let hyper_svc = hyper_service(svc, peer, None);
    let result = if h2 {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_svc);
        watcher.watch(conn.into_owned()).await
    } else {
        drop(watcher);
        serve_http1(TokioIo::new(stream), hyper_svc, &http1, &mut stopping)
            .await
            .map_err(Into::into)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Serves one HTTP/1.1 connection on hyper's own HTTP/1.1 connection (upgrades allowed) until
/// it ends, or until `serve` starts draining, when it finishes the request in flight and closes.
async fn serve_http1<I, S, B>(
    io: I,
    svc: S,
    http1: &hyper::server::conn::http1::Builder,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1.serve_connection(io, svc).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(stopping) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

fn hyper_service<S>(
    svc: S,
    peer: SocketAddr,
    certs: Option<PeerCertificates>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = S::Future,
> + Clone
where
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible> + Clone,
{
    hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(c) = &certs {
            req.extensions_mut().insert(c.clone());
        }
        // Edge services are always ready (they buffer nothing), so call a clone directly.
        svc.clone().call(req)
    })
}
