//! The etcd backend as users run it: real `fleet-server` processes on a private etcd (kill -9
//! and lease expiry, SIGTERM, an etcd restart that lost its data, a node started while etcd is
//! down), per-node etcd users on an etcd with auth enabled (made by `package build`, deleted
//! with the node), sessions on etcd, and the EIS provisioning flow across network namespaces.

use std::time::{Duration, Instant};

use fleet_server::cluster::etcd::EtcdMembership;
use fleet_server::cluster::{ClusterError, Heartbeat, Membership, NodeRecord, Timing};
use fleet_server::config::{ClusterConfig, Config};
use fleet_tests::etcd::EtcdServer;
use fleet_tests::netns::{Site, Topology};
use fleet_tests::{Daemon, wait_for};
use nix::sys::signal::Signal;

#[test]
fn etcd_nodes_kill9_sigterm_and_an_etcd_restart() {
    let mut etcd = EtcdServer::start();
    let cluster = etcd.cluster_yaml();
    let a = Daemon::start("etcd-a", &cluster);
    let mut b = Daemon::start("etcd-b", &cluster);
    let mut c = Daemon::start("etcd-c", &cluster);
    for d in [&a, &b, &c] {
        d.wait_health(200, Duration::from_secs(10));
        d.wait_log("backend: etcd)", Duration::from_secs(2));
    }
    let (ia, ib, ic) = (a.node_id(), b.node_id(), c.node_id());
    a.wait_active(&[&ia, &ib, &ic], Duration::from_secs(5));

    // kill -9: c's lease (TTL = the 3 s timeout) runs out and etcd deletes its keys;
    // SIGTERM: b revokes its lease and is gone at once.
    let (detected, left) = fleet_tests::kill9_then_sigterm(&a, &mut b, &mut c);
    eprintln!("etcd: kill -9 detected after {detected:?}; SIGTERM to gone: {left:?}");

    // etcd goes down: 503 naming etcd; it comes back without its data: a registers again.
    etcd.stop();
    let body = a.wait_health(503, Duration::from_secs(5));
    assert!(
        body["reason"].as_str().unwrap_or_default().contains("etcd"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(1));
    etcd.restart();
    let up = Instant::now();
    a.wait_health(200, Duration::from_secs(10));
    a.wait_active(&[&ia], Duration::from_secs(5));
    eprintln!("etcd: back → healthy after {:?}", up.elapsed());
    let log = a.log();
    assert!(log.contains("✅ Re-registered node in cluster: "), "{log}");
    assert_eq!(
        log.matches("❌ Cluster backend unavailable").count(),
        1,
        "one line per state change:\n{log}"
    );
}

#[test]
fn a_node_started_while_etcd_is_down_joins_when_it_comes_up() {
    let mut etcd = EtcdServer::start();
    let cluster = etcd.cluster_yaml();
    etcd.stop();
    let a = Daemon::start("etcd-late", &cluster);
    let body = a.wait_health(503, Duration::from_secs(10));
    assert!(
        body["reason"].as_str().unwrap_or_default().contains("etcd"),
        "{body}"
    );
    etcd.restart();
    a.wait_health(200, Duration::from_secs(10));
    let id = a.node_id();
    a.wait_active(&[&id], Duration::from_secs(3));
}

const ROOT_PW: &str = "etcd-root-pw-123";

fn timing() -> Timing {
    Timing {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
    }
}

fn cluster_config(etcd: &EtcdServer, user: &str, password: &str) -> ClusterConfig {
    let text = format!(
        "cluster:\n  enabled: true\n  backend: etcd\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  etcd_endpoints: [\"{}\"]\n  etcd_username: {user}\n  etcd_password: \"{password}\"\n",
        etcd.endpoint()
    );
    Config::parse(&text, std::path::Path::new("t.yaml"))
        .unwrap()
        .cluster
}

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        id: fleet_server::identity::new_node_id(name),
        name: name.into(),
        hostname: format!("{name}.test"),
        addresses: vec!["198.51.100.7".into()],
        version: "0.1.0".into(),
        os: "linux".into(),
        started_at: 1,
        url: "http://198.51.100.7:8768".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_users_are_limited_to_the_prefix_and_deleted() {
    let etcd = EtcdServer::start_with_auth(ROOT_PW);
    let primary = EtcdMembership::new(&cluster_config(&etcd, "root", ROOT_PW), timing()).unwrap();
    primary.register(&node("primary")).await.unwrap();

    let (user, password) = primary.create_node_user("node2").await.unwrap();
    assert_eq!(user, "fleet-node-node2");
    assert!(password.expose().len() >= 32);

    // The node's user joins the cluster, and may write its own keys only.
    let as_node =
        EtcdMembership::new(&cluster_config(&etcd, &user, password.expose()), timing()).unwrap();
    let n2 = node("node2");
    assert_eq!(as_node.register(&n2).await.unwrap(), 2);
    for key in ["elsewhere/probe", "fleet:probe"] {
        let denied = etcd.put_as(&user, password.expose(), key, "1").unwrap_err();
        assert!(denied.contains("permission denied"), "{denied}");
    }
    // And may not make users of its own.
    let err = as_node.create_node_user("node3").await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");

    // Removing the node deletes its user: its credentials stop working at once.
    primary.delete_node_user(&user).await.unwrap();
    primary.delete_node_user(&user).await.unwrap();
    assert!(etcd.authenticate(&user, password.expose()).is_err());
    let fresh =
        EtcdMembership::new(&cluster_config(&etcd, &user, password.expose()), timing()).unwrap();
    let err = fresh.register(&n2).await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains(password.expose()), "{err}");
    // The connected client's token died with the user too.
    let err = as_node.heartbeat(&n2).await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_etcd_password_is_an_auth_error() {
    let etcd = EtcdServer::start_with_auth(ROOT_PW);
    let cfg = cluster_config(&etcd, "root", "wrong-password-xyz");
    let b = EtcdMembership::new(&cfg, timing()).unwrap();
    let err = b.register(&node("alpha")).await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-password-xyz"), "{err}");
    // Without credentials, auth-enabled etcd refuses too, as Auth.
    let mut anon = cfg.clone();
    anon.etcd_username = None;
    anon.etcd_password = None;
    let err = EtcdMembership::new(&anon, timing())
        .unwrap()
        .register(&node("alpha"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");
}

fn session(user: &str) -> fleet_server::cluster::sessions::Session {
    fleet_server::cluster::sessions::Session {
        user: user.into(),
        csrf: "csrf-token-123".into(),
        created_ms: 1,
        expires_ms: 2,
        sig: "ab".into(),
    }
}

/// Sessions on etcd, seen by two nodes (two stores on the same etcd): put on one, read and end
/// on the other; a session in use outlives its TTL (sliding), an idle one runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_sessions_are_shared_slide_and_expire() {
    let etcd = EtcdServer::start_with_auth(ROOT_PW);
    let text = format!(
        "cluster:\n  enabled: true\n  backend: etcd\n  etcd_endpoints: [\"{}\"]\n  etcd_username: root\n  etcd_password: \"{ROOT_PW}\"\nsessions:\n  backend: etcd\n",
        etcd.endpoint()
    );
    let config = Config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
    config.validate(std::path::Path::new("t.yaml")).unwrap();
    let (a, b) = (
        fleet_server::cluster::open_sessions(&config).unwrap(),
        fleet_server::cluster::open_sessions(&config).unwrap(),
    );
    assert!(!format!("{a:?}").contains(ROOT_PW));
    let long = Duration::from_secs(60);

    a.put("sid-one", &session("admin"), long).await.unwrap();
    assert_eq!(
        b.get("sid-one", long).await.unwrap(),
        Some(session("admin"))
    );
    // Stored under the digest of the id, never the id itself.
    let keys = etcd.entries("fleet:session/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].0.len(), "fleet:session/".len() + 64, "{keys:?}");
    assert!(
        keys.iter()
            .all(|(k, v)| !k.contains("sid-one") && !v.contains("sid-one"))
    );
    b.delete("sid-one").await.unwrap();
    assert_eq!(a.get("sid-one", long).await.unwrap(), None);
    b.delete("sid-one").await.unwrap();
    assert!(etcd.entries("fleet:session/").is_empty());

    // A 2 s session read every 500 ms by either node lives on past 2 s.
    let ttl = Duration::from_secs(2);
    a.put("sid-two", &session("admin"), ttl).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let store = if i % 2 == 0 { &b } else { &a };
        assert!(
            store.get("sid-two", ttl).await.unwrap().is_some(),
            "sliding session gone after {:?}",
            started.elapsed()
        );
    }
    // Left alone, it runs out (etcd's lease timer; its expiry loop adds up to ~0.5 s).
    let idle = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        etcd.entries("fleet:session/").len() == 1,
        "an idle session must last its TTL"
    );
    let mut gone = false;
    for _ in 0..40 {
        if etcd.entries("fleet:session/").is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "an idle session outlived its TTL");
    eprintln!(
        "etcd sessions: idle 2 s session gone after {:?}",
        idle.elapsed()
    );
    assert_eq!(b.get("sid-two", ttl).await.unwrap(), None);
    assert_eq!(a.get("sid-two", ttl).await.unwrap(), None);
}

/// A change to etcd's users or roles (the primary's housekeeping grants and narrows node roles
/// while nodes serve logins) that lands between a request's arrival and its apply fails that
/// request with "revision of auth store is old"; etcd itself retries only some requests, not a
/// lease grant (a session's first step). The store tries once more: 300 session writes while
/// roles are added as fast as etcd takes them all go through (a login failed with 503 so once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_sessions_survive_auth_store_changes() {
    let etcd = std::sync::Arc::new(EtcdServer::start_with_auth(ROOT_PW));
    let text = format!(
        "cluster:\n  enabled: true\n  backend: etcd\n  etcd_endpoints: [\"{}\"]\n  etcd_username: root\n  etcd_password: \"{ROOT_PW}\"\nsessions:\n  backend: etcd\n",
        etcd.endpoint()
    );
    let config = Config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
    let store = fleet_server::cluster::open_sessions(&config).unwrap();
    let long = Duration::from_secs(60);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (e2, s2) = (etcd.clone(), stop.clone());
    let bumper = std::thread::spawn(move || {
        let mut n = 0u32;
        // Bounded: at most 20,000 roles or until the writes are done.
        while !s2.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
            e2.call_as(
                None,
                "/v3/auth/role/add",
                serde_json::json!({"name": format!("bump-{n}")}),
            )
            .expect("adding a role");
            n += 1;
        }
        n
    });
    let mut failed = Vec::new();
    for i in 0..300 {
        if let Err(e) = store
            .put(&format!("sid-{i}"), &session("admin"), long)
            .await
        {
            failed.push(format!("{i}: {e}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let bumps = bumper.join().unwrap();
    eprintln!("etcd sessions: 300 writes during {bumps} auth store changes");
    assert!(bumps > 10, "the auth store hardly changed ({bumps} roles)");
    assert!(
        failed.is_empty(),
        "{} of 300 failed: {failed:?}",
        failed.len()
    );
}

/// A node template with the real Linux binaries of this build.
fn linux_template(dir: &std::path::Path) -> std::path::PathBuf {
    fleet_tests::pkginstall::node_template(&dir.join("template"))
}

/// The configuration sealed in a provision bundle, opened as the installer stub does.
fn sealed_config(bundle: &std::path::Path, node: &str) -> Config {
    use fleet_installer_stub::sealed::{self, FileKey, KeySource};
    let out = bundle.with_extension("x");
    std::fs::create_dir_all(&out).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(bundle)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xzf {}", bundle.display());
    let top = out.join(format!("{node}_provision"));
    let blob = std::fs::read(top.join("fleet-config.sealed")).unwrap();
    let key = FileKey::from_bytes(&std::fs::read(top.join("fleet-config.key")).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, payload) = sealed::open(&blob, KeySource::KeyFile(&key), now).unwrap();
    assert_eq!(payload.node_name, node);
    let c = Config::parse(&payload.config_yaml, std::path::Path::new("sealed.yaml")).unwrap();
    c.validate(std::path::Path::new("sealed.yaml")).unwrap();
    c
}

fn primary_config(dir: &std::path::Path, etcd: &EtcdServer, user: &str, password: &str) -> String {
    let path = dir.join(format!("primary-{user}.yaml"));
    std::fs::write(
        &path,
        format!(
            "server:\n  host: 127.0.0.1\n  port: 8768\n  state_dir: {}\ncluster:\n  enabled: true\n  backend: etcd\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  etcd_endpoints: [\"{}\"]\n  etcd_username: {user}\n  etcd_password: \"{password}\"\nauth:\n  api_key: {}\n",
            dir.join("state").display(),
            etcd.endpoint(),
            fleet_tests::TEST_API_KEY
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `package build` against an etcd with auth: the node gets an etcd user of its own, limited to
/// the cluster prefix, sealed in its configuration; removing the node deletes that user. A
/// primary whose etcd user may not manage users builds with the shared credentials and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_build_makes_a_node_user_that_remove_deletes() {
    let etcd = EtcdServer::start_with_auth(ROOT_PW);
    let dir = tempfile::tempdir().unwrap();
    let tpl = linux_template(dir.path());
    let primary_cfg = primary_config(dir.path(), &etcd, "root", ROOT_PW);
    let bundle = dir.path().join("node2_provision.tar.gz");
    let build = |cfg: &str, name: &str, ip: &str, out: &std::path::Path| {
        let started = Instant::now();
        let r = fleet_tests::run_cli(&[
            "package",
            "build",
            "--config",
            cfg,
            "--format",
            "bundle",
            "--node-name",
            name,
            "--ip",
            ip,
            "--ethernet",
            "skip",
            "--template-dir",
            tpl.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        eprintln!("etcd: package build {name} took {:?}", started.elapsed());
        r
    };
    let (code, stdout, stderr) = build(&primary_cfg, "node2", "198.51.100.7", &bundle);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("etcd user: fleet-node-node2 (its own"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Intended address: 198.51.100.7"),
        "{stdout}"
    );
    assert!(!stdout.contains(ROOT_PW) && !stderr.contains(ROOT_PW));

    let node_cfg = sealed_config(&bundle, "node2");
    let c = &node_cfg.cluster;
    assert_eq!(c.etcd_username.as_deref(), Some("fleet-node-node2"));
    let password = c.etcd_password.clone().unwrap();
    assert_ne!(password.expose(), ROOT_PW);
    assert_eq!(c.etcd_password_file, None);
    assert_eq!(
        etcd.entries("fleet:cluster/users/"),
        [(
            "fleet:cluster/users/node2".to_string(),
            "fleet-node-node2".to_string()
        )]
    );
    let built = etcd.entries("fleet:cluster/events/");
    assert!(
        built
            .iter()
            .any(|(_, v)| v.contains("package_built") && v.contains("198.51.100.7")),
        "{built:?}"
    );

    // The node's user writes its own keys and nowhere else (`privilege.rs` tries the rest);
    // the node joins with it.
    for key in ["elsewhere/probe", "fleet:probe", "fleet:cluster/removed/x"] {
        let denied = etcd
            .put_as("fleet-node-node2", password.expose(), key, "1")
            .unwrap_err();
        assert!(denied.contains("permission denied"), "{key}: {denied}");
    }
    let as_node = EtcdMembership::new(c, timing()).unwrap();
    let n2 = node("node2");
    as_node.register(&n2).await.unwrap();

    // While node2 lives, the same name or address is refused, and no user is made for it.
    let (code, stdout, stderr) = build(
        &primary_cfg,
        "node2",
        "198.51.100.99",
        &dir.path().join("again.tar.gz"),
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(&format!(
            "node name node2 is already held by the live node {} (use another name)",
            n2.id
        )),
        "{stderr}"
    );
    let (code, _, stderr) = build(
        &primary_cfg,
        "node3",
        "198.51.100.7",
        &dir.path().join("again.tar.gz"),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "IP 198.51.100.7 is already used by the live node {}",
            n2.id
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("again.tar.gz").exists());
    assert_eq!(etcd.entries("fleet:cluster/users/").len(), 1);

    // Removing the node (DELETE /api/fleet/cluster/nodes/<id> calls this) deletes its user.
    let primary = EtcdMembership::new(&cluster_config(&etcd, "root", ROOT_PW), timing()).unwrap();
    assert!(primary.remove(&n2.id, "admin").await.unwrap());
    assert!(
        etcd.authenticate("fleet-node-node2", password.expose())
            .is_err()
    );
    assert!(etcd.entries("fleet:cluster/users/").is_empty());
    let err = as_node.heartbeat(&n2).await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");

    // A primary whose etcd user lacks the root role (read-write on the prefix only, as a
    // managed etcd may give): shared credentials, said in the output. (A node's own user is
    // refused outright instead: `node_sessions.rs`.)
    let (limited, limited_pw) = (
        "ops-limited".to_string(),
        fleet_server::config::Secret::new("ops-limited-pw-0123"),
    );
    for (path, body) in [
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": &limited, "password": limited_pw.expose()}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": &limited})),
    ] {
        etcd.call_as(None, path, body).unwrap();
    }
    etcd.grant_prefix_rw(&limited, "fleet:").unwrap();
    etcd.call_as(
        None,
        "/v3/auth/user/grant",
        serde_json::json!({"user": &limited, "role": &limited}),
    )
    .unwrap();
    let limited_cfg = primary_config(dir.path(), &etcd, &limited, limited_pw.expose());
    let shared = dir.path().join("node4_provision.tar.gz");
    let (code, stdout, stderr) = build(&limited_cfg, "node4", "198.51.100.8", &shared);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "⚠️  etcd user: shared with the primary: the primary's etcd user may not manage users"
        ),
        "{stdout}"
    );
    let c4 = sealed_config(&shared, "node4");
    assert_eq!(c4.cluster.etcd_username.as_deref(), Some(limited.as_str()));
    assert_eq!(
        c4.cluster.etcd_password.as_ref().map(|p| p.expose()),
        Some(limited_pw.expose())
    );
}

/// The EIS flow across networks: etcd in `cloud` (auth on), the primary in `office`; a bundle
/// built there (`--node-name node2 --ip 198.51.100.10`) is extracted and provisioned with
/// `provision.sh --root DIR --no-systemd` in `datacenter`, and node2 shows as active in
/// `fleet-server cluster info` on the primary. While it lives, its name and its address are
/// refused; once it is gone (SIGTERM), the name is accepted again. Needs root.
#[test]
fn etcd_bundle_provisions_and_joins_across_networks() {
    let topo = Topology::new();
    let mut etcd = topo.etcd();
    etcd.enable_auth(ROOT_PW);
    let cluster_yaml = etcd.cluster_yaml();
    assert!(
        cluster_yaml.contains("http://203.0.113.10:2379"),
        "{cluster_yaml}"
    );
    let primary = topo.daemon(Site::Office, "primary", &cluster_yaml);
    primary.wait_health(200, Duration::from_secs(15));
    let primary_cfg = primary.config_path();
    let tpl = linux_template(topo.root());
    let cli = |args: &[&str]| {
        let out = topo
            .command(Site::Office, fleet_tests::fleet_server_bin())
            .args(args)
            .output()
            .expect("running fleet-server in office");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let build = |name: &str, ip: &str, out: &std::path::Path| {
        cli(&[
            "package",
            "build",
            "--config",
            primary_cfg.to_str().unwrap(),
            "--format",
            "bundle",
            "--node-name",
            name,
            "--ip",
            ip,
            "--ethernet",
            "allow-virtual",
            "--template-dir",
            tpl.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--force",
        ])
    };
    let info = || cli(&["cluster", "info", "--config", primary_cfg.to_str().unwrap()]);

    // On the primary: etcd_cluster_add.sh node2 198.51.100.10.
    let bundle = topo.root().join("node2_provision.tar.gz");
    let (code, stdout, stderr) = build("node2", "198.51.100.10", &bundle);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("etcd user: fleet-node-node2"), "{stdout}");

    // On the new node: sudo tar -xvf node2_provision.tar.gz && cd node2_provision && sudo ./provision.sh
    let site = topo.root().join("datacenter");
    let root = topo.root().join("datacenter-root");
    std::fs::create_dir_all(&site).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(&site)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let spawned = Instant::now();
    let out = topo
        .command(Site::Datacenter, "sh")
        .arg(site.join("node2_provision/provision.sh"))
        .arg("--root")
        .arg(&root)
        .arg("--no-systemd")
        .output()
        .unwrap();
    let node_log =
        || std::fs::read_to_string(root.join("var/log/fleet-server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "provision.sh: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node_log()
    );
    let pid_file = root.join("run/fleet-server.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The node carries its own etcd user, not the root password.
    let node_config = std::fs::read_to_string(root.join("etc/fleet-server/config.yaml")).unwrap();
    assert!(node_config.contains("fleet-node-node2"), "{node_config}");
    assert!(!node_config.contains(ROOT_PW));

    // On the primary: etcd_cluster_info.sh.
    let table = wait_for(
        &format!(
            "node2 active in `cluster info` on the primary:\n{}",
            node_log()
        ),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let (code, stdout, _) = info();
            (code == 0
                && stdout.lines().any(|l| {
                    l.starts_with("node2 ") && l.contains(" active ") && l.contains("198.51.100.10")
                }))
            .then_some(stdout)
        },
    );
    eprintln!(
        "etcd netns: provision.sh start → node2 active on the primary: {:?}\n{table}",
        spawned.elapsed()
    );
    assert!(
        table.starts_with(
            "Cluster: 2 members (2 active), backend etcd at http://203.0.113.10:2379\n"
        ),
        "{table}"
    );
    assert!(!table.contains(ROOT_PW));
    let node_id = table
        .lines()
        .find(|l| l.starts_with("node2 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();

    // While node2 lives, its name and its address are refused.
    let again = topo.root().join("again.tar.gz");
    let (code, _, stderr) = build("node2", "198.51.100.20", &again);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "node name node2 is already held by the live node {node_id} (use another name)"
        )),
        "{stderr}"
    );
    let (code, _, stderr) = build("node3", "198.51.100.10", &again);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "IP 198.51.100.10 is already used by the live node {node_id}"
        )),
        "{stderr}"
    );
    assert!(!again.exists());

    // node2 goes away (SIGTERM: it leaves at once); then the name is free again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_for(
        "node2 to exit after SIGTERM",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .is_err()
                .then_some(())
        },
    );
    let log = node_log();
    assert!(
        log.contains("✅ Registered node in cluster: node2-"),
        "{log}"
    );
    let (code, stdout, _) = info();
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("Cluster: 1 member (1 active), backend etcd at"),
        "{stdout}"
    );
    let (code, stdout, stderr) = build("node2", "198.51.100.10", &again);
    assert_eq!(code, 0, "{stdout}{stderr}");
    drop(primary);
    drop(etcd);
}

