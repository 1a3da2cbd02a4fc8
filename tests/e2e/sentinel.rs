//! Redis through Sentinel: a master, a replica and three Sentinels started by the test; a node
//! with the shared password and a node with its own user (made on the replica too) join
//! through the Sentinels; the master is killed; both nodes heartbeat on the promoted replica, the node user exists there, and
//! health is 200 again, within a stated bound. The session store follows a failover the same
//! way; Sentinels that require a password, and Sentinels and servers reached over TLS.

use std::time::{Duration, Instant};

use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::{Membership, Timing};
use fleet_server::config::Config;
use fleet_tests::sentinel::{SentinelOptions, SentinelSet};
use fleet_tests::{Daemon, wait_for};

/// The Sentinels' password in the tests that set one.
const SENTINEL_PW: &str = "sentinel-side-pw";

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

/// The session store through Sentinel (`sessions.redis.sentinels`, and on a second node the
/// cluster's Sentinels): a dashboard login made on the master survives its death; once the
/// replica is promoted the same cookie opens the Settings page again on both nodes (sessions
/// replicate) and a new login works.
#[test]
fn sessions_follow_a_sentinel_failover() {
    let mut set = SentinelSet::start();
    let shared = tempfile::tempdir().unwrap();
    let template = fleet_tests::web::node_template(shared.path());
    let list = set
        .sentinel_addresses()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let sessions = format!(
        "  backend: redis\n  redis:\n    sentinels: [{list}]\n    master_name: {}\n    password: \"{}\"\n",
        fleet_tests::sentinel::MASTER_NAME,
        fleet_tests::sentinel::PASSWORD
    );
    let dir = tempfile::tempdir().unwrap();
    let port = fleet_tests::free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: web\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}{}",
        dir.path().join("state").display(),
        set.cluster_yaml(None),
        fleet_tests::web::web_yaml(&template, &sessions)
    );
    let node = Daemon::start_with_config("web", dir, port, &config);
    // A second node whose sessions use the cluster's Sentinels (no `sessions.redis` of its own).
    let dir2 = tempfile::tempdir().unwrap();
    let port2 = fleet_tests::free_port();
    let config2 = format!(
        "server:\n  host: 127.0.0.1\n  port: {port2}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: web2\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}{}",
        dir2.path().join("state").display(),
        set.cluster_yaml(None),
        fleet_tests::web::web_yaml(&template, "  backend: redis\n")
    );
    let node2 = Daemon::start_with_config("web2", dir2, port2, &config2);
    node.wait_health(200, Duration::from_secs(15));
    node2.wait_health(200, Duration::from_secs(15));
    let mut browser = fleet_tests::web::Client::new(node.port);
    let r = browser.login("admin", fleet_tests::web::WEB_PASSWORD);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(browser.get("/settings").status, 200);
    let cookies = browser.cookies.clone();
    // Written on the master, replicated before the crash.
    wait_for(
        "the session to reach the replica",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            set.command(set.replica_port(), &["KEYS", "fleet:session:*"])
                .filter(|r| r.contains("fleet:session:"))
        },
    );

    let killed = Instant::now();
    set.kill_master();
    let to_promotion = set.wait_promoted(killed, Duration::from_secs(30));
    let promoted = Instant::now();
    wait_for(
        "the same session cookie to open the Settings page on the promoted replica",
        BOUND_AFTER_PROMOTION,
        Duration::from_millis(50),
        || {
            let mut again = fleet_tests::web::Client::new(node.port);
            again.cookies = cookies.clone();
            (again.get("/settings").status == 200).then_some(())
        },
    );
    let session_back = promoted.elapsed();
    // The same session on the node that reaches the session store through the cluster's
    // Sentinels.
    wait_for(
        "the session cookie to open the Settings page on the second node",
        BOUND_AFTER_PROMOTION,
        Duration::from_millis(50),
        || {
            let mut other = fleet_tests::web::Client::new(node2.port);
            other.cookies = cookies.clone();
            (other.get("/settings").status == 200).then_some(())
        },
    );
    let mut fresh = fleet_tests::web::Client::new(node.port);
    let r = fresh.login("admin", fleet_tests::web::WEB_PASSWORD);
    assert_eq!(
        r.status,
        303,
        "a new login after the failover: {}",
        r.text()
    );
    assert_eq!(fresh.get("/settings").status, 200);
    let keys = set
        .command(set.replica_port(), &["DBSIZE"])
        .unwrap_or_default();
    println!(
        "Sentinel failover, sessions: master killed → replica promoted {:.1} s; → the old session cookie opens Settings {:.1} s later (bound {:?}); new login OK; {} keys on the new master",
        to_promotion.as_secs_f64(),
        session_back.as_secs_f64(),
        BOUND_AFTER_PROMOTION,
        keys.trim().trim_start_matches(':')
    );
}

