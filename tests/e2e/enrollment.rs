//! Enrollment end to end (issue 7), with real redis-servers (ACLs) and the storage backend:
//! a package enrolls one node, once; a second machine, a revoked or an expired package is
//! refused with a clear log line, health 503 and an `enrollment_rejected` event; a removed
//! node's Redis user stops working at once; two nodes racing for one token: exactly one wins;
//! a used package holds no credential that still opens the cluster; a managed Redis (no ACL
//! rights) falls back to the shared credentials and says so; `--no-enrollment` keeps the old
//! behaviour and the Settings page marks it.
//!
//! Everything on loopback, no root: bundles are built with `--ethernet skip` and provisioned
//! with `provision.sh --root DIR --no-systemd --port P`, as `make demo` does.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_installer_stub::sealed::{self, FileKey, KEY_FILE_NAME, KeySource, SEALED_FILE_NAME};
use fleet_server::app::enroll::Token;
use fleet_server::cluster::EnrollmentRecord;
use fleet_server::cluster::{Event, EventKind};
use fleet_server::config::Config;
use fleet_tests::pkginstall::{self, mode, output_within};
use fleet_tests::{
    Daemon, RedisServer, TEST_API_KEY, bin_path, free_port, get_json, http, require_tool, wait_for,
};

use fleet_tests::install::Daemonized;
use fleet_tests::install::assert_ok;
use fleet_tests::local_now_ms as now_ms;
use fleet_tests::output_text as text;
use fleet_tests::web::{Client, WEB_PASSWORD};

/// How long one command (a build, provision.sh, the CLI) may take.
const LIMIT: Duration = Duration::from_secs(60);
/// How long a node may take to join, or to be refused.
const JOIN: Duration = Duration::from_secs(15);

const REDIS_PASSWORD: &str = "enroll-e2e-redis-pw-5e1f0a93";
/// The managed Redis's user: everything but ACL management (`-@admin`).
const MANAGED_USER: &str = "admin";
const MANAGED_PASSWORD: &str = "enroll-e2e-managed-pw-82c4e7";
const DATABASE_KEY: &str = "enroll-e2e-database-key-3f9b1c0d7a";
const PAYLOAD_KEY: &str = "enroll-e2e-payload-key-c81d2e4f60";

const REFUSED: &str = "❌ Enrollment refused:";

/// Numbers the bundles built (two builds for one name get two files).
static BUILDS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A redis-server whose default user (requirepass) is an admin: ACL users are made.
    Redis,
    /// A redis-server where the primary's user may do everything but manage ACLs.
    ManagedRedis,
    /// The storage backend in a shared directory.
    Storage,
}

/// A primary with the dashboard and a node template, on one backend. Fields drop in order:
/// the primary stops before its Redis, and the directory goes last.
struct Cluster {
    primary: Daemon,
    redis: Option<RedisServer>,
    dir: tempfile::TempDir,
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

impl Cluster {
    fn start(backend: Backend) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = pkginstall::node_template(&dir.path().join("node-template"));
        let (redis, backend_yaml) = match backend {
            Backend::Redis => {
                let r = RedisServer::start_with(Some(REDIS_PASSWORD), &[]);
                let yaml = r.cluster_yaml();
                (Some(r), yaml)
            }
            Backend::ManagedRedis => {
                let r = RedisServer::start_with(Some(REDIS_PASSWORD), &[]);
                let reply = r
                    .command(&[
                        "ACL",
                        "SETUSER",
                        MANAGED_USER,
                        "on",
                        &format!(">{MANAGED_PASSWORD}"),
                        "~*",
                        "&*",
                        "+@all",
                        "-@admin",
                    ])
                    .expect("ACL SETUSER");
                assert!(reply.starts_with("+OK"), "{reply}");
                let yaml = format!(
                    "  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_username: {MANAGED_USER}\n  redis_password: \"{MANAGED_PASSWORD}\"\n",
                    r.port
                );
                (Some(r), yaml)
            }
            Backend::Storage => {
                let shared = dir.path().join("shared");
                std::fs::create_dir(&shared).expect("the shared directory");
                (
                    None,
                    format!("  backend: storage\n  storage_path: {}\n", shared.display()),
                )
            }
        };
        let (hash, public) =
            fleet_server::crypto::credentials_for(WEB_PASSWORD).expect("credentials");
        let pdir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {state}\ncluster:\n  enabled: true\n  node_name: primary\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{backend_yaml}auth:\n  api_key: {TEST_API_KEY}\n  web_username: admin\n  web_password_hash: \"{hash}\"\n  session_public_key: \"{public}\"\nsessions:\n  backend: memory\nencryption:\n  database_key: {DATABASE_KEY}\n  payload_key: {PAYLOAD_KEY}\npackage:\n  template_dir: {tpl}\n",
            state = pdir.path().join("state").display(),
            tpl = template.display(),
        );
        let primary = Daemon::start_with_config("primary", pdir, port, &config);
        primary.wait_health(200, Duration::from_secs(10));
        Cluster {
            primary,
            redis,
            dir,
        }
    }

    fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a Redis cluster")
    }

    fn config(&self) -> Config {
        Config::load(&self.primary.config_path()).expect("the primary's configuration")
    }

    /// `fleet-server ARGS --config <primary's>`, bounded.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.primary.config_path(), args)
    }

    /// `fleet-server ARGS --config CONFIG`, bounded.
    fn cli_as(&self, config: &Path, args: &[&str]) -> Output {
        output_within(
            Command::new(bin_path("fleet-server"))
                .args(args)
                .arg("--config")
                .arg(config),
            LIMIT,
        )
    }

    /// `package build` of a Linux bundle for `node` on the primary's configuration; returns
    /// the bundle and the build's output.
    fn build(&self, node: &str, extra: &[&str]) -> (PathBuf, String) {
        self.build_as(&self.primary.config_path(), node, extra)
    }

    /// The same, with another configuration of this cluster.
    fn build_as(&self, config: &Path, node: &str, extra: &[&str]) -> (PathBuf, String) {
        let started = Instant::now();
        let out = self.dir.path().join(format!(
            "{node}-{}.tar.gz",
            BUILDS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut args = vec![
            "package",
            "build",
            "--node-name",
            node,
            "--format",
            "bundle",
            "--output",
            out.to_str().expect("UTF-8 path"),
        ];
        if !extra.contains(&"--ethernet") {
            args.extend_from_slice(&["--ethernet", "skip"]);
        }
        args.extend_from_slice(extra);
        let o = self.cli_as(config, &args);
        assert_ok(&o, "fleet-server package build");
        eprintln!(
            "enrollment: package build {node} {extra:?} took {:?}",
            started.elapsed()
        );
        (out, text(&o))
    }

    /// `package list --json`: the pending packages.
    fn pending(&self) -> Vec<serde_json::Value> {
        fleet_tests::pending_packages(&self.primary.config_path())
    }

    /// The one pending package for `node`: its token id.
    fn pending_token(&self, node: &str) -> String {
        fleet_tests::pending_token(&self.primary.config_path(), node)
    }

    fn active_named(&self, name: &str) -> Vec<String> {
        fleet_tests::active_named(self.primary.port, name)
    }

    /// Waits until the primary lists `name` as active; returns its id.
    fn wait_joined(&self, name: &str) -> String {
        fleet_tests::wait_joined(self.primary.port, name, JOIN)
    }

    /// The cluster's events, newest first, read from the backend as the primary would.
    fn events(&self) -> Vec<Event> {
        let config = self.config();
        block_on(async {
            let b = fleet_server::cluster::open(&config).expect("the backend");
            b.events(500).await.expect("the events")
        })
    }

    fn rejections(&self, token: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| {
                e.kind == EventKind::EnrollmentRejected
                    && e.detail.get("token_id").map(String::as_str) == Some(token)
            })
            .collect()
    }

    /// A fresh extraction of `bundle` on a new "machine" `label`: the bundle's directory.
    fn extract(&self, bundle: &Path, label: &str) -> PathBuf {
        let unpack = self.dir.path().join(label).join("unpacked");
        pkginstall::extract_bundle(bundle, &unpack)
    }

    /// `provision.sh` on a new machine, which must say the node joined (exit 0).
    fn provision(&self, bundle: &Path, label: &str) -> Machine {
        let (m, o) = self.provision_with(bundle, label);
        assert_ok(&o, &format!("provision.sh on {label}"));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("✅ Joined the cluster as "), "{out}");
        m
    }

    /// `provision.sh` on a machine whose enrollment is refused: exit 40 and the reason.
    fn provision_refused(&self, bundle: &Path, label: &str) -> Machine {
        let (m, o) = self.provision_with(bundle, label);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(40), "provision.sh on {label}: {err}");
        assert!(err.contains(REFUSED), "{err}");
        m
    }

    /// `provision.sh --root <label>/root --no-systemd --port P` from a fresh extraction.
    fn provision_with(&self, bundle: &Path, label: &str) -> (Machine, Output) {
        self.provision_with_env(bundle, label, &[])
    }

    /// The same, with extra environment for provision.sh.
    fn provision_with_env(
        &self,
        bundle: &Path,
        label: &str,
        extra_env: &[(&str, &str)],
    ) -> (Machine, Output) {
        let dir = self.extract(bundle, label);
        let root = self.dir.path().join(label).join("root");
        let port = free_port();
        let daemon = Daemonized {
            pid_file: root.join("run/fleet-server.pid"),
            log: root.join("var/log/fleet-server.log"),
        };
        let o = output_within(
            Command::new(dir.join("provision.sh"))
                .arg("--root")
                .arg(&root)
                .arg("--no-systemd")
                .arg("--port")
                .arg(port.to_string())
                .env_clear()
                .env("PATH", pkginstall::INSTALLER_PATH)
                .envs(extra_env.iter().copied())
                .current_dir(&dir),
            LIMIT,
        );
        let m = Machine {
            daemon,
            root,
            port,
            dir,
        };
        (m, o)
    }
}

