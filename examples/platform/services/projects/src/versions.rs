//! The version history of a project: every version it ever had, version 1 (its creation)
//! included, each written in the transaction of the change that made it (see
//! [`crate::projects`]). The runtime role may only add and read versions, never change or delete
//! them (`migrations/0001_projects.sql`); a project's history is deleted with it.

use arq_auth::RequirePermission;
use arq_core::Problem;
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::projects::{
    Failure, MAX_PAGE_SIZE, ReadProjects, database, fetch, path_problem, query_problem,
};

/// Versions per page when the request gives no `limit`: the whole history of most projects.
pub const DEFAULT_VERSIONS_PAGE: u32 = MAX_PAGE_SIZE;

/// One version of a project: its fields as they were after that change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The version number (1 is the creation).
    pub version: i64,
    /// The name at this version.
    pub name: String,
    /// The description at this version.
    pub description: Option<String>,
    /// The parent at this version (it may have been deleted since).
    pub parent_id: Option<Uuid>,
    /// The metadata at this version.
    pub metadata: Map<String, Value>,
    /// The subject that made this version.
    pub changed_by: String,
    /// When.
    pub changed_at: DateTime<Utc>,
}

/// The query of `GET /projects/projects/{id}/versions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsQuery {
    /// Page size, 1 to 100 (default 100).
    pub limit: Option<u32>,
    /// The `next` value of the previous page: only versions older than this one.
    pub before: Option<i64>,
}

/// A page of versions, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionPage {
    /// The versions.
    pub items: Vec<Version>,
    /// Pass as `before` to get older versions; `null` on the last page.
    pub next: Option<i64>,
}

fn version(row: &PgRow) -> Result<Version, sqlx::Error> {
    let metadata: Value = row.try_get("metadata")?;
    let Value::Object(metadata) = metadata else {
        return Err(sqlx::Error::ColumnDecode {
            index: "metadata".to_owned(),
            source: "not a JSON object".into(),
        });
    };
    Ok(Version {
        version: row.try_get("version")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        parent_id: row.try_get("parent_id")?,
        metadata,
        changed_by: row.try_get("changed_by")?,
        changed_at: row.try_get("changed_at")?,
    })
}

/// `GET /projects/projects/{id}/versions?limit=&before=`: the project's versions, newest first.
pub async fn list(
    _: RequirePermission<ReadProjects>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<VersionsQuery>, QueryRejection>,
) -> Result<Json<VersionPage>, Failure> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_VERSIONS_PAGE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(
            Problem::invalid_field("limit", format!("must be 1 to {MAX_PAGE_SIZE}")).into(),
        );
    }
    // 404 for a project that does not exist (in this tenant), rather than an empty history.
    fetch(&mut tx, id, None).await?;
    let rows = sqlx::query(
        "SELECT version, name, description, parent_id, metadata, changed_by, changed_at \
         FROM project_versions \
         WHERE project_id = $1 AND ($2::bigint IS NULL OR version < $2) \
         ORDER BY version DESC LIMIT $3",
    )
    .bind(id)
    .bind(q.before)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let mut items = rows
        .iter()
        .map(version)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| database(&e))?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|v| v.version)
    } else {
        None
    };
    Ok(Json(VersionPage { items, next }))
}

/// `GET /projects/projects/{id}/versions/{version}`: one version.
pub async fn read(
    _: RequirePermission<ReadProjects>,
    mut tx: TenantTx,
    ids: Result<Path<(Uuid, i64)>, PathRejection>,
) -> Result<Json<Version>, Failure> {
    let Path((id, number)) = ids.map_err(|e| path_problem(&e))?;
    let current = fetch(&mut tx, id, None).await?;
    let row = sqlx::query(
        "SELECT version, name, description, parent_id, metadata, changed_by, changed_at \
         FROM project_versions WHERE project_id = $1 AND version = $2",
    )
    .bind(id)
    .bind(number)
    .fetch_optional(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    match row {
        Some(row) => Ok(Json(version(&row).map_err(|e| database(&e))?)),
        None => Err(Problem::not_found(format!(
            "project {id} has no version {number}: its versions are 1 to {}",
            current.version
        ))
        .into()),
    }
}
