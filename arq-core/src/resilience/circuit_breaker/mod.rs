//! Circuit breaker: stop calling a dependency that keeps failing, probe it, resume.
//!
//! The semantics are the pinned ones (`ARCHITECTURE.md`, Resilience):
//!
//! - **closed**: calls flow and their outcomes go into a sliding window (the last 100 calls by
//!   default, or the last 60 s in one-second buckets). Once the window holds at least
//!   `min_calls` (20) outcomes, the circuit opens when the failure rate is **at least** 50 %
//!   (or, when enabled, the slow-call rate is at least its threshold);
//! - **open**: calls are refused at once with [`CircuitOpenError`] (saying for how long) and
//!   the inner service is not touched. After `open_duration` (30 s, optionally growing with
//!   consecutive re-opens) the next call moves the breaker to half-open;
//! - **half-open**: at most `half_open_probes` (2) probe calls are admitted; 2 consecutive
//!   successes close the circuit, the first failure re-opens it. A probe whose future is
//!   dropped gives its slot back without a verdict; an "ignored" outcome does the same. If
//!   no verdict arrives within `half_open_max_wait`, the circuit re-opens, so a hung probe
//!   cannot wedge it.
//!
//! Results of calls admitted in an earlier state (a slow call that started while closed and
//! finishes after the circuit opened) never cause a transition. The clock is tokio's
//! monotonic [`Instant`], so a wall-clock jump changes nothing and
//! tests drive it with the paused clock. Each transition emits one `tracing` event (target
//! `arq::resilience`) and updates the metrics in [`ResilienceMetrics`].
//!
//! The closed path is lock-free and allocation-free: one atomic load to admit, and for a
//! healthy window only loads to record (see `docs/bench-resilience.md`).
//!
//! # Example: a plain async call
//! ```
//! use arq_core::resilience::{CircuitBreaker, CircuitBreakerConfig, ResilienceError};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreaker::new("billing-db", CircuitBreakerConfig::default())?;
//! let rows: Result<u32, ResilienceError<std::io::Error>> =
//!     breaker.call(|| async { Ok(42) }).await;
//! assert_eq!(rows?, 42);
//! # Ok(()) }
//! ```
//!
//! # Example: a tower layer
//! ```
//! use arq_core::resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, ResilienceError};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreaker::new("users-api", CircuitBreakerConfig::default())?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker.clone()))
//!     // The breaker sees a `ResilienceError` from below; lift plain errors into it.
//!     .map_err(ResilienceError::Inner)
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) }));
//! assert_eq!(svc.ready().await?.call(21).await?, 42);
//! # Ok(()) }
//! ```
//!
//! [`ResilienceMetrics`]: super::ResilienceMetrics

mod config;
mod error;
mod future;
mod layer;
mod state;
mod window;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

pub use config::{CircuitBreakerConfig, SlidingWindow};
pub use error::CircuitOpenError;
pub use future::ResponseFuture;
pub use layer::CircuitBreakerLayer;
pub use state::{BreakerSnapshot, CircuitState};

use super::classify::{AnyError, Classify, Outcome};
use super::error::ResilienceError;
use super::{ConfigError, ResilienceMetrics};
use state::{Kind, Shared};

/// A circuit breaker for one dependency. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("dependency", &self.shared.name)
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A breaker for the dependency `name`, recording into unregistered metrics.
    pub fn new(name: &str, config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::with_metrics(name, config, &ResilienceMetrics::unregistered())
    }

    /// A breaker for the dependency `name` recording into `metrics`.
    pub fn with_metrics(
        name: &str,
        config: CircuitBreakerConfig,
        metrics: &ResilienceMetrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared::new(name, config, metrics)),
        })
    }

    /// The dependency this breaker protects.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    /// The state and the window's counts.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }

    /// Asks to make one call. Keep the permit while the call runs and
    /// [`record`](Permit::record) its outcome; dropping it records nothing.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, CircuitOpenError> {
        let (generation, kind) = self.shared.acquire()?;
        Ok(Permit {
            shared: &self.shared,
            ticket: Ticket::new(&self.shared, generation, kind),
        })
    }

    /// Runs `f` through the breaker; every `Err` is a failure.
    ///
    /// # Example
    /// ```
    /// # use arq_core::resilience::*;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ConfigError> {
    /// let breaker = CircuitBreaker::new("db", CircuitBreakerConfig::default())?;
    /// let r = breaker.call(|| async { Err::<(), _>("boom") }).await;
    /// assert!(matches!(r, Err(ResilienceError::Inner("boom"))));
    /// # Ok(()) }
    /// ```
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(&AnyError, f).await
    }

    /// Runs `f` through the breaker, classifying its result with `classifier`.
    pub async fn call_classified<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        f: F,
    ) -> Result<T, ResilienceError<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        let result = f().await;
        let outcome = classifier.outcome(result.as_ref());
        permit.record(outcome);
        result.map_err(ResilienceError::Inner)
    }

    /// Runs `f` whose error is already a [`ResilienceError`] (composition inside arq).
    pub(crate) async fn run<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        f: F,
    ) -> Result<T, ResilienceError<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        let permit = self.try_acquire()?;
        let result = f().await;
        permit.record(outcome_of(classifier, &result));
        result
    }

    /// Forces the circuit open until [`reset`](Self::reset): every call is refused.
    pub fn force_open(&self) {
        self.shared.force(CircuitState::ForcedOpen);
    }

    /// Forces the circuit closed until [`reset`](Self::reset): every call is admitted and
    /// nothing is recorded.
    pub fn disable(&self) {
        self.shared.force(CircuitState::Disabled);
    }

    /// Back to closed with an empty window, whatever the state.
    pub fn reset(&self) {
        self.shared.force(CircuitState::Closed);
    }
}

