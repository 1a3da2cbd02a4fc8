//! The Redis (or Valkey) backend. Every membership change is one Lua script, so it is atomic
//! and its time comes from the Redis server's clock (`TIME`), never a node's.
//!
//! Keys, under the configured prefix (default `fleet:`):
//! `cluster:members` ZSET id → last heartbeat ms; `cluster:node:<id>` HASH, expiring after twice
//! the timeout; `cluster:names` HASH name → id of its holder; `cluster:ips` HASH address → id of
//! the node that registered it last; `cluster:order` ZSET of `<name>\0<id>` (all scores 0: read
//! by lex range, the pages of the member list); `cluster:events` STREAM (capped);
//! `cluster:removed:<id>` a tombstone set when an admin removes a node;
//! `cluster:backfill-turn` and `cluster:backfill-cursor`, the index backfill's turn and ZSCAN
//! cursor (members an older version registered get their `order` and `ips` entries).
//! The member list runs on a connection of its own, driven by a thread of its own, so a node's
//! heartbeats and status reads never wait behind a list of 100,000 members.
//! The scripts derive keys from the prefix, which is fine for a single Redis (or a replicated
//! pair), not for Redis Cluster.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::{
    ClusterError, EVENTS_CAP, EnrollmentRecord, Event, EventKind, Heartbeat, Member, MemberState,
    Membership, NodeRecord, REMOVAL_TOMBSTONE, Timing,
};
use crate::config::{BackendKind, ClusterConfig, Secret};

const NAME: &str = "redis";

/// Shared Lua: `now_ms()` and `prune(prefix, now, timeout, limit, cap)`.
const LUA_LIB: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function unindex(prefix, id, nkey)
  local f = redis.call('HMGET', nkey, 'name', 'ips')
  local name = f[1] or string.match(id, '^(.*)%-[^%-]*$') or id
  redis.call('ZREM', prefix .. 'cluster:order', name .. '\0' .. id)
  if f[2] then
    for ip in string.gmatch(f[2], '[^,]+') do
      if redis.call('HGET', prefix .. 'cluster:ips', ip) == id then
        redis.call('HDEL', prefix .. 'cluster:ips', ip)
      end
    end
  end
  return f[1]
end
local function own_alive(prefix, id, timeout)
  local n = string.match(id, '^(.*)%-[^%-]*$')
  if not n then return nil end
  local sk = prefix .. 'cluster:self:' .. n
  if redis.call('HGET', sk, 'id') ~= id then return nil end
  local p = redis.call('PTTL', sk)
  if p > timeout and p <= 2 * timeout then return p end
  return nil
end
local function forget(prefix, id)
  local nkey = prefix .. 'cluster:node:' .. id
  local name = unindex(prefix, id, nkey)
  redis.call('DEL', nkey)
  local n = name or string.match(id, '^(.*)%-[^%-]*$')
  if n and redis.call('HGET', prefix .. 'cluster:self:' .. n, 'id') == id then
    redis.call('DEL', prefix .. 'cluster:self:' .. n)
  end
  if name and redis.call('HGET', prefix .. 'cluster:names', name) == id then
    redis.call('HDEL', prefix .. 'cluster:names', name)
  end
  return name or ''
end
local function event(prefix, cap, kind, id, now, ...)
  redis.call('XADD', prefix .. 'cluster:events', 'MAXLEN', '~', cap, '*',
    'kind', kind, 'node_id', id, 'at_ms', string.format('%d', now), ...)
