//! L2: Redis through a `ConnectionManager`, the invalidation channel, and Sentinel discovery.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Client, RedisError};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::CacheError;
use super::key::CacheKey;
use super::metrics::CacheMetrics;

/// Where Redis is.
#[derive(Clone)]
pub(crate) enum Target {
    /// A plain `redis://` / `rediss://` URL.
    Direct(Client),
    /// Sentinel addresses and the monitored master's name.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: i64,
    },
}

impl Target {
    /// Parses `redis://…`, `rediss://…` or `redis+sentinel://h:p[,h:p…]/master[/db]`.
    pub(crate) fn parse(url: &str) -> Result<Self, CacheError> {
        let invalid = |reason: &str| CacheError::InvalidRedisUrl {
            reason: reason.to_owned(),
        };
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, path) = rest
                .split_once('/')
                .ok_or_else(|| invalid("a Sentinel URL needs the master name as its path"))?;
            if hosts.contains('@') {
                return Err(invalid(
                    "credentials in a Sentinel URL are not supported; use Sentinel without auth",
                ));
            }
            let sentinels: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            let (master, db) = match path.split_once('/') {
                Some((m, db)) => (
                    m,
                    db.parse().map_err(|_| {
                        invalid("the database after the master name must be a number")
                    })?,
                ),
                None => (path, 0),
            };
            if sentinels.is_empty() || master.is_empty() {
                return Err(invalid(
                    "a Sentinel URL needs at least one host:port and a master name",
                ));
            }
            return Ok(Self::Sentinel {
                sentinels,
                master: master.to_owned(),
                db,
            });
        }
        Client::open(url)
            .map(Self::Direct)
            .map_err(|e| invalid(&e.to_string()))
    }
}

/// The connection in use, replaced when Sentinel reports a new master.
#[derive(Default)]
pub(crate) struct Slot {
    conn: RwLock<Option<(Client, ConnectionManager)>>,
}

impl Slot {
    fn conn(&self) -> Option<ConnectionManager> {
        let guard = self.conn.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(|(_, c)| c.clone())
    }

    fn client(&self) -> Option<Client> {
        let guard = self.conn.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(|(c, _)| c.clone())
    }

    pub(crate) fn set(&self, client: Client, conn: ConnectionManager) {
        let mut guard = self.conn.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Some((client, conn));
    }
}

/// L2 operations. None of them ever fails: a Redis problem is counted, logged and reported as
/// "not available", and the caller goes on with L1 and the loader.
pub(crate) struct L2 {
    pub(crate) slot: Arc<Slot>,
    pub(crate) timeout: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) down_until: Mutex<Option<Instant>>,
    pub(crate) metrics: CacheMetrics,
    pub(crate) resolve: Arc<Notify>,
    pub(crate) channel: String,
    pub(crate) instance: String,
}

pub(crate) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

impl L2 {
    fn is_down(&self) -> bool {
        let guard = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        guard.is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self) {
        let mut guard = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *guard = Some(Instant::now() + self.retry_after);
        self.metrics.redis_up.set(0);
        // With Sentinel, the master may have moved: look it up again.
        self.resolve.notify_one();
    }

