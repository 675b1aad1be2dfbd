//! W3C Trace Context (`traceparent` and `tracestate`), parsed strictly and propagated as is.
//!
//! The rules are those of the W3C Trace Context recommendation: lowercase hex only, the version
//! `ff` and all-zero ids are invalid, a later version may carry more fields after a `-`, and an
//! invalid `traceparent` means "start a new trace" rather than an error for the caller.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng;

/// The `traceparent` header name.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header name.
pub const TRACESTATE_HEADER: HeaderName = HeaderName::from_static("tracestate");

/// The most list members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A parsed `traceparent`: trace id, parent (span) id and flags.
///
/// # Example
/// ```
/// use arq_core::TraceParent;
///
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert!(tp.sampled());
/// assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
///
/// let child = tp.child();
/// assert_eq!(child.trace_id(), tp.trace_id());
/// assert_ne!(child.parent_id(), tp.parent_id());
///
/// assert!("00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>().is_err());
/// # Ok::<(), arq_core::ParseTraceContextError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

const FLAG_SAMPLED: u8 = 0x01;

impl TraceParent {
    /// Starts a new trace with random ids.
    pub fn new_root(sampled: bool) -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        // All-zero ids are invalid; the chance is 2^-128 / 2^-64, but loop rather than hope.
        while trace_id == [0; 16] {
            rng.fill_bytes(&mut trace_id);
        }
        while parent_id == [0; 8] {
            rng.fill_bytes(&mut parent_id);
        }
        Self {
            trace_id,
            parent_id,
            flags: if sampled { FLAG_SAMPLED } else { 0 },
        }
    }

    /// Builds a trace parent from raw parts, refusing all-zero ids.
    pub fn from_parts(
        trace_id: [u8; 16],
        parent_id: [u8; 8],
        flags: u8,
    ) -> Result<Self, ParseTraceContextError> {
        if trace_id == [0; 16] {
            return Err(ParseTraceContextError::new(
                "the trace id must not be all zeros",
            ));
        }
        if parent_id == [0; 8] {
            return Err(ParseTraceContextError::new(
                "the parent id must not be all zeros",
            ));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace with a fresh parent id: what a service sends on an outbound call.
    pub fn child(&self) -> Self {
        let mut parent_id = [0u8; 8];
        let mut rng = rand::rng();
        while parent_id == [0; 8] || parent_id == self.parent_id {
            rng.fill_bytes(&mut parent_id);
        }
        Self { parent_id, ..*self }
    }

    /// The 16-byte trace id.
    pub const fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The 8-byte parent (span) id.
    pub const fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags byte.
    pub const fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller sampled this trace.
    pub const fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits, as logs and trace back ends show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// The header value, always written as version `00`.
    pub fn to_header_value(&self) -> HeaderValue {
        // Lowercase hex and dashes are always a valid header value.
        HeaderValue::from_bytes(&self.encode()).unwrap_or(HeaderValue::from_static(""))
    }

    /// The 55 bytes of the version-00 header, written without the formatting machinery: this
    /// runs for every request a service or the gateway forwards.
    fn encode(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.parent_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.encode();
        // `encode` writes only ASCII hex digits and dashes.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for TraceParent {
    type Err = ParseTraceContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() < 55 {
            return Err(ParseTraceContextError::new(format!(
                "a traceparent is at least 55 characters (version-traceid-parentid-flags), this one has {}",
                b.len()
            )));
        }
        let version = parse_hex_byte(&b[0..2]).ok_or_else(|| {
            ParseTraceContextError::new("the version must be two lowercase hex digits")
        })?;
        if version == 0xff {
            return Err(ParseTraceContextError::new("version ff is invalid"));
        }
        if version == 0 && b.len() != 55 {
            return Err(ParseTraceContextError::new(
                "a version 00 traceparent is exactly 55 characters",
            ));
        }
        if version != 0 && b.len() > 55 && b[55] != b'-' {
            return Err(ParseTraceContextError::new(
                "fields after the flags must be separated by '-'",
            ));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(ParseTraceContextError::new(
                "fields must be separated by '-' at positions 2, 35 and 52",
            ));
        }
        let mut trace_id = [0u8; 16];
        decode_hex(&b[3..35], &mut trace_id).ok_or_else(|| {
            ParseTraceContextError::new("the trace id must be 32 lowercase hex digits")
        })?;
        let mut parent_id = [0u8; 8];
        decode_hex(&b[36..52], &mut parent_id).ok_or_else(|| {
            ParseTraceContextError::new("the parent id must be 16 lowercase hex digits")
        })?;
        let flags = parse_hex_byte(&b[53..55]).ok_or_else(|| {
            ParseTraceContextError::new("the flags must be two lowercase hex digits")
        })?;
        Self::from_parts(trace_id, parent_id, flags)
    }
}

/// A parsed `tracestate`: vendor entries in order, most recent first.
///
/// # Example
/// ```
/// use arq_core::TraceState;
///
/// let ts: TraceState = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE".parse()?;
/// assert_eq!(ts.get("congo"), Some("t61rcWkgMzE"));
/// let ts = ts.with_entry("arq", "s1")?;
/// assert_eq!(ts.to_string(), "arq=s1,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
/// # Ok::<(), arq_core::ParseTraceContextError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState {
    entries: Vec<(String, String)>,
}

