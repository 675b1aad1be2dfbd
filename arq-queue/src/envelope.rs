//! The envelope every message travels in, and the typed messages put inside it.

use std::any::Any;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arq_core::{TenantId, TraceContext, TraceParent, TraceState};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::QueueError;

/// A message type that can be published and handled.
///
/// `TYPE` names the message on the wire (the envelope's `type`, the AMQP `type` property) and is
/// the default routing key.
///
/// # Example
/// ```
/// use arq_queue::Message;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
/// }
///
/// impl Message for SendEmail {
///     const TYPE: &'static str = "email.send";
/// }
/// assert_eq!(SendEmail::TYPE, "email.send");
/// ```
pub trait Message: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The message type name, also the default routing key.
    const TYPE: &'static str;
}

/// A message id: a UUID v7, unique per published message and kept across retries, so
/// consumers deduplicate redeliveries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A fresh, time-ordered id: a UUID v7 (millisecond timestamp, 74 random bits).
    ///
    /// The random bits come from the thread-local CSPRNG rather than the OS for every id
    /// (`Uuid::now_v7` asks `getrandom`, a system call that dominated the in-memory hot path).
    pub fn generate() -> Self {
        Self::generate_at(now_ms())
    }

    /// A fresh id stamped with `unix_ms` (so a caller that already read the clock does not
    /// read it again).
    fn generate_at(unix_ms: u64) -> Self {
        // Two words from the generator rather than `fill_bytes` of ten: the same randomness,
        // fewer instructions on this per-message path.
        let mut rng = rand::rng();
        let (hi, lo) = (rand::Rng::next_u64(&mut rng), rand::Rng::next_u32(&mut rng));
        let mut bits = [0u8; 10];
        bits[..8].copy_from_slice(&hi.to_le_bytes());
        bits[8..].copy_from_slice(&lo.to_le_bytes()[..2]);
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, &bits).into_uuid())
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| QueueError::Decode {
                reason: format!("the message id {s:?} is not a UUID"),
            })
    }
}

/// One failed attempt, kept in the envelope so the dead-letter queue shows the whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The attempt that failed (1 is the first delivery).
    pub attempt: u32,
    /// When it failed, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What the handler (or the runtime: timeout, panic, undecodable payload) reported.
    pub error: String,
}

type ToJson = fn(&(dyn Any + Send + Sync), &mut Vec<u8>) -> Result<(), serde_json::Error>;

/// The payload of an envelope: either JSON bytes (what crosses a network) or the typed value
/// itself (what the in-memory backend passes around without serializing).
#[derive(Clone)]
pub enum Payload {
    /// JSON text. It must be valid JSON (what `serde_json` produces); a network backend
    /// embeds it as is, and a consumer dead-letters an envelope it cannot parse.
    Json(Bytes),
    /// A typed value published in-process; serialized only if something needs its JSON
    /// (peeking a dead letter, handing it to a network backend).
    Native(NativePayload),
}

/// A typed payload that has not been serialized.
#[derive(Clone)]
pub struct NativePayload {
    value: Arc<dyn Any + Send + Sync>,
    to_json: ToJson,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(b) => f
                .debug_tuple("Json")
                .field(&String::from_utf8_lossy(b))
                .finish(),
            Self::Native(_) => f.write_str("Native(..)"),
        }
    }
}

