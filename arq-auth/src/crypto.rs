//! Which jsonwebtoken crypto backend signs and verifies.
//!
//! arq uses aws-lc-rs by default: in `benches/auth.rs` it verifies RS256 several times faster
//! than the RustCrypto `rsa` crate, and `rsa` carries RUSTSEC-2023-0071 (Marvin timing attack on
//! private-key operations, no fixed release), which matters on the issuer side. The `rust-crypto`
//! feature remains for targets where aws-lc cannot be built.

/// Installs the chosen backend as jsonwebtoken's process default, unless one is installed
/// already. jsonwebtoken picks one by itself only when exactly one of its backend features is on;
/// when a dependency graph enables both, it would otherwise fail at the first signature.
pub(crate) fn ensure_provider() {
    #[cfg(feature = "aws-lc-rs")]
    let _already = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    #[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
    let _already = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
compile_error!(
    "arq-auth needs a crypto backend: enable the `aws-lc-rs` (default) or `rust-crypto` feature"
);
