//! Named per-dependency policies built from configuration, shared by every clone and handler.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tower_layer::Layer;

use super::bulkhead::{Bulkhead, BulkheadConfig, BulkheadService};
use super::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerService, SlidingWindow,
};
use super::classify::{AnyError, Classify};
use super::error::ResilienceError;
use super::retry::{Backoff, Idempotency, Retry, RetryPolicy, RetryService};
use super::timeout::{Timeout, TimeoutService};
use super::{ConfigError, ResilienceMetrics};

/// What kind of dependency a policy protects; each kind has the seed's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DependencyKind {
    /// Another HTTP service: 30 s per attempt.
    Http,
    /// A database: 5 s per attempt.
    Database,
    /// A third-party API: 10 s per attempt.
    External,
}

impl DependencyKind {
    /// The kind's per-attempt timeout.
    pub const fn default_timeout(self) -> Duration {
        match self {
            Self::Http => Duration::from_secs(30),
            Self::Database => Duration::from_secs(5),
            Self::External => Duration::from_secs(10),
        }
    }
}

/// Every policy of one dependency.
///
/// # Example
/// ```
/// use arq_core::resilience::{DependencyConfig, DependencyKind};
/// use std::time::Duration;
///
/// let db = DependencyConfig::for_kind(DependencyKind::Database);
/// assert_eq!(db.timeout, Duration::from_secs(5));
/// assert_eq!(db.retry.max_attempts, 3);
/// assert_eq!(db.bulkhead.max_concurrent, 20);
/// assert_eq!(db.breaker.open_duration, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DependencyConfig {
    /// The kind the defaults came from.
    pub kind: DependencyKind,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Circuit breaker.
    pub breaker: CircuitBreakerConfig,
    /// Retries.
    pub retry: RetryPolicy,
    /// Bulkhead.
    pub bulkhead: BulkheadConfig,
}

impl DependencyConfig {
    /// The seed's defaults for `kind`: breaker 50 % / 2 probes / 30 s open, 3 attempts with
    /// full-jitter backoff capped at 30 s, bulkhead 20 + 100 waiting, the kind's timeout.
    pub fn for_kind(kind: DependencyKind) -> Self {
        Self {
            kind,
            timeout: kind.default_timeout(),
            breaker: CircuitBreakerConfig::default(),
            retry: RetryPolicy::default(),
            bulkhead: BulkheadConfig::default(),
        }
    }

    /// Checks every part.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError {
                what: "timeout",
                why: "must be longer than zero".to_owned(),
            });
        }
        self.breaker.validate()?;
        self.retry.validate()?;
        self.bulkhead.validate()
    }
}

/// One dependency's settings as read from configuration; what is unset takes the kind's
/// defaults. Durations are in milliseconds.
///
/// # Example
/// ```
/// use arq_core::resilience::{DependencyKind, DependencySettings};
/// let s: DependencySettings = serde_json::from_str(r#"{"kind": "database", "timeout_ms": 2000}"#)?;
/// let c = s.resolve()?;
/// assert_eq!(c.kind, DependencyKind::Database);
/// assert_eq!(c.timeout.as_millis(), 2000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DependencySettings {
    /// The kind (default `external`).
    pub kind: Option<DependencyKind>,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Attempts, the first included.
    pub max_attempts: Option<u32>,
    /// Ceiling of the first retry's delay.
    pub backoff_base_ms: Option<u64>,
    /// Largest retry delay.
    pub backoff_cap_ms: Option<u64>,
    /// Retries allowed per call (the retry budget).
    pub retry_budget_ratio: Option<f32>,
    /// Breaker: failure rate that opens (0..1].
    pub failure_rate_threshold: Option<f64>,
    /// Breaker: calls in the count window.
    pub window_size: Option<u32>,
    /// Breaker: calls needed before rates are evaluated.
    pub min_calls: Option<u32>,
    /// Breaker: how long it stays open.
    pub open_duration_ms: Option<u64>,
    /// Breaker: half-open probes (and successes to close).
    pub half_open_probes: Option<u32>,
    /// Bulkhead: calls in flight.
    pub max_concurrent: Option<usize>,
    /// Bulkhead: calls waiting.
    pub max_waiting: Option<usize>,
    /// Bulkhead: longest wait.
    pub max_wait_ms: Option<u64>,
}

