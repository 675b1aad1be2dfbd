//! Failure classification: which outcomes the circuit breaker counts as failures, and which
//! the retry layer may retry.

use std::time::{Duration, SystemTime};

/// How the circuit breaker counts one completed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The dependency worked (a 4xx answer is the caller's fault, so it is a success here).
    Success,
    /// The dependency failed: counts towards opening the circuit.
    Failure,
    /// Neither: not recorded at all (a half-open probe slot is released).
    Ignored,
}

/// Whether the retry layer may try a call again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Do not retry: success, or a failure that will not go away by trying again.
    Never,
    /// Retry after the policy's backoff.
    Retry,
    /// Retry after the given delay (from `Retry-After`), clamped by the policy.
    After(Duration),
}

/// Classifies a call's result for the breaker and the retry layer.
///
/// `result` is the dependency's own result: the middleware classify their own errors (an
/// open circuit or full bulkhead is never retried, a timeout is a retryable failure) before
/// asking the classifier.
///
/// # Example
/// ```
/// use arq_core::resilience::{Classify, Outcome, RetryDecision};
///
/// /// `NotFound` is an answer, not a failure; everything else is a retryable failure.
/// #[derive(Clone)]
/// struct Lookup;
/// #[derive(Debug)]
/// enum DbError { NotFound, Io }
///
/// impl<T> Classify<T, DbError> for Lookup {
///     fn outcome(&self, result: Result<&T, &DbError>) -> Outcome {
///         match result {
///             Ok(_) | Err(DbError::NotFound) => Outcome::Success,
///             Err(DbError::Io) => Outcome::Failure,
///         }
///     }
///     fn retry(&self, result: Result<&T, &DbError>) -> RetryDecision {
///         match result {
///             Err(DbError::Io) => RetryDecision::Retry,
///             _ => RetryDecision::Never,
///         }
///     }
/// }
/// assert_eq!(Classify::<(), _>::outcome(&Lookup, Err(&DbError::NotFound)), Outcome::Success);
/// ```
pub trait Classify<T, E> {
    /// How the breaker counts this result.
    fn outcome(&self, result: Result<&T, &E>) -> Outcome;
    /// Whether the retry layer may try again.
    fn retry(&self, result: Result<&T, &E>) -> RetryDecision;
}

/// The default classifier: every `Ok` is a success, every `Err` a retryable failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyError;

impl<T, E> Classify<T, E> for AnyError {
    #[inline]
    fn outcome(&self, result: Result<&T, &E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    #[inline]
    fn retry(&self, result: Result<&T, &E>) -> RetryDecision {
        if result.is_ok() {
            RetryDecision::Never
        } else {
            RetryDecision::Retry
        }
    }
}

/// The HTTP classifier for outbound calls returning `http::Response`.
///
/// - transport errors (connect errors, resets, client-side timeouts) and 5xx are failures and
///   retryable;
/// - 4xx are not failures (the request was wrong, not the dependency) and are not retried,
///   except 429 (retried, after its `Retry-After` when given);
/// - 503 with `Retry-After` is retried after that delay; 501 and 505 are failures that are
///   never retried (trying again cannot help).
///
/// Whether a *request* may be retried at all (idempotent method, cloneable body) is decided
/// by [`RetryRequest`](super::RetryRequest), not here.
///
/// # Example
/// ```
/// use arq_core::resilience::{Classify, HttpClassifier, Outcome, RetryDecision};
/// use std::time::Duration;
///
/// let busy = http::Response::builder().status(503).header("retry-after", "7").body(()).unwrap();
/// let c = HttpClassifier;
/// assert_eq!(Classify::<_, std::io::Error>::outcome(&c, Ok(&busy)), Outcome::Failure);
/// assert_eq!(
///     Classify::<_, std::io::Error>::retry(&c, Ok(&busy)),
///     RetryDecision::After(Duration::from_secs(7))
/// );
/// let missing = http::Response::builder().status(404).body(()).unwrap();
/// assert_eq!(Classify::<_, std::io::Error>::outcome(&c, Ok(&missing)), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<B, E> Classify<http::Response<B>, E> for HttpClassifier {
    fn outcome(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(resp) if resp.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
        }
    }

    fn retry(&self, result: Result<&http::Response<B>, &E>) -> RetryDecision {
        let Ok(resp) = result else {
            return RetryDecision::Retry;
        };
        let status = resp.status();
        match status.as_u16() {
            429 | 503 => match retry_after(resp.headers(), SystemTime::now()) {
                Some(d) => RetryDecision::After(d),
                None => RetryDecision::Retry,
            },
            501 | 505 => RetryDecision::Never,
            _ if status.is_server_error() => RetryDecision::Retry,
            _ => RetryDecision::Never,
        }
    }
}

/// Parses a `Retry-After` header: delta-seconds or an HTTP-date (relative to `now`).
///
/// Returns `None` when absent or unparsable; a date in the past gives zero.
///
/// # Example
/// ```
/// use arq_core::resilience::retry_after;
/// use std::time::{Duration, SystemTime};
///
/// let mut h = http::HeaderMap::new();
/// h.insert("retry-after", "120".parse().unwrap());
/// assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(120)));
/// h.insert("retry-after", "soon".parse().unwrap());
/// assert_eq!(retry_after(&h, SystemTime::now()), None);
/// ```
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_retry_after_is_relative_to_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, past.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
    }

    #[test]
    fn http_classification() {
        let c = HttpClassifier;
        let r = |s: u16| http::Response::builder().status(s).body(()).unwrap();
        let out = |s| Classify::<_, ()>::outcome(&c, Ok(&r(s)));
        let retry = |s| Classify::<_, ()>::retry(&c, Ok(&r(s)));
        assert_eq!(out(500), Outcome::Failure);
        assert_eq!(out(502), Outcome::Failure);
        assert_eq!(out(400), Outcome::Success);
        assert_eq!(out(429), Outcome::Success);
        assert_eq!(retry(500), RetryDecision::Retry);
        assert_eq!(retry(501), RetryDecision::Never);
        assert_eq!(retry(404), RetryDecision::Never);
        assert_eq!(retry(429), RetryDecision::Retry);
        assert_eq!(
            Classify::<http::Response<()>, ()>::outcome(&c, Err(&())),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<http::Response<()>, ()>::retry(&c, Err(&())),
            RetryDecision::Retry
        );
    }
}
