//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers"
)]

pub mod db;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arq_auth::{
    AccessClaims, AuthError, JwkSet, JwksSource, KeyRing, SigningKey, SigningKeyRing, Verifier,
    VerifierConfig,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;

pub const ISS: &str = "https://auth.arq.dev";
pub const AUD: &str = "https://api.arq.dev";
pub const KEY1: &[u8] = include_bytes!("../keys/key1.pem");
pub const KEY2: &[u8] = include_bytes!("../keys/key2.pem");
pub const ATTACKER: &[u8] = include_bytes!("../keys/attacker.pem");
pub const KEY1_PUB: &[u8] = include_bytes!("../keys/key1.pub.pem");

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn key(kid: &str, pem: &[u8]) -> SigningKey {
    SigningKey::from_rsa_pem(kid, pem).unwrap()
}

pub fn claims(sub: &str) -> AccessClaims {
    AccessClaims::new(ISS, sub, AUD, now(), 3600)
}

/// A key source that counts its fetches and serves whatever ring it wraps.
#[derive(Clone)]
pub struct Counting {
    pub ring: SigningKeyRing,
    pub fetches: Arc<AtomicUsize>,
}

impl Counting {
    pub fn new(ring: SigningKeyRing) -> Self {
        Self {
            ring,
            fetches: Arc::new(AtomicUsize::new(0)),
        }
    }
    pub fn count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl JwksSource for Counting {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, AuthError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.ring.fetch()
    }
}

/// A ring signing with key1 as `k1`, a verifier over it (through a counting source).
pub fn setup() -> (SigningKeyRing, Counting, Verifier) {
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let source = Counting::new(ring.clone());
    let keys = Arc::new(KeyRing::new(source.clone(), Duration::from_secs(30)));
    let verifier = Verifier::new(VerifierConfig::new(ISS, AUD), keys).unwrap();
    (ring, source, verifier)
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS from raw JSON parts and a signature.
pub fn raw_token(header: &str, payload: &str, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header), b64(payload), b64(signature))
}

pub fn segments(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    (
        it.next().unwrap().to_owned(),
        it.next().unwrap().to_owned(),
        it.next().unwrap().to_owned(),
    )
}

/// An in-process [`OtpSender`](arq_auth::mfa::OtpSender): what a real email/SMS adapter would
/// deliver, captured for the test.
#[derive(Default, Clone)]
pub struct Outbox(pub Arc<std::sync::Mutex<Vec<(arq_auth::mfa::OtpChannel, String, String)>>>);

impl Outbox {
    /// The last code sent.
    pub fn last_code(&self) -> String {
        self.0.lock().unwrap().last().unwrap().2.clone()
    }
}

impl arq_auth::mfa::OtpSender for Outbox {
    fn send<'a>(
        &'a self,
        channel: arq_auth::mfa::OtpChannel,
        to: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.0
            .lock()
            .unwrap()
            .push((channel, to.to_owned(), code.to_owned()));
        Box::pin(async { Ok(()) })
    }
}