fn to_json_of<T: Serialize + 'static>(
    value: &(dyn Any + Send + Sync),
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    match value.downcast_ref::<T>() {
        Some(v) => serde_json::to_writer(out, v),
        // Unreachable by construction: the function pointer is stored next to a value of `T`.
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

impl Payload {
    /// A typed payload, not serialized.
    pub fn native<T: Serialize + Send + Sync + 'static>(value: T) -> Self {
        Self::Native(NativePayload {
            value: Arc::new(value),
            to_json: to_json_of::<T>,
        })
    }

    /// The payload as JSON bytes, serializing a typed payload.
    pub fn to_json(&self) -> Result<Bytes, QueueError> {
        match self {
            Self::Json(b) => Ok(b.clone()),
            Self::Native(_) => {
                let mut out = Vec::new();
                self.write_json(&mut out)?;
                Ok(Bytes::from(out))
            }
        }
    }

    /// Appends the payload's JSON to `out`, `null` for an empty one (what the wire forms hold
    /// for it).
    pub(crate) fn write_json_or_null(&self, out: &mut Vec<u8>) -> Result<(), QueueError> {
        let at = out.len();
        self.write_json(out)?;
        if out.len() == at {
            out.extend_from_slice(b"null");
        }
        Ok(())
    }

    /// Appends the payload's JSON to `out` (a typed payload is serialized straight into it).
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), QueueError> {
        match self {
            Self::Json(b) => {
                out.extend_from_slice(b);
                Ok(())
            }
            Self::Native(n) => (n.to_json)(n.value.as_ref(), out).map_err(|e| QueueError::Encode {
                reason: e.to_string(),
            }),
        }
    }

    /// The payload as a `T`: a clone of a typed payload of that type, or JSON decoded into it.
    pub fn decode<T: DeserializeOwned + Clone + 'static>(&self) -> Result<T, QueueError> {
        let json = match self {
            Self::Native(n) => {
                if let Some(v) = n.value.downcast_ref::<T>() {
                    return Ok(v.clone());
                }
                self.to_json()?
            }
            Self::Json(b) => b.clone(),
        };
        serde_json::from_slice(&json).map_err(|e| QueueError::Decode {
            reason: format!("the payload does not decode as the handler's type: {e}"),
        })
    }
}

/// The envelope: what every backend stores and every handler receives.
///
/// # Example
/// ```
/// use arq_queue::{Envelope, Message, TenantId, TraceContext};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
/// # struct SendEmail { to: String }
/// # impl Message for SendEmail { const TYPE: &'static str = "email.send"; }
///
/// let tenant = TenantId::generate();
/// let env = Envelope::new(SendEmail { to: "a@example.com".into() })
///     .with_tenant(tenant)
///     .with_trace(TraceContext::new_root(true))
///     .with_header("priority", "high");
/// assert_eq!(&*env.message_type, "email.send");
/// assert_eq!(env.attempt, 1);
///
/// // Round trip through the wire form a network backend uses.
/// let wire = env.encode()?;
/// let back = arq_queue::Envelope::decode(&wire)?;
/// assert_eq!(back.id, env.id);
/// assert_eq!(back.tenant, Some(tenant));
/// assert_eq!(back.payload.decode::<SendEmail>()?.to, "a@example.com");
/// # Ok::<(), arq_queue::QueueError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique per published message, kept across retries.
    pub id: MessageId,
    /// The message type name ([`Message::TYPE`]).
    pub message_type: Arc<str>,
    /// The tenant the message belongs to, restored around the handler.
    pub tenant: Option<TenantId>,
    /// The trace the publish happened in; the handler runs in a child span of it.
    pub trace: Option<TraceContext>,
    /// The delivery attempt, 1 for the first.
    pub attempt: u32,
    /// Free-form string headers.
    pub headers: BTreeMap<String, String>,
    /// When the message was first published, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Earlier failed attempts, oldest first.
    pub failures: Vec<Failure>,
    /// The payload.
    pub payload: Payload,
}

/// `name` as a shared `Arc<str>`, made once per thread and type instead of once per message:
/// the allocation and its free on the consumer's thread were a measurable share of an in-memory
/// message's cost (docs/bench-queue.md). Keyed by the string's address, so the scan is a few
/// pointer compares; a program has a handful of message types.
fn static_type_name(name: &'static str) -> Arc<str> {
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<(&'static str, Arc<str>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some((_, arc)) = names
            .iter()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
        {
            return arc.clone();
        }
        let arc: Arc<str> = Arc::from(name);
        // Bounded: a program with unusually many types still allocates per message beyond this.
        if names.len() < 64 {
            names.push((name, arc.clone()));
        }
        arc
    })
}

pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    // Seconds and millis apart rather than `as_millis` (a 128-bit multiply-add): this runs for
    // every message published and delivered.
    since
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(since.subsec_millis()))
}

