//! Profiles: one per user per workspace, with encrypted contact data, preferences and a
//! subscription tier.
//!
//! Every handler runs in the request's tenant transaction, so row-level security confines it to
//! the caller's workspace (another workspace's profile does not exist: 404). RBAC permissions
//! guard each route; the CEL policy (`policies/users.yaml`) decides who sees contact data
//! (`read:contact`: the user themself and holders of manage:users) and who may delete a profile
//! (`delete:profile`: the user themself and holders of admin:users). Every change writes its
//! event to the outbox in the same transaction ([`crate::events`]).
//!
//! E-mail and phone are sealed by [`crate::crypto`] before they reach SQL and opened only for
//! callers the policy lets see them; lookups by e-mail go through the blind index
//! (`email_index`), never by decrypting rows. Lookups by preferences use jsonb containment
//! through the GIN index `profiles_preferences` (see `sql/preferences-search.sql` for why it
//! needs its own operator).

use std::fmt;

use arq_auth::cel::{Key, MapValue, Value};
use arq_auth::policy::{MapAttributes, NoAttributes};
use arq_auth::{Permission, Principal, RequirePermission, permission};
use arq_core::{FieldError, Problem};
use arq_tenancy::TenantTx;
use arq_tenancy::crypto::Encrypted;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::AppState;
use crate::events;

permission!(pub ReadUsers = "read:users");
permission!(pub WriteUsers = "write:users");
permission!(pub ManageUsers = "manage:users");
permission!(pub AdminUsers = "admin:users");

/// Longest display name, in characters (the table checks it too).
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
/// Longest e-mail address, in characters (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Largest preferences object, in bytes of compact JSON.
pub const MAX_PREFERENCES_BYTES: usize = 8 * 1024;
/// Deepest nesting of preferences (the object itself is level 1). Also what keeps stored values
/// far from the one error the LEAKPROOF containment operator could raise
/// (`sql/preferences-search.sql`).
pub const MAX_PREFERENCES_DEPTH: usize = 8;
/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;

/// A subscription tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The default.
    Free,
    /// Paid.
    Pro,
    /// Paid, with a contract.
    Enterprise,
}

impl Tier {
    /// The name the API and the table use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "free" => Self::Free,
            "pro" => Self::Pro,
            "enterprise" => Self::Enterprise,
            _ => return None,
        })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile as the API returns it. `email` and `phone` are `null` for callers the policy does
/// not let see contact data (and `phone` when there is none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The user (their token's `sub`).
    pub user_id: Uuid,
    /// How the user is shown.
    pub display_name: String,
    /// The e-mail address, decrypted.
    pub email: Option<String>,
    /// The phone number in E.164 form, decrypted.
    pub phone: Option<String>,
    /// Free-form settings (a JSON object).
    pub preferences: serde_json::Value,
    /// The subscription tier.
    pub tier: Tier,
    /// When the profile was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The body of `PUT /users/users/me`: the whole profile (absent optional fields are cleared).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutProfile {
    /// 1 to 100 characters once trimmed.
    pub display_name: String,
    /// An e-mail address.
    pub email: String,
    /// A phone number in international form (`+`, country code, number; spaces, dashes, dots
    /// and parentheses are ignored).
    #[serde(default)]
    pub phone: Option<String>,
    /// A JSON object (default `{}`).
    #[serde(default)]
    pub preferences: Option<serde_json::Value>,
}

/// The body of `PUT /users/users/{user_id}/tier`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTier {
    /// The new tier.
    pub tier: Tier,
}

/// The query of `GET /users/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub after: Option<Uuid>,
    /// Only profiles with this e-mail address (case and surrounding spaces ignored).
    pub email: Option<String>,
    /// Only profiles whose preferences contain this JSON object (`@>`).
    pub preferences: Option<String>,
}

/// One page of profiles, in user-id order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The profiles.
    pub items: Vec<Profile>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

