//! Circuit breaker: PITFALLS.md 1–14, on tokio's paused clock, driving the state machine
//! directly and through the tower service.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arq_core::metrics::MetricsRegistry;
use arq_core::resilience::{
    AnyError, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Classify,
    Outcome, ResilienceError, ResilienceMetrics, RetryDecision, SlidingWindow,
};
use tokio::time::{Instant, advance};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn breaker(config: CircuitBreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new("dep", config).unwrap()
}

fn record(b: &CircuitBreaker, outcome: Outcome) {
    b.try_acquire().unwrap().record(outcome);
}

fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        record(b, Outcome::Failure);
    }
}

fn succeed(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        record(b, Outcome::Success);
    }
}

/// A breaker opened with the default configuration (20 failures).
fn opened() -> CircuitBreaker {
    let b = breaker(CircuitBreakerConfig::default());
    fail(&b, 20);
    assert_eq!(b.state(), CircuitState::Open);
    b
}

/// An opened breaker moved to half-open by the clock; the returned permit-less breaker is
/// half-open with both probe slots free.
async fn half_open() -> CircuitBreaker {
    let b = opened();
    advance(Duration::from_secs(30)).await;
    b
}

// 1
#[tokio::test(start_paused = true)]
async fn stays_closed_below_min_calls_even_at_100_percent_failure() {
    let b = breaker(CircuitBreakerConfig::default());
    fail(&b, 19);
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.snapshot().failures, 19);
    fail(&b, 1);
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_min_calls_through_the_tower_service() {
    let b = breaker(CircuitBreakerConfig::default());
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone()))
        .map_err(ResilienceError::Inner)
        .service(service_fn(|_: ()| async { Err::<(), _>("down") }));
    for _ in 0..19 {
        let r = svc.ready().await.unwrap().call(()).await;
        assert!(matches!(r, Err(ResilienceError::Inner("down"))));
    }
    assert_eq!(b.state(), CircuitState::Closed);
    let _ = svc.ready().await.unwrap().call(()).await;
    assert_eq!(b.state(), CircuitState::Open);
}

// 2
#[tokio::test(start_paused = true)]
async fn opens_at_exactly_50_percent_not_49() {
    let b = breaker(CircuitBreakerConfig::default());
    succeed(&b, 51);
    fail(&b, 49);
    let s = b.snapshot();
    assert_eq!((s.calls, s.failures), (100, 49));
    assert_eq!(b.state(), CircuitState::Closed, "49 % must not open");
    // The 101st call evicts the oldest success: 50 failures in 100.
    fail(&b, 1);
    assert_eq!(b.state(), CircuitState::Open, "50 % must open");
}

#[tokio::test(start_paused = true)]
async fn opens_on_the_call_that_reaches_min_calls_at_50_percent() {
    let b = breaker(CircuitBreakerConfig::default());
    fail(&b, 10);
    succeed(&b, 9);
    assert_eq!(b.state(), CircuitState::Closed);
    succeed(&b, 1); // 20 calls, 10 failures: exactly 50 %
    assert_eq!(b.state(), CircuitState::Open);
}

// 3
#[tokio::test(start_paused = true)]
async fn count_window_evicts_the_oldest_outcome() {
    let mut c = CircuitBreakerConfig::default();
    c.window = SlidingWindow::Count { size: 10 };
    c.min_calls = 10;
    let b = breaker(c);
    fail(&b, 4);
    succeed(&b, 6);
    assert_eq!(b.snapshot().failures, 4);
    // Each success now evicts one of the four failures, oldest first.
    succeed(&b, 3);
    assert_eq!(b.snapshot().failures, 1);
    assert_eq!(b.snapshot().calls, 10);
    // The oldest outcome is now the last old failure: replacing it changes nothing, the
    // next two replace successes.
    fail(&b, 3);
    assert_eq!(b.snapshot().failures, 3);
    fail(&b, 1); // 4 of 10
    assert_eq!(b.state(), CircuitState::Closed);
    fail(&b, 1); // 5 of 10
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_expires_buckets_after_the_window() {
    let mut c = CircuitBreakerConfig::default();
    c.window = SlidingWindow::Time {
        length: Duration::from_secs(60),
    };
    let b = breaker(c.clone());
    fail(&b, 10);
    advance(Duration::from_secs(61)).await;
    assert_eq!(b.snapshot().calls, 0, "the failures expired");
    succeed(&b, 10);
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.snapshot().failures, 0);

    // Inside the window they still count: 10 failures + 10 successes = 50 % at 20 calls.
    let b = breaker(c);
    fail(&b, 10);
    advance(Duration::from_secs(30)).await;
    succeed(&b, 10);
    assert_eq!(b.state(), CircuitState::Open);
}

