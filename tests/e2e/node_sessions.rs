//! Issue 14: a node that runs on a backend user of its own (etcd role, Redis ACL user) serves
//! the dashboard through the shared session store, and what that credential can plant there
//! opens nothing: sessions forged with it (unsigned, a garbage signature, a real record copied
//! to another id) are refused on the primary. Also on etcd: no value of a node's
//! configuration is an API key. Real daemons, real etcd and redis-server.

use std::time::Duration;

use fleet_server::cluster::sessions::digest;
use fleet_server::config::{Config, Secret};
use fleet_tests::etcd::{EtcdServer, b64};
use fleet_tests::{Daemon, RedisServer};

const ROOT: &str = "sessions-etcd-root-pw";

/// A dashboard daemon named `name` with these `cluster:` lines (backend and credentials) and
/// its sessions on `sessions` (the cluster's backend).
fn web_node(name: &str, cluster: &str, sessions: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let template = fleet_tests::web::node_template(dir.path());
    let port = fleet_tests::free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: {name}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{cluster}{}",
        dir.path().join("state").display(),
        fleet_tests::web::web_yaml(&template, &format!("  backend: {sessions}\n"))
    );
    let d = Daemon::start_with_config(name, dir, port, &config);
    d.wait_health(200, Duration::from_secs(20));
    d
}

/// The `cluster:` lines of a node on etcd with its own user.
fn etcd_node_cluster(etcd: &EtcdServer, user: &str, password: &Secret) -> String {
    format!(
        "  backend: etcd\n  etcd_endpoints: [\"{}\"]\n  etcd_username: {user}\n  etcd_password: \"{}\"\n",
        etcd.endpoint(),
        password.expose()
    )
}

fn etcd_admin(etcd: &EtcdServer) -> fleet_server::cluster::etcd::EtcdMembership {
    let text = format!("cluster:\n  enabled: true\n{}", etcd.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("p.yaml")).unwrap();
    fleet_server::cluster::etcd::EtcdMembership::new(
        &c.cluster,
        fleet_server::cluster::Timing::of(&c.cluster),
    )
    .unwrap()
}

/// Logs in on `node` (which runs on its own user) and opens its Settings page; the same
/// session opens the primary's. Returns the session id.
fn login_on_the_node(node: &Daemon, primary: &Daemon) -> String {
    let mut c = fleet_tests::web::Client::new(node.port);
    let r = c.login("admin", fleet_tests::web::WEB_PASSWORD);
    assert_eq!(
        r.status,
        303,
        "login on the node: {}\n{}",
        r.text(),
        node.log()
    );
    let page = c.get("/settings");
    assert_eq!(
        page.status,
        200,
        "the node's Settings page: {}\n{}",
        page.text(),
        node.log()
    );
    let sid = c.cookies["fleet_session"].clone();
    let mut on_primary = fleet_tests::web::Client::new(primary.port);
    on_primary
        .cookies
        .insert("fleet_session".into(), sid.clone());
    assert_eq!(
        on_primary.get("/settings").status,
        200,
        "the shared store serves the node's session to the primary"
    );
    sid
}

/// The records a node's credential may plant under a session id of its choosing: unsigned, a
/// garbage signature, a real session's record (`real`) copied.
fn forgeries(real: &str) -> Vec<(&'static str, String)> {
    let far = 4_000_000_000_000u64;
    vec![
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
            real.to_string(),
        ),
    ]
}

/// `send` again while it answers 503 (the backend slow on a loaded machine, not a refusal), at
/// most ten times.
fn settled(
    mut send: impl FnMut() -> fleet_tests::http::HttpResponse,
) -> fleet_tests::http::HttpResponse {
    let mut r = send();
    for _ in 0..10 {
        if r.status != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        r = send();
    }
    r
}

/// The forged session id `sid` opens nothing on `d`: the Settings page sends to the login
/// form, the API answers 401.
fn refused_on(d: &Daemon, sid: &str, what: &str) {
    let mut attacker = fleet_tests::web::Client::new(d.port);
    attacker.cookies.insert("fleet_session".into(), sid.into());
    let page = settled(|| attacker.get("/settings"));
    assert_eq!(page.status, 303, "{what}: {}", page.text());
    assert_eq!(page.header("location"), Some("/login"), "{what}");
    let api = settled(|| attacker.get("/api/fleet/cluster/nodes"));
    assert_eq!(api.status, 401, "{what}: {}", api.text());
    let build = settled(|| {
        attacker.request(
            "POST",
            "/api/fleet/cluster/packages",
            &[("Content-Type", "application/json"), ("X-CSRF-Token", "x")],
            b"{}",
        )
    });
    assert_eq!(build.status, 401, "{what}: {}", build.text());
}

