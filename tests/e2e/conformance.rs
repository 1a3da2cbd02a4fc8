//! One membership conformance suite, run against every backend: the same cases, the same
//! expectations. Heartbeats are 1 s / 3 s to keep the expiry cases short. Besides membership:
//! the enrollment records (on the backends that keep them; etcd's refusal where not), and
//! where the times come from (the backend's own clock, read by the test beside the backend).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_server::cluster::EnrollmentRecord;
use fleet_server::cluster::{
    ClusterError, EventKind, Heartbeat, MemberState, Membership, NodeRecord,
};
use fleet_server::config::Config;
use fleet_tests::backends::{Fixture, etcd, node, redis, storage};
use fleet_tests::{Daemon, RedisServer, local_now_ms};

async fn active_ids(b: &dyn Membership) -> Vec<String> {
    b.members()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.state == MemberState::Active)
        .map(|m| m.node.id)
        .collect()
}

async fn heartbeat_until_alive(b: &dyn Membership, n: &NodeRecord) {
    for _ in 0..100 {
        match b.heartbeat(n).await {
            Ok(Heartbeat::Alive { .. }) => return,
            Ok(Heartbeat::NotMember) => {
                b.register(n).await.unwrap();
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{} never heartbeat again", n.id);
}

async fn join_list_and_fields(f: impl Fixture) {
    let b = f.open();
    let a = node("alpha");
    assert_eq!(b.register(&a).await.unwrap(), 1);
    let members = b.members().await.unwrap();
    assert_eq!(members.len(), 1);
    let m = &members[0];
    assert_eq!(m.node, a, "the record reads back as written");
    assert_eq!(m.state, MemberState::Active);
    assert!(m.age_ms < 1000, "age {}", m.age_ms);
    assert_eq!(b.active_count().await.unwrap(), 1);
    let events = b.events(10).await.unwrap();
    assert_eq!(events[0].kind, EventKind::Joined);
    assert_eq!(events[0].node_id, a.id);
    assert_eq!(
        events[0].detail.get("name").map(String::as_str),
        Some("alpha")
    );

    // Three nodes, listed sorted by name.
    let c = node("charlie");
    let bb = node("bravo");
    b.register(&c).await.unwrap();
    assert_eq!(b.register(&bb).await.unwrap(), 3);
    let names: Vec<String> = b
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node.name)
        .collect();
    assert_eq!(names, ["alpha", "bravo", "charlie"]);
    // Registering again is idempotent: no second `joined`.
    b.register(&a).await.unwrap();
    let joined = b
        .events(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::Joined && e.node_id == a.id)
        .count();
    assert_eq!(joined, 1);
}

async fn heartbeat_moves_the_clock(f: impl Fixture) {
    let b = f.open();
    let a = node("alpha");
    b.register(&a).await.unwrap();
    let first = b.members().await.unwrap()[0].last_heartbeat_ms;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        b.heartbeat(&a).await.unwrap(),
        Heartbeat::Alive { active: 1 }
    );
    let second = b.members().await.unwrap()[0].last_heartbeat_ms;
    assert!(second >= first + 100, "{first} → {second}");
}

async fn graceful_leave_is_immediate(f: impl Fixture) {
    let b = f.open();
    let (a, c) = (node("alpha"), node("charlie"));
    b.register(&a).await.unwrap();
    b.register(&c).await.unwrap();
    b.deregister(&a.id).await.unwrap();
    assert_eq!(active_ids(&*b).await, vec![c.id.clone()]);
    assert!(b.members().await.unwrap().iter().all(|m| m.node.id != a.id));
    let ev = &b.events(1).await.unwrap()[0];
    assert_eq!(
        (ev.kind, ev.node_id.as_str()),
        (EventKind::Left, a.id.as_str())
    );
    // Leaving twice is harmless.
    b.deregister(&a.id).await.unwrap();
    // The name is free again at once.
    b.register(&node("alpha")).await.unwrap();
}

async fn silent_nodes_expire(f: impl Fixture) {
    let b = f.open();
    let (dead, live) = (node("dead"), node("live"));
    b.register(&dead).await.unwrap();
    b.register(&live).await.unwrap();
    // `live` heartbeats every 500 ms; `dead` never again (kill -9).
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            b.heartbeat(&live).await.unwrap(),
            Heartbeat::Alive { .. }
        ));
        let members = b.members().await.unwrap();
        if members.iter().all(|m| m.node.id != dead.id) {
            break;
        }
    }
    assert_eq!(active_ids(&*b).await, vec![live.id.clone()]);
    assert!(
        b.members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.node.id != dead.id),
        "a heartbeat prunes the expired member"
    );
    let expired = b.events(20).await.unwrap();
    assert!(
        expired
            .iter()
            .any(|e| e.kind == EventKind::Expired && e.node_id == dead.id),
        "{expired:?}"
    );
    // The dead node's own heartbeat tells it to join again.
    assert_eq!(b.heartbeat(&dead).await.unwrap(), Heartbeat::NotMember);
    // Pruning again finds nothing: idempotent.
    assert!(b.prune().await.unwrap().is_empty());
}

