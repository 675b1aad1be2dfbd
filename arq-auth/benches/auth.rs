//! arq-auth benchmarks: RS256 verification against raw jsonwebtoken in the same run, the two
//! jsonwebtoken crypto backends, cached verification, the RBAC check and the auth layer's
//! request overhead. Run with `cargo bench -p arq-auth --bench auth`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arq_auth::{
    AccessClaims, AuthLayer, KeyRing, Principal, Rbac, SigningKey, SigningKeyRing, Verifier,
    VerifierConfig,
};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tower::ServiceExt;

const ISS: &str = "https://auth.arq.dev";
const AUD: &str = "https://api.arq.dev";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixtures() -> (String, Verifier, DecodingKey, Validation) {
    let ring = SigningKeyRing::new(
        SigningKey::from_rsa_pem("k1", include_bytes!("../tests/keys/key1.pem")).unwrap(),
    );
    let claims = AccessClaims::new(ISS, "user-1", AUD, now(), 3600)
        .with_roles(["member"])
        .with_attribute("department", "finance")
        .with_amr(["pwd", "otp"]);
    let token = ring.sign(&claims).unwrap();
    let keys = Arc::new(KeyRing::new(ring, Duration::from_secs(30)));
    let verifier = Verifier::new(VerifierConfig::new(ISS, AUD), keys).unwrap();
    futures::executor::block_on(verifier.keys().refresh()).unwrap();
    let key = DecodingKey::from_rsa_pem(include_bytes!("../tests/keys/key1.pub.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[ISS]);
    validation.set_audience(&[AUD]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 30;
    (token, verifier, key, validation)
}

fn verification(c: &mut Criterion) {
    let (token, verifier, key, validation) = fixtures();
    let mut g = c.benchmark_group("rs256_verify");
    g.bench_function("raw_jsonwebtoken_decode", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<AccessClaims>(black_box(&token), &key, &validation).unwrap()
        });
    });
    g.bench_function("arq_verify_uncached", |b| {
        b.iter(|| {
            futures::executor::block_on(verifier.verify_uncached(black_box(&token))).unwrap()
        });
    });
    g.bench_function("arq_verify_cached", |b| {
        futures::executor::block_on(verifier.verify(&token)).unwrap();
        b.iter(|| futures::executor::block_on(verifier.verify(black_box(&token))).unwrap());
    });
    // The part of a cached verification that is hashing the token (the cache key).
    g.bench_function("sha256_of_token_only", |b| {
        b.iter(|| <sha2::Sha256 as sha2::Digest>::digest(black_box(token.as_bytes())));
    });
    g.finish();

    // The signature check alone, per jsonwebtoken backend, on the same key and message.
    let (message, signature) = token.rsplit_once('.').unwrap();
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    let mut g = c.benchmark_group("rs256_backend");
    for (name, provider) in [
        ("aws_lc_rs", &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER),
        (
            "rust_crypto",
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = (provider.verifier_factory)(&Algorithm::RS256, &key).unwrap();
                v.verify(black_box(message.as_bytes()), black_box(&signature))
                    .unwrap();
            });
        });
    }
    g.finish();
}

fn rbac(c: &mut Criterion) {
    let rbac = Rbac::standard();
    let principal = Principal::from_claims(
        AccessClaims::new(ISS, "u", AUD, now(), 3600).with_roles(["member"]),
        &rbac,
    );
    c.bench_function("rbac_check_granted", |b| {
        b.iter(|| {
            rbac.check(black_box(&principal), black_box("write:project"))
                .is_ok()
        });
    });
    c.bench_function("rbac_check_denied", |b| {
        b.iter(|| {
            rbac.check(black_box(&principal), black_box("admin:workspace"))
                .is_err()
        });
    });
}

fn layer(c: &mut Criterion) {
    let (token, verifier, _, _) = fixtures();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let hello = || Router::new().route("/", get(|| async { "hello" }));
    let plain = hello();
    let authed = hello().layer(AuthLayer::new(verifier));
    let bearer = format!("Bearer {token}");
    let mut g = c.benchmark_group("hello_request");
    g.bench_function("without_auth", |b| {
        b.iter(|| {
            let req = http::Request::get("/")
                .header("authorization", &bearer)
                .body(Body::empty())
                .unwrap();
            rt.block_on(plain.clone().oneshot(req)).unwrap()
        });
    });
    g.bench_function("with_auth_layer_cached", |b| {
        b.iter(|| {
            let req = http::Request::get("/")
                .header("authorization", &bearer)
                .body(Body::empty())
                .unwrap();
            rt.block_on(authed.clone().oneshot(req)).unwrap()
        });
    });
    g.finish();
}

fn config() -> Criterion {
    // The machine is shared with other developers' builds: short, repeated measurements.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = verification, rbac, layer }
criterion_main!(benches);
