//! The arq gateway against nginx as a reverse proxy, in front of the same upstream, in the same
//! run: throughput and p99 with wrk at 64 and 256 connections, and the memory 10 000 idle
//! client connections cost each proxy (measured first, on the fresh proxies).
//!
//! Run: `cargo bench -p arq-core --features gateway --bench gateway` (needs `wrk` and `nginx`:
//! `apt-get install -y wrk nginx-light`). `ARQ_BENCH_SECS` sets each run's duration (default
//! 10), `ARQ_BENCH_ROUNDS` the rounds (default 1; the proxies alternate within a round),
//! `ARQ_BENCH_IDLE` the idle connections (default 10000).
//!
//! Fairness: nginx runs as many workers as the gateway has runtime threads (2), with
//! `proxy_pass` over HTTP/1.1 and an upstream keep-alive pool of 256 (the largest client
//! concurrency), access log off. The gateway runs the edge stack without authentication
//! (`require_identity(false)`); the upstream runs on its own runtime in this process.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    reason = "benchmark driver"
)]

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/loadgen.rs"]
mod loadgen;

use gateway_support::{THREADS, runtime, start_gateway, start_upstream};
use loadgen::{Run, env_u64, idle_cost, mean, nginx_pids, start_nginx, wrk};

/// wrk against `/hello`, printing its error lines (if any).
fn run(addr: std::net::SocketAddr, conns: u32, secs: u64) -> Run {
    let r = wrk(addr, "/hello", conns, secs, &[]);
    if let Some(e) = r.errors.first() {
        println!("  wrk reported: {e}");
    }
    r
}

fn main() {
    let secs = env_u64("ARQ_BENCH_SECS", 10);
    let rounds = env_u64("ARQ_BENCH_ROUNDS", 1);
    let idle = env_u64("ARQ_BENCH_IDLE", 10_000) as usize;
    let upstream_rt = runtime();
    let gateway_rt = runtime();
    let upstream = start_upstream(&upstream_rt);
    let gateway = start_gateway(&gateway_rt, upstream, false, |edge| edge);
    let nginx = start_nginx(upstream, THREADS, 256);
    let targets = [("nginx", nginx.addr), ("arq gateway", gateway)];
    // Idle connections first, on fresh proxies: after the load runs, memory the allocators kept
    // from 256 busy connections would absorb the idle ones and hide their cost.
    let idle_rows = (idle > 0).then(|| {
        let master = nginx.child.id();
        let (nb, na) = idle_cost(nginx.addr, &|| nginx_pids(master), idle);
        let me = std::process::id();
        let (gb, ga) = idle_cost(gateway, &|| vec![me], idle);
        [
            ("nginx (master + workers)", nb, na),
            ("arq gateway (bench process)", gb, ga),
        ]
    });
    for (_, a) in targets {
        run(a, 64, 1);
    }
    let mut results: Vec<(u32, &str, Vec<Run>)> = Vec::new();
    for conns in [64u32, 256] {
        for (name, _) in targets {
            results.push((conns, name, Vec::new()));
        }
    }
    for round in 0..rounds {
        for (conns, name, runs) in &mut results {
            let addr = targets.iter().find(|(n, _)| n == name).unwrap().1;
            let r = run(addr, *conns, secs);
            println!(
                "round {round}: {name:<12} c={conns:<4} {:>10.0} req/s  p99 {:>7.2} ms",
                r.rps, r.p99_ms
            );
            runs.push(r);
        }
    }
    println!();
    println!("| proxy | conns | req/s (mean of {rounds}) | p99 ms | vs nginx |");
    println!("|---|---:|---:|---:|---:|");
    for (conns, name, runs) in &results {
        let base = results
            .iter()
            .find(|(c, n, _)| c == conns && *n == "nginx")
            .map(|(_, _, r)| mean(r, |r| r.rps))
            .unwrap();
        let rps = mean(runs, |r| r.rps);
        println!(
            "| {name} | {conns} | {rps:.0} | {:.2} | {:.2}× |",
            mean(runs, |r| r.p99_ms),
            rps / base
        );
    }

    if let Some(idle_rows) = idle_rows {
        println!();
        println!("| proxy | RSS before | RSS with {idle} idle connections | per connection |");
        println!("|---|---:|---:|---:|");
        for (name, b, a) in idle_rows {
            println!(
                "| {name} | {:.1} MiB | {:.1} MiB | {:.2} KiB |",
                b as f64 / 1024.0,
                a as f64 / 1024.0,
                a.saturating_sub(b) as f64 / idle as f64
            );
        }
    }
    drop(nginx);
}
