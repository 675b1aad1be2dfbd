//! Multi-quota GCRA: one all-or-nothing decision over several quotas.
//!
//! Each quota keeps a theoretical arrival time (TAT). A request conforms to a quota when
//! `tat - now <= tolerance`, where `tolerance = (burst - 1) · interval` and `interval =
//! period / burst`. The request is admitted only if it conforms to **every** quota, and only
//! then are all TATs advanced by their interval: a request refused by one quota consumes none
//! (PITFALL 23). The same arithmetic runs in Rust (local mode) and in the Lua script (Redis).

use std::time::Duration;

/// One quota: `limit` requests per `period`, as a burst of `limit` refilled evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    limit: u32,
    period: Duration,
    // Derived from the two above once: computing them per decision took two 128-bit divisions
    // per quota and was most of the local decision's cost.
    interval_ns: u64,
    tolerance_ns: u64,
    // `2^96 / interval + 1` when that divides every `0..=tolerance` exactly (see `per_interval`),
    // else 0. A 64-bit division is the slowest instruction of a decision (20–90 cycles; two
    // per two-quota decision); a 128-bit multiplication is about 4.
    reciprocal: u128,
}

impl Quota {
    /// `limit` per `period`; `None` when either is zero or the interval would be under 1 µs.
    pub fn new(limit: u32, period: Duration) -> Option<Self> {
        if limit == 0 || period.as_micros() / u128::from(limit) == 0 {
            return None;
        }
        // At least 1 µs (checked above); a period too long for u64 nanoseconds is refused.
        let interval_ns = u64::try_from(period.as_nanos() / u128::from(limit)).ok()?;
        let tolerance_ns = interval_ns.checked_mul(u64::from(limit - 1))?;
        // `x * m >> 96` equals `x / d` for `m = 2^96 / d + 1` whenever `x * d < 2^96` (the
        // rounding error, below `x * d / 2^96` of one unit, never crosses an integer). With
        // `x <= tolerance < limit * d` the product stays under 2^128. Holds for any limit on
        // periods up to about 3 days; longer periods divide.
        let exact = u128::from(tolerance_ns) * u128::from(interval_ns) < 1 << 96;
        let reciprocal = if exact {
            (1u128 << 96) / u128::from(interval_ns) + 1
        } else {
            0
        };
        Some(Self {
            limit,
            period,
            interval_ns,
            tolerance_ns,
            reciprocal,
        })
    }

