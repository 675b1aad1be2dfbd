//! Projects: create, read (with `If-None-Match`), update and delete (both with a required
//! `If-Match`), and a keyset-paginated list filtered by parent.
//!
//! Every handler runs in the request's tenant transaction, so row-level security confines it to
//! the caller's tenant (another tenant's project is a 404, never a 403); RBAC permissions guard
//! each route. Every change bumps `version`, appends the new version to the history
//! ([`crate::versions`]) and writes its event to the outbox ([`crate::events`]), all in the
//! same transaction.
//!
//! # Optimistic concurrency
//! `PATCH` and `DELETE` lock the project's row (`SELECT … FOR NO KEY UPDATE` / `FOR UPDATE`)
//! before they compare its version with `If-Match`. Two writers sending the same `If-Match`
//! therefore run one after the other: the second one's `SELECT … FOR …` waits for the first to
//! commit and then reads the row the first one wrote (READ COMMITTED re-reads a locked row's
//! newest version), so it sees the bumped version and answers 412. Exactly one of them wins.

use arq_auth::{RequirePermission, permission};
use arq_core::{FieldError, Problem};
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{ETAG, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::{AppState, etag, events, hierarchy};

permission!(pub ReadProjects = "read:projects");
permission!(pub WriteProjects = "write:projects");
permission!(pub ManageProjects = "manage:projects");

/// Longest name, in characters (the table checks it too).
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Largest `metadata` object, in bytes of its JSON text (the table checks a little more
/// generously, because PostgreSQL's `jsonb` text adds spaces).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// A project as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// The project's id (a UUIDv7: ids sort by creation time).
    pub id: Uuid,
    /// A one-line name.
    pub name: String,
    /// Free-form details, if any.
    pub description: Option<String>,
    /// The parent project; `None` for a top-level project.
    pub parent_id: Option<Uuid>,
    /// Free-form attributes (a JSON object).
    pub metadata: Map<String, Value>,
    /// 1 when created, +1 on every change; the ETag is this number in quotes.
    pub version: i64,
    /// The subject (token `sub`) that created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /projects/projects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1 to 200 characters once trimmed.
    pub name: String,
    /// At most 5000 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// A project of the same tenant; absent or `null` for a top-level project.
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// A JSON object of at most 16 KiB; `{}` when absent.
    #[serde(default, deserialize_with = "any_value")]
    pub metadata: Option<Value>,
}

/// The body of `PATCH /projects/projects/{id}`: the fields to change. `null` clears
/// `description` and makes the project top-level (`parent_id`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new description, or `null`.
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    /// A new parent, or `null` for top-level.
    #[serde(default, deserialize_with = "present")]
    pub parent_id: Option<Option<Uuid>>,
    /// A new metadata object, replacing the old one entirely (`{}` empties it).
    #[serde(default, deserialize_with = "any_value")]
    pub metadata: Option<Value>,
}

/// Tells "absent" (`None`, via `default`) from "null" (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Keeps a JSON `null` as `Some(Value::Null)` (plain `Option<Value>` would make it `None`), so
/// that validation can refuse it rather than silently ignore it.
fn any_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The query of `GET /projects/projects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub after: Option<Uuid>,
    /// Only the children of this project, or `root` for the top-level projects.
    pub parent_id: Option<String>,
}

/// One page of projects, in id (creation) order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The projects.
    pub items: Vec<Project>,
    /// Pass as `after` to get the next page; `null` on the last page.
    pub next: Option<Uuid>,
}

// The columns every query returns; one macro so that every query is a `&'static str` (sqlx takes
// only those without an explicit `AssertSqlSafe`).
macro_rules! columns {
    () => {
        "p.id, p.name, p.description, p.parent_id, p.metadata, p.version, p.created_by, \
         p.created_at, p.updated_at"
    };
}
pub(crate) use columns;

