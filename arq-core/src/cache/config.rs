//! Cache configuration: TTL classes, L1 bounds and where Redis is.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::Secret;

/// How long a kind of value lives. The durations come from [`TtlClasses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TtlClass {
    /// Session data (default 3 600 s).
    Session,
    /// Data read from a system of record (default 86 400 s).
    Data,
    /// Results computed from other data (default 3 600 s).
    Computed,
}

/// The TTL of each class, in seconds, plus the TTL of negative ("not found") entries.
///
/// Read from the `[cache.ttl]` section: `session_secs`, `data_secs`, `computed_secs`,
/// `negative_secs`. Defaults are the seed's: session 3 600, data 86 400, computed 3 600, and 30 s
/// for negative entries so that something created shortly after a miss becomes visible soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtlClasses {
    /// [`TtlClass::Session`], seconds.
    pub session_secs: u64,
    /// [`TtlClass::Data`], seconds.
    pub data_secs: u64,
    /// [`TtlClass::Computed`], seconds.
    pub computed_secs: u64,
    /// Negative entries (the loader found nothing), seconds.
    pub negative_secs: u64,
}

impl Default for TtlClasses {
    fn default() -> Self {
        Self {
            session_secs: 3_600,
            data_secs: 86_400,
            computed_secs: 3_600,
            negative_secs: 30,
        }
    }
}

impl TtlClasses {
    /// The TTL of `class`.
    pub fn ttl(&self, class: TtlClass) -> Duration {
        Duration::from_secs(match class {
            TtlClass::Session => self.session_secs,
            TtlClass::Data => self.data_secs,
            TtlClass::Computed => self.computed_secs,
        })
    }

    /// The TTL of negative entries.
    pub fn negative(&self) -> Duration {
        Duration::from_secs(self.negative_secs)
    }

    /// The longest of all TTLs, negative included.
    pub fn longest(&self) -> Duration {
        Duration::from_secs(
            self.session_secs
                .max(self.data_secs)
                .max(self.computed_secs)
                .max(self.negative_secs),
        )
    }
}

/// Configuration of a [`TwoTierCache`](super::TwoTierCache), usually the `[cache]` section read
/// with [`Layers::section`](crate::config::Layers::section).
///
/// # Example
/// ```
/// use arq_core::cache::CacheConfig;
/// use arq_core::config::ConfigLoader;
///
/// let layers = ConfigLoader::new("/nonexistent")
///     .vars([
///         ("ARQ__CACHE__REDIS_URL", "redis://127.0.0.1:6379"),
///         ("ARQ__CACHE__TTL__DATA_SECS", "600"),
///     ])
///     .load()
///     .unwrap();
/// let config: CacheConfig = layers.section("cache").unwrap();
/// assert_eq!(config.ttl.data_secs, 600);
/// assert_eq!(config.ttl.session_secs, 3_600);
/// assert!(config.redis_url.is_some());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Where L2 lives: `redis://[user:pass@]host:port[/db]` (or `rediss://`), or
    /// `redis+sentinel://host:port[,host:port…]/master-name[/db]` to find the master through
    /// Redis Sentinel. `None`: L1 only.
    #[serde(deserialize_with = "secret_url")]
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key and of the invalidation channel; one per service (default `arq`).
    pub key_prefix: String,
    /// The most entries L1 holds (default 10 000).
    pub l1_max_entries: u64,
    /// The most bytes of encoded values L1 holds (default 64 MiB).
    pub l1_max_bytes: u64,
    /// TTL classes.
    pub ttl: TtlClasses,
    /// The longest one Redis operation may take before it counts as Redis being unavailable
    /// (default 250 ms).
    pub redis_timeout_ms: u64,
    /// After Redis was found unavailable, how long to skip it and serve from L1 and the loader
    /// before trying again (default 1 000 ms). Keeps an outage from adding a timeout to every
    /// request.
    pub redis_retry_after_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "arq".to_owned(),
            l1_max_entries: 10_000,
            l1_max_bytes: 64 * 1024 * 1024,
            ttl: TtlClasses::default(),
            redis_timeout_ms: 250,
            redis_retry_after_ms: 1_000,
        }
    }
}

impl CacheConfig {
    /// An L1-only configuration with the defaults.
    pub fn local() -> Self {
        Self::default()
    }

    /// The defaults with L2 at `url`.
    pub fn with_redis(url: impl Into<String>) -> Self {
        Self {
            redis_url: Some(Secret::from(url.into())),
            ..Self::default()
        }
    }
}

fn secret_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret<String>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(Secret::from))
}
