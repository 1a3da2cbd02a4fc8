//! Node packages end to end, with the real binaries: `fleet-server package build` on the
//! primary, the install emulated as macOS Installer runs it (bsdtar, gzip and cpio; the real
//! installer stub as `preinstall` with `$1..$4` in an empty environment, inside a network
//! namespace whose Ethernet is a veth with a documentation address; the real `postinstall`
//! with a `launchctl` stand-in), then the daemon started from the installed plist's
//! ProgramArguments, joining the primary's redis across the router. Also the refusals
//! (expired, tampered, no Ethernet, missing blob, virtual under `require`), passphrase mode,
//! the Linux provision bundle (`provision.sh --root --no-systemd`, stop, `uninstall.sh`), and
//! `package inspect` showing no secret.
//!
//! Sites (fleet_tests::netns): redis in `cloud` (203.0.113.10), the primary in `office`
//! (192.0.2.10), the new node in `datacenter` (198.51.100.10, `eth0` a veth).
//! Needs root; fails with a clear message otherwise. Missing tools (bsdtar, cpio, gzip, strip,
//! tar) fail the test and point to scripts/install-deps.sh.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleet_installer_stub::sealed::{FileKey, KdfParams, KeySource, SealOptions, SealedPayload};
use fleet_installer_stub::{EthernetPolicy, TargetLayout};
use fleet_tests::install::{Daemonized, LIMIT, Primary, REDIS_PASSWORD, assert_ok};
use fleet_tests::netns::Site;
use fleet_tests::pkginstall::{
    self, ExpandedPkg, LABEL, Launchctl, LaunchdJob, MAC_CONFIG, MAC_PASSPHRASE, PLIST,
    as_installer_runs, contains_bytes, mode, output_within, tree,
};
use fleet_tests::{TEST_API_KEY, bin_path, require_tool, wait_for};

const NODE: &str = "server-02";

const GUIDE_LINES: [&str; 3] = [
    "✅ Cluster mode ENABLED (node: server-02-",
    "✅ Registered node in cluster: server-02-",
    "✅ Fleet server started on 0.0.0.0:8768",
];

/// The stub's documented exit codes (installer-stub/README.md) used here.
const EXIT_NO_ACTIVE_ETHERNET: i32 = 11;
const EXIT_SEALED_MISSING: i32 = 20;
const EXIT_WRONG_KEY_OR_TAMPERED: i32 = 21;
const EXIT_EXPIRED: i32 = 22;

/// Asserts a refused install: the documented exit code, the message on stderr, and nothing
/// at all written under the target volume.
fn assert_refused(o: &Output, code: i32, message: &str, target: &Path, case: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{case}: exit code\nstdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(message), "{case}: `{message}` not in:\n{err}");
    assert!(
        !target.join(MAC_CONFIG).exists(),
        "{case}: a config was written"
    );
    assert_eq!(
        tree(target),
        Vec::<String>::new(),
        "{case}: the refused install wrote under the target volume"
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Scans a built pkg for the primary's secrets: the raw bytes, the XAR members as bsdtar
/// extracts them, and every file of the extracted Scripts (the sealed blob, the key).
fn assert_no_secret_in_pkg(x: &ExpandedPkg) {
    let secrets = [REDIS_PASSWORD, TEST_API_KEY];
    let mut files = vec![x.pkg.clone()];
    for dir in [&x.members, &x.scripts] {
        files.extend(
            std::fs::read_dir(dir)
                .expect("listing extracted files")
                .flatten()
                .map(|e| e.path()),
        );
    }
    for f in files {
        let bytes = std::fs::read(&f).expect("reading an extracted file");
        for s in secrets {
            assert!(
                !contains_bytes(&bytes, s.as_bytes()),
                "{} holds the secret `{s}` in clear",
                f.display()
            );
        }
    }
}

/// Item 6: `package inspect` shows the members, the PackageInfo identifier and the sealed
/// header, and no secret.
fn assert_inspect(pkg: &Path) {
    let o = output_within(
        Command::new(bin_path("fleet-server"))
            .args(["package", "inspect"])
            .arg(pkg),
        LIMIT,
    );
    assert_ok(&o, "fleet-server package inspect");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "Bom",
        "PackageInfo",
        "Payload",
        "Scripts",
        "PackageInfo: identifier com.fleet.server.cluster",
        "./Library/FleetServer/bin/fleet-server",
        "./preinstall",
        "./fleet-config.sealed",
        "Sealed configuration:",
        "key mode:",
        "ethernet:       allow-virtual",
        "target layout:  macos",
        "expires:",
    ] {
        assert!(
            text.contains(want),
            "`{want}` not in the inspect output:\n{text}"
        );
    }
    for secret in [REDIS_PASSWORD, TEST_API_KEY] {
        assert!(
            !text.contains(secret),
            "inspect printed the secret `{secret}`:\n{text}"
        );
    }
}