/// A node provisioned from a bundle (its daemon is killed on drop).
struct Machine {
    daemon: Daemonized,
    root: PathBuf,
    port: u16,
    /// The extracted bundle.
    dir: PathBuf,
}

impl Machine {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.daemon.log).unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.root.join("etc/fleet-server/config.yaml")
    }

    fn config(&self) -> Config {
        let p = self.config_path();
        Config::parse(&std::fs::read_to_string(&p).expect("the node's config"), &p)
            .expect("the node's config parses")
    }

    fn health(&self) -> Option<(u16, serde_json::Value)> {
        get_json(self.port, "/api/fleet/cluster/health", None).ok()
    }

    /// Waits for the refusal: the log line, then health 503 naming it; returns the reason.
    fn wait_refused(&self) -> String {
        wait_for(
            &format!("`{REFUSED}` in the node's log"),
            JOIN,
            Duration::from_millis(50),
            || self.log().contains(REFUSED).then_some(()),
        );
        let body = wait_for(
            "health 503 from the refused node",
            JOIN,
            Duration::from_millis(50),
            || match self.health() {
                Some((503, b)) => Some(b),
                _ => None,
            },
        );
        let reason = body["reason"].as_str().unwrap_or_default().to_string();
        assert!(reason.contains("enrollment refused"), "{body}");
        reason
    }

    /// The configuration sealed in the package, opened with the package's own key file.
    fn sealed_config(&self) -> String {
        sealed_config(&self.dir)
    }
}

/// Opens `<bundle dir>/fleet-config.sealed` with the key file beside it.
fn sealed_config(bundle_dir: &Path) -> String {
    let blob = std::fs::read(bundle_dir.join(SEALED_FILE_NAME)).expect("the sealed blob");
    let key =
        FileKey::from_bytes(&std::fs::read(bundle_dir.join(KEY_FILE_NAME)).expect("the key file"))
            .expect("a key file");
    let (_, payload) = sealed::open(&blob, KeySource::KeyFile(&key), (now_ms() / 1000).max(1))
        .expect("the package opens with its own key");
    payload.config_yaml
}

/// Asserts the refused node is refused once (no retry storm) and recorded once.
fn assert_refused_once(c: &Cluster, m: &Machine, token: &str) {
    let rec = wait_for(
        "an enrollment_rejected event for the token",
        JOIN,
        Duration::from_millis(100),
        || {
            let r = c.rejections(token);
            (!r.is_empty()).then_some(r)
        },
    );
    assert!(
        rec[0].detail.get("reason").is_some_and(|r| !r.is_empty()),
        "{rec:?}"
    );
    // A while later: still one log line and one event, still 503.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(m.log().matches(REFUSED).count(), 1, "{}", m.log());
    assert_eq!(c.rejections(token).len(), 1);
    assert_eq!(m.health().map(|h| h.0), Some(503));
}

