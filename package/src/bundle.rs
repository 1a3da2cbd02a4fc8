//! The Linux provision bundle `<node>_provision.tar.gz`: one directory
//! `<node>_provision/` with the daemon, the stub, the sealed configuration,
//! the systemd unit, `provision.sh` and `uninstall.sh`. Deterministic: fixed
//! mtimes, owner root (0:0), sorted entries, gzip header without a time.

use flate2::{Compression, GzBuilder};

use crate::{Error, KEY_NAME, NodeFiles, PkgRoot, Result, SEALED_NAME, Target, Template};

/// The files of a bundle besides the node's own (for listings and tests).
pub const BUNDLE_SCRIPT_NAMES: [&str; 3] = ["fleet-server.service", "provision.sh", "uninstall.sh"];

/// Builds `<node_name>_provision.tar.gz` from a [`Target::LinuxX86_64`] template.
pub fn build_bundle(
    template: &Template,
    root: &PkgRoot,
    node_name: &str,
    node: &NodeFiles,
) -> Result<Vec<u8>> {
    crate::validate_node_name(node_name)?;
    if template.target() != Target::LinuxX86_64 {
        return Err(Error::WrongTarget {
            expected: "Linux",
            expected_dir: Target::LinuxX86_64.dir_name(),
            found_dir: template.target().dir_name(),
        });
    }
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("fleet-server", 0o755, template.fleet_server()),
        ("fleet-installer-stub", 0o755, template.installer_stub()),
        (SEALED_NAME, 0o600, &node.sealed),
        ("fleet-server.service", 0o644, &root.systemd_unit),
        ("provision.sh", 0o755, &root.provision_sh),
        ("uninstall.sh", 0o755, &root.uninstall_sh),
    ];
    if let Some(key) = &node.key {
        files.push((KEY_NAME, 0o600, key));
    }
    files.sort_by(|a, b| a.0.cmp(b.0));

    let top = format!("{node_name}_provision");
    let raw: usize = files.iter().map(|f| f.2.len() + 1024).sum();
    let gz = GzBuilder::new()
        .operating_system(255)
        .write(Vec::with_capacity(raw / 2), Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let io = Error::io("writing the provision bundle");
    let result = (|| -> std::io::Result<Vec<u8>> {
        tar.append_data(
            &mut header(0o755, 0, tar::EntryType::Directory),
            format!("{top}/"),
            &[][..],
        )?;
        for (name, mode, data) in &files {
            let mut h = header(*mode, data.len() as u64, tar::EntryType::Regular);
            tar.append_data(&mut h, format!("{top}/{name}"), *data)?;
        }
        tar.into_inner()?.finish()
    })();
    result.map_err(io)
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
