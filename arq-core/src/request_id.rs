//! The request id: accepted from the caller or generated, echoed back, logged, and carried into
//! problem responses and outbound calls.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use http::HeaderValue;

/// The header that carries a [`RequestId`].
pub const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The longest request id accepted from a caller, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// An opaque request identifier: 1 to 128 visible ASCII characters.
///
/// Ids from callers are validated (a bad one is replaced, never echoed back); generated ids are
/// time-ordered UUIDs. Cloning is a reference-count bump, so it is cheap to put in extensions,
/// spans and responses.
///
/// # Example
/// ```
/// use arq_core::RequestId;
///
/// let id: RequestId = "req-42".parse()?;
/// assert_eq!(id.as_str(), "req-42");
/// assert!("bad id with spaces".parse::<RequestId>().is_err());
///
/// let fresh = RequestId::generate();
/// assert_eq!(fresh.as_str().len(), 36);
/// # Ok::<(), arq_core::ParseRequestIdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh id: a UUID v7 in hyphenated form, so ids sort by creation time.
    pub fn generate() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        // A hyphenated UUID is always a valid header value; fall back to a static id rather than
        // panic if that ever stopped being true.
        Self(HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("unknown")))
    }

    /// Wraps a header value the caller built from visible ASCII only (the edge stack's own
    /// generated ids), skipping the validation [`RequestId::from_header_value`] does.
    pub(crate) fn from_generated(value: HeaderValue) -> Self {
        debug_assert!(validate(value.as_bytes()).is_ok());
        Self(value)
    }

    /// Validates a header value received from a caller.
    pub fn from_header_value(value: &HeaderValue) -> Result<Self, ParseRequestIdError> {
        validate(value.as_bytes())?;
        Ok(Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Validation admits only visible ASCII, so this never fails.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value, ready to echo or forward.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// Runs `fut` with `self` as the current request id of the task (see [`RequestId::current`]).
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// The request id of the request the current task is serving, if the edge stack set one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

fn validate(bytes: &[u8]) -> Result<(), ParseRequestIdError> {
    if bytes.is_empty() {
        return Err(ParseRequestIdError::new("a request id must not be empty"));
    }
    if bytes.len() > MAX_REQUEST_ID_LEN {
        return Err(ParseRequestIdError::new(format!(
            "a request id must be at most {MAX_REQUEST_ID_LEN} bytes long, this one has {}",
            bytes.len()
        )));
    }
    if let Some(pos) = bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(ParseRequestIdError::new(format!(
            "a request id may contain only visible ASCII characters; byte {pos} is not one"
        )));
    }
    Ok(())
}

impl FromStr for RequestId {
    type Err = ParseRequestIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate(s.as_bytes())?;
        HeaderValue::from_str(s)
            .map(Self)
            .map_err(|_| ParseRequestIdError::new("not a valid header value"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a value is not a [`RequestId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request id: {reason}")]
pub struct ParseRequestIdError {
    reason: String,
}

impl ParseRequestIdError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reasonable_ids() {
        for ok in [
            "a",
            "req-42",
            "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60",
            &"x".repeat(128),
        ] {
            assert_eq!(ok.parse::<RequestId>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_ids_with_reasons() {
        assert!(
            "".parse::<RequestId>()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            "x".repeat(129)
                .parse::<RequestId>()
                .unwrap_err()
                .to_string()
                .contains("at most 128")
        );
        for bad in ["has space", "tab\there", "new\nline", "ünïcode"] {
            let err = bad.parse::<RequestId>().unwrap_err();
            assert!(err.to_string().contains("visible ASCII"), "{bad:?}: {err}");
        }
        let obs = HeaderValue::from_bytes(b"ok\xffbad").unwrap();
        assert!(RequestId::from_header_value(&obs).is_err());
    }

    #[test]
    fn generated_ids_are_unique_and_valid() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().parse::<RequestId>().is_ok());
    }

    #[tokio::test]
    async fn current_is_visible_inside_scope_only() {
        assert!(RequestId::current().is_none());
        let id: RequestId = "scoped".parse().unwrap();
        let seen = id.clone().scope(async { RequestId::current() }).await;
        assert_eq!(seen, Some(id));
        assert!(RequestId::current().is_none());
    }
}
