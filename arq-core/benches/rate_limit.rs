//! Local rate-limit decision cost (target < 100 ns): one atomic two-quota GCRA decision
//! (600/min + 10 000/hour) on a warm key, admitted and refused, and over 10 000 distinct keys;
//! baseline in the same run: governor's own keyed limiter deciding **one** quota.
//!
//! Run: `cargo bench -p arq-core --bench rate_limit`. For instruction counts, which stay
//! repeatable on a loaded machine, `ARQ_BENCH_CALLGRIND=<case>` skips criterion and makes
//! 1 000 000 decisions of one case (`admitted`, `refused`, `many_keys`, `governor`):
//! `ARQ_BENCH_CALLGRIND=admitted valgrind --tool=callgrind <bench binary>` and divide by 10⁶.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark code"
)]

use std::hint::black_box;
use std::time::Duration;

use arq_core::rate_limit::{LocalLimiter, Quota};
use criterion::{Criterion, criterion_group, criterion_main};

fn quotas() -> Vec<Quota> {
    vec![
        Quota::per_minute(600).unwrap(),
        Quota::per_hour(10_000).unwrap(),
    ]
}

/// The fixed-count mode for callgrind (see the module docs).
fn callgrind(case: &str) {
    const N: usize = 1_000_000;
    let keys = many_keys();
    match case {
        "admitted" => {
            let l = LocalLimiter::new(huge_quotas(), 100_000);
            for _ in 0..N {
                black_box(l.check(black_box("user:hot")));
            }
        }
        "refused" => {
            let l = LocalLimiter::new(quotas(), 100_000);
            for _ in 0..N {
                black_box(l.check(black_box("user:hot")));
            }
        }
        "many_keys" => {
            let l = LocalLimiter::new(quotas(), 100_000);
            for i in 0..N {
                black_box(l.check(&keys[i % keys.len()]));
            }
        }
        "governor" => {
            let g = governor_keyed();
            let key = "user:hot".to_owned();
            for _ in 0..N {
                black_box(g.check_key(black_box(&key)).is_ok());
            }
        }
        other => panic!("unknown ARQ_BENCH_CALLGRIND case {other:?}"),
    }
}

fn huge_quotas() -> Vec<Quota> {
    vec![
        Quota::per_minute(50_000_000).unwrap(),
        Quota::per_hour(2_000_000_000).unwrap(),
    ]
}

fn many_keys() -> Vec<String> {
    (0..10_000)
        .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
        .collect()
}

/// governor's keyed limiter (its default store) with one quota of 600/min.
fn governor_keyed() -> governor::DefaultKeyedRateLimiter<String> {
    governor::RateLimiter::keyed(Quota::per_minute(600).unwrap().to_governor().unwrap())
}

fn local(c: &mut Criterion) {
    if let Ok(case) = std::env::var("ARQ_BENCH_CALLGRIND") {
        callgrind(&case);
        return;
    }
    let mut g = c.benchmark_group("local_decision");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    // Refused path: the key is exhausted after its burst, every later decision refuses.
    let limiter = LocalLimiter::new(quotas(), 100_000);
    for _ in 0..700 {
        limiter.check("user:hot");
    }
    g.bench_function("hot_key_refused", |b| {
        b.iter(|| black_box(limiter.check(black_box("user:hot"))));
    });

    // Admitted path: quotas too large to run out during the benchmark.
    let big = LocalLimiter::new(huge_quotas(), 100_000);
    g.bench_function("hot_key_admitted", |b| {
        b.iter(|| black_box(big.check(black_box("user:hot"))));
    });

    let keys = many_keys();
    let many = LocalLimiter::new(quotas(), 100_000);
    let mut i = 0usize;
    g.bench_function("10k_keys_round_robin", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(many.check(&keys[i]))
        });
    });

    // Baseline: governor deciding one quota for a hot key (refused after its burst, like the
    // first case).
    let gov = governor_keyed();
    let hot = "user:hot".to_owned();
    for _ in 0..700 {
        let _ = gov.check_key(&hot);
    }
    g.bench_function("governor_keyed_one_quota_refused_baseline", |b| {
        b.iter(|| black_box(gov.check_key(black_box(&hot)).is_ok()));
    });
    g.finish();
}

criterion_group!(benches, local);
criterion_main!(benches);
