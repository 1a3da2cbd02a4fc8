//! Reading the configuration file and the files it names (secrets, TLS and CA files), and the
//! daemon's own files in its state directory: only files no other account could have planted
//! or changed, of a bounded size.
//!
//! The rule, as OpenSSH's `StrictModes` has it for its keys: the file, once symbolic links are
//! resolved, is a regular file owned by root or by this process's user, writable by its owner
//! only; every directory on its resolved path is owned by root or by this process's user and
//! writable by nobody else, unless its sticky bit is set (`/tmp`: others may add entries there
//! but not replace ours, and a file they plant is refused by its owner). A symbolic link on the
//! way is followed (a secret mounted by an orchestrator often is one), but its target is held to
//! the same rule. The file is then opened with `O_NOFOLLOW` at its resolved path and checked on
//! the open descriptor, so nothing swapped in after the check is read. Errors name the file and
//! the reason, never the content.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The most a configuration file may hold.
pub const CONFIG_CAP: usize = 1 << 20;
/// The most a `*_file` secret may hold.
pub const SECRET_CAP: usize = 64 << 10;
/// The most a PEM file (certificate chain, key, CA bundle) may hold.
pub const PEM_CAP: usize = 1 << 20;

/// Reads `path` under the rule above: at most `cap` bytes.
pub fn read_trusted(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {}: {why}", path.display()),
        )
    };
    let resolved = std::fs::canonicalize(path)?;
    let me = nix::unistd::geteuid().as_raw();
    let trusted_owner = |uid: u32| uid == 0 || uid == me;
    for dir in resolved.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)?;
        if !trusted_owner(meta.uid()) {
            return Err(refuse(format!(
                "its directory {} is owned by uid {}, not by root or this process's user (uid {me})",
                dir.display(),
                meta.uid()
            )));
        }
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(refuse(format!(
                "its directory {} is writable by other users (mode {:04o}): make it writable by its owner only",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO in its place must not hang the start.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&resolved)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                refuse("it was replaced by a symbolic link while being read".into())
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if !trusted_owner(meta.uid()) {
        return Err(refuse(format!(
            "owned by uid {}, not by root or this process's user (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by other users (mode {:04o}): make it writable by its owner only",
            meta.mode() & 0o7777
        )));
    }
    let mut buf = Vec::new();
    file.take(cap as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(refuse(format!("larger than {cap} bytes")));
    }
    Ok(buf)
}

/// `read_trusted` as UTF-8 text.
pub fn read_trusted_text(path: &Path, cap: usize) -> std::io::Result<String> {
    String::from_utf8(read_trusted(path, cap)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("refusing {}: not UTF-8 text", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_a_file_of_ours_and_follows_a_link_to_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cret\n").unwrap();
        chmod(&f, 0o600);
        assert_eq!(read_trusted_text(&f, 64).unwrap(), "s3cret\n");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read_trusted_text(&link, 64).unwrap(), "s3cret\n");
    }

    #[test]
    fn refuses_writable_files_and_directories_size_and_specials() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "password: hunter2\n").unwrap();
        chmod(&f, 0o666);
        let e = read_trusted(&f, 1024).unwrap_err().to_string();
        assert!(e.contains("writable by other users (mode 0666)"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        chmod(&f, 0o644);
        let e = read_trusted(&f, 4).unwrap_err().to_string();
        assert!(e.contains("larger than 4 bytes"), "{e}");

        // A world-writable directory without the sticky bit, also when reached by a link.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        let g = open.join("key.pem");
        std::fs::write(&g, "x").unwrap();
        chmod(&open, 0o777);
        let e = read_trusted(&g, 64).unwrap_err().to_string();
        assert!(
            e.contains("its directory") && e.contains("mode 0777"),
            "{e}"
        );
        let link = dir.path().join("via-link");
        std::os::unix::fs::symlink(&g, &link).unwrap();
        assert!(read_trusted(&link, 64).is_err());
        // With the sticky bit (as /tmp), the directory is fine.
        chmod(&open, 0o1777);
        assert_eq!(read_trusted(&g, 64).unwrap(), b"x");

        let e = read_trusted(dir.path(), 64).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let missing = read_trusted(&dir.path().join("absent"), 64).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn refuses_a_file_of_another_user() {
        // Tests run as root (make test): chown is allowed there; elsewhere this case is moot.
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (make test runs as root)");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("planted");
        std::fs::write(&f, "x").unwrap();
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = read_trusted(&f, 64).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(&f, Some(0), None).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let e = read_trusted(&f, 64).unwrap_err().to_string();
        assert!(
            e.contains("its directory") && e.contains("uid 65534"),
            "{e}"
        );
        std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
    }
}