/// A profile as stored: contact data still sealed.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    user_id: Uuid,
    display_name: String,
    email: Encrypted,
    phone: Option<Encrypted>,
    preferences: serde_json::Value,
    tier: Tier,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

// The columns every query returns; one macro so that every query is a `&'static str`.
macro_rules! columns {
    () => {
        "user_id, display_name, email, phone, preferences, tier, created_at, updated_at"
    };
}

// The four list queries, one per combination of filters, so that each has a plan of its own:
// an `$n IS NULL OR ...` form would let a generic plan serve every combination and use neither
// index. `after` is a keyset on user_id; one row more than asked tells whether there is a next
// page.
macro_rules! list_sql {
    ($filter:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM profiles WHERE ",
            $filter,
            "($1::uuid IS NULL OR user_id > $1) ORDER BY user_id LIMIT $2"
        )
    };
}

/// Every profile of the tenant: `$1` after, `$2` limit.
pub const LIST_ALL_SQL: &str = list_sql!("");
/// By e-mail blind index (`$3`), through `profiles_by_email`.
pub const LIST_BY_EMAIL_SQL: &str = list_sql!("email_index = $3 AND ");
/// By preferences containment (`$3`), through the GIN index `profiles_preferences`.
pub const LIST_BY_PREFERENCES_SQL: &str =
    list_sql!("preferences OPERATOR(arq_search.@>) $3::jsonb AND ");
/// By both (`$3` e-mail index, `$4` preferences).
pub const LIST_BY_EMAIL_AND_PREFERENCES_SQL: &str =
    list_sql!("email_index = $3 AND preferences OPERATOR(arq_search.@>) $4::jsonb AND ");

fn stored(row: &PgRow) -> Result<Stored, sqlx::Error> {
    let tier: String = row.try_get("tier")?;
    Ok(Stored {
        user_id: row.try_get("user_id")?,
        display_name: row.try_get("display_name")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        preferences: row.try_get("preferences")?,
        tier: Tier::parse(&tier).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "tier".to_owned(),
            source: format!("unknown tier {tier:?}").into(),
        })?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A body that is not the expected JSON: 415 without a JSON content type, 400 when it does not
/// parse, 422 when it parses but has the wrong shape (unknown field, missing field, bad value).
fn body_problem(e: &JsonRejection) -> Problem {
    Problem::new(e.status()).with_detail(e.body_text())
}

/// A query string that does not fit [`ListQuery`] is a validation failure (422).
fn query_problem(e: &QueryRejection) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(e.body_text())
}

/// A path whose user id is not a UUID names no profile.
fn path_problem(e: &PathRejection) -> Problem {
    Problem::not_found(format!(
        "no such profile ({}); user ids are UUIDs",
        e.body_text()
    ))
}

fn database(e: &sqlx::Error) -> Problem {
    Problem::internal(e)
}

fn crypto(e: &arq_tenancy::crypto::CryptoError) -> Problem {
    Problem::internal(e)
}

fn not_found(user: Uuid) -> Problem {
    Problem::not_found(format!("no profile for user {user} in this workspace"))
}

/// The caller's user id: the token's subject, which the platform's issuer makes a UUID.
fn caller(who: &Principal) -> Option<Uuid> {
    Uuid::parse_str(who.subject()).ok()
}

fn not_a_user() -> Problem {
    Problem::forbidden(
        "your token's subject is not a user id (a UUID); profiles belong to platform users: sign in through the auth service as a user",
    )
}

fn display_name(value: &str, errors: &mut Vec<FieldError>) -> String {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS {
        errors.push(FieldError::new(
            "display_name",
            format!(
                "must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, not counting surrounding spaces"
            ),
        ));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "display_name",
            "must not contain control characters".to_owned(),
        ));
    }
    value.to_owned()
}

/// A deliberately plain check (one `@`, a dotted domain, no spaces): whoever mails the address
/// is the real judge.
fn email(field: &'static str, value: &str, errors: &mut Vec<FieldError>) -> String {
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
        errors.push(FieldError::new(field, format!(
                "must be an e-mail address like name@example.com, at most {MAX_EMAIL_CHARS} characters"
            )));
    }
    value.to_owned()
}

