//! The package's fixed files (pkgroot/ and scripts/), embedded in the crate so
//! a daemon installed anywhere builds packages without the source tree.

use std::path::Path;

use crate::{Error, Result};

/// Payload path of the LaunchDaemon plist.
pub(crate) const PLIST_PATH: &str = "Library/LaunchDaemons/com.fleet.server.cluster.plist";
/// Payload path of the newsyslog rotation file.
pub(crate) const NEWSYSLOG_PATH: &str = "private/etc/newsyslog.d/fleet-server.conf";
/// Payload path of the uninstaller.
pub(crate) const UNINSTALL_PATH: &str = "Library/FleetServer/bin/uninstall.sh";
/// Payload path of the daemon.
pub(crate) const DAEMON_PATH: &str = "Library/FleetServer/bin/fleet-server";

/// The fixed (not per-node, not per-build) files of the packages.
#[derive(Clone, PartialEq, Eq)]
pub struct PkgRoot {
    /// `Library/LaunchDaemons/com.fleet.server.cluster.plist`.
    pub launchd_plist: Vec<u8>,
    /// `private/etc/newsyslog.d/fleet-server.conf`.
    pub newsyslog_conf: Vec<u8>,
    /// `Library/FleetServer/bin/uninstall.sh` (also the bundle's `uninstall.sh`).
    pub uninstall_sh: Vec<u8>,
    /// The pkg's `postinstall` script.
    pub postinstall: Vec<u8>,
    /// The bundle's `provision.sh`.
    pub provision_sh: Vec<u8>,
    /// The bundle's `fleet-server.service` systemd unit.
    pub systemd_unit: Vec<u8>,
}

impl std::fmt::Debug for PkgRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkgRoot")
            .field("launchd_plist", &self.launchd_plist.len())
            .field("newsyslog_conf", &self.newsyslog_conf.len())
            .field("uninstall_sh", &self.uninstall_sh.len())
            .field("postinstall", &self.postinstall.len())
            .field("provision_sh", &self.provision_sh.len())
            .field("systemd_unit", &self.systemd_unit.len())
            .finish()
    }
}

impl PkgRoot {
    /// The files as they were in the source tree when this crate was built.
    pub fn embedded() -> Self {
        Self {
            launchd_plist: include_bytes!(
                "../../pkgroot/Library/LaunchDaemons/com.fleet.server.cluster.plist"
            )
            .to_vec(),
            newsyslog_conf: include_bytes!(
                "../../pkgroot/private/etc/newsyslog.d/fleet-server.conf"
            )
            .to_vec(),
            uninstall_sh: include_bytes!("../../pkgroot/Library/FleetServer/bin/uninstall.sh")
                .to_vec(),
            postinstall: include_bytes!("../../scripts/postinstall").to_vec(),
            provision_sh: include_bytes!("../../scripts/provision.sh").to_vec(),
            systemd_unit: include_bytes!("../../scripts/fleet-server.service").to_vec(),
        }
    }

    /// Reads the files from a source tree (`pkgroot/` and `scripts/`), for
    /// trying edits without rebuilding.
    pub fn from_dirs(pkgroot: &Path, scripts: &Path) -> Result<Self> {
        let read = |p: std::path::PathBuf| {
            std::fs::read(&p).map_err(Error::io(format!("reading {}", p.display())))
        };
        Ok(Self {
            launchd_plist: read(pkgroot.join(PLIST_PATH))?,
            newsyslog_conf: read(pkgroot.join(NEWSYSLOG_PATH))?,
            uninstall_sh: read(pkgroot.join(UNINSTALL_PATH))?,
            postinstall: read(scripts.join("postinstall"))?,
            provision_sh: read(scripts.join("provision.sh"))?,
            systemd_unit: read(scripts.join("fleet-server.service"))?,
        })
    }
}
