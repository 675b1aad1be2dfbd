//! PITFALLS 32–35: every JWT attack, against the real verifier.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use arq_auth::{AccessClaims, Algorithm, AuthError, Verifier, VerifierConfig};
use common::*;
use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_valid_token_is_accepted_and_carries_the_claims() {
    let (ring, _, verifier) = setup();
    let token = ring
        .sign(&claims("user-1").with_roles(["member"]).with_amr(["pwd"]))
        .unwrap();
    let who = verifier.verify(&token).await.unwrap();
    assert_eq!(who.subject(), "user-1");
    assert!(who.has_permission("write:project"));
    assert!(!who.has_permission("admin:workspace"));
    assert_eq!(who.amr(), ["pwd".to_owned()]);
}

// 32: alg none, HS256 with the public key, tampered payload or signature.

#[tokio::test]
async fn alg_none_is_refused() {
    let (ring, _, verifier) = setup();
    let good = ring.sign(&claims("user-1")).unwrap();
    let (_, payload, _) = segments(&good);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#));
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            let err = verifier.verify(&token).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::Malformed(_) | AuthError::AlgorithmNotAllowed
                ),
                "{alg}: {err:?}"
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let (_, _, verifier) = setup();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    for secret in [KEY1_PUB.to_vec(), KEY1_PUB.trim_ascii_end().to_vec()] {
        let token = jsonwebtoken::encode(
            &header,
            &claims("forger"),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(matches!(err, AuthError::AlgorithmNotAllowed), "{err:?}");
    }
}

#[test]
fn hmac_algorithms_cannot_be_configured() {
    let (_, source, _) = setup();
    let keys = std::sync::Arc::new(arq_auth::KeyRing::new(source, std::time::Duration::ZERO));
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let config = VerifierConfig::new(ISS, AUD).with_algorithms(vec![Algorithm::RS256, alg]);
        let err = Verifier::new(config, keys.clone()).unwrap_err();
        assert!(err.to_string().contains("shared-secret"), "{err}");
    }
}

#[tokio::test]
async fn only_configured_algorithms_are_accepted() {
    let (ring, _, verifier) = setup();
    let good = ring.sign(&claims("user-1")).unwrap();
    let (_, payload, sig) = segments(&good);
    // A PS256/RS512 header on an RS256 signature: not configured, refused before any crypto.
    for alg in ["PS256", "RS512", "ES256", "EdDSA"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#));
        let err = verifier
            .verify(&format!("{header}.{payload}.{sig}"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthError::AlgorithmNotAllowed),
            "{alg}: {err:?}"
        );
    }
}

