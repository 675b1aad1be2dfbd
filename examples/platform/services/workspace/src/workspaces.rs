//! Workspaces: create (any signed-in user, who becomes its admin), read, rename, delete.
//!
//! Creating runs in a tenant transaction for the new workspace's id, opened by the handler (the
//! caller has no tenant yet); the other routes run in the request's tenant transaction, and a
//! path `{id}` other than the token's tenant is 404, exactly like a workspace that does not exist.

use arq_auth::{Principal, RequirePermission};
use arq_core::{Problem, TenantId};
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::members::{AdminWorkspace, ReadWorkspace};
use crate::{ADMIN_ROLE, AppState, events, problems};

/// Longest workspace name, in characters (the table checks it too).
pub const MAX_NAME_CHARS: usize = 100;

/// A workspace as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// Its id, which is also the tenant id of everything in it.
    pub id: Uuid,
    /// Its display name.
    pub name: String,
    /// The user who created it.
    pub created_by: Uuid,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /workspaces/workspaces`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// 1 to 100 characters once trimmed.
    pub name: String,
}

/// The body of `PATCH /workspaces/workspaces/{id}`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    /// A new name.
    pub name: Option<String>,
}

type Row = (Uuid, String, Uuid, DateTime<Utc>, DateTime<Utc>);

fn workspace((id, name, created_by, created_at, updated_at): Row) -> Workspace {
    Workspace {
        id,
        name,
        created_by,
        created_at,
        updated_at,
    }
}

/// A trimmed name of 1 to 100 characters without control characters.
pub(crate) fn valid_name(name: &str) -> Result<String, Problem> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(problems::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters, not counting surrounding spaces"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(problems::invalid(
            "name",
            "must not contain control characters (it is one line)",
        ));
    }
    Ok(name.to_owned())
}

/// The workspace `{id}` of the request's tenant: 404 for any other id, and for a workspace
/// that no longer exists.
pub(crate) fn own(tx: &TenantTx, id: Uuid) -> Result<(), Problem> {
    if tx.tenant().into_uuid() == id {
        Ok(())
    } else {
        Err(problems::no_workspace(id))
    }
}

/// Reads the tenant's workspace; `lock` takes its row lock, which serializes every membership
/// change of the workspace (the last-admin rule counts admins under it).
pub(crate) async fn fetch(tx: &mut TenantTx, id: Uuid, lock: bool) -> Result<Workspace, Problem> {
    own(tx, id)?;
    let sql = if lock {
        "SELECT tenant_id, name, created_by, created_at, updated_at FROM workspaces \
         WHERE tenant_id = $1 FOR UPDATE"
    } else {
        "SELECT tenant_id, name, created_by, created_at, updated_at FROM workspaces \
         WHERE tenant_id = $1"
    };
    let row: Option<Row> = sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| problems::database(&e))?;
    row.map(workspace).ok_or_else(|| problems::no_workspace(id))
}

/// `POST /workspaces/workspaces`: creates a workspace (201) with a new id, in a tenant
/// transaction for that id; the caller becomes its `admin`. Emits `workspace.created` and
/// `membership.added`. Needs only a user's token: no tenant, no permission.
pub async fn create(
    State(state): State<AppState>,
    who: Principal,
    body: Result<Json<NewWorkspace>, JsonRejection>,
) -> Result<(StatusCode, Json<Workspace>), Problem> {
    let Json(new) = body.map_err(|e| problems::body(&e))?;
    let name = valid_name(&new.name)?;
    let user = problems::user_id(&who)?;
    let tenant = TenantId::generate();
    let id = tenant.into_uuid();
    let mut tx = state
        .tenants
        .begin(tenant)
        .await
        .map_err(arq_core::IntoProblem::into_problem)?;
    let row: Row = sqlx::query_as(
        "INSERT INTO workspaces (tenant_id, name, created_by) \
         VALUES (arq.current_tenant_id(), $1, $2) \
         RETURNING tenant_id, name, created_by, created_at, updated_at",
    )
    .bind(&name)
    .bind(user)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?;
    sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) \
         VALUES (arq.current_tenant_id(), $1, $2)",
    )
    .bind(user)
    .bind(ADMIN_ROLE)
    .execute(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?;
    events::workspace_created(&state, &mut tx, id, &name, user).await?;
    events::membership_added(&state, &mut tx, id, user, ADMIN_ROLE).await?;
    // Dropping the transaction on any error above rolls it back: nothing, events included, is
    // left of a failed request.
    tx.commit()
        .await
        .map_err(arq_core::IntoProblem::into_problem)?;
    tracing::info!(workspace_id = %id, created_by = %user, "workspace created");
    Ok((StatusCode::CREATED, Json(workspace(row))))
}

/// `GET /workspaces/workspaces/{id}` (read:workspace).
pub async fn read(
    _: RequirePermission<ReadWorkspace>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Workspace>, Problem> {
    let Path(id) = id.map_err(|e| problems::path(&e))?;
    fetch(&mut tx, id, false).await.map(Json)
}

/// `PATCH /workspaces/workspaces/{id}` (admin:workspace): renames it; `workspace.updated` when
/// the name changes.
pub async fn update(
    State(state): State<AppState>,
    _: RequirePermission<AdminWorkspace>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<WorkspacePatch>, JsonRejection>,
) -> Result<Json<Workspace>, Problem> {
    let Path(id) = id.map_err(|e| problems::path(&e))?;
    let Json(patch) = body.map_err(|e| problems::body(&e))?;
    let name = patch.name.as_deref().map(valid_name).transpose()?;
    let current = fetch(&mut tx, id, true).await?;
    let Some(name) = name.filter(|n| *n != current.name) else {
        return Ok(Json(current));
    };
    let row: Row = sqlx::query_as(
        "UPDATE workspaces SET name = $2, updated_at = now() WHERE tenant_id = $1 \
         RETURNING tenant_id, name, created_by, created_at, updated_at",
    )
    .bind(id)
    .bind(&name)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?;
    events::workspace_updated(&state, &mut tx, id, &name).await?;
    Ok(Json(workspace(row)))
}

/// `DELETE /workspaces/workspaces/{id}` (admin:workspace): deletes it with its memberships and
/// invitations (204); `workspace.deleted` tells the other services, and the auth service revokes
/// every role in it.
pub async fn delete(
    State(state): State<AppState>,
    _: RequirePermission<AdminWorkspace>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path(id) = id.map_err(|e| problems::path(&e))?;
    own(&tx, id)?;
    let deleted = sqlx::query("DELETE FROM workspaces WHERE tenant_id = $1")
        .bind(id)
        .execute(&mut tx)
        .await
        .map_err(|e| problems::database(&e))?
        .rows_affected();
    if deleted == 0 {
        return Err(problems::no_workspace(id));
    }
    events::workspace_deleted(&state, &mut tx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
