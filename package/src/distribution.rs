//! The product archive's `Distribution` (productbuild's layout): one choice
//! with the one component, `hostArchitectures` naming both architectures so
//! that Installer on Apple silicon runs the scripts natively (no Rosetta),
//! the local system as the only domain, and a minimum macOS version.

use crate::IDENTIFIER;

/// The component's directory in a product archive.
pub const COMPONENT_DIR: &str = "fleet-server.pkg";
/// The title Installer shows.
pub const TITLE: &str = "Fleet Server cluster node";
/// The oldest macOS the package installs on: the first with Apple silicon
/// (and so with `hostArchitectures` arm64), and the lowest deployment target
/// of the aarch64-apple-darwin binaries it ships.
pub const MIN_MACOS: &str = "11.0";
/// What `hostArchitectures` says.
pub const HOST_ARCHITECTURES: &str = "arm64,x86_64";

/// The Distribution XML for the component of `version` taking `install_kbytes`.
///
/// `volume-check` carries `script="true"`: Installer evaluates the attribute
/// as a JavaScript expression (always true here, so only the
/// `allowed-os-versions` range decides); apple-flat-package 0.20, one of the
/// readers the tests open our packages with, requires the attribute.
pub(crate) fn distribution(version: &str, install_kbytes: u64) -> String {
    let version = crate::package_info::escape(version);
    format!(
        r##"<?xml version="1.0" encoding="utf-8"?>
<installer-gui-script minSpecVersion="2">
    <title>{TITLE}</title>
    <options customize="never" require-scripts="false" hostArchitectures="{HOST_ARCHITECTURES}"/>
    <domains enable_anywhere="false" enable_currentUserHome="false" enable_localSystem="true"/>
    <volume-check script="true">
        <allowed-os-versions>
            <os-version min="{MIN_MACOS}"/>
        </allowed-os-versions>
    </volume-check>
    <choices-outline>
        <line choice="{IDENTIFIER}"/>
    </choices-outline>
    <choice id="{IDENTIFIER}" visible="false" title="{TITLE}">
        <pkg-ref id="{IDENTIFIER}"/>
    </choice>
    <pkg-ref id="{IDENTIFIER}" version="{version}" installKBytes="{install_kbytes}" onConclusion="none">#{COMPONENT_DIR}</pkg-ref>
</installer-gui-script>
"##
    )
}