/// Item 1: one package installed on two machines. The first node redeems the token, writes
/// its full configuration (0600; on Redis with a user of its own) and joins; the second is
/// refused with the log line and health 503, and the cluster records the rejection.
fn one_package_on_two_machines(backend: Backend) {
    let started = Instant::now();
    let c = Cluster::start(backend);
    let (bundle, out) = c.build("node2", &[]);
    assert!(out.contains("Enrollment: single-use token"), "{out}");
    let token = c.pending_token("node2");

    let a = c.provision(&bundle, "machine-a");
    let id = c.wait_joined("node2");
    assert!(id.starts_with("node2-"), "{id}");
    assert!(a.log().contains("✅ Enrollment redeemed"), "{}", a.log());
    assert_eq!(mode(&a.config_path()), 0o600);
    let full = a.config();
    assert!(full.enrollment.is_none(), "the bootstrap was replaced");
    // Issue 14: the node can check the API key but does not hold it.
    assert!(full.auth.api_key.is_none(), "the plain API key travelled");
    assert_eq!(full.auth.api_key_digest(), test_api_key_digest());
    if backend == Backend::Redis {
        assert_eq!(
            full.cluster.redis_username.as_deref(),
            Some("fleet-node-node2")
        );
        let pw = full.cluster.redis_password.expect("the node's password");
        let (auth, _) = c
            .redis()
            .connect_as("fleet-node-node2", pw.expose())
            .expect("connecting");
        assert!(auth.starts_with("+OK"), "{auth}");
    }
    assert!(c.pending().is_empty(), "the package is no longer pending");

    // The same bundle, extracted afresh on a second machine.
    if backend == Backend::Redis {
        // As after a Redis restart (persistence keeps the data, not the script cache): the
        // rejection must still be recorded with the enrollment user's rights.
        let r = c
            .redis()
            .command(&["SCRIPT", "FLUSH"])
            .expect("SCRIPT FLUSH");
        assert!(r.starts_with("+OK"), "{r}");
    }
    let b = c.provision_refused(&bundle, "machine-b");
    let reason = b.wait_refused();
    assert!(reason.contains("already used"), "{reason}");
    assert_refused_once(&c, &b, &token);
    // The first node is still the only node2.
    assert_eq!(c.active_named("node2"), vec![id]);
    eprintln!(
        "enrollment: one package on two machines ({backend:?}) took {:?}",
        started.elapsed()
    );
}

#[test]
fn one_package_on_two_machines_redis() {
    one_package_on_two_machines(Backend::Redis);
}

#[test]
fn one_package_on_two_machines_storage() {
    one_package_on_two_machines(Backend::Storage);
}

