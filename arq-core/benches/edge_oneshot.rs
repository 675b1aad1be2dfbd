//! In-process cost of the edge stack per request: the same hello router called through
//! `oneshot`, bare and behind the stack (no sockets, so the machine's noise matters less than
//! with wrk; the wrk comparison is `edge_http`).
#![allow(missing_docs, clippy::unwrap_used, reason = "benchmark code")]

use std::hint::black_box;
use std::time::Duration;

use arq_core::config::ArqConfig;
use arq_core::edge::EdgeStack;
use arq_core::metrics::MetricsRegistry;
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
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
criterion_main!(benches);
