//! Carrying the tenant to other services and through queues, and reading it back.
//!
//! Outbound HTTP: [`inject_header`] (or [`inject_current`], which uses
//! [`crate::context::current`]) sets `X-Tenant-ID` on a request's headers; arq-core's client
//! calls it for every request. Inbound, the header is read by [`crate::TenantLayer`] and is only a
//! selector there: the receiving service still checks it against the calling identity.
//!
//! Queues: an envelope carries the tenant in its string headers under [`ENVELOPE_TENANT_KEY`];
//! [`inject_envelope`] writes it and [`tenant_from_envelope`] parses it back (a malformed value
//! is an error, never a guess). A consumer runs the job's database work with
//! [`crate::TenantPool::run`] in the tenant the envelope names.

use std::collections::{BTreeMap, HashMap};

use arq_core::TenantId;
use http::{HeaderMap, HeaderValue};

use crate::resolve::{ResolveError, TENANT_HEADER, tenant_from_headers};

/// The envelope header key that carries the tenant id.
pub const ENVELOPE_TENANT_KEY: &str = "x-tenant-id";

/// Sets `X-Tenant-ID: tenant` on outbound headers (replacing any value already there).
///
/// # Example
/// ```
/// use arq_tenancy::{propagate, TenantId};
///
/// let t = TenantId::generate();
/// let mut headers = http::HeaderMap::new();
/// propagate::inject_header(&mut headers, t);
/// assert_eq!(propagate::tenant_from_header(&headers).unwrap(), Some(t));
/// ```
pub fn inject_header(headers: &mut HeaderMap, tenant: TenantId) {
    // A canonical UUID is always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&tenant.to_string()) {
        headers.insert(TENANT_HEADER, value);
    }
}

/// Sets `X-Tenant-ID` from the task's current tenant, if there is one; returns whether it did.
/// Without a current tenant any `X-Tenant-ID` already present is removed, so a tenant never
/// leaks from a reused header map.
pub fn inject_current(headers: &mut HeaderMap) -> bool {
    match crate::context::current() {
        Some(t) => {
            inject_header(headers, t);
            true
        }
        None => {
            headers.remove(TENANT_HEADER);
            false
        }
    }
}

/// Reads `X-Tenant-ID` from inbound headers (absent: `None`; malformed or repeated: error).
pub fn tenant_from_header(headers: &HeaderMap) -> Result<Option<TenantId>, ResolveError> {
    tenant_from_headers(headers)
}

/// String headers of a queue envelope.
pub trait EnvelopeHeaders {
    /// The value under `key`.
    fn get_header(&self, key: &str) -> Option<&str>;
    /// Sets `key` to `value`.
    fn set_header(&mut self, key: &str, value: String);
}

impl<S: std::hash::BuildHasher> EnvelopeHeaders for HashMap<String, String, S> {
    fn get_header(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
    fn set_header(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

impl EnvelopeHeaders for BTreeMap<String, String> {
    fn get_header(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
    fn set_header(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

/// Writes the tenant into an envelope's headers.
///
/// # Example
/// ```
/// use std::collections::BTreeMap;
/// use arq_tenancy::{propagate, TenantId};
///
/// let t = TenantId::generate();
/// let mut headers = BTreeMap::new();
/// propagate::inject_envelope(&mut headers, t);
/// assert_eq!(propagate::tenant_from_envelope(&headers).unwrap(), Some(t));
///
/// headers.insert("x-tenant-id".into(), "robert'); drop table--".into());
/// assert!(propagate::tenant_from_envelope(&headers).is_err());
/// ```
pub fn inject_envelope(headers: &mut impl EnvelopeHeaders, tenant: TenantId) {
    headers.set_header(ENVELOPE_TENANT_KEY, tenant.to_string());
}

/// Reads the tenant from an envelope's headers.
pub fn tenant_from_envelope(
    headers: &impl EnvelopeHeaders,
) -> Result<Option<TenantId>, arq_core::ParseTenantIdError> {
    headers
        .get_header(ENVELOPE_TENANT_KEY)
        .map(str::parse)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn current_tenant_goes_out_and_stale_headers_are_cleared() {
        let t = TenantId::generate();
        let mut h = HeaderMap::new();
        assert!(crate::context::scope(t, async { inject_current(&mut h) }).await);
        assert_eq!(tenant_from_header(&h).unwrap(), Some(t));
        assert!(!inject_current(&mut h));
        assert_eq!(tenant_from_header(&h).unwrap(), None);
    }
}
