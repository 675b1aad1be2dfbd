//! Records axum's matched route template in the request context (a task-local) so the outer
//! layers (trace span, metrics) can label by route template rather than raw path, without an
//! allocation per request.

use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

/// Applied with `Router::layer`, so it runs after routing where `MatchedPath` is known.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordRouteLayer;

impl<S> Layer<S> for RecordRouteLayer {
    type Service = RecordRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRoute { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RecordRoute<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RecordRoute<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(route) = req.extensions().get::<MatchedPath>() {
            crate::telemetry::set_route(route);
        }
        self.inner.call(req)
    }
}
