//! The Linux upgrade bundle `fleet-server-upgrade-<version>.tar.gz`: one directory
//! `fleet-server-upgrade/` with the daemon, the stub, the upgrade manifest (`fleet-upgrade`),
//! the systemd unit, `provision.sh` and `uninstall.sh`; no configuration, token or key.
//! Deterministic as the provision bundle is.

use flate2::{Compression, GzBuilder};

use crate::{Error, PkgRoot, Result, Target, Template};

/// File name of the upgrade manifest in both upgrade packages (beside the stub).
pub const UPGRADE_MANIFEST_NAME: &str = "fleet-upgrade";
/// The upgrade bundle's top directory.
pub const UPGRADE_BUNDLE_DIR: &str = "fleet-server-upgrade";

/// `fleet-server-upgrade-<version>.tar.gz`.
pub fn default_upgrade_bundle_name(version: &str) -> String {
    format!("{UPGRADE_BUNDLE_DIR}-{version}.tar.gz")
}

/// `FleetServerClusterNode-upgrade-<version>.pkg`.
pub fn default_upgrade_pkg_name(version: &str) -> String {
    format!("FleetServerClusterNode-upgrade-{version}.pkg")
}

/// Builds the upgrade bundle from a [`Target::LinuxX86_64`] template and the manifest.
pub fn build_upgrade_bundle(
    template: &Template,
    root: &PkgRoot,
    manifest: &[u8],
) -> Result<Vec<u8>> {
    if template.target() != Target::LinuxX86_64 {
        return Err(Error::WrongTarget {
            expected: "Linux",
            expected_dir: Target::LinuxX86_64.dir_name(),
            found_dir: template.target().dir_name(),
        });
    }
    // Sorted by name, as the provision bundle's entries are.
    let files: [(&str, u32, &[u8]); 6] = [
        ("fleet-installer-stub", 0o755, template.installer_stub()),
        ("fleet-server", 0o755, template.fleet_server()),
        ("fleet-server.service", 0o644, &root.systemd_unit),
        (UPGRADE_MANIFEST_NAME, 0o644, manifest),
        ("provision.sh", 0o755, &root.provision_sh),
        ("uninstall.sh", 0o755, &root.uninstall_sh),
    ];
    let raw: usize = files.iter().map(|f| f.2.len() + 1024).sum();
    let gz = GzBuilder::new()
        .operating_system(255)
        .write(Vec::with_capacity(raw / 2), Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let result = (|| -> std::io::Result<Vec<u8>> {
        tar.append_data(
            &mut crate::bundle::header(0o755, 0, tar::EntryType::Directory),
            format!("{UPGRADE_BUNDLE_DIR}/"),
            &[][..],
        )?;
        for (name, mode, data) in &files {
            let mut h = crate::bundle::header(*mode, data.len() as u64, tar::EntryType::Regular);
            tar.append_data(&mut h, format!("{UPGRADE_BUNDLE_DIR}/{name}"), *data)?;
        }
        tar.into_inner()?.finish()
    })();
    result.map_err(Error::io("writing the upgrade bundle"))
}