/// Item 2: a revoked package and an expired one are refused at first start; `package list`
/// shows them pending before, not after. On Redis, revoke by CLI (id prefix) and expire as
/// Redis does (PEXPIRE); on storage, revoke by API (DELETE) and expire by the record's date.
fn revoked_and_expired(backend: Backend) {
    let started = Instant::now();
    let c = Cluster::start(backend);
    let (revoked, _) = c.build("node3", &[]);
    let (expired, _) = c.build("node4", &[]);
    let pending = c.pending();
    assert_eq!(pending.len(), 2, "{pending:?}");
    let t3 = c.pending_token("node3");
    let t4 = c.pending_token("node4");
    let o = c.cli(&["package", "list"]);
    assert_ok(&o, "package list");
    for (node, t) in [("node3", &t3), ("node4", &t4)] {
        assert!(
            text(&o).contains(node) && text(&o).contains(&t[..12]),
            "{}",
            text(&o)
        );
    }

    match backend {
        Backend::Redis => {
            let users = c.redis().command(&["ACL", "USERS"]).unwrap();
            assert!(users.contains(&format!("fleet-enroll-{t3}")), "{users}");
            assert!(users.contains("fleet-node-node3"), "{users}");
            let o = c.cli(&["package", "revoke", &t3[..10]]);
            assert_ok(&o, "package revoke");
            assert!(
                text(&o).contains("✅ Revoked package") && text(&o).contains("node3"),
                "{}",
                text(&o)
            );
            // Its node user went with it; its enrollment user (which reads nothing) stays,
            // so that the refused node can record the rejection.
            let users = c.redis().command(&["ACL", "USERS"]).unwrap();
            assert!(!users.contains("fleet-node-node3"), "{users}");
            assert!(users.contains(&format!("fleet-enroll-{t3}")), "{users}");
            let r = c
                .redis()
                .command(&["PEXPIRE", &format!("fleet:cluster:enroll:{t4}"), "1"])
                .unwrap();
            assert!(r.starts_with(":1"), "{r}");
        }
        Backend::Storage => {
            let (s, body) = http(
                "DELETE",
                c.primary.port,
                &format!("/api/fleet/cluster/packages/{t3}"),
                &[("X-API-Key", TEST_API_KEY)],
            )
            .unwrap();
            assert_eq!(s, 200, "{body}");
            let file = c
                .dir
                .path()
                .join(format!("shared/cluster/enroll/{t4}.json"));
            // Read by its token id only: the directory cannot be listed by others, and the
            // configuration inside is sealed with the token's secret.
            assert_eq!(mode(&file), 0o644);
            assert_eq!(mode(file.parent().unwrap()), 0o711);
            let mut rec: EnrollmentRecord =
                serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            rec.expires_ms = now_ms() - 1000;
            std::fs::write(&file, serde_json::to_vec(&rec).unwrap()).unwrap();
        }
        Backend::ManagedRedis => unreachable!(),
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(c.pending().is_empty(), "{:?}", c.pending());
    let o = c.cli(&["package", "list"]);
    assert!(text(&o).contains("No pending packages."), "{}", text(&o));
    // Revoking again: nothing pending.
    let o = c.cli(&["package", "revoke", &t3[..12]]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no pending package"), "{}", text(&o));

    let m3 = c.provision_refused(&revoked, "machine-3");
    let m4 = c.provision_refused(&expired, "machine-4");
    for (m, t) in [(&m3, &t3), (&m4, &t4)] {
        let reason = m.wait_refused();
        assert!(reason.contains(&t[..8]), "{reason}");
        assert_refused_once(&c, m, t);
    }
    assert!(c.active_named("node3").is_empty() && c.active_named("node4").is_empty());
    // The events say who revoked.
    assert!(
        c.events()
            .iter()
            .any(|e| e.kind == EventKind::PackageRevoked && e.detail.get("token_id") == Some(&t3)),
        "{:?}",
        c.events()
    );
    eprintln!(
        "enrollment: revoked and expired ({backend:?}) took {:?}",
        started.elapsed()
    );
}

#[test]
fn revoked_and_expired_packages_are_refused_redis() {
    revoked_and_expired(Backend::Redis);
}

#[test]
fn revoked_and_expired_packages_are_refused_storage() {
    revoked_and_expired(Backend::Storage);
}

/// Item 3: removing a node deletes its Redis user: its open connection is closed and its
/// password no longer authenticates, so it can neither read nor write.
#[test]
fn a_removed_nodes_redis_user_stops_working_at_once() {
    let c = Cluster::start(Backend::Redis);
    let (bundle, _) = c.build("node2", &[]);
    let m = c.provision(&bundle, "machine-a");
    let id = c.wait_joined("node2");
    let cfg = m.config();
    let user = cfg.cluster.redis_username.clone().expect("its own user");
    assert_eq!(user, "fleet-node-node2");
    let pw = cfg.cluster.redis_password.clone().expect("its password");

    let (auth, mut open) = c.redis().connect_as(&user, pw.expose()).unwrap();
    assert!(auth.starts_with("+OK"), "{auth}");
    // It reads the index (which the primary fills at its next heartbeat).
    let r = open.call(&["ZCARD", "fleet:cluster:members"]).unwrap();
    assert!(r.starts_with(':'), "reads the cluster: {r}");
    // It writes its own record and nothing else (`privilege.rs` tries the rest).
    let r = open
        .call(&["HGET", "fleet:cluster:self:node2", "id"])
        .unwrap();
    assert!(r.contains(&id), "its own record: {r}");
    let r = open.call(&["SET", "fleet:probe", "x"]).unwrap();
    assert!(
        r.starts_with("-NOPERM"),
        "no other key under the prefix: {r}"
    );
    let r = open.call(&["GET", "other:key"]).unwrap();
    assert!(r.starts_with("-NOPERM"), "only the prefix: {r}");

    let (s, body) = http(
        "DELETE",
        c.primary.port,
        &format!("/api/fleet/cluster/nodes/{id}"),
        &[("X-API-Key", TEST_API_KEY)],
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    // The open connection was closed by Redis.
    match open.call(&["ZCARD", "fleet:cluster:members"]) {
        Err(_) => {}
        Ok(r) => panic!("the removed node's open connection still answers: {r}"),
    }
    let (auth, mut fresh) = c.redis().connect_as(&user, pw.expose()).unwrap();
    assert!(auth.starts_with("-WRONGPASS"), "{auth}");
    for cmd in [
        &["HGET", "fleet:cluster:self:node2", "id"][..],
        &["SET", "fleet:probe", "y"],
        &["ZCARD", "fleet:cluster:members"],
    ] {
        let r = fresh.call(cmd).unwrap();
        assert!(r.starts_with("-NOAUTH"), "{cmd:?}: {r}");
    }
    let users = c.redis().command(&["ACL", "USERS"]).unwrap();
    assert!(!users.contains(&user), "{users}");
    // The node itself is out: unhealthy, not listed.
    wait_for(
        "the removed node to report 503",
        JOIN,
        Duration::from_millis(100),
        || (m.health().map(|h| h.0) == Some(503)).then_some(()),
    );
    assert!(c.active_named("node2").is_empty());
}

/// Item 4, in the library: two backend clients (two "machines") take the same fresh record
/// at once, many times: exactly one gets it each time, and it opens with the token.
fn race_takes(config: &Config, rounds: usize) {
    block_on(async {
        let a = fleet_server::cluster::open(config).expect("backend a");
        let b = fleet_server::cluster::open(config).expect("backend b");
        let putter = fleet_server::cluster::open(config).expect("backend");
        for round in 0..rounds {
            let token = Token::generate();
            let yaml = format!("# round {round}\ncluster:\n  enabled: true\n");
            let (nonce, ciphertext) = fleet_server::app::enroll::seal(&token, &yaml);
            let rec = EnrollmentRecord {
                token_id: token.id.clone(),
                node_name: format!("racer-{round}"),
                created_ms: now_ms(),
                expires_ms: now_ms() + 60_000,
                built_by: "test".into(),
                package_id: "p".into(),
                users: vec![],
                nonce,
                ciphertext,
                claim: token.claim_digest(),
            };
            putter.put_enrollment(&rec).await.expect("put_enrollment");
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let spawn = |m: Arc<dyn fleet_server::cluster::Membership>| {
                let barrier = barrier.clone();
                let id = token.id.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    m.take_enrollment(&id).await
                })
            };
            let (ta, tb) = (spawn(a.clone()), spawn(b.clone()));
            let ra = ta.await.expect("task a").expect("take a");
            let rb = tb.await.expect("task b").expect("take b");
            let winners: Vec<EnrollmentRecord> = [ra, rb].into_iter().flatten().collect();
            assert_eq!(winners.len(), 1, "round {round}: exactly one taker wins");
            assert_eq!(
                fleet_server::app::enroll::open(&winners[0], &token).unwrap(),
                yaml
            );
            assert!(a.take_enrollment(&token.id).await.unwrap().is_none());
        }
    });
}

/// Item 4, black box: the same bootstrap configuration (the stub run from one bundle into
/// two roots) started on two nodes at once: one joins, the other is refused.
fn race_daemons(c: &Cluster) {
    let (bundle, _) = c.build("node2", &[]);
    let dir = c.extract(&bundle, "race");
    let mut children = Vec::new();
    let roots: Vec<PathBuf> = ["race-a", "race-b"]
        .iter()
        .map(|l| c.dir.path().join(l))
        .collect();
    for root in &roots {
        std::fs::create_dir_all(root).expect("the racer's root");
        let o = output_within(
            Command::new(dir.join("fleet-installer-stub"))
                .arg("--target-root")
                .arg(root)
                .env_clear()
                .env("PATH", pkginstall::INSTALLER_PATH)
                .current_dir(&dir),
            LIMIT,
        );
        assert_ok(&o, "fleet-installer-stub");
    }
    for root in &roots {
        let port = free_port();
        let log = std::fs::File::create(root.join("serve.log")).unwrap();
        let child = Command::new(bin_path("fleet-server"))
            .arg("serve")
            .arg("--config")
            .arg(root.join("etc/fleet-server/config.yaml"))
            .arg("--root")
            .arg(root)
            .arg("--port")
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("fleet-server serve");
        children.push(Served {
            child,
            port,
            log: root.join("serve.log"),
        });
    }
    let outcome = |s: &Served| -> Option<bool> {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        if log.contains("✅ Enrollment redeemed") {
            Some(true)
        } else if log.contains(REFUSED) {
            Some(false)
        } else {
            None
        }
    };
    let results = wait_for(
        "both racers to finish enrolling",
        JOIN,
        Duration::from_millis(50),
        || {
            let r: Vec<bool> = children.iter().filter_map(outcome).collect();
            (r.len() == 2).then_some(r)
        },
    );
    assert_eq!(
        results.iter().filter(|w| **w).count(),
        1,
        "exactly one racer wins: {results:?}"
    );
    let winner = &children[results.iter().position(|w| *w).unwrap()];
    let loser = &children[results.iter().position(|w| !*w).unwrap()];
    c.wait_joined("node2");
    assert_eq!(c.active_named("node2").len(), 1);
    let (s, _) = get_json(winner.port, "/api/fleet/cluster/health", None).unwrap();
    assert_eq!(s, 200);
    let (s, body) = get_json(loser.port, "/api/fleet/cluster/health", None).unwrap();
    assert_eq!(s, 503, "{body}");
}

/// A `fleet-server serve` started by the race (killed on drop).
struct Served {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- racer's log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_nodes_racing_for_one_token_redis() {
    let started = Instant::now();
    let c = Cluster::start(Backend::Redis);
    race_takes(&c.config(), 100);
    race_daemons(&c);
    eprintln!("enrollment: race (redis) took {:?}", started.elapsed());
}

#[test]
fn two_nodes_racing_for_one_token_storage() {
    let started = Instant::now();
    let c = Cluster::start(Backend::Storage);
    race_takes(&c.config(), 100);
    race_daemons(&c);
    eprintln!("enrollment: race (storage) took {:?}", started.elapsed());
}

/// Item 5: after redemption, the package's own contents (the sealed configuration opened
/// with its key file) hold no credential that still opens the cluster. The API key, the
/// dashboard password hash, the encryption keys and the shared Redis password are absent;
/// every secret-looking value in it is tried against redis-server (as every user) and the
/// primary's API: all refused, except the enrollment user, which can read nothing.
#[test]
fn a_used_package_opens_nothing() {
    let c = Cluster::start(Backend::Redis);
    let (bundle, _) = c.build("node2", &[]);
    let token = c.pending_token("node2");
    let m = c.provision(&bundle, "machine-a");
    c.wait_joined("node2");
    let yaml = m.sealed_config();

    let boot = Config::parse(&yaml, Path::new("sealed")).expect("the bootstrap parses");
    assert!(boot.auth.api_key.is_none(), "no API key:\n{yaml}");
    assert!(boot.auth.web_password.is_none() && boot.auth.web_password_hash.is_none());
    assert!(boot.encryption.database_key.is_none() && boot.encryption.payload_key.is_none());
    assert!(boot.sessions.redis.password.is_none());
    let enroll = boot.enrollment.as_ref().expect("the enrollment token");
    assert_eq!(enroll.token_id, token);
    let enroll_user = boot.cluster.redis_username.clone().expect("a Redis user");
    assert_eq!(enroll_user, format!("fleet-enroll-{token}"));
    let enroll_pw = boot.cluster.redis_password.clone().expect("its password");
    let full = std::fs::read_to_string(m.config_path()).unwrap();
    let node_pw = m
        .config()
        .cluster
        .redis_password
        .expect("the node's password");
    for secret in [
        REDIS_PASSWORD,
        TEST_API_KEY,
        DATABASE_KEY,
        PAYLOAD_KEY,
        node_pw.expose(),
    ] {
        assert!(!yaml.contains(secret), "the package holds `{secret}`");
    }
    assert!(full.contains(DATABASE_KEY), "the node did get the keys");

    // Every value that could be a credential: the words of the file, 16 characters or more.
    let words: Vec<&str> = yaml
        .split(|ch: char| ch.is_whitespace() || ch == '"' || ch == '\'' || ch == ':')
        .filter(|w| w.len() >= 16)
        .collect();
    assert!(words.contains(&enroll_pw.expose()), "{words:?}");
    let users = [
        "default",
        enroll_user.as_str(),
        "fleet-node-node2",
        "fleet-node-primary",
    ];
    let r = c.redis();
    for w in &words {
        let (auth, _) = r.connect_as("default", w).unwrap();
        assert!(auth.starts_with("-WRONGPASS"), "AUTH {w}: {auth}");
        for u in users {
            let (auth, _) = r.connect_as(u, w).unwrap();
            let expected_ok = u == enroll_user && *w == enroll_pw.expose();
            assert_eq!(auth.starts_with("+OK"), expected_ok, "AUTH {u} {w}: {auth}");
        }
        let (s, _) = http(
            "GET",
            c.primary.port,
            "/api/fleet/cluster/nodes",
            &[("X-API-Key", w)],
        )
        .unwrap();
        assert_eq!(s, 401, "the API accepted `{w}`");
    }

    // The enrollment user reads nothing; its own record is gone.
    let (auth, mut e) = r.connect_as(&enroll_user, enroll_pw.expose()).unwrap();
    assert!(auth.starts_with("+OK"), "{auth}");
    let own = format!("fleet:cluster:enroll:{token}");
    assert_eq!(e.call(&["GETDEL", &own]).unwrap(), "$-1\r\n");
    let node_key = format!("fleet:cluster:node:{}", c.wait_joined("node2"));
    let refused: [&[&str]; 11] = [
        &["GET", &own],
        &["GET", "fleet:cluster:names"],
        &["SCAN", "0"],
        &["KEYS", "*"],
        &["XRANGE", "fleet:cluster:events", "-", "+"],
        &["XREAD", "STREAMS", "fleet:cluster:events", "0"],
        &["ZRANGE", "fleet:cluster:members", "0", "-1"],
        &["HGETALL", &node_key],
        &["GETDEL", "fleet:cluster:names"],
        &[
            "GETDEL",
            "fleet:cluster:enroll:00000000000000000000000000000000",
        ],
        &["ACL", "LIST"],
    ];
    for cmd in refused {
        let reply = e.call(cmd).unwrap();
        assert!(reply.starts_with("-NOPERM"), "{cmd:?}: {reply}");
    }
    // Nor run a script (which could also hold the server in a busy loop).
    for cmd in [
        &[
            "EVAL",
            "return redis.call('ZRANGE', KEYS[1], 0, -1)",
            "1",
            "fleet:cluster:members",
        ][..],
        &["EVAL", "return 1", "0"],
        &["SCRIPT", "LOAD", "return 1"],
        &["FCALL", "f", "0"],
    ] {
        let reply = e.call(cmd).unwrap();
        assert!(reply.starts_with("-NOPERM"), "{cmd:?}: {reply}");
    }
}

/// Item 6: a managed Redis (the primary's user may not manage ACLs): the build succeeds,
/// says it falls back to the shared credentials, and the node still enrolls and joins.
#[test]
fn managed_redis_falls_back_to_the_shared_credentials() {
    let c = Cluster::start(Backend::ManagedRedis);
    let (bundle, out) = c.build("node2", &[]);
    assert!(
        out.contains("⚠️  redis user: shared with the primary: this Redis refuses user management"),
        "{out}"
    );
    assert!(
        out.contains("so the node carries the shared Redis credentials"),
        "{out}"
    );
    assert!(out.contains("Enrollment: single-use token"), "{out}");
    assert!(!out.contains("etcd"), "{out}");
    let users = c.redis().command(&["ACL", "USERS"]).unwrap();
    assert!(!users.contains("fleet-"), "no user was made: {users}");

    // The API says so too (the Settings page shows it from this header).
    let mut api = Client::new(c.primary.port);
    let r = api.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", TEST_API_KEY),
        ],
        br#"{"node_name":"node3","format":"bundle","ethernet":"skip"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-package-credentials"),
        Some("shared with the primary")
    );
    assert!(
        r.header("x-package-enrollment")
            .is_some_and(|h| h.starts_with("token ")),
        "{:?}",
        r.header("x-package-enrollment")
    );

    let m = c.provision(&bundle, "machine-a");
    c.wait_joined("node2");
    assert!(m.log().contains("✅ Enrollment redeemed"), "{}", m.log());
    let cfg = m.config();
    assert_eq!(cfg.cluster.redis_username.as_deref(), Some(MANAGED_USER));
    assert!(cfg.enrollment.is_none());
    assert_eq!(mode(&m.config_path()), 0o600);
}

