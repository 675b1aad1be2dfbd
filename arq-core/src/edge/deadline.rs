//! A response body with a deadline for the whole stream (the streaming timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

/// The error a body yields when its deadline passes; hyper then aborts the response.
#[derive(Debug, thiserror::Error)]
#[error("the response body was not finished before the stream deadline")]
pub struct StreamDeadlineElapsed(());

pin_project! {
    /// Wraps a body so it must finish before `deadline`. The timer is created only when the body
    /// first has nothing ready, so complete bodies pay nothing.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        deadline: Instant,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => return Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => {}
        }
        let deadline = *this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                deadline,
            )))
        });
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::warn!("response stream deadline passed; aborting the response");
                Poll::Ready(Some(Err(Box::new(StreamDeadlineElapsed(())))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
