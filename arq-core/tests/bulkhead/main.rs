//! Bulkhead: PITFALLS.md 20–21 on tokio's paused clock, plain and as a tower service, and a
//! 1 000-task contention test.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arq_core::metrics::MetricsRegistry;
use arq_core::resilience::{
    Bulkhead, BulkheadConfig, BulkheadLayer, BulkheadRejection, ResilienceError, ResilienceMetrics,
    TimeoutLayer,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn bulkhead(name: &str) -> Bulkhead {
    Bulkhead::new(name, BulkheadConfig::default()).unwrap()
}

/// Starts a call that holds its slot until `release` is notified.
fn hold(
    b: &Bulkhead,
    release: &Arc<Notify>,
) -> tokio::task::JoinHandle<Result<(), ResilienceError<()>>> {
    let (b, release) = (b.clone(), release.clone());
    tokio::spawn(async move {
        b.call(|| async move {
            release.notified().await;
            Ok(())
        })
        .await
    })
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

// 20
#[tokio::test(start_paused = true)]
async fn twenty_in_flight_a_hundred_waiting_the_121st_refused_at_once() {
    let registry = MetricsRegistry::new();
    let metrics = ResilienceMetrics::register(&registry).unwrap();
    let b = Bulkhead::with_metrics("reports-db", BulkheadConfig::default(), &metrics).unwrap();
    let release = Arc::new(Notify::new());
    let mut calls = Vec::new();
    for _ in 0..120 {
        calls.push(hold(&b, &release));
    }
    settle().await;
    assert_eq!(b.in_flight(), 20);
    assert_eq!(b.waiting(), 100);

    let start = Instant::now();
    let r = b.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not after a wait"
    );
    let Err(ResilienceError::BulkheadFull(e)) = r else {
        panic!("expected BulkheadFull")
    };
    assert_eq!(e.rejection(), BulkheadRejection::QueueFull);
    assert_eq!((e.max_concurrent(), e.max_waiting()), (20, 100));
    let msg = e.to_string();
    assert!(
        msg.contains("reports-db") && msg.contains("20") && msg.contains("100"),
        "{msg}"
    );
    let text = registry.encode();
    assert!(
        text.contains(r#"arq_bulkhead_in_flight{dependency="reports-db"} 20"#),
        "{text}"
    );
    assert!(
        text.contains(r#"arq_bulkhead_waiting{dependency="reports-db"} 100"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"arq_bulkhead_rejections_total{dependency="reports-db",outcome="queue_full"} 1"#
        ),
        "{text}"
    );
    // Let them all through (within max_wait) and check the slots all come back.
    for _ in 0..12 {
        release.notify_waiters();
        settle().await;
    }
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
    assert_eq!((b.in_flight(), b.waiting()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let mut c = BulkheadConfig::default();
    c.max_concurrent = 1;
    let b = Bulkhead::new("fifo", c).unwrap();
    let gate = b.acquire().await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (b, order) = (b.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let _p = b.acquire().await.unwrap();
            order.lock().unwrap().push(i);
        }));
        settle().await; // make arrival order deterministic
    }
    assert_eq!(b.waiting(), 10);
    drop(gate);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_times_out_at_max_wait() {
    let b = bulkhead("slow-db");
    let release = Arc::new(Notify::new());
    let holders: Vec<_> = (0..20).map(|_| hold(&b, &release)).collect();
    settle().await;
    let start = Instant::now();
    let r = b.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let Err(ResilienceError::BulkheadFull(e)) = r else {
        panic!("expected BulkheadFull")
    };
    assert_eq!(
        e.rejection(),
        BulkheadRejection::WaitTimedOut(Duration::from_secs(5))
    );
    assert!(e.to_string().contains("waited 5.000 s"), "{e}");
    assert_eq!(b.waiting(), 0);
    release.notify_waiters();
    for h in holders {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_wait_never_outlasts_the_deadline() {
    let b = bulkhead("db");
    let release = Arc::new(Notify::new());
    let _holders: Vec<_> = (0..20).map(|_| hold(&b, &release)).collect();
    settle().await;
    let start = Instant::now();
    let r = arq_core::resilience::Deadline::after(Duration::from_secs(1))
        .scope(b.call(|| async { Ok::<_, ()>(()) }))
        .await;
    assert!(matches!(r, Err(ResilienceError::BulkheadFull(_))));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

// 21
#[tokio::test(start_paused = true)]
async fn permits_are_released_on_success_error_panic_and_drop() {
    let b = bulkhead("db");
    let _ = b.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(b.in_flight(), 0);
    let _ = b.call(|| async { Err::<(), _>("boom") }).await;
    assert_eq!(b.in_flight(), 0);

    // Panic inside the call (in a task, so the test survives).
    let b2 = b.clone();
    let joined = tokio::spawn(async move {
        let _ = b2
            .call(|| async {
                if true {
                    panic!("handler bug");
                }
                Ok::<_, ()>(())
            })
            .await;
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(b.in_flight(), 0);

    // A call future dropped mid-flight.
    let (tx, rx) = oneshot::channel::<()>();
    let b3 = b.clone();
    let task = tokio::spawn(async move {
        b3.call(|| async move {
            let _ = rx.await;
            Ok::<_, ()>(())
        })
        .await
    });
    settle().await;
    assert_eq!(b.in_flight(), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(b.in_flight(), 0);
    drop(tx);

    // A waiting future dropped: its place in the queue is given back.
    let release = Arc::new(Notify::new());
    let holders: Vec<_> = (0..20).map(|_| hold(&b, &release)).collect();
    settle().await;
    let b4 = b.clone();
    let waiter = tokio::spawn(async move { b4.call(|| async { Ok::<_, ()>(()) }).await });
    settle().await;
    assert_eq!(b.waiting(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(b.waiting(), 0);
    release.notify_waiters();
    for h in holders {
        h.await.unwrap().unwrap();
    }
    assert_eq!(b.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn permits_are_released_through_the_tower_service_on_error_and_drop() {
    let b = bulkhead("api");
    let mut svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(b.clone()))
        .layer(TimeoutLayer::for_dependency("api", Duration::from_secs(1)))
        .service(service_fn(|fail: bool| async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                std::future::pending::<Result<(), std::io::Error>>().await
            }
        }));
    let r = svc.ready().await.unwrap().call(true).await;
    assert!(matches!(r, Err(ResilienceError::Inner(_))));
    assert_eq!(b.in_flight(), 0);
    // Times out (per-attempt timeout inside the bulkhead): the slot comes back.
    let r = svc.ready().await.unwrap().call(false).await;
    assert!(matches!(r, Err(ResilienceError::Timeout(_))));
    assert_eq!(b.in_flight(), 0);
    let mut fut = Box::pin(svc.ready().await.unwrap().call(false));
    assert!(futures_poll(&mut fut).await.is_none());
    assert_eq!(b.in_flight(), 1);
    drop(fut);
    assert_eq!(b.in_flight(), 0);
}

async fn futures_poll<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn saturating_dependency_a_leaves_b_alone() {
    let a = bulkhead("a");
    let b = bulkhead("b");
    let release = Arc::new(Notify::new());
    let held: Vec<_> = (0..120).map(|_| hold(&a, &release)).collect();
    settle().await;
    assert!(matches!(
        a.call(|| async { Ok::<_, ()>(()) }).await,
        Err(ResilienceError::BulkheadFull(_))
    ));
    let start = Instant::now();
    assert!(b.call(|| async { Ok::<_, ()>(()) }).await.is_ok());
    assert_eq!(start.elapsed(), Duration::ZERO);
    for _ in 0..12 {
        release.notify_waiters();
        settle().await;
    }
    for h in held {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_tasks_never_exceed_the_limits() {
    let mut c = BulkheadConfig::default();
    c.max_waiting = 1000;
    c.max_wait = Duration::from_secs(60);
    let b = Bulkhead::new("contended", c).unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (b, in_flight, peak, barrier) =
            (b.clone(), in_flight.clone(), peak.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            b.call(|| async {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, ()>(())
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap().is_ok());
    }
    assert_eq!(ok, 1000, "every call fits: 20 running + up to 980 waiting");
    assert!(
        peak.load(Ordering::SeqCst) <= 20,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!((b.in_flight(), b.waiting()), (0, 0));

    // With the default queue of 100, at most 120 are admitted at once; the rest are refused.
    let b = bulkhead("contended-2");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(1001));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (b, gate, barrier) = (b.clone(), gate.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            b.call(|| async move {
                let _ = gate.acquire().await;
                Ok::<_, ()>(())
            })
            .await
        }));
    }
    barrier.wait().await;
    // Wait until every task has either taken a slot, queued, or been refused.
    let refused = loop {
        let done = tasks.iter().filter(|t| t.is_finished()).count();
        if done + b.in_flight() + b.waiting() == 1000 && b.in_flight() == 20 {
            break done;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(b.waiting(), 100);
    assert_eq!(refused, 880);
    gate.add_permits(1000);
    for t in tasks {
        let _ = t.await.unwrap();
    }
    assert_eq!((b.in_flight(), b.waiting()), (0, 0));
}
