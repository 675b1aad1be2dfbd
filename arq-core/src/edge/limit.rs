//! The request body limit, answering with a problem+json 413.
//!
//! Written here rather than taken from tower-http's `RequestBodyLimitLayer` because that layer
//! answers with a plain-text 413, and a body that turns out too long while streaming surfaces as
//! axum's plain-text rejection; every edge rejection here must be problem+json.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode, header};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{PROBLEM_JSON, Problem};

/// Limits request bodies to `limit` bytes.
#[derive(Debug, Clone)]
pub(crate) struct BodyLimit<S> {
    inner: S,
    limit: u64,
}

impl<S> BodyLimit<S> {
    pub(crate) fn new(inner: S, limit: u64) -> Self {
        Self { inner, limit }
    }
}

fn too_large(limit: u64) -> Response {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .with_detail(format!(
            "the request body is larger than the limit of {limit} bytes"
        ))
        .with_extension("limit_bytes", limit)
        .into_response()
}

impl<S> Service<Request<Body>> for BodyLimit<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit) {
            return LimitFuture::Rejected {
                response: Some(too_large(self.limit)),
            };
        }
        let limit = self.limit;
        let req = if http_body::Body::size_hint(req.body())
            .upper()
            .is_some_and(|n| n <= limit)
        {
            // Known to fit (an empty GET body, a declared length within the limit).
            req
        } else {
            req.map(|b| {
                Body::new(http_body_util::Limited::new(
                    b,
                    usize::try_from(limit).unwrap_or(usize::MAX),
                ))
            })
        };
        LimitFuture::Inner {
            fut: self.inner.call(req),
            limit,
        }
    }
}

pin_project! {
    /// The future of [`BodyLimit`].
    #[project = LimitProj]
    pub(crate) enum LimitFuture<F> {
        Rejected { response: Option<Response> },
        Inner { #[pin] fut: F, limit: u64 },
    }
}

impl<F> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| too_large(0))))
            }
            LimitProj::Inner { fut, limit } => {
                let response = std::task::ready!(fut.poll(cx))?;
                // A streaming body that exceeded the limit surfaces as the extractor's plain
                // 413; answer with the problem instead.
                if response.status() == StatusCode::PAYLOAD_TOO_LARGE
                    && response
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .is_none_or(|v| v != PROBLEM_JSON)
                {
                    return Poll::Ready(Ok(too_large(*limit)));
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
