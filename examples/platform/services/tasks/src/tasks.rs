//! Tasks: create, read, update, delete and a filtered, keyset-paginated list.
//!
//! Every handler runs in the request's tenant transaction, so row-level security confines it to
//! the caller's tenant; RBAC permissions guard each route, and the CEL policy
//! (`policies/tasks.yaml`) decides who may change or delete an existing task. Every change
//! writes its events to the outbox in the same transaction ([`crate::events`]).

use std::fmt;

use arq_auth::cel::{Key, MapValue, Value};
use arq_auth::policy::{MapAttributes, NoAttributes};
use arq_auth::{Permission, Principal, RequirePermission, permission};
use arq_core::{FieldError, Problem};
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::AppState;
use crate::events;

permission!(pub ReadTasks = "read:tasks");
permission!(pub WriteTasks = "write:tasks");
permission!(pub ManageTasks = "manage:tasks");

/// Longest title, in characters (the table checks it too).
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Longest assignee subject, in characters.
pub const MAX_ASSIGNEE_CHARS: usize = 200;
/// Longest e-mail address, in characters (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Where a task stands. `done` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not started.
    Todo,
    /// Started.
    InProgress,
    /// Finished (final).
    Done,
    /// Abandoned (final).
    Cancelled,
}

impl Status {
    /// The name the API and the table use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Todo => "todo",
            Self::InProgress => "in_progress",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "todo" => Self::Todo,
            "in_progress" => Self::InProgress,
            "done" => Self::Done,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether no status change may leave this status.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Whenever.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Soon.
    High,
    /// Now.
    Urgent,
}

impl Priority {
    /// The name the API and the table use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "low" => Self::Low,
            "normal" => Self::Normal,
            "high" => Self::High,
            "urgent" => Self::Urgent,
            _ => return None,
        })
    }
}

/// A task as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The task's id (a UUIDv7: ids sort by creation time).
    pub id: Uuid,
    /// A one-line summary.
    pub title: String,
    /// Free-form details.
    pub description: String,
    /// Where it stands.
    pub status: Status,
    /// How urgent it is.
    pub priority: Priority,
    /// The subject (token `sub`) it is assigned to.
    pub assignee: Option<String>,
    /// Where the assignee is told about it.
    pub assignee_email: Option<String>,
    /// The subject that created it.
    pub created_by: String,
    /// When it should be done.
    pub due_at: Option<DateTime<Utc>>,
    /// It cannot start (move to `in_progress` or `done`) before this instant.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The tasks that must be done before this one can start or finish, in id order.
    pub depends_on: Vec<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /tasks/tasks`. New tasks start as `todo`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// 1 to 200 characters once trimmed.
    pub title: String,
    /// At most 5000 characters.
    #[serde(default)]
    pub description: String,
    /// Defaults to `normal`.
    #[serde(default)]
    pub priority: Priority,
    /// The assignee's subject.
    #[serde(default)]
    pub assignee: Option<String>,
    /// The assignee's e-mail address (needs `assignee`); they are mailed about the task.
    #[serde(default)]
    pub assignee_email: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// RFC 3339; not after `due_at`.
    #[serde(default)]
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// The body of `PATCH /tasks/tasks/{id}`: the fields to change. `null` clears an optional field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    /// A new title.
    pub title: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new status (see [`Status`] for which moves are allowed).
    pub status: Option<Status>,
    /// A new priority.
    pub priority: Option<Priority>,
    /// A new assignee, or `null` to unassign (which also clears `assignee_email`).
    #[serde(default, deserialize_with = "present")]
    pub assignee: Option<Option<String>>,
    /// A new e-mail address for the assignee, or `null`.
    #[serde(default, deserialize_with = "present")]
    pub assignee_email: Option<Option<String>>,
    /// A new due date, or `null`.
    #[serde(default, deserialize_with = "present")]
    pub due_at: Option<Option<DateTime<Utc>>>,
    /// A new start date, or `null`.
    #[serde(default, deserialize_with = "present")]
    pub scheduled_for: Option<Option<DateTime<Utc>>>,
}

/// Tells "absent" (`None`, via `default`) from "null" (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The query of `GET /tasks/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub after: Option<Uuid>,
    /// Only tasks with this status.
    pub status: Option<Status>,
    /// Only tasks assigned to this subject.
    pub assignee: Option<String>,
    /// Only tasks due strictly before this instant (RFC 3339).
    pub due_before: Option<DateTime<Utc>>,
}

