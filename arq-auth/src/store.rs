//! PostgreSQL plumbing shared by the stores: the crate's migrations and secret helpers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The table that records which of arq-auth's migrations ran, kept apart from the service's own
/// `_sqlx_migrations` so both sets can live in one database.
pub const MIGRATIONS_TABLE: &str = "_arq_auth_migrations";

/// Applies arq-auth's migrations (refresh tokens, API keys, MFA, issuer users and clients).
///
/// Run it with the owner role at start-up or from a migration job; it is idempotent and takes
/// PostgreSQL's advisory lock, so concurrent replicas are safe.
///
/// # Example
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
/// arq_auth::migrate(&pool).await?;
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

/// 32 bytes from the thread-local CSPRNG (ChaCha seeded by the OS), base64url-encoded: 256 bits.
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a high-entropy secret. A slow password hash would add nothing: 256 random bits
/// cannot be brute-forced, and lookups must stay fast.
pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub(crate) fn storage(error: &sqlx::Error) -> crate::AuthError {
    crate::AuthError::Storage(error.to_string())
}
