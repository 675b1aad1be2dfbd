//! Header hygiene between client and upstream (RFC 9110 §7.6.1): hop-by-hop headers are
//! removed in both directions, including every header the `Connection` header names; the
//! `X-Forwarded-*` headers are set for the upstream.
//!
//! Both directions run once per proxied request, so each finds what to remove in one pass over
//! the header names (cheap comparisons) and removes only what is there, instead of a hash
//! lookup per name that might be present.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::client::TENANT_HEADER;
use crate::{REQUEST_ID_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER};

/// `X-Forwarded-For`.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The hop-by-hop headers of RFC 9110 §7.6.1 plus the non-standard ones proxies still see
/// (`Connection` first and `Upgrade` second: [`strip`] refers to them by position), then the
/// headers the gateway replaces on the way up: `Host` (the upstream's), the request id and
/// trace context (the gateway's), `X-Tenant-ID` (the verified one) and `X-Forwarded-*`.
const STRIPPED: [HeaderName; 17] = [
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("proxy-connection"),
    header::HOST,
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    TENANT_HEADER,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];
/// How many of [`STRIPPED`] are hop-by-hop (the rest are replaced on requests only).
const HOP_BY_HOP: usize = 9;
const CONNECTION_BIT: u32 = 1;
const UPGRADE_BIT: u32 = 1 << 1;
const FORWARDED_FOR_BIT: u32 = 1 << 14;

/// Whether the request asks to switch protocols (a WebSocket handshake): `Connection: upgrade`
/// and an `Upgrade` header.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the first `n` of [`STRIPPED`] that are present, except those in `keep`, and every
/// header `Connection` names (RFC 9110 §7.6.1); returns the bits of those found. For an upgrade, `Upgrade` and
/// `Connection: upgrade` are kept: they are the one hop-by-hop exchange a proxy must pass on
/// for the switch to happen.
fn strip(headers: &mut HeaderMap, n: usize, upgrade: bool, keep: u32) -> u32 {
    let names = &STRIPPED[..n];
    let mut found = 0u32;
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|s| s == name) {
            found |= 1 << i;
        }
    }
    if found == 0 {
        return 0;
    }
    if found & CONNECTION_BIT != 0 {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("close"))
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let upgrade_to = if upgrade && found & UPGRADE_BIT != 0 {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for (i, name) in names.iter().enumerate() {
        if (found & !keep) & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if let Some(to) = upgrade_to {
        headers.insert(header::UPGRADE, to);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    found
}

/// Removes the hop-by-hop headers (the response direction).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip(headers, HOP_BY_HOP, upgrade, 0);
}

/// Prepares a client's request headers for the upstream: removes the hop-by-hop headers and
/// those the gateway sets itself (`Host`, `X-Request-ID`, `traceparent`, `tracestate`,
/// `X-Tenant-ID`, `X-Forwarded-*`), then sets `X-Forwarded-Proto` and `X-Forwarded-Host` (the
/// Host the client asked for, when it sent one). Returns the `X-Forwarded-For` chain the
/// client sent, if any, for [`forwarded_for`]; the request id, trace context, tenant and
/// `X-Forwarded-For` are added per attempt.
pub(crate) fn for_upstream(
    headers: &mut HeaderMap,
    upgrade: bool,
    proto: &'static str,
    host: Option<HeaderValue>,
) -> Option<Vec<u8>> {
    // `X-Forwarded-For` stays until its chain is read.
    let found = strip(headers, STRIPPED.len(), upgrade, FORWARDED_FOR_BIT);
    let prior = (found & FORWARDED_FOR_BIT != 0)
        .then(|| {
            let mut chain = Vec::new();
            for v in headers.get_all(&X_FORWARDED_FOR) {
                if let Ok(s) = v.to_str() {
                    if !chain.is_empty() {
                        chain.extend_from_slice(b", ");
                    }
                    chain.extend_from_slice(s.as_bytes());
                }
            }
            headers.remove(X_FORWARDED_FOR);
            chain
        })
        .filter(|c| !c.is_empty());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    prior
}

/// The `X-Forwarded-For` value: the client's chain (from [`for_upstream`]) with `peer`
/// appended, formatted without a `String` per request.
pub(crate) fn forwarded_for(prior: Option<&[u8]>, peer: IpAddr) -> Option<HeaderValue> {
    let mut ip = [0u8; 45];
    let len = write_ip(&mut ip, peer);
    let ip = &ip[..len];
    match prior {
        None => HeaderValue::from_bytes(ip).ok(),
        Some(chain) => {
            let mut v = Vec::with_capacity(chain.len() + 2 + ip.len());
            v.extend_from_slice(chain);
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
        }
    }
}

/// Writes `ip` in its usual text form into `out` (45 bytes hold any address); returns the
/// length. IPv4, the common case, by hand: `Display` pads through a formatter, which costs more
/// than the rest of this module per request.
fn write_ip(out: &mut [u8; 45], ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            // 45 bytes hold the longest form (an IPv4-mapped address written out in full).
            let _ = write!(cursor, "{v6}");
            cursor.position() as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret, close".parse().unwrap(),
        );
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert(header::HOST, "kept-on-responses".parse().unwrap());
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade, x-hop".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert!(!h.contains_key("x-hop"));
    }

    #[test]
    fn requests_lose_what_the_gateway_sets_and_keep_the_rest() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("host", "api.example"),
            ("x-request-id", "client-id"),
            ("traceparent", "00-x"),
            ("tracestate", "a=b"),
            ("x-tenant-id", "forged"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ] {
            h.insert(HeaderName::from_static(name), value.parse().unwrap());
        }
        h.append(X_FORWARDED_FOR, "203.0.113.9".parse().unwrap());
        h.append(X_FORWARDED_FOR, "198.51.100.2".parse().unwrap());
        let host = h.get(header::HOST).cloned();
        let prior = for_upstream(&mut h, false, "https", host);
        assert_eq!(prior.as_deref(), Some(&b"203.0.113.9, 198.51.100.2"[..]));
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-host", "x-forwarded-proto"]);
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "api.example");

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_HOST, "evil".parse().unwrap());
        assert_eq!(for_upstream(&mut h, false, "http", None), None);
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let chain = forwarded_for(Some(b"203.0.113.9"), [10, 0, 0, 1].into()).unwrap();
        assert_eq!(chain, "203.0.113.9, 10.0.0.1");
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.100.9",
            "::1",
        ] {
            let v = forwarded_for(None, ip.parse().unwrap()).unwrap();
            assert_eq!(v, ip);
        }
        let long: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(forwarded_for(None, long).unwrap(), long.to_string());
    }
}
