//! Runtime values of the dynamic evaluation path, and the error an evaluation can end with.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;

/// Smallest timestamp CEL allows (0001-01-01T00:00:00Z), in seconds since the Unix epoch.
pub(crate) const MIN_TS_SECS: i64 = -62_135_596_800;
/// Largest timestamp CEL allows (9999-12-31T23:59:59Z), in seconds since the Unix epoch.
pub(crate) const MAX_TS_SECS: i64 = 253_402_300_799;
/// Largest duration magnitude CEL allows (10,000 years), in seconds.
pub(crate) const MAX_DUR_SECS: i64 = 315_576_000_000;
pub(crate) const NANOS: i128 = 1_000_000_000;
/// 2^63 as a double: the first double past `i64::MAX`.
pub(crate) const TWO_63: f64 = 9_223_372_036_854_775_808_u64 as f64;
/// 2^64 as a double: the first double past `u64::MAX`.
pub(crate) const TWO_64: f64 = 18_446_744_073_709_551_615_u64 as f64;

/// A CEL value on the dynamic path.
///
/// Strings, bytes, lists and maps are reference counted, so cloning a value never copies its
/// contents.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Value {
    /// `null`.
    #[default]
    Null,
    /// `bool`.
    Bool(bool),
    /// `int` (64-bit signed).
    Int(i64),
    /// `uint` (64-bit unsigned).
    Uint(u64),
    /// `double`.
    Double(f64),
    /// `string`.
    String(Arc<str>),
    /// `bytes`.
    Bytes(Arc<[u8]>),
    /// `list(dyn)`.
    List(Arc<Vec<Value>>),
    /// `map(dyn, dyn)`; keys are bool, int, uint or string.
    Map(Arc<MapValue>),
    /// `google.protobuf.Timestamp`, as nanoseconds since the Unix epoch (UTC).
    Timestamp(i128),
    /// `google.protobuf.Duration`, as nanoseconds.
    Duration(i128),
    /// A type value such as `int` or `list`.
    Type(Arc<str>),
    /// `optional_type`: `optional.of(v)` or `optional.none()`.
    Optional(Option<Arc<Value>>),
    /// `net.IP` (network extension).
    Ip(std::net::IpAddr),
    /// `net.CIDR`: an address and a prefix length (network extension).
    Cidr(std::net::IpAddr, u8),
}

/// A map key: CEL allows bool, int, uint and string keys.
///
/// Integer keys are stored in one space: an `int` key and a `uint` key with the same numeric
/// value are different keys in the source but look each other up (heterogeneous equality).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Key {
    /// A bool key.
    Bool(bool),
    /// An int key.
    Int(i64),
    /// A uint key.
    Uint(u64),
    /// A string key.
    String(Arc<str>),
}

impl Key {
    /// The key as a value.
    pub fn to_value(&self) -> Value {
        match self {
            Key::Bool(b) => Value::Bool(*b),
            Key::Int(i) => Value::Int(*i),
            Key::Uint(u) => Value::Uint(*u),
            Key::String(s) => Value::String(s.clone()),
        }
    }
    /// The key for a value, if the value can be a key.
    pub fn from_value(v: &Value) -> Option<Key> {
        Some(match v {
            Value::Bool(b) => Key::Bool(*b),
            Value::Int(i) => Key::Int(*i),
            Value::Uint(u) => Key::Uint(*u),
            Value::String(s) => Key::String(s.clone()),
            _ => return None,
        })
    }
}

/// The entries of a CEL map, in insertion order.
#[derive(Clone, Debug, Default)]
pub struct MapValue {
    entries: IndexMap<Key, Value>,
}

impl MapValue {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
    /// Inserts an entry; returns false if the key was already present (the map is unchanged).
    pub fn insert(&mut self, key: Key, value: Value) -> bool {
        if self.get(&key.to_value()).is_some() {
            return false;
        }
        self.entries.insert(key, value);
        true
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Iterates over the entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.entries.iter()
    }
    /// Looks up a value by key with CEL's numeric key equivalence (`1`, `1u` and `1.0` find the
    /// same entry).
    pub fn get(&self, key: &Value) -> Option<&Value> {
        match key {
            Value::Bool(b) => self.entries.get(&Key::Bool(*b)),
            Value::String(s) => self.entries.get(&Key::String(s.clone())),
            Value::Int(i) => self.entries.get(&Key::Int(*i)).or_else(|| {
                u64::try_from(*i)
                    .ok()
                    .and_then(|u| self.entries.get(&Key::Uint(u)))
            }),
            Value::Uint(u) => self.entries.get(&Key::Uint(*u)).or_else(|| {
                i64::try_from(*u)
                    .ok()
                    .and_then(|i| self.entries.get(&Key::Int(i)))
            }),
            Value::Double(d) => {
                if d.fract() != 0.0 || !d.is_finite() {
                    return None;
                }
                if *d >= -TWO_63 && *d < TWO_63 {
                    #[allow(clippy::cast_possible_truncation)]
                    let i = *d as i64;
                    if let Some(v) = self.get(&Value::Int(i)) {
                        return Some(v);
                    }
                }
                if *d >= 0.0 && *d < TWO_64 {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let u = *d as u64;
                    return self.get(&Value::Uint(u));
                }
                None
            }
            _ => None,
        }
    }
    /// Looks up a string key without allocating.
    pub fn get_str(&self, key: &str) -> Option<&Value> {
        // IndexMap needs an owned `Key` to hash; strings are compared by scanning when the map is
        // small, which is the common case for attribute maps.
        if self.entries.len() <= 8 {
            return self.entries.iter().find_map(|(k, v)| match k {
                Key::String(s) if &**s == key => Some(v),
                _ => None,
            });
        }
        self.entries.get(&Key::String(Arc::from(key)))
    }
}

