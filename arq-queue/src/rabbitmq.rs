//! The RabbitMQ backend (feature `rabbitmq`), on lapin 4.
//!
//! # Topology
//! Every exchange is a durable topic exchange. Each work queue `q` is declared with:
//! - `q`: durable, quorum where the server supports it (`x-queue-type: quorum`, falling back
//!   to a classic durable queue when the declaration is refused), dead-lettering to `q.dead`
//!   (for messages rejected without requeue and, on quorum queues, for messages redelivered
//!   more than `x-delivery-limit` = 20 times: a message that crashes its consumer every time
//!   ends there instead of looping);
//! - `q.wait`: the retry wait queue, with `x-message-ttl` = the queue's retry delay and
//!   dead-lettering back to `q` through the default exchange; on quorum queues with the
//!   at-least-once dead-letter strategy (so an expiring retry is never dropped);
//! - `q.dead`: the dead-letter queue, `x-message-ttl` = 7 days by default.
//!
//! Declaration is idempotent; it runs again after every reconnection.
//!
//! # Publishing
//! A batch is published on one channel in confirm mode with `mandatory`, all frames first,
//! then every confirm is awaited (pipelined). A message no binding routes is returned by the
//! broker and reported as [`QueueError::Unroutable`]; a negative confirm is
//! [`QueueError::NotConfirmed`]. Messages are persistent (delivery mode 2).
//!
//! # Consuming, retries, dead letters
//! Each consumer has its own channel with `basic.qos(prefetch)` (per consumer). A failed
//! attempt is republished (confirmed) to `q.wait` with the failure recorded in a header,
//! then acknowledged; when the TTL expires the broker moves it back to `q` and adds to its
//! `x-death` history. The attempt number is 1 + the `x-death` count for `q.wait`/`expired`:
//! the broker's own death history, not a counter a client could lose. The retry delay is the
//! wait queue's TTL, fixed per queue (a per-message delay is not possible with TTL queues).
//! Dead letters are republished (confirmed) to `q.dead` with their failure history, then
//! acknowledged. A message that is not an arq envelope is rejected (without requeue) to
//! `q.dead` by the consumer; `peek_dead` shows it as an `arq.undecodable` envelope
//! ([`Backend::peek_dead`]) and `requeue_dead` moves it back to `q` as it is.
//!
//! # Reconnection
//! When the connection or a channel breaks, the next publish reconnects, re-declares the
//! topology and reopens the confirm channel; a consumer reconnects, re-declares, re-applies its
//! prefetch and resumes. Unacknowledged deliveries of a broken channel are requeued by the
//! broker, so a message being handled when the connection dropped is delivered again
//! (at-least-once; deduplicate by [`MessageId`]).
//!
//! # Depth
//! AMQP reports only a queue's ready count (passive declare). `unacked` in
//! [`QueueStats`] counts the deliveries this process holds; the broker-wide unacknowledged
//! count needs the management API (`rabbitmq_management`), which this backend does not use.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;

use crate::backend::{
    Backend, Consumer, Delivery, Outgoing, QueueStats, RawDeadLetter, undecodable_dead_letter,
};
use crate::envelope::{Envelope, Failure, MessageId, Payload, trace_from_parts};
use crate::error::QueueError;
use crate::topology::{QueueConfig, Topology};

const BACKEND: &str = "rabbitmq";
const DELIVERY_LIMIT: i64 = 20;

fn conn_err(e: &lapin::Error) -> QueueError {
    QueueError::Connection {
        backend: BACKEND,
        reason: e.to_string(),
    }
}

fn backend_err(e: &lapin::Error) -> QueueError {
    QueueError::Backend {
        backend: BACKEND,
        reason: e.to_string(),
    }
}

/// Which queue type to declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Quorum queues, falling back to classic durable queues when the server refuses them.
    #[default]
    Auto,
    /// Quorum queues only (declaration fails on servers without them).
    Quorum,
    /// Classic durable queues.
    Classic,
}