impl Envelope {
    /// A new envelope around a typed message, not serialized. If the current task is running a
    /// queue handler, the tenant and a child of its trace are inherited.
    pub fn new<T: Message>(message: T) -> Self {
        Self::with_payload(static_type_name(T::TYPE), Payload::native(message))
    }

    /// A new envelope around an already-built payload.
    pub fn with_payload(message_type: impl Into<Arc<str>>, payload: Payload) -> Self {
        let scope = crate::scope::MessageScope::current();
        let now = now_ms();
        Self {
            id: MessageId::generate_at(now),
            message_type: message_type.into(),
            tenant: scope.as_ref().and_then(|s| s.tenant),
            trace: scope.and_then(|s| s.trace.map(|t| t.child())),
            attempt: 1,
            headers: BTreeMap::new(),
            created_at_ms: now,
            failures: Vec::new(),
            payload,
        }
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets the trace context.
    #[must_use]
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Serializes the whole envelope to its JSON wire form (used by the outbox; RabbitMQ maps
    /// the fields onto AMQP properties instead, Redis Streams stores the header and the payload
    /// apart).
    pub fn encode(&self) -> Result<Vec<u8>, QueueError> {
        let mut out = Vec::with_capacity(512);
        self.write_header(&mut out)?;
        // The payload is already JSON (or serializes straight into `out`): splice it in rather
        // than re-parse it into a RawValue. The header always serializes as a non-empty object
        // ending in `}`.
        out.pop();
        out.extend_from_slice(b",\"payload\":");
        self.payload.write_json_or_null(&mut out)?;
        out.push(b'}');
        Ok(out)
    }

    /// Appends the header to `out`: the JSON wire form without the payload (an object with
    /// every field but `payload`), for a backend that stores the payload apart
    /// ([`Envelope::decode_header`] reads it back).
    pub(crate) fn write_header(&self, out: &mut Vec<u8>) -> Result<(), QueueError> {
        let wire = Wire {
            id: self.id,
            message_type: &self.message_type,
            tenant: self.tenant,
            traceparent: self.trace.as_ref().map(|t| t.parent.to_string()),
            tracestate: self
                .trace
                .as_ref()
                .filter(|t| !t.state.is_empty())
                .map(|t| t.state.to_string()),
            attempt: self.attempt,
            headers: &self.headers,
            created_at_ms: self.created_at_ms,
            failures: &self.failures,
        };
        serde_json::to_writer(out, &wire).map_err(|e| QueueError::Encode {
            reason: e.to_string(),
        })
    }

    /// Parses the JSON wire form. Bad input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, QueueError> {
        let wire: WireIn<'_> = serde_json::from_slice(bytes).map_err(|e| QueueError::Decode {
            reason: format!("not an arq envelope: {e}"),
        })?;
        let Some(payload) = wire.payload else {
            return Err(QueueError::Decode {
                reason: "not an arq envelope: missing field `payload`".to_owned(),
            });
        };
        let payload = Bytes::copy_from_slice(payload.get().as_bytes());
        Ok(wire.into_envelope(Payload::Json(payload)))
    }

    /// Parses a header ([`Envelope::write_header`]). The payload is stored apart, so the
    /// envelope returned has an empty one: the caller puts in the payload's JSON as it is.
    /// Not parsing the payload here is the point: a payload that is not JSON fails the
    /// handler's typed decode (which dead-letters it) instead of being scanned twice.
    /// Bad input is an error, never a panic. (Only the Redis Streams backend stores the payload
    /// apart from its header.)
    #[cfg(feature = "redis")]
    pub(crate) fn decode_header(header: &[u8]) -> Result<Self, QueueError> {
        if let Some(env) = decode_plain_header(header) {
            return Ok(env);
        }
        let wire: WireIn<'_> = serde_json::from_slice(header).map_err(|e| QueueError::Decode {
            reason: format!("not an arq envelope header: {e}"),
        })?;
        if wire.payload.is_some() {
            return Err(QueueError::Decode {
                reason: "not an arq envelope header: it carries a payload".to_owned(),
            });
        }
        Ok(wire.into_envelope(Payload::Json(Bytes::new())))
    }

    /// The last failure's error, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.failures.last().map(|f| f.error.as_str())
    }
}

