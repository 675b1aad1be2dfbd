//! The in-process limiter: multi-quota GCRA state per key on governor's monotonic clock, in a
//! sharded map with a hard bound on the number of keys.
//!
//! Why not `governor::RateLimiter` itself: a governor limiter decides one quota and cannot give
//! back a cell, so two limiters (minute and hour) cannot make one atomic decision — a request
//! refused by the hour limiter would already have consumed a minute cell. The state for all
//! quotas of a key therefore lives under one lock here, decided by [`super::gcra`]; governor
//! provides the clock (`quanta`, monotonic) and, through [`Quota::to_governor`](super::Quota::to_governor),
//! the vocabulary.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock, Reference};

use super::gcra::{Decision, Quota, decide};

const SHARDS: usize = 32;

/// State of one key: a TAT per quota (at most 4 quotas).
type Tats = [u64; 4];

// foldhash: seeded per process (keys come from clients) and several times faster than SipHash
// on short keys, which matters at a sub-100 ns decision budget.
type Shard = Mutex<HashMap<Box<str>, Tats, foldhash::fast::RandomState>>;

/// An in-process multi-quota limiter keyed by string.
///
/// # Example
/// ```
/// use arq_core::rate_limit::{LocalLimiter, Quota};
///
/// let limiter = LocalLimiter::new(vec![Quota::per_minute(2).unwrap()], 1000);
/// assert!(limiter.check("alice").allowed);
/// assert!(limiter.check("alice").allowed);
/// assert!(!limiter.check("alice").allowed);
/// assert!(limiter.check("bob").allowed);
/// ```
pub struct LocalLimiter<C: Clock = DefaultClock> {
    quotas: Vec<Quota>,
    shards: Box<[Shard]>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    clock: C,
    start: C::Instant,
}

impl<C: Clock> std::fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("quotas", &self.quotas)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl LocalLimiter<DefaultClock> {
    /// A limiter of `quotas` (1 to 4) remembering at most about `max_keys` keys.
    pub fn new(quotas: Vec<Quota>, max_keys: usize) -> Self {
        Self::with_clock(quotas, max_keys, DefaultClock::default())
    }
}

impl<C: Clock> LocalLimiter<C> {
    /// The same with a given clock (governor's `FakeRelativeClock` in tests).
    pub fn with_clock(mut quotas: Vec<Quota>, max_keys: usize, clock: C) -> Self {
        quotas.truncate(4);
        let start = clock.now();
        Self {
            quotas,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(foldhash::fast::RandomState::default())))
                .collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
            clock,
            start,
        }
    }

    /// The quotas, in order.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides one request for `key`.
    pub fn check(&self, key: &str) -> Decision {
        // Offset by 1 ns so a fresh key's zero TAT is always in the past.
        let now = self.clock.now().duration_since(self.start).as_u64() + 1;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let n = self.quotas.len();
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tats) = map.get_mut(key) {
            return decide(&mut tats[..n], now, &self.quotas);
        }
        if map.len() >= self.per_shard {
            // Keys whose every TAT is in the past are equivalent to fresh ones: forget them.
            map.retain(|_, t| t[..n].iter().any(|&tat| tat > now));
            if map.len() >= self.per_shard {
                // Still full of active keys: evict one. The evicted key may burst again; this
                // is the price of a hard memory bound (size max_keys to the expected keys).
                if let Some(victim) = map.keys().next().cloned() {
                    map.remove(&victim);
                }
            }
        }
        let mut tats: Tats = [0; 4];
        let d = decide(&mut tats[..n], now, &self.quotas);
        map.insert(key.into(), tats);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn memory_stays_bounded_under_many_keys() {
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(vec![Quota::per_minute(10).unwrap()], 1000, clock.clone());
        for i in 0..100_000 {
            l.check(&format!("ip:{i}"));
        }
        assert!(l.len() <= 1000 + SHARDS, "{} keys", l.len());
        // Idle keys are forgotten once their quota is full again.
        clock.advance(Duration::from_secs(61));
        for i in 0..10 {
            l.check(&format!("new:{i}"));
        }
        assert!(l.len() <= 1000 + SHARDS);
    }

    #[test]
    fn time_refills() {
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(vec![Quota::per_minute(60).unwrap()], 100, clock.clone());
        for _ in 0..60 {
            assert!(l.check("k").allowed);
        }
        let d = l.check("k");
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(l.check("k").allowed);
        assert!(!l.check("k").allowed);
    }

    #[test]
    fn concurrent_two_quota_decisions_never_exceed_either_quota() {
        // A clock that only moves when told: the totals below are exact, however slowly the
        // threads run.
        let clock = FakeRelativeClock::default();
        let l = LocalLimiter::with_clock(
            vec![Quota::per_minute(30).unwrap(), Quota::per_hour(50).unwrap()],
            100,
            clock.clone(),
        );
        let keys = ["a", "b", "c", "d"];
        let run = || {
            let admitted: [std::sync::atomic::AtomicU32; 4] = Default::default();
            std::thread::scope(|s| {
                for t in 0..8 {
                    let (l, admitted) = (&l, &admitted);
                    s.spawn(move || {
                        for i in 0..100 {
                            let k = (t + i) % keys.len();
                            if l.check(keys[k]).allowed {
                                admitted[k].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            admitted.map(std::sync::atomic::AtomicU32::into_inner)
        };
        // 200 attempts per key: the minute quota admits its burst of 30.
        assert_eq!(run(), [30; 4]);
        // A minute later the minute quota is full again, but the hour (one cell per 72 s) has
        // only 20 of its 50 left: had the 170 refused attempts per key consumed hourly cells,
        // fewer (or, had refusals been admitted by one quota, more) would pass now.
        clock.advance(Duration::from_secs(60));
        assert_eq!(run(), [20; 4]);
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_burst() {
        let l = std::sync::Arc::new(LocalLimiter::new(
            vec![
                Quota::per_hour(500).unwrap(),
                Quota::new(800, Duration::from_secs(86_400)).unwrap(),
            ],
            100,
        ));
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        if l.check("shared").allowed {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 1600 attempts, far faster than the 7.2 s the hourly quota needs to refill one.
        let n = admitted.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n, 500);
    }
}
