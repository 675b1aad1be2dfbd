//! The outer edge layers fused into one service: catch-panic, request id, sensitive-header
//! redaction, trace span + HTTP metrics, and the request timeout (in that order, outermost first).
//!
//! Why one service instead of five tower-http layers: each layer costs a future, a state
//! machine and, for the tower-http versions, allocations per request (UUID generation, a
//! `HeaderMap` per CORS call, a trace span with formatted fields). Measured here, a plain
//! tower-http stack cost about 6 µs of CPU per request (0.67× bare axum). This service does the
//! same work with one boxed future, a counter-based request id, and metric handles resolved once
//! per route. Semantics match the separate layers: a panic anywhere inside becomes a 500 problem
//! that still carries the request id, and the timeout fires inside the trace span so timed-out
//! requests are logged and measured.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, Request};
use tower_service::Service;
use tracing::Instrument;

use crate::telemetry::HttpMetrics;
use crate::{Problem, REQUEST_ID_HEADER, RequestId, TraceContext};

/// Settings of the fused outer layers.
#[derive(Debug, Clone)]
pub(crate) struct CoreSettings {
    pub(crate) request_timeout: Duration,
    pub(crate) stream_timeout: Duration,
    pub(crate) timeout_status: http::StatusCode,
    pub(crate) sensitive: Arc<[HeaderName]>,
    pub(crate) sampling_ratio: f64,
    pub(crate) metrics: HttpMetrics,
    /// The OTLP tracer server spans are started with, when export is on.
    #[cfg(feature = "otlp")]
    pub(crate) otlp: Option<opentelemetry_sdk::trace::Tracer>,
}

/// The fused outer service; see the module docs.
#[derive(Clone)]
pub(crate) struct Core<S> {
    inner: S,
    settings: Arc<CoreSettings>,
}

impl<S> Core<S> {
    pub(crate) fn new(inner: S, settings: Arc<CoreSettings>) -> Self {
        Self { inner, settings }
    }
}

/// Cheap request ids: a random per-process prefix and a counter, 25 visible ASCII characters
/// (`3f9c2a1be07d4c55-00000000000002a`). Unique across processes with overwhelming probability
/// and ordered within one, without the `getrandom` call a UUID v4/v7 costs per request.
pub(crate) fn next_request_id() -> RequestId {
    static PREFIX: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = PREFIX.get_or_init(|| {
        let mut raw = [0u8; 8];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut raw);
        let mut out = [0u8; 16];
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 15) as usize];
        }
        out
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 33];
    buf[..16].copy_from_slice(prefix);
    buf[16] = b'-';
    for i in 0..16 {
        buf[17 + i] = HEX[((n >> (60 - 4 * i)) & 15) as usize];
    }
    // Hex digits and '-' are always a valid request id, so the id-level validation is skipped.
    http::HeaderValue::from_bytes(&buf)
        .map(RequestId::from_generated)
        .unwrap_or_else(|_| RequestId::generate())
}

/// The request's trace context without OTLP export: the caller's trace with a new span id,
/// or a new trace sampled with probability `ratio`.
fn continue_trace(incoming: Option<TraceContext>, ratio: f64) -> TraceContext {
    match incoming {
        Some(incoming) => incoming.child(),
        None => TraceContext::new_root(sample(ratio)),
    }
}

