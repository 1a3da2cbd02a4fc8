//! Upgrade packages: their manifest (`fleet-upgrade`, beside the stub instead of a sealed
//! configuration) and the stub's check that the machine is an installed node whose daemon is
//! older than the package's. The check reads only; the package's scripts replace the binaries.
//!
//! A machine is a node when the layout's configuration file exists and its state directory
//! holds a non-empty `node_id`: both are written only by an install (the stub, then the
//! daemon's first start), and an upgrade never writes either.

use std::path::{Path, PathBuf};

use crate::layout::{NODE_ID_FILE_NAME, TargetLayout};
use crate::version_slot;

/// File name of the manifest, beside the stub in an upgrade package.
pub const MANIFEST_NAME: &str = "fleet-upgrade";

/// The first line of every manifest.
const HEADER: &str = "fleet-server upgrade package";

/// What an upgrade package installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The daemon's version in this package.
    pub version: String,
    /// Where the node it upgrades keeps its files.
    pub layout: TargetLayout,
}

impl Manifest {
    /// The manifest's text (no secret: a version and a layout).
    pub fn to_text(&self) -> String {
        format!(
            "{HEADER}\nversion {}\nlayout {}\n",
            self.version, self.layout
        )
    }

    /// Parses a manifest; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("it does not start with `{HEADER}`"));
        }
        let (mut version, mut layout) = (None, None);
        for line in lines {
            match line.split_once(' ') {
                Some(("version", v)) if version.is_none() => {
                    if !version_slot::is_valid_version(v) {
                        return Err(format!("bad version {v:?}"));
                    }
                    version = Some(v.to_owned());
                }
                Some(("layout", l)) if layout.is_none() => layout = Some(l.parse()?),
                _ => return Err(format!("unexpected line {line:?}")),
            }
        }
        Ok(Self {
            version: version.ok_or("no version line")?,
            layout: layout.ok_or("no layout line")?,
        })
    }
}

/// Where the layout installs the daemon (the binary an upgrade replaces).
pub fn daemon_path(layout: TargetLayout, root: &Path) -> PathBuf {
    match layout {
        TargetLayout::Macos => root.join("Library/FleetServer/bin/fleet-server"),
        TargetLayout::Linux => root.join("usr/local/bin/fleet-server"),
    }
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This machine is not a node: the named file is missing (or `node_id` is empty).
    NotANode { missing: PathBuf },
    /// The installed daemon is this version or newer.
    NotNewer { installed: String, offered: String },
}

/// What a passed check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The node's id (`node_id` in its state directory).
    pub node_id: String,
    /// The configuration file the upgrade keeps.
    pub config_file: PathBuf,
    /// The installed daemon's version; `None` when it cannot be told (no binary, or a build
    /// from before version slots: older than any upgrade).
    pub version: Option<String>,
}

/// Checks that `root` holds a node of `manifest.layout` whose daemon is older than the
/// package's. Reads only.
pub fn check(manifest: &Manifest, root: &Path) -> Result<Installed, Refusal> {
    let config_file = manifest.layout.config_file(root);
    if !config_file.is_file() {
        return Err(Refusal::NotANode {
            missing: config_file,
        });
    }
    let id_file = manifest.layout.state_dir(root).join(NODE_ID_FILE_NAME);
    let node_id = std::fs::read_to_string(&id_file)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if node_id.is_empty() {
        return Err(Refusal::NotANode { missing: id_file });
    }
    let version = std::fs::read(daemon_path(manifest.layout, root))
        .ok()
        .and_then(|b| version_slot::version_of(&b).ok());
    if let Some(v) = &version
        && !version_slot::is_older(v, &manifest.version)
    {
        return Err(Refusal::NotNewer {
            installed: v.clone(),
            offered: manifest.version.clone(),
        });
    }
    Ok(Installed {
        node_id,
        config_file,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_and_refusals() {
        let m = Manifest {
            version: "0.2.0".into(),
            layout: TargetLayout::Linux,
        };
        assert_eq!(Manifest::parse(&m.to_text()), Ok(m.clone()));
        for bad in [
            "",
            "version 0.2.0\nlayout linux\n",
            "fleet-server upgrade package\nversion 0.2.0\n",
            "fleet-server upgrade package\nversion ../x\nlayout linux\n",
            "fleet-server upgrade package\nversion 0.2.0\nlayout windows\n",
            "fleet-server upgrade package\nversion 0.2.0\nlayout linux\nextra 1\n",
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn check_wants_a_node_with_an_older_daemon() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let m = Manifest {
            version: "0.2.0".into(),
            layout: TargetLayout::Linux,
        };
        assert!(matches!(check(&m, r), Err(Refusal::NotANode { .. })));
        std::fs::create_dir_all(r.join("etc/fleet-server")).unwrap();
        std::fs::write(r.join("etc/fleet-server/config.yaml"), "x").unwrap();
        assert!(
            matches!(check(&m, r), Err(Refusal::NotANode { missing }) if missing.ends_with("node_id"))
        );
        std::fs::create_dir_all(r.join("var/lib/fleet-server")).unwrap();
        std::fs::write(r.join("var/lib/fleet-server/node_id"), "n-abc123\n").unwrap();
        // No daemon binary: its version cannot be told, the upgrade may go ahead.
        assert_eq!(check(&m, r).unwrap().node_id, "n-abc123");
        std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
        let bin = r.join("usr/local/bin/fleet-server");
        std::fs::write(&bin, version_slot::slot("0.2.0")).unwrap();
        assert!(matches!(check(&m, r), Err(Refusal::NotNewer { .. })));
        std::fs::write(&bin, version_slot::slot("0.1.9")).unwrap();
        assert_eq!(check(&m, r).unwrap().version.as_deref(), Some("0.1.9"));
    }
}
