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

/// Files another account could have planted or changed are refused, by name, with the reason
/// and never their content: a world-writable configuration file, a password file reached by a
/// link into a world-writable directory, a secret owned by another user, a TLS key replaced by
/// a FIFO. The same files, made safe, pass.
#[test]
fn planted_or_writable_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    let run = || {
        let (code, out, err) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
        (code, format!("{out}{err}"))
    };
    std::fs::write(&cfg, "server:\n  port: 8768\n").unwrap();
    chmod(&cfg, 0o666);
    let (code, msg) = run();
    assert_eq!(code, 1, "{msg}");
    assert!(
        msg.contains(&format!("refusing {}", cfg.display()))
            && msg.contains("writable by other users (mode 0666)"),
        "{msg}"
    );
    chmod(&cfg, 0o600);
    assert_eq!(run().0, 0, "{}", run().1);

    // A password file behind a link into a directory anyone may write.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let secret = open.join("redis.pass");
    std::fs::write(&secret, "hunter2-not-printed\n").unwrap();
    let link = dir.path().join("redis.pass");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "cluster:\n  enabled: true\n  redis_host: 127.0.0.1\n  redis_password_file: {}\n",
            link.display()
        ),
    )
    .unwrap();
    let (code, msg) = run();
    assert_eq!(code, 1, "{msg}");
    assert!(
        msg.contains("cluster.redis_password_file")
            && msg.contains(&format!("its directory {}", open.display()))
            && msg.contains("mode 0777"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "the secret is printed: {msg}");
    chmod(&open, 0o755);
    assert_eq!(run().0, 0, "{}", run().1);
    // The same secret owned by another user (tests run as root, as `make test` does).
    std::os::unix::fs::chown(&secret, Some(65534), None).unwrap();
    let (code, msg) = run();
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("owned by uid 65534"), "{msg}");
    assert!(!msg.contains("hunter2"), "the secret is printed: {msg}");

    // A TLS key that is a FIFO: `serve` refuses it at once instead of waiting on it.
    let key = dir.path().join("tls.key");
    nix::unistd::mkfifo(&key, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, "not used").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "server:\n  port: {}\n  state_dir: {}\n  tls_cert: {}\n  tls_key: {}\n",
            free_port(),
            dir.path().join("state").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(fleet_tests::fleet_server_bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(
        err.contains("server.tls_key") && err.contains("not a regular file"),
        "{err}"
    );
}
