//! The Redis Streams backend (feature `redis`).
//!
//! # Layout
//! For a work queue `q` under the key prefix `p`:
//! - `p:q` — the stream, consumed by the consumer group `arq`; each entry has one field `m`:
//!   `<n>:<header><payload>`, where the header is the envelope's JSON wire form without the
//!   payload, `n` its length in bytes (decimal), and the payload the payload's JSON as
//!   published (an empty payload stays empty through retries, dead letters and requeues). A
//!   consumer parses the header only; the handler parses the payload, once;
//! - `p:q.wait` — a sorted set of retries waiting (members as the field `m`), scored by due
//!   time (ms);
//! - `p:q.dead` — the dead-letter stream (same field), trimmed to the dead-letter TTL on every
//!   append (`XADD … MINID ~ now-ttl`). An entry that could not be decoded is dead-lettered
//!   with the fields it had and an `error` field saying why; `peek_dead` shows it as an
//!   `arq.undecodable` envelope ([`Backend::peek_dead`]) and `requeue_dead` moves it back as
//!   it was.
//!
//! The previous wire form, one field `e` holding the whole JSON envelope (and sorted-set members
//! that are such an envelope), is still read everywhere: entries written before an upgrade are
//! consumed, retried, dead-lettered and requeued like the others (then in the current form).
//!
//! Routing (topic exchanges and bindings) happens in the publisher from the declared topology;
//! an unroutable publish is an error before anything is written. A batch is written with one
//! pipelined round of `XADD`s; acknowledgements from concurrent handlers are batched into one
//! `XACK` + `XDEL` round. Acked entries are deleted, so `XLEN` of the stream equals
//! lag + pending, which is the depth reported.
//!
//! Retries, dead-lettering and promotion of due retries are Lua scripts, so each is atomic:
//! a message is never both acknowledged and lost, or both retried and still pending.
//! The reaper (`XAUTOCLAIM`) reclaims entries another consumer has held longer than the
//! queue's visibility timeout: a consumer that died leaves its entries pending and a live one
//! takes them over.
//!
//! # Durability
//! Redis keeps the streams in memory. What survives a Redis restart depends on its
//! persistence: with `appendonly yes` and `appendfsync everysec` (the recommended setting for
//! queues) at most about one second of acknowledged publishes can be lost in a crash; with
//! `appendfsync always` none, at a large throughput cost; with RDB snapshots only, everything
//! since the last snapshot; with no persistence (as on the test machine), everything. A
//! replica does not help by itself: replication is asynchronous (`WAIT` narrows the window).
//! A client that loses its connection reconnects on the next command; publishes in flight when
//! the connection broke return an error and should be retried (the message id makes the
//! retry's duplicate detectable).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, Script, Value};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::backend::{
    Backend, Consumer, Delivery, Outgoing, QueueStats, RawDeadLetter, undecodable_dead_letter,
};
use crate::envelope::{Envelope, Failure, Payload};
use crate::error::QueueError;
use crate::topology::{QueueConfig, Topology};

const GROUP: &str = "arq";
/// How many due retries one promotion moves back into the stream.
const PROMOTE_BATCH: &str = "100";
const PROMOTE_BATCH_N: u64 = 100;
const BACKEND: &str = "redis";

fn err(e: &redis::RedisError) -> QueueError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        QueueError::Connection {
            backend: BACKEND,
            reason: e.to_string(),
        }
    } else {
        QueueError::Backend {
            backend: BACKEND,
            reason: e.to_string(),
        }
    }
}

/// One named, self-healing multiplexed connection: after an I/O error the next command
/// reconnects. Written here (instead of using `ConnectionManager`) so every connection carries
/// a `CLIENT SETNAME` that operators, and the fault tests, can find it by.
#[derive(Debug)]
struct Conn {
    client: Client,
    name: String,
    response_timeout: Duration,
    current: Mutex<Option<MultiplexedConnection>>,
}

impl Conn {
    fn new(client: Client, name: String, response_timeout: Duration) -> Self {
        Self {
            client,
            name,
            response_timeout,
            current: Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, QueueError> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| err(&e))?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| err(&e))?;
        *current = Some(c.clone());
        Ok(c)
    }

    async fn broken(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            *self.current.lock().await = None;
        }
    }

    async fn cmd<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, QueueError> {
        let mut c = self.get().await?;
        match cmd.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.broken(&e).await;
                Err(err(&e))
            }
        }
    }

    async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, QueueError> {
        let mut c = self.get().await?;
        match pipe.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.broken(&e).await;
                Err(err(&e))
            }
        }
    }

    async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, QueueError> {
        let mut c = self.get().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        match inv.invoke_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.broken(&e).await;
                Err(err(&e))
            }
        }
    }
}

/// KEYS: stream, wait zset. ARGV: group, entry id, delay ms, retry member ([`retry_member`]).
const RETRY: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return 1
";

