//! Issue 14 on etcd, played as an attacker with real per-node etcd users: node `a` against node
//! `a-b` (whose keys the earlier `alive/a-` prefix grants covered), node events that go through
//! the primary's checks, and a node of the earlier release (its key forms and role) across the
//! primary's narrowing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_server::cluster::etcd::EtcdMembership;
use fleet_server::cluster::{
    Event, EventKind, Heartbeat, MemberState, Membership, NodeRecord, Timing,
};
use fleet_server::config::Config;
use fleet_tests::etcd::{EtcdServer, b64, prefix_end};

const ROOT: &str = "roles-etcd-root-pw";
const TIMING: Timing = Timing {
    interval: Duration::from_secs(1),
    timeout: Duration::from_secs(3),
};

fn membership(etcd: &EtcdServer, user: &str, password: &str) -> Arc<EtcdMembership> {
    let text = format!(
        "cluster:\n  enabled: true\n  backend: etcd\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n  etcd_endpoints: [\"{}\"]\n  etcd_username: {user}\n  etcd_password: \"{password}\"\n",
        etcd.endpoint()
    );
    let c = Config::parse(&text, std::path::Path::new("e.yaml")).unwrap();
    Arc::new(EtcdMembership::new(&c.cluster, TIMING).unwrap())
}

/// Heartbeats of nodes, once a second as the daemon's loop runs them, until stopped.
struct Beats {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, Heartbeat)>>,
}

fn beat(nodes: &[(&Arc<EtcdMembership>, &NodeRecord)]) -> Beats {
    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Vec<(Arc<EtcdMembership>, NodeRecord)> = nodes
        .iter()
        .map(|(m, n)| (Arc::clone(m), (*n).clone()))
        .collect();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut outcomes = Vec::new();
            for _ in 0..300 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for (m, n) in &nodes {
                    outcomes.push((n.id.clone(), m.heartbeat(n).await.unwrap()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            outcomes
        }
    });
    Beats { stop, task }
}

impl Beats {
    /// Stops them; every heartbeat found its node alive.
    async fn all_alive(self) {
        self.stop.store(true, Ordering::Relaxed);
        let outcomes = self.task.await.unwrap();
        assert!(!outcomes.is_empty());
        for (id, o) in &outcomes {
            assert!(matches!(o, Heartbeat::Alive { .. }), "{id}: {o:?}");
        }
    }
}

/// Writes every `(key, value)` in one transaction as `user`.
fn put_all_as(etcd: &EtcdServer, user: &str, password: &str, kvs: &[(String, String)]) {
    let ops: Vec<serde_json::Value> = kvs
        .iter()
        .map(|(k, v)| {
            serde_json::json!({"request_put": {"key": b64(k.as_bytes()), "value": b64(v.as_bytes())}})
        })
        .collect();
    etcd.call_as(
        Some((user, password)),
        "/v3/kv/txn",
        serde_json::json!({"success": ops}),
    )
    .unwrap();
}

fn node(name: &str, ip: &str) -> NodeRecord {
    fleet_tests::backends::node_at(name, ip)
}

fn denied(r: Result<(), String>, what: &str) {
    let e = r.expect_err(&format!("{what} was allowed"));
    assert!(e.contains("permission denied"), "{what}: {e}");
}

/// The keys under `prefix` (as root).
fn keys_under(etcd: &EtcdServer, prefix: &str) -> Vec<String> {
    etcd.entries(prefix).into_iter().map(|(k, _)| k).collect()
}

