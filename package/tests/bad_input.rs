//! Bad input gives clear errors naming the value, and never a panic.

use std::path::Path;

use fleet_package::*;

use crate::common::*;

#[test]
fn node_names() {
    for ok in ["a", "node-2", "server-03", &"a".repeat(63)] {
        validate_node_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "",
        "-a",
        "a-",
        "Node",
        "a_b",
        "a.b",
        "a b",
        "é",
        &"a".repeat(64),
    ] {
        let e = validate_node_name(bad).unwrap_err();
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    let t =
        Template::from_bytes(Target::LinuxX86_64, fake_elf(10, 1), fake_elf(10, 2), false).unwrap();
    assert!(matches!(
        build_bundle(&t, &PkgRoot::embedded(), "../x", &node()),
        Err(Error::InvalidNodeName(_))
    ));
}

#[test]
fn package_names() {
    for ok in [DEFAULT_PKG_NAME, "node-2.pkg", "My Node.pkg", "Nœud_3+.pkg"] {
        validate_package_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, why) in [
        ("a/b.pkg", "'/'"),
        ("/tmp/x.pkg", "'/'"),
        ("../x.pkg", "'/'"),
        ("..", "'..'"),
        ("x..pkg", "'..'"),
        ("x.zip", ".pkg"),
        ("x.pkg.tar.gz", ".pkg"),
        (".pkg", "before the ending"),
        ("", ".pkg"),
        ("a\"b.pkg", "only letters"),
        ("a;b.pkg", "only letters"),
        ("a%22.pkg", "only letters"),
        ("$(x).pkg", "only letters"),
    ] {
        let e = validate_package_name(bad).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{bad:?}")) && e.contains(why),
            "{bad}: {e}"
        );
    }
    validate_bundle_name("node2_provision.tar.gz").unwrap();
    assert!(validate_bundle_name("node2.tgz").is_err());
    assert!(validate_bundle_name("a/b.tar.gz").is_err());
}

#[test]
fn missing_template() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = Template::load(&missing, Target::MacOs, false).unwrap_err();
    assert!(matches!(e, Error::TemplateMissing { .. }));
    assert!(e.to_string().contains("nope"), "{e}");

    std::fs::create_dir_all(dir.path().join("macos")).unwrap();
    std::fs::write(dir.path().join("macos/fleet-server"), fake_macho(100, 1)).unwrap();
    let e = Template::load(dir.path(), Target::MacOs, false).unwrap_err();
    assert!(e.to_string().contains("macos/fleet-installer-stub"), "{e}");
}

fn template_dir(sub: &str, server: &[u8], stub: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    std::fs::write(dir.path().join(sub).join("fleet-server"), server).unwrap();
    std::fs::write(dir.path().join(sub).join("fleet-installer-stub"), stub).unwrap();
    dir
}

#[test]
fn binary_format_mismatch_is_refused_unless_allowed() {
    // ELF in macos/: refused, naming the file and what it is.
    let d = template_dir("macos", &fake_elf(100, 1), &fake_macho(100, 2));
    let e = Template::load(d.path(), Target::MacOs, false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("macos/fleet-server") && msg.contains("ELF") && msg.contains("Mach-O"),
        "{msg}"
    );
    assert!(msg.contains("--allow-foreign-binaries"), "{msg}");
    let t = Template::load(d.path(), Target::MacOs, true).expect("allowed");
    PkgBuilder::new(t, PkgRoot::embedded())
        .unwrap()
        .build_pkg(&node(), &PkgOptions::default())
        .unwrap();

    // Mach-O (fat, big-endian magic) in linux-x86_64/: refused.
    let fat = [0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2];
    let d = template_dir("linux-x86_64", &fake_elf(100, 1), &fat);
    let msg = Template::load(d.path(), Target::LinuxX86_64, false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("fleet-installer-stub") && msg.contains("universal Mach-O"),
        "{msg}"
    );
    Template::load(d.path(), Target::LinuxX86_64, true).expect("allowed");

    // Every Mach-O magic is accepted for macOS.
    for magic in [
        [0xfe, 0xed, 0xfa, 0xce],
        [0xfe, 0xed, 0xfa, 0xcf],
        [0xce, 0xfa, 0xed, 0xfe],
        [0xcf, 0xfa, 0xed, 0xfe],
        [0xca, 0xfe, 0xba, 0xbe],
        [0xbe, 0xba, 0xfe, 0xca],
    ] {
        Template::from_bytes(Target::MacOs, magic.to_vec(), magic.to_vec(), false)
            .unwrap_or_else(|e| panic!("{magic:x?}: {e}"));
    }
    assert_eq!(BinaryFormat::detect(b"#!/bin/sh"), BinaryFormat::Script);
    assert_eq!(BinaryFormat::detect(b""), BinaryFormat::Unknown);
}

