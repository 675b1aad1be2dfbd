//! PITFALLS 38 against the real PostgreSQL: TOTP enrollment, ±1 step, each code once; email and
//! SMS codes through the sender trait; single-use recovery codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use arq_auth::mfa::{
    MfaError, MfaStore, OtpChannel, OtpSender, TOTP_STEP_SECS, TotpHash, totp_code,
};
use common::Outbox;
use common::db::TestDb;
use futures::future::BoxFuture;

/// Secret bytes of an enrollment, read back from its otpauth URI the way an app would.
fn secret_of(uri: &str) -> Vec<u8> {
    let totp = totp_rs::TOTP::from_url(uri).unwrap();
    totp.secret
}

fn code(secret: &[u8], t: u64) -> String {
    totp_code(secret, TotpHash::Sha1, 6, t)
}

#[tokio::test]
async fn enrollment_gives_uri_and_qr_and_needs_confirmation() {
    let db = TestDb::new().await;
    let mfa = MfaStore::new(db.pool.clone(), "arq");
    let e = mfa.enroll_totp("user-1", "ada@example.com").await.unwrap();
    assert!(
        e.otpauth_uri
            .starts_with("otpauth://totp/arq:ada%40example.com?"),
        "{}",
        e.otpauth_uri
    );
    assert!(
        e.otpauth_uri
            .contains(&format!("secret={}", e.secret_base32))
    );
    assert!(e.otpauth_uri.contains("issuer=arq"));
    assert!(e.qr_svg.contains("<svg"));
    let secret = secret_of(&e.otpauth_uri);
    assert_eq!(secret.len(), 20, "160-bit secret");

    // Not usable until confirmed.
    assert!(!mfa.has_totp("user-1").await.unwrap());
    let now = common::now();
    assert!(matches!(
        mfa.verify_totp_at("user-1", &code(&secret, now), now).await,
        Err(MfaError::NotEnrolled)
    ));
    assert!(matches!(
        mfa.confirm_totp("user-1", "000000x").await,
        Err(MfaError::InvalidCode)
    ));
    mfa.confirm_totp("user-1", &code(&secret, now))
        .await
        .unwrap();
    assert!(mfa.has_totp("user-1").await.unwrap());
}

#[tokio::test]
async fn codes_are_accepted_within_one_step_and_only_once() {
    let db = TestDb::new().await;
    let mfa = MfaStore::new(db.pool.clone(), "arq");
    let e = mfa.enroll_totp("u", "u").await.unwrap();
    let secret = secret_of(&e.otpauth_uri);
    let t0 = common::now();
    mfa.confirm_totp("u", &code(&secret, t0)).await.unwrap();

    let t = t0 + 10 * TOTP_STEP_SECS;
    // Two steps away: refused either side.
    for off in [-2i64, 2] {
        let at = t.checked_add_signed(off * TOTP_STEP_SECS as i64).unwrap();
        assert!(matches!(
            mfa.verify_totp_at("u", &code(&secret, at), t).await,
            Err(MfaError::InvalidCode)
        ));
    }
    // The previous step's code is accepted (clock drift)…
    mfa.verify_totp_at("u", &code(&secret, t - TOTP_STEP_SECS), t)
        .await
        .unwrap();
    // …once.
    assert!(matches!(
        mfa.verify_totp_at("u", &code(&secret, t - TOTP_STEP_SECS), t)
            .await,
        Err(MfaError::Replayed)
    ));
    // The current code works, then is spent too.
    mfa.verify_totp_at("u", &code(&secret, t), t).await.unwrap();
    assert!(matches!(
        mfa.verify_totp_at("u", &code(&secret, t), t).await,
        Err(MfaError::Replayed)
    ));
    // The next step's code works; after that an older one is refused even if unused.
    mfa.verify_totp_at("u", &code(&secret, t + TOTP_STEP_SECS), t)
        .await
        .unwrap();
    let later = t + 2 * TOTP_STEP_SECS;
    assert!(
        mfa.verify_totp_at("u", &code(&secret, t), later)
            .await
            .is_err()
    );
    // Garbage.
    for bad in ["", "12345", "1234567", "abcdef", "12 456", "１２３４５６"] {
        assert!(mfa.verify_totp_at("u", bad, t).await.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_code_raced_by_many_requests_is_accepted_once() {
    let db = TestDb::new().await;
    let mfa = MfaStore::new(db.pool.clone(), "arq");
    let e = mfa.enroll_totp("u", "u").await.unwrap();
    let secret = secret_of(&e.otpauth_uri);
    let t = common::now();
    mfa.confirm_totp("u", &code(&secret, t)).await.unwrap();
    let next = t + TOTP_STEP_SECS;
    let c = code(&secret, next);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (m, c) = (mfa.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            m.verify_totp_at("u", &c, next).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap().is_ok());
    }
    assert_eq!(ok, 1);
}

struct Broken;
impl OtpSender for Broken {
    fn send<'a>(
        &'a self,
        _: OtpChannel,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Err("provider down".to_owned()) })
    }
}