/// Item 7: `--no-enrollment`: the package's sealed configuration is the full one (API key
/// included), nothing becomes pending, the node joins without enrolling, and the Settings
/// page's "Recent packages" marks it as carrying long-lived secrets.
#[test]
fn no_enrollment_packages_carry_the_full_configuration() {
    let c = Cluster::start(Backend::Storage);
    let (bundle, out) = c.build("node2", &["--no-enrollment"]);
    assert!(
        out.contains("built without enrollment (--no-enrollment)"),
        "{out}"
    );
    assert!(c.pending().is_empty(), "nothing pending");
    let dir = c.extract(&bundle, "inspect");
    let yaml = sealed_config(&dir);
    let full = Config::parse(&yaml, Path::new("sealed")).unwrap();
    assert!(full.enrollment.is_none(), "{yaml}");
    // Issue 14: the node can check the API key but does not hold it.
    assert!(full.auth.api_key.is_none(), "the plain API key travelled");
    assert_eq!(full.auth.api_key_digest(), test_api_key_digest());
    assert_eq!(
        full.encryption.database_key.as_ref().map(|k| k.expose()),
        Some(DATABASE_KEY)
    );
    let m = c.provision(&bundle, "machine-a");
    c.wait_joined("node2");
    assert!(!m.log().contains("Enroll"), "{}", m.log());

    // One enrolling package for comparison, and the offline one through the API.
    c.build("node3", &[]);
    let mut api = Client::new(c.primary.port);
    let r = api.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", TEST_API_KEY),
        ],
        br#"{"node_name":"node4","format":"bundle","ethernet":"skip","no_enrollment":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-package-enrollment"),
        Some("none: the package carries the cluster's long-lived secrets")
    );
    assert_eq!(c.pending().len(), 1, "only node3's package is pending");

    let mut web = Client::new(c.primary.port);
    assert_eq!(web.login("admin", WEB_PASSWORD).status, 303);
    let page = web.get("/settings").text();
    let recent = &page[page
        .find("<h3>Recent packages</h3>")
        .expect("Recent packages")..];
    let recent = &recent[..recent.find("</table>").expect("its table")];
    let rows: Vec<&str> = recent.split("<tr>").skip(2).collect();
    let row = |node: &str| -> &str {
        rows.iter()
            .find(|r| r.contains(&format!("<td>{node}</td>")))
            .unwrap_or_else(|| panic!("no row for {node}:\n{recent}"))
    };
    for node in ["node2", "node4"] {
        assert!(row(node).contains("carries long-lived secrets"), "{recent}");
    }
    assert!(
        row("node3").contains("single-use enrollment token"),
        "{recent}"
    );
    assert!(!row("node3").contains("long-lived"), "{recent}");
    let pending = &page[page
        .find("<h3>Pending packages</h3>")
        .expect("Pending packages")..];
    assert!(pending.contains("node3"), "{pending}");
}

