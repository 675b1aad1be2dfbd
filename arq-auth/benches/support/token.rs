//! The HTTP auth benchmarks' credentials (`edge_auth_http`, `gateway_auth`): an RS256 access
//! token signed with the test key `tests/keys/key1.pem`, and a [`Verifier`] that accepts it
//! (keys loaded, verified-token cache at its default size).
//!
//! Included by path (`#[path = "support/token.rs"] mod token;`).

use std::sync::Arc;
use std::time::Duration;

use arq_auth::{AccessClaims, KeyRing, SigningKey, SigningKeyRing, Verifier, VerifierConfig};

/// The token's issuer.
pub(crate) const ISS: &str = "https://auth.arq.dev";
/// The token's audience.
pub(crate) const AUD: &str = "https://api.arq.dev";

/// Claims of a typical signed-in user, valid for an hour from now: roles, an ABAC attribute,
/// MFA methods.
pub(crate) fn user_claims() -> AccessClaims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    AccessClaims::new(ISS, "user-1", AUD, now, 3600)
        .with_roles(["member"])
        .with_attribute("department", "finance")
        .with_amr(["pwd", "otp"])
}

/// `claims` signed with the bench key, and a verifier for [`ISS`] / [`AUD`] over that key.
/// Call `verifier.keys().refresh()` inside a runtime before serving.
pub(crate) fn token_and_verifier(claims: &AccessClaims) -> (String, Verifier) {
    let ring = SigningKeyRing::new(
        SigningKey::from_rsa_pem("k1", include_bytes!("../../tests/keys/key1.pem")).unwrap(),
    );
    let token = ring.sign(claims).unwrap();
    let keys = Arc::new(KeyRing::new(ring, Duration::from_secs(30)));
    let verifier = Verifier::new(VerifierConfig::new(ISS, AUD), keys).unwrap();
    (token, verifier)
}