/// The RabbitMQ backend. Clones share one connection (consumers open their own channels).
///
/// # Example
/// ```no_run
/// use arq_queue::{Queue, RabbitBackend, Topology};
///
/// # async fn run() -> Result<(), arq_queue::QueueError> {
/// let backend = RabbitBackend::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let queue = Queue::new(backend, Topology::seed("app")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RabbitBackend {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    queue_type: QueueType,
    live: Mutex<Option<Live>>,
    topology: RwLock<Option<Arc<Topology>>>,
    unacked: StdMutex<HashMap<String, Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBackend")
            .field("queue_type", &self.queue_type)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Live {
    conn: Arc<Connection>,
    publish: Channel,
}

impl Live {
    fn healthy(&self) -> bool {
        self.conn.status().connected() && self.publish.status().connected()
    }
}

/// Connects to RabbitMQ at `url` and declares `topology`, retrying while the broker is
/// unreachable (backing off from 100 ms to 10 s, each failure logged as a warning), until it
/// succeeds or `shutdown` completes (then `Ok(None)`).
///
/// For the broker-facing parts a process runs beside its HTTP API (an outbox relay, a consumer):
/// they wait for the broker instead of failing start-up, so a broker outage delays messages and
/// never takes the API down. A topology the broker refuses for good (an invalid name) is an
/// error at once, not retried. Once connected, [`RabbitBackend`] reconnects by itself.
///
/// ```no_run
/// # async fn demo() -> Result<(), arq_queue::QueueError> {
/// use arq_queue::{QueueConfig, Topology, connect_rabbitmq_retrying};
/// let topology = Topology::new(["platform"])
///     .queue_config(QueueConfig::new("audit.events").bind("platform", "audit.#"));
/// let mut shutdown = std::pin::pin!(async {
///     let _ = tokio::signal::ctrl_c().await;
/// });
/// if let Some(queue) = connect_rabbitmq_retrying("amqp://127.0.0.1:5672/%2f", topology, &mut shutdown).await? {
///     // consume, or run an outbox relay, until shutdown
/// #   drop(queue);
/// }
/// # Ok(()) }
/// ```
pub async fn connect_rabbitmq_retrying<F>(
    url: &str,
    topology: Topology,
    shutdown: &mut F,
) -> Result<Option<crate::Queue<RabbitBackend>>, QueueError>
where
    F: Future<Output = ()> + Unpin,
{
    topology.validate()?;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let backend = RabbitBackend::connect(url).await?;
            crate::Queue::new(backend, topology.clone()).await
        };
        let failed = tokio::select! {
            () = &mut *shutdown => return Ok(None),
            r = attempt => match r {
                Ok(queue) => return Ok(Some(queue)),
                Err(e @ QueueError::Topology { .. }) => return Err(e),
                Err(e) => e,
            },
        };
        tracing::warn!(
            error = %failed,
            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "cannot reach RabbitMQ; retrying"
        );
        tokio::select! {
            () = &mut *shutdown => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

impl RabbitBackend {
    /// Connects to `url` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`), declaring quorum
    /// queues where the server supports them.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        Self::connect_with(url, QueueType::Auto).await
    }

    /// Connects, declaring queues of `queue_type`.
    pub async fn connect_with(url: &str, queue_type: QueueType) -> Result<Self, QueueError> {
        let backend = Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                queue_type,
                live: Mutex::new(None),
                topology: RwLock::new(None),
                unacked: StdMutex::new(HashMap::new()),
            }),
        };
        backend.live().await?;
        Ok(backend)
    }

    fn topology(&self) -> Option<Arc<Topology>> {
        self.inner
            .topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn unacked(&self, queue: &str) -> Arc<AtomicU64> {
        self.inner
            .unacked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(queue.to_owned())
            .or_default()
            .clone()
    }

    /// The live connection and confirm channel, reconnecting (and re-declaring the topology)
    /// when they are broken.
    async fn live(&self) -> Result<Live, QueueError> {
        let mut live = self.inner.live.lock().await;
        if let Some(l) = live.as_ref().filter(|l| l.healthy()) {
            return Ok(l.clone());
        }
        *live = None;
        let conn = Connection::connect(&self.inner.url, ConnectionProperties::default())
            .await
            .map_err(|e| conn_err(&e))?;
        let conn = Arc::new(conn);
        if let Some(t) = self.topology() {
            declare_on(&conn, &t, self.inner.queue_type).await?;
        }
        let publish = conn.create_channel().await.map_err(|e| conn_err(&e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| conn_err(&e))?;
        let l = Live { conn, publish };
        *live = Some(l.clone());
        Ok(l)
    }

    async fn temp_channel(&self) -> Result<Channel, QueueError> {
        let live = self.live().await?;
        live.conn.create_channel().await.map_err(|e| conn_err(&e))
    }

    /// Deletes the exchanges and every queue (work, wait, dead) of `topology`. An operations
    /// helper for tearing down (tests, decommissioned services); messages in them are lost.
    pub async fn delete(&self, topology: &Topology) -> Result<(), QueueError> {
        let ch = self.temp_channel().await?;
        for q in &topology.queues {
            for name in [q.name.clone(), q.wait_queue(), q.dead_letter_queue()] {
                ch.queue_delete(name.into(), QueueDeleteOptions::default())
                    .await
                    .map_err(|e| backend_err(&e))?;
            }
        }
        for e in &topology.exchanges {
            ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| backend_err(&e))?;
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(())
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn queue_args(kind: bool, role: Role, q: &QueueConfig) -> FieldTable {
    let mut t = FieldTable::default();
    if kind {
        t.insert("x-queue-type".into(), long("quorum"));
    }
    let ms = |d: Duration| AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    match role {
        Role::Work => {
            t.insert("x-dead-letter-exchange".into(), long(""));
            t.insert(
                "x-dead-letter-routing-key".into(),
                long(&q.dead_letter_queue()),
            );
            if kind {
                t.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(DELIVERY_LIMIT),
                );
            }
        }
        Role::Wait => {
            t.insert("x-message-ttl".into(), ms(q.retry_delay));
            t.insert("x-dead-letter-exchange".into(), long(""));
            t.insert("x-dead-letter-routing-key".into(), long(&q.name));
            if kind {
                t.insert("x-dead-letter-strategy".into(), long("at-least-once"));
                t.insert("x-overflow".into(), long("reject-publish"));
            }
        }
        Role::Dead => {
            t.insert("x-message-ttl".into(), ms(q.dead_letter_ttl));
        }
    }
    t
}

#[derive(Clone, Copy)]
enum Role {
    Work,
    Wait,
    Dead,
}

async fn declare_queue(
    conn: &Connection,
    ch: &mut Channel,
    name: String,
    role: Role,
    q: &QueueConfig,
    queue_type: QueueType,
) -> Result<(), QueueError> {
    let opts = QueueDeclareOptions::durable();
    if queue_type != QueueType::Classic {
        let r = ch
            .queue_declare(name.as_str().into(), opts, queue_args(true, role, q))
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if queue_type == QueueType::Auto => {
                tracing::info!(queue = %name, error = %e, "quorum queue refused; declaring a classic durable queue");
                // The refusal closed the channel.
                *ch = conn.create_channel().await.map_err(|e| conn_err(&e))?;
            }
            Err(e) => return Err(backend_err(&e)),
        }
    }
    ch.queue_declare(name.as_str().into(), opts, queue_args(false, role, q))
        .await
        .map(drop)
        .map_err(|e| QueueError::Topology {
            reason: format!("declaring queue {name:?} failed: {e}"),
        })
}

async fn declare_on(
    conn: &Connection,
    topology: &Topology,
    queue_type: QueueType,
) -> Result<(), QueueError> {
    let mut ch = conn.create_channel().await.map_err(|e| conn_err(&e))?;
    for e in &topology.exchanges {
        ch.exchange_declare(
            e.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|err| QueueError::Topology {
            reason: format!("declaring exchange {e:?} failed: {err}"),
        })?;
    }
    for q in &topology.queues {
        declare_queue(conn, &mut ch, q.name.clone(), Role::Work, q, queue_type).await?;
        declare_queue(conn, &mut ch, q.wait_queue(), Role::Wait, q, queue_type).await?;
        declare_queue(
            conn,
            &mut ch,
            q.dead_letter_queue(),
            Role::Dead,
            q,
            queue_type,
        )
        .await?;
        for b in &q.bindings {
            ch.queue_bind(
                q.name.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend_err(&e))?;
        }
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

const H_TENANT: &str = "x-arq-tenant";
const H_CREATED: &str = "x-arq-created-at-ms";
const H_FAILURES: &str = "x-arq-failures";
const H_HEADERS: &str = "x-arq-headers";
const H_TRACEPARENT: &str = "traceparent";
const H_TRACESTATE: &str = "tracestate";

/// The envelope as AMQP body and properties. `x_death` is carried over on republishing so the
/// broker keeps counting.
fn to_amqp(
    env: &Envelope,
    x_death: Option<&AMQPValue>,
) -> Result<(Bytes, BasicProperties), QueueError> {
    let body = env.payload.to_json()?;
    let mut h = FieldTable::default();
    if let Some(t) = env.tenant {
        h.insert(H_TENANT.into(), long(&t.to_string()));
    }
    if let Some(tc) = &env.trace {
        h.insert(H_TRACEPARENT.into(), long(&tc.parent.to_string()));
        if !tc.state.is_empty() {
            h.insert(H_TRACESTATE.into(), long(&tc.state.to_string()));
        }
    }
    h.insert(
        H_CREATED.into(),
        AMQPValue::LongLongInt(i64::try_from(env.created_at_ms).unwrap_or(i64::MAX)),
    );
    if !env.failures.is_empty() {
        let json = serde_json::to_string(&env.failures).map_err(|e| QueueError::Encode {
            reason: e.to_string(),
        })?;
        h.insert(H_FAILURES.into(), long(&json));
    }
    if !env.headers.is_empty() {
        let mut user = FieldTable::default();
        for (k, v) in &env.headers {
            user.insert(k.as_str().into(), long(v));
        }
        h.insert(H_HEADERS.into(), AMQPValue::FieldTable(user));
    }
    if let Some(d) = x_death {
        h.insert("x-death".into(), d.clone());
    }
    let props = BasicProperties::default()
        .with_message_id(env.id.to_string().into())
        .with_type(ShortString::from(&*env.message_type))
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(env.created_at_ms / 1000)
        .with_headers(h);
    Ok((body, props))
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(t) => i64::try_from(*t).ok(),
        _ => None,
    }
}

/// Retries so far according to the broker: the `x-death` count for `wait`/`expired`.
fn deaths(x_death: Option<&AMQPValue>, wait: &str) -> u32 {
    let Some(AMQPValue::FieldArray(arr)) = x_death else {
        return 0;
    };
    arr.as_slice()
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .filter(|t| {
            let inner = t.inner();
            inner.get("queue").and_then(text).as_deref() == Some(wait)
                && inner.get("reason").and_then(text).as_deref() == Some("expired")
        })
        .filter_map(|t| t.inner().get("count").and_then(int))
        .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
        .sum()
}

fn from_amqp(props: &BasicProperties, data: &[u8], wait: &str) -> Result<Envelope, QueueError> {
    let id: MessageId = props
        .message_id()
        .as_ref()
        .ok_or_else(|| QueueError::Decode {
            reason: "the AMQP message has no message_id".to_owned(),
        })?
        .as_str()
        .parse()?;
    let message_type = props
        .kind()
        .as_ref()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    let empty = FieldTable::default();
    let headers = props.headers().as_ref().unwrap_or(&empty);
    let h = headers.inner();
    let tenant = match h.get(H_TENANT).and_then(text) {
        Some(t) => Some(t.parse().map_err(|e| QueueError::Decode {
            reason: format!("bad tenant header: {e}"),
        })?),
        None => None,
    };
    let trace = trace_from_parts(
        h.get(H_TRACEPARENT).and_then(text).as_deref(),
        h.get(H_TRACESTATE).and_then(text).as_deref(),
    );
    let failures: Vec<Failure> = match h.get(H_FAILURES).and_then(text) {
        Some(j) => serde_json::from_str(&j).map_err(|e| QueueError::Decode {
            reason: format!("bad failures header: {e}"),
        })?,
        None => Vec::new(),
    };
    let mut user = BTreeMap::new();
    if let Some(AMQPValue::FieldTable(t)) = h.get(H_HEADERS) {
        for (k, v) in t {
            if let Some(v) = text(v) {
                user.insert(k.as_str().to_owned(), v);
            }
        }
    }
    let created_at_ms = h
        .get(H_CREATED)
        .and_then(int)
        .and_then(|i| u64::try_from(i).ok())
        .or_else(|| props.timestamp().map(|s| s.saturating_mul(1000)))
        .unwrap_or(0);
    Ok(Envelope {
        id,
        message_type: message_type.into(),
        tenant,
        trace,
        attempt: deaths(h.get("x-death"), wait).saturating_add(1),
        headers: user,
        created_at_ms,
        failures,
        payload: Payload::Json(Bytes::copy_from_slice(data)),
    })
}

async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    id: impl std::fmt::Display,
) -> Result<(), QueueError> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await
        .map_err(|e| conn_err(&e))?;
    check_confirm(
        &confirm.await.map_err(|e| conn_err(&e))?,
        exchange,
        routing_key,
        id,
    )
}