pub(crate) fn project(row: &PgRow) -> Result<Project, sqlx::Error> {
    let metadata: Value = row.try_get("metadata")?;
    let Value::Object(metadata) = metadata else {
        return Err(sqlx::Error::ColumnDecode {
            index: "metadata".to_owned(),
            source: "not a JSON object".into(),
        });
    };
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        parent_id: row.try_get("parent_id")?,
        metadata,
        version: row.try_get("version")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A failed request: a problem+json response, possibly with headers (the current `ETag` of a
/// 412). Every [`Problem`] converts into one, so handlers use `?` on either. Boxed: an error
/// path should not make every `Result` it travels in large.
#[derive(Debug)]
pub struct Failure(Box<Response>);

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Self(Box::new(p.into_response()))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A body that is not the expected JSON: 415 without a JSON content type, 400 when it does not
/// parse, 422 when it parses but has the wrong shape (unknown field, bad value, bad id).
pub(crate) fn body_problem(e: &JsonRejection) -> Problem {
    Problem::new(e.status()).with_detail(e.body_text())
}

/// A query string that does not fit the route's query is a validation failure (422).
pub(crate) fn query_problem(e: &QueryRejection) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(e.body_text())
}

/// A path whose ids are not UUIDs (or whose version is not a number) names nothing.
pub(crate) fn path_problem(e: &PathRejection) -> Problem {
    Problem::not_found(format!(
        "no such project ({}); project ids are UUIDs and versions are numbers",
        e.body_text()
    ))
}

pub(crate) fn database(e: &sqlx::Error) -> Problem {
    Problem::internal(e)
}

pub(crate) fn not_found(id: Uuid) -> Problem {
    Problem::not_found(format!("no project {id} in this workspace"))
}

/// The parent named by a request does not exist in the caller's tenant (a project of another
/// tenant does not exist for it either).
pub(crate) fn no_parent(id: Uuid) -> Problem {
    Problem::not_found(format!(
        "parent_id: no project {id} in this workspace to be the parent; list the workspace's projects with GET /projects/projects"
    ))
    .with_extension("field", "parent_id")
}

fn name(value: &str, errors: &mut Vec<FieldError>) -> String {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        errors.push(FieldError::new(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters, not counting surrounding spaces"),
        ));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "must not contain control characters (it is one line)".to_owned(),
        ));
    }
    value.to_owned()
}

fn description(value: &str, errors: &mut Vec<FieldError>) -> String {
    if value.chars().count() > MAX_DESCRIPTION_CHARS {
        errors.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    value.to_owned()
}

fn metadata(value: Value, errors: &mut Vec<FieldError>) -> Map<String, Value> {
    match value {
        Value::Object(map) => {
            let size = Value::Object(map.clone()).to_string().len();
            if size > MAX_METADATA_BYTES {
                errors.push(FieldError::new(
                    "metadata",
                    format!("is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are accepted"),
                ));
            }
            map
        }
        other => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            errors.push(FieldError::new(
                "metadata",
                format!("must be a JSON object (send {{}} for none), not {kind}"),
            ));
            Map::new()
        }
    }
}

/// The `If-Match` a change needs: 428 when absent, 400 when unreadable.
fn required_if_match(headers: &HeaderMap, what: &str) -> Result<etag::Condition, Failure> {
    match etag::if_match(headers) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(Problem::new(StatusCode::PRECONDITION_REQUIRED).with_detail(format!(
            "{what} needs an If-Match header: send the project's current ETag (the ETag header of GET /projects/projects/{{id}}, e.g. If-Match: \"3\"), so that you never overwrite a change you have not seen"
        )).into()),
        Err(e) => Err(Problem::bad_request(e.to_string()).into()),
    }
}

/// 412 when `condition` does not match `current`: the problem names the current version (also
/// as the `ETag` header) and what to do.
fn check_precondition(condition: &etag::Condition, current: &Project) -> Result<(), Failure> {
    if condition.matches_strong(current.version) {
        return Ok(());
    }
    let problem = Problem::new(StatusCode::PRECONDITION_FAILED)
        .with_detail(format!(
            "project {} is at version {}, but If-Match was {}: it changed since you read it. Read it again (GET returns the current version and ETag), reapply your change, and send If-Match: \"{}\"",
            current.id,
            current.version,
            condition.describe(),
            current.version
        ))
        .with_extension("current_version", current.version);
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(ETAG, etag::of(current.version));
    Err(Failure(Box::new(response)))
}

/// `project` as a JSON response with its `ETag`.
fn with_etag(status: StatusCode, project: &Project) -> Response {
    (status, [(ETAG, etag::of(project.version))], Json(project)).into_response()
}

