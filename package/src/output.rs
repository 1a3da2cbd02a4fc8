//! Writing a finished package: all or nothing.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsynced and renamed into place, so a full disk or a crash leaves no partial
/// package. Refuses an existing `path` unless `force`. The file is created
/// mode 0600: a package holds the node's sealed configuration and its key.
pub fn write_atomically(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if !force && path.symlink_metadata().is_ok() {
        return Err(Error::OutputExists(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let shown = path.display().to_string();
    let mut tmp = tempfile::Builder::new()
        .prefix(".fleet-package-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io(format!(
            "creating a temporary file beside {shown}"
        )))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(Error::io(format!("writing {shown}")))?;
    // On error the temporary file is removed when dropped.
    let persisted = if force {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    match persisted {
        Ok(()) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::OutputExists(path.to_owned()));
        }
        Err(e) => return Err(Error::io(format!("renaming into {shown}"))(e.error)),
    }
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename durable; not every filesystem supports it.
        let _ = d.sync_all();
    }
    Ok(())
}
