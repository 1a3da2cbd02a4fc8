//! `config init`'s work: a ready-to-run configuration with fresh secrets (API key, admin
//! password, encryption keys), written 0600.

use std::path::Path;

use anyhow::Context;
use rand::Rng;

use crate::config::{BackendKind, Config};
use crate::identity;

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Options of `config init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub backend: BackendKind,
    pub storage_path: Option<std::path::PathBuf>,
    pub redis_host: Option<String>,
    pub redis_port: u16,
    pub state_dir: std::path::PathBuf,
    pub host: String,
    pub port: u16,
    pub node_name: Option<String>,
    pub redis_password: Option<crate::config::Secret>,
    pub template_dir: Option<std::path::PathBuf>,
    pub allow_foreign_binaries: bool,
}

/// Writes a configuration with fresh secrets (API key, admin password, encryption keys) and
/// returns the admin password and API key, for the caller to show once.
pub fn config_init(
    path: &Path,
    opts: &InitOptions,
    force: bool,
) -> anyhow::Result<(String, String)> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists: not overwriting it (use --force)",
            path.display()
        );
    }
    let password = random_token(20);
    let api_key = random_token(40);
    let mut c = Config::default();
    c.server.host = crate::config::ListenHost::parse(&opts.host)
        .map_err(|m| crate::config::ConfigError::invalid(path, "server.host", m))?;
    c.server.port = crate::config::Port::new(opts.port)
        .map_err(|m| crate::config::ConfigError::invalid(path, "server.port", m))?;
    c.server.state_dir = opts.state_dir.clone();
    c.cluster.enabled = true;
    c.cluster.backend = opts.backend;
    c.cluster.node_name = match &opts.node_name {
        Some(n) => Some(
            crate::config::NodeName::new(n.as_str())
                .map_err(|m| crate::config::ConfigError::invalid(path, "cluster.node_name", m))?,
        ),
        None => None,
    };
    c.cluster.storage_path = opts.storage_path.clone();
    c.cluster.redis_host = opts.redis_host.clone();
    c.cluster.redis_port = opts.redis_port;
    c.cluster.redis_password = opts.redis_password.clone();
    c.package.template_dir = opts.template_dir.clone();
    c.package.allow_foreign_binaries = opts.allow_foreign_binaries;
    // Only the key's digest is kept: the key is shown once, to the admin.
    c.auth.api_key_sha256 = Some(crate::config::Sha256Hex::of_digest(
        <sha2::Sha256 as sha2::Digest>::digest(api_key.as_bytes()).into(),
    ));
    let (hash, public) = crate::crypto::credentials_for(&password).map_err(anyhow::Error::msg)?;
    c.auth.web_password_hash =
        Some(crate::config::PasswordHash::new(hash).map_err(anyhow::Error::msg)?);
    c.auth.session_public_key =
        Some(crate::config::PublicKey::new(public).map_err(anyhow::Error::msg)?);
    c.encryption.database_key = Some(crate::config::Secret::new(random_token(44)));
    c.encryption.payload_key = Some(crate::config::Secret::new(random_token(44)));
    c.validate(path)?;
    let yaml = serde_yaml::to_string(&c).context("rendering the configuration")?;
    let text = format!(
        "# Fleet Server node configuration, made by `fleet-server config init`.\n# It holds secrets: keep it 0600.\n{yaml}"
    );
    identity::write_atomically(path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((password, api_key))
}