/// The header as [`Envelope::write_header`] writes it for most messages (id, type, maybe a
/// tenant and a traceparent, attempt, created_at_ms; no trace state, headers or failures), read
/// without serde: the order and separators are fixed, so it is a few comparisons and two
/// number parses instead of a general JSON parse (serde_json took ~3 k instructions, the
/// largest part of a Redis delivery's decoding). Anything else (other fields, whitespace,
/// escapes, another order, odd numbers) returns `None` and goes through serde, which reads
/// any JSON with the same meaning, and reports what is wrong.
#[cfg(feature = "redis")]
fn decode_plain_header(header: &[u8]) -> Option<Envelope> {
    let mut r = Plain(header);
    r.tag(b"{\"id\":")?;
    let id = MessageId(Uuid::try_parse(r.string()?).ok()?);
    r.tag(b",\"type\":")?;
    let message_type = r.string()?;
    let tenant = match r.tag(b",\"tenant\":") {
        Some(()) => Some(r.string()?.parse::<TenantId>().ok()?),
        None => None,
    };
    let traceparent = match r.tag(b",\"traceparent\":") {
        Some(()) => Some(r.string()?),
        None => None,
    };
    r.tag(b",\"attempt\":")?;
    let attempt = u32::try_from(r.number()?).ok()?;
    r.tag(b",\"created_at_ms\":")?;
    let created_at_ms = r.number()?;
    r.tag(b"}")?;
    if !r.0.is_empty() {
        return None;
    }
    Some(Envelope {
        id,
        message_type: Arc::from(message_type),
        tenant,
        trace: trace_from_parts(traceparent, None),
        attempt: attempt.max(1),
        headers: BTreeMap::new(),
        created_at_ms,
        failures: Vec::new(),
        payload: Payload::Json(Bytes::new()),
    })
}

/// The rest of a header being read by [`decode_plain_header`].
#[cfg(feature = "redis")]
struct Plain<'a>(&'a [u8]);

#[cfg(feature = "redis")]
impl<'a> Plain<'a> {
    fn tag(&mut self, tag: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(tag)?;
        Some(())
    }

    /// A JSON string with no escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        let rest = self.0.strip_prefix(b"\"")?;
        let end = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.get(end) != Some(&b'"') {
            return None;
        }
        let text = std::str::from_utf8(rest.get(..end)?).ok()?;
        self.0 = rest.get(end + 1..)?;
        Some(text)
    }

    /// A JSON integer with no sign, fraction, exponent or leading zero, of at most 19 digits
    /// (so it fits a `u64`).
    fn number(&mut self) -> Option<u64> {
        let digits = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || (digits > 1 && self.0.first() == Some(&b'0')) {
            return None;
        }
        let (number, rest) = self.0.split_at_checked(digits)?;
        self.0 = rest;
        Some(
            number
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        )
    }
}

/// Rebuilds a trace context from its two header values; an invalid `traceparent` means none,
/// an invalid `tracestate` is dropped (as the W3C recommendation says).
pub(crate) fn trace_from_parts(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<TraceContext> {
    let parent: TraceParent = traceparent?.parse().ok()?;
    let state: TraceState = tracestate.and_then(|s| s.parse().ok()).unwrap_or_default();
    Some(TraceContext { parent, state })
}

#[derive(Serialize)]
struct Wire<'a> {
    id: MessageId,
    #[serde(rename = "type")]
    message_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<TenantId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    attempt: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    created_at_ms: u64,
    #[serde(skip_serializing_if = "<[Failure]>::is_empty")]
    failures: &'a [Failure],
}

