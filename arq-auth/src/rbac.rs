//! Role-based access control: roles → permissions from configuration, the role hierarchy, per-tenant
//! assignment, and the MFA requirement of administrative permissions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::Forbidden;
use crate::principal::Principal;

/// The configuration of roles: each role's own permissions and the role it extends.
///
/// # Example
/// ```
/// use arq_auth::{Rbac, RbacConfig};
///
/// let config: RbacConfig = serde_json::from_str(r#"{
///     "roles": {
///         "viewer":  { "permissions": ["read:project"] },
///         "member":  { "inherits": "viewer",  "permissions": ["write:project"] },
///         "manager": { "inherits": "member",  "permissions": ["manage:members"] },
///         "admin":   { "inherits": "manager", "permissions": ["admin:workspace"] }
///     },
///     "mfa_required": ["admin:"]
/// }"#).unwrap();
/// let rbac = Rbac::from_config(&config).unwrap();
/// assert!(rbac.role_permissions("admin").unwrap().contains("read:project"));
/// assert!(!rbac.role_permissions("viewer").unwrap().contains("write:project"));
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RbacConfig {
    /// Role name → definition.
    pub roles: BTreeMap<String, RoleConfig>,
    /// Permission prefixes that need a multi-factor token (`amr` showing MFA). A permission
    /// matches when it starts with one of them; `"admin:"` covers `admin:workspace`.
    #[serde(default = "default_mfa_required")]
    pub mfa_required: Vec<String>,
}

fn default_mfa_required() -> Vec<String> {
    vec!["admin:".to_owned()]
}

/// One role in [`RbacConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoleConfig {
    /// The role whose permissions this one includes (admin ⊃ manager ⊃ member ⊃ viewer).
    #[serde(default)]
    pub inherits: Option<String>,
    /// The permissions the role adds.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// Why an [`RbacConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RbacError {
    /// A role inherits from a role that is not defined.
    #[error(
        "role `{role}` inherits from `{parent}`, which is not defined; define it or fix the name"
    )]
    UnknownParent {
        /// The role.
        role: String,
        /// The missing parent.
        parent: String,
    },
    /// Inheritance loops back on itself.
    #[error("role `{0}` inherits from itself through its parents; the hierarchy must be a tree")]
    Cycle(String),
}

/// The compiled role → permission map.
///
/// Each role's permission set is flattened at load time (its own plus every ancestor's), so a
/// check is one hash lookup.
#[derive(Debug, Clone)]
pub struct Rbac {
    /// Shared, so a principal with one role points at its set instead of copying it.
    roles: HashMap<String, Arc<HashSet<String>>>,
    no_permissions: Arc<HashSet<String>>,
    mfa_required: Vec<String>,
}

impl Default for Rbac {
    fn default() -> Self {
        Self::standard()
    }
}

impl Rbac {
    /// arq's standard roles: viewer (`read:project`), member (+ `write:project`), manager
    /// (+ `manage:members`, `delete:project`), admin (+ `admin:workspace`); `admin:*` needs MFA.
    pub fn standard() -> Self {
        let mut roles = BTreeMap::new();
        let mut role = |name: &str, inherits: Option<&str>, perms: &[&str]| {
            roles.insert(
                name.to_owned(),
                RoleConfig {
                    inherits: inherits.map(str::to_owned),
                    permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
                },
            );
        };
        role("viewer", None, &["read:project"]);
        role("member", Some("viewer"), &["write:project"]);
        role(
            "manager",
            Some("member"),
            &["manage:members", "delete:project"],
        );
        role("admin", Some("manager"), &["admin:workspace"]);
        let config = RbacConfig {
            roles,
            mfa_required: default_mfa_required(),
        };
        // The standard hierarchy is a fixed tree; compiling it cannot fail. Fall back to an
        // empty map (which denies everything) rather than panic should that ever change.
        Self::from_config(&config).unwrap_or(Self {
            roles: HashMap::new(),
            no_permissions: Arc::default(),
            mfa_required: default_mfa_required(),
        })
    }