end
local function prune(prefix, now, timeout, limit, cap)
  local members = prefix .. 'cluster:members'
  local old = redis.call('ZRANGEBYSCORE', members, '-inf', now - timeout, 'LIMIT', 0, limit)
  local gone = {}
  for _, id in ipairs(old) do
    -- A node with a user of its own heartbeats on its own key: alive there, it stays.
    local p = own_alive(prefix, id, timeout)
    if p then
      redis.call('ZADD', members, now - (2 * timeout - p), id)
    else
      redis.call('ZREM', members, id)
      local name = forget(prefix, id)
      event(prefix, cap, 'expired', id, now, 'name', name)
      gone[#gone + 1] = id
    end
  end
  return gone
end
local function active(prefix, now, timeout)
  return redis.call('ZCOUNT', prefix .. 'cluster:members', now - timeout + 1, '+inf')
end
"#;

/// ARGV: prefix, cap, timeout_ms, id, name, ips (comma-separated), field, value, …
const REGISTER: &str = r#"
local prefix, cap, timeout, id, name, ips = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()
if redis.call('EXISTS', prefix .. 'cluster:removed:' .. id) == 1 then return {'removed', ''} end
local sk = prefix .. 'cluster:self:' .. name
local sh = redis.call('HGET', sk, 'id')
if sh and sh ~= id then
  local p = redis.call('PTTL', sk)
  if p > timeout and p <= 2 * timeout then return {'name_taken', sh} end
end
local members = prefix .. 'cluster:members'
local holder = redis.call('HGET', prefix .. 'cluster:names', name)
if holder and holder ~= id then
  local s = redis.call('ZSCORE', members, holder)
  if s and now - tonumber(s) < timeout then return {'name_taken', holder} end
end
local prev = redis.call('ZSCORE', members, id)
local fresh = (not prev) or (now - tonumber(prev) >= timeout)
redis.call('ZADD', members, now, id)
redis.call('HSET', prefix .. 'cluster:names', name, id)
local nkey = prefix .. 'cluster:node:' .. id
unindex(prefix, id, nkey)
redis.call('DEL', nkey)
redis.call('HSET', nkey, 'ips', ips, unpack(ARGV, 7))
redis.call('PEXPIRE', nkey, timeout * 2)
redis.call('ZADD', prefix .. 'cluster:order', 0, name .. '\0' .. id)
for ip in string.gmatch(ips, '[^,]+') do
  redis.call('HSET', prefix .. 'cluster:ips', ip, id)
end
if fresh then event(prefix, cap, 'joined', id, now, 'name', name) end
return {'ok', tostring(active(prefix, now, timeout))}
"#;

/// ARGV: prefix, cap, timeout_ms, id, prune_limit
const HEARTBEAT: &str = r#"
local prefix, cap, timeout, id, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now = now_ms()
if redis.call('EXISTS', prefix .. 'cluster:removed:' .. id) == 1 then return {'removed', ''} end
local members = prefix .. 'cluster:members'
local nkey = prefix .. 'cluster:node:' .. id
local s = redis.call('ZSCORE', members, id)
if (not s) or now - tonumber(s) >= timeout or redis.call('EXISTS', nkey) == 0 then
  return {'not_member', ''}
end
redis.call('ZADD', members, now, id)
redis.call('PEXPIRE', nkey, timeout * 2)
prune(prefix, now, timeout, limit, cap)
return {'ok', tostring(active(prefix, now, timeout))}
"#;

/// ARGV: prefix, cap, id, kind ('left' or 'removed'), tombstone_ms (0: none), by
const LEAVE: &str = r#"
local prefix, cap, id, kind, tomb, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local now = now_ms()
local was = redis.call('ZREM', prefix .. 'cluster:members', id)
local name = forget(prefix, id)
if tomb > 0 then redis.call('SET', prefix .. 'cluster:removed:' .. id, by, 'PX', tomb) end
if was == 1 then
  if by ~= '' then event(prefix, cap, kind, id, now, 'name', name, 'by', by)
  else event(prefix, cap, kind, id, now, 'name', name) end
end
return was
"#;

/// ARGV: prefix, cap, timeout_ms, limit
const PRUNE: &str = r#"
local prefix, cap, timeout, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
return prune(prefix, now_ms(), timeout, limit, cap)
"#;

/// The primary copies the own records of nodes with users of their own into the indexes.
/// ARGV: prefix, cap, timeout_ms, then per node: id, name, last heartbeat ms, ips, n, n fields
/// and values. The indexes are rewritten only when the member is new or its addresses moved.
const ADOPT: &str = r#"
local prefix, cap, timeout = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local members = prefix .. 'cluster:members'
local i, n = 4, 0
while i <= #ARGV do
  local id, name, score, ips, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], tonumber(ARGV[i + 4])
  local first = i + 5
  i = i + 5 + nf * 2
  if redis.call('EXISTS', prefix .. 'cluster:removed:' .. id) == 0 then
    local prev = redis.call('ZSCORE', members, id)
    local fresh = ((not prev) or (now - tonumber(prev) >= timeout)) and (now - score < timeout)
    redis.call('ZADD', members, score, id)
    local nkey = prefix .. 'cluster:node:' .. id
    if fresh or redis.call('HGET', nkey, 'ips') ~= ips then
      redis.call('HSET', prefix .. 'cluster:names', name, id)
      unindex(prefix, id, nkey)
      redis.call('DEL', nkey)
      redis.call('HSET', nkey, 'ips', ips, unpack(ARGV, first, first + nf * 2 - 1))
      redis.call('ZADD', prefix .. 'cluster:order', 0, name .. '\0' .. id)
      for ip in string.gmatch(ips, '[^,]+') do
        redis.call('HSET', prefix .. 'cluster:ips', ip, id)
      end
    end
    redis.call('PEXPIRE', nkey, timeout * 2)
    if fresh then event(prefix, cap, 'joined', id, now, 'name', name) end
    n = n + 1
  end
end
return n
"#;

/// ARGV: prefix, timeout_ms → {now, active}
const ACTIVE: &str = r#"
local now = now_ms()
return {tostring(now), tostring(active(ARGV[1], now, tonumber(ARGV[2])))}
"#;