/// How the breaker counts a result whose error may be another middleware's refusal: an
/// inner refusal (bulkhead full) says nothing about the dependency, a timeout is a failure.
pub(crate) fn outcome_of<C, T, E>(classifier: &C, result: &Result<T, ResilienceError<E>>) -> Outcome
where
    C: Classify<T, E>,
{
    match result {
        Ok(v) => classifier.outcome(Ok(v)),
        Err(ResilienceError::Inner(e)) => classifier.outcome(Err(e)),
        Err(ResilienceError::Timeout(_)) => Outcome::Failure,
        Err(_) => Outcome::Ignored,
    }
}

/// What a permit remembers: the generation that admitted it, how, and when.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    generation: u64,
    kind: Kind,
    start: Option<Instant>,
    done: bool,
}

impl Ticket {
    #[inline]
    fn new(shared: &Shared, generation: u64, kind: Kind) -> Self {
        Self {
            generation,
            kind,
            start: shared.needs_clock().then(Instant::now),
            done: false,
        }
    }

    #[inline]
    fn record(&mut self, shared: &Shared, outcome: Outcome) {
        self.done = true;
        let elapsed = self.start.map(|s| s.elapsed());
        shared.record(self.generation, self.kind, outcome, elapsed);
    }

    #[inline]
    fn abandon(&mut self, shared: &Shared) {
        if !self.done && self.kind == Kind::Probe {
            shared.release_probe(self.generation);
        }
        self.done = true;
    }
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`].
///
/// Dropping it without recording gives a half-open probe slot back and records nothing.
#[must_use = "record the call's outcome with `record`"]
pub struct Permit<'a> {
    shared: &'a Shared,
    ticket: Ticket,
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl Permit<'_> {
    /// Records the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.ticket.record(self.shared, outcome);
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.ticket.abandon(self.shared);
    }
}

/// A permit that owns a handle to the breaker (for futures that must be `'static`).
pub(crate) struct OwnedPermit {
    shared: Arc<Shared>,
    ticket: Ticket,
}

impl OwnedPermit {
    pub(crate) fn record(mut self, outcome: Outcome) {
        self.ticket.record(&self.shared, outcome);
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.ticket.abandon(&self.shared);
    }
}

/// The tower [`Service`] that puts a [`CircuitBreaker`] in front of `S`.
///
/// `S` must fail with [`ResilienceError`] (lift a plain service with
/// `ServiceBuilder::map_err(ResilienceError::Inner)`, or put a
/// [`Timeout`](super::TimeoutService) below it, which does that). Built by
/// [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = AnyError> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// Wraps `inner`.
    pub const fn new(inner: S, breaker: CircuitBreaker, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
        }
    }

    /// The breaker (shared with every clone).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
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

impl<S, C, Req, T, E> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req, Response = T, Error = ResilienceError<E>>,
    C: Classify<T, E> + Clone,
{
    type Response = T;
    type Error = ResilienceError<E>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.shared.acquire() {
            Ok((generation, kind)) => {
                let permit = OwnedPermit {
                    ticket: Ticket::new(&self.breaker.shared, generation, kind),
                    shared: self.breaker.shared.clone(),
                };
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(e) => ResponseFuture::rejected(e),
        }
    }
}
