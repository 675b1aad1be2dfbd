//! In-process cost of the edge stack per request: the same hello router called through
//! `oneshot`, bare and behind the stack (no sockets, so the machine's noise matters less than
//! with wrk; the wrk comparison is `edge_http`).
//!
//! Instruction counts, repeatable on a loaded machine: with `ARQ_ONESHOT=bare|arq` and
//! `ARQ_ONESHOT_ITERS=n` the binary skips criterion and runs `n` requests, with JSON logging
//! at info installed as in production. Run it under callgrind twice with different `n`; the
//! difference divided by the difference in `n` is the per-request cost without set-up
//! (`arq-core/benches/edge_callgrind.sh` does this).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark code"
)]

use std::hint::black_box;
use std::time::Duration;

use arq_core::config::ArqConfig;
use arq_core::edge::EdgeStack;
use arq_core::metrics::MetricsRegistry;
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn router() -> Router {
    Router::new().route("/hello", get(|| async { "hello, world\n" }))
}

fn req() -> Request<Body> {
    Request::get("/hello").body(Body::empty()).unwrap()
}

fn edge(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("hello_oneshot");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let bare = router();
    g.bench_function("bare_axum", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = bare.clone().oneshot(req()).await.unwrap();
                black_box(r.into_body().collect().await.unwrap());
            });
        });
    });
    let svc = EdgeStack::from_config(&ArqConfig::default(), &MetricsRegistry::new())
        .unwrap()
        .wrap(router());
    g.bench_function("arq_edge_stack", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = svc.clone().oneshot(req()).await.unwrap();
                black_box(r.into_body().collect().await.unwrap());
            });
        });
    });
    g.finish();
}

criterion_group!(benches, edge);

fn main() {
    if let (Ok(which), Ok(iters)) = (
        std::env::var("ARQ_ONESHOT"),
        std::env::var("ARQ_ONESHOT_ITERS"),
    ) {
        fixed(&which, iters.parse().unwrap());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// `iters` requests through `which` (`bare` or `arq`), for instruction counting.
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
    let svc = match which {
        "bare" => tower::util::BoxCloneService::new(router()),
        "arq" => tower::util::BoxCloneService::new(
            EdgeStack::from_config(&ArqConfig::default(), &MetricsRegistry::new())
                .unwrap()
                .wrap(router()),
        ),
        other => panic!("ARQ_ONESHOT must be bare or arq, not {other:?}"),
    };
    rt.block_on(async {
        for _ in 0..iters {
            let r = svc.clone().oneshot(req()).await.unwrap();
            black_box(r.into_body().collect().await.unwrap());
        }
    });
}