/// One page of tasks, in id (creation) order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The tasks.
    pub items: Vec<Task>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

// The columns every query returns, `depends_on` included; one macro so that every query is a
// `&'static str` (sqlx takes only those without an explicit `AssertSqlSafe`).
macro_rules! columns {
    () => {
        "t.id, t.title, t.description, t.status, t.priority, t.assignee, t.assignee_email, \
         t.created_by, t.due_at, t.scheduled_for, t.created_at, t.updated_at, \
         ARRAY(SELECT d.depends_on_id FROM task_dependencies d \
               WHERE d.tenant_id = t.tenant_id AND d.task_id = t.id \
               ORDER BY d.depends_on_id) AS depends_on"
    };
}

pub(crate) fn task(row: &PgRow) -> Result<Task, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let priority: String = row.try_get("priority")?;
    let bad = |column: &str, value: &str| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown value {value:?}").into(),
    };
    Ok(Task {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        status: Status::parse(&status).ok_or_else(|| bad("status", &status))?,
        priority: Priority::parse(&priority).ok_or_else(|| bad("priority", &priority))?,
        assignee: row.try_get("assignee")?,
        assignee_email: row.try_get("assignee_email")?,
        created_by: row.try_get("created_by")?,
        due_at: row.try_get("due_at")?,
        scheduled_for: row.try_get("scheduled_for")?,
        depends_on: row.try_get("depends_on")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A body that is not the expected JSON: 415 without a JSON content type, 400 when it does not
/// parse, 422 when it parses but has the wrong shape (unknown field, bad value, bad date).
pub(crate) fn body_problem(e: &JsonRejection) -> Problem {
    Problem::new(e.status()).with_detail(e.body_text())
}

/// A query string that does not fit [`ListQuery`] is a validation failure (422).
pub(crate) fn query_problem(e: &QueryRejection) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(e.body_text())
}

/// A path whose ids are not UUIDs names no task.
pub(crate) fn path_problem(e: &PathRejection) -> Problem {
    Problem::not_found(format!(
        "no such task ({}); task ids are UUIDs",
        e.body_text()
    ))
}

pub(crate) fn database(e: &sqlx::Error) -> Problem {
    Problem::internal(e)
}

pub(crate) fn not_found(id: Uuid) -> Problem {
    Problem::not_found(format!("no task {id}"))
}

fn text(field: &'static str, value: &str, max: usize, errors: &mut Vec<FieldError>) -> String {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 || chars > max {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {max} characters, not counting surrounding spaces"),
        ));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "must not contain control characters".to_owned(),
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

/// A deliberately plain check (one `@`, a dotted domain, no spaces): the address is only ever
/// handed to the mailer, which is the real judge.
fn email(value: &str, errors: &mut Vec<FieldError>) -> String {
    let value = value.trim();
    let ok = value.chars().count() <= MAX_EMAIL_CHARS
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if !ok {
        errors.push(FieldError::new("assignee_email", format!(
                "must be an e-mail address like name@example.com, at most {MAX_EMAIL_CHARS} characters"
            )));
    }
    value.to_owned()
}

