//! The dashboard over HTTP: login and its throttle, CSRF on every state change, sessions shared
//! by two nodes through Redis, logout everywhere, package builds and node removal by session or
//! API key, and HTTPS with Secure cookies.

use std::time::Duration;

use fleet_tests::web::{Client, WEB_PASSWORD, node_template, start_web_node, web_yaml};
use fleet_tests::{Daemon, RedisServer, TEST_API_KEY, free_port, require_tool};

#[test]
fn unauthenticated_and_forged_requests_are_refused() {
    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let d = start_web_node(
        "web-a",
        shared.path(),
        &web_yaml(&template, "  backend: memory\n"),
    );
    d.wait_health(200, Duration::from_secs(10));
    let mut anon = Client::new(d.port);

    let r = anon.get("/settings");
    assert_eq!(r.status, 303, "the Settings page needs a login");
    assert_eq!(r.header("location"), Some("/login"));
    let r = anon.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = anon.request("DELETE", "/api/fleet/cluster/nodes/web-a-abcdef", &[], b"");
    assert_eq!(r.status, 401);
    let r = anon.get("/api/fleet/cluster/nodes");
    assert_eq!(r.status, 401);

    // Logged in, but without or with a wrong CSRF token: 403, nothing built or removed.
    let mut c = Client::new(d.port);
    let r = c.login("admin", WEB_PASSWORD);
    assert_eq!(r.status, 303, "{}", r.text());
    let session = r
        .header_all("set-cookie")
        .into_iter()
        .find(|v| v.starts_with("fleet_session="))
        .unwrap()
        .to_string();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(
        !session.contains("Secure"),
        "no Secure without TLS: {session}"
    );
    let r = c.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", "0000"),
        ],
        b"{}",
    );
    assert_eq!(r.status, 403);
    let id = d.node_id();
    let r = c.request(
        "DELETE",
        &format!("/api/fleet/cluster/nodes/{id}"),
        &[("X-CSRF-Token", "bad")],
        b"",
    );
    assert_eq!(r.status, 403);
    // A login form posted without its token is refused too.
    let mut other = Client::new(d.port);
    let r = other.post_form(
        "/login",
        &[
            ("username", "admin"),
            ("password", WEB_PASSWORD),
            ("csrf", "forged"),
        ],
    );
    assert_eq!(r.status, 403);
    // The node list works with the session.
    assert_eq!(c.get("/api/fleet/cluster/nodes").status, 200);

    // Security headers on the page, and no secret in it.
    let page = c.get("/settings");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-security-policy")
            .unwrap_or_default()
            .contains("script-src 'self'")
    );
    let html = page.text();
    assert!(
        html.contains("📦 Cluster Node Installer") && html.contains("✅ Cluster Mode Enabled"),
        "{html}"
    );
    assert!(html.contains("📦 Build Cluster Node Package"));
    // Beside the node table: the load-balancer views and their URLs, readable with the session.
    let views = &html[html
        .find("id=\"lb-views\"")
        .expect("the load-balancer views")..];
    for needle in [
        "/api/fleet/cluster/sd/prometheus</code>",
        "/api/fleet/cluster/sd/traefik</code>",
        "fleet-server lb haproxy --socket",
        "fleet-server lb render --format nginx",
    ] {
        assert!(views.contains(needle), "{needle} missing: {views}");
    }
    assert_eq!(c.get("/api/fleet/cluster/sd/prometheus").status, 200);
    assert!(
        !html.contains(TEST_API_KEY) && !html.contains("argon2"),
        "a secret reached the page"
    );
}

#[test]
fn the_sixth_bad_login_in_a_minute_is_throttled() {
    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let d = start_web_node(
        "web-t",
        shared.path(),
        &web_yaml(&template, "  backend: memory\n"),
    );
    d.wait_health(200, Duration::from_secs(10));
    let mut c = Client::new(d.port);
    for i in 0..5 {
        let r = c.login("admin", "wrong");
        assert_eq!(r.status, 401, "attempt {i}");
        assert!(r.text().contains("Invalid username or password."));
    }
    let r = c.login("admin", "wrong");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("Too many login attempts"));
    // Even the right password is refused while throttled.
    let r = c.login("admin", WEB_PASSWORD);
    assert_eq!(r.status, 429);
    assert!(
        !d.log().contains(WEB_PASSWORD),
        "the password reached the log"
    );
}

