//! # arq-auth
//!
//! Who is calling, and what may they do: JWT RS256 verification with JWKS rotation, refresh
//! tokens, API keys, RBAC, attribute-based policies in CEL and TOTP MFA, for axum services.
//!
//! The principal this crate produces implements [`arq_core::Identity`], which is how
//! `arq-tenancy` reads the caller's tenant without depending on this crate.
//!
//! This crate is being built issue by issue. Attribute-based access control lives in
//! [`policy`] (YAML policy files with a schema, checked at load, compiled to typed closures,
//! bounded in cost, audited, hot-reloadable, with an axum guard) on top of arq's own CEL engine
//! in [`cel`]; see `docs/cel.md`.
//!
//! # Example
//!
//! ```
//! use arq_auth::Identity;
//! use arq_core::TenantId;
//!
//! struct Caller(TenantId);
//! impl Identity for Caller {
//!     fn subject(&self) -> &str { "user-1" }
//!     fn home_tenant(&self) -> Option<TenantId> { Some(self.0) }
//!     fn roles(&self) -> &[String] { &[] }
//! }
//! let t = TenantId::generate();
//! assert!(Caller(t).is_member_of(t));
//! ```

pub use arq_core::{CallerIdentity, Identity};

pub mod cel;
pub mod policy;

pub use policy::{AttributeSource, Decision, PolicySet, PolicyStore};
