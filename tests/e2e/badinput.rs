//! Bad input gets a clear message naming what is wrong: configuration errors, a wrong Redis
//! password, a backend that is not there at start, an invalid node name.

use std::time::Duration;

use fleet_tests::{Daemon, RedisServer, free_port, run_cli};

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = run_cli(&["config", "check", path.to_str().unwrap()]);
    (
        code,
        format!("{out}{err}").replace(path.to_str().unwrap(), "CONFIG"),
    )
}

#[test]
fn malformed_yaml() {
    let (code, msg) = check("cluster:\n  enabled: [true\n");
    assert_eq!(code, 1);
    assert!(msg.contains("CONFIG: "), "{msg}");
    assert!(msg.contains("line"), "names where: {msg}");
}

#[test]
fn unknown_field() {
    let (code, msg) = check("cluster:\n  enabled: true\n  redis_hots: r.example\n");
    assert_eq!(code, 1);
    assert!(msg.contains("CONFIG: cluster"), "{msg}");
    assert!(msg.contains("unknown field `redis_hots`"), "{msg}");
}

#[test]
fn port_out_of_range() {
    let (code, msg) = check("server:\n  port: 99999\n");
    assert_eq!(code, 1);
    assert!(msg.contains("CONFIG: server.port"), "{msg}");
    let (code, msg) = check("server:\n  port: 0\n");
    assert_eq!(code, 1);
    assert!(
        msg.contains("server.port: must be between 1 and 65535"),
        "{msg}"
    );
}

#[test]
fn invalid_node_name() {
    let (code, msg) = check("cluster:\n  node_name: \"Server 03\"\n");
    assert_eq!(code, 1);
    assert!(msg.contains("cluster.node_name"), "{msg}");
    assert!(
        msg.contains("only lowercase letters, digits and `-`"),
        "{msg}"
    );
}

#[test]
fn missing_file() {
    let (code, _, err) = run_cli(&["config", "check", "/nonexistent/fleet.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/fleet.yaml: cannot read the configuration file"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["serve", "--config", "/nonexistent/fleet.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/fleet.yaml"), "{err}");
}

#[test]
fn a_valid_file_passes() {
    let (code, msg) =
        check("cluster:\n  enabled: true\n  backend: redis\n  redis_host: redis.example\n");
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("is valid"), "{msg}");
}

#[test]
fn wrong_redis_password_keeps_serving_and_says_why() {
    let redis = RedisServer::start_with(Some("the-right-one"), &[]);
    let cluster = format!(
        "  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_password: not-the-right-one\n",
        redis.port
    );
    let d = Daemon::start("badpass", &cluster);
    let body = d.wait_health(503, Duration::from_secs(10));
    let reason = body["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("refused the credentials"), "{reason}");
    d.wait_log(
        "❌ Cluster backend unavailable: redis backend refused the credentials",
        Duration::from_secs(5),
    );
    assert!(
        !d.log().contains("not-the-right-one"),
        "password in log:\n{}",
        d.log()
    );
    assert!(!reason.contains("not-the-right-one"));
}

#[test]
fn unreachable_backend_at_start_keeps_retrying() {
    // A port nothing listens on.
    let port = free_port();
    let cluster = format!("  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {port}\n");
    let mut d = Daemon::start("lonely", &cluster);
    let body = d.wait_health(503, Duration::from_secs(10));
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unreachable"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(3));
    // Still running, still answering, logged the outage once.
    let (s, _) = fleet_tests::get_json(d.port, "/api/fleet/cluster/health", None).unwrap();
    assert_eq!(s, 503);
    assert_eq!(
        d.log().matches("❌ Cluster backend unavailable").count(),
        1,
        "{}",
        d.log()
    );
    // Then the backend appears on that port, and the node joins without a restart.
    let mut late = RedisServer::start();
    // Move the fresh server to the port the node expects.
    late.stop();
    late.port = port;
    late.restart();
    d.wait_health(200, Duration::from_secs(10));
    d.wait_log(
        "✅ Registered node in cluster: lonely-",
        Duration::from_secs(2),
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn config_init_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.yaml");
    let state = dir.path().join("state");
    let args = [
        "config",
        "init",
        "--output",
        out.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let (code, stdout, err) = run_cli(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("Dashboard login: admin / "), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, err) = run_cli(&args);
    assert_eq!(code, 1);
    assert!(err.contains("exists: not overwriting it"), "{err}");
    let (code, _, _) = run_cli(&["config", "check", out.to_str().unwrap()]);
    assert_eq!(code, 0);
}
