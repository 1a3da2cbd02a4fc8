//! Load balancers that follow the cluster by themselves, with the real programs: HAProxy kept
//! in step over its runtime API (joins, a kill -9, an HAProxy restart, `--once`), nginx fed by
//! `lb render --watch --reload`, and the Prometheus discovery list checked by `promtool`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_tests::lb::{Haproxy, LbProcess, Nginx, node_config, spread, start_node};
use fleet_tests::{RedisServer, TEST_API_KEY, get_json, require_tool, run_cli, wait_for};

/// The ids seen through a load balancer in `n` requests (failures dropped).
fn seen(port: u16, n: usize) -> BTreeSet<String> {
    spread(port, n).into_iter().flatten().collect()
}

/// A configuration file for the `lb` commands: the same cluster as the nodes.
fn lb_config(dir: &std::path::Path, cluster: &str) -> String {
    let p = dir.join("lb.yaml");
    std::fs::write(&p, node_config("lb-cli", 1, dir, cluster)).unwrap();
    p.display().to_string()
}

#[test]
fn haproxy_follows_joins_kills_and_its_own_restart() {
    let redis = RedisServer::start();
    let cluster = redis.cluster_yaml();
    let a = start_node("lb-a", &cluster);
    let mut b = start_node("lb-b", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    b.wait_health(200, Duration::from_secs(10));
    let (ia, ib) = (a.node_id(), b.node_id());
    a.wait_active(&[&ia, &ib], Duration::from_secs(5));

    let mut haproxy = Haproxy::start();
    assert!(
        seen(haproxy.port, 3).is_empty(),
        "an empty backend routes nowhere"
    );
    let work = tempfile::tempdir().unwrap();
    let cfg = lb_config(work.path(), &cluster);
    let socket = haproxy.socket.display().to_string();
    let mut lb = LbProcess::spawn(
        &[
            "lb",
            "haproxy",
            "--config",
            &cfg,
            "--socket",
            &socket,
            "--backend",
            "fleet",
        ],
        work.path().join("lb.log"),
    );

    // Both nodes join HAProxy and both get requests through its frontend.
    wait_for(
        "both nodes reached through HAProxy",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (seen(haproxy.port, 6) == BTreeSet::from([ia.clone(), ib.clone()])).then_some(()),
    );
    let mut servers = haproxy.servers().unwrap();
    servers.sort();
    assert_eq!(servers, [ia.clone(), ib.clone()]);
    let log = lb.log();
    assert!(
        log.contains(&format!("➕ HAProxy: added server fleet/{ia}")),
        "{log}"
    );

    // kill -9: gone from HAProxy within the heartbeat timeout (3 s) plus one interval (1 s);
    // the allowance covers the 50 ms poll and the runtime commands on a loaded test machine.
    let killed = Instant::now();
    b.kill9();
    wait_for(
        "the killed node removed from HAProxy",
        Duration::from_secs(8),
        Duration::from_millis(50),
        || (haproxy.servers()? == [ia.clone()]).then_some(()),
    );
    let gone = killed.elapsed();
    eprintln!("kill -9 → removed from HAProxy after {gone:?}");
    assert!(
        gone <= Duration::from_millis(4_500),
        "removed after {gone:?}, more than timeout + interval"
    );
    assert_eq!(seen(haproxy.port, 4), BTreeSet::from([ia.clone()]));
    let log = lb.log();
    assert!(
        log.contains(&format!("⏸ HAProxy: draining server fleet/{ib}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("➖ HAProxy: removed server fleet/{ib}")),
        "{log}"
    );

    // HAProxy restarts empty: the servers come back without anyone's help.
    haproxy.restart();
    let restarted = Instant::now();
    wait_for(
        "the servers back after an HAProxy restart",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (seen(haproxy.port, 2) == BTreeSet::from([ia.clone()])).then_some(()),
    );
    eprintln!(
        "HAProxy restart → routing again after {:?}",
        restarted.elapsed()
    );
    assert_eq!(lb.stop(), Some(0), "SIGTERM stops `lb haproxy` cleanly");
    let log = lb.log();
    assert_eq!(
        log.matches("➕ HAProxy: added server fleet/").count(),
        3,
        "a, b, then a again after the restart:\n{log}"
    );

    // `--once`: a single pass against a fresh HAProxy, then exit 0.
    haproxy.restart();
    let (code, out, err) = run_cli(&[
        "lb",
        "haproxy",
        "--config",
        &cfg,
        "--socket",
        &socket,
        "--backend",
        "fleet",
        "--once",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 server (1 added"), "{out}");
    assert_eq!(haproxy.servers().unwrap(), [ia.as_str()]);

    // A backend HAProxy does not have, and an unreachable socket: clear errors, exit 1.
    let (code, _, err) = run_cli(&[
        "lb",
        "haproxy",
        "--config",
        &cfg,
        "--socket",
        &socket,
        "--backend",
        "nope",
        "--once",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("HAProxy has no backend `nope`"), "{err}");
    haproxy.stop();
    let (code, _, err) = run_cli(&[
        "lb", "haproxy", "--config", &cfg, "--socket", &socket, "--once",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("HAProxy runtime API at"), "{err}");
    let (code, _, err) = run_cli(&[
        "lb",
        "haproxy",
        "--config",
        &cfg,
        "--socket",
        &socket,
        "--backend",
        "a b",
        "--once",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--backend a b"), "{err}");
}

#[test]
fn haproxy_keeps_its_servers_through_a_cluster_backend_outage() {
    let mut redis = RedisServer::start();
    let cluster = redis.cluster_yaml();
    let a = start_node("lbo-a", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    let ia = a.node_id();
    let haproxy = Haproxy::start();
    // Left from before: the node's server at a stale port, in maintenance, and a server of a
    // node the cluster does not know.
    for cmd in [
        format!("add server fleet/{ia} 127.0.0.1:1 check"),
        "add server fleet/gone-000000 127.0.0.1:2".to_string(),
    ] {
        let r = haproxy.command(&cmd).unwrap();
        assert!(r.contains("New server registered"), "{cmd}: {r}");
    }
    let work = tempfile::tempdir().unwrap();
    let cfg = lb_config(work.path(), &cluster);
    let socket = haproxy.socket.display().to_string();
    let mut lb = LbProcess::spawn(
        &["lb", "haproxy", "--config", &cfg, "--socket", &socket],
        work.path().join("lb.log"),
    );
    wait_for(
        "the node in HAProxy at its address, the unknown server gone",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            (haproxy.servers()? == [ia.clone()]
                && seen(haproxy.port, 2) == BTreeSet::from([ia.clone()]))
            .then_some(())
        },
    );
    let log = lb.log();
    assert!(
        log.contains(&format!(
            "🔁 HAProxy: server fleet/{ia} now at 127.0.0.1:{}",
            a.port
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("✅ HAProxy: server fleet/{ia} back in rotation")),
        "{log}"
    );
    assert!(
        log.contains("➖ HAProxy: removed server fleet/gone-000000"),
        "{log}"
    );
    redis.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        haproxy.servers().unwrap(),
        [ia.as_str()],
        "an unreachable backend removes nobody"
    );
    redis.restart();
    a.wait_health(200, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(haproxy.servers().unwrap(), [ia.as_str()]);
    assert_eq!(lb.stop(), Some(0));
    let log = lb.log();
    assert_eq!(
        log.matches("❌ cluster backend unavailable").count(),
        1,
        "one line per state change:\n{log}"
    );
    assert!(log.contains("✅ cluster backend reachable again"), "{log}");
}

#[test]
fn nginx_follows_the_cluster_through_render_watch() {
    let redis = RedisServer::start();
    let cluster = redis.cluster_yaml();
    let mut a = start_node("ngx-a", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    let ia = a.node_id();
    let work = tempfile::tempdir().unwrap();
    let cfg = lb_config(work.path(), &cluster);

    // The first file, before nginx starts (its `include` must exist).
    let nginx_dir = tempfile::tempdir().unwrap();
    let upstream = Nginx::upstream_file(nginx_dir.path());
    let up = upstream.display().to_string();
    let (code, out, err) = run_cli(&[
        "lb", "render", "--config", &cfg, "--format", "nginx", "--output", &up,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let first = std::fs::read_to_string(&upstream).unwrap();
    assert!(first.contains(&format!("# {ia}")), "{first}");
    let nginx = Nginx::start(nginx_dir);
    assert_eq!(seen(nginx.port, 3), BTreeSet::from([ia.clone()]));

    let reload = nginx.reload_command();
    let mut lb = LbProcess::spawn(
        &[
            "lb", "render", "--config", &cfg, "--format", "nginx", "--output", &up, "--watch",
            "--reload", &reload,
        ],
        work.path().join("render.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !lb.log().contains("Reloaded"),
        "no reload while the content is unchanged:\n{}",
        lb.log()
    );

    let mut b = start_node("ngx-b", &cluster);
    b.wait_health(200, Duration::from_secs(10));
    let ib = b.node_id();
    wait_for(
        "nginx routing to the node that joined",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || (seen(nginx.port, 6) == BTreeSet::from([ia.clone(), ib.clone()])).then_some(()),
    );
    b.signal(nix::sys::signal::Signal::SIGTERM);
    b.wait_exit(Duration::from_secs(5));
    // The leaver is out of the file and nginx reloaded: every request goes to a.
    wait_for(
        "the node that left out of the upstream file, and nginx reloaded",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let text = std::fs::read_to_string(&upstream).ok()?;
            (!text.contains(&ib) && lb.log().matches("🔄 Reloaded").count() == 2).then_some(())
        },
    );
    let ids = spread(nginx.port, 8);
    assert!(
        ids.iter().all(|i| i.as_deref() == Some(ia.as_str())),
        "nginx routes only to the remaining node: {ids:?}"
    );
    assert!(
        nginx.log().contains("reconfiguring"),
        "nginx reloaded: {}",
        nginx.log()
    );
    assert_eq!(lb.stop(), Some(0));
    let log = lb.log();
    assert_eq!(
        log.matches("🔄 Reloaded").count(),
        2,
        "one reload per change (join, leave):\n{log}"
    );

    // A failing reload command is an error of a single pass, and names the command.
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));
    let (code, _, err) = run_cli(&[
        "lb", "render", "--config", &cfg, "--format", "nginx", "--output", &up, "--reload",
        "exit 3",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`exit 3` failed"), "{err}");
    let empty = std::fs::read_to_string(&upstream).unwrap();
    assert!(empty.contains("server 127.0.0.1:1 down;"), "{empty}");
    let t = std::process::Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(nginx.dir.path())
        .arg("-c")
        .arg(nginx.dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    assert!(
        t.status.success(),
        "nginx accepts the empty cluster's file: {}",
        String::from_utf8_lossy(&t.stderr)
    );
}

#[test]
fn render_writes_haproxy_and_refuses_bad_options() {
    let redis = RedisServer::start();
    let cluster = redis.cluster_yaml();
    let a = start_node("rnd-a", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    let ia = a.node_id();
    let work = tempfile::tempdir().unwrap();
    let cfg = lb_config(work.path(), &cluster);
    let (code, out, err) = run_cli(&["lb", "render", "--config", &cfg, "--format", "haproxy"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("    server {ia} 127.0.0.1:{} check", a.port)),
        "{out}"
    );
    // HAProxy itself accepts the section.
    require_tool("haproxy");
    let hcfg = work.path().join("h.cfg");
    std::fs::write(
        &hcfg,
        format!("defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\nfrontend fe\n    bind 127.0.0.1:{}\n    default_backend fleet\n{out}", fleet_tests::free_port()),
    )
    .unwrap();
    let c = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&hcfg)
        .output()
        .unwrap();
    assert!(
        c.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&c.stderr)
    );
    for (args, needle) in [
        (
            vec!["--format", "apache"],
            "--format apache: use haproxy or nginx",
        ),
        (
            vec!["--format", "nginx", "--watch"],
            "--watch needs --output",
        ),
        (vec!["--format", "nginx", "--name", "a{b"], "--name a{b"),
    ] {
        let mut all = vec!["lb", "render", "--config", &cfg];
        all.extend(args);
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 1, "{all:?}");
        assert!(err.contains(needle), "{all:?}: {err}");
    }
}

#[test]
fn prometheus_sd_is_accepted_by_promtool_and_traefik_view_lists_urls() {
    let redis = RedisServer::start();
    let cluster = redis.cluster_yaml();
    let a = start_node("sd-a", &cluster);
    let b = start_node("sd-b", &cluster);
    a.wait_health(200, Duration::from_secs(10));
    b.wait_health(200, Duration::from_secs(10));
    let (ia, ib) = (a.node_id(), b.node_id());
    a.wait_active(&[&ia, &ib], Duration::from_secs(5));

    let path = "/api/fleet/cluster/sd/prometheus";
    let (s, _) = get_json(a.port, path, None).unwrap();
    assert_eq!(s, 401, "the discovery list needs the API key");
    let bearer = format!("Bearer {TEST_API_KEY}");
    let (s, body) = fleet_tests::http("GET", a.port, path, &[("Authorization", &bearer)]).unwrap();
    assert_eq!(s, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(list[0]["labels"]["node_id"], ia.as_str());
    assert_eq!(list[0]["labels"]["backend"], "redis");
    assert_eq!(list[0]["targets"][0], format!("127.0.0.1:{}", a.port));

    // Prometheus's own discovery code reads the endpoint, with the key as Prometheus sends it.
    let promtool = require_tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, TEST_API_KEY).unwrap();
    let prom = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom,
        format!(
            "scrape_configs:\n  - job_name: fleet\n    http_sd_configs:\n      - url: http://127.0.0.1:{port}{path}\n        authorization:\n          type: Bearer\n          credentials_file: {key}\n",
            port = a.port,
            key = key_file.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&promtool)
        .arg("check")
        .arg("service-discovery")
        .arg("--timeout=3s")
        .arg(&prom)
        .arg("fleet")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool: {stdout}{stderr}");
    let found: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("promtool output is not JSON ({e}): {stdout}{stderr}"));
    let mut found = found.as_array().expect("promtool lists targets").clone();
    // promtool lists the targets in no fixed order.
    found.sort_by_key(|t| t["labels"]["node_id"].as_str().unwrap_or("").to_string());
    assert_eq!(found.len(), 2, "{stdout}");
    for (t, id, port) in [(&found[0], &ia, a.port), (&found[1], &ib, b.port)] {
        assert_eq!(t["labels"]["node_id"], id.as_str(), "{stdout}");
        assert_eq!(
            t["labels"]["instance"],
            format!("127.0.0.1:{port}"),
            "{stdout}"
        );
        assert_eq!(t["labels"]["job"], "fleet", "{stdout}");
    }

    // A wrong key: Prometheus's discovery fails and says why (promtool still exits 0).
    std::fs::write(&key_file, "wrong-key-wrong-key").unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "service-discovery", "--timeout=3s"])
        .arg(&prom)
        .arg("fleet")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("401"), "{all}");

    // Traefik's HTTP provider document, behind the same key.
    let tpath = "/api/fleet/cluster/sd/traefik";
    let (s, _) = get_json(a.port, tpath, None).unwrap();
    assert_eq!(s, 401);
    let (s, t) = get_json(b.port, tpath, Some(TEST_API_KEY)).unwrap();
    assert_eq!(s, 200);
    let servers = t["http"]["services"]["fleet"]["loadBalancer"]["servers"]
        .as_array()
        .unwrap();
    let urls: Vec<&str> = servers.iter().filter_map(|s| s["url"].as_str()).collect();
    assert_eq!(
        urls,
        [
            format!("http://127.0.0.1:{}", a.port),
            format!("http://127.0.0.1:{}", b.port)
        ]
    );
    assert_eq!(t["http"]["routers"]["fleet"]["service"], "fleet");
}
