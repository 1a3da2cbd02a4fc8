//! A cluster across real networks: redis in `cloud`, the primary in `office`, a node in
//! `datacenter`, each in its own network namespace behind a router that lets both reach the
//! backend but not each other; then a cut link, a Redis restart, kill -9 and SIGTERM there.
//!
//! Needs root (`ip netns`); fails with a clear message otherwise. Each test builds its own
//! topology with unique names, so they run in parallel, and removes it on drop.

use std::io::ErrorKind;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use fleet_tests::netns::{Site, Topology};
use fleet_tests::{Daemon, RedisServer, TEST_API_KEY, wait_for};
use nix::sys::signal::Signal;

const REDIS_PASSWORD: &str = "netns-redis-pw-0123";

const GUIDE_LINES: [&str; 3] = [
    "✅ Cluster mode ENABLED (node: ",
    "✅ Registered node in cluster: ",
    "✅ Fleet server started on 0.0.0.0:8768",
];

/// A primary in office and a node in datacenter on the redis in cloud. Fields drop in order:
/// the daemons, then redis, then the namespaces.
struct Cluster {
    node: Daemon,
    primary: Daemon,
    redis: RedisServer,
    topo: Topology,
    primary_id: String,
    node_id: String,
    /// Node process start → listed as active by the primary.
    join_time: Duration,
}

impl Cluster {
    fn start() -> Cluster {
        let topo = Topology::new();
        let redis = topo.redis(REDIS_PASSWORD);
        let cluster_yaml = redis.cluster_yaml();
        assert!(
            cluster_yaml.contains("redis_host: 203.0.113.10"),
            "{cluster_yaml}"
        );
        let primary = topo.daemon(Site::Office, "primary", &cluster_yaml);
        primary.wait_health(200, Duration::from_secs(15));
        let primary_id = primary.node_id();

        let spawned = Instant::now();
        let node = topo.daemon(Site::Datacenter, "server-02", &cluster_yaml);
        let node_id = wait_for(
            "the primary to list server-02 as active",
            Duration::from_secs(15),
            Duration::from_millis(10),
            || {
                primary
                    .active_ids()?
                    .into_iter()
                    .find(|id| id.starts_with("server-02-"))
            },
        );
        let join_time = spawned.elapsed();
        eprintln!("netns: join time (node process start → listed by the primary): {join_time:?}");
        Cluster {
            node,
            primary,
            redis,
            topo,
            primary_id,
            node_id,
            join_time,
        }
    }

    /// The active ids the primary reports, sorted.
    fn active_on_primary(&self) -> Option<Vec<String>> {
        let mut ids = self.primary.active_ids()?;
        ids.sort();
        Some(ids)
    }

    fn wait_active(&self, expected: &[&str], limit: Duration) -> Duration {
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        let started = Instant::now();
        wait_for(
            &format!("the primary to list exactly {want:?} as active"),
            limit,
            Duration::from_millis(10),
            || (self.active_on_primary()? == want).then_some(()),
        );
        started.elapsed()
    }

    fn both(&self) -> [&str; 2] {
        [&self.primary_id, &self.node_id]
    }
}