/// Reads one project; `lock` takes the row lock that serializes changes to it: `FOR NO KEY
/// UPDATE` for an update (it does not block the key-share locks of children being inserted),
/// `FOR UPDATE` for a delete (it does).
pub(crate) async fn fetch(
    tx: &mut TenantTx,
    id: Uuid,
    lock: Option<Lock>,
) -> Result<Project, Problem> {
    let sql = match lock {
        None => concat!("SELECT ", columns!(), " FROM projects p WHERE p.id = $1"),
        Some(Lock::Update) => concat!(
            "SELECT ",
            columns!(),
            " FROM projects p WHERE p.id = $1 FOR NO KEY UPDATE"
        ),
        Some(Lock::Delete) => concat!(
            "SELECT ",
            columns!(),
            " FROM projects p WHERE p.id = $1 FOR UPDATE"
        ),
    };
    let row = sqlx::query(sql)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| database(&e))?;
    match row {
        Some(row) => project(&row).map_err(|e| database(&e)),
        None => Err(not_found(id)),
    }
}

/// Which row lock [`fetch`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// `FOR NO KEY UPDATE`.
    Update,
    /// `FOR UPDATE`.
    Delete,
}

/// Whether `id` names a project of the tenant.
pub(crate) async fn exists(tx: &mut TenantTx, id: Uuid) -> Result<bool, Problem> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projects WHERE id = $1)")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| database(&e))
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// `POST /projects/projects`: creates a project (version 1) created by the caller: 201 with its
/// `ETag` and `Location`, version 1 in the history and `project.created` in the outbox.
pub async fn create(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteProjects>,
    mut tx: TenantTx,
    body: Result<Json<NewProject>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(new) = body.map_err(|e| body_problem(&e))?;
    let mut errors = Vec::new();
    let name = name(&new.name, &mut errors);
    let description = new
        .description
        .as_deref()
        .map(|d| description(d, &mut errors));
    let metadata = new
        .metadata
        .map(|m| metadata(m, &mut errors))
        .unwrap_or_default();
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors).into());
    }
    if let Some(parent) = new.parent_id
        && !exists(&mut tx, parent).await?
    {
        return Err(no_parent(parent).into());
    }
    let row = sqlx::query(concat!(
        "WITH p AS (INSERT INTO projects (tenant_id, id, parent_id, name, description, metadata, \
           created_by) \
         VALUES (arq.current_tenant_id(), $1, $2, $3, $4, $5, $6) RETURNING *), \
         v AS (INSERT INTO project_versions (tenant_id, project_id, version, name, description, \
           parent_id, metadata, changed_by, changed_at) \
         SELECT tenant_id, id, version, name, description, parent_id, metadata, created_by, \
           created_at FROM p) \
         SELECT ",
        columns!(),
        " FROM p"
    ))
    .bind(Uuid::now_v7())
    .bind(new.parent_id)
    .bind(name)
    .bind(description)
    .bind(Value::Object(metadata))
    .bind(who.subject())
    .fetch_one(&mut tx)
    .await
    .map_err(|e| match (is_foreign_key_violation(&e), new.parent_id) {
        // The parent was deleted by a transaction that committed after the check above.
        (true, Some(parent)) => no_parent(parent),
        _ => database(&e),
    })?;
    let created = project(&row).map_err(|e| database(&e))?;
    events::project_created(&state, &mut tx, &created).await?;
    let mut response = with_etag(StatusCode::CREATED, &created);
    // Relative to the request's URI, so that it is right both behind the gateway
    // (/api/v1/projects/projects → /api/v1/projects/projects/{id}) and direct.
    if let Ok(location) = HeaderValue::from_str(&format!("projects/{}", created.id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// `GET /projects/projects?limit=&after=&parent_id=`: one page of the tenant's projects in
/// creation order, all of them or the children of `parent_id` (`root`: the top-level ones).
/// Keyset pagination: `next` is the last id of the page.
pub async fn list(
    _: RequirePermission<ReadProjects>,
    mut tx: TenantTx,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Failure> {
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(
            Problem::invalid_field("limit", format!("must be 1 to {MAX_PAGE_SIZE}")).into(),
        );
    }
    let (roots, parent) = match q.parent_id.as_deref() {
        None => (false, None),
        Some("root") => (true, None),
        Some(s) => match Uuid::parse_str(s) {
            Ok(id) => (false, Some(id)),
            Err(_) => {
                return Err(Problem::invalid_field(
                    "parent_id",
                    "must be a project id (a UUID) or `root` for the top-level projects",
                )
                .into());
            }
        },
    };
    // A parent that does not exist (in this tenant) is a 404, as everywhere else, rather than
    // an empty page that would look like "no children".
    if let Some(parent) = parent
        && !exists(&mut tx, parent).await?
    {
        return Err(not_found(parent).into());
    }
    // One row more than asked tells whether there is a next page.
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM projects p \
         WHERE ($1::uuid IS NULL OR p.id > $1) \
           AND (NOT $2 OR p.parent_id IS NULL) \
           AND ($3::uuid IS NULL OR p.parent_id = $3) \
         ORDER BY p.id LIMIT $4"
    ))
    .bind(q.after)
    .bind(roots)
    .bind(parent)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let mut items = rows
        .iter()
        .map(project)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| database(&e))?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|p| p.id)
    } else {
        None
    };
    Ok(Json(Page { items, next }))
}