/// Items 2 and 6: build a pkg on the primary, install it as Installer does into a temporary
/// volume inside `datacenter`, start the daemon from the installed plist, and see the node
/// in the primary's `cluster nodes` and API; `package inspect` and the pkg's bytes show no
/// secret; the same pkg is refused under a policy that does not accept the veth.
#[test]
fn pkg_install_emulated_end_to_end_joins_the_cluster() {
    let started = Instant::now();
    let p = Primary::start();
    let pkg = p.root().join("FleetServerClusterNode.pkg");
    let out = p.build(
        &pkg,
        NODE,
        &["--format", "pkg", "--ethernet", "allow-virtual"],
    );
    assert!(out.contains("Development build"), "{out}");
    assert_inspect(&pkg);

    let x = ExpandedPkg::extract(&pkg, &p.root().join("x"));
    assert_no_secret_in_pkg(&x);
    assert_eq!(mode(&x.scripts.join("preinstall")) & 0o111, 0o111);

    // preinstall: the real stub, inside datacenter (eth0: veth, up, 198.51.100.10/24).
    let target = p.root().join("target-volume");
    std::fs::create_dir(&target).unwrap();
    let t = Instant::now();
    let o = p.installer_run(
        Site::Datacenter,
        &x.scripts.join("preinstall"),
        &pkg,
        &target,
    );
    let stub_time = t.elapsed();
    eprintln!("install: preinstall (installer stub, key-file mode) ran in {stub_time:?}");
    assert_ok(&o, "preinstall");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary
            .contains("Ethernet connection: eth0 (198.51.100.10, virtual), policy allow-virtual"),
        "{summary}"
    );
    assert!(summary.contains(&format!("node {NODE}")), "{summary}");
    for secret in [REDIS_PASSWORD, TEST_API_KEY] {
        assert!(
            !summary.contains(secret),
            "the stub printed a secret:\n{summary}"
        );
    }
    let config = target.join(MAC_CONFIG);
    assert_eq!(mode(&config), 0o600, "config.yaml mode after preinstall");
    assert_eq!(
        mode(config.parent().unwrap()),
        0o700,
        "config dir mode after preinstall"
    );
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains(NODE), "{yaml}");

    // Installer lays out the payload, then runs postinstall.
    x.install_payload(&target);
    let launchctl = Launchctl::new(p.root());
    let mut cmd = Command::new(x.scripts.join("postinstall"));
    as_installer_runs(&mut cmd, &pkg, &target);
    launchctl.boot_volume_env(&mut cmd);
    let o = output_within(&mut cmd, LIMIT);
    assert_ok(&o, "postinstall");
    let calls = launchctl.calls();
    let plist_path = target.join(PLIST);
    let bootout = calls
        .iter()
        .position(|c| c == &format!("bootout system/{LABEL}"))
        .unwrap_or_else(|| panic!("no bootout: {calls:?}"));
    let bootstrap = calls
        .iter()
        .position(|c| c == &format!("bootstrap system {}", plist_path.display()))
        .unwrap_or_else(|| panic!("no bootstrap of {}: {calls:?}", plist_path.display()));
    assert!(
        bootout < bootstrap,
        "bootout must come before bootstrap: {calls:?}"
    );
    assert_eq!(mode(&config), 0o600, "config.yaml mode after postinstall");
    assert_eq!(
        mode(config.parent().unwrap()),
        0o700,
        "config dir mode after postinstall"
    );
    assert_eq!(std::fs::metadata(&config).unwrap().uid(), 0);
    assert_eq!(mode(&plist_path), 0o644);

    // What launchd would run: ProgramArguments with the paths under the target volume.
    let job = LaunchdJob::read(&target);
    assert_eq!(
        job.args,
        [
            "/Library/FleetServer/bin/fleet-server",
            "serve",
            "--config",
            "/Library/FleetServer/config/config.yaml",
            "--log-file",
            "/var/log/fleet-server.log",
            "--pid-file",
            "/var/run/fleet-server.pid"
        ]
    );
    let spawned = Instant::now();
    let mut node = job.spawn(p.topo.command(Site::Datacenter, &job.argv[0]));
    let id = p.wait_joined(NODE);
    eprintln!(
        "install: installed node {id} listed by the primary {:?} after its start",
        spawned.elapsed()
    );
    wait_for(
        "the guide's three startup lines in the node's log",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = node.log();
            GUIDE_LINES.iter().all(|l| log.contains(l)).then_some(())
        },
    );
    assert!(
        node.log()
            .contains(&format!("(node: {id}, backend: redis)"))
    );
    // The node's state (its identity) landed under the target volume (--root).
    let node_id_file = target.join("Library/FleetServer/state/node_id");
    assert_eq!(
        std::fs::read_to_string(&node_id_file)
            .unwrap_or_else(|e| panic!("{}: {e}", node_id_file.display()))
            .trim(),
        id
    );

    assert_eq!(node.sigterm_and_wait(Duration::from_secs(10)), Some(0));
    p.wait_left(&id);

    // The same package under a policy that wants a physical NIC: a second build with
    // `--ethernet require`, whose stub refuses the veth, writing nothing.
    let pkg2 = p.root().join("require.pkg");
    p.build(
        &pkg2,
        "server-03",
        &["--format", "pkg", "--ethernet", "require"],
    );
    let x2 = ExpandedPkg::extract(&pkg2, &p.root().join("x2"));
    let target2 = p.root().join("target-require");
    std::fs::create_dir(&target2).unwrap();
    let o = p.installer_run(
        Site::Datacenter,
        &x2.scripts.join("preinstall"),
        &pkg2,
        &target2,
    );
    assert_refused(
        &o,
        EXIT_NO_ACTIVE_ETHERNET,
        "❌ ERROR: No active Ethernet connection detected",
        &target2,
        "veth under require",
    );
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("• eth0 - Status: active (virtual, not accepted)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("install: pkg end to end took {:?}", started.elapsed());
}

