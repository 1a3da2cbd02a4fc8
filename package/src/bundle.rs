//! The Linux provision bundle `<node>_provision.tar.gz`: one directory
//! `<node>_provision/` with the daemon, the stub, the sealed configuration,
//! the systemd unit, `provision.sh` and `uninstall.sh`. Deterministic: fixed
//! mtimes, owner root (0:0), sorted entries, gzip header without a time.

use crate::payload::{DeflatedRun, Run, gzip_runs};
use crate::{
    ArtifactCache, Error, KEY_NAME, NodeFiles, PkgRoot, Result, SEALED_NAME, Target, Template,
};

/// The files of a bundle besides the node's own (for listings and tests).
pub const BUNDLE_SCRIPT_NAMES: [&str; 3] = ["fleet-server.service", "provision.sh", "uninstall.sh"];

/// Builds `<node_name>_provision.tar.gz` from a [`Target::LinuxX86_64`] template.
pub fn build_bundle(
    template: &Template,
    root: &PkgRoot,
    node_name: &str,
    node: &NodeFiles,
) -> Result<Vec<u8>> {
    build_bundle_cached(template, root, node_name, node, &ArtifactCache::new())
}

/// The same bytes as [`build_bundle`], with the binaries' compressed tar data kept in
/// `cache` (by template digest): a warm build compresses only the node's own files.
pub fn build_bundle_cached(
    template: &Template,
    root: &PkgRoot,
    node_name: &str,
    node: &NodeFiles,
    cache: &ArtifactCache,
) -> Result<Vec<u8>> {
    crate::validate_node_name(node_name)?;
    if template.target() != Target::LinuxX86_64 {
        return Err(Error::WrongTarget {
            expected: "Linux",
            expected_dir: Target::LinuxX86_64.dir_name(),
            found_dir: template.target().dir_name(),
        });
    }
    let io = || Error::io("writing the provision bundle");
    let runs = cache.bundle_runs(*template.digest(), || {
        Ok(BundleRuns {
            server: DeflatedRun::new(&padded(template.fleet_server())).map_err(io())?,
            stub: DeflatedRun::new(&padded(template.installer_stub())).map_err(io())?,
        })
    })?;
    let mut files: Vec<(&str, u32, Data<'_>)> = vec![
        (
            "fleet-server",
            0o755,
            Data::Cached(template.fleet_server(), &runs.server),
        ),
        (
            "fleet-installer-stub",
            0o755,
            Data::Cached(template.installer_stub(), &runs.stub),
        ),
        (SEALED_NAME, 0o600, Data::Fresh(&node.sealed)),
        (
            "fleet-server.service",
            0o644,
            Data::Fresh(&root.systemd_unit),
        ),
        ("provision.sh", 0o755, Data::Fresh(&root.provision_sh)),
        ("uninstall.sh", 0o755, Data::Fresh(&root.uninstall_sh)),
    ];
    if let Some(key) = &node.key {
        files.push((KEY_NAME, 0o600, Data::Fresh(key)));
    }
    files.sort_by(|a, b| a.0.cmp(b.0));

    // The tar stream, cut where the binaries' data sits: the rest is compressed now.
    let top = format!("{node_name}_provision");
    let mut out: Vec<Run<'_>> = Vec::new();
    let mut fresh = Vec::with_capacity(64 * 1024);
    fresh.extend_from_slice(
        tar_header(0o755, 0, tar::EntryType::Directory, &format!("{top}/"))
            .map_err(io())?
            .as_bytes(),
    );
    for (name, mode, data) in &files {
        let bytes = match data {
            Data::Fresh(b) | Data::Cached(b, _) => *b,
        };
        let h = tar_header(
            *mode,
            bytes.len() as u64,
            tar::EntryType::Regular,
            &format!("{top}/{name}"),
        )
        .map_err(io())?;
        fresh.extend_from_slice(h.as_bytes());
        match data {
            Data::Fresh(b) => fresh.extend_from_slice(&padded(b)),
            Data::Cached(_, run) => {
                out.push(Run::Fresh(std::mem::take(&mut fresh)));
                out.push(Run::Cached(run));
            }
        }
    }
    // The end of a tar archive: two zero blocks, as the tar crate writes it.
    fresh.extend_from_slice(&[0u8; 1024]);
    out.push(Run::Fresh(fresh));
    gzip_runs(&out).map_err(io())
}

/// The binaries' tar data (padded to whole blocks), deflated once per template.
#[derive(Debug)]
pub(crate) struct BundleRuns {
    server: DeflatedRun,
    stub: DeflatedRun,
}

enum Data<'a> {
    Fresh(&'a [u8]),
    Cached(&'a [u8], &'a DeflatedRun),
}

/// `data` followed by zeros to a whole number of 512-byte blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len().div_ceil(512) * 512);
    v.extend_from_slice(data);
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// A header with its path and checksum set: what `tar::Builder::append_data` writes for a
/// path that fits the ustar fields (node names are at most 63 bytes).
fn tar_header(
    mode: u32,
    size: u64,
    kind: tar::EntryType,
    path: &str,
) -> std::io::Result<tar::Header> {
    let mut h = header(mode, size, kind);
    h.set_path(path)?;
    h.set_cksum();
    Ok(h)
}

pub(crate) fn header(mode: u32, size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    // Setting names on a fresh ustar header only fails for names over 32 bytes.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h.set_mtime(crate::FIXED_MTIME);
    h
}