/// Heartbeats add no revision to etcd's history (liveness is the lease), the pruner's turn
/// compacts what joins and prunes wrote, and the database does not grow with heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_do_not_grow_etcd_history() {
    let etcd = EtcdServer::start();
    let text = format!(
        "cluster:\n  enabled: true\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}",
        etcd.cluster_yaml()
    );
    let config = Config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
    let b = fleet_server::cluster::open(&config).unwrap();
    let nodes: Vec<NodeRecord> = (0..20).map(|i| node(&format!("hist-{i:02}"))).collect();
    for n in &nodes {
        b.register(n).await.unwrap();
    }
    // 20 nodes, 50 rounds to warm up (the database file takes its first pages, pruner turns
    // write and compact), then 150 rounds: 3,000 heartbeats over several pruner turns.
    let warm = std::time::Instant::now();
    for round in 0..50 {
        for n in &nodes {
            b.heartbeat(n).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(warm.elapsed() < Duration::from_secs(60), "round {round}");
    }
    let (rev0, size0) = etcd.status();
    let started = std::time::Instant::now();
    let mut beats = 0;
    for _ in 0..150 {
        for n in &nodes {
            assert_eq!(
                b.heartbeat(n).await.unwrap(),
                Heartbeat::Alive { active: 20 },
                "{}",
                n.id
            );
            beats += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let (rev1, size1) = etcd.status();
    let turns = started.elapsed().as_secs() / 2 + 2;
    // Each pruner turn writes its claim and the count: a few revisions per turn, none per beat.
    assert!(
        rev1 - rev0 <= 3 * turns as i64,
        "{beats} heartbeats moved the revision {rev0} → {rev1} in {turns} turns"
    );
    assert!(
        size1 <= size0 * 2,
        "database {size0} → {size1} bytes after {beats} heartbeats"
    );
    // The turns compacted: the revision from before the heartbeats is gone from the history.
    let err = etcd
        .read_at_revision("fleet:cluster/active", rev0)
        .expect_err("the history before the heartbeats was not compacted");
    assert!(err.contains("compacted"), "{err}");
}

/// The member list is one round trip however many members: it asks each lease's age only
/// when the answer holds at most 500 active members (a page, the Settings page's 500);
/// a longer one lists them active with `age_known: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_skip_the_lease_lookups() {
    let etcd = EtcdServer::start();
    let text = format!("cluster:\n  enabled: true\n{}", etcd.cluster_yaml());
    let config = Config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
    let timing = Timing {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(60),
    };
    let b = EtcdMembership::new(&config.cluster, timing).unwrap();
    let nodes: Vec<NodeRecord> = (0..501).map(|i| node(&format!("long-{i:03}"))).collect();
    b.simulate_members(&nodes).await.unwrap();
    let all = b.members().await.unwrap();
    assert_eq!(all.len(), 501);
    assert!(
        all.iter()
            .all(|m| m.state == fleet_server::cluster::MemberState::Active && !m.age_known),
        "501 active members: listed active, their ages not asked"
    );
    let json = serde_json::to_value(&all[0]).unwrap();
    assert_eq!(json["age_known"], false, "{json}");
    let (page, next) = b.members_page(500, None).await.unwrap();
    assert_eq!(page.len(), 500);
    assert!(next.is_some());
    assert!(page.iter().all(|m| m.age_known && m.age_ms < 60_000));
    let json = serde_json::to_value(&page[0]).unwrap();
    assert!(json.get("age_known").is_none(), "{json}");
    // One leaves: 500 active members, within the budget, their ages asked.
    b.deregister(&nodes[0].id).await.unwrap();
    let all = b.members().await.unwrap();
    assert_eq!(all.len(), 500);
    assert!(all.iter().all(|m| m.age_known), "500 active: ages asked");
}
