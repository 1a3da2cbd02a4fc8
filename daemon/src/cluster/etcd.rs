//! The etcd backend (v3 API over gRPC): membership as keys bound to leases, every change one
//! transaction, with the same semantics as the Redis and storage backends.
//!
//! Keys, under `<key_prefix>cluster/` (default prefix `fleet:`, so `fleet:cluster/…`):
//! - `members/<id>`: the node's record as JSON, plus its lease id and its registration time;
//!   written at registration only. No lease: the record outlives its node, so that the next
//!   prune still knows the node and records `expired` for it (with etcd a lease's expiry
//!   deletes its keys by itself).
//! - `active`: the active count and the revision of the last pruner turn (JSON).
//! - `pruner`: the node that took the prune's turn, on a lease of one timeout nobody renews.
//! - `alive/<id>`: the lease id, bound to the node's lease (TTL = the heartbeat timeout). It is
//!   the liveness: a member is active exactly while this key exists.
//! - `names/<name>`: id of the holder, bound to the holder's lease, so the name frees itself
//!   when its holder dies.
//! - `events/<ms>-<random>`: an event as JSON; read in the order etcd created them (their create
//!   revision), so skewed node clocks cannot reorder the stream; about `EVENTS_CAP` kept.
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

mod roles;
mod sessions;
mod users;

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

fn backend_err(reason: impl Into<String>) -> ClusterError {
    ClusterError::Backend {
        backend: NAME,
        reason: reason.into(),
    }
}

/// The error's message with its sources (a transport error's own text is only "transport
/// error"). etcd's messages never carry a password.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Maps an etcd client error to our kinds: outages are `Unreachable`, refused credentials and
/// missing permissions `Auth`.
pub fn map_err(e: &etcd_client::Error) -> ClusterError {
    use etcd_client::Error as E;
    use tonic::Code;
    let reason = describe(e);
    let unreachable = ClusterError::Unreachable {
        backend: NAME,
        reason: reason.clone(),
    };
    let auth = ClusterError::Auth {
        backend: NAME,
        reason: reason.clone(),
    };
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message();
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => auth,
                _ if msg.contains("authentication failed")
                    || msg.contains("authentication is not enabled")
                    || msg.contains("invalid auth token")
                    || msg.contains("permission denied")
                    || msg.contains("user name") =>
                {
                    auth
                }
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    unreachable
                }
                // Connection failures below gRPC arrive as `Unknown` with a transport message.
                Code::Unknown
                    if msg.contains("transport")
                        || msg.contains("connect")
                        || msg.contains("broken pipe")
                        || msg.contains("h2 protocol") =>
                {
                    unreachable
                }
                _ if msg.contains("leader changed")
                    || msg.contains("no leader")
                    || msg.contains("timed out") =>
                {
                    unreachable
                }
                _ => backend_err(reason),
            }
        }
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            unreachable
        }
        _ => backend_err(reason),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|e| {
        backend_err(format!(
            "cluster.{field}: cannot read {}: {e}",
            path.display()
        ))
    })
}

