//! One HTTP error shape for every arq crate: RFC 9457 `application/problem+json`.
//!
//! Every rejection an arq layer or extractor produces turns into a [`Problem`]. Server errors
//! never carry internal error text: [`Problem::internal`] logs the cause and sends a fixed detail,
//! so a database message or a stack of `anyhow` context never reaches a client.

use std::borrow::Cow;
use std::fmt;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::RequestId;

/// The media type of a problem response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
///
/// `type` defaults to `about:blank`, in which case `title` is the status's reason phrase, as the
/// RFC asks. The request id of the current request (see [`RequestId::current`]) is added when the
/// response is built, so clients can quote it in a support request.
///
/// # Example
/// ```
/// use arq_core::Problem;
/// use axum::response::IntoResponse;
/// use http::StatusCode;
///
/// let problem = Problem::new(StatusCode::FORBIDDEN)
///     .with_detail("the permission write:project is required")
///     .with_extension("permission", "write:project");
/// let response = problem.into_response();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    type_uri: Cow<'static, str>,
    title: Cow<'static, str>,
    #[serde(serialize_with = "serialize_status")]
    status: StatusCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(rename = "request_id", skip_serializing_if = "Option::is_none")]
    request_id: Option<RequestId>,
    #[serde(flatten)]
    extensions: Map<String, Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

/// One invalid field of a request, for [`Problem::invalid_fields`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field: its JSON name or path (`title`, `items[2].name`) or query parameter.
    pub field: Cow<'static, str>,
    /// What is wrong with it, and what is accepted instead.
    pub message: String,
}

impl FieldError {
    /// `field` is wrong: `message` says how, and what is accepted.
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Field names the RFC and arq reserve; extensions may not shadow them.
const RESERVED: [&str; 6] = [
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "request_id",
];

impl Problem {
    /// A problem with `type: about:blank` and the status's reason phrase as title.
    pub fn new(status: StatusCode) -> Self {
        Self {
            type_uri: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            status,
            detail: None,
            instance: None,
            request_id: None,
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }

    /// 422 listing every invalid field of a request at once, so a client fixes them in one
    /// round: the detail joins them (`title: is empty; due_at: is not a date`), and the
    /// `errors` extension lists them as `{"field", "message"}` objects for programs.
    ///
    /// ```
    /// use arq_core::{FieldError, Problem};
    ///
    /// let p = Problem::invalid_fields(vec![
    ///     FieldError::new("title", "is empty; give 1 to 200 characters"),
    ///     FieldError::new("due_at", "is not an RFC 3339 date-time"),
    /// ]);
    /// assert_eq!(p.status().as_u16(), 422);
    /// assert_eq!(p.detail(), Some("title: is empty; give 1 to 200 characters; due_at: is not an RFC 3339 date-time"));
    /// assert_eq!(p.extensions()["errors"][1]["field"], "due_at");
    /// ```
    pub fn invalid_fields(errors: impl IntoIterator<Item = FieldError>) -> Self {
        let errors: Vec<FieldError> = errors.into_iter().collect();
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let list: Vec<Value> = errors
            .iter()
            .map(|e| serde_json::json!({ "field": e.field, "message": e.message }))
            .collect();
        Self::new(StatusCode::UNPROCESSABLE_ENTITY)
            .with_detail(detail)
            .with_extension("errors", list)
    }

    /// [`invalid_fields`](Self::invalid_fields) with one field.
    pub fn invalid_field(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::invalid_fields([FieldError::new(field, message)])
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST).with_detail(detail)
    }

