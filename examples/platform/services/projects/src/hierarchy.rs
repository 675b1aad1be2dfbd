//! The project hierarchy: every project has at most one parent (`parent_id`, a project of the
//! same tenant), and the parent links never form a cycle, so a tenant's projects are a forest.
//!
//! Moving project P under Q is refused (409) when Q is P itself or one of P's descendants,
//! which a recursive CTE finds by walking up from Q to its root inside the moving transaction.
//!
//! # Why moves are race-safe
//! Checking and updating are two statements; two transactions moving A under B and B under A at
//! the same moment would each see no cycle (neither has committed) and both commit, making A and
//! B each other's parent. Row locks on A and B are not enough either: moves of disjoint pairs can
//! close a longer cycle together. So every transaction that changes a `parent_id`, or deletes a
//! subtree, first takes a transaction-scoped advisory lock on its tenant's hierarchy
//! (`pg_advisory_xact_lock(HIERARCHY_LOCK, hashtext(tenant))`): such changes within a tenant run
//! one at a time, and each one's check (a new statement, so a new snapshot under READ COMMITTED)
//! sees every move committed before it. Other tenants are not held up (a hash collision between
//! two tenants only serializes them, it never lets a cycle through). The lock is taken before any
//! row lock, so it cannot deadlock with them. Creating a project needs no lock: a new project has
//! no descendants, so it cannot close a cycle, and the composite foreign key settles a race with
//! the deletion of its parent.
//!
//! # The tree and its limits
//! `GET /projects/projects/{id}/tree?depth=` returns the project and its descendants nested in
//! `children`, read by one recursive CTE. `depth` (0 to [`MAX_TREE_DEPTH`], default
//! [`MAX_TREE_DEPTH`]) is how many levels below the project are included; a node whose children
//! lie below that depth has `children: []` and `children_truncated: true` (fetch its own tree to
//! go further). A tree of more than [`MAX_TREE_NODES`] projects within the depth is refused with a
//! 422 that says to ask for less. A recursive delete removes at most [`MAX_TREE_NODES`] projects.

use std::collections::HashMap;

use arq_auth::RequirePermission;
use arq_core::Problem;
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::projects::{
    Failure, Project, ReadProjects, columns, database, fetch, no_parent, not_found, path_problem,
    project, query_problem,
};

/// The advisory-lock class of tenant hierarchies (`"proj"` in ASCII).
pub const HIERARCHY_LOCK: i32 = 0x7072_6f6a;
/// The deepest a tree response reaches below its root, and the default.
pub const MAX_TREE_DEPTH: u32 = 10;
/// The most projects one tree response, or one recursive delete, covers.
pub const MAX_TREE_NODES: usize = 1000;
/// A bound on walks up the hierarchy: never reached by an acyclic hierarchy of sane depth, it
/// only guarantees that a walk ends.
const MAX_WALK: i32 = 100_000;