#[test]
fn sessions_are_shared_through_redis_and_logout_ends_them_everywhere() {
    let redis = RedisServer::start_with(Some("sessions-pw"), &[]);
    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let sessions = "  backend: redis\n".to_string();
    let cluster = format!(
        "cluster:\n  enabled: true\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{}",
        redis.cluster_yaml()
    );
    let start = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\n{}\n  node_name: {name}\n{}",
            dir.path().join("state").display(),
            cluster.trim_end(),
            web_yaml(&template, &sessions)
        );
        Daemon::start_with_config(name, dir, port, &config)
    };
    let a = start("node-a");
    let b = start("node-b");
    a.wait_health(200, Duration::from_secs(10));
    b.wait_health(200, Duration::from_secs(10));

    let mut on_a = Client::new(a.port);
    assert_eq!(on_a.login("admin", WEB_PASSWORD).status, 303);
    // The same cookie on node B: logged in there too.
    let mut on_b = Client::new(b.port);
    on_b.cookies = on_a.cookies.clone();
    let page = on_b.get("/settings");
    assert_eq!(page.status, 200, "the session made on A works on B");
    assert!(page.text().contains("node-b-"), "B's page names B");
    // The backend holds a digest of the session id, not the id.
    let keys = redis.command(&["KEYS", "fleet:session:*"]).unwrap();
    let sid = on_a.cookies["fleet_session"].clone();
    assert!(
        keys.contains("fleet:session:") && !keys.contains(&sid),
        "{keys}"
    );

    // Logout on A ends the session on B.
    let token = on_a.page_csrf();
    let r = on_a.post_form("/logout", &[("csrf", &token)]);
    assert_eq!(r.status, 303);
    let r = on_b.get("/settings");
    assert_eq!(r.status, 303, "logged out everywhere");
    assert_eq!(r.header("location"), Some("/login"));
}

#[test]
fn build_by_session_and_by_api_key_and_remove_by_session() {
    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let extra = web_yaml(&template, "  backend: memory\n");
    let a = start_web_node("primary", shared.path(), &extra);
    let victim = start_web_node("victim", shared.path(), &extra);
    a.wait_health(200, Duration::from_secs(10));
    victim.wait_health(200, Duration::from_secs(10));
    let victim_id = victim.node_id();

    let mut c = Client::new(a.port);
    assert_eq!(c.login("admin", WEB_PASSWORD).status, 303);
    let csrf = c.page_csrf();
    let body = br#"{"node_name":"server-03","package_name":"FleetServerClusterNode.pkg","format":"pkg","expires":"7d","ethernet":"allow-virtual"}"#;
    let r = c.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
        ],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-disposition"),
        Some(
            "attachment; filename=\"FleetServerClusterNode.pkg\"; filename*=UTF-8''FleetServerClusterNode.pkg"
        )
    );
    assert_eq!(&r.body[..4], b"xar!", "a XAR (pkg) came back");
    let pkg = shared.path().join("dl.pkg");
    std::fs::write(&pkg, &r.body).unwrap();
    let listing = std::process::Command::new(require_tool("bsdtar"))
        .arg("-tf")
        .arg(&pkg)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    // The Settings page's default: a product archive (Distribution + the component).
    assert!(listing.lines().any(|l| l == "Distribution"), "{listing}");
    for m in ["Bom", "PackageInfo", "Payload", "Scripts"] {
        let m = format!("fleet-server.pkg/{m}");
        assert!(listing.lines().any(|l| l == m), "{m} missing: {listing}");
    }

    // Bad input: a clear 400 naming the problem.
    let r = c.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
        ],
        br#"{"node_name":"Bad Name"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Bad Name"),
        "{}",
        r.text()
    );
    let r = c.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
        ],
        br#"{"package_name":"../evil.pkg"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // Issue 14: a `"` (which would end the quoted filename in Content-Disposition) is refused,
    // and the answer names the field.
    let r = c.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
        ],
        br#"{"package_name":"a\"; filename=evil.sh; x=\".pkg"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("package_name"), "{}", r.text());

    // The API key builds a Linux bundle without a session.
    let mut api = Client::new(a.port);
    let r = api.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", TEST_API_KEY),
        ],
        br#"{"node_name":"node2","format":"bundle"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-disposition"),
        Some(
            "attachment; filename=\"node2_provision.tar.gz\"; filename*=UTF-8''node2_provision.tar.gz"
        )
    );

    // Remove the other node with the session's token: gone, and the node is told.
    let r = c.request(
        "DELETE",
        &format!("/api/fleet/cluster/nodes/{victim_id}"),
        &[("X-CSRF-Token", &csrf)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ids = a.active_ids().unwrap();
    assert!(!ids.contains(&victim_id), "{ids:?}");
    let body = victim.wait_health(503, Duration::from_secs(5));
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("removed"),
        "{body}"
    );

    // The events stream recorded who built and who removed.
    let events = std::fs::read_dir(shared.path().join("cluster/events")).unwrap();
    let all: Vec<String> = events
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert!(
        all.iter().any(|e| e.contains("package_built")
            && e.contains("web:admin")
            && e.contains("server-03")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|e| e.contains("package_built") && e.contains("api-key") && e.contains("node2"))
    );
    assert!(
        all.iter().any(|e| e.contains("\"removed\"")
            && e.contains("web:admin")
            && e.contains(&victim_id))
    );
}