    /// Runs one Redis operation within the timeout; `None` when Redis could not be used.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = match self.slot.conn() {
            Some(conn) if !self.is_down() => conn,
            _ => {
                self.metrics.redis_unavailable.inc();
                return None;
            }
        };
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => {
                self.metrics.redis_up.set(1);
                Some(v)
            }
            Ok(Err(e)) => {
                self.metrics.err_redis.inc();
                if e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                {
                    self.metrics.redis_unavailable.inc();
                    self.mark_down();
                }
                tracing::warn!(op, error = %e, "cache: Redis operation failed; serving without L2");
                None
            }
            Err(_) => {
                self.metrics.err_timeout.inc();
                self.metrics.redis_unavailable.inc();
                self.mark_down();
                tracing::warn!(op, timeout = ?self.timeout, "cache: Redis operation timed out; serving without L2");
                None
            }
        }
    }

    /// `GET`: `Some(Some(bytes))` on a hit, `Some(None)` on a miss, `None` when unavailable.
    pub(crate) async fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.run("GET", |mut c| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    /// `SET key value PX ttl`.
    pub(crate) async fn set(&self, key: &str, bytes: &[u8], ttl: Duration) {
        let px = ttl_millis(ttl);
        self.run("SET", |mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .arg("PX")
                .arg(px)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// Writes (or deletes, when `value` is `None`) and tells the other instances, in one round
    /// trip.
    pub(crate) async fn write_and_publish(&self, key: &str, value: Option<(&[u8], Duration)>) {
        let payload = format!("{}\n{key}", self.instance);
        let channel = self.channel.as_str();
        self.run("PUBLISH", |mut c| async move {
            let mut pipe = redis::pipe();
            match value {
                Some((bytes, ttl)) => pipe
                    .cmd("SET")
                    .arg(key)
                    .arg(bytes)
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .ignore(),
                None => pipe.cmd("DEL").arg(key).ignore(),
            };
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            pipe.query_async::<()>(&mut c).await
        })
        .await;
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Keeps the Sentinel-resolved master in `slot`: resolves at start and again whenever an
/// operation found Redis unavailable (`resolve` notified), with a back-off between failures.
pub(crate) async fn sentinel_resolver(
    sentinels: Vec<String>,
    master: String,
    db: i64,
    slot: Arc<Slot>,
    resolve: Arc<Notify>,
    timeout: Duration,
    retry_after: Duration,
) {
    loop {
        let resolved = async {
            let mut sentinel = SentinelClient::build(
                sentinels.clone(),
                master.clone(),
                None,
                SentinelServerType::Master,
            )?;
            let client = sentinel.async_get_client().await?;
            let client = if db == 0 {
                client
            } else {
                let info = client.get_connection_info().clone();
                let settings = info.redis_settings().clone().set_db(db);
                let info = info.set_redis_settings(settings);
                Client::open(info)?
            };
            let conn = client.get_connection_manager_lazy(manager_config(timeout))?;
            Ok::<_, RedisError>((client, conn))
        };
        match tokio::time::timeout(timeout * 4, resolved).await {
            Ok(Ok((client, conn))) => {
                tracing::info!(%master, "cache: Redis master resolved through Sentinel");
                slot.set(client, conn);
                resolve.notified().await;
            }
            Ok(Err(e)) => {
                tracing::warn!(%master, error = %e, "cache: Sentinel could not resolve the master");
                tokio::time::sleep(retry_after).await;
            }
            Err(_) => {
                tracing::warn!(%master, "cache: Sentinel did not answer in time");
                tokio::time::sleep(retry_after).await;
            }
        }
    }
}

/// Subscribes to the invalidation channel and drops L1 entries other instances changed. After
/// every (re)subscription the whole L1 is flushed: messages sent while this instance was not
/// listening are lost, and a flush is the only way to not serve what they invalidated.
#[allow(clippy::too_many_arguments, reason = "one task's captured state")]
pub(crate) async fn listen(
    slot: Arc<Slot>,
    channel: String,
    instance: String,
    prefix: Arc<str>,
    l1: super::L1,
    metrics: CacheMetrics,
    connected: tokio::sync::watch::Sender<bool>,
    retry_after: Duration,
    timeout: Duration,
) {
    loop {
        if let Some(client) = slot.client() {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match tokio::time::timeout(timeout * 4, subscribed).await {
                Ok(Ok(pubsub)) => {
                    l1.invalidate_all();
                    metrics.l1_flushes.inc();
                    connected.send_replace(true);
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        let Some((from, stored)) = payload.split_once('\n') else {
                            continue;
                        };
                        if from == instance {
                            continue;
                        }
                        if let Some(key) = CacheKey::parse_storage(&prefix, stored) {
                            l1.invalidate(&key).await;
                            metrics.invalidations_received.inc();
                        }
                    }
                    connected.send_replace(false);
                    tracing::warn!("cache: invalidation channel lost; resubscribing");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cache: cannot subscribe to the invalidation channel");
                }
                Err(_) => {
                    tracing::warn!("cache: subscribing to the invalidation channel timed out");
                }
            }
        }
        tokio::time::sleep(retry_after).await;
    }
}
