//! The sliding windows the failure and slow-call rates are computed over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// What a window holds after a record: calls, failures and slow calls in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

pub(crate) enum Window {
    Count(CountWindow),
    Time(Mutex<TimeWindow>),
}

impl Window {
    pub(crate) fn count(size: u32) -> Self {
        Self::Count(CountWindow::new(size))
    }

    pub(crate) fn time(length: Duration, epoch: Instant) -> Self {
        let buckets = usize::try_from(length.as_secs().max(1)).unwrap_or(1);
        Self::Time(Mutex::new(TimeWindow {
            epoch,
            buckets: vec![Bucket::default(); buckets],
        }))
    }

    /// Records one outcome; returns the window's counts when they may now cross a threshold
    /// (`None` on the fast path where nothing that matters changed).
    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool) -> Option<Counts> {
        match self {
            Self::Count(w) => w.record(failure, slow),
            Self::Time(w) => Some(w.lock().unwrap_or_else(PoisonError::into_inner).record(
                Instant::now(),
                failure,
                slow,
            )),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        match self {
            Self::Count(w) => w.counts(),
            Self::Time(w) => w
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .counts(Instant::now()),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => {
                let mut w = w.lock().unwrap_or_else(PoisonError::into_inner);
                w.buckets.iter_mut().for_each(|b| *b = Bucket::default());
            }
        }
    }
}

// Count window: a ring of 2-bit outcome slots (bit 0 failure, bit 1 slow), 32 slots per
// atomic word, plus running failure/slow totals packed into one word. A success recorded
// into a full window that holds no failure and no slow call changes nothing (it evicts an
// identical success), so the healthy closed path is loads only: no write to shared memory.
const FIELD: u32 = 21;
const MASK: u64 = (1 << FIELD) - 1;

pub(crate) struct CountWindow {
    size: u64,
    /// Calls recorded since the last reset (the next slot is `seq % size`).
    seq: AtomicU64,
    slots: Box<[AtomicU64]>,
    /// failures in bits 0..21, slow calls in bits 21..42.
    totals: AtomicU64,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        let words = (size as usize).div_ceil(32);
        Self {
            size: u64::from(size),
            seq: AtomicU64::new(0),
            slots: (0..words).map(|_| AtomicU64::new(0)).collect(),
            totals: AtomicU64::new(0),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) -> Option<Counts> {
        let bits = u64::from(failure) | (u64::from(slow) << 1);
        if bits == 0
            && self.totals.load(Ordering::Acquire) == 0
            && self.seq.load(Ordering::Relaxed) >= self.size
        {
            return None;
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        let i = seq % self.size;
        let word = &self.slots[(i / 32) as usize];
        let shift = (i % 32) * 2;
        let old = word
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
                Some((w & !(3 << shift)) | (bits << shift))
            })
            .unwrap_or_else(|w| w);
        let old_bits = (old >> shift) & 3;
        let mut totals = self.totals.load(Ordering::Acquire);
        if old_bits != bits {
            let add = |t: u64, pos: u32, now: bool, before: bool| -> u64 {
                let v = (t >> pos) & MASK;
                let v = match (now, before) {
                    (true, false) => v + 1,
                    (false, true) => v.saturating_sub(1),
                    _ => v,
                };
                (t & !(MASK << pos)) | ((v & MASK) << pos)
            };
            let update = |t: u64| {
                let t = add(t, 0, bits & 1 == 1, old_bits & 1 == 1);
                Some(add(t, FIELD, bits & 2 == 2, old_bits & 2 == 2))
            };
            let prev = self
                .totals
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, update)
                .unwrap_or_else(|t| t);
            totals = update(prev).unwrap_or(prev);
        } else if bits == 0 && seq >= self.size {
            // A success replacing a success in a full window: rates can only stay or fall.
            return None;
        }
        Some(Counts {
            calls: (seq + 1).min(self.size),
            failures: totals & MASK,
            slow: (totals >> FIELD) & MASK,
        })
    }

    fn counts(&self) -> Counts {
        let totals = self.totals.load(Ordering::Acquire);
        Counts {
            calls: self.seq.load(Ordering::Acquire).min(self.size),
            failures: totals & MASK,
            slow: (totals >> FIELD) & MASK,
        }
    }

    fn reset(&self) {
        for w in self.slots.iter() {
            w.store(0, Ordering::Release);
        }
        self.totals.store(0, Ordering::Release);
        self.seq.store(0, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The second (since the epoch) this bucket holds, plus one; 0 = never used.
    second: u64,
    counts: Counts,
}

pub(crate) struct TimeWindow {
    epoch: Instant,
    buckets: Vec<Bucket>,
}

impl TimeWindow {
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }

    fn record(&mut self, now: Instant, failure: bool, slow: bool) -> Counts {
        let second = self.second(now);
        let n = self.buckets.len() as u64;
        let b = &mut self.buckets[(second % n) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                counts: Counts::default(),
            };
        }
        b.counts.calls += 1;
        b.counts.failures += u64::from(failure);
        b.counts.slow += u64::from(slow);
        self.counts(now)
    }

    fn counts(&self, now: Instant) -> Counts {
        let second = self.second(now);
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.second != 0 && b.second + n > second)
            .fold(Counts::default(), |acc, b| Counts {
                calls: acc.calls + b.counts.calls,
                failures: acc.failures + b.counts.failures,
                slow: acc.slow + b.counts.slow,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_evicts_the_oldest() {
        let w = CountWindow::new(4);
        w.record(true, false);
        for _ in 0..3 {
            w.record(false, false);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 1,
                slow: 0
            }
        );
        // The 5th call evicts the failure.
        assert_eq!(
            w.record(false, false),
            Some(Counts {
                calls: 4,
                failures: 0,
                slow: 0
            })
        );
        // Healthy full window: fast path, nothing changes.
        assert_eq!(w.record(false, false), None);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
        let c = w.record(false, true).unwrap();
        assert_eq!(
            c,
            Counts {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn window_sizes_not_multiple_of_32() {
        let w = CountWindow::new(33);
        for i in 0..100 {
            w.record(i % 3 == 0, false);
        }
        // The last 33 of i in 67..100: multiples of 3 are 69..=99 → 11.
        assert_eq!(w.counts().failures, 11);
        assert_eq!(w.counts().calls, 33);
    }
}
