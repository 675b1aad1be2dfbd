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

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arq_auth::{
    AccessClaims, AuthLayer, KeyRing, SigningKey, SigningKeyRing, Verifier, VerifierConfig,
};
use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::EdgeStack;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::Server;
use axum::Router;
use axum::routing::get;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const ISS: &str = "https://auth.arq.dev";
const AUD: &str = "https://api.arq.dev";

fn router() -> Router {
    Router::new().route("/hello", get(|| async { "hello, world\n" }))
}

fn config() -> ArqConfig {
    ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("bench")
            .vars([
                ("ARQ__SERVER__ADDR", "127.0.0.1:0"),
                (
                    "ARQ__CORS__ALLOWED_ORIGINS",
                    "https://app.arq.dev,https://*.arq.dev",
                ),
                ("ARQ__RATE_LIMIT__PER_MINUTE", "1000000000"),
                ("ARQ__RATE_LIMIT__PER_HOUR", "2000000000"),
                ("ARQ__RATE_LIMIT__KEY", "client_ip"),
            ]),
    )
    .unwrap()
    .0
}

/// The edge stack around `app`, served on a fresh loopback port.
async fn start(app: Router) -> SocketAddr {
    let cfg = config();
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

struct Run {
    rps: f64,
    p99_ms: f64,
}

fn wrk(addr: SocketAddr, secs: u64, bearer: &str) -> Run {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c64",
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            &format!("Authorization: Bearer {bearer}"),
            &format!("http://{addr}/hello"),
        ])
        .output()
        .expect("wrk is needed: apt-get install -y wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or(f64::NAN);
    if let Some(e) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        // A 401 would mean the token was refused and the run measured the wrong path.
        panic!("wrk reported: {}", e.trim());
    }
    Run { rps, p99_ms: p99 }
}

fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env_or("ARQ_BENCH_SECS", 10);
    let rounds = env_or("ARQ_BENCH_ROUNDS", 3).max(1) as usize;
    // Production-like telemetry, as in arq-core's edge_http: JSON logs at info, to a sink.
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(arq_core::telemetry::json_layer(std::io::sink))
        .init();
    let ring = SigningKeyRing::new(
        SigningKey::from_rsa_pem("k1", include_bytes!("../tests/keys/key1.pem")).unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = AccessClaims::new(ISS, "user-1", AUD, now, 3600)
        .with_roles(["member"])
        .with_attribute("department", "finance")
        .with_amr(["pwd", "otp"]);
    let token = ring.sign(&claims).unwrap();
    let keys = Arc::new(KeyRing::new(ring, Duration::from_secs(30)));
    let verifier = Verifier::new(VerifierConfig::new(ISS, AUD), keys).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plain, authed) = rt.block_on(async {
        verifier.keys().refresh().await.unwrap();
        (
            start(router()).await,
            start(router().layer(AuthLayer::new(verifier))).await,
        )
    });
    // Warm up (connections, allocator, and the verified-token cache).
    for a in [plain, authed] {
        wrk(a, 1, &token);
    }
    let names = ["edge stack, no auth", "edge stack + AuthLayer (cached)"];
    let mut results: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = wrk([plain, authed][i], secs, &token);
            println!(
                "round {round}: {:<34} {:>10.0} req/s  p99 {:>6.2} ms",
                names[i], r.rps, r.p99_ms
            );
            results[i].push(r);
        }
    }
    let mean =
        |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
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
