//! Personal data at rest and the two indexes, against the real PostgreSQL: no plaintext e-mail
//! or phone in the table, the blind index separated per workspace, ciphertexts bound to their
//! row, data-key and KEK rotation, and EXPLAIN showing the e-mail and preferences lookups
//! answered by their indexes under row-level security. See `common/mod.rs` for the database
//! each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use arq_tenancy::TenantId;
use arq_tenancy::crypto::{Encrypted, LocalKekProvider};
use axum::http::StatusCode;
use common::{Api, Role, me, random_key, tenant, user};
use serde_json::json;
use sqlx::{AssertSqlSafe, Executor, PgPool};
use users::crypto::Crypto;
use users::profiles;
use uuid::Uuid;

/// Runs `sql` as arq_owner with `tenant` set (the owner is subject to the forced RLS too).
async fn as_owner_in<T>(
    pool: &PgPool,
    tenant: TenantId,
    f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> T,
) -> T {
    let mut tx = pool.begin().await.unwrap();
    tx.execute(AssertSqlSafe(format!(
        "SET LOCAL app.tenant_id = '{tenant}'"
    )))
    .await
    .unwrap();
    let out = f(&mut tx).await;
    tx.commit().await.unwrap();
    out
}

type RawRow = (Vec<u8>, Option<Vec<u8>>, Vec<u8>, String);

