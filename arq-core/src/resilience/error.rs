//! The one error type every resilience middleware returns.

use std::time::Duration;

use crate::{IntoProblem, Problem};

use super::bulkhead::BulkheadFullError;
use super::circuit_breaker::CircuitOpenError;
use super::timeout::TimeoutError;

/// What went wrong on a call that went through arq's resilience middleware.
///
/// The middleware's own refusals ([`CircuitOpen`](Self::CircuitOpen),
/// [`BulkheadFull`](Self::BulkheadFull), [`Timeout`](Self::Timeout)) each name the dependency
/// and why; the dependency's own error is [`Inner`](Self::Inner). Stacked middleware (retry ⊃
/// breaker ⊃ bulkhead ⊃ timeout) pass this type through unchanged, so the error stays flat.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResilienceError<E> {
    /// The dependency's circuit breaker refused the call without making it. Never retried.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpenError),
    /// The dependency's bulkhead was full (or the wait for a slot ran out). Never retried.
    #[error(transparent)]
    BulkheadFull(#[from] BulkheadFullError),
    /// The attempt ran past its timeout or the caller's overall deadline.
    #[error(transparent)]
    Timeout(#[from] TimeoutError),
    /// The dependency itself failed.
    #[error("the dependency call failed: {0}")]
    Inner(#[source] E),
}

impl<E> ResilienceError<E> {
    /// The dependency's own error, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The dependency's own error, by reference.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Self::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the resilience layers themselves refused the call before the dependency saw
    /// it (open circuit or full bulkhead). Such errors are never retried.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::CircuitOpen(_) | Self::BulkheadFull(_))
    }

    /// How long the caller should wait before trying again, when the middleware knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Applies `f` to the dependency's own error.
    pub fn map_inner<F, E2>(self, f: F) -> ResilienceError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            Self::CircuitOpen(e) => ResilienceError::CircuitOpen(e),
            Self::BulkheadFull(e) => ResilienceError::BulkheadFull(e),
            Self::Timeout(e) => ResilienceError::Timeout(e),
            Self::Inner(e) => ResilienceError::Inner(f(e)),
        }
    }
}

/// Open circuits and full bulkheads answer 503 with `Retry-After`; timeouts 504; the
/// dependency's own error a 502 whose detail never includes the error's text (it is logged).
impl<E> IntoProblem for ResilienceError<E>
where
    E: std::error::Error + 'static,
{
    fn into_problem(self) -> Problem {
        match &self {
            Self::CircuitOpen(e) => {
                let secs = e
                    .retry_after()
                    .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
                Problem::service_unavailable(secs).with_detail(format!(
                    "the dependency `{}` is unavailable (circuit open); retry later",
                    e.dependency()
                ))
            }
            Self::BulkheadFull(e) => Problem::service_unavailable(1).with_detail(format!(
                "the dependency `{}` is saturated; retry later",
                e.dependency()
            )),
            Self::Timeout(e) => Problem::new(http::StatusCode::GATEWAY_TIMEOUT).with_detail(
                format!("the dependency `{}` did not answer in time", e.dependency()),
            ),
            Self::Inner(e) => {
                tracing::warn!(error = %e, "dependency call failed");
                Problem::new(http::StatusCode::BAD_GATEWAY)
                    .with_detail("a dependency failed; the error was logged")
            }
        }
    }
}
