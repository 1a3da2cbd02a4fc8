//! A built pkg read back by readers that are not ours.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::process::{Command, Stdio};

use crate::common::*;

const MEMBERS: [&str; 4] = ["Bom", "PackageInfo", "Payload", "Scripts"];
/// The product archive's entries: the Distribution, the component's directory and its members.
const PRODUCT: [&str; 6] = [
    "Distribution",
    "fleet-server.pkg",
    "fleet-server.pkg/Bom",
    "fleet-server.pkg/PackageInfo",
    "fleet-server.pkg/Payload",
    "fleet-server.pkg/Scripts",
];

fn expected_payload() -> Vec<&'static str> {
    vec![
        ".",
        "./Library",
        "./Library/FleetServer",
        "./Library/FleetServer/bin",
        "./Library/FleetServer/bin/fleet-server",
        "./Library/FleetServer/bin/uninstall.sh",
        "./Library/LaunchDaemons",
        "./Library/LaunchDaemons/com.fleet.server.cluster.plist",
        "./private",
        "./private/etc",
        "./private/etc/newsyslog.d",
        "./private/etc/newsyslog.d/fleet-server.conf",
    ]
}

fn bsdtar_list(pkg: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "n.pkg", pkg);
    let out = run(Command::new(tool("bsdtar")).arg("-tf").arg(&pkg));
    let mut names: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bsdtar_lists_the_product_archive() {
    assert_eq!(bsdtar_list(&build_default_pkg()), PRODUCT);
}

#[test]
fn bsdtar_lists_the_component() {
    assert_eq!(bsdtar_list(&build_component_pkg()), MEMBERS);
}

