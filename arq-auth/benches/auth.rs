//! arq-auth benchmarks: RS256 verification against raw jsonwebtoken in the same run, the two
//! jsonwebtoken crypto backends, cached verification, the RBAC check and the auth layer's
//! request overhead. Run with `cargo bench -p arq-auth --bench auth`.
//!
//! The uncached-vs-raw ratio is also measured outside criterion, in interleaved rounds (raw and
//! arq alternate, same key object, same token) and reported as the median of the per-round
//! ratios, which is what load on a shared machine disturbs least. `ARQ_BENCH_ROUNDS` (default
//! 21) and `ARQ_BENCH_ITERS` (per side per round, default 300) tune it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
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
use criterion::{Criterion, criterion_group};
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

fn fixtures() -> (String, Verifier, Arc<DecodingKey>, Validation) {
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
    // The very key object the verifier uses, so both sides do the same RSA work.
    let key = verifier.keys().get("k1").unwrap();
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
    // What hashing the token costs: the cache's keyed foldhash, and the SHA-256 it replaced.
    let state = foldhash::fast::SeedableRandomState::with_seed(
        0x5eed,
        foldhash::SharedSeed::global_random(),
    );
    g.bench_function("foldhash_of_token_only", |b| {
        b.iter(|| std::hash::BuildHasher::hash_one(&state, black_box(token.as_str())));
    });
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
                let v = (provider.verifier_factory)(&Algorithm::RS256, key.as_ref()).unwrap();
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

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Raw `jsonwebtoken::decode` against `Verifier::verify_uncached`, interleaved: each round times
/// `iters` of one then `iters` of the other (alternating which goes first), and the figure is
/// the median over rounds of raw/arq (≥ 1 means arq is no slower).
fn interleaved_uncached_ratio() {
    let (token, verifier, key, validation) = fixtures();
    let rounds = env_or("ARQ_BENCH_ROUNDS", 21).max(1);
    let iters = env_or("ARQ_BENCH_ITERS", 300).max(1);
    let raw = || {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            black_box(
                jsonwebtoken::decode::<AccessClaims>(black_box(&token), &key, &validation).unwrap(),
            );
        }
        start.elapsed().as_secs_f64() * 1e6 / iters as f64
    };
    let arq = || {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            black_box(
                futures::executor::block_on(verifier.verify_uncached(black_box(&token))).unwrap(),
            );
        }
        start.elapsed().as_secs_f64() * 1e6 / iters as f64
    };
    raw();
    arq();
    let (mut raws, mut arqs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (r, a) = if round % 2 == 0 {
            let r = raw();
            (r, arq())
        } else {
            let a = arq();
            (raw(), a)
        };
        raws.push(r);
        arqs.push(a);
        ratios.push(r / a);
    }
    let (min, max) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "rs256_verify/interleaved: {rounds} rounds x {iters}: raw jsonwebtoken median {:.2} µs, \
         arq verify_uncached median {:.2} µs, ratio raw/arq median {:.3} (rounds {min:.3}–{max:.3})",
        median(&mut raws),
        median(&mut arqs),
        median(&mut ratios),
    );
}

fn config() -> Criterion {
    // The machine is shared with other developers' builds: short, repeated measurements.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = verification, rbac, layer }

fn main() {
    interleaved_uncached_ratio();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
