//! Reports: requested through the API, generated asynchronously by the `report.generate`
//! consumer, read back through the API.
//!
//! `POST /analytics/reports` writes the report row (`pending`) and a `report.generate` message
//! to the transactional outbox in the request's tenant transaction: a request that commits
//! always gets its job, one that rolls back never does. The relay publishes the message
//! ([`crate::queue`]); [`generate`] computes the counts ([`crate::daily::counts`]) in a
//! transaction of the message's tenant and marks the report `ready` (or `failed`, once the
//! attempts run out). Reading a report (and the list) runs in a read-only tenant transaction,
//! on the read replica when there is one.

use arq_auth::{RequirePermission, permission};
use arq_core::{IntoProblem, Problem};
use arq_queue::{Envelope, HandlerError, Job, Message, outbox};
use arq_tenancy::{Tenant, TenantId, TenantPool, TenantTx, TxError};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::AppState;
use crate::daily::{self, Counts};
use crate::range::{
    DayRange, body_problem, database, invalid, invalid_one, path_problem, query_problem,
};

permission!(pub ReadAnalytics = "read:analytics");

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Where a report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Requested; not computed yet.
    Pending,
    /// Computed: `result` holds the counts.
    Ready,
    /// Could not be computed (`error` says why); request it again.
    Failed,
}

impl Status {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A report as `GET /analytics/reports/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The report's id (a UUIDv7: ids sort by request time).
    pub id: Uuid,
    /// Where it stands.
    pub status: Status,
    /// The first day counted.
    pub from: NaiveDate,
    /// The last day counted (included).
    pub to: NaiveDate,
    /// The subject (token `sub`) that requested it.
    pub requested_by: String,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// When it became `ready` or `failed`.
    pub completed_at: Option<DateTime<Utc>>,
    /// The counts, once `ready`.
    pub result: Option<Counts>,
    /// Why it failed, once `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A report in the list: everything but its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSummary {
    /// The report's id.
    pub id: Uuid,
    /// Where it stands.
    pub status: Status,
    /// The first day counted.
    pub from: NaiveDate,
    /// The last day counted (included).
    pub to: NaiveDate,
    /// The subject that requested it.
    pub requested_by: String,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// When it became `ready` or `failed`.
    pub completed_at: Option<DateTime<Utc>>,
}

/// The body of `POST /analytics/reports`. Both fields are required; they are optional here so
/// that a missing one is reported with the other problems (400 naming the field).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    /// The first day, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// The last day (included), `YYYY-MM-DD`; at most 366 days after `from`, both included.
    pub to: Option<String>,
}

/// The query of `GET /analytics/reports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub after: Option<Uuid>,
}

/// One page of reports, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The reports.
    pub items: Vec<ReportSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

/// `report.generate`: compute report `report_id` of the envelope's tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateReport {
    /// The report to compute.
    pub report_id: Uuid,
}

impl Message for GenerateReport {
    const TYPE: &'static str = "report.generate";
}

macro_rules! columns {
    () => {
        "id, status, from_day, to_day, requested_by, requested_at, completed_at"
    };
}

fn summary(row: &PgRow) -> Result<ReportSummary, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(ReportSummary {
        id: row.try_get("id")?,
        status: Status::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".to_owned(),
            source: format!("unknown status {status:?}").into(),
        })?,
        from: row.try_get("from_day")?,
        to: row.try_get("to_day")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

fn report(row: &PgRow) -> Result<Report, sqlx::Error> {
    let s = summary(row)?;
    let result: Option<sqlx::types::Json<Counts>> = row.try_get("result")?;
    Ok(Report {
        id: s.id,
        status: s.status,
        from: s.from,
        to: s.to,
        requested_by: s.requested_by,
        requested_at: s.requested_at,
        completed_at: s.completed_at,
        result: result.map(|j| j.0),
        error: row.try_get("error")?,
    })
}

fn not_found(id: Uuid) -> Problem {
    Problem::not_found(format!(
        "no report {id} in your workspace; list yours with GET /analytics/reports"
    ))
}

