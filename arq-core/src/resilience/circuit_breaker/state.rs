//! The breaker's state machine: one packed atomic word plus the sliding window.
//!
//! The word holds the state (3 bits), the half-open probes in flight (8 bits), the half-open
//! successes (8 bits) and a generation (45 bits) that every transition increments. A call
//! remembers the generation that admitted it; its result is ignored when the generation has
//! moved on, so late results from an earlier state never cause a transition.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{CircuitBreakerConfig, SlidingWindow};
use super::error::CircuitOpenError;
use super::window::{Counts, Window};
use crate::resilience::classify::Outcome;
use crate::resilience::metrics::{ResilienceMetrics, StripedCounter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A few probe calls are admitted to test the dependency.
    HalfOpen,
    /// Refused until reset, by an operator's choice.
    ForcedOpen,
    /// Every call admitted and nothing recorded, by an operator's choice.
    Disabled,
}

impl CircuitState {
    fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
        }
    }

    fn from_code(c: u64) -> Self {
        match c {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            _ => Self::Closed,
        }
    }

    /// A short lowercase name, as used in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
        }
    }
}

const STATE_BITS: u32 = 3;
const INFLIGHT_SHIFT: u32 = 3;
const SUCC_SHIFT: u32 = 11;
const GEN_SHIFT: u32 = 19;
const BYTE: u64 = 0xff;
const NO_DEADLINE: u64 = u64::MAX;

#[inline]
fn state_of(w: u64) -> u64 {
    w & ((1 << STATE_BITS) - 1)
}
#[inline]
fn inflight_of(w: u64) -> u64 {
    (w >> INFLIGHT_SHIFT) & BYTE
}
#[inline]
fn succ_of(w: u64) -> u64 {
    (w >> SUCC_SHIFT) & BYTE
}
#[inline]
fn gen_of(w: u64) -> u64 {
    w >> GEN_SHIFT
}
#[inline]
fn pack(state: CircuitState, inflight: u64, succ: u64, generation: u64) -> u64 {
    state.code() | (inflight << INFLIGHT_SHIFT) | (succ << SUCC_SHIFT) | (generation << GEN_SHIFT)
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;

/// Whether a permit was issued by the closed state or as a half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Closed,
    Probe,
    Untracked,
}

/// A snapshot of a breaker's window and state.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The current state.
    pub state: CircuitState,
    /// Calls in the window (reset to 0 on every transition to closed or open).
    pub calls: u64,
    /// Failures in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
}

impl BreakerSnapshot {
    /// Failures / calls in the window (0 when empty).
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }
}

pub(crate) struct BreakerMetrics {
    state: Gauge,
    success: StripedCounter,
    failure: StripedCounter,
    ignored: StripedCounter,
    rejections: Counter,
    metrics: ResilienceMetrics,
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    config: CircuitBreakerConfig,
    word: AtomicU64,
    /// Nanoseconds after `epoch` when the open state ends; `NO_DEADLINE` while unknown.
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    reopens: AtomicU32,
    epoch: Instant,
    window: Window,
    slow_threshold: Option<Duration>,
    metrics: BreakerMetrics,
}

impl Shared {
    pub(crate) fn new(
        name: &str,
        config: CircuitBreakerConfig,
        metrics: &ResilienceMetrics,
    ) -> Self {
        let epoch = Instant::now();
        let window = match config.window {
            SlidingWindow::Count { size } => Window::count(size),
            SlidingWindow::Time { length } => Window::time(length, epoch),
        };
        let m = BreakerMetrics {
            state: metrics
                .breaker_state
                .get_or_create_owned(&ResilienceMetrics::dep(name)),
            success: metrics
                .breaker_calls
                .get_or_create_owned(&ResilienceMetrics::outcome(name, "success")),
            failure: metrics
                .breaker_calls
                .get_or_create_owned(&ResilienceMetrics::outcome(name, "failure")),
            ignored: metrics
                .breaker_calls
                .get_or_create_owned(&ResilienceMetrics::outcome(name, "ignored")),
            rejections: metrics
                .breaker_rejections
                .get_or_create_owned(&ResilienceMetrics::dep(name)),
            metrics: metrics.clone(),
        };
        m.state.set(0);
        Self {
            name: Arc::from(name),
            slow_threshold: config.slow_call.map(|(d, _)| d),
            config,
            word: AtomicU64::new(pack(CircuitState::Closed, 0, 0, 0)),
            open_until: AtomicU64::new(NO_DEADLINE),
            half_open_since: AtomicU64::new(0),
            reopens: AtomicU32::new(0),
            epoch,
            window,
            metrics: m,
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::from_code(state_of(self.word.load(Ordering::Acquire)))
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let c = self.window.counts();
        BreakerSnapshot {
            state: self.state(),
            calls: c.calls,
            failures: c.failures,
            slow_calls: c.slow,
        }
    }

    /// When a permit needs the call's start time (slow-call rule on).
    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        self.slow_threshold.is_some()
    }