/// ARGV: prefix, then id, name, ips (comma-separated) for each member registered without the
/// indexes (by a version before them) → how many were indexed. A record that has its `ips`
/// field meanwhile (its node registered again) is left alone; an address held already stays
/// with its holder (HSETNX: that one registered later).
const BACKFILL: &str = r#"
local prefix, done = ARGV[1], 0
for i = 2, #ARGV - 2, 3 do
  local id, name, ips = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nkey = prefix .. 'cluster:node:' .. id
  if redis.call('EXISTS', nkey) == 1 and redis.call('HEXISTS', nkey, 'ips') == 0 then
    redis.call('HSET', nkey, 'ips', ips)
    redis.call('ZADD', prefix .. 'cluster:order', 0, name .. '\0' .. id)
    for ip in string.gmatch(ips, '[^,]+') do
      redis.call('HSETNX', prefix .. 'cluster:ips', ip, id)
    end
    done = done + 1
  end
end
return done
"#;

/// ARGV: none → now in ms
const NOW: &str = r#"
return tostring(now_ms())
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_LIB}\n{body}"))
}

static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(REGISTER));
static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(HEARTBEAT));
static LEAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LEAVE));
static PRUNE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PRUNE));
static ACTIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ACTIVE));
static NOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(NOW));
static ADOPT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ADOPT));
static BACKFILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(BACKFILL));

/// The fields of a node's hash, as `NodeRecord::to_fields` writes them.
const RECORD_FIELDS: [&str; 7] = [
    "name",
    "hostname",
    "addresses",
    "version",
    "os",
    "started_at",
    "url",
];

/// A node record from the values of `HMGET … RECORD_FIELDS`, in that order (no map in
/// between: the member list of a large cluster is built from 10,000s of these).
fn record_from_row(id: String, row: Vec<Option<String>>) -> NodeRecord {
    let mut it = row.into_iter().map(Option::unwrap_or_default);
    let mut next = || it.next().unwrap_or_default();
    let (name, hostname, addresses, version, os, started_at, url) =
        (next(), next(), next(), next(), next(), next(), next());
    NodeRecord {
        id,
        name,
        hostname,
        addresses: addresses
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
        version,
        os,
        started_at: started_at.parse().unwrap_or(0),
        url,
    }
}

/// An HMGET answer as its row of values (an answer that is not one: an empty row, as for a
/// record that is gone).
fn row_of_value(v: redis::Value) -> Vec<Option<String>> {
    redis::from_redis_value(v).unwrap_or_default()
}

/// A member from its id, heartbeat score and record row (`HMGET … RECORD_FIELDS`), alive when
/// that heartbeat is within `timeout` of `now` (both on Redis's clock).
fn member_of_row(
    id: String,
    score: f64,
    row: Vec<Option<String>>,
    now: u64,
    timeout: u64,
) -> Member {
    let last = score as u64;
    let age = now.saturating_sub(last);
    let mut node = record_from_row(id, row);
    if node.name.is_empty() {
        node.name = node
            .id
            .rsplit_once('-')
            .map(|(n, _)| n)
            .unwrap_or(&node.id)
            .into();
    }
    Member::aged(node, last, age, timeout)
}

mod membership;
mod roles;
mod sentinel;
mod sessions;
mod users;
use roles::Role;
pub use sentinel::Sentinel;
pub use sessions::RedisSessions;
pub use users::LOCAL_FILE as NODE_USERS_FILE;

/// Members pruned at most per heartbeat, so one heartbeat stays short after a mass outage.
const PRUNE_LIMIT: usize = 100;
/// Members read per step (ZSCAN, then their records pipelined) by the member list: small
/// enough that Redis (a step's commands) and this process (decoding a step's answer, on an async
/// worker that cannot be preempted) each hold the CPU well under a millisecond at a time.
const LIST_BATCH: usize = 250;
/// The runtime of every member list's connection (see `query_list`): one thread for the whole
/// process, started at the first list, never dropped. `None` if the thread could not be
/// started: then the lists run on the caller's runtime, as before.
static LIST_RUNTIME: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("redis-list")
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            log::warn!("member lists run beside status reads: no thread of their own ({e})");
            None
        }
    }
});
/// Lists of at least this many members are built and sorted on a blocking thread.
const OFFLOAD_AT: usize = 2000;
/// Members the index backfill looks at per turn, and how long a turn is held: one node of the
/// cluster takes it (`cluster:backfill-turn`), so 10,000 nodes' housekeeping is not 10,000
/// scans; a pass over 10,000 members takes 20 turns.
const BACKFILL_BATCH: usize = 500;
const BACKFILL_TURN_MS: u64 = 10_000;