/// The endpoints that accept a TCP connection within `limit` (tried at once), in the given
/// order; all of them when there is only one, or when none answers.
async fn reachable_endpoints(endpoints: &[String], limit: std::time::Duration) -> Vec<String> {
    if endpoints.len() < 2 {
        return endpoints.to_vec();
    }
    let probes = endpoints.iter().map(|e| {
        let hostport = e
            .split_once("://")
            .map_or(e.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        async move {
            matches!(
                tokio::time::timeout(limit, tokio::net::TcpStream::connect(hostport)).await,
                Ok(Ok(_))
            )
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in probes.enumerate() {
        set.spawn(async move { (i, p.await) });
    }
    let mut up = vec![false; endpoints.len()];
    while let Some(Ok((i, ok))) = set.join_next().await {
        up[i] = ok;
    }
    let live: Vec<String> = endpoints
        .iter()
        .zip(up)
        .filter(|(_, ok)| *ok)
        .map(|(e, _)| e.clone())
        .collect();
    if live.is_empty() {
        endpoints.to_vec()
    } else {
        live
    }
}

/// Builds the connection options from the configuration; the password goes only here.
pub(crate) fn connect_options(
    cfg: &ClusterConfig,
    timing: &Timing,
) -> Result<ConnectOptions, ClusterError> {
    let op = timing.op_timeout();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(op)
        .with_timeout(op)
        .with_keep_alive(timing.interval.max(op), op)
        .with_auto_token_refresh(true);
    if let Some(user) = &cfg.etcd_username {
        let pw = cfg.etcd_password.as_ref().map(Secret::expose).unwrap_or("");
        options = options.with_user(user.clone(), pw);
    }
    let tls_wanted = cfg.etcd_ca.is_some()
        || cfg.etcd_cert.is_some()
        || cfg.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
    if tls_wanted {
        let mut tls = TlsOptions::new();
        tls = match &cfg.etcd_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("etcd_ca", ca)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&cfg.etcd_cert, &cfg.etcd_key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("etcd_cert", cert)?,
                read_pem("etcd_key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
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
            key_prefix: cfg.key_prefix.clone(),
            root: format!("{}cluster/", cfg.key_prefix),
            timing,
            client: tokio::sync::Mutex::new(None),
            leases: Mutex::new(HashMap::new()),
            keepers: Mutex::new(HashMap::new()),
            roles_narrowed: std::sync::atomic::AtomicBool::new(false),
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

    /// The connected client, connecting (and authenticating) first when needed.
    async fn client(&self) -> Result<Client, ClusterError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // The client balances over every endpoint it is given, dead ones included: connect to
        // those that accept a connection now (all of them if none does, for the error).
        let endpoints = reachable_endpoints(&self.endpoints, self.timing.op_timeout()).await;
        let c = Client::connect(&endpoints, Some(self.options.clone()))
            .await
            .map_err(|e| map_err(&e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one operation with a deadline; an outage or a refused token drops the client, so
    /// that the next operation starts from a fresh connection.
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        self.run_within(what, self.timing.op_timeout() * 3, f).await
    }

    /// `run` with its own deadline (a member list reads every record at once).
    async fn run_within<T, F, Fut>(
        &self,
        what: &str,
        deadline: std::time::Duration,
        f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let result = match tokio::time::timeout(deadline, async {
            let client = self.client().await?;
            f(client).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ClusterError::Unreachable {
                backend: NAME,
                reason: format!(
                    "{what}: no answer from {} within {deadline:?}",
                    self.endpoints.join(",")
                ),
            }),
        };
        if let Err(ClusterError::Unreachable { .. } | ClusterError::Auth { .. }) = &result {
            *self.client.lock().await = None;
        }
        result
    }

    fn event_put(&self, kind: EventKind, id: &str, detail: BTreeMap<String, String>) -> TxnOp {
        let at_ms = now_ms();
        let ev = Event::new(kind, id).at(at_ms).with_detail(detail);
        let key = self.key(&format!(
            "events/{at_ms:015}-{:08x}",
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

    async fn register_inner(
        &self,
        mut client: Client,
        node: &NodeRecord,
    ) -> Result<usize, ClusterError> {
        let id = node.id.as_str();
        let (k_removed, k_name, k_alive, k_member) = (
            self.key(&format!("removed/{id}")),
            self.key(&format!("names/{}", node.name)),
            self.key(&format!("alive/{id}")),
            self.key(&format!("members/{id}")),
        );
        let mut granted: Option<i64> = None;
        for _ in 0..TXN_ATTEMPTS {
            let read = client
                .txn(Txn::new().and_then([
                    TxnOp::get(k_removed.clone(), None),
                    TxnOp::get(k_name.clone(), None),
                    TxnOp::get(k_alive.clone(), None),
                    TxnOp::get(k_member.clone(), None),
                    TxnOp::get(self.key("active"), None),
                ]))
                .await
                .map_err(|e| map_err(&e))?;
            if !kvs_of(&read, 0).is_empty() {
                if let Some(l) = granted {
                    let _ = Self::revoke(&mut client, l).await;
                }
                return Err(ClusterError::Removed(id.to_string()));
            }
            let name_kv = kvs_of(&read, 1).into_iter().next();
            let alive_kv = kvs_of(&read, 2).into_iter().next();
            let member_kv = kvs_of(&read, 3).into_iter().next();
            let mut count = kvs_of(&read, 4)
                .first()
                .map(parse_active)
                .unwrap_or_default();
            if let Some(kv) = &name_kv {
                let holder = String::from_utf8_lossy(kv.value()).into_owned();
                if holder != id {
                    // A holder's name key lives as long as its lease: is that still running?
                    let ttl = client
                        .lease_time_to_live(kv.lease(), None)
                        .await
                        .map_err(|e| map_err(&e))?
                        .ttl();
                    if ttl >= 1 {
                        if let Some(l) = granted {
                            let _ = Self::revoke(&mut client, l).await;
                        }
                        return Err(ClusterError::NameTaken {
                            name: node.name.clone(),
                            holder,
                        });
                    }
                    // Run out, not yet reaped by etcd: reap it now, then read again.
                    Self::revoke(&mut client, kv.lease()).await?;
                    continue;
                }
            }
            let lease = match granted {
                Some(l) => l,
                None => {
                    let l = client
                        .lease_grant(self.lease_ttl_secs(), None)
                        .await
                        .map_err(|e| map_err(&e))?
                        .id();
                    granted = Some(l);
                    l
                }
            };
            let fresh = alive_kv.is_none();
            let stored = Stored {
                node: node.clone(),
                lease,
                last_heartbeat_ms: now_ms(),
            };
            let mut ops = vec![
                TxnOp::put(
                    k_alive.clone(),
                    lease.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(
                    k_member.clone(),
                    serde_json::to_vec(&stored).unwrap_or_default(),
                    None,
                ),
                TxnOp::put(
                    k_name.clone(),
                    id,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ];
            if fresh {
                ops.push(self.event_put(
                    EventKind::Joined,
                    id,
                    BTreeMap::from([("name".into(), node.name.clone())]),
                ));
                // Not compared: two joins at once may count one; the next prune recounts.
                count.n += 1;
                // A node's own user may not write the count: the primary's prune recounts.
                if !self.is_node_user() {
                    ops.push(TxnOp::put(self.key("active"), count.to_json(), None));
                }
            }
            let resp = client
                .txn(
                    Txn::new()
                        .when([
                            Compare::version(k_removed.clone(), CompareOp::Equal, 0),
                            unchanged(&k_name, name_kv.as_ref()),
                            unchanged(&k_alive, alive_kv.as_ref()),
                        ])
                        .and_then(ops),
                )
                .await
                .map_err(|e| map_err(&e))?;
            if !resp.succeeded() {
                continue;
            }
            // The keys moved to the new lease; the old one (if any) holds nothing of ours now.
            let old = member_kv
                .as_ref()
                .and_then(parse_stored)
                .map(|s| s.lease)
                .into_iter()
                .chain(self.local_lease(id));
            for l in old.collect::<BTreeSet<_>>() {
                if l != lease {
                    let _ = Self::revoke(&mut client, l).await;
                }
            }
            self.set_local_lease(id, Some(lease));
            return Ok(count.n.max(1));
        }
        if let Some(l) = granted {
            let _ = Self::revoke(&mut client, l).await;
        }
        Err(backend_err(format!(
            "registration of {id} kept conflicting with other nodes' changes"
        )))
    }

    async fn heartbeat_inner(
        &self,
        mut client: Client,
        node: &NodeRecord,
    ) -> Result<Heartbeat, ClusterError> {
        let id = node.id.as_str();
        let k_removed = self.key(&format!("removed/{id}"));
        let k_alive = self.key(&format!("alive/{id}"));
        let k_member = self.key(&format!("members/{id}"));
        let lease = match self.local_lease(id) {
            Some(l) => Some(l),
            None => client
                .get(k_member.clone(), None)
                .await
                .map_err(|e| map_err(&e))?
                .kvs()
                .first()
                .and_then(parse_stored)
                .map(|s| s.lease),
        };
        let kept = match lease {
            None => false,
            Some(l) => self.keep_alive(&mut client, l).await?,
        };
        let Some(lease) = lease.filter(|_| kept) else {
            self.checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            // Nothing to renew: only the tombstone is worth a look.
            let resp = client.get(k_removed, None).await.map_err(|e| map_err(&e))?;
            return Ok(if resp.kvs().is_empty() {
                Heartbeat::NotMember
            } else {
                Heartbeat::Removed
            });
        };
        // Renewed: between checks, that is the whole heartbeat.
        {
            let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = checks.get_mut(id)
                && c.lease == lease
                && c.beats_left > 0
            {
                c.beats_left -= 1;
                return Ok(Heartbeat::Alive { active: c.active });
            }
        }
        // Liveness is the lease: no write here (a write per heartbeat was a revision of history
        // each, and a disk sync). One read-only transaction checks that this node is still a
        // member, reads the stored count, and sees whether the pruner's turn is free.
        let txn = Txn::new()
            .when([
                Compare::lease(k_alive, CompareOp::Equal, lease),
                Compare::version(k_member, CompareOp::Greater, 0),
                Compare::version(k_removed.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::get(self.key("active"), None),
                TxnOp::get(
                    self.key("pruner"),
                    Some(GetOptions::new().with_count_only()),
                ),
            ])
            .or_else([TxnOp::get(k_removed, None)]);
        let resp = client.txn(txn).await.map_err(|e| map_err(&e))?;
        if !resp.succeeded() {
            self.checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            return Ok(if kvs_of(&resp, 0).is_empty() {
                Heartbeat::NotMember
            } else {
                Heartbeat::Removed
            });
        }
        let stored = kvs_of(&resp, 0)
            .first()
            .map(parse_active)
            .unwrap_or_default();
        let mut active = stored.n.max(1);
        // Pruning deletes other nodes' keys: the primary's credential only.
        if count_of(&resp, 1) == 0
            && !self.is_node_user()
            && let Some(n) = self.prune_turn(&mut client, id).await?
        {
            active = n;
        }
        // The first check of a lease starts its count at a random beat, so that nodes that
        // started together do not check together.
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let beats_left = match checks.get(id) {
            Some(c) if c.lease == lease => CHECK_EVERY - 1,
            _ => rand::rng().random_range(0..CHECK_EVERY),
        };
        checks.insert(
            id.to_string(),
            Check {
                lease,
                beats_left,
                active,
            },
        );
        Ok(Heartbeat::Alive { active })
    }

    /// Claims the pruner's turn (`pruner`, on a lease of one timeout that nobody renews): of the
    /// nodes that find it free, one wins, so across the cluster the prune runs about once per
    /// timeout. The winner prunes, stores the active count, and compacts etcd's history to the
    /// revision the previous turn stored (at least one timeout old: nothing of ours reads older).
    /// `None`: another node won.
    async fn prune_turn(
        &self,
        client: &mut Client,
        id: &str,
    ) -> Result<Option<usize>, ClusterError> {
        let k_pruner = self.key("pruner");
        let lease = client
            .lease_grant(self.lease_ttl_secs(), None)
            .await
            .map_err(|e| map_err(&e))?
            .id();
        let claim = client
            .txn(
                Txn::new()
                    .when([Compare::version(k_pruner.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        k_pruner,
                        id,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([]),
            )
            .await
            .map_err(|e| map_err(&e))?;
        if !claim.succeeded() {
            Self::revoke(client, lease).await?;
            return Ok(None);
        }
        Ok(Some(self.prune_and_count(client).await?))
    }

    /// Prunes, stores the active count with the current revision, and compacts to the
    /// revision stored before; returns the active count.
    async fn prune_and_count(&self, client: &mut Client) -> Result<usize, ClusterError> {
        let k_active = self.key("active");
        let read = client
            .get(k_active.clone(), None)
            .await
            .map_err(|e| map_err(&e))?;
        let rev = read.header().map(|h| h.revision()).unwrap_or(0);
        let before = read.kvs().first().map(parse_active).unwrap_or_default();
        let (_, active) = self.prune_inner(client).await?;
        client
            .put(k_active, ActiveCount { n: active, rev }.to_json(), None)
            .await
            .map_err(|e| map_err(&e))?;
        if before.rev > 0 && before.rev < rev {
            match client.compact(before.rev, None).await {
                Ok(_) => {}
                // Compacted already (by another node, or etcd's own auto-compaction).
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("compacted") || s.message().contains("future") => {}
                Err(e) => return Err(map_err(&e)),
            }
        }
        Ok(active)
    }

    /// Prunes members without a live lease, recording `expired` for each, and trims the events;
    /// returns the pruned ids and the number of active members.
    async fn prune_inner(&self, client: &mut Client) -> Result<(Vec<String>, usize), ClusterError> {
        let count = |sub: &str| {
            TxnOp::get(
                self.key(sub),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
        };
        let counts = client
            .txn(Txn::new().and_then([count("members/"), count("alive/"), count("events/")]))
            .await
            .map_err(|e| map_err(&e))?;
        let (members, alive, events) = (
            count_of(&counts, 0),
            count_of(&counts, 1),
            count_of(&counts, 2),
        );
        let mut gone = Vec::new();
        // Every member has its alive key while it lives: equal counts, nothing to prune.
        if members != alive {
            let (records, live) = self.member_snapshot(client).await?;
            let member_prefix = self.key("members/");
            for kv in records {
                if gone.len() >= PRUNE_LIMIT {
                    break;
                }
                let Some(id) = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.strip_prefix(&member_prefix))
                    .map(str::to_string)
                else {
                    continue;
                };
                if live.contains_key(&id) {
                    continue;
                }
                let name = parse_stored(&kv).map(|s| s.node.name).unwrap_or_default();
                let member_key = self.key(&format!("members/{id}"));
                // Only the node whose transaction deletes the record records the expiry:
                // pruning stays idempotent when several nodes prune at once.
                let resp = client
                    .txn(
                        Txn::new()
                            .when([
                                Compare::mod_revision(
                                    member_key.clone(),
                                    CompareOp::Equal,
                                    kv.mod_revision(),
                                ),
                                Compare::version(
                                    self.key(&format!("alive/{id}")),
                                    CompareOp::Equal,
                                    0,
                                ),
                            ])
                            .and_then([
                                TxnOp::delete(member_key, None),
                                self.event_put(
                                    EventKind::Expired,
                                    &id,
                                    BTreeMap::from([("name".into(), name)]),
                                ),
                            ]),
                    )
                    .await
                    .map_err(|e| map_err(&e))?;
                if resp.succeeded() {
                    gone.push(id);
                }
            }
        }
        // Trim in batches, so the events are not listed and trimmed on every heartbeat.
        let events = events + gone.len() as i64;
        if events as usize > EVENTS_CAP + EVENTS_CAP / 10 {
            let excess = events - EVENTS_CAP as i64;
            let oldest = client
                .get(
                    self.key("events/"),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(excess),
                    ),
                )
                .await
                .map_err(|e| map_err(&e))?;
            let keys: Vec<Vec<u8>> = oldest.kvs().iter().map(|kv| kv.key().to_vec()).collect();
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
        }
        Ok((gone, alive.max(0) as usize))
    }

    /// Leaves (`Left`, graceful) or is removed (`Removed`, with a tombstone): returns whether it
    /// was a member.
    async fn leave_inner(
        &self,
        mut client: Client,
        id: &str,
        kind: EventKind,
        by: &str,
    ) -> Result<bool, ClusterError> {
        let k_member = self.key(&format!("members/{id}"));
        let k_alive = self.key(&format!("alive/{id}"));
        let k_removed = self.key(&format!("removed/{id}"));
        let tombstone = if kind == EventKind::Removed {
            let l = client
                .lease_grant(REMOVAL_TOMBSTONE.as_secs() as i64, None)
                .await
                .map_err(|e| map_err(&e))?
                .id();
            Some(TxnOp::put(
                k_removed,
                by,
                Some(PutOptions::new().with_lease(l)),
            ))
        } else {
            None
        };
        let mut was = false;
        let mut lease = self.local_lease(id);
        for attempt in 0..=TXN_ATTEMPTS {
            if attempt == TXN_ATTEMPTS {
                return Err(backend_err(format!(
                    "leaving {id} kept conflicting with other nodes' changes"
                )));
            }
            let read = client
                .txn(Txn::new().and_then([
                    TxnOp::get(k_member.clone(), None),
                    TxnOp::get(k_alive.clone(), Some(GetOptions::new().with_count_only())),
                    TxnOp::get(self.key("active"), None),
                ]))
                .await
                .map_err(|e| map_err(&e))?;
            let member = kvs_of(&read, 0);
            let Some(kv) = member.first() else {
                if let Some(t) = &tombstone {
                    client
                        .txn(Txn::new().and_then([t.clone()]))
                        .await
                        .map_err(|e| map_err(&e))?;
                }
                // Not a member (any more); still drop its alive key, in case only the record
                // was lost.
                client
                    .delete(k_alive.clone(), None)
                    .await
                    .map_err(|e| map_err(&e))?;
                break;
            };
            let stored = parse_stored(kv);
            let name = stored
                .as_ref()
                .map(|s| s.node.name.clone())
                .unwrap_or_default();
            lease = lease.or(stored.as_ref().map(|s| s.lease));
            let mut detail = BTreeMap::from([("name".to_string(), name.clone())]);
            if !by.is_empty() {
                detail.insert("by".into(), by.into());
            }
            let mut ops = vec![
                TxnOp::delete(k_member.clone(), None),
                TxnOp::delete(k_alive.clone(), None),
                self.name_release(&name, id),
                self.event_put(kind, id, detail),
            ];
            ops.extend(tombstone.clone());
            if count_of(&read, 1) > 0 {
                // It counted as active: it counts no more (not compared, as in `register`).
                let mut count = kvs_of(&read, 2)
                    .first()
                    .map(parse_active)
                    .unwrap_or_default();
                count.n = count.n.saturating_sub(1);
                if !self.is_node_user() {
                    ops.push(TxnOp::put(self.key("active"), count.to_json(), None));
                }
            }
            let resp = client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            k_member.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then(ops),
                )
                .await
                .map_err(|e| map_err(&e))?;
            if resp.succeeded() {
                was = true;
                break;
            }
        }
        // The lease now holds nothing of ours; revoking it ends it at once.
        if let Some(l) = lease {
            Self::revoke(&mut client, l).await?;
        }
        self.set_local_lease(id, None);
        Ok(was)
    }

    /// Every member record and the ids whose `alive/` key exists (with their lease), read in
    /// one transaction.
    async fn member_snapshot(
        &self,
        client: &mut Client,
    ) -> Result<(Vec<KeyValue>, BTreeMap<String, i64>), ClusterError> {
        let lists = client
            .txn(Txn::new().and_then([
                TxnOp::get(self.key("members/"), Some(GetOptions::new().with_prefix())),
                TxnOp::get(
                    self.key("alive/"),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            ]))
            .await
            .map_err(|e| map_err(&e))?;
        let alive_prefix = self.key("alive/");
        let live = kvs_of(&lists, 1)
            .iter()
            .filter_map(|kv| {
                let id = kv.key_str().ok()?.strip_prefix(&alive_prefix)?;
                Some((id.to_string(), kv.lease()))
            })
            .collect();
        Ok((kvs_of(&lists, 0), live))
    }

    /// Seconds since each lease was last renewed, from etcd's remaining TTL (whole seconds,
    /// rounded down by etcd, so the age is a lower bound with a resolution of one second);
    /// `None` for a lease that has run out. Asked with a few requests in flight at once.
    async fn lease_ages(
        client: &Client,
        leases: Vec<i64>,
    ) -> Result<HashMap<i64, Option<u64>>, ClusterError> {
        const IN_FLIGHT: usize = 64;
        let mut tasks = tokio::task::JoinSet::new();
        let per = leases.len().div_ceil(IN_FLIGHT).max(1);
        for chunk in leases.chunks(per) {
            let (mut c, chunk) = (client.clone(), chunk.to_vec());
            tasks.spawn(async move {
                let mut out = Vec::with_capacity(chunk.len());
                for l in chunk {
                    let age = match c.lease_time_to_live(l, None).await {
                        Ok(r) if r.ttl() >= 0 => {
                            Some((r.granted_ttl() - r.ttl() - 1).max(0) as u64)
                        }
                        Ok(_) => None,
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.message().contains("not found") =>
                        {
                            None
                        }
                        Err(e) => return Err(map_err(&e)),
                    };
                    out.push((l, age));
                }
                Ok(out)
            });
        }
        let mut ages = HashMap::with_capacity(leases.len());
        while let Some(done) = tasks.join_next().await {
            let part = done.map_err(|e| backend_err(format!("lease lookup failed: {e}")))??;
            ages.extend(part);
        }
        Ok(ages)
    }

    /// The member list, or one page of it (`page`: limit and cursor).
    async fn members_inner(
        &self,
        mut client: Client,
        page: Option<(usize, Option<&str>)>,
    ) -> Result<(Vec<Member>, Option<String>), ClusterError> {
        let (records, live) = self.member_snapshot(&mut client).await?;
        let mut stored: Vec<Stored> = records.iter().filter_map(parse_stored).collect();
        stored.sort_by(|a, b| {
            a.node
                .name
                .cmp(&b.node.name)
                .then(a.node.id.cmp(&b.node.id))
        });
        let mut next = None;
        if let Some((limit, cursor)) = page {
            let after = cursor.and_then(super::parse_cursor);
            stored.retain(|s| match &after {
                Some((n, i)) => {
                    (s.node.name.as_str(), s.node.id.as_str()) > (n.as_str(), i.as_str())
                }
                None => true,
            });
            if stored.len() > limit {
                stored.truncate(limit);
                next = stored.last().map(|s| super::cursor_of(&s.node));
            }
        }
        let leases: Vec<i64> = stored
            .iter()
            .filter_map(|s| live.get(&s.node.id).copied())
            .collect();
        // A lease's age costs one call each: a list of more active members than the budget
        // reports them active (the alive keys say so) without asking, their age unknown.
        let asked = leases.len() <= AGE_LOOKUPS;
        let ages = if asked {
            Self::lease_ages(&client, leases).await?
        } else {
            HashMap::new()
        };
        let now = now_ms();
        let timeout_ms = self.timing.timeout.as_millis() as u64;
        let out = stored
            .into_iter()
            .map(|s| {
                let lease = live.get(&s.node.id);
                let age = lease.and_then(|l| ages.get(l).copied().flatten());
                let unasked = !asked && lease.is_some();
                let (state, last) = match age {
                    Some(secs) => (MemberState::Active, now.saturating_sub(secs * 1000)),
                    None if unasked => (MemberState::Active, now),
                    // Its lease is gone, so its last renewal is at least a timeout old; not
                    // older than its registration, which the record keeps.
                    None => (
                        MemberState::Expired,
                        now.saturating_sub(timeout_ms)
                            .max(s.last_heartbeat_ms.min(now)),
                    ),
                };
                Member {
                    state,
                    last_heartbeat_ms: last,
                    age_ms: now.saturating_sub(last),
                    node: s.node,
                    age_known: !unasked,
                }
            })
            .collect();
        Ok((out, next))
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
                            self.key(&format!("alive/{}", n.id)),
                            l.to_string(),
                            with(),
                        ));
                        ops.push(TxnOp::put(
                            self.key(&format!("members/{}", n.id)),
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

    /// etcd's revision and database size in bytes (`Status`).
    pub async fn bench_status(&self) -> Result<(i64, i64), ClusterError> {
        self.run("status", |mut c| async move {
            let s = c.status().await.map_err(|e| map_err(&e))?;
            Ok((s.header().map(|h| h.revision()).unwrap_or(0), s.db_size()))
        })
        .await
    }

    /// The user name `create_node_user` gives a node: `<prefix>-node-<name>`, with the key
    /// prefix reduced as `users::user_name` says (`fleet:` gives `fleet-node-server-03`).
    pub fn node_user_name(&self, node_name: &str) -> String {
        super::users::user_name(&self.key_prefix, "node", node_name)
    }

    /// Creates an etcd user for a new node, with a role (of the same name) that may read and
    /// write the cluster's key prefix and nothing else, and records it in `users/<node_name>`.
    /// Needs an etcd with auth enabled and a configured `etcd_username` that has the `root`
    /// role. Creating it again gives it a new password. Returns the user name and its password.
    pub async fn create_node_user(
        &self,
        node_name: &str,
    ) -> Result<(String, Secret), ClusterError> {
        crate::identity::validate_node_name(node_name).map_err(backend_err)?;
        let Some(me) = self.username.clone() else {
            return Err(ClusterError::Auth {
                backend: NAME,
                reason: "creating node users needs cluster.etcd_username: a user with the root role, on an etcd with auth enabled".into(),
            });
        };
        let user = self.node_user_name(node_name);
        let password = Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 32));
        let users_key = self.key(&format!("users/{node_name}"));
        let (u, pw) = (user.clone(), password.clone());
        // An admin's operation of several raft writes (role, five grants, user): a deadline of
        // its own, longer than a heartbeat's.
        let deadline = std::time::Duration::from_secs(15);
        self.run_within("creating a node user", deadline, |mut client| async move {
            let roles = client
                .user_get(me.clone())
                .await
                .map_err(|e| map_err(&e))?
                .roles()
                .to_vec();
            if !roles.iter().any(|r| r == "root") {
                return Err(ClusterError::Auth {
                    backend: NAME,
                    reason: format!(
                        "etcd user `{me}` lacks the root role, so it cannot create node users"
                    ),
                });
            }
            match client.role_add(u.clone()).await {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("already exists") => {}
                Err(e) => return Err(map_err(&e)),
            }
            // Read the cluster, write its own keys (`etcd/roles.rs`).
            self.narrow_role(&mut client, &u, node_name).await?;
            match client.user_add(u.clone(), pw.expose(), None).await {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("already exists") =>
                {
                    client
                        .user_change_password(u.clone(), pw.expose())
                        .await
                        .map_err(|e| map_err(&e))?;
                }
                Err(e) => return Err(map_err(&e)),
            }
            client
                .user_grant_role(u.clone(), u.clone())
                .await
                .map_err(|e| map_err(&e))?;
            client
                .put(users_key, u.clone(), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await?;
        log::info!("created etcd user {user} for node {node_name}");
        Ok((user, password))
    }

    /// Deletes the user `create_node_user` made for `node_name` and its `users/` record (a
    /// build that failed after making it).
    pub async fn forget_node_user(&self, node_name: &str, user: &str) -> Result<(), ClusterError> {
        self.delete_node_user(user).await?;
        let key = self.key(&format!("users/{node_name}"));
        self.run("forgetting a node user", |mut client| async move {
            client.delete(key, None).await.map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await
    }

    /// After a node left by an admin's removal: deletes the etcd user recorded for its name,
    /// unless a live node holds that name now (it would be that node's credential). A failure
    /// is logged, not returned: the node is out of the cluster either way.
    async fn delete_user_of(&self, name: &str) {
        let (k_user, k_name) = (
            self.key(&format!("users/{name}")),
            self.key(&format!("names/{name}")),
        );
        let found = self
            .run("reading a node user", |mut client| async move {
                let resp = client
                    .txn(Txn::new().and_then([
                        TxnOp::get(k_user.clone(), None),
                        TxnOp::get(k_name.clone(), None),
                    ]))
                    .await
                    .map_err(|e| map_err(&e))?;
                let user = kvs_of(&resp, 0)
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                Ok(user.filter(|_| count_of(&resp, 1) == 0))
            })
            .await;
        match found {
            Ok(Some(user)) => {
                if let Err(e) = self.forget_node_user(name, &user).await {
                    log::error!(
                        "node {name} removed, but its etcd user {user} was not deleted: {e} (delete it from the primary, or with `etcdctl user delete {user}`)"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("node {name} removed, but its etcd user was not looked up: {e}"),
        }
    }

    /// Deletes a node's etcd user and its role; deleting one that is not there is fine.
    pub async fn delete_node_user(&self, user: &str) -> Result<(), ClusterError> {
        let u = user.to_string();
        self.run("deleting a node user", |mut client| async move {
            let gone = |r: Result<(), etcd_client::Error>| match r {
                Ok(()) => Ok(()),
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => {
                    Ok(())
                }
                Err(e) => Err(map_err(&e)),
            };
            gone(client.user_delete(u.clone()).await.map(|_| ()))?;
            gone(client.role_delete(u.clone()).await.map(|_| ()))
        })
        .await?;
        log::info!("deleted etcd user {user}");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Membership for EtcdMembership {
    fn kind(&self) -> BackendKind {
        BackendKind::Etcd
    }

    fn users(&self) -> Option<&dyn super::BackendUsers> {
        Some(self)
    }

    async fn housekeeping(&self) -> Result<(), ClusterError> {
        self.narrow_node_roles().await
    }

    async fn register(&self, node: &NodeRecord) -> Result<usize, ClusterError> {
        self.run("register", |c| self.register_inner(c, node)).await
    }

    async fn heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError> {
        self.run("heartbeat", |c| self.heartbeat_inner(c, node))
            .await
    }

    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError> {
        self.run("leave", |c| {
            self.leave_inner(c, node_id, EventKind::Left, "")
        })
        .await
        .map(|_| ())
    }

    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError> {
        let by = if by.is_empty() { "admin" } else { by };
        let k_member = self.key(&format!("members/{node_id}"));
        // The record names the node; without one (pruned already), the id does: `<name>-<6>`.
        let name = self
            .run("remove", |mut c| async move {
                let resp = c.get(k_member, None).await.map_err(|e| map_err(&e))?;
                Ok(resp
                    .kvs()
                    .first()
                    .and_then(parse_stored)
                    .map(|s| s.node.name))
            })
            .await?
            .or_else(|| node_id.rsplit_once('-').map(|(n, _)| n.to_string()));
        let was = self
            .run("remove", |c| {
                self.leave_inner(c, node_id, EventKind::Removed, by)
            })
            .await?;
        if let Some(name) = name {
            self.delete_user_of(&name).await;
        }
        Ok(was)
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        self.run_within("members", LIST_DEADLINE, |c| async move {
            self.members_inner(c, None).await.map(|(m, _)| m)
        })
        .await
    }

    async fn members_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Member>, Option<String>), ClusterError> {
        self.run_within("members", LIST_DEADLINE, |c| {
            self.members_inner(c, Some((limit, cursor)))
        })
        .await
    }

    async fn live_holders(
        &self,
        name: Option<&str>,
        ips: &[std::net::IpAddr],
    ) -> Result<super::Holders, ClusterError> {
        // The records and the alive keys in one read; no lease lookups (ages are not needed).
        self.run_within("members", LIST_DEADLINE, |mut c| async move {
            let (records, live) = self.member_snapshot(&mut c).await?;
            let mut out = super::Holders::default();
            for s in records.iter().filter_map(parse_stored) {
                if !live.contains_key(&s.node.id) {
                    continue;
                }
                if out.name.is_none() && name == Some(s.node.name.as_str()) {
                    out.name = Some(s.node.id.clone());
                }
                if out.ip.is_none()
                    && let Some(ip) = ips.iter().find(|ip| {
                        s.node
                            .addresses
                            .iter()
                            .any(|a| a.parse().ok() == Some(**ip))
                    })
                {
                    out.ip = Some((*ip, s.node.id.clone()));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn active_count(&self) -> Result<usize, ClusterError> {
        self.run("active count", |mut c| async move {
            let resp = c
                .get(self.key("active"), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(resp.kvs().first().map(parse_active).unwrap_or_default().n)
        })
        .await
    }

    async fn prune(&self) -> Result<Vec<String>, ClusterError> {
        self.run("prune", |mut c| async move {
            let (gone, active) = self.prune_inner(&mut c).await?;
            let k_active = self.key("active");
            let rev = c
                .get(k_active.clone(), None)
                .await
                .map_err(|e| map_err(&e))?
                .kvs()
                .first()
                .map(parse_active)
                .unwrap_or_default()
                .rev;
            c.put(k_active, ActiveCount { n: active, rev }.to_json(), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(gone)
        })
        .await
    }

    async fn record_event(&self, event: &Event) -> Result<(), ClusterError> {
        self.run("event", |mut c| async move {
            let op = self.event_put(event.kind, &event.node_id, event.detail.clone());
            c.txn(Txn::new().and_then([op]))
                .await
                .map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await
    }

    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError> {
        self.run("events", |mut c| async move {
            let resp = c
                .get(
                    self.key("events/"),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(limit as i64),
                    ),
                )
                .await
                .map_err(|e| map_err(&e))?;
            Ok(resp
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect())
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
}