/// Node `a`'s credential against node `a-b`: every write or delete of `a-b`'s alive, members,
/// names and node-events keys (either key form) is refused, and so is the shared `events/`;
/// `a-b` stays active with its own record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_a_cannot_touch_the_keys_of_node_a_b() {
    let etcd = EtcdServer::start_with_auth(ROOT);
    let primary = membership(&etcd, "root", ROOT);
    let p = node("primary", "198.51.100.1");
    primary.register(&p).await.unwrap();
    let (au, apw) = primary.create_node_user("a").await.unwrap();
    let (bu, bpw) = primary.create_node_user("a-b").await.unwrap();
    let a = membership(&etcd, &au, apw.expose());
    let b = membership(&etcd, &bu, bpw.expose());
    let (na, nb) = (node("a", "198.51.100.2"), node("a-b", "198.51.100.3"));
    a.register(&na).await.unwrap();
    b.register(&nb).await.unwrap();
    let beats = beat(&[(&primary, &p), (&a, &na), (&b, &nb)]);
    let alive_b = format!("fleet:cluster/alive/a-b/{}", nb.id);
    let member_b = format!("fleet:cluster/members/a-b/{}", nb.id);
    assert!(keys_under(&etcd, "fleet:cluster/alive/").contains(&alive_b));
    assert!(keys_under(&etcd, "fleet:cluster/members/").contains(&member_b));

    let pw = apw.expose();
    for key in [
        alive_b.clone(),
        member_b.clone(),
        "fleet:cluster/names/a-b".to_string(),
        "fleet:cluster/node-events/a-b/000000000000001-00000000".to_string(),
        // The earlier release's forms: `a-b`'s id starts with `a-`.
        format!("fleet:cluster/alive/{}", nb.id),
        format!("fleet:cluster/members/{}", nb.id),
        "fleet:cluster/events/000000000000001-00000000".to_string(),
    ] {
        denied(etcd.put_as(&au, pw, &key, "x"), &format!("a writing {key}"));
        denied(etcd.delete_as(&au, pw, &key), &format!("a deleting {key}"));
    }
    for prefix in [
        "fleet:cluster/alive/a-",
        "fleet:cluster/members/a-",
        "fleet:cluster/node-events/a-",
        "fleet:cluster/alive/",
        "fleet:cluster/events/",
        "fleet:cluster/names/a",
    ] {
        denied(
            etcd.delete_prefix_as(&au, pw, prefix),
            &format!("a deleting under {prefix}"),
        );
    }
    // Its own keys it may write (the refusals above are not a broken credential).
    etcd.put_as(&au, pw, "fleet:cluster/node-events/a/x", "x")
        .unwrap();
    etcd.delete_as(&au, pw, "fleet:cluster/node-events/a/x")
        .unwrap();
    assert!(a.remove(&nb.id, "a").await.is_err(), "a removed a-b");

    // `a-b` is intact: alive throughout, listed with its own record, holding its name.
    beats.all_alive().await;
    let listed = primary.members().await.unwrap();
    let mb = listed.iter().find(|m| m.node.id == nb.id).expect("listed");
    assert_eq!(mb.state, MemberState::Active);
    assert_eq!(mb.node, nb);
    let holders = primary.live_holders(Some("a-b"), &[]).await.unwrap();
    assert_eq!(holders.name.as_deref(), Some(nb.id.as_str()));
    assert!(keys_under(&etcd, "fleet:cluster/alive/").contains(&alive_b));
}

/// How long until `done` holds (the primary's heartbeats, in `beat`, take the pruner's turns),
/// at most `limit`.
async fn until<F>(primary: &EtcdMembership, limit: Duration, done: F) -> Duration
where
    F: AsyncFn(&EtcdMembership) -> bool,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if done(primary).await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not done within {limit:?}");
}

fn has(events: &[Event], kind: EventKind, node_id: &str) -> bool {
    events
        .iter()
        .any(|e| e.kind == kind && e.node_id == node_id)
}

