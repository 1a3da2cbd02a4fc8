//! Least privilege on the cluster backends, played as an attacker: with the credentials of a
//! real node's configuration, and of used, revoked and expired packages, every write outside
//! the node's own records is refused by the backend itself (NOPERM), and the cluster is intact
//! afterwards (every node healthy, events intact, no user lost).

use std::time::Duration;

use fleet_server::cluster::redis::RedisMembership;
use fleet_server::cluster::{Heartbeat, MemberState, Membership, NodeRecord, Timing};
use fleet_server::config::{Config, Secret};
use fleet_tests::RedisServer;

const TIMING: Timing = Timing {
    interval: Duration::from_secs(1),
    timeout: Duration::from_secs(3),
};

/// The primary's view: the server's admin credential.
fn admin(redis: &RedisServer) -> RedisMembership {
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("p.yaml")).unwrap();
    RedisMembership::new(&c.cluster, TIMING).unwrap()
}

/// A node's view, as its configuration would connect.
fn as_user(redis: &RedisServer, user: &str, password: &Secret) -> RedisMembership {
    let text = format!(
        "cluster:\n  enabled: true\n  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_username: {user}\n  redis_password: \"{}\"\n",
        redis.port,
        password.expose()
    );
    let c = Config::parse(&text, std::path::Path::new("n.yaml")).unwrap();
    RedisMembership::new(&c.cluster, TIMING).unwrap()
}

fn node(name: &str, ip: &str) -> NodeRecord {
    fleet_tests::backends::node_at(name, ip)
}

