//! Step 1: the plain axum router — routes, JSON types, validation, handlers.
//!
//! This is the part you already have: nothing here is arq-specific except what the later steps
//! put into the handler signatures, each marked with its step:
//!
//! - step 2: errors are [`Problem`]s (RFC 9457 `application/problem+json`, with the request id);
//! - step 3: [`RequirePermission`] answers 401 without a valid token and 403 without the
//!   permission, before the body is read;
//! - step 4: [`TenantTx`] is the request's transaction, already scoped to the caller's tenant,
//!   so the queries name no tenant and row-level security filters every row;
//! - step 5: [`create`] writes `note.created` to the outbox in that same transaction.
//!
//! | route | permission | answers |
//! |---|---|---|
//! | `POST /notes` | `write:notes` | 201 and the note |
//! | `GET /notes` | `read:notes` | the tenant's latest notes, newest first |
//! | `GET /notes/{id}` | `read:notes` | the note, or 404 (also for another tenant's note) |
//! | `GET /activity` | `read:notes` | what the `note.created` consumer recorded ([`step5_events`]) |

use arq_auth::RequirePermission;
use arq_core::Problem;
use arq_tenancy::TenantTx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::step3_auth::{ReadNotes, WriteNotes};
use crate::step5_events;

/// Longest note body, in characters (the table checks it too).
pub const MAX_BODY_CHARS: usize = 2000;
/// How many notes `GET /notes` returns.
pub const LIST_LIMIT: i64 = 50;

/// A note as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The note's id (a UUIDv7: ids sort by creation time).
    pub id: Uuid,
    /// The subject of the token that created it.
    pub author: String,
    /// The text.
    pub body: String,
}

/// The body of `POST /notes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    /// The text: 1 to 2000 characters once trimmed.
    pub body: String,
}

/// The routes; [`crate::app`] adds the layers of steps 3 and 4.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/notes", post(create).get(list))
        .route("/notes/{id}", get(read))
        .route("/activity", get(step5_events::activity))
}

type NoteRow = (Uuid, String, String);

fn note((id, author, body): NoteRow) -> Note {
    Note { id, author, body }
}

/// The trimmed body, or what is wrong with it (the handler answers 422 with it).
pub fn valid_body(body: &str) -> Result<String, String> {
    let body = body.trim();
    let chars = body.chars().count();
    if chars == 0 || chars > MAX_BODY_CHARS {
        return Err(format!(
            "body must be 1 to {MAX_BODY_CHARS} characters, not counting surrounding spaces"
        ));
    }
    Ok(body.to_owned())
}

/// `POST /notes`: stores a note by the caller and announces it (201).
pub async fn create(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteNotes>,
    mut tx: TenantTx,
    Json(new): Json<NewNote>,
) -> Result<(StatusCode, Json<Note>), Problem> {
    let body = valid_body(&new.body)
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(e))?;
    let row: NoteRow = sqlx::query_as(
        "INSERT INTO notes (tenant_id, id, author, body) \
         VALUES (arq.current_tenant_id(), $1, $2, $3) RETURNING id, author, body",
    )
    .bind(Uuid::now_v7())
    .bind(who.subject())
    .bind(body)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| Problem::internal(&e))?;
    let note = note(row);
    // Step 5: committed together with the insert, or not at all.
    step5_events::note_created(&mut tx, &state.exchange, &note).await?;
    Ok((StatusCode::CREATED, Json(note)))
}

/// `GET /notes`: the caller's tenant's latest notes, newest first.
pub async fn list(
    _: RequirePermission<ReadNotes>,
    mut tx: TenantTx,
) -> Result<Json<Vec<Note>>, Problem> {
    let rows: Vec<NoteRow> =
        sqlx::query_as("SELECT id, author, body FROM notes ORDER BY id DESC LIMIT $1")
            .bind(LIST_LIMIT)
            .fetch_all(&mut tx)
            .await
            .map_err(|e| Problem::internal(&e))?;
    Ok(Json(rows.into_iter().map(note).collect()))
}

/// `GET /notes/{id}`: one note; another tenant's note does not exist here (404).
pub async fn read(
    _: RequirePermission<ReadNotes>,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<Json<Note>, Problem> {
    let row: Option<NoteRow> = sqlx::query_as("SELECT id, author, body FROM notes WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut tx)
        .await
        .map_err(|e| Problem::internal(&e))?;
    row.map(|r| Json(note(r)))
        .ok_or_else(|| Problem::not_found(format!("no note {id}")))
}
