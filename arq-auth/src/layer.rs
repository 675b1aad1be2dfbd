//! The authentication layer: bearer tokens and API keys in, [`Principal`] and
//! [`CallerIdentity`] out.

use std::sync::Arc;
use std::task::{Context, Poll};

use arq_core::CallerIdentity;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderMap, Request, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::AuthError;
use crate::principal::Principal;
use crate::rbac::Rbac;
use crate::verify::Verifier;

/// The header an API key may be sent in (it may also be sent as a bearer token).
pub const API_KEY_HEADER: &str = "x-api-key";

/// Something that turns an API key into a [`Principal`]; [`ApiKeyStore`](crate::ApiKeyStore)
/// is the PostgreSQL implementation.
pub trait ApiKeyValidator: Send + Sync + 'static {
    /// Whether `key` looks like one of this validator's keys (its prefix), so a bearer value can
    /// be routed to it instead of to JWT verification.
    fn recognizes(&self, key: &str) -> bool;

    /// Validates `key`.
    fn validate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Principal, AuthError>>;
}

/// The credential a request carries.
enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

fn credential<'a>(
    headers: &'a HeaderMap,
    api_keys: Option<&dyn ApiKeyValidator>,
) -> Result<Option<Credential<'a>>, AuthError> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let key = value
            .to_str()
            .map_err(|_| AuthError::Malformed("the API key header is not ASCII".to_owned()))?;
        return Ok(Some(Credential::ApiKey(key.trim())));
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII".to_owned()))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, …) is not ours to judge: leave the request unauthenticated.
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed("the bearer token is empty".to_owned()));
    }
    if api_keys.is_some_and(|v| v.recognizes(token)) {
        return Ok(Some(Credential::ApiKey(token)));
    }
    Ok(Some(Credential::Bearer(token)))
}

/// The state the layer shares across clones.
struct Shared {
    verifier: Verifier,
    api_keys: Option<Arc<dyn ApiKeyValidator>>,
}

impl Shared {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
        match credential(headers, self.api_keys.as_deref())? {
            None => Ok(None),
            Some(Credential::Bearer(token)) => self.verifier.verify(token).await.map(Some),
            Some(Credential::ApiKey(key)) => match &self.api_keys {
                Some(v) => v.validate(key).await.map(Some),
                None => Err(AuthError::InvalidApiKey),
            },
        }
    }
}

/// Authenticates requests: a valid bearer token or API key puts a [`Principal`], a
/// [`CallerIdentity`] and the verifier's [`Rbac`] into the request extensions; invalid
/// credentials are answered `401` (problem+json) without calling the inner service; requests
/// without credentials pass through unauthenticated, so public routes keep working and the
/// [`Principal`] extractor answers `401` on the others.
///
/// # Example
/// ```
/// # fn build(verifier: arq_auth::Verifier) {
/// use arq_auth::{AuthLayer, Principal};
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/me", get(|who: Principal| async move { who.subject().to_owned() }))
///     .layer(AuthLayer::new(verifier));
/// # }
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("api_keys", &self.shared.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Accepts bearer tokens verified by `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            shared: Arc::new(Shared {
                verifier,
                api_keys: None,
            }),
        }
    }

    /// Also accepts API keys (in `X-API-Key` or as a bearer token with the key's prefix).
    pub fn with_api_keys(self, validator: Arc<dyn ApiKeyValidator>) -> Self {
        let verifier = self.shared.verifier.clone();
        Self {
            shared: Arc::new(Shared {
                verifier,
                api_keys: Some(validator),
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> AuthService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            match shared.authenticate(request.headers()).await {
                Ok(Some(principal)) => {
                    let extensions = request.extensions_mut();
                    extensions.insert(CallerIdentity(Arc::new(principal.clone())));
                    extensions.insert(principal);
                    extensions.insert(Arc::clone(shared.verifier.rbac()));
                }
                Ok(None) => {}
                Err(error) => return Ok(error.into_response()),
            }
            inner.call(request).await
        })
    }
}

/// The [`Rbac`] in effect for a request: the one the [`AuthLayer`] inserted, or the standard map.
pub(crate) fn rbac_of(extensions: &http::Extensions) -> Arc<Rbac> {
    extensions
        .get::<Arc<Rbac>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Rbac::standard()))
}
