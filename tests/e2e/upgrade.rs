//! Upgrades in place, end to end, with the real binaries: a node installed from a pkg (the
//! emulated Installer of `install.rs`, with a `launchctl` stand-in that really stops and
//! starts the daemon as launchd would) and one provisioned from a bundle, both running an
//! "old" build (this build's daemon with its version slot restamped to 0.0.1: no rebuilding)
//! and joined to the primary's Redis, take `package build --upgrade`; they keep their node
//! id, configuration and state, and report the new version (health, status, the primary's
//! member list, `cluster nodes` no longer marking them older). The upgrade packages carry no
//! configuration, token or key (bsdtar and tar listings, and a scan for the secrets), and on a
//! fresh root they refuse with exit code 50 and install nothing.
//!
//! Sites as in `install.rs`: Redis in `cloud`, the primary in `office`, the node in
//! `datacenter`. Needs root; missing tools fail the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fleet_tests::netns::{Site, Topology};
use fleet_tests::pkginstall::{
    self, ExpandedPkg, LABEL, LaunchdJob, MAC_CONFIG, PLIST, as_installer_runs, contains_bytes,
    install_executable, output_within, tree,
};
use fleet_tests::{TEST_API_KEY, bin_path, require_tool, wait_for};

use fleet_tests::install::{Daemonized, LIMIT, Primary, REDIS_PASSWORD, assert_ok};
use fleet_tests::output_text as text;

/// The version the "old" build reports.
const OLD: &str = "0.0.1";
/// This build's version, which the upgrade packages install.
const NEW: &str = env!("CARGO_PKG_VERSION");
/// provision.sh's and the stub's code for an upgrade package on a machine that is not a node.
const EXIT_NOT_A_NODE: i32 = 50;
/// ... and for one that is not newer than the installed daemon.
const EXIT_NOT_NEWER: i32 = 51;

/// `fleet-server package build` on the primary (in `office`) with `template` and `args`.
fn build(p: &Primary, template: &Path, out: &Path, args: &[&str]) -> String {
    let mut cmd = p.topo.command(Site::Office, bin_path("fleet-server"));
    cmd.args(["package", "build", "--config"])
        .arg(p.primary.config_path())
        .arg("--template-dir")
        .arg(template)
        .args(["--allow-foreign-binaries", "--output"])
        .arg(out)
        .args(args);
    let o = output_within(&mut cmd, LIMIT);
    assert_ok(&o, "fleet-server package build");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `name`'s row of the `cluster nodes` table, read on the primary.
fn nodes_row(p: &Primary, name: &str) -> String {
    let mut cmd = p.topo.command(Site::Office, bin_path("fleet-server"));
    cmd.args(["cluster", "nodes", "--config"])
        .arg(p.primary.config_path());
    let o = output_within(&mut cmd, LIMIT);
    assert_ok(&o, "fleet-server cluster nodes");
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
        .trim_end()
        .to_string()
}

/// The version the primary's member list holds for `id`.
fn listed_version(p: &Primary, id: &str) -> Option<String> {
    let (_, v) = p
        .primary
        .api_get("/api/fleet/cluster/nodes", Some(TEST_API_KEY))
        .ok()?;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["version"].as_str().map(str::to_owned))
}

/// The node in `datacenter` (port 8768): its status JSON, asked inside `datacenter` (the
/// topology drops office↔datacenter).
fn node_json(p: &Primary, path: &str) -> serde_json::Value {
    let r = p
        .topo
        .get_json(
            Site::Datacenter,
            Topology::server_addr(Site::Datacenter),
            path,
            Some(TEST_API_KEY),
        )
        .unwrap_or_else(|e| panic!("GET {path} on the node: {e}"));
    r.json()
}

/// Waits until the node answers health 200 as `id` with `version`, and checks status and the
/// primary's list and table say the same.
fn assert_reports(p: &Primary, name: &str, id: &str, version: &str) {
    let health = wait_for(
        &format!("{id} to answer health 200 with version {version}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let h = p
                .topo
                .get_json(
                    Site::Datacenter,
                    Topology::server_addr(Site::Datacenter),
                    "/api/fleet/cluster/health",
                    None,
                )
                .ok()?;
            let j = h.json();
            (h.status == 200 && j["version"] == version).then_some(j)
        },
    );
    assert_eq!(health["node_id"], id, "{health}");
    let status = node_json(p, "/api/fleet/cluster/status");
    assert_eq!(status["version"], version, "{status}");
    assert_eq!(status["node_id"], id, "{status}");
    wait_for(
        &format!("the primary to list {id} at {version}"),
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (listed_version(p, id).as_deref() == Some(version)).then_some(()),
    );
    let row = nodes_row(p, name);
    if version == NEW {
        assert!(row.ends_with(NEW) && !row.contains("older"), "{row}");
    } else {
        assert!(row.ends_with(&format!("{version} (older)")), "{row}");
    }
}