/// Building again for a name (the first package was lost) resets that name's one Redis
/// user; revoking the older package afterwards must not delete the user the node enrolled by
/// the newer one runs with. The older package is refused, and recorded.
#[test]
fn revoking_an_older_package_keeps_the_newer_nodes_user() {
    let c = Cluster::start(Backend::Redis);
    let (old, _) = c.build("node2", &[]);
    let old_token = c.pending_token("node2");
    let (new, _) = c.build("node2", &[]);
    assert_eq!(c.pending().len(), 2);
    let m = c.provision(&new, "machine-new");
    let id = c.wait_joined("node2");
    let o = c.cli(&["package", "revoke", &old_token[..12]]);
    assert_ok(&o, "package revoke");
    assert!(c.pending().is_empty());

    let cfg = m.config();
    let user = cfg.cluster.redis_username.clone().expect("its own user");
    let pw = cfg.cluster.redis_password.clone().expect("its password");
    let (auth, _) = c.redis().connect_as(&user, pw.expose()).unwrap();
    assert!(
        auth.starts_with("+OK"),
        "the live node's user was deleted: {auth}"
    );
    // Two heartbeats later the node is still in, healthy.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(c.active_named("node2"), vec![id]);
    assert_eq!(m.health().map(|h| h.0), Some(200), "{}", m.log());

    let refused = c.provision_refused(&old, "machine-old");
    refused.wait_refused();
    assert_refused_once(&c, &refused, &old_token);
}

