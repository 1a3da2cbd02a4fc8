//! Node package writers: the macOS package (a product archive holding the
//! component: XAR, cpio odc, Bom, PackageInfo, Distribution; optionally
//! signed with a Developer ID Installer identity) and the Linux provision
//! bundle, built and signed on any OS without Apple's tools.
//!
//! Pure format code: synchronous, no async runtime, and no I/O but reading the
//! node template and writing the output ([`write_atomically`]). The same inputs
//! give byte-identical output.
//!
//! ```no_run
//! use fleet_package::*;
//! # fn main() -> Result<(), Error> {
//! let template = Template::load("/var/lib/fleet/node-template".as_ref(), Target::MacOs, false)?;
//! let builder = PkgBuilder::new(template, PkgRoot::embedded())?;
//! let node = NodeFiles { sealed: b"sealed".to_vec(), key: Some(b"key".to_vec()) };
//! let pkg = builder.build_pkg(&node, &PkgOptions::default())?;
//! write_atomically("FleetServerClusterNode.pkg".as_ref(), &pkg, false)?;
//! # Ok(()) }
//! ```

mod bom;
mod bundle;
mod distribution;
mod embedded;
mod error;
mod inspect;
mod names;
mod output;
mod package_info;
mod payload;
mod pkg;
mod plist;
mod sign;
mod template;
mod upgrade;
mod xar;

pub use bundle::{BUNDLE_SCRIPT_NAMES, build_bundle, build_bundle_cached};
pub use distribution::{COMPONENT_DIR, HOST_ARCHITECTURES, MIN_MACOS, TITLE};
pub use embedded::PkgRoot;
pub use error::Error;
pub use inspect::{
    CpioEntry, DistributionSummary, InspectReport, Member, PackageInfoSummary, SignatureReport,
    inspect, inspect_bytes,
};
pub use names::{
    DEFAULT_PKG_NAME, default_bundle_name, validate_bundle_name, validate_node_name,
    validate_package_name,
};
pub use output::write_atomically;
pub use pkg::{ArtifactCache, NodeFiles, PkgBuilder, PkgFormat, PkgOptions};
pub use plist::{check_launchd_plist, expected_launchd_plist};
pub use sign::{SigningIdentity, SigningOptions};
pub use template::{BinaryFormat, Target, Template};
pub use upgrade::{
    UPGRADE_BUNDLE_DIR, UPGRADE_MANIFEST_NAME, build_upgrade_bundle, default_upgrade_bundle_name,
    default_upgrade_pkg_name,
};

/// The package identifier, also the LaunchDaemon label.
pub const IDENTIFIER: &str = "com.fleet.server.cluster";
/// Modification time of every entry in every archive (2024-01-01T00:00:00Z),
/// so the same inputs give the same bytes.
pub const FIXED_MTIME: u64 = 1_704_067_200;
/// File name of the sealed configuration, beside the installer stub.
pub const SEALED_NAME: &str = "fleet-config.sealed";
/// File name of the key file (key-file mode), beside the sealed configuration.
pub const KEY_NAME: &str = "fleet-config.key";

/// The Bom that [`PkgBuilder`] writes for `files` (`a/b/c`, permission bits,
/// contents; parent directories are added), for comparing it with other
/// writers.
pub fn bom_of(files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>> {
    bom::build_bom(&payload::tree(files))
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
