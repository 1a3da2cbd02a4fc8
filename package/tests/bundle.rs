//! The Linux provision bundle: listing, modes, and provision.sh/uninstall.sh
//! run with stand-ins (the real daemon run is in the workspace tests/).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use fleet_package::{PkgRoot, Target, Template, build_bundle, default_bundle_name};

use crate::common::*;

fn linux_template() -> Template {
    Template::from_bytes(
        Target::LinuxX86_64,
        fake_elf(50_000, 1),
        fake_elf(5_000, 2),
        false,
    )
    .unwrap()
}

#[test]
fn tar_lists_the_bundle_with_modes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build_bundle(&linux_template(), &PkgRoot::embedded(), "node2", &node()).unwrap();
    assert_eq!(default_bundle_name("node2"), "node2_provision.tar.gz");
    let path = write(dir.path(), "node2_provision.tar.gz", &bytes);
    let out = run(Command::new(tool("tar"))
        .arg("-tzvf")
        .arg(&path)
        .arg("--numeric-owner"));
    let listing: BTreeMap<String, (String, String)> = stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].to_owned(), (f[0].to_owned(), f[1].to_owned()))
        })
        .collect();
    let expect = [
        ("node2_provision/", "drwxr-xr-x"),
        ("node2_provision/fleet-config.key", "-rw-------"),
        ("node2_provision/fleet-config.sealed", "-rw-------"),
        ("node2_provision/fleet-installer-stub", "-rwxr-xr-x"),
        ("node2_provision/fleet-server", "-rwxr-xr-x"),
        ("node2_provision/fleet-server.service", "-rw-r--r--"),
        ("node2_provision/provision.sh", "-rwxr-xr-x"),
        ("node2_provision/uninstall.sh", "-rwxr-xr-x"),
    ];
    assert_eq!(
        listing
            .iter()
            .map(|(k, (m, _))| (k.as_str(), m.as_str()))
            .collect::<Vec<_>>(),
        expect
    );
    assert!(
        listing.values().all(|(_, owner)| owner == "0/0"),
        "{listing:?}"
    );
}

#[test]
fn a_bundle_without_key_file_has_none() {
    let mut n = node();
    n.key = None;
    let bytes = build_bundle(&linux_template(), &PkgRoot::embedded(), "n", &n).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with("fleet-config.key")),
        "{names:?}"
    );
    assert_eq!(names.len(), 7);
}

const FAKE_STUB: &str = r#"#!/bin/sh
set -eu
[ "$1" = --target-root ] || exit 64
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$2/etc/fleet-server"
cp "$here/fleet-config.sealed" "$2/etc/fleet-server/config.yaml"
chmod 600 "$2/etc/fleet-server/config.yaml"
"#;

