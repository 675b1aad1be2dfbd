//! Dependencies between tasks: "A depends on B" means A cannot move to `in_progress` or `done`
//! while B is not done.
//!
//! The dependency graph of a tenant stays acyclic. Adding `A → B` is refused when B already
//! reaches A (B → … → A), which a recursive CTE finds inside the adding transaction.
//!
//! # Why this is race-safe
//! Checking for a cycle and inserting the edge are two statements; two transactions adding
//! `A → B` and `B → A` at the same moment would each see no path (neither has committed) and
//! both insert, closing a cycle. Locking the two tasks' rows is not enough either: `A → B` and
//! `C → D` share no task, yet with `B → C` and `D → A` present they close `A → B → C → D → A`.
//! So every transaction that adds an edge first takes a transaction-scoped advisory lock on its
//! tenant's graph (`pg_advisory_xact_lock(GRAPH_LOCK, hashtext(tenant))`): additions within a
//! tenant run one at a time, and each one's cycle check (a new statement, so a new snapshot under
//! READ COMMITTED) sees every edge committed before it. Other tenants are not held up (a hash
//! collision between two tenants only serializes them, it never lets a cycle through). Removing
//! an edge cannot close a cycle and takes no lock. The lock is taken before any row lock, so it
//! cannot deadlock with the row locks the handlers take.

use std::collections::HashMap;

use arq_core::Problem;
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use crate::AppState;
use crate::events;
use crate::tasks::{
    Status, Task, WriteTasks, authorize, body_problem, database, fetch, path_problem,
};
use arq_auth::RequirePermission;

/// The advisory-lock class of tenant dependency graphs (`"task"` in ASCII).
pub const GRAPH_LOCK: i32 = 0x7461_736b;

/// The body of `POST /tasks/tasks/{id}/dependencies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDependency {
    /// The task that must be done first.
    pub depends_on: Uuid,
}

/// Why a dependency was not added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DependencyError {
    /// A task cannot depend on itself.
    #[error("task {0} cannot depend on itself")]
    OnItself(Uuid),
    /// The dependent task does not exist (in this tenant).
    #[error("no task {0}")]
    UnknownTask(Uuid),
    /// The task depended on does not exist (in this tenant).
    #[error("no task {0} in this tenant to depend on")]
    UnknownDependency(Uuid),
    /// The dependent task is already done or cancelled.
    #[error("task {task} is {status}; a finished task cannot get new dependencies")]
    Finished {
        /// The dependent task.
        task: Uuid,
        /// Its final status.
        status: Status,
    },
    /// The edge would close a cycle; the ids run from the dependent task around to itself.
    #[error("adding this dependency would create the cycle {}", cycle_text(.0))]
    Cycle(Vec<Uuid>),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn cycle_text(cycle: &[Uuid]) -> String {
    cycle
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(" → ")
}

impl DependencyError {
    /// The problem response: 422 for a bad request body, 404 for a missing task, 409 for a
    /// conflict with the current state (with the cycle as the `cycle` extension).
    pub fn into_problem(self) -> Problem {
        let detail = self.to_string();
        match self {
            Self::OnItself(_) => Problem::invalid_field("depends_on", detail),
            Self::UnknownDependency(_) => Problem::invalid_field("depends_on", detail),
            Self::UnknownTask(_) => Problem::not_found(detail),
            Self::Finished { .. } => Problem::new(StatusCode::CONFLICT).with_detail(detail),
            Self::Cycle(cycle) => Problem::new(StatusCode::CONFLICT)
                .with_detail(detail)
                .with_extension(
                    "cycle",
                    cycle.iter().map(Uuid::to_string).collect::<Vec<_>>(),
                ),
            Self::Database(e) => database(&e),
        }
    }
}

