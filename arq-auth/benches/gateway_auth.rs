//! The arq gateway with authentication on against nginx as a reverse proxy, in front of the
//! same upstream, in the same run: throughput and p99 with wrk at 64 and 256 connections.
//! The second gateway target is ≥ 0.7× nginx with cached token verification.
//!
//! Run: `cargo bench -p arq-auth --bench gateway_auth` (needs `wrk` and `nginx`:
//! `apt-get install -y wrk nginx-light`). `ARQ_BENCH_SECS` sets each run's duration (default
//! 10), `ARQ_BENCH_ROUNDS` the rounds (default 1; the proxies alternate within a round, the
//! order reversed every other round).
//!
//! What is compared, every request carrying the same valid RS256 bearer token:
//! - nginx (2 workers, `proxy_pass` over HTTP/1.1, upstream keep-alive 256, access log off)
//!   **without** authentication: Debian's nginx has no JWT verification, so the baseline is
//!   nginx proxying without auth, as the issue words it;
//! - the arq gateway without authentication (`require_identity(false)`, as in arq-core's
//!   `gateway` bench), for the cost of authentication within the gateway;
//! - the arq gateway as the generated gateway wires it: `AuthLayer` in the edge stack's
//!   authentication slot, verifying through the verifier's token cache (a hit after the first
//!   request), and the gateway requiring an identity; the token names a home tenant, which the
//!   gateway forwards as `X-Tenant-ID`.
//!
//! Each gateway and the upstream run on their own 2-thread runtime in this process. No tracing
//! subscriber is installed (as in arq-core's `gateway` bench), and no rate limit.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    reason = "benchmark driver"
)]

#[path = "../../arq-core/benches/support/gateway.rs"]
mod gateway_support;
#[path = "../../arq-core/benches/support/loadgen.rs"]
mod loadgen;
#[path = "support/token.rs"]
mod token;

use std::net::SocketAddr;

use arq_auth::AuthLayer;
use arq_core::TenantId;

use gateway_support::{THREADS, runtime, start_gateway, start_upstream};
use loadgen::{Run, env_u64, mean, start_nginx, status_of_get, wrk};

const NGINX: &str = "nginx (no auth)";
const GATEWAY: &str = "arq gateway (no auth)";
const GATEWAY_AUTH: &str = "arq gateway + auth (cached)";

/// wrk against `/hello` with the bearer token. Any non-2xx answer (a refused token, an open
/// breaker, a 502) means the run measured the wrong path, so it stops the benchmark.
fn run(name: &str, addr: SocketAddr, conns: u32, secs: u64, bearer: &str) -> Run {
    let r = wrk(
        addr,
        "/hello",
        conns,
        secs,
        &[format!("Authorization: Bearer {bearer}")],
    );
    if r.has_non_2xx() {
        panic!("{name} at {conns} connections: wrk reported {:?}", r.errors);
    }
    for e in &r.errors {
        println!("  {name} c={conns}: wrk reported: {e}");
    }
    r
}

fn main() {
    let secs = env_u64("ARQ_BENCH_SECS", 10);
    let rounds = env_u64("ARQ_BENCH_ROUNDS", 1).max(1);
    let (token, verifier) =
        token::token_and_verifier(&token::user_claims().with_tenant(TenantId::generate()));
    let upstream_rt = runtime();
    let gateway_rt = runtime();
    let auth_rt = runtime();
    let upstream = start_upstream(&upstream_rt);
    let gateway = start_gateway(&gateway_rt, upstream, false, |edge| edge);
    auth_rt.block_on(verifier.keys().refresh()).unwrap();
    let gateway_auth = start_gateway(&auth_rt, upstream, true, |edge| {
        edge.authentication(AuthLayer::new(verifier))
    });
    let nginx = start_nginx(upstream, THREADS, 256);
    let targets = [
        (NGINX, nginx.addr),
        (GATEWAY, gateway),
        (GATEWAY_AUTH, gateway_auth),
    ];

    // Authentication is really on: no token is refused, the token is accepted.
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(status_of_get(gateway_auth, "/hello", &[]), 401);
    assert_eq!(status_of_get(gateway_auth, "/hello", &[&bearer]), 200);
    // Warm up (connections, allocator, the verified-token cache).
    for (name, addr) in targets {
        run(name, addr, 64, 1, &token);
    }

    let mut results: Vec<(u32, &str, Vec<Run>)> = Vec::new();
    for conns in [64u32, 256] {
        for (name, _) in targets {
            results.push((conns, name, Vec::new()));
        }
    }
    for round in 0..rounds {
        for conns in [64u32, 256] {
            let mut order = targets;
            if round % 2 == 1 {
                order.reverse();
            }
            for (name, addr) in order {
                let r = run(name, addr, conns, secs, &token);
                println!(
                    "round {round}: {name:<28} c={conns:<4} {:>10.0} req/s  p99 {:>7.2} ms",
                    r.rps, r.p99_ms
                );
                results
                    .iter_mut()
                    .find(|(c, n, _)| *c == conns && *n == name)
                    .unwrap()
                    .2
                    .push(r);
            }
        }
    }

    let rps = |conns: u32, name: &str| {
        results
            .iter()
            .find(|(c, n, _)| *c == conns && *n == name)
            .map(|(_, _, runs)| mean(runs, |r| r.rps))
            .unwrap()
    };
    println!();
    println!("| proxy | conns | req/s (mean of {rounds}) | p99 ms | vs nginx |");
    println!("|---|---:|---:|---:|---:|");
    for (conns, name, runs) in &results {
        println!(
            "| {name} | {conns} | {:.0} | {:.2} | {:.2}× |",
            mean(runs, |r| r.rps),
            mean(runs, |r| r.p99_ms),
            mean(runs, |r| r.rps) / rps(*conns, NGINX)
        );
    }
    println!();
    for conns in [64u32, 256] {
        let ratio = rps(conns, GATEWAY_AUTH) / rps(conns, NGINX);
        let (with, without) = (rps(conns, GATEWAY_AUTH), rps(conns, GATEWAY));
        println!(
            "c={conns}: gateway with cached auth = {ratio:.2}× nginx (target ≥ 0.70×: {}); \
             authentication costs {:.2} µs per request in the gateway",
            if ratio >= 0.7 { "met" } else { "NOT met" },
            (1.0 / with - 1.0 / without) * 1e6
        );
    }
    drop(nginx);
}