/// What an upgrade must leave as it was: the configuration's bytes, the node id, and a file
/// of the test's own in the state directory.
struct Kept {
    config: PathBuf,
    config_bytes: Vec<u8>,
    node_id_file: PathBuf,
    node_id: String,
    marker: PathBuf,
}

impl Kept {
    fn take(config: PathBuf, state: &Path, id: &str) -> Kept {
        let node_id_file = state.join("node_id");
        let node_id = std::fs::read_to_string(&node_id_file).expect("node_id");
        assert_eq!(node_id.trim(), id);
        let marker = state.join("kept-by-the-upgrade");
        std::fs::write(&marker, "state survives").unwrap();
        Kept {
            config_bytes: std::fs::read(&config).expect("the node's configuration"),
            config,
            node_id_file,
            node_id,
            marker,
        }
    }

    fn check(&self) {
        assert_eq!(
            std::fs::read(&self.config).expect("configuration after the upgrade"),
            self.config_bytes,
            "the upgrade changed {}",
            self.config.display()
        );
        assert_eq!(
            std::fs::read_to_string(&self.node_id_file).expect("node_id after the upgrade"),
            self.node_id
        );
        assert_eq!(
            std::fs::read_to_string(&self.marker).expect("the state directory's files"),
            "state survives"
        );
    }
}

/// No file named like configuration or key material, and none of the cluster's secrets in
/// any byte of `files`.
fn assert_no_secrets(names: &[String], files: &[PathBuf]) {
    for n in names {
        let base = n.trim_end_matches('/').rsplit('/').next().unwrap_or(n);
        assert!(
            !(base == "config.yaml"
                || base.starts_with("fleet-config.")
                || base.ends_with(".key")
                || base.ends_with(".pem")
                || base.ends_with(".crt")
                || base.ends_with(".p12")
                || base.contains("passphrase")),
            "an upgrade package holds {n}"
        );
    }
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for s in [REDIS_PASSWORD, TEST_API_KEY] {
            assert!(
                !contains_bytes(&bytes, s.as_bytes()),
                "{} holds the secret `{s}`",
                f.display()
            );
        }
    }
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .map(|p| dir.join(p))
        .filter(|p| p.is_file())
        .collect()
}

/// A `launchctl` stand-in that does what launchd does with the job, here: `bootout` stops
/// the daemon its pid file names (SIGTERM, bounded wait), `bootstrap` starts it from the
/// installed plist's ProgramArguments under the target volume (`--root`, detached with
/// `--daemonize` so the stand-in returns as launchctl does). Runs inside the namespace of
/// whoever calls it (the postinstall in `datacenter`).
fn real_launchctl(dir: &Path, target: &Path) -> (PathBuf, PathBuf) {
    let job = LaunchdJob::read(target);
    let calls = dir.join("launchctl-calls");
    let pid_file = target.join("var/run/fleet-server.pid");
    let quote = |p: &Path| format!("'{}'", p.display());
    let argv: Vec<String> = job.argv.iter().map(|a| quote(a)).collect();
    let script = format!(
        r#"#!/bin/sh
echo "$*" >> {calls}
case "$1" in
    bootout)
        pid=$(cat {pid} 2>/dev/null || true)
        if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        fi
        ;;
    bootstrap)
        mkdir -p {run} {logdir}
        {argv} --daemonize
        ;;
esac
exit 0
"#,
        calls = quote(&calls),
        pid = quote(&pid_file),
        run = quote(&target.join("var/run")),
        logdir = quote(job.log.parent().expect("log directory")),
        argv = argv.join(" "),
    );
    let path = dir.join("launchctl");
    install_executable(script.as_bytes(), &path);
    (path, calls)
}

/// Runs a pkg script as Installer would, inside `datacenter`, with the real launchctl
/// stand-in and a bounded wait for the daemon's first outcome.
fn run_script(p: &Primary, script: &Path, pkg: &Path, target: &Path, launchctl: &Path) -> Output {
    let mut cmd = p.topo.command(Site::Datacenter, script);
    as_installer_runs(&mut cmd, pkg, target);
    cmd.env("LAUNCHCTL", launchctl)
        .env("FLEET_TEST_TREAT_AS_BOOT_VOLUME", "1")
        .env("FLEET_TEST_OUTCOME_WAIT", "30");
    output_within(&mut cmd, LIMIT)
}

