//! Issue 14, part B: what a node's configuration, a planted record or a planted cookie can no
//! longer do. Real daemons and a real redis-server; each attempt refused, nothing left behind.

use std::path::Path;
use std::time::Duration;

use fleet_server::cluster::{self, NodeRecord};
use fleet_server::config::Config;
use fleet_tests::{RedisServer, run_cli};

/// Control bytes an attacker's record may carry: ESC, CR, LF, the 8-bit CSI, DEL.
fn has_control_bytes(s: &str) -> bool {
    s.chars().any(|c| c != '\n' && c.is_control()) || s.contains("\r")
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("config.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A node writes its record with ESC, CR and LF in it (through the backend's own register, as
/// a node with its own credential can): `cluster nodes` and `cluster info` print no control
/// byte, the row says `invalid`, and the JSON keeps the value escaped and marks it.
#[test]
fn cluster_nodes_prints_no_control_bytes_from_a_forged_record() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "server:\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: admin-box\n  heartbeat_interval: 1\n  heartbeat_timeout: 30\n{}",
            dir.path().join("state").display(),
            redis.cluster_yaml()
        ),
    );
    let config = Config::load(&cfg).unwrap();
    let evil = NodeRecord {
        id: "evil-abc123".into(),
        name: "evil".into(),
        hostname: "h\x1b[2J\x1b[H".into(),
        addresses: vec!["192.0.2.9\r\nfake-node  fake-aaaaaa  203.0.113.1  active".into()],
        version: "0.1.0\u{9b}31m\x7f".into(),
        os: "linux".into(),
        started_at: 1,
        url: "http://192.0.2.9:8768/\x1b]0;pwned\x07".into(),
    };
    let good = NodeRecord {
        id: "good-abc123".into(),
        name: "good".into(),
        hostname: "good.example".into(),
        addresses: vec!["192.0.2.10".into()],
        version: "0.1.0".into(),
        os: "linux".into(),
        started_at: 1,
        url: "http://192.0.2.10:8768".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = cluster::open(&config).unwrap();
        backend.register(&evil).await.unwrap();
        backend.register(&good).await.unwrap();
    });
    let c = cfg.to_str().unwrap();
    for args in [
        vec!["cluster", "nodes", "--config", c],
        vec!["cluster", "info", "--config", c],
        vec!["cluster", "nodes", "--json", "--config", c],
        vec!["cluster", "info", "--json", "--config", c],
    ] {
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 0, "{args:?}\n{out}\n{err}");
        assert!(
            !has_control_bytes(&out) && !has_control_bytes(&err),
            "{args:?} printed control bytes:\n{out:?}\n{err:?}"
        );
        assert!(out.contains("good-abc123"), "{out}");
        assert!(out.contains("evil-abc123"), "{out}");
        if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let list = v
                .as_array()
                .or_else(|| v["nodes"].as_array())
                .unwrap()
                .clone();
            let evil_row = list.iter().find(|m| m["id"] == "evil-abc123").unwrap();
            assert!(evil_row["invalid"].is_string(), "{evil_row}");
            assert_eq!(evil_row["hostname"], "h\x1b[2J\x1b[H", "the value, escaped");
            let good_row = list.iter().find(|m| m["id"] == "good-abc123").unwrap();
            assert!(good_row.get("invalid").is_none(), "{good_row}");
        } else {
            // The forged row did not become a row of its own, and the record is flagged.
            assert!(
                !out.lines().any(|l| l.starts_with("fake-node")),
                "a forged row:\n{out}"
            );
            let row = out.lines().find(|l| l.starts_with("evil ")).unwrap();
            assert!(row.contains("invalid"), "{out}");
            assert!(out.contains("evil-abc123 is not trusted"), "{out}");
            let row = out.lines().find(|l| l.starts_with("good ")).unwrap();
            assert!(row.contains("active"), "{out}");
        }
    }
}

/// A dashboard node on Redis (cluster and sessions), with the dashboard password set.
fn redis_web_node(redis: &RedisServer, name: &str) -> fleet_tests::Daemon {
    let dir = tempfile::tempdir().unwrap();
    // Inside the daemon's directory: removed with it.
    let template = fleet_tests::web::node_template(dir.path());
    let port = fleet_tests::free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: {name}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}{}",
        dir.path().join("state").display(),
        redis.cluster_yaml(),
        fleet_tests::web::web_yaml(&template, "  backend: redis\n")
    );
    let d = fleet_tests::Daemon::start_with_config(name, dir, port, &config);
    d.wait_health(200, Duration::from_secs(15));
    d
}

