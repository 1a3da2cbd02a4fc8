//! The pkg's `Bom` (bill of materials), written by `stuckliste` from the
//! payload tree staged in a temporary directory with its modes and mtimes;
//! owners are overridden to root:wheel (0:0) as pkgbuild does.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use stuckliste::receipt::ReceiptBuilder;

use crate::payload::TreeEntry;
use crate::{Error, FIXED_MTIME, Result};

/// Builds the Bom of `entries` (a tree from [`crate::payload::tree`]).
pub(crate) fn build_bom(entries: &[TreeEntry<'_>]) -> Result<Vec<u8>> {
    let stage = tempfile::Builder::new()
        .prefix("fleet-bom-")
        .tempdir()
        .map_err(Error::io("creating a staging directory for the Bom"))?;
    stage_tree(stage.path(), entries).map_err(Error::io(format!(
        "staging the payload in {}",
        stage.path().display()
    )))?;
    let receipt = ReceiptBuilder::new()
        .override_uid(0)
        .override_gid(0)
        .create(stage.path())
        .map_err(Error::io("scanning the staged payload for the Bom"))?;
    let mut out = Cursor::new(Vec::new());
    receipt
        .write(&mut out)
        .map_err(Error::io("writing the Bom"))?;
    Ok(out.into_inner())
}

fn stage_tree(root: &Path, entries: &[TreeEntry<'_>]) -> std::io::Result<()> {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(FIXED_MTIME);
    let local =
        |e: &TreeEntry<'_>| root.join(e.path.trim_start_matches('.').trim_start_matches('/'));
    for e in entries {
        let path = local(e);
        match e.data {
            Some(data) => {
                fs::write(&path, data)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(e.perm))?;
                fs::File::options()
                    .write(true)
                    .open(&path)?
                    .set_modified(mtime)?;
            }
            None if e.path == "." => {}
            None => fs::create_dir(&path)?,
        }
    }
    // Directories last, deepest first: writing a child changes its parent's mtime.
    for e in entries.iter().rev().filter(|e| e.data.is_none()) {
        let path = local(e);
        fs::set_permissions(&path, fs::Permissions::from_mode(e.perm))?;
        fs::File::open(&path)?.set_modified(mtime)?;
    }
    Ok(())
}
