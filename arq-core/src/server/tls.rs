//! rustls server configuration from PEM files, with optional client-certificate verification.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ServerError;
use crate::config::TlsConfig;

fn tls_err(what: impl std::fmt::Display) -> ServerError {
    ServerError::Tls {
        reason: what.to_string(),
    }
}

/// Loads certificates, key and (for mTLS) client CAs, and offers ALPN `h2` (when `http2`) and
/// `http/1.1`.
pub(crate) fn server_config(
    config: &TlsConfig,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            tls_err(format!(
                "cannot read certificates from {}: {e}",
                config.cert_file.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{} holds no PEM certificate",
            config.cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        tls_err(format!(
            "cannot read a private key from {}: {e}",
            config.key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_err(format!(
                        "cannot read client CA certificates from {}: {e}",
                        ca_file.display()
                    ))
                })?;
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| tls_err(format!("bad client CA in {}: {e}", ca_file.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err(format!("client CA configuration: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        tls_err(format!(
            "certificate and key do not match or are unusable: {e}"
        ))
    })?;
    server.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(server))
}
