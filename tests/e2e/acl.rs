//! Redis ACL users made for packages: an enrollment user lives until its package expires, then
//! any node allowed to manage users deletes it in housekeeping; a node user survives a Redis
//! restart that lost everything, and is saved to the server's aclfile when it has one.

use std::time::Duration;

use fleet_server::cluster::redis::{NODE_USERS_FILE, RedisMembership};
use fleet_server::cluster::{Membership, Timing};
use fleet_server::config::{Config, Secret};
use fleet_tests::{Daemon, RedisServer};

fn membership(redis: &RedisServer) -> RedisMembership {
    let text = format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml());
    let c = Config::parse(&text, std::path::Path::new("acl.yaml")).unwrap();
    RedisMembership::new(
        &c.cluster,
        Timing {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn expired_enrollment_users_are_deleted_by_housekeeping() {
    let redis = RedisServer::start_with(Some("acl-admin-pw"), &[]);
    let m = membership(&redis);
    let now = m.server_now_ms().await.unwrap();
    let (soon, _) = m
        .create_enrollment_user("0123456789abcdef0123456789abcdef", now + 800)
        .await
        .unwrap();
    let (later, _) = m
        .create_enrollment_user("fedcba9876543210fedcba9876543210", now + 3_600_000)
        .await
        .unwrap();
    assert_eq!(soon, "fleet-enroll-0123456789abcdef0123456789abcdef");
    let exists = |user: &str| {
        let r = redis.command(&["ACL", "GETUSER", user]).unwrap();
        !r.starts_with("*-1") && !r.starts_with("$-1")
    };
    m.housekeeping().await.unwrap();
    assert!(exists(&soon) && exists(&later), "nothing expired yet");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    m.housekeeping().await.unwrap();
    assert!(!exists(&soon), "the expired package's user is gone");
    assert!(exists(&later), "a valid package's user stays");
    // Idempotent.
    m.housekeeping().await.unwrap();
}

/// A node's own user (made on the primary, as `package build` does) outlives a Redis restart
/// that lost everything: the primary re-creates it from the digest it kept, with no admin
/// action, and the node is healthy and listed again.
#[test]
fn node_users_come_back_after_redis_restarts_empty() {
    let mut redis = RedisServer::start_with(Some("acl-admin-pw"), &[]);
    let primary = Daemon::start("primary", &redis.cluster_yaml());
    primary.wait_health(200, Duration::from_secs(10));
    let state = primary.dir.path().join("state");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Made inside the runtime: the connection starts its tasks there.
    let (user, password) = rt
        .block_on(async {
            membership(&redis)
                .with_user_registry(&state)
                .create_node_user("node2")
                .await
        })
        .unwrap();
    let kept = std::fs::read_to_string(state.join(NODE_USERS_FILE)).unwrap();
    assert!(kept.contains(&user), "{kept}");
    assert!(
        !kept.contains(password.expose()),
        "the password itself was kept"
    );
    let node2 = Daemon::start(
        "node2",
        &format!(
            "  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_username: {user}\n  redis_password: \"{}\"\n",
            redis.port,
            password.expose()
        ),
    );
    node2.wait_health(200, Duration::from_secs(10));
    let id2 = node2.node_id();
    primary.wait_listed(&id2, Duration::from_secs(10));

    redis.restart();
    let restarted = std::time::Instant::now();
    let gone = redis.command(&["ACL", "GETUSER", &user]).unwrap();
    assert!(gone.starts_with("*-1") || gone.starts_with("$-1"), "{gone}");
    fleet_tests::wait_for(
        "the primary to re-create the node user",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let r = redis.command(&["ACL", "GETUSER", &user]).ok()?;
            (!r.starts_with("*-1") && !r.starts_with("$-1")).then_some(())
        },
    );
    let (auth, _) = redis.connect_as(&user, password.expose()).unwrap();
    assert!(
        auth.starts_with("+OK"),
        "the re-created user takes the password: {auth}"
    );
    // Listed in the empty server again: node2 registered anew, with its own credentials.
    primary.wait_listed(&id2, Duration::from_secs(20));
    node2.wait_health(200, Duration::from_secs(5));
    let took = restarted.elapsed();
    println!("node user re-created and node2 back after {took:?} (heartbeat interval 1 s)");
    // The primary sees the loss at its next heartbeat (1 s), re-registers, runs housekeeping at
    // once; node2 retries within one interval: well within 8 s.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        primary.log().contains("re-created 1 node user(s)"),
        "{}",
        primary.log()
    );
    let (auth, mut conn) = redis.connect_as(&user, password.expose()).unwrap();
    assert!(auth.starts_with("+OK"), "{auth}");
    assert!(conn.call(&["PING"]).unwrap().starts_with("+PONG"));
    // Still limited to the cluster's keys.
    let r = conn.call(&["GET", "other:key"]).unwrap();
    assert!(r.contains("NOPERM"), "{r}");
}

