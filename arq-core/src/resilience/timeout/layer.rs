use std::time::Duration;

use tower_layer::Layer;

use super::{Timeout, TimeoutService};

/// Applies a per-attempt [`Timeout`] to services.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: Timeout,
}

impl TimeoutLayer {
    /// A layer applying `timeout`.
    pub const fn new(timeout: Timeout) -> Self {
        Self { timeout }
    }

    /// A layer for dependency `name` with `duration` per attempt.
    pub fn for_dependency(name: &str, duration: Duration) -> Self {
        Self::new(Timeout::new(name, duration))
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService::new(inner, self.timeout.clone())
    }
}
