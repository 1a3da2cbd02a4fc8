//! An install emulated as macOS Installer does it, with the real binaries: a node template
//! holding this build's `fleet-server` and `fleet-installer-stub`, the pkg's XAR extracted
//! with `bsdtar`, the component found through a product archive's `Distribution` (which
//! must declare `hostArchitectures` with arm64, or Installer on Apple silicon would run the
//! scripts under Rosetta), its `Scripts` and `Payload` (gzip of cpio odc) with `gzip -dc | cpio -i`,
//! the scripts run with Installer's `$1..$4`, an empty environment, and a `launchctl`
//! stand-in that records its calls (the `LAUNCHCTL` hook of `scripts/postinstall`), and the
//! daemon started as launchd would from the installed plist ([`LaunchdJob`]).
//!
//! package/tests/emulated_install.rs does the same against a placeholder stub inside the
//! fleet-package crate (which cannot depend on this kit without building the daemon); the
//! end-to-end tests in `e2e/install.rs` use this module.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_path, require_tool, wait_for};

/// The LaunchDaemon's label (the pkg identifier too).
pub const LABEL: &str = "com.fleet.server.cluster";
/// Where the pkg installs the plist, relative to the target volume.
pub const PLIST: &str = "Library/LaunchDaemons/com.fleet.server.cluster.plist";
/// Where the stub writes the node's configuration on macOS, relative to the target volume.
pub const MAC_CONFIG: &str = "Library/FleetServer/config/config.yaml";
/// The passphrase file the stub reads on macOS, relative to the target volume.
pub const MAC_PASSPHRASE: &str = "Library/FleetServer/install.passphrase";
/// The PATH Installer gives scripts (none of the caller's environment reaches them).
pub const INSTALLER_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// Fills `dir` as a node template (`package.template_dir`): `linux-x86_64/` and `macos/`
/// both hold this build's Linux `fleet-server` and `fleet-installer-stub`.
///
/// There is no Mac here and the darwin target cannot be built, so the `macos/` slot holds
/// Linux (ELF) binaries: a pkg build then needs `--allow-foreign-binaries`, the only way to
/// build a pkg on Linux, and the emulated install runs them on this Linux host.
///
/// The debug binaries are stripped on the way in (`strip`): the unstripped debug
/// `fleet-server` is about 150 MB, which makes every build compress ten times more than a
/// release template would. Stripping changes nothing they do.
pub fn node_template(dir: &Path) -> PathBuf {
    let strip = require_tool("strip");
    for slot in ["linux-x86_64", "macos"] {
        let d = dir.join(slot);
        std::fs::create_dir_all(&d).expect("creating the node template");
        for bin in ["fleet-server", "fleet-installer-stub"] {
            if slot == "macos" {
                // Same bytes as the Linux slot: a hard link, or a copy across devices.
                let from = dir.join("linux-x86_64").join(bin);
                if std::fs::hard_link(&from, d.join(bin)).is_err() {
                    std::fs::copy(&from, d.join(bin)).expect("copying into the node template");
                }
                continue;
            }
            run_ok(
                Command::new(&strip)
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(d.join(bin))
                    .arg(bin_path(bin)),
            );
        }
    }
    dir.to_path_buf()
}

/// A copy of the node template `from` (see [`node_template`]) at `to` whose `fleet-server`
/// reports `version`: its version slot restamped in place (same length, found by its bytes;
/// `fleet_installer_stub::version_slot`), so a node can run an "old" build without compiling one.
/// The stub is this build's.
pub fn restamped_template(from: &Path, to: &Path, version: &str) -> PathBuf {
    use fleet_installer_stub::version_slot;
    for slot in ["linux-x86_64", "macos"] {
        let d = to.join(slot);
        std::fs::create_dir_all(&d).expect("creating the restamped template");
        let server = std::fs::read(from.join(slot).join("fleet-server"))
            .expect("reading the template's fleet-server");
        let old = version_slot::restamp(&server, version)
            .expect("the template's fleet-server has a version slot");
        assert_eq!(version_slot::version_of(&old).as_deref(), Ok(version));
        install_executable(&old, &d.join("fleet-server"));
        let stub = std::fs::read(from.join(slot).join("fleet-installer-stub"))
            .expect("reading the template's stub");
        install_executable(&stub, &d.join("fleet-installer-stub"));
    }
    to.to_path_buf()
}

/// A pkg expanded as Installer does before it runs anything.
#[derive(Debug, Clone)]
pub struct ExpandedPkg {
    /// The package file (`$1`).
    pub pkg: PathBuf,
    /// The component's members (`Bom`, `PackageInfo`, `Payload`, `Scripts`) as bsdtar wrote
    /// them: `<xar>/fleet-server.pkg/` in a product archive, the XAR itself in a component.
    pub members: PathBuf,
    /// The whole XAR as bsdtar wrote it.
    pub expanded: PathBuf,
    /// The product archive's Distribution XML (`None`: a bare component package).
    pub distribution: Option<String>,
    /// The `Scripts` archive extracted: `preinstall`, `postinstall`, the sealed blob, the key.
    pub scripts: PathBuf,
}

