//! A two-tier, tenant-scoped cache: moka in process (L1) in front of Redis (L2).
//!
//! - **Keys** are [`CacheKey`]s, which cannot be built without a [`Scope`]: a tenant or the explicit
//!   global scope. A key of tenant A never equals, or is stored under the same Redis key as, a key
//!   of tenant B.
//! - **Values** are any `serde` type, stored in Redis as postcard (compact, fast; see the `codec`
//!   notes on [`TwoTierCache`]) and in L1 as the typed value itself behind an `Arc`, so an L1 hit
//!   decodes nothing: [`TwoTierCache::get_or_load_shared`] hands out that `Arc`,
//!   [`TwoTierCache::get_or_load`] a clone of the value.
//! - **TTL classes** ([`TtlClass`]) come from [`CacheConfig::ttl`] with the seed's defaults:
//!   session 3 600 s, data 86 400 s, computed 3 600 s; negative entries 30 s.
//! - **Cache-aside with single-flight**: [`TwoTierCache::get_or_load`] coalesces concurrent misses
//!   of one key in one process into one L2 read and at most one loader run (moka's
//!   `try_get_with`), so neither Redis nor the system of record is stampeded by one instance.
//!   A loader's `Ok(None)` is cached as a negative entry with the short negative TTL.
//! - **Invalidation** ([`TwoTierCache::set`], [`TwoTierCache::invalidate`]) writes Redis and
//!   publishes the key on a pub/sub channel in the same round trip; every other instance drops its
//!   L1 copy. An instance whose subscription was interrupted flushes its whole L1 when it
//!   resubscribes, because it may have missed messages.
//! - **Redis down** never fails a request: L2 reads count as misses, writes are skipped, the
//!   loader serves, and `cache_redis_unavailable_total` counts it. After a failure Redis is skipped
//!   for [`CacheConfig::redis_retry_after_ms`] and then tried again, so it comes back on its own.
//! - **Sentinel**: `redis+sentinel://host:port[,host:port…]/master-name[/db]` finds the master
//!   through Sentinel and looks it up again after a failure (so a failover is followed).
//!
//! L1 expiry: moka keeps its own clock, which cannot be replaced from outside the crate (its mock
//! clock is test-only). Every L1 entry therefore carries its expiry instant as a
//! [`tokio::time::Instant`], checked on every read, so expiry follows tokio's clock and is testable
//! with a paused clock; moka's own expiry is the longest class TTL, so that memory of expired
//! entries is reclaimed even if they are never read again.
//!
//! # Example
//! ```
//! use arq_core::TenantId;
//! use arq_core::cache::{CacheConfig, CacheKey, CacheMetrics, Namespace, TtlClass, TwoTierCache};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // L1 only here; `CacheConfig::with_redis("redis://127.0.0.1:6379")` adds L2.
//! let cache = TwoTierCache::new(&CacheConfig::local(), CacheMetrics::unregistered())?;
//! let users = Namespace::new("users")?;
//! let key = CacheKey::tenant(TenantId::generate(), &users, "42");
//!
//! let name: Option<String> = cache
//!     .get_or_load(&key, TtlClass::Data, || async { Ok::<_, std::io::Error>(Some("Ada".to_owned())) })
//!     .await?;
//! assert_eq!(name.as_deref(), Some("Ada"));
//!
//! // The second read is an L1 hit: the loader does not run.
//! let again: Option<String> = cache
//!     .get_or_load(&key, TtlClass::Data, || async { Err(std::io::Error::other("not called")) })
//!     .await?;
//! assert_eq!(again, name);
//! # Ok(()) }
//! ```

mod codec;
mod config;
mod key;
mod l2;
mod metrics;

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::ops::compute::Op;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use config::{CacheConfig, TtlClass, TtlClasses};
pub use key::{CacheKey, CacheKeyError, MAX_NAMESPACE_LEN, Namespace, Scope};
pub use metrics::{CacheMetrics, CacheStats};

