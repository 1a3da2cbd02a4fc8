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
        let node_id = primary.wait_listed("server-02-", Duration::from_secs(15));
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

/// The guide's scenario as a user lives it, on this topology: the admin, logged in from
/// inside `office` as the Settings page does, builds a pkg over the primary's HTTP API; the
/// emulated Installer installs it in `datacenter` (the real stub as preinstall with `$3` a
/// temporary root, the payload, postinstall with the launchctl stand-in); the daemon starts
/// from the installed plist's ProgramArguments under that root and joins through the redis in
/// `cloud`. Measures the join time and the failure-detection time for that installed node.
#[test]
fn a_package_built_from_the_office_installs_in_the_datacenter_and_joins() {
    use fleet_tests::pkginstall::{self, ExpandedPkg, Launchctl, LaunchdJob, as_installer_runs};
    use fleet_tests::web::{Client, WEB_PASSWORD, web_yaml};

    const LIMIT: Duration = Duration::from_secs(120);
    // Locals drop in reverse: the installed node, the primary, redis, then the namespaces.
    let topo = Topology::new();
    let redis = topo.redis(REDIS_PASSWORD);
    let template = pkginstall::node_template(&topo.root().join("node-template"));
    let primary = {
        let dir = tempfile::tempdir().expect("temp dir for the primary");
        let config = format!(
            "server:\n  host: 0.0.0.0\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: primary\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}{}",
            dir.path().join("state").display(),
            redis.cluster_yaml(),
            web_yaml(&template, "  backend: memory\n"),
            port = fleet_tests::NETNS_SERVER_PORT,
        );
        Daemon::start_with_config_in(
            Some(topo.ns(Site::Office)),
            "primary",
            dir,
            fleet_tests::NETNS_SERVER_PORT,
            &config,
        )
    };
    primary.wait_health(200, Duration::from_secs(20));
    let primary_id = primary.node_id();

    // The admin's browser, in the office, at the primary's office address.
    let primary_addr = Topology::server_addr(Site::Office);
    let office = topo.ns(Site::Office).to_string();
    let mut admin = Client::connecting(
        primary_addr,
        Box::new(move || {
            fleet_tests::netns::in_netns(&office, || {
                std::net::TcpStream::connect_timeout(&primary_addr, Duration::from_secs(2))
            })
        }),
    );
    let r = admin.login("admin", WEB_PASSWORD);
    assert_eq!(r.status, 303, "login from the office: {}", r.text());
    let csrf = admin.page_csrf();
    let t = Instant::now();
    let r = admin.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
        ],
        br#"{"node_name":"server-02","package_name":"FleetServerClusterNode.pkg","format":"pkg","expires":"7d","ethernet":"allow-virtual"}"#,
    );
    assert_eq!(r.status, 200, "package build over HTTP: {}", r.text());
    assert_eq!(&r.body[..4], b"xar!", "a XAR (pkg) came back");
    eprintln!(
        "netns: package built over HTTP from the office in {:?} ({} bytes)",
        t.elapsed(),
        r.body.len()
    );
    let pkg = topo.root().join("FleetServerClusterNode.pkg");
    std::fs::write(&pkg, &r.body).expect("saving the download");

    // The emulated Installer, in the datacenter: preinstall (the stub), payload, postinstall.
    let x = ExpandedPkg::extract(&pkg, &topo.root().join("x"));
    let target = topo.root().join("datacenter-volume");
    std::fs::create_dir(&target).expect("the target volume");
    let installer_run = |script: &str, launchctl: Option<&Launchctl>| {
        let mut cmd = topo.command(Site::Datacenter, x.scripts.join(script));
        as_installer_runs(&mut cmd, &pkg, &target);
        if let Some(l) = launchctl {
            l.boot_volume_env(&mut cmd);
        }
        let o = pkginstall::output_within(&mut cmd, LIMIT);
        assert!(
            o.status.success(),
            "{script} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let summary = installer_run("preinstall", None);
    assert!(
        summary
            .contains("Ethernet connection: eth0 (198.51.100.10, virtual), policy allow-virtual"),
        "{summary}"
    );
    x.install_payload(&target);
    let launchctl = Launchctl::new(topo.root());
    installer_run("postinstall", Some(&launchctl));
    assert!(
        launchctl
            .calls()
            .iter()
            .any(|c| c.starts_with("bootstrap system ")),
        "{:?}",
        launchctl.calls()
    );

    // launchd's part: ProgramArguments with its paths under the root, in the datacenter.
    let job = LaunchdJob::read(&target);
    assert_eq!(
        job.args[1..],
        [
            "serve",
            "--config",
            "/Library/FleetServer/config/config.yaml",
            "--log-file",
            "/var/log/fleet-server.log",
            "--pid-file",
            "/var/run/fleet-server.pid"
        ]
    );
    let spawned = Instant::now();
    let node = job.spawn(topo.command(Site::Datacenter, &job.argv[0]));
    let node_id = primary.wait_listed("server-02-", Duration::from_secs(20));
    let join_time = spawned.elapsed();
    eprintln!(
        "netns: join time of the installed node (daemon start → listed by the primary): {join_time:?}"
    );
    assert!(join_time < Duration::from_secs(10), "{join_time:?}");

    // The primary's status, asked from the office: two active nodes, the new one among them.
    let status = topo
        .get_json(
            Site::Office,
            primary_addr,
            "/api/fleet/cluster/status",
            Some(TEST_API_KEY),
        )
        .expect("status from the office");
    assert_eq!(status.status, 200, "{}", status.text());
    let body = status.json();
    assert_eq!(body["active_nodes"], 2, "{body}");
    let ids: Vec<&str> = body["nodes"]
        .as_array()
        .expect("the node list, with the API key")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(ids.contains(&node_id.as_str()), "{body}");
    // And the admin's Settings page says so (its count follows the primary's next heartbeat:
    // the new node runs with a Redis user of its own, which the primary indexes then).
    let mut page = String::new();
    for _ in 0..150 {
        page = admin.get("/settings").text();
        if page.contains("<dd id=\"active-nodes\">2</dd>") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        page.contains("<dd id=\"active-nodes\">2</dd>"),
        "Active Nodes on the Settings page:\n{page}"
    );
    // The node's identity is under the root; the primary and the node never met.
    let id_file = target.join("Library/FleetServer/state/node_id");
    assert_eq!(
        std::fs::read_to_string(&id_file)
            .unwrap_or_else(|e| panic!("{}: {e}", id_file.display()))
            .trim(),
        node_id
    );
    assert!(!topo.can_connect(
        Site::Datacenter,
        Site::Office.addr(),
        fleet_tests::NETNS_SERVER_PORT
    ));

    // The guide's three startup lines, in order, in the installed node's log.
    wait_for(
        "the guide's three startup lines in the installed node's log",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = node.log();
            GUIDE_LINES.iter().all(|l| log.contains(l)).then_some(())
        },
    );
    let log = node.log();
    let mut last = 0;
    for line in GUIDE_LINES {
        let at = log[last..]
            .find(line)
            .unwrap_or_else(|| panic!("`{line}` missing or out of order:\n{log}"));
        last += at + line.len();
    }
    assert!(
        log.contains(&format!(
            "✅ Cluster mode ENABLED (node: {node_id}, backend: redis)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("✅ Registered node in cluster: {node_id}")),
        "{log}"
    );
    assert!(!log.contains(REDIS_PASSWORD), "password in the node's log");

    // Failure detection for this installed node: datacenter↔cloud cut → gone on the primary.
    let only_primary = || {
        let ids = primary.active_ids()?;
        (ids == [primary_id.as_str()]).then_some(())
    };
    let cut = Instant::now();
    topo.cut_link(Site::Datacenter);
    wait_for(
        "the primary to drop the cut-off installed node",
        Duration::from_secs(10),
        Duration::from_millis(10),
        only_primary,
    );
    let detection = cut.elapsed();
    eprintln!(
        "netns: failure-detection time of the installed node (cut → gone on the primary): {detection:?}"
    );
    assert!(
        detection >= Duration::from_secs(2),
        "expired before the 3 s timeout: {detection:?}"
    );
    assert!(detection < Duration::from_secs(6), "{detection:?}");

    // Link back: it re-registers on its own.
    let restored = Instant::now();
    topo.restore_link(Site::Datacenter);
    wait_for(
        "the installed node back on the primary after the link is restored",
        Duration::from_secs(6),
        Duration::from_millis(10),
        || primary.active_ids()?.contains(&node_id).then_some(()),
    );
    eprintln!(
        "netns: link restored → installed node active again after {:?}",
        restored.elapsed()
    );
}