async fn raw_row(pool: &PgPool, tenant: TenantId, user: Uuid) -> RawRow {
    as_owner_in(pool, tenant, async |c| {
        sqlx::query_as(
            "SELECT email, phone, email_index, profiles::text FROM profiles WHERE user_id = $1",
        )
        .bind(user)
        .fetch_one(c)
        .await
        .unwrap()
    })
    .await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn contact_data_is_ciphertext_at_rest() {
    let api = Api::new().await;
    let t = tenant();
    let ada = Uuid::new_v4();
    api.put_me(
        &api.token(ada, t, "member"),
        json!({ "display_name": "Ada", "email": "Ada.Lovelace@Example.com", "phone": "+44 20 7946 0958" }),
    )
    .await;
    let owner = api.db.pool(Role::Owner, 1).await;
    let (email, phone, index, text) = raw_row(&owner, t, ada).await;
    let phone = phone.unwrap();
    for plain in [
        "Ada.Lovelace@Example.com",
        "ada.lovelace@example.com",
        "Lovelace",
        "+442079460958",
        "79460958",
    ] {
        for column in [&email, &phone, &index] {
            assert!(!contains(column, plain.as_bytes()), "{plain} in a column");
        }
        assert!(
            !text.to_lowercase().contains(&plain.to_lowercase()),
            "{plain} in {text}"
        );
    }
    // arq-tenancy's format: version 1, data key 1 (the workspace's first), nonce, tag.
    let sealed = Encrypted::from_bytes(email).unwrap();
    assert_eq!(sealed.key_id(), 1);
    assert_eq!(Encrypted::from_bytes(phone).unwrap().key_id(), 1);
    assert_eq!(index, api.crypto.email_index(t, "ada.lovelace@example.com"));
    // The data key is stored wrapped by the KEK, under the KEK's id.
    let (kek_id, wrapped): (String, Vec<u8>) = as_owner_in(&owner, t, async |c| {
        sqlx::query_as("SELECT kek_id, wrapped FROM arq.tenant_data_keys WHERE key_id = 1")
            .fetch_one(c)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(kek_id, "kek-1");
    assert_eq!(wrapped.len(), 12 + 32 + 16);
    // Without the tenant set the owner sees nothing at all.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_blind_index_differs_per_workspace_and_never_crosses_it() {
    let api = Api::new().await;
    let (a, b) = (tenant(), tenant());
    let (ada, bea) = (Uuid::new_v4(), Uuid::new_v4());
    api.put_me(
        &api.token(ada, a, "member"),
        json!({ "display_name": "Ada", "email": "shared@example.com" }),
    )
    .await;
    api.put_me(
        &api.token(bea, b, "member"),
        json!({ "display_name": "Bea", "email": "SHARED@example.com" }),
    )
    .await;
    let owner = api.db.pool(Role::Owner, 1).await;
    let (_, _, in_a, _) = raw_row(&owner, a, ada).await;
    let (_, _, in_b, _) = raw_row(&owner, b, bea).await;
    assert_ne!(
        in_a, in_b,
        "the same address must index differently per workspace"
    );
    assert_eq!(in_a, api.crypto.email_index(a, "shared@example.com"));
    assert_eq!(in_b, api.crypto.email_index(b, "shared@example.com"));
    // Each workspace finds only its own user.
    for (t, who) in [(a, ada), (b, bea)] {
        let (status, page) = api
            .call(
                "GET",
                &common::list("email=Shared%40Example.com"),
                Some(&api.token(Uuid::new_v4(), t, "manager")),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{page}");
        assert_eq!(items[0]["user_id"], who.to_string());
    }
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
    let api = Api::new().await;
    let t = tenant();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, name) in [(ada, "ada"), (bob, "bob")] {
        api.put_me(
            &api.token(id, t, "member"),
            json!({ "display_name": name, "email": format!("{name}@example.com") }),
        )
        .await;
    }
    // Someone with write access to the table copies Ada's sealed address into Bob's row.
    let owner = api.db.pool(Role::Owner, 1).await;
    as_owner_in(&owner, t, async |c| {
        sqlx::query(
            "UPDATE profiles SET email = (SELECT email FROM profiles WHERE user_id = $1) \
             WHERE user_id = $2",
        )
        .bind(ada)
        .bind(bob)
        .execute(c)
        .await
        .unwrap();
    })
    .await;
    // Bob's profile cannot be opened (the AEAD is bound to his row): a 500 with a fixed
    // message, never Ada's address.
    let (status, problem) = api
        .call("GET", &me(), Some(&api.token(bob, t, "member")), None)
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !problem.to_string().contains("ada@example.com"),
        "{problem}"
    );
    let (status, _) = api
        .call("GET", &me(), Some(&api.token(ada, t, "member")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn profiles_stay_readable_across_data_key_and_kek_rotation() {
    let api = Api::new().await;
    let t = tenant();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let ada_token = api.token(ada, t, "member");
    api.put_me(
        &ada_token,
        json!({ "display_name": "Ada", "email": "ada@example.com", "phone": "+15550100199" }),
    )
    .await;

    // `users rotate-data-key`: key 2 becomes current; Ada's fields stay under key 1.
    assert_eq!(api.crypto.cipher().rotate(t).await.unwrap(), 2);
    api.put_me(
        &api.token(bob, t, "member"),
        json!({ "display_name": "Bob", "email": "bob@example.com" }),
    )
    .await;
    let owner = api.db.pool(Role::Owner, 1).await;
    let key_of = |row: RawRow| Encrypted::from_bytes(row.0).unwrap().key_id();
    assert_eq!(key_of(raw_row(&owner, t, ada).await), 1);
    assert_eq!(key_of(raw_row(&owner, t, bob).await), 2);
    let (status, read) = api.call("GET", &me(), Some(&ada_token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["email"], "ada@example.com");
    assert_eq!(read["phone"], "+15550100199");

    // Another process (an empty key cache) reads both, and the lookup still finds Ada.
    let fresh = Crypto::new(
        LocalKekProvider::new("kek-1", api.kek),
        api.index_key,
        api.tenants.clone(),
    );
    let (email, _, _, _) = raw_row(&owner, t, ada).await;
    let sealed = Encrypted::from_bytes(email).unwrap();
    assert_eq!(
        fresh.open(t, "email", ada, &sealed).await.unwrap(),
        "ada@example.com"
    );

    // A KEK change: the new KEK with the old one kept, rewrap, then the old one can go.
    let new_kek = random_key();
    let both = Crypto::new(
        LocalKekProvider::new("kek-2", new_kek).with_previous("kek-1", api.kek),
        api.index_key,
        api.tenants.clone(),
    );
    assert_eq!(both.cipher().rewrap_keys(t).await.unwrap(), 2);
    let only_new = Crypto::new(
        LocalKekProvider::new("kek-2", new_kek),
        api.index_key,
        api.tenants.clone(),
    );
    assert_eq!(
        only_new.open(t, "email", ada, &sealed).await.unwrap(),
        "ada@example.com"
    );
    // The running service (its keys cached before the change) still serves Ada.
    let (status, _) = api.call("GET", &user(ada), Some(&ada_token), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn lookups_are_answered_by_their_indexes_under_row_level_security() {
    let api = Api::new().await;
    let tenants = [tenant(), tenant(), tenant()];
    let owner = api.db.pool(Role::Owner, 1).await;
    // 3 workspaces × 2 000 profiles; 1 in 100 prefers the dark theme. Contact columns hold
    // placeholder bytes: EXPLAIN never opens them.
    for t in tenants {
        as_owner_in(&owner, t, async |c| {
            sqlx::query(
                "INSERT INTO profiles (tenant_id, user_id, display_name, email, email_index, preferences) \
                 SELECT arq.current_tenant_id(), gen_random_uuid(), 'u' || i, '\\x01'::bytea, \
                        sha256(convert_to(i::text, 'UTF8')), \
                        jsonb_build_object('theme', CASE WHEN i % 100 = 0 THEN 'dark' ELSE 'light' END, 'n', i) \
                 FROM generate_series(1, 2000) i",
            )
            .execute(c)
            .await
            .unwrap();
        })
        .await;
    }
    owner.execute("ANALYZE profiles").await.unwrap();

    let t = tenants[1];
    let explain = async |sql: &str, bind: Option<serde_json::Value>, index: Option<Vec<u8>>| {
        let mut tx = api.tenants.begin(t).await.unwrap();
        // Sequential scans are priced out so that the plan shows which index CAN answer the
        // query; an index the planner may not use under RLS would still show a Seq Scan or a
        // Filter on the primary key.
        sqlx::raw_sql(
            "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        let sql = format!("EXPLAIN {sql}");
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
            .bind(None::<Uuid>)
            .bind(21_i64);
        if let Some(i) = index {
            q = q.bind(i);
        }
        if let Some(p) = bind {
            q = q.bind(p);
        }
        q.fetch_all(&mut *tx).await.unwrap().join("\n")
    };

    let plan = explain(
        profiles::LIST_BY_PREFERENCES_SQL,
        Some(json!({"theme": "dark"})),
        None,
    )
    .await;
    assert!(
        plan.contains("Bitmap Index Scan on profiles_preferences"),
        "{plan}"
    );
    assert!(plan.contains("arq_search.@>"), "{plan}");
    let index_cond = plan
        .lines()
        .find(|l| l.contains("Index Cond"))
        .unwrap_or_default();
    assert!(
        index_cond.contains("tenant_id") && index_cond.contains("arq_search.@>"),
        "both the tenant and the containment must be index conditions: {plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");

    let plan = explain(
        profiles::LIST_BY_EMAIL_SQL,
        None,
        Some(api.crypto.email_index(t, "x@example.com")),
    )
    .await;
    assert!(plan.contains("profiles_by_email"), "{plan}");
    assert!(plan.contains("email_index"), "{plan}");

    // The answers are the tenant's only: 20 dark-theme profiles of 6 000.
    let mut tx = api.tenants.begin(t).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM profiles WHERE preferences OPERATOR(arq_search.@>) '{\"theme\":\"dark\"}'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(n, 20);
}