/// KEYS: stream, dead stream. ARGV: group, entry id, ttl ms, then the dead entry's fields and
/// values.
/// The dead letter is written first: Redis does not undo a script that fails part way, so an
/// `XADD` that fails must leave the entry pending (for the reaper), never acknowledged and gone.
const DEAD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local min = now - tonumber(ARGV[3])
if min < 0 then min = 0 end
redis.call('XADD', KEYS[2], 'MINID', '~', tostring(min), '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// KEYS: wait zset, stream. ARGV: max to move. Moves due retries back to the stream: a member
/// in the current form (`<n>:…`, it starts with a digit) as field `m`, one of the previous form
/// (a whole JSON envelope, it starts with `{`) as field `e`.
const PROMOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  if string.find(m, '^%d') then
    redis.call('XADD', KEYS[2], '*', 'm', m)
  else
    redis.call('XADD', KEYS[2], '*', 'e', m)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #due
";

/// KEYS: stream. ARGV: group, entry id, then the entry's fields and values. Puts a pending
/// entry back as new. The copy is added first (a failed `XADD` leaves the entry pending for the
/// reaper, as in [`DEAD`]) and removed again when the entry was no longer ours to release.
const RELEASE: &str = r"
local copy = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
else
  redis.call('XDEL', KEYS[1], copy)
end
return n
";

/// Stream entry field of the current wire form: `<n>:<header><payload>` ([`encode_entry`]).
const MESSAGE: &[u8] = b"m";
/// Stream entry field of the previous wire form: the whole envelope as JSON. Read, no longer
/// written.
const WHOLE: &[u8] = b"e";
/// Dead-letter entry field: why an entry that could not be decoded was dead-lettered.
const ERROR: &[u8] = b"error";
/// A stream entry's field name and value, borrowed.
type Field<'a> = (&'a [u8], &'a [u8]);

/// The most fields of a foreign entry copied when it is put back or dead-lettered (Lua's
/// `unpack` fails somewhere under 8 000 values; arq's own entries have one field).
const MAX_COPIED_FIELDS: usize = 1_000;

/// An envelope in the current wire form: `<n>:<header><payload>`, where the header is the
/// envelope's JSON without the payload and `n` its length in bytes. One string, so it is the
/// stream field's value and the retry set's member alike (unique per retry: the header holds
/// the message id, the attempt and the failures); one field, so a read entry costs the client
/// no more reply values than the whole-envelope form did (two fields measured slower: the
/// client's RESP parsing per value outweighed the payload scan saved).
fn encode_entry(env: &Envelope) -> Result<Vec<u8>, QueueError> {
    let mut out = Vec::with_capacity(512);
    env.write_header(&mut out)?;
    let mut digits = [0u8; 20];
    let mut n = out.len();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.splice(0..0, digits[at..].iter().copied().chain([b':']));
    match &env.payload {
        // As it is, empty too: the header length marks where the payload starts, so an empty
        // one needs no stand-in, and writing `null` for it (as the whole-envelope form must)
        // would hand the next attempt, the dead letter and the requeued message a payload
        // that was never published.
        Payload::Json(json) => out.extend_from_slice(json),
        // Serialized straight into the value; serde never writes an empty value, so the
        // `null` is never used here.
        Payload::Native(_) => env.payload.write_json_or_null(&mut out)?,
    }
    Ok(out)
}

/// Where the header and the payload of a current-form value are: `(header range, payload
/// start)`.
fn entry_parts(value: &[u8]) -> Result<(std::ops::Range<usize>, usize), QueueError> {
    let bad = |why: &str| QueueError::Decode {
        reason: format!("not an arq stream entry: {why}"),
    };
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || value.get(digits) != Some(&b':') {
        return Err(bad("it does not start with `<header length>:`"));
    }
    let len: usize = std::str::from_utf8(&value[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| bad("the header length is not a number"))?;
    let start = digits + 1;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= value.len())
        .ok_or_else(|| bad("the header length runs past the end"))?;
    Ok((start..end, end))
}

/// The Redis Streams backend. Clones share connections.
///
/// # Example
/// ```no_run
/// use arq_queue::{Queue, RedisBackend, Topology};
///
/// # async fn run() -> Result<(), arq_queue::QueueError> {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379", "myservice").await?;
/// let queue = Queue::new(backend, Topology::seed("app")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    prefix: String,
    conn: Conn,
    topology: RwLock<Option<Arc<Topology>>>,
    retry: Script,
    dead: Script,
    promote: Script,
    release: Script,
}

impl Inner {
    fn stream(&self, queue: &str) -> String {
        format!("{}:{queue}", self.prefix)
    }
    fn wait(&self, queue: &str) -> String {
        format!("{}:{queue}.wait", self.prefix)
    }
    fn dead_stream(&self, queue: &str) -> String {
        format!("{}:{queue}.dead", self.prefix)
    }
    fn conn_name(&self) -> String {
        // CLIENT SETNAME refuses spaces; the prefix is validated to be a plain token.
        format!("arq-queue:{}", self.prefix)
    }
}

impl RedisBackend {
    /// Connects to `url`, keeping every key under `prefix` (letters, digits, `.`, `-`, `_`, `:`).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, QueueError> {
        if prefix.is_empty()
            || prefix.len() > 100
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(QueueError::Topology {
                reason: format!(
                    "the Redis key prefix {prefix:?} is invalid: use 1 to 100 letters, digits, '.', '-', '_' or ':'"
                ),
            });
        }
        let client = Client::open(url).map_err(|e| QueueError::Connection {
            backend: BACKEND,
            reason: format!("invalid Redis URL: {e}"),
        })?;
        let name = format!("arq-queue:{prefix}");
        let conn = Conn::new(client.clone(), name, Duration::from_secs(10));
        conn.get().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_owned(),
                conn,
                topology: RwLock::new(None),
                retry: Script::new(RETRY),
                dead: Script::new(DEAD),
                promote: Script::new(PROMOTE),
                release: Script::new(RELEASE),
            }),
        })
    }

    /// The name every connection of this backend gives itself (`CLIENT SETNAME`).
    pub fn client_name(&self) -> String {
        self.inner.conn_name()
    }

    fn topology(&self) -> Result<Arc<Topology>, QueueError> {
        self.inner
            .topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| QueueError::Topology {
                reason: "declare the topology before publishing".to_owned(),
            })
    }
}

impl Backend for RedisBackend {
    type Consumer = RedisConsumer;

    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn declare(&self, topology: &Topology) -> Result<(), QueueError> {
        topology.validate()?;
        for q in &topology.queues {
            let r: Result<(), QueueError> = self
                .inner
                .conn
                .cmd(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(self.inner.stream(&q.name))
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM"),
                )
                .await;
            match r {
                Ok(()) => {}
                Err(QueueError::Backend { reason, .. }) if reason.contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        *self
            .inner
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(topology.clone()));
        Ok(())
    }

    async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), QueueError> {
        let topology = self.topology()?;
        let mut pipe = redis::pipe();
        let mut n = 0usize;
        // A batch usually repeats one exchange and key: route each run of them once.
        let mut routed: Option<(&str, &str)> = None;
        let mut streams: Vec<String> = Vec::new();
        for o in &batch {
            let route = Some((&*o.exchange, &*o.routing_key));
            if routed != route {
                streams = topology
                    .route(&o.exchange, &o.routing_key)?
                    .into_iter()
                    .map(|q| self.inner.stream(q))
                    .collect();
                routed = route;
            }
            let entry = encode_entry(&o.envelope)?;
            for stream in &streams {
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg(MESSAGE)
                    .arg(&entry)
                    .ignore();
                n += 1;
            }
        }
        if n == 0 {
            return Ok(());
        }
        self.inner.conn.pipe::<()>(&pipe).await
    }

