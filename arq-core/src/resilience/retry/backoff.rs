use std::time::Duration;

use rand::{Rng, RngExt};

/// Exponential backoff with full jitter and a hard cap.
///
/// The delay before retry `n` (`n = 0` is the first retry) is drawn uniformly from
/// `[0, min(cap, base · 2^n)]`. The ceiling is computed with saturating arithmetic, so a
/// huge `n` gives exactly `cap` as the ceiling and the draw stays uniform over `[0, cap]`:
/// it does not collapse onto the cap (jitter lost) or overshoot it.
///
/// # Example
/// ```
/// use arq_core::resilience::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::default();
/// assert_eq!(b.ceiling(0), Duration::from_millis(100));
/// assert_eq!(b.ceiling(3), Duration::from_millis(800));
/// assert_eq!(b.ceiling(500), Duration::from_secs(30));
/// assert!(b.delay(4) <= Duration::from_millis(1600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The ceiling of the first retry's delay (default 100 ms).
    pub base: Duration,
    /// The largest ceiling (default 30 s).
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// A backoff starting at `base` and capped at `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The upper bound of the delay before retry `n`: `min(cap, base · 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).filter(|_| n < 32);
        factor
            .and_then(|f| self.base.checked_mul(f))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// A delay for retry `n`, from the thread's random generator.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, &mut rand::rng())
    }

    /// A delay for retry `n`, drawn from `rng`.
    pub fn delay_with<R: Rng + ?Sized>(&self, n: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(n);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}
