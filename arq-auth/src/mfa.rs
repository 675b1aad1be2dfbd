//! Multi-factor authentication: TOTP (RFC 6238) enrollment and verification, one-time codes by
//! email or SMS through a pluggable [`OtpSender`], and single-use recovery codes.
//!
//! TOTP codes are checked against the current 30-second step and one step either side, and each
//! code is accepted once: the store remembers the last accepted step and refuses that step and
//! every earlier one, atomically, so a replayed code fails even under concurrent requests.

use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm as TotpAlgorithm, TOTP};
use uuid::Uuid;

use crate::claims::unix_now;
use crate::store::hash_secret;

/// The TOTP time step, in seconds.
pub const TOTP_STEP_SECS: u64 = 30;
const TOTP_DIGITS: usize = 6;
/// Steps accepted either side of the current one.
const TOTP_WINDOW: u64 = 1;
/// Attempts allowed on one emailed or texted code.
const OTP_MAX_ATTEMPTS: i32 = 5;

/// Why a second factor was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MfaError {
    /// The subject has no (confirmed) TOTP enrollment.
    #[error("no authenticator app is enrolled for this account")]
    NotEnrolled,
    /// The code is wrong or outside the ±1 step window.
    #[error("the code is not valid")]
    InvalidCode,
    /// The code (or an older one) was already used.
    #[error("the code was already used; wait for the next one")]
    Replayed,
    /// The one-time code expired.
    #[error("the code has expired; request a new one")]
    Expired,
    /// The code was sent over another channel than the one it was entered for.
    #[error("that code was not sent over this channel")]
    WrongChannel,
    /// No confirmed destination (email address or phone number) for this channel.
    #[error("no confirmed destination for this channel")]
    NoDestination,
    /// Too many wrong attempts on this one-time code.
    #[error("too many attempts; request a new code")]
    TooManyAttempts,
    /// The email or SMS could not be sent.
    #[error("the code could not be sent: {0}")]
    Send(String),
    /// The QR code could not be rendered.
    #[error("the QR code could not be rendered: {0}")]
    Qr(String),
    /// The database failed.
    #[error("the MFA store failed: {0}")]
    Storage(#[from] sqlx::Error),
}

/// Computes the RFC 6238 code for `secret` at `unix_time`.
///
/// # Example
/// ```
/// use arq_auth::mfa::{TotpHash, totp_code};
/// // RFC 6238 Appendix B, SHA-1, T = 59.
/// assert_eq!(totp_code(b"12345678901234567890", TotpHash::Sha1, 8, 59), "94287082");
/// ```
pub fn totp_code(secret: &[u8], hash: TotpHash, digits: usize, unix_time: u64) -> String {
    // totp-rs implements RFC 4226/6238 (dynamic truncation and all); `new_unchecked` because
    // the RFC's own SHA-1 test secret is shorter than totp-rs's enrollment minimum.
    TOTP::new_unchecked(
        hash.into(),
        digits,
        0,
        TOTP_STEP_SECS,
        secret.to_vec(),
        None,
        String::new(),
    )
    .generate(unix_time)
}

/// The HMAC of a TOTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TotpHash {
    /// HMAC-SHA-1 (what authenticator apps use).
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl From<TotpHash> for TotpAlgorithm {
    fn from(h: TotpHash) -> Self {
        match h {
            TotpHash::Sha1 => Self::SHA1,
            TotpHash::Sha256 => Self::SHA256,
            TotpHash::Sha512 => Self::SHA512,
        }
    }
}

/// What the user needs to add the account to an authenticator app.
#[derive(Clone)]
pub struct TotpEnrollment {
    /// The secret in base32, for manual entry.
    pub secret_base32: String,
    /// The `otpauth://totp/…` URI.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment").finish_non_exhaustive()
    }
}

/// The channel of a one-time code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtpChannel {
    /// By email.
    Email,
    /// By SMS.
    Sms,
}