    /// Admits a call or says why not. Returns the generation and kind of the permit.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<(u64, Kind), CircuitOpenError> {
        let w = self.word.load(Ordering::Acquire);
        match state_of(w) {
            CLOSED => Ok((gen_of(w), Kind::Closed)),
            _ => self.acquire_slow(w),
        }
    }

    #[cold]
    fn acquire_slow(&self, mut w: u64) -> Result<(u64, Kind), CircuitOpenError> {
        loop {
            match state_of(w) {
                CLOSED => return Ok((gen_of(w), Kind::Closed)),
                DISABLED => return Ok((gen_of(w), Kind::Untracked)),
                FORCED_OPEN => return Err(self.reject(CircuitState::ForcedOpen, None)),
                OPEN => {
                    let until = self.open_until.load(Ordering::Acquire);
                    let now = Instant::now();
                    let now_n = self.nanos(now);
                    if until != NO_DEADLINE && now_n >= until {
                        let next = pack(CircuitState::HalfOpen, 0, 0, gen_of(w) + 1);
                        // Published before the state, so no caller can see the new half-open
                        // with the previous one's start (and re-open it as "hung" at once).
                        self.half_open_since.store(now_n, Ordering::Release);
                        if self
                            .word
                            .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            // Only clears the deadline this transition consumed, so a re-open
                            // that raced ahead keeps its own.
                            let _ = self.open_until.compare_exchange(
                                until,
                                NO_DEADLINE,
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                            self.transitioned(CircuitState::Open, CircuitState::HalfOpen, None);
                        }
                        w = self.word.load(Ordering::Acquire);
                        continue;
                    }
                    let (open_until, retry_after) = if until == NO_DEADLINE {
                        // The opener has not published its deadline yet: it is a full period.
                        (None, Some(self.config.open_duration))
                    } else {
                        let left = Duration::from_nanos(until - now_n);
                        (Some(now + left), Some(left))
                    };
                    let mut e = self.reject(CircuitState::Open, retry_after);
                    e.open_until = open_until;
                    return Err(e);
                }
                _ => {
                    // HALF_OPEN
                    let taken = inflight_of(w) + succ_of(w);
                    if taken < u64::from(self.config.half_open_probes) {
                        let next = w + (1 << INFLIGHT_SHIFT);
                        match self.word.compare_exchange_weak(
                            w,
                            next,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => return Ok((gen_of(w), Kind::Probe)),
                            Err(actual) => {
                                w = actual;
                                continue;
                            }
                        }
                    }
                    let now_n = self.nanos(Instant::now());
                    let since = self.half_open_since.load(Ordering::Acquire);
                    let max_wait = u64::try_from(self.config.half_open_max_wait.as_nanos())
                        .unwrap_or(u64::MAX);
                    if now_n.saturating_sub(since) >= max_wait && self.trip(w, "probe timed out") {
                        w = self.word.load(Ordering::Acquire);
                        continue;
                    }
                    return Err(self.reject(CircuitState::HalfOpen, None));
                }
            }
        }
    }

    fn reject(&self, state: CircuitState, retry_after: Option<Duration>) -> CircuitOpenError {
        self.metrics.rejections.inc();
        CircuitOpenError {
            dependency: self.name.clone(),
            state,
            open_until: None,
            retry_after,
        }
    }

    /// Records a result for a permit issued in generation `generation`.
    #[inline]
    pub(crate) fn record(
        &self,
        generation: u64,
        kind: Kind,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) {
        match outcome {
            Outcome::Success => self.metrics.success.inc(),
            Outcome::Failure => self.metrics.failure.inc(),
            Outcome::Ignored => self.metrics.ignored.inc(),
        }
        let slow = match (self.slow_threshold, elapsed) {
            (Some(t), Some(e)) => e >= t,
            _ => false,
        };
        match kind {
            Kind::Untracked => {}
            Kind::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let w = self.word.load(Ordering::Acquire);
                if state_of(w) != CLOSED || gen_of(w) != generation {
                    return;
                }
                let failure = outcome == Outcome::Failure;
                if let Some(counts) = self.window.record(failure, slow)
                    && let Some(reason) = self.should_trip(counts)
                {
                    self.trip(w, reason);
                }
            }
            Kind::Probe => self.record_probe(generation, outcome, slow),
        }
    }

    fn should_trip(&self, c: Counts) -> Option<&'static str> {
        if c.calls < u64::from(self.config.min_calls) || c.calls == 0 {
            return None;
        }
        let calls = c.calls as f64;
        if c.failures as f64 / calls >= self.config.failure_rate_threshold {
            return Some("failure rate");
        }
        if let Some((_, rate)) = self.config.slow_call
            && c.slow as f64 / calls >= rate
        {
            return Some("slow-call rate");
        }
        None
    }

    /// Opens the circuit from the state in `from`; false when another thread moved first.
    fn trip(&self, from: u64, reason: &'static str) -> bool {
        let next = pack(CircuitState::Open, 0, 0, gen_of(from) + 1);
        if self
            .word
            .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let prev = CircuitState::from_code(state_of(from));
        let reopens = if prev == CircuitState::HalfOpen {
            self.reopens.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.reopens.store(0, Ordering::Release);
            0
        };
        let duration = self.config.open_duration_for(reopens);
        let until = self
            .nanos(Instant::now())
            .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        self.open_until
            .store(until.min(NO_DEADLINE - 1), Ordering::Release);
        self.window.reset();
        self.transitioned(prev, CircuitState::Open, Some((reason, duration)));
        true
    }

    fn record_probe(&self, generation: u64, outcome: Outcome, slow: bool) {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if state_of(w) != HALF_OPEN || gen_of(w) != generation {
                return;
            }
            let failure = outcome == Outcome::Failure || (outcome == Outcome::Success && slow);
            if failure {
                self.trip(w, "probe failed");
                return;
            }
            let inflight = inflight_of(w).saturating_sub(1);
            let (next, closes) = if outcome == Outcome::Ignored {
                (
                    pack(CircuitState::HalfOpen, inflight, succ_of(w), generation),
                    false,
                )
            } else {
                let succ = succ_of(w) + 1;
                if succ >= u64::from(self.config.half_open_probes) {
                    (pack(CircuitState::Closed, 0, 0, generation + 1), true)
                } else {
                    (
                        pack(CircuitState::HalfOpen, inflight, succ, generation),
                        false,
                    )
                }
            };
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if closes {
                        self.window.reset();
                        self.reopens.store(0, Ordering::Release);
                        self.transitioned(CircuitState::HalfOpen, CircuitState::Closed, None);
                    }
                    return;
                }
                Err(actual) => w = actual,
            }
        }
    }

    /// A probe that ended without a result (its future was dropped) gives its slot back.
    pub(crate) fn release_probe(&self, generation: u64) {
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (state_of(w) == HALF_OPEN && gen_of(w) == generation && inflight_of(w) > 0)
                    .then(|| w - (1 << INFLIGHT_SHIFT))
            });
    }

    /// Moves to `to` whatever the current state (operator actions).
    pub(crate) fn force(&self, to: CircuitState) {
        let until = self.open_until.load(Ordering::Acquire);
        let mut prev = 0;
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                prev = w;
                Some(pack(to, 0, 0, gen_of(w) + 1))
            });
        let _ = self.open_until.compare_exchange(
            until,
            NO_DEADLINE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.window.reset();
        self.reopens.store(0, Ordering::Release);
        let from = CircuitState::from_code(state_of(prev));
        if to == CircuitState::Open {
            // Forced into a normal open period: publish its deadline.
            let until = self.nanos(Instant::now()).saturating_add(
                u64::try_from(self.config.open_duration.as_nanos()).unwrap_or(u64::MAX),
            );
            self.open_until
                .store(until.min(NO_DEADLINE - 1), Ordering::Release);
        }
        self.transitioned(from, to, Some(("operator", Duration::ZERO)));
    }

    #[cold]
    fn transitioned(
        &self,
        from: CircuitState,
        to: CircuitState,
        why: Option<(&'static str, Duration)>,
    ) {
        self.metrics.state.set(to.code() as i64);
        self.metrics
            .metrics
            .breaker_transitions
            .get_or_create(&ResilienceMetrics::outcome(&self.name, to.as_str()))
            .inc();
        match (to, why) {
            (CircuitState::Open, Some((reason, open_for))) => tracing::warn!(
                target: "arq::resilience",
                dependency = %self.name,
                from = from.as_str(),
                to = to.as_str(),
                reason,
                open_for_ms = open_for.as_millis() as u64,
                "circuit breaker state changed"
            ),
            (_, Some((reason, _))) => tracing::info!(
                target: "arq::resilience",
                dependency = %self.name,
                from = from.as_str(),
                to = to.as_str(),
                reason,
                "circuit breaker state changed"
            ),
            (_, None) => tracing::info!(
                target: "arq::resilience",
                dependency = %self.name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker state changed"
            ),
        }
    }
}
