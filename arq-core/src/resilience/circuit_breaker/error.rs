//! Error returned when the circuit refuses a call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::CircuitState;

/// The circuit breaker of a dependency refused a call without making it.
///
/// Never retried by arq's retry layer: the breaker exists to stop calls, so retrying would
/// only spin. Carries the dependency, the state and when the breaker will admit probes.
#[derive(Debug, Clone)]
pub struct CircuitOpenError {
    pub(crate) dependency: Arc<str>,
    pub(crate) state: CircuitState,
    pub(crate) open_until: Option<Instant>,
    pub(crate) retry_after: Option<Duration>,
}

impl CircuitOpenError {
    /// The dependency whose breaker refused the call.
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// The state that refused: open, half-open with every probe slot taken, or forced open.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// When the breaker will admit probe calls (monotonic clock), if known.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    /// How long to wait before trying again, if known (not for a forced-open breaker).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dep = &self.dependency;
        match (self.state, self.retry_after) {
            (CircuitState::HalfOpen, _) => write!(
                f,
                "circuit breaker for `{dep}` is half-open and every probe slot is taken; \
                 retry after the probes finish"
            ),
            (CircuitState::ForcedOpen, _) => write!(
                f,
                "circuit breaker for `{dep}` was forced open by an operator; \
                 calls are refused until it is reset"
            ),
            (_, Some(after)) => write!(
                f,
                "circuit breaker for `{dep}` is open for another {:.3} s after too many \
                 failures; retry after that",
                after.as_secs_f64()
            ),
            (_, None) => write!(
                f,
                "circuit breaker for `{dep}` is open after too many failures; retry later"
            ),
        }
    }
}

impl std::error::Error for CircuitOpenError {}