/// A node with a user of its own joins, heartbeats, is listed by others at once, and is
/// indexed (pages, addresses, `joined`) by the primary's next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_user_joins_through_its_own_keys() {
    let redis = RedisServer::start_with(Some("priv-admin-pw"), &[]);
    let primary = admin(&redis);
    let p = node("primary", "192.0.2.1");
    primary.register(&p).await.unwrap();
    let (user, pw) = primary.create_node_user("node2").await.unwrap();
    let n2 = as_user(&redis, &user, &pw);
    let me = node("node2", "192.0.2.2");
    let started = std::time::Instant::now();
    n2.register(&me).await.unwrap();
    let listed = primary.members().await.unwrap();
    let join = started.elapsed();
    eprintln!("node user: registered and listed by the primary in {join:?}");
    let m = listed
        .iter()
        .find(|m| m.node.id == me.id)
        .expect("listed at once");
    assert_eq!(m.state, MemberState::Active);
    assert_eq!(m.node, me);
    assert!(matches!(
        n2.heartbeat(&me).await.unwrap(),
        Heartbeat::Alive { .. }
    ));
    // The node itself lists both.
    let seen = n2.members().await.unwrap();
    assert!(seen.iter().any(|m| m.node.id == p.id) && seen.iter().any(|m| m.node.id == me.id));
    // The primary's heartbeat adopts it into the indexes and records `joined`.
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.heartbeat(&p).await.unwrap();
    let (page, _) = primary.members_page(10, None).await.unwrap();
    assert!(page.iter().any(|m| m.node.id == me.id), "{page:?}");
    let holders = primary
        .live_holders(Some("node2"), &["192.0.2.2".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(holders.name.as_deref(), Some(me.id.as_str()));
    assert_eq!(holders.ip.map(|(_, h)| h).as_deref(), Some(me.id.as_str()));
    let ev = primary.events(20).await.unwrap();
    assert!(
        ev.iter()
            .any(|e| e.kind == fleet_server::cluster::EventKind::Joined && e.node_id == me.id),
        "{ev:?}"
    );
    // Leaving: gone from the list at once; `left` recorded at the primary's next turn.
    n2.deregister(&me.id).await.unwrap();
    assert!(
        primary
            .members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.node.id != me.id)
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.heartbeat(&p).await.unwrap();
    let ev = primary.events(20).await.unwrap();
    assert!(
        ev.iter()
            .any(|e| e.kind == fleet_server::cluster::EventKind::Left && e.node_id == me.id),
        "{ev:?}"
    );
    let (page, _) = primary.members_page(10, None).await.unwrap();
    assert!(page.iter().all(|m| m.node.id != me.id), "{page:?}");
}

/// Sends `cmd` as an attacker and expects the server to refuse it for lack of permission.
fn refused(conn: &mut fleet_tests::RespConn, who: &str, cmd: &[&str]) {
    let r = conn.call(cmd).unwrap();
    assert!(
        r.starts_with("-NOPERM"),
        "{who} was allowed {:?}: {r}",
        cmd.iter()
            .map(|a| &a[..a.len().min(40)])
            .collect::<Vec<_>>()
    );
}

fn users(redis: &RedisServer) -> String {
    redis.command(&["ACL", "USERS"]).unwrap()
}

/// A pending enrollment record for `name`, as a build puts it, with its enrollment user.
async fn pending(primary: &RedisMembership, name: &str, ttl_ms: u64) -> (String, String, Secret) {
    let token = fleet_server::app::enroll::Token::generate();
    let now = primary.server_now_ms().await.unwrap();
    let (user, pw) = primary
        .create_enrollment_user(&token.id, now + ttl_ms)
        .await
        .unwrap();
    let (nonce, ciphertext) = fleet_server::app::enroll::seal(&token, "cluster: {}\n");
    primary
        .put_enrollment(&fleet_server::cluster::EnrollmentRecord {
            token_id: token.id.clone(),
            node_name: name.into(),
            created_ms: now,
            expires_ms: now + ttl_ms,
            built_by: "test".into(),
            package_id: "p".into(),
            users: vec![user.clone()],
            nonce,
            ciphertext,
            claim: token.claim_digest(),
        })
        .await
        .unwrap();
    (token.id, user, pw)
}

/// The attacks of issue 14 with a real node's Redis user and with the enrollment users of a
/// used, a revoked and an expired package: each refused by Redis, and the cluster intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_used_packages_can_change_nothing_but_their_own_records() {
    let redis = RedisServer::start_with(Some("priv-admin-pw"), &[]);
    let primary = admin(&redis);
    let p = node("primary", "192.0.2.1");
    primary.register(&p).await.unwrap();
    let (vu, vpw) = primary.create_node_user("victim").await.unwrap();
    let victim = std::sync::Arc::new(as_user(&redis, &vu, &vpw));
    let v = node("victim", "192.0.2.3");
    victim.register(&v).await.unwrap();
    // The victim keeps heartbeating through the attack (which is slow: 50 MB payloads); every
    // heartbeat must find it alive.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beats = tokio::spawn({
        let (victim, v, stop) = (victim.clone(), v.clone(), stop.clone());
        async move {
            let mut outcomes = Vec::new();
            for _ in 0..600 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                outcomes.push(victim.heartbeat(&v).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            outcomes
        }
    });
    let (au, apw) = primary.create_node_user("mallory").await.unwrap();
    let attacker_node = as_user(&redis, &au, &apw);
    let a = node("mallory", "192.0.2.4");
    attacker_node.register(&a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.heartbeat(&p).await.unwrap();
    let events_before = primary.events(100).await.unwrap();
    assert!(events_before.len() >= 3, "{events_before:?}");
    let users_before = users(&redis);

    let (_, mut m) = redis.connect_as(&au, apw.expose()).unwrap();
    let who = "a node's user";
    let sid = "ab".repeat(32);
    let tomb = format!("fleet:cluster:removed:{}", v.id);
    let other_record = format!("fleet:cluster:node:{}", v.id);
    let mine = "fleet:cluster:self:mallory".to_string();
    for cmd in [
        // Another node's records, in the index and its own.
        &["HSET", other_record.as_str(), "name", "mallory"][..],
        &["HSET", "fleet:cluster:self:victim", "id", "victim-aaaaaa"],
        &["DEL", "fleet:cluster:self:victim"],
        &["PEXPIRE", "fleet:cluster:self:victim", "1"],
        // The users and their registries. (Sessions it may write: they are signed with the
        // admin's key, so what it plants there opens nothing, `e2e/node_sessions.rs`.)
        &[
            "HSET",
            "fleet:cluster:node-users",
            "fleet-node-x",
            &"0".repeat(64),
        ],
        &["HGETALL", "fleet:cluster:node-users"],
        &["ZADD", "fleet:cluster:enroll-users", "1", "default"],
        &["ZADD", "fleet:cluster:enroll-users", "1", vu.as_str()],
        &["ZADD", "fleet:cluster:roster", "0", "squatter"],
        // A tombstone, a heartbeat in the future, the shared indexes and events.
        &["SET", tomb.as_str(), "admin"],
        &[
            "ZADD",
            "fleet:cluster:members",
            "99999999999999",
            a.id.as_str(),
        ],
        &["HSET", "fleet:cluster:names", "victim", a.id.as_str()],
        &["HSET", "fleet:cluster:ips", "192.0.2.3", a.id.as_str()],
        &[
            "XADD",
            "fleet:cluster:events",
            "MAXLEN",
            "0",
            "*",
            "kind",
            "left",
        ],
        &[
            "XADD",
            "fleet:cluster:events",
            "18446744073709551615-18446744073709551615",
            "a",
            "b",
        ],
        &["DEL", "fleet:cluster:events"],
        &["PERSIST", mine.as_str()],
        // Reading pending enrollments, listing keys, scripts, other databases, the server.
        &["GET", "fleet:cluster:enroll:0123"],
        &["SCAN", "0"],
        &["KEYS", "*"],
        &["SCRIPT", "FLUSH"],
        &["FUNCTION", "FLUSH"],
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=x\nredis.register_function('x', function() return 1 end)",
        ],
        &["EVAL", "return redis.call('FLUSHDB')", "0"],
        &["SELECT", "1"],
        &["FLUSHDB"],
        &["FLUSHALL"],
        &["CONFIG", "GET", "*"],
        &["ACL", "LIST"],
        &["ACL", "DELUSER", vu.as_str()],
        &["SET", "other:key", "x"],
    ] {
        refused(&mut m, who, cmd);
    }
    // Its own record it may write, even a heartbeat "in the future": never alive then.
    let r = m.call(&["PEXPIRE", &mine, "999999999"]).unwrap();
    assert!(r.starts_with(":1"), "{r}");
    let listed = primary.members().await.unwrap();
    let me = listed.iter().find(|x| x.node.id == a.id).unwrap();
    assert_eq!(
        me.state,
        MemberState::Expired,
        "a TTL in the future is not alive"
    );
    assert!(
        primary
            .live_holders(Some("mallory"), &[])
            .await
            .unwrap()
            .name
            .is_none(),
        "a forged heartbeat holds no name"
    );
    // Its own record claiming another's name and address changes nothing of theirs.
    let r = m
        .call(&[
            "HSET",
            &mine,
            "name",
            "victim",
            "ips",
            "192.0.2.3",
            "addresses",
            "192.0.2.3",
        ])
        .unwrap();
    assert!(r.starts_with(':'), "{r}");
    let r = m.call(&["PEXPIRE", &mine, "6000"]).unwrap();
    assert!(r.starts_with(":1"), "{r}");
    // A note far over the cap is dropped unread.
    let big = "x".repeat(1 << 20);
    let r = m
        .call(&["HSET", "fleet:cluster:self:mallory:events", "left", &big])
        .unwrap();
    assert!(r.starts_with(':'), "{r}");

    // The enrollment users of a used, a revoked and an expired package.
    let (used_t, used_u, used_pw) = pending(&primary, "used", 60_000).await;
    let (rev_t, rev_u, rev_pw) = pending(&primary, "revoked", 60_000).await;
    let (exp_t, exp_u, exp_pw) = pending(&primary, "expired", 60_000).await;
    let used = as_user(&redis, &used_u, &used_pw);
    assert!(used.take_enrollment(&used_t).await.unwrap().is_some());
    assert!(primary.revoke_enrollment(&rev_t).await.unwrap().is_some());
    redis
        .command(&["PEXPIRE", &format!("fleet:cluster:enroll:{exp_t}"), "1"])
        .unwrap();
    let fifty_mb = "e".repeat(50 << 20);
    for (t, u, pw) in [
        (&used_t, &used_u, &used_pw),
        (&rev_t, &rev_u, &rev_pw),
        (&exp_t, &exp_u, &exp_pw),
    ] {
        let (auth, mut e) = redis.connect_as(u, pw.expose()).unwrap();
        assert!(auth.starts_with("+OK"), "{auth}");
        let who = format!("the enrollment user {u}");
        for cmd in [
            &[
                "XADD",
                "fleet:cluster:events",
                "MAXLEN",
                "0",
                "*",
                "kind",
                "x",
            ][..],
            &[
                "XADD",
                "fleet:cluster:events",
                "18446744073709551615-18446744073709551615",
                "a",
                "b",
            ],
            &[
                "XADD",
                "fleet:cluster:events",
                "*",
                "kind",
                "enrollment_rejected",
                "reason",
                fifty_mb.as_str(),
            ],
            &["GET", &format!("fleet:cluster:refused:{t}")],
            &["GETDEL", &format!("fleet:cluster:enroll:{used_t}x")],
            &[
                "SET",
                "fleet:cluster:refused:0123456789abcdef0123456789abcdef",
                "x",
            ],
            &["SET", &format!("fleet:session:{sid}"), "{}"],
            &["ZADD", "fleet:cluster:enroll-users", "1", "default"],
            &["ZRANGE", "fleet:cluster:members", "0", "-1"],
            &["EVAL", "return 1", "0"],
            &["SCAN", "0"],
            &["SELECT", "1"],
            &["SCRIPT", "FLUSH"],
            &["FUNCTION", "FLUSH"],
            &["FLUSHDB"],
        ] {
            refused(&mut e, &who, cmd);
        }
    }
    // Its one write, a refusal note of its own, is checked before it becomes an event.
    let (_, mut e) = redis.connect_as(&used_u, used_pw.expose()).unwrap();
    let r = e
        .call(&[
            "SET",
            &format!("fleet:cluster:refused:{used_t}"),
            &"r".repeat(1 << 20),
        ])
        .unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    let rev = as_user(&redis, &rev_u, &rev_pw);
    rev.record_event(&fleet_server::cluster::Event {
        kind: fleet_server::cluster::EventKind::EnrollmentRejected,
        node_id: "machine-3\x1b[2J".into(),
        at_ms: 0,
        detail: [
            ("token_id".to_string(), "forged".to_string()),
            ("reason".to_string(), "revoked\r\nforged row".to_string()),
        ]
        .into(),
    })
    .await
    .unwrap();

    // The primary's next turn: the cluster is intact.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = beats.await.unwrap();
    assert!(
        !outcomes.is_empty()
            && outcomes
                .iter()
                .all(|o| matches!(o, Ok(Heartbeat::Alive { .. }))),
        "{outcomes:?}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    victim.heartbeat(&v).await.unwrap();
    attacker_node.heartbeat(&a).await.unwrap();
    primary.heartbeat(&p).await.unwrap();
    primary.housekeeping().await.unwrap();
    let listed = primary.members().await.unwrap();
    for n in [&p, &v] {
        let m = listed
            .iter()
            .find(|m| m.node.id == n.id)
            .expect("still listed");
        assert_eq!(m.state, MemberState::Active, "{m:?}");
    }
    let vm = listed.iter().find(|m| m.node.id == v.id).unwrap();
    assert_eq!(vm.node, v, "the victim's record is its own");
    let am = listed.iter().find(|m| m.node.id == a.id).unwrap();
    assert_eq!(
        am.node.name, "mallory",
        "a record cannot take another's name"
    );
    let holders = primary
        .live_holders(Some("victim"), &["192.0.2.3".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(holders.name.as_deref(), Some(v.id.as_str()));
    assert!(matches!(
        victim.heartbeat(&v).await.unwrap(),
        Heartbeat::Alive { .. }
    ));
    let events = primary.events(200).await.unwrap();
    for e in &events_before {
        assert!(events.contains(e), "event lost: {e:?}");
    }
    let rejections: Vec<_> = events
        .iter()
        .filter(|e| e.kind == fleet_server::cluster::EventKind::EnrollmentRejected)
        .collect();
    assert_eq!(
        rejections.len(),
        1,
        "only the well-formed note: {rejections:?}"
    );
    let r = rejections[0];
    assert_eq!(
        r.detail.get("token_id"),
        Some(&rev_t),
        "the token is the user's own"
    );
    assert_eq!(
        r.detail.get("reason").map(String::as_str),
        Some("revokedforged row")
    );
    assert!(r.node_id.chars().all(|c| !c.is_control()), "{r:?}");
    assert!(
        !events
            .iter()
            .any(|e| e.kind == fleet_server::cluster::EventKind::Left && e.node_id == a.id),
        "the oversized note was dropped"
    );
    let users_after = users(&redis);
    for u in ["default", vu.as_str(), au.as_str()] {
        assert!(users_after.contains(u), "user {u} lost: {users_after}");
    }
    assert!(users_before.contains(&vu));
}

/// Migration: a node user of the previous release (the broad rules) gets the new rules at the
/// primary's first housekeeping; removing a member the primary never registered a user for
/// deletes no user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_node_users_are_narrowed_and_phantoms_delete_no_user() {
    let redis = RedisServer::start_with(Some("priv-admin-pw"), &[]);
    let before = admin(&redis);
    let (user, pw) = before.create_node_user("old").await.unwrap();
    let r = redis
        .command(&[
            "ACL",
            "SETUSER",
            &user,
            "resetkeys",
            "~fleet:*",
            "&fleet:*",
            "+@all",
            "-@dangerous",
            "-@admin",
        ])
        .unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    let (_, mut c) = redis.connect_as(&user, pw.expose()).unwrap();
    assert!(
        c.call(&["SET", "fleet:probe", "1"])
            .unwrap()
            .starts_with("+OK")
    );
    // A restarted primary (a new process) narrows it.
    let primary = admin(&redis);
    primary.housekeeping().await.unwrap();
    let (auth, mut c) = redis.connect_as(&user, pw.expose()).unwrap();
    assert!(auth.starts_with("+OK"), "the password is kept: {auth}");
    refused(&mut c, "a migrated node user", &["SET", "fleet:probe", "2"]);
    let r = c.call(&["ZCARD", "fleet:cluster:members"]).unwrap();
    assert!(r.starts_with(':'), "it still reads the members: {r}");

    // Phantoms: an id whose name has no registered user, and the user `default` named in a
    // record, delete nothing.
    redis
        .command(&["ACL", "SETUSER", "outsider", "on", ">x", "~*", "+@all"])
        .unwrap();
    let phantom = node("outsider", "192.0.2.9");
    primary.register(&phantom).await.unwrap();
    assert!(primary.remove(&phantom.id, "admin").await.unwrap());
    assert!(!primary.remove("default-abcdef", "admin").await.unwrap());
    let u = users(&redis);
    for name in ["default", "outsider", user.as_str()] {
        assert!(u.contains(name), "{name} deleted: {u}");
    }
}

fn etcd_config(etcd: &fleet_tests::etcd::EtcdServer, user: &str, password: &str) -> Config {
    let text = format!(
        "cluster:\n  enabled: true\n  backend: etcd\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  etcd_endpoints: [\"{}\"]\n  etcd_username: {user}\n  etcd_password: \"{password}\"\n",
        etcd.endpoint()
    );
    Config::parse(&text, std::path::Path::new("e.yaml")).unwrap()
}

/// The same on etcd: a node's role writes only its own keys (and sessions, which are signed);
/// tombstones, the users registry, the count, the pruner's turn, the shared events and other
/// nodes' keys are refused, and the cluster is intact afterwards. A role of the earlier release
/// (the whole prefix) is narrowed by the primary's housekeeping. (`e2e/etcd_roles.rs`: names
/// that extend each other, node events, nodes of the earlier release.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_nodes_role_changes_only_its_own_keys() {
    use fleet_server::cluster::etcd::EtcdMembership;
    const ROOT: &str = "priv-etcd-root-pw";
    let etcd = fleet_tests::etcd::EtcdServer::start_with_auth(ROOT);
    let primary = EtcdMembership::new(&etcd_config(&etcd, "root", ROOT).cluster, TIMING).unwrap();
    let p = node("primary", "198.51.100.1");
    primary.register(&p).await.unwrap();
    let (vu, vpw) = primary.create_node_user("victim").await.unwrap();
    let victim =
        EtcdMembership::new(&etcd_config(&etcd, &vu, vpw.expose()).cluster, TIMING).unwrap();
    let v = node("victim", "198.51.100.3");
    victim.register(&v).await.unwrap();
    let (au, apw) = primary.create_node_user("mallory").await.unwrap();
    let attacker =
        EtcdMembership::new(&etcd_config(&etcd, &au, apw.expose()).cluster, TIMING).unwrap();
    let a = node("mallory", "198.51.100.4");
    attacker.register(&a).await.unwrap();
    assert!(matches!(
        attacker.heartbeat(&a).await.unwrap(),
        Heartbeat::Alive { .. }
    ));
    let events_before = primary.events(100).await.unwrap();

    let pw = apw.expose();
    for key in [
        format!("fleet:cluster/removed/{}", v.id),
        format!("fleet:cluster/members/{}", v.id),
        format!("fleet:cluster/alive/{}", v.id),
        format!("fleet:cluster/members/victim/{}", v.id),
        format!("fleet:cluster/alive/victim/{}", v.id),
        "fleet:cluster/node-events/victim/1".to_string(),
        "fleet:cluster/events/1".to_string(),
        "fleet:cluster/names/victim".to_string(),
        "fleet:cluster/users/mallory2".to_string(),
        "fleet:cluster/active".to_string(),
        "fleet:cluster/pruner".to_string(),
        "elsewhere".to_string(),
    ] {
        let denied = etcd.put_as(&au, pw, &key, "x").unwrap_err();
        assert!(denied.contains("permission denied"), "{key}: {denied}");
    }
    for prefix in [
        "fleet:cluster/members/",
        "fleet:cluster/users/",
        "fleet:cluster/",
        "fleet:",
    ] {
        let denied = etcd.delete_prefix_as(&au, pw, prefix).unwrap_err();
        assert!(denied.contains("permission denied"), "{prefix}: {denied}");
    }
    // It may not remove another node, nor prune it.
    assert!(attacker.remove(&v.id, "mallory").await.is_err());

    // Intact: both nodes alive, listed, events kept, users there.
    assert!(matches!(
        victim.heartbeat(&v).await.unwrap(),
        Heartbeat::Alive { .. }
    ));
    let listed = primary.members().await.unwrap();
    for n in [&p, &v, &a] {
        let m = listed.iter().find(|m| m.node.id == n.id).expect("listed");
        assert_eq!(m.state, MemberState::Active);
    }
    let events = primary.events(200).await.unwrap();
    for e in &events_before {
        assert!(events.contains(e), "event lost: {e:?}");
    }
    assert!(etcd.authenticate(&vu, vpw.expose()).is_ok());

    // Migration: the broad role of the previous release, narrowed by housekeeping.
    let (ou, opw) = primary.create_node_user("old").await.unwrap();
    etcd.grant_prefix_rw(&ou, "fleet:").unwrap();
    etcd.put_as(&ou, opw.expose(), "fleet:probe", "1").unwrap();
    let restarted = EtcdMembership::new(&etcd_config(&etcd, "root", ROOT).cluster, TIMING).unwrap();
    restarted.housekeeping().await.unwrap();
    let denied = etcd
        .put_as(&ou, opw.expose(), "fleet:probe", "2")
        .unwrap_err();
    assert!(denied.contains("permission denied"), "{denied}");
}

