//! The etcd backend as users run it: real `fleet-server` processes on a private etcd (kill -9
//! and lease expiry, SIGTERM, an etcd restart that lost its data, a node started while etcd is
//! down), and per-node etcd users on an etcd with auth enabled.

use std::time::{Duration, Instant};

use fleet_server::cluster::etcd::EtcdMembership;
use fleet_server::cluster::{ClusterError, Membership, NodeRecord, Timing};
use fleet_server::config::{ClusterConfig, Config};
use fleet_tests::etcd::EtcdServer;
use fleet_tests::{Daemon, wait_for};
use nix::sys::signal::Signal;

fn wait_active(d: &Daemon, expected: &[&str], limit: Duration) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(
        &format!("active nodes {want:?} as seen by {}", d.name),
        limit,
        Duration::from_millis(25),
        || {
            let mut ids = d.active_ids()?;
            ids.sort();
            (ids == want).then_some(())
        },
    );
}

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
    wait_active(&a, &[&ia, &ib, &ic], Duration::from_secs(5));

    // kill -9: c's lease (TTL = the 3 s timeout) runs out, etcd deletes its keys.
    let killed = Instant::now();
    c.kill9();
    wait_active(&a, &[&ia, &ib], Duration::from_secs(8));
    eprintln!("etcd: kill -9 detected after {:?}", killed.elapsed());
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "expired too early"
    );

    // SIGTERM: b revokes its lease and is gone at once.
    let termed = Instant::now();
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0), "{}", b.log());
    wait_active(&a, &[&ia], Duration::from_millis(500));
    eprintln!("etcd: SIGTERM to gone: {:?}", termed.elapsed());

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
    wait_active(&a, &[&ia], Duration::from_secs(5));
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
    wait_active(&a, &[&id], Duration::from_secs(3));
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

    // The node's user joins the cluster, and may write under the prefix only.
    let as_node =
        EtcdMembership::new(&cluster_config(&etcd, &user, password.expose()), timing()).unwrap();
    let n2 = node("node2");
    assert_eq!(as_node.register(&n2).await.unwrap(), 2);
    etcd.put_as(&user, password.expose(), "fleet:probe", "1")
        .unwrap();
    let denied = etcd
        .put_as(&user, password.expose(), "elsewhere/probe", "1")
        .unwrap_err();
    assert!(denied.contains("permission denied"), "{denied}");
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
