//! An install emulated as macOS Installer does it: extract the XAR (bsdtar),
//! find the component through the Distribution, extract its Scripts and Payload (GNU cpio), run `preinstall` with $1..$4 and $3 a
//! temporary root, lay the payload under it, run `postinstall` with a
//! `launchctl` stand-in that records its calls.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_package::{PkgBuilder, PkgOptions, PkgRoot, Target, Template};

use crate::common::*;

const LABEL: &str = "com.fleet.server.cluster";

/// Stands in for the installer stub: writes the configuration under $3 from
/// the sealed blob found beside itself, as the real stub will.
const FAKE_STUB: &str = r#"#!/bin/sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/fleet-config.sealed" ] || { echo "no sealed config" >&2; exit 3; }
[ -f "$here/fleet-config.key" ] || { echo "no key" >&2; exit 3; }
/bin/mkdir -p "$3/Library/FleetServer/config"
/bin/cp "$here/fleet-config.sealed" "$3/Library/FleetServer/config/config.yaml"
echo "$#:$1|$2|$3|$4" > "$3/preinstall-ran"
"#;

struct Install {
    _dir: tempfile::TempDir,
    pkg: PathBuf,
    scripts: PathBuf,
    payload: PathBuf,
    root: PathBuf,
    calls: PathBuf,
    launchctl: PathBuf,
}

