//! Redis through Sentinel: a master, a replica and three Sentinels started by the test; a node
//! with the shared password and a node with its own user (made on the replica too) join
//! through the Sentinels; the master is killed; both nodes heartbeat on the promoted replica, the node user exists there, and
//! health is 200 again, within a stated bound.

use std::time::{Duration, Instant};

use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::{Membership, Timing};
use fleet_server::config::Config;
use fleet_tests::sentinel::SentinelSet;
use fleet_tests::{Daemon, wait_for};

/// From the promotion to both nodes heartbeating on the new master (1 s heartbeats).
const BOUND_AFTER_PROMOTION: Duration = Duration::from_secs(10);

fn member_score(set: &SentinelSet, port: u16, id: &str) -> Option<u64> {
    let r = set.command(port, &["ZSCORE", "fleet:cluster:members", id])?;
    r.lines()
        .nth(1)?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|f| f as u64)
}

fn server_ms(set: &SentinelSet, port: u16) -> u64 {
    let r = set.command(port, &["TIME"]).expect("TIME");
    let parts: Vec<u64> = r
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    parts[0] * 1000 + parts[1] / 1000
}

#[test]
fn nodes_follow_a_sentinel_failover() {
    let mut set = SentinelSet::start();
    let primary = Daemon::start("primary", &set.cluster_yaml(None));
    primary.wait_health(200, Duration::from_secs(15));
    let state = primary.dir.path().join("state");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Made on the primary, as `package build` does.
    let text = format!("cluster:\n  enabled: true\n{}", set.cluster_yaml(None));
    let cfg = Config::parse(&text, std::path::Path::new("sentinel.yaml")).unwrap();
    let (user, password) = rt
        .block_on(async {
            let m = RedisMembership::new(
                &cfg.cluster,
                Timing {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(3),
                },
            )?
            .with_user_registry(&state);
            // Resolves the master through the Sentinels on the way.
            m.members().await?;
            m.create_node_user("node2").await
        })
        .unwrap();
    // Made on the replica as well: ACLs do not replicate.
    let on_replica = set
        .command(set.replica_port(), &["ACL", "GETUSER", &user])
        .unwrap_or_default();
    assert!(
        !on_replica.starts_with("*-1") && !on_replica.starts_with("$-1"),
        "the node user exists on the replica before any failover: {on_replica}"
    );
    let node2 = Daemon::start("node2", &set.cluster_yaml(Some((&user, password.expose()))));
    node2.wait_health(200, Duration::from_secs(15));
    let (id1, id2) = (primary.node_id(), node2.node_id());
    primary.wait_listed(&id2, Duration::from_secs(10));
    // node2 runs with its own user: the primary's next heartbeat copies it into the index.
    wait_for(
        "node2 heartbeats on the master",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || member_score(&set, set.master_port(), &id2),
    );

    let killed = Instant::now();
    set.kill_master();
    let to_promotion = set.wait_promoted(killed, Duration::from_secs(30));
    let replica = set.replica_port();
    let promoted_at = server_ms(&set, replica);
    let promoted = Instant::now();
    wait_for(
        "both nodes to heartbeat on the promoted replica",
        BOUND_AFTER_PROMOTION,
        Duration::from_millis(20),
        || {
            let a = member_score(&set, replica, &id1)?;
            let b = member_score(&set, replica, &id2)?;
            (a > promoted_at && b > promoted_at).then_some(())
        },
    );
    let after_promotion = promoted.elapsed();
    primary.wait_health(200, Duration::from_secs(5));
    node2.wait_health(200, Duration::from_secs(5));
    let acl = set
        .command(replica, &["ACL", "GETUSER", &user])
        .unwrap_or_default();
    assert!(
        !acl.starts_with("*-1") && !acl.starts_with("$-1"),
        "the node user exists on the new master: {acl}"
    );
    println!(
        "Sentinel failover: master killed → replica promoted {:.1} s; → both nodes heartbeating on it {:.1} s later (bound {:?}); {:.1} s in all",
        to_promotion.as_secs_f64(),
        after_promotion.as_secs_f64(),
        BOUND_AFTER_PROMOTION,
        killed.elapsed().as_secs_f64()
    );
    assert!(primary.log().contains("(from Sentinel)"));
}
