//! The `storage` backend: a shared directory (NFS, SMB or local disk), also the embedded default
//! that needs no server.
//!
//! Layout under `<storage_path>/cluster/`: `members/<id>.json` (the node's record; its mtime is
//! the last heartbeat), `names/<name>` (id of the holder), `events/<ms>-<seq>-<rand>.json`,
//! `removed/<id>` (tombstones), `clock` (touched to read the file server's time), `lock`,
//! `active` (the active count: joins and leaves adjust it under the lock, the prune recounts),
//! `prune` (its mtime: the last prune's turn), `enroll/<token>.json`. Those are written by the
//! cluster's owner only (see `scope`): the uid that owns `cluster/`. Nodes that reach the share
//! under a uid of their own write only `nodes/<name>.json` and notes in `inbox/` (`scope.rs`).
//!
//! Cost. A heartbeat touches only its own member file (stat, stamp, stat) and stats its
//! tombstone, the `prune` stamp and reads `active`: the same at 10 members and at 10,000. The
//! directory is listed only by the prune, which one heartbeat in the cluster runs when `prune`
//! is older than the timeout, and by the member list. Registration checks its name through
//! `names/<name>` under the lock, never by listing. Every change of `names/` holds the lock:
//! register, leave and remove throughout; the prune re-checks what its scan found under it.
//!
//! Why it is safe on NFS: every write is a temporary file and a rename (atomic on NFS), the join
//! lock is an exclusive create (atomic since NFSv3), and times come from the file server's clock:
//! `utimensat(UTIME_NOW)` makes the client ask the server to stamp the file, and mtimes are read
//! back, so nodes with skewed clocks agree. Mount with a short attribute cache (`actimeo=1`) so
//! heartbeats show promptly.

mod scope;

use scope::Role;

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use rand::Rng;

use super::{
    ClusterError, EVENTS_CAP, EnrollmentRecord, Event, EventKind, Heartbeat, Member, Membership,
    NodeRecord, REMOVAL_TOMBSTONE, Timing,
};
use crate::config::BackendKind;
use crate::identity::write_atomically;

const NAME: &str = "storage";
/// A join lock older than this was left by a crashed node and may be broken.
const STALE_LOCK: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Longest event file read back.
const EVENT_CAP: u64 = 64 * 1024;

/// Membership in a shared directory.
#[derive(Debug, Clone)]
pub struct StorageMembership {
    inner: Arc<Dir>,
}