/// Builds the pkg, extracts it, runs preinstall, lays out the payload.
/// `bootstrap_failures`: how often the launchctl stand-in fails `bootstrap`.
fn prepare(bootstrap_failures: u32) -> Install {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let template = Template::from_bytes(
        Target::MacOs,
        fake_macho(20_000, 3),
        FAKE_STUB.as_bytes().to_vec(),
        true, // the stub is a script placeholder
    )
    .unwrap();
    let pkg_bytes = PkgBuilder::new(template, PkgRoot::embedded())
        .unwrap()
        .build_pkg(&node(), &PkgOptions::default())
        .unwrap();
    let pkg = write(d, "FleetServerClusterNode.pkg", &pkg_bytes);
    let x = d.join("expanded");
    std::fs::create_dir(&x).unwrap();
    bsdtar_extract(&pkg, &x);

    let scripts = d.join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let comp = component_dir(&x);
    assert_eq!(
        comp,
        x.join("fleet-server.pkg"),
        "the default pkg is a product archive"
    );
    cpio_extract(&comp.join("Scripts"), &scripts);
    let root = d.join("target-volume");
    std::fs::create_dir(&root).unwrap();

    let calls = d.join("launchctl-calls");
    let launchctl = d.join("launchctl");
    std::fs::write(
        &launchctl,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\nif [ \"$1\" = bootstrap ]; then\n  n=$(cat '{count}' 2>/dev/null || echo 0)\n  if [ \"$n\" -lt {bootstrap_failures} ]; then echo $((n+1)) > '{count}'; echo 'Bootstrap failed: 5: Input/output error' >&2; exit 5; fi\n  # As the daemon launchd starts would: its first outcome, when the test gives one.\n  if [ -f '{fake}' ]; then cp '{fake}' '{state}/first-outcome'; fi\nfi\nexit 0\n",
            calls = calls.display(),
            count = d.join("bootstrap-count").display(),
            fake = d.join("fake-outcome").display(),
            state = root.join("Library/FleetServer/state").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&launchctl, std::fs::Permissions::from_mode(0o755)).unwrap();

    let install = Install {
        pkg,
        payload: comp.join("Payload"),
        scripts,
        root,
        calls,
        launchctl,
        _dir: dir,
    };
    // Installer: preinstall, then the payload, then postinstall.
    let out = install.script("preinstall", &[]);
    assert!(
        out.status.success(),
        "preinstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cpio_extract(&install.payload, &install.root);
    install
}

impl Install {
    /// Runs a script as Installer does: `$1..$4`, an empty environment but
    /// for `env`, the Scripts directory as working directory.
    fn script(&self, name: &str, env: &[(&str, &Path)]) -> std::process::Output {
        let mut cmd = Command::new(self.scripts.join(name));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir(&self.scripts)
            .arg(&self.pkg)
            .arg("/")
            .arg(&self.root)
            .arg("/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        crate::common::output_retrying(&mut cmd).unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn mode(&self, rel: &str) -> u32 {
        std::fs::metadata(self.root.join(rel))
            .unwrap_or_else(|e| panic!("{rel} not installed: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }
}

fn cpio_extract(gz: &Path, into: &Path) {
    let raw = gunzip(&std::fs::read(gz).unwrap());
    let staged = into.with_extension("cpio");
    std::fs::write(&staged, raw).unwrap();
    run(Command::new("/bin/sh").arg("-c").arg(format!(
        "umask 022 && cd '{}' && '{}' -idmu --quiet < '{}'",
        into.display(),
        tool("cpio").display(),
        staged.display()
    )));
}

fn boot_volume_env(i: &Install) -> Vec<(&'static str, &Path)> {
    vec![
        ("LAUNCHCTL", i.launchctl.as_path()),
        ("FLEET_TEST_TREAT_AS_BOOT_VOLUME", Path::new("1")),
        // No daemon runs here unless a test gives a fake outcome: no wait.
        ("FLEET_TEST_OUTCOME_WAIT", Path::new("0")),
    ]
}

/// The postinstall logs the daemon's first outcome to the install log: joined, or refused.
#[test]
fn postinstall_logs_the_first_outcome() {
    for (outcome, line) in [
        (
            "joined server-03-abc123\n",
            "✅ Joined the cluster as server-03-abc123",
        ),
        (
            "refused package token 1234abcd… was already used\n",
            "❌ Enrollment refused: package token 1234abcd… was already used",
        ),
    ] {
        let i = prepare(0);
        // An outcome of an earlier install is removed first, not taken for this one's.
        let state = i.root.join("Library/FleetServer/state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("first-outcome"), "joined old-node-zzzzzz\n").unwrap();
        std::fs::write(i.launchctl.with_file_name("fake-outcome"), outcome).unwrap();
        let mut env = boot_volume_env(&i);
        env.retain(|(k, _)| *k != "FLEET_TEST_OUTCOME_WAIT");
        env.push(("FLEET_TEST_OUTCOME_WAIT", Path::new("5")));
        let out = i.script("postinstall", &env);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(line), "{text}");
        assert!(!text.contains("old-node"), "{text}");
    }
}

#[test]
fn install_lays_out_the_payload_and_loads_the_job() {
    let i = prepare(0);
    // The preinstall ran with Installer's four arguments and found its files.
    let ran = std::fs::read_to_string(i.root.join("preinstall-ran")).unwrap();
    assert_eq!(
        ran.trim(),
        format!("4:{}|/|{}|/", i.pkg.display(), i.root.display())
    );
    // The payload's modes as the archive says them.
    for (rel, mode) in [
        ("Library/FleetServer/bin/fleet-server", 0o755),
        ("Library/FleetServer/bin/uninstall.sh", 0o755),
        (
            "Library/LaunchDaemons/com.fleet.server.cluster.plist",
            0o644,
        ),
        ("private/etc/newsyslog.d/fleet-server.conf", 0o644),
        ("Library/FleetServer/bin", 0o755),
    ] {
        assert_eq!(i.mode(rel), mode, "{rel} after payload");
    }

    let out = i.script("postinstall", &boot_volume_env(&i));
    assert!(
        out.status.success(),
        "postinstall failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let plist = i
        .root
        .join("Library/LaunchDaemons/com.fleet.server.cluster.plist");
    assert_eq!(
        i.calls(),
        [
            format!("bootout system/{LABEL}"),
            format!("enable system/{LABEL}"),
            format!("bootstrap system {}", plist.display()),
        ]
    );
    // The node template: the payload's daemon and the package's own stub, so this node can
    // build packages for its platform.
    let template = i.root.join("Library/FleetServer/node-template/macos");
    assert_eq!(
        std::fs::read(template.join("fleet-server")).unwrap(),
        std::fs::read(i.root.join("Library/FleetServer/bin/fleet-server")).unwrap()
    );
    assert_eq!(
        std::fs::read(template.join("fleet-installer-stub")).unwrap(),
        std::fs::read(i.scripts.join("preinstall")).unwrap()
    );
    assert_eq!(
        i.mode("Library/FleetServer/node-template/macos/fleet-installer-stub"),
        0o755
    );
    assert_eq!(i.mode("Library/FleetServer/config"), 0o700);
    assert_eq!(i.mode("Library/FleetServer/config/config.yaml"), 0o600);
    assert_eq!(i.mode("Library/FleetServer/state"), 0o700);
    assert_eq!(
        i.mode("Library/LaunchDaemons/com.fleet.server.cluster.plist"),
        0o644
    );
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(&i.root).map(|m| m.uid()).ok() == Some(0) {
        let m = std::fs::metadata(i.root.join("Library/FleetServer/bin/fleet-server")).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0));
    }
}

#[test]
fn bootstrap_is_retried() {
    let i = prepare(2);
    let out = i.script("postinstall", &boot_volume_env(&i));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = i.calls();
    let bootstraps = calls.iter().filter(|c| c.starts_with("bootstrap ")).count();
    assert_eq!(bootstraps, 3, "{calls:?}");
    // RunAtLoad starts the job at bootstrap: no `kickstart -k`, which would kill it
    // in the middle of its first enrollment.
    assert!(calls.last().unwrap().starts_with("bootstrap "), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("kickstart")),
        "{calls:?}"
    );
}

#[test]
fn another_volume_does_not_touch_launchd() {
    let i = prepare(0);
    // Only the stand-in, no boot-volume hook: $3 is not "/".
    let out = i.script("postinstall", &[("LAUNCHCTL", i.launchctl.as_path())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        i.calls().is_empty(),
        "launchctl called for another volume: {:?}",
        i.calls()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not the boot volume"));
    assert_eq!(i.mode("Library/FleetServer/config/config.yaml"), 0o600);
}
