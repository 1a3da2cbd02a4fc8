//! The pkg's `PackageInfo`, as pkgbuild writes it.

use crate::IDENTIFIER;

/// The `PackageInfo` XML for a payload of `number_of_files` entries taking
/// `install_kbytes` KiB, with the preinstall and postinstall scripts.
pub(crate) fn package_info(version: &str, number_of_files: u64, install_kbytes: u64) -> String {
    let version = escape(version);
    let generator = concat!("fleet-package-", env!("CARGO_PKG_VERSION"));
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<pkg-info overwrite-permissions="true" relocatable="false" identifier="{IDENTIFIER}" postinstall-action="none" version="{version}" format-version="2" generator-version="{generator}" install-location="/" auth="root">
    <payload numberOfFiles="{number_of_files}" installKBytes="{install_kbytes}"/>
    <bundle-version/>
    <upgrade-bundle/>
    <update-bundle/>
    <atomic-update-bundle/>
    <strict-identifier/>
    <relocate/>
    <scripts>
        <preinstall file="./preinstall"/>
        <postinstall file="./postinstall"/>
    </scripts>
</pkg-info>
"#
    )
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}
