//! The etcd backend (v3 API over gRPC): membership as keys bound to leases, every change one
//! transaction, with the same semantics as the Redis and storage backends.
//!
//! Keys, under `<key_prefix>cluster/` (default prefix `fleet:`, so `fleet:cluster/…`):
//! - `members/<name>/<id>`: the node's record as JSON, plus its lease id and its registration
//!   time; written at registration only. No lease: the record outlives its node, so that the
//!   next prune still knows the node and records `expired` for it (with etcd a lease's expiry
//!   deletes its keys by itself). Earlier releases wrote `members/<id>`: still read
//!   (`etcd/keys.rs`), deleted with the member.
//! - `active`: the active count and the revision of the last pruner turn (JSON).
//! - `pruner`: the node that took the prune's turn, on a lease of one timeout nobody renews.
//! - `alive/<name>/<id>` (earlier releases: `alive/<id>`): the lease id, bound to the node's
//!   lease (TTL = the heartbeat timeout). It is the liveness: a member is active exactly while
//!   this key exists.
//! - `names/<name>`: id of the holder, bound to the holder's lease, so the name frees itself
//!   when its holder dies.
//! - `events/<ms>-<random>`: an event as JSON; read in the order etcd created them (their create
//!   revision), so skewed node clocks cannot reorder the stream; about `EVENTS_CAP` kept.
//!   Written by the primary's credential only; a node's own user writes
//!   `node-events/<name>/<ms>-<random>`, which the pruner's turn checks and forwards
//!   (`etcd/events.rs`).
//! - `removed/<id>`: `by`, an admin's removal, with its own lease of `REMOVAL_TOMBSTONE` (24 h).
//! - `users/<name>`: the etcd user `create_node_user` made for the node of that name (no lease),
//!   so that removing the node (`remove`) finds and deletes it.
//!
//! Time. etcd exposes no clock to its clients (response headers carry revisions, not time), so
//! every decision about liveness is left to etcd's own lease timer on its leader: who is active,
//! whose name may be taken, who is pruned as `expired`. Node clocks decide nothing. The times that
//! are only reported (`last_heartbeat_ms`, `age_ms`, an event's `at_ms`) are the writing node's
//! clock, stored with the record; with skewed clocks an age may read wrong, a state never does.
//! A lease that has run out but that etcd has not revoked yet (its expiry loop runs every 500 ms)
//! still holds its name; a registration under that name asks etcd for the lease's remaining TTL
//! and, when under a second, revokes it and takes the name.
//!
//! Cost. A heartbeat is one keepalive on the node's open keepalive stream; on the first beat
//! of a lease and every `CHECK_EVERY`th after, also one read-only transaction (still a member?
//! the stored count, the pruner's turn): no revision, no disk write, the same at 10 members and
//! at 10,000. The prune, the
//! recount and the compaction run in the pruner's turn, about once per timeout per cluster.
//! Liveness in the member list is the alive keys, read with the records in one transaction;
//! each active member's last renewal is derived from its lease's remaining TTL (one call per
//! lease) only while the answer holds at most `AGE_LOOKUPS` active members; a longer list
//! marks their ages unknown (`age_known: false`, under the timeout) and stays one round trip.
//!
//! No watch: every read is a linearizable range on the leader, so a change shows on the next
//! call already; a watch would only save that one round trip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use super::{
    ClusterError, EVENTS_CAP, Event, EventKind, Heartbeat, Member, MemberState, Membership,
    NodeRecord, REMOVAL_TOMBSTONE, Timing,
};
use crate::config::{BackendKind, ClusterConfig, Secret};

const NAME: &str = "etcd";
/// Members pruned at most per heartbeat, so one heartbeat stays short after a mass outage.
const PRUNE_LIMIT: usize = 100;
/// etcd refuses transactions with more operations (`--max-txn-ops`, 128 by default).
const TXN_BATCH: usize = 100;
/// The longest a member list may take (callers such as the HTTP API set shorter deadlines).
const LIST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// The most lease ages one member list or page asks etcd for (one call each, a few hundred
/// µs of etcd's time): the Settings page's 500 get theirs; longer lists stay one round trip.
const AGE_LOOKUPS: usize = 500;
/// A heartbeat runs its read-only check (still a member, the stored count, the pruner's turn)
/// on the first beat of a lease and then on every `CHECK_EVERY`th: the keepalive alone costs
/// etcd a small fraction of the check (measured: about 20 µs against 100 to 200 µs). Removal and data loss end the lease, which the keepalive
/// sees at once; only keys deleted by hand under a live lease wait for the next check.
const CHECK_EVERY: u32 = 4;
/// Attempts of an optimistic transaction before giving up (another node kept changing a key).
const TXN_ATTEMPTS: usize = 5;
/// A pruner turn reads every record and alive key when the key counts differ, and on every
/// `FULL_PRUNE_EVERY`th turn of a process whatever the counts say.
const FULL_PRUNE_EVERY: u32 = 10;

