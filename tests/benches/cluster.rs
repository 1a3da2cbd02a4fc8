//! `make bench` for the cluster daemon: prints figures beside their targets, asserts nothing.
//! Join latency, failure detection, graceful leave, 10,000 simulated members in one Redis,
//! an idle daemon's memory and CPU, health-endpoint throughput under `wrk`, the load balancer
//! views with 1,000 simulated members (`lb render`, `sd/prometheus`, join → HAProxy), and
//! heartbeat cost against cluster size (100 to 10,000 simulated members) on every backend,
//! against a floor of the raw operations a heartbeat needs, measured in the same run.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_server::cluster::etcd::EtcdMembership;
use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::storage::StorageMembership;
use fleet_server::cluster::{Heartbeat, MemberState, Membership, NodeRecord, Timing};
use fleet_server::config::Config;
use fleet_tests::{Daemon, RedisServer, TEST_API_KEY, get_json, require_tool};

fn row(what: &str, value: String, target: &str) {
    if target.is_empty() {
        println!("{what:<58} {value:>16}");
    } else {
        println!("{what:<58} {value:>16}   target {target}");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn backend_for(redis: &RedisServer, interval: u32, timeout: u32) -> Arc<dyn Membership> {
    let text = format!(
        "cluster:\n  enabled: true\n  heartbeat_interval: {interval}\n  heartbeat_timeout: {timeout}\n{}",
        redis.cluster_yaml()
    );
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    fleet_server::cluster::open(&c).unwrap()
}

async fn listed(b: &dyn Membership, id_prefix: &str) -> Option<String> {
    b.members()
        .await
        .ok()?
        .into_iter()
        .find(|m| m.state == MemberState::Active && m.node.id.starts_with(id_prefix))
        .map(|m| m.node.id)
}

async fn membership_latencies(rt_redis: &RedisServer) {
    let observer = backend_for(rt_redis, 1, 3);
    let cluster = rt_redis.cluster_yaml();
    let mut joins = Vec::new();
    let mut detections = Vec::new();
    let mut leaves = Vec::new();
    for round in 0..5 {
        let name = format!("bench-{round}");
        let started = Instant::now();
        let mut d = Daemon::start(&name, &cluster);
        let prefix = format!("{name}-");
        let id = loop {
            if let Some(id) = listed(&*observer, &prefix).await {
                break id;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node never joined"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        joins.push(started.elapsed());
        if round % 2 == 0 {
            let killed = Instant::now();
            d.kill9();
            while listed(&*observer, &id).await.is_some() {
                assert!(killed.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            detections.push(killed.elapsed());
        } else {
            let termed = Instant::now();
            d.signal(nix::sys::signal::Signal::SIGTERM);
            while listed(&*observer, &id).await.is_some() {
                assert!(termed.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            leaves.push(termed.elapsed());
            d.wait_exit(Duration::from_secs(5));
        }
    }
    joins.sort();
    detections.sort();
    leaves.sort();
    row(
        "join: process start → listed by another node (median of 5)",
        ms(percentile(&joins, 0.5)),
        "< 300 ms",
    );
    row("join: worst of 5", ms(*joins.last().unwrap()), "");
    row(
        "failure detection, 1 s / 3 s: kill -9 → gone (median of 3)",
        ms(percentile(&detections, 0.5)),
        "< 4000 ms",
    );
    row(
        "graceful leave: SIGTERM → gone (median of 2)",
        ms(percentile(&leaves, 0.5)),
        "< 100 ms",
    );
}

fn fake_node(i: usize) -> NodeRecord {
    NodeRecord {
        id: format!("sim-{i:05}-abc123"),
        name: format!("sim-{i:05}"),
        hostname: format!("sim-{i:05}.example"),
        addresses: vec![format!("198.51.100.{}", i % 250 + 1)],
        version: "0.1.0".into(),
        os: "macos".into(),
        started_at: 1_795_000_000_000,
        url: format!("http://198.51.100.{}:8768", i % 250 + 1),
    }
}

fn used_memory(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "memory"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn ten_thousand_members() {
    const N: usize = 10_000;
    let redis = RedisServer::start_with(Some("bench-pw"), &[]);
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let timing = Timing {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(15),
    };
    let sim = Arc::new(RedisMembership::new(&c.cluster, timing).unwrap());
    let nodes: Arc<Vec<NodeRecord>> = Arc::new((0..N).map(fake_node).collect());
    let before = used_memory(&redis);
    let now = sim.server_now_ms().await.unwrap();
    for chunk in nodes.chunks(1000) {
        sim.simulate_members(chunk, now).await.unwrap();
    }
    let after = used_memory(&redis);
    // Keep them heartbeating: every member once per 5 s, spread evenly (2,000 writes/s).
    let stop = stop_flag();
    let hb = {
        let (sim, nodes, stop) = (sim.clone(), nodes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = sim.server_now_ms().await.unwrap();
                let batch: Vec<NodeRecord> = (0..100).map(|k| nodes[(i + k) % N].clone()).collect();
                sim.simulate_members(&batch, t).await.unwrap();
                i = (i + 100) % N;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // A real daemon on the same Redis answers the HTTP calls.
    let d = Daemon::start(
        "bench-api",
        &format!(
            "  heartbeat_interval: 5\n  heartbeat_timeout: 15\n{}",
            redis.cluster_yaml()
        ),
    );
    d.wait_health(200, Duration::from_secs(10));

    let mut backend_status = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let n = sim.active_count().await.unwrap();
        backend_status.push(t.elapsed());
        assert!(n >= N);
    }
    backend_status.sort();
    let mut http_status = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        let (s, body) = get_json(d.port, "/api/fleet/cluster/status", None).unwrap();
        http_status.push(t.elapsed());
        assert_eq!(s, 200);
        assert!(body["active_nodes"].as_u64().unwrap_or(0) >= N as u64);
    }
    http_status.sort();
    let mut lists = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let m = sim.members().await.unwrap();
        lists.push(t.elapsed());
        assert!(m.len() > N);
    }
    lists.sort();
    let mut http_lists = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (s, _) = get_json(d.port, "/api/fleet/cluster/nodes", Some(TEST_API_KEY)).unwrap();
        http_lists.push(t.elapsed());
        assert_eq!(s, 200);
    }
    http_lists.sort();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = hb.await;

    println!("\n10,000 simulated members heartbeating every 5 s into one redis-server:");
    row(
        "status (active count) from the backend, p50",
        ms(percentile(&backend_status, 0.5)),
        "",
    );
    row(
        "status (active count) from the backend, p99",
        ms(percentile(&backend_status, 0.99)),
        "< 5 ms",
    );
    row(
        "GET /api/fleet/cluster/status over HTTP, p50",
        ms(percentile(&http_status, 0.5)),
        "",
    );
    row(
        "GET /api/fleet/cluster/status over HTTP, p99",
        ms(percentile(&http_status, 0.99)),
        "< 5 ms",
    );
    row(
        "full node list from the backend (median of 20)",
        ms(percentile(&lists, 0.5)),
        "< 50 ms",
    );
    row(
        "GET /api/fleet/cluster/nodes over HTTP, JSON (median of 10)",
        ms(percentile(&http_lists, 0.5)),
        "",
    );
    row(
        "Redis memory per member",
        format!("{} B", (after.saturating_sub(before)) / N as u64),
        "< 1024 B",
    );
}

fn stop_flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

fn proc_stat_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn idle_and_throughput() {
    let redis = RedisServer::start_with(Some("bench-pw"), &[]);
    let d = Daemon::start(
        "bench-idle",
        &format!(
            "  heartbeat_interval: 5\n  heartbeat_timeout: 15\n{}",
            redis.cluster_yaml()
        ),
    );
    d.wait_health(200, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let pid = d.pid();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let t0 = proc_stat_ticks(pid);
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let t1 = proc_stat_ticks(pid);
    let cpu = (t1 - t0) as f64 / ticks_per_s / window.as_secs_f64() * 100.0;
    println!("\nOne daemon, idle (Redis backend, 5 s heartbeats):");
    row(
        "resident memory",
        format!("{:.1} MB", rss_kib(pid) as f64 / 1024.0),
        "< 20 MB",
    );
    row(
        &format!("CPU over {} s", window.as_secs()),
        format!("{cpu:.2} %"),
        "< 0.5 %",
    );

    let wrk = require_tool("wrk");
    let out = Command::new(wrk)
        .args(["-t2", "-c64", "-d8s", "--latency"])
        .arg(format!(
            "http://127.0.0.1:{}/api/fleet/cluster/health",
            d.port
        ))
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| format!("? ({text})"));
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(|l| l.trim().trim_start_matches("99%").trim().to_string())
        .unwrap_or_default();
    row(
        "health endpoint under wrk (2 threads, 64 connections)",
        format!("{rps} req/s"),
        "20,000 req/s",
    );
    row("  … its p99 latency", p99, "");
    row(
        "  … resident memory after the load",
        format!("{:.1} MB", rss_kib(pid) as f64 / 1024.0),
        "",
    );
}

/// A simulated member whose URL is a loopback address nobody listens on (port 1), so HAProxy's
/// health checks get an immediate refusal and never leave the machine.
fn loopback_node(i: usize) -> NodeRecord {
    let mut n = fake_node(i);
    n.id = format!("lbsim-{i:04}-abc123");
    n.name = format!("lbsim-{i:04}");
    n.url = format!("http://127.1.{}.{}:1", i / 250, i % 250 + 1);
    n
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    percentile(v, 0.5)
}

fn ratio(a: Duration, floor: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / floor.as_secs_f64().max(1e-9))
}

/// `lb render`, `sd/prometheus` and join → HAProxy routing with 1,000 simulated members, each
/// beside a floor measured in the same run: the bare member-list read, the `nodes` endpoint,
/// and the join as another node sees it.
async fn load_balancer_views() {
    use fleet_tests::lb::{Haproxy, LbProcess, health_via, node_config, start_node};
    const N: usize = 1000;
    let redis = RedisServer::start_with(Some("bench-pw"), &[]);
    let cluster = redis.cluster_yaml();
    let text = format!("cluster:\n  enabled: true\n{cluster}");
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let timing = Timing {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(15),
    };
    let sim = Arc::new(RedisMembership::new(&c.cluster, timing).unwrap());
    let nodes: Arc<Vec<NodeRecord>> = Arc::new((0..N).map(loopback_node).collect());
    let now = sim.server_now_ms().await.unwrap();
    sim.simulate_members(&nodes, now).await.unwrap();
    let stop = stop_flag();
    let hb = {
        let (sim, nodes, stop) = (sim.clone(), nodes.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = sim.server_now_ms().await.unwrap();
                sim.simulate_members(&nodes, t).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let work = tempfile::tempdir().unwrap();
    let lb_yaml = work.path().join("lb.yaml");
    // Timeout 15 s for the simulated members; the `lb` passes run every 1 s (the interval).
    let cfg_text = node_config("bench-lb", 1, work.path(), &cluster)
        .replace("heartbeat_timeout: 3", "heartbeat_timeout: 15");
    std::fs::write(&lb_yaml, cfg_text).unwrap();
    let cfg = lb_yaml.display().to_string();

    // Floor: the member list straight from the backend.
    let mut reads = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let m = sim.members().await.unwrap();
        reads.push(t.elapsed());
        assert!(m.len() >= N);
    }
    let read = median(&mut reads);
    // The pure rendering of those members.
    let members = sim.members().await.unwrap();
    let mut pure = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let (targets, _) = fleet_server::lb::targets(&members);
        let out = fleet_server::lb::render::render(
            fleet_server::lb::render::Format::Haproxy,
            "fleet",
            &targets,
        );
        pure.push(t.elapsed());
        assert!(out.len() > N * 40);
    }
    let pure = median(&mut pure);
    // The whole command, process start to exit.
    let bin = fleet_tests::fleet_server_bin();
    let mut cli = Vec::new();
    for format in ["haproxy", "nginx"] {
        for _ in 0..5 {
            let t = Instant::now();
            let out = Command::new(&bin)
                .args(["lb", "render", "--config", &cfg, "--format", format])
                .output()
                .unwrap();
            cli.push(t.elapsed());
            assert!(out.status.success());
        }
    }
    let cli = median(&mut cli);

    // sd/prometheus from a real daemon, against the nodes list as its floor.
    let d = Daemon::start(
        "bench-sd",
        &format!("  heartbeat_interval: 1\n  heartbeat_timeout: 15\n{cluster}"),
    );
    d.wait_health(200, Duration::from_secs(10));
    let mut sd = Vec::new();
    let mut list = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let (s, v) = get_json(
            d.port,
            "/api/fleet/cluster/sd/prometheus",
            Some(TEST_API_KEY),
        )
        .unwrap();
        sd.push(t.elapsed());
        assert_eq!(s, 200);
        assert!(v.as_array().map(Vec::len).unwrap_or(0) > N);
        let t = Instant::now();
        let (s, _) = get_json(d.port, "/api/fleet/cluster/nodes", Some(TEST_API_KEY)).unwrap();
        list.push(t.elapsed());
        assert_eq!(s, 200);
    }
    sd.sort();
    let (sd50, sd99) = (percentile(&sd, 0.5), percentile(&sd, 0.99));
    let list = median(&mut list);
    drop(d);

    // HAProxy: the first pass adds all 1,000; then real nodes join and are routed to.
    let haproxy = Haproxy::start();
    let socket = haproxy.socket.display().to_string();
    let first = Instant::now();
    let out = Command::new(&bin)
        .args([
            "lb", "haproxy", "--config", &cfg, "--socket", &socket, "--once",
        ])
        .output()
        .unwrap();
    let first = first.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lb = LbProcess::spawn(
        &["lb", "haproxy", "--config", &cfg, "--socket", &socket],
        work.path().join("lb.log"),
    );
    // Let HAProxy's checks mark the simulated (unreachable) servers down first.
    std::thread::sleep(Duration::from_secs(4));
    let mut joins = Vec::new();
    let mut listed = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        let mut node = start_node(&format!("bench-join-{round}"), &cluster);
        let mut seen_listed = None;
        let id = loop {
            assert!(started.elapsed() < Duration::from_secs(15), "never routed");
            if seen_listed.is_none()
                && fleet_tests::get_json(node.port, "/api/fleet/cluster/health", None)
                    .is_ok_and(|(s, _)| s == 200)
            {
                seen_listed = Some(started.elapsed());
            }
            if let Some(id) = health_via(haproxy.port) {
                break id;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        joins.push(started.elapsed());
        listed.push(seen_listed.unwrap_or_else(|| started.elapsed()));
        assert!(id.starts_with("bench-join-"));
        node.signal(nix::sys::signal::Signal::SIGTERM);
        node.wait_exit(Duration::from_secs(5));
        // Until HAProxy no longer routes to it (its server drained and deleted).
        let gone = Instant::now();
        while health_via(haproxy.port).is_some() && gone.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let join = median(&mut joins);
    let registered = median(&mut listed);
    let _ = lb.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = hb.await;

    println!("\nLoad balancer views, {N} simulated members + real nodes (one redis-server):");
    row(
        "member list from the backend (floor, median of 20)",
        ms(read),
        "",
    );
    row(
        "targets + HAProxy section rendered in-process (median of 50)",
        format!("{} ({})", ms(pure), ratio(pure, read)),
        "",
    );
    row(
        "`fleet-server lb render` process, start → exit (median of 10)",
        format!("{} ({})", ms(cli), ratio(cli, read)),
        "< 200 ms",
    );
    row(
        "GET /api/fleet/cluster/nodes (floor, median of 30)",
        ms(list),
        "",
    );
    row(
        "GET /api/fleet/cluster/sd/prometheus, p50",
        format!("{} ({})", ms(sd50), ratio(sd50, list)),
        "< 50 ms",
    );
    row("GET /api/fleet/cluster/sd/prometheus, p99", ms(sd99), "");
    row(
        &format!("`lb haproxy --once`: first pass adding {N} servers"),
        ms(first),
        "",
    );
    row(
        "node start → healthy (registered; floor, median of 3)",
        ms(registered),
        "",
    );
    row(
        "node start → routed by HAProxy (median of 3)",
        format!("{} (+{})", ms(join), ms(join.saturating_sub(registered))),
        "< interval + 1 s",
    );
}

// ---- Heartbeat cost against cluster size, on every backend (`scale`) ----

type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A backend under the scale benchmark: the daemon's backend, how to add simulated members,
/// the floor (the raw operations a heartbeat needs), and the CPU seconds the backend used.
struct ScaleTarget {
    name: &'static str,
    backend: Arc<dyn Membership>,
    simulate: Box<dyn Fn(Vec<NodeRecord>) -> BoxFut>,
    floor: Arc<dyn Fn(String) -> BoxFut + Send + Sync>,
    cpu_seconds: Box<dyn Fn() -> f64>,
    /// What `cpu_seconds` measures, for the table's heading.
    cpu_of: &'static str,
}

/// Timing for the scale benchmark: 5 s heartbeats, and a timeout long enough that simulated
/// members do not expire between the windows that renew them (the prune's own cost, which
/// runs once per timeout across the cluster, is measured on its own).
const SCALE_TIMING: Timing = Timing {
    interval: Duration::from_secs(5),
    timeout: Duration::from_secs(300),
};
const SCALE_SIZES: [usize; 4] = [100, 1_000, 5_000, 10_000];
/// Divides every size: worker `w` beats the members `w`, `w + WORKERS`, … so no member is beaten
/// by two workers at once (a real node beats its own lease one beat after the other).
const WORKERS: usize = 50;
const WINDOW: Duration = Duration::from_secs(3);

fn cpu_of_pid(pid: u32) -> f64 {
    proc_stat_ticks(pid as i32) as f64 / 100.0
}

/// What one load window measured.
struct Window {
    ops: u64,
    per_s: f64,
    cpu_per_op_us: f64,
    p99: Duration,
    status_p99: Duration,
}

/// Runs `WORKERS` loops of `op` over the first `n` nodes (each worker its own stride) for
/// `window` or until `budget` operations, with a status reader beside them.
async fn load_window(
    t: &ScaleTarget,
    nodes: &Arc<Vec<NodeRecord>>,
    n: usize,
    window: Duration,
    budget: Option<u64>,
    floor: bool,
) -> Window {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = stop_flag();
    let cpu0 = (t.cpu_seconds)();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (nodes, done, stop) = (nodes.clone(), done.clone(), stop.clone());
        let backend = t.backend.clone();
        let floor_op = t.floor.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(b) = budget
                    && done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= b
                {
                    break;
                }
                let node = &nodes[i % n];
                let t0 = Instant::now();
                if floor {
                    floor_op(node.id.clone()).await;
                } else {
                    let hb = backend.heartbeat(node).await.expect("heartbeat");
                    assert!(matches!(hb, Heartbeat::Alive { .. }), "{}: {hb:?}", node.id);
                }
                lat.push(t0.elapsed());
                if budget.is_none() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += WORKERS;
            }
            lat
        }));
    }
    let status = {
        let (backend, stop) = (t.backend.clone(), stop.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                backend.active_count().await.expect("active count");
                lat.push(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lat
        })
    };
    while started.elapsed() < window
        && budget.is_none_or(|b| done.load(std::sync::atomic::Ordering::Relaxed) < b)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let cpu = (t.cpu_seconds)() - cpu0;
    let mut status_lat = status.await.unwrap();
    lat.sort();
    status_lat.sort();
    let ops = lat.len() as u64;
    Window {
        ops,
        per_s: ops as f64 / elapsed.as_secs_f64(),
        cpu_per_op_us: cpu / ops.max(1) as f64 * 1e6,
        p99: percentile(&lat, 0.99),
        status_p99: if status_lat.is_empty() {
            Duration::ZERO
        } else {
            percentile(&status_lat, 0.99)
        },
    }
}

/// One row per size: heartbeat and floor windows, the list, a prune.
/// `have`: members the backend holds already (the first ones of `nodes`).
async fn scale_table(t: &ScaleTarget, nodes: &Arc<Vec<NodeRecord>>, mut have: usize) {
    println!(
        "\n{} backend, 5 s heartbeats, {WORKERS} concurrent heartbeaters, {} s windows; CPU: {}",
        t.name,
        WINDOW.as_secs(),
        t.cpu_of
    );
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>7} {:>10} {:>11} {:>10} {:>10}",
        "members",
        "beats/s",
        "CPU/beat",
        "floor CPU",
        "ratio",
        "beat p99",
        "status p99",
        "list",
        "prune"
    );
    let mut out = Vec::new();
    for &n in &SCALE_SIZES {
        if have < n {
            (t.simulate)(nodes[have..n].to_vec()).await;
            have = n;
        }
        // Steady state first: every member heartbeats once (a member's first beat does more,
        // e.g. etcd's first check of a lease), as in a cluster whose nodes started long ago.
        load_window(t, nodes, n, Duration::from_secs(60), Some(n as u64), false).await;
        let hb = load_window(t, nodes, n, WINDOW, None, false).await;
        let fl = load_window(t, nodes, n, WINDOW, None, true).await;
        let mut lists = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let m = t.backend.members().await.expect("members");
            lists.push(t0.elapsed());
            assert!(m.len() >= n, "{} listed of {n}", m.len());
        }
        lists.sort();
        let t0 = Instant::now();
        t.backend.prune().await.expect("prune");
        let prune = t0.elapsed();
        println!(
            "{n:>8} {:>10.0} {:>9.1} µs {:>9.1} µs {:>6.2}x {:>10} {:>11} {:>10} {:>10}",
            hb.per_s,
            hb.cpu_per_op_us,
            fl.cpu_per_op_us,
            hb.cpu_per_op_us / fl.cpu_per_op_us.max(0.001),
            ms(hb.p99),
            ms(hb.status_p99),
            ms(lists[1]),
            ms(prune),
        );
        out.push((n, hb.cpu_per_op_us, hb.per_s));
    }
    let (first, last) = (out[0], out[out.len() - 1]);
    row(
        &format!("{}: CPU per heartbeat at 10,000 / at 100", t.name),
        format!("{:.2}x", last.1 / first.1.max(0.001)),
        "≤ 1.5x",
    );
    row(
        &format!("{}: heartbeats/s sustained at 10,000", t.name),
        format!("{:.0}/s", last.2),
        "≥ 2,000/s (10,000 × 1 per 5 s)",
    );
}

