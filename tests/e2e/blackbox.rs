//! The built `fleet-server` binary as a user runs it: several nodes on one redis-server,
//! kill -9, SIGTERM, a Redis outage, `--daemonize`, and the guide's startup lines.

use std::time::{Duration, Instant};

use fleet_tests::{Daemon, RedisServer, TEST_API_KEY, get_json, run_cli, wait_for};
use nix::sys::signal::Signal;

const GUIDE_LINES: [&str; 3] = [
    "✅ Cluster mode ENABLED (node: ",
    "✅ Registered node in cluster: ",
    "✅ Fleet server started on ",
];

#[test]
fn three_nodes_kill9_sigterm_and_a_redis_outage() {
    let mut redis = RedisServer::start_with(Some("blackbox-pw"), &[]);
    let cluster = redis.cluster_yaml();
    let a = Daemon::start("node-a", &cluster);
    let mut b = Daemon::start("node-b", &cluster);
    let mut c = Daemon::start("node-c", &cluster);
    for d in [&a, &b, &c] {
        d.wait_health(200, Duration::from_secs(10));
        d.wait_log(GUIDE_LINES[2], Duration::from_secs(5));
        let log = d.log();
        let positions: Vec<usize> = GUIDE_LINES
            .iter()
            .map(|l| {
                log.find(l)
                    .unwrap_or_else(|| panic!("`{l}` missing:\n{log}"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "order of the guide's lines:\n{log}"
        );
        assert!(log.contains("backend: redis)"), "{log}");
        assert!(
            !log.contains("blackbox-pw"),
            "the password reached the log:\n{log}"
        );
    }
    let (ia, ib, ic) = (a.node_id(), b.node_id(), c.node_id());
    assert!(
        ia.starts_with("node-a-") && ia.len() == "node-a-".len() + 6,
        "{ia}"
    );
    a.wait_active(&[&ia, &ib, &ic], Duration::from_secs(5));

    // The status endpoint: public count, node list only with the key.
    let (s, public) = get_json(a.port, "/api/fleet/cluster/status", None).unwrap();
    assert_eq!(s, 200);
    assert_eq!(public["active_nodes"], 3);
    assert_eq!(public["backend"], "redis");
    assert!(public.get("nodes").is_none(), "{public}");
    let (_, private) = get_json(a.port, "/api/fleet/cluster/status", Some(TEST_API_KEY)).unwrap();
    assert_eq!(private["nodes"].as_array().map(Vec::len), Some(3));
    let (s, _) = get_json(a.port, "/api/fleet/cluster/nodes", None).unwrap();
    assert_eq!(s, 401, "the node list needs the API key");
    let (s, _) = get_json(
        a.port,
        "/api/fleet/cluster/nodes",
        Some("wrong-key-wrong-key"),
    )
    .unwrap();
    assert_eq!(s, 401);
    // The list in pages: `limit` and the `next_cursor` each page returns.
    let (s, whole) = get_json(a.port, "/api/fleet/cluster/nodes", Some(TEST_API_KEY)).unwrap();
    assert_eq!(s, 200);
    assert!(whole.get("next_cursor").is_none(), "{whole}");
    let (s, p1) = get_json(
        a.port,
        "/api/fleet/cluster/nodes?limit=2",
        Some(TEST_API_KEY),
    )
    .unwrap();
    assert_eq!(s, 200, "{p1}");
    assert_eq!(p1["nodes"].as_array().map(Vec::len), Some(2), "{p1}");
    let next = p1["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_string();
    let (s, p2) = get_json(
        a.port,
        &format!("/api/fleet/cluster/nodes?limit=2&cursor={next}"),
        Some(TEST_API_KEY),
    )
    .unwrap();
    assert_eq!(s, 200, "{p2}");
    assert!(p2["next_cursor"].is_null(), "{p2}");
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!([ids(&p1), ids(&p2)].concat(), ids(&whole));
    for bad in ["limit=0", "limit=many", "cursor=zz"] {
        let (s, v) = get_json(
            a.port,
            &format!("/api/fleet/cluster/nodes?{bad}"),
            Some(TEST_API_KEY),
        )
        .unwrap();
        assert_eq!(s, 400, "{bad}: {v}");
    }

    // kill -9: c expires within the 3 s timeout plus a heartbeat; SIGTERM: b leaves at once.
    let (detected, left) = fleet_tests::kill9_then_sigterm(&a, &mut b, &mut c);
    eprintln!("kill -9 detected after {detected:?}; SIGTERM to gone: {left:?}");
    assert!(b.log().contains("👋 Left the cluster: "), "{}", b.log());

    // Redis goes away for a few seconds: a turns 503 with a reason, keeps running, then comes
    // back to 200 re-registered in the new, empty Redis.
    redis.stop();
    let down = Instant::now();
    let body = a.wait_health(503, Duration::from_secs(4));
    eprintln!("outage → 503 after {:?}: {body}", down.elapsed());
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("redis"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (s, _) = get_json(a.port, "/api/fleet/cluster/status", None).unwrap();
    assert_eq!(s, 200, "status still answers during the outage");
    redis.restart();
    let up = Instant::now();
    a.wait_health(200, Duration::from_secs(8));
    a.wait_active(&[&ia], Duration::from_secs(3));
    eprintln!("backend back → healthy after {:?}", up.elapsed());
    let log = a.log();
    assert_eq!(
        log.matches("❌ Cluster backend unavailable").count(),
        1,
        "one line per state change, not per retry:\n{log}"
    );
    assert!(log.contains("✅ Re-registered node in cluster: "), "{log}");
}

#[test]
fn sigint_also_leaves_cleanly_on_storage() {
    let shared = tempfile::tempdir().unwrap();
    let cluster = format!(
        "  backend: storage\n  storage_path: {}\n",
        shared.path().display()
    );
    let a = Daemon::start("store-a", &cluster);
    let mut b = Daemon::start("store-b", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    b.wait_health(200, Duration::from_secs(10));
    let (ia, ib) = (a.node_id(), b.node_id());
    a.wait_active(&[&ia, &ib], Duration::from_secs(5));
    b.signal(Signal::SIGINT);
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
    a.wait_active(&[&ia], Duration::from_millis(500));
    // The CLI reads the same shared directory.
    let (code, out, err) = run_cli(&[
        "cluster",
        "nodes",
        "--config",
        a.config_path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NAME") && out.contains(&ia) && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(&ib), "{out}");
    let (code, out, _) = run_cli(&[
        "cluster",
        "status",
        "--json",
        "--config",
        a.config_path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active_nodes"], 1);
    assert_eq!(v["backend"], "storage");
}

#[test]
fn the_node_id_survives_a_restart() {
    let shared = tempfile::tempdir().unwrap();
    let cluster = format!(
        "  backend: storage\n  storage_path: {}\n",
        shared.path().display()
    );
    let mut a = Daemon::start("keeper", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    let id = a.node_id();
    a.signal(Signal::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));
    let config = std::fs::read_to_string(a.config_path()).unwrap();
    let port = a.port;
    let dir = std::mem::replace(&mut a.dir, tempfile::tempdir().unwrap());
    let again = Daemon::start_with_config("keeper", dir, port, &config);
    again.wait_health(200, Duration::from_secs(10));
    assert_eq!(again.node_id(), id);
}

#[test]
fn daemonize_writes_a_pid_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = fleet_tests::free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  backend: storage\n  storage_path: {}\n",
            dir.path().join("state").display(),
            dir.path().join("share").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("share")).unwrap();
    let pid_file = dir.path().join("fleet-server.pid");
    let log_file = dir.path().join("fleet-server.log");
    let (code, _, err) = run_cli(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--daemonize",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--log-file",
        log_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let pid: i32 = wait_for(
        "the pid file",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok(),
    );
    let pid = nix::unistd::Pid::from_raw(pid);
    let guard = KillOnDrop(pid);
    wait_for(
        "health 200 from the daemonized server",
        Duration::from_secs(10),
        Duration::from_millis(25),
        || {
            matches!(
                get_json(port, "/api/fleet/cluster/health", None),
                Ok((200, _))
            )
            .then_some(())
        },
    );
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    wait_for(
        "the daemon to exit",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || nix::sys::signal::kill(pid, None).is_err().then_some(()),
    );
    std::mem::forget(guard);
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains("✅ Fleet server started on 127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains("👋 Left the cluster"), "{log}");
}

struct KillOnDrop(nix::unistd::Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, Signal::SIGKILL);
    }
}

#[test]
fn single_node_without_cluster_mode_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let port = fleet_tests::free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\n",
        dir.path().join("state").display()
    );
    let d = Daemon::start_with_config("single", dir, port, &config);
    d.wait_health(200, Duration::from_secs(10));
    d.wait_log("Cluster mode not enabled", Duration::from_secs(2));
    let (s, body) = get_json(port, "/api/fleet/cluster/status", None).unwrap();
    assert_eq!(s, 200);
    assert_eq!(body["enabled"], false);
    assert_eq!(body["message"], "Cluster mode not enabled");
}

#[test]
fn metrics_are_prometheus_text() {
    let shared = tempfile::tempdir().unwrap();
    let cluster = format!(
        "  backend: storage\n  storage_path: {}\n",
        shared.path().display()
    );
    let a = Daemon::start("metrics", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    // Wait for at least one heartbeat after registration.
    wait_for(
        "a heartbeat",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let (_, text) = fleet_tests::http("GET", a.port, "/metrics", &[]).ok()?;
            (!text.contains("fleet_cluster_heartbeats_total 0\n")).then_some(())
        },
    );
    let (s, text) = fleet_tests::http("GET", a.port, "/metrics", &[]).unwrap();
    assert_eq!(s, 200);
    for name in [
        "fleet_cluster_active_nodes 1",
        "fleet_cluster_registered 1",
        "fleet_cluster_heartbeat_latency_seconds ",
        "fleet_cluster_backend_errors_total 0",
        "# TYPE fleet_cluster_heartbeats_total counter",
    ] {
        assert!(text.contains(name), "`{name}` missing:\n{text}");
    }
}
