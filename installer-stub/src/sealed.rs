//! The sealed configuration: the format the builder seals a node's configuration into and the stub opens.
//!
//! # Format, version 1
//!
//! A blob is a fixed 122-byte header followed by the encrypted body. All integers are
//! big-endian. The whole header is the AEAD's associated data, so changing any header
//! byte (policy, expiry, layout, …) makes the body fail to open.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FLEETSC1` |
//! | 8 | 2 | format version, `1` |
//! | 10 | 1 | key mode: `1` key file, `2` passphrase |
//! | 11 | 1 | Ethernet policy: `1` require, `2` allow-virtual, `3` skip |
//! | 12 | 1 | target layout: `1` macos, `2` linux |
//! | 13 | 1 | reserved, `0` |
//! | 14 | 4 | Argon2id memory cost in KiB (`0` in key-file mode) |
//! | 18 | 4 | Argon2id iterations (`0` in key-file mode) |
//! | 22 | 4 | Argon2id parallelism (`0` in key-file mode) |
//! | 26 | 16 | salt (random; the Argon2id salt in passphrase mode) |
//! | 42 | 12 | ChaCha20-Poly1305 nonce (random) |
//! | 54 | 8 | created_at, unix seconds |
//! | 62 | 8 | not_after, unix seconds |
//! | 70 | 32 | package id: sha256 over bytes 0..70 and 16 random bytes |
//! | 102 | 16 | key check: the first 16 bytes of sha256 over a domain string and the key |
//! | 118 | 4 | body length in bytes (ciphertext including its 16-byte tag) |
//! | 122 | body length | ChaCha20-Poly1305 ciphertext of the JSON `{"node_name": …, "config_yaml": …}` |
//!
//! The blob ends exactly after the body: trailing bytes are refused like missing ones.
//!
//! The key check tells a wrong key or passphrase ([`SealError::WrongKey`]) apart from a
//! modified blob ([`SealError::Tampered`]), so the user gets the right advice; it also
//! commits the blob to one key. It reveals nothing usable: a 256-bit key cannot be
//! searched, and a passphrase guess costs the same Argon2id run as a decryption attempt.
//!
//! The Argon2id parameters travel in the header (bounded on open, so a forged header
//! cannot make the stub allocate gigabytes) so that they can be raised later without a
//! format change. The version is read before anything else past the magic, so a future
//! format with another header size is reported as [`SealError::UnsupportedVersion`].
//!
//! # Keys
//! - Key-file mode: a random 256-bit key, written raw (32 bytes) to [`KEY_FILE_NAME`]
//!   beside the blob. It guards against casual reading and corruption only: whoever
//!   has the package has the key.
//! - Passphrase mode: the key is Argon2id(passphrase, salt); the passphrase travels
//!   separately and reaches the stub as a root-owned file
//!   ([`TargetLayout::passphrase_file`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::ethernet::EthernetPolicy;
use crate::layout::TargetLayout;
use crate::timefmt::format_utc;

/// File name of the sealed blob, shipped beside the stub binary.
pub const SEALED_FILE_NAME: &str = "fleet-config.sealed";
/// File name of the key file (key-file mode), shipped beside the blob.
pub const KEY_FILE_NAME: &str = "fleet-config.key";

/// First eight bytes of every sealed blob.
pub const MAGIC: [u8; 8] = *b"FLEETSC1";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the version-1 header.
pub const HEADER_LEN: usize = 122;
/// Length of the Poly1305 tag at the end of the body.
pub const TAG_LEN: usize = 16;
/// Length of a key file's content.
pub const KEY_LEN: usize = 32;

/// Upper bounds on Argon2id parameters accepted from a header: a forged header must not
/// make the stub spend minutes or gigabytes before the tag check refuses it.
const MAX_M_COST_KIB: u32 = 256 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;
/// A body larger than this is not a node configuration (and would not fit the u32 field anyway).
const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

const PACKAGE_ID_DOMAIN: &[u8] = b"fleet-installer-stub package id v1";