/// Takes the tenant's dependency-graph lock until the transaction ends (re-entrant).
pub async fn lock_graph(tx: &mut TenantTx) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(arq.current_tenant_id()::text))")
        .bind(GRAPH_LOCK)
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// Adds "`task` depends on `depends_on`" in `tx`'s tenant. Returns `false` when the dependency
/// already existed. Takes the graph lock first (see the module docs), so concurrent calls in one
/// tenant never close a cycle.
pub async fn add(tx: &mut TenantTx, task: Uuid, depends_on: Uuid) -> Result<bool, DependencyError> {
    if task == depends_on {
        return Err(DependencyError::OnItself(task));
    }
    lock_graph(tx).await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1 FOR NO KEY UPDATE")
            .bind(task)
            .fetch_optional(&mut *tx)
            .await?;
    let status = status.ok_or(DependencyError::UnknownTask(task))?;
    if let Some(done) = [Status::Done, Status::Cancelled]
        .into_iter()
        .find(|s| s.as_str() == status)
    {
        return Err(DependencyError::Finished { task, status: done });
    }
    let exists: Option<bool> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM task_dependencies WHERE task_id = $1 AND depends_on_id = $2) \
         FROM tasks WHERE id = $2",
    )
    .bind(task)
    .bind(depends_on)
    .fetch_optional(&mut *tx)
    .await?;
    match exists {
        None => return Err(DependencyError::UnknownDependency(depends_on)),
        Some(true) => return Ok(false),
        Some(false) => {}
    }
    // Everything `depends_on` reaches, each with the task it was reached from. UNION (not
    // UNION ALL) drops repeated (task, parent) rows, so each edge is walked at most once per
    // parent however many paths lead to it. Row-level security keeps the walk in the tenant.
    let reached: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "WITH RECURSIVE reach(id, parent) AS ( \
             SELECT $1::uuid, NULL::uuid \
           UNION \
             SELECT d.depends_on_id, d.task_id FROM task_dependencies d \
             JOIN reach r ON d.task_id = r.id \
         ) SELECT id, parent FROM reach",
    )
    .bind(depends_on)
    .fetch_all(&mut *tx)
    .await?;
    if reached.iter().any(|(id, _)| *id == task) {
        return Err(DependencyError::Cycle(cycle(task, depends_on, &reached)));
    }
    sqlx::query(
        "INSERT INTO task_dependencies (tenant_id, task_id, depends_on_id) \
         VALUES (arq.current_tenant_id(), $1, $2)",
    )
    .bind(task)
    .bind(depends_on)
    .execute(&mut *tx)
    .await
    .map_err(|e| match &e {
        // The task depended on was deleted by a transaction that committed while this one
        // waited for its row.
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            DependencyError::UnknownDependency(depends_on)
        }
        _ => DependencyError::Database(e),
    })?;
    Ok(true)
}

/// The cycle `task → depends_on → … → task` that adding the edge would close, from the rows of
/// the reachability walk (each reached task with a task it was reached from).
fn cycle(task: Uuid, depends_on: Uuid, reached: &[(Uuid, Option<Uuid>)]) -> Vec<Uuid> {
    let mut parent: HashMap<Uuid, Uuid> = HashMap::new();
    for (id, from) in reached {
        if let Some(from) = from {
            parent.entry(*id).or_insert(*from);
        }
    }
    // Walk back from `task` to `depends_on`; bounded, although the graph is acyclic.
    let mut back = vec![task];
    let mut at = task;
    while at != depends_on && back.len() <= reached.len() {
        match parent.get(&at) {
            Some(p) => {
                at = *p;
                back.push(at);
            }
            None => break,
        }
    }
    let mut cycle = vec![task];
    cycle.extend(back.into_iter().rev());
    cycle
}

/// `POST /tasks/tasks/{id}/dependencies` `{"depends_on": id}`: the task now waits for
/// `depends_on` (201; 200 if it already did). Needs write:tasks and the policy's `update:task`.
pub async fn create(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteTasks>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<NewDependency>, JsonRejection>,
) -> Result<(StatusCode, Json<Task>), Problem> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let Json(new) = body.map_err(|e| body_problem(&e))?;
    if new.depends_on == id {
        return Err(DependencyError::OnItself(id).into_problem());
    }
    // The graph lock before any row lock (see the module docs).
    lock_graph(&mut tx).await.map_err(|e| database(&e))?;
    let current = fetch(&mut tx, id, true).await?;
    authorize(&state, &who, "update:task", &current).map_err(Problem::forbidden)?;
    let added = add(&mut tx, id, new.depends_on)
        .await
        .map_err(DependencyError::into_problem)?;
    let task = fetch(&mut tx, id, false).await?;
    if !added {
        return Ok((StatusCode::OK, Json(task)));
    }
    events::task_updated(&state, &mut tx, &task, &["depends_on"]).await?;
    Ok((StatusCode::CREATED, Json(task)))
}

/// `DELETE /tasks/tasks/{id}/dependencies/{depends_on}`: the task no longer waits for
/// `depends_on` (204; 404 when it did not). Needs write:tasks and the policy's `update:task`.
pub async fn delete(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteTasks>,
    mut tx: TenantTx,
    ids: Result<Path<(Uuid, Uuid)>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path((id, depends_on)) = ids.map_err(|e| path_problem(&e))?;
    let current = fetch(&mut tx, id, true).await?;
    authorize(&state, &who, "update:task", &current).map_err(Problem::forbidden)?;
    let removed =
        sqlx::query("DELETE FROM task_dependencies WHERE task_id = $1 AND depends_on_id = $2")
            .bind(id)
            .bind(depends_on)
            .execute(&mut tx)
            .await
            .map_err(|e| database(&e))?
            .rows_affected();
    if removed == 0 {
        return Err(Problem::not_found(format!(
            "task {id} does not depend on {depends_on}"
        )));
    }
    let task = fetch(&mut tx, id, false).await?;
    events::task_updated(&state, &mut tx, &task, &["depends_on"]).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_runs_from_the_task_around_to_itself() {
        let [a, b, c, d] = [
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        ];
        // Adding a → b, where b → c → a and b → d already exist.
        let reached = [(b, None), (c, Some(b)), (d, Some(b)), (a, Some(c))];
        assert_eq!(cycle(a, b, &reached), vec![a, b, c, a]);
        // Direct: b → a.
        assert_eq!(cycle(a, b, &[(b, None), (a, Some(b))]), vec![a, b, a]);
    }
}
