use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// An attempt ran past its per-attempt timeout or the caller's overall deadline.
#[derive(Debug, Clone)]
pub struct TimeoutError {
    pub(crate) dependency: Arc<str>,
    pub(crate) after: Duration,
    pub(crate) deadline: bool,
}

impl TimeoutError {
    /// The dependency that did not answer.
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// How long the attempt was given.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Whether the caller's overall deadline (not the per-attempt timeout) ran out. A
    /// deadline is never retried: there is no time left to retry in.
    pub fn is_deadline(&self) -> bool {
        self.deadline
    }
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.deadline {
            write!(
                f,
                "call to `{}` stopped after {:.3} s: the caller's overall deadline ran out",
                self.dependency,
                self.after.as_secs_f64()
            )
        } else {
            write!(
                f,
                "call to `{}` timed out after {:.3} s (its per-attempt timeout); \
                 the dependency is slow or unreachable",
                self.dependency,
                self.after.as_secs_f64()
            )
        }
    }
}

impl std::error::Error for TimeoutError {}
