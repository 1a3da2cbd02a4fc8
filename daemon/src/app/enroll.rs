//! Enrollment: what makes a leaked package worthless once used. A package carries a
//! single-use, expiring token instead of the cluster's secrets; the node's real configuration
//! waits in the backend (`<prefix>cluster:enroll:<token_id>`), encrypted under a key derived
//! from the token's secret. At first start the node takes the record atomically (it is gone
//! after), decrypts it, writes its full configuration and joins.

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::cluster::{EnrollmentRecord, Event, EventKind, Membership};
use crate::config::{Config, Loaded, Origin, Secret};

/// A new token: its id (public) and secret (only in the package).
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub secret: Secret,
}

impl Token {
    pub fn generate() -> Token {
        Token {
            id: crate::crypto::random_hex(16),
            secret: Secret::new(crate::crypto::random_hex(32)),
        }
    }

    /// What proves the holding of this token's secret without giving the secret away (nor the
    /// key that opens the record): hex SHA-256 over a domain tag and the secret.
    pub fn claim_proof(&self) -> Secret {
        let mut h = Sha256::new();
        h.update(b"fleet-enroll-claim-v1\0");
        h.update(self.secret.expose().as_bytes());
        Secret::new(hex::encode(h.finalize()))
    }

    /// The digest of [`Token::claim_proof`] the record carries (`EnrollmentRecord::claim`).
    pub fn claim_digest(&self) -> String {
        crate::crypto::sha256_hex(self.claim_proof().expose().as_bytes())
    }
}

/// Why a record cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error("the enrollment record does not match this package's token")]
    WrongToken,
    #[error("the enrollment record is damaged: {0}")]
    Damaged(String),
}

fn key_of(secret: &Secret) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fleet-enrollment-v1\0");
    h.update(secret.expose().as_bytes());
    h.finalize().into()
}

fn cipher(secret: &Secret) -> ChaCha20Poly1305 {
    // A 32-byte key is always accepted.
    ChaCha20Poly1305::new_from_slice(&key_of(secret)).expect("32-byte key")
}

/// Seals `config_yaml` for `token`; the token id is authenticated with it.
pub fn seal(token: &Token, config_yaml: &str) -> (String, String) {
    let nonce: [u8; 12] = rand::rng().random();
    let ct = cipher(&token.secret)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: config_yaml.as_bytes(),
                aad: token.id.as_bytes(),
            },
        )
        // Encryption of an in-memory buffer of this size does not fail.
        .expect("encrypting the enrollment record");
    (hex::encode(nonce), hex::encode(ct))
}

/// Opens a record with the token from the package.
pub fn open(record: &EnrollmentRecord, token: &Token) -> Result<String, EnrollmentError> {
    if record.token_id != token.id {
        return Err(EnrollmentError::WrongToken);
    }
    let nonce: [u8; 12] = hex::decode(&record.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| EnrollmentError::Damaged("bad nonce".into()))?;
    let ct = hex::decode(&record.ciphertext)
        .map_err(|_| EnrollmentError::Damaged("bad ciphertext encoding".into()))?;
    let pt = cipher(&token.secret)
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &ct,
                aad: token.id.as_bytes(),
            },
        )
        .map_err(|_| EnrollmentError::WrongToken)?;
    String::from_utf8(pt).map_err(|_| EnrollmentError::Damaged("not UTF-8".into()))
}

/// What an enrollment record holds once opened: the node's configuration and the files it
/// names (the primary's TLS certificate and key). Records of configurations without files
/// hold the YAML alone, as records did before files travelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledConfig {
    pub config_yaml: String,
    pub files: Vec<fleet_installer_stub::sealed::ConfigFile>,
}

impl EnrolledConfig {
    /// The plaintext to [`seal`]: the YAML, or with files the sealed body's JSON form.
    pub fn to_plaintext(&self) -> String {
        if self.files.is_empty() {
            return self.config_yaml.clone();
        }
        let body = fleet_installer_stub::SealedPayload {
            node_name: String::new(),
            config_yaml: self.config_yaml.clone(),
            files: self.files.clone(),
        };
        // A struct of strings and numbers always serializes.
        serde_json::to_string(&body).expect("serializing the enrolled configuration")
    }