impl DependencySettings {
    /// The full configuration: the kind's defaults with these settings applied, validated.
    pub fn resolve(&self) -> Result<DependencyConfig, ConfigError> {
        let ms = Duration::from_millis;
        let mut c = DependencyConfig::for_kind(self.kind.unwrap_or(DependencyKind::External));
        if let Some(v) = self.timeout_ms {
            c.timeout = ms(v);
        }
        if let Some(v) = self.max_attempts {
            c.retry.max_attempts = v;
        }
        c.retry.backoff = Backoff::new(
            self.backoff_base_ms.map_or(c.retry.backoff.base, ms),
            self.backoff_cap_ms.map_or(c.retry.backoff.cap, ms),
        );
        if let (Some(r), Some(b)) = (self.retry_budget_ratio, c.retry.budget.as_mut()) {
            b.ratio = r;
        }
        if let Some(v) = self.failure_rate_threshold {
            c.breaker.failure_rate_threshold = v;
        }
        if let Some(size) = self.window_size {
            c.breaker.window = SlidingWindow::Count { size };
        }
        if let Some(v) = self.min_calls {
            c.breaker.min_calls = v;
        }
        if let Some(v) = self.open_duration_ms {
            c.breaker.open_duration = ms(v);
        }
        if let Some(v) = self.half_open_probes {
            c.breaker.half_open_probes = v;
        }
        if let Some(v) = self.max_concurrent {
            c.bulkhead.max_concurrent = v;
        }
        if let Some(v) = self.max_waiting {
            c.bulkhead.max_waiting = v;
        }
        if let Some(v) = self.max_wait_ms {
            c.bulkhead.max_wait = ms(v);
        }
        c.validate()?;
        Ok(c)
    }
}

/// The `resilience` section of a service's configuration: settings per dependency name.
///
/// # Example
/// ```
/// use arq_core::resilience::ResilienceSettings;
/// let s: ResilienceSettings = serde_json::from_str(
///     r#"{"dependencies": {"users-db": {"kind": "database"}, "stripe": {"max_attempts": 2}}}"#,
/// )?;
/// assert_eq!(s.dependencies.len(), 2);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ResilienceSettings {
    /// Settings by dependency name.
    #[serde(default)]
    pub dependencies: HashMap<String, DependencySettings>,
}

/// One dependency's resilience stack: retry ⊃ circuit breaker ⊃ bulkhead ⊃ timeout.
///
/// Cheap to clone; clones share all state. Use [`call`](Self::call) around any future, or
/// [`layer`](Self::layer) around a tower service.
#[derive(Clone)]
pub struct Dependency {
    name: Arc<str>,
    config: Arc<DependencyConfig>,
    retry: Retry,
    breaker: CircuitBreaker,
    bulkhead: Bulkhead,
    timeout: Timeout,
}

impl fmt::Debug for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .field("kind", &self.config.kind)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.bulkhead)
            .finish_non_exhaustive()
    }
}

impl Dependency {
    /// Builds the stack for dependency `name`.
    pub fn new(
        name: &str,
        config: DependencyConfig,
        metrics: &ResilienceMetrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            name: Arc::from(name),
            retry: Retry::with_metrics(name, config.retry.clone(), metrics)?,
            breaker: CircuitBreaker::with_metrics(name, config.breaker.clone(), metrics)?,
            bulkhead: Bulkhead::with_metrics(name, config.bulkhead.clone(), metrics)?,
            timeout: Timeout::with_metrics(name, config.timeout, metrics),
            config: Arc::new(config),
        })
    }

    /// The dependency's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn config(&self) -> &DependencyConfig {
        &self.config
    }

    /// Its circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Its bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// Its retries.
    pub fn retry(&self) -> &Retry {
        &self.retry
    }

    /// Its per-attempt timeout.
    pub fn timeout(&self) -> &Timeout {
        &self.timeout
    }

    /// Runs the idempotent operation `f` through the whole stack; every error is a
    /// retryable failure. `f` is called once per attempt.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(Idempotency::Idempotent, &AnyError, f).await
    }

    /// Runs `f` through the whole stack with a classifier, retrying only if `idempotency`
    /// allows it.
    pub async fn call_with<C, F, Fut, T, E>(
        &self,
        idempotency: Idempotency,
        classifier: &C,
        mut f: F,
    ) -> Result<T, ResilienceError<E>>
    where
        C: Classify<T, E>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry
            .run(idempotency, classifier, || {
                // Futures are lazy: creating it here does no work until the breaker and the
                // bulkhead have admitted the attempt.
                let fut = f();
                async move {
                    self.breaker
                        .run(classifier, || {
                            self.bulkhead.run(|| {
                                self.timeout.run(|| async move {
                                    fut.await.map_err(ResilienceError::Inner)
                                })
                            })
                        })
                        .await
                }
            })
            .await
    }

    /// The stack as a tower layer, counting every error as a retryable failure.
    pub fn layer(&self) -> DependencyLayer {
        self.layer_with(AnyError)
    }

    /// The stack as a tower layer with a classifier (e.g. [`HttpClassifier`](super::HttpClassifier)).
    pub fn layer_with<C>(&self, classifier: C) -> DependencyLayer<C> {
        DependencyLayer {
            dependency: self.clone(),
            classifier,
        }
    }
}

