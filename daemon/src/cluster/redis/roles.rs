//! What each Redis credential may do, and the membership path of a node that runs with a user
//! of its own (`fleet-node-<name>`). Such a node writes only its own keys, `cluster:self:<name>`
//! (its record, which it PEXPIREs on every heartbeat: liveness is that key's TTL, counted by the
//! Redis server's clock) and `cluster:self:<name>:events` (events it asks to be recorded).
//! Everything shared (the indexes, the events stream, tombstones, the users and their
//! registries) is written by the primary's credential alone: its heartbeat copies the node
//! records into the indexes (`adopt`) and forwards the nodes' events and the refusals that
//! enrollment users left, after checking their size and shape. A node user also reads and
//! writes the session store (`<prefix>session:*`, in a selector of its own), so that a node
//! with its own user serves the dashboard. No Lua runs as a node or an
//! enrollment user: they get plain commands only, so they cannot hold the server in a script.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    LEAVE_SCRIPT, LIST_BATCH, NAME, RECORD_FIELDS, RedisMembership, ips_of, record_from_row,
};
use crate::cluster::{
    ClusterError, EVENTS_CAP, Event, EventKind, Heartbeat, Member, MemberState, NodeRecord,
};

/// Who this connection is, from its user name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// The primary's credential (or shared credentials): writes everything, as before.
    Admin,
    /// `fleet-node-<name>`: writes only its own keys.
    Node(String),
    /// `fleet-enroll-<token id>`: takes its own record, leaves one refusal note.
    Enroll(String),
}

/// Longest event note a node or an enrollment user may leave; larger ones are dropped unread.
pub(crate) const NOTE_CAP: usize = 4096;
/// How long an enrollment user outlives its record (taken or revoked), so that a second
/// machine refused with the same package can still record why.
const ENROLL_GRACE_MS: u64 = 10 * 60 * 1000;
/// Names read per pipeline when adopting node records.
const ADOPT_BATCH: usize = 500;
/// Records adopted per script: Redis runs nothing else while a script runs, so each stays
/// short (about 20 µs of Redis CPU a record: 500 a script held Redis for some 10 ms).
const ADOPT_SCRIPT_BATCH: usize = 50;
/// Event kinds a node may ask the primary to record (joins and leaves the primary sees itself).
const NODE_KINDS: [EventKind; 2] = [EventKind::EnrollmentRedeemed, EventKind::Left];

/// A note a node or an enrollment user leaves for the primary.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    node_id: String,
    #[serde(default)]
    detail: BTreeMap<String, String>,
}

/// Escapes the glob characters of Redis key patterns (a prefix is the admin's text).
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The node name an id carries (`<name>-<6 chars>`).
pub(crate) fn name_of_id(id: &str) -> Option<&str> {
    let (name, _) = id.rsplit_once('-')?;
    crate::identity::id_belongs_to(id, name).then_some(name)
}