/// What [`Envelope::decode`] and [`Envelope::decode_header`] read: strings borrowed from the
/// input where they need no unescaping, the payload (absent in a header) as raw JSON.
#[derive(Deserialize)]
struct WireIn<'a> {
    id: MessageId,
    #[serde(rename = "type", borrow)]
    message_type: Cow<'a, str>,
    #[serde(default)]
    tenant: Option<TenantId>,
    #[serde(default, borrow)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tracestate: Option<Cow<'a, str>>,
    attempt: u32,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    created_at_ms: u64,
    #[serde(default)]
    failures: Vec<Failure>,
    // `null` is a payload too (what `encode` writes for an empty one): absent is `None`.
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a serde_json::value::RawValue>,
}

fn present<'de, D>(d: D) -> Result<Option<&'de serde_json::value::RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&serde_json::value::RawValue>::deserialize(d).map(Some)
}

impl WireIn<'_> {
    fn into_envelope(self, payload: Payload) -> Envelope {
        Envelope {
            id: self.id,
            message_type: Arc::from(&*self.message_type),
            tenant: self.tenant,
            trace: trace_from_parts(self.traceparent.as_deref(), self.tracestate.as_deref()),
            attempt: self.attempt.max(1),
            headers: self.headers,
            created_at_ms: self.created_at_ms,
            failures: self.failures,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Message for Ping {
        const TYPE: &'static str = "ping";
    }

    #[test]
    fn native_payload_decodes_without_serializing_and_falls_back_to_json() {
        let p = Payload::native(Ping { n: 3 });
        assert_eq!(p.decode::<Ping>().unwrap(), Ping { n: 3 });
        // Another type with a compatible shape decodes through JSON.
        #[derive(Clone, Deserialize)]
        struct Other {
            n: u64,
        }
        assert_eq!(p.decode::<Other>().unwrap().n, 3);
        assert!(p.decode::<String>().is_err());
    }

    #[test]
    fn wire_round_trip_keeps_every_field() {
        let mut env = Envelope::new(Ping { n: 7 })
            .with_tenant(TenantId::generate())
            .with_trace(TraceContext {
                parent: TraceParent::new_root(true),
                state: "a=1".parse().unwrap(),
            })
            .with_header("k", "v");
        env.attempt = 2;
        env.failures.push(Failure {
            attempt: 1,
            at_ms: 5,
            error: "boom".into(),
        });
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(&*back.message_type, "ping");
        assert_eq!(back.tenant, env.tenant);
        assert_eq!(back.trace, env.trace);
        assert_eq!(back.attempt, 2);
        assert_eq!(back.headers, env.headers);
        assert_eq!(back.created_at_ms, env.created_at_ms);
        assert_eq!(back.failures, env.failures);
        assert_eq!(back.last_error(), Some("boom"));
        assert_eq!(back.payload.decode::<Ping>().unwrap(), Ping { n: 7 });
    }

    #[cfg(feature = "redis")]
    #[test]
    fn header_round_trip_leaves_the_payload_to_the_caller() {
        let mut env = Envelope::new(Ping { n: 7 })
            .with_tenant(TenantId::generate())
            .with_header("k", "v \" \n escaped");
        env.attempt = 3;
        env.failures.push(Failure {
            attempt: 2,
            at_ms: 5,
            error: "boom".into(),
        });
        let mut header = Vec::new();
        env.write_header(&mut header).unwrap();
        let wire: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert!(wire.get("payload").is_none());
        let back = Envelope::decode_header(&header).unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.tenant, env.tenant);
        assert_eq!(back.attempt, 3);
        assert_eq!(back.headers, env.headers);
        assert_eq!(back.failures, env.failures);
        assert!(matches!(&back.payload, Payload::Json(b) if b.is_empty()));
        // A whole envelope is not a header.
        assert!(Envelope::decode_header(&env.encode().unwrap()).is_err());
    }

    /// The serde-free reading of plain headers gives what serde gives, and leaves everything
    /// else to serde.
    #[cfg(feature = "redis")]
    #[test]
    fn plain_headers_read_like_serde() {
        let header = |env: &Envelope| {
            let mut h = Vec::new();
            env.write_header(&mut h).unwrap();
            h
        };
        let serde = |h: &[u8]| {
            serde_json::from_slice::<WireIn<'_>>(h)
                .unwrap()
                .into_envelope(Payload::Json(Bytes::new()))
        };
        let same = |a: &Envelope, b: &Envelope| {
            assert_eq!(
                (
                    a.id,
                    &a.message_type,
                    a.tenant,
                    &a.trace,
                    a.attempt,
                    a.created_at_ms
                ),
                (
                    b.id,
                    &b.message_type,
                    b.tenant,
                    &b.trace,
                    b.attempt,
                    b.created_at_ms
                )
            );
            assert_eq!((&a.headers, &a.failures), (&b.headers, &b.failures));
        };
        let plain = Envelope::new(Ping { n: 1 });
        let tenant = Envelope::new(Ping { n: 1 }).with_tenant(TenantId::generate());
        let traced = Envelope::new(Ping { n: 1 })
            .with_tenant(TenantId::generate())
            .with_trace(TraceContext::new_root(true));
        for env in [&plain, &tenant, &traced] {
            let h = header(env);
            let fast = decode_plain_header(&h).expect("a plain header");
            same(&fast, &serde(&h));
            same(&fast, env);
        }
        // Not plain: serde reads them.
        let stated = Envelope::new(Ping { n: 1 }).with_trace(TraceContext {
            parent: TraceParent::new_root(true),
            state: "a=1".parse().unwrap(),
        });
        let headed = Envelope::new(Ping { n: 1 }).with_header("k", "v");
        let mut failed = Envelope::new(Ping { n: 1 });
        failed.failures.push(Failure {
            attempt: 1,
            at_ms: 2,
            error: "x".into(),
        });
        let mut escaped = Envelope::with_payload("a\"b", Payload::Json(Bytes::new()));
        escaped.attempt = 0;
        for env in [&stated, &headed, &failed, &escaped] {
            let h = header(env);
            assert!(decode_plain_header(&h).is_none());
            same(&Envelope::decode_header(&h).unwrap(), &serde(&h));
        }
        // Odd but valid JSON goes through serde; invalid JSON is an error either way.
        let id = MessageId::generate();
        let spaced = format!(r#"{{ "id":"{id}","type":"t","attempt":1,"created_at_ms":5}}"#);
        assert!(decode_plain_header(spaced.as_bytes()).is_none());
        assert_eq!(Envelope::decode_header(spaced.as_bytes()).unwrap().id, id);
        for bad in [
            format!(r#"{{"id":"{id}","type":"t","attempt":01,"created_at_ms":5}}"#),
            format!(r#"{{"id":"{id}","type":"t","attempt":4294967296,"created_at_ms":5}}"#),
            format!(r#"{{"id":"{id}","type":"t","attempt":1,"created_at_ms":5}}x"#),
            r#"{"id":"nope","type":"t","attempt":1,"created_at_ms":5}"#.to_owned(),
            format!(
                r#"{{"id":"{id}","type":"t","tenant":"00000000-0000-0000-0000-000000000000","attempt":1,"created_at_ms":5}}"#
            ),
        ] {
            assert!(decode_plain_header(bad.as_bytes()).is_none(), "{bad}");
            assert!(Envelope::decode_header(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn whole_form_keeps_null_and_requires_a_payload() {
        let env = Envelope::with_payload("t", Payload::Json(Bytes::new()));
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert!(matches!(&back.payload, Payload::Json(b) if &b[..] == b"null"));
        let mut header = Vec::new();
        env.write_header(&mut header).unwrap();
        let e = Envelope::decode(&header).unwrap_err().to_string();
        assert!(e.contains("payload"), "{e}");
    }

    #[test]
    fn message_ids_are_v7_distinct_and_time_ordered() {
        let a = MessageId::generate();
        std::thread::sleep(Duration::from_millis(2));
        let b = MessageId::generate();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        let many: std::collections::HashSet<_> =
            (0..10_000).map(|_| MessageId::generate()).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [&b""[..], b"{}", b"[1,2]", b"\xff\xfe", b"{\"id\":\"x\"}"] {
            assert!(Envelope::decode(bad).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Envelope::decode(&bytes);
            #[cfg(feature = "redis")]
            let _ = Envelope::decode_header(&bytes);
        }
    }
}
