//! PITFALLS 56 against PostgreSQL: encrypted columns through sqlx, wrapped keys in the
//! RLS-protected key table, AAD binding, rotation, blind-index lookups.

use std::sync::Arc;

use arq_tenancy::TenantId;
use arq_tenancy::crypto::{
    BlindIndex, CryptoError, Encrypted, FieldCipher, FieldContext, LocalKekProvider, PgKeyStore,
};
use arq_tenancy::tx::BeginMode;
use sqlx::Executor;

use crate::common::TestDb;

#[tokio::test]
async fn p56_moved_ciphertexts_fail_and_rotated_keys_still_decrypt() {
    let db = TestDb::new(3).await;
    let pool = db.pool(BeginMode::Folded);
    let cipher = FieldCipher::new(
        Arc::new(LocalKekProvider::new("kek-1", [3; 32])),
        Arc::new(PgKeyStore::new(pool.clone())),
    );
    let index = BlindIndex::new([5; 32]);
    let (a, b) = (TenantId::generate(), TenantId::generate());

    // Insert two rows for A and one for B; the row key is the title (known before the insert).
    let put = async |t: TenantId, title: &str, secret: &[u8]| {
        let ctx = FieldContext::new(t, "tasks", "secret", title);
        let sealed = cipher.encrypt(&ctx, secret).await.unwrap();
        let mut tx = pool.begin(t).await.unwrap();
        sqlx::query(
            "insert into tasks (tenant_id, title, secret, secret_idx) values ($1, $2, $3, $4)",
        )
        .bind(t.into_uuid())
        .bind(title)
        .bind(&sealed)
        .bind(index.compute(t, "tasks", "secret", secret).as_slice())
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        sealed
    };
    let a1 = put(a, "a1", b"alpha").await;
    let _a2 = put(a, "a2", b"beta").await;
    let b1 = put(b, "b1", b"alpha").await;

    // The key table is row-level secured like any tenant table.
    let mut tx = pool.begin(a).await.unwrap();
    let keys: Vec<uuid::Uuid> = sqlx::query_scalar("select tenant_id from arq.tenant_data_keys")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(keys, [a.into_uuid()]);
    // Read back through the sqlx type, and find by blind index.
    let (title, sealed): (String, Encrypted) =
        sqlx::query_as("select title, secret from tasks where secret_idx = $1")
            .bind(index.compute(a, "tasks", "secret", b"alpha").as_slice())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(title, "a1");
    assert_eq!(sealed, a1);
    assert_eq!(
        cipher
            .decrypt(&FieldContext::new(a, "tasks", "secret", "a1"), &sealed)
            .await
            .unwrap(),
        b"alpha"
    );
    // Same plaintext in B has an unrelated index.
    assert_ne!(
        index.compute(a, "tasks", "secret", b"alpha"),
        index.compute(b, "tasks", "secret", b"alpha")
    );

    // Copy a1's ciphertext onto row a2 (a compromised writer could): it does not decrypt there.
    sqlx::query("update tasks set secret = (select secret from tasks where title = 'a1') where title = 'a2'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let moved: Encrypted = sqlx::query_scalar("select secret from tasks where title = 'a2'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let err = cipher
        .decrypt(&FieldContext::new(a, "tasks", "secret", "a2"), &moved)
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Authentication), "{err}");
    // A's ciphertext presented as B's (same table, column, row key, key id 1): refused.
    let err = cipher
        .decrypt(&FieldContext::new(b, "tasks", "secret", "a1"), &a1)
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Authentication), "{err}");
    assert_eq!(
        cipher
            .decrypt(&FieldContext::new(b, "tasks", "secret", "b1"), &b1)
            .await
            .unwrap(),
        b"alpha"
    );

    // Rotation: new writes use key 2, key-1 rows still decrypt (also in a fresh process), and the
    // re-encryption helper moves them.
    assert_eq!(cipher.rotate(a).await.unwrap(), 2);
    let fresh = FieldCipher::new(
        Arc::new(LocalKekProvider::new("kek-1", [3; 32])),
        Arc::new(PgKeyStore::new(pool.clone())),
    );
    let ctx = FieldContext::new(a, "tasks", "secret", "a1");
    assert_eq!(fresh.decrypt(&ctx, &a1).await.unwrap(), b"alpha");
    let re = fresh.reencrypt(&ctx, &a1).await.unwrap().unwrap();
    assert_eq!(re.key_id(), 2);
    assert_eq!(cipher.decrypt(&ctx, &re).await.unwrap(), b"alpha");

    // KEK rotation: rewrap A's two data keys under kek-2; then kek-1 is no longer needed.
    let rotated = FieldCipher::new(
        Arc::new(LocalKekProvider::new("kek-2", [4; 32]).with_previous("kek-1", [3; 32])),
        Arc::new(PgKeyStore::new(pool.clone())),
    );
    assert_eq!(rotated.rewrap_keys(a).await.unwrap(), 2);
    let only_new = FieldCipher::new(
        Arc::new(LocalKekProvider::new("kek-2", [4; 32])),
        Arc::new(PgKeyStore::new(pool.clone())),
    );
    assert_eq!(only_new.decrypt(&ctx, &a1).await.unwrap(), b"alpha");
    assert_eq!(only_new.decrypt(&ctx, &re).await.unwrap(), b"alpha");

    // A bytea that is not a ciphertext is refused at decode.
    let mut su = db.superuser().await;
    su.execute("update tasks set secret = '\\x0102'::bytea where title = 'b1'")
        .await
        .unwrap();
    let mut tx = pool.begin(b).await.unwrap();
    let bad = sqlx::query_scalar::<_, Encrypted>("select secret from tasks")
        .fetch_one(&mut *tx)
        .await;
    assert!(bad.is_err());
}