/// With an `aclfile`, a new node user is saved to it (`ACL SAVE`), and deleting the user saves
/// its removal.
#[tokio::test]
async fn node_users_are_saved_to_the_aclfile() {
    let dir = tempfile::tempdir().unwrap();
    let aclfile = dir.path().join("users.acl");
    std::fs::write(&aclfile, "").unwrap();
    let redis = RedisServer::start_with(None, &["--aclfile", aclfile.to_str().unwrap()]);
    let m = membership(&redis);
    let (user, password) = m.create_node_user("node5").await.unwrap();
    let saved = std::fs::read_to_string(&aclfile).unwrap();
    assert!(saved.contains(&format!("user {user} on")), "{saved}");
    assert!(
        !saved.contains(password.expose()),
        "Redis saves digests only"
    );
    m.delete_user(&user).await.unwrap();
    let saved = std::fs::read_to_string(&aclfile).unwrap();
    assert!(!saved.contains(&user), "{saved}");
}

/// The remover's credentials: configured on the server (so they survive its restarts, as a
/// managed service's do), everything but `@admin`.
const REMOVER: &str = "fleet-remover";
const REMOVER_PW: &str = "remover-pw-0123456789";
const REMOVER_USER: &[&str] = &[
    "--user",
    REMOVER,
    "on",
    ">remover-pw-0123456789",
    "~*",
    "&*",
    "+@all",
    "-@admin",
];

/// A primary, a remover on shared credentials without ACL rights (`REMOVER_USER`) and a node
/// on its own user (node3), all registered: what the removal tests share.
struct Removal {
    redis: RedisServer,
    primary: Daemon,
    /// The primary's state directory (its copy of the users' digests).
    state: std::path::PathBuf,
    user2: String,
    pw2: Secret,
    user3: String,
    pw3: Secret,
    remover: Daemon,
    removed: Daemon,
    id3: String,
}

impl Removal {
    fn start() -> Removal {
        // The remover: a node on shared credentials that may not manage users (like a managed
        // service's user: everything but @admin). A node with its own user may change only its own
        // records (issue 14), so it cannot remove others at all.
        let redis = RedisServer::start_with(Some("acl-admin-pw"), REMOVER_USER);
        let primary = Daemon::start("primary", &redis.cluster_yaml());
        primary.wait_health(200, Duration::from_secs(10));
        let state = primary.dir.path().join("state");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (user2, pw2) = (REMOVER.to_string(), Secret::new(REMOVER_PW));
        let (user3, pw3) = rt
            .block_on(async {
                membership(&redis)
                    .with_user_registry(&state)
                    .create_node_user("node3")
                    .await
            })
            .unwrap();
        let own = |user: &str, pw: &Secret| {
            format!(
                "  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_username: {user}\n  redis_password: \"{}\"\n",
                redis.port,
                pw.expose()
            )
        };
        let remover = Daemon::start("node2", &own(&user2, &pw2));
        let removed = Daemon::start("node3", &own(&user3, &pw3));
        remover.wait_health(200, Duration::from_secs(10));
        removed.wait_health(200, Duration::from_secs(10));
        let id3 = removed.node_id();
        primary.wait_listed(&id3, Duration::from_secs(10));
        Removal {
            redis,
            primary,
            state,
            user2,
            pw2,
            user3,
            pw3,
            remover,
            removed,
            id3,
        }
    }
}