fn scale_nodes() -> Arc<Vec<NodeRecord>> {
    Arc::new((0..*SCALE_SIZES.last().unwrap()).map(fake_node).collect())
}

async fn scale_redis() {
    let redis = RedisServer::start_with(Some("bench-pw"), &[]);
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let sim = Arc::new(RedisMembership::new(&c.cluster, SCALE_TIMING).unwrap());
    let pid = redis.pid().expect("redis pid");
    let (s1, s2) = (sim.clone(), sim.clone());
    let t = ScaleTarget {
        name: "redis",
        backend: sim.clone(),
        simulate: Box::new(move |nodes| {
            let s = s1.clone();
            Box::pin(async move {
                let now = s.server_now_ms().await.unwrap();
                for chunk in nodes.chunks(1000) {
                    s.simulate_members(chunk, now).await.unwrap();
                }
            })
        }),
        floor: Arc::new(move |id| {
            let s = s2.clone();
            Box::pin(async move {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                s.bench_floor_heartbeat(&id, now).await.unwrap();
            })
        }),
        cpu_seconds: Box::new(move || cpu_of_pid(pid)),
        cpu_of: "redis-server process; floor: ZADD + PEXPIRE pipelined",
    };
    let nodes = scale_nodes();
    scale_table(&t, &nodes, 0).await;
}