async fn duplicate_live_name_is_refused_dead_name_reused(f: impl Fixture) {
    let b = f.open();
    let first = node("server-03");
    let second = node("server-03");
    assert_ne!(first.id, second.id);
    b.register(&first).await.unwrap();
    match b.register(&second).await {
        Err(ClusterError::NameTaken { name, holder }) => {
            assert_eq!(name, "server-03");
            assert_eq!(holder, first.id);
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert_eq!(active_ids(&*b).await, vec![first.id.clone()]);
    // `first` dies silently; once its heartbeat is older than the timeout, the name is free,
    // even before anyone prunes it.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    b.register(&second).await.unwrap();
    assert_eq!(active_ids(&*b).await, vec![second.id.clone()]);
    // And the old holder, coming back, is now the one refused.
    assert!(matches!(
        b.register(&first).await,
        Err(ClusterError::NameTaken { .. })
    ));
}

/// `package build --node-name … --ip …`: a name or an address a live member holds is refused;
/// once that member is dead, both may be taken again.
async fn build_check_refuses_live_names_and_ips(f: impl Fixture) {
    use fleet_server::app::build::check_available;
    use fleet_server::app::package::BuildError;
    let b = f.open();
    let holder = node("server-07");
    let ip: std::net::IpAddr = "192.0.2.10".parse().unwrap();
    let other: std::net::IpAddr = "192.0.2.11".parse().unwrap();
    b.register(&holder).await.unwrap();

    let err = check_available(&*b, Some("server-07"), &[other])
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::NameInUse { .. }), "{err:?}");
    assert!(err.is_bad_request());
    assert_eq!(
        err.to_string(),
        format!(
            "node name server-07 is already held by the live node {} (use another name)",
            holder.id
        )
    );
    let err = check_available(&*b, Some("server-08"), &[other, ip])
        .await
        .unwrap_err();
    assert!(err.is_bad_request());
    assert_eq!(
        err.to_string(),
        format!(
            "IP 192.0.2.10 is already used by the live node {}",
            holder.id
        )
    );
    check_available(&*b, Some("server-08"), &[other])
        .await
        .unwrap();
    check_available(&*b, None, &[]).await.unwrap();

    // The holder dies silently: once it is no longer active, its name and address are free.
    let mut freed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if check_available(&*b, Some("server-07"), &[ip]).await.is_ok() {
            freed = true;
            break;
        }
    }
    assert!(freed, "a dead member's name and address stay held");
    assert!(
        b.members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.state != MemberState::Active)
    );
}

async fn backend_outage_and_return(mut f: impl Fixture) {
    let b = f.open();
    let a = node("alpha");
    b.register(&a).await.unwrap();
    f.stop();
    let err = b.heartbeat(&a).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err}");
    f.start();
    // Back: a heartbeat either succeeds (data kept) or asks to join again (data lost);
    // either way the node is listed again within a bounded number of tries.
    heartbeat_until_alive(&*b, &a).await;
    assert_eq!(active_ids(&*b).await, vec![a.id.clone()]);
}

async fn data_loss_leads_to_reregistration(mut f: impl Fixture) {
    let b = f.open();
    let a = node("alpha");
    b.register(&a).await.unwrap();
    f.wipe();
    assert_eq!(b.heartbeat(&a).await.unwrap(), Heartbeat::NotMember);
    assert_eq!(b.register(&a).await.unwrap(), 1);
    assert_eq!(active_ids(&*b).await, vec![a.id.clone()]);
    let ev = &b.events(1).await.unwrap()[0];
    assert_eq!(ev.kind, EventKind::Joined);
}

