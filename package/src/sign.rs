//! Signing a package with a Developer ID Installer identity, on any OS and
//! with no Apple tools: the identity comes from a PKCS#12 file and a password
//! file, the signature goes into the XAR as productsign lays it out (an RSA
//! `<signature>` and a CMS `<x-signature>` over the TOC digest, their heap
//! space reserved before the TOC is hashed; see [`crate::xar`]).
//!
//! The RSA signature is PKCS#1 v1.5 with SHA-256 over the 20 bytes of the
//! TOC's SHA-1 digest, as apple-codesign (rcodesign) signs packages; the CMS
//! blob is a detached SignedData over the same bytes, carrying the chain.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bcder::Oid;
use cryptographic_message_syntax::{SignedDataBuilder, SignerBuilder, asn1::rfc5652::OID_ID_DATA};
use signature::Signer as _;
use x509_certificate::{CapturedX509Certificate, InMemorySigningKeyPair, KeyAlgorithm, Sign};

use crate::xar::{SignatureSpace, TocSigner};
use crate::{Error, Result};

/// `1.2.840.113635.100.6.1.14`: Apple's "Developer ID Installer" certificate
/// extension (the marker of the certificate type), DER content bytes.
const OID_DEVELOPER_ID_INSTALLER: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x63, 0x64, 0x06, 0x01, 0x0e];
/// `1.2.840.113635.100.4.13`: the extended key usage "Packaging signing".
const OID_EKU_PACKAGE_SIGNING: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x63, 0x64, 0x04, 0x0d];
/// `2.5.29.37`: extendedKeyUsage.
const OID_EXTENDED_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
/// Room left in the heap for a CMS blob longer than the trial one (the
/// signing time, a timestamp token of another size).
const CMS_SLACK: usize = 1024;

/// Choices for loading an identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigningOptions {
    /// Sign with a certificate that is not a Developer ID Installer one
    /// (an in-house CA, a test identity). Installer and MDMs will not trust it.
    pub allow_any_certificate: bool,
    /// An RFC 3161 timestamp server for the CMS signature (e.g.
    /// `http://timestamp.apple.com/ts01`); `None`: no timestamp, no network.
    pub timestamp_url: Option<String>,
}

/// A Developer ID Installer identity: private key, certificate and the rest
/// of its chain, checked when loaded.
pub struct SigningIdentity {
    key: InMemorySigningKeyPair,
    cert: CapturedX509Certificate,
    chain: Vec<CapturedX509Certificate>,
    timestamp_url: Option<String>,
    developer_id: bool,
    /// The reserved sizes, found once by a trial signature.
    space: std::sync::OnceLock<SignatureSpace>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("subject", &self.subject())
            .field("chain", &self.chain.len())
            .field("developer_id_installer", &self.developer_id)
            .field("timestamp_url", &self.timestamp_url)
            .finish_non_exhaustive()
    }
}

/// A certificate's subject as `CN=…, OU=…, O=…`.
pub(crate) fn subject_of(cert: &CapturedX509Certificate) -> String {
    cert.subject_name()
        .user_friendly_str()
        .unwrap_or_else(|_| "(unreadable subject)".to_owned())
}

/// Whether `cert` carries the Developer ID Installer extension and the
/// package-signing extended key usage.
pub(crate) fn is_developer_id_installer(cert: &CapturedX509Certificate) -> bool {
    let marker = cert
        .iter_extensions()
        .any(|e| e.id.as_ref() == OID_DEVELOPER_ID_INSTALLER);
    let eku = cert.iter_extensions().any(|e| {
        e.id.as_ref() == OID_EXTENDED_KEY_USAGE
            && contains_oid(&e.value.to_bytes(), OID_EKU_PACKAGE_SIGNING)
    });
    marker && eku
}

