//! Validation of node names and output file names.

use crate::{Error, Result};

/// The package name the Settings page offers by default.
pub const DEFAULT_PKG_NAME: &str = "FleetServerClusterNode.pkg";

/// Checks a node name: 1 to 63 of `[a-z0-9-]`, not starting or ending with `-` (the rule of
/// the stub's library, which checks the same name again when it opens the package).
pub fn validate_node_name(name: &str) -> Result<()> {
    if fleet_installer_stub::names::is_node_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidNodeName(name.to_owned()))
    }
}

/// Checks a `.pkg` file name (a bare name, never a path).
pub fn validate_package_name(name: &str) -> Result<()> {
    validate_file_name(name, ".pkg")
}

/// Checks a provision bundle file name (ends with `.tar.gz`).
pub fn validate_bundle_name(name: &str) -> Result<()> {
    validate_file_name(name, ".tar.gz")
}

/// `<node>_provision.tar.gz`, as the etcd guide names its bundles.
pub fn default_bundle_name(node_name: &str) -> String {
    format!("{node_name}_provision.tar.gz")
}

fn validate_file_name(name: &str, ending: &'static str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidPackageName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.contains('/') || name.contains('\\') {
        return bad("it must be a file name, without '/'");
    }
    if name.contains("..") {
        return bad("it must not contain '..'");
    }
    if name.chars().any(char::is_control) {
        return bad("it must not contain control characters");
    }
    // A safe set: the name goes into a Content-Disposition header, the printed install
    // commands and a file on disk; quotes, `\`, `;`, `%`, `$` and the like have no place there.
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '+'))
    {
        return bad("only letters, digits, spaces and . _ - + are allowed");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if !name.ends_with(ending) {
        return bad(if ending == ".pkg" {
            "it must end with .pkg"
        } else {
            "it must end with .tar.gz"
        });
    }
    if name.len() == ending.len() || name.starts_with('.') || name.starts_with('-') {
        return bad("it needs a name before the ending, not starting with '.' or '-'");
    }
    Ok(())
}