async fn removed_node_is_told_and_kept_out(f: impl Fixture) {
    let b = f.open();
    let (a, c) = (node("alpha"), node("charlie"));
    b.register(&a).await.unwrap();
    b.register(&c).await.unwrap();
    assert!(b.remove(&c.id, "admin").await.unwrap());
    assert!(
        !b.remove(&c.id, "admin").await.unwrap(),
        "second removal finds nothing"
    );
    assert_eq!(active_ids(&*b).await, vec![a.id.clone()]);
    assert_eq!(b.heartbeat(&c).await.unwrap(), Heartbeat::Removed);
    assert!(matches!(
        b.register(&c).await,
        Err(ClusterError::Removed(_))
    ));
    let ev = b.events(5).await.unwrap();
    let removed = ev
        .iter()
        .find(|e| e.kind == EventKind::Removed)
        .expect("removed event");
    assert_eq!(removed.node_id, c.id);
    assert_eq!(removed.detail.get("by").map(String::as_str), Some("admin"));
    // Its name is free for a new machine.
    b.register(&node("charlie")).await.unwrap();
}

async fn custom_events_round_trip(f: impl Fixture) {
    let b = f.open();
    let ev = fleet_server::cluster::Event {
        kind: EventKind::PackageBuilt,
        node_id: "server-09".into(),
        at_ms: 0,
        detail: [("by".to_string(), "admin".to_string())].into(),
    };
    b.record_event(&ev).await.unwrap();
    let got = &b.events(1).await.unwrap()[0];
    assert_eq!(got.kind, EventKind::PackageBuilt);
    assert_eq!(got.detail.get("by").map(String::as_str), Some("admin"));
    assert!(
        got.at_ms > 1_600_000_000_000,
        "backend clock in ms: {}",
        got.at_ms
    );
}

/// Issue 14: the backend's clock, which package and enrollment expiries come from, is the
/// one its events carry (Redis `TIME`, the file server's time; etcd: the node's).
async fn backend_now_is_the_backends_clock(f: impl Fixture) {
    let b = f.open();
    let before = b.backend_now_ms().await.unwrap();
    assert!(before > 1_600_000_000_000, "ms since the epoch: {before}");
    let ev = fleet_server::cluster::Event {
        kind: EventKind::PackageBuilt,
        node_id: "n".into(),
        at_ms: 0,
        detail: Default::default(),
    };
    b.record_event(&ev).await.unwrap();
    let at = b.events(1).await.unwrap()[0].at_ms;
    let after = b.backend_now_ms().await.unwrap();
    assert!(
        before <= at + 1000 && at <= after + 1000,
        "event at {at} outside backend_now {before}..{after}"
    );
}

/// The pages of the member list, read with the cursor each returns, are the whole list in its
/// order; a member that leaves between pages is simply not on the later ones.
async fn member_pages_cover_the_list(f: impl Fixture) {
    let b = f.open();
    let nodes: Vec<NodeRecord> = [
        "golf", "alpha", "echo", "bravo", "foxtrot", "delta", "charlie",
    ]
    .iter()
    .map(|n| node(n))
    .collect();
    for n in &nodes {
        b.register(n).await.unwrap();
    }
    let all: Vec<String> = b
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node.id)
        .collect();
    assert_eq!(all.len(), 7);
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (page, next) = b.members_page(3, cursor.as_deref()).await.unwrap();
        assert!(page.len() <= 3);
        paged.extend(page.into_iter().map(|m| m.node.id));
        pages += 1;
        assert!(pages <= 5, "the pages never end");
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(paged, all, "pages in list order");
    assert_eq!(pages, 3);
    // A member that leaves is gone from the pages too.
    b.deregister(&nodes[1].id).await.unwrap();
    let (first, _) = b.members_page(3, None).await.unwrap();
    assert!(first.iter().all(|m| m.node.id != nodes[1].id));
    assert_eq!(first[0].node.name, "bravo");
}

/// A pending enrollment as a build writes it, expiring `ttl` from now.
fn pending(n: u32, name: &str, ttl: Duration) -> EnrollmentRecord {
    let now = local_now_ms();
    EnrollmentRecord {
        token_id: format!("{n:032x}"),
        node_name: name.into(),
        created_ms: now + u64::from(n),
        expires_ms: now + ttl.as_millis() as u64,
        built_by: "cli:conformance".into(),
        package_id: format!("package-{n}"),
        users: vec![format!("fleet-enroll-{n:032x}")],
        nonce: "00".repeat(12),
        ciphertext: "c0ffee".into(),
        claim: String::new(),
    }
}

