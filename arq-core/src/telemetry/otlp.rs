//! OpenTelemetry export over OTLP/HTTP protobuf (feature `otlp`).
//!
//! [`Otlp`] owns a tracer provider with a batch exporter and a parent-based ratio sampler:
//! a request whose caller sent a `traceparent` follows the caller's sampled flag; a request
//! that starts a trace is sampled with probability `sampling_ratio` (decided from the trace
//! id, so every service makes the same decision for the same trace).
//!
//! The edge stack starts one server span per request through it, named
//! `"{method} {route template}"`, with `http.request.method`, `url.path`, `http.route` and
//! `http.response.status_code`. The span's ids *are* the request's
//! [`TraceContext`]: the trace id is the caller's (or a new one), the span
//! id is what log lines show as `span_id` and what the outbound client sends as the parent of
//! downstream calls, and the sampled flag sent downstream is the sampler's decision. `tracing`
//! spans opened while the request is served become children of the server span when
//! [`Otlp::layer`] is installed (as [`init_with_otlp`] does).
//!
//! The exporter sends through arq's own hyper + rustls stack (no second HTTP client), driven
//! on the tokio runtime the [`Otlp`] was created in.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};

use super::TelemetryError;
use crate::config::TelemetryConfig;
use crate::{TraceContext, TraceParent};

/// The path OTLP/HTTP receivers take traces on.
pub const TRACES_PATH: &str = "/v1/traces";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// An installed OTLP trace pipeline. Cheap to clone; clones share the provider.
///
/// Call [`Otlp::shutdown`] before the process exits so buffered spans are sent.
///
/// # Example
/// ```no_run
/// use arq_core::telemetry::otlp::Otlp;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let otlp = Otlp::new("http://otel-collector:4318", "billing", 0.01)?;
/// // … serve with `EdgeStack::from_config(..)?.otlp(&otlp)` …
/// otlp.shutdown()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Otlp {
    provider: SdkTracerProvider,
    tracer: Tracer,
    ratio: f64,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("sampling_ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}

fn otlp_error(e: impl std::fmt::Display) -> TelemetryError {
    TelemetryError::Otlp(e.to_string())
}

impl Otlp {
    /// The pipeline `[telemetry]` asks for: `None` when `otlp_endpoint` is unset.
    pub fn from_config(config: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
        match &config.otlp_endpoint {
            None => Ok(None),
            Some(endpoint) => {
                Self::new(endpoint, &config.service_name, config.sampling_ratio).map(Some)
            }
        }
    }

    /// A pipeline exporting to the OTLP/HTTP receiver at `endpoint` (its base URL, like
    /// `http://collector:4318`; [`TRACES_PATH`] is appended unless already there), as
    /// service `service_name`, sampling `sampling_ratio` (0.0 to 1.0) of new traces.
    ///
    /// Must be called inside a tokio runtime: exports run on it.
    pub fn new(
        endpoint: &str,
        service_name: &str,
        sampling_ratio: f64,
    ) -> Result<Self, TelemetryError> {
        if !(0.0..=1.0).contains(&sampling_ratio) {
            return Err(otlp_error(format_args!(
                "the sampling ratio must be between 0.0 and 1.0, found {sampling_ratio}"
            )));
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| otlp_error("the OTLP exporter must be created inside a tokio runtime"))?;
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with(TRACES_PATH) {
            base.to_owned()
        } else {
            format!("{base}{TRACES_PATH}")
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HyperClient::new(handle)?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(otlp_error)?;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sampling_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("arq-core");
        Ok(Self {
            provider,
            tracer,
            ratio: sampling_ratio,
        })
    }

    /// The tracer spans are created with.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// A tracing-subscriber layer exporting `tracing` spans through this pipeline.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// Sends every finished span now and waits for the receiver's answer.
    ///
    /// Blocks the calling thread: from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn force_flush(&self) -> Result<(), TelemetryError> {
        self.provider.force_flush().map_err(otlp_error)
    }

    /// Sends what is buffered and stops exporting. Blocks like [`Otlp::force_flush`].
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        self.provider.shutdown().map_err(otlp_error)
    }
}