    /// 401: no valid credentials. Adds nothing that would tell an attacker which check failed
    /// beyond `detail`, which the caller chooses.
    pub fn unauthorized(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED).with_detail(detail)
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN).with_detail(detail)
    }

    /// 404: no such resource (also what another tenant's resource looks like).
    pub fn not_found(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND).with_detail(detail)
    }

    /// 429 with the number of seconds to wait, sent as `Retry-After` (at least 1).
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS)
            .with_detail("rate limit exceeded; retry after the time given in Retry-After")
            .with_retry_after(retry_after_secs)
    }

    /// 503 with the number of seconds to wait, sent as `Retry-After` (at least 1).
    pub fn service_unavailable(retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_detail("a dependency is unavailable; retry after the time given in Retry-After")
            .with_retry_after(retry_after_secs)
    }

    /// 500 for an internal failure. The error is logged with the request id; the client sees a
    /// fixed message and never the error's text.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %DisplayChain(error), "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR)
            .with_detail("an internal error occurred; quote the request id when reporting it")
    }

    /// Sets the `type` URI that identifies the kind of problem.
    pub fn with_type(mut self, type_uri: impl Into<Cow<'static, str>>) -> Self {
        self.type_uri = type_uri.into();
        self
    }

    /// Sets the short, human-readable summary of the kind of problem.
    pub fn with_title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the explanation specific to this occurrence.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the URI reference of this occurrence (usually the request path).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets the request id explicitly (otherwise the current request's id is used).
    pub fn with_request_id(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    /// Adds an extension member. Names reserved by the RFC or by arq are ignored rather than
    /// allowed to overwrite the standard members.
    pub fn with_extension(mut self, name: &str, value: impl Into<Value>) -> Self {
        if !RESERVED.contains(&name) {
            self.extensions.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Sets `Retry-After` in seconds; 0 is sent as 1 so clients never retry in a tight loop.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `title` member.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The `detail` member.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The `type` member.
    pub fn type_uri(&self) -> &str {
        &self.type_uri
    }

    /// The extension members.
    pub fn extensions(&self) -> &Map<String, Value> {
        &self.extensions
    }

    /// The `Retry-After` value in seconds, if any.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl IntoResponse for Problem {
    fn into_response(mut self) -> Response {
        if self.request_id.is_none() {
            self.request_id = RequestId::current();
        }
        // Serializing a struct of strings and numbers cannot fail; an empty object is still a
        // valid (if unhelpful) problem document should it ever happen.
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Something that can be answered with a [`Problem`]: the trait every arq rejection implements.
pub trait IntoProblem {
    /// The problem to answer with.
    fn into_problem(self) -> Problem;
}

impl IntoProblem for Problem {
    fn into_problem(self) -> Problem {
        self
    }
}

/// Formats an error and its `source()` chain on one line, for logs.
pub(crate) struct DisplayChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn renders_rfc9457_members() {
        let p = Problem::not_found("no task 7")
            .with_instance("/tasks/7")
            .with_extension("resource", "task");
        let r = p.into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let v = body_json(r).await;
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["detail"], "no task 7");
        assert_eq!(v["instance"], "/tasks/7");
        assert_eq!(v["resource"], "task");
        assert!(v.get("request_id").is_none());
    }

    #[tokio::test]
    async fn carries_the_current_request_id() {
        let id: RequestId = "req-abc".parse().unwrap();
        let r = id
            .scope(async { Problem::bad_request("bad").into_response() })
            .await;
        assert_eq!(body_json(r).await["request_id"], "req-abc");
    }

    #[tokio::test]
    async fn internal_errors_never_leak_their_text() {
        #[derive(Debug, thiserror::Error)]
        #[error("connection to 10.0.0.5:5432 refused: password authentication failed for user app")]
        struct Secret;
        let r = Problem::internal(&Secret).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body_json(r).await.to_string();
        assert!(!text.contains("10.0.0.5"));
        assert!(!text.contains("password"));
        assert!(text.contains("internal error"));
    }

    #[tokio::test]
    async fn retry_after_is_at_least_one_second() {
        let r = Problem::too_many_requests(0).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = Problem::service_unavailable(30).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
    }

    #[tokio::test]
    async fn extensions_cannot_shadow_standard_members() {
        let p = Problem::forbidden("no")
            .with_extension("status", 200)
            .with_extension("type", "x");
        let v = body_json(p.into_response()).await;
        assert_eq!(v["status"], 403);
        assert_eq!(v["type"], "about:blank");
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(
            Problem::forbidden("missing write:project").to_string(),
            "403 Forbidden: missing write:project"
        );
    }
}
