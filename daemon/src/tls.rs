//! HTTPS: the rustls server configuration from the PEM files. Handshakes run in each
//! connection's own task, with a deadline (`serve`), so a slow or silent client cannot stall
//! the accept loop.

use std::path::Path;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Loads a PEM certificate chain and private key into a server configuration.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use crate::config::files::{PEM_CAP, read_trusted};
    let cert_pem = read_trusted(cert, PEM_CAP)
        .with_context(|| format!("server.tls_cert: reading {}", cert.display()))?;
    let key_pem = read_trusted(key, PEM_CAP)
        .with_context(|| format!("server.tls_key: reading {}", key.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "server.tls_cert: {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("server.tls_cert: {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("server.tls_key: {} is not a PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls_cert and server.tls_key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
