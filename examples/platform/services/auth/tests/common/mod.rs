//! What the integration tests share: a database of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test; arq-tenancy's
//! `testing::TestDatabase`) created by the administrator, migrated as `arq_owner` with
//! `auth::migrate`, served as `arq_app` (the roles of arq-tenancy's `sql/roles.sql`) and dropped
//! at the end, also when the test fails; and the verifier of the other services, to check the
//! tokens this one issues.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use arq_auth::{JwkSet, KeyRing, StaticJwks, Verifier, VerifierConfig};
use arq_tenancy::testing::{Role, TestDatabase};
use sqlx::PgPool;

use auth as svc;

/// A database of its own, migrated, and the runtime pool on it after the same start-up audit as
/// `main`.
pub async fn database() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create(svc::NAME).await;
    let owner = db.pool(Role::Owner, 1).await;
    svc::migrate(&owner).await.unwrap();
    owner.close().await;
    let app = db.pool(Role::App, 4).await;
    let mut conn = app.acquire().await.unwrap();
    arq_tenancy::audit::ensure_safe(&mut conn).await.unwrap();
    drop(conn);
    (db, app)
}

/// A verifier like the gateway's and the other services': the platform's issuer and audience
/// from `settings`, the keys of `jwks` (what this service publishes).
pub fn platform_verifier(settings: &svc::Settings, jwks: JwkSet) -> Verifier {
    let keys = KeyRing::new(StaticJwks(jwks), Duration::from_secs(30));
    Verifier::new(
        VerifierConfig::new(&settings.auth.issuer, &settings.auth.audience),
        Arc::new(keys),
    )
    .unwrap()
}