fn valid_token_id(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Text another machine wrote, made safe to store and show: control characters gone, at most
/// `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A node's state from the TTL of its own key: the key is set to live twice the timeout at
/// each heartbeat, so its age is what is missing from that. A TTL longer than that (a
/// heartbeat "in the future") or none at all is not alive.
fn state_of(pttl: i64, timeout: u64) -> Option<(u64, MemberState)> {
    let full = (timeout * 2) as i64;
    match pttl {
        p if p > 0 && p <= full => {
            let age = (full - p) as u64;
            Some((
                age,
                if age < timeout {
                    MemberState::Active
                } else {
                    MemberState::Expired
                },
            ))
        }
        // Forged (no expiry, or longer than a heartbeat gives): listed, never alive.
        -1 => Some((timeout, MemberState::Expired)),
        p if p > full => Some((timeout, MemberState::Expired)),
        _ => None,
    }
}

impl RedisMembership {
    pub(crate) fn role_of(&self, username: Option<&str>) -> Role {
        let Some(u) = username else {
            return Role::Admin;
        };
        if let Some(name) = u.strip_prefix(&self.user_name("node", ""))
            && crate::identity::validate_node_name(name).is_ok()
        {
            return Role::Node(name.to_string());
        }
        if let Some(t) = u.strip_prefix(&self.user_name("enroll", ""))
            && valid_token_id(t)
        {
            return Role::Enroll(t.to_string());
        }
        Role::Admin
    }

    /// `Ok` for the primary's (or shared) credential; for a node's or an enrollment user, what
    /// it may not do (`what`), said plainly instead of Redis's NOPERM.
    pub(super) fn admin_only(&self, what: &str) -> Result<(), ClusterError> {
        match &self.role {
            Role::Admin => Ok(()),
            Role::Node(name) => Err(ClusterError::NotPermitted {
                backend: NAME,
                reason: format!(
                    "this node's own Redis user (node {name}) may change only its own records: {what} on the primary or on a node with the cluster's credentials"
                ),
            }),
            Role::Enroll(_) => Err(ClusterError::NotPermitted {
                backend: NAME,
                reason: format!("an enrollment user may not {what}"),
            }),
        }
    }

    /// A key pattern: the key's text escaped, a trailing `*` kept as the wildcard.
    fn pkey(&self, suffix: &str) -> String {
        match suffix.strip_suffix('*') {
            Some(base) => format!("{}*", glob_escape(&self.key(base))),
            None => glob_escape(&self.key(suffix)),
        }
    }

    /// A node user's rights (after its password): read the membership keys, write its own two,
    /// and use the session store.
    pub(super) fn node_rules(&self, name: &str) -> Vec<String> {
        let mut r: Vec<String> = vec!["resetkeys".into(), "resetchannels".into(), "-@all".into()];
        for k in [
            "members",
            "names",
            "ips",
            "order",
            "events",
            "roster",
            "node:*",
            "self:*",
            "removed:*",
        ] {
            r.push(format!("%R~{}", self.pkey(k)));
        }
        r.push(format!("~{}", self.pkey(&format!("self:{name}"))));
        r.push(format!("~{}", self.pkey(&format!("self:{name}:events"))));
        for c in [
            "ping",
            "time",
            "exists",
            "hget",
            "hmget",
            "pttl",
            "zrange",
            "zrangebylex",
            "zscan",
            "zscore",
            "zcount",
            "zcard",
            "xrevrange",
            "del",
            "hset",
            "hmset",
            "pexpire",
            "multi",
            "exec",
            "discard",
        ] {
            r.push(format!("+{c}"));
        }
        // The session store (`redis/sessions.rs`: SET … PX, GETEX … PX, DEL), in a selector of
        // its own so that these commands reach no cluster key. Sessions are signed with the
        // admin's key: a node stores and deletes them, it cannot mint one.
        r.push(format!(
            "(~{}* +set +getex +del)",
            glob_escape(&format!("{}session:", self.prefix))
        ));
        r.extend(self.select_rule());
        r
    }

    /// `SELECT` of the configured database only, and only when it is not 0 (the client selects
    /// a database at connect only then).
    fn select_rule(&self) -> Option<String> {
        (self.db != 0).then(|| format!("+select|{}", self.db))
    }

    /// An enrollment user's rights: GETDEL its own record, SET its own refusal note.
    pub(super) fn enroll_rules(&self, token_id: &str) -> Vec<String> {
        let mut r: Vec<String> = vec![
            "resetkeys".into(),
            "resetchannels".into(),
            "-@all".into(),
            format!("~{}", self.pkey(&format!("enroll:{token_id}"))),
            format!("%W~{}", self.pkey(&format!("refused:{token_id}"))),
            "+getdel".into(),
            "+set".into(),
            "+ping".into(),
        ];
        r.extend(self.select_rule());
        r
    }

    async fn now_ms(&self) -> Result<u64, ClusterError> {
        let ((s, us),): ((u64, u64),) = self.query(redis::pipe().cmd("TIME")).await?;
        Ok(s * 1000 + us / 1000)
    }

    fn wrong_name(&self, name: &str, node: &str) -> ClusterError {
        ClusterError::Auth {
            backend: NAME,
            reason: format!(
                "this node's Redis user is for the node named {name}, not {node}: build its package with --node-name {node}"
            ),
        }
    }

    /// Registration as a node user: refuses a name another live node holds (the holder of
    /// `self:<name>`, alive by its TTL), then writes its own record.
    pub(super) async fn own_register(
        &self,
        name: &str,
        node: &NodeRecord,
    ) -> Result<usize, ClusterError> {
        if node.name != name {
            return Err(self.wrong_name(name, &node.name));
        }
        let me = self.key(&format!("self:{name}"));
        let mut pipe = redis::pipe();
        pipe.exists(self.key(&format!("removed:{}", node.id)));
        pipe.hget(&me, "id");
        pipe.pttl(&me);
        let (removed, holder, pttl): (bool, Option<String>, i64) = self.query(&pipe).await?;
        if removed {
            return Err(ClusterError::Removed(node.id.clone()));
        }
        let timeout = self.timeout_ms();
        if let Some(h) = holder.filter(|h| *h != node.id)
            && state_of(pttl, timeout).is_some_and(|(_, s)| s == MemberState::Active)
        {
            return Err(ClusterError::NameTaken {
                name: name.to_string(),
                holder: h,
            });
        }
        let mut fields = node.to_fields();
        fields.push(("ips", ips_of(node).join(",")));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&me)
            .ignore()
            .hset_multiple(&me, &fields)
            .ignore()
            .pexpire(&me, (timeout * 2) as i64)
            .ignore();
        self.query::<()>(&pipe).await?;
        self.own_active_count().await
    }

    /// The active count a node user sees: the primary's index (one heartbeat interval behind),
    /// counting itself at least.
    async fn own_active_count(&self) -> Result<usize, ClusterError> {
        let now = self.now_ms().await?;
        let since = now.saturating_sub(self.timeout_ms()) + 1;
        let (n,): (usize,) = self
            .query(redis::pipe().zcount(self.key("members"), since, "+inf"))
            .await?;
        Ok(n.max(1))
    }

    pub(super) async fn own_heartbeat(
        &self,
        name: &str,
        node: &NodeRecord,
    ) -> Result<Heartbeat, ClusterError> {
        let me = self.key(&format!("self:{name}"));
        let mut pipe = redis::pipe();
        pipe.exists(self.key(&format!("removed:{}", node.id)));
        pipe.hget(&me, "id");
        pipe.pttl(&me);
        let (removed, holder, pttl): (bool, Option<String>, i64) = self.query(&pipe).await?;
        if removed {
            return Ok(Heartbeat::Removed);
        }
        let alive =
            state_of(pttl, self.timeout_ms()).is_some_and(|(_, s)| s == MemberState::Active);
        if holder.as_deref() != Some(node.id.as_str()) || !alive {
            return Ok(Heartbeat::NotMember);
        }
        let mut pipe = redis::pipe();
        pipe.pexpire(&me, (self.timeout_ms() * 2) as i64).ignore();
        self.query::<()>(&pipe).await?;
        Ok(Heartbeat::Alive {
            active: self.own_active_count().await?,
        })
    }

    pub(super) async fn own_deregister(
        &self,
        name: &str,
        node_id: &str,
    ) -> Result<(), ClusterError> {
        let me = self.key(&format!("self:{name}"));
        let (holder,): (Option<String>,) = self.query(redis::pipe().hget(&me, "id")).await?;
        if holder.as_deref() != Some(node_id) {
            return Ok(());
        }
        let note = Note {
            node_id: node_id.to_string(),
            detail: BTreeMap::new(),
        };
        let events = self.key(&format!("self:{name}:events"));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&me)
            .ignore()
            .hset(
                &events,
                EventKind::Left.as_str(),
                serde_json::to_string(&note).unwrap_or_default(),
            )
            .ignore()
            .pexpire(&events, 24 * 3600 * 1000)
            .ignore();
        self.query::<()>(&pipe).await
    }

    /// A node user's event: a note in its own key, which the primary records (one per kind).
    pub(super) async fn own_event(&self, name: &str, event: &Event) -> Result<(), ClusterError> {
        let note = Note {
            node_id: event.node_id.clone(),
            detail: event.detail.clone(),
        };
        let events = self.key(&format!("self:{name}:events"));
        let mut pipe = redis::pipe();
        pipe.hset(
            &events,
            event.kind.as_str(),
            serde_json::to_string(&note).unwrap_or_default(),
        )
        .ignore()
        .pexpire(&events, 24 * 3600 * 1000)
        .ignore();
        self.query::<()>(&pipe).await
    }

    /// An enrollment user's event (a refusal): one note under its own key, which the primary
    /// checks and records. Nothing else is possible with this user.
    pub(super) async fn enroll_event(
        &self,
        token: &str,
        event: &Event,
    ) -> Result<(), ClusterError> {
        if event.kind != EventKind::EnrollmentRejected {
            return Err(ClusterError::Auth {
                backend: NAME,
                reason: format!(
                    "an enrollment user records refusals only, not {}",
                    event.kind.as_str()
                ),
            });
        }
        let note = Note {
            node_id: event.node_id.clone(),
            detail: event.detail.clone(),
        };
        let mut text = serde_json::to_string(&note).unwrap_or_default();
        if text.len() > NOTE_CAP {
            // A long reason is cut rather than dropped whole.
            let mut n = note;
            if let Some(r) = n.detail.get_mut("reason") {
                *r = clean(r, 512);
            }
            text = serde_json::to_string(&n).unwrap_or_default();
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&format!("refused:{token}"))).arg(text);
        self.query::<()>(redis::pipe().add_command(cmd).ignore())
            .await
    }

    /// The names whose node runs with a user of its own (the primary writes this roster when it
    /// makes the user).
    /// Read by lex range (all scores are 0), `LIST_BATCH` names a step, never in one reply.
    pub(super) async fn roster(&self) -> Result<Vec<String>, ClusterError> {
        let mut names: Vec<String> = Vec::new();
        let mut start: Vec<u8> = b"-".to_vec();
        // Bounded: 10,000 steps are 10 million names.
        for _ in 0..10_000 {
            let mut pipe = redis::pipe();
            pipe.cmd("ZRANGEBYLEX")
                .arg(self.key("roster"))
                .arg(&start)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(LIST_BATCH);
            let (batch,): (Vec<String>,) = self.query_list(&pipe).await?;
            let full = batch.len() >= LIST_BATCH;
            if let Some(last) = batch.last() {
                start = [b"(".as_slice(), last.as_bytes()].concat();
            }
            names.extend(batch);
            if !full {
                break;
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| crate::identity::validate_node_name(n).is_ok())
            .collect())
    }

    /// The own records of `names` (pipelined reads in batches): `(name, record, pttl)`, for
    /// records whose id carries the name.
    async fn own_records(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, NodeRecord, String, i64)>, ClusterError> {
        let mut out = Vec::new();
        for chunk in names.chunks(ADOPT_BATCH) {
            let mut pipe = redis::pipe();
            for n in chunk {
                let k = self.key(&format!("self:{n}"));
                pipe.cmd("HMGET")
                    .arg(&k)
                    .arg("id")
                    .arg(&RECORD_FIELDS[..])
                    .arg("ips");
                pipe.pttl(&k);
            }
            let rows: Vec<redis::Value> = self.query_list(&pipe).await?;
            for (n, pair) in chunk.iter().zip(rows.chunks(2)) {
                let (Ok(mut row), Ok(pttl)) = (
                    redis::from_redis_value::<Vec<Option<String>>>(pair[0].clone()),
                    redis::from_redis_value::<i64>(pair[1].clone()),
                ) else {
                    continue;
                };
                if row.len() != RECORD_FIELDS.len() + 2 {
                    continue;
                }
                let ips = row.pop().flatten().unwrap_or_default();
                let Some(id) = row.remove(0) else { continue };
                if !crate::identity::id_belongs_to(&id, n) {
                    continue;
                }
                let mut rec = record_from_row(id, row);
                // The name is the one its user stands for, whatever the record says.
                rec.name = n.clone();
                out.push((n.clone(), rec, ips, pttl));
            }
        }
        Ok(out)
    }

    /// Members from the nodes' own records (alive by their TTL).
    pub(super) async fn own_members(
        &self,
        names: &[String],
        now: u64,
    ) -> Result<Vec<Member>, ClusterError> {
        let timeout = self.timeout_ms();
        Ok(self
            .own_records(names)
            .await?
            .into_iter()
            .filter_map(|(_, node, _, pttl)| {
                let (age, state) = state_of(pttl, timeout)?;
                Some(Member {
                    node,
                    last_heartbeat_ms: now.saturating_sub(age),
                    age_ms: age,
                    age_known: true,
                    state,
                })
            })
            .collect())
    }

    /// The own record of the node named `name`, if that key holds `id`.
    pub(super) async fn own_member_of(
        &self,
        name: &str,
        now: u64,
    ) -> Result<Option<Member>, ClusterError> {
        Ok(self.own_members(&[name.to_string()], now).await?.pop())
    }

    /// The primary's turn (at most once per heartbeat interval across the cluster): copies the
    /// nodes' own records into the shared indexes, records their joins, leaves and notes, and
    /// the refusals enrollment users left. Only the primary's credential can; others skip.
    pub(super) async fn adopt_turn(&self) {
        if self.role != Role::Admin {
            return;
        }
        {
            let mut last = self.adopted_at.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.timing.interval / 2) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut claim = redis::cmd("SET");
        claim
            .arg(self.key("adopter"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg((self.timing.interval.as_millis() as u64 * 3 / 4).max(100));
        match self
            .query::<(Option<String>,)>(redis::pipe().add_command(claim))
            .await
        {
            Ok((Some(_),)) => {}
            Ok((None,)) => return,
            Err(e) => {
                log::debug!("adopting node records: {e}");
                return;
            }
        }
        if let Err(e) = self.adopt().await {
            log::debug!("adopting node records: {e}");
        }
        if let Err(e) = self.forward_refusals().await {
            log::debug!("recording enrollment refusals: {e}");
        }
    }

    pub(crate) async fn adopt(&self) -> Result<(), ClusterError> {
        let names = self.roster().await?;
        if names.is_empty() {
            return Ok(());
        }
        let now = self.now_ms().await?;
        let timeout = self.timeout_ms();
        let records = self.own_records(&names).await?;
        for chunk in records.chunks(ADOPT_SCRIPT_BATCH) {
            let mut args = self.base_args();
            args.push(timeout.to_string());
            for (name, node, ips, pttl) in chunk {
                let Some((age, _)) = state_of(*pttl, timeout) else {
                    continue;
                };
                // A forged TTL is adopted as an already expired heartbeat: prune takes it.
                let age = if *pttl > (timeout * 2) as i64 || *pttl == -1 {
                    timeout
                } else {
                    age
                };
                let ips: Vec<String> = ips
                    .split(',')
                    .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
                    .map(|ip| ip.to_string())
                    .take(64)
                    .collect();
                args.push(node.id.clone());
                args.push(name.clone());
                args.push(now.saturating_sub(age).to_string());
                args.push(ips.join(","));
                let fields: Vec<(&str, String)> = node
                    .to_fields()
                    .into_iter()
                    .map(|(k, v)| (k, clean(&v, 1024)))
                    .collect();
                args.push(fields.len().to_string());
                for (k, v) in fields {
                    args.push(k.to_string());
                    args.push(v);
                }
            }
            let _: i64 = self.run(&super::ADOPT_SCRIPT, &args).await?;
        }
        self.forward_notes(&names).await
    }

    /// For the benchmarks: `nodes` as nodes with users of their own leave them after a
    /// heartbeat (their own records, on the roster), without making the users.
    pub async fn simulate_own_members(&self, nodes: &[NodeRecord]) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        for n in nodes {
            let me = self.key(&format!("self:{}", n.name));
            let mut fields = n.to_fields();
            fields.push(("ips", ips_of(n).join(",")));
            pipe.hset(&me, "id", &n.id).ignore();
            pipe.hset_multiple(&me, &fields).ignore();
            pipe.pexpire(&me, (self.timeout_ms() * 2) as i64).ignore();
            pipe.zadd(self.key("roster"), &n.name, 0).ignore();
        }
        self.query::<()>(&pipe).await
    }

    /// For the benchmarks: one adoption pass, as the primary's turn runs it once per interval.
    pub async fn bench_adopt(&self) -> Result<(), ClusterError> {
        self.adopt().await
    }

    /// For the benchmarks: the reads no adoption can do without (the roster, and each own
    /// record with its TTL, pipelined); returns how many records were read.
    pub async fn bench_floor_adopt(&self) -> Result<usize, ClusterError> {
        let names = self.roster().await?;
        Ok(self.own_records(&names).await?.len())
    }

    /// The notes nodes left in `self:<name>:events`: sizes first (a note over `NOTE_CAP` is
    /// deleted unread), then the notes, recorded as events, then deleted.
    async fn forward_notes(&self, names: &[String]) -> Result<(), ClusterError> {
        for chunk in names.chunks(ADOPT_BATCH) {
            let mut pipe = redis::pipe();
            for n in chunk {
                let k = self.key(&format!("self:{n}:events"));
                for kind in NODE_KINDS {
                    pipe.cmd("HSTRLEN").arg(&k).arg(kind.as_str());
                }
            }
            let lens: Vec<usize> = self.query(&pipe).await?;
            let mut due: Vec<(&String, EventKind)> = Vec::new();
            let mut touched: BTreeSet<&String> = BTreeSet::new();
            for (i, len) in lens.into_iter().enumerate() {
                let (n, kind) = (
                    &chunk[i / NODE_KINDS.len()],
                    NODE_KINDS[i % NODE_KINDS.len()],
                );
                if len > 0 {
                    touched.insert(n);
                }
                if len > NOTE_CAP {
                    log::warn!("node {n} left an oversized {} note: dropped", kind.as_str());
                } else if len > 0 {
                    due.push((n, kind));
                }
            }
            if touched.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (n, kind) in &due {
                pipe.hget(self.key(&format!("self:{n}:events")), kind.as_str());
            }
            for n in &touched {
                pipe.del(self.key(&format!("self:{n}:events"))).ignore();
            }
            let notes: Vec<Option<String>> = self.query(&pipe).await?;
            for ((n, kind), note) in due.into_iter().zip(notes) {
                let Some(note) = note.and_then(|t| serde_json::from_str::<Note>(&t).ok()) else {
                    continue;
                };
                self.record_note(n, kind, note).await?;
            }
        }
        Ok(())
    }

    async fn record_note(
        &self,
        name: &str,
        kind: EventKind,
        note: Note,
    ) -> Result<(), ClusterError> {
        match kind {
            EventKind::Left => {
                if !crate::identity::id_belongs_to(&note.node_id, name) {
                    return Ok(());
                }
                // Left, unless it is back under the same id since.
                let (holder,): (Option<String>,) = self
                    .query(redis::pipe().hget(self.key(&format!("self:{name}")), "id"))
                    .await?;
                if holder.as_deref() == Some(note.node_id.as_str()) {
                    return Ok(());
                }
                let mut args = self.base_args();
                args.extend([note.node_id, "left".into(), "0".into(), String::new()]);
                let _: i64 = self.run(&LEAVE_SCRIPT, &args).await?;
                Ok(())
            }
            _ => {
                // The node's own name, whatever it claimed; only the fields this kind has.
                let detail = ["token_id", "package_id", "host"]
                    .into_iter()
                    .filter_map(|k| Some((k.to_string(), clean(note.detail.get(k)?, 255))))
                    .collect();
                self.admin_event(&Event::new(kind, name).with_detail(detail))
                    .await
            }
        }
    }

    /// The refusal notes of enrollment users (`refused:<token>`), for the users the primary
    /// registered: checked, recorded as `enrollment_rejected` and deleted.
    pub(crate) async fn forward_refusals(&self) -> Result<(), ClusterError> {
        let tokens = self.enroll_tokens().await?;
        if tokens.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (t, _) in &tokens {
            pipe.strlen(self.key(&format!("refused:{t}")));
        }
        let lens: Vec<usize> = self.query(&pipe).await?;
        for ((t, _), len) in tokens.iter().zip(lens) {
            if len == 0 {
                continue;
            }
            let key = self.key(&format!("refused:{t}"));
            let note = if len > NOTE_CAP {
                log::warn!("the enrollment user of token {t} left an oversized note: dropped");
                None
            } else {
                let (v,): (Option<String>,) = self.query(redis::pipe().get(&key)).await?;
                v.and_then(|v| serde_json::from_str::<Note>(&v).ok())
            };
            let mut pipe = redis::pipe();
            pipe.del(&key).ignore();
            self.query::<()>(&pipe).await?;
            let Some(note) = note else { continue };
            let mut detail: BTreeMap<String, String> = BTreeMap::new();
            detail.insert("token_id".into(), t.clone());
            for (k, max) in [("reason", 512), ("host", 255)] {
                if let Some(v) = note.detail.get(k) {
                    detail.insert(k.into(), clean(v, max));
                }
            }
            let node_id = crate::identity::normalize_node_name(&note.node_id).unwrap_or_default();
            self.admin_event(
                &Event::new(EventKind::EnrollmentRejected, node_id).with_detail(detail),
            )
            .await?;
        }
        Ok(())
    }

    /// The enrollment users the primary registered (`enroll-users`, user → expiry), as
    /// `(token id, expiry)`; names that are not ours are ignored, never deleted.
    pub(super) async fn enroll_tokens(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(self.key("enroll-users"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let (all,): (Vec<(String, u64)>,) = self.query(&pipe).await?;
        let ours = self.user_name("enroll", "");
        Ok(all
            .into_iter()
            .filter_map(|(u, e)| {
                let t = u.strip_prefix(&ours)?;
                valid_token_id(t).then(|| (t.to_string(), e))
            })
            .collect())
    }

    /// Housekeeping for enrollment users: deleted once the package expired, or a grace period
    /// after its record was taken or revoked.
    pub(super) async fn expire_enroll_users(&self) -> Result<(), ClusterError> {
        let tokens = self.enroll_tokens().await?;
        if tokens.is_empty() {
            return Ok(());
        }
        let now = self.now_ms().await?;
        let mut pipe = redis::pipe();
        for (t, _) in &tokens {
            pipe.exists(self.key(&format!("enroll:{t}")));
        }
        let pending: Vec<bool> = self.query(&pipe).await?;
        for ((t, expires), pending) in tokens.into_iter().zip(pending) {
            let user = self.user_name("enroll", &t);
            if expires <= now {
                self.delete_user(&user).await?;
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(self.key("enroll-users")).arg(&user);
                self.query::<()>(redis::pipe().add_command(cmd).ignore())
                    .await?;
                log::debug!(
                    "deleted the enrollment user {user} (its package is used, revoked or expired)"
                );
            } else if !pending && expires > now + ENROLL_GRACE_MS {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(self.key("enroll-users"))
                    .arg("XX")
                    .arg(now + ENROLL_GRACE_MS)
                    .arg(&user);
                self.query::<()>(redis::pipe().add_command(cmd).ignore())
                    .await?;
            }
        }
        Ok(())
    }

    /// An event written with the primary's credential (a plain XADD: time from the entry id).
    pub(super) async fn admin_event(&self, event: &Event) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key("events"))
            .arg("MAXLEN")
            .arg("~")
            .arg(EVENTS_CAP)
            .arg("*")
            .arg("kind")
            .arg(event.kind.as_str())
            .arg("node_id")
            .arg(&event.node_id);
        for (k, v) in &event.detail {
            cmd.arg(k).arg(v);
        }
        self.query::<()>(redis::pipe().add_command(cmd).ignore())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_decides_liveness_and_a_future_heartbeat_is_not_alive() {
        assert_eq!(state_of(6000, 3000), Some((0, MemberState::Active)));
        assert_eq!(state_of(4000, 3000), Some((2000, MemberState::Active)));
        assert_eq!(state_of(3000, 3000), Some((3000, MemberState::Expired)));
        assert_eq!(state_of(6001, 3000), Some((3000, MemberState::Expired)));
        assert_eq!(state_of(-1, 3000), Some((3000, MemberState::Expired)));
        assert_eq!(state_of(-2, 3000), None);
    }

    #[test]
    fn globs_are_escaped_and_ids_carry_names() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(name_of_id("server-03-abc123"), Some("server-03"));
        assert_eq!(name_of_id("server-03"), None);
        assert_eq!(clean("a\x1b[2Jb\r\n", 10), "a[2Jb");
    }
}
