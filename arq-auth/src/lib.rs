//! # arq-auth
//!
//! Who is calling, and what may they do, for axum services:
//!
//! - **verification** ([`Verifier`], [`KeyRing`]): strict RS256 JWTs with keys by `kid` from a
//!   JWKS (local, or fetched through OIDC discovery), refreshed on unknown `kid`s at a bounded
//!   rate, with a cache of verified tokens that never outlives them; [`AuthSettings`] is a
//!   service's `[auth]` configuration section and builds its verifier;
//! - **the principal** ([`Principal`]): subject, tenants, roles, permissions, attributes, `amr`;
//!   an axum extractor and the [`AuthLayer`] that accepts bearer tokens and API keys and inserts
//!   [`arq_core::CallerIdentity`] for tenancy;
//! - **RBAC** ([`Rbac`], [`RequirePermission`], [`RequirePermissionLayer`]): roles →
//!   permissions from configuration, admin ⊃ manager ⊃ member ⊃ viewer, MFA for `admin:*`;
//!   role assignment per tenant in PostgreSQL ([`RoleStore`]);
//! - **the issuer side** ([`SigningKeyRing`]): signing with `kid`s, `/.well-known/jwks.json`,
//!   rotation without downtime;
//! - **refresh tokens** ([`RefreshTokenStore`]) and **API keys** ([`ApiKeyStore`]) in PostgreSQL,
//!   with the migrations shipped in the crate ([`migrate`]);
//! - **MFA** ([`mfa`]): TOTP enrollment and verification, email/SMS codes, recovery codes;
//! - **the token issuer** ([`issuer`]): password login, MFA challenge, refresh, logout and
//!   client credentials with RFC 6749 responses;
//! - **ABAC** ([`policy`], on arq's own CEL engine in [`cel`]): YAML policy files with a schema,
//!   type-checked at load, compiled to typed closures, bounded in cost, audited, hot-reloadable,
//!   with an axum guard; see `docs/cel.md`.
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
//! | `testing` | [`testing`]: a test issuer that signs tokens and builds the verifier accepting them |

mod api_keys;
mod claims;
mod crypto;
mod error;
mod guard;
pub mod issuer;
mod jwks;
mod layer;
pub mod mfa;
mod principal;
mod rbac;
mod refresh;
mod roles;
mod settings;
mod signing;
mod store;
mod verify;

pub use api_keys::{API_KEY_PREFIX, ApiKeyStore, CreatedApiKey, NewApiKey};
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
pub use refresh::{
    IssuedRefreshToken, REFRESH_TOKEN_TTL, RefreshError, RefreshGrant, RefreshTokenStore,
};
pub use roles::{RoleError, RoleStore};
pub use settings::{AuthSettings, AuthSettingsError, KEY_REFRESH_INTERVAL};
pub use signing::{SigningError, SigningKey, SigningKeyRing};
pub use store::{MIGRATIONS_TABLE, migrate};
pub use verify::{ConfigError, MAX_LEEWAY_SECS, Verifier, VerifierConfig};

pub mod cel;
pub mod policy;
#[cfg(feature = "testing")]
pub mod testing;

pub use policy::{AttributeSource, Decision, PolicySet, PolicyStore};