impl ExpandedPkg {
    /// Extracts `pkg` under `dir` (made if missing): XAR members with bsdtar, the component
    /// (through the Distribution of a product archive), then its Scripts.
    pub fn extract(pkg: &Path, dir: &Path) -> ExpandedPkg {
        let expanded = dir.join("expanded");
        let scripts = dir.join("scripts");
        for d in [&expanded, &scripts] {
            std::fs::create_dir_all(d).expect("creating the extraction directory");
        }
        run_ok(
            Command::new(require_tool("bsdtar"))
                .arg("-xf")
                .arg(pkg)
                .arg("-C")
                .arg(&expanded),
        );
        let distribution = std::fs::read_to_string(expanded.join("Distribution")).ok();
        let members = match &distribution {
            Some(xml) => expanded.join(component_of(xml)),
            None => expanded.clone(),
        };
        cpio_extract(&members.join("Scripts"), &scripts);
        ExpandedPkg {
            pkg: pkg.to_path_buf(),
            members,
            expanded,
            distribution,
            scripts,
        }
    }

    /// Lays the payload under the target volume, as Installer does between the scripts.
    pub fn install_payload(&self, target: &Path) {
        cpio_extract(&self.members.join("Payload"), target);
    }

    /// A copy of the Scripts directory (for a run with a changed sealed blob or key).
    pub fn copy_scripts(&self, to: &Path) -> PathBuf {
        std::fs::create_dir_all(to).expect("creating a scripts copy");
        for e in std::fs::read_dir(&self.scripts).expect("listing Scripts") {
            let e = e.expect("Scripts entry");
            let dest = to.join(e.file_name());
            // Copied by a child process: see `install_executable`.
            run_ok(Command::new("cp").arg("-p").arg(e.path()).arg(&dest));
        }
        to.to_path_buf()
    }
}

/// The component a Distribution installs, as Installer reads it: the one `pkg-ref` with a
/// local target (`#name.pkg`), after checking that `hostArchitectures` names arm64 (without it
/// Installer on Apple silicon runs the scripts under Rosetta) and x86_64.
pub fn component_of(distribution: &str) -> String {
    let doc = roxmltree::Document::parse(distribution).expect("the Distribution is XML");
    let root = doc.root_element();
    assert_eq!(
        root.tag_name().name(),
        "installer-gui-script",
        "not a Distribution"
    );
    let arches = root
        .children()
        .find(|n| n.has_tag_name("options"))
        .and_then(|n| n.attribute("hostArchitectures"))
        .unwrap_or("");
    for arch in ["arm64", "x86_64"] {
        assert!(
            arches.split(',').any(|a| a.trim() == arch),
            "the Distribution's hostArchitectures ({arches:?}) lacks {arch}"
        );
    }
    let targets: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name("pkg-ref"))
        .filter_map(|n| n.text().map(str::trim).filter(|t| !t.is_empty()))
        .collect();
    assert_eq!(
        targets.len(),
        1,
        "one component in the Distribution: {targets:?}"
    );
    let name = targets[0]
        .strip_prefix('#')
        .expect("a component inside the archive (#name.pkg)");
    assert!(
        name.ends_with(".pkg") && !name.contains('/') && !name.starts_with('.'),
        "bad component name {name:?}"
    );
    name.to_owned()
}

/// Writes an executable file through a child process (`install -m 0755`). A file this test
/// process wrote itself could still be open, for an instant, in a child that another test
/// thread is forking, and executing it then fails with "text file busy" (ETXTBSY).
pub fn install_executable(bytes: &[u8], dest: &Path) {
    let staged = dest.with_extension("staged");
    std::fs::write(&staged, bytes).expect("staging an executable");
    run_ok(
        Command::new("install")
            .arg("-m")
            .arg("0755")
            .arg(&staged)
            .arg(dest),
    );
    let _ = std::fs::remove_file(&staged);
}

/// `gzip -dc ARCHIVE | cpio -idmu` in `into` (GNU cpio reads odc), with umask 022 as Installer.
pub fn cpio_extract(gz: &Path, into: &Path) {
    let gzip = require_tool("gzip");
    let cpio = require_tool("cpio");
    std::fs::create_dir_all(into).expect("creating the cpio destination");
    run_ok(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"umask 022 && cd "$1" && "$2" -dc "$3" | "$4" -idmu --quiet"#)
            .arg("sh")
            .arg(into)
            .arg(gzip)
            .arg(gz)
            .arg(cpio),
    );
}

/// Gives `cmd` (a script, or `ip netns exec NS script`) Installer's conventions: `$1` the
/// package, `$2` the install location `/`, `$3` the target volume, `$4` the system root `/`;
/// no environment but Installer's PATH; working directory `/`.
pub fn as_installer_runs<'a>(cmd: &'a mut Command, pkg: &Path, target: &Path) -> &'a mut Command {
    cmd.env_clear()
        .env("PATH", INSTALLER_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .arg(pkg)
        .arg("/")
        .arg(target)
        .arg("/")
}

/// A `launchctl` stand-in that appends each call's arguments to a file and succeeds.
#[derive(Debug, Clone)]
pub struct Launchctl {
    pub path: PathBuf,
    calls: PathBuf,
}

