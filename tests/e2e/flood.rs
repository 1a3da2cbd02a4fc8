//! Under load: a login flood (1,000 wrong-password logins from 200 loopback addresses) against
//! a real node whose membership another node watches; the flooded node must stay a member and
//! keep answering health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_tests::flood::{HealthPoller, latency_quantile, login_flood};
use fleet_tests::{Daemon, RedisServer, free_port};

#[test]
fn a_login_flood_does_not_take_the_node_out_of_the_cluster() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config =
        fleet_tests::flood::flood_node_config("flooded", port, dir.path(), &redis.cluster_yaml());
    let flooded = Daemon::start_with_config("flooded", dir, port, &config);
    let watcher = Daemon::start("watcher", &redis.cluster_yaml());
    flooded.wait_health(200, Duration::from_secs(10));
    watcher.wait_health(200, Duration::from_secs(10));
    let id = flooded.node_id();
    watcher.wait_listed(&id, Duration::from_secs(10));

    // The watcher's view, sampled through the flood: every time it did not list the node active.
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, wport, wid) = (stop.clone(), watcher.port, id.clone());
    let watching =
        std::thread::spawn(move || {
            let mut missing = Vec::new();
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
                let listed =
                    fleet_tests::get_json(
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
    let health = HealthPoller::start(flooded.port, Duration::from_millis(20));

    // As many at a time as may queue for a verification, so that most reach Argon2 (more are
    // answered 503 at once, which tests less).
    let outcome = login_flood(flooded.port, 1000, 200, 16);

    let samples = health.finish();
    stop.store(true, Ordering::Relaxed);
    let missing = watching.join().unwrap();
    println!(
        "login flood: {} attempts in {:.1} s, statuses {:?}; health {} answers, p50 {:?}, p99 {:?}, max {:?}",
        outcome.statuses.values().sum::<usize>() + outcome.failures,
        outcome.elapsed.as_secs_f64(),
        outcome.statuses,
        samples.len(),
        latency_quantile(&samples, 0.5),
        latency_quantile(&samples, 0.99),
        latency_quantile(&samples, 1.0),
    );
    assert_eq!(
        outcome.failures, 0,
        "requests failed outright: {:?}",
        outcome.failure_samples
    );
    // Only refusals: wrong password (401), throttled (429), verification queue full (503).
    assert!(
        outcome.statuses.keys().all(|s| [401, 429, 503].contains(s)),
        "{:?}",
        outcome.statuses
    );
    assert!(outcome.statuses.get(&401).is_some_and(|&n| n > 0));
    // Each 401 is one password checked and failed: the per-node budget (100 a minute) is exact,
    // even with 16 attempts in flight at once.
    assert!(
        outcome.statuses.get(&401).is_some_and(|&n| n <= 100),
        "more wrong passwords checked than the budget: {:?}",
        outcome.statuses
    );
    assert!(
        outcome.statuses.get(&429).is_some_and(|&n| n > 0),
        "neither budget ever refused a login: {:?}",
        outcome.statuses
    );
    assert!(
        samples.len() > 10,
        "health was polled {} times",
        samples.len()
    );
    let bad: Vec<_> = samples.iter().filter(|(_, s)| *s != 200).collect();
    assert!(bad.is_empty(), "health did not answer 200: {bad:?}");
    assert!(
        missing.is_empty(),
        "the watcher did not list the flooded node as active at {missing:?}"
    );
    let log = flooded.log();
    assert!(
        !log.contains("registering again") && !log.contains("Re-registered"),
        "the flooded node fell out of the cluster:\n{log}"
    );
    assert!(log.contains("failed logins on this node in the last minute"));
    assert!(!log.contains("wrong-"), "a password reached the log");
    // The right password is refused too while the global budget is used up.
    let mut c = fleet_tests::web::Client::new(flooded.port);
    let r = c.login("admin", "the-right-password");
    assert_eq!(r.status, 429, "{}", r.text());
}