/// Everything that can go wrong sealing or opening; each failure its own variant, so the
/// stub can map them 1:1 to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The blob (or the key file) does not exist.
    #[error("{} not found", .0.display())]
    Missing(PathBuf),
    /// The blob or key file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Fewer bytes than the header says there are.
    #[error("sealed configuration is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A header field holds a value no builder writes.
    #[error("sealed configuration is malformed: {0}")]
    Malformed(&'static str),
    /// Not a sealed configuration at all.
    #[error("not a fleet sealed configuration (bad magic)")]
    BadMagic,
    /// A format this stub does not know (made by a newer builder).
    #[error(
        "unsupported sealed configuration format version {0} (this stub reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    /// The key given is of the other mode than the blob was sealed with.
    #[error("the package was sealed with a {sealed} but a {given} was given")]
    KeyModeMismatch {
        /// The blob's mode.
        sealed: KeyMode,
        /// The mode of the key supplied.
        given: KeyMode,
    },
    /// A key file of the wrong size.
    #[error("key file has {0} bytes, expected {KEY_LEN}")]
    BadKeyFile(usize),
    /// An empty passphrase (an empty file, or only a newline).
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    /// The key or passphrase does not match the blob's key check.
    #[error("wrong key or passphrase")]
    WrongKey,
    /// The key matches but authentication failed: a byte of the blob changed.
    #[error("the sealed configuration was modified or damaged")]
    Tampered,
    /// The package's validity ended.
    #[error("the package expired at {}", format_utc(*not_after))]
    Expired {
        /// End of validity, unix seconds.
        not_after: u64,
    },
    /// The body authenticated but is not a valid payload (a builder bug, never user data).
    #[error("sealed payload is invalid: {0}")]
    InvalidPayload(String),
    /// Sealing options or payload refused.
    #[error("cannot seal: {0}")]
    InvalidOptions(String),
    /// Argon2id refused its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The OS random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

/// How the body's key is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// A random key in [`KEY_FILE_NAME`] beside the blob.
    KeyFile,
    /// Argon2id of an install passphrase.
    Passphrase,
}

impl KeyMode {
    fn to_byte(self) -> u8 {
        match self {
            Self::KeyFile => 1,
            Self::Passphrase => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::KeyFile),
            2 => Some(Self::Passphrase),
            _ => None,
        }
    }
}

impl fmt::Display for KeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::KeyFile => "key file",
            Self::Passphrase => "passphrase",
        })
    }
}

/// Argon2id cost parameters (passphrase mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// OWASP's Argon2id recommendation (19 MiB, 2 passes, 1 lane): well under half a
    /// second on the machines a stub runs on.
    pub const DEFAULT: Self = Self {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    fn check(self) -> Result<(), SealError> {
        // Lanes first: the memory floor depends on them (8 KiB per lane).
        if !(1..=MAX_P_COST).contains(&self.p_cost)
            || !(1..=MAX_T_COST).contains(&self.t_cost)
            || !(8 * self.p_cost..=MAX_M_COST_KIB).contains(&self.m_cost_kib)
        {
            return Err(SealError::Malformed(
                "key derivation parameters out of range",
            ));
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A 256-bit key-file key. Its `Debug` never shows the bytes; it is wiped on drop.
#[derive(Clone)]
pub struct FileKey([u8; KEY_LEN]);

impl FileKey {
    /// A fresh random key (the builder makes one per package).
    pub fn generate() -> Result<Self, SealError> {
        let mut k = [0u8; KEY_LEN];
        random(&mut k)?;
        Ok(Self(k))
    }

    /// The key from a key file's content (exactly [`KEY_LEN`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let k: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::BadKeyFile(bytes.len()))?;
        Ok(Self(k))
    }

    /// The key file's content.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for FileKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(***)")
    }
}

/// What unlocks a blob.
#[derive(Clone, Copy)]
pub enum KeySource<'a> {
    /// Key-file mode.
    KeyFile(&'a FileKey),
    /// Passphrase mode: the passphrase bytes (see [`passphrase_from_file_content`]).
    Passphrase(&'a [u8]),
}

impl KeySource<'_> {
    fn mode(&self) -> KeyMode {
        match self {
            Self::KeyFile(_) => KeyMode::KeyFile,
            Self::Passphrase(_) => KeyMode::Passphrase,
        }
    }
}

impl fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyFile(_) => f.write_str("KeySource::KeyFile(***)"),
            Self::Passphrase(_) => f.write_str("KeySource::Passphrase(***)"),
        }
    }
}

