//! Tenant-scoped cache keys.
//!
//! A [`CacheKey`] can only be built with a scope: a [`TenantId`] or the explicit
//! [`Scope::Global`]. The scope is part of the key's identity in L1 (it is hashed and compared)
//! and the first component of its Redis key, so no id a caller chooses can make a key of tenant A
//! equal to, or render the same as, a key of tenant B.

use std::fmt;
use std::sync::Arc;

use crate::TenantId;

/// The longest [`Namespace`] accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Who a cached value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Data of one tenant: only keys with this same tenant can read it.
    Tenant(TenantId),
    /// Data shared by every tenant (reference data, feature flags), chosen explicitly.
    Global,
}

/// A validated key namespace such as `users` or `invoice-totals`: the kind of thing cached.
///
/// Namespaces are 1 to 64 bytes of lowercase ASCII letters, digits, `_`, `-` and `.`. They never
/// contain `:`, which separates the components of a Redis key, so the namespace/id boundary of a
/// stored key is unambiguous. Build each namespace once and reuse it; cloning is cheap.
///
/// # Example
/// ```
/// use arq_core::cache::Namespace;
///
/// let users = Namespace::new("users")?;
/// assert_eq!(users.as_str(), "users");
/// assert!(Namespace::new("a:b").is_err());
/// # Ok::<(), arq_core::cache::CacheKeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Validates `name` as a namespace.
    pub fn new(name: &str) -> Result<Self, CacheKeyError> {
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.');
        if name.is_empty() || name.len() > MAX_NAMESPACE_LEN || !name.chars().all(valid_char) {
            return Err(CacheKeyError::InvalidNamespace {
                excerpt: crate::text::quoted_excerpt(name, 48),
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The namespace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cache key: a [`Scope`], a [`Namespace`] and an id chosen by the caller.
///
/// There is no constructor without a scope. Two keys are equal only when scope, namespace and id
/// all are, so the same id under two tenants names two different entries.
///
/// # Example
/// ```
/// use arq_core::TenantId;
/// use arq_core::cache::{CacheKey, Namespace, Scope};
///
/// let users = Namespace::new("users")?;
/// let (a, b) = (TenantId::generate(), TenantId::generate());
/// let key_a = CacheKey::tenant(a, &users, "42");
/// let key_b = CacheKey::tenant(b, &users, "42");
/// assert_ne!(key_a, key_b);
/// assert_eq!(key_a.scope(), Scope::Tenant(a));
/// assert_ne!(CacheKey::global(&users, "42"), key_a);
/// # Ok::<(), arq_core::cache::CacheKeyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    scope: Scope,
    namespace: Namespace,
    id: Box<str>,
}

impl CacheKey {
    /// A key owned by `tenant`.
    pub fn tenant(tenant: TenantId, namespace: &Namespace, id: impl Into<String>) -> Self {
        Self {
            scope: Scope::Tenant(tenant),
            namespace: namespace.clone(),
            id: id.into().into_boxed_str(),
        }
    }

    /// A key shared by every tenant. Use it only for data that is not any tenant's.
    pub fn global(namespace: &Namespace, id: impl Into<String>) -> Self {
        Self {
            scope: Scope::Global,
            namespace: namespace.clone(),
            id: id.into().into_boxed_str(),
        }
    }

    /// The scope the key belongs to.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The caller's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The Redis key: `{prefix}:t:{tenant}:{namespace}:{id}` or `{prefix}:g:{namespace}:{id}`.
    ///
    /// The tenant is a fixed-width UUID and the namespace has no `:`, so the string is parsed back
    /// unambiguously by [`CacheKey::parse_storage`].
    pub(crate) fn storage_key(&self, prefix: &str) -> String {
        match self.scope {
            Scope::Tenant(t) => format!("{prefix}:t:{t}:{}:{}", self.namespace, self.id),
            Scope::Global => format!("{prefix}:g:{}:{}", self.namespace, self.id),
        }
    }

    /// The inverse of [`CacheKey::storage_key`]; `None` for anything it did not produce.
    pub(crate) fn parse_storage(prefix: &str, stored: &str) -> Option<Self> {
        let rest = stored.strip_prefix(prefix)?.strip_prefix(':')?;
        let (scope, rest) = if let Some(rest) = rest.strip_prefix("t:") {
            let (tenant, rest) = rest.split_once(':')?;
            (Scope::Tenant(tenant.parse().ok()?), rest)
        } else {
            (Scope::Global, rest.strip_prefix("g:")?)
        };
        let (namespace, id) = rest.split_once(':')?;
        Some(Self {
            scope,
            namespace: Namespace::new(namespace).ok()?,
            id: id.into(),
        })
    }
}

/// Why a namespace or key prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheKeyError {
    /// The namespace is empty, too long or has a character outside `[a-z0-9_.-]`.
    #[error(
        "{excerpt} is not a valid cache namespace: use 1 to 64 characters from a-z, 0-9, '_', '-' and '.'"
    )]
    InvalidNamespace {
        /// The refused text, shortened and quoted.
        excerpt: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn storage_keys_round_trip_and_never_cross_tenants(id in ".*", other in ".*", ns in "[a-z0-9_.-]{1,64}") {
            let ns = Namespace::new(&ns).unwrap();
            let (a, b) = (TenantId::generate(), TenantId::generate());
            let ka = CacheKey::tenant(a, &ns, id);
            let kb = CacheKey::tenant(b, &ns, other.clone());
            let kg = CacheKey::global(&ns, other);
            let (sa, sb, sg) = (ka.storage_key("p"), kb.storage_key("p"), kg.storage_key("p"));
            prop_assert_ne!(&sa, &sb);
            prop_assert_ne!(&sa, &sg);
            prop_assert_eq!(CacheKey::parse_storage("p", &sa), Some(ka));
            prop_assert_eq!(CacheKey::parse_storage("p", &sb), Some(kb));
            prop_assert_eq!(CacheKey::parse_storage("p", &sg), Some(kg));
        }

        #[test]
        fn namespace_never_panics(s in ".*") {
            let _ = Namespace::new(&s);
        }
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "A", "a:b", "a b", &"x".repeat(65)] {
            let err = Namespace::new(bad).unwrap_err();
            assert!(err.to_string().contains("not a valid cache namespace"));
        }
    }

    #[test]
    fn foreign_storage_keys_do_not_parse() {
        assert_eq!(CacheKey::parse_storage("p", "q:g:users:1"), None);
        assert_eq!(CacheKey::parse_storage("p", "p:t:not-a-uuid:users:1"), None);
        assert_eq!(CacheKey::parse_storage("p", "p:x:users:1"), None);
    }
}