#[test]
fn wrong_target_for_the_builder() {
    let linux =
        Template::from_bytes(Target::LinuxX86_64, fake_elf(10, 1), fake_elf(10, 2), false).unwrap();
    let e = PkgBuilder::new(linux, PkgRoot::embedded()).unwrap_err();
    assert!(matches!(e, Error::WrongTarget { .. }), "{e}");
    let e = build_bundle(&mac_template(), &PkgRoot::embedded(), "n", &node()).unwrap_err();
    assert!(e.to_string().contains("linux-x86_64/"), "{e}");
}

#[test]
fn existing_output_is_refused_unless_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("FleetServerClusterNode.pkg");
    write_atomically(&out, b"first", false).unwrap();
    let e = write_atomically(&out, b"second", false).unwrap_err();
    assert!(matches!(e, Error::OutputExists(_)));
    assert!(
        e.to_string().contains("FleetServerClusterNode.pkg") && e.to_string().contains("--force")
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"first");
    write_atomically(&out, b"second", true).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"second");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let e = write_atomically(&dir.path().join("no/such/dir/x.pkg"), b"x", false).unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}

#[test]
fn a_full_disk_leaves_no_partial_file() {
    // /dev/full fails every write; a directory on a full disk is emulated by
    // a tiny tmpfs only with privileges, so check the failure path directly.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.pkg");
    std::fs::create_dir(&out).unwrap(); // rename onto a directory fails
    assert!(write_atomically(&out, b"data", true).is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary file left behind");
}

#[test]
fn inspect_of_truncated_and_corrupted_packages() {
    let pkg = build_default_pkg();
    let dir = tempfile::tempdir().unwrap();

    let mut cuts: Vec<usize> = vec![0, 1, 4, 27, 28, 29, 100];
    cuts.extend((1..40).map(|i| pkg.len() * i / 40));
    cuts.push(pkg.len() - 1);
    for cut in cuts {
        let p = write(dir.path(), "t.pkg", &pkg[..cut]);
        let e = inspect(&p).expect_err(&format!("truncated at {cut} accepted"));
        assert!(e.to_string().contains("not a valid package"), "{e}");
    }

    // Flip one byte at many places: header, TOC, checksum, every member.
    let step = (pkg.len() / 97).max(1);
    for pos in (0..pkg.len()).step_by(step) {
        let mut bad = pkg.clone();
        bad[pos] ^= 0x55;
        if let Ok(r) = inspect_bytes(&bad) {
            panic!("corruption at byte {pos} went unnoticed: {r:?}");
        }
    }
    let mut bad = pkg.clone();
    let n = bad.len();
    bad[n - 100] ^= 1; // in the last member
    let e = inspect_bytes(&bad).unwrap_err();
    assert!(e.contains("mismatch") || e.contains("decompress"), "{e}");

    for garbage in [&b"not a pkg at all"[..], &[0u8; 4096][..], b"xar!"] {
        assert!(inspect_bytes(garbage).is_err());
    }
    let e = inspect(Path::new("/nonexistent/x.pkg")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.pkg"));
}