fn sample(ratio: f64) -> bool {
    if ratio >= 1.0 {
        true
    } else if ratio <= 0.0 {
        false
    } else {
        rand::random::<f64>() < ratio
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Core<S>
where
    S: Service<Request<Body>, Response = http::Response<ResB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<axum::BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let start = Instant::now();
        let settings = Arc::clone(&self.settings);
        let (mut parts, body) = req.into_parts();

        // Request id: the caller's when valid, else a fresh one.
        let id = parts
            .headers
            .get(&REQUEST_ID_HEADER)
            .and_then(|v| RequestId::from_header_value(v).ok())
            .unwrap_or_else(next_request_id);

        // Redaction: mark sensitive headers so no Debug of the request, and no trace layer
        // inside, can show them.
        for (name, value) in parts.headers.iter_mut() {
            if settings.sensitive.contains(name) {
                value.set_sensitive(true);
            }
        }

        // Trace context: continue the caller's trace with a new span id, or start one.
        let incoming = TraceContext::extract(&parts.headers);
        #[cfg(feature = "otlp")]
        let (trace, otel) = match &settings.otlp {
            // The exported server span's ids and sampling decision become the request's.
            Some(tracer) => {
                let (trace, cx) = crate::telemetry::otlp::server_span(
                    tracer,
                    incoming.as_ref(),
                    &parts.method,
                    parts.uri.path(),
                );
                (trace, Some(cx))
            }
            None => (continue_trace(incoming, settings.sampling_ratio), None),
        };
        #[cfg(not(feature = "otlp"))]
        let trace = continue_trace(incoming, settings.sampling_ratio);
        let method = parts.method.clone();
        // At debug, like tower-http's TraceLayer: at info the ids reach log lines through the
        // task-locals (see telemetry/json.rs), which costs nothing per request.
        // With export on, the debug span is a child of the server span, not a second root.
        #[cfg(feature = "otlp")]
        let attached = otel.as_ref().map(|cx| cx.clone().attach());
        let span = tracing::debug_span!(
            "http_request",
            method = %method,
            route = tracing::field::Empty,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            request_id = %id,
            trace_id = %crate::telemetry::Hex(&trace.parent.trace_id()),
            span_id = %crate::telemetry::Hex(&trace.parent.parent_id()),
            tenant = tracing::field::Empty,
        );
        #[cfg(feature = "otlp")]
        drop(attached);
        #[cfg(feature = "otlp")]
        let server_span = otel.clone();
        let span_enabled = !span.is_disabled();
        parts.extensions.insert(id.clone());
        let context = crate::telemetry::RequestContext::new(trace);
        let req = Request::from_parts(parts, Body::new(body));

        settings.metrics.in_flight.inc();
        let in_flight = InFlight(Arc::clone(&settings));

        // Hand the instance that was driven ready to the future (tower's readiness contract);
        // it is called inside the request's task-local scope so routing can record the route.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let scoped_id = id.clone();
        let fut = async move {
            let _in_flight = in_flight;
            let call = std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req)));
            let outcome = match call {
                Ok(fut) => {
                    let timed = tokio::time::timeout(settings.request_timeout, fut);
                    match AssertUnwindSafe(timed).catch_unwind().await {
                        Ok(Ok(Ok(response))) => {
                            let deadline = start + settings.stream_timeout;
                            Outcome::Response(response.map(|body| {
                                Body::new(super::deadline::DeadlineBody::new(body, deadline))
                            }))
                        }
                        Ok(Ok(Err(never))) => match never {},
                        Ok(Err(_elapsed)) => Outcome::TimedOut,
                        Err(panic) => Outcome::Panicked(panic),
                    }
                }
                Err(panic) => Outcome::Panicked(panic),
            };
            let mut response = match outcome {
                Outcome::Response(response) => response,
                Outcome::TimedOut => {
                    tracing::warn!(
                        timeout_ms = settings.request_timeout.as_millis() as u64,
                        "request timed out"
                    );
                    Problem::new(settings.timeout_status)
                        .with_detail(format!(
                            "the request did not complete within {} ms",
                            settings.request_timeout.as_millis()
                        ))
                        .into_response()
                }
                Outcome::Panicked(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %message, "handler panicked");
                    Problem::new(http::StatusCode::INTERNAL_SERVER_ERROR)
                        .with_detail(
                            "an internal error occurred; quote the request id when reporting it",
                        )
                        .into_response()
                }
            };
            let status = response.status();
            let route = crate::telemetry::current_route();
            let route_str = route
                .as_ref()
                .map_or(crate::telemetry::UNMATCHED_ROUTE, MatchedPath::as_str);
            let elapsed = start.elapsed();
            settings
                .metrics
                .observe(&method, route_str, status, elapsed);
            #[cfg(feature = "otlp")]
            if let Some(cx) = &server_span {
                crate::telemetry::otlp::end_server_span(cx, &method, route_str, status);
            }
            if span_enabled {
                let span = tracing::Span::current();
                span.record("route", route_str);
                span.record("status", status.as_u16());
                span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
                tracing::debug!("request completed");
            }
            let headers = response.headers_mut();
            headers.insert(REQUEST_ID_HEADER, scoped_id.header_value().clone());
            for (name, value) in headers.iter_mut() {
                if settings.sensitive.contains(name) {
                    value.set_sensitive(true);
                }
            }
            Ok(response)
        };
        // The request's future is boxed before the task-local wrappers go around it: an
        // `async fn` wrapper moves its argument on first poll, and moving a few KB of nested
        // futures per request cost more than this second allocation.
        let fut: BoxFuture = Box::pin(fut.instrument(span));
        #[cfg(feature = "otlp")]
        let fut: BoxFuture = match otel {
            // Attached on every poll, so `tracing` spans opened inside become its children.
            Some(cx) => Box::pin(opentelemetry::context::FutureExt::with_context(fut, cx)),
            None => fut,
        };
        Box::pin(id.scope(context.scope(fut)))
    }
}

/// Decrements the in-flight gauge however the request ends (completed, panicked or dropped
/// because the client went away).
struct InFlight(Arc<CoreSettings>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

enum Outcome {
    Response(http::Response<Body>),
    TimedOut,
    Panicked(Box<dyn std::any::Any + Send>),
}