/// Why a cache could not be built. Once built, a cache never returns an error of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// `redis_url` is not a Redis or Sentinel URL the cache understands.
    #[error(
        "the cache's redis_url is invalid ({reason}); use redis://host:port[/db] or redis+sentinel://host:port[,host:port]/master-name"
    )]
    InvalidRedisUrl {
        /// What was wrong.
        reason: String,
    },
    /// `key_prefix` is not a valid prefix.
    #[error(
        "the cache's key_prefix {excerpt} is invalid: use 1 to 64 characters from a-z, 0-9, '_', '-' and '.'"
    )]
    InvalidKeyPrefix {
        /// The refused prefix, shortened and quoted.
        excerpt: String,
    },
    /// A bound is zero.
    #[error("the cache's {field} must be greater than zero")]
    Zero {
        /// The configuration field.
        field: &'static str,
    },
    /// The cache talks to Redis from background tasks and needs a Tokio runtime.
    #[error("a cache with Redis must be created inside a Tokio runtime")]
    NoRuntime,
}

/// The L1 map. foldhash instead of moka's default SipHash: hashing the key is a large share of an
/// L1 hit at a sub-100 ns budget, and foldhash is seeded per process, so keys chosen by clients
/// still cannot be aimed at one bucket.
pub(crate) type L1 = moka::future::Cache<CacheKey, L1Entry, foldhash::fast::RandomState>;

/// One L1 entry: the typed value (or `None` for a negative entry) and its expiry by tokio's clock.
#[derive(Clone)]
pub(crate) struct L1Entry {
    value: Option<Arc<dyn Any + Send + Sync>>,
    expires_at: Instant,
    weight: u32,
}

/// Aborts the background tasks when the last clone of the cache is dropped.
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Inner {
    l1: L1,
    l2: Option<l2::L2>,
    prefix: Arc<str>,
    ttl: TtlClasses,
    min_weight: u32,
    metrics: CacheMetrics,
    connected: tokio::sync::watch::Receiver<bool>,
    _tasks: Tasks,
}

/// The two-tier cache. Cheap to clone; clones share both tiers.
///
/// Values in Redis are `[version, tag, postcard bytes]`. postcard is serde-native, compact
/// (varints, no field names: typically a half to a third of JSON, which is Redis memory and
/// network bytes on every L2 hit) and has a specified, stable wire format. It is not
/// self-describing, so a value written by an older struct definition may not decode: that is
/// counted as a `decode` error, treated as a miss and overwritten.
///
/// L1 is bounded by entry count and by bytes at once: each entry weighs its encoded size but at
/// least `l1_max_bytes / l1_max_entries`, and the total weight is capped at `l1_max_bytes`, so
/// neither bound can be exceeded.
#[derive(Clone)]
pub struct TwoTierCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TwoTierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoTierCache")
            .field("prefix", &self.inner.prefix)
            .field("l1_entries", &self.inner.l1.entry_count())
            .field("l2", &self.inner.l2.is_some())
            .finish_non_exhaustive()
    }
}