/// The checks that involve more than one field, on the task as it would be stored.
fn consistent(
    assignee: Option<&str>,
    assignee_email: Option<&str>,
    due_at: Option<DateTime<Utc>>,
    scheduled_for: Option<DateTime<Utc>>,
    errors: &mut Vec<FieldError>,
) {
    if assignee_email.is_some() && assignee.is_none() {
        errors.push(FieldError::new(
            "assignee_email",
            "needs an assignee: set `assignee` to the subject it belongs to".to_owned(),
        ));
    }
    if let (Some(due), Some(start)) = (due_at, scheduled_for)
        && start > due
    {
        errors.push(FieldError::new(
            "scheduled_for",
            format!(
                "must not be after due_at ({})",
                due.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        ));
    }
}

/// Whether the CEL policy lets `who` perform `action` on `task`; the error (for a 403) says why
/// not.
pub(crate) fn authorize(
    state: &AppState,
    who: &Principal,
    action: &str,
    task: &Task,
) -> Result<(), String> {
    let mut principal = MapValue::new();
    principal.insert(Key::String("id".into()), Value::string(who.subject()));
    principal.insert(
        Key::String("manages_tasks".into()),
        Value::Bool(who.has_permission(ManageTasks::NAME)),
    );
    let mut resource = MapValue::new();
    resource.insert(
        Key::String("created_by".into()),
        Value::string(task.created_by.as_str()),
    );
    resource.insert(
        Key::String("assignee".into()),
        Value::string(task.assignee.as_deref().unwrap_or("")),
    );
    // The ids name the principal and the task in the `arq::audit` decision log.
    let decision = state.policies.decide(
        &MapAttributes::new(principal).with_id(who.subject()),
        action,
        &MapAttributes::new(resource).with_id(task.id.to_string()),
        &NoAttributes,
    );
    if decision.allowed() {
        Ok(())
    } else {
        Err(format!(
            "{action} on task {} is not allowed: only its creator, its assignee (update only) or a holder of manage:tasks may ({})",
            task.id,
            decision.reason()
        ))
    }
}

/// Reads one task; `lock` takes the row lock that serializes changes to it (`FOR NO KEY UPDATE`:
/// it does not block the key-share locks of foreign-key checks, so adding a dependency *on* a
/// task being edited does not wait for the edit).
pub(crate) async fn fetch(tx: &mut TenantTx, id: Uuid, lock: bool) -> Result<Task, Problem> {
    let sql = if lock {
        concat!(
            "SELECT ",
            columns!(),
            " FROM tasks t WHERE t.id = $1 FOR NO KEY UPDATE OF t"
        )
    } else {
        concat!("SELECT ", columns!(), " FROM tasks t WHERE t.id = $1")
    };
    let row = sqlx::query(sql)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| database(&e))?;
    match row {
        Some(row) => task(&row).map_err(|e| database(&e)),
        None => Err(not_found(id)),
    }
}

