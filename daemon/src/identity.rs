//! Node identity: the node name (`[a-z0-9-]`, at most 63 characters) and the node id
//! `<name>-<6 random [a-z0-9]>`, made at first start and kept in the state directory.
//!
//! A name derived from the hostname is kept too: a Mac's hostname follows DHCP and reverse
//! DNS, so deriving it at every start would make a new node after a reboot or a move.

use std::path::Path;

use rand::Rng;

/// File in the state directory that holds the node id.
pub const NODE_ID_FILE: &str = "node_id";
/// File in the state directory that holds a node name derived from the hostname.
pub const NODE_NAME_FILE: &str = "node_name";

/// Hostnames that name no machine in particular: a name derived from them is used for the
/// run but not kept, so that the first start with a real hostname fixes the name.
const PLACEHOLDER_NAMES: [&str; 2] = ["localhost", "node"];

const SUFFIX_LEN: usize = 6;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Checks a node name given by a person: lowercase letters, digits and `-`, 1 to 63 characters,
/// neither starting nor ending with `-` (the rule lives in the stub's library, shared by all).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    fleet_installer_stub::names::check_node_name(name)
}

/// Reduces any text (a hostname, say) to a valid node name: lowercased, other characters turned
/// into `-`, runs of `-` folded, trimmed to 63 characters. `None` when nothing usable is left.
pub fn normalize_node_name(raw: &str) -> Option<String> {
    // A hostname's domain part is not part of the node's name.
    let raw = raw.split('.').next().unwrap_or(raw);
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(63);
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

/// This machine's hostname, as a node name (`node` when it has none usable).
pub fn hostname_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .and_then(|h| normalize_node_name(&h))
        .unwrap_or_else(|| "node".to_string())
}

/// The raw hostname, for display.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// The node's name when the configuration gives none: the one kept in `state_dir`, or, at
/// first start, `derived` (the hostname reduced to a name), kept from then on.
pub fn load_or_keep_derived_name(state_dir: &Path, derived: &str) -> std::io::Result<String> {
    let path = state_dir.join(NODE_NAME_FILE);
    if let Some(text) = read_own_file(&path, STATE_FILE_CAP)? {
        let kept = text.trim();
        if validate_node_name(kept).is_ok() {
            return Ok(kept.to_string());
        }
        // Not its content: whatever the file holds is not for the log.
        log::warn!(
            "{} holds no valid node name: using the hostname's",
            path.display()
        );
    }
    if PLACEHOLDER_NAMES.contains(&derived) {
        log::warn!(
            "the hostname gives no real name (`{derived}`): not keeping it; set cluster.node_name or a hostname"
        );
        return Ok(derived.to_string());
    }
    write_atomically(&path, format!("{derived}\n").as_bytes(), 0o644)?;
    log::info!(
        "node name `{derived}` (from the hostname) kept in {}",
        path.display()
    );
    Ok(derived.to_string())
}

/// The most a node's own small state file (`node_id`, `node_name`) may hold.
pub const STATE_FILE_CAP: usize = 4096;

/// True when `id` looks like any node's id: `<valid name>-<6 [a-z0-9]>`.
fn is_node_id(id: &str) -> bool {
    id.rsplit_once('-')
        .is_some_and(|(name, _)| validate_node_name(name).is_ok() && id_belongs_to(id, name))
}

/// Reads a file of the daemon's own from the state or configuration directory: `None` when it
/// does not exist. Refused, with an error that names the file and never its content: a
/// symlink (opened with `O_NOFOLLOW`, so one swapped in after a check is refused too), anything
/// but a regular file, a file another user owns (it could be planted, or be another's secret
/// reached through a link), and more than `cap` bytes.
pub fn read_own_file(path: &Path, cap: usize) -> std::io::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {}: {why}", path.display()),
        )
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted in its place must not hang the start.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(refuse("it is a symbolic link".into()));
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", path.display()),
            ));
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "owned by uid {}, not by this daemon's user (uid {me})",
            meta.uid()
        )));
    }
    let mut buf = Vec::new();
    file.take(cap as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(refuse(format!("larger than {cap} bytes")));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| refuse("not text".into()))
}

/// A new id for `name`.
pub fn new_node_id(name: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{name}-{suffix}")
}