/// The tower layer of a [`Dependency`]: wraps a service in retry ⊃ breaker ⊃ bulkhead ⊃ timeout.
#[derive(Debug, Clone)]
pub struct DependencyLayer<C = AnyError> {
    dependency: Dependency,
    classifier: C,
}

/// The service a [`DependencyLayer`] builds.
pub type DependencyService<S, C = AnyError> =
    RetryService<CircuitBreakerService<BulkheadService<TimeoutService<S>>, C>, C>;

impl<S, C: Clone> Layer<S> for DependencyLayer<C> {
    type Service = DependencyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let d = &self.dependency;
        let timeout = TimeoutService::new(inner, d.timeout.clone());
        let bulkhead = BulkheadService::new(timeout, d.bulkhead.clone());
        let breaker =
            CircuitBreakerService::new(bulkhead, d.breaker.clone(), self.classifier.clone());
        RetryService::new(breaker, d.retry.clone(), self.classifier.clone())
    }
}

/// Every dependency of a service by name, built once from configuration and shared.
///
/// # Example
/// ```
/// use arq_core::metrics::MetricsRegistry;
/// use arq_core::resilience::{DependencyKind, ResilienceMetrics, ResilienceRegistry, ResilienceSettings};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = ResilienceMetrics::register(&MetricsRegistry::new())?;
/// let settings: ResilienceSettings =
///     serde_json::from_str(r#"{"dependencies": {"users-db": {"kind": "database", "timeout_ms": 2000}}}"#)?;
/// let registry = ResilienceRegistry::from_settings(&settings, metrics)?;
///
/// let db = registry.dependency("users-db", DependencyKind::Database)?;
/// assert_eq!(db.timeout().duration().as_secs(), 2);
/// let n = db.call(|| async { Ok::<_, std::io::Error>(1) }).await?;
/// assert_eq!(n, 1);
/// // Unconfigured names get their kind's defaults.
/// let api = registry.dependency("geo-api", DependencyKind::External)?;
/// assert_eq!(api.timeout().duration().as_secs(), 10);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ResilienceRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    metrics: ResilienceMetrics,
    settings: HashMap<String, DependencySettings>,
    dependencies: RwLock<HashMap<String, Dependency>>,
}

impl fmt::Debug for ResilienceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilienceRegistry")
            .field("dependencies", &self.names())
            .finish_non_exhaustive()
    }
}

impl ResilienceRegistry {
    /// An empty registry recording into `metrics`.
    pub fn new(metrics: ResilienceMetrics) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                metrics,
                settings: HashMap::new(),
                dependencies: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// A registry with every configured dependency built (so a bad setting fails at start-up).
    pub fn from_settings(
        settings: &ResilienceSettings,
        metrics: ResilienceMetrics,
    ) -> Result<Self, ConfigError> {
        let mut deps = HashMap::new();
        for (name, s) in &settings.dependencies {
            let config = s.resolve().map_err(|e| ConfigError {
                what: e.what,
                why: format!("dependency `{name}`: {}", e.why),
            })?;
            deps.insert(name.clone(), Dependency::new(name, config, &metrics)?);
        }
        Ok(Self {
            inner: Arc::new(RegistryInner {
                metrics,
                settings: settings.dependencies.clone(),
                dependencies: RwLock::new(deps),
            }),
        })
    }

    /// The dependency `name`, built on first use from its settings or `kind`'s defaults.
    pub fn dependency(&self, name: &str, kind: DependencyKind) -> Result<Dependency, ConfigError> {
        if let Some(d) = self.get(name) {
            return Ok(d);
        }
        let config = match self.inner.settings.get(name) {
            Some(s) => s.resolve()?,
            None => DependencyConfig::for_kind(kind),
        };
        self.insert(name, config)
    }

    /// Registers `name` with an explicit configuration, or returns the one already there.
    pub fn insert(&self, name: &str, config: DependencyConfig) -> Result<Dependency, ConfigError> {
        let mut deps = self
            .inner
            .dependencies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = deps.get(name) {
            return Ok(d.clone());
        }
        let d = Dependency::new(name, config, &self.inner.metrics)?;
        deps.insert(name.to_owned(), d.clone());
        Ok(d)
    }

    /// The dependency `name`, if built.
    pub fn get(&self, name: &str) -> Option<Dependency> {
        self.inner
            .dependencies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The names of the dependencies built so far, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .dependencies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}