impl TraceState {
    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The entries, most recent first.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds or moves `key` to the front with `value`, dropping the oldest entry beyond 32.
    pub fn with_entry(mut self, key: &str, value: &str) -> Result<Self, ParseTraceContextError> {
        validate_key(key)?;
        validate_value(value)?;
        self.entries.retain(|(k, _)| k != key);
        self.entries.insert(0, (key.to_owned(), value.to_owned()));
        self.entries.truncate(MAX_TRACESTATE_MEMBERS);
        Ok(self)
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl FromStr for TraceState {
    type Err = ParseTraceContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries: Vec<(String, String)> = Vec::new();
        for member in s.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, value) = member.split_once('=').ok_or_else(|| {
                ParseTraceContextError::new("each tracestate member must be key=value")
            })?;
            validate_key(key)?;
            validate_value(value)?;
            if entries.iter().any(|(k, _)| k == key) {
                return Err(ParseTraceContextError::new(format!(
                    "tracestate key {key:?} appears twice"
                )));
            }
            if entries.len() == MAX_TRACESTATE_MEMBERS {
                return Err(ParseTraceContextError::new(format!(
                    "a tracestate has at most {MAX_TRACESTATE_MEMBERS} members"
                )));
            }
            entries.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self { entries })
    }
}

fn validate_key(key: &str) -> Result<(), ParseTraceContextError> {
    let bad = || ParseTraceContextError::new(format!("{key:?} is not a valid tracestate key"));
    let is_key_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(&c);
    let b = key.as_bytes();
    match key.split_once('@') {
        None => {
            if b.is_empty() || b.len() > 256 || !b[0].is_ascii_lowercase() {
                return Err(bad());
            }
            if !b.iter().all(|&c| is_key_char(c)) {
                return Err(bad());
            }
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            if t.is_empty()
                || t.len() > 241
                || !(t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
            {
                return Err(bad());
            }
            if s.is_empty() || s.len() > 14 || !s[0].is_ascii_lowercase() {
                return Err(bad());
            }
            if !t.iter().chain(s).all(|&c| is_key_char(c)) {
                return Err(bad());
            }
        }
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), ParseTraceContextError> {
    let b = value.as_bytes();
    let is_nblk = |c: u8| (0x21..=0x7e).contains(&c) && c != b',' && c != b'=';
    let ok = !b.is_empty()
        && b.len() <= 256
        && b.iter().all(|&c| c == b' ' || is_nblk(c))
        && b.last().is_some_and(|&c| is_nblk(c));
    if ok {
        Ok(())
    } else {
        Err(ParseTraceContextError::new(format!(
            "{:?} is not a valid tracestate value",
            crate::text::quoted_excerpt(value, 64)
        )))
    }
}

/// The trace context of a request: its `traceparent` and, when present and valid, its `tracestate`.
///
/// # Example
/// ```
/// use arq_core::TraceContext;
/// use http::HeaderMap;
///
/// let mut incoming = HeaderMap::new();
/// incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?);
/// let ctx = TraceContext::extract(&incoming).expect("valid traceparent");
///
/// let mut outgoing = HeaderMap::new();
/// ctx.child().inject(&mut outgoing);
/// let sent = outgoing["traceparent"].to_str()?;
/// assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent`.
    pub parent: TraceParent,
    /// The `tracestate`, empty when absent or invalid.
    pub state: TraceState,
}

impl TraceContext {
    /// A new root context.
    pub fn new_root(sampled: bool) -> Self {
        Self {
            parent: TraceParent::new_root(sampled),
            state: TraceState::default(),
        }
    }

    /// Reads the context from request headers. `None` when there is no valid `traceparent`
    /// (the caller then starts a new trace); an invalid `tracestate` is dropped, as the
    /// recommendation allows, while the `traceparent` is kept.
    pub fn extract(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(&TRACEPARENT_HEADER).iter();
        let first = values.next()?;
        if values.next().is_some() {
            // Two traceparent headers are ambiguous: restart the trace.
            return None;
        }
        let parent: TraceParent = first.to_str().ok()?.parse().ok()?;
        // Several tracestate headers are one list, joined with commas.
        let mut joined = String::new();
        for v in headers.get_all(&TRACESTATE_HEADER) {
            let Ok(text) = v.to_str() else {
                joined.clear();
                break;
            };
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(text);
        }
        let state = joined.parse().unwrap_or_default();
        Some(Self { parent, state })
    }

    /// Writes the context into outbound headers, replacing any there.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT_HEADER, self.parent.to_header_value());
        if self.state.is_empty() {
            headers.remove(TRACESTATE_HEADER);
        } else if let Ok(v) = HeaderValue::from_str(&self.state.to_string()) {
            headers.insert(TRACESTATE_HEADER, v);
        }
    }

    /// The context for an outbound call: same trace, new parent id, same state.
    pub fn child(&self) -> Self {
        Self {
            parent: self.parent.child(),
            state: self.state.clone(),
        }
    }
}

