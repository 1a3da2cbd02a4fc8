//! The storage backend's per-node write scope (issue 14's last part), black box: a primary
//! (root, the cluster's owner) on a shared directory, and nodes enrolled from packages that run
//! under uids of their own (52001..), as machines mounting the share with their own identity
//! would. A node holding its own configuration and the share (uid 52001, node-a) tries to
//! write, forge or delete what is not its own: the file system refuses, or, where the sticky
//! directories let a new name be created, the primary ignores and deletes it. Afterwards the
//! cluster is intact. A claim squat, a used package on another uid, and the admin-only
//! operations from a node's configuration are refused; removing a node drops its binding.
//!
//! The attacks run through `setpriv` as the node's uid (`fleet_tests::run_as`), with the
//! standard tools (`touch`, `mv`, `rm`, `ls`, `printf`). Each attack is one case: all run, the
//! test prints one line per case and fails listing the failed ones.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_server::cluster::{Event, EventKind};
use fleet_server::config::Config;
use fleet_tests::install::assert_ok;
use fleet_tests::local_now_ms as now_ms;
use fleet_tests::output_text as text;
use fleet_tests::pkginstall::{self, output_within};
use fleet_tests::web::WEB_PASSWORD;
use fleet_tests::{
    AsOutput, Daemon, TEST_API_KEY, bin_path, free_port, get_json, http, require_tool, run_as,
    wait_for,
};

/// The node uids: node-a (the attacker), node-b, node-c, a fourth machine, node-e.
const UID_A: u32 = 52001;
const UID_B: u32 = 52002;
const UID_C: u32 = 52003;
const UID_D: u32 = 52004;
const UID_E: u32 = 52005;
const UID_F: u32 = 52006;

/// How long one command (a build, the stub, the CLI, an attack) may take.
const LIMIT: Duration = Duration::from_secs(60);
/// How long a node may take to join, or to be refused.
const JOIN: Duration = Duration::from_secs(20);
/// The primary's turn: a few heartbeat timeouts (3 s).
const TURN: Duration = Duration::from_secs(15);

const DATABASE_KEY: &str = "scope-e2e-database-key-6d1e0b2a9c";
const PAYLOAD_KEY: &str = "scope-e2e-payload-key-0f3c7a5e81";
const REFUSED: &str = "❌ Enrollment refused:";

/// Numbers the bundles built.
static BUILDS: AtomicUsize = AtomicUsize::new(0);