/// Two nodes take the same record at the same moment: exactly one gets it.
async fn race_for(a: &Arc<dyn Membership>, b: &Arc<dyn Membership>, token: &str) -> [bool; 2] {
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let taker = |backend: Arc<dyn Membership>| {
        let (start, token) = (start.clone(), token.to_string());
        tokio::spawn(async move {
            start.wait().await;
            backend.take_enrollment(&token).await.unwrap()
        })
    };
    let (x, y) = (taker(a.clone()), taker(b.clone()));
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    for got in [&x, &y].into_iter().flatten() {
        assert_eq!(
            got.token_id, token,
            "the winner got the record it asked for"
        );
    }
    [x.is_some(), y.is_some()]
}

/// Enrollment records: put, list (oldest first, as written), take once (of two concurrent
/// takers exactly one wins, then it is gone), revoke, expiry. A backend that keeps none answers
/// every call with the same clear refusal.
async fn enrollments_are_taken_once_listed_revoked_and_expire(f: impl Fixture) {
    let b = f.open();
    assert_eq!(b.supports_enrollment(), f.keeps_enrollments());
    if !f.keeps_enrollments() {
        let rec = pending(1, "server-01", Duration::from_secs(60));
        let want = format!(
            "{} backend: this backend keeps no enrollment records (build with --no-enrollment)",
            b.kind().as_str()
        );
        let errors = [
            b.put_enrollment(&rec).await.unwrap_err(),
            b.take_enrollment(&rec.token_id).await.unwrap_err(),
            b.list_enrollments().await.unwrap_err(),
            b.revoke_enrollment(&rec.token_id).await.unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, ClusterError::Backend { .. }), "{err:?}");
            assert_eq!(err.to_string(), want);
        }
        return;
    }
    let minute = Duration::from_secs(60);
    let (first, second) = (
        pending(1, "server-01", minute),
        pending(2, "server-02", minute),
    );
    b.put_enrollment(&second).await.unwrap();
    b.put_enrollment(&first).await.unwrap();
    assert_eq!(
        b.list_enrollments().await.unwrap(),
        [first.clone(), second.clone()],
        "listed oldest first, as written"
    );

    // Another node's connection races this one for each of five records.
    let other = f.open();
    for n in 10..15 {
        let rec = pending(n, "server-10", minute);
        b.put_enrollment(&rec).await.unwrap();
        let won = race_for(&b, &other, &rec.token_id).await;
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "record {n}: exactly one taker wins: {won:?}"
        );
        assert_eq!(b.take_enrollment(&rec.token_id).await.unwrap(), None);
    }
    assert_eq!(
        b.list_enrollments().await.unwrap(),
        [first.clone(), second.clone()]
    );

    // Taken: returned whole, then gone for everyone.
    assert_eq!(
        b.take_enrollment(&first.token_id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(other.take_enrollment(&first.token_id).await.unwrap(), None);
    assert_eq!(
        b.list_enrollments().await.unwrap(),
        std::slice::from_ref(&second)
    );
    // Revoked: returned once, then nothing to revoke.
    assert_eq!(
        b.revoke_enrollment(&second.token_id).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(b.revoke_enrollment(&second.token_id).await.unwrap(), None);
    assert_eq!(b.list_enrollments().await.unwrap(), []);
    // Unknown and malformed ids find nothing.
    assert_eq!(b.take_enrollment(&"f".repeat(32)).await.unwrap(), None);
    assert_eq!(b.take_enrollment("../../names/alpha").await.unwrap(), None);

    // Expiry: listed until then, gone after, and no longer taken.
    let brief = pending(20, "server-20", Duration::from_millis(1200));
    b.put_enrollment(&brief).await.unwrap();
    assert_eq!(
        b.list_enrollments().await.unwrap(),
        std::slice::from_ref(&brief)
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(b.list_enrollments().await.unwrap(), []);
    assert_eq!(b.take_enrollment(&brief.token_id).await.unwrap(), None);
}

/// Where the times come from. Redis and storage: a member's last heartbeat, an event's time
/// and `backend_now_ms` agree (within 1 s) with the backend's own clock as the test reads it
/// beside the backend (Redis `TIME`; the mtime the share stamps on a file just written).
/// etcd shows clients no clock: a member's age is its lease's, in whole seconds of the TTL that
/// etcd counts down, growing while the node is silent and starting again at its heartbeat.
async fn times_come_from_the_backends_clock(f: impl Fixture) {
    let b = f.open();
    let a = node("alpha");
    b.register(&a).await.unwrap();
    if f.clock_ms().is_none() {
        let started = Instant::now();
        let mut ages = Vec::new();
        // Until the age shows a second (etcd rounds the remaining TTL to whole seconds), and
        // well before the 3 s lease runs out.
        while started.elapsed() < Duration::from_millis(2400) {
            let m = b.members().await.unwrap().remove(0);
            assert_eq!((m.state, m.age_known), (MemberState::Active, true));
            ages.push(m.age_ms);
            if m.age_ms >= 1000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ages.len() >= 3, "{ages:?}");
        assert!(
            ages.iter().all(|age| age % 1000 == 0),
            "ages are whole seconds of the lease's TTL: {ages:?}"
        );
        assert!(ages.windows(2).all(|w| w[0] <= w[1]), "{ages:?}");
        assert_eq!(ages[0], 0, "{ages:?}");
        assert!(
            *ages.last().unwrap() >= 1000,
            "the age follows the TTL: {ages:?}"
        );
        assert_eq!(
            b.heartbeat(&a).await.unwrap(),
            Heartbeat::Alive { active: 1 }
        );
        assert_eq!(
            b.members().await.unwrap()[0].age_ms,
            0,
            "renewed: age 0 again"
        );
        return;
    }
    let ev = fleet_server::cluster::Event {
        kind: EventKind::PackageBuilt,
        node_id: "server-09".into(),
        at_ms: 0,
        detail: Default::default(),
    };
    b.record_event(&ev).await.unwrap();
    let member = b.members().await.unwrap().remove(0);
    let events = b.events(2).await.unwrap();
    let backend_now = b.backend_now_ms().await.unwrap();
    let reference = f.clock_ms().unwrap();
    for (what, ms) in [
        ("the last heartbeat", member.last_heartbeat_ms),
        ("the recorded event", events[0].at_ms),
        ("the joined event", events[1].at_ms),
        ("backend_now_ms", backend_now),
    ] {
        assert!(
            ms.abs_diff(reference) <= 1000,
            "{what} at {ms} is not the backend's clock {reference}"
        );
    }
    assert!(member.age_ms < 1000, "age {}", member.age_ms);
}

/// A node whose own clock is an hour ahead (libfaketime) joins through Redis: its heartbeat
/// and its `joined` event carry the Redis server's time, not the node's. Proof that the node's
/// clock was wrong: the record's `started_at`, which is the node's own clock.
#[test]
fn redis_times_ignore_a_node_clock_an_hour_ahead() {
    const HOUR_MS: u64 = 3_600_000;
    let redis = RedisServer::start_with(Some("clock-pw"), &[]);
    let before = redis.time_ms();
    assert!(
        before.abs_diff(local_now_ms()) < 1000,
        "this machine and its redis-server share a clock"
    );
    let node = Daemon::start_with_clock_offset("skewed", &redis.cluster_yaml(), 3600);
    node.wait_health(200, Duration::from_secs(20));
    let id = node.node_id();
    // A few heartbeats (every 1 s).
    std::thread::sleep(Duration::from_millis(2500));

    let config = Config::parse(
        &format!("cluster:\n  enabled: true\n{}", redis.cluster_yaml()),
        std::path::Path::new("reader.yaml"),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The Redis client's connection task needs the runtime from the start.
    let _in_runtime = rt.enter();
    let reader = fleet_server::cluster::open(&config).unwrap();
    let members = rt.block_on(reader.members()).unwrap();
    let events = rt.block_on(reader.events(20)).unwrap();
    let now = redis.time_ms();
    let m = members
        .iter()
        .find(|m| m.node.id == id)
        .unwrap_or_else(|| panic!("{id} not listed: {members:?}"));
    assert!(
        m.node.started_at > now + HOUR_MS - 60_000,
        "the node's clock is an hour ahead: started_at {} vs {now}",
        m.node.started_at
    );
    assert_eq!(m.state, MemberState::Active);
    assert!(
        now.saturating_sub(m.last_heartbeat_ms) <= 2000 && m.last_heartbeat_ms <= now,
        "the heartbeat at {} is Redis's time {now}, not the node's",
        m.last_heartbeat_ms
    );
    let joined = events
        .iter()
        .find(|e| e.kind == EventKind::Joined && e.node_id == id)
        .unwrap_or_else(|| panic!("no joined event for {id}: {events:?}"));
    assert!(
        (before..=now).contains(&joined.at_ms),
        "joined at {} is outside Redis's {before}..{now}",
        joined.at_ms
    );
    // The node's own view: ages on Redis's clock, so its own heartbeat is fresh.
    let (status, body) = node
        .api_get("/api/fleet/cluster/nodes", Some(fleet_tests::TEST_API_KEY))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let own = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    let last = own["last_heartbeat_ms"].as_u64().unwrap_or_default();
    assert!(
        last <= redis.time_ms() && last + 3000 >= now,
        "the node reports its heartbeat at {last}, Redis's time {now}: {own}"
    );
}

/// A package built on a primary whose clock is an hour ahead: its enrollment record lives as
/// long as `--expires` says, on Redis's clock (the one its expiry and its enrollment user's are
/// counted on), whatever the builder's clock says.
#[test]
fn redis_enrollment_lifetime_ignores_a_builder_clock_an_hour_ahead() {
    let redis = RedisServer::start_with(Some("clock-pw"), &[]);
    let shared = tempfile::tempdir().unwrap();
    let template = fleet_tests::web::node_template(shared.path());
    let config = shared.path().join("primary.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  state_dir: {}\ncluster:\n  enabled: true\n{}",
            shared.path().join("state").display(),
            redis.cluster_yaml()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(fleet_tests::fleet_server_bin());
    fleet_tests::with_clock_offset(&mut cmd, 3600)
        .args(["package", "build", "--format", "bundle", "--expires", "1d"])
        .args(["--node-name", "server-05", "--allow-foreign-binaries"])
        .arg("--config")
        .arg(&config)
        .arg("--template-dir")
        .arg(&template)
        .arg("--output")
        .arg(shared.path().join("server-05.tar.gz"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = redis.command(&["KEYS", "fleet:cluster:enroll:*"]).unwrap();
    let key = keys
        .lines()
        .find(|l| l.starts_with("fleet:cluster:enroll:"))
        .unwrap_or_else(|| panic!("no enrollment record: {keys:?}"))
        .to_string();
    let pttl: u64 = redis
        .command(&["PTTL", &key])
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    let day_ms = 24 * 3_600_000;
    assert!(
        pttl.abs_diff(day_ms) < 120_000,
        "the record lives {pttl} ms, not the day --expires asked for"
    );
    // Its enrollment user is remembered until the same instant, on Redis's clock.
    let users = redis
        .command(&[
            "ZRANGE",
            "fleet:cluster:enroll-users",
            "0",
            "-1",
            "WITHSCORES",
        ])
        .unwrap();
    let scores: Vec<u64> = users
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let until = redis.time_ms() + day_ms;
    assert!(
        scores.len() == 1 && scores[0].abs_diff(until) < 120_000,
        "the enrollment user is kept until {scores:?}, not Redis's now + 1 day ({until}): {users:?}"
    );
}

/// A record that fails validation (written by a node that may write what it likes) is listed
/// but holds neither its name nor its addresses for the build's checks; a valid one does.
async fn invalid_records_hold_no_name_or_address(f: impl Fixture) {
    use fleet_server::app::build::check_available;
    let b = f.open();
    let ip: std::net::IpAddr = "192.0.2.20".parse().unwrap();
    let mut forged = node("server-21");
    forged.hostname = "x\x1b[2Jcleared".into();
    forged.addresses = vec![ip.to_string()];
    b.register(&forged).await.unwrap();
    heartbeat_until_alive(&*b, &forged).await;
    assert!(active_ids(&*b).await.contains(&forged.id), "listed");
    let holders = b.live_holders(Some("server-21"), &[ip]).await.unwrap();
    assert_eq!(holders, fleet_server::cluster::Holders::default());
    check_available(&*b, Some("server-21"), &[ip])
        .await
        .unwrap();
    // The same record made valid holds both.
    b.deregister(&forged.id).await.unwrap();
    let mut valid = node("server-21");
    valid.addresses = vec![ip.to_string()];
    b.register(&valid).await.unwrap();
    heartbeat_until_alive(&*b, &valid).await;
    let holders = b.live_holders(Some("server-21"), &[ip]).await.unwrap();
    assert_eq!(holders.name.as_deref(), Some(valid.id.as_str()));
    assert_eq!(holders.ip, Some((ip, valid.id.clone())));
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::redis()).await;
                }
            )*
        }
        mod storage_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::storage()).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::etcd()).await;
                }
            )*
        }
    };
}