/// Why a `traceparent` or `tracestate` value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid trace context: {reason}")]
pub struct ParseTraceContextError {
    reason: String,
}

impl ParseTraceContextError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    out.into_iter().map(char::from).collect()
}

/// Lowercase hex of `bytes` into `out`, which holds exactly two bytes per input byte.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0xf) as usize];
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

fn decode_hex(src: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, pair) in src.chunks_exact(2).enumerate() {
        out[i] = parse_hex_byte(pair)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_round_trips() {
        let tp: TraceParent = VALID.parse().unwrap();
        assert_eq!(tp.to_string(), VALID);
        assert_eq!(tp.to_header_value(), VALID);
        assert!(tp.sampled());
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            .parse()
            .unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn rejects_malformed_traceparents() {
        let cases = [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ];
        for bad in cases {
            assert!(bad.parse::<TraceParent>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn accepts_future_versions_with_extra_fields() {
        let tp: TraceParent =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
                .parse()
                .unwrap();
        // We always re-emit version 00 with the fields we understand.
        assert_eq!(tp.to_string(), VALID);
    }

    #[test]
    fn child_keeps_trace_and_flags() {
        let tp: TraceParent = VALID.parse().unwrap();
        let c = tp.child();
        assert_eq!(c.trace_id(), tp.trace_id());
        assert_eq!(c.flags(), tp.flags());
        assert_ne!(c.parent_id(), tp.parent_id());
        assert_ne!(c.parent_id(), [0; 8]);
    }

    #[test]
    fn roots_are_valid_and_distinct() {
        let a = TraceParent::new_root(true);
        let b = TraceParent::new_root(false);
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.sampled() && !b.sampled());
        assert_eq!(a.to_string().parse::<TraceParent>().unwrap(), a);
    }

    #[test]
    fn tracestate_parsing() {
        let ts: TraceState = " rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE,tenant@vendor=x y"
            .parse()
            .unwrap();
        assert_eq!(ts.entries().count(), 3);
        assert_eq!(ts.get("tenant@vendor"), Some("x y"));
        for bad in [
            "noequals",
            "Upper=1",
            "a=1,a=2",
            "a=",
            "a=tab\tinside",
            "a=x=y",
            "@vendor=1",
            "t@toolongsystemid1=1",
        ] {
            assert!(bad.parse::<TraceState>().is_err(), "accepted {bad:?}");
        }
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(many.parse::<TraceState>().is_err());
    }

    #[test]
    fn tracestate_with_entry_moves_to_front_and_caps() {
        let many = (0..32)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let ts: TraceState = many.parse().unwrap();
        let ts = ts.with_entry("k5", "new").unwrap();
        assert_eq!(ts.entries().next(), Some(("k5", "new")));
        assert_eq!(ts.entries().count(), 32);
        let ts = ts.with_entry("fresh", "1").unwrap();
        assert_eq!(ts.entries().count(), 32);
        assert!(ts.get("k31").is_none());
        assert!(TraceState::default().with_entry("BAD", "1").is_err());
    }

    #[test]
    fn extract_and_inject() {
        let mut h = HeaderMap::new();
        assert!(TraceContext::extract(&h).is_none());
        h.insert(TRACEPARENT_HEADER, VALID.parse().unwrap());
        h.append(TRACESTATE_HEADER, "a=1".parse().unwrap());
        h.append(TRACESTATE_HEADER, "b=2".parse().unwrap());
        let ctx = TraceContext::extract(&h).unwrap();
        assert_eq!(ctx.state.to_string(), "a=1,b=2");

        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        assert_eq!(out[TRACEPARENT_HEADER], VALID);
        assert_eq!(out[TRACESTATE_HEADER], "a=1,b=2");
    }

    #[test]
    fn invalid_tracestate_is_dropped_but_traceparent_kept() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT_HEADER, VALID.parse().unwrap());
        h.insert(TRACESTATE_HEADER, "a=1,a=2".parse().unwrap());
        let ctx = TraceContext::extract(&h).unwrap();
        assert!(ctx.state.is_empty());
    }

    #[test]
    fn invalid_or_duplicate_traceparent_restarts() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT_HEADER, "garbage".parse().unwrap());
        assert!(TraceContext::extract(&h).is_none());
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT_HEADER, VALID.parse().unwrap());
        h.append(TRACEPARENT_HEADER, VALID.parse().unwrap());
        assert!(TraceContext::extract(&h).is_none());
    }

    proptest::proptest! {
        #[test]
        fn traceparent_parser_never_panics(s in ".{0,80}") {
            let _ = s.parse::<TraceParent>();
        }

        #[test]
        fn tracestate_parser_never_panics(s in ".{0,300}") {
            let _ = s.parse::<TraceState>();
        }
    }
}