/// What `members/<id>` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    node: NodeRecord,
    /// The lease `alive/<id>` and `names/<name>` are bound to.
    lease: i64,
    /// The node's clock when it registered, ms (heartbeats no longer rewrite the record: the
    /// list derives the last renewal from the lease; see the module comment).
    last_heartbeat_ms: u64,
}

/// What `active` holds: the active count as of the last prune (adjusted by joins and leaves
/// since), and the revision that prune saw, which the next one compacts to.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ActiveCount {
    n: usize,
    #[serde(default)]
    rev: i64,
}

impl ActiveCount {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn parse_active(kv: &KeyValue) -> ActiveCount {
    serde_json::from_slice(kv.value()).unwrap_or_default()
}

/// Membership in etcd.
pub struct EtcdMembership {
    endpoints: Vec<String>,
    /// Holds the password: never printed (see `Debug` below).
    options: ConnectOptions,
    username: Option<String>,
    key_prefix: String,
    /// `<key_prefix>cluster/`.
    root: String,
    timing: Timing,
    /// Connected on first use, dropped after an outage or a refused token, so the next call
    /// connects (and authenticates) again.
    client: tokio::sync::Mutex<Option<Client>>,
    /// Lease of each node this process registered (the daemon: one).
    leases: Mutex<HashMap<String, i64>>,
    /// An open keepalive stream per lease: a heartbeat sends one request on it, rather than
    /// opening a stream (a goroutine and an HTTP/2 stream in etcd) every time.
    keepers: Mutex<HashMap<i64, Keeper>>,
    /// Whether this process's housekeeping narrowed the node roles yet (`etcd/roles.rs`).
    roles_narrowed: std::sync::atomic::AtomicBool,
    /// Pruner turns this process took (every `FULL_PRUNE_EVERY`th reads everything).
    prune_turns: std::sync::atomic::AtomicU32,
    /// Per node this process heartbeats: the lease last checked, the beats left until the next
    /// check, and the count that check read.
    checks: Mutex<HashMap<String, Check>>,
}

/// When a heartbeat runs its read-only check next (see `heartbeat_inner`).
#[derive(Debug, Clone, Copy)]
struct Check {
    lease: i64,
    beats_left: u32,
    active: usize,
}

mod client;
mod events;
mod keys;
mod membership;
mod roles;
mod sessions;
mod users;

pub(crate) use client::connect_options;
pub use client::map_err;
use client::*;

pub use sessions::EtcdSessions;

type Keeper = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

impl std::fmt::Debug for EtcdMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembership")
            .field("endpoints", &self.endpoints)
            .field("username", &self.username)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn kvs_of(resp: &TxnResponse, index: usize) -> Vec<KeyValue> {
    match resp.op_responses().into_iter().nth(index) {
        Some(TxnOpResponse::Get(mut g)) => g.take_kvs(),
        _ => Vec::new(),
    }
}

fn count_of(resp: &TxnResponse, index: usize) -> i64 {
    match resp.op_responses().into_iter().nth(index) {
        Some(TxnOpResponse::Get(g)) => g.count(),
        _ => 0,
    }
}

fn parse_stored(kv: &KeyValue) -> Option<Stored> {
    serde_json::from_slice(kv.value()).ok()
}

/// Deletes `keys`, `TXN_BATCH` to a transaction (etcd caps the operations of one).
async fn delete_keys<K: Clone + Into<Vec<u8>>>(
    client: &mut Client,
    keys: &[K],
) -> Result<(), ClusterError> {
    for chunk in keys.chunks(TXN_BATCH) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|k| TxnOp::delete(k.clone(), None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| map_err(&e))?;
    }
    Ok(())
}

/// A compare that holds while `key` is as it was read (`kv`), or still absent.
fn unchanged(key: &str, kv: Option<&KeyValue>) -> Compare {
    match kv {
        Some(kv) => Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision()),
        None => Compare::version(key, CompareOp::Equal, 0),
    }
}

