//! The auth layer's request overhead on the edge-stack hello benchmark: the same hello router
//! behind arq's full edge stack, without and with [`AuthLayer`] (cached path: every request
//! carries the same valid bearer token), measured on loopback by wrk in the same run.
//!
//! Run: `cargo bench -p arq-auth --bench edge_auth_http` (needs `wrk`: `apt-get install -y wrk`).
//! `ARQ_BENCH_SECS` sets each run's duration (default 10), `ARQ_BENCH_ROUNDS` the rounds
//! (default 3; the two configurations alternate within a round so drift hits both).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    reason = "benchmark driver"
)]

#[path = "../../arq-core/benches/support/loadgen.rs"]
mod loadgen;
#[path = "support/token.rs"]
mod token;

use std::net::SocketAddr;
use std::time::Duration;

use arq_auth::AuthLayer;
use arq_core::edge::EdgeStack;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::Server;
use axum::Router;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use loadgen::{Run, edge_config, env_u64, hello_router, mean, wrk};

/// The edge stack around `app`, served on a fresh loopback port.
async fn start(app: Router) -> SocketAddr {
    let cfg = edge_config();
    let registry = MetricsRegistry::new();
    let health = Health::new(Duration::from_secs(1));
    let stack = EdgeStack::from_config(&cfg, &registry).unwrap();
    let svc = stack.wrap(arq_core::server::with_operational_routes(
        app, &health, &registry,
    ));
    let server = Server::bind(&cfg.server, health).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(svc, std::future::pending()));
    addr
}

/// wrk at 64 connections against `/hello` with the bearer token.
fn run(addr: SocketAddr, secs: u64, bearer: &str) -> Run {
    let r = wrk(
        addr,
        "/hello",
        64,
        secs,
        &[format!("Authorization: Bearer {bearer}")],
    );
    if let Some(e) = r.errors.first() {
        // A 401 would mean the token was refused and the run measured the wrong path.
        panic!("wrk reported: {e}");
    }
    r
}

fn main() {
    let secs = env_u64("ARQ_BENCH_SECS", 10);
    let rounds = env_u64("ARQ_BENCH_ROUNDS", 3).max(1) as usize;
    // Production-like telemetry, as in arq-core's edge_http: JSON logs at info, to a sink.
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(arq_core::telemetry::json_layer(std::io::sink))
        .init();
    let (token, verifier) = token::token_and_verifier(&token::user_claims());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plain, authed) = rt.block_on(async {
        verifier.keys().refresh().await.unwrap();
        (
            start(hello_router()).await,
            start(hello_router().layer(AuthLayer::new(verifier))).await,
        )
    });
    // Warm up (connections, allocator, and the verified-token cache).
    for a in [plain, authed] {
        run(a, 1, &token);
    }
    let names = ["edge stack, no auth", "edge stack + AuthLayer (cached)"];
    let mut results: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = run([plain, authed][i], secs, &token);
            println!(
                "round {round}: {:<34} {:>10.0} req/s  p99 {:>6.2} ms",
                names[i], r.rps, r.p99_ms
            );
            results[i].push(r);
        }
    }
    let base = mean(&results[0], |r| r.rps);
    println!();
    println!("| configuration | req/s (mean of {rounds}) | p99 ms (mean) | vs no auth |");
    println!("|---|---:|---:|---:|");
    for (i, runs) in results.iter().enumerate() {
        let rps = mean(runs, |r| r.rps);
        println!(
            "| {} | {:.0} | {:.2} | {:.3}× |",
            names[i],
            rps,
            mean(runs, |r| r.p99_ms),
            rps / base
        );
    }
    let (a, b) = (mean(&results[0], |r| r.rps), mean(&results[1], |r| r.rps));
    println!(
        "\nper-request overhead of the auth layer (from the means, 64 connections): {:.2} µs",
        (1.0 / b - 1.0 / a) * 1e6
    );
}
