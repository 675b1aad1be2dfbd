//! # arq-auth
//!
//! Who is calling, and what may they do, for axum services:
//!
//! - **verification** ([`Verifier`], [`KeyRing`]): strict RS256 JWTs with keys by `kid` from a
//!   JWKS (local, or fetched through OIDC discovery), refreshed on unknown `kid`s at a bounded
//!   rate, with a cache of verified tokens that never outlives them;
//! - **the principal** ([`Principal`]): subject, tenants, roles, permissions, attributes, `amr`;
//!   an axum extractor and the [`AuthLayer`] that accepts bearer tokens and API keys and inserts
//!   [`arq_core::CallerIdentity`] for tenancy;
//! - **RBAC** ([`Rbac`], [`RequirePermission`], [`RequirePermissionLayer`]): roles →
//!   permissions from configuration, admin ⊃ manager ⊃ member ⊃ viewer, MFA for `admin:*`;
//! - **the issuer side** ([`SigningKeyRing`]): signing with `kid`s, `/.well-known/jwks.json`,
//!   rotation without downtime.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use arq_auth::{AuthLayer, KeyRing, OidcDiscovery, Principal, Verifier, VerifierConfig};
//! use axum::{Router, routing::get};
//!
//! let keys = Arc::new(KeyRing::new(OidcDiscovery::new("https://auth.arq.dev")?, Duration::from_secs(30)));
//! let verifier = Verifier::new(VerifierConfig::new("https://auth.arq.dev", "https://api.arq.dev"), keys)?;
//! let app: Router = Router::new()
//!     .route("/me", get(|who: Principal| async move { who.subject().to_owned() }))
//!     .layer(AuthLayer::new(verifier));
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | what it does |
//! |---|---|
//! | `aws-lc-rs` (default) | signatures through aws-lc-rs |
//! | `rust-crypto` | signatures through the RustCrypto crates instead |

mod claims;
mod crypto;
mod error;
mod guard;
mod jwks;
mod layer;
mod principal;
mod rbac;
mod signing;
mod verify;

pub use arq_core::{CallerIdentity, Identity};
pub use claims::AccessClaims;
pub use error::{AuthError, Forbidden};
pub use guard::{
    GuardRejection, Permission, RequirePermission, RequirePermissionLayer, RequirePermissionService,
};
pub use jsonwebtoken::Algorithm;
pub use jsonwebtoken::jwk::{Jwk, JwkSet};
pub use jwks::{JwksSource, JwksUrl, KeyRing, OidcDiscovery, StaticJwks};
pub use layer::{API_KEY_HEADER, ApiKeyValidator, AuthLayer, AuthService};
pub use principal::{CredentialKind, Principal};
pub use rbac::{Rbac, RbacConfig, RbacError, RoleConfig};
pub use signing::{SigningError, SigningKey, SigningKeyRing};
pub use verify::{ConfigError, MAX_LEEWAY_SECS, Verifier, VerifierConfig};
