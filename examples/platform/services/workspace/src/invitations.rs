//! Invitations: an admin invites an e-mail address with a role; a single-use code is mailed
//! through the outbox (`email.send`, delivered by the notifications worker); whoever signs in
//! and sends the code with the workspace id joins with that role.
//!
//! The code is 256 random bits, shown only in the e-mail: the table keeps its SHA-256, which
//! is what accepting looks up. It expires after [`VALIDITY_DAYS`] days and works once: accepting
//! marks it used in the same statement that checks it (`UPDATE … WHERE accepted_at IS NULL`), so
//! of two concurrent accepts the second waits for the first's row lock and then finds it used.
//! An unknown, used or expired code all get the same 404, so the answer tells nothing about
//! which codes exist. Inviting a pending address again replaces its code (the old one stops
//! working), role and expiry.
//!
//! Possession of the code is the authorization to join: the platform does not know which
//! e-mail address a user has, so the invitation is bound to the code, not to the address.

use arq_auth::{Principal, RequirePermission};
use arq_core::{IntoProblem, Problem, TenantId};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use arq_tenancy::TenantTx;

use crate::events::{self, SendEmail};
use crate::members::AdminWorkspace;
use crate::workspaces::fetch;
use crate::{AppState, problems};

/// How long an invitation can be accepted.
pub const VALIDITY_DAYS: i32 = 7;
/// Longest e-mail address, in characters (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Random bytes in a code (256 bits; shown as 64 hex digits).
pub const CODE_BYTES: usize = 32;

/// The body of `POST /workspaces/workspaces/{id}/invitations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    /// Where the code is mailed.
    pub email: String,
    /// The role the invitee gets (one of `[rbac.roles]`).
    pub role: String,
}

/// An invitation as the API returns it (never with its code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// Its id (also in the e-mail event).
    pub id: Uuid,
    /// The invited address.
    pub email: String,
    /// The role it gives.
    pub role: String,
    /// Until when it can be accepted.
    pub expires_at: DateTime<Utc>,
}

/// The body of `POST /workspaces/invitations/accept`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// The workspace named in the e-mail.
    pub workspace_id: Uuid,
    /// The code from the e-mail.
    pub code: String,
}

/// The membership an accepted invitation created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The workspace joined.
    pub workspace_id: Uuid,
    /// The user who joined (the caller).
    pub user_id: Uuid,
    /// Their role there.
    pub role: String,
}

/// A deliberately plain check (one `@`, a dotted domain, no spaces): the address is only ever
/// handed to the mailer, which is the real judge.
fn valid_email(value: &str) -> Result<String, Problem> {
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
    if ok {
        Ok(value.to_owned())
    } else {
        Err(problems::invalid(
            "email",
            format!(
                "must be an e-mail address like name@example.com, at most {MAX_EMAIL_CHARS} characters"
            ),
        ))
    }
}