/// The longest single command Redis ran since the last `LATENCY RESET`, in ms (Redis's
/// latency monitor, 1 ms threshold): while Redis runs one command, every other client waits.
fn longest_command_ms(redis: &RedisServer) -> u64 {
    let reply = redis.command(&["LATENCY", "LATEST"]).unwrap_or_default();
    // *4 $7 command :<timestamp> :<latest ms> :<max ms>
    let Some(at) = reply.find("command\r\n") else {
        return 0;
    };
    reply[at..]
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .nth(2)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Status reads as the daemon's HTTP handlers make them (each a task spawned on `rt`, built as
/// the daemon's runtime is: 2 workers, timed from the spawn to its answer), and heartbeats as
/// its membership thread makes them (another instance, on a current-thread runtime of its own),
/// one after the other for `window`: their latencies, sorted.
fn daemon_like_reads(
    rt: &tokio::runtime::Runtime,
    status: &Arc<RedisMembership>,
    beats: (&tokio::runtime::Runtime, &RedisMembership),
    nodes: &[NodeRecord],
    window: Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut st, mut hb) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < window {
        let b = status.clone();
        let t0 = Instant::now();
        let task = rt.spawn(async move { b.active_count().await.expect("active count") });
        beats.0.block_on(task).unwrap();
        st.push(t0.elapsed());
        let t0 = Instant::now();
        let beat = beats.0.block_on(beats.1.heartbeat(&nodes[i % nodes.len()]));
        assert!(matches!(beat, Ok(Heartbeat::Alive { .. })), "{beat:?}");
        hb.push(t0.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    st.sort();
    hb.sort();
    (st, hb)
}

/// `scale-redis`'s second part (alone: `redis-list`): 100,000 members, status reads and
/// heartbeats while full member lists run back to back, first in the process that answers the
/// status reads (the daemon's pattern: one backend instance and runtime for HTTP, the
/// heartbeats on a thread and instance of their own), then from another client, then over HTTP
/// against a real daemon listing `/nodes`; each beside a floor with no list running, measured in
/// the same run, and Redis's longest single command.
fn redis_list_under_load() {
    const BIG: usize = 100_000;
    let redis = RedisServer::start_with(Some("bench-pw"), &["--latency-monitor-threshold", "1"]);
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let beat_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http_side = {
        let _in = daemon_rt.enter();
        Arc::new(RedisMembership::new(&c.cluster, SCALE_TIMING).unwrap())
    };
    let beater = {
        let _in = beat_rt.enter();
        RedisMembership::new(&c.cluster, SCALE_TIMING).unwrap()
    };
    let nodes: Arc<Vec<NodeRecord>> = Arc::new((0..BIG).map(fake_node).collect());
    daemon_rt.block_on(async {
        let now = http_side.server_now_ms().await.unwrap();
        for chunk in nodes.chunks(1000) {
            http_side.simulate_members(chunk, now).await.unwrap();
        }
    });
    let beaten = &nodes[..SCALE_SIZES[3]];
    // The floor: no list running.
    let (idle_status, idle_beats) = daemon_like_reads(
        &daemon_rt,
        &http_side,
        (&beat_rt, &beater),
        beaten,
        Duration::from_secs(3),
    );
    let _ = redis.command(&["LATENCY", "RESET"]);

    let lists_in = |rt: &tokio::runtime::Runtime, b: Arc<RedisMembership>| {
        let stop = stop_flag();
        let task = {
            let stop = stop.clone();
            rt.spawn(async move {
                let mut times = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || times.is_empty() {
                    let t0 = Instant::now();
                    let m = b.members().await.expect("the 100,000-member list");
                    times.push(t0.elapsed());
                    assert!(m.len() >= BIG, "{} listed", m.len());
                }
                times
            })
        };
        (stop, task)
    };
    // 1. Lists in the same process, on the same instance and runtime as the status reads.
    let (stop, task) = lists_in(&daemon_rt, http_side.clone());
    std::thread::sleep(Duration::from_millis(50));
    let (status, beats) = daemon_like_reads(
        &daemon_rt,
        &http_side,
        (&beat_rt, &beater),
        beaten,
        Duration::from_secs(6),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lists = daemon_rt.block_on(task).unwrap();
    lists.sort();
    let longest_in = longest_command_ms(&redis);
    let _ = redis.command(&["LATENCY", "RESET"]);
    // 2. Lists from another client (its own instance, runtime and thread, as another node's):
    // what is left is Redis's queue and the machine's cores, not this process's decoding.
    let other_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let other = {
        let _in = other_rt.enter();
        Arc::new(RedisMembership::new(&c.cluster, SCALE_TIMING).unwrap())
    };
    let (stop_other, other_task) = lists_in(&other_rt, other);
    let other_thread = std::thread::spawn(move || other_rt.block_on(other_task).unwrap().len());
    std::thread::sleep(Duration::from_millis(50));
    let (status_other, _) = daemon_like_reads(
        &daemon_rt,
        &http_side,
        (&beat_rt, &beater),
        beaten,
        Duration::from_secs(6),
    );
    stop_other.store(true, std::sync::atomic::Ordering::Relaxed);
    let other_lists = other_thread.join().unwrap();
    // 3. A real daemon: `GET /nodes` (unpaged, all 100,000) back to back from one client, the
    // status endpoint timed from another.
    let d = Daemon::start(
        "bench-list",
        &format!(
            "  heartbeat_interval: 5\n  heartbeat_timeout: 300\n{}",
            redis.cluster_yaml()
        ),
    );
    d.wait_health(200, Duration::from_secs(10));
    let http_status = |window: Duration| {
        let mut v = Vec::new();
        let started = Instant::now();
        while started.elapsed() < window {
            let t0 = Instant::now();
            let (s, _) =
                fleet_tests::http("GET", d.port, "/api/fleet/cluster/status", &[]).unwrap();
            v.push(t0.elapsed());
            assert_eq!(s, 200);
            std::thread::sleep(Duration::from_millis(2));
        }
        v.sort();
        v
    };
    let idle_http = http_status(Duration::from_secs(3));
    let stop = stop_flag();
    let port = d.port;
    let lister = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || out.is_empty() {
                let t0 = Instant::now();
                let (s, body) = fleet_tests::http(
                    "GET",
                    port,
                    "/api/fleet/cluster/nodes",
                    &[("X-API-Key", TEST_API_KEY)],
                )
                .unwrap();
                out.push((t0.elapsed(), s, body.len()));
            }
            out
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let loaded_http = http_status(Duration::from_secs(8));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let http_lists = lister.join().unwrap();
    let ok_lists: Vec<&(Duration, u16, usize)> =
        http_lists.iter().filter(|(_, s, _)| *s == 200).collect();
    let mut list_times: Vec<Duration> = ok_lists.iter().map(|(t, _, _)| *t).collect();
    list_times.sort();
    drop(d);

    let p99 = |v: &[Duration]| percentile(v, 0.99);
    println!("\nredis, 100,000 members, full member lists running back to back:");
    row(
        &format!(
            "full list of 100,000 in-process (median of {})",
            lists.len()
        ),
        ms(percentile(&lists, 0.5)),
        "",
    );
    row(
        "Redis's longest single command while the lists ran",
        format!("{longest_in} ms"),
        "",
    );
    row(
        "status p99, no list running (floor)",
        ms(p99(&idle_status)),
        "",
    );
    row(
        "status p99, lists in the same process and runtime",
        format!(
            "{} ({})",
            ms(p99(&status)),
            ratio(p99(&status), p99(&idle_status))
        ),
        "< 5 ms",
    );
    row(
        &format!("status p99, lists from another client ({other_lists} lists)"),
        format!(
            "{} ({})",
            ms(p99(&status_other)),
            ratio(p99(&status_other), p99(&idle_status))
        ),
        "< 5 ms",
    );
    row(
        "heartbeat p99, no list running (floor)",
        ms(p99(&idle_beats)),
        "",
    );
    row(
        "heartbeat p99, lists in the same process",
        format!(
            "{} ({})",
            ms(p99(&beats)),
            ratio(p99(&beats), p99(&idle_beats))
        ),
        "",
    );
    row(
        "daemon: GET /status p99 over HTTP, idle (floor)",
        ms(p99(&idle_http)),
        "",
    );
    row(
        "daemon: GET /status p99 while GET /nodes (100,000) runs",
        format!(
            "{} ({})",
            ms(p99(&loaded_http)),
            ratio(p99(&loaded_http), p99(&idle_http))
        ),
        "< 5 ms",
    );
    row(
        &format!(
            "daemon: GET /nodes unpaged, median ({} of {} answered 200)",
            ok_lists.len(),
            http_lists.len()
        ),
        if list_times.is_empty() {
            "none".into()
        } else {
            format!(
                "{} ({:.0} MB)",
                ms(percentile(&list_times, 0.5)),
                ok_lists[0].2 as f64 / 1e6
            )
        },
        "200 every time",
    );
}

/// The primary's adoption pass (`roles.rs`: once per heartbeat interval, it copies the own
/// records of nodes that run with users of their own into the shared indexes) at 100, 1,000
/// and 10,000 such nodes: the pass's time and Redis CPU, against a floor measured in the same
/// run (the reads no adoption can do without: the roster and each own record with its TTL),
/// and Redis's longest single command meanwhile (other clients wait that long).
async fn redis_adoption() {
    const PASSES: usize = 5;
    let redis = RedisServer::start_with(Some("bench-pw"), &["--latency-monitor-threshold", "1"]);
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let primary = RedisMembership::new(&c.cluster, SCALE_TIMING).unwrap();
    let pid = redis.pid().expect("redis pid");
    let nodes = scale_nodes();
    println!(
        "\nredis, the primary's adoption pass over nodes with users of their own (pass: median; Redis CPU: mean per pass over 2 s of passes at least, each after every node heartbeated):"
    );
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>12} {:>7} {:>12} {:>14}",
        "nodes",
        "pass",
        "Redis CPU",
        "per node",
        "floor/node",
        "ratio",
        "first pass",
        "longest cmd"
    );
    let mut have = 0;
    let mut per_node = Vec::new();
    for n in [100usize, 1_000, 10_000] {
        for chunk in nodes[have..n].chunks(1000) {
            primary.simulate_own_members(chunk).await.unwrap();
        }
        have = n;
        // The first pass indexes them (their joins); the later ones are the steady state.
        let t0 = Instant::now();
        primary.bench_adopt().await.unwrap();
        let first = t0.elapsed();
        let (mut times, mut cpu, mut floor) = (Vec::new(), 0.0, 0.0);
        let _ = redis.command(&["LATENCY", "RESET"]);
        // CPU time counts in 10 ms ticks: summed over passes that take 2 s at least.
        let started = Instant::now();
        while times.len() < PASSES || started.elapsed() < Duration::from_secs(2) {
            // Every node heartbeats once between two passes (its own record's TTL renewed).
            for chunk in nodes[..n].chunks(1000) {
                primary.simulate_own_members(chunk).await.unwrap();
            }
            let cpu0 = cpu_of_pid(pid);
            let t0 = Instant::now();
            primary.bench_adopt().await.unwrap();
            times.push(t0.elapsed());
            cpu += cpu_of_pid(pid) - cpu0;
            let cpu0 = cpu_of_pid(pid);
            let read = primary.bench_floor_adopt().await.unwrap();
            floor += cpu_of_pid(pid) - cpu0;
            assert_eq!(read, n);
        }
        let passes = times.len() as f64;
        let (cpu, floor) = (cpu / passes, floor / passes);
        let longest = longest_command_ms(&redis);
        let listed = primary.members().await.unwrap();
        assert!(
            listed
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .count()
                >= n,
            "adopted members listed"
        );
        let counted = primary.active_count().await.unwrap();
        assert!(counted >= n, "{counted} of {n} counted active");
        let time = median(&mut times);
        println!(
            "{n:>8} {:>10} {:>9.1} ms {:>9.1} µs {:>9.1} µs {:>6.2}x {:>12} {:>11} ms",
            ms(time),
            cpu * 1e3,
            cpu / n as f64 * 1e6,
            floor / n as f64 * 1e6,
            cpu / floor.max(1e-6),
            ms(first),
            longest,
        );
        per_node.push((n, cpu / n as f64, cpu));
    }
    let (first, last) = (per_node[0], per_node[per_node.len() - 1]);
    row(
        "adoption: Redis CPU per node at 10,000 / at 100",
        format!("{:.2}x", last.1 / first.1.max(1e-9)),
        "≤ 1.5x",
    );
    row(
        "adoption at 10,000, 5 s interval: share of one Redis core",
        format!(
            "{:.1} %",
            last.2 / SCALE_TIMING.interval.as_secs_f64() * 100.0
        ),
        "",
    );
}

/// The etcd backend as a `ScaleTarget`.
fn etcd_target(sim: &Arc<EtcdMembership>, pid: u32) -> ScaleTarget {
    let (s1, s2) = (sim.clone(), sim.clone());
    ScaleTarget {
        name: "etcd",
        backend: sim.clone(),
        simulate: Box::new(move |nodes| {
            let s = s1.clone();
            Box::pin(async move {
                s.simulate_members(&nodes).await.unwrap();
                s.bench_settle().await.unwrap();
            })
        }),
        floor: Arc::new(move |id| {
            let s = s2.clone();
            Box::pin(async move {
                s.bench_floor_heartbeat(&id).await.unwrap();
            })
        }),
        cpu_seconds: Box::new(move || cpu_of_pid(pid)),
        cpu_of: "etcd process; floor: the lease keepalive alone; members registered, then one batch without key writes",
    }
}

/// `etcd-burst`: `etcd_after_a_burst` alone, on 10,000 members registered spread out.
async fn etcd_burst_alone() {
    let etcd = fleet_tests::etcd::EtcdServer::start();
    let text = format!("cluster:\n  enabled: true\n{}", etcd.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let sim = Arc::new(EtcdMembership::new(&c.cluster, SCALE_TIMING).unwrap());
    let t = etcd_target(&sim, etcd.pid().expect("etcd pid"));
    let nodes = scale_nodes();
    for chunk in nodes.chunks(2_500) {
        (t.simulate)(chunk.to_vec()).await;
    }
    let n = SCALE_SIZES[3];
    load_window(
        &t,
        &nodes,
        n,
        Duration::from_secs(60),
        Some(n as u64),
        false,
    )
    .await;
    etcd_after_a_burst(&t, &sim, &nodes).await;
}

async fn scale_etcd() {
    let etcd = fleet_tests::etcd::EtcdServer::start();
    let text = format!("cluster:\n  enabled: true\n{}", etcd.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("bench.yaml")).unwrap();
    let sim = Arc::new(EtcdMembership::new(&c.cluster, SCALE_TIMING).unwrap());
    let t = etcd_target(&sim, etcd.pid().expect("etcd pid"));
    let nodes = scale_nodes();
    scale_table(&t, &nodes, 0).await;
    etcd_after_a_burst(&t, &sim, &nodes).await;
    // The database at 10,000 members after 1,000 heartbeats, and after 100,000 more.
    let n = SCALE_SIZES[3];
    load_window(&t, &nodes, n, Duration::from_secs(60), Some(1_000), false).await;
    let (rev_1k, db_1k) = sim.bench_status().await.unwrap();
    let mut total = 0;
    while total < 100_000 {
        let w = load_window(
            &t,
            &nodes,
            n,
            Duration::from_secs(60),
            Some(100_000 - total),
            false,
        )
        .await;
        total += w.ops;
    }
    let (rev_100k, db_100k) = sim.bench_status().await.unwrap();
    println!("\netcd history (heartbeats write nothing; the pruner's turn compacts):");
    row(
        "database size, 10,000 members, after 1,000 heartbeats",
        format!("{:.1} MiB", db_1k as f64 / 1048576.0),
        "",
    );
    row(
        "  … after 100,000 more heartbeats",
        format!("{:.1} MiB", db_100k as f64 / 1048576.0),
        &format!("≤ 2x: {:.2}x", db_100k as f64 / db_1k as f64),
    );
    row(
        "  … revisions those 100,000 heartbeats added",
        format!("{}", rev_100k - rev_1k),
        "",
    );
}

/// etcd 3.4 copies its read buffer (the key writes of its last batches) for every keepalive
/// answer and every read, until it commits a batch with writes but none to keys: the table
/// above is measured with registrations spread out (`bench_settle` after each batch); here the
/// same windows right after 5,000 members registered again at once, the same 6 s later with no
/// pruner turn between, and after the daemon's own pruner turn (`prune_turn`, as the heartbeat
/// that wins it runs it: its compaction's deletions are such a batch).
async fn etcd_after_a_burst(
    t: &ScaleTarget,
    sim: &Arc<EtcdMembership>,
    nodes: &Arc<Vec<NodeRecord>>,
) {
    let n = SCALE_SIZES[3];
    sim.simulate_members(&nodes[..n / 2]).await.unwrap();
    let hb_burst = load_window(t, nodes, n, WINDOW, None, false).await;
    let fl_burst = load_window(t, nodes, n, WINDOW, None, true).await;
    let hb_later = load_window(t, nodes, n, WINDOW, None, false).await;
    let fl_later = load_window(t, nodes, n, WINDOW, None, true).await;
    sim.bench_pruner_turn().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hb = load_window(t, nodes, n, WINDOW, None, false).await;
    let fl = load_window(t, nodes, n, WINDOW, None, true).await;
    println!(
        "\netcd at 10,000 members, after 5,000 registered at once (etcd CPU per call; calls/s):"
    );
    for (what, w) in [
        ("heartbeat, right after the burst", &hb_burst),
        ("keepalive alone (floor), right after the burst", &fl_burst),
        ("heartbeat, 6 s later (no pruner turn between)", &hb_later),
        ("keepalive alone (floor), then", &fl_later),
        ("heartbeat, after the daemon's pruner turn", &hb),
        ("keepalive alone (floor), then", &fl),
    ] {
        row(
            what,
            format!("{:.1} µs, {:.0}/s", w.cpu_per_op_us, w.per_s),
            "",
        );
    }
}

async fn scale_storage() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Arc::new(StorageMembership::new(dir.path(), SCALE_TIMING).unwrap());
    let (s1, s2) = (sim.clone(), sim.clone());
    let t = ScaleTarget {
        name: "storage",
        backend: sim.clone(),
        simulate: Box::new(move |nodes| {
            let s = s1.clone();
            Box::pin(async move {
                for chunk in nodes.chunks(100) {
                    s.simulate_members(chunk).await.unwrap();
                }
            })
        }),
        floor: Arc::new(move |id| {
            let s = s2.clone();
            Box::pin(async move {
                s.bench_floor_heartbeat(&id).await.unwrap();
            })
        }),
        cpu_seconds: Box::new(|| cpu_of_pid(std::process::id())),
        cpu_of: "this process (its file calls; the kernel's work is in its system time); floor: stamp + stat of its own file",
    };
    let nodes = scale_nodes();
    scale_table(&t, &nodes, 0).await;
}

/// The storage owner's prune turn and the member list over scoped nodes' records
/// (`nodes/<name>.json`, each judged against its binding), against the same over the owner's
/// own `members/` (the floor), at 1,000 and 10,000 members: median of 5 each.
async fn storage_scoped() {
    println!(
        "\nStorage: the owner's turn and the list over scoped nodes (nodes/ + bindings/) vs members/ (floor), median of 5:"
    );
    for n in [1_000usize, 10_000] {
        let nodes: Vec<NodeRecord> = (0..n).map(fake_node).collect();
        let mut row = Vec::new();
        for scoped in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let sim = StorageMembership::new(dir.path(), SCALE_TIMING).unwrap();
            for chunk in nodes.chunks(500) {
                if scoped {
                    sim.simulate_scoped_members(chunk).await.unwrap();
                } else {
                    sim.simulate_members(chunk).await.unwrap();
                }
            }
            let median = |mut v: Vec<Duration>| {
                v.sort();
                v[v.len() / 2]
            };
            let (mut turns, mut lists) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let t = Instant::now();
                let gone = sim.prune().await.unwrap();
                turns.push(t.elapsed());
                assert!(gone.is_empty(), "nothing had expired");
                let t = Instant::now();
                let listed = sim.members().await.unwrap();
                lists.push(t.elapsed());
                assert_eq!(listed.len(), n, "every simulated member listed");
            }
            row.push((median(turns), median(lists)));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (floor, scoped) = (row[0], row[1]);
        println!(
            "  {n:>6} members: turn {:.1} ms (floor {:.1} ms, {:.2}x), list {:.1} ms (floor {:.1} ms, {:.2}x)",
            ms(scoped.0),
            ms(floor.0),
            ms(scoped.0) / ms(floor.0),
            ms(scoped.1),
            ms(floor.1),
            ms(scoped.1) / ms(floor.1),
        );
    }
}