fn check_confirm(
    c: &Confirmation,
    exchange: &str,
    routing_key: &str,
    id: impl std::fmt::Display,
) -> Result<(), QueueError> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(QueueError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => Err(QueueError::NotConfirmed {
            message_id: id.to_string(),
            reason: "the broker answered with a negative confirm (basic.nack)".to_owned(),
        }),
        Confirmation::NotRequested => Err(QueueError::NotConfirmed {
            message_id: id.to_string(),
            reason: "the channel is not in confirm mode".to_owned(),
        }),
    }
}

impl Backend for RabbitBackend {
    type Consumer = RabbitConsumer;

    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn declare(&self, topology: &Topology) -> Result<(), QueueError> {
        topology.validate()?;
        *self
            .inner
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(topology.clone()));
        let live = self.live().await?;
        declare_on(&live.conn, topology, self.inner.queue_type).await
    }

    async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), QueueError> {
        if let Some(t) = self.topology() {
            // Publishing to an exchange that does not exist would close the channel; say so
            // before touching the broker.
            if let Some(o) = batch
                .iter()
                .find(|o| !t.exchanges.iter().any(|e| **e == *o.exchange))
            {
                return Err(QueueError::Unknown {
                    kind: "exchange",
                    name: o.exchange.to_string(),
                });
            }
        }
        let live = self.live().await?;
        let mut confirms = Vec::with_capacity(batch.len());
        for o in &batch {
            let (body, props) = to_amqp(&o.envelope, None)?;
            let c = live
                .publish
                .basic_publish(
                    o.exchange.as_ref().into(),
                    o.routing_key.as_ref().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    props,
                )
                .await
                .map_err(|e| conn_err(&e))?;
            confirms.push(c);
        }
        let mut first_err = None;
        for (c, o) in confirms.into_iter().zip(&batch) {
            let r = match c.await {
                Ok(c) => check_confirm(&c, &o.exchange, &o.routing_key, o.envelope.id),
                Err(e) => Err(conn_err(&e)),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn consume(&self, queue: &QueueConfig) -> Result<RabbitConsumer, QueueError> {
        let mut c = RabbitConsumer {
            backend: self.clone(),
            config: Arc::new(queue.clone()),
            wait: Arc::from(queue.wait_queue()),
            current: None,
            unacked: self.unacked(&queue.name),
        };
        c.open().await?;
        Ok(c)
    }

    async fn stats(&self, queue: &QueueConfig) -> Result<QueueStats, QueueError> {
        let ch = self.temp_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut counts = [0u64; 3];
        for (i, name) in [
            queue.name.clone(),
            queue.wait_queue(),
            queue.dead_letter_queue(),
        ]
        .into_iter()
        .enumerate()
        {
            let q = ch
                .queue_declare(name.into(), passive, FieldTable::default())
                .await
                .map_err(|e| backend_err(&e))?;
            counts[i] = u64::from(q.message_count());
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(QueueStats {
            ready: counts[0],
            unacked: self.unacked(&queue.name).load(Ordering::Relaxed),
            waiting_retry: counts[1],
            dead: counts[2],
        })
    }

    async fn peek_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> Result<Vec<Envelope>, QueueError> {
        let ch = self.temp_channel().await?;
        let mut out = Vec::new();
        let wait = queue.wait_queue();
        while out.len() < limit {
            let Some(m) = ch
                .basic_get(
                    queue.dead_letter_queue().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| backend_err(&e))?
            else {
                break;
            };
            // A message that is not an arq envelope (a foreign publisher's, a damaged one) is
            // shown, not an error: it is the poison an operator peeks for, and failing the
            // call would hide every other dead letter too.
            let props = &m.delivery.properties;
            out.push(match from_amqp(props, &m.delivery.data, &wait) {
                Ok(env) => env,
                Err(e) => undecodable_dead_letter(
                    props.message_id().as_ref().map(ShortString::as_str),
                    props.timestamp().map_or(0, |s| s.saturating_mul(1000)),
                    RawDeadLetter::Value(&m.delivery.data),
                    &e.to_string(),
                    None,
                ),
            });
        }
        // Closing the channel returns every message we held to the queue.
        let _ = ch.close(200, "OK".into()).await;
        Ok(out)
    }

    async fn requeue_dead(&self, queue: &QueueConfig, limit: usize) -> Result<usize, QueueError> {
        let ch = self.temp_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| conn_err(&e))?;
        let wait = queue.wait_queue();
        let mut n = 0;
        while n < limit {
            let Some(m) = ch
                .basic_get(
                    queue.dead_letter_queue().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| backend_err(&e))?
            else {
                break;
            };
            let props = &m.delivery.properties;
            match from_amqp(props, &m.delivery.data, &wait) {
                Ok(mut env) => {
                    env.attempt = 1;
                    // Without x-death: the broker starts counting attempts again.
                    let (body, props) = to_amqp(&env, None)?;
                    publish_confirmed(&ch, "", &queue.name, &body, props, env.id).await?;
                }
                // Not an arq envelope: moved back as it is, like any other dead letter (the
                // consumer rejects it to the dead-letter queue again), rather than failing
                // the call and leaving everything behind it in place.
                Err(e) => {
                    let id = props
                        .message_id()
                        .as_ref()
                        .map_or("(no message id)", ShortString::as_str);
                    tracing::info!(queue = %queue.name, message_id = id, error = %e, "requeueing a dead letter that is not an arq envelope as it is");
                    publish_confirmed(&ch, "", &queue.name, &m.delivery.data, props.clone(), id)
                        .await?;
                }
            }
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| conn_err(&e))?;
            n += 1;
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(n)
    }

    async fn purge(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        let ch = self.temp_channel().await?;
        let n = ch
            .queue_purge(queue.name.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| backend_err(&e))?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(u64::from(n))
    }

    async fn purge_dead(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        let ch = self.temp_channel().await?;
        let n = ch
            .queue_purge(
                queue.dead_letter_queue().into(),
                QueuePurgeOptions::default(),
            )
            .await
            .map_err(|e| backend_err(&e))?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(u64::from(n))
    }
}

/// Closes its channel when the consumer and every delivery from it are gone, so the broker
/// requeues whatever was left unacknowledged.
struct ChannelGuard {
    channel: Channel,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let ch = self.channel.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = ch.close(200, "OK".into()).await;
            });
        }
    }
}