/// A fresh code, as hex.
fn new_code() -> String {
    let mut bytes = [0u8; CODE_BYTES];
    rand::fill(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// What the table stores for `code`.
fn code_hash(code: &str) -> Vec<u8> {
    Sha256::digest(code.trim().as_bytes()).to_vec()
}

/// The e-mail's body: the two lines the invitee (and scripts) look for, `Invitation code: …`
/// and `Workspace: …`, and how to use them.
fn email_body(
    workspace: &str,
    workspace_id: Uuid,
    role: &str,
    code: &str,
    expires_at: DateTime<Utc>,
) -> String {
    format!(
        "You are invited to join the workspace \"{workspace}\" as {role}.\n\
         \n\
         To accept, sign in and send the code below with the workspace id\n\
         (POST /api/v1/workspaces/invitations/accept {{\"workspace_id\", \"code\"}}).\n\
         \n\
         Invitation code: {code}\n\
         Workspace: {workspace_id}\n\
         \n\
         The code works once and expires at {}.\n\
         If you did not expect this invitation, ignore this e-mail.\n",
        expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// `POST /workspaces/workspaces/{id}/invitations` `{"email", "role"}` (admin:workspace): invites
/// the address (201). Emits `invitation.created` and the `email.send` that carries the code.
pub async fn create(
    State(state): State<AppState>,
    RequirePermission(who, ..): RequirePermission<AdminWorkspace>,
    mut tx: TenantTx,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<NewInvitation>, JsonRejection>,
) -> Result<(StatusCode, Json<Invitation>), Problem> {
    let Path(id) = id.map_err(|e| problems::path(&e))?;
    let Json(new) = body.map_err(|e| problems::body(&e))?;
    let email = valid_email(&new.email)?;
    let role = problems::known_role(&new.role, &state.roles)?;
    let inviter = problems::user_id(&who)?;
    let workspace = fetch(&mut tx, id, false).await?;
    let code = new_code();
    // One pending invitation per address: inviting again replaces its code, role and expiry
    // (the old code stops working at once).
    let (invitation_id, email, role, expires_at): (Uuid, String, String, DateTime<Utc>) =
        sqlx::query_as(
            "INSERT INTO invitations (tenant_id, id, email, role, code_sha256, created_by, expires_at) \
             VALUES (arq.current_tenant_id(), $1, $2, $3, $4, $5, now() + make_interval(days => $6)) \
             ON CONFLICT (tenant_id, lower(email)) WHERE accepted_at IS NULL DO UPDATE \
               SET email = EXCLUDED.email, role = EXCLUDED.role, \
                   code_sha256 = EXCLUDED.code_sha256, created_by = EXCLUDED.created_by, \
                   created_at = now(), expires_at = EXCLUDED.expires_at \
             RETURNING id, email, role, expires_at",
        )
        .bind(Uuid::now_v7())
        .bind(&email)
        .bind(&role)
        .bind(code_hash(&code))
        .bind(inviter)
        .bind(VALIDITY_DAYS)
        .fetch_one(&mut tx)
        .await
        .map_err(|e| problems::database(&e))?;
    events::invitation_created(&state, &mut tx, id, invitation_id, &role).await?;
    let mail = SendEmail {
        to: email.clone(),
        subject: format!("You are invited to join {}", workspace.name),
        body: email_body(&workspace.name, id, &role, &code, expires_at),
        invitation_id,
    };
    events::send_email(&state, &mut tx, mail).await?;
    Ok((
        StatusCode::CREATED,
        Json(Invitation {
            id: invitation_id,
            email,
            role,
            expires_at,
        }),
    ))
}

fn no_invitation() -> Problem {
    Problem::not_found(
        "no valid invitation for this workspace and code: the code is unknown, already used or \
         expired (codes last 7 days and work once); ask an admin of the workspace to invite you \
         again",
    )
}

/// `POST /workspaces/invitations/accept` `{"workspace_id", "code"}`: the caller joins the
/// workspace with the invitation's role (201), `membership.added`. Needs only a user's token.
/// Unknown, used and expired codes are one 404; a caller who is already a member gets 409 (and
/// the code stays usable).
pub async fn accept(
    State(state): State<AppState>,
    who: Principal,
    body: Result<Json<Acceptance>, JsonRejection>,
) -> Result<(StatusCode, Json<Joined>), Problem> {
    let Json(acceptance) = body.map_err(|e| problems::body(&e))?;
    let user = problems::user_id(&who)?;
    // The nil UUID is no tenant; it gets the same answer as any unknown workspace.
    let tenant = TenantId::from_uuid(acceptance.workspace_id).map_err(|_| no_invitation())?;
    let id = tenant.into_uuid();
    let mut tx = state
        .tenants
        .begin(tenant)
        .await
        .map_err(IntoProblem::into_problem)?;
    // Checks and uses the code in one statement: a concurrent accept of the same code waits
    // for this row's lock, then sees it used.
    let used: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE invitations SET accepted_at = now(), accepted_by = $2 \
         WHERE code_sha256 = $1 AND accepted_at IS NULL AND expires_at > now() \
         RETURNING id, role",
    )
    .bind(code_hash(&acceptance.code))
    .bind(user)
    .fetch_optional(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?;
    let Some((invitation_id, role)) = used else {
        return Err(no_invitation());
    };
    let joined = sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) \
         VALUES (arq.current_tenant_id(), $1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(&role)
    .execute(&mut tx)
    .await
    .map_err(|e| problems::database(&e))?
    .rows_affected();
    if joined == 0 {
        // Dropping the transaction rolls the use of the code back.
        return Err(Problem::new(StatusCode::CONFLICT).with_detail(format!(
            "you are already a member of workspace {id}; an admin can change your role \
             (PUT /workspaces/workspaces/{id}/members/{user})"
        )));
    }
    events::membership_added(&state, &mut tx, id, user, &role).await?;
    tx.commit().await.map_err(IntoProblem::into_problem)?;
    tracing::info!(workspace_id = %id, user_id = %user, %invitation_id, "invitation accepted");
    Ok((
        StatusCode::CREATED,
        Json(Joined {
            workspace_id: id,
            user_id: user,
            role,
        }),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn codes_are_fresh_256_bit_hex() {
        let a = new_code();
        let b = new_code();
        assert_eq!(a.len(), CODE_BYTES * 2);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(code_hash(&a).len(), 32);
        assert_eq!(code_hash(&format!(" {a}\n")), code_hash(&a));
    }

    #[test]
    fn the_body_has_the_lines_scripts_look_for() {
        let id = Uuid::now_v7();
        let body = email_body("Acme", id, "member", "abc123", Utc::now());
        assert!(
            body.lines().any(|l| l == "Invitation code: abc123"),
            "{body}"
        );
        assert!(
            body.lines().any(|l| l == format!("Workspace: {id}")),
            "{body}"
        );
    }

    #[test]
    fn email_addresses_are_checked_plainly() {
        assert_eq!(valid_email(" a@example.com ").unwrap(), "a@example.com");
        for bad in [
            "",
            "a",
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@example.",
        ] {
            assert!(valid_email(bad).is_err(), "{bad:?}");
        }
    }
}