    async fn consume(&self, queue: &QueueConfig) -> Result<RedisConsumer, QueueError> {
        let consumer_name = format!("c-{}", uuid::Uuid::now_v7().simple());
        let reader = Conn::new(
            self.inner.client.clone(),
            self.inner.conn_name(),
            Duration::from_secs(10),
        );
        reader.get().await?;
        let prefetch = usize::from(queue.prefetch).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let credits = Arc::new(Semaphore::new(prefetch));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let keys = Arc::new(Keys {
            stream: self.inner.stream(&queue.name),
            wait: self.inner.wait(&queue.name),
            dead: self.inner.dead_stream(&queue.name),
            dead_ttl_ms: u64::try_from(queue.dead_letter_ttl.as_millis()).unwrap_or(u64::MAX),
        });
        let ctx = ReaderCtx {
            backend: self.clone(),
            keys: keys.clone(),
            consumer: consumer_name,
            reader,
            prefetch,
            credits: credits.clone(),
            visibility_ms: u64::try_from(queue.visibility_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let reader = tokio::spawn(read_loop(ctx, tx));
        // Acks get their own connection: on the shared one they would queue behind publish
        // pipelines, holding handler slots for that long.
        let acker = Conn::new(
            self.inner.client.clone(),
            self.inner.conn_name(),
            Duration::from_secs(10),
        );
        tokio::spawn(ack_loop(acker, keys.clone(), ack_rx));
        Ok(RedisConsumer {
            backend: self.clone(),
            keys,
            rx,
            buffered: Vec::new().into_iter(),
            credits,
            handed: 0,
            credit_chunk: (prefetch / 8).max(1),
            ack_tx,
            reader: Some(reader),
            dead_lettering: None,
        })
    }

    async fn stats(&self, queue: &QueueConfig) -> Result<QueueStats, QueueError> {
        let stream = self.inner.stream(&queue.name);
        let mut pipe = redis::pipe();
        pipe.cmd("XINFO").arg("GROUPS").arg(&stream);
        pipe.cmd("XLEN").arg(&stream);
        pipe.cmd("ZCARD").arg(self.inner.wait(&queue.name));
        pipe.cmd("XLEN").arg(self.inner.dead_stream(&queue.name));
        let (groups, len, waiting, dead): (Value, u64, u64, u64) =
            self.inner.conn.pipe(&pipe).await?;
        let pending = group_field(&groups, "pending")
            .and_then(value_u64)
            .unwrap_or(0);
        // Acked entries are deleted, so the stream holds exactly the undelivered entries (the
        // lag) and the pending ones: lag = XLEN - pending. Redis's own `lag` field is not used:
        // it counts from `entries-added`, which deleting an undelivered entry (purge) does not
        // decrease, and it is nil after some deletions.
        let ready = len.saturating_sub(pending);
        Ok(QueueStats {
            ready,
            unacked: pending,
            waiting_retry: waiting,
            dead,
        })
    }

    async fn peek_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> Result<Vec<Envelope>, QueueError> {
        let entries: Value = self
            .inner
            .conn
            .cmd(
                redis::cmd("XRANGE")
                    .arg(self.inner.dead_stream(&queue.name))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        // An entry that does not decode is shown, not an error: it is the poison an operator
        // peeks for, and failing the call would hide every other entry too.
        Ok(parse_dead_entries(entries)
            .into_iter()
            .map(|(entry, recorded)| match entry.body.decode() {
                Ok(env) => env,
                Err((body, e)) => {
                    let fields;
                    let raw = match &body {
                        Body::Framed(value) | Body::Whole(value) => RawDeadLetter::Value(value),
                        Body::Other(_) => {
                            fields = body.fields().0;
                            RawDeadLetter::Fields(&fields)
                        }
                    };
                    let recorded = recorded.as_deref().map(String::from_utf8_lossy);
                    undecodable_dead_letter(
                        Some(&entry.id),
                        entry_id_ms(&entry.id),
                        raw,
                        &e.to_string(),
                        recorded.as_deref(),
                    )
                }
            })
            .collect())
    }

    async fn requeue_dead(&self, queue: &QueueConfig, limit: usize) -> Result<usize, QueueError> {
        let dead = self.inner.dead_stream(&queue.name);
        let entries: Value = self
            .inner
            .conn
            .cmd(
                redis::cmd("XRANGE")
                    .arg(&dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        let entries = parse_entries(&entries);
        let count = entries.len();
        let stream = self.inner.stream(&queue.name);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in entries {
            let xadd = pipe.cmd("XADD").arg(&stream).arg("*");
            match entry.body.decode() {
                Ok(mut env) => {
                    env.attempt = 1;
                    xadd.arg(MESSAGE).arg(encode_entry(&env)?);
                }
                // Keep what we cannot parse as it is (without the error the dead-lettering
                // added); the worker will dead-letter it again.
                Err((body, _)) => {
                    for (k, v) in body.fields().0 {
                        xadd.arg(k).arg(v);
                    }
                }
            }
            xadd.ignore();
            pipe.cmd("XDEL").arg(&dead).arg(&entry.id).ignore();
        }
        if count > 0 {
            self.inner.conn.pipe::<()>(&pipe).await?;
        }
        Ok(count)
    }

    async fn purge(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        let stream = self.inner.stream(&queue.name);
        let groups: Value = self
            .inner
            .conn
            .cmd(redis::cmd("XINFO").arg("GROUPS").arg(&stream))
            .await?;
        let Some(mut last) = group_field(&groups, "last-delivered-id").and_then(value_string)
        else {
            return Ok(0);
        };
        let mut removed = 0u64;
        loop {
            let entries: Value = self
                .inner
                .conn
                .cmd(
                    redis::cmd("XRANGE")
                        .arg(&stream)
                        .arg(format!("({last}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            let ids: Vec<String> = parse_entries(&entries)
                .into_iter()
                .map(|entry| entry.id)
                .collect();
            let Some(tail) = ids.last().cloned() else {
                break;
            };
            let n: u64 = self
                .inner
                .conn
                .cmd(redis::cmd("XDEL").arg(&stream).arg(&ids))
                .await?;
            removed += n;
            last = tail;
        }
        Ok(removed)
    }

    async fn purge_dead(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        let dead = self.inner.dead_stream(&queue.name);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XLEN").arg(&dead);
        pipe.cmd("DEL").arg(&dead).ignore();
        let (n,): (u64,) = self.inner.conn.pipe(&pipe).await?;
        Ok(n)
    }
}

#[derive(Debug)]
struct Keys {
    stream: String,
    wait: String,
    dead: String,
    dead_ttl_ms: u64,
}

struct ReaderCtx {
    backend: RedisBackend,
    keys: Arc<Keys>,
    consumer: String,
    reader: Conn,
    prefetch: usize,
    /// One per entry read and not yet handed out: the reader takes them before reading, the
    /// consumer gives them back as it hands entries out (so at most `prefetch` are buffered).
    credits: Arc<Semaphore>,
    visibility_ms: u64,
}

/// A stream entry as read: its id and fields.
#[derive(Debug)]
struct Entry {
    id: String,
    body: Body,
}

/// A stream entry's fields, by wire form.
#[derive(Debug)]
enum Body {
    /// The current form: `<n>:<header><payload>` (field `m`).
    Framed(Vec<u8>),
    /// The previous form: the whole envelope as JSON (field `e`).
    Whole(Vec<u8>),
    /// Neither (written by something else, or damaged): its fields as they are, so that
    /// dead-lettering keeps them.
    Other(Vec<(Vec<u8>, Vec<u8>)>),
}

impl Body {
    /// The envelope, or why there is none (with the body back, to dead-letter it as it is).
    fn decode(self) -> Result<Envelope, (Self, QueueError)> {
        match self {
            Self::Framed(value) => {
                let parsed = entry_parts(&value).and_then(|(header, payload)| {
                    Envelope::decode_header(&value[header]).map(|env| (env, payload))
                });
                match parsed {
                    Ok((mut env, payload)) => {
                        // The payload stays in the buffer it arrived in: no copy, no scan.
                        env.payload = Payload::Json(Bytes::from(value).slice(payload..));
                        Ok(env)
                    }
                    Err(e) => Err((Self::Framed(value), e)),
                }
            }
            // A consumer of the previous version promotes every due retry as `e`, including
            // members a current consumer wrote in the current form (they start with the header
            // length's digits, a whole envelope with `{`): read those as the current form, so a
            // rolling upgrade does not dead-letter retries.
            Self::Whole(body) if body.first().is_some_and(u8::is_ascii_digit) => {
                match Self::Framed(body).decode() {
                    Ok(env) => Ok(env),
                    Err((Self::Framed(body), e)) => Err((Self::Whole(body), e)),
                    Err(other) => Err(other),
                }
            }
            Self::Whole(body) => Envelope::decode(&body).map_err(|e| (Self::Whole(body), e)),
            Self::Other(fields) => {
                let names: Vec<_> = fields
                    .iter()
                    .map(|(k, _)| String::from_utf8_lossy(k))
                    .collect();
                let e = QueueError::Decode {
                    reason: format!(
                        "not an arq stream entry: it has the fields {names:?}, not `m` (or `e`)"
                    ),
                };
                Err((Self::Other(fields), e))
            }
        }
    }

    /// The fields to write when the entry is copied as it is (put back, dead-lettered,
    /// requeued); an `error` a previous dead-lettering added is left out, unless it is all the
    /// entry has (`XADD` needs one field). At most [`MAX_COPIED_FIELDS`] are copied: Lua's
    /// `unpack` in the scripts has a limit, and an `XADD` that fails would leave the entry
    /// pending forever. The second value says how many were dropped.
    fn fields(&self) -> (Vec<Field<'_>>, usize) {
        match self {
            Self::Framed(value) => (vec![(MESSAGE, value)], 0),
            Self::Whole(body) => (vec![(WHOLE, body)], 0),
            Self::Other(fields) => {
                let mut kept: Vec<Field<'_>> = fields
                    .iter()
                    .filter(|(k, _)| k.as_slice() != ERROR)
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                if kept.is_empty() {
                    kept = fields
                        .iter()
                        .map(|(k, v)| (k.as_slice(), v.as_slice()))
                        .collect();
                }
                let dropped = kept.len().saturating_sub(MAX_COPIED_FIELDS);
                kept.truncate(MAX_COPIED_FIELDS);
                (kept, dropped)
            }
        }
    }
}

/// What the reader hands the consumer: one read's entries at once (a channel operation per
/// read rather than per entry), or a read's error.
type Batch = Result<Vec<Entry>, QueueError>;

/// Reads new entries (blocking on its own connection, so publishes and acks on the shared
/// connection never wait behind it), promotes due retries, and reaps stuck entries.
async fn read_loop(ctx: ReaderCtx, tx: mpsc::UnboundedSender<Batch>) {
    let inner = &ctx.backend.inner;
    let reap_every = Duration::from_millis((ctx.visibility_ms / 2).clamp(100, 30_000));
    let mut last_reap = tokio::time::Instant::now();
    let mut reap_cursor = "0-0".to_owned();
    let mut backoff = Duration::from_millis(50);
    // Promoting costs a round trip on the shared connection, where it queues behind publish
    // pipelines: under load do it at most every 50 ms rather than before every read.
    let promote_every = Duration::from_millis(50);
    let mut last_promote: Option<tokio::time::Instant> = None;
    while !tx.is_closed() {
        // Move due retries back into the stream (any consumer may do it; the script is atomic).
        if last_promote.is_none_or(|at| at.elapsed() >= promote_every) {
            last_promote = Some(tokio::time::Instant::now());
            match inner
                .conn
                .script::<u64>(
                    &inner.promote,
                    &[&ctx.keys.wait, &ctx.keys.stream],
                    &[PROMOTE_BATCH.as_bytes()],
                )
                .await
            {
                // A full batch: more may be due, promote again on the next turn.
                Ok(n) if n >= PROMOTE_BATCH_N => last_promote = None,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "promoting due retries failed"),
            }
        }
        // Room for at least one entry (waiting for the consumer to hand some out), and for as
        // many more as are free. The semaphore is closed when the consumer goes away.
        let Ok(first) = ctx.credits.acquire().await else {
            break;
        };
        first.forget();
        let mut room = 1;
        let more = ctx.credits.available_permits().min(ctx.prefetch - 1);
        if more > 0
            && let Ok(p) = ctx
                .credits
                .try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX))
        {
            room += p.num_permits();
            p.forget();
        }
        let mut entries: Vec<Entry> = Vec::new();
        if last_reap.elapsed() >= reap_every {
            last_reap = tokio::time::Instant::now();
            match inner
                .conn
                .cmd::<Value>(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&ctx.keys.stream)
                        .arg(GROUP)
                        .arg(&ctx.consumer)
                        .arg(ctx.visibility_ms)
                        .arg(&reap_cursor)
                        .arg("COUNT")
                        .arg(room),
                )
                .await
            {
                Ok(v) => {
                    if let Value::Array(parts) = &v {
                        if let Some(next) = parts.first().and_then(value_string) {
                            reap_cursor = next;
                        }
                        if let Some(claimed) = parts.get(1) {
                            entries = parse_entries(claimed);
                        }
                    }
                    if !entries.is_empty() {
                        tracing::info!(stream = %ctx.keys.stream, reclaimed = entries.len(), "reaper reclaimed stuck entries");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "XAUTOCLAIM failed"),
            }
        }
        if entries.is_empty() {
            let r = ctx
                .reader
                .cmd::<Value>(
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(&ctx.consumer)
                        .arg("COUNT")
                        .arg(room)
                        .arg("BLOCK")
                        .arg(100)
                        .arg("STREAMS")
                        .arg(&ctx.keys.stream)
                        .arg(">"),
                )
                .await;
            match r {
                Ok(v) => {
                    backoff = Duration::from_millis(50);
                    entries = parse_read_reply(v);
                }
                Err(e) => {
                    ctx.credits.add_permits(room);
                    if tx.send(Err(e)).is_err() {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        ctx.credits.add_permits(room.saturating_sub(entries.len()));
        if entries.is_empty() {
            continue;
        }
        if let Err(mpsc::error::SendError(Ok(entries))) = tx.send(Ok(entries)) {
            // The consumer went away while we were reading: put back what it will never see,
            // so it does not wait for the visibility timeout.
            release(&ctx.backend, &ctx.keys, entries).await;
            return;
        }
    }
}

async fn release(backend: &RedisBackend, keys: &Keys, entries: impl IntoIterator<Item = Entry>) {
    for entry in entries {
        let mut args: Vec<&[u8]> = vec![GROUP.as_bytes(), entry.id.as_bytes()];
        let (fields, dropped) = entry.body.fields();
        if dropped > 0 {
            tracing::warn!(entry = %entry.id, dropped, "putting back a foreign stream entry without its last {dropped} fields");
        }
        for (k, v) in fields {
            args.extend([k, v]);
        }
        let r = backend
            .inner
            .conn
            .script::<u64>(&backend.inner.release, &[&keys.stream], &args)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "releasing an unstarted entry failed; the reaper will reclaim it");
        }
    }
}

struct AckRequest {
    /// The entry to acknowledge; `None` only asks to be told once everything queued before
    /// it is done.
    id: Option<String>,
    /// Told the outcome; `None` for an acknowledgement nobody waits for
    /// ([`Delivery::ack_now`]).
    done: Option<oneshot::Sender<Result<(), QueueError>>>,
}

/// Acknowledges in batches: every ack that arrived while the previous round trip was in
/// flight goes out in one `XACK` + `XDEL` pipeline.
async fn ack_loop(conn: Conn, keys: Arc<Keys>, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let ids: Vec<&str> = batch.iter().filter_map(|a| a.id.as_deref()).collect();
        let r = if ids.is_empty() {
            Ok(())
        } else {
            let mut pipe = redis::pipe();
            pipe.cmd("XACK")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg(&ids)
                .ignore();
            pipe.cmd("XDEL").arg(&keys.stream).arg(&ids).ignore();
            conn.pipe::<()>(&pipe).await
        };
        if let Err(e) = &r {
            let unwatched = batch
                .iter()
                .filter(|a| a.id.is_some() && a.done.is_none())
                .count();
            if unwatched > 0 {
                tracing::warn!(error = %e, stream = %keys.stream, entries = unwatched, "acknowledging failed; the entries stay pending and the reaper redelivers them");
            }
        }
        for a in batch.drain(..) {
            if let Some(done) = a.done {
                let _ = done.send(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(QueueError::Connection {
                        backend: BACKEND,
                        reason: e.to_string(),
                    }),
                });
            }
        }
    }
}

/// A consumer of one Redis stream. Entries it read but did not hand out are put back as new
/// entries when it is dropped.
#[derive(Debug)]
pub struct RedisConsumer {
    backend: RedisBackend,
    keys: Arc<Keys>,
    rx: mpsc::UnboundedReceiver<Batch>,
    /// The rest of the batch being handed out.
    buffered: std::vec::IntoIter<Entry>,
    credits: Arc<Semaphore>,
    /// Entries handed out whose credit has not been given back yet: given back in chunks
    /// (each is a lock on the semaphore), and whenever the consumer is about to wait.
    handed: usize,
    credit_chunk: usize,
    ack_tx: mpsc::UnboundedSender<AckRequest>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// The dead-lettering of an undecodable entry, while it is in flight: kept here rather
    /// than in `next`'s future so that a `next` dropped while it waits (a caller may poll it
    /// once and drop it when it is pending) leaves it to the next call to finish, instead of
    /// abandoning it half way (the entry would wait for the reaper and come back out of
    /// order).
    dead_lettering: Option<DeadLettering>,
}

/// A dead-lettering in flight ([`RedisConsumer::dead_lettering`]).
struct DeadLettering(futures::future::BoxFuture<'static, Result<(), QueueError>>);

impl std::fmt::Debug for DeadLettering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLettering(..)")
    }
}

impl RedisConsumer {
    /// Finishes a dead-lettering a dropped `next` left in flight.
    async fn finish_dead_lettering(&mut self) -> Result<(), QueueError> {
        let Some(pending) = &mut self.dead_lettering else {
            return Ok(());
        };
        let r = (&mut pending.0).await;
        self.dead_lettering = None;
        r
    }

    /// Moves an entry no handler can run to the dead-letter stream: its fields as they are,
    /// plus the reason, so nothing is lost and the stream is not blocked.
    fn dead_letter_undecodable(&self, id: &str, body: &Body, e: &QueueError) -> DeadLettering {
        tracing::warn!(error = %e, entry = %id, "undecodable stream entry; dead-lettering it");
        let (fields, dropped) = body.fields();
        let reason = if dropped > 0 {
            format!("{e} (its last {dropped} fields were not kept)")
        } else {
            e.to_string()
        };
        // Owned, so the future outlives the `next` call that started it.
        let mut args: Vec<Vec<u8>> = vec![
            GROUP.into(),
            id.into(),
            self.keys.dead_ttl_ms.to_string().into_bytes(),
        ];
        for (k, v) in fields {
            args.extend([k.to_vec(), v.to_vec()]);
        }
        args.extend([ERROR.to_vec(), reason.into_bytes()]);
        let backend = self.backend.clone();
        let keys = self.keys.clone();
        DeadLettering(Box::pin(async move {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            backend
                .inner
                .conn
                .script::<u64>(&backend.inner.dead, &[&keys.stream, &keys.dead], &args)
                .await
                .map(drop)
        }))
    }

    /// Stops the reader and takes every entry it read that was not handed out.
    fn take_buffered(&mut self) -> Vec<Entry> {
        self.rx.close();
        self.credits.close();
        let mut left: Vec<Entry> = self.buffered.by_ref().collect();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(batch) = item {
                left.extend(batch);
            }
        }
        left
    }

    fn give_back_credits(&mut self) {
        if self.handed > 0 {
            self.credits.add_permits(self.handed);
            self.handed = 0;
        }
    }

    /// The next entry read, waiting for the reader if none is buffered.
    async fn next_entry(&mut self) -> Option<Result<Entry, QueueError>> {
        loop {
            if let Some(entry) = self.buffered.next() {
                self.handed += 1;
                if self.handed >= self.credit_chunk {
                    self.give_back_credits();
                }
                return Some(Ok(entry));
            }
            self.give_back_credits();
            match self.rx.recv().await? {
                Ok(batch) => self.buffered = batch.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        let dead_lettering = self.dead_lettering.take();
        let left = self.take_buffered();
        if left.is_empty() && dead_lettering.is_none() {
            return;
        }
        let backend = self.backend.clone();
        let keys = self.keys.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Some(d) = dead_lettering
                    && let Err(e) = d.0.await
                {
                    tracing::warn!(error = %e, "dead-lettering an undecodable entry failed; the reaper will reclaim it");
                }
                release(&backend, &keys, left).await;
            });
        }
    }
}

impl Consumer for RedisConsumer {
    type Delivery = RedisDelivery;

    async fn close(mut self) {
        // The reader finishes its current (short, 100 ms) blocking read and puts back what it
        // read after the channel closed; then we put back what was buffered.
        self.rx.close();
        self.credits.close();
        if let Some(reader) = self.reader.take() {
            let _ = reader.await;
        }
        let left = self.take_buffered();
        if let Err(e) = self.finish_dead_lettering().await {
            tracing::warn!(error = %e, "dead-lettering an undecodable entry failed; the reaper will reclaim it");
        }
        release(&self.backend, &self.keys, left).await;
        // Acknowledgements queued without waiting (`ack_now`) go out before this returns.
        let (done, flushed) = oneshot::channel();
        let flush = AckRequest {
            id: None,
            done: Some(done),
        };
        if self.ack_tx.send(flush).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Cancel-safe: dropping the future loses no entry and leaves none half dead-lettered.
    async fn next(&mut self) -> Option<Result<RedisDelivery, QueueError>> {
        loop {
            if let Err(e) = self.finish_dead_lettering().await {
                return Some(Err(e));
            }
            let Entry { id, body } = match self.next_entry().await? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            match body.decode() {
                Ok(envelope) => {
                    return Some(Ok(RedisDelivery {
                        backend: self.backend.clone(),
                        keys: self.keys.clone(),
                        id,
                        envelope,
                        ack_tx: self.ack_tx.clone(),
                    }));
                }
                // Poison at the envelope level: no handler can run it. Dead-lettered before the
                // next entry is taken (the loop's first step), so they stay in order.
                Err((body, e)) => {
                    self.dead_lettering = Some(self.dead_letter_undecodable(&id, &body, &e));
                }
            }
        }
    }
}

/// One stream entry being handled. Dropped unsettled, it stays pending until the reaper of a
/// live consumer reclaims it after the visibility timeout.
#[derive(Debug)]
pub struct RedisDelivery {
    backend: RedisBackend,
    keys: Arc<Keys>,
    id: String,
    envelope: Envelope,
    ack_tx: mpsc::UnboundedSender<AckRequest>,
}

impl RedisDelivery {
    /// The stream entry id.
    pub fn entry_id(&self) -> &str {
        &self.id
    }
}

impl Delivery for RedisDelivery {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    async fn ack(self) -> Result<(), QueueError> {
        let (done, wait) = oneshot::channel();
        self.ack_tx
            .send(AckRequest {
                id: Some(self.id),
                done: Some(done),
            })
            .map_err(|_| QueueError::Closed)?;
        wait.await.map_err(|_| QueueError::Closed)?
    }

    /// Queues the acknowledgement for the consumer's next `XACK` + `XDEL` round trip without
    /// waiting for it, so a handler that finished on its first poll is settled with no future
    /// per message. Should that round trip fail, the entry stays pending and the reaper
    /// redelivers it, as after a crash right after the handler; closing the consumer waits
    /// for what is queued.
    fn ack_now(&mut self) -> Option<Result<(), QueueError>> {
        let id = std::mem::take(&mut self.id);
        Some(
            self.ack_tx
                .send(AckRequest {
                    id: Some(id),
                    done: None,
                })
                .map_err(|_| QueueError::Closed),
        )
    }

    async fn retry(self, failure: Failure, delay: Duration) -> Result<(), QueueError> {
        let mut env = self.envelope;
        env.failures.push(failure);
        env.attempt = env.attempt.saturating_add(1);
        let member = encode_entry(&env)?;
        let delay_ms = u64::try_from(delay.as_millis())
            .unwrap_or(u64::MAX)
            .to_string();
        self.backend
            .inner
            .conn
            .script::<u64>(
                &self.backend.inner.retry,
                &[&self.keys.stream, &self.keys.wait],
                &[
                    GROUP.as_bytes(),
                    self.id.as_bytes(),
                    delay_ms.as_bytes(),
                    &member,
                ],
            )
            .await
            .map(drop)
    }

    async fn dead_letter(self, failure: Failure) -> Result<(), QueueError> {
        let mut env = self.envelope;
        env.failures.push(failure);
        let entry = encode_entry(&env)?;
        let ttl = self.keys.dead_ttl_ms.to_string();
        let args: [&[u8]; 5] = [
            GROUP.as_bytes(),
            self.id.as_bytes(),
            ttl.as_bytes(),
            MESSAGE,
            &entry,
        ];
        self.backend
            .inner
            .conn
            .script::<u64>(
                &self.backend.inner.dead,
                &[&self.keys.stream, &self.keys.dead],
                &args,
            )
            .await
            .map(drop)
    }
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => value_string(other).and_then(|s| s.parse().ok()),
    }
}

/// `[[id, [field, value, …]], …]` → entries. Entries without fields (deleted since they were
/// delivered: `XAUTOCLAIM` on Redis before 7) are skipped.
fn parse_entries(v: &Value) -> Vec<Entry> {
    parse_entries_owned(v.clone())
}

/// [`parse_entries`] taking the reply by value, so ids and bodies move out instead of being
/// copied (the reader's hot path).
fn parse_entries_owned(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(split_entry)
        .map(|(id, fields)| Entry {
            id,
            body: parse_body(fields),
        })
        .collect()
}

/// One `[id, [field, value, …]]` item: the id and the flat field list.
fn split_entry(item: Value) -> Option<(String, Vec<Value>)> {
    let Value::Array(pair) = item else {
        return None;
    };
    let mut pair = pair.into_iter();
    let id = match pair.next()? {
        Value::BulkString(b) => String::from_utf8(b).ok()?,
        other => value_string(&other)?,
    };
    let Value::Array(fields) = pair.next()? else {
        return None;
    };
    Some((id, fields))
}

/// [`parse_entries`] for the dead-letter stream: each entry with the `error` field the
/// consumer recorded when it dead-lettered an entry it could not decode (the body leaves it
/// out of arq's forms).
fn parse_dead_entries(v: Value) -> Vec<(Entry, Option<Vec<u8>>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(split_entry)
        .map(|(id, fields)| {
            let recorded = fields.chunks_exact(2).find_map(|pair| match pair {
                [Value::BulkString(name), value] if name.as_slice() == ERROR => {
                    Some(value_bytes(value))
                }
                _ => None,
            });
            let entry = Entry {
                id,
                body: parse_body(fields),
            };
            (entry, recorded)
        })
        .collect()
}

/// The time part of a stream entry id (`<ms>-<seq>`): when the entry was added; 0 if the id
/// is not one.
fn entry_id_ms(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or(0)
}

/// An entry's flat `[field, value, …]` list, sorted by wire form.
fn parse_body(mut fields: Vec<Value>) -> Body {
    let (mut framed, mut whole) = (None, None);
    for (i, pair) in fields.chunks_exact(2).enumerate() {
        if let [Value::BulkString(name), Value::BulkString(_)] = pair {
            let slot = match name.as_slice() {
                MESSAGE => &mut framed,
                WHOLE => &mut whole,
                _ => continue,
            };
            slot.get_or_insert(2 * i + 1);
        }
    }
    // Move the value out (its position was found above, so the take cannot miss).
    let mut take = |i: usize| match fields.get_mut(i).map(std::mem::take) {
        Some(Value::BulkString(b)) => b,
        _ => Vec::new(),
    };
    match (framed, whole) {
        (Some(m), _) => Body::Framed(take(m)),
        (None, Some(e)) => Body::Whole(take(e)),
        (None, None) => Body::Other(
            fields
                .chunks_exact(2)
                .map(|pair| (value_bytes(&pair[0]), value_bytes(&pair[1])))
                .collect(),
        ),
    }
}

/// A reply value as bytes (what an odd field of a foreign entry is kept as).
fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::Nil => Vec::new(),
        other => value_string(other)
            .map_or_else(|| format!("{other:?}").into_bytes(), String::into_bytes),
    }
}