/// A node's own user writes no shared event: its join and leave go to `node-events/<name>/`
/// and reach `events/` at the primary's pruner turn, checked. Forged events (about another
/// node, of a kind a node may not report, unreadable), an oversized one and a flood are not
/// forwarded, their keys are deleted, and the events already there stay intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_events_reach_the_stream_only_through_the_primarys_checks() {
    let etcd = EtcdServer::start_with_auth(ROOT);
    let primary = membership(&etcd, "root", ROOT);
    let p = node("primary", "198.51.100.1");
    primary.register(&p).await.unwrap();
    let (au, apw) = primary.create_node_user("a").await.unwrap();
    let (bu, bpw) = primary.create_node_user("a-b").await.unwrap();
    let a = membership(&etcd, &au, apw.expose());
    let b = membership(&etcd, &bu, bpw.expose());
    let (na, nb) = (node("a", "198.51.100.2"), node("a-b", "198.51.100.3"));
    a.register(&na).await.unwrap();
    b.register(&nb).await.unwrap();
    assert_eq!(
        keys_under(&etcd, "fleet:cluster/node-events/").len(),
        2,
        "each join waits in its node's own prefix"
    );
    let beats = beat(&[(&primary, &p), (&a, &na), (&b, &nb)]);
    let latency = until(&primary, Duration::from_secs(20), async |m| {
        let ev = m.events(50).await.unwrap();
        has(&ev, EventKind::Joined, &na.id) && has(&ev, EventKind::Joined, &nb.id)
    })
    .await;
    eprintln!("a node's own `joined` reached the events in {latency:?}");
    assert!(keys_under(&etcd, "fleet:cluster/node-events/").is_empty());
    let joined = primary.events(50).await.unwrap();
    let j = joined
        .iter()
        .find(|e| e.kind == EventKind::Joined && e.node_id == na.id)
        .unwrap();
    assert_eq!(j.detail.get("name").map(String::as_str), Some("a"));
    let events_before = joined;

    // The shared stream is out of reach.
    let pw = apw.expose();
    let some_event = keys_under(&etcd, "fleet:cluster/events/").pop().unwrap();
    denied(
        etcd.put_as(&au, pw, &some_event, "{}"),
        "rewriting an event",
    );
    denied(etcd.delete_as(&au, pw, &some_event), "deleting an event");
    denied(
        etcd.delete_prefix_as(&au, pw, "fleet:cluster/events/"),
        "deleting the events",
    );
    // What it may leave in its own prefix is checked by the primary (each batch written in
    // one transaction, so that one pruner turn sees it whole).
    let forged = |kind: EventKind, id: &str| {
        serde_json::to_string(&Event::new(kind, id).with("name", "a-b")).unwrap()
    };
    let own = |n: u32| format!("fleet:cluster/node-events/a/000000000000{n:03}-forged");
    let mut kvs: Vec<(String, String)> = [
        forged(EventKind::Left, &nb.id),
        forged(EventKind::Joined, "b-abc123"),
        forged(EventKind::Removed, &na.id),
        forged(EventKind::Removed, &nb.id),
        forged(EventKind::PackageBuilt, "a"),
        "not json".to_string(),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, v)| (own(i as u32), v))
    .collect();
    kvs.push(("fleet:cluster/node-events/a/x/y".into(), "{}".into()));
    put_all_as(&etcd, &au, pw, &kvs);
    assert!(
        a.record_event(&Event::new(EventKind::Removed, &nb.id))
            .await
            .is_err(),
        "the node's own backend refuses to report about another"
    );
    primary.prune().await.unwrap();
    assert!(keys_under(&etcd, "fleet:cluster/node-events/").is_empty());
    let after = primary.events(100).await.unwrap();
    assert_eq!(after, events_before, "nothing forwarded");
    // Oversized: dropped (and the node's prefix emptied).
    let mut big = Event::new(EventKind::Left, &na.id);
    big.detail.insert("pad".into(), "x".repeat(5000));
    put_all_as(
        &etcd,
        &au,
        pw,
        &[
            (own(100), serde_json::to_string(&big).unwrap()),
            (own(101), forged(EventKind::Left, &na.id)),
        ],
    );
    primary.prune().await.unwrap();
    assert!(keys_under(&etcd, "fleet:cluster/node-events/").is_empty());
    assert!(!has(
        &primary.events(100).await.unwrap(),
        EventKind::Left,
        &na.id
    ));
    // A flood: at most 8 forwarded in a turn, the rest deleted.
    let joins = |ev: &[Event]| {
        ev.iter()
            .filter(|e| e.kind == EventKind::Joined && e.node_id == na.id)
            .count()
    };
    let joins_before = joins(&primary.events(200).await.unwrap());
    let flood: Vec<(String, String)> = (0..40)
        .map(|i| (own(200 + i), forged(EventKind::Joined, &na.id)))
        .collect();
    put_all_as(&etcd, &au, pw, &flood);
    primary.prune().await.unwrap();
    assert!(keys_under(&etcd, "fleet:cluster/node-events/").is_empty());
    let from_flood = joins(&primary.events(200).await.unwrap()) - joins_before;
    assert!(from_flood <= 8, "{from_flood} forwarded from a flood");

    // Its own leave: recorded at a pruner turn of the primary's heartbeat; `a-b` untouched
    // throughout. (`a` stops heartbeating first: its leave ends its membership.)
    beats.all_alive().await;
    let beats = beat(&[(&primary, &p), (&b, &nb)]);
    a.deregister(&na.id).await.unwrap();
    assert!(
        primary
            .members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.node.id != na.id)
    );
    let latency = until(&primary, Duration::from_secs(20), async |m| {
        has(&m.events(300).await.unwrap(), EventKind::Left, &na.id)
    })
    .await;
    eprintln!("a node's own `left` reached the events in {latency:?}");
    let events = primary.events(300).await.unwrap();
    for e in &events_before {
        assert!(events.contains(e), "event lost: {e:?}");
    }
    assert!(
        !events
            .iter()
            .any(|e| e.node_id == nb.id && e.kind != EventKind::Joined),
        "a forged event about a-b was recorded: {events:?}"
    );
    beats.all_alive().await;
}

