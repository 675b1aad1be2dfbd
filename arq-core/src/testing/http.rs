//! Calling an API in-process, the way its tests do: one request through a `tower::Service`
//! (an axum [`Router`](axum::Router), an [`EdgeService`](crate::edge::EdgeService), ...) with
//! `oneshot`, no socket, JSON in and out.

use std::fmt::{Debug, Display};

use axum::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;
use tower::{Service, ServiceExt};

/// Sends requests to a service in-process and reads the answers as JSON.
///
/// Every request goes through a clone of the service with `oneshot`, so a client can be shared
/// by the whole test and used from several tasks at once (cloning an axum `Router` is cheap).
/// Failures of the harness itself (an invalid header, a service error, a body that cannot be
/// read) panic with a message: these are test helpers, and a panic fails the test that used them.
///
/// # Example
/// ```
/// use arq_core::testing::TestClient;
/// use axum::http::StatusCode;
/// use axum::{Json, Router, routing::post};
/// use serde_json::{Value, json};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let app = Router::new().route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }));
/// let client = TestClient::new(app);
///
/// // The common case: method, URI, optional bearer token, optional JSON body.
/// let (status, body) = client.call("POST", "/echo", None, Some(json!({ "a": 1 }))).await;
/// assert_eq!(status, StatusCode::OK);
/// assert_eq!(body, json!({ "a": 1 }));
///
/// // Anything else through the builder: headers in, headers out.
/// let response = client
///     .request("POST", "/echo")
///     .bearer("a-token")
///     .header("if-match", "\"3\"")
///     .json(&json!([1, 2]))
///     .send()
///     .await;
/// assert_eq!(response.status, StatusCode::OK);
/// assert_eq!(response.header("content-type"), Some("application/json"));
/// assert_eq!(response.body, json!([1, 2]));
///
/// // A route that does not exist: axum answers 404 with an empty body (`Null`).
/// let (status, body) = client.call("GET", "/nope", None, None).await;
/// assert_eq!((status, body), (StatusCode::NOT_FOUND, Value::Null));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct TestClient<S> {
    service: S,
}

impl<S, B> TestClient<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Display,
{
    /// A client of `service`.
    pub fn new(service: S) -> Self {
        Self { service }
    }

    /// The service the requests go to.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// A request to build: headers, token and body, then [`TestRequest::send`].
    ///
    /// # Panics
    /// When `method` is not an HTTP method (checked here, not at `send`, so the panic points at
    /// the call that built it).
    pub fn request(&self, method: &str, uri: impl Into<String>) -> TestRequest<'_, S> {
        let method = Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("{method:?} is not an HTTP method: {e}"));
        TestRequest {
            client: self,
            method,
            uri: uri.into(),
            headers: HeaderMap::new(),
            body: None,
        }
    }

    /// `method uri` with `Authorization: Bearer token` when there is a token and `body` as JSON
    /// when there is one; the status and the body ([`TestResponse::body`]).
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, uri).bearer(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.into()
    }
}

/// One request being built by [`TestClient::request`].
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct TestRequest<'c, S> {
    client: &'c TestClient<S>,
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Option<(HeaderValue, Bytes)>,
}