struct Current {
    consumer: lapin::Consumer,
    channel: Channel,
    tag: String,
    guard: Arc<ChannelGuard>,
}

/// A consumer of one RabbitMQ queue on its own channel.
pub struct RabbitConsumer {
    backend: RabbitBackend,
    config: Arc<QueueConfig>,
    wait: Arc<str>,
    current: Option<Current>,
    unacked: Arc<AtomicU64>,
}

impl std::fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("queue", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl RabbitConsumer {
    /// Opens a channel, applies the prefetch and starts consuming (after a reconnection the
    /// topology has already been re-declared by [`RabbitBackend::live`]).
    async fn open(&mut self) -> Result<(), QueueError> {
        let live = self.backend.live().await?;
        let channel = live.conn.create_channel().await.map_err(|e| conn_err(&e))?;
        // Guarded from here on: if this open fails or is abandoned part way (the worker drops a
        // pending `next`), the channel closes and the broker requeues whatever it delivered to
        // the half-registered consumer, instead of holding it unacknowledged on a channel
        // nobody reads.
        let guard = Arc::new(ChannelGuard {
            channel: channel.clone(),
        });
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| conn_err(&e))?;
        let tag = format!("arq-{}", uuid::Uuid::now_v7().simple());
        let consumer = channel
            .basic_consume(
                self.config.name.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend_err(&e))?;
        self.current = Some(Current {
            consumer,
            guard,
            channel,
            tag,
        });
        Ok(())
    }

    fn delivery(
        &self,
        d: AmqpDelivery,
        guard: Arc<ChannelGuard>,
    ) -> Result<RabbitDelivery, (Acker, QueueError)> {
        match from_amqp(&d.properties, &d.data, &self.wait) {
            Ok(envelope) => {
                self.unacked.fetch_add(1, Ordering::Relaxed);
                let x_death = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-death").cloned());
                Ok(RabbitDelivery {
                    backend: self.backend.clone(),
                    config: self.config.clone(),
                    envelope,
                    x_death,
                    acker: Some(d.acker),
                    unacked: self.unacked.clone(),
                    _guard: guard,
                })
            }
            Err(e) => Err((d.acker, e)),
        }
    }
}