/// Takes the tenant's hierarchy lock until the transaction ends (re-entrant).
pub async fn lock(tx: &mut TenantTx) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(arq.current_tenant_id()::text))")
        .bind(HIERARCHY_LOCK)
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// Why a project cannot move under a new parent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoveError {
    /// A project cannot be its own parent.
    #[error("project {0} cannot be its own parent")]
    OwnParent(Uuid),
    /// The new parent does not exist (in this tenant).
    #[error("no project {0} in this workspace to be the parent")]
    NoParent(Uuid),
    /// The new parent lies in the project's own subtree; `path` runs from the new parent up to
    /// the project.
    #[error(
        "project {project} cannot move under {parent}: {parent} is one of its descendants ({}), so the move would make a cycle; move {parent} out of its subtree first",
        path_text(.path)
    )]
    Cycle {
        /// The project being moved.
        project: Uuid,
        /// The parent it was to move under.
        parent: Uuid,
        /// From `parent` up to `project`.
        path: Vec<Uuid>,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn path_text(path: &[Uuid]) -> String {
    path.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(" → ")
}

impl MoveError {
    /// The problem response: 404 for a missing parent, 409 for a cycle (with the path from the
    /// new parent up to the project as the `path` extension).
    pub fn into_problem(self) -> Problem {
        let detail = self.to_string();
        match self {
            Self::OwnParent(_) => Problem::new(StatusCode::CONFLICT).with_detail(detail),
            Self::NoParent(id) => no_parent(id),
            Self::Cycle { path, .. } => Problem::new(StatusCode::CONFLICT)
                .with_detail(detail)
                .with_extension("path", path.iter().map(Uuid::to_string).collect::<Vec<_>>()),
            Self::Database(e) => database(&e),
        }
    }
}

/// Checks that `project` may move under `parent` in `tx`'s tenant. The caller holds the
/// hierarchy [`lock`], so the answer stays true until it commits.
pub async fn check_move(tx: &mut TenantTx, project: Uuid, parent: Uuid) -> Result<(), MoveError> {
    if project == parent {
        return Err(MoveError::OwnParent(project));
    }
    // `parent` and its ancestors, nearest first. Row-level security keeps the walk in the tenant.
    let ancestors: Vec<Uuid> = sqlx::query_scalar(
        "WITH RECURSIVE up(id, parent_id, depth) AS ( \
             SELECT id, parent_id, 0 FROM projects WHERE id = $1 \
           UNION ALL \
             SELECT p.id, p.parent_id, u.depth + 1 FROM projects p \
             JOIN up u ON p.id = u.parent_id WHERE u.depth < $2 \
         ) SELECT id FROM up ORDER BY depth",
    )
    .bind(parent)
    .bind(MAX_WALK)
    .fetch_all(&mut *tx)
    .await?;
    if ancestors.is_empty() {
        return Err(MoveError::NoParent(parent));
    }
    if let Some(at) = ancestors.iter().position(|a| *a == project) {
        return Err(MoveError::Cycle {
            project,
            parent,
            path: ancestors[..=at].to_vec(),
        });
    }
    Ok(())
}

/// The ids of `root`'s subtree (`root` included), deepest first, for a recursive delete; 409
/// when it holds more than [`MAX_TREE_NODES`] projects. The caller holds the hierarchy [`lock`].
pub(crate) async fn subtree_for_delete(
    tx: &mut TenantTx,
    root: Uuid,
) -> Result<Vec<Uuid>, Problem> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "WITH RECURSIVE down(id, depth) AS ( \
             SELECT id, 0 FROM projects WHERE id = $1 \
           UNION ALL \
             SELECT p.id, d.depth + 1 FROM projects p \
             JOIN down d ON p.parent_id = d.id WHERE d.depth < $2 \
         ) SELECT id, depth FROM down ORDER BY depth DESC, id LIMIT $3",
    )
    .bind(root)
    .bind(MAX_WALK)
    .bind(i64::try_from(MAX_TREE_NODES).unwrap_or(i64::MAX) + 1)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database(&e))?;
    if rows.len() > MAX_TREE_NODES {
        return Err(Problem::new(StatusCode::CONFLICT)
            .with_detail(format!(
                "project {root} has more than {MAX_TREE_NODES} projects in its subtree; a recursive delete removes at most {MAX_TREE_NODES} at once: delete some of its sub-projects (recursively) first"
            ))
            .with_extension("max_projects", MAX_TREE_NODES));
    }
    Ok(rows.into_iter().map(|(id, _)| id).collect())
}

/// The query of `GET /projects/projects/{id}/tree`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeQuery {
    /// Levels below the project to include, 0 to 10 (default 10).
    pub depth: Option<u32>,
}

/// A project with its descendants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// The project.
    #[serde(flatten)]
    pub project: Project,
    /// Its children (in id order), each with their own descendants.
    pub children: Vec<TreeNode>,
    /// It has children below the requested depth, left out of `children`.
    pub children_truncated: bool,
}