#[tokio::test]
async fn email_and_sms_codes_are_single_use_and_attempt_limited() {
    let db = TestDb::new().await;
    let mfa = MfaStore::new(db.pool.clone(), "arq");
    let outbox = Outbox::default();
    let id = mfa
        .send_otp("u", OtpChannel::Sms, "+15550100", &outbox)
        .await
        .unwrap();
    let (channel, to, code) = outbox.0.lock().unwrap()[0].clone();
    assert_eq!((channel, to.as_str()), (OtpChannel::Sms, "+15550100"));
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    // Another subject cannot use it.
    assert!(mfa.verify_otp(id, "someone-else", &code).await.is_err());
    assert_eq!(
        mfa.verify_otp(id, "u", &code).await.unwrap(),
        OtpChannel::Sms
    );
    assert!(matches!(
        mfa.verify_otp(id, "u", &code).await,
        Err(MfaError::Replayed)
    ));

    let id = mfa
        .send_otp("u", OtpChannel::Email, "u@example.com", &outbox)
        .await
        .unwrap();
    let code = outbox.0.lock().unwrap()[1].2.clone();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        assert!(matches!(
            mfa.verify_otp(id, "u", wrong).await,
            Err(MfaError::InvalidCode)
        ));
    }
    // The sixth attempt fails even with the right code.
    assert!(matches!(
        mfa.verify_otp(id, "u", &code).await,
        Err(MfaError::TooManyAttempts)
    ));

    let id = mfa
        .send_otp("u", OtpChannel::Email, "u@example.com", &outbox)
        .await
        .unwrap();
    let code = outbox.0.lock().unwrap()[2].2.clone();
    sqlx::query(
        "update arq_auth_otp_codes set expires_at = now() - interval '1 second' where id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(matches!(
        mfa.verify_otp(id, "u", &code).await,
        Err(MfaError::Expired)
    ));

    assert!(matches!(
        mfa.send_otp("u", OtpChannel::Email, "x", &Broken).await,
        Err(MfaError::Send(_))
    ));
}

#[tokio::test]
async fn recovery_codes_are_hashed_and_single_use() {
    let db = TestDb::new().await;
    let mfa = MfaStore::new(db.pool.clone(), "arq");
    let codes = mfa.generate_recovery_codes("u").await.unwrap();
    assert_eq!(codes.len(), 10);
    assert!(
        codes
            .iter()
            .all(|c| c.len() == 19 && c.matches('-').count() == 3)
    );
    let dump: String =
        sqlx::query_scalar("select string_agg(r::text, ',') from arq_auth_recovery_codes r")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(codes.iter().all(|c| !dump.contains(&c.replace('-', ""))));

    mfa.use_recovery_code("u", &codes[0]).await.unwrap();
    assert!(mfa.use_recovery_code("u", &codes[0]).await.is_err());
    // Typed loosely: upper case, no dashes.
    mfa.use_recovery_code("u", &codes[1].replace('-', "").to_uppercase())
        .await
        .unwrap();
    assert!(mfa.use_recovery_code("other", &codes[2]).await.is_err());
    assert_eq!(mfa.recovery_codes_left("u").await.unwrap(), 8);
    // Regenerating invalidates the old set.
    let fresh = mfa.generate_recovery_codes("u").await.unwrap();
    assert!(mfa.use_recovery_code("u", &codes[3]).await.is_err());
    mfa.use_recovery_code("u", &fresh[0]).await.unwrap();
}

#[tokio::test]
async fn destinations_count_once_confirmed_and_codes_keep_to_their_channel() {
    let db = TestDb::new().await;
    let mfa = MfaStore::new(db.pool.clone(), "arq");
    let outbox = Outbox::default();
    assert!(!mfa.factors("u").await.unwrap().required());

    let id = mfa
        .enroll_otp_destination("u", OtpChannel::Sms, "+15550100", &outbox)
        .await
        .unwrap();
    // Registered but unconfirmed: not a factor yet, and not a destination to send to.
    assert!(!mfa.factors("u").await.unwrap().sms);
    assert_eq!(
        mfa.otp_destination("u", OtpChannel::Sms).await.unwrap(),
        None
    );
    let code = outbox.last_code();
    assert_eq!(
        mfa.confirm_otp_destination(id, "u", &code).await.unwrap(),
        OtpChannel::Sms
    );
    let factors = mfa.factors("u").await.unwrap();
    assert!(factors.sms && !factors.email && !factors.totp && factors.required());
    assert_eq!(
        mfa.otp_destination("u", OtpChannel::Sms)
            .await
            .unwrap()
            .as_deref(),
        Some("+15550100")
    );

    // A texted code entered as an emailed one is refused, and the attempt counts.
    let id = mfa
        .send_otp("u", OtpChannel::Sms, "+15550100", &outbox)
        .await
        .unwrap();
    let code = outbox.last_code();
    assert!(matches!(
        mfa.verify_otp_on(id, "u", OtpChannel::Email, &code).await,
        Err(MfaError::WrongChannel)
    ));
    mfa.verify_otp_on(id, "u", OtpChannel::Sms, &code)
        .await
        .unwrap();
    assert!(matches!(
        mfa.verify_otp_on(id, "u", OtpChannel::Sms, &code).await,
        Err(MfaError::Replayed)
    ));

    // Changing the number needs a new confirmation.
    mfa.enroll_otp_destination("u", OtpChannel::Sms, "+15550199", &outbox)
        .await
        .unwrap();
    assert!(!mfa.factors("u").await.unwrap().sms);
    mfa.remove_otp_destination("u", OtpChannel::Sms)
        .await
        .unwrap();
    assert_eq!(mfa.factors("u").await.unwrap(), Default::default());
}