#[test]
fn https_with_secure_cookies() {
    let openssl = require_tool("openssl");
    let shared = tempfile::tempdir().unwrap();
    let (cert, key) = (
        shared.path().join("cert.pem"),
        shared.path().join("key.pem"),
    );
    let out = std::process::Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let template = node_template(shared.path());
    let extra = web_yaml(&template, "  backend: memory\n");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\n  tls_cert: {}\n  tls_key: {}\ncluster:\n  enabled: true\n  backend: storage\n  storage_path: {}\n{extra}",
        dir.path().join("state").display(),
        cert.display(),
        key.display(),
        shared.path().display()
    );
    let d = Daemon::start_with_config("tls", dir, port, &config);
    d.wait_log(
        "✅ Fleet server started on 127.0.0.1:",
        Duration::from_secs(10),
    );
    assert!(d.log().contains("(HTTPS)"), "{}", d.log());
    // curl speaks TLS for us; -k: the certificate is self-signed.
    let curl = require_tool("curl");
    let health = std::process::Command::new(&curl)
        .args(["-sk", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{port}/api/fleet/cluster/health"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("\"status\":\"ok\""),
        "{health:?}"
    );
    let login = std::process::Command::new(&curl)
        .args(["-sk", "-i", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{port}/login"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&login.stdout);
    assert!(
        head.contains("; Secure"),
        "cookies are Secure under TLS:\n{head}"
    );
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = fleet_tests::http("GET", port, "/api/fleet/cluster/health", &[]);
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
}

/// The Nodes table (the Settings page and `cluster nodes`) shows each node's version and marks
/// the nodes older than the one serving it.
#[test]
fn older_nodes_are_marked_in_the_nodes_table() {
    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let extra = web_yaml(&template, "  backend: memory\n");
    let a = start_web_node("primary", shared.path(), &extra);
    a.wait_health(200, Duration::from_secs(10));
    // An old node, as a node of release 0.0.1 registers itself.
    let config = fleet_server::config::Config::load(&a.config_path()).unwrap();
    let old = fleet_server::cluster::NodeRecord {
        id: "oldtimer-abc123".into(),
        name: "oldtimer".into(),
        hostname: "oldtimer".into(),
        addresses: vec!["192.0.2.77".into()],
        version: "0.0.1".into(),
        os: "linux".into(),
        started_at: 0,
        url: "http://192.0.2.77:8768".into(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = fleet_server::cluster::open(&config).unwrap();
    rt.block_on(backend.register(&old)).unwrap();

    let mut c = Client::new(a.port);
    assert_eq!(c.login("admin", WEB_PASSWORD).status, 303);
    let page = String::from_utf8_lossy(&c.get("/settings").body).into_owned();
    assert!(page.contains("<th>Version</th>"), "{page}");
    assert!(page.contains("0.0.1 ⬆︎ older"), "{page}");
    let this = env!("CARGO_PKG_VERSION");
    assert!(!page.contains(&format!("{this} ⬆︎ older")), "{page}");

    let out = std::process::Command::new(fleet_tests::bin_path("fleet-server"))
        .args(["cluster", "nodes", "--config"])
        .arg(a.config_path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(row("oldtimer").ends_with("0.0.1 (older)"), "{table}");
    assert!(row("primary").ends_with(this), "{table}");
    rt.block_on(backend.deregister(&old.id)).unwrap();
}