/// `POST /analytics/reports` (read:analytics): 202 with the pending report and a relative
/// `Location` (`reports/{id}`, which resolves against the request URL both directly and
/// through the gateway's `/api/v1` prefix).
pub async fn create(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<ReadAnalytics>,
    mut tx: TenantTx,
    body: Result<Json<NewReport>, JsonRejection>,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<Report>), Problem> {
    let Json(new) = body.map_err(|e| body_problem(&e))?;
    let range = DayRange::parse(new.from.as_deref(), new.to.as_deref()).map_err(invalid)?;
    let row = sqlx::query(concat!(
        "INSERT INTO reports (tenant_id, id, from_day, to_day, requested_by) \
         VALUES (arq.current_tenant_id(), $1, $2, $3, $4) RETURNING ",
        columns!(),
        ", result, error"
    ))
    .bind(Uuid::now_v7())
    .bind(range.from)
    .bind(range.to)
    .bind(who.subject())
    .fetch_one(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let created = report(&row).map_err(|e| database(&e))?;
    // In the same transaction: the job exists if and only if the report does.
    let mut envelope = Envelope::new(GenerateReport {
        report_id: created.id,
    })
    .with_tenant(tx.tenant());
    if let Some(trace) = arq_core::telemetry::current_trace() {
        envelope = envelope.with_trace(trace);
    }
    outbox::enqueue(&mut tx, &state.exchange, GenerateReport::TYPE, &envelope)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let location = format!("reports/{}", created.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}

/// `GET /analytics/reports/{id}` (read:analytics), read on the replica when there is one. A
/// report the replica does not have yet (one requested a moment ago, not yet replicated) is
/// looked up on the primary before the answer is 404, so a client polling right after its
/// request never sees its report vanish.
pub async fn read(
    _: RequirePermission<ReadAnalytics>,
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Report>, Problem> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let mut tx = state
        .tenants
        .begin_read_only(tenant)
        .await
        .map_err(IntoProblem::into_problem)?;
    let mut found = fetch(&mut tx, id).await?;
    let on_replica = tx.on_replica();
    tx.commit().await.map_err(IntoProblem::into_problem)?;
    if found.is_none() && on_replica {
        let mut tx = state
            .tenants
            .begin(tenant)
            .await
            .map_err(IntoProblem::into_problem)?;
        found = fetch(&mut tx, id).await?;
        tx.commit().await.map_err(IntoProblem::into_problem)?;
    }
    found.map(Json).ok_or_else(|| not_found(id))
}

async fn fetch(tx: &mut TenantTx, id: Uuid) -> Result<Option<Report>, Problem> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        ", result, error FROM reports WHERE tenant_id = arq.current_tenant_id() AND id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| database(&e))?;
    row.as_ref()
        .map(report)
        .transpose()
        .map_err(|e| database(&e))
}

/// `GET /analytics/reports?limit=&after=` (read:analytics): newest first, keyset-paginated by
/// id, read on the replica when there is one.
pub async fn list(
    _: RequirePermission<ReadAnalytics>,
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(invalid_one(
            "limit",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let mut tx = state
        .tenants
        .begin_read_only(tenant)
        .await
        .map_err(IntoProblem::into_problem)?;
    // One row more than asked tells whether there is a next page.
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM reports WHERE tenant_id = arq.current_tenant_id() \
           AND ($1::uuid IS NULL OR id < $1) \
         ORDER BY id DESC LIMIT $2"
    ))
    .bind(q.after)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    tx.commit().await.map_err(IntoProblem::into_problem)?;
    let mut items = rows
        .iter()
        .map(summary)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| database(&e))?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(Page { items, next }))
}

/// Why computing a report failed.
#[derive(Debug, thiserror::Error)]
enum GenerateError {
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no report {0} in tenant {1}: the message names a report its tenant does not have")]
    Missing(Uuid, TenantId),
}

/// How one `report.generate` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// The report is now `ready`.
    Ready,
    /// It was not `pending` any more (a redelivery after it was computed): nothing changed.
    AlreadyDone,
}

async fn compute(tx: &mut TenantTx, id: Uuid) -> Result<Generated, GenerateError> {
    let tenant = tx.tenant();
    // FOR UPDATE: two deliveries of the same message (a redelivery racing the first) compute
    // one after the other, and the second finds the report done.
    let row: Option<(NaiveDate, NaiveDate, String)> = sqlx::query_as(
        "SELECT from_day, to_day, status FROM reports \
         WHERE tenant_id = arq.current_tenant_id() AND id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((from, to, status)) = row else {
        return Err(GenerateError::Missing(id, tenant));
    };
    if status != "pending" {
        return Ok(Generated::AlreadyDone);
    }
    let counts = daily::counts(tx, DayRange { from, to }).await?;
    sqlx::query(
        "UPDATE reports SET status = 'ready', result = $2, completed_at = now() \
         WHERE tenant_id = arq.current_tenant_id() AND id = $1",
    )
    .bind(id)
    .bind(sqlx::types::Json(counts))
    .execute(&mut *tx)
    .await?;
    Ok(Generated::Ready)
}

/// Handles one `report.generate`: computes the report in a transaction of the envelope's
/// tenant. A message without a tenant, or naming a report its tenant does not have, is
/// dead-lettered at once (no retry can fix it); a database failure is retried, and on the last
/// of `max_attempts` the report is marked `failed` before the message is dead-lettered, so
/// that a client polling it learns to request it again.
pub async fn generate(
    tenants: &TenantPool,
    job: &Job<GenerateReport>,
    max_attempts: u32,
) -> Result<Generated, HandlerError> {
    let id = job.payload.report_id;
    let Some(tenant) = job.tenant else {
        return Err(HandlerError::permanent(format!(
            "report.generate for report {id} has no tenant; publish it with the report's tenant \
             (POST /analytics/reports does)"
        )));
    };
    let outcome = tenants.run(tenant, |tx| Box::pin(compute(tx, id))).await;
    let error = match outcome {
        Ok(done) => return Ok(done),
        Err(e @ GenerateError::Missing(..)) => return Err(HandlerError::permanent(e)),
        Err(e) => e,
    };
    if job.attempt < max_attempts {
        return Err(HandlerError::retry(error));
    }
    tracing::error!(report = %id, attempt = job.attempt, %error, "report generation failed for good");
    let reason = format!(
        "the report could not be computed ({} attempt(s)); request it again",
        job.attempt
    );
    let marked = tenants
        .run(tenant, |tx| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE reports SET status = 'failed', error = $2, completed_at = now() \
                     WHERE tenant_id = arq.current_tenant_id() AND id = $1 AND status = 'pending'",
                )
                .bind(id)
                .bind(reason)
                .execute(&mut *tx)
                .await
                .map_err(GenerateError::from)
            })
        })
        .await;
    if let Err(e) = marked {
        tracing::error!(report = %id, error = %e, "marking the report failed did not work either");
    }
    Err(HandlerError::permanent(error))
}
