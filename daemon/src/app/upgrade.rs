//! Upgrade packages (`package build --upgrade`, and the API's `"upgrade": true`): the node
//! template's binaries, the fixed files, and a manifest naming the daemon's version; no
//! configuration, token, key or certificate. Installed over a node they replace its binaries
//! and restart its daemon; the stub (their preinstall, or provision.sh's first step) refuses a
//! machine that is not a node, or one whose daemon is not older (`fleet_installer_stub::upgrade`).

use std::path::PathBuf;

use fleet_installer_stub::TargetLayout;
use fleet_installer_stub::upgrade::Manifest;
use fleet_installer_stub::version_slot;
use fleet_package::{
    PkgBuilder, PkgFormat, PkgOptions, PkgRoot, SigningIdentity, Target, Template,
};

use super::package::{BuildError, Builder, Format, can_build};
use crate::cluster::Membership;
use crate::config::Config;

/// What an admin asks for.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    pub format: Format,
    /// The file name; default `FleetServerClusterNode-upgrade-<version>.pkg` or
    /// `fleet-server-upgrade-<version>.tar.gz`.
    pub package_name: Option<String>,
    /// Template directory, overriding `package.template_dir`.
    pub template_dir: Option<PathBuf>,
    /// Accept binaries whose format does not fit the target (development and tests).
    pub allow_foreign_binaries: bool,
    /// Who asked (recorded in the `package_built` event).
    pub built_by: String,
}

/// A built upgrade package.
#[derive(Clone)]
pub struct UpgradePackage {
    pub file_name: String,
    pub bytes: Vec<u8>,
    /// The version of the daemon it installs (the pkg's version too).
    pub version: String,
    pub format: Format,
    /// True when the binaries do not fit the target (development builds).
    pub foreign_binaries: bool,
    /// The signer's subject when the package is signed.
    pub signed_by: Option<String>,
}

impl std::fmt::Debug for UpgradePackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradePackage")
            .field("file_name", &self.file_name)
            .field("bytes", &self.bytes.len())
            .field("version", &self.version)
            .finish()
    }
}

/// The version of the daemon `template` packs, read from its version slot.
pub fn template_version(template: &Template) -> Result<String, String> {
    version_slot::version_of(template.fleet_server()).map_err(|e| e.to_string())
}

/// Builds the upgrade package `req` asks for. CPU-bound: call it from a blocking thread in
/// async code.
pub fn build_upgrade(
    builder: &Builder,
    primary: &Config,
    req: &UpgradeRequest,
) -> Result<UpgradePackage, BuildError> {
    let template_dir = req
        .template_dir
        .clone()
        .or_else(|| primary.package.template_dir.clone())
        .ok_or(BuildError::NoTemplate)?;
    if req.template_dir.is_none() {
        can_build(primary, req.format).map_err(BuildError::FormatUnavailable)?;
    }
    let (target, layout) = if req.format.is_macos() {
        (Target::MacOs, TargetLayout::Macos)
    } else {
        (Target::LinuxX86_64, TargetLayout::Linux)
    };
    let allow_foreign = req.allow_foreign_binaries || primary.package.allow_foreign_binaries;
    let template = Template::load(&template_dir, target, allow_foreign)?;
    let foreign_binaries = {
        use fleet_package::BinaryFormat as B;
        let found = B::detect(template.fleet_server());
        allow_foreign
            && !match target {
                Target::MacOs => matches!(found, B::MachO | B::MachOFat),
                Target::LinuxX86_64 => found == B::Elf,
            }
    };
    // Without its version an upgrade could not be told from a downgrade.
    let version = template_version(&template).map_err(|why| {
        BuildError::FormatUnavailable(format!(
            "cannot build an upgrade package: the node template's fleet-server ({}) {why}",
            template_dir
                .join(target.dir_name())
                .join("fleet-server")
                .display()
        ))
    })?;
    let file_name = match (&req.package_name, req.format.is_macos()) {
        (Some(n), true) => {
            fleet_package::validate_package_name(n)?;
            n.clone()
        }
        (Some(n), false) => {
            fleet_package::validate_bundle_name(n)?;
            n.clone()
        }
        (None, true) => fleet_package::default_upgrade_pkg_name(&version),
        (None, false) => fleet_package::default_upgrade_bundle_name(&version),
    };
    let manifest = Manifest {
        version: version.clone(),
        layout,
    }
    .to_text();
    let root = PkgRoot::embedded();
    let signer = builder.signing().filter(|_| req.format.is_macos());
    let bytes = if req.format.is_macos() {
        let options = PkgOptions {
            version: version.clone(),
            format: if req.format == Format::Component {
                PkgFormat::Component
            } else {
                PkgFormat::Product
            },
        };
        PkgBuilder::new(template, root)?.build_upgrade_pkg(manifest.as_bytes(), &options, signer)?
    } else {
        fleet_package::build_upgrade_bundle(&template, &root, manifest.as_bytes())?
    };
    Ok(UpgradePackage {
        file_name,
        bytes,
        version,
        format: req.format,
        foreign_binaries,
        signed_by: signer.map(SigningIdentity::subject),
    })
}

/// Builds on a blocking thread (the CLI's and the API's path).
pub async fn build_upgrade_async(
    builder: &Builder,
    primary: &std::sync::Arc<Config>,
    req: UpgradeRequest,
) -> Result<UpgradePackage, BuildError> {
    let (b, c) = (builder.clone(), primary.clone());
    match tokio::task::spawn_blocking(move || build_upgrade(&b, &c, &req)).await {
        Ok(r) => r,
        Err(e) => Err(BuildError::Seal(format!("the build task failed: {e}"))),
    }
}

/// Records `package_built` (with `upgrade` = the version) in the cluster's events, best effort.
pub async fn record_built(backend: Option<&dyn Membership>, pkg: &UpgradePackage, by: &str) {
    let Some(backend) = backend else { return };
    let detail = [
        ("by".to_string(), by.to_string()),
        ("format".to_string(), pkg.format.as_str().to_string()),
        ("upgrade".to_string(), pkg.version.clone()),
        ("enrollment".to_string(), "no".to_string()),
    ]
    .into();
    let event =
        crate::cluster::Event::new(crate::cluster::EventKind::PackageBuilt, "").with_detail(detail);
    super::events::record(backend, &event, "upgrade package built").await;
}