/// What a node holding write access to the session store could plant: a record saying
/// `admin` under a session id of its choosing, with no signature, a garbage one, or the
/// signature of a real session copied onto another id. Each is refused: the Settings page
/// sends to the login form and the API answers 401. A real session still works, and logout
/// still ends it (revocation by deletion).
#[test]
fn a_session_forged_in_redis_opens_nothing() {
    let redis = RedisServer::start();
    let d = redis_web_node(&redis, "web-s");
    let forged_sid = "ab".repeat(32);
    let key = format!(
        "fleet:session:{}",
        fleet_server::cluster::sessions::digest(&forged_sid)
    );
    let mut real = fleet_tests::web::Client::new(d.port);
    assert_eq!(
        real.login("admin", fleet_tests::web::WEB_PASSWORD).status,
        303
    );
    let real_sid = real.cookies["fleet_session"].clone();
    let real_record = redis
        .command(&[
            "GET",
            &format!(
                "fleet:session:{}",
                fleet_server::cluster::sessions::digest(&real_sid)
            ),
        ])
        .unwrap();
    let real_json = real_record.lines().nth(1).unwrap_or_default().to_string();
    assert!(real_json.contains("\"sig\""), "{real_record}");
    let far = 4_000_000_000_000u64;
    for (what, record) in [
        (
            "unsigned",
            r#"{"user":"admin","csrf":"x","created_ms":1}"#.to_string(),
        ),
        (
            "garbage signature",
            format!(
                r#"{{"user":"admin","csrf":"x","created_ms":1,"expires_ms":{far},"sig":"{}"}}"#,
                "00".repeat(64)
            ),
        ),
        (
            "a real session's record copied to another id",
            real_json.clone(),
        ),
    ] {
        let r = redis.command(&["SET", &key, &record]).unwrap();
        assert!(r.starts_with("+OK"), "{r}");
        let mut attacker = fleet_tests::web::Client::new(d.port);
        attacker
            .cookies
            .insert("fleet_session".into(), forged_sid.clone());
        let page = attacker.get("/settings");
        assert_eq!(page.status, 303, "{what}: {}", page.text());
        assert_eq!(page.header("location"), Some("/login"), "{what}");
        let api = attacker.get("/api/fleet/cluster/nodes");
        assert_eq!(api.status, 401, "{what}: {}", api.text());
        let build = attacker.request(
            "POST",
            "/api/fleet/cluster/packages",
            &[("Content-Type", "application/json"), ("X-CSRF-Token", "x")],
            b"{}",
        );
        assert_eq!(build.status, 401, "{what}: {}", build.text());
    }
    assert!(
        d.log().contains("without a valid signature was refused"),
        "{}",
        d.log()
    );
    assert!(
        !d.log().contains("built"),
        "nothing was built:\n{}",
        d.log()
    );

    // The real one works, and logout ends it.
    assert_eq!(real.get("/settings").status, 200);
    let csrf = real.page_csrf();
    assert_eq!(real.post_form("/logout", &[("csrf", &csrf)]).status, 303);
    let mut replay = fleet_tests::web::Client::new(d.port);
    replay.cookies.insert("fleet_session".into(), real_sid);
    assert_eq!(replay.get("/settings").status, 303, "logout revoked it");
}

/// Every value a node's configuration holds (here the configuration a package gives a node,
/// from a real primary's), tried as the API key, as a bearer token and as a session cookie:
/// all answered 401.
#[test]
fn nothing_a_node_holds_is_an_api_key() {
    let redis = RedisServer::start();
    let d = redis_web_node(&redis, "web-k");
    let primary = Config::load(&d.config_path()).unwrap();
    assert!(
        primary.auth.api_key.is_none(),
        "the primary itself keeps only the digest after load"
    );
    let node = fleet_server::app::package::node_config(
        &primary,
        fleet_server::config::NodeName::new("node2").ok().as_ref(),
        fleet_server::app::package::Format::Bundle,
    );
    let yaml = fleet_tests::web::config_values(&node);
    assert!(
        !yaml.iter().any(|v| v == fleet_tests::TEST_API_KEY),
        "the node's configuration holds the API key"
    );
    let tried = fleet_tests::web::assert_no_value_opens_the_api(d.port, &yaml);
    assert!(tried >= 10, "only {tried} values tried");
    // The real key, held by the admin only, still works.
    let (status, _) = fleet_tests::http(
        "GET",
        d.port,
        "/api/fleet/cluster/nodes",
        &[("X-API-Key", fleet_tests::TEST_API_KEY)],
    )
    .unwrap();
    assert_eq!(status, 200);
}