/// As root: makes the node user and role the earlier release made (`alive/<name>-`,
/// `members/<name>-`, `names/<name>`, `events/`, read on the cluster) and records it.
fn earlier_release_user(etcd: &EtcdServer, name: &str, password: &str) -> String {
    let user = format!("fleet-node-{name}");
    let root = |path: &str, body: serde_json::Value| etcd.call_as(None, path, body).unwrap();
    root("/v3/auth/role/add", serde_json::json!({"name": user}));
    let grant = |perm: &str, key: String, prefix: bool| {
        let mut p = serde_json::json!({"permType": perm, "key": b64(key.as_bytes())});
        p["range_end"] = if prefix {
            b64(&prefix_end(key.as_bytes())).into()
        } else {
            serde_json::Value::Null
        };
        root(
            "/v3/auth/role/grant",
            serde_json::json!({"name": user, "perm": p}),
        );
    };
    grant("READ", "fleet:cluster/".into(), true);
    grant("READWRITE", format!("fleet:cluster/alive/{name}-"), true);
    grant("READWRITE", format!("fleet:cluster/members/{name}-"), true);
    grant("READWRITE", format!("fleet:cluster/names/{name}"), false);
    grant("READWRITE", "fleet:cluster/events/".into(), true);
    root(
        "/v3/auth/user/add",
        serde_json::json!({"name": user, "password": password}),
    );
    root(
        "/v3/auth/user/grant",
        serde_json::json!({"user": user, "role": user}),
    );
    root(
        "/v3/kv/put",
        serde_json::json!({"key": b64(format!("fleet:cluster/users/{name}").as_bytes()), "value": b64(user.as_bytes())}),
    );
    user
}

/// What a node of the earlier release does, through the gateway as its own user.
struct OldNode<'a> {
    etcd: &'a EtcdServer,
    user: String,
    password: String,
}

