//! Per-route, per-upstream metrics: `arq_gateway_upstream_duration_seconds` (time to the
//! upstream's response headers, by route, upstream and status class; `error` when no response
//! came). Breaker state, bulkhead and retry counts are the resilience metrics of the route's
//! dependency (named after the route).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{MetricsError, MetricsRegistry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    route: String,
    upstream: String,
    status_class: &'static str,
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The gateway's metric family.
#[derive(Clone, Debug)]
pub(crate) struct GatewayMetrics {
    family: Family<Labels, Histogram, fn() -> Histogram>,
}

impl GatewayMetrics {
    pub(crate) fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let family: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            });
        registry.register(
            "arq_gateway_upstream_duration_seconds",
            "Time to the upstream's response headers, by route, upstream and status class (error: no response)",
            family.clone(),
        )?;
        Ok(Self { family })
    }

    /// The handles of one route, resolved once so a request costs no label lookup.
    pub(crate) fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            cells: CLASSES.map(|class| {
                self.family
                    .get_or_create(&Labels {
                        route: route.to_owned(),
                        upstream: upstream.to_owned(),
                        status_class: class,
                    })
                    .clone()
            }),
        }
    }
}

/// One route's histograms, by status class.
#[derive(Clone, Debug)]
pub(crate) struct RouteMetrics {
    cells: [Histogram; 6],
}

impl RouteMetrics {
    /// Records one upstream call: `status` is `None` when no response came.
    pub(crate) fn observe(&self, status: Option<http::StatusCode>, secs: f64) {
        let i = status.map_or(5, |s| usize::from(s.as_u16() / 100).clamp(1, 5) - 1);
        self.cells[i].observe(secs);
    }
}
