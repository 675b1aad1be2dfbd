//! Tenant resolution: which tenant is this request for?
//!
//! [`TenantLayer`] runs after authentication. It reads the caller's [`CallerIdentity`] from the
//! request extensions and decides the tenant:
//!
//! 1. `X-Tenant-ID`, when present, is only a **selector**: it is parsed first (a malformed id is a
//!    400 before anything touches SQL), then it must be a tenant the identity belongs to
//!    ([`Identity::is_member_of`]), otherwise 403.
//! 2. An optional [`SubdomainResolver`] maps `acme.example.com` to a tenant; it is a selector too and
//!    must agree with the header and with the identity (otherwise 403).
//! 3. Without a selector, the identity's home tenant is used; an identity with none gets 403.
//!
//! API keys bound to a tenant are identities whose home tenant is that tenant and which belong to
//! no other (the default [`Identity::is_member_of`]), so a key for tenant A presented with
//! `X-Tenant-ID: B` is refused like any other mismatch.
//!
//! The resolved [`TenantId`] is inserted into the request extensions (read it with the [`Tenant`]
//! extractor) and the rest of the request runs inside [`crate::context::scope`], so spawned work
//! ([`crate::context::spawn`]) and outbound propagation see it too.

mod layer;
mod subdomain;

use std::sync::Arc;

use arq_core::{CallerIdentity, Identity, IntoProblem, Problem, TenantId};
use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderMap, HeaderName};

pub use layer::{ResponseFuture, TenantLayer, TenantService};
pub use subdomain::{StaticSubdomains, SubdomainResolver, label_of};

/// The header that selects a tenant: `x-tenant-id`.
pub const TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");

/// Why a request has no tenant. Each variant answers with a problem+json response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No authenticated identity in the request: authentication must run before tenant resolution.
    #[error("authentication is required before a tenant can be chosen")]
    Unauthenticated,
    /// The `X-Tenant-ID` header is not a valid tenant id (or is sent more than once).
    #[error("the X-Tenant-ID header is malformed: {0}")]
    MalformedHeader(String),
    /// The identity is not a member of the selected tenant, or two selectors disagree.
    #[error("the caller may not act in the selected tenant")]
    NotAMember,
    /// No selector was sent and the identity has no home tenant.
    #[error("no tenant selected: send X-Tenant-ID or use credentials issued for a tenant")]
    NoTenant,
    /// The host names a subdomain that maps to no tenant.
    #[error("no tenant is served at this host name")]
    UnknownSubdomain,
}

impl IntoProblem for ResolveError {
    fn into_problem(self) -> Problem {
        match self {
            Self::Unauthenticated => Problem::unauthorized(self.to_string()),
            Self::MalformedHeader(_) => Problem::bad_request(self.to_string()),
            // One message for every 403 so a caller cannot probe which tenants exist.
            Self::NotAMember | Self::NoTenant => Problem::forbidden(self.to_string()),
            Self::UnknownSubdomain => Problem::not_found(self.to_string()),
        }
    }
}

impl axum::response::IntoResponse for ResolveError {
    fn into_response(self) -> axum::response::Response {
        self.into_problem().into_response()
    }
}

/// Parses the `X-Tenant-ID` header: `Ok(None)` when absent, an error when malformed or repeated.
///
/// # Example
/// ```
/// use arq_tenancy::resolve::{tenant_from_headers, TENANT_HEADER};
/// use http::HeaderMap;
///
/// let mut h = HeaderMap::new();
/// assert_eq!(tenant_from_headers(&h), Ok(None));
/// h.insert(TENANT_HEADER, "1; drop table tasks".parse().unwrap());
/// assert!(tenant_from_headers(&h).is_err());
/// ```
pub fn tenant_from_headers(headers: &HeaderMap) -> Result<Option<TenantId>, ResolveError> {
    let mut values = headers.get_all(&TENANT_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ResolveError::MalformedHeader(
            "send X-Tenant-ID at most once".to_owned(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| ResolveError::MalformedHeader("the value is not visible ASCII".to_owned()))?;
    text.trim()
        .parse::<TenantId>()
        .map(Some)
        .map_err(|e| ResolveError::MalformedHeader(e.to_string()))
}

/// Decides the tenant from the identity and the selectors (the pure part of [`TenantLayer`]).
///
/// # Example
/// ```
/// use arq_core::{CallerIdentity, Identity, TenantId};
/// use arq_tenancy::resolve::{decide, ResolveError};
///
/// struct Key(TenantId);
/// impl Identity for Key {
///     fn subject(&self) -> &str { "key-1" }
///     fn home_tenant(&self) -> Option<TenantId> { Some(self.0) }
///     fn roles(&self) -> &[String] { &[] }
/// }
/// let (a, b) = (TenantId::generate(), TenantId::generate());
/// let who = CallerIdentity::new(Key(a));
/// assert_eq!(decide(Some(&who), None, None), Ok(a));
/// assert_eq!(decide(Some(&who), Some(b), None), Err(ResolveError::NotAMember));
/// ```
pub fn decide(
    identity: Option<&CallerIdentity>,
    header: Option<TenantId>,
    subdomain: Option<TenantId>,
) -> Result<TenantId, ResolveError> {
    let identity: &dyn Identity = &**identity.ok_or(ResolveError::Unauthenticated)?;
    let selected = match (header, subdomain) {
        (Some(h), Some(s)) if h != s => return Err(ResolveError::NotAMember),
        (Some(t), _) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    let tenant = match selected {
        Some(t) => t,
        None => identity.home_tenant().ok_or(ResolveError::NoTenant)?,
    };
    if identity.is_member_of(tenant) {
        Ok(tenant)
    } else {
        Err(ResolveError::NotAMember)
    }
}

/// Extractor for the request's resolved tenant.
///
/// Rejects with 500 when [`TenantLayer`] did not run: that is a wiring mistake, not a client error.
///
/// # Example
/// ```
/// use arq_tenancy::resolve::Tenant;
///
/// async fn handler(Tenant(tenant): Tenant) -> String {
///     tenant.to_string()
/// }
/// # let _: axum::routing::MethodRouter<()> = axum::routing::get(handler);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant(pub TenantId);

/// The rejection of [`Tenant`] (and of [`crate::TenantTx`]) when no tenant was resolved.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "no tenant was resolved for this request: install arq_tenancy::TenantLayer after authentication"
)]
pub struct MissingTenant;

impl IntoProblem for MissingTenant {
    fn into_problem(self) -> Problem {
        Problem::internal(&self)
    }
}

impl axum::response::IntoResponse for MissingTenant {
    fn into_response(self) -> axum::response::Response {
        self.into_problem().into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = MissingTenant;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TenantId>()
            .copied()
            .map(Tenant)
            .ok_or(MissingTenant)
    }
}

/// Configuration shared by every clone of the layer and service.
#[derive(Clone, Default)]
pub(crate) struct Config {
    pub(crate) subdomains: Option<Arc<dyn SubdomainResolver>>,
}
