//! Per-attempt timeouts inside an overall [`Deadline`].
//!
//! [`Timeout`] gives each attempt the dependency's timeout (the pinned defaults: HTTP 30 s,
//! database 5 s, external 10 s) or what is left of the caller's [`Deadline`], whichever is
//! shorter. It sits innermost in the per-dependency stack (retry ⊃ breaker ⊃ bulkhead ⊃
//! timeout), and it is also where a plain service's error is lifted into
//! [`ResilienceError::Inner`], so the layers above it see one flat error type.
//!
//! # Example
//! ```
//! use arq_core::resilience::{Deadline, ResilienceError, Timeout};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let timeout = Timeout::new("search", Duration::from_secs(10));
//! // The caller has only 1 s left: the attempt is cut at 1 s, not 10 s.
//! let r: Result<(), ResilienceError<std::io::Error>> = Deadline::after(Duration::from_secs(1))
//!     .scope(timeout.call(|| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok(())
//!     }))
//!     .await;
//! let Err(ResilienceError::Timeout(e)) = r else { panic!("expected a timeout") };
//! assert!(e.is_deadline());
//! assert_eq!(e.after(), Duration::from_secs(1));
//! # }
//! ```

mod deadline;
mod error;
mod future;
mod layer;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tower_service::Service;

pub use deadline::Deadline;
pub use error::TimeoutError;
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;

use super::ResilienceMetrics;
use super::error::ResilienceError;

/// A per-attempt timeout for one dependency. Cheap to clone.
#[derive(Clone)]
pub struct Timeout {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    duration: Duration,
    timeouts: Counter,
}

impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("dependency", &self.shared.name)
            .field("duration", &self.shared.duration)
            .finish()
    }
}

impl Timeout {
    /// A timeout of `duration` per attempt for the dependency `name`.
    pub fn new(name: &str, duration: Duration) -> Self {
        Self::with_metrics(name, duration, &ResilienceMetrics::unregistered())
    }

    /// As [`new`](Self::new), counting timeouts in `metrics`.
    pub fn with_metrics(name: &str, duration: Duration, metrics: &ResilienceMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: Arc::from(name),
                duration,
                timeouts: metrics
                    .timeouts
                    .get_or_create_owned(&ResilienceMetrics::dep(name)),
            }),
        }
    }

    /// The per-attempt timeout.
    pub fn duration(&self) -> Duration {
        self.shared.duration
    }

    /// What this attempt gets now: the timeout, or the current deadline's remaining time if
    /// shorter (and whether the deadline is what limits it).
    pub fn budget(&self) -> (Duration, bool) {
        match Deadline::current() {
            Some(d) if d.remaining() < self.shared.duration => (d.remaining(), true),
            _ => (self.shared.duration, false),
        }
    }

    fn elapsed(&self, after: Duration, deadline: bool) -> TimeoutError {
        self.shared.timeouts.inc();
        TimeoutError {
            dependency: self.shared.name.clone(),
            after,
            deadline,
        }
    }

    /// Runs `f` with this timeout (and the current deadline).
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(|| async { f().await.map_err(ResilienceError::Inner) })
            .await
    }

    pub(crate) async fn run<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        let (after, deadline) = self.budget();
        match tokio::time::timeout(after, f()).await {
            Ok(r) => r,
            Err(_) => Err(ResilienceError::Timeout(self.elapsed(after, deadline))),
        }
    }
}

/// The tower [`Service`] that applies a [`Timeout`] to each call of `S` and lifts `S`'s
/// error into [`ResilienceError::Inner`]. Built by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Timeout,
}

impl<S> TimeoutService<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S, timeout: Timeout) -> Self {
        Self { inner, timeout }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = ResilienceError<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ResilienceError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (after, deadline) = self.timeout.budget();
        ResponseFuture::new(
            tokio::time::timeout(after, self.inner.call(req)),
            self.timeout.clone(),
            after,
            deadline,
        )
    }
}