#[derive(Debug)]
struct Dir {
    root: PathBuf,
    timing: Timing,
    /// Who this process is on the share, and the owner's uid: found once (`scope::who`).
    who: OnceLock<(scope::Role, u32)>,
    /// The owner's view: `inbox/`'s mtime at the last pass over it (`scope::inbox_changed`).
    inbox_seen: Mutex<Option<(i64, i64)>>,
    /// The owner's view: notes forwarded per node name since the last prune turn (at most
    /// `scope::PER_NAME` a turn, as etcd's pruner turn forwards).
    notes_forwarded: Mutex<HashMap<String, usize>>,
    /// A scoped node's view: the enrollment records it read while its claim waits.
    claims: Mutex<HashMap<String, EnrollmentRecord>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ClusterError {
    ClusterError::Unreachable {
        backend: NAME,
        reason: format!("{what} {}: {e}", path.display()),
    }
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl StorageMembership {
    pub fn new(root: &Path, timing: Timing) -> Result<Self, ClusterError> {
        Ok(StorageMembership {
            inner: Arc::new(Dir {
                root: root.join("cluster"),
                timing,
                who: OnceLock::new(),
                inbox_seen: Mutex::new(None),
                notes_forwarded: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The shared directory this backend uses.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// For the benchmarks: writes members as registrations would (record, name file, stamped
    /// now) and adds them to the stored count.
    pub async fn simulate_members(&self, nodes: &[NodeRecord]) -> Result<(), ClusterError> {
        let nodes = nodes.to_vec();
        self.with(move |d| {
            d.check_root()?;
            d.ensure("members")?;
            let names = d.ensure("names")?;
            for n in &nodes {
                let path = d.member_path(&n.id);
                let bytes = serde_json::to_vec(n).unwrap_or_default();
                write_atomically(&path, &bytes, 0o644)
                    .map_err(|e| io_err("cannot write", &path, e))?;
                touch(&path)?;
                let np = names.join(&n.name);
                write_atomically(&np, n.id.as_bytes(), 0o644)
                    .map_err(|e| io_err("cannot write", &np, e))?;
            }
            let _lock = d.lock()?;
            d.write_active(d.read_active() + nodes.len())
        })
        .await
    }

    /// For the benchmarks: writes members as scoped nodes' records would be (`nodes/<name>.json`,
    /// stamped now), each bound to this process's uid, so the owner's turn and the member list
    /// judge them as they judge real ones.
    pub async fn simulate_scoped_members(&self, nodes: &[NodeRecord]) -> Result<(), ClusterError> {
        let nodes = nodes.to_vec();
        self.with(move |d| {
            let uid = nix::unistd::geteuid().as_raw().to_string();
            let bindings = d.ensure("bindings")?;
            for n in &nodes {
                let path = d.node_path(&n.name);
                let bytes = serde_json::to_vec(n).unwrap_or_default();
                write_atomically(&path, &bytes, 0o644)
                    .map_err(|e| io_err("cannot write", &path, e))?;
                touch(&path)?;
                let bp = bindings.join(&n.name);
                write_atomically(&bp, uid.as_bytes(), 0o644)
                    .map_err(|e| io_err("cannot write", &bp, e))?;
            }
            Ok(())
        })
        .await
    }

    /// For the benchmarks: the file calls a heartbeat cannot do without (stamp its own file
    /// and read back the time), without the checks.
    pub async fn bench_floor_heartbeat(&self, id: &str) -> Result<(), ClusterError> {
        let id = id.to_string();
        self.with(move |d| {
            let path = d.member_path(&id);
            touch(&path)?;
            mtime_ms(&path).map(|_| ())
        })
        .await
    }

    /// Runs blocking file work off the async threads, with a deadline: a hung NFS server
    /// must not hang the daemon.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Dir) -> Result<T, ClusterError> + Send + 'static,
    ) -> Result<T, ClusterError> {
        let dir = self.inner.clone();
        // A busy file server (or a loaded machine) gets more slack than a Redis round trip.
        let deadline = (self.inner.timing.op_timeout() * 4).max(Duration::from_secs(5));
        match tokio::time::timeout(deadline, tokio::task::spawn_blocking(move || f(&dir))).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(ClusterError::Backend {
                backend: NAME,
                reason: format!("file task failed: {join}"),
            }),
            Err(_) => Err(ClusterError::Unreachable {
                backend: NAME,
                reason: format!(
                    "{} did not answer within {deadline:?}",
                    self.inner.root.display()
                ),
            }),
        }
    }
}

impl Dir {
    fn sub(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn member_path(&self, id: &str) -> PathBuf {
        self.root.join("members").join(format!("{id}.json"))
    }

    /// The root must exist (a share that is not mounted must look like an outage, not like an
    /// empty cluster); the subdirectories are made as needed, also after a wipe.
    fn check_root(&self) -> Result<(), ClusterError> {
        let parent = self.root.parent().unwrap_or(&self.root);
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ClusterError::Unreachable {
                backend: NAME,
                reason: format!("{} is not a directory", parent.display()),
            }),
            Err(e) => Err(io_err("cannot reach", parent, e)),
        }
    }

    fn ensure(&self, sub: &str) -> Result<PathBuf, ClusterError> {
        let p = self.sub(sub);
        std::fs::create_dir_all(&p).map_err(|e| io_err("cannot create", &p, e))?;
        Ok(p)
    }

    /// The file server's time: stamp the clock file with "now" as the server sees it.
    fn now_ms(&self) -> Result<u64, ClusterError> {
        self.check_root()?;
        std::fs::create_dir_all(&self.root).map_err(|e| io_err("cannot create", &self.root, e))?;
        let clock = self.sub("clock");
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&clock)
        {
            return Err(io_err("cannot open", &clock, e));
        }
        touch(&clock)?;
        mtime_ms(&clock)?.ok_or_else(|| ClusterError::Unreachable {
            backend: NAME,
            reason: format!("{} vanished", clock.display()),
        })
    }

    /// A member's record and last heartbeat, believed only when the owner wrote it.
    fn read_member(&self, id: &str) -> Result<Option<(NodeRecord, u64)>, ClusterError> {
        let owner = self.owner()?;
        match read_capped(&self.member_path(id), scope::RECORD_CAP)? {
            Some((st, Some(bytes))) if st.uid == owner => Ok(serde_json::from_slice(&bytes)
                .ok()
                .map(|n| (n, st.mtime_ms))),
            _ => Ok(None),
        }
    }

    /// Whether a tombstone the owner wrote keeps `id` out.
    fn is_removed(&self, id: &str, now: u64) -> Result<bool, ClusterError> {
        let p = self.sub("removed").join(id);
        match stat(&p)? {
            Some(st) if st.uid != self.owner()? => Ok(false),
            Some(st) if now.saturating_sub(st.mtime_ms) < REMOVAL_TOMBSTONE.as_millis() as u64 => {
                Ok(true)
            }
            Some(_) => {
                let _ = std::fs::remove_file(&p);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// The id `names/<name>` holds, believed only when the owner wrote it.
    fn name_holder(&self, name: &str) -> Result<Option<String>, ClusterError> {
        let owner = self.owner()?;
        Ok(match read_capped(&self.sub("names").join(name), 128)? {
            Some((st, Some(b))) if st.uid == owner => {
                Some(String::from_utf8_lossy(&b).trim().to_string())
            }
            _ => None,
        })
    }

    fn timeout_ms(&self) -> u64 {
        self.timing.timeout.as_millis() as u64
    }

    fn lock(&self) -> Result<LockGuard, ClusterError> {
        std::fs::create_dir_all(&self.root).map_err(|e| io_err("cannot create", &self.root, e))?;
        let path = self.sub("lock");
        let started = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(LockGuard { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let now = self.now_ms()?;
                    if let Some(t) = mtime_ms(&path)?
                        && now.saturating_sub(t) > STALE_LOCK.as_millis() as u64
                    {
                        log::warn!("breaking a stale join lock {}", path.display());
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(ClusterError::Backend {
                            backend: NAME,
                            reason: format!("join lock {} held too long", path.display()),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10 + rand::rng().random_range(0..20)));
                }
                Err(e) => return Err(io_err("cannot create", &path, e)),
            }
        }
    }

    fn event(
        &self,
        kind: EventKind,
        id: &str,
        now: u64,
        detail: BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        let dir = self.ensure("events")?;
        let ev = Event::new(kind, id).at(now).with_detail(detail);
        // Names sort in the order events happened: by the file server's millisecond, then, for
        // two events of this process in the same millisecond, by this process's sequence.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "{now:015}-{seq:012}-{:08x}.json",
            rand::rng().random::<u32>()
        );
        let path = dir.join(name);
        // Event serialisation cannot fail: it is strings and numbers only.
        let bytes = serde_json::to_vec(&ev).unwrap_or_default();
        write_atomically(&path, &bytes, 0o644).map_err(|e| io_err("cannot write", &path, e))
    }

    /// Deletes `names/<name>` if `id` still holds it. The caller holds the join lock: the
    /// read and the unlink would otherwise race a registration that takes the name.
    fn forget_name(&self, name: &str, id: &str) {
        if name.is_empty() {
            return;
        }
        if self.name_holder(name).ok().flatten().as_deref() == Some(id) {
            let _ = std::fs::remove_file(self.sub("names").join(name));
        }
    }

    fn member_ids(&self) -> Result<Vec<String>, ClusterError> {
        let dir = self.sub("members");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.check_root()?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    fn members_at(&self, now: u64) -> Result<Vec<Member>, ClusterError> {
        let timeout = self.timeout_ms();
        let mut out = self.scoped_members(now)?;
        for id in self.member_ids()? {
            if let Some((node, last)) = self.read_member(&id)? {
                out.push(Member::aged(node, last, now.saturating_sub(last), timeout));
            }
        }
        out.sort_by(|a, b| {
            a.node
                .name
                .cmp(&b.node.name)
                .then(a.node.id.cmp(&b.node.id))
        });
        Ok(out)
    }

    /// Active members of `members/` (the scoped nodes are counted by `scoped_prune`).
    fn active_at(&self, now: u64) -> Result<usize, ClusterError> {
        let timeout = self.timeout_ms();
        let mut n = 0;
        for id in self.member_ids()? {
            if let Some(t) = mtime_ms(&self.member_path(&id))?
                && now.saturating_sub(t) < timeout
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A heartbeat's file work, whatever the cluster's size: stat, stamp and stat again this
    /// node's own file (its new mtime is the file server's "now"), and a look at its tombstone.
    /// Returns the outcome and that "now".
    fn beat(&self, id: &str) -> Result<(Heartbeat, u64), ClusterError> {
        self.beat_file(&self.member_path(id), id)
    }

    /// `beat` on the record file `path` of `id` (a scoped node's is `nodes/<name>.json`).
    fn beat_file(&self, path: &Path, id: &str) -> Result<(Heartbeat, u64), ClusterError> {
        let path = path.to_path_buf();
        let tombstone = self.sub("removed").join(id);
        let Some(before) = mtime_ms(&path)? else {
            // Not a member: the clock file tells whether a tombstone is still in force.
            let now = self.clock_ms()?;
            let removed = stat(&tombstone)?.is_some() && self.is_removed(id, now)?;
            return Ok((
                if removed {
                    Heartbeat::Removed
                } else {
                    Heartbeat::NotMember
                },
                now,
            ));
        };
        match utimensat(
            AT_FDCWD,
            &path,
            &TimeSpec::UTIME_NOW,
            &TimeSpec::UTIME_NOW,
            UtimensatFlags::FollowSymlink,
        ) {
            Ok(()) => {}
            // Pruned or wiped between the stat and the stamp: join again.
            Err(nix::errno::Errno::ENOENT) => return Ok((Heartbeat::NotMember, before)),
            Err(e) => return Err(io_err("cannot stamp", &path, e.into())),
        }
        let Some(now) = mtime_ms(&path)? else {
            return Ok((Heartbeat::NotMember, before));
        };
        if self.is_removed(id, now)? {
            return Ok((Heartbeat::Removed, now));
        }
        if now.saturating_sub(before) >= self.timeout_ms() {
            // It had expired: put its old time back, so that it stays expired (the prune
            // records it, and its registration counts as a fresh join).
            let old = TimeSpec::from_duration(Duration::from_millis(before));
            let _ = utimensat(AT_FDCWD, &path, &old, &old, UtimensatFlags::FollowSymlink);
            return Ok((Heartbeat::NotMember, now));
        }
        Ok((Heartbeat::Alive { active: 0 }, now))
    }

    /// Whether this heartbeat takes the prune's turn: `prune` (a stamp file) is older than the
    /// timeout, or missing. Stamping it claims the turn, so the next nodes find it fresh; two
    /// nodes that claim at the same instant both prune, which is harmless (pruning is
    /// idempotent). `now`: the file server's time, as this heartbeat's stamp read it.
    fn prune_due(&self, now: u64) -> Result<bool, ClusterError> {
        let stamp = self.sub("prune");
        match mtime_ms(&stamp)? {
            Some(t) if now.saturating_sub(t) < self.timeout_ms() => Ok(false),
            Some(_) => {
                touch(&stamp)?;
                Ok(true)
            }
            None => {
                write_atomically(&stamp, b"", 0o644)
                    .map_err(|e| io_err("cannot write", &stamp, e))?;
                Ok(true)
            }
        }
    }

    /// The stored active count (0 when there is none yet).
    fn read_active(&self) -> usize {
        std::fs::read_to_string(self.sub("active"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn write_active(&self, n: usize) -> Result<(), ClusterError> {
        let p = self.sub("active");
        write_atomically(&p, n.to_string().as_bytes(), 0o644)
            .map_err(|e| io_err("cannot write", &p, e))
    }

    /// Counts the active members (a scan of the directory: the prune's turn only) and stores
    /// the count.
    fn recount(&self, now: u64, scoped: usize) -> Result<usize, ClusterError> {
        // Under the lock, as registrations and leaves adjust the count: a join during the scan
        // is counted by the scan or by its own +1 afterwards, never lost.
        let _lock = self.lock()?;
        let n = self.active_at(now)? + scoped;
        self.write_active(n)?;
        Ok(n)
    }

    /// The owner's prune turn: `members/`, then the scoped nodes' files, the inbox and old
    /// grants; then the count. Returns the expired ids and the active count.
    fn turn(&self, now: u64) -> Result<(Vec<String>, usize), ClusterError> {
        self.prepare()?;
        let mut gone = self.prune_at(now)?;
        let (scoped_gone, scoped_active) = self.scoped_prune(now)?;
        gone.extend(scoped_gone);
        if let Err(e) = self.inbox_pass(now) {
            log::debug!("inbox pass: {e}");
        }
        self.sweep_grants(now);
        // A new turn, a new budget of notes per node.
        self.notes_forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let active = self.recount(now, scoped_active)?;
        Ok((gone, active))
    }

    fn prune_at(&self, now: u64) -> Result<Vec<String>, ClusterError> {
        let timeout = self.timeout_ms();
        let expired = |id: &str| -> Result<bool, ClusterError> {
            Ok(mtime_ms(&self.member_path(id))?.is_some_and(|t| now.saturating_sub(t) >= timeout))
        };
        // The scan runs without the lock; what it found is checked again under it, so a node
        // that registered again in the meantime keeps its record and its name.
        let mut candidates = Vec::new();
        for id in self.member_ids()? {
            if expired(&id)? {
                candidates.push(id);
            }
        }
        let mut gone = Vec::new();
        if !candidates.is_empty() {
            let _lock = self.lock()?;
            for id in candidates {
                if !expired(&id)? {
                    continue;
                }
                let path = self.member_path(&id);
                let name = self
                    .read_member(&id)?
                    .map(|(n, _)| n.name)
                    .unwrap_or_default();
                // Only the node whose unlink succeeds records the expiry: prune stays
                // idempotent when several nodes prune at once.
                if std::fs::remove_file(&path).is_ok() {
                    self.forget_name(&name, &id);
                    self.event(
                        EventKind::Expired,
                        &id,
                        now,
                        BTreeMap::from([("name".into(), name)]),
                    )?;
                    gone.push(id);
                }
            }
        }
        self.cap_events();
        Ok(gone)
    }

    fn cap_events(&self) {
        let dir = self.sub("events");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        // Trim in batches, so the directory is not listed and trimmed on every heartbeat.
        if names.len() <= EVENTS_CAP + EVENTS_CAP / 10 {
            return;
        }
        names.sort();
        let excess = names.len() - EVENTS_CAP;
        for n in &names[..excess] {
            let _ = std::fs::remove_file(dir.join(n));
        }
    }

    fn leave(&self, id: &str, kind: EventKind, by: &str) -> Result<bool, ClusterError> {
        // Under the join lock from the tombstone to the name: a registration of the same id
        // or name runs entirely before or entirely after.
        let _lock = self.lock()?;
        let now = self.now_ms()?;
        if kind == EventKind::Removed {
            let dir = self.ensure("removed")?;
            let p = dir.join(id);
            write_atomically(&p, by.as_bytes(), 0o644)
                .map_err(|e| io_err("cannot write", &p, e))?;
        }
        let path = self.member_path(id);
        if let Some(name) = scope::name_of_id(id) {
            if kind == EventKind::Removed {
                // A removed node's uid writes no record of that name again.
                self.unbind(name);
            }
            if mtime_ms(&path)?.is_none() {
                return self.leave_scoped(id, name, kind, by, now);
            }
        }
        let member = self.read_member(id)?;
        let was_active = member
            .as_ref()
            .is_some_and(|(_, t)| now.saturating_sub(*t) < self.timeout_ms());
        let name = member.map(|(n, _)| n.name).unwrap_or_default();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if was_active {
                    self.write_active(self.read_active().saturating_sub(1))?;
                }
                self.forget_name(&name, id);
                let mut detail = BTreeMap::from([("name".to_string(), name)]);
                if !by.is_empty() {
                    detail.insert("by".into(), by.into());
                }
                self.event(kind, id, now, detail)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("cannot remove", &path, e)),
        }
    }
}

impl Dir {
    /// `leave` of a scoped node's record (`nodes/<name>.json`, if it is `id`'s): the owner
    /// may delete it from the sticky directory.
    fn leave_scoped(
        &self,
        id: &str,
        name: &str,
        kind: EventKind,
        by: &str,
        now: u64,
    ) -> Result<bool, ClusterError> {
        let path = self.node_path(name);
        let Some((st, Some(bytes))) = read_capped(&path, scope::RECORD_CAP)? else {
            return Ok(false);
        };
        if serde_json::from_slice::<NodeRecord>(&bytes).map_or(true, |r| r.id != id) {
            return Ok(false);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("cannot remove", &path, e)),
        }
        if now.saturating_sub(st.mtime_ms) < self.timeout_ms() {
            self.write_active(self.read_active().saturating_sub(1))?;
        }
        let mut detail = BTreeMap::from([("name".to_string(), name.to_string())]);
        if !by.is_empty() {
            detail.insert("by".into(), by.into());
        }
        self.event(kind, id, now, detail)?;
        Ok(true)
    }
}

/// What one `lstat` tells: the owner (as the file server records it), the mtime in ms, the
/// size, and whether it is a plain file (not a link, directory or FIFO).
#[derive(Debug, Clone, Copy)]
struct Stat {
    uid: u32,
    mtime_ms: u64,
    len: u64,
    file: bool,
}

fn stat(path: &Path) -> Result<Option<Stat>, ClusterError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(stat_of(&m))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot stat", path, e)),
    }
}

fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        uid: m.uid(),
        mtime_ms: ms_of(m.modified().unwrap_or(UNIX_EPOCH)),
        len: m.len(),
        file: m.file_type().is_file(),
    }
}

/// A file's `Stat` and its bytes (`None`: not a plain file, or too long).
type Capped = (Stat, Option<Vec<u8>>);

/// A file another machine may have written: its `Stat` (of the opened file, not followed
/// through a link) and its bytes, `None` when it is not a plain file or longer than `cap`.
/// `None` overall: there is no such file.
fn read_capped(path: &Path, cap: u64) -> Result<Option<Capped>, ClusterError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        // Not a file this process can read: a link (ELOOP), a socket (ENXIO), a file another
        // uid made unreadable (EACCES, EPERM). Judged by its `Stat` alone, never an error: a
        // node must not stop the primary's passes or the list with a file it planted.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::ELOOP | nix::libc::ENXIO | nix::libc::EACCES | nix::libc::EPERM)
            ) =>
        {
            return Ok(stat(path)?.map(|st| (st, None)));
        }
        Err(e) => return Err(io_err("cannot read", path, e)),
    };
    let st = stat_of(&f.metadata().map_err(|e| io_err("cannot stat", path, e))?);
    if !st.file || st.len > cap {
        return Ok(Some((st, None)));
    }
    let mut bytes = Vec::with_capacity(st.len as usize);
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("cannot read", path, e))?;
    Ok(Some((st, (bytes.len() as u64 <= cap).then_some(bytes))))
}