/// The passphrase in a passphrase file: its content without one trailing newline
/// (`echo secret > file` must work, and a passphrase may contain spaces).
pub fn passphrase_from_file_content(content: &[u8]) -> Result<&[u8], SealError> {
    let p = content
        .strip_suffix(b"\n")
        .map(|p| p.strip_suffix(b"\r").unwrap_or(p))
        .unwrap_or(content);
    if p.is_empty() {
        return Err(SealError::EmptyPassphrase);
    }
    Ok(p)
}

/// The sealed body: which node this package makes, and its configuration file verbatim.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPayload {
    /// The node name (`[a-z0-9-]`, at most 63 characters).
    /// Empty: the node takes its name from its hostname at first start.
    pub node_name: String,
    /// The node's `config.yaml`, written as it is: it holds secrets.
    pub config_yaml: String,
    /// Files the configuration names, written beside it (the primary's TLS certificate and
    /// key, etcd's CA and client certificate). Absent in packages built before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ConfigFile>,
}

/// A file that travels with a node's configuration and is written into its configuration
/// directory (`/etc/fleet-server/`, `/Library/FleetServer/config/`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// File name in the configuration directory ([`ConfigFile::validate`] says which).
    pub name: String,
    /// 0600 (private keys) or 0644 (certificates).
    pub mode: u32,
    /// The file's text (PEM).
    pub content: String,
}

impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("name", &self.name)
            .field("mode", &format_args!("{:o}", self.mode))
            .field(
                "content",
                &format_args!("*** ({} bytes)", self.content.len()),
            )
            .finish()
    }
}

impl ConfigFile {
    /// At most this many files travel with one configuration.
    pub const MAX_FILES: usize = 8;
    /// At most this many bytes each (a certificate chain is a few KB).
    pub const MAX_LEN: usize = 256 * 1024;

    /// A name of `[a-z0-9._-]`, starting with a letter or digit, at most 64 characters, not
    /// the configuration file itself; mode 0600 or 0644; at most [`Self::MAX_LEN`] bytes.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let ok_name = !n.is_empty()
            && n.len() <= 64
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && n != crate::layout::CONFIG_FILE_NAME;
        if !ok_name {
            return Err(format!(
                "file name {n:?} is not 1 to 64 characters of [a-z0-9._-] (or names config.yaml)"
            ));
        }
        if self.mode != 0o600 && self.mode != 0o644 {
            return Err(format!("file {n}: mode {:o} is not 600 or 644", self.mode));
        }
        if self.content.len() > Self::MAX_LEN {
            return Err(format!(
                "file {n}: {} bytes, more than {}",
                self.content.len(),
                Self::MAX_LEN
            ));
        }
        Ok(())
    }

    /// Validates a whole list: each file, no name twice, at most [`Self::MAX_FILES`].
    pub fn validate_all(files: &[ConfigFile]) -> Result<(), String> {
        if files.len() > Self::MAX_FILES {
            return Err(format!(
                "{} files travel with the configuration, more than {}",
                files.len(),
                Self::MAX_FILES
            ));
        }
        for (i, f) in files.iter().enumerate() {
            f.validate()?;
            if files[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("file {} appears twice", f.name));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SealedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedPayload")
            .field("node_name", &self.node_name)
            .field(
                "config_yaml",
                &format_args!("*** ({} bytes)", self.config_yaml.len()),
            )
            .field("files", &self.files)
            .finish()
    }
}

impl SealedPayload {
    fn validate(&self) -> Result<(), String> {
        // An empty name means "the machine's hostname", decided by the daemon at first start.
        let n = &self.node_name;
        if !n.is_empty() {
            crate::names::check_node_name(n).map_err(|e| format!("node name: {e}"))?;
        }
        if self.config_yaml.trim().is_empty() {
            return Err("config_yaml is empty".into());
        }
        ConfigFile::validate_all(&self.files)
    }
}

/// How to seal, apart from the key.
#[derive(Debug, Clone, Copy)]
pub struct SealOptions {
    /// Build time, unix seconds.
    pub created_at: u64,
    /// End of validity, unix seconds; the stub refuses the package from then on.
    pub not_after: u64,
    /// What the stub demands of the network.
    pub ethernet: EthernetPolicy,
    /// Where the stub writes the configuration.
    pub layout: TargetLayout,
    /// Argon2id costs (passphrase mode only).
    pub kdf: KdfParams,
}

