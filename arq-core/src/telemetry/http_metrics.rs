//! `http_request_duration_seconds` and `http_requests_in_flight`, with handles resolved once
//! per route so recording a request is a hash lookup under a read lock plus a histogram update.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{MetricsError, MetricsRegistry};

/// The `route` label of requests that matched no route (a fixed value, so unknown paths cannot
/// grow the number of series).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Most distinct route labels kept; beyond this, requests are recorded under `other`.
const MAX_ROUTES: usize = 1024;

const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];
const METHOD_LABELS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    method: &'static str,
    route: String,
    status_class: &'static str,
}

/// Histogram handles of one route: one per method and status class, created on first use.
struct RouteHandles {
    label: Box<str>,
    cells: [[OnceLock<Histogram>; 5]; 8],
}

/// The HTTP server metrics. Clones share the handles.
#[derive(Clone)]
pub struct HttpMetrics {
    family: Family<Labels, Histogram, fn() -> Histogram>,
    routes: Arc<RwLock<RouteMap>>,
    /// `http_requests_in_flight`.
    pub(crate) in_flight: Gauge,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("in_flight", &self.in_flight.get())
            .finish_non_exhaustive()
    }
}

/// Metric handles by route template. foldhash, not SipHash: the keys are the templates of the
/// service's own router, and this lookup runs on every request.
type RouteMap = HashMap<Box<str>, Arc<RouteHandles>, foldhash::fast::RandomState>;

fn new_histogram() -> Histogram {
    // 1 ms to ~16 s, doubling: covers fast handlers and the 30 s timeout's neighbourhood.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl HttpMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let family: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_histogram);
        let in_flight = Gauge::default();
        registry.register(
            "http_request_duration_seconds",
            "Time from receiving a request to sending its response headers, by method, route template and status class",
            family.clone(),
        )?;
        registry.register(
            "http_requests_in_flight",
            "Requests being served right now",
            in_flight.clone(),
        )?;
        Ok(Self {
            family,
            routes: Arc::default(),
            in_flight,
        })
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    fn route(&self, route: &str) -> Arc<RouteHandles> {
        let read = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = read.get(route) {
            return Arc::clone(h);
        }
        let full = read.len() >= MAX_ROUTES;
        drop(read);
        let key = if full { "other" } else { route };
        let mut write = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(write.entry(key.into()).or_insert_with(|| {
            Arc::new(RouteHandles {
                label: key.into(),
                cells: Default::default(),
            })
        }))
    }

    /// Records one request.
    pub fn observe(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let m = METHODS.iter().position(|x| x == method).unwrap_or(7);
        let c = usize::from(status.as_u16() / 100).saturating_sub(1).min(4);
        let handles = self.route(route);
        let hist = handles.cells[m][c].get_or_init(|| {
            self.family
                .get_or_create(&Labels {
                    method: METHOD_LABELS[m],
                    route: handles.label.to_string(),
                    status_class: CLASSES[c],
                })
                .clone()
        });
        hist.observe(elapsed.as_secs_f64());
    }
}