struct LockGuard {
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Stamps a file with the (file server's) current time.
fn touch(path: &Path) -> Result<(), ClusterError> {
    utimensat(
        AT_FDCWD,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::FollowSymlink,
    )
    .map_err(|e| io_err("cannot stamp", path, e.into()))
}

fn mtime_ms(path: &Path) -> Result<Option<u64>, ClusterError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(ms_of(m.modified().unwrap_or(UNIX_EPOCH)))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot stat", path, e)),
    }
}

#[async_trait::async_trait]
impl Membership for StorageMembership {
    fn kind(&self) -> BackendKind {
        BackendKind::Storage
    }

    async fn backend_now_ms(&self) -> Result<u64, ClusterError> {
        self.with(|d| d.clock_ms()).await
    }

    async fn register(&self, node: &NodeRecord) -> Result<usize, ClusterError> {
        let node = node.clone();
        self.with(move |d| {
            if let Role::Node(uid) = d.role()? {
                return d.node_register(uid, &node);
            }
            let _lock = d.lock()?;
            let now = d.now_ms()?;
            if d.is_removed(&node.id, now)? {
                return Err(ClusterError::Removed(node.id.clone()));
            }
            let timeout = d.timeout_ms();
            if let Some(holder) = d.scoped_holder(&node.name, now)?
                && holder != node.id
            {
                return Err(ClusterError::NameTaken {
                    name: node.name.clone(),
                    holder,
                });
            }
            let names = d.ensure("names")?;
            let name_path = names.join(&node.name);
            if let Some(holder) = d.name_holder(&node.name)?
                && holder != node.id
                && let Some(t) = mtime_ms(&d.member_path(&holder))?
                && now.saturating_sub(t) < timeout
            {
                return Err(ClusterError::NameTaken {
                    name: node.name.clone(),
                    holder,
                });
            }
            let fresh = match mtime_ms(&d.member_path(&node.id))? {
                Some(t) => now.saturating_sub(t) >= timeout,
                None => true,
            };
            d.ensure("members")?;
            let path = d.member_path(&node.id);
            // A record serialises to JSON without fail: strings and numbers only.
            let bytes = serde_json::to_vec(&node).unwrap_or_default();
            write_atomically(&path, &bytes, 0o644).map_err(|e| io_err("cannot write", &path, e))?;
            touch(&path)?;
            write_atomically(&name_path, node.id.as_bytes(), 0o644)
                .map_err(|e| io_err("cannot write", &name_path, e))?;
            if fresh {
                d.event(
                    EventKind::Joined,
                    &node.id,
                    now,
                    BTreeMap::from([("name".into(), node.name.clone())]),
                )?;
            }
            // The count, not a scan of the directory: the lock is held here, and the next
            // prune recounts.
            let mut active = d.read_active();
            if fresh {
                active += 1;
                d.write_active(active)?;
            }
            Ok(active.max(1))
        })
        .await
    }

