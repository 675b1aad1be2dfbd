use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{CircuitOpenError, OwnedPermit, outcome_of};
use crate::resilience::classify::Classify;
use crate::resilience::error::ResilienceError;

pin_project! {
    /// Response future of [`CircuitBreakerService`](super::CircuitBreakerService).
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Called {
            #[pin]
            fut: F,
            permit: Option<OwnedPermit>,
            classifier: C,
        },
        Rejected {
            error: Option<CircuitOpenError>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(fut: F, permit: OwnedPermit, classifier: C) -> Self {
        Self {
            state: State::Called {
                fut,
                permit: Some(permit),
                classifier,
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpenError) -> Self {
        Self {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, ResilienceError<E>>>,
    C: Classify<T, E>,
{
    type Output = Result<T, ResilienceError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                fut,
                permit,
                classifier,
            } => {
                let result = ready!(fut.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(outcome_of(classifier, &result));
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(e) => ResilienceError::CircuitOpen(e),
                // Polled again after completion: keep answering the refusal's kind.
                None => ResilienceError::CircuitOpen(CircuitOpenError {
                    dependency: "unknown".into(),
                    state: super::CircuitState::Open,
                    open_until: None,
                    retry_after: None,
                }),
            })),
        }
    }
}