#[tokio::test]
async fn tampered_payload_or_signature_is_refused() {
    let (ring, _, verifier) = setup();
    let good = ring.sign(&claims("user-1").with_roles(["viewer"])).unwrap();
    let (h, _, s) = segments(&good);
    let evil = b64(serde_json::to_vec(&claims("user-1").with_roles(["admin"])).unwrap());
    let err = verifier
        .verify(&format!("{h}.{evil}.{s}"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");

    let mut sig = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        s.as_bytes(),
    )
    .unwrap();
    sig[10] ^= 1;
    let (h, p, _) = segments(&good);
    let err = verifier
        .verify(&format!("{h}.{p}.{}", b64(&sig)))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
    // Truncated and empty signatures.
    let sig_b64 = b64(&sig);
    for bad in [&sig_b64[..sig_b64.len() / 2], ""] {
        assert!(verifier.verify(&format!("{h}.{p}.{bad}")).await.is_err());
    }
}

#[tokio::test]
async fn a_token_signed_by_another_key_under_our_kid_is_refused() {
    let (_, _, verifier) = setup();
    let attacker = arq_auth::SigningKeyRing::new(key("k1", ATTACKER));
    let token = attacker.sign(&claims("user-1")).unwrap();
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
}

// 33: time and registered claims.

async fn verify_claims(c: &AccessClaims) -> Result<arq_auth::Principal, AuthError> {
    let (ring, _, verifier) = setup();
    verifier.verify(&ring.sign(c).unwrap()).await
}

async fn verify_json(payload: serde_json::Value) -> Result<arq_auth::Principal, AuthError> {
    let (ring, _, verifier) = setup();
    // Sign arbitrary JSON with the real key, so only the claim checks can refuse it.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let _ = ring;
    let token =
        jsonwebtoken::encode(&header, &payload, &EncodingKey::from_rsa_pem(KEY1).unwrap()).unwrap();
    verifier.verify(&token).await
}

#[tokio::test]
async fn expiry_and_not_before_are_enforced_with_a_small_skew() {
    let t = now();
    let mut c = claims("u");
    c.exp = t - 3600;
    c.nbf = t - 7200;
    assert!(matches!(verify_claims(&c).await, Err(AuthError::Expired)));
    // Within the 30 s skew: accepted.
    c.exp = t - 5;
    assert!(verify_claims(&c).await.is_ok());
    // Beyond it: refused.
    c.exp = t - 45;
    assert!(matches!(verify_claims(&c).await, Err(AuthError::Expired)));

    let mut c = claims("u");
    c.nbf = t + 3600;
    assert!(matches!(
        verify_claims(&c).await,
        Err(AuthError::NotYetValid)
    ));
    c.nbf = t + 5;
    assert!(verify_claims(&c).await.is_ok());
}

#[test]
fn the_skew_is_bounded() {
    let (_, source, _) = setup();
    let keys = std::sync::Arc::new(arq_auth::KeyRing::new(source, std::time::Duration::ZERO));
    let err =
        Verifier::new(VerifierConfig::new(ISS, AUD).with_leeway_secs(3600), keys).unwrap_err();
    assert!(err.to_string().contains("too large"));
}

#[tokio::test]
async fn registered_claims_are_required() {
    let t = now();
    let full =
        serde_json::json!({"iss": ISS, "aud": AUD, "sub": "u", "exp": t + 60, "nbf": t, "iat": t});
    assert!(verify_json(full.clone()).await.is_ok());
    for (claim, expected) in [("exp", "exp"), ("nbf", "nbf"), ("sub", "sub")] {
        let mut p = full.clone();
        p.as_object_mut().unwrap().remove(claim);
        let err = verify_json(p).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::MissingClaim(c) if c == expected),
            "{claim}: {err:?}"
        );
    }
    let mut p = full.clone();
    p.as_object_mut().unwrap().remove("iss");
    assert!(matches!(verify_json(p).await, Err(AuthError::BadIssuer)));
    let mut p = full.clone();
    p.as_object_mut().unwrap().remove("aud");
    assert!(matches!(verify_json(p).await, Err(AuthError::BadAudience)));
    // Claims of the wrong type.
    let mut p = full.clone();
    p["exp"] = serde_json::json!("tomorrow");
    assert!(verify_json(p).await.is_err());
    let mut p = full;
    p["sub"] = serde_json::json!("");
    assert!(verify_json(p).await.is_err());
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let t = now();
    let ok = AccessClaims::new(ISS, "u", AUD, t, 60);
    assert!(verify_claims(&ok).await.is_ok());
    let wrong_iss = AccessClaims::new("https://evil.example", "u", AUD, t, 60);
    assert!(matches!(
        verify_claims(&wrong_iss).await,
        Err(AuthError::BadIssuer)
    ));
    let prefix_iss = AccessClaims::new(format!("{ISS}.evil.example"), "u", AUD, t, 60);
    assert!(matches!(
        verify_claims(&prefix_iss).await,
        Err(AuthError::BadIssuer)
    ));
    let wrong_aud = AccessClaims::new(ISS, "u", "https://other.arq.dev", t, 60);
    assert!(matches!(
        verify_claims(&wrong_aud).await,
        Err(AuthError::BadAudience)
    ));
    // An audience array that includes us is fine; one that does not is not.
    let mut many = ok.clone();
    many.aud = vec!["https://other".into(), AUD.into()];
    assert!(verify_claims(&many).await.is_ok());
    many.aud = vec!["https://other".into()];
    assert!(matches!(
        verify_claims(&many).await,
        Err(AuthError::BadAudience)
    ));
    many.aud = vec![];
    assert!(verify_claims(&many).await.is_err());
}

// 34: kid handling and foreign key locations.