/// `GET /projects/projects/{id}/tree?depth=`: the project and its descendants, nested; see the
/// module docs for the limits.
pub async fn tree(
    _: RequirePermission<ReadProjects>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<TreeQuery>, QueryRejection>,
) -> Result<Json<TreeNode>, Failure> {
    let Path(id) = id.map_err(|e| path_problem(&e))?;
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let depth = q.depth.unwrap_or(MAX_TREE_DEPTH);
    if depth > MAX_TREE_DEPTH {
        return Err(
            Problem::invalid_field("depth", format!("must be 0 to {MAX_TREE_DEPTH}")).into(),
        );
    }
    // Breadth-first, so that the node limit cuts whole levels last; one row more than the limit
    // tells that it was exceeded.
    let rows = sqlx::query(concat!(
        "WITH RECURSIVE down AS ( \
             SELECT p.*, 0 AS depth FROM projects p WHERE p.id = $1 \
           UNION ALL \
             SELECT p.*, d.depth + 1 FROM projects p \
             JOIN down d ON p.tenant_id = d.tenant_id AND p.parent_id = d.id \
             WHERE d.depth < $2 \
         ) SELECT ",
        columns!(),
        ", p.depth, EXISTS (SELECT 1 FROM projects c \
             WHERE c.tenant_id = p.tenant_id AND c.parent_id = p.id) AS has_children \
         FROM down p ORDER BY p.depth, p.id LIMIT $3"
    ))
    .bind(id)
    .bind(i32::try_from(depth).unwrap_or(i32::MAX))
    .bind(i64::try_from(MAX_TREE_NODES).unwrap_or(i64::MAX) + 1)
    .fetch_all(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    if rows.is_empty() {
        // Tell a missing project from a database that returned nothing for another reason.
        return Err(match fetch(&mut tx, id, None).await {
            Ok(_) => Problem::internal(&std::io::Error::other("the tree query returned no row")),
            Err(p) => p,
        }
        .into());
    }
    if rows.len() > MAX_TREE_NODES {
        return Err(Problem::invalid_field(
            "depth",
            format!(
                "the tree of project {id} holds more than {MAX_TREE_NODES} projects within {depth} level(s); ask for a smaller depth, or page through the children with GET /projects/projects?parent_id={id}"
            ),
        )
        .into());
    }
    let mut nodes = Vec::with_capacity(rows.len());
    for row in &rows {
        let p = project(row).map_err(|e| database(&e))?;
        let level: i32 = row.try_get("depth").map_err(|e| database(&e))?;
        let has_children: bool = row.try_get("has_children").map_err(|e| database(&e))?;
        let truncated = has_children && u32::try_from(level).is_ok_and(|l| l >= depth);
        nodes.push((p, truncated));
    }
    Ok(Json(assemble(id, nodes).ok_or_else(|| not_found(id))?))
}

/// Nests `nodes` (each with whether its children were cut off) under `root`. Children keep the
/// order of `nodes`.
fn assemble(root: Uuid, nodes: Vec<(Project, bool)>) -> Option<TreeNode> {
    let mut children_of: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let mut by_id: HashMap<Uuid, (Project, bool)> = HashMap::new();
    for (p, truncated) in nodes {
        if p.id != root
            && let Some(parent) = p.parent_id
        {
            children_of.entry(parent).or_default().push(p.id);
        }
        by_id.insert(p.id, (p, truncated));
    }
    build(root, &mut by_id, &children_of)
}

fn build(
    id: Uuid,
    by_id: &mut HashMap<Uuid, (Project, bool)>,
    children_of: &HashMap<Uuid, Vec<Uuid>>,
) -> Option<TreeNode> {
    // Removing each node as it is placed means a node is placed at most once, whatever the rows.
    let (project, children_truncated) = by_id.remove(&id)?;
    let children = children_of
        .get(&id)
        .map(|ids| {
            ids.iter()
                .filter_map(|c| build(*c, by_id, children_of))
                .collect()
        })
        .unwrap_or_default();
    Some(TreeNode {
        project,
        children,
        children_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn node(id: Uuid, parent: Option<Uuid>) -> Project {
        Project {
            id,
            name: id.to_string(),
            description: None,
            parent_id: parent,
            metadata: serde_json::Map::new(),
            version: 1,
            created_by: "t".to_owned(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn rows_nest_under_their_parents_in_order() {
        let [r, a, b, c] = [
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        ];
        // The root itself may have a parent (a subtree's tree); it is not nested under it.
        let outside = Uuid::now_v7();
        let tree = assemble(
            r,
            vec![
                (node(r, Some(outside)), false),
                (node(a, Some(r)), false),
                (node(b, Some(r)), false),
                (node(c, Some(a)), true),
            ],
        )
        .unwrap();
        assert_eq!(tree.project.id, r);
        let ids: Vec<Uuid> = tree.children.iter().map(|n| n.project.id).collect();
        assert_eq!(ids, vec![a, b]);
        assert_eq!(tree.children[0].children[0].project.id, c);
        assert!(tree.children[0].children[0].children_truncated);
        assert!(!tree.children_truncated);
        assert!(assemble(Uuid::now_v7(), vec![(node(r, None), false)]).is_none());
    }
}