conformance!(
    join_list_and_fields,
    heartbeat_moves_the_clock,
    graceful_leave_is_immediate,
    silent_nodes_expire,
    duplicate_live_name_is_refused_dead_name_reused,
    backend_outage_and_return,
    data_loss_leads_to_reregistration,
    removed_node_is_told_and_kept_out,
    custom_events_round_trip,
    build_check_refuses_live_names_and_ips,
    member_pages_cover_the_list,
    backend_now_is_the_backends_clock,
    enrollments_are_taken_once_listed_revoked_and_expire,
    times_come_from_the_backends_clock,
    invalid_records_hold_no_name_or_address,
);

#[tokio::test]
async fn wrong_redis_password_is_an_auth_error() {
    let server = RedisServer::start_with(Some("right-password"), &[]);
    let text = format!(
        "cluster:\n  enabled: true\n  backend: redis\n  redis_host: 127.0.0.1\n  redis_port: {}\n  redis_password: wrong-password\n",
        server.port
    );
    let config = Config::parse(&text, std::path::Path::new("t.yaml")).unwrap();
    let b = fleet_server::cluster::open(&config).unwrap();
    let err = b.register(&node("alpha")).await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
}

/// Redis keeps indexes beside the members (names, addresses, list order): leaving, removal and
/// expiry take a member out of each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_indexes_follow_the_members() {
    let f = redis();
    let b = f.open();
    let (a, c, d) = (node("alpha"), node("charlie"), node("delta"));
    for n in [&a, &c, &d] {
        b.register(n).await.unwrap();
    }
    let count = |key: &str, cmd: &str| -> usize {
        f.server
            .command(&[cmd, &format!("fleet:cluster:{key}")])
            .unwrap()
            .trim()
            .trim_start_matches(":")
            .parse()
            .unwrap()
    };
    assert_eq!(count("order", "ZCARD"), 3);
    assert_eq!(
        count("ips", "HLEN"),
        1,
        "all three share 192.0.2.10: the last one holds it"
    );
    b.deregister(&d.id).await.unwrap();
    assert_eq!(count("order", "ZCARD"), 2);
    assert_eq!(count("ips", "HLEN"), 0, "the holder of the address left");
    b.remove(&c.id, "admin").await.unwrap();
    assert_eq!(count("order", "ZCARD"), 1);
    // alpha expires and a later heartbeat's prune takes it out of the order too.
    let e = node("echo");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    b.register(&e).await.unwrap();
    b.heartbeat(&e).await.unwrap();
    assert_eq!(count("order", "ZCARD"), 1, "only echo is left");
    assert_eq!(count("ips", "HLEN"), 1);
}

