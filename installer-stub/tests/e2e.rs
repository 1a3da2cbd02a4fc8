//! The stub binary end to end against temporary target roots: good installs, and every refusal leaving the root untouched.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use fleet_installer_stub::sealed::HEADER_LEN;
use fleet_installer_stub::{EthernetPolicy, FileKey, KeySource, TargetLayout, seal};

use crate::common::{
    Package, SECRET, assert_exit, mode, now, opts, payload, run_in, run_stub, snapshot, stderr,
    stdout,
};
use crate::sysfs::{Nic, add};

/// Runs the stub on `pkg` into a fresh root and checks it failed with `code`, printed
/// `message`, and wrote nothing.
fn assert_refused(pkg: &Package, extra: &[&OsStr], code: i32, message: &str) -> String {
    let root = tempfile::tempdir().unwrap();
    let before = snapshot(root.path());
    let mut args = pkg.args();
    args.extend_from_slice(extra);
    let o = run_in(root.path(), &args);
    assert_exit(&o, code);
    let err = stderr(&o);
    assert!(err.contains(message), "expected {message:?} in\n{err}");
    assert_eq!(
        snapshot(root.path()),
        before,
        "the stub wrote under the target root"
    );
    err
}

#[test]
fn good_package_installs_macos_layout() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let root = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = run_in(root.path(), &pkg.args());
    eprintln!("stub run (test profile): {:?}", t.elapsed());
    assert_exit(&o, 0);
    let cfg = root.path().join("Library/FleetServer/config/config.yaml");
    assert_eq!(fs::read_to_string(&cfg).unwrap(), payload().config_yaml);
    assert_eq!(mode(&cfg), 0o600);
    assert_eq!(mode(cfg.parent().unwrap()), 0o700);
    assert_eq!(mode(&root.path().join("Library/FleetServer/state")), 0o700);
    let out = stdout(&o);
    assert!(out.contains("node server-02"), "{out}");
    assert!(out.contains(&pkg.blob.header.package_id_short()), "{out}");
    assert!(out.contains("Ethernet check skipped"), "{out}");
    assert!(out.contains(&cfg.display().to_string()), "{out}");
}

#[test]
fn installer_arguments_and_files_beside_the_stub() {
    // As Installer runs it: $1..$4, the blob and key next to the binary, no flags.
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let stub = pkg.dir.path().join("preinstall");
    fs::copy(crate::common::STUB, &stub).unwrap();
    let root = tempfile::tempdir().unwrap();
    let o = crate::common::output_retrying(
        std::process::Command::new(&stub)
            .arg(pkg.dir.path().join("Node.pkg"))
            .arg("/")
            .arg(root.path())
            .arg("/")
            .env_clear()
            .current_dir("/"), // Installer's cwd is unknown: the stub must not depend on it.
    )
    .unwrap();
    assert_exit(&o, 0);
    assert!(
        root.path()
            .join("Library/FleetServer/config/config.yaml")
            .is_file()
    );
}

#[test]
fn passphrase_package_installs_linux_layout_and_removes_the_passphrase() {
    let pkg = Package::passphrase(
        opts(EthernetPolicy::Skip, TargetLayout::Linux),
        "open sesame",
    );
    let root = tempfile::tempdir().unwrap();
    let pass = TargetLayout::Linux.passphrase_file(root.path());
    fs::create_dir_all(pass.parent().unwrap()).unwrap();
    fs::write(&pass, "open sesame\n").unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    let o = run_in(
        root.path(),
        &[OsStr::new("--sealed"), pkg.sealed.as_os_str()],
    );
    assert_exit(&o, 0);
    let cfg = root.path().join("etc/fleet-server/config.yaml");
    assert_eq!(fs::read_to_string(&cfg).unwrap(), payload().config_yaml);
    assert_eq!(mode(&cfg), 0o600);
    assert_eq!(mode(&root.path().join("var/lib/fleet-server")), 0o700);
    assert!(!pass.exists(), "the passphrase file was not removed");
}

/// Runs the stub on `pkg` with a passphrase file holding `content` in mode `mode`; returns the
/// target root, the run's output and a snapshot of the root taken before the run.
fn with_passphrase_file(
    pkg: &Package,
    content: &str,
    mode: u32,
) -> (
    tempfile::TempDir,
    std::process::Output,
    crate::common::Snapshot,
) {
    let root = tempfile::tempdir().unwrap();
    let pass = root.path().join("pass");
    fs::write(&pass, content).unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(mode)).unwrap();
    let before = snapshot(root.path());
    let o = run_in(
        root.path(),
        &[
            OsStr::new("--sealed"),
            pkg.sealed.as_os_str(),
            OsStr::new("--passphrase-file"),
            pass.as_os_str(),
        ],
    );
    (root, o, before)
}