/// Membership in Redis.
pub struct RedisMembership {
    /// Replaced after a refused handshake (see `after_error`) or a Sentinel move.
    conn: std::sync::RwLock<ConnectionManager>,
    /// For the member list only (see the module comment); replaced with `conn`.
    list_conn: std::sync::RwLock<ConnectionManager>,
    /// To connect again; holds the password (never printed: see `Debug` below).
    info: redis::ConnectionInfo,
    prefix: String,
    timing: Timing,
    /// `host:port` or the socket path, for messages (never credentials).
    address: String,
    /// The local copy of the node users' password digests (`users.rs`), if this process keeps one.
    users_file: Option<std::path::PathBuf>,
    /// Set when the master is found through Sentinel (`sentinel.rs`).
    sentinel: Option<sentinel::Sentinel>,
    /// The last housekeeping found that this connection may manage users (`users.rs`).
    manages_users: std::sync::atomic::AtomicBool,
    /// What this credential may write (`roles.rs`), from its user name.
    role: Role,
    /// The database the users' `SELECT` is limited to.
    db: i64,
    /// When this process last tried the primary's adoption turn (`roles.rs`).
    adopted_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether housekeeping has rewritten the node users' rules since this process started.
    rules_applied: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RedisMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMembership")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds the connection settings from the configuration; the password goes only here.
pub fn connection_info(cfg: &ClusterConfig) -> Result<redis::ConnectionInfo, ClusterError> {
    let addr = match (&cfg.redis_socket, &cfg.redis_host) {
        (Some(path), _) => ConnectionAddr::Unix(path.clone()),
        (None, Some(host)) if cfg.redis_tls => ConnectionAddr::TcpTls {
            host: host.clone(),
            port: cfg.redis_port,
            insecure: false,
            tls_params: None,
        },
        (None, Some(host)) => ConnectionAddr::Tcp(host.clone(), cfg.redis_port),
        (None, None) => {
            return Err(ClusterError::Backend {
                backend: NAME,
                reason: "no redis_host or redis_socket configured".into(),
            });
        }
    };
    let mut settings = RedisConnectionInfo::default().set_db(cfg.redis_db);
    if let Some(user) = &cfg.redis_username {
        settings = settings.set_username(user);
    }
    if let Some(pw) = &cfg.redis_password {
        settings = settings.set_password(pw.expose());
    }
    let info = addr
        .into_connection_info()
        .map_err(|e| map_err(&e))?
        .set_redis_settings(settings);
    with_tls_ca(info, cfg)
}

/// With TLS and `redis_tls_ca`, the connection trusts that CA instead of the public roots.
fn with_tls_ca(
    info: redis::ConnectionInfo,
    cfg: &ClusterConfig,
) -> Result<redis::ConnectionInfo, ClusterError> {
    let Some(ca) = &cfg.redis_tls_ca else {
        return Ok(info);
    };
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return Ok(info);
    }
    let pem =
        crate::config::files::read_trusted(ca, crate::config::files::PEM_CAP).map_err(|e| {
            ClusterError::Backend {
                backend: NAME,
                reason: format!("cluster.redis_tls_ca: cannot read {}: {e}", ca.display()),
            }
        })?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    let client = redis::Client::build_with_tls(info, certs).map_err(|e| ClusterError::Backend {
        backend: NAME,
        reason: format!("cluster.redis_tls_ca {}: {e}", ca.display()),
    })?;
    Ok(client.get_connection_info().clone())
}

/// Human-readable address of the configured Redis (no credentials).
pub fn describe_address(cfg: &ClusterConfig) -> String {
    match (&cfg.redis_socket, &cfg.redis_host) {
        (Some(p), _) => format!("unix:{}", p.display()),
        (None, Some(h)) => format!(
            "{}://{}:{}/{}",
            if cfg.redis_tls { "rediss" } else { "redis" },
            h,
            cfg.redis_port,
            cfg.redis_db
        ),
        _ => "(none)".into(),
    }
}

/// Makes a lazily connecting, auto-reconnecting connection with bounded waits.
pub fn connect_lazy(
    info: redis::ConnectionInfo,
    timing: &Timing,
) -> Result<ConnectionManager, ClusterError> {
    let client = redis::Client::open(info).map_err(|e| map_err(&e))?;
    let op = timing.op_timeout();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op))
        .set_response_timeout(Some(op))
        .set_number_of_retries(1)
        .set_min_delay(std::time::Duration::from_millis(50))
        .set_max_delay(op);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| map_err(&e))
}