    async fn heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError> {
        let node = node.clone();
        self.with(move |d| {
            if let Role::Node(_) = d.role()? {
                return d.node_heartbeat(&node);
            }
            let (beat, now) = d.beat(&node.id)?;
            if !matches!(beat, Heartbeat::Alive { .. }) {
                return Ok(beat);
            }
            // The prune's turn: about once per timeout across the cluster (see `prune_due`).
            if d.prune_due(now)? {
                return Ok(Heartbeat::Alive {
                    active: d.turn(now)?.1.max(1),
                });
            }
            // Between turns, the scoped nodes' notes and claims as soon as they come (one
            // stat when none did).
            if d.inbox_changed()
                && let Err(e) = d.inbox_pass(now)
            {
                log::debug!("inbox pass: {e}");
            }
            Ok(Heartbeat::Alive {
                active: d.read_active().max(1),
            })
        })
        .await
    }

    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError> {
        let id = node_id.to_string();
        let leave = self.with(move |d| match d.role()? {
            Role::Node(_) => d.node_leave(&id),
            Role::Owner => d.leave(&id, EventKind::Left, "").map(|_| ()),
        });
        super::within(NAME, "leaving", super::LEAVE_DEADLINE, leave).await
    }

    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError> {
        let id = node_id.to_string();
        let by = if by.is_empty() { "admin" } else { by }.to_string();
        self.with(move |d| {
            d.owner_only("removing a node")?;
            d.leave(&id, EventKind::Removed, &by)
        })
        .await
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        self.with(|d| {
            let now = d.clock_ms()?;
            d.members_at(now)
        })
        .await
    }

