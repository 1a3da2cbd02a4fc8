//! The guide's "Method C: Direct Download": a package built with a download link stays on the
//! node that built it, in `<state_dir>/downloads/`, until it is downloaded once, its link
//! expires (with the package, and at most a day after the build), or it is revoked.
//!
//! Each waiting package is two files: `<id>.pkg` (the package, 0600) and `<id>.json` (its
//! metadata: name, digest, expiry, the digest of the link's key, the state). The key itself is
//! never stored. After the package is gone, the metadata stays as a tombstone (so a second use
//! answers 410, not 404) until a day after the link's expiry.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// A link lives at most this long.
pub const MAX_LIFETIME: Duration = Duration::from_secs(86_400);
/// At most this many packages wait for download on one node.
pub const MAX_WAITING: usize = 16;
/// The most a link's metadata file may hold (`config::files` reads).
const META_CAP: usize = 64 << 10;
/// The most a stored package may hold: well above any package (a debug daemon is ~90 MB).
const PACKAGE_CAP: usize = 1 << 30;
/// Tombstones are kept this long after the link's expiry.
const TOMBSTONE_FOR: Duration = Duration::from_secs(86_400);

/// Why a download is refused.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("no such download link")]
    NotFound,
    #[error("wrong download key")]
    WrongKey,
    /// 410: the link was used, revoked or expired (the word says which).
    #[error("this download link is no longer valid: the package was {0}")]
    Gone(&'static str),
    #[error(
        "{MAX_WAITING} packages already wait for download on this node: download or revoke one first"
    )]
    TooMany,
    #[error("the download link lifetime must be between 1 second and 1 day")]
    Lifetime,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a link's page and API response show.
#[derive(Debug, Clone)]
pub struct Offered {
    pub id: String,
    /// The secret part of the link (`?key=`); shown once.
    pub key: Secret,
    pub not_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum LinkState {
    Waiting,
    Downloaded,
    Revoked,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    file_name: String,
    sha256: String,
    size: u64,
    not_after_ms: u64,
    key_sha256: String,
    /// The package's enrollment token, if it enrolls: revoking it ends the link too.
    token_id: Option<String>,
    state: LinkState,
}

/// A package handed out by [`DownloadStore::take`].
#[derive(Debug)]
pub struct Taken {
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// The packages waiting for download on this node.
#[derive(Debug)]
pub struct DownloadStore {
    dir: PathBuf,
    /// One change at a time (the store belongs to this process alone).
    lock: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn digest_hex(data: &[u8]) -> String {
    crate::crypto::sha256_hex(data)
}

/// A link id: 32 lowercase hex digits.
fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `30s`, `10m`, `2h`, `1d`: a link's lifetime.
pub fn parse_lifetime(s: &str) -> Result<Duration, DownloadError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| DownloadError::Lifetime)?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(DownloadError::Lifetime),
    };
    let d = Duration::from_secs(secs);
    if d.is_zero() || d > MAX_LIFETIME {
        return Err(DownloadError::Lifetime);
    }
    Ok(d)
}