impl TwoTierCache {
    /// Builds the cache. With a Redis URL this needs a Tokio runtime; it does not wait for Redis
    /// (which may be down at start-up) and connects in the background.
    pub fn new(config: &CacheConfig, metrics: CacheMetrics) -> Result<Self, CacheError> {
        if config.key_prefix.is_empty() || Namespace::new(&config.key_prefix).is_err() {
            return Err(CacheError::InvalidKeyPrefix {
                excerpt: crate::text::quoted_excerpt(&config.key_prefix, 48),
            });
        }
        if config.l1_max_entries == 0 {
            return Err(CacheError::Zero {
                field: "l1_max_entries",
            });
        }
        if config.l1_max_bytes == 0 {
            return Err(CacheError::Zero {
                field: "l1_max_bytes",
            });
        }
        if config.redis_timeout_ms == 0 {
            return Err(CacheError::Zero {
                field: "redis_timeout_ms",
            });
        }
        let min_weight =
            u32::try_from(config.l1_max_bytes.div_ceil(config.l1_max_entries)).unwrap_or(u32::MAX);
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.l1_max_bytes)
            .weigher(|_: &CacheKey, v: &L1Entry| v.weight)
            // One TTL for the whole map, the longest class: a per-entry `Expiry` makes moka
            // convert and compare clock readings on every read, which was about a fifth of an
            // L1 hit's instructions. Entries are still exact to their own class by
            // `expires_at`; moka only reclaims the memory of expired entries nobody reads again,
            // at this TTL at the latest, earlier when the size bound evicts them.
            // (moka refuses TTLs over 1 000 years with a panic; no configuration may cause one.)
            .time_to_live(
                config
                    .ttl
                    .longest()
                    .min(Duration::from_secs(100 * 365 * 86_400)),
            )
            .build_with_hasher(foldhash::fast::RandomState::default());
        let prefix: Arc<str> = Arc::from(config.key_prefix.as_str());
        let (connected_tx, connected) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let l2 = match &config.redis_url {
            None => None,
            Some(url) => {
                let target = l2::Target::parse(url.expose())?;
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| CacheError::NoRuntime)?;
                let timeout = Duration::from_millis(config.redis_timeout_ms);
                let retry_after = Duration::from_millis(config.redis_retry_after_ms);
                let slot = Arc::new(l2::Slot::default());
                let resolve = Arc::new(tokio::sync::Notify::new());
                match target {
                    l2::Target::Direct(client) => {
                        let conn = client
                            .get_connection_manager_lazy(l2::manager_config(timeout))
                            .map_err(|e| CacheError::InvalidRedisUrl {
                                reason: e.to_string(),
                            })?;
                        slot.set(client, conn);
                    }
                    l2::Target::Sentinel {
                        sentinels,
                        master,
                        db,
                    } => {
                        let task = runtime.spawn(l2::sentinel_resolver(
                            sentinels,
                            master,
                            db,
                            Arc::clone(&slot),
                            Arc::clone(&resolve),
                            timeout,
                            retry_after,
                        ));
                        tasks.push(task.abort_handle());
                    }
                }
                let channel = format!("{prefix}:__invalidate");
                let instance = uuid::Uuid::new_v4().to_string();
                let task = runtime.spawn(l2::listen(
                    Arc::clone(&slot),
                    channel.clone(),
                    instance.clone(),
                    Arc::clone(&prefix),
                    l1.clone(),
                    metrics.clone(),
                    connected_tx,
                    retry_after.max(Duration::from_millis(50)),
                    timeout,
                ));
                tasks.push(task.abort_handle());
                Some(l2::L2 {
                    slot,
                    timeout,
                    retry_after,
                    down_until: Mutex::new(None),
                    metrics: metrics.clone(),
                    resolve,
                    channel,
                    instance,
                })
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                l1,
                l2,
                prefix,
                ttl: config.ttl,
                min_weight,
                metrics,
                connected,
                _tasks: Tasks(tasks),
            }),
        })
    }

    /// The cache's metric handles (for [`CacheMetrics::snapshot`]).
    pub fn metrics(&self) -> &CacheMetrics {
        &self.inner.metrics
    }

    /// The TTL classes in use.
    pub fn ttl_classes(&self) -> &TtlClasses {
        &self.inner.ttl
    }

    /// Whether this instance is currently subscribed to the invalidation channel (always `false`
    /// without Redis). Until it is, changes made by other instances reach it only through TTLs.
    pub fn is_listening(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until [`is_listening`](Self::is_listening) or `within` has passed; returns which.
    pub async fn wait_listening(&self, within: Duration) -> bool {
        let mut rx = self.inner.connected.clone();
        tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The value under `key`: from L1, else from Redis, else from `loader`, whose result is stored
    /// in both tiers with `class`'s TTL (`Ok(None)`, "does not exist", with the negative TTL).
    ///
    /// Concurrent calls for one key in this process share one L2 read and one loader run. The
    /// only error is the loader's, shared by every caller that waited for that run (hence the
    /// `Arc`); it is not cached. Redis problems never surface here.
    ///
    /// One key holds one type: reading a key with another type than it was stored with counts a
    /// `type_mismatch` error and reloads.
    ///
    /// Every hit clones the value out of L1; [`get_or_load_shared`](Self::get_or_load_shared)
    /// hands out the cached `Arc` instead, which is cheaper for anything bigger than a few words.
    pub async fn get_or_load<V, E, F, Fut>(
        &self,
        key: &CacheKey,
        class: TtlClass,
        loader: F,
    ) -> Result<Option<V>, Arc<E>>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let shared = self.get_or_load_shared(key, class, loader).await?;
        Ok(shared.map(Arc::unwrap_or_clone))
    }

    /// [`get_or_load`](Self::get_or_load) returning the value L1 holds, shared: an L1 hit is a
    /// lookup and an `Arc` clone, never a copy or a decode of the value.
    ///
    /// # Example
    /// ```
    /// use std::sync::Arc;
    /// use arq_core::TenantId;
    /// use arq_core::cache::{CacheConfig, CacheKey, CacheMetrics, Namespace, TtlClass, TwoTierCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TwoTierCache::new(&CacheConfig::local(), CacheMetrics::unregistered())?;
    /// let key = CacheKey::tenant(TenantId::generate(), &Namespace::new("roles")?, "7");
    /// let load = || async { Ok::<_, std::io::Error>(Some(vec!["admin".to_owned()])) };
    /// let first = cache.get_or_load_shared(&key, TtlClass::Data, load).await?.unwrap();
    /// let again = cache.get_or_load_shared(&key, TtlClass::Data, load).await?.unwrap();
    /// assert!(Arc::ptr_eq(&first, &again)); // the same L1 value, not a copy
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_shared<V, E, F, Fut>(
        &self,
        key: &CacheKey,
        class: TtlClass,
        loader: F,
    ) -> Result<Option<Arc<V>>, Arc<E>>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        if let Some(hit) = self.l1_lookup::<V>(key).await {
            return Ok(hit);
        }
        self.inner.metrics.l1_miss.inc();
        // The loader is shared with the coalesced fill through a cell so that, in the rare case
        // that a concurrent caller stored another type under this key, it can still be run here.
        let loader = Mutex::new(Some(loader));
        let entry = self
            .inner
            .l1
            .try_get_with_by_ref(key, self.fill::<V, E, F, Fut>(key, class, &loader))
            .await?;
        match downcast::<V>(&entry) {
            Some(value) => Ok(value),
            None => {
                self.inner.metrics.err_type.inc();
                self.inner.l1.invalidate(key).await;
                let entry = self.fill::<V, E, F, Fut>(key, class, &loader).await?;
                let value = downcast::<V>(&entry).flatten();
                self.inner.l1.insert(key.clone(), entry).await;
                Ok(value)
            }
        }
    }

    /// Stores `value` under `key` in both tiers and makes every other instance drop its L1 copy.
    pub async fn set<V>(&self, key: &CacheKey, class: TtlClass, value: V)
    where
        V: Serialize + Send + Sync + 'static,
    {
        let ttl = self.inner.ttl.ttl(class);
        let bytes = self.encode(Some(&value));
        let entry = self.entry(Some(Arc::new(value)), ttl, bytes.as_deref());
        self.inner.l1.insert(key.clone(), entry).await;
        if let (Some(l2), Some(bytes)) = (&self.inner.l2, bytes) {
            let stored = key.storage_key(&self.inner.prefix);
            l2.write_and_publish(&stored, Some((&bytes, ttl))).await;
        }
    }

    /// Removes `key` from both tiers and makes every other instance drop its L1 copy.
    pub async fn invalidate(&self, key: &CacheKey) {
        self.inner.l1.invalidate(key).await;
        if let Some(l2) = &self.inner.l2 {
            let stored = key.storage_key(&self.inner.prefix);
            l2.write_and_publish(&stored, None).await;
        }
    }

    /// Drops this instance's L1 copy of `key` only; Redis and other instances keep theirs. The
    /// next read comes from L2.
    pub async fn evict_local(&self, key: &CacheKey) {
        self.inner.l1.invalidate(key).await;
    }

    /// An L1 hit (`Some(Some(v))`, or `Some(None)` for a negative entry), or `None` on a miss.
    async fn l1_lookup<V: Send + Sync + 'static>(&self, key: &CacheKey) -> Option<Option<Arc<V>>> {
        // moka hands out a clone of the entry; taking it apart moves its `Arc` out instead of
        // cloning it again (one reference-count increment per hit, not two).
        let L1Entry {
            value, expires_at, ..
        } = self.inner.l1.get(key).await?;
        if Instant::now() >= expires_at {
            self.remove_if_expired(key).await;
            return None;
        }
        match value {
            None => {
                self.inner.metrics.l1_hit.inc();
                Some(None)
            }
            Some(any) => match any.downcast::<V>() {
                Ok(v) => {
                    self.inner.metrics.l1_hit.inc();
                    Some(Some(v))
                }
                Err(_) => {
                    self.inner.metrics.err_type.inc();
                    self.inner.l1.invalidate(key).await;
                    None
                }
            },
        }
    }

    /// Removes `key` only if it is (still) expired, so a fresh entry a concurrent caller just
    /// stored is kept.
    async fn remove_if_expired(&self, key: &CacheKey) {
        let now = Instant::now();
        self.inner
            .l1
            .entry_by_ref(key)
            .and_compute_with(|e| async move {
                match e {
                    Some(e) if now >= e.value().expires_at => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// L2, then the loader (if still in `loader`): the L1 entry to store.
    async fn fill<V, E, F, Fut>(
        &self,
        key: &CacheKey,
        class: TtlClass,
        loader: &Mutex<Option<F>>,
    ) -> Result<L1Entry, E>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let ttl = self.inner.ttl.ttl(class);
        let negative_ttl = self.inner.ttl.negative();
        let stored = self
            .inner
            .l2
            .as_ref()
            .map(|_| key.storage_key(&self.inner.prefix));
        if let (Some(l2), Some(stored)) = (&self.inner.l2, &stored) {
            if let Some(Some(bytes)) = l2.get(stored).await {
                match codec::decode::<V>(&bytes) {
                    Ok(value) => {
                        self.inner.metrics.l2_hit.inc();
                        let ttl = if value.is_some() { ttl } else { negative_ttl };
                        let value = value.map(|v| Arc::new(v) as Arc<dyn Any + Send + Sync>);
                        return Ok(self.entry(value, ttl, Some(&bytes)));
                    }
                    Err(e) => {
                        self.inner.metrics.err_decode.inc();
                        tracing::warn!(error = %e, "cache: undecodable value in Redis; reloading it");
                    }
                }
            }
            self.inner.metrics.l2_miss.inc();
        }
        let taken = loader.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(load) = taken else {
            // Only reachable if this fill's own loader was already used, which `get_or_load`
            // rules out; a negative entry is the conservative answer.
            return Ok(self.entry(None, negative_ttl, None));
        };
        self.inner.metrics.loads.inc();
        let value = match load().await {
            Ok(value) => value,
            Err(e) => {
                self.inner.metrics.load_errors.inc();
                return Err(e);
            }
        };
        let ttl = if value.is_some() { ttl } else { negative_ttl };
        let bytes = self.encode(value.as_ref());
        if let (Some(l2), Some(stored), Some(bytes)) = (&self.inner.l2, &stored, &bytes) {
            l2.set(stored, bytes, ttl).await;
        }
        let value = value.map(|v| Arc::new(v) as Arc<dyn Any + Send + Sync>);
        Ok(self.entry(value, ttl, bytes.as_deref()))
    }

    fn encode<V: Serialize>(&self, value: Option<&V>) -> Option<Vec<u8>> {
        match codec::encode(value) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.inner.metrics.err_decode.inc();
                tracing::warn!(error = %e, "cache: value cannot be encoded; keeping it in L1 only");
                None
            }
        }
    }

    fn entry(
        &self,
        value: Option<Arc<dyn Any + Send + Sync>>,
        ttl: Duration,
        bytes: Option<&[u8]>,
    ) -> L1Entry {
        let size = bytes.map_or(64, <[u8]>::len);
        L1Entry {
            value,
            expires_at: Instant::now() + ttl,
            weight: u32::try_from(size)
                .unwrap_or(u32::MAX)
                .max(self.inner.min_weight),
        }
    }
}

fn downcast<V: Send + Sync + 'static>(entry: &L1Entry) -> Option<Option<Arc<V>>> {
    match &entry.value {
        None => Some(None),
        Some(any) => Arc::clone(any).downcast::<V>().ok().map(Some),
    }
}
