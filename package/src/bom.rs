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
    let mut bom = out.into_inner();
    canonical_vars(&mut bom).map_err(|e| Error::io("writing the Bom")(std::io::Error::other(e)))?;
    Ok(bom)
}

/// mkbom's order of the named variables.
const VARS_ORDER: [&[u8]; 5] = [b"BomInfo", b"Paths", b"HLIndex", b"VIndex", b"Size64"];

/// Rewrites the BOM's table of named variables in a fixed order: stuckliste
/// writes it from a `HashMap`, so its order (and the file's bytes) would
/// change from run to run. Readers look variables up by name.
///
/// Layout: header `BOMStore`, u32 version, u32 block count, u32 index offset,
/// u32 index length, u32 vars offset, u32 vars length (big-endian); vars:
/// u32 count, then per variable u32 block index, u8 name length, name.
fn canonical_vars(bom: &mut [u8]) -> std::result::Result<(), String> {
    let be32 = |b: &[u8], at: usize| -> std::result::Result<usize, String> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(|| "BOM too short".to_owned())
    };
    if !bom.starts_with(b"BOMStore") {
        return Err("BOM has no BOMStore magic".to_owned());
    }
    let (start, len) = (be32(bom, 24)?, be32(bom, 28)?);
    let vars = bom.get(start..start + len).ok_or("BOM vars out of range")?;
    let count = be32(vars, 0)?;
    let mut entries: Vec<&[u8]> = Vec::with_capacity(count);
    let mut pos = 4;
    for _ in 0..count {
        let name_len = *vars.get(pos + 4).ok_or("BOM vars truncated")? as usize;
        let end = pos + 5 + name_len;
        entries.push(vars.get(pos..end).ok_or("BOM vars truncated")?);
        pos = end;
    }
    let rank = |e: &&[u8]| {
        let name = &e[5..];
        (
            VARS_ORDER
                .iter()
                .position(|n| *n == name)
                .unwrap_or(VARS_ORDER.len()),
            name.to_vec(),
        )
    };
    entries.sort_by_key(rank);
    let mut sorted = Vec::with_capacity(len);
    sorted.extend_from_slice(&vars[..4]);
    for e in entries {
        sorted.extend_from_slice(e);
    }
    sorted.extend_from_slice(&vars[pos..]);
    bom[start..start + len].copy_from_slice(&sorted);
    Ok(())
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