/// A login form token the client made up (the same value in the cookie and the form, as the
/// old double-submit check accepted) is refused, even with the right password.
#[test]
fn a_planted_login_token_is_refused() {
    let redis = RedisServer::start();
    let d = redis_web_node(&redis, "web-p");
    let mut c = fleet_tests::web::Client::new(d.port);
    for planted in [
        "planted".to_string(),
        format!(
            "{}.{}.{}",
            "a".repeat(32),
            4_000_000_000_000u64,
            "00".repeat(32)
        ),
    ] {
        c.cookies.insert("fleet_login".into(), planted.clone());
        let r = c.post_form(
            "/login",
            &[
                ("username", "admin"),
                ("password", fleet_tests::web::WEB_PASSWORD),
                ("csrf", &planted),
            ],
        );
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("The login form expired"), "{}", r.text());
        assert!(!c.cookies.contains_key("fleet_session"));
    }
    // The server's own token works.
    assert_eq!(c.login("admin", fleet_tests::web::WEB_PASSWORD).status, 303);
}

/// A client flooding the login form as `admin` with wrong passwords is throttled itself, but
/// does not lock the admin out: from another address the right password logs in at once.
/// (Within the node's budget of failures a minute: an attacker with 20 addresses can still use
/// that up for everyone for a minute; see README, Security.)
#[test]
fn another_clients_flood_does_not_lock_the_admin_out() {
    let redis = RedisServer::start();
    let d = redis_web_node(&redis, "web-f");
    let port = d.port;
    let mut attacker = fleet_tests::web::Client::new(port);
    let mut throttled = false;
    for _ in 0..12 {
        let r = attacker.login("admin", "wrong-guess");
        if r.status == 429 {
            throttled = true;
        } else {
            assert_eq!(r.status, 401, "{}", r.text());
        }
    }
    assert!(throttled, "the flooding client was never throttled");
    // The admin, from 127.0.0.2.
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut admin = fleet_tests::web::Client::connecting(
        server,
        Box::new(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))?;
                let stream = s.connect(server).await?;
                let std_stream = stream.into_std()?;
                std_stream.set_nonblocking(false)?;
                Ok(std_stream)
            })
        }),
    );
    let r = admin.login("admin", fleet_tests::web::WEB_PASSWORD);
    assert_eq!(r.status, 303, "the admin was locked out: {}", r.text());
    assert_eq!(admin.get("/settings").status, 200);
    assert!(
        d.log().contains("failed login from 127.0.0.1"),
        "{}",
        d.log()
    );
    // The attacker is still throttled, even with the right password.
    assert_eq!(
        attacker
            .login("admin", fleet_tests::web::WEB_PASSWORD)
            .status,
        429
    );
}

/// A CLI build whose package cannot be written (here: its output directory does not exist)
/// leaves nothing behind: no pending enrollment record, no enrollment user, no node user.
#[test]
fn a_failed_cli_build_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let d = redis_web_node(&redis, "web-b");
    let cfg = d.config_path();
    let c = cfg.to_str().unwrap();
    let users_before = redis.command(&["ACL", "USERS"]).unwrap();
    let missing = d.dir.path().join("no-such-dir").join("node2.tar.gz");
    let (code, out, err) = run_cli(&[
        "package",
        "build",
        "--config",
        c,
        "--node-name",
        "node2",
        "--format",
        "bundle",
        "--ethernet",
        "skip",
        "--output",
        missing.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "the write must fail:\n{out}\n{err}");
    assert!(!missing.exists());
    let (code, out, err) = run_cli(&["package", "list", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("No pending packages."),
        "a pending record remains:\n{out}"
    );
    let users_after = redis.command(&["ACL", "USERS"]).unwrap();
    assert!(
        !users_after.contains("fleet-enroll-") && !users_after.contains("fleet-node-node2"),
        "users remain:\n{users_after}\n(before:\n{users_before})"
    );
    let keys = redis.command(&["KEYS", "fleet:cluster:enroll:*"]).unwrap();
    assert!(!keys.contains("enroll:"), "{keys}");

    // The same build with a writable output succeeds and leaves its record and users.
    let ok = d.dir.path().join("node2.tar.gz");
    let (code, out, err) = run_cli(&[
        "package",
        "build",
        "--config",
        c,
        "--node-name",
        "node2",
        "--format",
        "bundle",
        "--ethernet",
        "skip",
        "--output",
        ok.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let users = redis.command(&["ACL", "USERS"]).unwrap();
    assert!(users.contains("fleet-enroll-"), "{users}");
    let (_, out, _) = run_cli(&["package", "list", "--config", c]);
    assert!(out.contains("node2"), "{out}");
}