/// The parsed plaintext header. Holds no secret: safe to print (the package inspect
/// command shows it through `Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version (1).
    pub version: u16,
    /// Key mode.
    pub key_mode: KeyMode,
    /// Ethernet policy.
    pub ethernet: EthernetPolicy,
    /// Target layout.
    pub layout: TargetLayout,
    /// Argon2id costs; `None` in key-file mode.
    pub kdf: Option<KdfParams>,
    /// Random salt.
    pub salt: [u8; 16],
    /// AEAD nonce.
    pub nonce: [u8; 12],
    /// Build time, unix seconds.
    pub created_at: u64,
    /// End of validity, unix seconds.
    pub not_after: u64,
    /// Package id (sha256).
    pub package_id: [u8; 32],
    /// Commitment to the key (see the module doc).
    pub key_check: [u8; 16],
    /// Length of the encrypted body.
    pub body_len: u32,
}

impl Header {
    /// Parses and checks the header of `blob`, without a key. Also checks that the blob
    /// is exactly as long as the header says.
    pub fn parse(blob: &[u8]) -> Result<Self, SealError> {
        let h = Self::parse_prefix(blob)?;
        let expected = HEADER_LEN + h.body_len as usize;
        if blob.len() < expected {
            return Err(SealError::Truncated {
                expected,
                actual: blob.len(),
            });
        }
        if blob.len() > expected {
            return Err(SealError::Malformed("trailing bytes after the body"));
        }
        Ok(h)
    }

    fn parse_prefix(blob: &[u8]) -> Result<Self, SealError> {
        // Magic and version first: they decide how to read everything else.
        if blob.len() < 10 {
            if !MAGIC.starts_with(&blob[..blob.len().min(8)]) {
                return Err(SealError::BadMagic);
            }
            return Err(SealError::Truncated {
                expected: HEADER_LEN,
                actual: blob.len(),
            });
        }
        if blob[..8] != MAGIC {
            return Err(SealError::BadMagic);
        }
        let version = u16::from_be_bytes([blob[8], blob[9]]);
        if version != FORMAT_VERSION {
            return Err(SealError::UnsupportedVersion(version));
        }
        if blob.len() < HEADER_LEN {
            return Err(SealError::Truncated {
                expected: HEADER_LEN,
                actual: blob.len(),
            });
        }
        let key_mode =
            KeyMode::from_byte(blob[10]).ok_or(SealError::Malformed("unknown key mode"))?;
        let ethernet = EthernetPolicy::from_byte(blob[11])
            .ok_or(SealError::Malformed("unknown Ethernet policy"))?;
        let layout = TargetLayout::from_byte(blob[12])
            .ok_or(SealError::Malformed("unknown target layout"))?;
        if blob[13] != 0 {
            return Err(SealError::Malformed("reserved byte is not zero"));
        }
        let params = KdfParams {
            m_cost_kib: be_u32(&blob[14..18]),
            t_cost: be_u32(&blob[18..22]),
            p_cost: be_u32(&blob[22..26]),
        };
        let kdf = match key_mode {
            KeyMode::KeyFile => {
                if params.m_cost_kib != 0 || params.t_cost != 0 || params.p_cost != 0 {
                    return Err(SealError::Malformed(
                        "key derivation parameters in a key-file package",
                    ));
                }
                None
            }
            KeyMode::Passphrase => {
                params.check()?;
                Some(params)
            }
        };
        let created_at = be_u64(&blob[54..62]);
        let not_after = be_u64(&blob[62..70]);
        if not_after <= created_at {
            return Err(SealError::Malformed("validity ends before it starts"));
        }
        let body_len = be_u32(&blob[118..122]);
        if (body_len as usize) < TAG_LEN || body_len as usize > MAX_BODY_LEN {
            return Err(SealError::Malformed("body length out of range"));
        }
        Ok(Self {
            version,
            key_mode,
            ethernet,
            layout,
            kdf,
            salt: blob[26..42].try_into().expect("16-byte slice"), // fixed range of a checked length
            nonce: blob[42..54].try_into().expect("12-byte slice"),
            created_at,
            not_after,
            package_id: blob[70..102].try_into().expect("32-byte slice"),
            key_check: blob[102..118].try_into().expect("16-byte slice"),
            body_len,
        })
    }

