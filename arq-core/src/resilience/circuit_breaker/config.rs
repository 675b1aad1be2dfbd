//! Circuit breaker configuration.

use std::time::Duration;

use super::super::ConfigError;

/// Which recent calls the failure rate is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls (lock-free; the default, 100 calls).
    Count {
        /// How many calls the window holds.
        size: u32,
    },
    /// The calls of the last `length`, in one-second buckets (takes a short lock per call).
    Time {
        /// Window length, rounded up to whole seconds.
        length: Duration,
    },
}

/// How a [`CircuitBreaker`](super::CircuitBreaker) decides; defaults are the pinned ones.
///
/// # Example
/// ```
/// use arq_core::resilience::{CircuitBreakerConfig, SlidingWindow};
/// use std::time::Duration;
///
/// let mut config = CircuitBreakerConfig::default();
/// assert_eq!(config.window, SlidingWindow::Count { size: 100 });
/// assert_eq!(config.min_calls, 20);
/// assert_eq!(config.failure_rate_threshold, 0.5);
/// assert_eq!(config.open_duration, Duration::from_secs(30));
/// config.slow_call = Some((Duration::from_secs(2), 0.8));
/// config.validate()?;
/// # Ok::<(), arq_core::resilience::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// The window the rates are computed over.
    pub window: SlidingWindow,
    /// Rates are evaluated only once this many calls are in the window (default 20).
    pub min_calls: u32,
    /// Opens when the failure rate is at least this (0 < r ≤ 1; default 0.5).
    pub failure_rate_threshold: f64,
    /// Optional slow-call rule: calls taking at least `.0` count as slow; opens when the slow
    /// rate is at least `.1`. Off by default.
    pub slow_call: Option<(Duration, f64)>,
    /// How long the circuit stays open before admitting probes (default 30 s).
    pub open_duration: Duration,
    /// Each consecutive re-open without closing in between multiplies the open duration by
    /// this (default 1.0: constant), up to [`max_open_duration`](Self::max_open_duration).
    pub open_duration_multiplier: f64,
    /// Upper bound of the growing open duration (default 5 min).
    pub max_open_duration: Duration,
    /// Probe calls half-open admits (default 2); also the consecutive successes that close.
    pub half_open_probes: u32,
    /// A half-open state that saw no verdict for this long re-opens, so a probe that hangs
    /// cannot wedge the breaker (default 60 s).
    pub half_open_max_wait: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            window: SlidingWindow::Count { size: 100 },
            min_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call: None,
            open_duration: Duration::from_secs(30),
            open_duration_multiplier: 1.0,
            max_open_duration: Duration::from_secs(300),
            half_open_probes: 2,
            half_open_max_wait: Duration::from_secs(60),
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &'static str, why: String| Err(ConfigError { what, why });
        match self.window {
            SlidingWindow::Count { size } if size == 0 || size > 1 << 20 => {
                return bad(
                    "window",
                    format!("count window size {size} must be 1..=1048576"),
                );
            }
            SlidingWindow::Count { size } if self.min_calls > size => {
                return bad(
                    "min_calls",
                    format!(
                        "min_calls {} exceeds the window size {size}",
                        self.min_calls
                    ),
                );
            }
            SlidingWindow::Time { length } if length.is_zero() || length.as_secs() > 3600 => {
                return bad(
                    "window",
                    format!("time window {length:?} must be 1 s..=1 h"),
                );
            }
            _ => {}
        }
        if self.min_calls == 0 {
            return bad("min_calls", "must be at least 1".to_owned());
        }
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        if !rate_ok(self.failure_rate_threshold) {
            return bad(
                "failure_rate_threshold",
                format!("{} must be in (0, 1]", self.failure_rate_threshold),
            );
        }
        if let Some((_, r)) = self.slow_call
            && !rate_ok(r)
        {
            return bad("slow_call", format!("rate {r} must be in (0, 1]"));
        }
        if !(self.open_duration_multiplier >= 1.0 && self.open_duration_multiplier.is_finite()) {
            return bad(
                "open_duration_multiplier",
                format!(
                    "{} must be a finite number >= 1",
                    self.open_duration_multiplier
                ),
            );
        }
        if self.half_open_probes == 0 || self.half_open_probes > 255 {
            return bad(
                "half_open_probes",
                format!("{} must be 1..=255", self.half_open_probes),
            );
        }
        Ok(())
    }

    /// The open duration after `reopens` consecutive re-opens.
    pub(crate) fn open_duration_for(&self, reopens: u32) -> Duration {
        if self.open_duration_multiplier <= 1.0 || reopens == 0 {
            return self.open_duration;
        }
        let factor = self
            .open_duration_multiplier
            .powi(i32::try_from(reopens).unwrap_or(i32::MAX));
        let secs = self.open_duration.as_secs_f64() * factor;
        let max = self.max_open_duration.max(self.open_duration);
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}