fn sentinel_yaml_with(set: &SentinelSet, password: Option<&str>) -> String {
    set.secure_cluster_yaml(password)
}

/// Sentinels with `requirepass`: a node that gives their password joins; one with a wrong
/// password is refused at once with an error that names the Sentinel and says
/// "authentication", and its health says so (503), rather than hanging.
#[test]
fn sentinels_that_require_a_password() {
    let set = SentinelSet::start_with(SentinelOptions {
        sentinel_password: Some(SENTINEL_PW.into()),
        tls: false,
    });
    let good = Daemon::start("good", &sentinel_yaml_with(&set, Some(SENTINEL_PW)));
    good.wait_health(200, Duration::from_secs(15));
    assert!(good.log().contains("(from Sentinel)"), "{}", good.log());
    assert!(
        !good.log().contains(SENTINEL_PW),
        "the Sentinel password reached the log"
    );
    let started = Instant::now();
    let bad = Daemon::start("bad", &sentinel_yaml_with(&set, Some("not-the-password")));
    bad.wait_log(
        &format!(
            "Sentinel {} refused authentication",
            set.sentinel_addresses().join(", ")
        ),
        Duration::from_secs(10),
    );
    let health = bad.wait_health(503, Duration::from_secs(5));
    let text = health.to_string();
    assert!(text.contains("authentication"), "{text}");
    assert!(!bad.log().contains("not-the-password"));
    println!(
        "wrong Sentinel password reported after {:?}: {text}",
        started.elapsed()
    );
    // None at all: refused the same way (NOAUTH).
    let none = Daemon::start("none", &sentinel_yaml_with(&set, None));
    none.wait_log("refused authentication", Duration::from_secs(10));
    good.wait_active(&[&good.node_id()], Duration::from_secs(5));
}

/// Sentinels and Redis servers reached only over TLS (`tls-port`; certificates made by the
/// test), the Sentinels with a password too: a node joins through them, and follows a
/// failover.
#[test]
fn sentinels_over_tls() {
    let mut set = SentinelSet::start_with(SentinelOptions {
        sentinel_password: Some(SENTINEL_PW.into()),
        tls: true,
    });
    let node = Daemon::start("tls", &sentinel_yaml_with(&set, Some(SENTINEL_PW)));
    node.wait_health(200, Duration::from_secs(15));
    let id = node.node_id();
    assert!(
        member_score(&set, set.master_port(), &id).is_some(),
        "the node heartbeats on the master"
    );
    let killed = Instant::now();
    set.kill_master();
    set.wait_promoted(killed, Duration::from_secs(30));
    let replica = set.replica_port();
    let promoted_at = server_ms(&set, replica);
    wait_for(
        "the node to heartbeat on the promoted replica over TLS",
        BOUND_AFTER_PROMOTION,
        Duration::from_millis(20),
        || (member_score(&set, replica, &id)? > promoted_at).then_some(()),
    );
    println!(
        "Sentinel over TLS: master killed → node heartbeating on the promoted replica {:.1} s later",
        killed.elapsed().as_secs_f64()
    );
    // Without TLS towards the Sentinels' TLS ports: no answer, said so, no hang.
    let plain = Daemon::start(
        "plain",
        &set.secure_cluster_yaml(Some(SENTINEL_PW))
            .replace("  redis_sentinel_tls: true\n", ""),
    );
    plain.wait_health(503, Duration::from_secs(15));
}
