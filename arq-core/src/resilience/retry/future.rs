use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::resilience::error::ResilienceError;

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, ResilienceError<E>>> + Send>>;

/// Response future of [`RetryService`](super::RetryService).
///
/// Boxed: it loops over attempts, sleeping between them, and owns the request template;
/// a hand-written state machine would save one allocation per call, which the benchmark
/// measures against a bare call (`docs/bench-resilience.md`).
pub struct ResponseFuture<T, E> {
    inner: Boxed<T, E>,
}

impl<T, E> ResponseFuture<T, E> {
    pub(crate) fn new(inner: Boxed<T, E>) -> Self {
        Self { inner }
    }
}

impl<T, E> std::fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, ResilienceError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