    /// Compiles a configuration, flattening inheritance.
    pub fn from_config(config: &RbacConfig) -> Result<Self, RbacError> {
        let mut roles = HashMap::with_capacity(config.roles.len());
        for name in config.roles.keys() {
            let mut perms = HashSet::new();
            let mut seen = HashSet::new();
            let mut current = Some(name.as_str());
            while let Some(role) = current {
                if !seen.insert(role) {
                    return Err(RbacError::Cycle(name.clone()));
                }
                let def = config
                    .roles
                    .get(role)
                    .ok_or_else(|| RbacError::UnknownParent {
                        role: name.clone(),
                        parent: role.to_owned(),
                    })?;
                perms.extend(def.permissions.iter().cloned());
                current = def.inherits.as_deref();
            }
            roles.insert(name.clone(), Arc::new(perms));
        }
        Ok(Self {
            roles,
            no_permissions: Arc::default(),
            mfa_required: config.mfa_required.clone(),
        })
    }

    /// The flattened permissions of a role, if it is defined.
    pub fn role_permissions(&self, role: &str) -> Option<&HashSet<String>> {
        self.roles.get(role).map(|p| &**p)
    }

    /// [`permissions_of`](Self::permissions_of), shared rather than copied when there is at
    /// most one known role (the common case), which keeps building a principal allocation-light.
    pub(crate) fn shared_permissions_of(&self, roles: &[String]) -> Arc<HashSet<String>> {
        match roles {
            [] => Arc::clone(&self.no_permissions),
            [role] => self
                .roles
                .get(role.as_str())
                .map_or_else(|| Arc::clone(&self.no_permissions), Arc::clone),
            _ => Arc::new(self.permissions_of(roles)),
        }
    }

    /// The union of the permissions of `roles` (unknown roles grant nothing).
    pub fn permissions_of<'a>(
        &self,
        roles: impl IntoIterator<Item = &'a String>,
    ) -> HashSet<String> {
        let mut out = HashSet::new();
        for role in roles {
            if let Some(perms) = self.roles.get(role.as_str()) {
                out.extend(perms.iter().cloned());
            }
        }
        out
    }

    /// Whether `permission` needs a multi-factor token.
    pub fn requires_mfa(&self, permission: &str) -> bool {
        self.mfa_required
            .iter()
            .any(|p| permission.starts_with(p.as_str()))
    }

    /// Checks that `principal` holds `permission` in its home tenant, and that its token shows
    /// MFA when the permission requires it.
    ///
    /// # Example
    /// ```
    /// use arq_auth::{AccessClaims, Principal, Rbac};
    ///
    /// let rbac = Rbac::standard();
    /// let claims = AccessClaims::new("iss", "u1", "aud", 0, 60).with_roles(["admin"]).with_amr(["pwd"]);
    /// let admin = Principal::from_claims(claims, &rbac);
    /// assert!(rbac.check(&admin, "write:project").is_ok());
    /// // admin:workspace needs MFA, which a password-only token does not show.
    /// assert!(rbac.check(&admin, "admin:workspace").is_err());
    /// ```
    pub fn check(&self, principal: &Principal, permission: &str) -> Result<(), Forbidden> {
        if !principal.has_permission(permission) {
            return Err(Forbidden::MissingPermission(permission.to_owned()));
        }
        if !principal.has_mfa() && self.requires_mfa(permission) {
            return Err(Forbidden::StepUpRequired(permission.to_owned()));
        }
        Ok(())
    }

    /// Like [`check`](Self::check), for the roles the principal holds in `tenant` (its home
    /// tenant or one of the others it is assigned to).
    pub fn check_in(
        &self,
        principal: &Principal,
        tenant: arq_core::TenantId,
        permission: &str,
    ) -> Result<(), Forbidden> {
        if principal.tenant() == Some(tenant) {
            return self.check(principal, permission);
        }
        let granted = principal.roles_in(tenant).iter().any(|role| {
            self.roles
                .get(role.as_str())
                .is_some_and(|p| p.contains(permission))
        });
        if !granted {
            return Err(Forbidden::MissingPermission(permission.to_owned()));
        }
        if !principal.has_mfa() && self.requires_mfa(permission) {
            return Err(Forbidden::StepUpRequired(permission.to_owned()));
        }
        Ok(())
    }
}