/// provision.sh on a machine without Ethernet (a network namespace with only loopback) exits
/// with the installer stub's own code, 10, and the guide's message; nothing is installed and
/// the package stays pending.
#[test]
fn provision_without_ethernet_exits_with_the_stubs_code() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test makes a network namespace (ip netns add): run `cargo test` as root"
    );
    let c = Cluster::start(Backend::Storage);
    let (bundle, _) = c.build("node5", &["--ethernet", "require"]);
    let dir = c.extract(&bundle, "no-ethernet");
    let root = c.dir.path().join("no-ethernet/root");
    let ns = format!("fleetprov-{}", std::process::id());
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let made = Command::new("ip").args(["netns", "add", &ns]).status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add {ns} failed");
    let _ns = Netns(ns.clone());
    let o = output_within(
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(dir.join("provision.sh"))
            .arg("--root")
            .arg(&root)
            .arg("--no-systemd")
            .env_clear()
            .env("PATH", pkginstall::INSTALLER_PATH)
            .current_dir(&dir),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(10), "{err}");
    assert!(err.contains("No Ethernet adapter found"), "{err}");
    assert!(!root.join("usr/local/bin/fleet-server").exists());
    assert!(!root.join("etc/fleet-server/config.yaml").exists());
    assert_eq!(c.pending().len(), 1, "the package is still pending");
}

/// A primary with `server.tls_cert`/`tls_key` builds nodes that serve HTTPS with that
/// certificate: the certificate and key travel inside the encrypted enrollment record (or,
/// with --no-enrollment, the sealed body) and are written beside the node's configuration,
/// the key 0600; the node's configuration points at them.
#[test]
fn the_primarys_certificate_travels_with_the_node() {
    let openssl = require_tool("openssl");
    let curl = require_tool("curl");
    let c = Cluster::start(Backend::Storage);
    let tls = c.dir.path().join("primary-tls");
    std::fs::create_dir(&tls).unwrap();
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    let o = output_within(
        Command::new(openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=fleet-test",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        LIMIT,
    );
    assert_ok(&o, "openssl req");
    // The same cluster, seen through a configuration with the certificate (the running primary
    // keeps serving plain HTTP, which the kit's helpers speak).
    let primary = std::fs::read_to_string(c.primary.config_path()).unwrap();
    assert!(primary.starts_with("server:\n"), "{primary}");
    let with_tls = primary.replacen(
        "server:\n",
        &format!(
            "server:\n  tls_cert: {}\n  tls_key: {}\n",
            cert.display(),
            key.display()
        ),
        1,
    );
    let config = c.dir.path().join("primary-tls.yaml");
    std::fs::write(&config, with_tls).unwrap();

    for (label, extra) in [("enrolled", &[][..]), ("sealed", &["--no-enrollment"][..])] {
        let node = format!("tls-{label}");
        let (bundle, _) = c.build_as(&config, &node, extra);
        let m = c.provision(&bundle, &node);
        c.wait_joined(&node);
        let etc = m.root.join("etc/fleet-server");
        assert_eq!(mode(&etc.join("server-tls.key")), 0o600, "{label}");
        assert_eq!(
            std::fs::read(etc.join("server-tls.key")).unwrap(),
            std::fs::read(&key).unwrap()
        );
        let cfg = m.config();
        assert_eq!(
            cfg.server.tls_cert.as_deref(),
            // As written; `serve --root` takes it under the root.
            Some(Path::new("/etc/fleet-server/server-tls.crt")),
            "{label}"
        );
        // HTTPS, verified against the primary's own (self-signed) certificate.
        let url = format!("https://127.0.0.1:{}/api/fleet/cluster/health", m.port);
        let o = output_within(
            Command::new(&curl)
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&cert)
                .arg(&url),
            LIMIT,
        );
        assert_ok(&o, &format!("curl {url}"));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "200",
            "{label}: {}",
            m.log()
        );
        assert!(m.log().contains("(HTTPS)"), "{}", m.log());
    }
}

