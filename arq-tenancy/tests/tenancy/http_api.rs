//! PITFALLS 50 (404 through the API) and 54 through axum, plus commit/rollback by status,
//! subdomains, API keys bound to a tenant and the tenant in spawned tasks.

use arq_core::{CallerIdentity, Identity, TenantId};
use arq_tenancy::resolve::StaticSubdomains;
use arq_tenancy::tx::BeginMode;
use arq_tenancy::{Tenant, TenantLayer, TenantPool, TenantTx, TenantTxLayer, context};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use http::StatusCode;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::common::TestDb;

/// A user in several tenants, or an API key bound to one.
struct Caller {
    subject: String,
    tenants: Vec<TenantId>,
}

impl Identity for Caller {
    fn subject(&self) -> &str {
        &self.subject
    }
    fn home_tenant(&self) -> Option<TenantId> {
        self.tenants.first().copied()
    }
    fn is_member_of(&self, tenant: TenantId) -> bool {
        self.tenants.contains(&tenant)
    }
    fn roles(&self) -> &[String] {
        &[]
    }
}

/// Stand-in for arq-auth: `Authorization: Test <tenant>,<tenant>...` (verified by assumption).
async fn fake_auth(mut request: Request, next: Next) -> Response {
    let list = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Test "))
        .map(str::to_owned);
    if let Some(list) = list {
        let tenants = list.split(',').filter_map(|t| t.parse().ok()).collect();
        request.extensions_mut().insert(CallerIdentity::new(Caller {
            subject: "tester".into(),
            tenants,
        }));
    }
    next.run(request).await
}

#[derive(serde::Deserialize)]
struct NewTask {
    title: String,
    #[serde(default)]
    fail: bool,
}

async fn list(mut tx: TenantTx) -> Result<String, arq_tenancy::TxError> {
    let titles: Vec<String> = sqlx::query_scalar("select title from tasks order by id")
        .fetch_all(&mut *tx)
        .await?;
    Ok(titles.join(","))
}

async fn create(
    mut tx: TenantTx,
    Query(q): Query<NewTask>,
) -> Result<Response, arq_tenancy::TxError> {
    sqlx::query("insert into tasks (tenant_id, title) values ($1, $2)")
        .bind(tx.tenant().into_uuid())
        .bind(&q.title)
        .execute(&mut *tx)
        .await?;
    Ok(if q.fail {
        StatusCode::UNPROCESSABLE_ENTITY.into_response()
    } else {
        StatusCode::CREATED.into_response()
    })
}