/// A primary (root) with the dashboard and a node template on `backend: storage`; the shared
/// directory is traversable by every uid. Fields drop in order: the primary stops first.
struct Cluster {
    primary: Daemon,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // The nodes (other uids) reach the share through this directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the cluster's directory");
        let template = pkginstall::node_template(&dir.path().join("node-template"));
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("the shared directory");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the shared directory");
        let (hash, public) =
            fleet_server::crypto::credentials_for(WEB_PASSWORD).expect("credentials");
        let pdir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {state}\ncluster:\n  enabled: true\n  node_name: primary\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  backend: storage\n  storage_path: {shared}\nauth:\n  api_key: {TEST_API_KEY}\n  web_username: admin\n  web_password_hash: \"{hash}\"\n  session_public_key: \"{public}\"\nsessions:\n  backend: memory\nencryption:\n  database_key: {DATABASE_KEY}\n  payload_key: {PAYLOAD_KEY}\npackage:\n  template_dir: {tpl}\n",
            state = pdir.path().join("state").display(),
            shared = shared.display(),
            tpl = template.display(),
        );
        let primary = Daemon::start_with_config("primary", pdir, port, &config);
        primary.wait_health(200, Duration::from_secs(10));
        Cluster { primary, dir }
    }

    /// The primary's node template.
    fn template(&self) -> PathBuf {
        self.dir.path().join("node-template")
    }

    /// `<storage_path>/cluster`.
    fn root(&self) -> PathBuf {
        self.dir.path().join("shared/cluster")
    }

    fn config(&self) -> Config {
        Config::load(&self.primary.config_path()).expect("the primary's configuration")
    }

    /// `fleet-server ARGS --config <primary's>`, as root, bounded.
    fn cli(&self, args: &[&str]) -> Output {
        output_within(
            Command::new(bin_path("fleet-server"))
                .args(args)
                .arg("--config")
                .arg(self.primary.config_path()),
            LIMIT,
        )
    }

    /// `package build` of a Linux bundle for `node` on the primary's configuration.
    fn build(&self, node: &str) -> PathBuf {
        let out = self.dir.path().join(format!(
            "{node}-{}.tar.gz",
            BUILDS.fetch_add(1, Ordering::Relaxed)
        ));
        let o = self.cli(&[
            "package",
            "build",
            "--node-name",
            node,
            "--format",
            "bundle",
            "--ethernet",
            "skip",
            "--output",
            out.to_str().expect("UTF-8 path"),
        ]);
        assert_ok(&o, "fleet-server package build");
        out
    }

    /// `package list --json` as the admin: the pending packages.
    fn pending(&self) -> Vec<serde_json::Value> {
        fleet_tests::pending_packages(&self.primary.config_path())
    }

    /// The one pending package for `node`: its token id.
    fn pending_token(&self, node: &str) -> String {
        fleet_tests::pending_token(&self.primary.config_path(), node)
    }

    /// (id, name, state) of every member, as the primary's API lists them.
    fn members(&self) -> Vec<(String, String, String)> {
        fleet_tests::listed_members(self.primary.port)
    }

    /// The names of the active members.
    fn active_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .members()
            .into_iter()
            .filter(|(_, _, s)| s == "active")
            .map(|(_, n, _)| n)
            .collect();
        v.sort();
        v
    }

    fn active_named(&self, name: &str) -> Vec<String> {
        fleet_tests::active_named(self.primary.port, name)
    }

    /// Waits until the primary lists `name` as active; returns its id.
    fn wait_joined(&self, name: &str) -> String {
        fleet_tests::wait_joined(self.primary.port, name, JOIN)
    }

    /// Waits until the primary lists exactly `names` as active.
    fn wait_active_names(&self, names: &[&str], limit: Duration) {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(
            &format!("exactly {want:?} active on the primary"),
            limit,
            Duration::from_millis(100),
            || (self.active_names() == want).then_some(()),
        );
    }

    /// The cluster's events, newest first, read from the share as the primary would.
    fn events(&self) -> Vec<Event> {
        let config = self.config();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async {
                let b = fleet_server::cluster::open(&config).expect("the backend");
                b.events(1000).await.expect("the events")
            })
    }

    /// `bindings/*`: name → (content, owner uid).
    fn bindings(&self) -> BTreeMap<String, (String, u32)> {
        let dir = self.root().join("bindings");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return BTreeMap::new();
        };
        rd.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                let owner = e.metadata().map(|m| m.uid()).unwrap_or(u32::MAX);
                let content = std::fs::read_to_string(e.path()).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    (content.trim().to_string(), owner),
                )
            })
            .collect()
    }

    /// Installs `bundle` into a fresh root (its installer stub with `--target-root`, as root),
    /// then serves it as `uid` (everything in the root chowned to it).
    fn start_node(&self, bundle: &Path, name: &str, uid: u32) -> Daemon {
        self.start_node_with(bundle, name, uid, false)
    }

    /// As [`Cluster::start_node`]; `template`: with a copy of the node template where
    /// provision.sh puts it, so that the node could build packages if it were permitted.
    fn start_node_with(&self, bundle: &Path, name: &str, uid: u32, template: bool) -> Daemon {
        let n = BUILDS.fetch_add(1, Ordering::Relaxed);
        let unpack = self.dir.path().join(format!("unpack-{name}-{n}"));
        let bundle_dir = pkginstall::extract_bundle(bundle, &unpack);
        let root = tempfile::tempdir().expect("the node's root");
        let o = output_within(
            Command::new(bundle_dir.join("fleet-installer-stub"))
                .arg("--target-root")
                .arg(root.path())
                .env_clear()
                .env("PATH", pkginstall::INSTALLER_PATH)
                .current_dir(&bundle_dir),
            LIMIT,
        );
        assert_ok(&o, "fleet-installer-stub --target-root");
        if template {
            let to = root
                .path()
                .join("usr/local/lib/fleet-server/node-template/linux-x86_64");
            std::fs::create_dir_all(&to).expect("the node's template directory");
            for bin in ["fleet-server", "fleet-installer-stub"] {
                std::fs::copy(self.template().join("linux-x86_64").join(bin), to.join(bin))
                    .expect("copying the node template");
            }
        }
        Daemon::serve_root_as(uid, name, root, free_port())
    }
}

/// Waits for a node's own health to answer `status`.
fn wait_health(d: &Daemon, status: u16) {
    wait_for(
        &format!("health {status} from {}:\n{}", d.name, d.log()),
        JOIN,
        Duration::from_millis(100),
        || {
            matches!(d.api_get("/api/fleet/cluster/health", None), Ok((s, _)) if s == status)
                .then_some(())
        },
    );
}