/// Seals a configuration with the installer-stub library into a copy of the Scripts
/// directory (blob and key beside the stub), with the given validity window.
fn seal_into(scripts: &Path, created_at: u64, not_after: u64) {
    let key = FileKey::generate().unwrap();
    let sealed = fleet_installer_stub::sealed::seal(
        &SealedPayload {
            node_name: NODE.into(),
            config_yaml: "cluster:\n  enabled: true\n".into(),
            files: Vec::new(),
        },
        &SealOptions {
            created_at,
            not_after,
            ethernet: EthernetPolicy::AllowVirtual,
            layout: TargetLayout::Macos,
            kdf: KdfParams::DEFAULT,
        },
        KeySource::KeyFile(&key),
    )
    .expect("sealing");
    std::fs::write(
        scripts.join(fleet_installer_stub::SEALED_FILE_NAME),
        &sealed.blob,
    )
    .unwrap();
    std::fs::write(
        scripts.join(fleet_installer_stub::KEY_FILE_NAME),
        sealed.key_file.expect("key-file mode"),
    )
    .unwrap();
}

/// Item 3: through the same emulated install, each refusal has the stub's documented exit
/// code and message and leaves nothing under the target volume: an expired package, a
/// tampered sealed blob, no active Ethernet (the interface down), a missing blob.
#[test]
fn pkg_install_refusals_leave_no_config() {
    let p = Primary::start();
    let pkg = p.root().join("FleetServerClusterNode.pkg");
    p.build(
        &pkg,
        NODE,
        &["--format", "pkg", "--ethernet", "allow-virtual"],
    );
    let x = ExpandedPkg::extract(&pkg, &p.root().join("x"));
    let sealed_name = fleet_installer_stub::SEALED_FILE_NAME;

    let case = |name: &str, prepare: &dyn Fn(&Path)| -> (PathBuf, PathBuf) {
        let scripts = x.copy_scripts(&p.root().join(format!("scripts-{name}")));
        prepare(&scripts);
        let target = p.root().join(format!("target-{name}"));
        std::fs::create_dir(&target).unwrap();
        (scripts, target)
    };

    // Expired: the stub has no clock to fake, so a blob sealed (by the library the builder
    // uses) with a validity window that ended an hour ago replaces the package's.
    let (scripts, target) = case("expired", &|s| seal_into(s, now() - 7200, now() - 3600));
    let o = p.installer_run(Site::Datacenter, &scripts.join("preinstall"), &pkg, &target);
    assert_refused(
        &o,
        EXIT_EXPIRED,
        "❌ ERROR: This installer package expired on",
        &target,
        "expired",
    );
    // Control: the same sealing, still valid, installs (so the refusal above is the expiry).
    let (scripts, target) = case("valid-resealed", &|s| {
        seal_into(s, now() - 60, now() + 3600)
    });
    let o = p.installer_run(Site::Datacenter, &scripts.join("preinstall"), &pkg, &target);
    assert_ok(&o, "preinstall with a freshly sealed blob");
    assert!(target.join(MAC_CONFIG).is_file());

    // Tampered: one byte of the package's own sealed body flipped.
    let (scripts, target) = case("tampered", &|s| {
        let f = s.join(sealed_name);
        let mut blob = std::fs::read(&f).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x01;
        std::fs::write(&f, blob).unwrap();
    });
    let o = p.installer_run(Site::Datacenter, &scripts.join("preinstall"), &pkg, &target);
    assert_refused(
        &o,
        EXIT_WRONG_KEY_OR_TAMPERED,
        "The package was modified or damaged",
        &target,
        "tampered",
    );
    // A forged expiry in the (authenticated) header is tampering too, not an expiry.
    let (scripts, target) = case("forged-expiry", &|s| {
        let f = s.join(sealed_name);
        let mut blob = std::fs::read(&f).unwrap();
        let header = fleet_installer_stub::sealed::Header::parse(&blob).unwrap();
        let at = blob
            .windows(8)
            .position(|w| w == header.not_after.to_be_bytes())
            .expect("not_after in the header");
        blob[at..at + 8].copy_from_slice(&(header.not_after + 86_400).to_be_bytes());
        std::fs::write(&f, blob).unwrap();
    });
    let o = p.installer_run(Site::Datacenter, &scripts.join("preinstall"), &pkg, &target);
    assert_refused(
        &o,
        EXIT_WRONG_KEY_OR_TAMPERED,
        "❌ ERROR: The sealed configuration cannot be opened",
        &target,
        "forged expiry",
    );

    // Missing sealed blob.
    let (scripts, target) = case("missing", &|s| {
        std::fs::remove_file(s.join(sealed_name)).unwrap()
    });
    let o = p.installer_run(Site::Datacenter, &scripts.join("preinstall"), &pkg, &target);
    assert_refused(
        &o,
        EXIT_SEALED_MISSING,
        "❌ ERROR: Sealed configuration not found",
        &target,
        "missing blob",
    );

    // No active Ethernet: office's only interface taken down (nothing else runs there but
    // the primary, which no longer matters to this test).
    p.topo
        .exec_ok(Site::Office, &["ip", "link", "set", "eth0", "down"]);
    let (scripts, target) = case("no-ethernet", &|_| {});
    let o = p.installer_run(Site::Office, &scripts.join("preinstall"), &pkg, &target);
    assert_refused(
        &o,
        EXIT_NO_ACTIVE_ETHERNET,
        "❌ ERROR: No active Ethernet connection detected",
        &target,
        "interface down",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("• eth0 - Status: inactive"), "{err}");
    assert!(
        err.contains("WiFi connections are NOT supported for Fleet Server installations."),
        "{err}"
    );
}