/// `XREADGROUP` reply: nil, or `[[stream, entries]]` (RESP2) / a map (RESP3).
fn parse_read_reply(v: Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(pair) => pair
                    .into_iter()
                    .nth(1)
                    .map(parse_entries_owned)
                    .unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(m) => m
            .into_iter()
            .flat_map(|(_, e)| parse_entries_owned(e))
            .collect(),
        _ => Vec::new(),
    }
}

fn group_field<'a>(groups: &'a Value, field: &str) -> Option<&'a Value> {
    let Value::Array(list) = groups else {
        return None;
    };
    for g in list {
        let pairs: Vec<(&Value, &Value)> = match g {
            Value::Array(flat) => flat.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        let is_ours = pairs.iter().any(|(k, v)| {
            value_string(k).as_deref() == Some("name") && value_string(v).as_deref() == Some(GROUP)
        });
        if is_ours {
            return pairs
                .into_iter()
                .find(|(k, _)| value_string(k).as_deref() == Some(field))
                .map(|(_, v)| v);
        }
    }
    None
}

/// An [`IdempotencyStore`](crate::IdempotencyStore) shared by every worker using the same Redis
/// and key prefix: handled message ids are kept as `prefix:idem:<id>` keys for `ttl`.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use arq_queue::redis_streams::RedisIdempotency;
/// # async fn demo(backend: arq_queue::RedisBackend, queue: arq_queue::Queue<arq_queue::RedisBackend>) {
/// let worker = arq_queue::Worker::new(queue)
///     .idempotency(RedisIdempotency::new(&backend, Duration::from_secs(7 * 24 * 3600)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisIdempotency {
    backend: RedisBackend,
    ttl_ms: u64,
}