/// True when `id` is `<name>-<6 [a-z0-9]>`.
pub fn id_belongs_to(id: &str, name: &str) -> bool {
    id.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|s| {
            s.len() == SUFFIX_LEN
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Loads the node id kept in `state_dir`, or makes and keeps a new one. A kept id made for
/// another name is replaced, since the id carries the name.
pub fn load_or_create_node_id(state_dir: &Path, name: &str) -> std::io::Result<String> {
    let path = state_dir.join(NODE_ID_FILE);
    if let Some(text) = read_own_file(&path, STATE_FILE_CAP)? {
        let id = text.trim();
        if id_belongs_to(id, name) {
            return Ok(id.to_string());
        }
        // The old id only when it is one (a node id's alphabet): never arbitrary content.
        if is_node_id(id) {
            log::info!("node name is now `{name}`: the kept node id `{id}` is replaced");
        } else {
            log::warn!(
                "{} holds no valid node id: a new one is made",
                path.display()
            );
        }
    }
    let id = new_node_id(name);
    write_atomically(&path, format!("{id}\n").as_bytes(), 0o644)?;
    Ok(id)
}

/// Writes a file so that readers see either the old or the new content, never a part (the
/// stub library's atomic write), creating its directory first.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    fleet_installer_stub::install::write_file_atomically(path, data, mode).map_err(|e| {
        std::io::Error::new(
            e.source.kind(),
            format!("writing {}: {}", path.display(), e.source),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_node_name("server-03").is_ok());
        assert!(validate_node_name("Server").is_err());
        assert!(validate_node_name("-a").is_err());
        assert!(validate_node_name("a_b").is_err());
        assert!(validate_node_name(&"a".repeat(64)).is_err());
        assert!(validate_node_name("").is_err());
    }

    #[test]
    fn hostnames_are_normalized() {
        assert_eq!(
            normalize_node_name("Server_02.local").as_deref(),
            Some("server-02")
        );
        assert_eq!(
            normalize_node_name("MacBook Pro (2)").as_deref(),
            Some("macbook-pro-2")
        );
        assert_eq!(normalize_node_name("___"), None);
        assert_eq!(normalize_node_name(&"x".repeat(80)).unwrap().len(), 63);
    }

    #[test]
    fn ids_have_the_guides_shape() {
        let id = new_node_id("server-02");
        assert!(id_belongs_to(&id, "server-02"), "{id}");
        assert!(!id_belongs_to(&id, "server"));
        assert!(!id_belongs_to("server-02-ABCDEF", "server-02"));
    }

    #[test]
    fn a_derived_name_is_kept_but_not_a_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_or_keep_derived_name(dir.path(), "localhost").unwrap(),
            "localhost"
        );
        assert!(!dir.path().join(NODE_NAME_FILE).exists());
        assert_eq!(
            load_or_keep_derived_name(dir.path(), "alpha").unwrap(),
            "alpha"
        );
        assert_eq!(
            load_or_keep_derived_name(dir.path(), "beta").unwrap(),
            "alpha"
        );
        std::fs::write(dir.path().join(NODE_NAME_FILE), "Not Valid\n").unwrap();
        assert_eq!(
            load_or_keep_derived_name(dir.path(), "gamma").unwrap(),
            "gamma"
        );
        assert_eq!(
            load_or_keep_derived_name(dir.path(), "delta").unwrap(),
            "gamma"
        );
    }

    #[test]
    fn the_id_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path(), "n1").unwrap();
        let b = load_or_create_node_id(dir.path(), "n1").unwrap();
        assert_eq!(a, b);
        let c = load_or_create_node_id(dir.path(), "n2").unwrap();
        assert!(c.starts_with("n2-"));
    }

    #[test]
    fn own_files_refuse_links_and_big_files_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "secret-content").unwrap();
        let link = dir.path().join("node_id");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = read_own_file(&link, 100).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("node_id"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(read_own_file(&dir.path().join("none"), 100).unwrap(), None);
        assert_eq!(
            read_own_file(&target, 100).unwrap().as_deref(),
            Some("secret-content")
        );
        let e = read_own_file(&target, 4).unwrap_err().to_string();
        assert!(e.contains("larger than 4 bytes"), "{e}");
        let e = read_own_file(dir.path(), 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(is_node_id("web-01-abc123") && !is_node_id("\x1b[2J-abc123"));
    }
}