#[test]
fn topology_routes_each_site_to_cloud_but_not_to_each_other() {
    let topo = Topology::new();
    eprintln!("netns: office↔datacenter dropped by {:?}", topo.blocking());
    for site in Site::HOSTS {
        let out = topo.exec_ok(site, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            out.contains(&format!("{}/24", site.addr())),
            "{}: {out}",
            site.label()
        );
    }
    let _cloud = topo.listen(Site::Cloud, 6379);
    let _office = topo.listen(Site::Office, 8768);
    let _dc = topo.listen(Site::Datacenter, 8768);
    let cloud = Site::Cloud.addr();
    assert!(
        topo.can_connect(Site::Office, cloud, 6379),
        "office → cloud"
    );
    assert!(
        topo.can_connect(Site::Datacenter, cloud, 6379),
        "datacenter → cloud"
    );
    // Both sites listen and are reachable from the cloud: what fails below is the router.
    assert!(
        topo.can_connect(Site::Cloud, Site::Office.addr(), 8768),
        "cloud → office"
    );
    assert!(
        topo.can_connect(Site::Cloud, Site::Datacenter.addr(), 8768),
        "cloud → datacenter"
    );
    for (from, to) in [
        (Site::Office, Site::Datacenter),
        (Site::Datacenter, Site::Office),
    ] {
        let started = Instant::now();
        let err = topo
            .connect(
                from,
                SocketAddrV4::new(to.addr(), 8768).into(),
                Duration::from_secs(1),
            )
            .expect_err(&format!("{} → {} must fail", from.label(), to.label()));
        // Dropped silently (a timeout), not refused: as between two sites with no route.
        assert_eq!(
            err.kind(),
            ErrorKind::TimedOut,
            "{} → {}: {err}",
            from.label(),
            to.label()
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    topo.cut_link(Site::Datacenter);
    assert!(!topo.can_connect(Site::Datacenter, cloud, 6379), "cut");
    assert!(
        topo.can_connect(Site::Office, cloud, 6379),
        "office unaffected"
    );
    topo.restore_link(Site::Datacenter);
    wait_for(
        "datacenter → cloud after restoring the link",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            topo.can_connect(Site::Datacenter, cloud, 6379)
                .then_some(())
        },
    );
}

#[test]
fn primary_in_office_and_node_in_datacenter_join_through_cloud_redis() {
    let c = Cluster::start();
    assert!(c.join_time < Duration::from_secs(10), "{:?}", c.join_time);

    // The status, asked from inside the office at the primary's office address.
    let status = c
        .topo
        .get_json(
            Site::Office,
            Topology::server_addr(Site::Office),
            "/api/fleet/cluster/status",
            Some(TEST_API_KEY),
        )
        .expect("status from the office");
    assert_eq!(status.status, 200, "{}", status.text());
    let body = status.json();
    assert_eq!(body["active_nodes"], 2, "{body}");
    assert_eq!(body["backend"], "redis", "{body}");
    assert_eq!(body["node_id"], c.primary_id.as_str(), "{body}");
    let ids: Vec<&str> = body["nodes"]
        .as_array()
        .expect("the node list, with the API key")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(ids.contains(&c.node_id.as_str()), "{body}");
    assert!(c.node_id.starts_with("server-02-") && c.node_id.len() == "server-02-".len() + 6);

    // The node, asked from inside the datacenter, sees the same cluster.
    let node_status = c
        .topo
        .get_json(
            Site::Datacenter,
            Topology::server_addr(Site::Datacenter),
            "/api/fleet/cluster/status",
            None,
        )
        .expect("status from the datacenter");
    assert_eq!(
        node_status.json()["active_nodes"],
        2,
        "{}",
        node_status.text()
    );
    // The primary cannot reach the node (nor the other way): only the backend joins them.
    assert!(!c.topo.can_connect(
        Site::Office,
        Site::Datacenter.addr(),
        fleet_tests::NETNS_SERVER_PORT
    ));

    // The guide's three lines, in order, on the node; no password in either log.
    c.node.wait_log(GUIDE_LINES[2], Duration::from_secs(5));
    let log = c.node.log();
    let mut last = 0;
    for line in GUIDE_LINES {
        let at = log[last..]
            .find(line)
            .unwrap_or_else(|| panic!("`{line}` missing or out of order:\n{log}"));
        last += at + line.len();
    }
    assert!(
        log.contains(&format!(
            "✅ Cluster mode ENABLED (node: {}, backend: redis)",
            c.node_id
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("✅ Registered node in cluster: {}", c.node_id)),
        "{log}"
    );
    for d in [&c.node, &c.primary] {
        assert!(
            !d.log().contains(REDIS_PASSWORD),
            "password in the log of {}",
            d.name
        );
    }
}

#[test]
fn cutting_the_datacenter_off_expires_the_node_until_the_link_is_back() {
    let c = Cluster::start();
    let cut = Instant::now();
    c.topo.cut_link(Site::Datacenter);
    c.wait_active(&[&c.primary_id], Duration::from_secs(10));
    let detection = cut.elapsed();
    eprintln!("netns: failure-detection time (cut → gone on the primary): {detection:?}");
    assert!(
        detection >= Duration::from_secs(2),
        "expired before the 3 s timeout: {detection:?}"
    );
    assert!(detection < Duration::from_secs(6), "{detection:?}");

    // The node notices on its own and tells its load balancer.
    let body = c.node.wait_health(503, Duration::from_secs(5));
    eprintln!(
        "netns: cut → node health 503 after {:?}: {body}",
        cut.elapsed()
    );
    assert!(
        !body["reason"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    // It keeps serving meanwhile.
    let (s, _) = c.node.api_get("/api/fleet/cluster/status", None).unwrap();
    assert_eq!(s, 200);

    let restored = Instant::now();
    c.topo.restore_link(Site::Datacenter);
    let back = c.wait_active(&c.both(), Duration::from_secs(6));
    c.node.wait_health(200, Duration::from_secs(3));
    // Expired meanwhile, so it registered afresh rather than just heartbeating again.
    c.node
        .wait_log("✅ Re-registered node in cluster: ", Duration::from_secs(3));
    eprintln!("netns: link restored → node active again after {back:?}");
    // One 1 s interval (the retry backoff is capped at it) plus an operation timeout.
    assert!(
        back < Duration::from_secs(3),
        "back after {back:?} (restored {:?} ago)",
        restored.elapsed()
    );
    // The primary was never affected.
    let (s, _) = c
        .primary
        .api_get("/api/fleet/cluster/health", None)
        .unwrap();
    assert_eq!(s, 200);
}

#[test]
fn a_redis_restart_without_persistence_re_registers_both() {
    let mut c = Cluster::start();
    c.redis.restart();
    let restarted = Instant::now();
    let reply = c
        .redis
        .command(&["ZCARD", "fleet:cluster:members"])
        .unwrap();
    assert!(reply.starts_with(":"), "{reply}");
    c.wait_active(&c.both(), Duration::from_secs(10));
    eprintln!(
        "netns: redis restarted empty → both re-registered after {:?}",
        restarted.elapsed()
    );
    for d in [&c.primary, &c.node] {
        d.wait_health(200, Duration::from_secs(5));
        d.wait_log("✅ Re-registered node in cluster: ", Duration::from_secs(5));
    }
}

#[test]
fn kill9_on_the_node_expires_it_on_the_primary() {
    let mut c = Cluster::start();
    let killed = Instant::now();
    c.node.kill9();
    let gone = c.wait_active(&[&c.primary_id], Duration::from_secs(10));
    eprintln!("netns: kill -9 → gone on the primary after {gone:?}");
    assert!(
        gone >= Duration::from_secs(2),
        "expired too early: {gone:?}"
    );
    assert!(killed.elapsed() < Duration::from_secs(6));
}

#[test]
fn sigterm_on_the_node_leaves_at_once_and_exits_0() {
    let mut c = Cluster::start();
    let termed = Instant::now();
    c.node.signal(Signal::SIGTERM);
    assert_eq!(
        c.node.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        c.node.log()
    );
    // Deregistered before exiting: the primary no longer lists it, with no timeout to wait.
    c.wait_active(&[&c.primary_id], Duration::from_millis(500));
    eprintln!(
        "netns: SIGTERM → left and exited after {:?}",
        termed.elapsed()
    );
    assert!(
        c.node.log().contains("👋 Left the cluster: "),
        "{}",
        c.node.log()
    );
}