impl Launchctl {
    /// Writes the stand-in into `dir`.
    pub fn new(dir: &Path) -> Launchctl {
        let path = dir.join("launchctl");
        let calls = dir.join("launchctl-calls");
        install_executable(
            format!("#!/bin/sh\necho \"$*\" >> '{}'\nexit 0\n", calls.display()).as_bytes(),
            &path,
        );
        Launchctl { path, calls }
    }

    /// The calls so far, one line of arguments each.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The postinstall's test hooks: this stand-in, and `$3` handled as the boot volume.
    pub fn boot_volume_env(&self, cmd: &mut Command) {
        // The stand-in starts no daemon: no first outcome to wait for.
        cmd.env("LAUNCHCTL", &self.path)
            .env("FLEET_TEST_TREAT_AS_BOOT_VOLUME", "1")
            .env("FLEET_TEST_OUTCOME_WAIT", "0");
    }
}

/// What launchd would run for the installed LaunchDaemon: the plist's ProgramArguments, and
/// the same with its paths under the target volume plus `--root TARGET`.
#[derive(Debug, Clone)]
pub struct LaunchdJob {
    /// ProgramArguments as the plist has them (absolute paths of the installed system).
    pub args: Vec<String>,
    /// The whole plist.
    pub dict: plist::Dictionary,
    /// The command to run here: the program and `--config` under the target, then `--root`.
    pub argv: Vec<PathBuf>,
    /// `StandardErrorPath` under the target (stdout goes there too).
    pub log: PathBuf,
}

impl LaunchdJob {
    /// Reads `PLIST` under `target`; panics unless it is the LaunchDaemon with its Label.
    pub fn read(target: &Path) -> LaunchdJob {
        let plist_path = target.join(PLIST);
        let value = plist::Value::from_file(&plist_path)
            .unwrap_or_else(|e| panic!("{}: {e}", plist_path.display()));
        let dict = value
            .into_dictionary()
            .expect("the LaunchDaemon plist is a dictionary");
        assert_eq!(dict.get("Label").and_then(|v| v.as_string()), Some(LABEL));
        let args: Vec<String> = dict
            .get("ProgramArguments")
            .and_then(|v| v.as_array())
            .expect("ProgramArguments")
            .iter()
            .map(|v| v.as_string().expect("string argument").to_string())
            .collect();
        let mut argv: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
        argv[0] = under(target, &args[0]);
        for flag in ["--config", "--log-file", "--pid-file"] {
            if let Some(c) = args.iter().position(|a| a == flag) {
                argv[c + 1] = under(target, &args[c + 1]);
            }
        }
        argv.push("--root".into());
        argv.push(target.to_path_buf());
        let log = under(
            target,
            dict.get("StandardErrorPath")
                .and_then(|v| v.as_string())
                .expect("StandardErrorPath"),
        );
        LaunchdJob {
            args,
            dict,
            argv,
            log,
        }
    }

    /// Starts the job with `cmd`, a command for `argv[0]` (e.g. `topo.command(site, &argv[0])`),
    /// as launchd would: the rest of `argv`, no environment but Installer's PATH, working
    /// directory `/`, stdout and stderr to the log.
    pub fn spawn(&self, mut cmd: Command) -> Running {
        std::fs::create_dir_all(self.log.parent().expect("log directory"))
            .expect("creating the log directory");
        // Appending, as launchd opens StandardOutPath and as the daemon opens its own log
        // (the same file).
        let _ = std::fs::remove_file(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("creating the log");
        let child = cmd
            .args(&self.argv[1..])
            .env_clear()
            .env("PATH", INSTALLER_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting the installed fleet-server");
        Running {
            child: Some(child),
            log: self.log.clone(),
        }
    }
}

/// `path` (absolute, as on the installed system) under the target volume.
pub fn under(target: &Path, path: &str) -> PathBuf {
    target.join(path.trim_start_matches('/'))
}

/// A process started by a test (the installed daemon), killed on drop; its log is dumped
/// when the test fails.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    log: PathBuf,
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most `limit`) for the exit; returns its code.
    pub fn sigterm_and_wait(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = wait_for(
            "the node to exit after SIGTERM",
            limit,
            Duration::from_millis(20),
            || child.try_wait().expect("try_wait"),
        );
        status.code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- installed node's log ----\n{}", self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every path under `root` (relative, sorted): what an install left behind.
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The permission bits of a path.
pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `cmd` to its end like `Command::output`, but kills it and panics after `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `cmd` (at most two minutes); panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = output_within(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Extracts the Linux bundle `bundle` (a `.tar.gz` with one directory) into `into` (made if
/// missing); returns that directory.
pub fn extract_bundle(bundle: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).expect("the extraction directory");
    run_ok(
        Command::new(crate::require_tool("tar"))
            .arg("-xzf")
            .arg(bundle)
            .arg("-C")
            .arg(into),
    );
    let dirs: Vec<PathBuf> = std::fs::read_dir(into)
        .expect("listing the bundle")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one directory in the bundle: {dirs:?}");
    dirs[0].clone()
}
