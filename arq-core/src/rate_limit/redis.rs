//! The distributed limiter: one Lua script per decision, run atomically by Redis with Redis's
//! own clock (`TIME`), so replicas with skewed clocks still share one exact limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{Decision, Quota, QuotaState, QuotaStates};
use super::local::LocalLimiter;
use crate::config::RedisFailurePolicy;

/// The decision script. KEYS: one per quota. ARGV: per quota its interval and tolerance in µs.
/// Returns `{allowed, retry_us, remaining_1, reset_us_1, …}`. All quotas are read first and
/// written only when every one admits (the same arithmetic as `gcra::decide`).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local allowed = 1
local retry = 0
local tats = {}
for i = 1, n do
  local tol = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  if tat - now > tol then
    allowed = 0
    if tat - tol - now > retry then retry = tat - tol - now end
  end
end
local out = {allowed, retry}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local tol = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if allowed == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  local ahead = tat - now
  local remaining = 0
  if ahead <= tol then remaining = math.floor((tol - ahead) / interval) + 1 end
  out[#out + 1] = remaining
  out[#out + 1] = ahead
end
return out
";

/// How long Redis is left alone after a failure before it is tried again.
const RETRY_REDIS_AFTER: Duration = Duration::from_secs(1);

/// A limiter whose state lives in Redis, shared by every replica.
pub struct RedisLimiter {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    script: redis::Script,
    prefix: String,
    quotas: Vec<Quota>,
    args: Vec<u64>,
    timeout: Duration,
    policy: RedisFailurePolicy,
    fallback: LocalLimiter,
    epoch: Instant,
    down_until_ms: AtomicU64,
    round_trips: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("quotas", &self.quotas)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Why a Redis limiter could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisLimiterError {
    /// The URL is not a Redis URL (the URL itself is not shown: it may hold a password).
    #[error("invalid Redis URL for the rate limiter: {0}")]
    Url(String),
}

impl RedisLimiter {
    /// A limiter of `quotas` in the Redis at `url`, under keys starting with `prefix`. Connects
    /// lazily, so a service starts even while Redis is down (the failure policy decides until it
    /// is back). `max_keys` bounds the local fallback.
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        quotas: Vec<Quota>,
        timeout: Duration,
        policy: RedisFailurePolicy,
        max_keys: usize,
    ) -> Result<Self, RedisLimiterError> {
        let client = redis::Client::open(url)
            .map_err(|e| RedisLimiterError::Url(format!("{:?}", e.kind())))?;
        let args = quotas
            .iter()
            .flat_map(|q| [q.interval_ns() / 1000, q.tolerance_ns() / 1000])
            .collect();
        Ok(Self {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            script: redis::Script::new(SCRIPT),
            prefix: prefix.into(),
            fallback: LocalLimiter::new(quotas.clone(), max_keys),
            quotas,
            args,
            timeout,
            policy,
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            round_trips: Arc::default(),
        })
    }

    /// The quotas, in order.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// Decisions sent to Redis so far (each is exactly one round trip: one `EVALSHA`).
    pub fn redis_decisions(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.conn.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.conn.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let mut conn = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| format!("{:?}", e.kind()))?;
        // Load the script once so every decision is a single EVALSHA round trip.
        self.script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| format!("{:?}", e.kind()))?;
        if let Ok(mut slot) = self.conn.write() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
    }

    async fn ask_redis(&self, key: &str) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for q in &self.quotas {
            // The hash tag keeps a key's quotas in one cluster slot.
            invocation.key(format!(
                "{}:{{{key}}}:{}",
                self.prefix,
                q.period().as_secs()
            ));
        }
        for a in &self.args {
            invocation.arg(*a);
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let out: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("{:?}", e.kind()))?;
        if out.len() != 2 + 2 * self.quotas.len() {
            return Err(format!("unexpected script answer of {} values", out.len()));
        }
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Decision {
            allowed: out[0] == 1,
            retry_after: us(out[1]),
            quotas: self
                .quotas
                .iter()
                .enumerate()
                .map(|(i, q)| QuotaState {
                    limit: q.limit(),
                    period: q.period(),
                    remaining: u32::try_from(out[2 + 2 * i].max(0)).unwrap_or(0),
                    reset: us(out[3 + 2 * i]),
                })
                .collect(),
            degraded: false,
        })
    }

    /// Decides one request for `key`: one round trip to Redis, or the failure policy when Redis
    /// does not answer within the timeout.
    pub async fn check(&self, key: &str) -> Decision {
        if self.now_ms() >= self.down_until_ms.load(Ordering::Relaxed) {
            match tokio::time::timeout(self.timeout, self.ask_redis(key)).await {
                Ok(Ok(d)) => return d,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, policy = ?self.policy, "rate limiter: Redis failed; using the failure policy");
                }
                Err(_) => {
                    tracing::warn!(timeout_ms = self.timeout.as_millis() as u64, policy = ?self.policy, "rate limiter: Redis timed out; using the failure policy");
                }
            }
            if let Ok(mut slot) = self.conn.write() {
                *slot = None;
            }
            self.down_until_ms.store(
                self.now_ms() + RETRY_REDIS_AFTER.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        self.degraded(key)
    }

    fn degraded(&self, key: &str) -> Decision {
        let mut d = match self.policy {
            RedisFailurePolicy::Local => self.fallback.check(key),
            RedisFailurePolicy::Open => Decision {
                allowed: true,
                retry_after: Duration::ZERO,
                quotas: QuotaStates::new(),
                degraded: true,
            },
            RedisFailurePolicy::Closed => Decision {
                allowed: false,
                retry_after: RETRY_REDIS_AFTER,
                quotas: QuotaStates::new(),
                degraded: true,
            },
        };
        d.degraded = true;
        d
    }
}