/// A node removed through a node that may not manage users (its user lacks `ACL`): the
/// primary deletes the removed node's user before its next heartbeat and forgets its digest,
/// and a Redis restart that loses everything afterwards does not bring the user back, while
/// the remover registers again as usual.
#[test]
fn a_removed_nodes_user_is_never_re_created() {
    let Removal {
        mut redis,
        primary,
        state,
        user3,
        pw3,
        remover,
        removed,
        id3,
        ..
    } = Removal::start();
    // A node on its own user may not remove another: refused, saying why, nothing changed.
    let (s, body) = fleet_tests::http(
        "DELETE",
        removed.port,
        &format!("/api/fleet/cluster/nodes/{}", remover.node_id()),
        &[("X-API-Key", fleet_tests::TEST_API_KEY)],
    )
    .unwrap();
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("may change only its own records"), "{body}");
    // Nor build a package (which would need users and an enrollment record only the primary
    // may write): 403 saying why, and no user or record made.
    let users_before = redis.command(&["ACL", "USERS"]).unwrap();
    let mut api = fleet_tests::web::Client::new(removed.port);
    let r = api.request(
        "POST",
        "/api/fleet/cluster/packages",
        &[
            ("Content-Type", "application/json"),
            ("X-API-Key", fleet_tests::TEST_API_KEY),
        ],
        br#"{"node_name":"node9","format":"bundle","ethernet":"skip"}"#,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text()
            .contains("may change only its own records: build node packages"),
        "{}",
        r.text()
    );
    assert_eq!(
        redis.command(&["ACL", "USERS"]).unwrap(),
        users_before,
        "a user was made"
    );

    let (s, body) = fleet_tests::http(
        "DELETE",
        remover.port,
        &format!("/api/fleet/cluster/nodes/{id3}"),
        &[("X-API-Key", fleet_tests::TEST_API_KEY)],
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    let removed_at = std::time::Instant::now();
    assert!(
        remover
            .log()
            .contains("is deleted by a node that may manage users"),
        "the remover could delete the user itself: {}",
        remover.log()
    );
    let absent = |r: &str| r.starts_with("*-1") || r.starts_with("$-1");
    // The primary deals with it before its next heartbeat (1 s).
    fleet_tests::wait_for(
        "the primary to delete the removed node's user",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || absent(&redis.command(&["ACL", "GETUSER", &user3]).ok()?).then_some(()),
    );
    println!(
        "removed node's user deleted {:?} after the removal (1 s heartbeats)",
        removed_at.elapsed()
    );
    fleet_tests::wait_for(
        "the primary's local copy to forget the removed node's user",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let kept = std::fs::read_to_string(state.join(NODE_USERS_FILE)).ok()?;
            (!kept.contains(&user3)).then_some(())
        },
    );
    let r = redis
        .command(&["HEXISTS", "fleet:cluster:node-users", &user3])
        .unwrap();
    assert!(r.starts_with(":0"), "{r}");

    redis.restart();
    // The remover registers again; the removed node's user does not come back.
    primary.wait_listed(&remover.node_id(), Duration::from_secs(20));
    // Two more housekeeping chances (the primary runs it at once after the loss, and before
    // each heartbeat for revocations): still absent.
    std::thread::sleep(Duration::from_secs(3));
    let r = redis.command(&["ACL", "GETUSER", &user3]).unwrap();
    assert!(absent(&r), "the removed node's user came back: {r}");
    let (auth, _) = redis.connect_as(&user3, pw3.expose()).unwrap();
    assert!(!auth.starts_with("+OK"), "{auth}");
    assert!(
        !std::fs::read_to_string(state.join(NODE_USERS_FILE))
            .unwrap()
            .contains(&user3)
    );
    let log = primary.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("had lost"))
            .all(|l| !l.contains(&user3)),
        "{log}"
    );
}

/// The gap the revocation alone leaves: Redis loses everything after a removal made through a
/// node that may not manage users, before any node that may has seen it (here the primary is
/// stopped meanwhile). The primary then re-creates every user it kept, the removed node's too;
/// the remover, once back, records its removal again (revocation and tombstone) from its
/// state directory, and the primary deletes that user again before its next heartbeat.
#[test]
fn a_removal_the_backend_lost_is_recorded_again_by_the_remover() {
    use nix::sys::signal::Signal;
    let Removal {
        mut redis,
        primary,
        user2,
        pw2,
        user3,
        pw3,
        remover,
        removed: _removed,
        id3,
        ..
    } = Removal::start();
    // Indexed by the primary (its heartbeat adopts the nodes' own records once an interval):
    // removal works on the index.
    fleet_tests::wait_for(
        "the primary to index node3",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            redis
                .command(&["ZSCORE", "fleet:cluster:members", &id3])
                .ok()
                .filter(|r| !r.starts_with("$-1") && !r.starts_with("*-1"))
        },
    );

    primary.signal(Signal::SIGSTOP);
    let (s, body) = fleet_tests::http(
        "DELETE",
        remover.port,
        &format!("/api/fleet/cluster/nodes/{id3}"),
        &[("X-API-Key", fleet_tests::TEST_API_KEY)],
    )
    .unwrap();
    assert_eq!(s, 200, "{body}");
    let absent = |r: &str| r.starts_with("*-1") || r.starts_with("$-1");
    std::thread::sleep(Duration::from_millis(300));
    let r = redis.command(&["ACL", "GETUSER", &user3]).unwrap();
    assert!(!absent(&r), "nobody could delete the user yet: {r}");
    redis.restart();
    primary.signal(Signal::SIGCONT);
    let resumed = std::time::Instant::now();
    // The primary re-creates what it kept (the gap), then deletes it again once the remover has
    // recorded its removal anew.
    fleet_tests::wait_for(
        "the remover to record its removal again",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            remover
                .log()
                .contains("recorded again the removal of node")
                .then_some(())
        },
    );
    fleet_tests::wait_for(
        "the removed node's user to be gone again",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || absent(&redis.command(&["ACL", "GETUSER", &user3]).ok()?).then_some(()),
    );
    println!(
        "a removal lost with Redis's data: the removed node's user gone again {:?} after the primary resumed",
        resumed.elapsed()
    );
    // The gap was there: the primary had brought the user back from its copy meanwhile.
    let log = primary.log();
    assert!(
        log.lines()
            .any(|l| l.contains("had lost") && l.contains(&user3)),
        "{log}"
    );
    let tomb = redis
        .command(&["EXISTS", &format!("fleet:cluster:removed:{id3}")])
        .unwrap();
    assert!(tomb.starts_with(":1"), "the tombstone is back: {tomb}");
    primary.wait_listed(&remover.node_id(), Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let r = redis.command(&["ACL", "GETUSER", &user3]).unwrap();
    assert!(absent(&r), "the removed node's user came back: {r}");
    let (auth, _) = redis.connect_as(&user3, pw3.expose()).unwrap();
    assert!(!auth.starts_with("+OK"), "{auth}");
    let (auth, _) = redis.connect_as(&user2, pw2.expose()).unwrap();
    assert!(
        auth.starts_with("+OK"),
        "the remover's user is back: {auth}"
    );
}

