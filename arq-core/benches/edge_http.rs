//! Throughput and p99 latency of a hello endpoint: bare axum vs the same router behind arq's
//! full edge stack (no authentication), measured on loopback by wrk in the same run.
//!
//! Run: `cargo bench -p arq-core --bench edge_http` (needs `wrk`: `apt-get install -y wrk`).
//! `ARQ_BENCH_SECS` sets each run's duration (default 10), `ARQ_BENCH_ROUNDS` the rounds
//! (default 2; configurations alternate within a round so drift hits all of them).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    reason = "benchmark driver"
)]

#[path = "support/loadgen.rs"]
mod loadgen;

use std::net::SocketAddr;
use std::time::Duration;

use arq_core::edge::EdgeStack;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::rate_limit::RateLimitLayer;
use arq_core::server::Server;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use loadgen::{Run, edge_config, env_u64, hello_router, mean, wrk};

async fn start_bare() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hello_router()).await });
    addr
}

async fn start_arq(with_limit: bool) -> SocketAddr {
    let cfg = edge_config();
    let registry = MetricsRegistry::new();
    let health = Health::new(Duration::from_secs(1));
    let mut stack = EdgeStack::from_config(&cfg, &registry).unwrap();
    if with_limit {
        stack = stack.per_ip_limit(RateLimitLayer::from_config(&cfg.rate_limit).unwrap());
    }
    let svc = stack.wrap(arq_core::server::with_operational_routes(
        hello_router(),
        &health,
        &registry,
    ));
    let server = Server::bind(&cfg.server, health).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(svc, std::future::pending()));
    addr
}

/// wrk at 64 connections against `/hello`, printing its error lines (if any).
fn run(addr: SocketAddr, secs: u64) -> Run {
    let r = wrk(addr, "/hello", 64, secs, &[]);
    if let Some(e) = r.errors.first() {
        println!("  wrk reported: {e}");
    }
    r
}

fn main() {
    // Criterion-style filters are passed by `cargo bench`; this driver takes none.
    let secs = env_u64("ARQ_BENCH_SECS", 10);
    let rounds = env_u64("ARQ_BENCH_ROUNDS", 2);
    // Production-like telemetry: JSON logs at info (spans are created and filled), to a sink.
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            std::env::var("ARQ_BENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
        ))
        .with(arq_core::telemetry::json_layer(std::io::sink))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (bare, arq, arq_limit) = rt.block_on(async {
        (
            start_bare().await,
            start_arq(false).await,
            start_arq(true).await,
        )
    });
    // Warm up each (connections, allocator, route handles).
    for a in [bare, arq, arq_limit] {
        run(a, 1);
    }
    let names = [
        "bare axum",
        "arq edge stack",
        "arq edge stack + per-IP rate limit",
    ];
    let mut results: Vec<Vec<Run>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, a) in [bare, arq, arq_limit].into_iter().enumerate() {
            let r = run(a, secs);
            println!(
                "round {round}: {:<36} {:>10.0} req/s  p99 {:>6.2} ms",
                names[i], r.rps, r.p99_ms
            );
            results[i].push(r);
        }
    }
    let base = mean(&results[0], |r| r.rps);
    println!();
    println!("| configuration | req/s (mean of {rounds}) | p99 ms (mean) | vs bare axum |");
    println!("|---|---:|---:|---:|");
    for (i, runs) in results.iter().enumerate() {
        let rps = mean(runs, |r| r.rps);
        println!(
            "| {} | {:.0} | {:.2} | {:.2}× |",
            names[i],
            rps,
            mean(runs, |r| r.p99_ms),
            rps / base
        );
    }
}
