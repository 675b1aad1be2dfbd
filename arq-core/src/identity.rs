//! How the rest of arq learns who is calling, without depending on `arq-auth`.
//!
//! `arq-auth`'s principal implements [`Identity`]; `arq-tenancy` reads it from request extensions
//! as a [`CallerIdentity`]. A service with its own authentication can implement the trait and
//! still use `arq-tenancy`.

use std::fmt;
use std::sync::Arc;

use crate::TenantId;

/// The authenticated caller, as tenancy and authorization need to see it.
///
/// # Example
/// ```
/// use arq_core::{Identity, TenantId};
///
/// struct ServiceAccount { tenant: TenantId }
///
/// impl Identity for ServiceAccount {
///     fn subject(&self) -> &str { "svc:billing" }
///     fn home_tenant(&self) -> Option<TenantId> { Some(self.tenant) }
///     fn roles(&self) -> &[String] { &[] }
/// }
///
/// let t = TenantId::generate();
/// let who = ServiceAccount { tenant: t };
/// assert!(who.is_member_of(t));
/// assert!(!who.is_member_of(TenantId::generate()));
/// ```
pub trait Identity: Send + Sync + 'static {
    /// The stable subject identifier (a user id, a service account, an API key id).
    fn subject(&self) -> &str;

    /// The tenant the credentials were issued for, if any.
    fn home_tenant(&self) -> Option<TenantId>;

    /// Whether the caller may act in `tenant`. By default only the home tenant; identities that
    /// span tenants (a user in several workspaces) override this.
    fn is_member_of(&self, tenant: TenantId) -> bool {
        self.home_tenant() == Some(tenant)
    }

    /// The caller's role names.
    fn roles(&self) -> &[String];
}

/// The caller's identity as it travels in request extensions.
///
/// Authentication layers insert it; tenant resolution and authorization read it.
#[derive(Clone)]
pub struct CallerIdentity(pub Arc<dyn Identity>);

impl CallerIdentity {
    /// Wraps an identity.
    pub fn new(identity: impl Identity) -> Self {
        Self(Arc::new(identity))
    }
}

impl std::ops::Deref for CallerIdentity {
    type Target = dyn Identity;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerIdentity")
            .field("subject", &self.0.subject())
            .field("home_tenant", &self.0.home_tenant())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Multi {
        home: TenantId,
        others: Vec<TenantId>,
        roles: Vec<String>,
    }

    impl Identity for Multi {
        fn subject(&self) -> &str {
            "user-1"
        }
        fn home_tenant(&self) -> Option<TenantId> {
            Some(self.home)
        }
        fn is_member_of(&self, tenant: TenantId) -> bool {
            tenant == self.home || self.others.contains(&tenant)
        }
        fn roles(&self) -> &[String] {
            &self.roles
        }
    }

    #[test]
    fn caller_identity_derefs_to_the_trait() {
        let (a, b, c) = (
            TenantId::generate(),
            TenantId::generate(),
            TenantId::generate(),
        );
        let who = CallerIdentity::new(Multi {
            home: a,
            others: vec![b],
            roles: vec!["member".into()],
        });
        let clone = who.clone();
        assert!(clone.is_member_of(a) && clone.is_member_of(b) && !clone.is_member_of(c));
        assert_eq!(clone.roles(), ["member".to_owned()]);
        assert!(format!("{who:?}").contains("user-1"));
    }
}
