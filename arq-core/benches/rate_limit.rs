//! Local rate-limit decision cost (target < 100 ns): one atomic two-quota GCRA decision
//! (600/min + 10 000/hour) on a warm key, admitted and refused, and over 10 000 distinct keys.
#![allow(missing_docs, clippy::unwrap_used, reason = "benchmark code")]

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

fn local(c: &mut Criterion) {
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
    let big = LocalLimiter::new(
        vec![
            Quota::per_minute(50_000_000).unwrap(),
            Quota::per_hour(2_000_000_000).unwrap(),
        ],
        100_000,
    );
    g.bench_function("hot_key_admitted", |b| {
        b.iter(|| black_box(big.check(black_box("user:hot"))));
    });

    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
        .collect();
    let many = LocalLimiter::new(quotas(), 100_000);
    let mut i = 0usize;
    g.bench_function("10k_keys_round_robin", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(many.check(&keys[i]))
        });
    });
    g.finish();
}

criterion_group!(benches, local);
criterion_main!(benches);