/// Why an evaluation failed. Any evaluation error denies a policy decision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    message: Cow<'static, str>,
}

impl EvalError {
    /// An error with a message.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn no_overload() -> Self {
        Self::new("no such overload")
    }
    pub(crate) fn overflow() -> Self {
        Self::new("return error for overflow")
    }
}

/// Result of an evaluation step.
pub type EvalResult = Result<Value, EvalError>;

impl Value {
    /// A string value.
    pub fn string(s: impl Into<Arc<str>>) -> Self {
        Value::String(s.into())
    }
    /// A list value.
    pub fn list(v: Vec<Value>) -> Self {
        Value::List(Arc::new(v))
    }
    /// The CEL type name of this value (`int`, `list`, `google.protobuf.Timestamp`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null_type",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Timestamp(_) => "google.protobuf.Timestamp",
            Value::Duration(_) => "google.protobuf.Duration",
            Value::Type(_) => "type",
            Value::Optional(_) => "optional_type",
            Value::Ip(_) => "net.IP",
            Value::Cidr(..) => "net.CIDR",
        }
    }

    /// CEL equality (`==`): heterogeneous numeric equality, structural for lists and maps, and
    /// `false` (not an error) for values of different types.
    pub fn cel_eq(&self, other: &Value) -> bool {
        use Value as V;
        match (self, other) {
            (V::Null, V::Null) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::String(a), V::String(b)) | (V::Type(a), V::Type(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) | (V::Duration(a), V::Duration(b)) => a == b,
            (V::Ip(a), V::Ip(b)) => a.to_canonical() == b.to_canonical(),
            (V::Cidr(a, n), V::Cidr(b, m)) => a.to_canonical() == b.to_canonical() && n == m,
            (V::List(a), V::List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.cel_eq(y))
            }
            (V::Map(a), V::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| b.get(&k.to_value()).is_some_and(|w| v.cel_eq(w)))
            }
            (V::Optional(a), V::Optional(b)) => match (a, b) {
                (None, None) => true,
                (Some(x), Some(y)) => x.cel_eq(y),
                _ => false,
            },
            _ => match num_cmp(self, other) {
                Some(o) => o == Ordering::Equal,
                None => false,
            },
        }
    }

    /// CEL ordering (`<`, `<=`, …); `None` when the values do not compare (different types, NaN).
    pub fn cel_cmp(&self, other: &Value) -> Option<Ordering> {
        use Value as V;
        match (self, other) {
            (V::Bool(a), V::Bool(b)) => Some(a.cmp(b)),
            (V::String(a), V::String(b)) => Some(a.cmp(b)),
            (V::Bytes(a), V::Bytes(b)) => Some(a.cmp(b)),
            (V::Timestamp(a), V::Timestamp(b)) | (V::Duration(a), V::Duration(b)) => Some(a.cmp(b)),
            _ => num_cmp(self, other),
        }
    }
}

/// Compares two numbers of possibly different numeric types exactly (no lossy conversion).
pub(crate) fn num_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    use Value as V;
    match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Uint(x), V::Uint(y)) => Some(x.cmp(y)),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Int(x), V::Uint(y)) => Some(if *x < 0 {
            Ordering::Less
        } else {
            u64::try_from(*x).map_or(Ordering::Less, |x| x.cmp(y))
        }),
        (V::Int(x), V::Double(y)) => cmp_i64_f64(*x, *y),
        (V::Uint(x), V::Double(y)) => cmp_u64_f64(*x, *y),
        (V::Uint(_) | V::Double(_), V::Int(_)) | (V::Double(_), V::Uint(_)) => {
            num_cmp(b, a).map(Ordering::reverse)
        }
        _ => None,
    }
}

#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn cmp_i64_f64(x: i64, y: f64) -> Option<Ordering> {
    // CEL compares int and double as doubles (cel-go semantics, which the suite pins).
    (x as f64).partial_cmp(&y)
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn cmp_u64_f64(x: u64, y: f64) -> Option<Ordering> {
    (x as f64).partial_cmp(&y)
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Uint(u) => write!(f, "{u}u"),
            Value::Double(d) => write!(f, "{d}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "b{:?}", String::from_utf8_lossy(b)),
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {v}", k.to_value())?;
                }
                f.write_str("}")
            }
            Value::Timestamp(n) => write!(f, "timestamp({n}ns)"),
            Value::Duration(n) => write!(f, "duration({n}ns)"),
            Value::Type(t) => f.write_str(t),
            Value::Optional(None) => f.write_str("optional.none()"),
            Value::Optional(Some(v)) => write!(f, "optional.of({v})"),
            Value::Ip(a) => write!(f, "ip({a})"),
            Value::Cidr(a, n) => write!(f, "cidr({a}/{n})"),
        }
    }
}