/// Health latency while 1,000 wrong-password logins from 200 addresses hit the node: against
/// the same node's idle health latency (the floor), measured first.
fn login_flood_health() {
    use fleet_tests::flood::{HealthPoller, flood_node_config, latency_quantile, login_flood};
    println!("\nLogin flood (1,000 wrong-password logins from 200 loopback addresses):");
    let redis = RedisServer::start();
    for (round, concurrency) in [16usize, 64].into_iter().enumerate() {
        // A fresh node per round: the global failure budget starts full.
        let dir = tempfile::tempdir().unwrap();
        let port = fleet_tests::free_port();
        let name = format!("bench-flood-{round}");
        let config = flood_node_config(&name, port, dir.path(), &redis.cluster_yaml());
        let d = Daemon::start_with_config(&name, dir, port, &config);
        d.wait_health(200, Duration::from_secs(10));
        let idle = HealthPoller::start(port, Duration::from_millis(10));
        std::thread::sleep(Duration::from_secs(3));
        let idle = idle.finish();
        let floor = latency_quantile(&idle, 0.99);
        let loaded = HealthPoller::start(port, Duration::from_millis(10));
        let outcome = login_flood(port, 1000, 200, concurrency);
        let loaded = loaded.finish();
        let p99 = latency_quantile(&loaded, 0.99);
        let unanswered = loaded.iter().filter(|(_, s)| *s != 200).count();
        let member = !d.log().contains("registering again");
        if round == 0 {
            row("health p99, idle (floor)", ms(floor), "");
        }
        row(
            &format!("health p99 under the flood, {concurrency} logins at a time"),
            ms(p99),
            "< 100 ms",
        );
        row(
            "  … ratio to the idle floor",
            format!("{:.1}x", p99.as_secs_f64() / floor.as_secs_f64().max(1e-6)),
            "",
        );
        row(
            "  … health answers not 200",
            format!("{unanswered} of {}", loaded.len()),
            "0",
        );
        row(
            "  … flood duration; logins failed outright",
            format!(
                "{:.1} s; {}",
                outcome.elapsed.as_secs_f64(),
                outcome.failures
            ),
            "0 failed",
        );
        row(
            "  … answers (401 wrong / 429 budget / 503 queue full)",
            format!(
                "{} / {} / {}",
                outcome.statuses.get(&401).unwrap_or(&0),
                outcome.statuses.get(&429).unwrap_or(&0),
                outcome.statuses.get(&503).unwrap_or(&0)
            ),
            "",
        );
        row(
            "  … stayed a member (no re-registration)",
            if member { "yes" } else { "NO" }.into(),
            "yes",
        );
    }
}