/// One line per case; the test fails at the end listing the failed ones.
#[derive(Default)]
struct Cases {
    results: Vec<(String, Result<(), String>)>,
}

impl Cases {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) {
        let started = Instant::now();
        let r = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into())),
        };
        eprintln!(
            "storage_scope: {} {name} ({:?}){}",
            if r.is_ok() { "PASS" } else { "FAIL" },
            started.elapsed(),
            r.as_ref()
                .err()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        self.results.push((name.to_string(), r));
    }

    fn finish(self) {
        let failed: Vec<String> = self
            .results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        eprintln!(
            "storage_scope: {} of {} cases passed",
            self.results.len() - failed.len(),
            self.results.len()
        );
        assert!(
            failed.is_empty(),
            "{} case(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
}

/// `sh -c` as the attacker (node-a's uid), in the cluster's directory.
fn attack(c: &Cluster, script: &str) -> AsOutput {
    run_as(
        UID_A,
        &format!("cd '{}' && {{ {script}\n}}", c.root().display()),
        LIMIT,
    )
}

/// The attack must fail with EACCES/EPERM.
fn refused(c: &Cluster, script: &str) -> Result<(), String> {
    let o = attack(c, script);
    if o.refused() {
        Ok(())
    } else {
        Err(format!("`{script}` was not refused: {o:?}"))
    }
}

/// A file the attack must not have made or changed: absent, or not the attacker's and not
/// holding `payload` (unless it held it before, `before`).
fn untouched(path: &Path, payload: &str, before: Option<&str>) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.uid() == UID_A => Err(format!("{} is the attacker's", path.display())),
        Ok(_) => match std::fs::read_to_string(path) {
            Ok(s) if s == payload && before != Some(payload) => {
                Err(format!("{} holds the forgery", path.display()))
            }
            _ => Ok(()),
        },
    }
}

