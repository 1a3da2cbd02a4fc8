//! Where the stub writes under the target root, per target OS layout.
//!
//! Every path here is relative to the target root (`$3` for Installer, `--target-root`
//! for the Linux bundle), so the same code serves a real install (`/`) and a test root.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The on-disk layout a package installs into; recorded in the sealed header so the
/// stub cannot be talked into writing a macOS package's secrets into Linux paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetLayout {
    /// `Library/FleetServer/config/config.yaml`, state in `Library/FleetServer/state/`.
    Macos,
    /// `etc/fleet-server/config.yaml`, state in `var/lib/fleet-server/`.
    Linux,
}

impl TargetLayout {
    /// The directory holding `config.yaml` (created 0700).
    pub fn config_dir(self, root: &Path) -> PathBuf {
        match self {
            Self::Macos => root.join("Library/FleetServer/config"),
            Self::Linux => root.join("etc/fleet-server"),
        }
    }

    /// The configuration file the daemon reads.
    pub fn config_file(self, root: &Path) -> PathBuf {
        self.config_dir(root).join(CONFIG_FILE_NAME)
    }

    /// The daemon's state directory (created 0700; its `node_id` is never touched).
    pub fn state_dir(self, root: &Path) -> PathBuf {
        match self {
            Self::Macos => root.join("Library/FleetServer/state"),
            Self::Linux => root.join("var/lib/fleet-server"),
        }
    }

    /// Where an admin puts the install passphrase (root-owned, 0600 or stricter);
    /// the stub removes it after a successful install.
    pub fn passphrase_file(self, root: &Path) -> PathBuf {
        match self {
            Self::Macos => root.join("Library/FleetServer/install.passphrase"),
            Self::Linux => root.join("etc/fleet-server/install.passphrase"),
        }
    }

    /// The wire value in the sealed header.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Self::Macos => 1,
            Self::Linux => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Macos),
            2 => Some(Self::Linux),
            _ => None,
        }
    }
}

/// File name of the configuration inside [`TargetLayout::config_dir`].
pub const CONFIG_FILE_NAME: &str = "config.yaml";

/// File name of the node identity inside [`TargetLayout::state_dir`], kept across reinstalls.
pub const NODE_ID_FILE_NAME: &str = "node_id";

impl fmt::Display for TargetLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Macos => "macos",
            Self::Linux => "linux",
        })
    }
}

impl FromStr for TargetLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "macos" => Ok(Self::Macos),
            "linux" => Ok(Self::Linux),
            other => Err(format!(
                "unknown target layout {other:?} (expected macos or linux)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_layout() {
        let r = Path::new("/t");
        assert_eq!(
            TargetLayout::Macos.config_file(r),
            Path::new("/t/Library/FleetServer/config/config.yaml")
        );
        assert_eq!(
            TargetLayout::Linux.config_file(r),
            Path::new("/t/etc/fleet-server/config.yaml")
        );
        assert_eq!(
            TargetLayout::Linux.state_dir(r),
            Path::new("/t/var/lib/fleet-server")
        );
        assert_eq!(
            TargetLayout::Macos.passphrase_file(r),
            Path::new("/t/Library/FleetServer/install.passphrase")
        );
        for l in [TargetLayout::Macos, TargetLayout::Linux] {
            assert_eq!(l.to_string().parse::<TargetLayout>(), Ok(l));
            assert_eq!(TargetLayout::from_byte(l.to_byte()), Some(l));
        }
    }
}