/// `GET /projects/projects/{id}`: 200 with the `ETag`, or 304 (no body) when `If-None-Match`
/// names the current version.
pub async fn read(
    _: RequirePermission<ReadProjects>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let condition =
        etag::if_none_match(&headers).map_err(|e| Problem::bad_request(e.to_string()))?;
    let current = fetch(&mut tx, id, None).await?;
    if condition.is_some_and(|c| c.matches_weak(current.version)) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(ETAG, etag::of(current.version))],
        )
            .into_response());
    }
    Ok(with_etag(StatusCode::OK, &current))
}

/// `PATCH /projects/projects/{id}` with `If-Match`: changes the given fields (200 with the new
/// `ETag`), appends the new version to the history and writes `project.updated`. A patch that
/// changes nothing answers 200 with the project as it is (no new version). Moving (`parent_id`)
/// is checked against cycles race-safely ([`hierarchy`]).
pub async fn update(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteProjects>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<ProjectPatch>, JsonRejection>,
) -> Result<Response, Failure> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let condition = required_if_match(&headers, "PATCH")?;
    let Json(patch) = body.map_err(|e| body_problem(&e))?;
    let mut errors = Vec::new();
    let new_name = patch.name.as_deref().map(|n| name(n, &mut errors));
    let new_description = patch
        .description
        .as_ref()
        .map(|d| d.as_deref().map(|d| description(d, &mut errors)));
    let new_metadata = patch.metadata.map(|m| metadata(m, &mut errors));
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors).into());
    }
    let moving = patch.parent_id.is_some();
    if moving {
        // The hierarchy lock before any row lock (see the hierarchy module docs).
        hierarchy::lock(&mut tx).await.map_err(|e| database(&e))?;
    }
    let current = fetch(&mut tx, id, Some(Lock::Update)).await?;
    check_precondition(&condition, &current)?;

    let mut next = current.clone();
    if let Some(n) = new_name {
        next.name = n;
    }
    if let Some(d) = new_description {
        next.description = d;
    }
    if let Some(m) = new_metadata {
        next.metadata = m;
    }
    if let Some(p) = patch.parent_id {
        next.parent_id = p;
    }
    if next.parent_id != current.parent_id
        && let Some(parent) = next.parent_id
    {
        hierarchy::check_move(&mut tx, id, parent)
            .await
            .map_err(hierarchy::MoveError::into_problem)?;
    }
    let changed = changed_fields(&current, &next);
    if changed.is_empty() {
        return Ok(with_etag(StatusCode::OK, &current));
    }
    let row = sqlx::query(concat!(
        "WITH p AS (UPDATE projects SET name = $2, description = $3, parent_id = $4, \
           metadata = $5, version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING *), \
         v AS (INSERT INTO project_versions (tenant_id, project_id, version, name, description, \
           parent_id, metadata, changed_by, changed_at) \
         SELECT tenant_id, id, version, name, description, parent_id, metadata, $6, updated_at \
         FROM p) \
         SELECT ",
        columns!(),
        " FROM p"
    ))
    .bind(id)
    .bind(&next.name)
    .bind(&next.description)
    .bind(next.parent_id)
    .bind(Value::Object(next.metadata.clone()))
    .bind(who.subject())
    .fetch_one(&mut tx)
    .await
    .map_err(|e| match (is_foreign_key_violation(&e), next.parent_id) {
        // The new parent was deleted by a transaction that committed after the check.
        (true, Some(parent)) => no_parent(parent),
        _ => database(&e),
    })?;
    let updated = project(&row).map_err(|e| database(&e))?;
    events::project_updated(&state, &mut tx, &updated, &changed).await?;
    Ok(with_etag(StatusCode::OK, &updated))
}