#[test]
fn an_etcd_node_with_its_own_user_serves_sessions_it_cannot_forge() {
    let etcd = EtcdServer::start_with_auth(ROOT);
    let primary = web_node("web-p", &etcd.cluster_yaml(), "etcd");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pw) = rt
        .block_on(etcd_admin(&etcd).create_node_user("web-n"))
        .unwrap();
    let node = web_node("web-n", &etcd_node_cluster(&etcd, &user, &pw), "etcd");
    let sid = login_on_the_node(&node, &primary);

    // With the node's credential: read the real record, plant forgeries under another id.
    let real_key = format!("fleet:session/{}", digest(&sid));
    let got = etcd
        .call_as(
            Some((&user, pw.expose())),
            "/v3/kv/range",
            serde_json::json!({"key": b64(real_key.as_bytes())}),
        )
        .unwrap();
    let real = got["kvs"][0]["value"]
        .as_str()
        .map(fleet_tests::etcd::unb64)
        .unwrap();
    let real = String::from_utf8(real).unwrap();
    assert!(real.contains("\"sig\""), "{real}");
    let forged_sid = "ab".repeat(32);
    let key = format!("fleet:session/{}", digest(&forged_sid));
    for (what, record) in forgeries(&real) {
        etcd.put_as(&user, pw.expose(), &key, &record).unwrap();
        refused_on(&primary, &forged_sid, what);
    }
    assert!(
        primary
            .log()
            .contains("without a valid signature was refused"),
        "{}",
        primary.log()
    );
    // The node's own session still works on both.
    let mut c = fleet_tests::web::Client::new(primary.port);
    c.cookies.insert("fleet_session".into(), sid);
    assert_eq!(c.get("/settings").status, 200);

    // What only the primary may do, the node refuses with 403 and says where to do it, before
    // touching etcd: no removal, and no build (which would pack this node's own etcd user as
    // "the shared credentials"); no etcd user made.
    let users = || {
        etcd.call_as(
            Some(("root", ROOT)),
            "/v3/auth/user/list",
            serde_json::json!({}),
        )
        .unwrap()["users"]
            .to_string()
    };
    let before = users();
    let (status, body) = fleet_tests::http(
        "DELETE",
        node.port,
        &format!("/api/fleet/cluster/nodes/{}", primary.node_id()),
        &[("X-API-Key", fleet_tests::TEST_API_KEY)],
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("this node's own etcd user (node web-n) may change only its own records"),
        "{body}"
    );
    let mut api = fleet_tests::web::Client::new(node.port);
    let r = api.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", fleet_tests::TEST_API_KEY),
        ],
        br#"{"node_name":"web-x","format":"bundle","ethernet":"skip"}"#,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("build node packages on the primary"),
        "{}",
        r.text()
    );
    assert_eq!(users(), before, "an etcd user was made");
    primary.wait_listed(&primary.node_id(), Duration::from_secs(5));
}

#[test]
fn a_redis_node_with_its_own_user_serves_sessions_it_cannot_forge() {
    let redis = RedisServer::start_with(Some("sessions-redis-admin-pw"), &[]);
    let primary = web_node("web-p", &redis.cluster_yaml(), "redis");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pw) = rt.block_on(async {
        let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
        let c = Config::parse(&text, std::path::Path::new("p.yaml")).unwrap();
        let admin = fleet_server::cluster::redis::RedisMembership::new(
            &c.cluster,
            fleet_server::cluster::Timing::of(&c.cluster),
        )
        .unwrap();
        admin.create_node_user("web-n").await.unwrap()
    });
    let cluster = format!(
        "  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_username: {user}\n  redis_password: \"{}\"\n",
        redis.port,
        pw.expose()
    );
    let node = web_node("web-n", &cluster, "redis");
    let sid = login_on_the_node(&node, &primary);

    let (auth, mut conn) = redis.connect_as(&user, pw.expose()).unwrap();
    assert!(auth.starts_with("+OK"), "{auth}");
    let got = conn
        .call(&["GETEX", &format!("fleet:session:{}", digest(&sid))])
        .unwrap();
    let real = got.lines().nth(1).unwrap_or_default().to_string();
    assert!(real.contains("\"sig\""), "{got}");
    let forged_sid = "ab".repeat(32);
    let key = format!("fleet:session:{}", digest(&forged_sid));
    for (what, record) in forgeries(&real) {
        let r = conn.call(&["SET", &key, &record]).unwrap();
        assert!(r.starts_with("+OK"), "{r}");
        refused_on(&primary, &forged_sid, what);
    }
    // The selector reaches sessions only: no cluster key, no other command.
    for cmd in [
        &["SET", "fleet:cluster:members", "x"][..],
        &["GETEX", "fleet:cluster:node-users", "PX", "1"],
        &["KEYS", "fleet:session:*"],
        &["EXPIRE", &key, "1"],
    ] {
        let r = conn.call(cmd).unwrap();
        assert!(r.starts_with("-NOPERM"), "{cmd:?}: {r}");
    }
    assert!(
        primary
            .log()
            .contains("without a valid signature was refused"),
        "{}",
        primary.log()
    );
}

/// Every value of the configuration a package gives a node on etcd (with its own etcd user,
/// as the build puts it in), tried as the API key, as a bearer token: all answered 401.
#[test]
fn nothing_an_etcd_node_holds_is_an_api_key() {
    let etcd = EtcdServer::start_with_auth(ROOT);
    let primary = web_node("web-k", &etcd.cluster_yaml(), "etcd");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pw) = rt
        .block_on(etcd_admin(&etcd).create_node_user("node2"))
        .unwrap();
    let primary_config = Config::load(&primary.config_path()).unwrap();
    let mut node = fleet_server::app::package::node_config(
        &primary_config,
        fleet_server::config::NodeName::new("node2").ok().as_ref(),
        fleet_server::app::package::Format::Bundle,
    );
    fleet_server::cluster::users::use_node_user(&mut node, &user, &pw);
    let values = fleet_tests::web::config_values(&node);
    assert!(
        values.iter().any(|v| v == pw.expose()),
        "the node's own password is tried"
    );
    assert!(
        !values.iter().any(|v| v == ROOT),
        "the node holds etcd's root password"
    );
    let tried = fleet_tests::web::assert_no_value_opens_the_api(primary.port, &values);
    assert!(tried >= 10, "only {tried} values tried");
    // (A 503 is etcd slow to answer on a loaded machine, not a refusal: asked again, bounded.)
    let mut status = 0;
    for _ in 0..10 {
        status = fleet_tests::http(
            "GET",
            primary.port,
            "/api/fleet/cluster/nodes",
            &[("X-API-Key", fleet_tests::TEST_API_KEY)],
        )
        .unwrap()
        .0;
        if status != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(status, 200, "the admin's key still works");
}
