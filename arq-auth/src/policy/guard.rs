//! axum integration: a route guard that authorizes each request before the handler runs.
//!
//! `arq_core::Problem` is the team's rejection type; it is large, and boxing it in every
//! resolver signature would only burden users, so `result_large_err` is allowed here.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arq_core::Problem;
use axum::response::{IntoResponse, Response};
use http::Request;

use super::source::{AttributeSource, NoAttributes};
use super::store::PolicyStore;

/// Finds the resource a request acts on (from its path, a database row, …).
pub trait ResourceResolver: Send + Sync + 'static {
    /// The resource type.
    type Resource: AttributeSource;
    /// The resource, or the problem to answer with (404 when it does not exist, say).
    ///
    /// # Errors
    /// A problem response that ends the request.
    fn resolve(&self, parts: &http::request::Parts) -> Result<Self::Resource, Problem>;
}

impl<F, R> ResourceResolver for F
where
    F: Fn(&http::request::Parts) -> Result<R, Problem> + Send + Sync + 'static,
    R: AttributeSource,
{
    type Resource = R;
    fn resolve(&self, parts: &http::request::Parts) -> Result<R, Problem> {
        self(parts)
    }
}

/// Guards routes with an ABAC action.
///
/// The principal is read from the request extensions as `P` (the authentication layer inserts
/// it); request attributes, when present, as [`RequestAttributes`]. A missing principal answers
/// 401, a denial 403 (problem+json carrying the decision id); an allowed request reaches the
/// handler.
///
/// # Example
///
/// ```
/// use arq_auth::policy::{MapAttributes, NoAttributes, PolicyGuardLayer, PolicySet, PolicyStore};
/// use axum::{Router, routing::get};
///
/// let set = PolicySet::from_yaml("p.yaml", "rules: []").unwrap();
/// let store = PolicyStore::from_set("p.yaml", set);
/// let guard = PolicyGuardLayer::<MapAttributes, _>::new(store, "read:doc", |_: &http::request::Parts| {
///     Ok::<_, arq_core::Problem>(NoAttributes)
/// });
/// let app: Router = Router::new().route("/doc", get(|| async { "doc" })).layer(guard);
/// ```
pub struct PolicyGuardLayer<P, R> {
    store: PolicyStore,
    action: Arc<str>,
    resolver: Arc<R>,
    _principal: std::marker::PhantomData<fn() -> P>,
}

impl<P, R> Clone for PolicyGuardLayer<P, R> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            action: self.action.clone(),
            resolver: self.resolver.clone(),
            _principal: std::marker::PhantomData,
        }
    }
}

impl<P, R> std::fmt::Debug for PolicyGuardLayer<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGuardLayer")
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// Request attributes for policies, inserted into the request extensions by the application.
#[derive(Clone, Debug)]
pub struct RequestAttributes(pub Arc<dyn AttributeSourceDebug>);

/// An attribute source that can be debug-printed (for [`RequestAttributes`]).
pub trait AttributeSourceDebug: AttributeSource + std::fmt::Debug {}
impl<T: AttributeSource + std::fmt::Debug> AttributeSourceDebug for T {}

impl<P, R: ResourceResolver> PolicyGuardLayer<P, R> {
    /// Guards with `action`, resolving resources with `resolver`.
    pub fn new(store: PolicyStore, action: &str, resolver: R) -> Self {
        Self {
            store,
            action: Arc::from(action),
            resolver: Arc::new(resolver),
            _principal: std::marker::PhantomData,
        }
    }
}

impl<S, P, R> tower_layer::Layer<S> for PolicyGuardLayer<P, R> {
    type Service = PolicyGuardService<S, P, R>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyGuardService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PolicyGuardLayer`].
pub struct PolicyGuardService<S, P, R> {
    inner: S,
    layer: PolicyGuardLayer<P, R>,
}

impl<S: Clone, P, R> Clone for PolicyGuardService<S, P, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P, R> std::fmt::Debug for PolicyGuardService<S, P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGuardService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, P, R> tower_service::Service<Request<B>> for PolicyGuardService<S, P, R>
where
    S: tower_service::Service<Request<B>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    P: AttributeSource + Clone + 'static,
    R: ResourceResolver,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let verdict = authorize_parts::<P, R>(&self.layer, &parts);
        match verdict {
            Ok(()) => Box::pin(self.inner.call(Request::from_parts(parts, body))),
            Err(problem) => Box::pin(async move { Ok(problem.into_response()) }),
        }
    }
}

fn authorize_parts<P, R>(
    layer: &PolicyGuardLayer<P, R>,
    parts: &http::request::Parts,
) -> Result<(), Problem>
where
    P: AttributeSource + Clone + 'static,
    R: ResourceResolver,
{
    let Some(principal) = parts.extensions.get::<P>() else {
        return Err(Problem::unauthorized("authentication required"));
    };
    let resource = layer.resolver.resolve(parts)?;
    let d = match parts.extensions.get::<RequestAttributes>() {
        Some(RequestAttributes(req)) => {
            let req: &dyn AttributeSource = &**req;
            layer
                .store
                .authorize_with_request(principal, &layer.action, &resource, req)
        }
        None => {
            layer
                .store
                .authorize_with_request(principal, &layer.action, &resource, &NoAttributes)
        }
    };
    if d.allowed() {
        Ok(())
    } else {
        Err(
            Problem::forbidden(format!("{} is not allowed", layer.action))
                .with_extension("decision_id", d.id().to_string()),
        )
    }
}
