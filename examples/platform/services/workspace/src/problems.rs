//! The problem+json answers the handlers share: each says what was wrong and what to do.

use arq_auth::Principal;
use arq_core::Problem;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use uuid::Uuid;

/// A body that is not the expected JSON: 415 without a JSON content type, 400 when it does not
/// parse, 422 when it parses but has the wrong shape (unknown field, missing field, bad value).
pub(crate) fn body(e: &JsonRejection) -> Problem {
    Problem::new(e.status()).with_detail(e.body_text())
}

/// A path whose ids are not UUIDs names nothing.
pub(crate) fn path(e: &PathRejection) -> Problem {
    Problem::not_found(format!(
        "no such resource ({}); workspace and user ids are UUIDs",
        e.body_text()
    ))
}

/// One field's validation failure (422), with the `errors` extension listing it.
pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Problem {
    let message = message.into();
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
        .with_detail(format!("{field}: {message}"))
        .with_extension(
            "errors",
            vec![serde_json::json!({ "field": field, "message": message })],
        )
}

/// A database failure: a 500 that names nothing of the query.
pub(crate) fn database(e: &sqlx::Error) -> Problem {
    Problem::internal(e)
}

/// The answer for a workspace the caller cannot see, whether it does not exist or belongs to
/// another tenant: the same 404, so ids cannot be probed.
pub(crate) fn no_workspace(id: Uuid) -> Problem {
    Problem::not_found(format!(
        "no workspace {id} here; a token is for one workspace (its `tid`): sign in with \
         tenant={id} to act in that workspace"
    ))
}

/// The user id of the caller: tokens of users carry it as `sub`; service accounts (whose `sub`
/// is a client id) cannot hold memberships.
pub(crate) fn user_id(who: &Principal) -> Result<Uuid, Problem> {
    Uuid::parse_str(who.subject()).map_err(|_| {
        Problem::forbidden(format!(
            "the token's subject {:?} is not a user id: only users (signed in with a password) \
             create or join workspaces, not service accounts",
            who.subject()
        ))
    })
}

/// A role that is not one of `roles` (400, listing them).
pub(crate) fn unknown_role(role: &str, roles: &[String]) -> Problem {
    Problem::bad_request(format!(
        "role {role:?} is not a role of this platform; use one of: {}",
        roles.join(", ")
    ))
    .with_extension("roles", roles.to_vec())
}

/// Checks `role` against the configured roles.
pub(crate) fn known_role(role: &str, roles: &[String]) -> Result<String, Problem> {
    if roles.iter().any(|r| r == role) {
        Ok(role.to_owned())
    } else {
        Err(unknown_role(role, roles))
    }
}
