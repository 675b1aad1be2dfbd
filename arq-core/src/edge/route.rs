//! Copies axum's matched route template into the response so the outer layers (trace span,
//! metrics) can label by route template rather than raw path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
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
    type Future = RecordRouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        RecordRouteFuture {
            fut: self.inner.call(req),
            route,
        }
    }
}

pin_project! {
    pub(crate) struct RecordRouteFuture<F> {
        #[pin]
        fut: F,
        route: Option<MatchedPath>,
    }
}

impl<F, RB, E> Future for RecordRouteFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.fut.poll(cx))?;
        if let Some(route) = this.route.take() {
            response.extensions_mut().insert(route);
        }
        Poll::Ready(Ok(response))
    }
}