    /// `limit` per minute.
    pub fn per_minute(limit: u32) -> Option<Self> {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` per hour.
    pub fn per_hour(limit: u32) -> Option<Self> {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// Requests per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// This quota in governor's terms (burst `limit`, all replenished per `period`).
    pub fn to_governor(&self) -> Option<governor::Quota> {
        let interval = Duration::from_nanos(self.interval_ns());
        Some(
            governor::Quota::with_period(interval)?
                .allow_burst(std::num::NonZeroU32::new(self.limit)?),
        )
    }

    pub(crate) fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    pub(crate) fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }

    /// `x / interval` for `x <= tolerance`.
    #[inline]
    fn per_interval(&self, x: u64) -> u64 {
        if self.reciprocal == 0 {
            return x / self.interval_ns;
        }
        // Cannot truncate: the quotient is at most `limit - 1`.
        ((u128::from(x) * self.reciprocal) >> 96) as u64
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// How long to wait before a retry can succeed (zero when admitted).
    pub retry_after: Duration,
    /// Per quota, in the limiter's order: limit, remaining after this decision, time until
    /// fully replenished. Stored inline (at most 4), so a decision never allocates.
    pub quotas: QuotaStates,
    /// True when the decision was not made by the configured back end (Redis down) but by the
    /// failure policy.
    pub degraded: bool,
}

/// Up to four [`QuotaState`]s, inline; dereferences to a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaStates {
    len: u8,
    items: [QuotaState; 4],
}

impl QuotaStates {
    /// No states (a decision made without quotas, like fail-open).
    pub const fn new() -> Self {
        Self {
            len: 0,
            items: [QuotaState {
                limit: 0,
                period: Duration::ZERO,
                remaining: 0,
                reset: Duration::ZERO,
            }; 4],
        }
    }

    /// Appends a state; beyond four they are dropped.
    pub fn push(&mut self, state: QuotaState) {
        if let Some(slot) = self.items.get_mut(usize::from(self.len)) {
            *slot = state;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for QuotaStates {
    type Target = [QuotaState];

    fn deref(&self) -> &[QuotaState] {
        &self.items[..usize::from(self.len)]
    }
}

impl FromIterator<QuotaState> for QuotaStates {
    fn from_iter<I: IntoIterator<Item = QuotaState>>(iter: I) -> Self {
        let mut s = Self::new();
        for q in iter {
            s.push(q);
        }
        s
    }
}

/// One quota's state after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaState {
    /// The quota's limit.
    pub limit: u32,
    /// The quota's period.
    pub period: Duration,
    /// Requests still admitted right now.
    pub remaining: u32,
    /// Time until the quota is full again.
    pub reset: Duration,
}

impl Decision {
    /// The quota closest to refusing (fewest remaining, then longest reset): the one the
    /// `RateLimit-*` headers describe.
    pub fn tightest(&self) -> Option<&QuotaState> {
        self.quotas
            .iter()
            .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
    }
}

/// Decides over `tats` (one per quota, in ns on the caller's clock) at `now`, updating them
/// only when admitted.
#[inline]
pub(crate) fn decide(tats: &mut [u64], now: u64, quotas: &[Quota]) -> Decision {
    // How far each TAT is ahead of now; a TAT in the past counts as now.
    let mut allowed = true;
    let mut retry_ns = 0u64;
    for (tat, q) in tats.iter().zip(quotas) {
        let ahead = tat.saturating_sub(now);
        if ahead > q.tolerance_ns {
            allowed = false;
            retry_ns = retry_ns.max(ahead - q.tolerance_ns);
        }
    }
    let mut states = QuotaStates::new();
    for (tat, q) in tats.iter_mut().zip(quotas) {
        let mut ahead = tat.saturating_sub(now);
        if allowed {
            ahead += q.interval_ns;
            *tat = now + ahead;
        }
        let remaining = match q.tolerance_ns.checked_sub(ahead) {
            None => 0,
            Some(slack) => (q.per_interval(slack) + 1).min(u64::from(q.limit)) as u32,
        };
        states.push(QuotaState {
            limit: q.limit,
            period: q.period,
            remaining,
            reset: Duration::from_nanos(ahead),
        });
    }
    Decision {
        allowed,
        retry_after: Duration::from_nanos(retry_ns),
        quotas: states,
        degraded: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_boundary_is_exact() {
        let q = [Quota::per_minute(600).unwrap()];
        let mut tats = [0];
        for i in 0..600 {
            let d = decide(&mut tats, SEC, &q);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.quotas[0].remaining, 599 - i);
        }
        let d = decide(&mut tats, SEC, &q);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        // One interval later exactly one more.
        let t = SEC + 100_000_000;
        assert!(decide(&mut tats, t, &q).allowed);
        assert!(!decide(&mut tats, t, &q).allowed);
        assert!(!decide(&mut tats, t + 99_999_999, &q).allowed);
        assert!(decide(&mut tats, t + 100_000_000, &q).allowed);
    }

    #[test]
    fn refusal_by_one_quota_consumes_none() {
        // Hourly quota of 5, minute quota of 3.
        let q = [Quota::per_minute(3).unwrap(), Quota::per_hour(5).unwrap()];
        let mut tats = [0, 0];
        for _ in 0..3 {
            assert!(decide(&mut tats, SEC, &q).allowed);
        }
        let before = tats;
        let d = decide(&mut tats, SEC, &q);
        assert!(!d.allowed);
        assert_eq!(tats, before, "the minute refusal consumed hourly quota");
        assert_eq!(d.quotas[1].remaining, 2);
        // After a minute: two more, then the hour refuses and consumes no minute quota.
        let t = SEC + 60 * SEC;
        assert!(decide(&mut tats, t, &q).allowed);
        assert!(decide(&mut tats, t, &q).allowed);
        let before = tats;
        let d = decide(&mut tats, t, &q);
        assert!(!d.allowed);
        assert_eq!(tats, before, "the hourly refusal consumed minute quota");
        assert_eq!(d.quotas[0].remaining, 1);
        assert_eq!(d.tightest().unwrap().limit, 5);
    }

    #[test]
    fn quotas_precompute_interval_and_tolerance() {
        let q = Quota::per_minute(600).unwrap();
        assert_eq!(
            (q.interval_ns(), q.tolerance_ns()),
            (100_000_000, 59_900_000_000)
        );
        let q = Quota::per_hour(10_000).unwrap();
        assert_eq!(
            (q.interval_ns(), q.tolerance_ns()),
            (360_000_000, 3_599_640_000_000)
        );
        // Both default quotas take the division-free path; a year-long one divides.
        assert_ne!(q.reciprocal, 0);
        assert_ne!(Quota::per_minute(600).unwrap().reciprocal, 0);
        let year = Quota::new(1_000, Duration::from_secs(365 * 86_400)).unwrap();
        assert_eq!(year.reciprocal, 0);
        assert_eq!(year.per_interval(year.tolerance_ns()), 999);
        // Intervals under 1 µs, and periods beyond u64 nanoseconds, are refused.
        assert_eq!(Quota::new(2_000_000, Duration::from_secs(1)), None);
        assert_eq!(Quota::new(1, Duration::from_secs(u64::MAX)), None);
        assert_eq!(Quota::new(0, Duration::from_secs(1)), None);
    }

    proptest! {
        /// The multiply-and-shift division equals plain division wherever a decision uses it.
        #[test]
        fn reciprocal_division_is_exact(
            limit in 1u32..=u32::MAX,
            period_ms in 1u64..400_000_000,
            pick in any::<u64>(),
        ) {
            let Some(q) = Quota::new(limit, Duration::from_millis(period_ms)) else {
                return Ok(());
            };
            let tol = q.tolerance_ns();
            for x in [0, tol, pick % (tol + 1), tol - tol % q.interval_ns(), (tol - tol % q.interval_ns()).saturating_sub(1)] {
                prop_assert_eq!(q.per_interval(x), x / q.interval_ns(), "x = {}", x);
            }
        }

        /// Over any window of length T, admitted requests never exceed burst + T/interval
        /// (GCRA's bound), and a steady client at the exact rate is never refused.
        #[test]
        fn gcra_accuracy(limit in 1u32..50, gaps in proptest::collection::vec(0u64..200_000_000, 1..300)) {
            let q = [Quota::new(limit, Duration::from_secs(1)).unwrap()];
            let interval = q[0].interval_ns();
            let mut tats = [0];
            let mut now = SEC;
            let mut admitted = Vec::new();
            for g in gaps {
                now += g;
                if decide(&mut tats, now, &q).allowed {
                    admitted.push(now);
                }
            }
            for (i, &start) in admitted.iter().enumerate() {
                for window in [SEC / 10, SEC, 3 * SEC] {
                    let n = admitted[i..].iter().take_while(|&&t| t < start + window).count() as u64;
                    prop_assert!(n <= u64::from(limit) + window.div_ceil(interval), "{n} in {window}");
                }
            }
            let mut tats = [0];
            for k in 0..200u64 {
                prop_assert!(decide(&mut tats, SEC + k * interval, &q).allowed);
            }
        }
    }
}
