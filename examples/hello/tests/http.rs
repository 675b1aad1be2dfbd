//! The hello example exercised through `oneshot`, without a socket.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use arq_example_hello::app;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(uri: &str) -> (StatusCode, String, Option<String>) {
    let response = app()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let ctype = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), ctype)
}

#[tokio::test]
async fn hello_answers() {
    let (status, body, _) = get("/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello from arq\n");
}

#[tokio::test]
async fn tenant_is_parsed_and_canonicalised() {
    let (status, body, _) = get("/hello/0196B5A4-5C8E-7D2E-9F3A-1B2C3D4E5F60").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tenant"], "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60");
}

#[tokio::test]
async fn bad_tenant_is_a_problem_not_a_panic() {
    let (status, body, ctype) = get("/hello/not-a-tenant").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ctype.as_deref(), Some("application/problem+json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 400);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("not a valid tenant id")
    );
}