/// Maps a Redis error to our kinds: outages are `Unreachable`, refused credentials `Auth`.
pub fn map_err(e: &redis::RedisError) -> ClusterError {
    let reason = e.to_string();
    let upper = reason.to_ascii_uppercase();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || upper.contains("WRONGPASS")
        || upper.contains("NOAUTH")
        || upper.contains("NOPERM")
    {
        ClusterError::Auth {
            backend: NAME,
            reason,
        }
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || upper.contains("LOADING")
    {
        ClusterError::Unreachable {
            backend: NAME,
            reason,
        }
    } else {
        ClusterError::Backend {
            backend: NAME,
            reason,
        }
    }
}

impl RedisMembership {
    pub fn new(cfg: &ClusterConfig, timing: Timing) -> Result<Self, ClusterError> {
        let (sentinel, info) = match sentinel::Sentinel::from_config(cfg) {
            Some((s, settings)) => (Some(s), connection_info(&settings)?),
            None => (None, connection_info(cfg)?),
        };
        let address = match &cfg.redis_master_name {
            Some(m) if sentinel.is_some() => format!("master {m} via Sentinel"),
            _ => describe_address(cfg),
        };
        let mut m = RedisMembership {
            conn: std::sync::RwLock::new(connect_lazy(info.clone(), &timing)?),
            list_conn: std::sync::RwLock::new(connect_lazy(info.clone(), &timing)?),
            info,
            prefix: cfg.key_prefix.to_string(),
            timing,
            address,
            users_file: None,
            sentinel,
            manages_users: std::sync::atomic::AtomicBool::new(false),
            role: Role::Admin,
            db: cfg.redis_db,
            adopted_at: std::sync::Mutex::new(None),
            rules_applied: std::sync::atomic::AtomicBool::new(false),
        };
        m.role = m.role_of(cfg.redis_username.as_deref());
        Ok(m)
    }

    /// Keeps the node users' password digests in `state_dir` too, to re-create them after the
    /// server lost them with its data.
    pub fn with_user_registry(mut self, state_dir: &std::path::Path) -> Self {
        self.users_file = Some(state_dir.join(NODE_USERS_FILE));
        self
    }

    fn timeout_ms(&self) -> u64 {
        self.timing.timeout.as_millis() as u64
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}cluster:{suffix}", self.prefix)
    }

    fn timed_out(&self, deadline: std::time::Duration) -> ClusterError {
        let e = ClusterError::Unreachable {
            backend: NAME,
            reason: match &self.sentinel {
                Some(s) => format!(
                    "no answer from {} ({}) within {deadline:?}",
                    self.address,
                    s.current()
                ),
                None => format!("no answer from {} within {deadline:?}", self.address),
            },
        };
        if let Some(s) = &self.sentinel {
            s.note_error(&e, false);
        }
        e
    }

    fn connection(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connection manager reconnects after I/O errors only: a handshake the server refused
    /// (a node user the server lost with a restart) would stay refused even once the user is
    /// back. Such a connection is replaced, so the next call authenticates afresh.
    fn after_error(&self, e: &redis::RedisError) -> ClusterError {
        if let Some(s) = &self.sentinel {
            // Resolving the master again also makes a fresh connection.
            let mapped = map_err(e);
            s.note_error(&mapped, e.to_string().contains("READONLY"));
            return mapped;
        }
        // `READONLY`: the server behind the name became a replica (a managed failover).
        if e.kind() == redis::ErrorKind::AuthenticationFailed || e.to_string().contains("READONLY")
        {
            let _ = self.reconnect(self.info.clone());
        }
        map_err(e)
    }

    /// Fresh connections (the heartbeat's and the member list's) to the server `info` names.
    fn reconnect(&self, info: redis::ConnectionInfo) -> Result<(), ClusterError> {
        let fresh = connect_lazy(info.clone(), &self.timing)?;
        let fresh_list = connect_lazy(info, &self.timing)?;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        *self.list_conn.write().unwrap_or_else(|p| p.into_inner()) = fresh_list;
        Ok(())
    }

    /// Runs a script with a deadline: the connection manager's own timeouts cover the socket,
    /// this one covers everything else (reconnect attempts included).
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[String],
    ) -> Result<T, ClusterError> {
        let mut inv = script.prepare_invoke();
        for a in args {
            inv.arg(a);
        }
        self.follow_master().await?;
        let mut conn = self.connection();
        let deadline = self.timing.op_timeout() * 2;
        match tokio::time::timeout(deadline, inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| self.after_error(&e)),
            Err(_) => Err(self.timed_out(deadline)),
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterError> {
        self.query_on(&self.conn, pipe).await
    }

    /// A query on the member list's own connection, run on `LIST_RUNTIME`: that connection's
    /// background task (reading the socket, parsing 100,000 records' answers) and the decoding
    /// run on that runtime's own thread, which the OS preempts, so the async workers that answer
    /// status reads and heartbeats are not held by a large list.
    async fn query_list<T: redis::FromRedisValue + Send + 'static>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterError> {
        let Some(list_runtime) = LIST_RUNTIME.as_ref() else {
            return self.query_on(&self.list_conn, pipe).await;
        };
        self.follow_master().await?;
        let mut conn = self
            .list_conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let deadline = self.timing.op_timeout() * 2;
        let pipe = pipe.clone();
        let task = list_runtime.spawn(async move {
            tokio::time::timeout(deadline, pipe.query_async::<T>(&mut conn)).await
        });
        match task.await {
            Ok(Ok(r)) => r.map_err(|e| self.after_error(&e)),
            Ok(Err(_)) => Err(self.timed_out(deadline)),
            Err(e) => Err(ClusterError::Backend {
                backend: NAME,
                reason: format!("the member list's query ended early: {e}"),
            }),
        }
    }

    async fn query_on<T: redis::FromRedisValue>(
        &self,
        conn: &std::sync::RwLock<ConnectionManager>,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterError> {
        self.follow_master().await?;
        let mut conn = conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        let deadline = self.timing.op_timeout() * 2;
        match tokio::time::timeout(deadline, pipe.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| self.after_error(&e)),
            Err(_) => Err(self.timed_out(deadline)),
        }
    }

    fn base_args(&self) -> Vec<String> {
        vec![self.prefix.clone(), EVENTS_CAP.to_string()]
    }

    /// The Redis server's clock, in ms since the epoch.
    pub async fn server_now_ms(&self) -> Result<u64, ClusterError> {
        if self.role != Role::Admin {
            let ((secs, micros),): ((u64, u64),) = self.query(redis::pipe().cmd("TIME")).await?;
            return Ok(secs * 1000 + micros / 1000);
        }
        let s: String = self.run(&NOW_SCRIPT, &[]).await?;
        Ok(s.parse().unwrap_or(0))
    }

    /// Writes a member as a heartbeat at `ms` would have: the benchmarks use it to simulate
    /// thousands of nodes without thousands of processes.
    pub async fn simulate_members(
        &self,
        nodes: &[NodeRecord],
        ms: u64,
    ) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.zadd(self.key("members"), &n.id, ms).ignore();
            let nkey = self.key(&format!("node:{}", n.id));
            pipe.hset_multiple(&nkey, &n.to_fields()).ignore();
            let ips = ips_of(n);
            pipe.hset(&nkey, "ips", ips.join(",")).ignore();
            pipe.pexpire(&nkey, (self.timeout_ms() * 2) as i64).ignore();
            pipe.hset(self.key("names"), &n.name, &n.id).ignore();
            pipe.zadd(self.key("order"), order_entry(&n.name, &n.id), 0)
                .ignore();
            for ip in ips {
                pipe.hset(self.key("ips"), ip, &n.id).ignore();
            }
        }
        self.query::<()>(&pipe).await
    }
}

