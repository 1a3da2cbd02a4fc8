//! Writing the unsealed configuration into place: atomically, owner-only, and leaving nothing behind on failure.
//!
//! The configuration holds the cluster's secrets, so its directory is 0700 and the file
//! 0600 from the moment it exists (created with that mode, never chmod-ed down later).
//! A crash mid-write leaves either the old file or the new one: temporary file in the
//! same directory, fsync, rename, fsync of the directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::layout::{NODE_ID_FILE_NAME, TargetLayout};
use crate::sealed::ConfigFile;

/// A failed write, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    /// The path the failure concerns.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

/// What [`write_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The configuration file.
    pub config_file: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// A node identity from an earlier install was found (and left as it was).
    pub node_id_kept: bool,
}

/// Writes `config_yaml` to the layout's configuration file under `root`, and `files` beside
/// it, and makes sure the state directory exists. An existing `node_id` in the state
/// directory is never touched, so a reinstall keeps the node's identity.
///
/// On failure, the directories this call created are removed again, so the target
/// root is as it was.
pub fn write_config(
    layout: TargetLayout,
    root: &Path,
    config_yaml: &str,
    files: &[ConfigFile],
) -> Result<Written, WriteError> {
    let mut created = Vec::new();
    let result = write_inner(layout, root, config_yaml, files, &mut created);
    if result.is_err() {
        // Deepest first; a directory that is not empty (someone else's file) stays.
        for d in created.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
    result
}

fn write_inner(
    layout: TargetLayout,
    root: &Path,
    config_yaml: &str,
    files: &[ConfigFile],
    created: &mut Vec<PathBuf>,
) -> Result<Written, WriteError> {
    if !root.is_dir() {
        return Err(WriteError {
            path: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "target root is not a directory"),
        });
    }
    let config_dir = layout.config_dir(root);
    let state_dir = layout.state_dir(root);
    private_dir(root, &config_dir, created)?;
    private_dir(root, &state_dir, created)?;
    let node_id_kept = state_dir.join(NODE_ID_FILE_NAME).exists();

    let config_file = layout.config_file(root);
    // The configuration goes last: a node never finds a configuration naming a file that is
    // not there yet.
    let mut all: Vec<(&str, u32, &[u8])> = files
        .iter()
        .map(|f| (f.name.as_str(), f.mode, f.content.as_bytes()))
        .collect();
    all.push((
        crate::layout::CONFIG_FILE_NAME,
        0o600,
        config_yaml.as_bytes(),
    ));
    replace_files(&config_dir, &all)?;
    Ok(Written {
        config_file,
        state_dir,
        node_id_kept,
    })
}

/// Writes `files` (a node's TLS certificate and key, …) into the existing configuration
/// directory `dir`, as [`write_config`] does: all or nothing.
pub fn write_config_files(dir: &Path, files: &[ConfigFile]) -> Result<(), WriteError> {
    ConfigFile::validate_all(files).map_err(|e| WriteError {
        path: dir.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let all: Vec<(&str, u32, &[u8])> = files
        .iter()
        .map(|f| (f.name.as_str(), f.mode, f.content.as_bytes()))
        .collect();
    replace_files(dir, &all)
}

/// Writes one file so that readers see the old content or the new, never a part (see
/// [`replace_files`]). The directory must exist. The one atomic write of every crate: the
/// daemon's state files and the storage backend's records go through it too.
pub fn write_file_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), WriteError> {
    let bad = |why: &str| WriteError {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("not a file path"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    replace_files(dir, &[(name, mode, content)])
}

/// Replaces the files `(name, mode, content)` in `dir`: each is first written in full to a
/// temporary file created with its final mode and fsynced; only when all are written are they
/// renamed into place, in order, and the directory fsynced. A failure before the renames leaves
/// `dir` as it was. Temporary names carry the pid and 64 random bits, so writers of the same
/// file (threads, or processes on several machines sharing a directory) never collide.
pub fn replace_files(dir: &Path, files: &[(&str, u32, &[u8])]) -> Result<(), WriteError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError { path, source }
    };
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
    let remove_staged = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for (name, mode, content) in files {
        let tmp = dir.join(format!(
            ".{name}.{}-{:016x}.tmp",
            std::process::id(),
            getrandom::u64().unwrap_or_else(|_| unique_fallback())
        ));
        let write_tmp = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(&tmp)?;
            f.write_all(content)?;
            f.sync_all()
        };
        if let Err(e) = write_tmp() {
            let _ = fs::remove_file(&tmp);
            remove_staged(&staged);
            return Err(err(&tmp)(e));
        }
        staged.push((tmp, dir.join(name)));
    }
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            remove_staged(&staged[i..]);
            return Err(err(path)(e));
        }
    }
    // The renames are durable only once the directory entries are.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))
}