    async fn active_count(&self) -> Result<usize, ClusterError> {
        self.with(|d| {
            d.check_root()?;
            Ok(d.read_active())
        })
        .await
    }

    async fn prune(&self) -> Result<Vec<String>, ClusterError> {
        self.with(|d| {
            d.owner_only("pruning the member list")?;
            let now = d.now_ms()?;
            Ok(d.turn(now)?.0)
        })
        .await
    }

    async fn record_event(&self, event: &Event) -> Result<(), ClusterError> {
        let event = event.clone();
        self.with(move |d| {
            if let Role::Node(_) = d.role()? {
                return d.node_event(&event);
            }
            let now = d.now_ms()?;
            d.event(event.kind, &event.node_id, now, event.detail)
        })
        .await
    }

    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError> {
        self.with(move |d| {
            let owner = d.owner()?;
            let dir = d.sub("events");
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_err("cannot list", &dir, e)),
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
                .collect();
            names.sort_unstable_by(|a, b| b.cmp(a));
            let mut out = Vec::new();
            for n in &names {
                if out.len() >= limit {
                    break;
                }
                // Only the owner writes events; anything else there is not one.
                if let Ok(Some((st, Some(b)))) = read_capped(&dir.join(n), EVENT_CAP)
                    && st.uid == owner
                    && let Ok(ev) = serde_json::from_slice(&b)
                {
                    out.push(ev);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn admin_only(&self, what: &str) -> Result<(), ClusterError> {
        let what = what.to_string();
        self.with(move |d| d.owner_only(&what)).await
    }

    fn supports_enrollment(&self) -> bool {
        true
    }

    async fn put_enrollment(&self, record: &EnrollmentRecord) -> Result<(), ClusterError> {
        let record = record.clone();
        self.with(move |d| {
            d.owner_only("storing a package's enrollment")?;
            let dir = d.sub("enroll");
            let path = dir.join(format!("{}.json", record.token_id));
            // Strings and numbers only: serialising cannot fail.
            let bytes = serde_json::to_vec(&record).unwrap_or_default();
            // `enroll/` is mode 0711: a record is read by whoever knows its token id (the
            // package's holder), never listed. Its configuration is sealed with the token.
            write_atomically(&path, &bytes, 0o644).map_err(|e| io_err("cannot write", &path, e))
        })
        .await
    }

    async fn take_enrollment(
        &self,
        token_id: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        if !token_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let id = token_id.to_string();
        self.with(move |d| {
            d.owner_only("taking an enrollment without its token's proof")?;
            d.take_owned(&id)
        })
        .await
    }

    async fn claim_enrollment(
        &self,
        token_id: &str,
        proof: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        if !token_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let (id, proof) = (token_id.to_string(), proof.to_string());
        self.with(move |d| match d.role()? {
            Role::Node(uid) => d.node_claim(uid, &id, &proof),
            Role::Owner => d.take_owned(&id),
        })
        .await
    }

    async fn list_enrollments(&self) -> Result<Vec<EnrollmentRecord>, ClusterError> {
        self.with(|d| {
            d.owner_only("listing the pending packages")?;
            let owner = d.owner()?;
            let dir = d.sub("enroll");
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_err("cannot list", &dir, e)),
            };
            let now = d.now_ms()?;
            let mut out = Vec::new();
            for entry in rd.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                let Some(rec) = read_capped(&entry.path(), scope::ENROLL_CAP)?
                    .filter(|(st, _)| st.uid == owner)
                    .and_then(|(_, b)| b)
                    .and_then(|b| serde_json::from_slice::<EnrollmentRecord>(&b).ok())
                else {
                    continue;
                };
                if rec.expires_ms <= now {
                    // Expired: forgotten, as Redis forgets an expired key.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                out.push(rec);
            }
            out.sort_by_key(|r| r.created_ms);
            Ok(out)
        })
        .await
    }

    async fn revoke_enrollment(
        &self,
        token_id: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        self.take_enrollment(token_id).await
    }
}

impl Dir {
    /// The owner takes a record: the rename is the atomic take (of two takers, exactly one
    /// moves the file); a claim a scoped node left on it goes too.
    fn take_owned(&self, id: &str) -> Result<Option<EnrollmentRecord>, ClusterError> {
        let owner = self.owner()?;
        let dir = self.sub("enroll");
        let path = dir.join(format!("{id}.json"));
        let taken = dir.join(format!(".taken-{id}-{:08x}", rand::rng().random::<u32>()));
        match std::fs::rename(&path, &taken) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.check_root()?;
                return Ok(None);
            }
            Err(e) => return Err(io_err("cannot take", &path, e)),
        }
        let read = read_capped(&taken, scope::ENROLL_CAP);
        let _ = std::fs::remove_file(&taken);
        let _ = std::fs::remove_file(self.sub("inbox").join(format!("claim-{id}")));
        let record: Option<EnrollmentRecord> = read?
            .filter(|(st, _)| st.uid == owner)
            .and_then(|(_, b)| b)
            .and_then(|b| serde_json::from_slice(&b).ok());
        let now = self.now_ms()?;
        Ok(record.filter(|r| r.expires_ms > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid record (also for `scope`'s tests).
    pub(super) fn record(id: &str, name: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            hostname: "host".into(),
            addresses: vec!["192.0.2.10".into()],
            version: "0.1.0".into(),
            os: "linux".into(),
            started_at: 0,
            url: "http://192.0.2.10:8768".into(),
        }
    }

    fn dir(root: &Path) -> Arc<Dir> {
        let timing = Timing {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
        };
        StorageMembership::new(root, timing).unwrap().inner
    }

    /// Runs `f` on a thread while the test holds the join lock: it must still be waiting
    /// after 300 ms, and finish once the lock is released.
    fn waits_for_the_lock(d: &Arc<Dir>, f: impl FnOnce(&Dir) + Send + 'static) {
        let lock = d.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            f(&d2);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "finished while the join lock was held"
        );
        drop(lock);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("finished once the lock was released");
        t.join().unwrap();
    }

    #[test]
    fn leave_changes_names_only_under_the_join_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let m = StorageMembership { inner: d.clone() };
        rt.block_on(m.register(&record("web-aaaaaa", "web")))
            .unwrap();
        waits_for_the_lock(&d, |d| {
            assert!(d.leave("web-aaaaaa", EventKind::Removed, "admin").unwrap());
        });
        assert!(!d.sub("names").join("web").exists());
    }

    #[test]
    fn prune_rechecks_under_the_lock_and_spares_a_node_that_came_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let m = StorageMembership { inner: d.clone() };
        rt.block_on(m.register(&record("web-aaaaaa", "web")))
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        // Expired now; the prune's removal waits for the lock, and the node heartbeats again
        // meanwhile, so the re-check under the lock keeps it and its name.
        let lock = d.lock().unwrap();
        let now = d.now_ms().unwrap();
        let d2 = d.clone();
        let t = std::thread::spawn(move || d2.prune_at(now).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        touch(&d.member_path("web-aaaaaa")).unwrap();
        drop(lock);
        let gone = t.join().unwrap();
        assert!(gone.is_empty(), "pruned a node that came back: {gone:?}");
        assert_eq!(
            std::fs::read_to_string(d.sub("names").join("web")).unwrap(),
            "web-aaaaaa"
        );
        // Left alone, it expires and goes, name and all.
        std::thread::sleep(Duration::from_millis(400));
        let now = d.now_ms().unwrap();
        waits_for_the_lock(&d, move |d| {
            assert_eq!(d.prune_at(now).unwrap(), vec!["web-aaaaaa".to_string()]);
        });
        assert!(!d.sub("names").join("web").exists());
    }
}
