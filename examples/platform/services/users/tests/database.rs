//! Start-up refusals against the real PostgreSQL: the runtime pool `main` builds refuses a
//! database that does not isolate tenants, and the keys refuse to load unless both files are
//! usable and different. See `common/mod.rs` for the database each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::{Role, database};
use users as svc;
use users::crypto::{BLIND_INDEX_KEY_FILE_VAR, Crypto, EncryptionSettings, KEK_FILE_VAR};

#[tokio::test]
async fn the_runtime_pool_refuses_a_database_that_does_not_isolate_tenants() {
    let (db, _tenants) = database().await;
    // The administrator is a superuser: row level security does not apply to it.
    let admin_url = db.url(Role::Admin);
    let err = svc::connect_tenants(admin_url, &svc::DatabaseSettings { max_connections: 2 })
        .await
        .expect_err("a superuser's pool must not serve tenants");
    let message = format!("{err:#}");
    assert!(message.contains("refusing to start"), "{message}");
}

#[tokio::test]
async fn the_keys_load_only_from_two_usable_different_files() {
    let (_db, tenants) = database().await;
    let dir = std::env::temp_dir().join(format!("users-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    let (kek, index, bad) = (dir.join("kek"), dir.join("index"), dir.join("bad"));
    std::fs::write(&kek, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::write(&index, "cd".repeat(32)).unwrap();
    std::fs::write(&bad, "not a key").unwrap();
    let settings = |k: Option<&std::path::Path>, i: Option<&std::path::Path>| EncryptionSettings {
        kek_id: "kek-1".to_owned(),
        kek_file: k.map(Into::into),
        blind_index_key_file: i.map(Into::into),
        previous_keks: Vec::new(),
    };
    let refused = |s: EncryptionSettings| {
        Crypto::from_settings(&s, tenants.clone())
            .unwrap_err()
            .to_string()
    };
    let e = refused(settings(None, Some(&index)));
    assert!(
        e.contains(KEK_FILE_VAR) && e.contains("openssl rand -hex 32"),
        "{e}"
    );
    let e = refused(settings(Some(&kek), None));
    assert!(e.contains(BLIND_INDEX_KEY_FILE_VAR), "{e}");
    let e = refused(settings(Some(&kek), Some(&bad)));
    assert!(
        e.contains(BLIND_INDEX_KEY_FILE_VAR) && e.contains("64 hexadecimal"),
        "{e}"
    );
    let e = refused(settings(Some(&kek), Some(&kek)));
    assert!(e.contains("same key"), "{e}");
    let crypto =
        Crypto::from_settings(&settings(Some(&kek), Some(&index)), tenants.clone()).unwrap();
    let t = common::tenant();
    let sealed = crypto
        .seal(t, "email", uuid::Uuid::nil(), "a@example.com")
        .await
        .unwrap();
    assert_eq!(
        crypto
            .open(t, "email", uuid::Uuid::nil(), &sealed)
            .await
            .unwrap(),
        "a@example.com"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
