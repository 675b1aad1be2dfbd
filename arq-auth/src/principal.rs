//! The authenticated caller: [`Principal`], its extractors, and the identity it gives tenancy.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arq_core::{Identity, TenantId};
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use serde_json::Value;

use crate::claims::AccessClaims;
use crate::error::AuthError;
use crate::rbac::Rbac;

/// How the principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialKind {
    /// A verified JWT access token.
    AccessToken,
    /// An API key.
    ApiKey,
}

/// The authenticated caller: subject, tenants, roles, permissions, ABAC attributes, the
/// authentication methods and the token id.
///
/// Cheap to clone (one `Arc`). Implements [`Identity`], so `arq-tenancy` reads it from the
/// [`arq_core::CallerIdentity`] the [`AuthLayer`](crate::AuthLayer) inserts.
///
/// As an axum extractor it answers `401` (problem+json) when the request carries no valid
/// credentials; `Option<Principal>` extracts `None` instead.
///
/// # Example
/// ```
/// use arq_auth::{AccessClaims, Principal, Rbac};
/// use arq_core::{Identity, TenantId};
///
/// let home = TenantId::generate();
/// let other = TenantId::generate();
/// let claims = AccessClaims::new("iss", "user-7", "aud", 0, 3600)
///     .with_tenant(home)
///     .with_roles(["member"])
///     .with_tenant_roles(other, ["viewer"])
///     .with_attribute("department", "finance")
///     .with_amr(["pwd"]);
/// let who = Principal::from_claims(claims, &Rbac::standard());
/// assert_eq!(who.subject(), "user-7");
/// assert!(who.is_member_of(home) && who.is_member_of(other));
/// assert!(who.has_permission("write:project"));
/// assert_eq!(who.attribute("department").unwrap(), "finance");
/// assert!(!who.has_mfa());
/// ```
#[derive(Debug, Clone)]
pub struct Principal(pub(crate) Arc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    subject: String,
    tenant: Option<TenantId>,
    tenants: BTreeMap<TenantId, Vec<String>>,
    roles: Vec<String>,
    permissions: Arc<HashSet<String>>,
    attributes: BTreeMap<String, Value>,
    amr: Vec<String>,
    token_id: Option<String>,
    expires_at: u64,
    kind: CredentialKind,
}

/// `amr` values (RFC 8176) that show a second factor.
const MFA_METHODS: [&str; 5] = ["mfa", "otp", "sms", "hwk", "swk"];

impl Principal {
    /// The principal described by verified claims; permissions are the roles' (through `rbac`)
    /// plus those granted directly.
    pub fn from_claims(claims: AccessClaims, rbac: &Rbac) -> Self {
        let permissions = if claims.perms.is_empty() {
            rbac.shared_permissions_of(&claims.roles)
        } else {
            let mut permissions = rbac.permissions_of(&claims.roles);
            permissions.extend(claims.perms);
            Arc::new(permissions)
        };
        Self(Arc::new(Inner {
            subject: claims.sub,
            tenant: claims.tid,
            tenants: claims.tenants,
            roles: claims.roles,
            permissions,
            attributes: claims.attrs,
            amr: claims.amr,
            token_id: (!claims.jti.is_empty()).then_some(claims.jti),
            expires_at: claims.exp,
            kind: CredentialKind::AccessToken,
        }))
    }

    /// The principal of an API key: bound to one tenant, with exactly the key's permissions.
    pub fn for_api_key(
        key_id: String,
        tenant: TenantId,
        permissions: impl IntoIterator<Item = String>,
        expires_at: Option<u64>,
    ) -> Self {
        Self(Arc::new(Inner {
            subject: key_id.clone(),
            tenant: Some(tenant),
            tenants: BTreeMap::new(),
            roles: Vec::new(),
            permissions: Arc::new(permissions.into_iter().collect()),
            attributes: BTreeMap::new(),
            amr: Vec::new(),
            token_id: Some(key_id),
            expires_at: expires_at.unwrap_or(u64::MAX),
            kind: CredentialKind::ApiKey,
        }))
    }

    /// The subject (user id, service account or API key id).
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The home tenant.
    pub fn tenant(&self) -> Option<TenantId> {
        self.0.tenant
    }

    /// Every tenant the principal may act in: the home tenant first, then the others.
    pub fn tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        self.0
            .tenant
            .into_iter()
            .chain(self.0.tenants.keys().copied())
    }

    /// The roles in the home tenant.
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// The roles held in `tenant` (the home roles for the home tenant).
    pub fn roles_in(&self, tenant: TenantId) -> &[String] {
        if self.0.tenant == Some(tenant) {
            return &self.0.roles;
        }
        self.0.tenants.get(&tenant).map_or(&[], Vec::as_slice)
    }

    /// The effective permissions in the home tenant.
    pub fn permissions(&self) -> &HashSet<String> {
        &self.0.permissions
    }

    /// Whether the principal holds `permission` in its home tenant.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.0.permissions.contains(permission)
    }

    /// ABAC attributes.
    pub fn attributes(&self) -> &BTreeMap<String, Value> {
        &self.0.attributes
    }

    /// One ABAC attribute.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.0.attributes.get(name)
    }

    /// The authentication methods (`amr`).
    pub fn amr(&self) -> &[String] {
        &self.0.amr
    }

    /// Whether the credentials show a second factor (`amr` contains `mfa`, `otp`, `sms`, `hwk`
    /// or `swk`).
    pub fn has_mfa(&self) -> bool {
        self.0.amr.iter().any(|m| MFA_METHODS.contains(&m.as_str()))
    }

    /// The token id (`jti`), or the API key id.
    pub fn token_id(&self) -> Option<&str> {
        self.0.token_id.as_deref()
    }

    /// When the credentials expire, in seconds since the epoch (`u64::MAX`: never).
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }

    /// How the principal authenticated.
    pub fn kind(&self) -> CredentialKind {
        self.0.kind
    }
}

impl Identity for Principal {
    fn subject(&self) -> &str {
        &self.0.subject
    }

    fn home_tenant(&self) -> Option<TenantId> {
        self.0.tenant
    }

    fn is_member_of(&self, tenant: TenantId) -> bool {
        self.0.tenant == Some(tenant) || self.0.tenants.contains_key(&tenant)
    }

    fn roles(&self) -> &[String] {
        &self.0.roles
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AuthError::MissingCredentials)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}