/// A pkg node running 0.0.1 takes the upgrade pkg: preinstall (the stub) checks it is a
/// node, Installer lays the payload, postinstall restarts the daemon through launchctl; the
/// node keeps its id, configuration and state and reports the new version. The same package
/// is refused on a fresh volume (50, nothing written) and, once installed, as not newer (51).
#[test]
fn pkg_node_upgrades_in_place() {
    let p = Primary::start();
    let old_template =
        pkginstall::restamped_template(&p.template, &p.root().join("old-template"), OLD);
    const NAME: &str = "server-07";

    // The old node: its package says 0.0.1 (the version of the daemon it packs).
    let pkg = p.root().join("FleetServerClusterNode.pkg");
    build(
        &p,
        &old_template,
        &pkg,
        &[
            "--node-name",
            NAME,
            "--format",
            "pkg",
            "--ethernet",
            "allow-virtual",
        ],
    );
    let inspect = |pkg: &Path| -> String {
        let o = output_within(
            Command::new(bin_path("fleet-server"))
                .args(["package", "inspect"])
                .arg(pkg),
            LIMIT,
        );
        assert_ok(&o, "package inspect");
        text(&o)
    };
    let report = inspect(&pkg);
    assert!(
        report.contains(&format!("PackageInfo: identifier {LABEL} version {OLD} ")),
        "{report}"
    );
    let x = ExpandedPkg::extract(&pkg, &p.root().join("x-old"));
    let target = p.root().join("target-volume");
    std::fs::create_dir(&target).unwrap();
    let o = p.installer_run(
        Site::Datacenter,
        &x.scripts.join("preinstall"),
        &pkg,
        &target,
    );
    assert_ok(&o, "preinstall of the old package");
    x.install_payload(&target);
    let (launchctl, calls) = real_launchctl(p.root(), &target);
    let daemon = Daemonized {
        pid_file: target.join("var/run/fleet-server.pid"),
        log: target.join("var/log/fleet-server.log"),
    };
    let o = run_script(
        &p,
        &x.scripts.join("postinstall"),
        &pkg,
        &target,
        &launchctl,
    );
    assert_ok(&o, "postinstall of the old package");
    assert!(
        text(&o).contains(&format!("✅ Joined the cluster as {NAME}-")),
        "{}",
        text(&o)
    );
    let id = p.wait_joined(NAME);
    assert_reports(&p, NAME, &id, OLD);
    let old_pid = daemon.pid().expect("the old daemon's pid file");
    let kept = Kept::take(
        target.join(MAC_CONFIG),
        &target.join("Library/FleetServer/state"),
        &id,
    );

    // The upgrade package: the binaries, no configuration, token or key.
    let up = p.root().join("upgrade.pkg");
    let out = build(&p, &p.template, &up, &["--upgrade", "--format", "pkg"]);
    assert!(out.contains(&format!("fleet-server {NEW}")), "{out}");
    assert!(out.contains("exit code 50"), "{out}");
    let report = inspect(&up);
    assert!(
        report.contains(&format!("PackageInfo: identifier {LABEL} version {NEW} ")),
        "{report}"
    );
    let listing = pkginstall::run_ok(Command::new(require_tool("bsdtar")).arg("-tf").arg(&up));
    let members = lines(&listing);
    let ux = ExpandedPkg::extract(&up, &p.root().join("x-up"));
    let mut scripts = tree(&ux.scripts);
    scripts.sort();
    assert_eq!(scripts, ["fleet-upgrade", "postinstall", "preinstall"]);
    let payload = p.root().join("payload-up");
    ux.install_payload(&payload);
    let payload_names = tree(&payload);
    assert!(
        payload_names.contains(&"Library/FleetServer/bin/fleet-server".to_string()),
        "{payload_names:?}"
    );
    let mut names = members.clone();
    names.extend(scripts.iter().cloned());
    names.extend(payload_names.iter().cloned());
    let mut files = vec![up.clone()];
    files.extend(files_under(&ux.expanded));
    files.extend(files_under(&ux.scripts));
    files.extend(files_under(&payload));
    assert_no_secrets(&names, &files);
    let manifest = std::fs::read_to_string(ux.scripts.join("fleet-upgrade")).unwrap();
    assert!(manifest.contains(&format!("version {NEW}\n")), "{manifest}");

    // On a fresh volume (not a node): refused with 50, nothing written.
    let fresh = p.root().join("fresh-volume");
    std::fs::create_dir(&fresh).unwrap();
    let o = p.installer_run(
        Site::Datacenter,
        &ux.scripts.join("preinstall"),
        &up,
        &fresh,
    );
    assert_eq!(o.status.code(), Some(EXIT_NOT_A_NODE), "{}", text(&o));
    assert!(
        text(&o).contains("is not a Fleet Server cluster node"),
        "{}",
        text(&o)
    );
    assert_eq!(tree(&fresh), Vec::<String>::new());

    // Over the node: preinstall passes (and writes nothing), the payload, postinstall.
    let o = p.installer_run(
        Site::Datacenter,
        &ux.scripts.join("preinstall"),
        &up,
        &target,
    );
    assert_ok(&o, "preinstall of the upgrade");
    assert!(
        text(&o).contains(&format!("Upgrade check: node {id}"))
            && text(&o).contains(&format!("{OLD} → {NEW}")),
        "{}",
        text(&o)
    );
    kept.check();
    ux.install_payload(&target);
    let before = std::fs::read_to_string(&calls).unwrap_or_default();
    let o = run_script(
        &p,
        &ux.scripts.join("postinstall"),
        &up,
        &target,
        &launchctl,
    );
    assert_ok(&o, "postinstall of the upgrade");
    assert!(
        text(&o).contains(&format!("✅ Upgraded {id} to {NEW}")),
        "{}",
        text(&o)
    );
    let after = std::fs::read_to_string(&calls).unwrap_or_default();
    let new_calls: Vec<&str> = after[before.len()..].lines().collect();
    let plist = target.join(PLIST);
    assert_eq!(
        new_calls
            .iter()
            .filter(|c| c.starts_with("bootout"))
            .count(),
        1,
        "{new_calls:?}"
    );
    assert!(
        new_calls.contains(&format!("bootstrap system {}", plist.display()).as_str()),
        "{new_calls:?}"
    );
    assert!(!Daemonized::alive(old_pid), "the old daemon still runs");
    let new_pid = daemon.pid().expect("the new daemon's pid file");
    assert_ne!(new_pid, old_pid);
    assert!(Daemonized::alive(new_pid));
    kept.check();
    assert_reports(&p, NAME, &id, NEW);
    let o = pkginstall::run_ok(
        Command::new(target.join("Library/FleetServer/bin/fleet-server")).arg("--version"),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("fleet-server {NEW}")
    );
    // The node template builds with the new binaries too.
    assert_eq!(
        std::fs::read(target.join("Library/FleetServer/node-template/macos/fleet-installer-stub"))
            .unwrap(),
        std::fs::read(ux.scripts.join("preinstall")).unwrap()
    );

    // The same package again: the node runs that version already.
    let o = p.installer_run(
        Site::Datacenter,
        &ux.scripts.join("preinstall"),
        &up,
        &target,
    );
    assert_eq!(o.status.code(), Some(EXIT_NOT_NEWER), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("already runs fleet-server {NEW}")),
        "{}",
        text(&o)
    );
    drop(daemon);
}

