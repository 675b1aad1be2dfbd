//! A workspace's members: list them (read:workspace), change a member's role and remove a
//! member (admin:workspace). New members join through invitations ([`crate::invitations`]).
//!
//! The last-admin rule: a workspace always keeps at least one admin, so removing or demoting
//! the last one is refused (409). Every membership change first takes the workspace's row lock,
//! so two admins demoting each other at the same moment are serialized and the second sees the
//! first's change.

use arq_auth::{RequirePermission, permission};
use arq_core::Problem;
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::workspaces::fetch;
use crate::{ADMIN_ROLE, AppState, events, problems};

permission!(pub ReadWorkspace = "read:workspace");
permission!(pub AdminWorkspace = "admin:workspace");

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;

/// A member as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user (token `sub`).
    pub user_id: Uuid,
    /// Their role in this workspace (one of `[rbac.roles]`).
    pub role: String,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
}

/// The body of `PUT /workspaces/workspaces/{id}/members/{user_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// The new role.
    pub role: String,
}

/// The query of `GET /workspaces/workspaces/{id}/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub after: Option<Uuid>,
}

/// One page of members, in user id order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The members.
    pub items: Vec<Member>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Uuid>,
}

type Row = (Uuid, String, DateTime<Utc>);

fn member((user_id, role, joined_at): Row) -> Member {
    Member {
        user_id,
        role,
        joined_at,
    }
}

fn not_a_member(workspace: Uuid, user: Uuid) -> Problem {
    Problem::not_found(format!(
        "user {user} is not a member of workspace {workspace}; invite them \
         (POST /workspaces/workspaces/{workspace}/invitations)"
    ))
}

fn last_admin(workspace: Uuid, user: Uuid, action: &str) -> Problem {
    Problem::new(StatusCode::CONFLICT).with_detail(format!(
        "user {user} is the last admin of workspace {workspace}; a workspace must keep an admin, \
         so it cannot be {action}: make another member admin first (or delete the workspace)"
    ))
}

/// The member's row, locked for the change.
async fn locked_member(tx: &mut TenantTx, workspace: Uuid, user: Uuid) -> Result<Member, Problem> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT user_id, role, joined_at FROM memberships WHERE user_id = $1 FOR UPDATE",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| problems::database(&e))?;
    row.map(member).ok_or_else(|| not_a_member(workspace, user))
}

/// How many admins the workspace has (under the workspace's row lock, so it cannot change
/// before the commit).
async fn admins(tx: &mut TenantTx) -> Result<i64, Problem> {
    sqlx::query_scalar("SELECT count(*) FROM memberships WHERE role = $1")
        .bind(ADMIN_ROLE)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| problems::database(&e))
}

/// `GET /workspaces/workspaces/{id}/members?limit=&after=` (read:workspace): one page of
/// members in user id order (keyset pagination: `next` is the last user id of the page).
pub async fn list(
    _: RequirePermission<ReadWorkspace>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Path(id) = id.map_err(|e| problems::path(&e))?;
    let Query(q) = query
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(problems::invalid(
            "limit",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    fetch(&mut tx, id, false).await?;
    // One row more than asked tells whether there is a next page.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT user_id, role, joined_at FROM memberships \
         WHERE $1::uuid IS NULL OR user_id > $1 ORDER BY user_id LIMIT $2",
    )
    .bind(q.after)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?;
    let mut items: Vec<Member> = rows.into_iter().map(member).collect();
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|m| m.user_id)
    } else {
        None
    };
    Ok(Json(Page { items, next }))
}

/// `PUT /workspaces/workspaces/{id}/members/{user_id}` `{"role"}` (admin:workspace): gives an
/// existing member `role` (200); `membership.changed` when it differs from the current one.
/// Demoting the last admin is 409; an unknown role is 400, listing the roles.
pub async fn set_role(
    State(state): State<AppState>,
    _: RequirePermission<AdminWorkspace>,
    mut tx: TenantTx,
    path: Result<Path<(Uuid, Uuid)>, PathRejection>,
    body: Result<Json<RoleChange>, JsonRejection>,
) -> Result<Json<Member>, Problem> {
    let Path((id, user)) = path.map_err(|e| problems::path(&e))?;
    let Json(change) = body.map_err(|e| problems::body(&e))?;
    let role = problems::known_role(&change.role, &state.roles)?;
    fetch(&mut tx, id, true).await?;
    let current = locked_member(&mut tx, id, user).await?;
    if current.role == role {
        return Ok(Json(current));
    }
    if current.role == ADMIN_ROLE && admins(&mut tx).await? <= 1 {
        return Err(last_admin(id, user, &format!("made {role}")));
    }
    let row: Row = sqlx::query_as(
        "UPDATE memberships SET role = $2 WHERE user_id = $1 RETURNING user_id, role, joined_at",
    )
    .bind(user)
    .bind(&role)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?;
    events::membership_changed(&state, &mut tx, id, user, &role, &current.role).await?;
    Ok(Json(member(row)))
}

/// `DELETE /workspaces/workspaces/{id}/members/{user_id}` (admin:workspace): removes the member
/// (204), `membership.removed`; the auth service then revokes their roles in the workspace.
/// Removing the last admin is 409.
pub async fn remove(
    State(state): State<AppState>,
    _: RequirePermission<AdminWorkspace>,
    mut tx: TenantTx,
    path: Result<Path<(Uuid, Uuid)>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path((id, user)) = path.map_err(|e| problems::path(&e))?;
    fetch(&mut tx, id, true).await?;
    let current = locked_member(&mut tx, id, user).await?;
    if current.role == ADMIN_ROLE && admins(&mut tx).await? <= 1 {
        return Err(last_admin(id, user, "removed"));
    }
    sqlx::query("DELETE FROM memberships WHERE user_id = $1")
        .bind(user)
        .execute(&mut tx)
        .await
        .map_err(|e| problems::database(&e))?;
    events::membership_removed(&state, &mut tx, id, user).await?;
    Ok(StatusCode::NO_CONTENT)
}
