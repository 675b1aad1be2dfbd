//! Bulkhead: a bounded number of concurrent calls per dependency, a bounded queue, a max wait.
//!
//! Defaults are the pinned ones: 20 calls in flight, at most 100 waiting (first come, first
//! served: tokio's semaphore is fair), and the 121st caller is refused at once with
//! [`BulkheadFullError`]. A waiter gives up after `max_wait` (or when the caller's
//! [`Deadline`] comes first). The slot is an RAII permit: it is released on
//! success, error, panic (unwinding drops it) and when the call's future is dropped.
//! Each dependency has its own bulkhead, so saturating one leaves the others alone.
//!
//! # Example
//! ```
//! use arq_core::resilience::{Bulkhead, BulkheadConfig, ResilienceError};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bulkhead = Bulkhead::new("reports-db", BulkheadConfig::default())?;
//! let n: Result<u64, ResilienceError<std::io::Error>> = bulkhead.call(|| async { Ok(7) }).await;
//! assert_eq!(n?, 7);
//! assert_eq!(bulkhead.in_flight(), 0);
//! # Ok(()) }
//! ```

mod error;
mod future;
mod layer;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, TryAcquireError};
use tower_service::Service;

pub use error::{BulkheadFullError, BulkheadRejection};
pub use future::ResponseFuture;
pub use layer::BulkheadLayer;

use super::error::ResilienceError;
use super::{ConfigError, Deadline, ResilienceMetrics};

/// Bulkhead limits.
///
/// # Example
/// ```
/// use arq_core::resilience::BulkheadConfig;
/// let c = BulkheadConfig::default();
/// assert_eq!((c.max_concurrent, c.max_waiting), (20, 100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadConfig {
    /// Calls in flight at once (default 20).
    pub max_concurrent: usize,
    /// Calls allowed to wait for a slot (default 100); the next one is refused at once.
    pub max_waiting: usize,
    /// How long a call waits for a slot before it is refused (default 5 s).
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 20,
            max_waiting: 100,
            max_wait: Duration::from_secs(5),
        }
    }
}

impl BulkheadConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 || self.max_concurrent > Semaphore::MAX_PERMITS {
            return Err(ConfigError {
                what: "max_concurrent",
                why: format!("{} must be at least 1", self.max_concurrent),
            });
        }
        Ok(())
    }
}

struct Shared {
    name: Arc<str>,
    config: BulkheadConfig,
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
    in_flight_gauge: Gauge,
    waiting_gauge: Gauge,
    queue_full: Counter,
    wait_timeout: Counter,
}

/// A bulkhead for one dependency. Cheap to clone; clones share the slots.
#[derive(Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("dependency", &self.shared.name)
            .field("in_flight", &self.in_flight())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

/// A bulkhead slot; released when dropped.
#[must_use = "the slot is released when the permit is dropped"]
pub struct BulkheadPermit<'a> {
    _permit: SemaphorePermit<'a>,
    shared: &'a Shared,
}

impl fmt::Debug for BulkheadPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit").finish_non_exhaustive()
    }
}

impl Drop for BulkheadPermit<'_> {
    fn drop(&mut self) {
        self.shared.in_flight_gauge.dec();
    }
}

/// A slot that owns a handle to the bulkhead (for `'static` futures).
pub(crate) struct OwnedBulkheadPermit {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl Drop for OwnedBulkheadPermit {
    fn drop(&mut self) {
        self.shared.in_flight_gauge.dec();
    }
}

/// Counts one waiter for as long as it lives (also when the waiting future is dropped).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting_gauge.dec();
    }
}

impl Bulkhead {
    /// A bulkhead for dependency `name`, recording into unregistered metrics.
    pub fn new(name: &str, config: BulkheadConfig) -> Result<Self, ConfigError> {
        Self::with_metrics(name, config, &ResilienceMetrics::unregistered())
    }

