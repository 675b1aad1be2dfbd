//! Telemetry: JSON logs, the HTTP metrics and `/metrics`, and trace-context helpers.
//!
//! - [`init`] installs a tracing-subscriber that writes one JSON object per line with the
//!   timestamp, level, target, message and fields, and — read from the task the event happens
//!   in — `request_id`, `trace_id`, `span_id`, and `tenant` once [`record_tenant`] was called.
//!   With `debug` enabled, the per-request span (method, route template, status, latency) is
//!   there too, under `span`, and a `request completed` line closes each request.
//! - [`HttpMetrics`] holds `http_request_duration_seconds` (labels `method`, `route` — the
//!   matched template, never the raw path — and `status_class`) and `http_requests_in_flight`.
//! - [`metrics_router`] serves a [`MetricsRegistry`] at `/metrics`.
//!
//! W3C trace context: the edge stack extracts `traceparent`/`tracestate`, continues the trace
//! with a new span id and puts the [`TraceContext`](crate::TraceContext) in the request
//! extensions; [`crate::client`] injects its child into outbound calls.

mod context;
mod http_metrics;
mod json;
#[cfg(feature = "otlp")]
pub mod otlp;

use std::fmt;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderValue, header};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use context::{RequestContext, current_tenant, current_trace};
pub(crate) use context::{current_route, set_route};
pub use http_metrics::{HttpMetrics, UNMATCHED_ROUTE};

use crate::config::{LogFormat, TelemetryConfig};
use crate::metrics::{MetricsRegistry, OPENMETRICS_CONTENT_TYPE};

/// Lowercase hex of a byte string, formatted without allocating (for span fields).
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The log filter is not valid (config validation normally catches this first).
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter {
        /// The filter text.
        filter: String,
        /// Why it was refused.
        reason: String,
    },
    /// A global subscriber is already installed (call `init` once, in `main`).
    #[error("a global tracing subscriber is already installed; call telemetry::init once, in main")]
    AlreadyInstalled,
    /// The OTLP exporter could not be set up or could not send.
    #[error("OTLP export: {0}")]
    Otlp(String),
}

/// The subscriber extra layers are stacked on: the registry behind the log filter.
pub(crate) type BaseSubscriber =
    tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;

/// A layer stacked between the filter and the log formatter (the OTLP span exporter).
pub(crate) type ExtraLayer = Box<dyn tracing_subscriber::Layer<BaseSubscriber> + Send + Sync>;

/// Installs the global tracing subscriber from `[telemetry]`: JSON lines (or pretty text) on
/// stdout, filtered by `log_level` (`RUST_LOG` overrides it when set).
pub fn init(config: &TelemetryConfig) -> Result<(), TelemetryError> {
    install(config, None)
}

pub(crate) fn install(
    config: &TelemetryConfig,
    extra: Option<ExtraLayer>,
) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => config.log_level.clone(),
    };
    let filter = EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| TelemetryError::Filter {
            filter: filter.clone(),
            reason: e.to_string(),
        })?;
    let registry = tracing_subscriber::registry().with(filter).with(extra);
    let result = match config.log_format {
        LogFormat::Json => registry.with(json_layer(std::io::stdout)).try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_target(true))
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The JSON formatting layer [`init`] installs, writing to `make_writer` (tests capture it).
pub fn json_layer<S, W>(make_writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(json::ArqJson)
        .with_writer(make_writer)
}

/// Records the tenant of the current request: on its span, so every later log line carries
/// it, and in the request context, so outbound calls send it. Tenant-resolution layers call this
/// once they know the tenant.
pub fn record_tenant(tenant: &crate::TenantId) {
    tracing::Span::current().record("tenant", tracing::field::display(tenant));
    context::set_tenant(*tenant);
}

/// A router serving `registry` at `GET /metrics` in the OpenMetrics text format.
///
/// # Example
/// ```
/// use arq_core::metrics::MetricsRegistry;
/// use arq_core::telemetry::metrics_router;
///
/// let app: axum::Router = axum::Router::new().merge(metrics_router(MetricsRegistry::new()));
/// ```
pub fn metrics_router(registry: MetricsRegistry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                    )],
                    registry.encode(),
                )
                    .into_response()
            }
        }),
    )
}