/// Without the OS's random source: the time and a per-process sequence still keep this
/// process's temporary names apart.
fn unique_fallback() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ SEQ
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .rotate_left(48)
}

/// Creates `dir` (and missing parents below `root`) and leaves it mode 0700. Parents
/// that did not exist get 0755: other payload files (the daemon's binary) live in them.
fn private_dir(root: &Path, dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), WriteError> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut cur = root.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        let last = i + 1 == n;
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            // On macOS /etc is a symlink to /private/etc: follow links in parents, but
            // the private directory itself must be a real directory.
            Ok(m) if m.file_type().is_symlink() && !last && cur.is_dir() => {}
            Ok(_) => {
                return Err(WriteError {
                    path: cur,
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(if last { 0o700 } else { 0o755 })
                    .create(&cur)
                    .map_err(|source| WriteError {
                        path: cur.clone(),
                        source,
                    })?;
                created.push(cur.clone());
            }
            Err(source) => return Err(WriteError { path: cur, source }),
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn concurrent_writers_of_one_file_never_collide_or_tear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("active");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        let content = vec![b'a' + t; 4096];
                        write_file_atomically(path, &content, 0o644).unwrap();
                    }
                });
            }
        });
        let last = fs::read(&path).unwrap();
        assert_eq!(last.len(), 4096);
        assert!(last.iter().all(|&b| b == last[0]), "a torn write");
        assert_eq!(mode(&path), 0o644);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_file_atomically(&dir.path().join("missing/x"), b"x", 0o644).is_err());
    }

    #[test]
    fn writes_private_file_and_keeps_node_id() {
        let t = tempfile::tempdir().unwrap();
        let state = TargetLayout::Linux.state_dir(t.path());
        fs::create_dir_all(&state).unwrap();
        fs::write(state.join("node_id"), "n1-abc123").unwrap();
        let w = write_config(TargetLayout::Linux, t.path(), "a: 1\n", &[]).unwrap();
        assert!(w.node_id_kept);
        assert_eq!(fs::read_to_string(&w.config_file).unwrap(), "a: 1\n");
        assert_eq!(mode(&w.config_file), 0o600);
        assert_eq!(mode(w.config_file.parent().unwrap()), 0o700);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(
            fs::read_to_string(state.join("node_id")).unwrap(),
            "n1-abc123"
        );
        // A second install replaces the file and leaves no temporary behind.
        write_config(TargetLayout::Linux, t.path(), "a: 2\n", &[]).unwrap();
        assert_eq!(fs::read_to_string(&w.config_file).unwrap(), "a: 2\n");
        let names: Vec<_> = fs::read_dir(w.config_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.yaml"]);
    }

    #[test]
    fn failure_removes_created_directories() {
        let t = tempfile::tempdir().unwrap();
        // A file where the state directory's parent should be: the config dir gets
        // created first, then the state dir fails.
        fs::create_dir_all(t.path().join("Library/FleetServer")).unwrap();
        fs::write(t.path().join("Library/FleetServer/state"), "x").unwrap();
        let e = write_config(TargetLayout::Macos, t.path(), "a: 1\n", &[]).unwrap_err();
        assert!(e.path.ends_with("state"), "{e}");
        assert!(!t.path().join("Library/FleetServer/config").exists());
    }

    #[test]
    fn files_travel_beside_the_configuration() {
        let t = tempfile::tempdir().unwrap();
        let files = [
            ConfigFile {
                name: "server-tls.crt".into(),
                mode: 0o644,
                content: "CERT".into(),
            },
            ConfigFile {
                name: "server-tls.key".into(),
                mode: 0o600,
                content: "KEY".into(),
            },
        ];
        let w = write_config(TargetLayout::Linux, t.path(), "a: 1\n", &files).unwrap();
        let dir = w.config_file.parent().unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("server-tls.key")).unwrap(),
            "KEY"
        );
        assert_eq!(mode(&dir.join("server-tls.key")), 0o600);
        assert_eq!(mode(&dir.join("server-tls.crt")), 0o644);
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["config.yaml", "server-tls.crt", "server-tls.key"]);
        // A name that leaves the directory is refused, and nothing is written.
        let bad = [ConfigFile {
            name: "../escape".into(),
            mode: 0o600,
            content: "x".into(),
        }];
        assert!(write_config_files(dir, &bad).is_err());
        assert!(!t.path().join("etc/escape").exists());
    }
}