/// Removing an old member whose name a newer node holds now (the old one expired, its record
/// not yet gone) leaves the newer node's user alone: the user goes only with the name's holder.
#[tokio::test]
async fn removing_an_expired_namesake_keeps_the_holders_user() {
    let redis = RedisServer::start_with(Some("acl-admin-pw"), &[]);
    let m = membership(&redis);
    let (user, password) = m.create_node_user("web-1").await.unwrap();
    // The old incarnation's record, and the name held by the new one (as registration writes).
    redis
        .command(&["HSET", "fleet:cluster:node:web-1-old111", "name", "web-1"])
        .unwrap();
    redis
        .command(&["HSET", "fleet:cluster:names", "web-1", "web-1-new222"])
        .unwrap();
    m.remove("web-1-old111", "admin").await.unwrap();
    let r = redis.command(&["ACL", "GETUSER", &user]).unwrap();
    assert!(
        !r.starts_with("*-1") && !r.starts_with("$-1"),
        "the holder's user was deleted: {r}"
    );
    let (auth, _) = redis.connect_as(&user, password.expose()).unwrap();
    assert!(auth.starts_with("+OK"), "{auth}");
    let r = redis
        .command(&["HEXISTS", "fleet:cluster:node-users-revoked", &user])
        .unwrap();
    assert!(r.starts_with(":0"), "revoked: {r}");
    // Removing the holder itself takes the user.
    redis
        .command(&["HSET", "fleet:cluster:node:web-1-new222", "name", "web-1"])
        .unwrap();
    m.remove("web-1-new222", "admin").await.unwrap();
    let r = redis.command(&["ACL", "GETUSER", &user]).unwrap();
    assert!(r.starts_with("*-1") || r.starts_with("$-1"), "{r}");
}

/// The build's door to users (`Membership::users()`): a node user and an enrollment user are
/// listed under the cluster's names, a missing node name or deleting gives what the build
/// expects, and the shared directory offers no users at all.
#[tokio::test]
async fn backend_users_create_list_and_delete_through_the_trait() {
    use fleet_server::cluster::UserGrant;
    let redis = RedisServer::start_with(Some("acl-admin-pw"), &[]);
    let m = membership(&redis);
    let users = m.users().expect("Redis offers users");
    let node = match users.create_node_user(Some("web-07")).await.unwrap() {
        UserGrant::Own { user, .. } => user,
        UserGrant::Shared(why) => panic!("no node user: {why}"),
    };
    assert_eq!(node, "fleet-node-web-07");
    let now = m.server_now_ms().await.unwrap();
    let token = "00112233445566778899aabbccddeeff";
    let enroll = match users.create_enrollment_user(token, now + 60_000).await {
        Ok(UserGrant::Own { user, .. }) => user,
        other => panic!("no enrollment user: {other:?}"),
    };
    assert_eq!(enroll, format!("fleet-enroll-{token}"));
    let listed = users.list_users().await.unwrap();
    assert!(
        listed.contains(&node) && listed.contains(&enroll),
        "{listed:?}"
    );
    assert!(!listed.iter().any(|u| u == "default"), "{listed:?}");
    match users.create_node_user(None).await.unwrap() {
        UserGrant::Shared(why) => assert!(why.starts_with("no node name"), "{why}"),
        UserGrant::Own { user, .. } => panic!("a user without a name: {user}"),
    }
    users.delete_node_user("web-07", &node).await.unwrap();
    users.delete_user(&enroll).await.unwrap();
    let listed = users.list_users().await.unwrap();
    assert!(
        !listed.contains(&node) && !listed.contains(&enroll),
        "{listed:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let storage = fleet_server::cluster::storage::StorageMembership::new(
        dir.path(),
        Timing {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        },
    )
    .unwrap();
    assert!(storage.users().is_none());
}