impl RedisIdempotency {
    /// A store on `backend`'s connection and key prefix, remembering ids for `ttl` (keep it
    /// longer than a message can be redelivered: retries plus the dead-letter TTL).
    pub fn new(backend: &RedisBackend, ttl: Duration) -> Self {
        Self {
            backend: backend.clone(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    fn key(&self, id: crate::MessageId) -> String {
        format!("{}:idem:{id}", self.backend.inner.prefix)
    }
}

impl crate::IdempotencyStore for RedisIdempotency {
    fn seen(
        &self,
        id: crate::MessageId,
    ) -> futures::future::BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            let n: u64 = self
                .backend
                .inner
                .conn
                .cmd(redis::cmd("EXISTS").arg(self.key(id)))
                .await?;
            Ok(n > 0)
        })
    }

    fn record(
        &self,
        id: crate::MessageId,
    ) -> futures::future::BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.backend
                .inner
                .conn
                .cmd::<()>(
                    redis::cmd("SET")
                        .arg(self.key(id))
                        .arg(1)
                        .arg("PX")
                        .arg(self.ttl_ms),
                )
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Message for Ping {
        const TYPE: &'static str = "ping";
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn entry_round_trip_without_copying_the_payload() {
        let mut env = Envelope::new(Ping { n: 7 }).with_header("k", "v");
        env.failures.push(Failure {
            attempt: 1,
            at_ms: 2,
            error: "x".into(),
        });
        let value = encode_entry(&env).unwrap();
        let (header, payload) = entry_parts(&value).unwrap();
        assert_eq!(&value[payload..], br#"{"n":7}"#);
        assert_eq!(
            value[..header.start - 1],
            *header.len().to_string().as_bytes()
        );
        let back = Body::Framed(value).decode().unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.headers, env.headers);
        assert_eq!(back.failures, env.failures);
        assert_eq!(back.payload.decode::<Ping>().unwrap(), Ping { n: 7 });
    }

    #[test]
    fn entries_are_sorted_by_form() {
        let env = Envelope::new(Ping { n: 1 });
        let current = encode_entry(&env).unwrap();
        let whole = env.encode().unwrap();
        let body = parse_body(vec![bulk(b"x"), bulk(b"y"), bulk(b"m"), bulk(&current)]);
        assert!(matches!(&body, Body::Framed(v) if *v == current));
        let body = parse_body(vec![bulk(b"e"), bulk(&whole)]);
        assert_eq!(body.decode().unwrap().id, env.id);
        let body = parse_body(vec![bulk(b"a"), bulk(b"1"), bulk(b"error"), bulk(b"old")]);
        let Err((body, e)) = body.decode() else {
            panic!("a foreign entry decoded")
        };
        assert!(e.to_string().contains("\"a\""), "{e}");
        // Copied on without an earlier dead-lettering's reason.
        assert_eq!(body.fields(), (vec![(&b"a"[..], &b"1"[..])], 0));
        // An entry with nothing but an error keeps it (XADD needs a field).
        let only_error = parse_body(vec![bulk(b"error"), bulk(b"why")]);
        let Err((only_error, _)) = only_error.decode() else {
            panic!("a foreign entry decoded")
        };
        assert_eq!(only_error.fields(), (vec![(&b"error"[..], &b"why"[..])], 0));
        // A current-form value under the previous field (a previous version's promotion).
        let body = parse_body(vec![bulk(b"e"), bulk(&current)]);
        assert_eq!(body.decode().unwrap().id, env.id);
    }

    /// An empty payload is written as it is, so a retry, a dead letter or a requeue (which
    /// all re-encode the decoded envelope) hands on what was published, not `null`.
    #[test]
    fn an_empty_payload_stays_empty_when_re_encoded() {
        let env = Envelope::with_payload("t", Payload::Json(Bytes::new()));
        let value = encode_entry(&env).unwrap();
        let (header, payload) = entry_parts(&value).unwrap();
        assert_eq!((header.end, payload), (value.len(), value.len()));
        let mut back = Body::Framed(value).decode().unwrap();
        assert!(matches!(&back.payload, Payload::Json(b) if b.is_empty()));
        back.attempt = 2;
        let again = encode_entry(&back).unwrap();
        let back = Body::Framed(again).decode().unwrap();
        assert!(matches!(&back.payload, Payload::Json(b) if b.is_empty()));
        // A `null` that was published stays `null`.
        let null = Envelope::with_payload("t", Payload::Json(Bytes::from_static(b"null")));
        let back = Body::Framed(encode_entry(&null).unwrap()).decode().unwrap();
        assert!(matches!(&back.payload, Payload::Json(b) if &b[..] == b"null"));
    }

    #[test]
    fn dead_entries_carry_the_recorded_error_and_their_time() {
        let entry = |id: &str, fields: &[&[u8]]| {
            Value::Array(vec![
                bulk(id.as_bytes()),
                Value::Array(fields.iter().map(|f| bulk(f)).collect()),
            ])
        };
        let reply = Value::Array(vec![
            entry("17-0", &[b"m", b"garbage", b"error", b"why"]),
            entry("18-3", &[b"a", b"1"]),
            Value::Nil,
        ]);
        let dead = parse_dead_entries(reply);
        assert_eq!(dead.len(), 2);
        assert!(matches!(&dead[0].0.body, Body::Framed(v) if v == b"garbage"));
        assert_eq!(dead[0].1.as_deref(), Some(&b"why"[..]));
        assert_eq!(dead[1].1, None);
        assert_eq!(
            (entry_id_ms("17-0"), entry_id_ms("18-3"), entry_id_ms("x")),
            (17, 18, 0)
        );
    }

    #[test]
    fn damaged_values_are_errors_that_keep_the_entry() {
        for bad in [
            &b""[..],
            b":",
            b"12",
            b"x:{}",
            b"5:{}",
            b"99999999999999999999:{}",
            b"2:{}",
            b"-1:{}",
        ] {
            let Err((Body::Framed(kept), _)) = Body::Framed(bad.to_vec()).decode() else {
                panic!("{bad:?} decoded")
            };
            assert_eq!(kept, bad);
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Body::Framed(bytes.clone()).decode();
            let _ = Body::Whole(bytes).decode();
        }
    }
}