#[tokio::test]
async fn unknown_missing_and_hostile_kids_are_refused() {
    let (ring, source, verifier) = setup();
    let good = ring.sign(&claims("u")).unwrap();
    let (_, p, s) = segments(&good);
    // Load the ring once with a good token.
    verifier.verify(&good).await.unwrap();
    let loaded = source.count();

    let header = b64(r#"{"alg":"RS256","typ":"JWT"}"#);
    let err = verifier
        .verify(&format!("{header}.{p}.{s}"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey), "{err:?}");

    for kid in [
        "../../etc/passwd",
        "k1' OR '1'='1",
        "k1; DROP TABLE keys;--",
        "/dev/null",
        "k1\u{0}",
        "",
        &"a".repeat(500),
    ] {
        let header = b64(serde_json::json!({"alg":"RS256","typ":"JWT","kid": kid}).to_string());
        let err = verifier
            .verify(&format!("{header}.{p}.{s}"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::UnknownKey), "{kid:?}: {err:?}");
    }
    // Hostile kids never trigger a JWKS fetch.
    assert_eq!(source.count(), loaded);
}

#[tokio::test]
async fn jku_x5u_and_embedded_jwk_headers_are_ignored() {
    let (_, _, verifier) = setup();
    // The attacker signs with their own key and points at their own key set.
    let attacker = arq_auth::SigningKey::from_rsa_pem("evil", ATTACKER).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("evil".into());
    header.jku = Some("http://127.0.0.1:1/jwks.json".into());
    header.x5u = Some("http://127.0.0.1:1/cert.pem".into());
    header.jwk = Some(attacker.public_jwk().clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims("u"),
        &EncodingKey::from_rsa_pem(ATTACKER).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::UnknownKey)
    ));
    // Same attack under our kid: the embedded key is not used either.
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims("u"),
        &EncodingKey::from_rsa_pem(ATTACKER).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::BadSignature)
    ));
}

// 35: encoding and size.

#[tokio::test]
async fn non_canonical_base64url_is_refused() {
    let (ring, _, verifier) = setup();
    let good = ring.sign(&claims("u")).unwrap();
    let (h, p, s) = segments(&good);
    assert!(verifier.verify_uncached(&good).await.is_ok());
    // A 256-byte signature is 342 base64url characters whose last one carries 2 unused bits:
    // setting them gives the same bytes under a lenient decoder.
    let last = s.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let sibling = alphabet.chars().nth(idx ^ 1).unwrap();
    let non_canonical = format!("{h}.{p}.{}{sibling}", &s[..s.len() - 1]);
    assert!(verifier.verify_uncached(&non_canonical).await.is_err());
    // Padding, the standard alphabet, whitespace.
    for bad in [
        format!("{h}.{p}.{s}=="),
        format!("{h}=.{p}.{s}"),
        format!("{}.{p}.{s}", h.replace('-', "+").replace('_', "/") + "+"),
        format!("{h} .{p}.{s}"),
        format!("{h}.{p}.{s}\n"),
    ] {
        assert!(verifier.verify_uncached(&bad).await.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn oversized_tokens_are_refused_unread() {
    let (ring, source, verifier) = setup();
    let mut c = claims("u");
    c = c.with_attribute("padding", "x".repeat(10_000));
    let token = ring.sign(&c).unwrap();
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, AuthError::TokenTooLarge { max: 8192 }),
        "{err:?}"
    );
    assert_eq!(source.count(), 0, "no key fetch for an oversized token");
    let huge = "a".repeat(10_000_000);
    assert!(verifier.verify(&huge).await.is_err());
}

#[tokio::test]
async fn wrong_segment_counts_are_refused() {
    let (ring, _, verifier) = setup();
    let good = ring.sign(&claims("u")).unwrap();
    let (h, p, s) = segments(&good);
    for bad in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        h.clone(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}..{s}"),
        format!(".{p}.{s}"),
    ] {
        assert!(verifier.verify(&bad).await.is_err(), "{bad:?}");
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[A-Za-z0-9_-]{0,400}",
        any::<Vec<u8>>().prop_map(b64),
        "\\PC{0,200}".prop_map(b64),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| b64(&b)),
        Just(b64("{}")),
        Just(b64("null")),
        Just(b64(r#"{"alg":"RS256","kid":"k1"}"#)),
        Just(b64(r#"{"alg":"RS256","kid":"k1","crit":["exp"]}"#)),
        Just(b64(r#"{"alg":"RS256","kid":{"nested":1}}"#)),
        Just(b64(r#"{"iss":1e999,"exp":-1,"nbf":18446744073709551616}"#)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Garbage in any segment (alone or with real segments around it): an error, never a panic.
    #[test]
    fn garbage_in_every_segment_is_an_error_not_a_panic(
        garbage in segment(),
        position in 0usize..3,
        raw in ".{0,300}",
    ) {
        let rt = rt();
        let (ring, _, verifier) = setup();
        let good = ring.sign(&claims("u")).unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[position] = garbage;
        let token = parts.join(".");
        prop_assert!(rt.block_on(verifier.verify(&token)).is_err());
        prop_assert!(rt.block_on(verifier.verify(&raw)).is_err());
    }
}