fn sevenzip_lists(pkg: &[u8], names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "n.pkg", pkg);
    // -txar: otherwise 7z descends into the pkg's Payload by itself.
    let out = run(Command::new(tool("7z")).args(["l", "-txar"]).arg(&pkg));
    let text = stdout(&out);
    assert!(text.contains("Type = Xar"), "7z did not see a XAR:\n{text}");
    for m in names {
        assert!(
            text.lines().any(|l| l.split_whitespace().last() == Some(m)),
            "7z l does not list {m}:\n{text}"
        );
    }
    // And 7z's integrity test passes (checksums).
    let out = run(Command::new(tool("7z")).args(["t", "-txar"]).arg(&pkg));
    assert!(
        stdout(&out).contains("Everything is Ok"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn sevenzip_lists_the_product_archive() {
    sevenzip_lists(&build_default_pkg(), &PRODUCT);
}

#[test]
fn sevenzip_lists_the_component() {
    sevenzip_lists(&build_component_pkg(), &MEMBERS);
}

#[test]
fn distribution_is_xml_with_both_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "n.pkg", &build_default_pkg());
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    bsdtar_extract(&pkg, &x);
    let xml = std::fs::read_to_string(x.join("Distribution")).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("Distribution parses as XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "installer-gui-script");
    assert_eq!(root.attribute("minSpecVersion"), Some("2"));
    let el = |tag: &str| {
        root.children()
            .find(|n| n.has_tag_name(tag))
            .unwrap_or_else(|| panic!("no <{tag}>:\n{xml}"))
    };
    assert_eq!(el("title").text(), Some("Fleet Server cluster node"));
    let options = el("options");
    let mut arches: Vec<&str> = options
        .attribute("hostArchitectures")
        .unwrap()
        .split(',')
        .collect();
    arches.sort();
    assert_eq!(arches, ["arm64", "x86_64"]);
    assert_eq!(options.attribute("customize"), Some("never"));
    assert_eq!(options.attribute("require-scripts"), Some("false"));
    assert_eq!(el("domains").attribute("enable_localSystem"), Some("true"));
    let min = root
        .descendants()
        .find(|n| n.has_tag_name("os-version"))
        .and_then(|n| n.attribute("min"));
    assert_eq!(min, Some(fleet_package::MIN_MACOS));
    assert_eq!(
        root.children().filter(|n| n.has_tag_name("choice")).count(),
        1
    );
    let refs: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("pkg-ref") && n.attribute("version").is_some())
        .collect();
    assert_eq!(refs.len(), 1);
    let r = refs[0];
    assert_eq!(r.attribute("id"), Some("com.fleet.server.cluster"));
    assert_eq!(r.attribute("version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(r.text(), Some("#fleet-server.pkg"));
    // installKBytes agrees with the component's PackageInfo.
    let info = std::fs::read_to_string(x.join("fleet-server.pkg/PackageInfo")).unwrap();
    let info = roxmltree::Document::parse(&info).unwrap();
    let payload = info
        .descendants()
        .find(|n| n.has_tag_name("payload"))
        .unwrap();
    assert_eq!(
        r.attribute("installKBytes"),
        payload.attribute("installKBytes")
    );
}

/// `cpio -itv` of a gzip-compressed member, as (path -> (mode string, uid, gid, size)).
fn cpio_list(gz: &[u8]) -> BTreeMap<String, (String, String, String, u64)> {
    let raw = gunzip(gz);
    assert_eq!(&raw[..6], b"070707", "not cpio odc");
    let mut child = Command::new(tool("cpio"))
        .args(["-itv", "--numeric-uid-gid", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cpio");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&raw).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "cpio -it failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .lines()
        .map(|l| {
            // -rwxr-xr-x   1 0        0          300000 Jan  1  2024 ./Library/...
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 9, "odd cpio line {l:?}");
            (
                f[8..].join(" "),
                (
                    f[0].to_owned(),
                    f[2].to_owned(),
                    f[3].to_owned(),
                    f[4].parse().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn cpio_lists_payload_and_scripts_as_odc() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "n.pkg", &build_default_pkg());
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    bsdtar_extract(&pkg, &x);
    let x = component_dir(&x);

    // GNU gzip checks both streams (CRC and length).
    for member in ["Payload", "Scripts"] {
        run(Command::new("/bin/sh").arg("-c").arg(format!(
            "'{}' -t < '{}'",
            tool("gzip").display(),
            x.join(member).display()
        )));
    }
    let payload = cpio_list(&std::fs::read(x.join("Payload")).unwrap());
    assert_eq!(payload.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut e = expected_payload();
        e.sort();
        e
    });
    for (path, (mode, uid, gid, _)) in &payload {
        assert_eq!(
            (uid.as_str(), gid.as_str()),
            ("0", "0"),
            "{path} not root:wheel"
        );
        let want = if path.ends_with(".plist") || path.ends_with(".conf") {
            "-rw-r--r--"
        } else if path.ends_with("fleet-server") || path.ends_with(".sh") {
            "-rwxr-xr-x"
        } else {
            "drwxr-xr-x"
        };
        assert_eq!(mode, want, "{path}");
    }
    assert_eq!(payload["./Library/FleetServer/bin/fleet-server"].3, 300_000);

    let scripts = cpio_list(&std::fs::read(x.join("Scripts")).unwrap());
    let modes: Vec<(&str, &str)> = scripts
        .iter()
        .map(|(p, (m, ..))| (p.as_str(), m.as_str()))
        .collect();
    assert_eq!(
        modes,
        [
            (".", "drwxr-xr-x"),
            ("./fleet-config.key", "-rw-------"),
            ("./fleet-config.sealed", "-rw-------"),
            ("./postinstall", "-rwxr-xr-x"),
            ("./preinstall", "-rwxr-xr-x"),
        ]
    );
    assert!(scripts.values().all(|(_, u, g, _)| u == "0" && g == "0"));
}

#[test]
fn apple_flat_package_reads_the_component() {
    use apple_flat_package::{PkgReader, reader::PkgFlavor};
    let mut reader = PkgReader::new(Cursor::new(build_component_pkg()))
        .expect("apple-flat-package opens the pkg");
    assert_eq!(reader.flavor(), PkgFlavor::Component);
    assert!(reader.distribution().unwrap().is_none());
    let component = reader
        .root_component()
        .expect("root component")
        .expect("a component package");
    check_component(component);
}

#[test]
fn apple_flat_package_reads_the_product_archive() {
    use apple_flat_package::{PkgReader, reader::PkgFlavor};
    let mut reader =
        PkgReader::new(Cursor::new(build_default_pkg())).expect("apple-flat-package opens the pkg");
    assert_eq!(reader.flavor(), PkgFlavor::Product);
    let dist = reader
        .distribution()
        .expect("Distribution parses")
        .expect("a Distribution");
    assert_eq!(dist.min_spec_version, 2);
    assert_eq!(dist.choice.len(), 1);
    let options = dist.options.as_ref().expect("<options>");
    assert_eq!(options.host_architecutres.as_deref(), Some("arm64,x86_64"));
    let refs: Vec<_> = dist
        .pkg_ref
        .iter()
        .filter(|r| r.version.is_some())
        .collect();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].id, "com.fleet.server.cluster");
    let mut components = reader.component_packages().expect("component packages");
    assert_eq!(components.len(), 1, "one component");
    check_component(components.remove(0));
}

/// What both forms must hold: PackageInfo, Payload, Scripts and Bom, read by apple-flat-package.
fn check_component(component: apple_flat_package::component_package::ComponentPackageReader) {
    let info = component.package_info().expect("PackageInfo parsed");
    assert_eq!(info.identifier, "com.fleet.server.cluster");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.install_location.as_deref(), Some("/"));
    assert_eq!(info.auth, "root");
    assert_eq!(info.format_version, 2);
    let payload = info.payload.as_ref().expect("<payload>");
    assert_eq!(payload.number_of_files, expected_payload().len() as u64);
    // KiB rounded up per file.
    let root = fleet_package::PkgRoot::embedded();
    let kib = |n: usize| (n as u64).div_ceil(1024);
    assert_eq!(
        payload.install_kbytes,
        kib(300_000)
            + kib(root.uninstall_sh.len())
            + kib(root.launchd_plist.len())
            + kib(root.newsyslog_conf.len())
    );
    let scripts: Vec<String> = info
        .scripts
        .scripts
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    assert_eq!(scripts.len(), 2);
    assert!(
        scripts[0].contains("./preinstall") && scripts[1].contains("./postinstall"),
        "{scripts:?}"
    );

    // Its own cpio reader walks Payload and Scripts.
    let mut names = Vec::new();
    for entry in component.payload_reader().unwrap().expect("payload") {
        names.push(entry.expect("payload entry").name().to_owned());
    }
    assert_eq!(names, expected_payload());
    let scripts = component.scripts_reader().unwrap().expect("scripts");
    assert_eq!(scripts.count(), 5);
    assert!(component.bom().is_some());
}

#[test]
fn apple_bom_matches_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "n.pkg", &build_default_pkg());
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    bsdtar_extract(&pkg, &x);
    let x = component_dir(&x);
    let bom_bytes = std::fs::read(x.join("Bom")).unwrap();
    let bom = apple_bom::ParsedBom::parse(&bom_bytes).expect("apple-bom parses the Bom");
    let bom: BTreeMap<String, (u16, u32, u32, usize)> = bom
        .paths()
        .expect("Bom paths")
        .iter()
        .map(|p| {
            (
                // "." and "./…", as kpea reads the Payload.
                p.path().to_owned(),
                (p.file_mode(), p.user_id(), p.group_id(), p.size()),
            )
        })
        .collect();

    // The payload, as kpea reads it.
    let raw = gunzip(&std::fs::read(x.join("Payload")).unwrap());
    let mut archive = kpea::Archive::new(&raw[..]);
    let mut payload = BTreeMap::new();
    while let Some(entry) = archive.read_entry().expect("kpea reads the payload") {
        let m = &entry.metadata;
        let size = if m.is_file() { m.size() as usize } else { 0 };
        payload.insert(
            entry.path.to_string(),
            (m.mode() as u16, m.uid(), m.gid(), size),
        );
    }
    assert_eq!(payload.len(), expected_payload().len());
    let bom_norm: BTreeMap<String, (u16, u32, u32, usize)> = bom
        .into_iter()
        .map(|(p, (mode, u, g, size))| {
            let is_dir = mode & 0o170000 == 0o040000;
            (p, (mode, u, g, if is_dir { 0 } else { size }))
        })
        .collect();
    assert_eq!(bom_norm, payload, "Bom and Payload differ");
    assert!(payload.values().all(|(_, u, g, _)| *u == 0 && *g == 0));
}