impl Consumer for RabbitConsumer {
    type Delivery = RabbitDelivery;

    async fn next(&mut self) -> Option<Result<RabbitDelivery, QueueError>> {
        // lapin's consumer stream spends no cooperative budget of tokio's; a prefetched
        // backlog would otherwise keep the consume loop's thread.
        tokio::task::coop::consume_budget().await;
        loop {
            if self.current.is_none()
                && let Err(e) = self.open().await
            {
                return Some(Err(e));
            }
            let cur = self.current.as_mut()?;
            let guard = cur.guard.clone();
            match cur.consumer.next().await {
                Some(Ok(d)) => match self.delivery(d, guard) {
                    Ok(d) => return Some(Ok(d)),
                    Err((acker, e)) => {
                        // Not an arq envelope: reject it to the dead-letter queue (the work
                        // queue dead-letters to it) rather than loop on it.
                        tracing::warn!(queue = %self.config.name, error = %e, "undecodable message; rejecting it to the dead-letter queue");
                        // Sent from its own task: `next` must stay cancel-safe, and a reject
                        // abandoned half way would leave the message unacknowledged, holding a
                        // prefetch slot until the channel closes.
                        tokio::spawn(async move {
                            let _ = acker
                                .nack(BasicNackOptions {
                                    requeue: false,
                                    multiple: false,
                                })
                                .await;
                        });
                    }
                },
                Some(Err(e)) => {
                    self.current = None;
                    return Some(Err(conn_err(&e)));
                }
                None => {
                    self.current = None;
                    return Some(Err(QueueError::Connection {
                        backend: BACKEND,
                        reason: "the consumer was cancelled or its channel closed; reconnecting"
                            .to_owned(),
                    }));
                }
            }
        }
    }