    /// The inverse of [`EnrolledConfig::to_plaintext`]: a YAML configuration never starts
    /// with `{` (serde_yaml writes a mapping in block style), the JSON form always does.
    pub fn from_plaintext(text: String) -> Result<Self, EnrollmentError> {
        if !text.starts_with('{') {
            return Ok(EnrolledConfig {
                config_yaml: text,
                files: Vec::new(),
            });
        }
        let body: fleet_installer_stub::SealedPayload = serde_json::from_str(&text)
            .map_err(|e| EnrollmentError::Damaged(format!("bad record body: {e}")))?;
        fleet_installer_stub::sealed::ConfigFile::validate_all(&body.files)
            .map_err(EnrollmentError::Damaged)?;
        Ok(EnrolledConfig {
            config_yaml: body.config_yaml,
            files: body.files,
        })
    }
}

/// How a node's first start went.
#[derive(Debug)]
pub enum Redemption {
    /// The full configuration, written to the configuration file and loaded.
    Redeemed(Box<Config>),
    /// Refused for good (used, revoked, expired, unknown, or not this package's record).
    Refused(String),
    /// Shut down while waiting for the backend.
    Stopped,
}

/// Redeems the package's token: takes the record (atomically; a second taker finds nothing),
/// opens it, writes the full configuration over the bootstrap one (0600, atomically) and loads
/// it. Backend outages are retried with capped backoff; a refusal is final (no retry storm) and
/// recorded as `enrollment_rejected`.
pub async fn redeem(
    config: &Config,
    origin: &Origin,
    shutdown: &CancellationToken,
    status: &tokio::sync::watch::Sender<String>,
) -> Redemption {
    let Some(enroll) = &config.enrollment else {
        return Redemption::Redeemed(Box::new(config.clone()));
    };
    let token = Token {
        id: enroll.token_id.clone(),
        secret: enroll.token_secret.clone(),
    };
    let short = &token.id[..8.min(token.id.len())];
    let Some(path) = origin.source.clone() else {
        return Redemption::Refused("the configuration file's path is unknown".into());
    };
    let backend = match crate::cluster::open(config) {
        Ok(b) => b,
        Err(e) => return Redemption::Refused(format!("cannot open the cluster backend: {e}")),
    };
    let mut backoff = super::membership::Backoff::new(Duration::from_secs(60));
    let mut logged = false;
    let mut waited = false;
    log::info!("🔑 Enrolling with package token {short}… at the cluster backend");
    let record = loop {
        // The backend bounds the call with its own deadline (a timeout is `Unreachable`).
        match backend
            .claim_enrollment(&token.id, token.claim_proof().expose())
            .await
        {
            Ok(r) => break r,
            Err(e) if !e.is_transient() => {
                return refuse(
                    &*backend,
                    &token,
                    format!("the cluster backend refused: {e}"),
                )
                .await;
            }
            Err(e @ crate::cluster::ClusterError::Waiting { .. }) => {
                status.send_replace(format!("enrolling: {e}"));
                if !waited {
                    log::info!("⏳ Enrollment: {e}");
                    waited = true;
                }
            }
            Err(e) => {
                status.send_replace(format!(
                    "enrolling: the cluster backend is unavailable: {e} (retrying)"
                ));
                if !logged {
                    log::error!("❌ Cluster backend unavailable for enrollment: {e} (retrying)");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Redemption::Stopped,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    };
    let Some(record) = record else {
        return refuse(
            &*backend,
            &token,
            format!(
                "package token {short}… was already used, revoked, expired or is unknown to this cluster"
            ),
        )
        .await;
    };
    let EnrolledConfig {
        config_yaml: yaml,
        files,
    } = match open(&record, &token).and_then(EnrolledConfig::from_plaintext) {
        Ok(y) => y,
        Err(e) => return refuse(&*backend, &token, e.to_string()).await,
    };
    let full = match Config::parse(&yaml, &path).and_then(|c| {
        c.validate(&path)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                &*backend,
                &token,
                format!("the enrolled configuration is invalid: {e}"),
            )
            .await;
        }
    };
    // The files first: the configuration that names them is written only once they are there.
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    if let Err(e) = fleet_installer_stub::install::write_config_files(dir, &files) {
        return Redemption::Refused(format!(
            "the configuration's files could not be written: {e}; build a new package"
        ));
    }
    let text = format!(
        "# Fleet Server node configuration, received by enrollment (package {}).\n{}",
        &record.package_id[..12.min(record.package_id.len())],
        yaml
    );
    if let Err(e) = crate::identity::write_atomically(&path, text.as_bytes(), 0o600) {
        // The record is gone: say loudly that this machine must be re-provisioned.
        return Redemption::Refused(format!(
            "the configuration could not be written to {}: {e}; build a new package",
            path.display()
        ));
    }
    let mut full = Loaded {
        config: full,
        origin: Origin {
            source: Some(path.clone()),
            ..origin.clone()
        },
        warnings: Vec::new(),
    };
    full.apply_overrides();
    crate::crypto::secure(&mut full);
    let full = full.config;
    log::info!(
        "✅ Enrollment redeemed: package {} for node {}; configuration written to {}",
        &record.package_id[..12.min(record.package_id.len())],
        if record.node_name.is_empty() {
            "(hostname)"
        } else {
            &record.node_name
        },
        path.display()
    );
    if let Ok(b) = crate::cluster::open(&full) {
        let ev = Event::new(EventKind::EnrollmentRedeemed, &record.node_name)
            .with("token_id", &record.token_id)
            .with("package_id", &record.package_id)
            .with("host", crate::identity::hostname());
        super::events::record(&*b, &ev, "enrollment redeemed").await;
    }
    Redemption::Redeemed(Box::new(full))
}

async fn refuse(backend: &dyn Membership, token: &Token, reason: String) -> Redemption {
    log::error!("❌ Enrollment refused: {reason}");
    let ev = Event::new(
        EventKind::EnrollmentRejected,
        crate::identity::hostname_node_name(),
    )
    .with("token_id", &token.id)
    .with("reason", &reason)
    .with("host", crate::identity::hostname());
    super::events::record(backend, &ev, "enrollment refused").await;
    Redemption::Refused(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate_token;

    fn record(token: &Token, yaml: &str) -> EnrollmentRecord {
        let (nonce, ciphertext) = seal(token, yaml);
        EnrollmentRecord {
            token_id: token.id.clone(),
            node_name: "n".into(),
            created_ms: 1,
            expires_ms: 2,
            built_by: "t".into(),
            package_id: "p".into(),
            users: vec![],
            nonce,
            ciphertext,
            claim: token.claim_digest(),
        }
    }

    #[test]
    fn round_trip_and_wrong_token() {
        let t = Token::generate();
        let r = record(&t, "cluster:\n  enabled: true\n");
        assert_eq!(open(&r, &t).unwrap(), "cluster:\n  enabled: true\n");
        let other = Token::generate();
        assert!(matches!(open(&r, &other), Err(EnrollmentError::WrongToken)));
        let mut same_id = Token::generate();
        same_id.id = t.id.clone();
        assert!(matches!(
            open(&r, &same_id),
            Err(EnrollmentError::WrongToken)
        ));
        let mut tampered = r.clone();
        tampered.ciphertext.replace_range(
            0..2,
            if &r.ciphertext[0..2] == "00" {
                "01"
            } else {
                "00"
            },
        );
        assert!(open(&tampered, &t).is_err());
        assert!(validate_token(&t.id, t.secret.expose()).is_ok());
        assert!(!format!("{t:?}").contains(t.secret.expose()));
    }
}