/// A note as a scoped node leaves it in `inbox/`.
fn note_json(kind: &str, node_id: &str, at_ms: u64) -> String {
    format!(r#"{{"kind":"{kind}","node_id":"{node_id}","at_ms":{at_ms},"detail":{{}}}}"#)
}

/// The files in `inbox/` the attacker owns.
fn attackers_inbox_files(c: &Cluster) -> Vec<String> {
    std::fs::read_dir(c.root().join("inbox"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.metadata().is_ok_and(|m| m.uid() == UID_A))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The entries in `inbox/` the attacker made, links included (not followed).
fn attackers_inbox_files_or_links(c: &Cluster) -> Vec<String> {
    std::fs::read_dir(c.root().join("inbox"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.uid() == UID_A))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn has_joined(events: &[Event], id: &str) -> bool {
    events
        .iter()
        .any(|e| e.kind == EventKind::Joined && e.node_id == id)
}

#[test]
fn a_scoped_node_writes_only_its_own_files() {
    require_tool("setpriv");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test runs nodes under uids of their own (setpriv): run `cargo test` as root"
    );
    let started = Instant::now();
    let c = Cluster::start();
    let root = c.root();
    let o = c.cli(&["cluster", "status"]);
    eprintln!("storage_scope: cluster status: {}", text(&o));
    assert_eq!(
        std::fs::metadata(&root).expect("cluster/").uid(),
        0,
        "the primary (root) owns cluster/"
    );

    // Two nodes, each under a uid of its own, enrolled from their packages.
    let bundle_a = c.build("node-a");
    let bundle_b = c.build("node-b");
    let node_a = c.start_node_with(&bundle_a, "node-a", UID_A, true);
    let node_b = c.start_node(&bundle_b, "node-b", UID_B);
    let id_a = c.wait_joined("node-a");
    let id_b = c.wait_joined("node-b");
    wait_health(&node_a, 200);
    wait_health(&node_b, 200);
    let id_primary = c.primary.node_id();
    eprintln!(
        "storage_scope: node-a {id_a} and node-b {id_b} joined after {:?}",
        started.elapsed()
    );
    // A pending package for node-c, for the claim squat and the revoke attempt.
    let bundle_c = c.build("node-c");
    let token_c = c.pending_token("node-c");
    let bundle_e = c.build("node-e");
    let token_e = c.pending_token("node-e");
    let bundle_f = c.build("node-f");
    let token_f = c.pending_token("node-f");

    let mut cases = Cases::default();
    let mut bindings = BTreeMap::new();
    cases.run(
        "layout: owner-only and sticky directories, bindings",
        || {
            let mode = |p: &str| {
                std::fs::metadata(root.join(p))
                    .map(|m| (m.mode() & 0o7777, m.uid()))
                    .map_err(|e| format!("{p}: {e}"))
            };
            for (p, want) in [
                ("nodes", 0o1777),
                ("inbox", 0o1733),
                ("enroll", 0o711),
                ("members", 0o755),
                ("names", 0o755),
                ("events", 0o755),
                ("bindings", 0o755),
            ] {
                let (m, uid) = mode(p)?;
                if m != want || uid != 0 {
                    return Err(format!(
                        "{p}: mode {m:04o} owner {uid}, want {want:04o} root"
                    ));
                }
            }
            let b = c.bindings();
            let want = |n: &str, uid: u32| b.get(n) == Some(&(uid.to_string(), 0));
            if !want("node-a", UID_A) || !want("node-b", UID_B) {
                return Err(format!("bindings: {b:?}"));
            }
            for (n, uid) in [("node-a", UID_A), ("node-b", UID_B)] {
                let m = std::fs::metadata(root.join(format!("nodes/{n}.json")))
                    .map_err(|e| format!("nodes/{n}.json: {e}"))?;
                if m.uid() != uid {
                    return Err(format!("nodes/{n}.json owned by {}", m.uid()));
                }
            }
            bindings = b;
            Ok(())
        },
    );
    if bindings.is_empty() {
        bindings = c.bindings();
    }

    // node-b's record: every way of changing it is refused.
    let record_b = root.join("nodes/node-b.json");
    let bytes_b = std::fs::read(&record_b).unwrap_or_default();
    let record_b_intact = || -> Result<(), String> {
        let m = std::fs::metadata(&record_b).map_err(|e| format!("node-b.json: {e}"))?;
        let now = std::fs::read(&record_b).unwrap_or_default();
        if m.uid() != UID_B || now != bytes_b {
            return Err(format!("node-b.json changed (owner {})", m.uid()));
        }
        Ok(())
    };
    let forged_b = format!(
        r#"{{"id":"{id_b}","name":"node-b","hostname":"evil","addresses":["127.0.0.1"],"version":"0","os":"linux","started_at":1,"url":"http://127.0.0.1:1"}}"#
    );
    for (case, script) in [
        (
            "replace nodes/node-b.json (write)",
            format!("printf '%s' '{forged_b}' > nodes/node-b.json"),
        ),
        (
            "replace nodes/node-b.json (rename over)",
            format!(
                "printf '%s' '{forged_b}' > nodes/.evil-b; mv -f nodes/.evil-b nodes/node-b.json; rc=$?; rm -f nodes/.evil-b; exit $rc"
            ),
        ),
        ("touch nodes/node-b.json", "touch nodes/node-b.json".into()),
        (
            "touch -d nodes/node-b.json",
            "touch -d '2001-01-01 00:00:00' nodes/node-b.json".into(),
        ),
        ("delete nodes/node-b.json", "rm -f nodes/node-b.json".into()),
        (
            "rename nodes/node-b.json",
            "mv nodes/node-b.json nodes/node-b.old".into(),
        ),
    ] {
        cases.run(case, || {
            refused(&c, &script)?;
            record_b_intact()
        });
    }

    // The owner-only files and directories.
    let owner_only: Vec<(String, String, String)> = vec![
        (
            "plant a tombstone removed/<node-b id>".into(),
            format!("removed/{id_b}"),
            "admin".into(),
        ),
        (
            "write names/node-b".into(),
            "names/node-b".into(),
            id_a.clone(),
        ),
        (
            "write bindings/node-a".into(),
            "bindings/node-a".into(),
            UID_B.to_string(),
        ),
        (
            "write bindings/node-b".into(),
            "bindings/node-b".into(),
            UID_A.to_string(),
        ),
        (
            "write events/x.json".into(),
            "events/x.json".into(),
            note_json("left", &id_b, 1_000_000_000_001),
        ),
        ("write active".into(), "active".into(), "0".into()),
        ("write prune".into(), "prune".into(), "".into()),
        ("create lock".into(), "lock".into(), "".into()),
        (
            "write members/<x>.json".into(),
            "members/node-x-abcdef.json".into(),
            forged_b.replace(&id_b, "node-x-abcdef"),
        ),
        (
            "write granted/<node-c token>".into(),
            format!("granted/{token_c}"),
            format!(r#"{{"uid":{UID_A},"name":"node-c"}}"#),
        ),
    ];
    for (case, rel, payload) in &owner_only {
        let dir = Path::new(rel)
            .parent()
            .filter(|p| !p.as_os_str().is_empty());
        let mkdir = dir
            .map(|d| format!("mkdir -p '{}' && ", d.display()))
            .unwrap_or_default();
        let script = format!("{mkdir}printf '%s' '{payload}' > '{rel}'");
        let before = std::fs::read_to_string(root.join(rel)).ok();
        cases.run(case, || {
            refused(&c, &script)?;
            untouched(&root.join(rel), payload, before.as_deref())
        });
    }
    cases.run("delete the primary's members/<id>.json", || {
        refused(&c, &format!("rm -f members/{id_primary}.json"))?;
        if !root.join(format!("members/{id_primary}.json")).exists() {
            return Err("the primary's record is gone".into());
        }
        Ok(())
    });
    cases.run("list enroll/ (0711)", || {
        let o = attack(&c, "ls enroll/");
        if !o.refused() {
            return Err(format!("enroll/ listed: {o:?}"));
        }
        if o.stdout.contains(&token_c) {
            return Err("the pending token was listed".into());
        }
        Ok(())
    });

    cases.run(
        "list inbox/ (1733: another node's claims and token ids)",
        || {
            let o = attack(&c, "ls inbox/");
            if !o.refused() {
                return Err(format!("inbox/ listed: {o:?}"));
            }
            Ok(())
        },
    );

    // New names in the sticky nodes/: written, never believed, deleted by the primary.
    cases.run("create nodes/node-c.json and nodes/primary.json (squats)", || {
        let rec_c = forged_b
            .replace(&id_b, "node-c-abcdef")
            .replace("\"node-b\"", "\"node-c\"");
        let rec_p = forged_b
            .replace(&id_b, &id_primary)
            .replace("\"node-b\"", "\"primary\"");
        let o = attack(
            &c,
            &format!(
                "printf '%s' '{rec_c}' > nodes/node-c.json && printf '%s' '{rec_p}' > nodes/primary.json"
            ),
        );
        if !o.success() {
            return Err(format!("the sticky directory refused a new name: {o:?}"));
        }
        // Never listed as active, while the primary takes its turns.
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(4) {
            let m = c.members();
            if m.iter().any(|(id, n, _)| n == "node-c" || id == "node-c-abcdef") {
                return Err(format!("the squat is listed: {m:?}"));
            }
            if m.iter().filter(|(id, _, _)| *id == id_primary).count() != 1 {
                return Err(format!("the primary's record is shadowed: {m:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_for(
            "the primary to delete the squatted records",
            TURN,
            Duration::from_millis(200),
            || {
                (!root.join("nodes/node-c.json").exists() && !root.join("nodes/primary.json").exists())
                    .then_some(())
            },
        );
        Ok(())
    });

    // Its own record's mtime in the future: not alive. node-a is stopped meanwhile, so that its
    // heartbeat does not stamp the record back to now.
    cases.run("own record's mtime a day ahead: not active", || {
        node_a.signal(nix::sys::signal::Signal::SIGSTOP);
        let o = attack(&c, "touch -d '+1 day' nodes/node-a.json");
        let r = (|| {
            if !o.success() {
                return Err(format!("touching its own record failed: {o:?}"));
            }
            let watch = Instant::now();
            while watch.elapsed() < Duration::from_secs(2) {
                if !c.active_named("node-a").is_empty() {
                    return Err(format!(
                        "a record stamped a day ahead is active: {:?}",
                        c.members()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })();
        node_a.signal(nix::sys::signal::Signal::SIGCONT);
        r?;
        // Back to normal once it heartbeats again.
        c.wait_joined("node-a");
        Ok(())
    });

    // Forged notes in the sticky inbox/: none becomes an event; the primary deletes them.
    let markers = [1_000_000_004_001u64, 1_000_000_004_002, 1_000_000_004_003];
    cases.run("forged inbox notes: none an event, all deleted", || {
        let ms = now_ms();
        let for_b = note_json("left", &id_b, markers[0]);
        let own_claiming_b = note_json("left", &id_b, markers[1]);
        let flood = note_json("removed", &id_b, markers[2]);
        let script = format!(
            "printf '%s' '{for_b}' > inbox/node-b.{ms}-forged1.event.json && \
             printf '%s' '{own_claiming_b}' > inbox/node-a.{ms}-forged2.event.json && \
             head -c 52428800 /dev/zero > inbox/node-a.{ms}-big.event.json && \
             i=0; while [ $i -lt 1000 ]; do printf '%s' '{flood}' > inbox/node-a.{ms}-f$i.event.json || exit 1; i=$((i+1)); done"
        );
        let o = attack(&c, &script);
        if !o.success() {
            return Err(format!("writing the notes failed: {o:?}"));
        }
        // (All 1,003 were written: the script stops at the first failed write. The primary may
        // have deleted some already.)
        // The primary stays healthy while it works through them.
        wait_for(
            "the primary to delete the forged notes",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || {
                let (s, _) = get_json(c.primary.port, "/api/fleet/cluster/health", None).ok()?;
                assert_eq!(s, 200, "the primary's health during the flood");
                attackers_inbox_files(&c).is_empty().then_some(())
            },
        );
        let events = c.events();
        let forged: Vec<&Event> = events
            .iter()
            .filter(|e| {
                markers.contains(&e.at_ms)
                    || (e.node_id == id_b
                        && matches!(e.kind, EventKind::Left | EventKind::Removed))
            })
            .collect();
        if !forged.is_empty() {
            return Err(format!("forged events recorded: {forged:?}"));
        }
        if !has_joined(&events, &id_a) || !has_joined(&events, &id_b) {
            return Err(format!("the joined events are gone: {events:?}"));
        }
        Ok(())
    });

    // Not plain files: a FIFO and links where the primary (root) reads notes and records.
    cases.run(
        "FIFO, symlinks and a hard link in inbox/ and nodes/: ignored, deleted",
        || {
            let ms = now_ms();
            let script = format!(
                "mkfifo inbox/node-a.{ms}-fifo.event.json && \
             ln -s /dev/zero inbox/node-a.{ms}-zero.event.json && \
             ln -s /etc/shadow inbox/node-a.{ms}-shadow.event.json && \
             ln -s ../members/{id_primary}.json nodes/node-x.json && \
             mkfifo nodes/node-y.json && \
             {{ ln nodes/node-b.json nodes/node-z.json 2>/dev/null || true; }}"
            );
            let o = attack(&c, &script);
            if !o.success() {
                return Err(format!("making them failed: {o:?}"));
            }
            // The primary answers throughout (a blocking open of the FIFO would hang its turn).
            wait_for(
                "the primary to delete the FIFOs and links",
                TURN,
                Duration::from_millis(200),
                || {
                    let (s, _) =
                        get_json(c.primary.port, "/api/fleet/cluster/health", None).ok()?;
                    assert_eq!(s, 200, "the primary's health");
                    let left: Vec<_> = ["node-x", "node-y", "node-z"]
                        .iter()
                        .map(|n| root.join(format!("nodes/{n}.json")))
                        .filter(|p| std::fs::symlink_metadata(p).is_ok())
                        .collect();
                    (left.is_empty() && attackers_inbox_files_or_links(&c).is_empty()).then_some(())
                },
            );
            let m = c.members();
            if m.iter()
                .any(|(_, n, _)| ["node-x", "node-y", "node-z"].contains(&n.as_str()))
            {
                return Err(format!("a link or FIFO is listed: {m:?}"));
            }
            record_b_intact()?;
            if !root.join(format!("members/{id_primary}.json")).exists() {
                return Err("the primary's record went with the link".into());
            }
            Ok(())
        },
    );

    // Admin-only operations from node-a's own configuration.
    let config_a = node_a.config_path();
    for (case, extra) in [
        ("package build as node-a: refused", ""),
        (
            "package build --no-enrollment as node-a: refused",
            " --no-enrollment",
        ),
    ] {
        cases.run(case, || {
            let out = node_a.dir.path().join("evil.tar.gz");
            let o = run_as(
                UID_A,
                &format!(
                    "'{}' package build --node-name evil --format bundle --ethernet skip --output '{}' --template-dir '{}' --config '{}'{extra}",
                    bin_path("fleet-server").display(),
                    out.display(),
                    c.template().display(),
                    config_a.display()
                ),
                LIMIT,
            );
            eprintln!("storage_scope: {case}: {o:?}");
            if o.success() || out.exists() {
                let _ = std::fs::remove_file(&out);
                return Err(format!("built: {o:?}"));
            }
            if o.stderr.contains("node template") {
                return Err(format!("refused for its template, not its scope: {o:?}"));
            }
            if c.pending().iter().any(|r| r["node_name"] == "evil") {
                return Err("a package for `evil` is pending".into());
            }
            Ok(())
        });
    }
    cases.run("package list / revoke as node-a: refused", || {
        let fs = bin_path("fleet-server");
        for args in [
            "package list --json".to_string(),
            format!("package revoke {}", &token_c[..12]),
        ] {
            let o = run_as(
                UID_A,
                &format!(
                    "'{}' {args} --config '{}'",
                    fs.display(),
                    config_a.display()
                ),
                LIMIT,
            );
            eprintln!("storage_scope: {args} as node-a: {o:?}");
            if o.success() {
                return Err(format!("`{args}` succeeded: {o:?}"));
            }
        }
        if c.pending()
            .iter()
            .all(|r| r["token_id"] != token_c.as_str())
        {
            return Err("node-c's package is no longer pending".into());
        }
        Ok(())
    });
    cases.run("remove node-b / build through node-a's API: 403", || {
        let (s, body) = http(
            "DELETE",
            node_a.port,
            &format!("/api/fleet/cluster/nodes/{id_b}"),
            &[("X-API-Key", TEST_API_KEY)],
        )
        .map_err(|e| e.to_string())?;
        if s != 403 {
            return Err(format!("DELETE on node-a answered {s}: {body}"));
        }
        let (s, body) = fleet_tests::http::send_lenient(
            std::net::TcpStream::connect(("127.0.0.1", node_a.port)).map_err(|e| e.to_string())?,
            "127.0.0.1",
            "POST",
            "/api/fleet/cluster/packages",
            &[
                ("X-API-Key", TEST_API_KEY),
                ("Content-Type", "application/json"),
            ],
            br#"{"node_name":"evil2","format":"bundle","ethernet":"skip"}"#,
            LIMIT,
        )
        .map_err(|e| e.to_string())?;
        if s != 403 {
            return Err(format!("POST packages on node-a answered {s}: {body:.200}"));
        }
        if c.active_named("node-b") != vec![id_b.clone()] {
            return Err(format!("node-b changed: {:?}", c.members()));
        }
        Ok(())
    });

    // A claim squat: a wrong proof for node-c's pending token gives no binding; the real node-c
    // then enrolls with its package.
    let mut node_c = None;
    cases.run(
        "claim squat for node-c: no binding; the real node-c enrolls",
        || {
            let claim = format!("inbox/claim-{token_c}");
            // The claim as a node writes it (its proof and its name), with a wrong proof.
            let wrong = format!(r#"{{"proof":"{}","name":"node-c"}}"#, "0".repeat(64));
            let o = attack(&c, &format!("printf '%s' '{wrong}' > {claim}"));
            if !o.success() {
                return Err(format!("writing the claim failed: {o:?}"));
            }
            wait_for(
                "the primary to delete the squatted claim",
                TURN,
                Duration::from_millis(200),
                || (!root.join(&claim).exists()).then_some(()),
            );
            if c.bindings().contains_key("node-c")
                || root.join(format!("granted/{token_c}")).exists()
            {
                return Err(format!("the squat was granted: {:?}", c.bindings()));
            }
            if c.pending()
                .iter()
                .all(|r| r["token_id"] != token_c.as_str())
            {
                return Err("the squat used up node-c's package".into());
            }
            let d = c.start_node(&bundle_c, "node-c", UID_C);
            c.wait_joined("node-c");
            wait_health(&d, 200);
            let b = c.bindings();
            node_c = Some(d);
            if b.get("node-c") != Some(&(UID_C.to_string(), 0)) {
                return Err(format!("node-c's binding: {b:?}"));
            }
            Ok(())
        },
    );

    // The same squat, there when the real node claims: the primary is stopped meanwhile, so
    // the node finds the squat in its claim's place. It waits, and enrolls once the primary has
    // thrown the squat out; the squatter never gets the name.
    let mut node_e = None;
    cases.run(
        "claim squat there before the real node-e claims: it waits, then enrolls",
        || {
            let claim = root.join(format!("inbox/claim-{token_e}"));
            c.primary.signal(nix::sys::signal::Signal::SIGSTOP);
            let r = (|| {
                let wrong = format!(r#"{{"proof":"{}","name":"node-e"}}"#, "1".repeat(64));
                let o = attack(
                    &c,
                    &format!("printf '%s' '{wrong}' > inbox/claim-{token_e}"),
                );
                if !o.success() {
                    return Err(format!("writing the claim failed: {o:?}"));
                }
                let d = c.start_node(&bundle_e, "node-e", UID_E);
                std::thread::sleep(Duration::from_millis(1500));
                let owner = std::fs::metadata(&claim).map(|m| m.uid()).ok();
                if owner != Some(UID_A) {
                    return Err(format!("the squat's place: owner {owner:?}: {}", d.log()));
                }
                Ok(d)
            })();
            c.primary.signal(nix::sys::signal::Signal::SIGCONT);
            let d = r?;
            let watch = Instant::now();
            let mut joined = false;
            while watch.elapsed() < JOIN {
                let b = c.bindings();
                if b.get("node-e")
                    .is_some_and(|(uid, _)| *uid != UID_E.to_string())
                {
                    return Err(format!("node-e bound to another uid: {b:?}"));
                }
                if !c.active_named("node-e").is_empty() {
                    joined = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !joined {
                return Err(format!("node-e did not join: {}", d.log()));
            }
            wait_health(&d, 200);
            let b = c.bindings();
            node_e = Some(d);
            if b.get("node-e") != Some(&(UID_E.to_string(), 0)) {
                return Err(format!("node-e's binding: {b:?}"));
            }
            Ok(())
        },
    );

    // A package revoked while its machine's claim waits for the primary: refused, not bound.
    cases.run(
        "a package revoked while its claim waits: refused, no binding",
        || {
            let claim = root.join(format!("inbox/claim-{token_f}"));
            c.primary.signal(nix::sys::signal::Signal::SIGSTOP);
            let r = (|| {
                let d = c.start_node(&bundle_f, "node-f", UID_F);
                wait_for(
                    "node-f's claim in inbox/",
                    JOIN,
                    Duration::from_millis(50),
                    || claim.exists().then_some(()),
                );
                let o = c.cli(&["package", "revoke", &token_f]);
                if !o.status.success() {
                    return Err(format!("package revoke failed: {}", text(&o)));
                }
                Ok(d)
            })();
            c.primary.signal(nix::sys::signal::Signal::SIGCONT);
            let d = r?;
            wait_for(
                &format!("`{REFUSED}` in node-f's log"),
                JOIN,
                Duration::from_millis(100),
                || d.log().contains(REFUSED).then_some(()),
            );
            wait_health(&d, 503);
            let b = c.bindings();
            if b.contains_key("node-f") || b.values().any(|(uid, _)| *uid == UID_F.to_string()) {
                return Err(format!("node-f was bound: {b:?}"));
            }
            if claim.exists() || root.join(format!("granted/{token_f}")).exists() {
                return Err("the claim was left or granted".into());
            }
            Ok(())
        },
    );

    // A used package installed again by another uid.
    cases.run("node-b's used package as uid 52004: refused", || {
        let d = c.start_node(&bundle_b, "node-b", UID_D);
        wait_for(
            &format!("`{REFUSED}` in the log of the second node-b"),
            JOIN,
            Duration::from_millis(100),
            || d.log().contains(REFUSED).then_some(()),
        );
        wait_health(&d, 503);
        let b = c.bindings();
        if b.values().any(|(uid, _)| *uid == UID_D.to_string()) {
            return Err(format!("a binding for 52004: {b:?}"));
        }
        if c.active_named("node-b") != vec![id_b.clone()] {
            return Err(format!("node-b changed: {:?}", c.members()));
        }
        wait_health(&node_b, 200);
        Ok(())
    });

    // The cluster is intact.
    cases.run("afterwards: members, events and bindings intact", || {
        let mut want = vec!["node-a", "node-b", "primary"];
        if node_c.is_some() {
            want.push("node-c");
        }
        if node_e.is_some() {
            want.push("node-e");
        }
        c.wait_active_names(&want, Duration::from_secs(10));
        let events = c.events();
        if !has_joined(&events, &id_a) || !has_joined(&events, &id_b) {
            return Err(format!("the joined events are gone: {events:?}"));
        }
        let mut now = c.bindings();
        now.remove("node-c");
        now.remove("node-e");
        if now != bindings {
            return Err(format!("bindings changed: {bindings:?} -> {now:?}"));
        }
        for d in [&node_a, &node_b] {
            wait_health(d, 200);
        }
        c.primary.wait_health(200, Duration::from_secs(5));
        Ok(())
    });

    // Removing node-b through the primary's API drops its binding; node-b reports removed.
    cases.run("remove node-b through the primary's API", || {
        let (s, body) = http(
            "DELETE",
            c.primary.port,
            &format!("/api/fleet/cluster/nodes/{id_b}"),
            &[("X-API-Key", TEST_API_KEY)],
        )
        .map_err(|e| e.to_string())?;
        if s != 200 {
            return Err(format!("DELETE answered {s}: {body}"));
        }
        wait_for(
            "bindings/node-b and nodes/node-b.json to go",
            TURN,
            Duration::from_millis(100),
            || {
                (!root.join("bindings/node-b").exists() && !root.join("nodes/node-b.json").exists())
                    .then_some(())
            },
        );
        wait_health(&node_b, 503);
        if !c.active_named("node-b").is_empty() {
            return Err(format!("node-b still listed: {:?}", c.members()));
        }
        Ok(())
    });

    eprintln!("storage_scope: took {:?}", started.elapsed());
    drop(node_c);
    drop(node_e);
    cases.finish();
}