impl EtcdMembership {
    /// Reads the TLS files; touches no network (the first operation connects).
    pub fn new(cfg: &ClusterConfig, timing: Timing) -> Result<Self, ClusterError> {
        if cfg.etcd_endpoints.is_empty() {
            return Err(backend_err("no etcd_endpoints configured"));
        }
        Ok(EtcdMembership {
            endpoints: cfg.etcd_endpoints.clone(),
            options: connect_options(cfg, &timing)?,
            username: cfg.etcd_username.clone(),
            key_prefix: cfg.key_prefix.to_string(),
            root: format!("{}cluster/", cfg.key_prefix),
            timing,
            client: tokio::sync::Mutex::new(None),
            leases: Mutex::new(HashMap::new()),
            keepers: Mutex::new(HashMap::new()),
            roles_narrowed: std::sync::atomic::AtomicBool::new(false),
            prune_turns: std::sync::atomic::AtomicU32::new(0),
            checks: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, sub: &str) -> String {
        format!("{}{sub}", self.root)
    }

    fn lease_ttl_secs(&self) -> i64 {
        (self.timing.timeout.as_secs_f64().ceil() as i64).max(2)
    }

    fn local_lease(&self, id: &str) -> Option<i64> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    fn set_local_lease(&self, id: &str, lease: Option<i64>) {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let old = match lease {
            Some(l) => map.insert(id.to_string(), l),
            None => map.remove(id),
        };
        drop(map);
        if let Some(old) = old.filter(|o| Some(*o) != lease) {
            // Dropping the keeper ends its stream.
            self.keepers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&old);
        }
    }

    /// Renews `lease` on its keepalive stream, opening one when there is none or the last one
    /// broke (an outage, a new connection). `Ok(false)`: the lease ran out or etcd lost it.
    async fn keep_alive(&self, client: &mut Client, lease: i64) -> Result<bool, ClusterError> {
        let kept = self
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease);
        if let Some((mut keeper, mut stream)) = kept
            && keeper.keep_alive().await.is_ok()
            && let Ok(Some(resp)) = stream.message().await
        {
            if resp.ttl() <= 0 {
                return Ok(false);
            }
            self.keepers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(lease, (keeper, stream));
            return Ok(true);
        }
        match client.lease_keep_alive(lease).await {
            Ok(k) => {
                self.keepers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(lease, k);
                Ok(true)
            }
            // The lease ran out or etcd lost it: the client reports a zero TTL this way.
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(false),
            Err(e) => Err(map_err(&e)),
        }
    }

    /// The write of an event: into `events/` with the primary's credential; a node's own user
    /// writes into `node-events/<name>/`, which the primary checks and forwards.
    fn event_put(&self, kind: EventKind, id: &str, detail: BTreeMap<String, String>) -> TxnOp {
        let at_ms = now_ms();
        let ev = Event::new(kind, id).at(at_ms).with_detail(detail);
        let sub = match self.own_name() {
            Some(name) => format!("node-events/{name}/"),
            None => "events/".to_string(),
        };
        let key = self.key(&format!(
            "{sub}{at_ms:015}-{:08x}",
            rand::rng().random::<u32>()
        ));
        // Strings and numbers only: serialisation cannot fail.
        TxnOp::put(key, serde_json::to_vec(&ev).unwrap_or_default(), None)
    }

