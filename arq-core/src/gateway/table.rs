//! The routing table: validated prefixes and upstreams, built once at start-up.
//!
//! Matching is by path prefix on segment boundaries (`/users` matches `/users` and
//! `/users/7`, never `/usersx`); each route is registered with axum's router as `PREFIX` and
//! `PREFIX/{*rest}`, so the edge stack labels its metrics by route. Because two services behind one
//! prefix would silently shadow each other, a route whose prefix equals or contains another
//! route's prefix is a start-up error naming both; the platform manifest applies the same rule
//! to services.

use http::Uri;

use super::GatewayError;
use super::config::GatewayConfig;

/// A validated route.
#[derive(Debug, Clone)]
pub(crate) struct RouteEntry {
    pub(crate) name: String,
    /// The full prefix, gateway prefix included (`/api/v1/users`).
    pub(crate) full_prefix: String,
    /// The gateway prefix's length: what is cut from the path before forwarding.
    pub(crate) strip: usize,
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    /// The upstream URL's own path, without a trailing `/` (often empty).
    pub(crate) base_path: String,
    pub(crate) upstream: String,
    pub(crate) http2: bool,
    /// The `Host` header sent upstream when the route surely speaks HTTP/1.1 (`http://`
    /// without `http2`), made once here: the value hyper-util's client would otherwise format
    /// per request (the host, and the port unless it is the scheme's default). `None` leaves it
    /// to the client, which sends `:authority` instead when the upstream speaks HTTP/2.
    pub(crate) host_header: Option<http::HeaderValue>,
}

/// Checks a path prefix: a leading `/`, no trailing `/`, no empty, `.`/`..` or wildcard
/// segments.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || prefix.ends_with('/') {
        return Err("must start with '/' and not end with it, e.g. \"/users\"".to_owned());
    }
    for seg in prefix[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("has an empty, '.' or '..' segment ({seg:?})"));
        }
        if seg.contains(['{', '}', '*', '?', '#', '%']) || !seg.is_ascii() {
            return Err(format!(
                "segment {seg:?} holds a character a prefix cannot ({{ }} * ? # % or non-ASCII)"
            ));
        }
    }
    Ok(())
}

/// Whether `inner` equals `outer` or lies below it on a segment boundary.
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Validates `config` into routes and full public prefixes.
pub(crate) fn build(
    config: &GatewayConfig,
) -> Result<(Vec<RouteEntry>, Vec<String>), GatewayError> {
    let gw = config.prefix.as_str();
    if !gw.is_empty() {
        check_prefix(gw).map_err(|reason| GatewayError::InvalidPrefix {
            route: "gateway".to_owned(),
            prefix: gw.to_owned(),
            reason,
        })?;
    }
    let mut routes = Vec::with_capacity(config.routes.len());
    for (name, r) in &config.routes {
        check_prefix(&r.prefix).map_err(|reason| GatewayError::InvalidPrefix {
            route: name.clone(),
            prefix: r.prefix.clone(),
            reason,
        })?;
        let bad = |reason: String| GatewayError::InvalidUpstream {
            route: name.clone(),
            upstream: r.upstream.clone(),
            reason,
        };
        let uri: Uri = r.upstream.parse().map_err(|e| bad(format!("{e}")))?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
            .cloned()
            .ok_or_else(|| bad("needs an http:// or https:// scheme".to_owned()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("needs a host".to_owned()))?;
        if uri.query().is_some() {
            return Err(bad("cannot carry a query".to_owned()));
        }
        let host_header = (scheme == http::uri::Scheme::HTTP && !r.http2)
            .then(|| match authority.port_u16() {
                Some(80) | None => http::HeaderValue::from_str(authority.host()),
                Some(port) => http::HeaderValue::from_str(&format!("{}:{port}", authority.host())),
            })
            .transpose()
            .map_err(|e| bad(format!("its host is not a valid Host header: {e}")))?;
        routes.push(RouteEntry {
            name: name.clone(),
            full_prefix: format!("{gw}{}", r.prefix),
            strip: gw.len(),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            upstream: r.upstream.clone(),
            http2: r.http2,
            host_header,
        });
    }
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[i + 1..] {
            let (pa, pb) = (&a.full_prefix[a.strip..], &b.full_prefix[b.strip..]);
            if under(pa, pb) || under(pb, pa) {
                return Err(GatewayError::Overlap {
                    first: a.name.clone(),
                    first_prefix: pa.to_owned(),
                    second: b.name.clone(),
                    second_prefix: pb.to_owned(),
                });
            }
        }
    }
    let mut public = Vec::with_capacity(config.public.len());
    for p in &config.public {
        check_prefix(p).map_err(|reason| GatewayError::InvalidPrefix {
            route: "public".to_owned(),
            prefix: p.clone(),
            reason,
        })?;
        let full = format!("{gw}{p}");
        if !routes.iter().any(|r| under(&full, &r.full_prefix)) {
            return Err(GatewayError::PublicWithoutRoute { path: p.clone() });
        }
        public.push(full);
    }
    Ok((routes, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::RouteConfig;

    fn cfg(routes: &[(&str, &str)]) -> GatewayConfig {
        routes
            .iter()
            .fold(GatewayConfig::new("/api/v1"), |c, (n, p)| {
                c.route(*n, RouteConfig::new(*p, "http://127.0.0.1:1"))
            })
    }

    #[test]
    fn duplicates_and_nesting_name_both_routes() {
        for (a, b) in [("/users", "/users"), ("/users", "/users/admin")] {
            let err = build(&cfg(&[("one", a), ("two", b)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`one`") && err.contains("`two`"), "{err}");
            assert!(err.contains(a) && err.contains(b), "{err}");
        }
        // A shared leading string is not a shared segment.
        assert!(build(&cfg(&[("one", "/user"), ("two", "/users")])).is_ok());
    }

    #[test]
    fn bad_prefixes_upstreams_and_public_paths_are_refused() {
        for p in ["users", "/users/", "/a//b", "/a/../b", "/{id}", "/a*"] {
            assert!(build(&cfg(&[("x", p)])).is_err(), "{p}");
        }
        for u in ["ftp://h", "/relative", "http://h/?q=1"] {
            let c = GatewayConfig::new("").route("x", RouteConfig::new("/x", u));
            assert!(build(&c).is_err(), "{u}");
        }
        let c = cfg(&[("users", "/users")]).public("/auth/login");
        assert!(matches!(
            build(&c),
            Err(GatewayError::PublicWithoutRoute { .. })
        ));
        let (_, public) = build(&cfg(&[("users", "/users")]).public("/users/signup")).unwrap();
        assert_eq!(public, ["/api/v1/users/signup"]);
    }

    #[test]
    fn the_host_header_is_the_one_the_client_would_send() {
        let host = |upstream: &str, http2: bool| {
            let c =
                GatewayConfig::new("").route("x", RouteConfig::new("/x", upstream).http2(http2));
            build(&c).unwrap().0[0].host_header.clone()
        };
        assert_eq!(host("http://users:3002/base", false).unwrap(), "users:3002");
        assert_eq!(host("http://users:80", false).unwrap(), "users");
        assert_eq!(host("http://users", false).unwrap(), "users");
        assert_eq!(host("http://[::1]:8080", false).unwrap(), "[::1]:8080");
        // HTTP/2 (prior knowledge, or possibly by ALPN): the client sends `:authority`.
        assert!(host("http://users:3002", true).is_none());
        assert!(host("https://users:3002", false).is_none());
    }
}