impl OtpChannel {
    /// `email` or `sms`: the name used in the database and in the issuer's requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    /// The channel named `email` or `sms`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "email" => Some(Self::Email),
            "sms" => Some(Self::Sms),
            _ => None,
        }
    }

    /// The `amr` value (RFC 8176) a code from this channel proves.
    pub fn amr(self) -> &'static str {
        match self {
            Self::Email => "otp",
            Self::Sms => "sms",
        }
    }
}

/// Delivers one-time codes: implement it over your email or SMS provider.
pub trait OtpSender: Send + Sync + 'static {
    /// Sends `code` to `destination` (an address or phone number) over `channel`.
    fn send<'a>(
        &'a self,
        channel: OtpChannel,
        destination: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The second factors a subject has set up (see [`MfaStore::factors`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MfaFactors {
    /// A confirmed authenticator app.
    pub totp: bool,
    /// A confirmed email address for one-time codes.
    pub email: bool,
    /// A confirmed phone number for one-time codes.
    pub sms: bool,
    /// Unused recovery codes left.
    pub recovery_codes: u32,
}

impl MfaFactors {
    /// Whether sign-in needs a second factor: an app or a confirmed email/SMS destination
    /// (recovery codes alone are a fallback, not a factor to ask for).
    pub fn required(&self) -> bool {
        self.totp || self.email || self.sms
    }
}

/// TOTP enrollments, one-time codes and recovery codes in PostgreSQL (tables from
/// [`migrate`](crate::migrate)).
#[derive(Debug, Clone)]
pub struct MfaStore {
    pool: PgPool,
    issuer: String,
    otp_ttl: Duration,
}

impl MfaStore {
    /// A store whose `otpauth` URIs name `issuer` (shown in authenticator apps; no `:`).
    pub fn new(pool: PgPool, issuer: impl Into<String>) -> Self {
        Self {
            pool,
            issuer: issuer.into().replace(':', ""),
            otp_ttl: Duration::from_secs(600),
        }
    }

    /// How long an emailed or texted code stays valid (10 minutes).
    pub fn otp_ttl(&self) -> Duration {
        self.otp_ttl
    }

    /// Starts (or restarts) TOTP enrollment for `subject`, labelled `account` in the app. The
    /// enrollment counts once a first code is confirmed with [`confirm_totp`](Self::confirm_totp).
    pub async fn enroll_totp(
        &self,
        subject: &str,
        account: &str,
    ) -> Result<TotpEnrollment, MfaError> {
        let mut secret = vec![0u8; 20];
        rand::fill(&mut secret[..]);
        let totp = TOTP::new(
            TotpAlgorithm::SHA1,
            TOTP_DIGITS,
            0,
            TOTP_STEP_SECS,
            secret.clone(),
            Some(self.issuer.clone()),
            account.replace(':', ""),
        )
        .map_err(|e| MfaError::Qr(e.to_string()))?;
        let otpauth_uri = totp.get_url();
        let qr_svg = qrcode::QrCode::new(otpauth_uri.as_bytes())
            .map_err(|e| MfaError::Qr(e.to_string()))?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build();
        sqlx::query(
            "insert into arq_auth_totp (subject, secret) values ($1, $2)
             on conflict (subject) do update
                set secret = excluded.secret, confirmed_at = null, last_step = -1,
                    created_at = now()",
        )
        .bind(subject)
        .bind(&secret)
        .execute(&self.pool)
        .await?;
        Ok(TotpEnrollment {
            secret_base32: totp.get_secret_base32(),
            otpauth_uri,
            qr_svg,
        })
    }

    /// Confirms enrollment with a first code from the app.
    pub async fn confirm_totp(&self, subject: &str, code: &str) -> Result<(), MfaError> {
        self.check_totp(subject, code, unix_now(), false).await?;
        sqlx::query("update arq_auth_totp set confirmed_at = now() where subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether `subject` has a confirmed TOTP enrollment.
    pub async fn has_totp(&self, subject: &str) -> Result<bool, MfaError> {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from arq_auth_totp where subject = $1 and confirmed_at is not null",
        )
        .bind(subject)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Verifies a TOTP code now.
    pub async fn verify_totp(&self, subject: &str, code: &str) -> Result<(), MfaError> {
        self.verify_totp_at(subject, code, unix_now()).await
    }

    /// Verifies a TOTP code as if the time were `unix_time`.
    pub async fn verify_totp_at(
        &self,
        subject: &str,
        code: &str,
        unix_time: u64,
    ) -> Result<(), MfaError> {
        self.check_totp(subject, code, unix_time, true).await
    }

    async fn check_totp(
        &self,
        subject: &str,
        code: &str,
        unix_time: u64,
        confirmed: bool,
    ) -> Result<(), MfaError> {
        let row: Option<(Vec<u8>, bool)> = sqlx::query_as(
            "select secret, confirmed_at is not null from arq_auth_totp where subject = $1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        let Some((secret, is_confirmed)) = row else {
            return Err(MfaError::NotEnrolled);
        };
        if confirmed && !is_confirmed {
            return Err(MfaError::NotEnrolled);
        }
        let code = code.trim();
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MfaError::InvalidCode);
        }
        let now_step = unix_time / TOTP_STEP_SECS;
        let mut matched = None;
        // Check every step in the window (no early exit) so timing does not reveal which matched.
        for step in now_step.saturating_sub(TOTP_WINDOW)..=now_step + TOTP_WINDOW {
            let expected = totp_code(&secret, TotpHash::Sha1, TOTP_DIGITS, step * TOTP_STEP_SECS);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                matched = Some(step);
            }
        }
        let step = matched.ok_or(MfaError::InvalidCode)?;
        let step = i64::try_from(step).map_err(|_| MfaError::InvalidCode)?;
        // Accept each step once, and never one older than the last accepted.
        let accepted = sqlx::query(
            "update arq_auth_totp set last_step = $2 where subject = $1 and last_step < $2",
        )
        .bind(subject)
        .bind(step)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if accepted == 1 {
            Ok(())
        } else {
            Err(MfaError::Replayed)
        }
    }

    /// Removes the TOTP enrollment.
    pub async fn remove_totp(&self, subject: &str) -> Result<(), MfaError> {
        sqlx::query("delete from arq_auth_totp where subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sends a 6-digit one-time code over `channel` and returns the challenge id to verify it
    /// against. Codes live 10 minutes and allow 5 attempts.
    pub async fn send_otp(
        &self,
        subject: &str,
        channel: OtpChannel,
        destination: &str,
        sender: &dyn OtpSender,
    ) -> Result<Uuid, MfaError> {
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let id = Uuid::new_v4();
        sqlx::query(
            "insert into arq_auth_otp_codes (id, subject, channel, code_hash, expires_at)
             values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(id)
        .bind(subject)
        .bind(channel.as_str())
        .bind(&otp_hash(id, &code)[..])
        .bind(self.otp_ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        sender
            .send(channel, destination, &code)
            .await
            .map_err(MfaError::Send)?;
        Ok(id)
    }

    /// Verifies a one-time code for a challenge; a correct code is consumed.
    pub async fn verify_otp(
        &self,
        challenge: Uuid,
        subject: &str,
        code: &str,
    ) -> Result<OtpChannel, MfaError> {
        self.check_otp(challenge, subject, None, code).await
    }

    /// Verifies a one-time code that the user says came over `channel`: a code sent over the
    /// other channel is refused ([`MfaError::WrongChannel`]) and the attempt counts.
    pub async fn verify_otp_on(
        &self,
        challenge: Uuid,
        subject: &str,
        channel: OtpChannel,
        code: &str,
    ) -> Result<(), MfaError> {
        self.check_otp(challenge, subject, Some(channel), code)
            .await
            .map(|_| ())
    }

    async fn check_otp(
        &self,
        challenge: Uuid,
        subject: &str,
        expected: Option<OtpChannel>,
        code: &str,
    ) -> Result<OtpChannel, MfaError> {
        // Count the attempt first, atomically, so parallel guesses cannot exceed the limit.
        let row: Option<(Vec<u8>, String, bool, bool, i32)> = sqlx::query_as(
            "update arq_auth_otp_codes set attempts = attempts + 1
              where id = $1 and subject = $2
          returning code_hash, channel, consumed_at is not null, expires_at <= now(), attempts",
        )
        .bind(challenge)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        let Some((hash, channel, consumed, expired, attempts)) = row else {
            return Err(MfaError::InvalidCode);
        };
        let channel = OtpChannel::parse(&channel).ok_or(MfaError::InvalidCode)?;
        if expected.is_some_and(|e| e != channel) {
            return Err(MfaError::WrongChannel);
        }
        if consumed {
            return Err(MfaError::Replayed);
        }
        if expired {
            return Err(MfaError::Expired);
        }
        if attempts > OTP_MAX_ATTEMPTS {
            return Err(MfaError::TooManyAttempts);
        }
        if !bool::from(otp_hash(challenge, code.trim()).ct_eq(&hash[..])) {
            return Err(MfaError::InvalidCode);
        }
        let consumed = sqlx::query(
            "update arq_auth_otp_codes set consumed_at = now() where id = $1 and consumed_at is null",
        )
        .bind(challenge)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if consumed != 1 {
            return Err(MfaError::Replayed);
        }
        Ok(channel)
    }

    /// Registers (or replaces) the address or phone number `subject` receives codes at over
    /// `channel`, and sends a code to it; the destination becomes a second factor once that code
    /// is confirmed with [`confirm_otp_destination`](Self::confirm_otp_destination).
    pub async fn enroll_otp_destination(
        &self,
        subject: &str,
        channel: OtpChannel,
        destination: &str,
        sender: &dyn OtpSender,
    ) -> Result<Uuid, MfaError> {
        sqlx::query(
            "insert into arq_auth_otp_destinations (subject, channel, destination)
             values ($1, $2, $3)
             on conflict (subject, channel) do update
                set destination = excluded.destination, confirmed_at = null, created_at = now()",
        )
        .bind(subject)
        .bind(channel.as_str())
        .bind(destination)
        .execute(&self.pool)
        .await?;
        self.send_otp(subject, channel, destination, sender).await
    }

    /// Confirms a destination with the code [`enroll_otp_destination`](Self::enroll_otp_destination)
    /// sent; returns its channel.
    pub async fn confirm_otp_destination(
        &self,
        challenge: Uuid,
        subject: &str,
        code: &str,
    ) -> Result<OtpChannel, MfaError> {
        let channel = self.check_otp(challenge, subject, None, code).await?;
        let confirmed = sqlx::query(
            "update arq_auth_otp_destinations set confirmed_at = now()
              where subject = $1 and channel = $2",
        )
        .bind(subject)
        .bind(channel.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if confirmed == 1 {
            Ok(channel)
        } else {
            Err(MfaError::NoDestination)
        }
    }

    /// The confirmed destination of `subject` for `channel`.
    pub async fn otp_destination(
        &self,
        subject: &str,
        channel: OtpChannel,
    ) -> Result<Option<String>, MfaError> {
        Ok(sqlx::query_scalar(
            "select destination from arq_auth_otp_destinations
              where subject = $1 and channel = $2 and confirmed_at is not null",
        )
        .bind(subject)
        .bind(channel.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Removes `subject`'s destination for `channel`.
    pub async fn remove_otp_destination(
        &self,
        subject: &str,
        channel: OtpChannel,
    ) -> Result<(), MfaError> {
        sqlx::query("delete from arq_auth_otp_destinations where subject = $1 and channel = $2")
            .bind(subject)
            .bind(channel.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The second factors `subject` can use at sign-in, in one query.
    pub async fn factors(&self, subject: &str) -> Result<MfaFactors, MfaError> {
        let (totp, email, sms, recovery_codes): (bool, bool, bool, i64) = sqlx::query_as(
            "select
                exists(select 1 from arq_auth_totp where subject = $1 and confirmed_at is not null),
                exists(select 1 from arq_auth_otp_destinations
                        where subject = $1 and channel = 'email' and confirmed_at is not null),
                exists(select 1 from arq_auth_otp_destinations
                        where subject = $1 and channel = 'sms' and confirmed_at is not null),
                (select count(*) from arq_auth_recovery_codes where subject = $1 and used_at is null)",
        )
        .bind(subject)
        .fetch_one(&self.pool)
        .await?;
        Ok(MfaFactors {
            totp,
            email,
            sms,
            recovery_codes: u32::try_from(recovery_codes).unwrap_or(u32::MAX),
        })
    }

    /// Replaces `subject`'s recovery codes with 10 new ones, returned once in plain text
    /// (`xxxx-xxxx-xxxx-xxxx`, 80 bits each) and stored hashed.
    pub async fn generate_recovery_codes(&self, subject: &str) -> Result<Vec<String>, MfaError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from arq_auth_recovery_codes where subject = $1")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        let mut codes = Vec::with_capacity(10);
        for _ in 0..10 {
            let mut bytes = [0u8; 10];
            rand::fill(&mut bytes);
            let raw = base32_lower(&bytes);
            let code = raw
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            sqlx::query(
                "insert into arq_auth_recovery_codes (id, subject, code_hash) values ($1, $2, $3)",
            )
            .bind(Uuid::new_v4())
            .bind(subject)
            .bind(&hash_secret(&raw)[..])
            .execute(&mut *tx)
            .await?;
            codes.push(code);
        }
        tx.commit().await?;
        Ok(codes)
    }

    /// Uses a recovery code: accepted once.
    pub async fn use_recovery_code(&self, subject: &str, code: &str) -> Result<(), MfaError> {
        let normalized: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if normalized.len() != 16 {
            return Err(MfaError::InvalidCode);
        }
        let used = sqlx::query(
            "update arq_auth_recovery_codes set used_at = now()
              where subject = $1 and code_hash = $2 and used_at is null",
        )
        .bind(subject)
        .bind(&hash_secret(&normalized)[..])
        .execute(&self.pool)
        .await?
        .rows_affected();
        if used == 1 {
            Ok(())
        } else {
            Err(MfaError::InvalidCode)
        }
    }

    /// How many unused recovery codes `subject` has left.
    pub async fn recovery_codes_left(&self, subject: &str) -> Result<i64, MfaError> {
        Ok(sqlx::query_scalar(
            "select count(*) from arq_auth_recovery_codes where subject = $1 and used_at is null",
        )
        .bind(subject)
        .fetch_one(&self.pool)
        .await?)
    }
}

/// The hash of a one-time code, salted with its challenge id so equal codes hash differently.
fn otp_hash(challenge: Uuid, code: &str) -> [u8; 32] {
    let mut salted = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(challenge.as_bytes());
    salted.push(':');
    salted.push_str(code);
    hash_secret(&salted)
}

/// RFC 4648 base32 without padding, lower case (unambiguous to read out and type).
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: every time and every hash, 8 digits.
    #[test]
    fn rfc6238_appendix_b_vectors() {
        let sha1 = b"12345678901234567890".as_slice();
        let sha256 = b"12345678901234567890123456789012".as_slice();
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234".as_slice();
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1_111_111_109, "07081804", "68084774", "25091201"),
            (1_111_111_111, "14050471", "67062674", "99943326"),
            (1_234_567_890, "89005924", "91819424", "93441116"),
            (2_000_000_000, "69279037", "90698825", "38618901"),
            (20_000_000_000, "65353130", "77737706", "47863826"),
        ];
        for (t, c1, c256, c512) in vectors {
            assert_eq!(totp_code(sha1, TotpHash::Sha1, 8, t), c1, "SHA1 T={t}");
            assert_eq!(
                totp_code(sha256, TotpHash::Sha256, 8, t),
                c256,
                "SHA256 T={t}"
            );
            assert_eq!(
                totp_code(sha512, TotpHash::Sha512, 8, t),
                c512,
                "SHA512 T={t}"
            );
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_lower(&[0u8; 10]).len(), 16);
    }
}
