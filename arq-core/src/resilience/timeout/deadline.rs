use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// An overall deadline carried with a call, across every retry and attempt inside it.
///
/// [`Deadline::scope`] makes it current for a future (a tokio task-local): the
/// [`Timeout`](crate::resilience::Timeout) layer cuts each attempt at whichever comes first, its own
/// timeout or the deadline, and [`Retry`](crate::resilience::Retry) never sleeps past it. Nested scopes
/// keep the earlier deadline. Spawned tasks do not inherit it; scope them explicitly.
///
/// # Example
/// ```
/// use arq_core::resilience::Deadline;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let left = Deadline::after(Duration::from_secs(2))
///     .scope(async { Deadline::current().map(|d| d.remaining()) })
///     .await;
/// assert!(left.is_some_and(|d| d <= Duration::from_secs(2)));
/// assert!(Deadline::current().is_none());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant` (tokio's monotonic clock).
    pub const fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// A deadline `duration` from now.
    pub fn after(duration: Duration) -> Self {
        let now = Instant::now();
        Self(
            now.checked_add(duration)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        )
    }

    /// The instant.
    pub const fn instant(&self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The deadline of the current task's scope, if any.
    pub fn current() -> Option<Self> {
        DEADLINE.try_with(|d| Self(*d)).ok()
    }

    /// Runs `fut` with this deadline current (or the current one, if that is earlier).
    ///
    /// The enclosing deadline is looked up when the returned future first runs, not when
    /// it is built, so `outer.scope(inner.scope(f))` keeps the earlier of the two.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        let at = match Self::current() {
            Some(outer) if outer.0 < self.0 => outer.0,
            _ => self.0,
        };
        DEADLINE.scope(at, fut).await
    }
}