impl DownloadStore {
    /// The store in `<state_dir>/downloads` (created 0700).
    pub fn new(state_dir: &Path) -> Self {
        DownloadStore {
            dir: state_dir.join("downloads"),
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guard protects no data of its own: a poisoned lock is still a lock.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
        move |source| DownloadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn pkg_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pkg"))
    }

    fn read_meta(&self, id: &str) -> Result<Meta, DownloadError> {
        let path = self.meta_path(id);
        let text = match crate::config::files::read_trusted(&path, META_CAP) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DownloadError::NotFound);
            }
            Err(e) => return Err(Self::io(&path)(e)),
        };
        serde_json::from_slice(&text)
            .map_err(|e| Self::io(&path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }

    fn write_meta(&self, id: &str, meta: &Meta) -> Result<(), DownloadError> {
        let path = self.meta_path(id);
        // A struct of strings and numbers always serializes.
        let json = serde_json::to_vec(meta).expect("serializing download metadata");
        crate::identity::write_atomically(&path, &json, 0o600).map_err(Self::io(&path))
    }

    /// Ends a link: its package file goes, its metadata stays as a tombstone saying why.
    fn end(&self, id: &str, mut meta: Meta, state: LinkState) -> Result<(), DownloadError> {
        let _ = std::fs::remove_file(self.pkg_path(id));
        meta.state = state;
        self.write_meta(id, &meta)
    }

    /// Keeps `bytes` for download behind a new link that expires after `lifetime` (at most a
    /// day) or at `package_not_after_ms`, whichever comes first.
    pub fn offer(
        &self,
        file_name: &str,
        bytes: &[u8],
        token_id: Option<&str>,
        package_not_after_ms: u64,
        lifetime: Duration,
    ) -> Result<Offered, DownloadError> {
        if lifetime.is_zero() || lifetime > MAX_LIFETIME {
            return Err(DownloadError::Lifetime);
        }
        let _g = self.guard();
        self.sweep_locked(now_ms());
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(Self::io(&self.dir))?;
        }
        if self.waiting_locked() >= MAX_WAITING {
            return Err(DownloadError::TooMany);
        }
        let mut rng = rand::rng();
        let id = hex::encode(rng.random::<[u8; 16]>());
        let key = hex::encode(rng.random::<[u8; 32]>());
        let not_after_ms = (now_ms() + lifetime.as_millis() as u64).min(package_not_after_ms);
        let meta = Meta {
            file_name: file_name.to_string(),
            sha256: digest_hex(bytes),
            size: bytes.len() as u64,
            not_after_ms,
            key_sha256: digest_hex(key.as_bytes()),
            token_id: token_id.map(str::to_string),
            state: LinkState::Waiting,
        };
        let pkg = self.pkg_path(&id);
        crate::identity::write_atomically(&pkg, bytes, 0o600).map_err(Self::io(&pkg))?;
        if let Err(e) = self.write_meta(&id, &meta) {
            let _ = std::fs::remove_file(&pkg);
            return Err(e);
        }
        Ok(Offered {
            id,
            key: Secret::new(key),
            not_after_ms,
        })
    }

    /// The link's enrollment token, to check that the package was not revoked; `None` for a
    /// package that does not enroll. Unknown ids and wrong keys are refused here already.
    pub fn token_of(&self, id: &str, key: &str) -> Result<Option<String>, DownloadError> {
        let _g = self.guard();
        Ok(self.check_locked(id, key)?.token_id)
    }

    fn check_locked(&self, id: &str, key: &str) -> Result<Meta, DownloadError> {
        if !valid_id(id) {
            return Err(DownloadError::NotFound);
        }
        let meta = self.read_meta(id)?;
        let given = digest_hex(key.as_bytes());
        if !crate::crypto::constant_time_eq(given.as_bytes(), meta.key_sha256.as_bytes()) {
            return Err(DownloadError::WrongKey);
        }
        Ok(meta)
    }

    /// Hands the package out once: the file is removed and the link answers 410 from then on.
    /// `still_pending` is whether the package's enrollment is still pending (`true` for a
    /// package that does not enroll); a revoked or used one is not handed out.
    pub fn take(&self, id: &str, key: &str, still_pending: bool) -> Result<Taken, DownloadError> {
        let _g = self.guard();
        let meta = self.check_locked(id, key)?;
        match meta.state {
            LinkState::Waiting => {}
            LinkState::Downloaded => return Err(DownloadError::Gone("downloaded already")),
            LinkState::Revoked => return Err(DownloadError::Gone("revoked or used")),
            LinkState::Expired => return Err(DownloadError::Gone("expired")),
        }
        if now_ms() >= meta.not_after_ms {
            self.end(id, meta, LinkState::Expired)?;
            return Err(DownloadError::Gone("expired"));
        }
        if !still_pending {
            self.end(id, meta, LinkState::Revoked)?;
            return Err(DownloadError::Gone("revoked or used"));
        }
        let pkg = self.pkg_path(id);
        let bytes =
            crate::config::files::read_trusted(&pkg, PACKAGE_CAP).map_err(Self::io(&pkg))?;
        if digest_hex(&bytes) != meta.sha256 {
            return Err(Self::io(&pkg)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the stored package does not match its digest",
            )));
        }
        let file_name = meta.file_name.clone();
        self.end(id, meta, LinkState::Downloaded)?;
        Ok(Taken { file_name, bytes })
    }

    /// Ends the link of a revoked package (by its enrollment token), if this node holds one.
    pub fn revoke_token(&self, token_id: &str) {
        let _g = self.guard();
        for (id, meta) in self.all_locked() {
            if meta.state == LinkState::Waiting
                && meta.token_id.as_deref() == Some(token_id)
                && let Err(e) = self.end(&id, meta, LinkState::Revoked)
            {
                log::warn!("ending the download link of a revoked package: {e}");
            }
        }
    }

    /// Removes expired packages and old tombstones.
    pub fn sweep(&self) {
        let _g = self.guard();
        self.sweep_locked(now_ms());
    }

    fn sweep_locked(&self, now: u64) {
        for (id, meta) in self.all_locked() {
            if meta.state == LinkState::Waiting && now >= meta.not_after_ms {
                if let Err(e) = self.end(&id, meta, LinkState::Expired) {
                    log::warn!("expiring a download link: {e}");
                }
            } else if meta.state != LinkState::Waiting
                && now >= meta.not_after_ms + TOMBSTONE_FOR.as_millis() as u64
            {
                let _ = std::fs::remove_file(self.meta_path(&id));
                let _ = std::fs::remove_file(self.pkg_path(&id));
            }
        }
    }

    fn waiting_locked(&self) -> usize {
        self.all_locked()
            .iter()
            .filter(|(_, m)| m.state == LinkState::Waiting)
            .count()
    }

    fn all_locked(&self) -> Vec<(String, Meta)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?.to_string();
                valid_id(&id).then_some(id)
            })
            .filter_map(|id| self.read_meta(&id).ok().map(|m| (id, m)))
            .collect()
    }
}