/// Whether the DER `haystack` (a SEQUENCE OF OBJECT IDENTIFIER) holds `oid`.
fn contains_oid(haystack: &[u8], oid: &[u8]) -> bool {
    let mut needle = vec![0x06, oid.len() as u8];
    needle.extend_from_slice(oid);
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn identity_error(file: &Path, reason: impl Into<String>) -> Error {
    Error::SigningIdentity {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the password file: it must exist and be readable by its owner
/// only (no group or other read bit), and hold the password on its first
/// line (one trailing newline is not part of it).
fn read_password_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        identity_error(
            path,
            match e.kind() {
                std::io::ErrorKind::NotFound => "password file not found".to_owned(),
                _ => format!("password file cannot be read: {e}"),
            },
        )
    })?;
    if !meta.is_file() {
        return Err(identity_error(path, "password file is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(identity_error(
            path,
            format!(
                "password file is readable by {} (mode {mode:04o}); chmod 600 it",
                if mode & 0o004 != 0 {
                    "everyone"
                } else {
                    "its group"
                }
            ),
        ));
    }
    let raw = std::fs::read(path)
        .map_err(|e| identity_error(path, format!("password file cannot be read: {e}")))?;
    let text = String::from_utf8(raw)
        .map_err(|_| identity_error(path, "password file is not UTF-8 text"))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.contains('\n') {
        return Err(identity_error(
            path,
            "password file has more than one line (the password is the whole first line)",
        ));
    }
    Ok(password.to_owned())
}

impl SigningIdentity {
    /// Loads the identity in the PKCS#12 file `p12` whose password is in
    /// `password_file`, and checks it: a matching RSA key, a certificate
    /// valid now and, unless `options.allow_any_certificate`, a Developer ID
    /// Installer one. Every error names the file at fault and never the
    /// password.
    pub fn load(p12: &Path, password_file: &Path, options: &SigningOptions) -> Result<Self> {
        let password = read_password_file(password_file)?;
        let bytes = std::fs::read(p12).map_err(|e| {
            identity_error(
                p12,
                match e.kind() {
                    std::io::ErrorKind::NotFound => "p12 file not found".to_owned(),
                    _ => format!("p12 file cannot be read: {e}"),
                },
            )
        })?;
        Self::from_p12(&bytes, p12, &password, options)
    }