/// Method C, direct download: a build with `download_link` leaves the package on the node that
/// built it; the link works once (the bytes are the build's), a second use gets 410, so do a
/// revoked and an expired link, and a wrong key gets 403.
#[test]
fn direct_download_links_work_once() {
    let curl = require_tool("curl");
    let c = Cluster::start(Backend::Storage);
    let port = c.primary.port;
    let out = c.dir.path().join("downloads");
    std::fs::create_dir(&out).unwrap();
    // POST a build; returns the response's JSON.
    let build = |node: &str, extra: &str| -> serde_json::Value {
        let body = format!(
            r#"{{"node_name":"{node}","format":"bundle","ethernet":"skip","download_link":true{extra}}}"#
        );
        let o = output_within(
            Command::new(&curl)
                .args(["-sS", "-H", &format!("X-API-Key: {TEST_API_KEY}")])
                .args(["-H", "Content-Type: application/json", "-d", &body])
                .arg(format!(
                    "http://127.0.0.1:{port}/api/fleet/cluster/packages"
                )),
            LIMIT,
        );
        assert_ok(&o, "curl POST packages");
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    };
    // GET a link's path on the primary; returns the status and the file it wrote.
    let fetch = |url: &str, n: usize| -> (String, PathBuf) {
        let path = &url[url.find("/api/").expect("a link to the API")..];
        let file = out.join(format!("got-{n}"));
        let o = output_within(
            Command::new(&curl)
                .args(["-sS", "-o"])
                .arg(&file)
                .args(["-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{port}{path}")),
            LIMIT,
        );
        assert_ok(&o, "curl GET download");
        (String::from_utf8_lossy(&o.stdout).into_owned(), file)
    };

    let j = build("dl-once", "");
    let d = &j["download"];
    let url = d["url"].as_str().expect("a link").to_string();
    assert!(url.contains("/api/fleet/cluster/packages/") && url.contains("/download?key="));
    assert!(
        d["curl"].as_str().unwrap().starts_with("curl -fOJ '"),
        "{d}"
    );
    assert!(
        d["install"]
            .as_str()
            .unwrap()
            .contains("sudo ./provision.sh"),
        "{d}"
    );
    let (wrong, _) = fetch(&format!("{}x", &url[..url.len() - 1]), 0);
    assert_eq!(wrong, "403");
    let (code, file) = fetch(&url, 1);
    assert_eq!(code, "200");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() as u64, d["size"].as_u64().unwrap());
    let sum = output_within(Command::new(require_tool("sha256sum")).arg(&file), LIMIT);
    assert_ok(&sum, "sha256sum");
    assert_eq!(
        String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next(),
        d["sha256"].as_str(),
        "the downloaded bytes are the build's"
    );
    // It is a real bundle: it provisions a node that joins.
    let bundle = out.join("dl-once_provision.tar.gz");
    std::fs::rename(&file, &bundle).unwrap();
    let _m = c.provision(&bundle, "dl-once");
    c.wait_joined("dl-once");
    let (again, _) = fetch(&url, 2);
    assert_eq!(again, "410", "a second download");

    // Revoked (by token, on the API) → 410.
    let j = build("dl-revoked", "");
    let token = c.pending_token("dl-revoked");
    let o = output_within(
        Command::new(&curl)
            .args([
                "-sS",
                "-X",
                "DELETE",
                "-H",
                &format!("X-API-Key: {TEST_API_KEY}"),
            ])
            .arg(format!(
                "http://127.0.0.1:{port}/api/fleet/cluster/packages/{token}"
            )),
        LIMIT,
    );
    assert_ok(&o, "curl DELETE package");
    let (code, _) = fetch(j["download"]["url"].as_str().unwrap(), 3);
    assert_eq!(code, "410", "a revoked package's link");

    // Expired → 410.
    let j = build("dl-expired", r#","download_expires":"1s""#);
    std::thread::sleep(Duration::from_millis(1300));
    let (code, _) = fetch(j["download"]["url"].as_str().unwrap(), 4);
    assert_eq!(code, "410", "an expired link");
    // The files are gone from the primary's state directory.
    let kept: Vec<_> = std::fs::read_dir(c.primary.dir.path().join("state/downloads"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pkg"))
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}

/// Every node a full node: a node provisioned from a bundle builds a bundle through its own
/// API (with the binaries the bundle installed as its node template), and that bundle
/// provisions a third node that joins; the same node refuses a macOS package and says why.
#[test]
fn a_provisioned_node_builds_the_next_node() {
    let curl = require_tool("curl");
    let c = Cluster::start(Backend::Storage);
    let (bundle, _) = c.build("second", &[]);
    let second = c.provision(&bundle, "second");
    c.wait_joined("second");
    let template = second
        .root
        .join("usr/local/lib/fleet-server/node-template/linux-x86_64");
    assert!(
        template.join("fleet-server").exists() && template.join("fleet-installer-stub").exists()
    );
    let post = |format: &str, out: &Path| -> String {
        let body = format!(r#"{{"node_name":"third","format":"{format}","ethernet":"skip"}}"#);
        let o = output_within(
            Command::new(&curl)
                .args(["-sS", "-o"])
                .arg(out)
                .args([
                    "-w",
                    "%{http_code}",
                    "-H",
                    &format!("X-API-Key: {TEST_API_KEY}"),
                ])
                .args(["-H", "Content-Type: application/json", "-d", &body])
                .arg(format!(
                    "http://127.0.0.1:{}/api/fleet/cluster/packages",
                    second.port
                )),
            LIMIT,
        );
        assert_ok(&o, "curl POST packages to the second node");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let refused = c.dir.path().join("refused.json");
    assert_eq!(post("pkg", &refused), "400");
    let why = std::fs::read_to_string(&refused).unwrap();
    assert!(
        why.contains("this node cannot build macOS packages"),
        "{why}"
    );

    let third_bundle = c.dir.path().join("third_provision.tar.gz");
    assert_eq!(post("bundle", &third_bundle), "200", "{}", second.log());
    let _third = c.provision(&third_bundle, "third");
    let id = c.wait_joined("third");
    assert!(id.starts_with("third-"), "{id}");
}

/// A node whose backend does not answer at its first start serves health at once, 503 with
/// "enrolling: …", and joins when the backend comes back, without a restart.
#[test]
fn health_answers_while_a_node_enrolls() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let c = Cluster::start(Backend::Redis);
    let (bundle, _) = c.build("node2", &[]);
    let redis = Pid::from_raw(c.redis().pid().expect("redis runs") as i32);
    // A backend that takes connections and never answers: the hardest kind of outage.
    kill(redis, Signal::SIGSTOP).expect("SIGSTOP redis-server");
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let resume = Resume(redis);
    let (m, o) = c.provision_with_env(&bundle, "machine-a", &[("PROVISION_WAIT", "2")]);
    assert_eq!(o.status.code(), Some(41), "provision.sh: {}", text(&o));
    let body = wait_for(
        "health 503 with `enrolling:`",
        JOIN,
        Duration::from_millis(50),
        || match m.health() {
            Some((503, b))
                if b["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("enrolling: ")) =>
            {
                Some(b)
            }
            _ => None,
        },
    );
    eprintln!("health while enrolling: {body}");
    // Any path says the same while enrolling.
    let other = get_json(m.port, "/api/fleet/cluster/status", None).expect("status answers");
    assert_eq!(other.0, 503, "{other:?}");
    drop(resume);
    let id = c.wait_joined("node2");
    wait_for(
        "health 200 after joining",
        JOIN,
        Duration::from_millis(50),
        || matches!(m.health(), Some((200, _))).then_some(()),
    );
    assert!(m.log().contains("✅ Enrollment redeemed"), "{}", m.log());
    assert!(id.starts_with("node2-"), "{id}");
}

/// The digest of the test API key, as a node's configuration holds it.
fn test_api_key_digest() -> Option<[u8; 32]> {
    fleet_server::config::AuthConfig {
        api_key: Some(fleet_server::config::ApiKey::new(TEST_API_KEY).unwrap()),
        ..Default::default()
    }
    .api_key_digest()
}