// 4
#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips_independently_of_failure_rate() {
    let mut c = CircuitBreakerConfig::default();
    c.slow_call = Some((Duration::from_secs(1), 0.5));
    let b = breaker(c);
    for _ in 0..19 {
        let r: Result<(), ResilienceError<()>> = b
            .call(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(())
            })
            .await;
        assert!(r.is_ok());
    }
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.snapshot().failures, 0);
    assert_eq!(b.snapshot().slow_calls, 19);
    let _ = b
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(b.state(), CircuitState::Open, "all successes, but all slow");

    // Fast calls never trip it.
    let mut c = CircuitBreakerConfig::default();
    c.slow_call = Some((Duration::from_secs(1), 0.5));
    let b = breaker(c);
    for _ in 0..100 {
        let _ = b.call(|| async { Ok::<_, ()>(()) }).await;
    }
    assert_eq!(b.state(), CircuitState::Closed);
}

// 5
#[tokio::test(start_paused = true)]
async fn open_rejects_without_polling_the_inner_service() {
    let metrics_registry = MetricsRegistry::new();
    let metrics = ResilienceMetrics::register(&metrics_registry).unwrap();
    let b = CircuitBreaker::with_metrics("users-api", CircuitBreakerConfig::default(), &metrics)
        .unwrap();
    fail(&b, 20);
    advance(Duration::from_secs(10)).await;

    let called = Arc::new(AtomicUsize::new(0));
    let polled = Arc::new(AtomicUsize::new(0));
    let (c, p) = (called.clone(), polled.clone());
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone()))
        .map_err(ResilienceError::Inner)
        .service(service_fn(move |_: ()| {
            c.fetch_add(1, Ordering::SeqCst);
            let p = p.clone();
            async move {
                p.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(called.load(Ordering::SeqCst), 0);
    assert_eq!(polled.load(Ordering::SeqCst), 0);
    let ResilienceError::CircuitOpen(open) = &err else {
        panic!("expected CircuitOpen, got {err:?}")
    };
    assert_eq!(open.dependency(), "users-api");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
    assert_eq!(
        open.open_until(),
        Some(Instant::now() + Duration::from_secs(20))
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
    let msg = err.to_string();
    assert!(
        msg.contains("users-api") && msg.contains("20.000 s"),
        "{msg}"
    );
    assert!(
        metrics_registry
            .encode()
            .contains(r#"arq_circuit_breaker_rejections_total{dependency="users-api"} 1"#),
        "{}",
        metrics_registry.encode()
    );
}

// 6
#[tokio::test(start_paused = true)]
async fn open_becomes_half_open_only_after_30_s() {
    let b = opened();
    advance(Duration::from_millis(29_999)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), CircuitState::Open);
    advance(Duration::from_millis(1)).await;
    let probe = b.try_acquire().unwrap();
    assert_eq!(b.state(), CircuitState::HalfOpen);
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_with_consecutive_reopens() {
    let mut c = CircuitBreakerConfig::default();
    c.open_duration_multiplier = 2.0;
    c.max_open_duration = Duration::from_secs(100);
    let b = breaker(c);
    fail(&b, 20);
    advance(Duration::from_secs(30)).await;
    record(&b, Outcome::Failure); // probe fails: re-open #1 → 60 s
    advance(Duration::from_millis(59_999)).await;
    assert!(b.try_acquire().is_err());
    advance(Duration::from_millis(1)).await;
    record(&b, Outcome::Failure); // re-open #2 → 120 s, capped at 100 s
    advance(Duration::from_secs(100)).await;
    succeed(&b, 2);
    assert_eq!(b.state(), CircuitState::Closed);
    // Closing resets the growth.
    fail(&b, 20);
    advance(Duration::from_secs(30)).await;
    assert!(b.try_acquire().is_ok());
}

// 7
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_exactly_2_probes_under_contention() {
    let mut c = CircuitBreakerConfig::default();
    c.open_duration = Duration::ZERO;
    let b = breaker(c);
    fail(&b, 20);
    assert_eq!(b.state(), CircuitState::Open);

    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (b, barrier, admitted) = (b.clone(), barrier.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let permit = b.try_acquire();
            if permit.is_ok() {
                admitted.fetch_add(1, Ordering::SeqCst);
            }
            // Hold the probe until every task has tried.
            barrier.wait().await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 2);
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_peak_in_flight_stays_at_most_2_while_probes_come_and_go() {
    let mut c = CircuitBreakerConfig::default();
    c.open_duration = Duration::ZERO;
    let b = breaker(c);
    fail(&b, 20);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (b, in_flight, peak, admitted) =
            (b.clone(), in_flight.clone(), peak.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                if let Ok(permit) = b.try_acquire() {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    admitted.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    // No verdict (ignored): the slot goes back, the state stays half-open.
                    permit.record(Outcome::Ignored);
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(admitted.load(Ordering::SeqCst) >= 2);
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[test]
fn concurrent_recording_keeps_the_window_totals_exact() {
    let mut c = CircuitBreakerConfig::default();
    c.failure_rate_threshold = 1.0; // a 50 % mix never trips it
    let b = breaker(c);
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (b, barrier) = (b.clone(), barrier.clone());
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    let outcome = if (i + t) % 2 == 0 {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    b.try_acquire().unwrap().record(outcome);
                }
                barrier.wait();
                // Every slot is overwritten by a success: no failure may be left counted.
                for _ in 0..1_000 {
                    b.try_acquire().unwrap().record(Outcome::Success);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = b.snapshot();
    assert_eq!((s.calls, s.failures), (100, 0));
    assert_eq!(b.state(), CircuitState::Closed);
}

// 8
#[tokio::test(start_paused = true)]
async fn two_successes_close() {
    let b = half_open().await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err(), "a third probe is refused");
    p1.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    p2.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn success_then_failure_reopens() {
    let b = half_open().await;
    record(&b, Outcome::Success);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    record(&b, Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_first_reopens() {
    let b = half_open().await;
    record(&b, Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Open);
    // And it is a fresh 30 s open period.
    advance(Duration::from_millis(29_999)).await;
    assert!(b.try_acquire().is_err());
}

// 9
#[tokio::test(start_paused = true)]
async fn a_dropped_probe_releases_its_slot_without_recording() {
    let b = half_open().await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(p1);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    let p3 = b
        .try_acquire()
        .expect("the dropped probe's slot is free again");
    p2.record(Outcome::Success);
    p3.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_tower_probe_future_releases_its_slot() {
    let b = half_open().await;
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone()))
        .map_err(ResilienceError::Inner)
        .service(service_fn(|_: ()| async {
            std::future::pending::<Result<(), std::io::Error>>().await
        }));
    let f1 = svc.ready().await.unwrap().call(());
    let f2 = svc.ready().await.unwrap().call(());
    let f3 = svc.ready().await.unwrap().call(());
    assert!(matches!(f3.await, Err(ResilienceError::CircuitOpen(_))));
    drop(f1);
    drop(f2);
    // Both slots are free: two new probes are admitted.
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    drop((p1, p2));
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_cannot_wedge_half_open() {
    let b = half_open().await;
    let hung1 = b.try_acquire().unwrap();
    let hung2 = b.try_acquire().unwrap();
    advance(Duration::from_secs(59)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), CircuitState::HalfOpen);
    advance(Duration::from_secs(1)).await;
    // No verdict for 60 s: the breaker re-opens rather than waiting forever.
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), CircuitState::Open);
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    // The hung probes finally answer: they belong to an earlier half-open, so nothing moves.
    hung1.record(Outcome::Failure);
    hung2.record(Outcome::Failure);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    p1.record(Outcome::Success);
    p2.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
}

// 10
#[derive(Clone)]
struct IgnoreCancelled;

#[derive(Debug, PartialEq)]
enum CallError {
    Cancelled,
    Down,
}

impl<T> Classify<T, CallError> for IgnoreCancelled {
    fn outcome(&self, result: Result<&T, &CallError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(CallError::Cancelled) => Outcome::Ignored,
            Err(CallError::Down) => Outcome::Failure,
        }
    }
    fn retry(&self, _: Result<&T, &CallError>) -> RetryDecision {
        RetryDecision::Never
    }
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_release_the_half_open_permit() {
    let b = half_open().await;
    let hold = b.try_acquire().unwrap();
    for _ in 0..10 {
        let r = b
            .call_classified(&IgnoreCancelled, || async {
                Err::<(), _>(CallError::Cancelled)
            })
            .await;
        assert!(matches!(
            r,
            Err(ResilienceError::Inner(CallError::Cancelled))
        ));
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }
    // Ignored in closed state: not recorded either.
    hold.record(Outcome::Success);
    record(&b, Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
    for _ in 0..50 {
        let _ = b
            .call_classified(&IgnoreCancelled, || async {
                Err::<(), _>(CallError::Cancelled)
            })
            .await;
    }
    assert_eq!(b.snapshot().calls, 0);
    let _ = b
        .call_classified(&IgnoreCancelled, || async { Err::<(), _>(CallError::Down) })
        .await;
    assert_eq!(b.snapshot().failures, 1);
}

// 11
#[tokio::test(start_paused = true)]
async fn late_results_from_an_earlier_state_cause_no_transition_and_no_event() {
    let (events, _guard) = support::capture();
    let b = breaker(CircuitBreakerConfig::default());
    // Admitted while closed, answers after the breaker opened.
    let late: Vec<_> = (0..5).map(|_| b.try_acquire().unwrap()).collect();
    fail(&b, 20);
    assert_eq!(events.transitions().len(), 1);
    for p in late {
        p.record(Outcome::Failure);
    }
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(b.snapshot().calls, 0, "late results are not recorded");

    // Admitted while closed, answers after open → half-open: the probes are untouched.
    let b = breaker(CircuitBreakerConfig::default());
    let late = b.try_acquire().unwrap();
    fail(&b, 20);
    advance(Duration::from_secs(30)).await;
    let probe = b.try_acquire().unwrap();
    late.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    probe.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::HalfOpen, "one success of two");

    // A half-open probe answering after the breaker re-opened and half-opened again.
    let b = half_open().await;
    let old = b.try_acquire().unwrap();
    record(&b, Outcome::Failure); // re-open
    advance(Duration::from_secs(30)).await;
    let before = events.transitions().len();
    old.record(Outcome::Failure);
    assert_eq!(
        b.state(),
        CircuitState::Open,
        "not yet half-open: no call since"
    );
    assert_eq!(events.transitions().len(), before, "no duplicate event");
}

// 12
#[tokio::test(start_paused = true)]
async fn full_cycles() {
    let (events, _guard) = support::capture();
    let b = breaker(CircuitBreakerConfig::default());
    fail(&b, 20);
    advance(Duration::from_secs(30)).await;
    succeed(&b, 2);
    assert_eq!(b.state(), CircuitState::Closed);
    fail(&b, 20);
    advance(Duration::from_secs(30)).await;
    record(&b, Outcome::Failure);
    advance(Duration::from_secs(30)).await;
    succeed(&b, 2);
    assert_eq!(b.state(), CircuitState::Closed);
    let t: Vec<(String, String)> = events.transitions();
    let expected = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ];
    assert_eq!(
        t,
        expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let all = events.all();
    assert!(all.iter().all(|e| e.field("dependency") == Some("dep")));
}

// 13
#[tokio::test(start_paused = true)]
async fn one_event_per_transition_and_window_reset_on_close() {
    let (events, _guard) = support::capture();
    let registry = MetricsRegistry::new();
    let metrics = ResilienceMetrics::register(&registry).unwrap();
    let b =
        CircuitBreaker::with_metrics("orders", CircuitBreakerConfig::default(), &metrics).unwrap();
    succeed(&b, 30);
    // Opens once, at the first call reaching 50 %; the rest are refused.
    for _ in 0..50 {
        if let Ok(p) = b.try_acquire() {
            p.record(Outcome::Failure);
        }
    }
    assert_eq!(events.transitions(), vec![("closed".into(), "open".into())]);
    advance(Duration::from_secs(30)).await;
    succeed(&b, 2);
    assert_eq!(events.transitions().len(), 3);
    let s = b.snapshot();
    assert_eq!((s.calls, s.failures, s.failure_rate()), (0, 0, 0.0));
    let text = registry.encode();
    assert!(
        text.contains(r#"arq_circuit_breaker_state{dependency="orders"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"arq_circuit_breaker_transitions_total{dependency="orders",outcome="open"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"arq_circuit_breaker_calls_total{dependency="orders",outcome="failure"}"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_open_disabled_and_reset() {
    let b = breaker(CircuitBreakerConfig::default());
    b.force_open();
    assert_eq!(b.state(), CircuitState::ForcedOpen);
    advance(Duration::from_secs(3600)).await;
    let e = b.try_acquire().unwrap_err();
    assert_eq!(e.state(), CircuitState::ForcedOpen);
    assert!(e.to_string().contains("forced open"));
    b.disable();
    fail(&b, 1000);
    assert_eq!(b.state(), CircuitState::Disabled);
    assert_eq!(b.snapshot().calls, 0, "disabled records nothing");
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
    fail(&b, 20);
    assert_eq!(b.state(), CircuitState::Open);
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
    assert!(b.try_acquire().is_ok());
}

// 14
#[tokio::test(start_paused = true)]
async fn only_the_monotonic_clock_moves_the_breaker() {
    let mut c = CircuitBreakerConfig::default();
    c.open_duration = Duration::from_millis(10);
    let b = breaker(c);
    fail(&b, 20);
    // Real (wall and OS monotonic) time passes; tokio's clock does not: still open.
    std::thread::sleep(Duration::from_millis(30));
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), CircuitState::Open);
    advance(Duration::from_millis(10)).await;
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn state_is_shared_across_service_clones() {
    let b = breaker(CircuitBreakerConfig::default());
    let ok = Arc::new(AtomicBool::new(false));
    let o = ok.clone();
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone()))
        .map_err(ResilienceError::Inner)
        .service(service_fn(move |_: ()| {
            let ok = o.load(Ordering::SeqCst);
            async move { if ok { Ok(()) } else { Err("down") } }
        }));
    let mut a = svc.clone();
    for _ in 0..20 {
        let _ = a.ready().await.unwrap().call(()).await;
    }
    ok.store(true, Ordering::SeqCst);
    let mut other = svc.clone();
    let r = other.ready().await.unwrap().call(()).await;
    assert!(matches!(r, Err(ResilienceError::CircuitOpen(_))));
    assert_eq!(other.breaker().state(), CircuitState::Open);
}

#[test]
fn invalid_configuration_is_an_error_not_a_panic() {
    let mut c = CircuitBreakerConfig::default();
    c.failure_rate_threshold = 1.5;
    let e = CircuitBreaker::new("x", c).unwrap_err();
    assert!(e.to_string().contains("failure_rate_threshold"));
    let mut c = CircuitBreakerConfig::default();
    c.min_calls = 101;
    assert!(CircuitBreaker::new("x", c).is_err());
    let mut c = CircuitBreakerConfig::default();
    c.window = SlidingWindow::Count { size: 0 };
    assert!(CircuitBreaker::new("x", c).is_err());
    let _ = AnyError;
}