/// Item 4: a pkg sealed with an install passphrase: the wrong passphrase at the documented
/// path under `$3` is refused (and the file kept for a retry); the right one installs and
/// the file is removed.
#[test]
fn pkg_install_with_a_passphrase() {
    let p = Primary::start();
    let passphrase = "correct horse battery staple";
    let pass_file = p.root().join("passphrase.txt");
    std::fs::write(&pass_file, format!("{passphrase}\n")).unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pkg = p.root().join("FleetServerClusterNode.pkg");
    let out = p.build(
        &pkg,
        NODE,
        &[
            "--format",
            "pkg",
            "--ethernet",
            "allow-virtual",
            "--passphrase-file",
            pass_file.to_str().unwrap(),
        ],
    );
    assert!(
        !out.contains(passphrase),
        "the build printed the passphrase:\n{out}"
    );
    let x = ExpandedPkg::extract(&pkg, &p.root().join("x"));
    assert!(
        !x.scripts.join(fleet_installer_stub::KEY_FILE_NAME).exists(),
        "a passphrase package ships no key file"
    );
    assert_no_secret_in_pkg(&x);

    let put_passphrase = |target: &Path, text: &str| -> PathBuf {
        let f = target.join(MAC_PASSPHRASE);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), 0, "root-owned");
        f
    };

    // Wrong passphrase: refused with its code; no config; the passphrase file stays.
    let target = p.root().join("target-wrong");
    std::fs::create_dir(&target).unwrap();
    let f = put_passphrase(&target, "not the passphrase at all");
    let o = p.installer_run(
        Site::Datacenter,
        &x.scripts.join("preinstall"),
        &pkg,
        &target,
    );
    assert_eq!(
        o.status.code(),
        Some(EXIT_WRONG_KEY_OR_TAMPERED),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong key or passphrase"), "{err}");
    assert!(!err.contains(passphrase), "{err}");
    assert!(
        !target.join(MAC_CONFIG).exists(),
        "config written after a wrong passphrase"
    );
    assert!(
        f.exists(),
        "the passphrase file is kept after a failure, for a retry"
    );
    assert_eq!(
        tree(&target),
        [
            "Library",
            "Library/FleetServer",
            "Library/FleetServer/install.passphrase"
        ],
        "nothing but the admin's passphrase file"
    );

    // The right one: installs, and the passphrase file is gone.
    let target = p.root().join("target-right");
    std::fs::create_dir(&target).unwrap();
    let f = put_passphrase(&target, passphrase);
    let t = Instant::now();
    let o = p.installer_run(
        Site::Datacenter,
        &x.scripts.join("preinstall"),
        &pkg,
        &target,
    );
    eprintln!(
        "install: preinstall (installer stub, passphrase mode) ran in {:?}",
        t.elapsed()
    );
    assert_ok(&o, "preinstall with the right passphrase");
    assert!(
        !f.exists(),
        "the passphrase file must be removed after the install"
    );
    let config = target.join(MAC_CONFIG);
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(config.parent().unwrap()), 0o700);
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains(NODE), "{yaml}");
}

