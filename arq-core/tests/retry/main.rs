//! Retry: PITFALLS.md 15–19 on tokio's paused clock, plain and as a tower service, plus
//! property tests for the backoff delays.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arq_core::resilience::{
    Backoff, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Classify, Deadline,
    Dependency, DependencyConfig, DependencyKind, HttpClassifier, Idempotency, Idempotent, Outcome,
    ResilienceError, ResilienceMetrics, Retry, RetryBudget, RetryDecision, RetryLayer, RetryPolicy,
    RetryRequest, TimeoutLayer,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn retry(policy: RetryPolicy) -> Retry {
    Retry::new("dep", policy).unwrap()
}

fn no_budget() -> RetryPolicy {
    let mut p = RetryPolicy::default();
    p.budget = None;
    p
}

#[derive(Debug, Clone)]
struct Req;

impl RetryRequest for Req {
    fn is_idempotent(&self) -> bool {
        true
    }
    fn try_clone(&self) -> Option<Self> {
        Some(Req)
    }
}

// 15
#[tokio::test(start_paused = true)]
async fn exactly_three_attempts_in_total() {
    let r = retry(no_budget());
    let calls = AtomicU32::new(0);
    let out: Result<(), _> = r
        .call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("down")
        })
        .await;
    assert!(matches!(out, Err(ResilienceError::Inner("down"))));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn exactly_three_attempts_through_the_tower_service() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(no_budget())))
        .layer(TimeoutLayer::for_dependency("dep", Duration::from_secs(1)))
        .service(service_fn(move |_: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(std::io::Error::other("down")) }
        }));
    let r = svc.ready().await.unwrap().call(Req).await;
    assert!(matches!(r, Err(ResilienceError::Inner(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[derive(Clone)]
struct NeverRetry;
impl<T, E> Classify<T, E> for NeverRetry {
    fn outcome(&self, r: Result<&T, &E>) -> Outcome {
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
    fn retry(&self, _: Result<&T, &E>) -> RetryDecision {
        RetryDecision::Never
    }
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_are_not_retried() {
    let r = retry(no_budget());
    let calls = AtomicU32::new(0);
    let _ = r
        .call_with(Idempotency::Idempotent, &NeverRetry, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("invalid")
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_not_retried() {
    let breaker = CircuitBreaker::new("dep", CircuitBreakerConfig::default()).unwrap();
    breaker.force_open();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(no_budget())))
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .layer(TimeoutLayer::for_dependency("dep", Duration::from_secs(1)))
        .service(service_fn(move |_: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        }));
    let start = Instant::now();
    let r = svc.ready().await.unwrap().call(Req).await;
    assert!(matches!(r, Err(ResilienceError::CircuitOpen(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff sleep either");

    // The same through a whole dependency stack, plain call.
    let dep = Dependency::new(
        "stock",
        DependencyConfig::for_kind(DependencyKind::Database),
        &ResilienceMetrics::unregistered(),
    )
    .unwrap();
    dep.breaker().force_open();
    let n = AtomicU32::new(0);
    let r = dep
        .call(|| async {
            n.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(matches!(r, Err(ResilienceError::CircuitOpen(_))));
    assert_eq!(n.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_retried_but_an_expired_deadline_is_not() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(no_budget())))
        .layer(TimeoutLayer::for_dependency("slow", Duration::from_secs(1)))
        .service(service_fn(move |_: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, std::io::Error>(())
            }
        }));
    let r = svc.ready().await.unwrap().call(Req).await;
    assert!(matches!(&r, Err(ResilienceError::Timeout(t)) if !t.is_deadline()));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    calls.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let r = Deadline::after(Duration::from_millis(500))
        .scope(svc.ready().await.unwrap().call(Req))
        .await;
    assert!(matches!(&r, Err(ResilienceError::Timeout(t)) if t.is_deadline()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

// 16
proptest! {
    #[test]
    fn every_delay_lies_within_zero_and_the_capped_ceiling(
        base_ms in 1u64..10_000,
        n in 0u32..200,
        seed in any::<u64>(),
    ) {
        let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_secs(30));
        let ceiling = b.ceiling(n);
        let exact = Duration::from_millis(base_ms)
            .checked_mul(2u32.checked_pow(n).unwrap_or(u32::MAX))
            .map_or(Duration::from_secs(30), |d| d.min(Duration::from_secs(30)));
        prop_assert_eq!(ceiling, if n >= 32 { Duration::from_secs(30) } else { exact });
        prop_assert!(ceiling <= Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..20 {
            let d = b.delay_with(n, &mut rng);
            prop_assert!(d <= ceiling, "{:?} > {:?}", d, ceiling);
        }
    }

    #[test]
    fn delays_at_the_cap_stay_spread_over_the_whole_range(n in 9u32..1_000, seed in any::<u64>()) {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(seed);
        let delays: Vec<Duration> = (0..400).map(|_| b.delay_with(n, &mut rng)).collect();
        let cap = Duration::from_secs(30);
        let below_tenth = delays.iter().filter(|d| **d < cap / 10).count();
        let above_nine_tenths = delays.iter().filter(|d| **d > cap * 9 / 10).count();
        // Uniform over [0, 30 s]: about 40 of 400 in each tail; never all at the cap.
        prop_assert!(below_tenth >= 10, "only {} delays below 3 s", below_tenth);
        prop_assert!(above_nine_tenths >= 10, "only {} delays above 27 s", above_nine_tenths);
        prop_assert!(delays.iter().all(|d| *d <= cap));
        prop_assert_eq!(b.ceiling(n), cap, "100 ms · 2^9 is past the cap already");
        let mut distinct = delays;
        distinct.sort();
        distinct.dedup();
        prop_assert!(distinct.len() > 390);
    }
}

#[tokio::test(start_paused = true)]
async fn the_sleeps_between_attempts_follow_the_backoff() {
    let mut p = no_budget();
    p.max_attempts = 5;
    let r = retry(p);
    let stamps = std::sync::Mutex::new(Vec::new());
    let _ = r
        .call(|| async {
            stamps.lock().unwrap().push(Instant::now());
            Err::<(), _>("down")
        })
        .await;
    let s = stamps.into_inner().unwrap();
    assert_eq!(s.len(), 5);
    for (n, w) in s.windows(2).enumerate() {
        let gap = w[1] - w[0];
        assert!(
            gap <= Duration::from_millis(100) * 2u32.pow(n as u32),
            "gap {n}: {gap:?}"
        );
    }
}

// 17
#[derive(Clone)]
struct AskToWait(Duration);
impl<T, E> Classify<T, E> for AskToWait {
    fn outcome(&self, _: Result<&T, &E>) -> Outcome {
        Outcome::Failure
    }
    fn retry(&self, r: Result<&T, &E>) -> RetryDecision {
        if r.is_ok() {
            RetryDecision::Never
        } else {
            RetryDecision::After(self.0)
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_clamped() {
    let r = retry(no_budget());
    let stamps = std::sync::Mutex::new(Vec::new());
    let _ = r
        .call_with(
            Idempotency::Idempotent,
            &AskToWait(Duration::from_secs(7)),
            || async {
                stamps.lock().unwrap().push(Instant::now());
                Err::<(), _>("busy")
            },
        )
        .await;
    let s = stamps.into_inner().unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[1] - s[0], Duration::from_secs(7));
    assert_eq!(s[2] - s[1], Duration::from_secs(7));

    // Ten minutes is clamped to max_retry_after (30 s).
    let stamps = std::sync::Mutex::new(Vec::new());
    let _ = r
        .call_with(
            Idempotency::Idempotent,
            &AskToWait(Duration::from_secs(600)),
            || async {
                stamps.lock().unwrap().push(Instant::now());
                Err::<(), _>("busy")
            },
        )
        .await;
    let s = stamps.into_inner().unwrap();
    assert_eq!(s[1] - s[0], Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn http_503_retry_after_through_the_tower_stack() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(no_budget())).with_classifier(HttpClassifier))
        .layer(TimeoutLayer::for_dependency("api", Duration::from_secs(30)))
        .service(service_fn(move |_: http::Request<String>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                let status = if n == 0 { 503 } else { 200 };
                Ok::<_, std::io::Error>(
                    http::Response::builder()
                        .status(status)
                        .header("retry-after", "4")
                        .body(())
                        .unwrap(),
                )
            }
        }));
    let start = Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::get("/x").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn never_sleeps_past_the_overall_deadline() {
    let r = retry(no_budget());
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    // Retry-After 7 s but only 5 s left: no retry at all.
    let _ = Deadline::after(Duration::from_secs(5))
        .scope(r.call_with(
            Idempotency::Idempotent,
            &AskToWait(Duration::from_secs(7)),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("busy")
            },
        ))
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // Backoff ceilings of 10 s and 20 s with a 3 s deadline: every sleep ends before it.
    let mut p = no_budget();
    p.backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(30));
    let r = retry(p);
    for _ in 0..50 {
        let start = Instant::now();
        let _ = Deadline::after(Duration::from_secs(3))
            .scope(r.call(|| async { Err::<(), _>("down") }))
            .await;
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}

// 18
#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_cloned_or_is_not_idempotent_is_sent_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner = service_fn(move |_: http::Request<axum::body::Body>| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(std::io::Error::other("down")) }
    });
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(no_budget())))
        .layer(TimeoutLayer::for_dependency("api", Duration::from_secs(1)))
        .service(inner);
    // A GET with a streaming body: idempotent, but cannot be replayed.
    let req = http::Request::get("/x")
        .body(axum::body::Body::from("x"))
        .unwrap();
    let _ = svc.ready().await.unwrap().call(req).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(no_budget())))
        .layer(TimeoutLayer::for_dependency("api", Duration::from_secs(1)))
        .service(service_fn(move |_: http::Request<String>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(std::io::Error::other("down")) }
        }));
    // A POST: not idempotent.
    let post = http::Request::post("/pay").body("{}".to_owned()).unwrap();
    let _ = svc.ready().await.unwrap().call(post).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A POST explicitly marked idempotent: retried.
    let mut marked = http::Request::post("/pay").body("{}".to_owned()).unwrap();
    marked.extensions_mut().insert(Idempotent);
    let _ = svc.ready().await.unwrap().call(marked).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // Plain calls: NotIdempotent runs once.
    let r = retry(no_budget());
    let n = AtomicU32::new(0);
    let _ = r
        .call_with(
            Idempotency::NotIdempotent,
            &arq_core::resilience::AnyError,
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            },
        )
        .await;
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

// 19
#[tokio::test(start_paused = true)]
async fn at_100_percent_failure_retries_stay_within_the_budget() {
    let mut p = RetryPolicy::default();
    p.backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
    let mut budget = RetryBudget::default();
    budget.ratio = 0.2;
    budget.min_per_second = 1;
    budget.ttl = Duration::from_secs(10);
    p.budget = Some(budget);
    let r = retry(p);
    let calls = AtomicU32::new(0);
    for _ in 0..1000 {
        let _ = r
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            })
            .await;
    }
    let retries = calls.load(Ordering::SeqCst) - 1000;
    // 20 % of 1 000 calls plus the floor (1/s over a 10 s window): at most 210, where an
    // unbudgeted retry would have made 2 000.
    assert!(retries <= 210, "{retries} retries");
    assert!(
        retries >= 150,
        "the budget should allow its share: {retries}"
    );
}