#[test]
fn passphrase_file_readable_by_others_is_refused() {
    let pkg = Package::passphrase(opts(EthernetPolicy::Skip, TargetLayout::Linux), "pw");
    let (root, o, before) = with_passphrase_file(&pkg, "pw", 0o644);
    assert_exit(&o, 24);
    assert!(
        stderr(&o).contains("readable by group or others"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn missing_passphrase_file() {
    let pkg = Package::passphrase(opts(EthernetPolicy::Skip, TargetLayout::Macos), "pw");
    assert_refused(
        &pkg,
        &[],
        24,
        "Library/FleetServer/install.passphrase: not found",
    );
}

#[test]
fn wrong_passphrase() {
    let pkg = Package::passphrase(opts(EthernetPolicy::Skip, TargetLayout::Linux), "right");
    let (root, o, before) = with_passphrase_file(&pkg, "wrong", 0o600);
    assert_exit(&o, 21);
    assert!(stderr(&o).contains("wrong key or passphrase"));
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn existing_node_identity_is_kept() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("Library/FleetServer/state");
    fs::create_dir_all(&state).unwrap();
    fs::write(state.join("node_id"), "server-02-xyz789\n").unwrap();
    let o = run_in(root.path(), &pkg.args());
    assert_exit(&o, 0);
    assert_eq!(
        fs::read_to_string(state.join("node_id")).unwrap(),
        "server-02-xyz789\n"
    );
    assert!(stdout(&o).contains("existing node identity kept"));
}

#[test]
fn check_only_writes_nothing() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let root = tempfile::tempdir().unwrap();
    let mut args = pkg.args();
    args.push(OsStr::new("--check-only"));
    let o = run_in(root.path(), &args);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("nothing written"));
    assert!(snapshot(root.path()).is_empty());
}

#[test]
fn expired_package() {
    let mut o = opts(EthernetPolicy::Skip, TargetLayout::Macos);
    o.created_at = now() - 9 * 86_400;
    o.not_after = now() - 2 * 86_400;
    let pkg = Package::key_file(o);
    assert_refused(
        &pkg,
        &[],
        22,
        "❌ ERROR: This installer package expired on ",
    );
}

#[test]
fn tampered_package() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let mut b = pkg.blob.blob.clone();
    b[HEADER_LEN + 3] ^= 0x20;
    fs::write(&pkg.sealed, &b).unwrap();
    assert_refused(&pkg, &[], 21, "was modified or damaged");
    // Forging the header's policy (require -> skip) gets past the Ethernet check but
    // not the authentication, and nothing is written.
    let pkg = Package::key_file(opts(EthernetPolicy::Require, TargetLayout::Macos));
    let mut b = pkg.blob.blob.clone();
    b[11] = 3;
    fs::write(&pkg.sealed, &b).unwrap();
    assert_refused(&pkg, &[], 21, "was modified or damaged");
}

#[test]
fn wrong_key_file() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    fs::write(&pkg.key, FileKey::generate().unwrap().as_bytes()).unwrap();
    assert_refused(&pkg, &[], 21, "wrong key or passphrase");
}

#[test]
fn missing_blob_and_missing_key() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    fs::remove_file(&pkg.key).unwrap();
    assert_refused(&pkg, &[], 20, "❌ ERROR: Key file not found: ");
    fs::remove_file(&pkg.sealed).unwrap();
    assert_refused(&pkg, &[], 20, "❌ ERROR: Sealed configuration not found: ");
}

#[test]
fn future_format_version() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let mut b = pkg.blob.blob.clone();
    b[9] = 2;
    fs::write(&pkg.sealed, &b).unwrap();
    assert_refused(&pkg, &[], 23, "format version 2");
}

fn sysfs_arg(dir: &Path) -> [&OsStr; 2] {
    [OsStr::new("--sysfs-root"), dir.as_os_str()]
}

