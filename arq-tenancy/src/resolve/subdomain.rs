//! Resolving a tenant from the request's host name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use arq_core::TenantId;

/// Maps the first label of a host name under a base domain to a tenant.
///
/// Implementations usually look the label up in a table or a cache; [`StaticSubdomains`] is a
/// fixed map. Return `None` for a label that names no tenant (the request gets 404).
pub trait SubdomainResolver: Send + Sync + 'static {
    /// The base domain, e.g. `example.com`: only hosts of the form `<label>.example.com` are
    /// looked up; other hosts carry no selector.
    fn base_domain(&self) -> &str;

    /// The tenant served at `label` (lowercase, one DNS label), if any.
    fn resolve<'a>(
        &'a self,
        label: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<TenantId>> + Send + 'a>>;
}

/// A fixed map from subdomain label to tenant.
///
/// # Example
/// ```
/// use arq_tenancy::resolve::StaticSubdomains;
/// use arq_tenancy::TenantId;
///
/// let acme = TenantId::generate();
/// let map = StaticSubdomains::new("example.com").with("acme", acme);
/// assert_eq!(map.label_of("ACME.example.com:8443"), Some("acme".to_owned()));
/// assert_eq!(map.label_of("a.b.example.com"), None);
/// assert_eq!(map.label_of("example.com"), None);
/// ```
#[derive(Debug, Clone)]
pub struct StaticSubdomains {
    base: String,
    map: HashMap<String, TenantId>,
}

impl StaticSubdomains {
    /// An empty map for hosts under `base_domain`.
    pub fn new(base_domain: &str) -> Self {
        Self {
            base: base_domain.trim_matches('.').to_ascii_lowercase(),
            map: HashMap::new(),
        }
    }

    /// Adds `label → tenant`.
    #[must_use]
    pub fn with(mut self, label: &str, tenant: TenantId) -> Self {
        self.map.insert(label.to_ascii_lowercase(), tenant);
        self
    }

    /// The subdomain label of `host` under this map's base domain (see [`label_of`]).
    pub fn label_of(&self, host: &str) -> Option<String> {
        label_of(host, &self.base)
    }
}

impl SubdomainResolver for StaticSubdomains {
    fn base_domain(&self) -> &str {
        &self.base
    }

    fn resolve<'a>(
        &'a self,
        label: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<TenantId>> + Send + 'a>> {
        let found = self.map.get(label).copied();
        Box::pin(async move { found })
    }
}

/// The single DNS label in front of `base` in `host` (port stripped, lowercased), if `host` is
/// exactly `<label>.<base>` and the label is a valid DNS label.
pub fn label_of(host: &str, base: &str) -> Option<String> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let base = base.trim_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(&base)?.strip_suffix('.')?;
    let valid = !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| label.to_owned())
}
