//! The gateway benchmarks' servers (arq-core's `gateway`, arq-auth's `gateway_auth`): a hello
//! upstream and the arq gateway in front of it, each on its own runtime in the benchmark
//! process. Needs arq-core's `gateway` feature.
//!
//! Included by path (`#[path = ".../support/gateway.rs"] mod gateway_support;`).
#![allow(dead_code, reason = "each benchmark uses part of the fixture")]

use std::net::SocketAddr;
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::EdgeStack;
use arq_core::gateway::{Gateway, GatewayConfig, RouteConfig};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::Server;

/// Worker threads of each runtime, and nginx's worker processes.
pub(crate) const THREADS: usize = 2;

/// A runtime with [`THREADS`] workers.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .unwrap()
}

/// The upstream: `GET /hello` answers `hello, world\n`.
pub(crate) fn start_upstream(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, super::loadgen::hello_router()).await });
        addr
    })
}

/// The arq gateway routing `/hello` to `upstream`, behind the edge stack from the default
/// configuration as `edge` completes it (e.g. with an authentication layer). `require_identity`
/// is the gateway's check that non-public routes carry a verified identity: on with
/// authentication, as in the generated gateway; off without.
pub(crate) fn start_gateway(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    require_identity: bool,
    edge: impl FnOnce(EdgeStack) -> EdgeStack,
) -> SocketAddr {
    rt.block_on(async {
        let cfg = ArqConfig::load_from(
            &ConfigLoader::new("/nonexistent")
                .environment("bench")
                .vars([("ARQ__SERVER__ADDR", "127.0.0.1:0")]),
        )
        .unwrap()
        .0;
        let registry = MetricsRegistry::new();
        let mut settings = arq_core::resilience::DependencySettings::default();
        // The bulkhead must not be what limits a 256-connection run.
        settings.max_concurrent = Some(1024);
        settings.max_waiting = Some(4096);
        let gateway = Gateway::builder(GatewayConfig::new("").route(
            "hello",
            RouteConfig::new("/hello", format!("http://{upstream}")).resilience(settings),
        ))
        .require_identity(require_identity)
        .build(&registry)
        .unwrap();
        let health = Health::new(Duration::from_secs(1));
        let svc = edge(EdgeStack::from_config(&cfg, &registry).unwrap()).wrap(gateway.router());
        let server = Server::bind(&cfg.server, health).await.unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.serve(svc, std::future::pending()));
        addr
    })
}
