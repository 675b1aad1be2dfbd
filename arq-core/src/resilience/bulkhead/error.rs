use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a bulkhead refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkheadRejection {
    /// Every slot was busy and the waiting queue was full: refused at once.
    QueueFull,
    /// The call waited this long for a slot and gave up.
    WaitTimedOut(Duration),
}

/// A dependency's bulkhead refused a call. Never retried (retrying adds load to a
/// saturated dependency).
#[derive(Debug, Clone)]
pub struct BulkheadFullError {
    pub(crate) dependency: Arc<str>,
    pub(crate) max_concurrent: usize,
    pub(crate) max_waiting: usize,
    pub(crate) rejection: BulkheadRejection,
}

impl BulkheadFullError {
    /// The dependency whose bulkhead refused.
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// The bulkhead's concurrency limit.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// The bulkhead's queue length.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Why.
    pub fn rejection(&self) -> BulkheadRejection {
        self.rejection
    }
}

impl fmt::Display for BulkheadFullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rejection {
            BulkheadRejection::QueueFull => write!(
                f,
                "bulkhead for `{}` is full: {} calls in flight and {} waiting (its limits); \
                 the dependency is saturated, retry later or raise the limits",
                self.dependency, self.max_concurrent, self.max_waiting
            ),
            BulkheadRejection::WaitTimedOut(waited) => write!(
                f,
                "bulkhead for `{}`: waited {:.3} s for one of its {} slots and gave up; \
                 the dependency is saturated, retry later or raise the limits",
                self.dependency,
                waited.as_secs_f64(),
                self.max_concurrent
            ),
        }
    }
}

impl std::error::Error for BulkheadFullError {}
