//! Connections that never finish a request: 500 idle or half-sent connections are closed by the
//! server after the header timeout while health keeps answering; at the connection cap, health
//! still answers (the overflow lane) and other requests get 503 at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fleet_tests::flood::HealthPoller;
use fleet_tests::{Daemon, free_port, get_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn node(name: &str, server_extra: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\n{server_extra}cluster:\n  enabled: true\n  node_name: {name}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  backend: storage\n  storage_path: {}\nauth:\n  api_key: {}\n",
        dir.path().join("state").display(),
        shared.path().display(),
        fleet_tests::TEST_API_KEY,
    );
    let d = Daemon::start_with_config(name, dir, port, &config);
    d.wait_health(200, Duration::from_secs(10));
    (d, shared)
}

/// Opens a connection from `source`; sends `partial` (maybe nothing) and keeps it open.
async fn open_from(source: Ipv4Addr, port: u16, partial: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap_or_else(|e| panic!("connecting from {source}: {e}"));
    s.write_all(partial).await.unwrap();
    s
}

/// Waits (at most 5 s) until no socket with local port `port` other than the listener is open
/// (ESTABLISHED or CLOSE_WAIT in /proc/net/tcp): the server has let go of earlier connections
/// (the health polls of startup), so their places are free. Panics if they stay.
fn wait_server_idle(port: u16) {
    let open = || {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = f
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                local_port == Some(port) && matches!(f.get(3), Some(&"01") | Some(&"08"))
            })
            .count()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while open() > 0 {
        assert!(
            Instant::now() < until,
            "the server still holds {} connections on port {port}",
            open()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The socket closes just before its place is given back.
    std::thread::sleep(Duration::from_millis(100));
}

/// How long until the server closes `s` (reads EOF or a reset); `None` if not within `limit`.
async fn closed_after(mut s: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let until = opened + limit;
    loop {
        match tokio::time::timeout_at(until.into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            // A 408 or similar before the close is fine: keep reading to the end.
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn idle_and_half_sent_connections_are_closed_after_the_header_timeout() {
    let (d, _shared) = node("idle-conns", "  header_timeout_seconds: 2\n");
    let health = HealthPoller::start(d.port, Duration::from_millis(50));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closes = rt.block_on(async {
        let opened = Instant::now();
        let mut conns = Vec::new();
        // 500 from 10 addresses: 50 each, under the per-client cap (64). Half send nothing, half
        // a request line and one header, never the blank line.
        for i in 0..500u32 {
            let source = Ipv4Addr::new(127, 0, 1, 1 + (i % 10) as u8);
            let partial: &[u8] = if i % 2 == 0 {
                b""
            } else {
                b"GET /api/fleet/cluster/status HTTP/1.1\r\nHost: x\r\n"
            };
            conns.push(open_from(source, d.port, partial).await);
        }
        // Still open a second later: the server waits for the headers up to the timeout.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (code, _) = get_json(d.port, "/api/fleet/cluster/health", None).unwrap();
        assert_eq!(code, 200, "health with 500 idle connections open");
        let waits: Vec<_> = conns
            .into_iter()
            .map(|s| tokio::spawn(closed_after(s, opened, Duration::from_secs(15))))
            .collect();
        let mut closes = Vec::new();
        for w in waits {
            closes.push(w.await.unwrap());
        }
        closes
    });
    let samples = health.finish();
    let open: Vec<usize> = (0..closes.len()).filter(|&i| closes[i].is_none()).collect();
    assert!(
        open.is_empty(),
        "{} of 500 connections still open after 15 s",
        open.len()
    );
    let mut times: Vec<Duration> = closes.into_iter().flatten().collect();
    times.sort();
    println!(
        "500 idle connections: first closed after {:?}, last after {:?}; health answered {} times",
        times[0],
        times[times.len() - 1],
        samples.len()
    );
    assert!(
        times[0] >= Duration::from_millis(1500),
        "closed before the header timeout: {:?}",
        times[0]
    );
    let bad: Vec<_> = samples.iter().filter(|(_, s)| *s != 200).collect();
    assert!(bad.is_empty(), "health did not answer 200: {bad:?}");
    assert!(samples.len() > 20, "health polled {} times", samples.len());
}

#[test]
fn at_the_connection_cap_health_answers_and_the_rest_gets_503() {
    let (d, _shared) = node(
        "capped",
        "  header_timeout_seconds: 30\n  max_connections: 40\n  max_connections_per_client: 20\n",
    );
    // Startup's health polls must not hold a place, or one of the 40 lands in the overflow lane.
    wait_server_idle(d.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // 40 idle connections fill the cap (20 each from two addresses).
        let mut held = Vec::new();
        for i in 0..40u32 {
            let source = Ipv4Addr::new(127, 0, 2, 1 + (i % 2) as u8);
            held.push(open_from(source, d.port, b"").await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (code, body) = get_json(d.port, "/api/fleet/cluster/health", None).unwrap();
        assert_eq!(code, 200, "health at the cap: {body}");
        println!("health at the cap answered in {:?}", started.elapsed());
        let (code, body) = get_json(
            d.port,
            "/api/fleet/cluster/status",
            Some(fleet_tests::TEST_API_KEY),
        )
        .unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("too many connections")
        );
        // A place frees: requests are served again.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, _) = get_json(
            d.port,
            "/api/fleet/cluster/status",
            Some(fleet_tests::TEST_API_KEY),
        )
        .unwrap();
        assert_eq!(code, 200, "a freed place serves requests again");
    });
}

/// The scenario: a node limited to 256 descriptors (`prlimit --nofile=256`), on Redis,
/// gets 300 idle connections (from 7 addresses). Health answers throughout, heartbeats go on (a
/// watcher on another node lists it active the whole time), every connection is closed by the
/// server within the header timeout (or at once, past the caps), and afterwards the node serves
/// backend calls again.
#[test]
fn three_hundred_idle_connections_under_256_descriptors() {
    let redis = fleet_tests::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\n  header_timeout_seconds: 2\ncluster:\n  enabled: true\n  node_name: fd-limited\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}auth:\n  api_key: {}\n",
        dir.path().join("state").display(),
        redis.cluster_yaml(),
        fleet_tests::TEST_API_KEY,
    );
    let d = Daemon::start_with_fd_limit("fd-limited", dir, port, &config, 256);
    d.wait_health(200, Duration::from_secs(10));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        line.split_whitespace().nth(3) == Some("256"),
        "the daemon runs with 256 descriptors: {line}"
    );
    let watcher = Daemon::start("fd-watcher", &redis.cluster_yaml());
    watcher.wait_health(200, Duration::from_secs(10));
    let id = d.node_id();
    watcher.wait_listed(&id, Duration::from_secs(10));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, wport, wid) = (stop.clone(), watcher.port, id.clone());
    let watching =
        std::thread::spawn(move || {
            let mut missing = Vec::new();
            let started = Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
            {
                let listed =
                    get_json(
                        wport,
                        "/api/fleet/cluster/nodes",
                        Some(fleet_tests::TEST_API_KEY),
                    )
                    .ok()
                    .filter(|(s, _)| *s == 200)
                    .and_then(|(_, body)| {
                        Some(body["nodes"].as_array()?.iter().any(|n| {
                            n["id"].as_str() == Some(wid.as_str()) && n["state"] == "active"
                        }))
                    });
                if listed != Some(true) {
                    missing.push(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            missing
        });
    let health = HealthPoller::start(d.port, Duration::from_millis(50));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closes = rt.block_on(async {
        let opened = Instant::now();
        let mut conns = Vec::new();
        // Seven addresses: their overflow places (4 each) leave some for the health poller's.
        for i in 0..300u32 {
            let source = Ipv4Addr::new(127, 0, 3, 1 + (i % 7) as u8);
            conns.push(open_from(source, d.port, b"").await);
        }
        let waits: Vec<_> = conns
            .into_iter()
            .map(|s| tokio::spawn(closed_after(s, opened, Duration::from_secs(15))))
            .collect();
        let mut closes = Vec::new();
        for w in waits {
            closes.push(w.await.unwrap());
        }
        closes
    });
    // A few heartbeats after the wave, still watched.
    std::thread::sleep(Duration::from_secs(2));
    let samples = health.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let missing = watching.join().unwrap();
    let still_open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(still_open, 0, "connections still open after 15 s");
    let mut times: Vec<Duration> = closes.into_iter().flatten().collect();
    times.sort();
    let at_once = times
        .iter()
        .filter(|t| **t < Duration::from_millis(1500))
        .count();
    println!(
        "300 idle connections under 256 descriptors: {at_once} closed at once (past the caps), the rest after {:?}…{:?}; health answered {} times, p99 {:?}",
        times[at_once.min(times.len() - 1)],
        times[times.len() - 1],
        samples.len(),
        fleet_tests::flood::latency_quantile(&samples, 0.99),
    );
    assert!(
        times[times.len() - 1] < Duration::from_secs(6),
        "a connection outlived the 2 s header timeout: {:?}",
        times[times.len() - 1]
    );
    assert!(
        at_once < 300,
        "every connection was refused: none was served"
    );
    let bad: Vec<_> = samples.iter().filter(|(_, s)| *s != 200).collect();
    assert!(bad.is_empty(), "health did not answer 200: {bad:?}");
    assert!(samples.len() > 20, "health polled {} times", samples.len());
    assert!(
        missing.is_empty(),
        "the watcher did not list the node as active at {missing:?}"
    );
    // Backend calls from the HTTP side work again (a member list read from Redis).
    let (code, body) = get_json(
        d.port,
        "/api/fleet/cluster/nodes",
        Some(fleet_tests::TEST_API_KEY),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["nodes"].as_array().map(Vec::len), Some(2), "{body}");
    let log = d.log();
    assert!(
        !log.contains("Too many open files") && !log.contains("registering again"),
        "{log}"
    );
}