impl OldNode<'_> {
    fn call(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        self.etcd
            .call_as(Some((&self.user, &self.password)), path, body)
    }

    fn put(&self, key: &str, value: &str, lease: Option<&str>) -> Result<(), String> {
        let mut body =
            serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
        if let Some(l) = lease {
            body["lease"] = l.into();
        }
        self.call("/v3/kv/put", body).map(|_| ())
    }

    /// Its registration: a lease, then `alive/<id>`, `members/<id>`, `names/<name>` and a
    /// `joined` in `events/`, as the earlier release wrote them.
    fn register(&self, n: &NodeRecord) -> Result<String, String> {
        let lease = self.call("/v3/lease/grant", serde_json::json!({"TTL": 3}))?["ID"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut record = serde_json::to_value(n).unwrap();
        record["lease"] = lease.parse::<i64>().unwrap_or_default().into();
        record["last_heartbeat_ms"] = 1u64.into();
        self.put(
            &format!("fleet:cluster/alive/{}", n.id),
            &lease,
            Some(&lease),
        )?;
        self.put(
            &format!("fleet:cluster/members/{}", n.id),
            &record.to_string(),
            None,
        )?;
        self.put(
            &format!("fleet:cluster/names/{}", n.name),
            &n.id,
            Some(&lease),
        )?;
        let ev = Event::new(EventKind::Joined, &n.id)
            .at(1)
            .with("name", &n.name);
        self.put(
            "fleet:cluster/events/000000000000001-0000abcd",
            &serde_json::to_string(&ev).unwrap(),
            None,
        )?;
        Ok(lease)
    }

    /// Its heartbeat: the keepalive, then the read of its record. The lease's TTL afterwards.
    fn heartbeat(&self, lease: &str, n: &NodeRecord) -> Result<i64, String> {
        let kept = self.call("/v3/lease/keepalive", serde_json::json!({"ID": lease}))?;
        let ttl = kept["result"]["TTL"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        self.call(
            "/v3/kv/range",
            serde_json::json!({"key": b64(format!("fleet:cluster/members/{}", n.id).as_bytes())}),
        )?;
        Ok(ttl)
    }
}

/// A node of the earlier release across the upgrade of its primary: read in its key forms
/// (listed active, holding its name); after the primary narrows its role it keeps
/// heartbeating and stays active, but may no longer register, leave or write events (it needs
/// the upgrade for that). Upgraded, it registers in the new forms; the primary's prune drops the
/// superseded record, and a removal deletes both forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_release_node_keeps_heartbeating_after_the_narrowing() {
    let etcd = EtcdServer::start_with_auth(ROOT);
    let primary = membership(&etcd, "root", ROOT);
    let p = node("primary", "198.51.100.1");
    primary.register(&p).await.unwrap();
    let old = OldNode {
        etcd: &etcd,
        user: earlier_release_user(&etcd, "old", "old-node-pw"),
        password: "old-node-pw".into(),
    };
    let n = node("old", "198.51.100.7");
    let lease = old.register(&n).unwrap();
    let beats = beat(&[(&primary, &p)]);
    let listed = primary.members().await.unwrap();
    let m = listed.iter().find(|m| m.node.id == n.id).expect("listed");
    assert_eq!(m.state, MemberState::Active);
    assert_eq!(m.node, n);
    let holders = primary.live_holders(Some("old"), &[]).await.unwrap();
    assert_eq!(holders.name.as_deref(), Some(n.id.as_str()));

    // The upgraded primary's first housekeeping narrows the role.
    let upgraded = membership(&etcd, "root", ROOT);
    upgraded.housekeeping().await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let ttl = old.heartbeat(&lease, &n).unwrap();
        assert!(ttl > 0, "the keepalive of a narrowed role failed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = upgraded.members().await.unwrap();
    let m = m.iter().find(|m| m.node.id == n.id).expect("listed");
    assert_eq!(
        m.state,
        MemberState::Active,
        "still active past the timeout"
    );
    assert!(upgraded.prune().await.unwrap().is_empty());
    denied(
        old.register(&n).map(|_| ()),
        "re-registering in the earlier forms",
    );
    denied(
        old.call(
            "/v3/kv/deleterange",
            serde_json::json!({"key": b64(format!("fleet:cluster/members/{}", n.id).as_bytes())}),
        )
        .map(|_| ()),
        "leaving in the earlier forms",
    );

    // Upgraded (the same user and id): this release's forms, no second entry, no second join.
    let pw = old.password.clone();
    let new = membership(&etcd, &old.user, &pw);
    new.register(&n).await.unwrap();
    let members = upgraded.members().await.unwrap();
    assert_eq!(members.iter().filter(|m| m.node.id == n.id).count(), 1);
    // The earlier form's alive key runs out with the old lease (its keepalive stopped; this
    // user may not revoke a lease bound to it); then a prune drops the superseded record.
    let (current, earlier) = (
        format!("fleet:cluster/members/old/{}", n.id),
        format!("fleet:cluster/members/{}", n.id),
    );
    let started = Instant::now();
    loop {
        assert!(upgraded.prune().await.unwrap().is_empty());
        let left = keys_under(&etcd, "fleet:cluster/members/");
        assert!(left.contains(&current), "{left:?}");
        if !left.contains(&earlier) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the superseded record stayed: {left:?}"
        );
        assert!(matches!(
            new.heartbeat(&n).await.unwrap(),
            Heartbeat::Alive { .. }
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(matches!(
        new.heartbeat(&n).await.unwrap(),
        Heartbeat::Alive { .. }
    ));
    // A removal deletes every form of its keys.
    assert!(upgraded.remove(&n.id, "admin").await.unwrap());
    for prefix in ["fleet:cluster/members/", "fleet:cluster/alive/"] {
        let ks = keys_under(&etcd, prefix);
        assert!(ks.iter().all(|k| !k.contains(&n.id)), "{ks:?}");
    }
    assert!(
        keys_under(&etcd, "fleet:cluster/removed/")
            .iter()
            .any(|k| k.ends_with(&n.id)),
        "the tombstone is written"
    );
    beats.all_alive().await;
}

/// Keys a node's own user plants under its own prefixes (an alive key for an id without a
/// record, keys of no form) neither hide a dead member from the prune (by making the key
/// counts equal) nor stay: a pruner turn that reads everything (every 10th at the latest)
/// deletes them and records the dead member `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_keys_do_not_hide_a_dead_member_from_the_prune() {
    let etcd = EtcdServer::start_with_auth(ROOT);
    let primary = membership(&etcd, "root", ROOT);
    let p = node("primary", "198.51.100.1");
    primary.register(&p).await.unwrap();
    let (au, apw) = primary.create_node_user("a").await.unwrap();
    let (bu, bpw) = primary.create_node_user("a-b").await.unwrap();
    let a = membership(&etcd, &au, apw.expose());
    let b = membership(&etcd, &bu, bpw.expose());
    let (na, nb) = (node("a", "198.51.100.2"), node("a-b", "198.51.100.3"));
    a.register(&na).await.unwrap();
    b.register(&nb).await.unwrap();
    let beats = beat(&[(&primary, &p), (&a, &na)]);
    // `a-b` dies (no more heartbeats); `a` plants an alive key that evens the counts.
    let planted = [
        (
            "fleet:cluster/alive/a/a-zzzzzz".to_string(),
            "1".to_string(),
        ),
        ("fleet:cluster/alive/a/junk".to_string(), "1".to_string()),
        ("fleet:cluster/members/a/junk".to_string(), "{}".to_string()),
    ];
    put_all_as(&etcd, &au, apw.expose(), &planted);
    let started = Instant::now();
    let mut turns = 0;
    loop {
        turns += 1;
        let gone = primary.prune().await.unwrap();
        if gone.contains(&nb.id) {
            break;
        }
        assert!(turns < 30, "a-b was never pruned ({:?})", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "the dead member was pruned after {turns} turns, {:?}",
        started.elapsed()
    );
    for (k, _) in &planted {
        let left = keys_under(&etcd, "fleet:cluster/");
        assert!(!left.contains(k), "{k} stayed: {left:?}");
    }
    let ev = primary.events(50).await.unwrap();
    assert!(has(&ev, EventKind::Expired, &nb.id), "{ev:?}");
    primary.prune().await.unwrap();
    assert_eq!(primary.active_count().await.unwrap(), 2, "primary and a");
    beats.all_alive().await;
}