    /// Serializes the header (the exact bytes that are the AEAD's associated data).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_be_bytes());
        b[10] = self.key_mode.to_byte();
        b[11] = self.ethernet.to_byte();
        b[12] = self.layout.to_byte();
        b[13] = 0;
        let k = self.kdf.unwrap_or(KdfParams {
            m_cost_kib: 0,
            t_cost: 0,
            p_cost: 0,
        });
        b[14..18].copy_from_slice(&k.m_cost_kib.to_be_bytes());
        b[18..22].copy_from_slice(&k.t_cost.to_be_bytes());
        b[22..26].copy_from_slice(&k.p_cost.to_be_bytes());
        b[26..42].copy_from_slice(&self.salt);
        b[42..54].copy_from_slice(&self.nonce);
        b[54..62].copy_from_slice(&self.created_at.to_be_bytes());
        b[62..70].copy_from_slice(&self.not_after.to_be_bytes());
        b[70..102].copy_from_slice(&self.package_id);
        b[102..118].copy_from_slice(&self.key_check);
        b[118..122].copy_from_slice(&self.body_len.to_be_bytes());
        b
    }

    /// The package id in lowercase hex (64 characters).
    pub fn package_id_hex(&self) -> String {
        hex(&self.package_id)
    }

    /// The first 12 hex characters of the package id, for summaries and logs.
    pub fn package_id_short(&self) -> String {
        hex(&self.package_id[..6])
    }

    /// True once `now` (unix seconds) reaches `not_after`.
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.not_after
    }
}

impl fmt::Display for Header {
    /// The inspect view: every field but salt and nonce (not secret, but noise).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format version: {}", self.version)?;
        writeln!(f, "package id:     {}", self.package_id_hex())?;
        writeln!(f, "key mode:       {}", self.key_mode)?;
        if let Some(k) = self.kdf {
            writeln!(
                f,
                "key derivation: argon2id m={}KiB t={} p={}",
                k.m_cost_kib, k.t_cost, k.p_cost
            )?;
        }
        writeln!(f, "ethernet:       {}", self.ethernet)?;
        writeln!(f, "target layout:  {}", self.layout)?;
        writeln!(f, "created:        {}", format_utc(self.created_at))?;
        writeln!(f, "expires:        {}", format_utc(self.not_after))?;
        write!(f, "body:           {} bytes (encrypted)", self.body_len)
    }
}

/// A sealed package configuration, ready to ship.
#[derive(Clone)]
pub struct SealedBlob {
    /// Content of [`SEALED_FILE_NAME`].
    pub blob: Vec<u8>,
    /// Content of [`KEY_FILE_NAME`] in key-file mode; `None` in passphrase mode.
    pub key_file: Option<Vec<u8>>,
    /// The blob's header, for the builder's records (package id, expiry).
    pub header: Header,
}

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBlob")
            .field("blob_len", &self.blob.len())
            .field("key_file", &self.key_file.as_ref().map(|_| "***"))
            .field("header", &self.header)
            .finish()
    }
}