/// A node's addresses in their canonical form (`IpAddr`'s), the keys of `cluster:ips`.
fn ips_of(node: &NodeRecord) -> Vec<String> {
    node.addresses
        .iter()
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
        .collect()
}

/// A member's entry in `cluster:order`.
fn order_entry(name: &str, id: &str) -> Vec<u8> {
    let mut e = name.as_bytes().to_vec();
    e.push(0);
    e.extend_from_slice(id.as_bytes());
    e
}

impl RedisMembership {
    /// One turn of the index backfill: members that a version before `cluster:order` and
    /// `cluster:ips` registered (their record lacks the `ips` field) get their entries, so that
    /// the pages list them and the build's address check sees them before they register again.
    /// Walks `cluster:members` with ZSCAN from the cursor the last turn stored. Returns the
    /// members indexed, or `None` when another node holds the turn.
    pub async fn backfill_indexes(&self) -> Result<Option<usize>, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.key("backfill-turn"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(BACKFILL_TURN_MS);
        pipe.get(self.key("backfill-cursor"));
        let (turn, cursor): (Option<String>, Option<u64>) = self.query(&pipe).await?;
        if turn.is_none() {
            return Ok(None);
        }
        let mut cmd = redis::cmd("ZSCAN");
        cmd.arg(self.key("members"))
            .arg(cursor.unwrap_or(0))
            .arg("COUNT")
            .arg(BACKFILL_BATCH);
        let ((next, flat),): ((u64, Vec<String>),) =
            self.query(redis::pipe().add_command(cmd)).await?;
        // ZSCAN answers member, score, member, score, …
        let ids: Vec<String> = flat.into_iter().step_by(2).collect();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.key(&format!("node:{id}")))
                .arg(&["name", "addresses", "ips"][..]);
        }
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = if ids.is_empty() {
            Vec::new()
        } else {
            self.query(&pipe).await?
        };
        let mut args = vec![self.prefix.clone()];
        for (id, (name, addresses, ips)) in ids.iter().zip(rows) {
            let (Some(name), None) = (name, ips) else {
                continue;
            };
            // Canonical forms, as registration writes them (`ips_of`).
            let canonical: Vec<String> = addresses
                .unwrap_or_default()
                .split(',')
                .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
                .map(|ip| ip.to_string())
                .collect();
            args.extend([id.clone(), name, canonical.join(",")]);
        }
        let done: usize = if args.len() > 1 {
            self.run(&BACKFILL_SCRIPT, &args).await?
        } else {
            0
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key("backfill-cursor")).arg(next);
        self.query::<()>(redis::pipe().add_command(cmd).ignore())
            .await?;
        if done > 0 {
            log::info!("indexed {done} members registered by an older version");
        }
        Ok(Some(done))
    }

    /// For the benchmarks: the raw commands a heartbeat cannot do without (move the member's
    /// score, extend its record's expiry), without the script's checks.
    pub async fn bench_floor_heartbeat(&self, id: &str, ms: u64) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.zadd(self.key("members"), id, ms).ignore();
        pipe.pexpire(
            self.key(&format!("node:{id}")),
            (self.timeout_ms() * 2) as i64,
        )
        .ignore();
        self.query::<()>(&pipe).await
    }
}

