//! CORS: an allowlist of exact origins and wildcard-subdomain patterns, validated when loaded,
//! served by tower-http's `CorsLayer`.

use std::fmt;

use http::{HeaderValue, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsConfig;

/// One allowed origin: `https://app.arq.dev`, or `https://*.arq.dev` for any subdomain (at any
/// depth) of `arq.dev`, but not `arq.dev` itself. A port may follow the host.
///
/// Parsing is strict, so a typo is a configuration error at start-up instead of a silently
/// open or closed door: the scheme must be `http` or `https`; no path, query, user info or
/// trailing slash; `*` only as the whole first label, followed by at least two labels
/// (`https://*.dev` is refused as too broad).
///
/// # Example
/// ```
/// use arq_core::edge::OriginPattern;
///
/// let p = OriginPattern::parse("https://*.arq.dev")?;
/// assert!(p.matches("https://eu.app.arq.dev"));
/// assert!(!p.matches("https://arq.dev"));
/// assert!(!p.matches("https://evil-arq.dev"));
/// assert!(!p.matches("http://app.arq.dev"));
/// assert!(OriginPattern::parse("https://app.arq.dev/").is_err());
/// # Ok::<(), arq_core::edge::InvalidOriginPattern>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: &'static str,
    /// The host, or for a wildcard the suffix after `*` (starting with '.').
    host: String,
    wildcard: bool,
    /// `:port` or empty.
    port: String,
}

/// Why a CORS origin pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CORS origin {pattern:?}: {reason}")]
pub struct InvalidOriginPattern {
    pattern: String,
    reason: &'static str,
}

impl OriginPattern {
    /// Parses and validates a pattern.
    pub fn parse(pattern: &str) -> Result<Self, InvalidOriginPattern> {
        let err = |reason| InvalidOriginPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        let (scheme, rest) = if let Some(r) = pattern.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = pattern.strip_prefix("http://") {
            ("http", r)
        } else {
            return Err(err(
                "an origin starts with https:// or http:// (\"*\" alone is not allowed: list origins)",
            ));
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err(
                "an origin is scheme://host[:port] with no path, query, user info or trailing slash",
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let n: u16 = p.parse().map_err(|_| err("the port must be 1 to 65535"))?;
                if n == 0 {
                    return Err(err("the port must be 1 to 65535"));
                }
                (h, format!(":{n}"))
            }
            None => (rest, String::new()),
        };
        let host = host.to_ascii_lowercase();
        let (wildcard, suffix) = match host.strip_prefix("*.") {
            Some(s) => (true, s),
            None => (false, host.as_str()),
        };
        if suffix.is_empty() {
            return Err(err("the host is missing"));
        }
        if suffix.contains('*') {
            return Err(err(
                "'*' may only be the whole first label, as in https://*.example.com",
            ));
        }
        let labels: Vec<&str> = suffix.split('.').collect();
        if !labels.iter().all(|l| valid_label(l)) {
            return Err(err(
                "host labels are letters, digits and '-', not starting or ending with '-'",
            ));
        }
        if wildcard && labels.len() < 2 {
            return Err(err(
                "a wildcard needs at least two labels after it (https://*.example.com, not https://*.com)",
            ));
        }
        Ok(Self {
            scheme,
            host: if wildcard {
                format!(".{suffix}")
            } else {
                suffix.to_owned()
            },
            wildcard,
            port,
        })
    }

    /// Whether a request's `Origin` matches.
    pub fn matches(&self, origin: &str) -> bool {
        let Some(rest) = origin
            .strip_prefix(self.scheme)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false;
        };
        let Some(host) = rest.strip_suffix(self.port.as_str()) else {
            return false;
        };
        if host.contains(':') {
            return false;
        }
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.host);
        }
        let (h, s) = (host.as_bytes(), self.host.as_bytes());
        if h.len() <= s.len() || !h[h.len() - s.len()..].eq_ignore_ascii_case(s) {
            return false;
        }
        let sub = &host[..host.len() - s.len()];
        sub.split('.').all(valid_label)
    }
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "{}://*{}{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}{}", self.scheme, self.host, self.port)
        }
    }
}

/// Builds tower-http's CORS layer from validated configuration (no origin allowed when the
/// list is empty). Never panics: the combinations tower-http refuses (credentials with `*`) cannot be
/// expressed by a validated [`CorsConfig`].
pub(crate) fn layer(config: &CorsConfig) -> CorsLayer {
    let patterns = config.allowed_origins.clone();
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, _: &Parts| {
        origin
            .to_str()
            .is_ok_and(|o| patterns.iter().any(|p| p.matches(o)))
    });
    CorsLayer::new()
        .allow_origin(allow)
        .allow_credentials(config.allow_credentials)
        .allow_methods(config.allowed_methods.clone())
        .allow_headers(config.allowed_headers.clone())
        .expose_headers([
            crate::REQUEST_ID_HEADER,
            http::header::RETRY_AFTER,
            http::HeaderName::from_static("ratelimit-limit"),
            http::HeaderName::from_static("ratelimit-remaining"),
            http::HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(config.max_age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let exact = OriginPattern::parse("https://App.arq.dev").unwrap();
        assert!(exact.matches("https://app.arq.dev"));
        assert!(!exact.matches("https://app.arq.dev:8443"));
        assert!(!exact.matches("https://app.arq.dev.evil.com"));
        let w = OriginPattern::parse("https://*.arq.dev:8443").unwrap();
        assert!(w.matches("https://a.arq.dev:8443"));
        assert!(!w.matches("https://a.arq.dev"));
        assert!(!w.matches("https://.arq.dev:8443"));
        assert!(!w.matches("https://a..arq.dev:8443"));
        assert!(!w.matches("https://a b.arq.dev:8443"));
        assert_eq!(w.to_string(), "https://*.arq.dev:8443");
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in [
            "*",
            "arq.dev",
            "ftp://arq.dev",
            "https://",
            "https://*.dev",
            "https://a.*.dev",
            "https://*",
            "https://arq.dev/",
            "https://arq.dev/path",
            "https://user@arq.dev",
            "https://arq.dev:0",
            "https://arq.dev:99999",
            "https://-bad.dev",
            "https://*arq.dev",
            "null",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_and_match_never_panic(p in ".{0,40}", o in ".{0,40}") {
            if let Ok(pat) = OriginPattern::parse(&p) {
                let _ = pat.matches(&o);
            }
        }
    }
}