/// Item 5: the Linux provision bundle: extracted with tar, `provision.sh --root DIR
/// --no-systemd` inside `datacenter` runs the stub, installs and starts the daemon
/// (`--daemonize --root`), which joins; SIGTERM via its pid file and it leaves;
/// `uninstall.sh --root DIR` keeps the configuration, `--purge` removes it.
#[test]
fn bundle_provision_joins_leaves_and_uninstalls() {
    let p = Primary::start();
    let bundle = p.root().join("node2_provision.tar.gz");
    p.build(
        &bundle,
        "node2",
        &["--format", "bundle", "--ethernet", "allow-virtual"],
    );
    let unpack = p.root().join("unpacked");
    std::fs::create_dir(&unpack).unwrap();
    pkginstall::run_ok(
        Command::new(require_tool("tar"))
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpack),
    );
    let dir = unpack.join("node2_provision");
    let secrets = [REDIS_PASSWORD, TEST_API_KEY];
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        for s in secrets {
            assert!(
                !contains_bytes(&bytes, s.as_bytes()),
                "{} holds `{s}` in clear",
                e.path().display()
            );
        }
    }

    let root = p.root().join("node2-root");
    let daemon = Daemonized {
        pid_file: root.join("run/fleet-server.pid"),
        log: root.join("var/log/fleet-server.log"),
    };
    // A planted (or stale) pid file naming another process: provision.sh must not signal it.
    let mut bystander = Command::new(require_tool("sleep"))
        .arg("120")
        .spawn()
        .expect("a bystander process");
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::write(&daemon.pid_file, format!("{}\n", bystander.id())).unwrap();
    let mut cmd = p.topo.command(Site::Datacenter, dir.join("provision.sh"));
    cmd.arg("--root")
        .arg(&root)
        .arg("--no-systemd")
        .env_clear()
        .env("PATH", pkginstall::INSTALLER_PATH)
        .current_dir(&dir);
    let o = output_within(&mut cmd, LIMIT);
    let still_running = bystander
        .try_wait()
        .expect("the bystander's status")
        .is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert_ok(&o, "provision.sh --root --no-systemd");
    assert!(
        still_running,
        "provision.sh signalled the process a planted pid file named"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("which is not fleet-server: not signalling it"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Ethernet connection: eth0 (198.51.100.10, virtual)"),
        "{out}"
    );

    let config = root.join("etc/fleet-server/config.yaml");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(config.parent().unwrap()), 0o700);
    let id = p.wait_joined("node2");
    let pid = daemon.pid().expect("the pid file names the daemon");
    assert!(
        Daemonized::alive(pid),
        "pid {pid} is not a live fleet-server"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/fleet-server/node_id"))
            .expect("the node id under --root")
            .trim(),
        id
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(
        log.contains("✅ Registered node in cluster: node2-"),
        "{log}"
    );

    // Stop it as an admin would: SIGTERM to the pid in the pid file; it deregisters.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to the daemon");
    wait_for(
        "the daemonized node to exit after SIGTERM",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!Daemonized::alive(pid)).then_some(()),
    );
    p.wait_left(&id);

    // uninstall.sh --root: the binaries go, the configuration and state stay.
    let uninstall = |script: &Path, extra: &[&str]| -> String {
        let o = output_within(
            Command::new(script)
                .arg("--root")
                .arg(&root)
                .args(extra)
                .env_clear()
                .env("PATH", pkginstall::INSTALLER_PATH),
            LIMIT,
        );
        assert_ok(&o, "uninstall.sh");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = uninstall(&root.join("usr/local/lib/fleet-server/uninstall.sh"), &[]);
    assert!(out.contains("configuration and state kept"), "{out}");
    assert!(!root.join("usr/local/bin/fleet-server").exists());
    assert!(
        config.is_file(),
        "the configuration is kept without --purge"
    );
    assert!(root.join("var/lib/fleet-server/node_id").is_file());
    // The installed uninstaller removed itself with the rest: the bundle's copy purges.
    let out = uninstall(&dir.join("uninstall.sh"), &["--purge"]);
    assert!(out.contains("purged"), "{out}");
    assert!(!config.exists(), "--purge removes the configuration");
    assert!(!root.join("etc/fleet-server").exists());
    assert!(!root.join("var/lib/fleet-server").exists());
}