/// On a database other than 0, a node's user may select that one database and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_user_selects_its_database_only() {
    let redis = RedisServer::start_with(Some("priv-admin-pw"), &[]);
    let text = format!(
        "cluster:\n  enabled: true\n{}  redis_db: 3\n",
        redis.cluster_yaml()
    );
    let c = Config::parse(&text, std::path::Path::new("p.yaml")).unwrap();
    let primary = RedisMembership::new(&c.cluster, TIMING).unwrap();
    let (user, pw) = primary.create_node_user("node3").await.unwrap();
    let node_text = format!(
        "cluster:\n  enabled: true\n  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_db: 3\n  redis_username: {user}\n  redis_password: \"{}\"\n",
        redis.port,
        pw.expose()
    );
    let nc = Config::parse(&node_text, std::path::Path::new("n.yaml")).unwrap();
    let n3 = RedisMembership::new(&nc.cluster, TIMING).unwrap();
    let me = node("node3", "192.0.2.5");
    n3.register(&me).await.unwrap();
    assert!(
        primary
            .members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.node.id == me.id)
    );
    let (_, mut conn) = redis.connect_as(&user, pw.expose()).unwrap();
    assert!(conn.call(&["SELECT", "3"]).unwrap().starts_with("+OK"));
    for db in ["0", "1"] {
        refused(&mut conn, "a node's user", &["SELECT", db]);
    }
}

/// A node user made by a version whose rules had no ZSCAN (the member list reads `members` in
/// ZSCAN steps now) still lists the cluster, from the whole set in one reply, until the
/// primary's housekeeping rewrites its rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_user_without_zscan_still_lists() {
    let redis = RedisServer::start_with(Some("priv-admin-pw"), &[]);
    let primary = admin(&redis);
    let p = node("primary", "192.0.2.1");
    primary.register(&p).await.unwrap();
    let (user, pw) = primary.create_node_user("node2").await.unwrap();
    redis.command(&["ACL", "SETUSER", &user, "-zscan"]).unwrap();
    let n2 = as_user(&redis, &user, &pw);
    let me = node("node2", "192.0.2.2");
    n2.register(&me).await.unwrap();
    let seen = n2.members().await.unwrap();
    let ids: Vec<&str> = seen.iter().map(|m| m.node.id.as_str()).collect();
    assert!(
        ids.contains(&p.id.as_str()) && ids.contains(&me.id.as_str()),
        "{ids:?}"
    );
    assert!(seen.iter().all(|m| m.state == MemberState::Active));
}