const FAKE_DAEMON: &str = r#"#!/bin/sh
# records its arguments, writes the pid file it is given, reports the outcome that the file
# $root/fake-outcome names (default: joined), and stays up
root="$(dirname "$0")/../../.."
for a in "$@"; do echo "$a"; done > "$root/daemon-args"
pidfile=""
while [ $# -gt 0 ]; do [ "$1" = --pid-file ] && pidfile="$2"; shift; done
sleep 300 </dev/null >/dev/null 2>&1 &
echo $! > "$pidfile"
outcome=$(cat "$root/fake-outcome" 2>/dev/null || echo "joined node2-fake01")
echo "$outcome" > "$root/var/lib/fleet-server/first-outcome"
"#;

#[test]
fn provision_then_uninstall_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let t = Template::from_bytes(
        Target::LinuxX86_64,
        FAKE_DAEMON.as_bytes().to_vec(),
        FAKE_STUB.as_bytes().to_vec(),
        true,
    )
    .unwrap();
    let bytes = build_bundle(&t, &PkgRoot::embedded(), "node2", &node()).unwrap();
    let path = write(dir.path(), "node2_provision.tar.gz", &bytes);
    run(Command::new(tool("tar"))
        .arg("-xzf")
        .arg(&path)
        .arg("-C")
        .arg(dir.path()));
    let root = dir.path().join("root");
    let out = run(Command::new("./provision.sh")
        .current_dir(dir.path().join("node2_provision"))
        .arg("--root")
        .arg(&root)
        .arg("--no-systemd"));
    assert!(
        stdout(&out).contains("fleet-server installed")
            && stdout(&out).contains("✅ Joined the cluster as node2-fake01"),
        "{}",
        stdout(&out)
    );

    let mode = |rel: &str| {
        std::fs::metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/local/bin/fleet-server"), 0o755);
    assert_eq!(mode("usr/local/lib/fleet-server/uninstall.sh"), 0o755);
    assert_eq!(mode("etc/fleet-server/config.yaml"), 0o600);
    assert_eq!(mode("var/lib/fleet-server"), 0o700);
    let args = std::fs::read_to_string(root.join("daemon-args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let r = root.display().to_string();
    assert_eq!(
        args,
        [
            "serve".to_owned(),
            "--config".into(),
            format!("{r}/etc/fleet-server/config.yaml"),
            "--daemonize".into(),
            // The node's own paths (state directory) are taken under the root.
            "--root".into(),
            r.clone(),
            "--pid-file".into(),
            format!("{r}/run/fleet-server.pid"),
            "--log-file".into(),
            format!("{r}/var/log/fleet-server.log"),
        ]
    );
    let pid = std::fs::read_to_string(root.join("run/fleet-server.pid")).unwrap();
    let pid = pid.trim().to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Uninstall keeps configuration and state, stops the daemon.
    let uninstall = root.join("usr/local/lib/fleet-server/uninstall.sh");
    run(Command::new(&uninstall).arg("--root").arg(&root));
    assert!(!root.join("usr/local/bin/fleet-server").exists());
    assert!(!root.join("run/fleet-server.pid").exists());
    assert!(root.join("etc/fleet-server/config.yaml").exists());
    assert!(root.join("var/lib/fleet-server").exists());
    // The stopped daemon is gone (or a zombie of the reaped shell).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "daemon {pid} still runs"
    );

    // --purge removes them too.
    let copy = dir.path().join("uninstall.sh");
    std::fs::copy(dir.path().join("node2_provision/uninstall.sh"), &copy).unwrap();
    run(Command::new(&copy).arg("--root").arg(&root).arg("--purge"));
    assert!(!root.join("etc/fleet-server").exists());
    assert!(!root.join("var/lib/fleet-server").exists());
}

#[test]
fn provision_refuses_an_incomplete_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build_bundle(&linux_template(), &PkgRoot::embedded(), "n", &node()).unwrap();
    let path = write(dir.path(), "n_provision.tar.gz", &bytes);
    run(Command::new(tool("tar"))
        .arg("-xzf")
        .arg(&path)
        .arg("-C")
        .arg(dir.path()));
    std::fs::remove_file(dir.path().join("n_provision/fleet-config.sealed")).unwrap();
    let out = crate::common::output_retrying(
        Command::new("./provision.sh")
            .current_dir(dir.path().join("n_provision"))
            .args(["--root", "r", "--no-systemd"]),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{out:?}"
    );
    assert!(!dir.path().join("n_provision/r/usr").exists());
}

/// provision.sh keeps the installer stub's exit code (10: no Ethernet adapter), and a refused
/// enrollment ends it with 40 and the reason.
#[test]
fn provision_reports_the_stubs_code_and_a_refusal() {
    const REFUSING_STUB: &str =
        "#!/bin/sh\necho '❌ ERROR: No Ethernet adapter found on this machine' >&2\nexit 10\n";
    let dir = tempfile::tempdir().unwrap();
    let unpack = |name: &str, stub: &str| {
        let t = Template::from_bytes(
            Target::LinuxX86_64,
            FAKE_DAEMON.as_bytes().to_vec(),
            stub.as_bytes().to_vec(),
            true,
        )
        .unwrap();
        let bytes = build_bundle(&t, &PkgRoot::embedded(), name, &node()).unwrap();
        let path = write(dir.path(), &format!("{name}_provision.tar.gz"), &bytes);
        run(Command::new(tool("tar"))
            .arg("-xzf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path()));
        dir.path().join(format!("{name}_provision"))
    };
    let provision = |bundle: &std::path::Path, root: &std::path::Path| {
        crate::common::output_retrying(
            Command::new("./provision.sh")
                .current_dir(bundle)
                .arg("--root")
                .arg(root)
                .arg("--no-systemd"),
        )
        .unwrap()
    };

    let root = dir.path().join("root-a");
    let out = provision(&unpack("a", REFUSING_STUB), &root);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No Ethernet adapter found"),
        "{out:?}"
    );
    assert!(!root.join("usr").exists(), "nothing installed");

    let root = dir.path().join("root-b");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("fake-outcome"), "refused package already used\n").unwrap();
    let out = provision(&unpack("b", FAKE_STUB), &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(40), "{out:?}");
    assert!(
        err.contains("❌ Enrollment refused: package already used"),
        "{err}"
    );
    if let Ok(pid) = std::fs::read_to_string(root.join("run/fleet-server.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
}

/// A warm build (the binaries' compressed data from the cache) gives the same bytes as a cold
/// one, and its contents are exactly the files, byte for byte (GNU tar and bsdtar extract it).
#[test]
fn cached_bundle_builds_give_the_same_bytes_and_files() {
    use fleet_package::{ArtifactCache, build_bundle_cached};
    let t = linux_template();
    let root = PkgRoot::embedded();
    let cache = ArtifactCache::new();
    let cold = build_bundle(&t, &root, "node2", &node()).unwrap();
    let first = build_bundle_cached(&t, &root, "node2", &node(), &cache).unwrap();
    assert_eq!(cache.bundle_len(), 1);
    let warm = build_bundle_cached(&t, &root, "node2", &node(), &cache).unwrap();
    assert_eq!(cache.bundle_len(), 1, "the same template is cached once");
    assert!(cold == first && first == warm, "cached builds differ");
    // Another node on the same template: only its own files differ.
    let other = build_bundle_cached(&t, &root, "node3", &node(), &cache).unwrap();
    assert_eq!(cache.bundle_len(), 1);
    for (tool_name, bytes, top) in [("tar", &warm, "node2"), ("bsdtar", &other, "node3")] {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "b.tar.gz", bytes);
        run(Command::new(tool(tool_name))
            .arg("-xzf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path()));
        let top = dir.path().join(format!("{top}_provision"));
        assert!(std::fs::read(top.join("fleet-server")).unwrap() == t.fleet_server());
        assert!(std::fs::read(top.join("fleet-installer-stub")).unwrap() == t.installer_stub());
        assert_eq!(
            std::fs::read(top.join("fleet-config.sealed")).unwrap(),
            node().sealed
        );
        assert_eq!(
            std::fs::read(top.join("provision.sh")).unwrap(),
            root.provision_sh
        );
    }
    // gzip -t checks the stream's CRC and length.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "b.tar.gz", &warm);
    run(Command::new(tool("gzip")).arg("-t").arg(&path));
}