fn parse_outcome(reply: (String, String), node: &str) -> Result<Heartbeat, ClusterError> {
    match reply.0.as_str() {
        "ok" => Ok(Heartbeat::Alive {
            active: reply.1.parse().unwrap_or(0),
        }),
        "not_member" => Ok(Heartbeat::NotMember),
        "removed" => Ok(Heartbeat::Removed),
        other => Err(ClusterError::Backend {
            backend: NAME,
            reason: format!("unexpected script reply `{other}` for {node}"),
        }),
    }
}

impl RedisMembership {
    /// Member entries from ids and their heartbeat scores (`None`: gone from the set, skipped),
    /// reading the records with one pipelined HMGET each on the list's connection.
    async fn rows_to_members(
        &self,
        scores: Vec<(String, Option<f64>)>,
        now: u64,
    ) -> Result<Vec<Member>, ClusterError> {
        let scores: Vec<(String, f64)> = scores
            .into_iter()
            .filter_map(|(id, s)| Some((id, s?)))
            .collect();
        let mut out = Vec::with_capacity(scores.len());
        let timeout = self.timeout_ms();
        for chunk in scores.chunks(LIST_BATCH) {
            let rows = self
                .records_of(chunk.iter().map(|(id, _)| id.as_str()))
                .await?;
            out.extend(
                chunk
                    .iter()
                    .zip(rows)
                    .map(|((id, s), row)| member_of_row(id.clone(), *s, row, now, timeout)),
            );
        }
        Ok(out)
    }

    /// The records of `ids` (at most `LIST_BATCH`), one pipelined HMGET each on the list's
    /// connection. HMGET of fixed fields parses faster than HGETALL into maps.
    async fn records_of(
        &self,
        ids: impl Iterator<Item = &str>,
    ) -> Result<Vec<Vec<Option<String>>>, ClusterError> {
        Ok(self
            .raw_records_of(ids)
            .await?
            .into_iter()
            .map(row_of_value)
            .collect())
    }