impl<S, B> TestRequest<'_, S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Display,
{
    /// Adds `Authorization: Bearer token`; `None` sends no `Authorization` header, so a test can
    /// pass an `Option<&str>` straight through.
    pub fn bearer<'t>(self, token: impl Into<Option<&'t str>>) -> Self {
        match token.into() {
            Some(token) => self.header(AUTHORIZATION.as_str(), &format!("Bearer {token}")),
            None => self,
        }
    }

    /// Adds a header (a second one with the same name is added, not replaced).
    ///
    /// # Panics
    /// When the name or the value is not valid in a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("{name:?} is not a header name: {e}"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("{value:?} is not a valid value of {name}: {e}"));
        self.headers.append(name, value);
        self
    }

    /// Sends `body` serialized as JSON, with `Content-Type: application/json`.
    ///
    /// # Panics
    /// When `body` cannot be serialized (a map with non-string keys, a failing `Serialize`).
    pub fn json(self, body: &(impl Serialize + ?Sized)) -> Self {
        let bytes = serde_json::to_vec(body)
            .unwrap_or_else(|e| panic!("the request body cannot be serialized as JSON: {e}"));
        self.body("application/json", bytes)
    }

    /// Sends `fields` as an `application/x-www-form-urlencoded` body (an OAuth token request,
    /// an HTML form), each name and value percent-encoded.
    pub fn form(self, fields: &[(&str, &str)]) -> Self {
        let body = fields
            .iter()
            .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        self.body("application/x-www-form-urlencoded", body)
    }

    /// Sends `body` as it is, with `content_type`.
    ///
    /// # Panics
    /// When `content_type` is not a valid header value.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        let content_type = HeaderValue::from_str(content_type)
            .unwrap_or_else(|e| panic!("{content_type:?} is not a valid content type: {e}"));
        self.body = Some((content_type, body.into()));
        self
    }

    /// Sends the request through a clone of the service and reads the whole answer.
    ///
    /// # Panics
    /// When the URI is invalid, the service fails (axum routers never do) or the response body
    /// cannot be read.
    pub async fn send(self) -> TestResponse {
        let mut builder = Request::builder().method(self.method).uri(&self.uri);
        if let Some(headers) = builder.headers_mut() {
            *headers = self.headers;
        }
        let request = match self.body {
            Some((content_type, bytes)) => builder
                .header(CONTENT_TYPE, content_type)
                .body(Body::from(bytes)),
            None => builder.body(Body::empty()),
        }
        .unwrap_or_else(|e| panic!("cannot build a request to {:?}: {e}", self.uri));
        let response = self
            .client
            .service
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("the service failed on {:?}: {e:?}", self.uri));
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("the body of the answer to {:?} broke off: {e}", self.uri))
            .to_bytes();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: parse_body(&bytes),
        }
    }
}

/// What [`TestRequest::send`] read back.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TestResponse {
    /// The status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body: its JSON when it parses as JSON (problem+json included), else its text as a
    /// JSON string (non-UTF-8 bytes replaced), `Null` when it is empty.
    pub body: Value,
}

impl TestResponse {
    /// The value of header `name` when it is present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text: the string itself when the body was not JSON, else the JSON.
    pub fn text(&self) -> String {
        match &self.body {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

impl From<TestResponse> for (StatusCode, Value) {
    fn from(r: TestResponse) -> Self {
        (r.status, r.body)
    }
}

impl From<TestResponse> for (StatusCode, HeaderMap, Value) {
    fn from(r: TestResponse) -> Self {
        (r.status, r.headers, r.body)
    }
}

/// The body as JSON, else as text, `Null` when empty.
fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `application/x-www-form-urlencoded` encoding of one name or value: unreserved characters as
/// they are, everything else (space included) as `%XX`, which every form parser accepts.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::json;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route(
                "/echo",
                post(|headers: HeaderMap, Json(v): Json<Value>| async move {
                    let auth = headers
                        .get(AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_owned());
                    Json(json!({ "auth": auth, "body": v }))
                }),
            )
            .route(
                "/headers",
                get(|headers: HeaderMap| async move {
                    let tags: Vec<String> = headers
                        .get_all("if-match")
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect();
                    ([("etag", "\"7\"")], Json(json!({ "if-match": tags })))
                }),
            )
            .route("/text", get(|| async { "plain words" }))
            .route("/bytes", get(|| async { Bytes::from_static(b"\xff\xfe") }))
            .route(
                "/form",
                post(|headers: HeaderMap, body: String| async move {
                    let content_type = headers[CONTENT_TYPE].to_str().unwrap().to_owned();
                    Json(json!([content_type, body]))
                }),
            )
            .route("/status", get(|| async { (StatusCode::NO_CONTENT, "") }))
    }