fn main() {
    // `cargo bench -p fleet-tests --bench cluster [-- SECTION…]`: sections are `membership`,
    // `members` (10,000 simulated), `idle`, `lb`, `scale` (heartbeat cost against cluster
    // size on every backend; `scale-redis`, `scale-etcd`, `scale-storage` one backend, and
    // their parts `redis-list`, `redis-adopt`, `etcd-burst`, `storage-scoped` alone) and `flood`; all by
    // default. cargo passes `--bench`.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "fleet-server cluster benchmarks (loopback, {} cores)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if run("membership") {
        let redis = RedisServer::start_with(Some("bench-pw"), &[]);
        rt.block_on(membership_latencies(&redis));
    }
    if run("members") {
        rt.block_on(ten_thousand_members());
    }
    if run("idle") {
        idle_and_throughput();
    }
    if run("lb") {
        rt.block_on(load_balancer_views());
    }
    // `scale-redis`, `scale-etcd`, `scale-storage`: one backend of `scale` alone.
    let scale = |b: &str| run("scale") || wanted.iter().any(|w| w == &format!("scale-{b}"));
    if scale("redis") {
        rt.block_on(scale_redis());
    }
    // `redis-list`: the 100,000-member part of `scale-redis` alone.
    if scale("redis") || run("redis-list") {
        redis_list_under_load();
    }
    // `redis-adopt`: the primary's adoption pass alone.
    if scale("redis") || run("redis-adopt") {
        rt.block_on(redis_adoption());
    }
    if scale("etcd") {
        rt.block_on(scale_etcd());
    }
    // `etcd-burst`: the mass registration part of `scale-etcd` alone.
    if run("etcd-burst") && !scale("etcd") {
        rt.block_on(etcd_burst_alone());
    }
    if scale("storage") {
        rt.block_on(scale_storage());
    }
    // `storage-scoped`: the owner's turn over scoped nodes' records.
    if scale("storage") || run("storage-scoped") {
        rt.block_on(storage_scoped());
    }
    if run("flood") {
        login_flood_health();
    }
}
