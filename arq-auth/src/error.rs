//! Why authentication failed, and how each failure is answered over HTTP.

use arq_core::{IntoProblem, Problem};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Why a bearer token or API key was not accepted.
///
/// Every variant is answered with the same `401` problem: the client learns that its credentials
/// were refused, never which check failed (that is logged at `debug` instead), so the answer cannot
/// be used as an oracle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer …` header and no API key header.
    #[error("no credentials: send `Authorization: Bearer <token>` or an API key")]
    MissingCredentials,
    /// The token is longer than the configured maximum.
    #[error("the token is longer than {max} bytes; tokens this large are refused unread")]
    TokenTooLarge {
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// The token is not three base64url segments of JSON, or a claim has the wrong type.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The header names an algorithm that is not configured (`none`, HS*, …).
    #[error("the token's algorithm is not accepted: only the configured algorithms are")]
    AlgorithmNotAllowed,
    /// The header has no `kid`, or the `kid` is not in the key ring even after a refresh.
    #[error("the token's key id is unknown: the issuer's JWKS has no such key")]
    UnknownKey,
    /// The signature does not match the header and payload.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the allowed skew).
    #[error("the token has expired; obtain a new one")]
    Expired,
    /// `nbf` is in the future (beyond the allowed skew).
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("the token's issuer is not accepted")]
    BadIssuer,
    /// `aud` is missing or does not contain the configured audience.
    #[error("the token's audience does not include this service")]
    BadAudience,
    /// A required claim (`exp`, `nbf`, `iss`, `aud`, `sub`) is missing.
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    /// The API key is unknown, revoked, expired or its secret does not match.
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// The key set could not be fetched or parsed.
    #[error("the issuer's keys could not be loaded: {0}")]
    KeySource(String),
    /// Storage failed while checking the credential.
    #[error("the credential store failed: {0}")]
    Storage(String),
}

impl AuthError {
    /// Whether the failure is the server's (keys or storage unavailable) rather than the
    /// client's credentials.
    pub fn is_server_error(&self) -> bool {
        matches!(self, Self::KeySource(_) | Self::Storage(_))
    }

    pub(crate) fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match error.kind() {
            K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidClaimFormat(_) => {
                Self::Malformed(error.to_string())
            }
            K::InvalidAlgorithm | K::InvalidAlgorithmName => Self::AlgorithmNotAllowed,
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidIssuer => Self::BadIssuer,
            K::InvalidAudience => Self::BadAudience,
            K::MissingRequiredClaim(c) => match c.as_str() {
                "iss" => Self::BadIssuer,
                "aud" => Self::BadAudience,
                other => Self::MissingClaim(other.to_owned()),
            },
            // InvalidSignature, and key-shape errors (an RSA key used for an HMAC header and the like) are signature
            // failures from the client's point of view.
            _ => Self::BadSignature,
        }
    }
}

impl IntoProblem for AuthError {
    fn into_problem(self) -> Problem {
        if self.is_server_error() {
            tracing::warn!(error = %self, "authentication unavailable");
            return Problem::service_unavailable(5)
                .with_detail("authentication is temporarily unavailable; retry shortly");
        }
        tracing::debug!(reason = %self, "credentials refused");
        Problem::unauthorized("the request lacks valid credentials")
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let server = self.is_server_error();
        let mut response = self.into_problem().into_response();
        if !server {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// The rejection when a route needs a permission the caller lacks, or needs MFA the caller's
/// token does not show.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    /// The caller is authenticated but lacks the permission.
    #[error("the permission {0} is required")]
    MissingPermission(String),
    /// The permission needs a token whose `amr` shows multi-factor authentication.
    #[error("the permission {0} requires multi-factor authentication")]
    StepUpRequired(String),
}

impl IntoProblem for Forbidden {
    fn into_problem(self) -> Problem {
        match self {
            Self::MissingPermission(p) => Problem::forbidden(format!("the permission {p} is required"))
                .with_extension("permission", p),
            Self::StepUpRequired(p) => Problem::new(StatusCode::UNAUTHORIZED)
                .with_detail(format!(
                    "the permission {p} requires multi-factor authentication; sign in again with a second factor"
                ))
                .with_extension("permission", p),
        }
    }
}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let step_up = matches!(self, Self::StepUpRequired(_));
        let mut response = self.into_problem().into_response();
        if step_up {
            // RFC 9470: the step-up authentication challenge.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer error=\"insufficient_user_authentication\", error_description=\"multi-factor authentication required\"",
                ),
            );
        }
        response
    }
}