/// The names of the fields that differ between `before` and `after`.
fn changed_fields(before: &Project, after: &Project) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("name", before.name != after.name);
    check("description", before.description != after.description);
    check("parent_id", before.parent_id != after.parent_id);
    check("metadata", before.metadata != after.metadata);
    changed
}

/// The query of `DELETE /projects/projects/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Also delete every descendant (default `false`: a project with children is refused).
    #[serde(default)]
    pub recursive: bool,
}

/// `DELETE /projects/projects/{id}?recursive=` with `If-Match` (needs manage:projects): deletes
/// the project and its history (204), and writes `project.deleted`. A project with children is
/// refused (409) unless `recursive=true`, which deletes the whole subtree (one
/// `project.deleted` per project, deepest first); `If-Match` is checked against the project
/// named in the path.
pub async fn delete(
    State(state): State<AppState>,
    _: RequirePermission<ManageProjects>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, Failure> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let condition = required_if_match(&headers, "DELETE")?;
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    if q.recursive {
        // No project may move into or out of the subtree while it is collected and deleted.
        hierarchy::lock(&mut tx).await.map_err(|e| database(&e))?;
    }
    let current = fetch(&mut tx, id, Some(Lock::Delete)).await?;
    check_precondition(&condition, &current)?;
    let doomed = if q.recursive {
        hierarchy::subtree_for_delete(&mut tx, id).await?
    } else {
        let children: i64 =
            sqlx::query_scalar("SELECT count(*) FROM projects WHERE parent_id = $1")
                .bind(id)
                .fetch_one(&mut tx)
                .await
                .map_err(|e| database(&e))?;
        if children > 0 {
            return Err(has_children(id, children).into());
        }
        vec![id]
    };
    sqlx::query("DELETE FROM projects WHERE id = ANY($1)")
        .bind(&doomed)
        .execute(&mut tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                // A child was added (committed) under one of them after they were collected.
                Problem::new(StatusCode::CONFLICT)
                    .with_detail(format!(
                        "a sub-project was just added under project {id} or one of its descendants; nothing was deleted: retry the request"
                    ))
            } else {
                database(&e)
            }
        })?;
    for gone in &doomed {
        events::project_deleted(&state, &mut tx, *gone).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn has_children(id: Uuid, children: i64) -> Problem {
    Problem::new(StatusCode::CONFLICT)
        .with_detail(format!(
            "project {id} has {children} sub-project(s): delete or move them first, or delete the whole subtree with ?recursive=true"
        ))
        .with_extension("children", children)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_null_from_absent() {
        let p: ProjectPatch = serde_json::from_str(r#"{"parent_id": null}"#).unwrap();
        assert_eq!(p.parent_id, Some(None));
        assert_eq!(p.description, None);
        let p: ProjectPatch = serde_json::from_str(r#"{"description": "d"}"#).unwrap();
        assert_eq!(p.description, Some(Some("d".to_owned())));
        assert_eq!(p.parent_id, None);
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        let mut errors = Vec::new();
        let m = metadata(serde_json::json!({"a": [1, 2]}), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(m.len(), 1);
        for bad in [
            serde_json::json!([1]),
            serde_json::json!("x"),
            serde_json::json!(null),
            serde_json::json!({"big": "x".repeat(MAX_METADATA_BYTES)}),
        ] {
            let mut errors = Vec::new();
            metadata(bad.clone(), &mut errors);
            assert_eq!(errors.len(), 1, "{bad}");
            assert_eq!(errors[0].field, "metadata");
        }
    }

    #[test]
    fn names_are_trimmed_single_lines() {
        let mut errors = Vec::new();
        assert_eq!(name("  Apollo ", &mut errors), "Apollo");
        assert!(errors.is_empty());
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_NAME_CHARS + 1)] {
            let mut errors = Vec::new();
            name(bad, &mut errors);
            assert_eq!(errors.len(), 1, "{bad:?}");
        }
    }
}
