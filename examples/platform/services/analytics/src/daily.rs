//! `GET /analytics/daily?from=&to=`: the raw daily counts of the caller's tenant, and the
//! aggregation that reports store ([`counts`]).

use std::collections::BTreeMap;

use arq_auth::RequirePermission;
use arq_core::{IntoProblem, Problem};
use arq_tenancy::{Tenant, TenantTx};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::range::{DayRange, database, invalid, query_problem};
use crate::reports::ReadAnalytics;

/// The counts of one day, by event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    /// The day (UTC).
    pub day: NaiveDate,
    /// Events of each type that day (types with no event are absent).
    pub counts: BTreeMap<String, i64>,
}

/// The counts of a range of days: what a ready report's `result` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events of each type over the whole range.
    pub totals: BTreeMap<String, i64>,
    /// The days that had events, oldest first (days without any are absent).
    pub days: Vec<Day>,
}

/// The counts of the tenant of `tx` over `range`, read in `tx`.
pub async fn counts(tx: &mut TenantTx, range: DayRange) -> Result<Counts, sqlx::Error> {
    // `tenant_id = arq.current_tenant_id()` repeats what row-level security enforces, so the
    // planner scans the (tenant_id, day, event_type) key instead of filtering a wider scan.
    let rows: Vec<(NaiveDate, String, i64)> = sqlx::query_as(
        "SELECT day, event_type, count FROM daily_event_counts \
         WHERE tenant_id = arq.current_tenant_id() AND day BETWEEN $1 AND $2 \
         ORDER BY day, event_type",
    )
    .bind(range.from)
    .bind(range.to)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Counts::default();
    for (day, event_type, count) in rows {
        *out.totals.entry(event_type.clone()).or_default() += count;
        match out.days.last_mut() {
            Some(last) if last.day == day => {
                last.counts.insert(event_type, count);
            }
            _ => out.days.push(Day {
                day,
                counts: BTreeMap::from([(event_type, count)]),
            }),
        }
    }
    Ok(out)
}

/// The query of `GET /analytics/daily`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyQuery {
    /// The first day, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// The last day (included), `YYYY-MM-DD`.
    pub to: Option<String>,
}

/// The body of `GET /analytics/daily`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daily {
    /// The first day.
    pub from: NaiveDate,
    /// The last day (included).
    pub to: NaiveDate,
    /// Events of each type over the range.
    pub totals: BTreeMap<String, i64>,
    /// The days that had events, oldest first.
    pub days: Vec<Day>,
}

/// `GET /analytics/daily?from=YYYY-MM-DD&to=YYYY-MM-DD` (read:analytics): read in a read-only
/// tenant transaction, on the replica when there is one.
pub async fn read(
    _: RequirePermission<ReadAnalytics>,
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    query: Result<Query<DailyQuery>, QueryRejection>,
) -> Result<Json<Daily>, Problem> {
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let range = DayRange::parse(q.from.as_deref(), q.to.as_deref()).map_err(invalid)?;
    let mut tx = state
        .tenants
        .begin_read_only(tenant)
        .await
        .map_err(IntoProblem::into_problem)?;
    let counts = counts(&mut tx, range).await.map_err(|e| database(&e))?;
    tx.commit().await.map_err(IntoProblem::into_problem)?;
    Ok(Json(Daily {
        from: range.from,
        to: range.to,
        totals: counts.totals,
        days: counts.days,
    }))
}