/// A bundle node running 0.0.1 takes the upgrade bundle: `provision.sh` (the same command)
/// checks it is a node, stops the daemon its pid file names, swaps the binaries by rename,
/// starts it again on the port it had, and prints "✅ Upgraded <id> to <version>". The
/// upgrade bundle on a fresh root exits 50 and writes nothing.
#[test]
fn bundle_node_upgrades_in_place() {
    let p = Primary::start();
    let old_template =
        pkginstall::restamped_template(&p.template, &p.root().join("old-template"), OLD);
    const NAME: &str = "node7";
    let tar = require_tool("tar");
    let extract = |bundle: &Path, into: &Path| {
        std::fs::create_dir_all(into).unwrap();
        pkginstall::run_ok(
            Command::new(&tar)
                .arg("-xzf")
                .arg(bundle)
                .arg("-C")
                .arg(into),
        );
    };
    let provision = |script: &Path, root: &Path| -> Output {
        let mut cmd = p.topo.command(Site::Datacenter, script);
        cmd.arg("--root")
            .arg(root)
            .arg("--no-systemd")
            .env_clear()
            .env("PATH", pkginstall::INSTALLER_PATH)
            .current_dir(script.parent().unwrap());
        output_within(&mut cmd, LIMIT)
    };

    let bundle = p.root().join("node7_provision.tar.gz");
    build(
        &p,
        &old_template,
        &bundle,
        &[
            "--node-name",
            NAME,
            "--format",
            "bundle",
            "--ethernet",
            "allow-virtual",
        ],
    );
    extract(&bundle, &p.root().join("unpacked"));
    let root = p.root().join("node7-root");
    let daemon = Daemonized {
        pid_file: root.join("run/fleet-server.pid"),
        log: root.join("var/log/fleet-server.log"),
    };
    let o = provision(
        &p.root().join("unpacked/node7_provision/provision.sh"),
        &root,
    );
    assert_ok(&o, "provision.sh of the old bundle");
    let id = p.wait_joined(NAME);
    assert_reports(&p, NAME, &id, OLD);
    let old_pid = daemon.pid().expect("the old daemon's pid file");
    let kept = Kept::take(
        root.join("etc/fleet-server/config.yaml"),
        &root.join("var/lib/fleet-server"),
        &id,
    );

    // The upgrade bundle: its listing, no secret.
    let up = p.root().join("upgrade.tar.gz");
    let out = build(&p, &p.template, &up, &["--upgrade", "--format", "bundle"]);
    assert!(out.contains(&format!("fleet-server {NEW}")), "{out}");
    let listing = lines(&pkginstall::run_ok(Command::new(&tar).arg("-tzf").arg(&up)));
    assert_eq!(
        listing,
        [
            "fleet-server-upgrade/",
            "fleet-server-upgrade/fleet-installer-stub",
            "fleet-server-upgrade/fleet-server",
            "fleet-server-upgrade/fleet-server.service",
            "fleet-server-upgrade/fleet-upgrade",
            "fleet-server-upgrade/provision.sh",
            "fleet-server-upgrade/uninstall.sh",
        ]
    );
    let unpacked = p.root().join("unpacked-up");
    extract(&up, &unpacked);
    let mut files = vec![up.clone()];
    files.extend(files_under(&unpacked));
    assert_no_secrets(&listing, &files);
    let script = unpacked.join("fleet-server-upgrade/provision.sh");

    // On a fresh root: refused with 50, nothing written.
    let fresh = p.root().join("fresh-root");
    let o = provision(&script, &fresh);
    assert_eq!(o.status.code(), Some(EXIT_NOT_A_NODE), "{}", text(&o));
    assert!(
        text(&o).contains("is not a Fleet Server cluster node"),
        "{}",
        text(&o)
    );
    assert_eq!(tree(&fresh), Vec::<String>::new());

    // Over the node.
    let o = provision(&script, &root);
    assert_ok(&o, "provision.sh of the upgrade bundle");
    assert!(
        text(&o).contains(&format!("✅ Upgraded {id} to {NEW}")),
        "{}",
        text(&o)
    );
    assert!(!Daemonized::alive(old_pid), "the old daemon still runs");
    let new_pid = daemon.pid().expect("the new daemon's pid file");
    assert_ne!(new_pid, old_pid);
    assert!(Daemonized::alive(new_pid));
    kept.check();
    assert_reports(&p, NAME, &id, NEW);
    let o =
        pkginstall::run_ok(Command::new(root.join("usr/local/bin/fleet-server")).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("fleet-server {NEW}")
    );
    assert!(
        !root.join("usr/local/bin/fleet-server.upgrade").exists(),
        "a staged file was left behind"
    );

    // Again: not newer.
    let o = provision(&script, &root);
    assert_eq!(o.status.code(), Some(EXIT_NOT_NEWER), "{}", text(&o));
    assert!(
        Daemonized::alive(new_pid),
        "a refused upgrade stopped the daemon"
    );

    // The upgraded node builds the upgrade bundle of its own platform through its API (the
    // Settings page's "Upgrade package"): its own binaries, the version it runs.
    let post = |body: &str| {
        p.topo
            .http(
                Site::Datacenter,
                Topology::server_addr(Site::Datacenter),
                "POST",
                "/api/fleet/cluster/packages",
                &[
                    ("X-API-Key", TEST_API_KEY),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .expect("POST /api/fleet/cluster/packages on the node")
    };
    let r = post(r#"{"upgrade": true, "format": "bundle"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-package-kind"), Some("upgrade"));
    assert_eq!(r.header("x-package-version"), Some(NEW));
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains(&format!("fleet-server-upgrade-{NEW}.tar.gz"))),
        "{:?}",
        r.headers
    );
    let own = p.root().join("own-upgrade.tar.gz");
    std::fs::write(&own, &r.body).unwrap();
    let own_listing = lines(&pkginstall::run_ok(
        Command::new(&tar).arg("-tzf").arg(&own),
    ));
    assert_eq!(own_listing, listing);
    assert_no_secrets(&own_listing, std::slice::from_ref(&own));
    let r = post(r#"{"upgrade": true, "format": "bundle", "node_name": "x1"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("node_name does not apply"),
        "{}",
        r.text()
    );
    drop(daemon);
}