#[test]
fn our_inspect_verifies_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = write(dir.path(), "n.pkg", &build_default_pkg());
    let report = fleet_package::inspect(&pkg).expect("inspect");
    let names: Vec<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Distribution",
            "fleet-server.pkg/Bom",
            "fleet-server.pkg/Payload",
            "fleet-server.pkg/Scripts",
            "fleet-server.pkg/PackageInfo"
        ]
    );
    let dist = report.distribution.as_ref().expect("a Distribution");
    assert_eq!(dist.host_architectures, ["arm64", "x86_64"]);
    assert_eq!(dist.pkg_refs.len(), 1);
    assert!(report.signature.is_none());
    let component = fleet_package::inspect_bytes(&build_component_pkg()).unwrap();
    let names: Vec<&str> = component.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["Bom", "Payload", "Scripts", "PackageInfo"]);
    assert!(component.distribution.is_none());
    assert!(component.to_string().contains("Distribution: none"));
    let info = report.package_info.as_ref().unwrap();
    assert_eq!(info.identifier, "com.fleet.server.cluster");
    assert_eq!(info.number_of_files as usize, report.payload.len());
    assert_eq!(report.sealed_config.as_deref(), Some(&node().sealed[..]));
    assert!(report.payload.iter().all(|e| e.uid == 0 && e.gid == 0));
    assert!(
        report
            .payload
            .iter()
            .all(|e| e.mtime == fleet_package::FIXED_MTIME)
    );
    let shown = report.to_string();
    assert!(
        shown.contains("PackageInfo: identifier com.fleet.server.cluster"),
        "{shown}"
    );
    assert!(shown.contains("hostArchitectures arm64,x86_64"), "{shown}");
    assert!(shown.contains("Signature: none (unsigned)"), "{shown}");
    assert!(
        !format!("{report:?}").contains("fake sealed"),
        "Debug leaks the sealed blob"
    );
}