/// Seals `payload` for the stub.
pub fn seal(
    payload: &SealedPayload,
    opts: &SealOptions,
    key: KeySource<'_>,
) -> Result<SealedBlob, SealError> {
    payload.validate().map_err(SealError::InvalidOptions)?;
    if opts.not_after <= opts.created_at {
        return Err(SealError::InvalidOptions(
            "the expiry must be after the creation time".into(),
        ));
    }
    let plaintext = Zeroizing::new(
        serde_json::to_vec(payload).map_err(|e| SealError::InvalidOptions(e.to_string()))?,
    );
    let body_len = plaintext.len() + TAG_LEN;
    if body_len > MAX_BODY_LEN {
        return Err(SealError::InvalidOptions(
            "the configuration is too large".into(),
        ));
    }
    let kdf = match key {
        KeySource::KeyFile(_) => None,
        KeySource::Passphrase(p) => {
            if p.is_empty() {
                return Err(SealError::EmptyPassphrase);
            }
            opts.kdf.check().map_err(|_| {
                SealError::InvalidOptions("key derivation parameters out of range".into())
            })?;
            Some(opts.kdf)
        }
    };
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    let mut id_random = [0u8; 16];
    random(&mut salt)?;
    random(&mut nonce)?;
    random(&mut id_random)?;
    let mut header = Header {
        version: FORMAT_VERSION,
        key_mode: key.mode(),
        ethernet: opts.ethernet,
        layout: opts.layout,
        kdf,
        salt,
        nonce,
        created_at: opts.created_at,
        not_after: opts.not_after,
        package_id: [0; 32],
        key_check: [0; 16],
        body_len: body_len as u32, // bounded by MAX_BODY_LEN above
    };
    // The id covers the header fields before it, plus randomness so that two packages
    // built in the same second from the same settings still differ.
    let mut h = Sha256::new();
    h.update(PACKAGE_ID_DOMAIN);
    h.update(&header.to_bytes()[..70]);
    h.update(id_random);
    header.package_id = h.finalize().into();
    let key_bytes = derive_key(&header, key)?;
    header.key_check = key_check(&key_bytes);

    let aad = header.to_bytes();
    let cipher = ChaCha20Poly1305::new_from_slice(&key_bytes[..])
        .map_err(|_| SealError::Kdf("bad key length".into()))?;
    let ct = cipher
        .encrypt(
            &Nonce::from(header.nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::InvalidOptions("encryption failed".into()))?;
    debug_assert_eq!(ct.len(), body_len);
    let mut blob = Vec::with_capacity(HEADER_LEN + ct.len());
    blob.extend_from_slice(&aad);
    blob.extend_from_slice(&ct);
    Ok(SealedBlob {
        blob,
        key_file: match key {
            KeySource::KeyFile(k) => Some(k.as_bytes().to_vec()),
            KeySource::Passphrase(_) => None,
        },
        header,
    })
}

/// Opens a blob: parses the header, authenticates and decrypts the body, then checks
/// the expiry against `now` (unix seconds).
///
/// Expiry is checked after authentication so that a forged `not_after` is reported as
/// tampering, never as a plausible expiry. There is deliberately no "not yet valid"
/// check: a new machine's clock is often wrong in the past, and that must not block an
/// install.
pub fn open(
    blob: &[u8],
    key: KeySource<'_>,
    now: u64,
) -> Result<(Header, SealedPayload), SealError> {
    let header = Header::parse(blob)?;
    if header.key_mode != key.mode() {
        return Err(SealError::KeyModeMismatch {
            sealed: header.key_mode,
            given: key.mode(),
        });
    }
    if let KeySource::Passphrase(p) = key
        && p.is_empty()
    {
        return Err(SealError::EmptyPassphrase);
    }
    let key_bytes = derive_key(&header, key)?;
    // Not secret-dependent in a useful way, but compared without early exit anyway.
    let diff = key_check(&key_bytes)
        .iter()
        .zip(header.key_check)
        .fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff != 0 {
        return Err(SealError::WrongKey);
    }
    let cipher = ChaCha20Poly1305::new_from_slice(&key_bytes[..])
        .map_err(|_| SealError::Kdf("bad key length".into()))?;
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                &Nonce::from(header.nonce),
                Payload {
                    msg: &blob[HEADER_LEN..],
                    aad: &blob[..HEADER_LEN],
                },
            )
            .map_err(|_| SealError::Tampered)?,
    );
    if header.is_expired(now) {
        return Err(SealError::Expired {
            not_after: header.not_after,
        });
    }
    // serde_json's messages can quote input; only position and category are kept, so
    // no secret from the configuration ever reaches an error message.
    let payload: SealedPayload = serde_json::from_slice(&plaintext).map_err(|e| {
        SealError::InvalidPayload(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    payload.validate().map_err(SealError::InvalidPayload)?;
    Ok((header, payload))
}

/// Reads a whole file, telling a missing file apart from an unreadable one.
/// The most a sealed configuration can be: the header, the largest body, the tag.
pub const MAX_SEALED_LEN: usize = HEADER_LEN + MAX_BODY_LEN + TAG_LEN;
/// The most a key file or a passphrase file may hold (a key file holds [`KEY_LEN`] bytes).
pub const MAX_KEY_FILE_LEN: usize = 4096;

/// Reads a sealed configuration or key file of at most `cap` bytes. At most `cap + 1` bytes
/// are read, so `/dev/zero` or a huge file is refused at once instead of filling memory.
pub fn read_file(path: &Path, cap: usize) -> Result<Vec<u8>, SealError> {
    let io_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            SealError::Missing(path.to_path_buf())
        } else {
            SealError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    read_capped(file, cap).map_err(io_err)
}

/// Reads at most `cap` bytes from `r`; more is an `InvalidData` error that names the cap.
pub fn read_capped(r: impl io::Read, cap: usize) -> io::Result<Vec<u8>> {
    use io::Read as _;
    let mut buf = Vec::new();
    r.take(cap as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes, the most this file may hold"),
        ));
    }
    Ok(buf)
}