    /// `records_of` as Redis's answers, not yet decoded (the full list decodes them on its
    /// blocking thread).
    async fn raw_records_of(
        &self,
        ids: impl Iterator<Item = &str>,
    ) -> Result<Vec<redis::Value>, ClusterError> {
        let mut pipe = redis::pipe();
        let mut any = false;
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.key(&format!("node:{id}")))
                .arg(&RECORD_FIELDS[..]);
            any = true;
        }
        if !any {
            return Ok(Vec::new());
        }
        self.query_list(&pipe).await
    }

    /// Every member of `cluster:members` whose name is not in `skip` (the roster, listed from
    /// their own records), with its score and record: `(id, score, HMGET row)`, unordered.
    /// Read with ZSCAN, `LIST_BATCH` at a time, each step followed by its records: never one
    /// reply of the whole set (Redis serves nobody else while it builds one, 20 ms at
    /// 100,000), so between two steps Redis answers the other clients. ZSCAN returns every
    /// member present for the whole scan, some possibly twice (kept once).
    async fn scan_member_rows(
        &self,
        skip: &std::collections::HashSet<&str>,
    ) -> Result<Vec<(String, f64, redis::Value)>, ClusterError> {
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut cursor = 0u64;
        // Bounded: 10,000 steps cover 10 million members; the cursor comes back to 0 long before.
        for _ in 0..10_000 {
            let mut cmd = redis::cmd("ZSCAN");
            cmd.arg(self.key("members"))
                .arg(cursor)
                .arg("COUNT")
                .arg(LIST_BATCH);
            let ((next, flat),): ((u64, Vec<String>),) =
                match self.query_list(redis::pipe().add_command(cmd)).await {
                    Ok(r) => r,
                    // A node user made before its rules had ZSCAN (until the primary's
                    // housekeeping rewrites them): the whole set in one reply, as before.
                    Err(ClusterError::Auth { .. }) if cursor == 0 && out.is_empty() => {
                        let mut pipe = redis::pipe();
                        pipe.zrange_withscores(self.key("members"), 0, -1);
                        let (all,): (Vec<(String, f64)>,) = self.query_list(&pipe).await?;
                        let flat = all
                            .into_iter()
                            .flat_map(|(id, s)| [id, s.to_string()])
                            .collect();
                        ((0, flat),)
                    }
                    Err(e) => return Err(e),
                };
            // ZSCAN answers member, score, member, score, …
            let mut batch: Vec<(String, f64)> = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(id), Some(score)) = (it.next(), it.next()) {
                let Ok(score) = score.parse::<f64>() else {
                    continue;
                };
                if roles::name_of_id(&id).is_some_and(|n| skip.contains(n)) || seen.contains(&id) {
                    continue;
                }
                seen.insert(id.clone());
                batch.push((id, score));
            }
            let rows = self
                .raw_records_of(batch.iter().map(|(id, _)| id.as_str()))
                .await?;
            out.extend(
                batch
                    .into_iter()
                    .zip(rows)
                    .map(|((id, s), row)| (id, s, row)),
            );
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(out)
    }

    async fn remove_member(&self, node_id: &str, by: &str) -> Result<bool, ClusterError> {
        let mut args = self.base_args();
        args.extend([
            node_id.into(),
            "removed".into(),
            REMOVAL_TOMBSTONE.as_millis().to_string(),
            if by.is_empty() { "admin" } else { by }.into(),
        ]);
        let was: i64 = self.run(&LEAVE_SCRIPT, &args).await?;
        Ok(was == 1)
    }

    /// The ACL user name for a node or an enrollment: `fleet-node-server-03`,
    /// `fleet-enroll-<token id>` (the key prefix, reduced to letters and digits, first).
    pub fn user_name(&self, kind: &str, id: &str) -> String {
        super::users::user_name(&self.prefix, kind, id)
    }

    async fn acl(&self, args: &[String]) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("ACL");
        for a in args {
            cmd.arg(a);
        }
        self.query::<()>(redis::pipe().add_command(cmd).ignore())
            .await
    }

    /// A Redis user of the node's own, limited to the cluster's key prefix (no admin or
    /// dangerous commands). `Err(Auth)` when this connection may not manage users (a managed
    /// Redis): the caller falls back to the shared credentials.
    pub async fn create_node_user(
        &self,
        node_name: &str,
    ) -> Result<(String, Secret), ClusterError> {
        let user = self.user_name("node", node_name);
        let password = super::random_password();
        self.acl(&setuser(
            &user,
            format!(">{}", password.expose()),
            self.node_rules(node_name),
        ))
        .await
        .map_err(acl_refused)?;
        // Kept so that housekeeping can re-create it when the server loses it; a user that
        // could not be kept is not handed out.
        if let Err(e) = self.remember_user(&user, &password).await {
            let _ = self.acl(&["DELUSER".into(), user.clone()]).await;
            return Err(e);
        }
        Ok((user, password))
    }

    /// The user a package uses to take its own enrollment record and nothing else: it may
    /// GETDEL that one key and append to the events stream (to record a rejection). Once the
    /// record is taken, it can read nothing.
    pub async fn create_enrollment_user(
        &self,
        token_id: &str,
        expires_ms: u64,
    ) -> Result<(String, Secret), ClusterError> {
        let user = self.user_name("enroll", token_id);
        let password = super::random_password();
        // No EVAL: a script can hold the server (a busy loop), and a package's holder must not
        // be able to stop the cluster's Redis. No XADD: a refusal is a note.
        self.acl(&setuser(
            &user,
            format!(">{}", password.expose()),
            self.enroll_rules(token_id),
        ))
        .await
        .map_err(acl_refused)?;
        // `expires_ms` is on the server's clock already (the build read it with
        // `backend_now_ms`); housekeeping compares it with `TIME`.
        // Remembered with the package's expiry: housekeeping deletes the user then, or a grace
        // period after its record is taken or revoked (`roles.rs`), so a used package keeps its
        // one remaining right (leaving a refusal note) no longer than that.
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.key("enroll-users")).arg(expires_ms).arg(&user);
        self.query::<()>(redis::pipe().add_command(cmd).ignore())
            .await?;
        Ok((user, password))
    }

    /// The node users that pending packages or members (by name) use.
    async fn node_users_in_use(&self) -> Result<std::collections::BTreeSet<String>, ClusterError> {
        let mut used: std::collections::BTreeSet<String> = self
            .list_enrollments()
            .await?
            .into_iter()
            .flat_map(|r| r.users)
            .collect();
        for m in self.members().await? {
            used.insert(self.user_name("node", &m.node.name));
        }
        Ok(used)
    }

    /// Deletes a user (Redis closes its connections).
    pub async fn delete_user(&self, user: &str) -> Result<(), ClusterError> {
        self.acl(&["DELUSER".into(), user.into()]).await?;
        if user.starts_with(&self.user_name("node", "")) {
            self.forget_user(user).await;
        }
        Ok(())
    }
}

/// ACL management refused (`NOPERM`, or ACL commands renamed away): an `Auth` error, so the
/// caller can fall back to the shared credentials.
fn acl_refused(e: ClusterError) -> ClusterError {
    match e {
        ClusterError::Backend { backend, reason } => ClusterError::Auth { backend, reason },
        other => other,
    }
}

/// `ACL SETUSER <user> reset on <credential> <rules…>`: the user made anew with exactly these
/// rights; `credential` is `>password` or `#sha256-digest`.
pub(super) fn setuser(user: &str, credential: String, rules: Vec<String>) -> Vec<String> {
    let mut args = vec![
        "SETUSER".to_string(),
        user.to_string(),
        "reset".into(),
        "on".into(),
        credential,
    ];
    args.extend(rules);
    args
}
