//! Items: the example tenant-scoped resource. Every handler runs in the request's tenant
//! transaction, so row-level security confines it to the caller's tenant; RBAC permissions guard
//! each route and the CEL policy decides who may change an existing item.

use arq_auth::cel::{Key, MapValue, Value};
use arq_auth::policy::{MapAttributes, NoAttributes};
use arq_auth::{Permission, Principal, RequirePermission, permission};
use arq_core::Problem;
use arq_tenancy::TenantTx;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;

permission!(pub ReadItems = "read:items");
permission!(pub WriteItems = "write:items");
permission!(pub ManageItems = "manage:items");

/// Longest item name, in characters (the table checks it too).
pub const MAX_NAME_CHARS: usize = 100;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// An item as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The item's id (a UUIDv7: ids sort by creation time).
    pub id: Uuid,
    /// Its name, unique within the tenant.
    pub name: String,
    /// A free-form description.
    pub description: String,
    /// The subject that created it.
    pub owner: String,
}

/// The body of `POST /projects/items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// The name: 1 to 100 characters once trimmed.
    pub name: String,
    /// The description: at most 1000 characters.
    #[serde(default)]
    pub description: String,
}

/// The body of `PATCH /projects/items/{id}`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
}

/// The query of `GET /projects/items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub after: Option<Uuid>,
}

/// One page of items, in id order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The items.
    pub items: Vec<Item>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

type ItemRow = (Uuid, String, String, String);

fn item((id, name, description, owner): ItemRow) -> Item {
    Item {
        id,
        name,
        description,
        owner,
    }
}

fn invalid(detail: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(detail)
}

// Validation errors are plain messages; handlers turn them into 422 problems with `invalid`.
fn valid_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters, not counting surrounding spaces"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

fn valid_description(description: &str) -> Result<String, String> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    Ok(description.to_owned())
}

fn database(e: sqlx::Error) -> Problem {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return Problem::new(StatusCode::CONFLICT)
            .with_detail("an item with this name already exists; choose another name");
    }
    Problem::internal(&e)
}

fn not_found(id: Uuid) -> Problem {
    Problem::not_found(format!("no item {id}"))
}

/// Whether the CEL policy lets `who` perform `action` on `item`; the error says why not.
fn authorize(state: &AppState, who: &Principal, action: &str, item: &Item) -> Result<(), String> {
    let mut principal = MapValue::new();
    principal.insert(Key::String("id".into()), Value::string(who.subject()));
    principal.insert(
        Key::String("manages_items".into()),
        Value::Bool(who.has_permission(ManageItems::NAME)),
    );
    let mut resource = MapValue::new();
    resource.insert(
        Key::String("owner".into()),
        Value::string(item.owner.as_str()),
    );
    // The ids name the principal and the item in the `arq::audit` decision log.
    let decision = state.policies.decide(
        &MapAttributes::new(principal).with_id(who.subject()),
        action,
        &MapAttributes::new(resource).with_id(item.id.to_string()),
        &NoAttributes,
    );
    if decision.allowed() {
        Ok(())
    } else {
        Err(format!(
            "{action} on item {} is not allowed ({})",
            item.id,
            decision.reason()
        ))
    }
}

/// `POST /projects/items`: creates an item owned by the caller (201).
pub async fn create(
    RequirePermission(who, ..): RequirePermission<WriteItems>,
    mut tx: TenantTx,
    Json(new): Json<NewItem>,
) -> Result<(StatusCode, Json<Item>), Problem> {
    let name = valid_name(&new.name).map_err(invalid)?;
    let description = valid_description(&new.description).map_err(invalid)?;
    let row: ItemRow = sqlx::query_as(
        "INSERT INTO items (tenant_id, id, name, description, owner) \
         VALUES (arq.current_tenant_id(), $1, $2, $3, $4) \
         RETURNING id, name, description, owner",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(description)
    .bind(who.subject())
    .fetch_one(&mut *tx)
    .await
    .map_err(database)?;
    Ok((StatusCode::CREATED, Json(item(row))))
}

/// `GET /projects/items?limit=&after=`: one page of the tenant's items.
pub async fn list(
    _: RequirePermission<ReadItems>,
    mut tx: TenantTx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, Problem> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(invalid(format!("limit must be 1 to {MAX_PAGE_SIZE}")));
    }
    // One row more than asked tells whether there is a next page.
    let rows: Vec<ItemRow> = sqlx::query_as(
        "SELECT id, name, description, owner FROM items \
         WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
    )
    .bind(q.after)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *tx)
    .await
    .map_err(database)?;
    let mut items: Vec<Item> = rows.into_iter().map(item).collect();
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|i| i.id)
    } else {
        None
    };
    Ok(Json(Page { items, next }))
}

async fn fetch(tx: &mut TenantTx, id: Uuid, lock: bool) -> Result<Item, Problem> {
    let sql = if lock {
        "SELECT id, name, description, owner FROM items WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT id, name, description, owner FROM items WHERE id = $1"
    };
    let row: Option<ItemRow> = sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(database)?;
    row.map(item).ok_or_else(|| not_found(id))
}

/// `GET /projects/items/{id}`.
pub async fn read(
    _: RequirePermission<ReadItems>,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<Json<Item>, Problem> {
    fetch(&mut tx, id, false).await.map(Json)
}

/// `PATCH /projects/items/{id}`: changes the given fields, if the policy allows.
pub async fn update(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteItems>,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
    Json(patch): Json<ItemPatch>,
) -> Result<Json<Item>, Problem> {
    let name = patch.name.as_deref().map(valid_name);
    let name = name.transpose().map_err(invalid)?;
    let description = patch.description.as_deref().map(valid_description);
    let description = description.transpose().map_err(invalid)?;
    let current = fetch(&mut tx, id, true).await?;
    authorize(&state, &who, "update:item", &current).map_err(Problem::forbidden)?;
    let row: ItemRow = sqlx::query_as(
        "UPDATE items SET name = coalesce($2, name), description = coalesce($3, description) \
         WHERE id = $1 RETURNING id, name, description, owner",
    )
    .bind(id)
    .bind(name)
    .bind(description)
    .fetch_one(&mut *tx)
    .await
    .map_err(database)?;
    Ok(Json(item(row)))
}

/// `DELETE /projects/items/{id}`: deletes the item, if the policy allows (204).
pub async fn delete(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteItems>,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    let current = fetch(&mut tx, id, true).await?;
    authorize(&state, &who, "delete:item", &current).map_err(Problem::forbidden)?;
    sqlx::query("DELETE FROM items WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    Ok(StatusCode::NO_CONTENT)
}