/// `POST /tasks/tasks`: creates a `todo` task created by the caller (201), with its
/// `task.created` event (and `email.send` when it has an assignee e-mail) in the outbox.
pub async fn create(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteTasks>,
    mut tx: TenantTx,
    body: Result<Json<NewTask>, JsonRejection>,
) -> Result<(StatusCode, Json<Task>), Problem> {
    let Json(new) = body.map_err(|e| body_problem(&e))?;
    let mut errors = Vec::new();
    let title = text("title", &new.title, MAX_TITLE_CHARS, &mut errors);
    let description = description(&new.description, &mut errors);
    let assignee = new
        .assignee
        .as_deref()
        .map(|a| text("assignee", a, MAX_ASSIGNEE_CHARS, &mut errors));
    let assignee_email = new.assignee_email.as_deref().map(|e| email(e, &mut errors));
    consistent(
        assignee.as_deref(),
        assignee_email.as_deref(),
        new.due_at,
        new.scheduled_for,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let row = sqlx::query(concat!(
        "WITH t AS (INSERT INTO tasks (tenant_id, id, title, description, priority, assignee, \
           assignee_email, created_by, due_at, scheduled_for) \
         VALUES (arq.current_tenant_id(), $1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *) \
         SELECT ",
        columns!(),
        " FROM t"
    ))
    .bind(Uuid::now_v7())
    .bind(title)
    .bind(description)
    .bind(new.priority.as_str())
    .bind(assignee)
    .bind(assignee_email)
    .bind(who.subject())
    .bind(new.due_at)
    .bind(new.scheduled_for)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let created = task(&row).map_err(|e| database(&e))?;
    events::task_created(&state, &mut tx, &created).await?;
    if created.assignee_email.is_some() {
        events::email_assignee(&state, &mut tx, &created, &who).await?;
    }
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /tasks/tasks?limit=&after=&status=&assignee=&due_before=`: one page of the tenant's
/// tasks in creation order. Keyset pagination: `next` is the last id of the page.
pub async fn list(
    _: RequirePermission<ReadTasks>,
    mut tx: TenantTx,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(Problem::invalid_field(
            "limit",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    // One row more than asked tells whether there is a next page.
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM tasks t \
         WHERE ($1::uuid IS NULL OR t.id > $1) \
           AND ($2::text IS NULL OR t.status = $2) \
           AND ($3::text IS NULL OR t.assignee = $3) \
           AND ($4::timestamptz IS NULL OR t.due_at < $4) \
         ORDER BY t.id LIMIT $5"
    ))
    .bind(q.after)
    .bind(q.status.map(Status::as_str))
    .bind(q.assignee)
    .bind(q.due_before)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let mut items = rows
        .iter()
        .map(task)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| database(&e))?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|t| t.id)
    } else {
        None
    };
    Ok(Json(Page { items, next }))
}

/// `GET /tasks/tasks/{id}`.
pub async fn read(
    _: RequirePermission<ReadTasks>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Task>, Problem> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    fetch(&mut tx, id, false).await.map(Json)
}

/// The tasks `id` depends on that are not done yet, as `(id, title, status)`.
async fn blockers(tx: &mut TenantTx, id: Uuid) -> Result<Vec<(Uuid, String, String)>, Problem> {
    sqlx::query_as(
        "SELECT t.id, t.title, t.status FROM task_dependencies d \
         JOIN tasks t ON t.tenant_id = d.tenant_id AND t.id = d.depends_on_id \
         WHERE d.task_id = $1 AND t.status <> 'done' ORDER BY t.id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database(&e))
}

/// Whether `current` may move to `next` now; a 409 problem naming the reason otherwise.
async fn transition(
    tx: &mut TenantTx,
    current: &Task,
    next: Status,
    scheduled_for: Option<DateTime<Utc>>,
) -> Result<(), Problem> {
    if current.status.is_final() {
        return Err(Problem::new(StatusCode::CONFLICT).with_detail(format!(
            "task {} is {}; done and cancelled tasks are final, so its status cannot change (create a new task instead)",
            current.id, current.status
        )));
    }
    if !matches!(next, Status::InProgress | Status::Done) {
        return Ok(());
    }
    let now = Utc::now();
    if let Some(start) = scheduled_for
        && start > now
    {
        let start = start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        return Err(Problem::new(StatusCode::CONFLICT)
            .with_detail(format!(
                "task {} is scheduled for {start}; it cannot move to {next} before then (change scheduled_for to start it earlier)",
                current.id
            ))
            .with_extension("scheduled_for", start));
    }
    // The caller holds this task's row lock, and adding a dependency takes it too, so no
    // dependency can appear between this check and the commit; a dependency that is done stays
    // done (done is final).
    let blocking = blockers(tx, current.id).await?;
    if blocking.is_empty() {
        return Ok(());
    }
    let named = blocking
        .iter()
        .map(|(id, title, status)| format!("{id} ({title:?}, {status})"))
        .collect::<Vec<_>>()
        .join(", ");
    let list: Vec<serde_json::Value> = blocking
        .iter()
        .map(
            |(id, title, status)| serde_json::json!({ "id": id, "title": title, "status": status }),
        )
        .collect();
    Err(Problem::new(StatusCode::CONFLICT)
        .with_detail(format!(
            "task {} cannot move to {next}: it depends on tasks that are not done: {named}",
            current.id
        ))
        .with_extension("blocked_by", list))
}

/// `PATCH /tasks/tasks/{id}`: changes the given fields, if the policy allows; moving to
/// `in_progress` or `done` needs every dependency done and `scheduled_for` reached.
pub async fn update(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteTasks>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<TaskPatch>, JsonRejection>,
) -> Result<Json<Task>, Problem> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let Json(patch) = body.map_err(|e| body_problem(&e))?;
    let mut errors = Vec::new();
    let title = patch
        .title
        .as_deref()
        .map(|t| text("title", t, MAX_TITLE_CHARS, &mut errors));
    let new_description = patch
        .description
        .as_deref()
        .map(|d| description(d, &mut errors));
    let assignee = patch.assignee.as_ref().map(|a| {
        a.as_deref()
            .map(|a| text("assignee", a, MAX_ASSIGNEE_CHARS, &mut errors))
    });
    let assignee_email = patch
        .assignee_email
        .as_ref()
        .map(|e| e.as_deref().map(|e| email(e, &mut errors)));
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }

    let current = fetch(&mut tx, id, true).await?;
    authorize(&state, &who, "update:task", &current).map_err(Problem::forbidden)?;

    let mut next = current.clone();
    if let Some(t) = title {
        next.title = t;
    }
    if let Some(d) = new_description {
        next.description = d;
    }
    if let Some(p) = patch.priority {
        next.priority = p;
    }
    if let Some(a) = assignee {
        // A new assignee does not inherit the previous one's address.
        if a != current.assignee {
            next.assignee_email = None;
        }
        next.assignee = a;
    }
    if let Some(e) = assignee_email {
        next.assignee_email = e;
    }
    if let Some(d) = patch.due_at {
        next.due_at = d;
    }
    if let Some(s) = patch.scheduled_for {
        next.scheduled_for = s;
    }
    consistent(
        next.assignee.as_deref(),
        next.assignee_email.as_deref(),
        next.due_at,
        next.scheduled_for,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    if let Some(s) = patch.status
        && s != current.status
    {
        transition(&mut tx, &current, s, next.scheduled_for).await?;
        next.status = s;
    }

    let changed = changed_fields(&current, &next);
    if changed.is_empty() {
        return Ok(Json(current));
    }
    let row = sqlx::query(concat!(
        "WITH t AS (UPDATE tasks SET title = $2, description = $3, status = $4, priority = $5, \
           assignee = $6, assignee_email = $7, due_at = $8, scheduled_for = $9, \
           updated_at = now() \
         WHERE id = $1 RETURNING *) SELECT ",
        columns!(),
        " FROM t"
    ))
    .bind(id)
    .bind(&next.title)
    .bind(&next.description)
    .bind(next.status.as_str())
    .bind(next.priority.as_str())
    .bind(&next.assignee)
    .bind(&next.assignee_email)
    .bind(next.due_at)
    .bind(next.scheduled_for)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let updated = task(&row).map_err(|e| database(&e))?;
    events::task_updated(&state, &mut tx, &updated, &changed).await?;
    if updated.status == Status::Done && current.status != Status::Done {
        events::task_completed(&state, &mut tx, &updated).await?;
    }
    let reassigned = changed.contains(&"assignee") || changed.contains(&"assignee_email");
    if reassigned && updated.assignee_email.is_some() {
        events::email_assignee(&state, &mut tx, &updated, &who).await?;
    }
    Ok(Json(updated))
}

/// The names of the fields that differ between `before` and `after`.
fn changed_fields(before: &Task, after: &Task) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("title", before.title != after.title);
    check("description", before.description != after.description);
    check("status", before.status != after.status);
    check("priority", before.priority != after.priority);
    check("assignee", before.assignee != after.assignee);
    check(
        "assignee_email",
        before.assignee_email != after.assignee_email,
    );
    check("due_at", before.due_at != after.due_at);
    check("scheduled_for", before.scheduled_for != after.scheduled_for);
    changed
}

/// `DELETE /tasks/tasks/{id}`: deletes the task and its dependency links, if the policy
/// allows (204). Tasks that depended on it no longer do.
pub async fn delete(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteTasks>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let current = fetch(&mut tx, id, true).await?;
    authorize(&state, &who, "delete:task", &current).map_err(Problem::forbidden)?;
    sqlx::query("DELETE FROM tasks WHERE id = $1")
        .bind(id)
        .execute(&mut tx)
        .await
        .map_err(|e| database(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_are_checked_plainly() {
        for ok in ["a@example.com", "first.last+tag@sub.example.org"] {
            let mut errors = Vec::new();
            assert_eq!(email(ok, &mut errors), ok);
            assert!(errors.is_empty(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@example.",
        ] {
            let mut errors = Vec::new();
            email(bad, &mut errors);
            assert_eq!(errors.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn statuses_and_priorities_round_trip() {
        for s in [
            Status::Todo,
            Status::InProgress,
            Status::Done,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Urgent,
        ] {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
        assert!(Status::Done.is_final() && Status::Cancelled.is_final());
        assert!(!Status::Todo.is_final() && !Status::InProgress.is_final());
    }

    #[test]
    fn a_patch_tells_null_from_absent() {
        let p: TaskPatch = serde_json::from_str(r#"{"assignee": null}"#).unwrap();
        assert_eq!(p.assignee, Some(None));
        assert_eq!(p.due_at, None);
        let p: TaskPatch = serde_json::from_str(r#"{"assignee": "bob"}"#).unwrap();
        assert_eq!(p.assignee, Some(Some("bob".to_owned())));
    }
}
