//! Least privilege on the cluster backends, played as an attacker: with the credentials of a
//! real node's configuration, and of used, revoked and expired packages, every write outside
//! the node's own records is refused by the backend itself (NOPERM), and the cluster is intact
//! afterwards (every node healthy, events intact, no user lost).

use std::time::Duration;

use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::{Heartbeat, MemberState, Membership, NodeRecord, Timing};
use fleet_server::config::{Config, Secret};
use fleet_tests::RedisServer;

const TIMING: Timing = Timing {
    interval: Duration::from_secs(1),
    timeout: Duration::from_secs(3),
};

/// The primary's view: the server's admin credential.
fn admin(redis: &RedisServer) -> RedisMembership {
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("p.yaml")).unwrap();
    RedisMembership::new(&c.cluster, TIMING).unwrap()
}

/// A node's view, as its configuration would connect.
fn as_user(redis: &RedisServer, user: &str, password: &Secret) -> RedisMembership {
    let text = format!(
        "cluster:\n  enabled: true\n  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_username: {user}\n  redis_password: \"{}\"\n",
        redis.port,
        password.expose()
    );
    let c = Config::parse(&text, std::path::Path::new("n.yaml")).unwrap();
    RedisMembership::new(&c.cluster, TIMING).unwrap()
}

fn node(name: &str, ip: &str) -> NodeRecord {
    NodeRecord {
        id: fleet_server::identity::new_node_id(name),
        name: name.into(),
        hostname: format!("{name}.test"),
        addresses: vec![ip.into()],
        version: "0.1.0".into(),
        os: "linux".into(),
        started_at: 1,
        url: format!("http://{ip}:8768"),
    }
}

/// A node with a user of its own joins, heartbeats, is listed by others at once, and is
/// indexed (pages, addresses, `joined`) by the primary's next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_user_joins_through_its_own_keys() {
    let redis = RedisServer::start_with(Some("priv-admin-pw"), &[]);
    let primary = admin(&redis);
    let p = node("primary", "192.0.2.1");
    primary.register(&p).await.unwrap();
    let (user, pw) = primary.create_node_user("node2").await.unwrap();
    let n2 = as_user(&redis, &user, &pw);
    let me = node("node2", "192.0.2.2");
    let started = std::time::Instant::now();
    n2.register(&me).await.unwrap();
    let listed = primary.members().await.unwrap();
    let join = started.elapsed();
    eprintln!("node user: registered and listed by the primary in {join:?}");
    let m = listed
        .iter()
        .find(|m| m.node.id == me.id)
        .expect("listed at once");
    assert_eq!(m.state, MemberState::Active);
    assert_eq!(m.node, me);
    assert!(matches!(
        n2.heartbeat(&me).await.unwrap(),
        Heartbeat::Alive { .. }
    ));
    // The node itself lists both.
    let seen = n2.members().await.unwrap();
    assert!(seen.iter().any(|m| m.node.id == p.id) && seen.iter().any(|m| m.node.id == me.id));
    // The primary's heartbeat adopts it into the indexes and records `joined`.
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.heartbeat(&p).await.unwrap();
    let (page, _) = primary.members_page(10, None).await.unwrap();
    assert!(page.iter().any(|m| m.node.id == me.id), "{page:?}");
    let holders = primary
        .live_holders(Some("node2"), &["192.0.2.2".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(holders.name.as_deref(), Some(me.id.as_str()));
    assert_eq!(holders.ip.map(|(_, h)| h).as_deref(), Some(me.id.as_str()));
    let ev = primary.events(20).await.unwrap();
    assert!(
        ev.iter()
            .any(|e| e.kind == fleet_server::cluster::EventKind::Joined && e.node_id == me.id),
        "{ev:?}"
    );
    // Leaving: gone from the list at once; `left` recorded at the primary's next turn.
    n2.deregister(&me.id).await.unwrap();
    assert!(
        primary
            .members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.node.id != me.id)
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.heartbeat(&p).await.unwrap();
    let ev = primary.events(20).await.unwrap();
    assert!(
        ev.iter()
            .any(|e| e.kind == fleet_server::cluster::EventKind::Left && e.node_id == me.id),
        "{ev:?}"
    );
    let (page, _) = primary.members_page(10, None).await.unwrap();
    assert!(page.iter().all(|m| m.node.id != me.id), "{page:?}");
}