    /// Deletes `names/<name>` only while `id` holds it.
    fn name_release(&self, name: &str, id: &str) -> TxnOp {
        let key = self.key(&format!("names/{name}"));
        TxnOp::txn(
            Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, id)])
                .and_then([TxnOp::delete(key, None)]),
        )
    }

    async fn revoke(client: &mut Client, lease: i64) -> Result<(), ClusterError> {
        match client.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(map_err(&e)),
        }
    }

    /// For the benchmarks: writes members as registrations would (a lease each, the record, the
    /// alive and name keys) in few transactions, and remembers their leases so that
    /// `heartbeat` renews them; then adds them to the stored count.
    pub async fn simulate_members(&self, nodes: &[NodeRecord]) -> Result<(), ClusterError> {
        let ttl = self.lease_ttl_secs();
        for chunk in nodes.chunks(TXN_BATCH / 3) {
            let chunk = chunk.to_vec();
            let leases = self
                .run("simulating members", |client| async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for n in chunk {
                        let mut c = client.clone();
                        tasks.spawn(async move {
                            let l = c.lease_grant(ttl, None).await.map_err(|e| map_err(&e))?;
                            Ok::<_, ClusterError>((n, l.id()))
                        });
                    }
                    let mut leases = Vec::new();
                    while let Some(r) = tasks.join_next().await {
                        leases.push(r.map_err(|e| backend_err(e.to_string()))??);
                    }
                    let mut ops = Vec::new();
                    for (n, l) in &leases {
                        let stored = Stored {
                            node: n.clone(),
                            lease: *l,
                            last_heartbeat_ms: now_ms(),
                        };
                        let with = || Some(PutOptions::new().with_lease(*l));
                        ops.push(TxnOp::put(
                            self.id_key("alive", &n.id),
                            l.to_string(),
                            with(),
                        ));
                        ops.push(TxnOp::put(
                            self.id_key("members", &n.id),
                            serde_json::to_vec(&stored).unwrap_or_default(),
                            None,
                        ));
                        ops.push(TxnOp::put(
                            self.key(&format!("names/{}", n.name)),
                            n.id.clone(),
                            with(),
                        ));
                    }
                    let mut c = client.clone();
                    c.txn(Txn::new().and_then(ops))
                        .await
                        .map_err(|e| map_err(&e))?;
                    Ok(leases)
                })
                .await?;
            for (n, l) in leases {
                self.set_local_lease(&n.id, Some(l));
            }
        }
        let added = nodes.len();
        self.run("simulating members", |mut c| async move {
            let k = self.key("active");
            let mut count = c
                .get(k.clone(), None)
                .await
                .map_err(|e| map_err(&e))?
                .kvs()
                .first()
                .map(parse_active)
                .unwrap_or_default();
            count.n += added;
            c.put(k, count.to_json(), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await
    }

    /// For the benchmarks: the one operation a lease-based heartbeat cannot do without, the
    /// keepalive of the member's lease.
    pub async fn bench_floor_heartbeat(&self, id: &str) -> Result<(), ClusterError> {
        let Some(l) = self.local_lease(id) else {
            return Err(backend_err(format!("no lease for {id}")));
        };
        self.run("keepalive", |mut c| async move {
            match self.keep_alive(&mut c, l).await? {
                true => Ok(()),
                false => Err(backend_err(format!("the lease of {id} ran out"))),
            }
        })
        .await
    }

    /// For the benchmarks: lets etcd commit a write batch without key writes (a lease granted
    /// and revoked). etcd 3.4 copies its read buffer, sized by the largest recent batch of key
    /// writes, for every read and every keepalive answer; such a batch drops it. A cluster whose
    /// registrations are spread out sees that state; right after a mass registration it does not.
    pub async fn bench_settle(&self) -> Result<(), ClusterError> {
        // etcd commits its write batch every 100 ms (`--backend-batch-interval`).
        let pause = std::time::Duration::from_millis(250);
        tokio::time::sleep(pause).await;
        let lease = self
            .run("settling", |mut c| async move {
                Ok(c.lease_grant(60, None).await.map_err(|e| map_err(&e))?.id())
            })
            .await?;
        tokio::time::sleep(pause).await;
        self.run("settling", |mut c| async move {
            Self::revoke(&mut c, lease).await
        })
        .await?;
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// For the benchmarks: the pruner's turn as a heartbeat takes it (the claim freed first).
    pub async fn bench_pruner_turn(&self) -> Result<(), ClusterError> {
        self.run("pruner turn", |mut c| async move {
            c.delete(self.key("pruner"), None)
                .await
                .map_err(|e| map_err(&e))?;
            self.prune_turn(&mut c, "bench").await?;
            Ok(())
        })
        .await
    }

    /// etcd's revision and database size in bytes (`Status`).
    pub async fn bench_status(&self) -> Result<(i64, i64), ClusterError> {
        self.run("status", |mut c| async move {
            let s = c.status().await.map_err(|e| map_err(&e))?;
            Ok((s.header().map(|h| h.revision()).unwrap_or(0), s.db_size()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let cfg = ClusterConfig {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            etcd_username: Some("fleet".into()),
            etcd_password: Some(Secret::new("hunter2-etcd")),
            ..ClusterConfig::default()
        };
        let timing = Timing {
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(3),
        };
        let m = EtcdMembership::new(&cfg, timing).unwrap();
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(m.node_user_name("server-03"), "fleet-node-server-03");
    }

    #[test]
    fn user_names_keep_each_backends_historical_case() {
        let cfg = ClusterConfig {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            key_prefix: crate::config::KeyPrefix::new("Fleet:").unwrap(),
            ..ClusterConfig::default()
        };
        let timing = Timing {
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(3),
        };
        let m = EtcdMembership::new(&cfg, timing).unwrap();
        assert_eq!(m.node_user_name("server-03"), "fleet-node-server-03");
        // Redis's names keep the prefix's case, as they always did.
        assert_eq!(
            crate::cluster::users::user_name("Fleet:", "node", "server-03"),
            "Fleet-node-server-03"
        );
    }
}