/// A `Content-Disposition: attachment` value for `file_name` per RFC 6266: a quoted ASCII
/// `filename` (anything outside a plain set becomes `_`, so no `"` or `\` can end the quoted
/// string) and `filename*` with the name in UTF-8, percent-encoded (RFC 8187).
pub fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(file_name.len() * 3);
    for b in file_name.bytes() {
        // RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~".
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_once_and_never_with_a_wrong_key() {
        let t = tempfile::tempdir().unwrap();
        let s = DownloadStore::new(t.path());
        let far = now_ms() + 3_600_000;
        let o = s
            .offer("x.pkg", b"bytes", None, far, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            s.take(&o.id, "wrong", true),
            Err(DownloadError::WrongKey)
        ));
        let got = s.take(&o.id, o.key.expose(), true).unwrap();
        assert_eq!(
            (got.file_name.as_str(), &got.bytes[..]),
            ("x.pkg", &b"bytes"[..])
        );
        assert!(matches!(
            s.take(&o.id, o.key.expose(), true),
            Err(DownloadError::Gone(_))
        ));
        assert!(!s.pkg_path(&o.id).exists(), "the file is removed");
        assert!(matches!(
            s.take("0123456789abcdef0123456789abcdef", "k", true),
            Err(DownloadError::NotFound)
        ));
        assert!(matches!(
            s.take("../../etc/passwd", "k", true),
            Err(DownloadError::NotFound)
        ));
    }

    #[test]
    fn links_expire_with_the_package_and_are_capped() {
        let t = tempfile::tempdir().unwrap();
        let s = DownloadStore::new(t.path());
        // The package expires before the link would.
        let o = s
            .offer(
                "x.pkg",
                b"b",
                Some("tok"),
                now_ms(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(matches!(
            s.take(&o.id, o.key.expose(), true),
            Err(DownloadError::Gone("expired"))
        ));
        assert!(matches!(
            s.offer("x", b"b", None, u64::MAX, Duration::from_secs(86_401)),
            Err(DownloadError::Lifetime)
        ));
        for _ in 0..MAX_WAITING {
            s.offer("x", b"b", None, u64::MAX, Duration::from_secs(60))
                .unwrap();
        }
        assert!(matches!(
            s.offer("x", b"b", None, u64::MAX, Duration::from_secs(60)),
            Err(DownloadError::TooMany)
        ));
        assert_eq!(parse_lifetime("30s").unwrap(), Duration::from_secs(30));
        assert!(parse_lifetime("2d").is_err() && parse_lifetime("0s").is_err());
    }

    #[test]
    fn revoking_the_token_ends_the_link() {
        let t = tempfile::tempdir().unwrap();
        let s = DownloadStore::new(t.path());
        let o = s
            .offer(
                "x.pkg",
                b"b",
                Some("tok"),
                u64::MAX,
                Duration::from_secs(60),
            )
            .unwrap();
        s.revoke_token("tok");
        assert!(matches!(
            s.take(&o.id, o.key.expose(), true),
            Err(DownloadError::Gone(_))
        ));
    }

    #[test]
    fn content_disposition_quotes_and_encodes() {
        assert_eq!(
            content_disposition("FleetServerClusterNode.pkg"),
            "attachment; filename=\"FleetServerClusterNode.pkg\"; filename*=UTF-8''FleetServerClusterNode.pkg"
        );
        let v = content_disposition("a\"b\\c\r\nX: y;Nœud.pkg");
        assert_eq!(
            v,
            "attachment; filename=\"a_b_c__X_ y_N_ud.pkg\"; filename*=UTF-8''a%22b%5Cc%0D%0AX%3A%20y%3BN%C5%93ud.pkg"
        );
        assert!(axum::http::HeaderValue::from_str(&v).is_ok());
    }
}