/// A member that a version before the indexes registered (its record without `ips`, not in
/// `cluster:order` nor `cluster:ips`) is missing from the pages and the address check until
/// the index backfill (housekeeping) adds it; a member that registered since keeps its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backfill_indexes_older_members() {
    let f = redis();
    let b = f.open();
    let fresh = node("bravo");
    b.register(&fresh).await.unwrap();
    // Written as the older registration script did: score, record, name; no index entries.
    let old = node("alpha");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let nkey = format!("fleet:cluster:node:{}", old.id);
    let cmd = |args: &[&str]| f.server.command(args).unwrap();
    cmd(&["ZADD", "fleet:cluster:members", &now, &old.id]);
    cmd(&[
        "HSET",
        &nkey,
        "id",
        &old.id,
        "name",
        "alpha",
        "hostname",
        "alpha.test",
        "addresses",
        "198.51.100.7,2001:DB8:0:0::7,192.0.2.10",
        "version",
        "0.0.9",
        "os",
        "linux",
        "started_at",
        "1",
        "url",
        "http://198.51.100.7:8768",
    ]);
    cmd(&["PEXPIRE", &nkey, "60000"]);
    cmd(&["HSET", "fleet:cluster:names", "alpha", &old.id]);
    let paged = |b: std::sync::Arc<dyn Membership>| async move {
        b.members_page(10, None)
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|m| m.node.name)
            .collect::<Vec<_>>()
    };
    let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let v6: std::net::IpAddr = "2001:db8::7".parse().unwrap();
    assert_eq!(paged(b.clone()).await, ["bravo"], "not indexed yet");
    assert!(b.live_holders(None, &[ip]).await.unwrap().ip.is_none());
    b.housekeeping().await.unwrap();
    assert_eq!(paged(b.clone()).await, ["alpha", "bravo"]);
    let holders = b.live_holders(None, &[v6]).await.unwrap();
    assert_eq!(
        holders.ip,
        Some((v6, old.id.clone())),
        "canonical IPv6 form"
    );
    assert_eq!(
        b.live_holders(None, &[ip]).await.unwrap().ip,
        Some((ip, old.id.clone()))
    );
    // alpha is listed as it was written.
    let listed = b.members().await.unwrap();
    let alpha = listed.iter().find(|m| m.node.id == old.id).unwrap();
    assert_eq!(alpha.state, MemberState::Active);
    assert_eq!(alpha.node.version, "0.0.9");
    assert_eq!(
        f.server
            .command(&["HGET", "fleet:cluster:ips", "192.0.2.10"])
            .unwrap()
            .lines()
            .last()
            .unwrap_or_default(),
        fresh.id,
        "an address held by a member that registered since stays its own"
    );
    // Leaving takes the backfilled entries out like any other member's.
    b.deregister(&old.id).await.unwrap();
    assert_eq!(paged(b.clone()).await, ["bravo"]);
    assert!(b.live_holders(None, &[ip]).await.unwrap().ip.is_none());
}

