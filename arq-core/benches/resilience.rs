//! Resilience benchmarks: the breaker's closed path, the bulkhead, the retry success path
//! and the whole dependency stack, each against a bare call, and the breaker against
//! `tower-resilience`'s circuit breaker in the same run. Allocations per call are counted
//! with `stats_alloc` and printed before the timings.
//!
//! Run: `cargo bench -p arq-core --bench resilience`.

// A benchmark binary reports on stdout and unwraps its own setup.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arq_core::resilience::{
    Bulkhead, BulkheadConfig, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    Dependency, DependencyConfig, DependencyKind, Outcome, ResilienceError, ResilienceMetrics,
    Retry, RetryPolicy,
};
use criterion::{Criterion, criterion_group};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Polls a future to completion on the calling thread. Every arq path benchmarked is ready
/// on the first poll; tower-resilience's breaker waits on a tokio mutex when two threads
/// contend, so it spins until the mutex hands over.
#[inline(always)]
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// This thread's CPU time. The machine is shared (2 cores, load ~16 while others compile):
/// wall-clock time per call mostly measures how often the benchmark was descheduled, so
/// every figure here is CPU time of the measuring thread.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Benchmarks `f` by the CPU time of `iters` calls.
fn bench_cpu<M>(g: &mut criterion::BenchmarkGroup<'_, M>, name: &str, mut f: impl FnMut())
where
    M: criterion::measurement::Measurement<Value = Duration>,
{
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            let start = cpu_now();
            for _ in 0..iters {
                f();
            }
            cpu_now() - start
        });
    });
}

/// The inner service for the tower benchmarks: answers at once, no allocation.
#[derive(Clone)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = ResilienceError<()>;
    type Future = std::future::Ready<Result<u64, ResilienceError<()>>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

/// The same for tower-resilience, whose breaker takes a plain error.
#[derive(Clone)]
struct PlainEcho;

impl Service<u64> for PlainEcho {
    type Response = u64;
    type Error = ();
    type Future = std::future::Ready<Result<u64, ()>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

fn tower_call<S: Service<u64>>(svc: &mut S, req: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("service not ready"),
    }
    poll_once(svc.call(req))
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new("bench", CircuitBreakerConfig::default()).unwrap()
}

fn tower_resilience_breaker()
-> impl Service<u64, Response = u64, Error = impl std::fmt::Debug> + Clone + Send + 'static {
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .build()
        .unwrap();
    layer.layer(PlainEcho)
}

fn ours_tower() -> impl Service<u64, Response = u64, Error = ResilienceError<()>> + Clone + Send {
    CircuitBreakerLayer::new(breaker()).layer(Echo)
}

fn dependency() -> Dependency {
    Dependency::new(
        "bench",
        DependencyConfig::for_kind(DependencyKind::Database),
        &ResilienceMetrics::unregistered(),
    )
    .unwrap()
}

/// Allocations per call of `f`, averaged over `n` calls after a warm-up.
fn allocs_per_call(n: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let region = Region::new(GLOBAL);
    for _ in 0..n {
        f();
    }
    region.change().allocations as f64 / n as f64
}

