//! The arq gateway against nginx as a reverse proxy, in front of the same upstream, in the same
//! run: throughput and p99 with wrk at 64 and 256 connections, and the memory 10 000 idle
//! client connections cost each proxy (measured first, on the fresh proxies).
//!
//! Run: `cargo bench -p arq-core --features gateway --bench gateway` (needs `wrk` and `nginx`:
//! `apt-get install -y wrk nginx-light`). `ARQ_BENCH_SECS` sets each run's duration (default
//! 10), `ARQ_BENCH_ROUNDS` the rounds (default 1; the proxies alternate within a round),
//! `ARQ_BENCH_IDLE` the idle connections (default 10000).
//!
//! A third target, the reference, is a minimal hyper-util proxy (pooled client, no edge
//! stack) in this process.
//!
//! Instruction counts, repeatable on a loaded machine: with
//! `ARQ_GATEWAY_CALLGRIND=arq|hyper|hyper-auto|direct`
//! and `ARQ_GATEWAY_ITERS=n` the binary skips wrk and nginx and sends `n` sequential requests over
//! one keep-alive loopback connection, on one current-thread runtime that runs the client, the
//! proxy (the gateway behind the edge stack, the minimal hyper proxy — `hyper-auto`: served by
//! hyper-util's `auto` builder, as arq's server does — or none) and the upstream,
//! with JSON logging at info installed (to a sink) as in production. Run it under callgrind with two
//! `n` and divide the difference (`arq-core/benches/support/gateway_callgrind.sh`).
//!
//! `ARQ_GATEWAY_IDLE=arq|hyper|hyper-auto|direct` measures only the idle-connection memory of that one
//! target, in a fresh process (runtimes as in the wrk runs): comparable across targets, which a
//! second measurement in the same process is not (it reuses the heap the first one freed).
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
#[path = "support/minimal_proxy.rs"]
mod minimal_proxy;

use gateway_support::{THREADS, runtime, start_gateway, start_upstream};
use loadgen::{Run, env_u64, idle_cost, mean, nginx_pids, start_nginx, wrk};
use minimal_proxy::{sequential_gets, start_minimal_proxy, start_minimal_proxy_with};

/// wrk against `/hello`, printing its error lines (if any).
fn run(addr: std::net::SocketAddr, conns: u32, secs: u64) -> Run {
    let r = wrk(addr, "/hello", conns, secs, &[]);
    if let Some(e) = r.errors.first() {
        println!("  wrk reported: {e}");
    }
    r
}

fn main() {
    if let (Ok(which), Ok(iters)) = (
        std::env::var("ARQ_GATEWAY_CALLGRIND"),
        std::env::var("ARQ_GATEWAY_ITERS"),
    ) {
        fixed(&which, iters.parse().unwrap());
        return;
    }
    if let Ok(which) = std::env::var("ARQ_GATEWAY_IDLE") {
        idle_only(&which, env_u64("ARQ_BENCH_IDLE", 10_000) as usize);
        return;
    }
    let secs = env_u64("ARQ_BENCH_SECS", 10);
    let rounds = env_u64("ARQ_BENCH_ROUNDS", 1);
    let idle = env_u64("ARQ_BENCH_IDLE", 10_000) as usize;
    let upstream_rt = runtime();
    let gateway_rt = runtime();
    let upstream = start_upstream(&upstream_rt);
    let gateway = start_gateway(&gateway_rt, upstream, false, |edge| edge);
    let hyper_rt = runtime();
    let minimal = start_minimal_proxy(&hyper_rt, upstream);
    let nginx = start_nginx(upstream, THREADS, 256);
    let targets = [
        ("nginx", nginx.addr),
        ("arq gateway", gateway),
        ("hyper proxy", minimal),
    ];
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

/// `iters` requests through `which` (`arq`: the gateway behind the edge stack; `hyper`: the
/// minimal hyper-util proxy; `direct`: the upstream itself), all on one current-thread runtime,
/// for instruction counting.
fn fixed(which: &str, iters: u64) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(arq_core::telemetry::json_layer(std::io::sink))
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream = start_upstream(&rt);
    let target = match which {
        "arq" => start_gateway(&rt, upstream, false, |edge| edge),
        "hyper" => start_minimal_proxy(&rt, upstream),
        "hyper-auto" => start_minimal_proxy_with(&rt, upstream, true),
        "direct" => upstream,
        other => {
            panic!("ARQ_GATEWAY_CALLGRIND must be arq, hyper, hyper-auto or direct, not {other:?}")
        }
    };
    rt.block_on(sequential_gets(target, iters));
}

/// The RSS `n` idle keep-alive connections add to this process when they are held by `which`
/// alone (`arq`, `hyper` or `direct`, as in [`fixed`]), with the wrk runs' runtimes.
fn idle_only(which: &str, n: usize) {
    let upstream_rt = runtime();
    let proxy_rt = runtime();
    let upstream = start_upstream(&upstream_rt);
    let target = match which {
        "arq" => start_gateway(&proxy_rt, upstream, false, |edge| edge),
        "hyper" => start_minimal_proxy(&proxy_rt, upstream),
        "hyper-auto" => start_minimal_proxy_with(&proxy_rt, upstream, true),
        "direct" => upstream,
        other => panic!("ARQ_GATEWAY_IDLE must be arq, hyper, hyper-auto or direct, not {other:?}"),
    };
    let me = std::process::id();
    let (before, after) = idle_cost(target, &|| vec![me], n);
    println!(
        "{which}: RSS {:.1} MiB before, {:.1} MiB with {n} idle connections: {:.2} KiB per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / n as f64
    );
}