    #[tokio::test]
    async fn call_sends_the_token_and_the_json_body() {
        let client = TestClient::new(app());
        let (status, body) = client
            .call("POST", "/echo", Some("t0k"), Some(json!({ "x": [1] })))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "auth": "Bearer t0k", "body": { "x": [1] } }));
        let (_, body) = client.call("POST", "/echo", None, Some(json!(null))).await;
        assert_eq!(
            body["auth"],
            Value::Null,
            "no token, no Authorization header"
        );
    }

    #[tokio::test]
    async fn without_a_body_there_is_no_content_type() {
        // axum's Json extractor refuses a request without `Content-Type: application/json`.
        let client = TestClient::new(app());
        let (status, body) = client.call("POST", "/echo", None, None).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body.as_str().unwrap().contains("Content-Type"), "{body}");
    }

    #[tokio::test]
    async fn headers_go_out_repeated_and_come_back() {
        let client = TestClient::new(app());
        let response = client
            .request("GET", "/headers")
            .header("If-Match", "\"1\"")
            .header("if-match", "\"2\"")
            .send()
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("etag"), Some("\"7\""));
        assert_eq!(response.header("x-missing"), None);
        assert_eq!(response.body, json!({ "if-match": ["\"1\"", "\"2\""] }));
        let (status, headers, _) = response.into();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["etag"], "\"7\"");
    }

    #[tokio::test]
    async fn text_empty_and_binary_bodies() {
        let client = TestClient::new(app());
        let r = client.request("GET", "/text").send().await;
        assert_eq!(r.body, json!("plain words"));
        assert_eq!(r.text(), "plain words");
        let r = client.request("GET", "/status").send().await;
        assert_eq!((r.status, &r.body), (StatusCode::NO_CONTENT, &Value::Null));
        assert_eq!(r.text(), "");
        let r = client.request("GET", "/bytes").send().await;
        assert_eq!(r.body, json!("\u{fffd}\u{fffd}"));
        let r = client
            .request("POST", "/echo")
            .json(&json!({ "k": 1 }))
            .send()
            .await;
        assert_eq!(r.text(), r#"{"auth":null,"body":{"k":1}}"#);
    }

    #[tokio::test]
    async fn forms_are_percent_encoded() {
        let client = TestClient::new(app());
        let r = client
            .request("POST", "/form")
            .form(&[("grant_type", "password"), ("pass word", "a&b=c d/é")])
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(
            r.body,
            json!([
                "application/x-www-form-urlencoded",
                "grant_type=password&pass%20word=a%26b%3Dc%20d%2F%C3%A9"
            ])
        );
    }

    #[tokio::test]
    async fn raw_bodies_keep_their_content_type() {
        let client = TestClient::new(app());
        let r = client
            .request("POST", "/echo")
            .body("text/plain", "{}")
            .send()
            .await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let r = client
            .request("POST", "/echo")
            .body("application/json", r#"{"raw":true}"#)
            .send()
            .await;
        assert_eq!(r.body["body"], json!({ "raw": true }));
    }

    #[tokio::test]
    async fn clients_are_shared_across_tasks() {
        let client = std::sync::Arc::new(TestClient::new(app()));
        let calls = (0..8).map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client.call("POST", "/echo", None, Some(json!(i))).await.1["body"].clone()
            })
        });
        for (i, call) in calls.enumerate() {
            assert_eq!(call.await.unwrap(), json!(i));
        }
    }

    #[test]
    #[should_panic(expected = "is not an HTTP method")]
    fn a_bad_method_panics_naming_it() {
        let client = TestClient::new(app());
        let _ = client.request("GE T", "/");
    }

    #[test]
    #[should_panic(expected = "is not a valid value of if-match")]
    fn a_bad_header_value_panics_naming_the_header() {
        let client = TestClient::new(app());
        let _ = client.request("GET", "/").header("if-match", "a\nb");
    }

    #[tokio::test]
    #[should_panic(expected = "cannot build a request to \"not a uri\"")]
    async fn a_bad_uri_panics_naming_it() {
        let client = TestClient::new(app());
        let _ = client.request("GET", "not a uri").send().await;
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(form_encode("a b&c=d+é"), "a%20b%26c%3Dd%2B%C3%A9");
    }
}
