use tower_layer::Layer;

use super::{Retry, RetryService};
use crate::resilience::classify::AnyError;

/// Applies a [`Retry`] to services; every service built shares its budget.
#[derive(Debug, Clone)]
pub struct RetryLayer<C = AnyError> {
    retry: Retry,
    classifier: C,
}

impl RetryLayer {
    /// A layer for `retry`, retrying every error.
    pub const fn new(retry: Retry) -> Self {
        Self {
            retry,
            classifier: AnyError,
        }
    }
}

impl<C> RetryLayer<C> {
    /// Uses `classifier` to decide what is retryable.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        RetryLayer {
            retry: self.retry,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(inner, self.retry.clone(), self.classifier.clone())
    }
}