fn derive_key(header: &Header, key: KeySource<'_>) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    match key {
        KeySource::KeyFile(k) => out.copy_from_slice(k.as_bytes()),
        KeySource::Passphrase(p) => {
            let k = header.kdf.ok_or(SealError::Malformed(
                "passphrase package without parameters",
            ))?;
            let params = argon2::Params::new(k.m_cost_kib, k.t_cost, k.p_cost, Some(KEY_LEN))
                .map_err(|e| SealError::Kdf(e.to_string()))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p, &header.salt, &mut out[..])
                .map_err(|e| SealError::Kdf(e.to_string()))?;
        }
    }
    Ok(out)
}

const KEY_CHECK_DOMAIN: &[u8] = b"fleet-installer-stub key check v1";

fn key_check(key: &[u8; KEY_LEN]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(KEY_CHECK_DOMAIN);
    h.update(key);
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn random(buf: &mut [u8]) -> Result<(), SealError> {
    getrandom::fill(buf).map_err(|e| SealError::Random(e.to_string()))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SealOptions {
        SealOptions {
            created_at: 1_000,
            not_after: 2_000,
            ethernet: EthernetPolicy::Require,
            layout: TargetLayout::Macos,
            kdf: KdfParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
        }
    }

    fn payload() -> SealedPayload {
        SealedPayload {
            node_name: "server-02".into(),
            config_yaml: "cluster:\n  redis_password: hunter2\n".into(),
            files: Vec::new(),
        }
    }

    #[test]
    fn header_round_trips_and_has_documented_size() {
        let k = FileKey::generate().unwrap();
        let s = seal(&payload(), &opts(), KeySource::KeyFile(&k)).unwrap();
        assert_eq!(s.blob.len(), HEADER_LEN + s.header.body_len as usize);
        assert_eq!(Header::parse(&s.blob).unwrap(), s.header);
        assert_eq!(&s.blob[..HEADER_LEN], &s.header.to_bytes()[..]);
        assert_eq!(s.header.package_id_hex().len(), 64);
        assert_eq!(s.header.package_id_short().len(), 12);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let k = FileKey::generate().unwrap();
        let s = seal(&payload(), &opts(), KeySource::KeyFile(&k)).unwrap();
        for text in [
            format!("{:?}", payload()),
            format!("{k:?}"),
            format!("{s:?}"),
            format!("{:?}", KeySource::Passphrase(b"hunter2")),
            s.header.to_string(),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn passphrase_file_content_strips_one_newline() {
        assert_eq!(passphrase_from_file_content(b"a b\n").unwrap(), b"a b");
        assert_eq!(passphrase_from_file_content(b"a\r\n").unwrap(), b"a");
        assert_eq!(passphrase_from_file_content(b"a\n\n").unwrap(), b"a\n");
        assert!(matches!(
            passphrase_from_file_content(b"\n"),
            Err(SealError::EmptyPassphrase)
        ));
    }

    #[test]
    fn seal_refuses_bad_inputs() {
        let k = FileKey::generate().unwrap();
        for bad in ["Bad Name", "-leading", "trailing-"] {
            let mut p = payload();
            p.node_name = bad.into();
            assert!(
                matches!(
                    seal(&p, &opts(), KeySource::KeyFile(&k)),
                    Err(SealError::InvalidOptions(_))
                ),
                "{bad}"
            );
        }
        let mut o = opts();
        o.not_after = o.created_at;
        assert!(matches!(
            seal(&payload(), &o, KeySource::KeyFile(&k)),
            Err(SealError::InvalidOptions(_))
        ));
        assert!(matches!(
            seal(&payload(), &opts(), KeySource::Passphrase(b"")),
            Err(SealError::EmptyPassphrase)
        ));
    }
}