    async fn close(mut self) {
        let Some(mut cur) = self.current.take() else {
            return;
        };
        let _ = cur
            .channel
            .basic_cancel(cur.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        // Return what was prefetched but never handed out.
        while let Some(Some(Ok(d))) = cur.consumer.next().now_or_never() {
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
    }
}

/// One RabbitMQ delivery. Dropped unsettled, it is rejected with requeue (and if that cannot be
/// sent, the broker requeues it when the channel closes).
pub struct RabbitDelivery {
    backend: RabbitBackend,
    config: Arc<QueueConfig>,
    envelope: Envelope,
    x_death: Option<AMQPValue>,
    acker: Option<Acker>,
    unacked: Arc<AtomicU64>,
    _guard: Arc<ChannelGuard>,
}

impl std::fmt::Debug for RabbitDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitDelivery")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl Drop for RabbitDelivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            self.unacked.fetch_sub(1, Ordering::Relaxed);
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await;
                });
            }
        }
    }
}

impl RabbitDelivery {
    fn take_acker(&mut self) -> Option<Acker> {
        let a = self.acker.take();
        if a.is_some() {
            self.unacked.fetch_sub(1, Ordering::Relaxed);
        }
        a
    }

    /// Republishes (confirmed) to `routing_key` via the default exchange, then acks; if the
    /// republish fails, the delivery is requeued (retry) or rejected to the DLQ (dead letter).
    async fn move_to(
        mut self,
        routing_key: String,
        requeue_on_failure: bool,
    ) -> Result<(), QueueError> {
        let Some(acker) = self.take_acker() else {
            return Ok(());
        };
        let moved = async {
            let (body, props) = to_amqp(&self.envelope, self.x_death.as_ref())?;
            let live = self.backend.live().await?;
            publish_confirmed(
                &live.publish,
                "",
                &routing_key,
                &body,
                props,
                self.envelope.id,
            )
            .await
        }
        .await;
        match moved {
            Ok(()) => acker
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(|e| conn_err(&e)),
            Err(e) => {
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: requeue_on_failure,
                        multiple: false,
                    })
                    .await;
                Err(e)
            }
        }
    }
}