static INSTALLED: OnceLock<Otlp> = OnceLock::new();

/// The pipeline [`init_with_otlp`] installed, which
/// [`EdgeStack::from_config`](crate::edge::EdgeStack::from_config) uses.
pub fn installed() -> Option<&'static Otlp> {
    INSTALLED.get()
}

/// [`init`](super::init) plus, when `otlp_endpoint` is set, the OTLP pipeline: `tracing`
/// spans are exported through it and edge stacks built afterwards start a server span per
/// request. Returns the pipeline so `main` can [`shutdown`](Otlp::shutdown) it.
///
/// Must be called inside a tokio runtime.
pub fn init_with_otlp(config: &TelemetryConfig) -> Result<Option<Otlp>, TelemetryError> {
    let Some(otlp) = Otlp::from_config(config)? else {
        super::init(config)?;
        return Ok(None);
    };
    super::install(config, Some(Box::new(otlp.layer())))?;
    // Only one pipeline per process: `install` has already refused a second subscriber.
    let _ = INSTALLED.set(otlp.clone());
    Ok(Some(otlp))
}

/// The server span of one request and the request's trace context, which carries the span's
/// ids and the sampler's decision.
pub(crate) fn server_span(
    tracer: &Tracer,
    incoming: Option<&TraceContext>,
    method: &http::Method,
    path: &str,
) -> (TraceContext, Context) {
    let parent = match incoming {
        Some(tc) => {
            let state = if tc.state.is_empty() {
                TraceState::NONE
            } else {
                tc.state.to_string().parse().unwrap_or(TraceState::NONE)
            };
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(tc.parent.trace_id()),
                SpanId::from_bytes(tc.parent.parent_id()),
                TraceFlags::new(tc.parent.flags()),
                true,
                state,
            ))
        }
        None => Context::new(),
    };
    let span = tracer
        .span_builder(method.as_str().to_owned())
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("url.path", path.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    let sc = span.span_context();
    let state = incoming.map(|tc| tc.state.clone()).unwrap_or_default();
    let trace = match TraceParent::from_parts(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    ) {
        Ok(parent) => TraceContext { parent, state },
        // The SDK never hands out all-zero ids; if it did, keep arq's own ids.
        Err(_) => match incoming {
            Some(tc) => tc.child(),
            None => TraceContext::new_root(false),
        },
    };
    (trace, parent.with_span(span))
}

/// Ends a request's server span (the span of `cx`) with its route and status.
pub(crate) fn end_server_span(
    cx: &Context,
    method: &http::Method,
    route: &str,
    status: http::StatusCode,
) {
    let span = cx.span();
    if span.is_recording() {
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_status(opentelemetry::trace::Status::error(
                status.canonical_reason().unwrap_or("server error"),
            ));
        }
    }
    span.end();
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The exporter's HTTP client: hyper over rustls (public web roots for `https`), each request
/// spawned on the runtime the pipeline was created in, because the batch processor drives
/// exports from its own thread.
#[derive(Clone)]
struct HyperClient {
    handle: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<Connector, http_body_util::Full<Bytes>>,
}

impl std::fmt::Debug for HyperClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperClient").finish_non_exhaustive()
    }
}

impl HyperClient {
    fn new(handle: tokio::runtime::Handle) -> Result<Self, TelemetryError> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(otlp_error)?
        .with_root_certificates(rustls::RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ))
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Self { handle, client })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HyperClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let request = request.map(http_body_util::Full::new);
        let exchange = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            // OTLP answers are small; bound them anyway so a broken receiver cannot make
            // the exporter buffer without limit.
            let body = http_body_util::Limited::new(body, 4 * 1024 * 1024)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_elapsed)) => Err("the OTLP export timed out".into()),
            Err(join) => Err(Box::new(join)),
        }
    }
}