async fn remove(mut tx: TenantTx, Path(id): Path<i64>) -> Result<StatusCode, arq_tenancy::TxError> {
    let n = sqlx::query("delete from tasks where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(if n == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn spawned(Tenant(t): Tenant) -> String {
    let seen = context::spawn(async { context::current() })
        .await
        .ok()
        .flatten();
    format!("{t} {}", seen.map(|s| s.to_string()).unwrap_or_default())
}

fn app(pool: TenantPool, layer: TenantLayer) -> Router {
    Router::new()
        .route("/tasks", get(list).post(create))
        .route("/tasks/{id}", delete(remove))
        .route("/spawned", get(spawned))
        .layer(TenantTxLayer::new(pool))
        .layer(layer)
        .layer(middleware::from_fn(fake_auth))
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
) -> (StatusCode, String) {
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn auth(tenants: &[TenantId]) -> (&'static str, String) {
    let list: Vec<String> = tenants.iter().map(ToString::to_string).collect();
    ("authorization", format!("Test {}", list.join(",")))
}

// 54: malformed header → 400 without touching the database (the pool points nowhere, so any
// SQL would be a 5xx); a header the identity does not agree with → 403.
#[tokio::test]
async fn p54_malformed_header_is_400_before_sql_and_disagreement_is_403() {
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect_lazy("postgres://arq_app:arq_app@127.0.0.1:1/none")
        .unwrap();
    let app = app(TenantPool::new(nowhere), TenantLayer::new());
    let (a, b) = (TenantId::generate(), TenantId::generate());
    for bad in [
        "' or 1=1 --",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "",
    ] {
        let (status, body) = call(
            &app,
            "GET",
            "/tasks",
            &[auth(&[a]), ("x-tenant-id", bad.into())],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert!(body.contains("X-Tenant-ID"), "{body}");
    }
    // Even unauthenticated, a malformed id is a 400 (parsed first); a valid one is 401.
    let (status, _) = call(&app, "GET", "/tasks", &[("x-tenant-id", "1;drop".into())]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&app, "GET", "/tasks", &[("x-tenant-id", a.to_string())]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Disagreeing with the identity: 403, and still no SQL.
    let (status, body) = call(
        &app,
        "GET",
        "/tasks",
        &[auth(&[a]), ("x-tenant-id", b.to_string())],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Sent twice: 400.
    let (status, _) = call(
        &app,
        "GET",
        "/tasks",
        &[
            auth(&[a]),
            ("x-tenant-id", a.to_string()),
            ("x-tenant-id", a.to_string()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // No tenant at all: 403.
    let (status, _) = call(&app, "GET", "/tasks", &[auth(&[])]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn api_commits_on_success_rolls_back_on_error_and_answers_404_for_other_tenants_rows() {
    let db = TestDb::new(2).await;
    let pool = db.pool(BeginMode::Folded);
    let app = app(pool.clone(), TenantLayer::new());
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let (s, _) = call(&app, "POST", "/tasks?title=a1", &[auth(&[a])]).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(&app, "POST", "/tasks?title=a2&fail=true", &[auth(&[a])]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = call(&app, "POST", "/tasks?title=b1", &[auth(&[b])]).await;
    assert_eq!(s, StatusCode::CREATED);
    // A member of both picks with the header; each sees exactly its own committed rows.
    let both = auth(&[a, b]);
    assert_eq!(
        call(&app, "GET", "/tasks", std::slice::from_ref(&both)).await,
        (StatusCode::OK, "a1".into())
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/tasks",
            &[both.clone(), ("x-tenant-id", b.to_string())]
        )
        .await,
        (StatusCode::OK, "b1".into())
    );
    // 50 through the API: B deleting A's row by id is a 404, and the row survives.
    let mut tx = pool.begin(a).await.unwrap();
    let a_id: i64 = sqlx::query_scalar("select id from tasks")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    let (s, _) = call(&app, "DELETE", &format!("/tasks/{a_id}"), &[auth(&[b])]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&app, "DELETE", &format!("/tasks/{a_id}"), &[auth(&[a])]).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&app, "GET", "/tasks", &[auth(&[a])]).await,
        (StatusCode::OK, String::new())
    );
}

#[tokio::test]
async fn subdomains_api_keys_and_spawned_tasks() {
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://x@127.0.0.1:1/none")
        .unwrap();
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let layer = TenantLayer::new().with_subdomains(
        StaticSubdomains::new("example.com")
            .with("acme", a)
            .with("globex", b),
    );
    let app = app(TenantPool::new(nowhere), layer);
    // The host selects the tenant; the identity must belong to it.
    let (s, body) = call(
        &app,
        "GET",
        "/spawned",
        &[auth(&[a, b]), ("host", "globex.example.com:8443".into())],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, format!("{b} {b}"), "spawned task keeps the tenant");
    let (s, _) = call(
        &app,
        "GET",
        "/spawned",
        &[auth(&[a]), ("host", "globex.example.com".into())],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Host and header disagree: 403.
    let (s, _) = call(
        &app,
        "GET",
        "/spawned",
        &[
            auth(&[a, b]),
            ("host", "acme.example.com".into()),
            ("x-tenant-id", b.to_string()),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Unknown subdomain: 404. Other hosts carry no selector.
    let (s, _) = call(
        &app,
        "GET",
        "/spawned",
        &[auth(&[a]), ("host", "initech.example.com".into())],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = call(
        &app,
        "GET",
        "/spawned",
        &[auth(&[a]), ("host", "api.other.org".into())],
    )
    .await;
    assert_eq!((s, body), (StatusCode::OK, format!("{a} {a}")));
    // An API key bound to tenant A (home tenant A, member of nothing else) cannot select B.
    let (s, _) = call(
        &app,
        "GET",
        "/spawned",
        &[auth(&[a]), ("x-tenant-id", b.to_string())],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tenant_tx_without_the_layers_is_a_500_not_an_unscoped_query() {
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://x@127.0.0.1:1/none")
        .unwrap();
    let bare = Router::new().route("/tasks", get(list));
    let (s, body) = call(&bare, "GET", "/tasks", &[]).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let no_tenant = Router::new()
        .route("/tasks", get(list))
        .layer(TenantTxLayer::new(TenantPool::new(nowhere)));
    let (s, _) = call(&no_tenant, "GET", "/tasks", &[]).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
}
