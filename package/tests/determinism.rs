//! Same inputs, same bytes; a cached build equals a cold one.

use std::sync::Arc;

use fleet_package::{ArtifactCache, PkgBuilder, PkgOptions, PkgRoot, Target, Template};

use crate::common::*;

#[test]
fn two_builds_are_identical() {
    let a = build_default_pkg();
    // Several times: a hash map's order differs between instances.
    for _ in 0..5 {
        let b = build_default_pkg();
        if a != b {
            let ra = fleet_package::inspect_bytes(&a).unwrap();
            let rb = fleet_package::inspect_bytes(&b).unwrap();
            panic!(
                "two cold builds differ:\n{:?}\n{:?}",
                ra.members, rb.members
            );
        }
    }
}

#[test]
fn warm_build_equals_cold_build() {
    let cache = Arc::new(ArtifactCache::new());
    let builder = PkgBuilder::new(mac_template(), PkgRoot::embedded())
        .unwrap()
        .with_cache(cache.clone());
    assert!(cache.is_empty());
    let cold = builder.build_pkg(&node(), &PkgOptions::default()).unwrap();
    assert_eq!(cache.len(), 1);
    let warm = builder.build_pkg(&node(), &PkgOptions::default()).unwrap();
    assert_eq!(cache.len(), 1);
    assert!(cold == warm, "warm build differs from cold");

    // Another node: same Payload (cached), different Scripts.
    let mut other = node();
    other.sealed = b"another node".to_vec();
    let other_pkg = builder.build_pkg(&other, &PkgOptions::default()).unwrap();
    assert_ne!(other_pkg, cold);
    let report = fleet_package::inspect_bytes(&other_pkg).unwrap();
    assert_eq!(report.sealed_config.as_deref(), Some(&b"another node"[..]));

    // A different daemon binary is a different cache entry.
    let t2 = Template::from_bytes(
        Target::MacOs,
        fake_macho(1000, 9),
        fake_macho(100, 2),
        false,
    )
    .unwrap();
    let b2 = PkgBuilder::new(t2, PkgRoot::embedded())
        .unwrap()
        .with_cache(cache.clone());
    b2.build_pkg(&node(), &PkgOptions::default()).unwrap();
    assert_eq!(cache.len(), 2);
}

#[test]
fn version_changes_only_package_info() {
    let builder = PkgBuilder::new(mac_template(), PkgRoot::embedded()).unwrap();
    let v2 = PkgOptions {
        version: "2.0.0".into(),
        ..PkgOptions::default()
    };
    let a =
        fleet_package::inspect_bytes(&builder.build_pkg(&node(), &PkgOptions::default()).unwrap())
            .unwrap();
    let b = fleet_package::inspect_bytes(&builder.build_pkg(&node(), &v2).unwrap()).unwrap();
    assert_eq!(b.package_info.as_ref().unwrap().version, "2.0.0");
    assert_eq!(b.distribution.as_ref().unwrap().pkg_refs[0].1, "2.0.0");
    // Offsets move (the Distribution holds the version too); contents do not.
    let member = |r: &fleet_package::InspectReport, name: &str| {
        let m = r.members.iter().find(|m| m.name == name).unwrap();
        (m.size, m.sha1.clone())
    };
    for name in [
        "fleet-server.pkg/Bom",
        "fleet-server.pkg/Payload",
        "fleet-server.pkg/Scripts",
    ] {
        assert_eq!(
            member(&a, name),
            member(&b, name),
            "{name} changed with the version"
        );
    }
    assert_ne!(
        member(&a, "fleet-server.pkg/PackageInfo"),
        member(&b, "fleet-server.pkg/PackageInfo")
    );
}

#[test]
fn bundles_are_identical() {
    let t = Template::from_bytes(
        Target::LinuxX86_64,
        fake_elf(5000, 1),
        fake_elf(500, 2),
        false,
    )
    .unwrap();
    let a = fleet_package::build_bundle(&t, &PkgRoot::embedded(), "node-2", &node()).unwrap();
    let b = fleet_package::build_bundle(&t, &PkgRoot::embedded(), "node-2", &node()).unwrap();
    assert!(a == b);
}
