//! Retry: try a failed call again, within limits that keep retries from making outages worse.
//!
//! The pinned semantics (`ARCHITECTURE.md`, Resilience):
//!
//! - `max_attempts` (3) counts the first call: at most 2 retries;
//! - the delay before retry `n` is drawn uniformly from `[0, min(30 s, base · 2^n)]`
//!   ([`Backoff`]: full jitter, hard cap);
//! - a `Retry-After` from the dependency ([`RetryDecision::After`]) replaces the backoff,
//!   clamped to `max_retry_after`;
//! - a retry whose delay would end past the caller's [`Deadline`] is not made;
//! - only what is idempotent or explicitly marked so is retried ([`RetryRequest`],
//!   [`Idempotency`]);
//! - open-circuit and full-bulkhead refusals, deadline timeouts and anything the classifier
//!   calls [`RetryDecision::Never`] are returned at once;
//! - a [`RetryBudget`] shared by every call to the dependency caps retries at a fraction of
//!   calls (20 % plus a floor of 10 per second by default), which stops retry storms.
//!
//! When the retry layer gives up it returns the last attempt's result unchanged.
//!
//! # Example
//! ```
//! use arq_core::resilience::{ResilienceError, Retry, RetryPolicy};
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let retry = Retry::new("inventory", RetryPolicy::default())?;
//! let calls = AtomicU32::new(0);
//! let r: Result<&str, ResilienceError<std::io::Error>> = retry
//!     .call(|| async {
//!         if calls.fetch_add(1, Ordering::SeqCst) == 0 { Err(std::io::Error::other("flaky")) } else { Ok("stock") }
//!     })
//!     .await;
//! assert_eq!(r?, "stock");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```

mod backoff;
mod future;
mod layer;
mod request;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};
use tower_service::Service;

pub use backoff::Backoff;
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use request::{CloneBody, Idempotent, RetryRequest};

use super::classify::{AnyError, Classify, RetryDecision};
use super::error::ResilienceError;
use super::{ConfigError, Deadline, ResilienceMetrics};

/// Whether a plain call may be made more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Idempotency {
    /// Safe to repeat: retried as the policy allows.
    Idempotent,
    /// Not safe to repeat: made once.
    NotIdempotent,
}

/// The retry budget: retries allowed as a share of calls, over a sliding period.
///
/// Built on tower's `TpsBudget` (which uses tokio's clock): each call deposits, each retry
/// withdraws; when it is empty retries stop until calls refill it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryBudget {
    /// Retries allowed per call (default 0.2 = 20 %).
    pub ratio: f32,
    /// Retries per second always allowed, so low-traffic services can retry (default 10).
    pub min_per_second: u32,
    /// How long a deposit counts (default 10 s).
    pub ttl: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// How a [`Retry`] behaves; defaults are the pinned ones.
///
/// # Example
/// ```
/// use arq_core::resilience::RetryPolicy;
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_attempts, 3);
/// assert_eq!(p.backoff.cap, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in total, the first call included (default 3).
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// The longest `Retry-After` honoured; longer ones are clamped to it (default 30 s).
    pub max_retry_after: Duration,
    /// The retry budget; `None` disables it.
    pub budget: Option<RetryBudget>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(30),
            budget: Some(RetryBudget::default()),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError {
                what: "max_attempts",
                why: "must be at least 1 (it counts the first call)".to_owned(),
            });
        }
        if let Some(b) = &self.budget
            && !(b.ratio >= 0.0 && b.ratio <= 1000.0)
        {
            return Err(ConfigError {
                what: "budget.ratio",
                why: format!("{} must be in [0, 1000]", b.ratio),
            });
        }
        if let Some(b) = &self.budget
            && !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&b.ttl)
        {
            return Err(ConfigError {
                what: "budget.ttl",
                why: format!("{:?} must be between 1 s and 60 s", b.ttl),
            });
        }
        Ok(())
    }
}

struct Shared {
    name: Arc<str>,
    policy: RetryPolicy,
    budget: Option<TpsBudget>,
    retries: Counter,
    budget_exhausted: Counter,
    deadline: Counter,
}

/// Retries for one dependency. Cheap to clone; clones share the budget.
#[derive(Clone)]
pub struct Retry {
    shared: Arc<Shared>,
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("dependency", &self.shared.name)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

/// How the retry layer reads a result whose error may be another middleware's.
pub(crate) fn decision_of<C, T, E>(
    classifier: &C,
    result: &Result<T, ResilienceError<E>>,
) -> RetryDecision
where
    C: Classify<T, E>,
{
    match result {
        Ok(v) => classifier.retry(Ok(v)),
        Err(ResilienceError::Inner(e)) => classifier.retry(Err(e)),
        Err(ResilienceError::Timeout(t)) if !t.is_deadline() => RetryDecision::Retry,
        // Open circuit, full bulkhead, deadline: retrying cannot help.
        Err(_) => RetryDecision::Never,
    }
}

impl Retry {
    /// Retries for dependency `name`, recording into unregistered metrics.
    pub fn new(name: &str, policy: RetryPolicy) -> Result<Self, ConfigError> {
        Self::with_metrics(name, policy, &ResilienceMetrics::unregistered())
    }

