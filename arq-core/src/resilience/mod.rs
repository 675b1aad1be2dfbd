#![doc = include_str!("guide.md")]

pub mod bulkhead;
pub mod circuit_breaker;
mod classify;
mod config_error;
mod error;
mod metrics;
mod registry;
pub mod retry;
pub mod timeout;

pub use bulkhead::{
    Bulkhead, BulkheadConfig, BulkheadFullError, BulkheadLayer, BulkheadPermit, BulkheadRejection,
    BulkheadService,
};
pub use circuit_breaker::{
    BreakerSnapshot, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    CircuitBreakerService, CircuitOpenError, CircuitState, Permit, SlidingWindow,
};
pub use classify::{AnyError, Classify, HttpClassifier, Outcome, RetryDecision, retry_after};
pub use config_error::ConfigError;
pub use error::ResilienceError;
pub use metrics::ResilienceMetrics;
pub use registry::{
    Dependency, DependencyConfig, DependencyKind, DependencyLayer, DependencyService,
    DependencySettings, ResilienceRegistry, ResilienceSettings,
};
pub use retry::{
    Backoff, CloneBody, Idempotency, Idempotent, Retry, RetryBudget, RetryLayer, RetryPolicy,
    RetryRequest, RetryService,
};
pub use timeout::{Deadline, Timeout, TimeoutError, TimeoutLayer, TimeoutService};
