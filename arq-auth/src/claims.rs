//! The claims of an arq access token.

use std::collections::BTreeMap;

use arq_core::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The payload of an arq access token.
///
/// Registered claims (`iss`, `sub`, `aud`, `exp`, `nbf`, `iat`, `jti`) plus arq's: the home tenant
/// `tid`, per-tenant role assignments `tenants`, roles in the home tenant, extra permissions,
/// ABAC attributes and the authentication methods (`amr`, RFC 8176).
///
/// # Example
/// ```
/// use arq_auth::AccessClaims;
///
/// let claims = AccessClaims::new("https://auth.arq.dev", "user-1", "https://api.arq.dev", 1_000, 3_600)
///     .with_roles(["member"])
///     .with_amr(["pwd", "otp"]);
/// assert_eq!(claims.exp, 4_600);
/// assert!(claims.amr.iter().any(|m| m == "otp"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    #[serde(default)]
    pub iss: String,
    /// Subject: the user or service account id.
    #[serde(default)]
    pub sub: String,
    /// Audience: one value or several (sent as a string when there is one).
    #[serde(default, with = "audience")]
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default)]
    pub nbf: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default)]
    pub iat: u64,
    /// Token id.
    #[serde(default)]
    pub jti: String,
    /// The home tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<TenantId>,
    /// Roles in the home tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Role assignments in other tenants the subject belongs to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<TenantId, Vec<String>>,
    /// Permissions granted directly, beyond those of the roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub perms: Vec<String>,
    /// Attributes for ABAC policies (department, costCenter, region, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, Value>,
    /// Authentication methods references (RFC 8176): `pwd`, `otp`, `mfa`, `sms`, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
}

impl AccessClaims {
    /// Claims valid from `now` for `ttl_secs`, with a fresh random `jti`.
    pub fn new(
        issuer: impl Into<String>,
        subject: impl Into<String>,
        audience: impl Into<String>,
        now: u64,
        ttl_secs: u64,
    ) -> Self {
        Self {
            iss: issuer.into(),
            sub: subject.into(),
            aud: vec![audience.into()],
            exp: now.saturating_add(ttl_secs),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            tid: None,
            roles: Vec::new(),
            tenants: BTreeMap::new(),
            perms: Vec::new(),
            attrs: BTreeMap::new(),
            amr: Vec::new(),
        }
    }

    /// Sets the home tenant.
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tid = Some(tenant);
        self
    }

    /// Sets the roles in the home tenant.
    pub fn with_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a role assignment in another tenant.
    pub fn with_tenant_roles<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        tenant: TenantId,
        roles: I,
    ) -> Self {
        self.tenants
            .insert(tenant, roles.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the directly granted permissions.
    pub fn with_permissions<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        perms: I,
    ) -> Self {
        self.perms = perms.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an ABAC attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attrs.insert(name.into(), value.into());
        self
    }

    /// Sets the authentication methods.
    pub fn with_amr<I: IntoIterator<Item = S>, S: Into<String>>(mut self, amr: I) -> Self {
        self.amr = amr.into_iter().map(Into::into).collect();
        self
    }
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
mod audience {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub(super) fn serialize<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
        match aud {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}
