//! etcd as a highly available backend: a three-member cluster whose leader is killed while two
//! nodes run (they stay active), and an etcd that speaks only TLS and requires client
//! certificates (CA, server and client certificates made with openssl by the test).

use std::time::{Duration, Instant};

use fleet_tests::Daemon;
use fleet_tests::etcd_cluster::EtcdCluster;

#[test]
fn nodes_stay_active_when_the_etcd_leader_is_killed() {
    let mut etcd = EtcdCluster::start_three();
    let yaml = etcd.cluster_yaml(false);
    let a = Daemon::start("etcd-ha-a", &yaml);
    let b = Daemon::start("etcd-ha-b", &yaml);
    a.wait_health(200, Duration::from_secs(15));
    b.wait_health(200, Duration::from_secs(15));
    let (ida, idb) = (a.node_id(), b.node_id());
    b.wait_listed(&ida, Duration::from_secs(10));
    a.wait_listed(&idb, Duration::from_secs(10));

    let leader = etcd.leader();
    let killed = Instant::now();
    etcd.kill(leader);
    // Two heartbeat timeouts (3 s each): an expiry would show.
    let mut answered = 0;
    let mut missing = Vec::new();
    let mut unhealthy = Vec::new();
    while killed.elapsed() < Duration::from_secs(7) {
        if let Some(ids) = b.active_ids() {
            answered += 1;
            if !(ids.contains(&ida) && ids.contains(&idb)) {
                missing.push((killed.elapsed(), ids));
            }
        }
        for d in [&a, &b] {
            if !matches!(d.api_get("/api/fleet/cluster/health", None), Ok((200, _))) {
                unhealthy.push((d.name.clone(), killed.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_leader = etcd.leader();
    println!(
        "etcd leader m{leader} killed; m{new_leader} leads; node list answered {answered} times; health not 200 at {unhealthy:?}"
    );
    assert_ne!(new_leader, leader);
    assert!(missing.is_empty(), "a node was not active: {missing:?}");
    assert!(
        answered > 20,
        "the node list answered only {answered} times"
    );
    for d in [&a, &b] {
        assert!(
            !d.log().contains("registering again"),
            "{} fell out of the cluster:\n{}",
            d.name,
            d.log()
        );
    }
    a.wait_health(200, Duration::from_secs(5));
    b.wait_health(200, Duration::from_secs(5));
}

#[test]
fn etcd_with_tls_and_client_certificates() {
    let etcd = EtcdCluster::start_tls();
    let with_cert = Daemon::start("etcd-tls", &etcd.cluster_yaml(true));
    with_cert.wait_health(200, Duration::from_secs(15));
    let id = with_cert.node_id();
    with_cert.wait_listed(&id, Duration::from_secs(10));
    // Without a client certificate the server refuses the handshake: never healthy, and the
    // reason says the backend is unavailable.
    let without = Daemon::start("etcd-tls-nocert", &etcd.cluster_yaml(false));
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = without
        .api_get("/api/fleet/cluster/health", None)
        .expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap_or_default().contains("etcd"),
        "{body}"
    );
    assert!(
        !with_cert
            .active_ids()
            .unwrap_or_default()
            .iter()
            .any(|i| i.starts_with("etcd-tls-nocert")),
        "a node without a client certificate joined"
    );
}
