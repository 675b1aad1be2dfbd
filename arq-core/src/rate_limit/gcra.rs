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
}

impl Quota {
    /// `limit` per `period`; `None` when either is zero or the interval would be under 1 µs.
    pub fn new(limit: u32, period: Duration) -> Option<Self> {
        if limit == 0 || period.as_micros() / u128::from(limit) == 0 {
            return None;
        }
        Some(Self { limit, period })
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
        (self.period.as_nanos() / u128::from(self.limit)) as u64
    }

    pub(crate) fn tolerance_ns(&self) -> u64 {
        self.interval_ns() * u64::from(self.limit - 1)
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
pub(crate) fn decide(tats: &mut [u64], now: u64, quotas: &[Quota]) -> Decision {
    let mut allowed = true;
    let mut retry_ns = 0u64;
    for (tat, q) in tats.iter().zip(quotas) {
        let tat = (*tat).max(now);
        let tolerance = q.tolerance_ns();
        if tat - now > tolerance {
            allowed = false;
            retry_ns = retry_ns.max(tat - tolerance - now);
        }
    }
    let mut states = QuotaStates::new();
    for (tat, q) in tats.iter_mut().zip(quotas) {
        let base = (*tat).max(now);
        let new_tat = if allowed {
            base + q.interval_ns()
        } else {
            base
        };
        if allowed {
            *tat = new_tat;
        }
        let ahead = new_tat - now;
        let tolerance = q.tolerance_ns();
        let remaining = if ahead > tolerance {
            0
        } else {
            ((tolerance - ahead) / q.interval_ns() + 1).min(u64::from(q.limit)) as u32
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

    proptest! {
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