    /// As [`SigningIdentity::load`], from the p12's bytes and the password;
    /// `p12_path` is only used to name the file in errors.
    pub fn from_p12(
        bytes: &[u8],
        p12_path: &Path,
        password: &str,
        options: &SigningOptions,
    ) -> Result<Self> {
        let store = p12_keystore::KeyStore::from_pkcs12(bytes, password).map_err(|e| {
            identity_error(
                p12_path,
                match e {
                    p12_keystore::error::Error::MacError(_) => {
                        "wrong password for the p12 file (its integrity check fails)".to_owned()
                    }
                    p12_keystore::error::Error::DerError(_)
                    | p12_keystore::error::Error::InvalidVersion => {
                        "not a PKCS#12 (.p12) file".to_owned()
                    }
                    other => format!("p12 file cannot be decrypted: {other}"),
                },
            )
        })?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| identity_error(p12_path, "p12 file holds no private key"))?;
        let key = InMemorySigningKeyPair::from_pkcs8_der(chain.key()).map_err(|e| {
            identity_error(p12_path, format!("the private key cannot be used: {e}"))
        })?;
        if key.key_algorithm() != Some(KeyAlgorithm::Rsa) {
            return Err(identity_error(
                p12_path,
                "the private key is not RSA (a package signature is RSA)",
            ));
        }
        let mut certs = Vec::with_capacity(chain.chain().len());
        for c in chain.chain() {
            certs.push(
                CapturedX509Certificate::from_der(c.as_der().to_vec()).map_err(|e| {
                    identity_error(p12_path, format!("a certificate cannot be parsed: {e}"))
                })?,
            );
        }
        let public = key.public_key_data();
        let at = certs
            .iter()
            .position(|c| c.public_key_data() == public)
            .ok_or_else(|| {
                identity_error(
                    p12_path,
                    "no certificate in the p12 file matches its private key",
                )
            })?;
        let cert = certs.remove(at);
        let subject = subject_of(&cert);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if cert.validity_not_after().timestamp() < now {
            return Err(identity_error(
                p12_path,
                format!(
                    "certificate \"{subject}\" expired on {}",
                    cert.validity_not_after().to_rfc3339()
                ),
            ));
        }
        if cert.validity_not_before().timestamp() > now {
            return Err(identity_error(
                p12_path,
                format!(
                    "certificate \"{subject}\" is not valid before {}",
                    cert.validity_not_before().to_rfc3339()
                ),
            ));
        }
        let developer_id = is_developer_id_installer(&cert);
        if !developer_id && !options.allow_any_certificate {
            return Err(identity_error(
                p12_path,
                format!(
                    "certificate \"{subject}\" is not a Developer ID Installer certificate \
                     (no extension 1.2.840.113635.100.6.1.14 with extended key usage \
                     1.2.840.113635.100.4.13), so Installer and MDMs will not trust the \
                     package; pass --allow-any-certificate to sign with it anyway"
                ),
            ));
        }
        // The chain as it will be listed: issuer after subject where known.
        let mut ordered = Vec::with_capacity(certs.len());
        let mut current = cert.clone();
        while let Some(i) = certs.iter().position(|c| {
            !current.subject_is_issuer() && current.verify_signed_by_certificate(c).is_ok()
        }) {
            current = certs.remove(i);
            ordered.push(current.clone());
        }
        ordered.append(&mut certs);
        Ok(Self {
            key,
            cert,
            chain: ordered,
            timestamp_url: options.timestamp_url.clone(),
            developer_id,
            space: std::sync::OnceLock::new(),
        })
    }

    /// The signer's subject (`CN=Developer ID Installer: …, OU=…, O=…`).
    pub fn subject(&self) -> String {
        subject_of(&self.cert)
    }

    /// Whether the certificate is a Developer ID Installer one.
    pub fn is_developer_id_installer(&self) -> bool {
        self.developer_id
    }

    /// The subjects of the certificates that come with it, signer first.
    pub fn chain_subjects(&self) -> Vec<String> {
        std::iter::once(&self.cert)
            .chain(&self.chain)
            .map(subject_of)
            .collect()
    }

    /// When the certificate expires (RFC 3339).
    pub fn not_after(&self) -> String {
        self.cert.validity_not_after().to_rfc3339()
    }

    fn cms(&self, digest: &[u8]) -> Result<Vec<u8>> {
        let mut signer =
            SignerBuilder::new(&self.key, self.cert.clone()).message_id_content(digest.to_vec());
        if let Some(url) = &self.timestamp_url {
            signer = signer
                .time_stamp_url(url.as_str())
                .map_err(|e| Error::Signing(format!("timestamp server {url}: {e}")))?;
        }
        SignedDataBuilder::default()
            .content_type(Oid(OID_ID_DATA.as_ref().into()))
            .signer(signer)
            .certificates(self.chain.iter().cloned())
            .build_der()
            .map_err(|e| Error::Signing(format!("building the CMS signature: {e}")))
    }

    fn certificates_der(&self) -> Result<Vec<Vec<u8>>> {
        std::iter::once(&self.cert)
            .chain(&self.chain)
            .map(|c| {
                c.encode_der()
                    .map_err(|e| Error::Signing(format!("encoding a certificate: {e}")))
            })
            .collect()
    }
}

impl TocSigner for SigningIdentity {
    fn space(&self) -> Result<SignatureSpace> {
        if let Some(s) = self.space.get() {
            return Ok(s.clone());
        }
        // A trial over a digest of the right length gives both sizes (the same for every
        // package: the signed attributes have fixed lengths; a timestamp token's length may
        // vary, hence the slack).
        let trial = [0u8; 20];
        let rsa: Vec<u8> = self
            .key
            .try_sign(&trial)
            .map(Into::into)
            .map_err(|e| Error::Signing(format!("RSA signature: {e}")))?;
        let cms = self.cms(&trial)?;
        let space = SignatureSpace {
            rsa_len: rsa.len(),
            cms_len: cms.len() + CMS_SLACK,
            certificates: self.certificates_der()?,
        };
        Ok(self.space.get_or_init(|| space).clone())
    }

    fn sign(&self, toc_digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let rsa: Vec<u8> = self
            .key
            .try_sign(toc_digest)
            .map(Into::into)
            .map_err(|e| Error::Signing(format!("RSA signature: {e}")))?;
        Ok((rsa, self.cms(toc_digest)?))
    }
}