#[test]
fn no_ethernet_adapter() {
    let sys = tempfile::tempdir().unwrap();
    add(
        sys.path(),
        &Nic {
            name: "wlan0",
            link_type: 1,
            driver: Some("iwlwifi"),
            wireless_dir: true,
            carrier: Some(true),
            ..Default::default()
        },
    );
    add(
        sys.path(),
        &Nic {
            name: "lo",
            link_type: 772,
            carrier: Some(true),
            ..Default::default()
        },
    );
    let pkg = Package::key_file(opts(EthernetPolicy::Require, TargetLayout::Macos));
    let err = assert_refused(&pkg, &sysfs_arg(sys.path()), 10, "");
    assert_eq!(
        err.trim_end(),
        "❌ ERROR: No Ethernet adapter found on this machine\n\nFleet Server requires a wired Ethernet connection for:\n  • Reliable 24/7 operation\n  • Consistent network performance\n  • Server-grade stability\n\nPlease connect an Ethernet cable and try again."
    );
}

#[test]
fn no_active_ethernet() {
    let sys = tempfile::tempdir().unwrap();
    add(
        sys.path(),
        &Nic {
            name: "en0",
            link_type: 1,
            driver: Some("e1000e"),
            carrier: Some(false),
            ..Default::default()
        },
    );
    add(
        sys.path(),
        &Nic {
            name: "wlan0",
            link_type: 1,
            driver: Some("iwlwifi"),
            phy80211: true,
            carrier: Some(true),
            ..Default::default()
        },
    );
    let pkg = Package::key_file(opts(EthernetPolicy::Require, TargetLayout::Macos));
    let err = assert_refused(&pkg, &sysfs_arg(sys.path()), 11, "");
    assert_eq!(
        err.trim_end(),
        "❌ ERROR: No active Ethernet connection detected\n\nAvailable Ethernet adapters found, but none are connected:\n  • en0 - Status: inactive\n\nPlease connect an Ethernet cable and try again.\n\nWiFi connections are NOT supported for Fleet Server installations."
    );
}

#[test]
fn cannot_write() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let root = tempfile::tempdir().unwrap();
    // A file where the config directory's parent must be.
    fs::create_dir_all(root.path().join("Library")).unwrap();
    fs::write(root.path().join("Library/FleetServer"), "not a dir").unwrap();
    let before = snapshot(root.path());
    let o = run_in(root.path(), &pkg.args());
    assert_exit(&o, 30);
    assert!(stderr(&o).contains("Cannot write the node configuration"));
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn usage_errors() {
    let o = run_stub::<&str>(&[]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("Usage:"));
    let o = run_stub(&["--target-root", "/nonexistent-fleet-root", "--sealed", "/x"]);
    assert_exit(&o, 2);
    assert_exit(&run_stub(&["--help"]), 0);
    assert_exit(&run_stub(&["--version"]), 0);
}

#[test]
fn key_file_blob_with_wrong_mode_flag() {
    // A passphrase-mode package given only a key file still needs its passphrase.
    let k = FileKey::generate().unwrap();
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Skip, TargetLayout::Linux),
        KeySource::Passphrase(b"pw"),
    )
    .unwrap();
    let pkg = Package::write(s);
    fs::write(&pkg.key, k.as_bytes()).unwrap();
    let err = assert_refused(&pkg, &[], 24, "install.passphrase");
    assert!(!err.contains(SECRET));
}

/// Item 7 of issue 14: every read of a sealed blob, key or passphrase is capped, so a device
/// or a huge file is refused at once with the size error and the documented exit code.
#[test]
fn endless_or_huge_inputs_are_refused_quickly() {
    let pkg = Package::key_file(opts(EthernetPolicy::Skip, TargetLayout::Macos));
    let zero = OsStr::new("/dev/zero");
    let root = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = run_in(
        root.path(),
        &[
            OsStr::new("--sealed"),
            zero,
            OsStr::new("--key"),
            pkg.key.as_os_str(),
        ],
    );
    assert_exit(&o, 20);
    let err = stderr(&o);
    assert!(
        err.contains("Cannot read the sealed configuration"),
        "{err}"
    );
    assert!(err.contains("larger than"), "{err}");
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());

    let o = run_in(
        root.path(),
        &[
            OsStr::new("--sealed"),
            pkg.sealed.as_os_str(),
            OsStr::new("--key"),
            zero,
        ],
    );
    assert_exit(&o, 20);
    assert!(
        stderr(&o).contains("larger than 4096 bytes"),
        "{}",
        stderr(&o)
    );

    let pkg = Package::passphrase(opts(EthernetPolicy::Skip, TargetLayout::Linux), "pw");
    let (root, o, before) = with_passphrase_file(&pkg, &"p".repeat(5000), 0o600);
    assert_exit(&o, 24);
    assert!(
        stderr(&o).contains("larger than 4096 bytes"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(root.path()), before);
}
