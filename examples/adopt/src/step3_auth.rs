//! Step 3: arq-auth — bearer tokens, the `Principal`, RBAC permissions.
//!
//! [`verifier`] accepts RS256 access tokens whose issuer and audience match `[auth]`, with
//! `exp`/`nbf` checked, signed by a key from the JWKS that `[auth] jwks` names: an `https://`
//! URL (refreshed in the background and on an unknown `kid`) or a local file of public keys.
//! Roles in the token become permissions through `[rbac]`. [`crate::app`] installs
//! [`arq_auth::AuthLayer`], and each handler states the permission it needs with
//! `RequirePermission<ReadNotes>` or `RequirePermission<WriteNotes>`: no token or a bad one is a
//! 401 problem with `WWW-Authenticate`, a missing permission a 403 problem naming it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arq_auth::{JwkSet, JwksUrl, KeyRing, Rbac, RbacConfig, StaticJwks, Verifier, VerifierConfig};
use serde::Deserialize;

arq_auth::permission!(pub ReadNotes = "read:notes");
arq_auth::permission!(pub WriteNotes = "write:notes");

/// How long an unknown `kid` waits before the key set is fetched again.
const MIN_REFRESH: Duration = Duration::from_secs(30);
/// How often a JWKS URL is fetched in the background.
const BACKGROUND_REFRESH: Duration = Duration::from_secs(300);

/// `[auth]`: which access tokens the service accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The token issuer (`iss`).
    pub issuer: String,
    /// This service's audience (`aud`).
    pub audience: String,
    /// The issuer's key set: an `http(s)://` URL, or a JWKS file (relative to the config
    /// directory).
    pub jwks: String,
    /// Accepted clock skew, in seconds (at most 300).
    pub leeway_secs: u64,
}

impl AuthSettings {
    /// The verifier configuration these settings describe (RS256 only, arq-auth's default).
    pub fn verifier_config(&self) -> VerifierConfig {
        VerifierConfig::new(&self.issuer, &self.audience).with_leeway_secs(self.leeway_secs)
    }
}

/// Reads a JWKS file (`{"keys": [...]}`), naming the file in every error.
pub fn read_jwks_file(path: &Path) -> anyhow::Result<JwkSet> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "[auth] jwks: cannot read the key set file {}; set jwks to the issuer's JWKS URL or to a JSON key set file",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "[auth] jwks: {} is not a JSON Web Key Set ({{\"keys\": [...]}})",
            path.display()
        )
    })
}

/// The token verifier for `[auth]` and `[rbac]`; `config_dir` is where a relative `jwks` file
/// is found. With a JWKS URL it spawns the background refresh, so call it inside the runtime.
pub fn verifier(
    auth: &AuthSettings,
    rbac: &RbacConfig,
    config_dir: &Path,
) -> anyhow::Result<Verifier> {
    let keys = if auth.jwks.starts_with("https://") || auth.jwks.starts_with("http://") {
        let keys = Arc::new(KeyRing::new(JwksUrl::new(&auth.jwks)?, MIN_REFRESH));
        keys.spawn_background_refresh(BACKGROUND_REFRESH);
        keys
    } else {
        let set = read_jwks_file(&config_dir.join(&auth.jwks))?;
        Arc::new(KeyRing::new(StaticJwks(set), MIN_REFRESH))
    };
    let rbac = Rbac::from_config(rbac).context("[rbac]")?;
    Verifier::with_rbac(auth.verifier_config(), keys, Arc::new(rbac)).context("[auth]")
}
