//! The breaker's closed path, the bulkhead and the retry success path allocate nothing per
//! call. Counted with `stats_alloc` as this binary's global allocator; one test only, so no
//! other test thread allocates while a region is measured.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use arq_core::resilience::{
    Bulkhead, BulkheadConfig, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    Dependency, DependencyConfig, DependencyKind, Outcome, ResilienceError, ResilienceMetrics,
    Retry, RetryPolicy,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("not ready"),
    }
}

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

/// Allocations made while running `f` 10 000 times. The counters are process-wide, and the
/// test harness's main thread may allocate while this test starts, so this takes the least
/// of five rounds: an allocation on the measured path shows up in every round.
fn allocations(mut f: impl FnMut()) -> usize {
    for _ in 0..200 {
        f(); // warm up: thread-locals, metric stripes
    }
    (0..5)
        .map(|_| {
            let region = Region::new(GLOBAL);
            for _ in 0..10_000 {
                f();
            }
            region.change().allocations
        })
        .min()
        .unwrap_or(usize::MAX)
}

#[test]
fn hot_paths_do_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();

    let b = CircuitBreaker::new("x", CircuitBreakerConfig::default()).unwrap();
    assert_eq!(
        allocations(|| b.try_acquire().unwrap().record(Outcome::Success)),
        0
    );
    assert_eq!(
        allocations(|| {
            poll_once(b.call(|| async { Ok::<_, ()>(1) })).unwrap();
        }),
        0
    );
    // A window that holds failures takes the recording path: still no allocation.
    let busy = CircuitBreaker::new("y", CircuitBreakerConfig::default()).unwrap();
    let mut i = 0u32;
    assert_eq!(
        allocations(|| {
            i += 1;
            let outcome = if i.is_multiple_of(10) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            busy.try_acquire().unwrap().record(outcome);
        }),
        0
    );
    let mut svc = CircuitBreakerLayer::new(b).layer(Echo);
    assert_eq!(
        allocations(|| {
            poll_once(svc.call(1)).unwrap();
        }),
        0
    );
    let bulkhead = Bulkhead::new("x", BulkheadConfig::default()).unwrap();
    assert_eq!(
        allocations(|| {
            poll_once(bulkhead.call(|| async { Ok::<_, ()>(1) })).unwrap();
        }),
        0
    );
    let retry = Retry::new("x", RetryPolicy::default()).unwrap();
    assert_eq!(
        allocations(|| {
            poll_once(retry.call(|| async { Ok::<_, ()>(1) })).unwrap();
        }),
        0
    );
    let dep = Dependency::new(
        "x",
        DependencyConfig::for_kind(DependencyKind::Database),
        &ResilienceMetrics::unregistered(),
    )
    .unwrap();
    assert_eq!(
        allocations(|| {
            poll_once(dep.call(|| async { Ok::<_, ()>(1) })).unwrap();
        }),
        0
    );
}