    /// A bulkhead for dependency `name` recording into `metrics`.
    pub fn with_metrics(
        name: &str,
        config: BulkheadConfig,
        metrics: &ResilienceMetrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let dep = ResilienceMetrics::dep(name);
        Ok(Self {
            shared: Arc::new(Shared {
                name: Arc::from(name),
                semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
                config,
                waiting: AtomicUsize::new(0),
                in_flight_gauge: metrics.bulkhead_in_flight.get_or_create_owned(&dep),
                waiting_gauge: metrics.bulkhead_waiting.get_or_create_owned(&dep),
                queue_full: metrics
                    .bulkhead_rejections
                    .get_or_create_owned(&ResilienceMetrics::outcome(name, "queue_full")),
                wait_timeout: metrics
                    .bulkhead_rejections
                    .get_or_create_owned(&ResilienceMetrics::outcome(name, "wait_timeout")),
            }),
        })
    }

    /// The dependency.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.config.max_concurrent - self.shared.semaphore.available_permits()
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// Waits for a slot (at most `max_wait`, and never past the current deadline).
    pub async fn acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFullError> {
        let s = &*self.shared;
        let permit = match s.semaphore.try_acquire() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                let _waiting = self.enqueue()?;
                let wait = self.max_wait();
                match tokio::time::timeout(wait, s.semaphore.acquire()).await {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; treat it like a timeout if it were.
                    Ok(Err(_)) | Err(_) => return Err(self.timed_out(wait)),
                }
            }
        };
        s.in_flight_gauge.inc();
        Ok(BulkheadPermit {
            _permit: permit,
            shared: s,
        })
    }

    pub(crate) async fn acquire_owned(&self) -> Result<OwnedBulkheadPermit, BulkheadFullError> {
        let s = &self.shared;
        let permit = match s.semaphore.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                let _waiting = self.enqueue()?;
                let wait = self.max_wait();
                match tokio::time::timeout(wait, s.semaphore.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) | Err(_) => return Err(self.timed_out(wait)),
                }
            }
        };
        s.in_flight_gauge.inc();
        Ok(OwnedBulkheadPermit {
            _permit: permit,
            shared: s.clone(),
        })
    }

    fn max_wait(&self) -> Duration {
        let max = self.shared.config.max_wait;
        Deadline::current().map_or(max, |d| d.remaining().min(max))
    }

    fn enqueue(&self) -> Result<Waiting<'_>, BulkheadFullError> {
        let s = &*self.shared;
        let max = s.config.max_waiting;
        if s.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max).then_some(w + 1)
            })
            .is_err()
        {
            s.queue_full.inc();
            return Err(self.error(BulkheadRejection::QueueFull));
        }
        s.waiting_gauge.inc();
        Ok(Waiting(s))
    }

    fn timed_out(&self, waited: Duration) -> BulkheadFullError {
        self.shared.wait_timeout.inc();
        self.error(BulkheadRejection::WaitTimedOut(waited))
    }

    fn error(&self, rejection: BulkheadRejection) -> BulkheadFullError {
        BulkheadFullError {
            dependency: self.shared.name.clone(),
            max_concurrent: self.shared.config.max_concurrent,
            max_waiting: self.shared.config.max_waiting,
            rejection,
        }
    }

    /// Runs `f` holding a slot.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self.acquire().await?;
        f().await.map_err(ResilienceError::Inner)
    }

    pub(crate) async fn run<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        let _permit = self.acquire().await?;
        f().await
    }
}

/// The tower [`Service`] that runs each call of `S` inside a [`Bulkhead`] slot.
///
/// The slot is taken in the response future (so the queue and `max_wait` apply), then the
/// inner service is driven to readiness and called. Built by [`BulkheadLayer`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S> BulkheadService<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S, bulkhead: Bulkhead) -> Self {
        Self { inner, bulkhead }
    }

    /// The bulkhead (shared with every clone).
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
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

impl<S, Req, E> Service<Req> for BulkheadService<S>
where
    S: Service<Req, Error = ResilienceError<E>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    E: Send + 'static,
{
    type Response = S::Response;
    type Error = ResilienceError<E>;
    type Future = ResponseFuture<S::Response, E>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited inside the future, after the slot is taken, so that waiting
        // for the inner service counts against the bulkhead's wait and limits.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = self.inner.clone();
        let bulkhead = self.bulkhead.clone();
        ResponseFuture::new(Box::pin(async move {
            let _permit = bulkhead.acquire_owned().await?;
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(req).await
        }))
    }
}