/// Accepts `+` followed by 7 to 15 digits (E.164), ignoring spaces, dashes, dots and
/// parentheses, and returns that compact form.
fn phone(value: &str, errors: &mut Vec<FieldError>) -> String {
    let compact: String = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact.strip_prefix('+').unwrap_or("");
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        errors.push(FieldError::new("phone", "must be an international number: + and the country code, then the number, 7 to 15 digits in all (e.g. +44 20 7946 0958)".to_owned()));
    }
    compact
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks a preferences object (the body's, or the list filter's).
fn preferences(value: &serde_json::Value, errors: &mut Vec<FieldError>) {
    let message = if !value.is_object() {
        Some("must be a JSON object, like {\"theme\": \"dark\"}".to_owned())
    } else if value.to_string().len() > MAX_PREFERENCES_BYTES {
        Some(format!(
            "must be at most {MAX_PREFERENCES_BYTES} bytes of JSON; keep large data elsewhere"
        ))
    } else if depth(value) > MAX_PREFERENCES_DEPTH {
        Some(format!(
            "must not nest objects and arrays more than {MAX_PREFERENCES_DEPTH} levels deep"
        ))
    } else {
        None
    };
    if let Some(message) = message {
        errors.push(FieldError::new("preferences", message));
    }
}

/// Whether the CEL policy lets `who` perform `action` on `user`'s profile; the reason when not.
fn decide(state: &AppState, who: &Principal, action: &str, user: Uuid) -> Result<(), String> {
    let mut principal = MapValue::new();
    principal.insert(Key::String("id".into()), Value::string(who.subject()));
    principal.insert(
        Key::String("manages_users".into()),
        Value::Bool(who.has_permission(ManageUsers::NAME)),
    );
    principal.insert(
        Key::String("administers_users".into()),
        Value::Bool(who.has_permission(AdminUsers::NAME)),
    );
    let mut resource = MapValue::new();
    let id = user.to_string();
    resource.insert(Key::String("user_id".into()), Value::string(id.as_str()));
    // Every disclosure of contact data is a decision in the `arq::audit` log, naming who saw
    // whose.
    let decision = state.policies.decide(
        &MapAttributes::new(principal).with_id(who.subject()),
        action,
        &MapAttributes::new(resource).with_id(id),
        &NoAttributes,
    );
    if decision.allowed() {
        Ok(())
    } else {
        Err(decision.reason().to_string())
    }
}

/// The profile as `who` may see it: contact data opened only when the policy allows.
async fn present(
    state: &AppState,
    tx: &TenantTx,
    who: &Principal,
    s: Stored,
) -> Result<Profile, Problem> {
    let tenant = tx.tenant();
    let (email, phone) = if decide(state, who, "read:contact", s.user_id).is_ok() {
        let email = state
            .crypto
            .open(tenant, "email", s.user_id, &s.email)
            .await
            .map_err(|e| crypto(&e))?;
        let phone = match &s.phone {
            Some(p) => Some(
                state
                    .crypto
                    .open(tenant, "phone", s.user_id, p)
                    .await
                    .map_err(|e| crypto(&e))?,
            ),
            None => None,
        };
        (Some(email), phone)
    } else {
        (None, None)
    };
    Ok(Profile {
        user_id: s.user_id,
        display_name: s.display_name,
        email,
        phone,
        preferences: s.preferences,
        tier: s.tier,
        created_at: s.created_at,
        updated_at: s.updated_at,
    })
}

/// Reads one profile; `lock` takes the row lock that serializes changes to it.
async fn fetch(tx: &mut TenantTx, user: Uuid, lock: bool) -> Result<Option<Stored>, Problem> {
    let sql = if lock {
        concat!(
            "SELECT ",
            columns!(),
            " FROM profiles WHERE user_id = $1 FOR NO KEY UPDATE"
        )
    } else {
        concat!("SELECT ", columns!(), " FROM profiles WHERE user_id = $1")
    };
    let row = sqlx::query(sql)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| database(&e))?;
    row.map(|r| stored(&r))
        .transpose()
        .map_err(|e| database(&e))
}

