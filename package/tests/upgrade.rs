//! Upgrade packages: the pkg's Scripts hold the stub, the postinstall and the manifest and
//! nothing of a node (no sealed configuration, no key); its PackageInfo has the install
//! package's identifier and the version asked for; the upgrade bundle's listing and modes;
//! both deterministic.

use std::process::Command;

use fleet_package::{
    IDENTIFIER, PkgBuilder, PkgOptions, PkgRoot, Target, Template, UPGRADE_MANIFEST_NAME,
    build_upgrade_bundle, inspect_bytes,
};

use crate::common::*;

const MANIFEST: &[u8] = b"fleet-server upgrade package\nversion 0.2.0\nlayout macos\n";

fn upgrade_pkg() -> Vec<u8> {
    let options = PkgOptions {
        version: "0.2.0".into(),
        ..PkgOptions::default()
    };
    PkgBuilder::new(mac_template(), PkgRoot::embedded())
        .unwrap()
        .build_upgrade_pkg(MANIFEST, &options, None)
        .unwrap()
}

#[test]
fn upgrade_pkg_has_no_node_files() {
    let bytes = upgrade_pkg();
    assert_eq!(bytes, upgrade_pkg(), "the same inputs give the same bytes");
    let report = inspect_bytes(&bytes).unwrap();
    let text = format!("{report:?}");
    assert!(text.contains(IDENTIFIER), "{text}");
    assert!(text.contains("0.2.0"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "upgrade.pkg", &bytes);
    let expanded = dir.path().join("x");
    std::fs::create_dir(&expanded).unwrap();
    bsdtar_extract(&pkg, &expanded);
    let component = component_dir(&expanded);
    let info = std::fs::read_to_string(component.join("PackageInfo")).unwrap();
    assert!(
        info.contains(&format!("identifier=\"{IDENTIFIER}\""))
            && info.contains("version=\"0.2.0\""),
        "{info}"
    );
    let scripts = gunzip(&std::fs::read(component.join("Scripts")).unwrap());
    let listed = run(Command::new(tool("cpio"))
        .args(["-it", "--quiet", "-F"])
        .arg(write(dir.path(), "Scripts.cpio", &scripts)));
    let mut names: Vec<String> = stdout(&listed).lines().map(str::to_owned).collect();
    names.sort();
    assert_eq!(
        names,
        [".", "./fleet-upgrade", "./postinstall", "./preinstall"],
        "{names:?}"
    );
    assert!(
        scripts.windows(MANIFEST.len()).any(|w| w == MANIFEST),
        "the manifest is in Scripts"
    );
    assert_eq!(UPGRADE_MANIFEST_NAME, "fleet-upgrade");
}

#[test]
fn upgrade_bundle_lists_binaries_and_scripts_only() {
    let template = Template::from_bytes(
        Target::LinuxX86_64,
        fake_elf(50_000, 1),
        fake_elf(5_000, 2),
        false,
    )
    .unwrap();
    let manifest = b"fleet-server upgrade package\nversion 0.2.0\nlayout linux\n";
    let bytes = build_upgrade_bundle(&template, &PkgRoot::embedded(), manifest).unwrap();
    assert_eq!(
        bytes,
        build_upgrade_bundle(&template, &PkgRoot::embedded(), manifest).unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "fleet-server-upgrade-0.2.0.tar.gz", &bytes);
    let out = run(Command::new(tool("tar"))
        .arg("-tzvf")
        .arg(&path)
        .arg("--numeric-owner"));
    let listing: Vec<(String, String, String)> = stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].to_owned(), f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    let expect = [
        ("fleet-server-upgrade/", "drwxr-xr-x"),
        ("fleet-server-upgrade/fleet-installer-stub", "-rwxr-xr-x"),
        ("fleet-server-upgrade/fleet-server", "-rwxr-xr-x"),
        ("fleet-server-upgrade/fleet-server.service", "-rw-r--r--"),
        ("fleet-server-upgrade/fleet-upgrade", "-rw-r--r--"),
        ("fleet-server-upgrade/provision.sh", "-rwxr-xr-x"),
        ("fleet-server-upgrade/uninstall.sh", "-rwxr-xr-x"),
    ];
    assert_eq!(
        listing
            .iter()
            .map(|(n, m, _)| (n.as_str(), m.as_str()))
            .collect::<Vec<_>>(),
        expect
    );
    assert!(listing.iter().all(|(_, _, o)| o == "0/0"), "{listing:?}");
    // A macOS template is refused.
    assert!(build_upgrade_bundle(&mac_template(), &PkgRoot::embedded(), manifest).is_err());
}
