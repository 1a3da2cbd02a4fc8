//! `make bench` for the cluster daemon: prints figures beside their targets, asserts nothing.
//! Join latency, failure detection, graceful leave, 10,000 simulated members in one Redis,
//! an idle daemon's memory and CPU, and health-endpoint throughput under `wrk`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::{MemberState, Membership, NodeRecord, Timing};
use fleet_server::config::Config;
use fleet_tests::{Daemon, RedisServer, TEST_API_KEY, get_json, require_tool};

fn row(what: &str, value: String, target: &str) {
    println!("{what:<58} {value:>16}   target {target}");
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
    // `members` (10,000 simulated), `idle` and `flood`; all by default. cargo passes `--bench`.
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
    if run("flood") {
        login_flood_health();
    }
}
