//! The smallest arq service, shared by `main` and the tests (as in axum's `examples/testing`).

use arq_core::{Problem, TenantId};
use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// What `/hello/{tenant}` answers.
#[derive(Debug, Serialize)]
pub struct Greeting {
    /// The greeting text.
    pub message: String,
    /// The tenant it was addressed to, in canonical form.
    pub tenant: TenantId,
}

/// The service's routes.
pub fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello from arq\n" }))
        .route("/hello/{tenant}", get(hello_tenant))
}

async fn hello_tenant(Path(raw): Path<String>) -> Result<Json<Greeting>, Problem> {
    let tenant: TenantId = raw
        .parse()
        .map_err(|e: arq_core::ParseTenantIdError| Problem::bad_request(e.to_string()))?;
    Ok(Json(Greeting {
        message: format!("hello, tenant {tenant}"),
        tenant,
    }))
}
