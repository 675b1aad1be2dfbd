use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::Timeout;
use crate::resilience::error::ResilienceError;

pin_project! {
    /// Response future of [`TimeoutService`](super::TimeoutService).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        timeout: Timeout,
        after: Duration,
        deadline: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: tokio::time::Timeout<F>,
        timeout: Timeout,
        after: Duration,
        deadline: bool,
    ) -> Self {
        Self {
            inner,
            timeout,
            after,
            deadline,
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, ResilienceError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.inner.poll(cx)) {
            Ok(r) => r.map_err(ResilienceError::Inner),
            Err(_) => Err(ResilienceError::Timeout(
                this.timeout.elapsed(*this.after, *this.deadline),
            )),
        })
    }
}
