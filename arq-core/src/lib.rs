//! # arq-core
//!
//! The foundation every arq crate and every arq service stands on:
//!
//! - **the shared vocabulary**: [`TenantId`], [`RequestId`], the W3C trace context
//!   ([`TraceParent`], [`TraceState`], [`TraceContext`]), the problem+json error type
//!   ([`Problem`]) that every rejection turns into, and the [`Identity`] trait through which
//!   tenancy learns who is calling without depending on `arq-auth`;
//! - [`metrics`]: the one registry every crate records into and `/metrics` serves;
//! - resilience, rate limiting, the HTTP edge stack, configuration and telemetry, each added by
//!   its own module as it lands.
//!
//! # Example
//!
//! An axum handler that parses a tenant id from a header and answers bad input with a problem:
//!
//! ```
//! use arq_core::{Problem, TenantId};
//! use axum::http::HeaderMap;
//!
//! fn tenant_from(headers: &HeaderMap) -> Result<TenantId, Problem> {
//!     let raw = headers
//!         .get("x-tenant-id")
//!         .ok_or_else(|| Problem::bad_request("the X-Tenant-ID header is required"))?;
//!     raw.to_str()
//!         .ok()
//!         .and_then(|s| s.parse().ok())
//!         .ok_or_else(|| Problem::bad_request("X-Tenant-ID must be a UUID"))
//! }
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("x-tenant-id", "not-a-uuid".parse().unwrap());
//! let problem = tenant_from(&headers).unwrap_err();
//! assert_eq!(problem.status(), 400);
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `cache` | [`cache`]: a two-tier (moka + Redis) tenant-scoped cache |
//! | `gateway` | [`gateway`]: the API gateway (routing, proxying, per-upstream resilience) |
//! | `testing` | [`testing`]: helpers for tests that need PostgreSQL, Redis or RabbitMQ, and `TestClient`, JSON calls to a service in-process |
//! | `otlp` | [`telemetry::otlp`]: OpenTelemetry export over OTLP/HTTP with a parent-based ratio sampler |

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;
pub mod client;
pub mod config;
pub mod edge;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod gateway;
pub mod health;
mod identity;
pub mod metrics;
mod problem;
pub mod rate_limit;
mod request_id;
pub mod resilience;
pub mod server;
pub mod telemetry;
mod tenant;
mod text;
mod trace_context;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use identity::{CallerIdentity, Identity};
pub use problem::{FieldError, IntoProblem, PROBLEM_JSON, Problem};
pub use request_id::{MAX_REQUEST_ID_LEN, ParseRequestIdError, REQUEST_ID_HEADER, RequestId};
pub use tenant::{ParseTenantIdError, TenantId};
pub use trace_context::{
    MAX_TRACESTATE_MEMBERS, ParseTraceContextError, TRACEPARENT_HEADER, TRACESTATE_HEADER,
    TraceContext, TraceParent, TraceState,
};
