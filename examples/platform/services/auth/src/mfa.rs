//! TOTP enrolment and recovery codes for the signed-in caller.
//!
//! 1. `POST /auth/mfa/totp` starts enrolment: the answer carries the secret (base32, for manual
//!    entry), the `otpauth://` URI and the same URI as an SVG QR code.
//! 2. `POST /auth/mfa/totp/confirm {"code": "123456"}` confirms it with a first code from the
//!    app. From then on a password login answers `mfa_required` and tokens come from the MFA
//!    grant, with `amr` containing `mfa`.
//!
//! Once a user has a confirmed authenticator, re-enrolling (which replaces the secret) and
//! generating recovery codes need a token from an MFA login: a token from before the second
//! factor existed (or a stolen refresh token of that time) cannot replace it.

use arq_auth::Principal;
use arq_auth::issuer::TokenIssuer;
use arq_auth::mfa::MfaError;
use arq_core::Problem;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// The answer to `POST /auth/mfa/totp`.
#[derive(Debug, Serialize)]
pub struct TotpEnrolment {
    /// The shared secret in base32, for manual entry.
    pub secret: String,
    /// The `otpauth://totp/…` URI an authenticator app takes.
    pub otpauth_uri: String,
    /// The URI as a QR code (an SVG document).
    pub qr_svg: String,
}

/// The body of `POST /auth/mfa/totp/confirm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotp {
    /// The current code from the authenticator app.
    pub code: String,
}

/// The answer to `POST /auth/mfa/recovery-codes`.
#[derive(Debug, Serialize)]
pub struct RecoveryCodes {
    /// Ten single-use codes, shown once.
    pub codes: Vec<String>,
}

fn storage(e: &MfaError) -> Problem {
    Problem::internal(e)
}

/// Users only: a service account (client credentials) has no second factor to manage.
fn user(who: &Principal) -> Option<&str> {
    let subject = who.subject();
    (!subject.starts_with("client:")).then_some(subject)
}

fn service_account() -> Problem {
    Problem::forbidden(
        "service accounts (client credentials) have no second factor; sign in as a user",
    )
}

/// `POST /auth/mfa/totp`: starts (or restarts) TOTP enrolment of the caller.
pub async fn enroll_totp(
    State(issuer): State<TokenIssuer>,
    who: Principal,
) -> Result<(StatusCode, Json<TotpEnrolment>), Problem> {
    let subject = user(&who).ok_or_else(service_account)?;
    let mfa = issuer.mfa();
    if mfa.has_totp(subject).await.map_err(|e| storage(&e))? && !who.has_mfa() {
        return Err(Problem::forbidden(
            "an authenticator is already set up: sign in with it (the MFA grant) to replace it",
        ));
    }
    // The account label in the app: the username is not in the token, the subject is stable.
    let enrolment = mfa
        .enroll_totp(subject, subject)
        .await
        .map_err(|e| storage(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrolment {
            secret: enrolment.secret_base32,
            otpauth_uri: enrolment.otpauth_uri,
            qr_svg: enrolment.qr_svg,
        }),
    ))
}

/// `POST /auth/mfa/totp/confirm`: confirms enrolment with a first code.
pub async fn confirm_totp(
    State(issuer): State<TokenIssuer>,
    who: Principal,
    Json(body): Json<ConfirmTotp>,
) -> Result<StatusCode, Problem> {
    let subject = user(&who).ok_or_else(service_account)?;
    match issuer.mfa().confirm_totp(subject, body.code.trim()).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(MfaError::Storage(e)) => Err(Problem::internal(&e)),
        Err(MfaError::NotEnrolled) => Err(Problem::new(StatusCode::CONFLICT)
            .with_detail("no enrolment to confirm: POST /auth/mfa/totp first")),
        Err(e) => Err(
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(format!(
                "{e}: enter the current code from the authenticator app"
            )),
        ),
    }
}

/// `POST /auth/mfa/recovery-codes`: replaces the caller's recovery codes with ten new ones.
pub async fn recovery_codes(
    State(issuer): State<TokenIssuer>,
    who: Principal,
) -> Result<(StatusCode, Json<RecoveryCodes>), Problem> {
    let subject = user(&who).ok_or_else(service_account)?;
    if !who.has_mfa() {
        return Err(Problem::forbidden(
            "recovery codes need a token from an MFA login: set up TOTP and sign in with it",
        ));
    }
    let codes = issuer
        .mfa()
        .generate_recovery_codes(subject)
        .await
        .map_err(|e| storage(&e))?;
    Ok((StatusCode::CREATED, Json(RecoveryCodes { codes })))
}