impl Delivery for RabbitDelivery {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    async fn ack(mut self) -> Result<(), QueueError> {
        match self.take_acker() {
            Some(a) => a
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(|e| conn_err(&e)),
            None => Ok(()),
        }
    }

    async fn retry(mut self, failure: Failure, _delay: Duration) -> Result<(), QueueError> {
        // The delay is the wait queue's TTL (declared from the queue's `retry_delay`).
        self.envelope.failures.push(failure);
        let wait = self.config.wait_queue();
        self.move_to(wait, true).await
    }

    async fn dead_letter(mut self, failure: Failure) -> Result<(), QueueError> {
        self.envelope.failures.push(failure);
        let dead = self.config.dead_letter_queue();
        self.move_to(dead, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn attempts_come_from_x_death() {
        let mut entry = FieldTable::default();
        entry.insert("queue".into(), long("q.wait"));
        entry.insert("reason".into(), long("expired"));
        entry.insert("count".into(), AMQPValue::LongLongInt(2));
        let mut other = FieldTable::default();
        other.insert("queue".into(), long("q"));
        other.insert("reason".into(), long("rejected"));
        other.insert("count".into(), AMQPValue::LongLongInt(5));
        let mut arr = FieldArray::default();
        arr.push(AMQPValue::FieldTable(entry));
        arr.push(AMQPValue::FieldTable(other));
        let v = AMQPValue::FieldArray(arr);
        assert_eq!(deaths(Some(&v), "q.wait"), 2);
        assert_eq!(deaths(None, "q.wait"), 0);
        assert_eq!(deaths(Some(&long("junk")), "q.wait"), 0);
    }

    #[test]
    fn amqp_mapping_round_trips() {
        let env = Envelope::with_payload("t", Payload::Json(Bytes::from_static(b"{\"a\":1}")))
            .with_tenant(arq_core::TenantId::generate())
            .with_trace(arq_core::TraceContext::new_root(true))
            .with_header("k", "v");
        let (body, props) = to_amqp(&env, None).unwrap();
        let back = from_amqp(&props, &body, "q.wait").unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.tenant, env.tenant);
        assert_eq!(back.trace, env.trace);
        assert_eq!(back.headers, env.headers);
        assert_eq!(back.created_at_ms, env.created_at_ms);
        assert_eq!(back.attempt, 1);
        assert!(from_amqp(&BasicProperties::default(), b"{}", "q.wait").is_err());
    }
}