/// `GET /users/users/me`: the caller's profile in this workspace (404 until they create it).
pub async fn read_me(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<ReadUsers>,
    mut tx: TenantTx,
) -> Result<Json<Profile>, Problem> {
    let me = caller(&who).ok_or_else(not_a_user)?;
    match fetch(&mut tx, me, false).await? {
        Some(s) => present(&state, &tx, &who, s).await.map(Json),
        None => Err(Problem::not_found(format!(
            "you (user {me}) have no profile in this workspace yet: create it with PUT /users/users/me"
        ))),
    }
}

/// `GET /users/users/{user_id}`.
pub async fn read(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<ReadUsers>,
    mut tx: TenantTx,
    user: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Profile>, Problem> {
    let Path(user) = user.map_err(|e| path_problem(&e))?;
    match fetch(&mut tx, user, false).await? {
        Some(s) => present(&state, &tx, &who, s).await.map(Json),
        None => Err(not_found(user)),
    }
}

/// `PUT /users/users/me`: creates or replaces the caller's profile (200), with a
/// `user.profile_updated` event naming the fields that changed (none when nothing did).
pub async fn put_me(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteUsers>,
    mut tx: TenantTx,
    body: Result<Json<PutProfile>, JsonRejection>,
) -> Result<Json<Profile>, Problem> {
    let me = caller(&who).ok_or_else(not_a_user)?;
    let Json(put) = body.map_err(|e| body_problem(&e))?;
    let mut errors = Vec::new();
    let name = display_name(&put.display_name, &mut errors);
    let address = email("email", &put.email, &mut errors);
    let number = put.phone.as_deref().map(|p| phone(p, &mut errors));
    let prefs = put
        .preferences
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    preferences(&prefs, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }

    let tenant = tx.tenant();
    // Sealed before any row is touched: the first profile of a workspace creates its data key
    // (in a transaction of its own, so the key exists even if this request fails).
    let sealed_email = state
        .crypto
        .seal(tenant, "email", me, &address)
        .await
        .map_err(|e| crypto(&e))?;
    let sealed_phone = match &number {
        Some(p) => Some(
            state
                .crypto
                .seal(tenant, "phone", me, p)
                .await
                .map_err(|e| crypto(&e))?,
        ),
        None => None,
    };
    let index = state.crypto.email_index(tenant, &address);

    let mut current = fetch(&mut tx, me, true).await?;
    if current.is_none() {
        let row = sqlx::query(concat!(
            "INSERT INTO profiles (tenant_id, user_id, display_name, email, phone, email_index, \
               preferences) \
             VALUES (arq.current_tenant_id(), $1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, user_id) DO NOTHING RETURNING ",
            columns!()
        ))
        .bind(me)
        .bind(&name)
        .bind(&sealed_email)
        .bind(&sealed_phone)
        .bind(&index)
        .bind(&prefs)
        .fetch_optional(&mut tx)
        .await
        .map_err(|e| database(&e))?;
        if let Some(row) = row {
            let created = stored(&row).map_err(|e| database(&e))?;
            let mut changed = vec!["display_name", "email"];
            if number.is_some() {
                changed.push("phone");
            }
            changed.push("preferences");
            events::profile_updated(&state, &mut tx, me, true, &changed).await?;
            return present(&state, &tx, &who, created).await.map(Json);
        }
        // A concurrent request created it first: replace that one.
        current = fetch(&mut tx, me, true).await?;
    }
    let Some(current) = current else {
        return Err(not_found(me));
    };

    // What changed, compared on the plaintext (a ciphertext differs on every write).
    let old_email = state
        .crypto
        .open(tenant, "email", me, &current.email)
        .await
        .map_err(|e| crypto(&e))?;
    let old_phone = match &current.phone {
        Some(p) => Some(
            state
                .crypto
                .open(tenant, "phone", me, p)
                .await
                .map_err(|e| crypto(&e))?,
        ),
        None => None,
    };
    let mut changed = Vec::new();
    if current.display_name != name {
        changed.push("display_name");
    }
    if old_email != address {
        changed.push("email");
    }
    if old_phone != number {
        changed.push("phone");
    }
    if current.preferences != prefs {
        changed.push("preferences");
    }
    if changed.is_empty() {
        return present(&state, &tx, &who, current).await.map(Json);
    }
    let row = sqlx::query(concat!(
        "UPDATE profiles SET display_name = $2, email = $3, phone = $4, email_index = $5, \
           preferences = $6, updated_at = now() \
         WHERE user_id = $1 RETURNING ",
        columns!()
    ))
    .bind(me)
    .bind(&name)
    .bind(&sealed_email)
    .bind(&sealed_phone)
    .bind(&index)
    .bind(&prefs)
    .fetch_one(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let updated = stored(&row).map_err(|e| database(&e))?;
    events::profile_updated(&state, &mut tx, me, false, &changed).await?;
    present(&state, &tx, &who, updated).await.map(Json)
}

/// `GET /users/users?email=&preferences=&limit=&after=`: one page of the workspace's profiles
/// in user-id order, optionally only those with an e-mail address (through the blind index) or
/// whose preferences contain a JSON object (through the GIN index). Keyset pagination: `next`
/// is the last user id of the page.
pub async fn list(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<ReadUsers>,
    mut tx: TenantTx,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Query(q) = query.map_err(|e| query_problem(&e))?;
    let mut errors = Vec::new();
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        errors.push(FieldError::new(
            "limit",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let address = q.email.as_deref().map(|e| email("email", e, &mut errors));
    let prefs = match q.preferences.as_deref() {
        None => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => {
                preferences(&v, &mut errors);
                Some(v)
            }
            Err(e) => {
                errors.push(FieldError::new("preferences", format!(
                        "must be a URL-encoded JSON object, like %7B%22theme%22%3A%22dark%22%7D for {{\"theme\":\"dark\"}} ({e})"
                    )));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let index = address.map(|a| state.crypto.email_index(tx.tenant(), &a));
    let fetch_limit = i64::from(limit) + 1;
    let query = match (&index, &prefs) {
        (None, None) => sqlx::query(LIST_ALL_SQL).bind(q.after).bind(fetch_limit),
        (Some(i), None) => sqlx::query(LIST_BY_EMAIL_SQL)
            .bind(q.after)
            .bind(fetch_limit)
            .bind(i),
        (None, Some(p)) => sqlx::query(LIST_BY_PREFERENCES_SQL)
            .bind(q.after)
            .bind(fetch_limit)
            .bind(p),
        (Some(i), Some(p)) => sqlx::query(LIST_BY_EMAIL_AND_PREFERENCES_SQL)
            .bind(q.after)
            .bind(fetch_limit)
            .bind(i)
            .bind(p),
    };
    let rows = query.fetch_all(&mut tx).await.map_err(|e| database(&e))?;
    let mut found = rows
        .iter()
        .map(stored)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| database(&e))?;
    let next = if found.len() > limit as usize {
        found.truncate(limit as usize);
        found.last().map(|s| s.user_id)
    } else {
        None
    };
    let mut items = Vec::with_capacity(found.len());
    for s in found {
        items.push(present(&state, &tx, &who, s).await?);
    }
    Ok(Json(Page { items, next }))
}

/// `PUT /users/users/{user_id}/tier` (admin:users): sets the tier (200), with a
/// `user.tier_changed` event when it changed.
pub async fn put_tier(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<AdminUsers>,
    mut tx: TenantTx,
    user: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<PutTier>, JsonRejection>,
) -> Result<Json<Profile>, Problem> {
    let Path(user) = user.map_err(|e| path_problem(&e))?;
    let Json(put) = body.map_err(|e| body_problem(&e))?;
    let current = fetch(&mut tx, user, true)
        .await?
        .ok_or_else(|| not_found(user))?;
    if current.tier == put.tier {
        return present(&state, &tx, &who, current).await.map(Json);
    }
    let row = sqlx::query(concat!(
        "UPDATE profiles SET tier = $2, updated_at = now() WHERE user_id = $1 RETURNING ",
        columns!()
    ))
    .bind(user)
    .bind(put.tier.as_str())
    .fetch_one(&mut tx)
    .await
    .map_err(|e| database(&e))?;
    let updated = stored(&row).map_err(|e| database(&e))?;
    events::tier_changed(&state, &mut tx, user, put.tier, current.tier).await?;
    present(&state, &tx, &who, updated).await.map(Json)
}

/// `DELETE /users/users/{user_id}`: the user themself or a holder of admin:users deletes the
/// profile (204), with a `user.deleted` event. The sealed contact data goes with the row.
pub async fn delete(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<WriteUsers>,
    mut tx: TenantTx,
    user: Result<Path<Uuid>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path(user) = user.map_err(|e| path_problem(&e))?;
    if fetch(&mut tx, user, true).await?.is_none() {
        return Err(not_found(user));
    }
    decide(&state, &who, "delete:profile", user).map_err(|reason| {
        Problem::forbidden(format!(
            "deleting the profile of user {user} is not allowed: only the user themself or a holder of admin:users may ({reason})"
        ))
    })?;
    sqlx::query("DELETE FROM profiles WHERE user_id = $1")
        .bind(user)
        .execute(&mut tx)
        .await
        .map_err(|e| database(&e))?;
    events::deleted(&state, &mut tx, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::json;

    use super::*;

    #[test]
    fn phones_are_compacted_to_e164() {
        let mut errors = Vec::new();
        assert_eq!(phone("+44 20 7946-0958", &mut errors), "+442079460958");
        assert_eq!(phone("+1 (555) 010.0199", &mut errors), "+15550100199");
        assert!(errors.is_empty());
        for bad in [
            "020 7946 0958",
            "+12",
            "+1234567890123456",
            "+44 20 79x6",
            "",
        ] {
            let mut errors = Vec::new();
            phone(bad, &mut errors);
            assert_eq!(errors.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn preferences_must_be_a_small_shallow_object() {
        let check = |v: serde_json::Value| {
            let mut errors = Vec::new();
            preferences(&v, &mut errors);
            errors.into_iter().map(|e| e.message).collect::<Vec<_>>()
        };
        assert!(check(json!({})).is_empty());
        assert!(check(json!({"theme": "dark", "a": {"b": [1, {"c": 2}]}})).is_empty());
        for bad in [json!([1]), json!("x"), json!(null), json!(3)] {
            assert!(check(bad)[0].contains("JSON object"));
        }
        assert!(check(json!({ "k": "x".repeat(MAX_PREFERENCES_BYTES) }))[0].contains("bytes"));
        let mut deep = json!(1);
        for _ in 0..MAX_PREFERENCES_DEPTH {
            deep = json!({ "d": deep });
        }
        assert!(check(deep.clone()).is_empty());
        assert!(check(json!({ "d": deep }))[0].contains("levels"));
    }

    #[test]
    fn the_list_queries_use_their_index_operators() {
        assert!(LIST_BY_PREFERENCES_SQL.contains("OPERATOR(arq_search.@>) $3::jsonb"));
        assert!(LIST_BY_EMAIL_SQL.contains("email_index = $3"));
        assert!(!LIST_ALL_SQL.contains("$3"));
        assert!(LIST_BY_EMAIL_AND_PREFERENCES_SQL.contains("$4::jsonb"));
    }

    #[test]
    fn tiers_round_trip() {
        for t in [Tier::Free, Tier::Pro, Tier::Enterprise] {
            assert_eq!(Tier::parse(t.as_str()), Some(t));
        }
    }
}