fn report_allocations(rt: &tokio::runtime::Runtime) {
    let _enter = rt.enter();
    let n = 100_000;
    let b = breaker();
    let mut ours = ours_tower();
    let mut theirs = tower_resilience_breaker();
    let bulkhead = Bulkhead::new("bench", BulkheadConfig::default()).unwrap();
    let retry = Retry::new("bench", RetryPolicy::default()).unwrap();
    let dep = dependency();
    let rows: Vec<(&str, f64)> = vec![
        (
            "bare call",
            allocs_per_call(n, || {
                let _ = black_box(poll_once(async { Ok::<_, ()>(black_box(1u64)) }).unwrap());
            }),
        ),
        (
            "breaker permit (try_acquire + record)",
            allocs_per_call(n, || {
                b.try_acquire().unwrap().record(black_box(Outcome::Success));
            }),
        ),
        (
            "breaker.call (plain async)",
            allocs_per_call(n, || {
                let _ = black_box(
                    poll_once(b.call(|| async { Ok::<_, ()>(black_box(1u64)) })).unwrap(),
                );
            }),
        ),
        (
            "arq CircuitBreakerService (tower)",
            allocs_per_call(n, || {
                let _ = black_box(tower_call(&mut ours, 1).unwrap());
            }),
        ),
        (
            "tower-resilience CircuitBreaker (tower)",
            allocs_per_call(n, || {
                let _ = black_box(tower_call(&mut theirs, 1).unwrap());
            }),
        ),
        (
            "bulkhead.call (plain async)",
            allocs_per_call(n, || {
                let _ =
                    black_box(poll_once(bulkhead.call(|| async { Ok::<_, ()>(1u64) })).unwrap());
            }),
        ),
        (
            "retry.call, success (plain async)",
            allocs_per_call(n, || {
                let _ = black_box(poll_once(retry.call(|| async { Ok::<_, ()>(1u64) })).unwrap());
            }),
        ),
        (
            "dependency.call: retry ⊃ breaker ⊃ bulkhead ⊃ timeout",
            allocs_per_call(n, || {
                let _ = black_box(poll_once(dep.call(|| async { Ok::<_, ()>(1u64) })).unwrap());
            }),
        ),
    ];
    println!("\nheap allocations per call (stats_alloc, {n} calls):");
    for (name, a) in rows {
        println!("  {name:<58} {a:.3}");
    }
    println!();
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut g = c.benchmark_group("resilience");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(40);

    bench_cpu(&mut g, "bare call", || {
        let _ = black_box(poll_once(async { Ok::<_, ()>(black_box(1u64)) }));
    });
    let b = breaker();
    bench_cpu(&mut g, "breaker permit (try_acquire + record)", || {
        b.try_acquire().unwrap().record(black_box(Outcome::Success));
    });
    bench_cpu(&mut g, "breaker.call (plain async)", || {
        let _ = black_box(poll_once(b.call(|| async { Ok::<_, ()>(black_box(1u64)) })));
    });
    let mut echo = Echo;
    bench_cpu(&mut g, "bare tower service", || {
        let _ = black_box(tower_call(&mut echo, black_box(1)));
    });
    let mut ours = ours_tower();
    bench_cpu(&mut g, "arq CircuitBreakerService (tower)", || {
        let _ = black_box(tower_call(&mut ours, black_box(1)));
    });
    let mut theirs = tower_resilience_breaker();
    bench_cpu(&mut g, "tower-resilience CircuitBreaker (tower)", || {
        let _ = black_box(tower_call(&mut theirs, black_box(1)));
    });
    let bulkhead = Bulkhead::new("bench", BulkheadConfig::default()).unwrap();
    bench_cpu(&mut g, "bulkhead.call (acquire + release)", || {
        let _ = black_box(poll_once(
            bulkhead.call(|| async { Ok::<_, ()>(black_box(1u64)) }),
        ));
    });
    let retry = Retry::new("bench", RetryPolicy::default()).unwrap();
    bench_cpu(&mut g, "retry.call (success path, with budget)", || {
        let _ = black_box(poll_once(
            retry.call(|| async { Ok::<_, ()>(black_box(1u64)) }),
        ));
    });
    let mut no_budget = RetryPolicy::default();
    no_budget.budget = None;
    let retry_nb = Retry::new("bench", no_budget).unwrap();
    bench_cpu(&mut g, "retry.call (success path, no budget)", || {
        let _ = black_box(poll_once(
            retry_nb.call(|| async { Ok::<_, ()>(black_box(1u64)) }),
        ));
    });
    let dep = dependency();
    bench_cpu(&mut g, "dependency.call (whole stack)", || {
        let _ = black_box(poll_once(
            dep.call(|| async { Ok::<_, ()>(black_box(1u64)) }),
        ));
    });
    g.finish();
}

/// Runs `iters` calls on each of `threads` threads at once; returns the largest CPU time a
/// thread spent, so time / iters is the per-call cost each thread paid (cache-line
/// contention shows up as CPU time; being descheduled does not).
fn contended<F>(threads: usize, iters: u64, f: F) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = cpu_now();
                for _ in 0..iters {
                    f();
                }
                cpu_now() - start
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap_or_default()
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("resilience-contention");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
    for threads in [1usize, 2] {
        let b = breaker();
        g.bench_function(format!("breaker permit, {threads} thread(s)"), |bch| {
            bch.iter_custom(|iters| {
                let b = b.clone();
                contended(threads, iters, move || {
                    b.try_acquire().unwrap().record(black_box(Outcome::Success));
                })
            });
        });
        let b = breaker();
        g.bench_function(format!("breaker.call, {threads} thread(s)"), |bch| {
            bch.iter_custom(|iters| {
                let b = b.clone();
                contended(threads, iters, move || {
                    black_box(
                        poll_once(b.call(|| async { Ok::<_, ()>(black_box(1u64)) })).unwrap(),
                    );
                })
            });
        });
        let theirs = tower_resilience_breaker();
        g.bench_function(format!("tower-resilience, {threads} thread(s)"), |bch| {
            bch.iter_custom(|iters| {
                // One clone per thread (tower services are `&mut`); they share the breaker.
                let proto = theirs.clone();
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let mut svc = proto.clone();
                        std::thread::spawn(move || {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .unwrap();
                            let _enter = rt.enter();
                            let t = cpu_now();
                            for _ in 0..iters {
                                let _ = black_box(tower_call(&mut svc, 1).unwrap());
                            }
                            cpu_now() - t
                        })
                    })
                    .collect();
                let slowest = handles.into_iter().map(|h| h.join().unwrap()).max();
                slowest.unwrap_or_default()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, single_thread, two_threads);

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    report_allocations(&rt);
    drop(rt);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
