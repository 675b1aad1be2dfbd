//! The tower layer and service of tenant resolution.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arq_core::{CallerIdentity, IntoProblem, TenantId};
use axum::response::{IntoResponse, Response};
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::{Config, ResolveError, SubdomainResolver, decide, subdomain, tenant_from_headers};

/// Layer that resolves each request's tenant; see [the module docs](super).
///
/// # Example
/// ```
/// use arq_tenancy::resolve::{StaticSubdomains, TenantLayer};
///
/// let layer = TenantLayer::new()
///     .with_subdomains(StaticSubdomains::new("example.com"));
/// # let _ = layer;
/// ```
#[derive(Clone, Default)]
pub struct TenantLayer {
    config: Config,
}

impl std::fmt::Debug for TenantLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLayer")
            .field("subdomains", &self.config.subdomains.is_some())
            .finish()
    }
}

impl TenantLayer {
    /// Resolution from the identity and `X-Tenant-ID` only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accept the tenant named by the host's subdomain (it must agree with the header and
    /// the identity).
    #[must_use]
    pub fn with_subdomains(mut self, resolver: impl SubdomainResolver) -> Self {
        self.config.subdomains = Some(Arc::new(resolver));
        self
    }
}

impl<S> Layer<S> for TenantLayer {
    type Service = TenantService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`TenantLayer`] produces.
#[derive(Clone)]
pub struct TenantService<S> {
    inner: S,
    config: Config,
}

impl<S: std::fmt::Debug> std::fmt::Debug for TenantService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> TenantService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`TenantService`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S, B> Service<Request<B>> for TenantService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let tenant = match resolve(
                &config,
                request.headers(),
                request.extensions(),
                request.uri(),
            )
            .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "tenant resolution refused the request");
                    return Ok(e.into_problem().into_response());
                }
            };
            request.extensions_mut().insert(tenant);
            crate::context::scope(tenant, inner.call(request)).await
        })
    }
}

async fn resolve(
    config: &Config,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
    uri: &http::Uri,
) -> Result<TenantId, ResolveError> {
    let identity = extensions.get::<CallerIdentity>();
    // Parse the header before anything else looks at it: malformed input is a 400 even for an
    // unauthenticated caller, and it never reaches a resolver or SQL.
    let header = tenant_from_headers(headers)?;
    if identity.is_none() {
        return Err(ResolveError::Unauthenticated);
    }
    let by_host = match &config.subdomains {
        Some(resolver) => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| uri.host());
            match host.and_then(|h| subdomain::label_of(h, resolver.base_domain())) {
                Some(label) => Some(
                    resolver
                        .resolve(&label)
                        .await
                        .ok_or(ResolveError::UnknownSubdomain)?,
                ),
                None => None,
            }
        }
        None => None,
    };
    decide(identity, header, by_host)
}