    /// Retries for dependency `name`, recording into `metrics`.
    pub fn with_metrics(
        name: &str,
        policy: RetryPolicy,
        metrics: &ResilienceMetrics,
    ) -> Result<Self, ConfigError> {
        policy.validate()?;
        let counter = |outcome| {
            metrics
                .retry_attempts
                .get_or_create_owned(&ResilienceMetrics::outcome(name, outcome))
        };
        Ok(Self {
            shared: Arc::new(Shared {
                name: Arc::from(name),
                budget: policy
                    .budget
                    .map(|b| TpsBudget::new(b.ttl, b.min_per_second, b.ratio)),
                policy,
                retries: counter("retry"),
                budget_exhausted: counter("budget_exhausted"),
                deadline: counter("deadline"),
            }),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    fn deposit(&self) {
        if let Some(b) = &self.shared.budget {
            b.deposit();
        }
    }

    /// The delay before the next attempt, or `None` to stop. `attempt` is the number of the
    /// attempt that just finished (1 = the first call).
    fn next_delay(
        &self,
        attempt: u32,
        decision: RetryDecision,
        deadline: Option<Deadline>,
    ) -> Option<Duration> {
        let s = &*self.shared;
        if attempt >= s.policy.max_attempts {
            return None;
        }
        let delay = match decision {
            RetryDecision::Never => return None,
            RetryDecision::Retry => s.policy.backoff.delay(attempt - 1),
            RetryDecision::After(d) => d.min(s.policy.max_retry_after),
        };
        // tokio's timer fires on whole milliseconds, rounding a sleep up: compare (and sleep)
        // the rounded delay, or a jittered 2.9996 s sleep before a 3 s deadline would wake at it.
        let delay = round_up_to_millis(delay);
        if let Some(deadline) = deadline
            && Instant::now() + delay >= deadline.instant()
        {
            s.deadline.inc();
            tracing::debug!(
                target: "arq::resilience",
                dependency = %s.name,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "not retrying: the delay would end past the deadline"
            );
            return None;
        }
        if let Some(b) = &s.budget
            && !b.withdraw()
        {
            s.budget_exhausted.inc();
            tracing::debug!(
                target: "arq::resilience",
                dependency = %s.name,
                attempt,
                "not retrying: the retry budget is exhausted"
            );
            return None;
        }
        s.retries.inc();
        tracing::debug!(
            target: "arq::resilience",
            dependency = %s.name,
            attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        Some(delay)
    }

    /// Runs `f` (an idempotent operation: the closure is called again for each attempt),
    /// retrying every error as the policy allows.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(Idempotency::Idempotent, &AnyError, f).await
    }

    /// Runs `f`, retrying what `classifier` calls retryable, and only when `idempotency`
    /// allows it.
    pub async fn call_with<C, F, Fut, T, E>(
        &self,
        idempotency: Idempotency,
        classifier: &C,
        mut f: F,
    ) -> Result<T, ResilienceError<E>>
    where
        C: Classify<T, E>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(idempotency, classifier, || {
            let fut = f();
            async move { fut.await.map_err(ResilienceError::Inner) }
        })
        .await
    }

    pub(crate) async fn run<C, F, Fut, T, E>(
        &self,
        idempotency: Idempotency,
        classifier: &C,
        mut f: F,
    ) -> Result<T, ResilienceError<E>>
    where
        C: Classify<T, E>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        self.deposit();
        let deadline = Deadline::current();
        let mut attempt = 1;
        loop {
            let result = f().await;
            if idempotency != Idempotency::Idempotent {
                return result;
            }
            let decision = decision_of(classifier, &result);
            match self.next_delay(attempt, decision, deadline) {
                None => return result,
                Some(delay) => {
                    drop(result);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// `d` rounded up to a whole number of milliseconds (the resolution of tokio's timer).
fn round_up_to_millis(d: Duration) -> Duration {
    let sub_ms = d.subsec_nanos() % 1_000_000;
    if sub_ms == 0 {
        d
    } else {
        d.saturating_add(Duration::from_nanos(u64::from(1_000_000 - sub_ms)))
    }
}

/// The tower [`Service`] that retries calls of `S`. Built by [`RetryLayer`].
///
/// Requests must implement [`RetryRequest`]; one that is not idempotent or cannot be cloned
/// is sent once.
#[derive(Debug, Clone)]
pub struct RetryService<S, C = AnyError> {
    inner: S,
    retry: Retry,
    classifier: C,
}

impl<S, C> RetryService<S, C> {
    /// Wraps `inner`.
    pub const fn new(inner: S, retry: Retry, classifier: C) -> Self {
        Self {
            inner,
            retry,
            classifier,
        }
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

impl<S, C, Req, T, E> Service<Req> for RetryService<S, C>
where
    S: Service<Req, Response = T, Error = ResilienceError<E>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: Classify<T, E> + Clone + Send + Sync + 'static,
    Req: RetryRequest + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    type Response = T;
    type Error = ResilienceError<E>;
    type Future = ResponseFuture<T, E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Take the service that was driven ready; leave a clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let retry = self.retry.clone();
        let classifier = self.classifier.clone();
        ResponseFuture::new(Box::pin(async move {
            retry.deposit();
            let deadline = Deadline::current();
            let template = if req.is_idempotent() {
                req.try_clone()
            } else {
                None
            };
            let mut result = inner.call(req).await;
            let mut attempt = 1;
            loop {
                let Some(next) = template.as_ref().and_then(RetryRequest::try_clone) else {
                    return result;
                };
                let decision = decision_of(&classifier, &result);
                let Some(delay) = retry.next_delay(attempt, decision, deadline) else {
                    return result;
                };
                drop(result);
                tokio::time::sleep(delay).await;
                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                result = inner.call(next).await;
                attempt += 1;
            }
        }))
    }
}