/// Redis reads a large member list in steps (ZSCAN and the records, 250 at a time) and builds it
/// on a blocking thread: every member once, sorted by name then id, each judged against the
/// same instant (one whose heartbeat is older than the timeout is listed as expired), and the
/// same members as the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_large_list_is_whole_sorted_and_judged_at_one_instant() {
    const N: usize = 2_600;
    let f = redis();
    let b = f.open();
    let nodes: Vec<NodeRecord> = (0..N)
        .map(|i| node(&format!("big-{:04}", (i * 7919) % N)))
        .collect();
    for chunk in nodes.chunks(200) {
        let mut tasks = tokio::task::JoinSet::new();
        for n in chunk {
            let (b, n) = (b.clone(), n.clone());
            tasks.spawn(async move { b.register(&n).await.unwrap() });
        }
        while tasks.join_next().await.is_some() {}
    }
    // Every one heartbeats now (registering took a while; the timeout is 3 s), then two are
    // made 10 s silent.
    let refresh = "local t = redis.call('TIME') \
        local now = t[1] * 1000 + math.floor(t[2] / 1000) \
        for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do \
          redis.call('ZADD', KEYS[1], now, id) \
          redis.call('PEXPIRE', 'fleet:cluster:node:' .. id, 60000) \
        end";
    f.server
        .command(&["EVAL", refresh, "1", "fleet:cluster:members"])
        .unwrap();
    let stale = f.server.time_ms() - 10_000;
    for n in &nodes[..2] {
        f.server
            .command(&["ZADD", "fleet:cluster:members", &stale.to_string(), &n.id])
            .unwrap();
    }
    let all = b.members().await.unwrap();
    assert_eq!(all.len(), N, "every member once");
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|m| (m.node.name.clone(), m.node.id.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "sorted by name, then id, without duplicates");
    for m in &all {
        let expired = nodes[..2].iter().any(|n| n.id == m.node.id);
        let want = if expired {
            MemberState::Expired
        } else {
            MemberState::Active
        };
        assert_eq!(m.state, want, "{}", m.node.id);
        assert_eq!(
            m.node.hostname,
            format!("{}.test", m.node.name),
            "its record"
        );
    }
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let (page, next) = b.members_page(1000, cursor.as_deref()).await.unwrap();
        paged.extend(page.into_iter().map(|m| m.node.id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let ids: Vec<String> = all.into_iter().map(|m| m.node.id).collect();
    assert_eq!(
        paged, ids,
        "the pages hold the same members in the same order"
    );
}
