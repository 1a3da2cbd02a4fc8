//! The `storage` backend: a shared directory (NFS, SMB or local disk), also the embedded default
//! that needs no server.
//!
//! Layout under `<storage_path>/cluster/`: `members/<id>.json` (the node's record; its mtime is
//! the last heartbeat), `names/<name>` (id of the holder), `events/<ms>-<seq>-<rand>.json`,
//! `removed/<id>` (tombstones), `clock` (touched to read the file server's time), `lock`,
//! `active` (the active count: joins and leaves adjust it under the lock, the prune recounts),
//! `prune` (its mtime: the last prune's turn).
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

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use rand::Rng;

use super::{
    ClusterError, EVENTS_CAP, EnrollmentRecord, Event, EventKind, Heartbeat, Member, MemberState,
    Membership, NodeRecord, REMOVAL_TOMBSTONE, Timing,
};
use crate::config::BackendKind;
use crate::identity::write_atomically;

const NAME: &str = "storage";
/// A join lock older than this was left by a crashed node and may be broken.
const STALE_LOCK: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Membership in a shared directory.
#[derive(Debug, Clone)]
pub struct StorageMembership {
    inner: Arc<Dir>,
}

#[derive(Debug)]
struct Dir {
    root: PathBuf,
    timing: Timing,
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

    fn read_member(&self, id: &str) -> Result<Option<(NodeRecord, u64)>, ClusterError> {
        let path = self.member_path(id);
        let Some(mtime) = mtime_ms(&path)? else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok().map(|n| (n, mtime))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
    }

    fn is_removed(&self, id: &str, now: u64) -> Result<bool, ClusterError> {
        let p = self.sub("removed").join(id);
        match mtime_ms(&p)? {
            Some(t) if now.saturating_sub(t) < REMOVAL_TOMBSTONE.as_millis() as u64 => Ok(true),
            Some(_) => {
                let _ = std::fs::remove_file(&p);
                Ok(false)
            }
            None => Ok(false),
        }
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
        let p = self.sub("names").join(name);
        if std::fs::read_to_string(&p).is_ok_and(|h| h.trim() == id) {
            let _ = std::fs::remove_file(&p);
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
        let mut out = Vec::new();
        for id in self.member_ids()? {
            if let Some((node, last)) = self.read_member(&id)? {
                let age = now.saturating_sub(last);
                out.push(Member {
                    node,
                    last_heartbeat_ms: last,
                    age_ms: age,
                    state: if age < timeout {
                        MemberState::Active
                    } else {
                        MemberState::Expired
                    },
                    age_known: true,
                });
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
        let path = self.member_path(id);
        let tombstone = self.sub("removed").join(id);
        let Some(before) = mtime_ms(&path)? else {
            // Not a member: the clock file tells whether a tombstone is still in force.
            let now = self.now_ms()?;
            let removed = mtime_ms(&tombstone)?.is_some() && self.is_removed(id, now)?;
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
    fn recount(&self, now: u64) -> Result<usize, ClusterError> {
        // Under the lock, as registrations and leaves adjust the count: a join during the scan
        // is counted by the scan or by its own +1 afterwards, never lost.
        let _lock = self.lock()?;
        let n = self.active_at(now)?;
        self.write_active(n)?;
        Ok(n)
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
        self.with(|d| d.now_ms()).await
    }

    async fn register(&self, node: &NodeRecord) -> Result<usize, ClusterError> {
        let node = node.clone();
        self.with(move |d| {
            let _lock = d.lock()?;
            let now = d.now_ms()?;
            if d.is_removed(&node.id, now)? {
                return Err(ClusterError::Removed(node.id.clone()));
            }
            let timeout = d.timeout_ms();
            let names = d.ensure("names")?;
            let name_path = names.join(&node.name);
            if let Ok(holder) = std::fs::read_to_string(&name_path) {
                let holder = holder.trim();
                if holder != node.id
                    && let Some(t) = mtime_ms(&d.member_path(holder))?
                    && now.saturating_sub(t) < timeout
                {
                    return Err(ClusterError::NameTaken {
                        name: node.name.clone(),
                        holder: holder.to_string(),
                    });
                }
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
        let id = node.id.clone();
        self.with(move |d| {
            let (beat, now) = d.beat(&id)?;
            if !matches!(beat, Heartbeat::Alive { .. }) {
                return Ok(beat);
            }
            // The prune's turn: about once per timeout across the cluster (see `prune_due`).
            if d.prune_due(now)? {
                d.prune_at(now)?;
                return Ok(Heartbeat::Alive {
                    active: d.recount(now)?.max(1),
                });
            }
            Ok(Heartbeat::Alive {
                active: d.read_active().max(1),
            })
        })
        .await
    }

    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError> {
        let id = node_id.to_string();
        let leave = self.with(move |d| d.leave(&id, EventKind::Left, "").map(|_| ()));
        super::within(NAME, "leaving", super::LEAVE_DEADLINE, leave).await
    }

    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError> {
        let id = node_id.to_string();
        let by = if by.is_empty() { "admin" } else { by }.to_string();
        self.with(move |d| d.leave(&id, EventKind::Removed, &by))
            .await
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        self.with(|d| {
            let now = d.now_ms()?;
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
            let now = d.now_ms()?;
            let gone = d.prune_at(now)?;
            d.recount(now)?;
            Ok(gone)
        })
        .await
    }

    async fn record_event(&self, event: &Event) -> Result<(), ClusterError> {
        let event = event.clone();
        self.with(move |d| {
            let now = d.now_ms()?;
            d.event(event.kind, &event.node_id, now, event.detail)
        })
        .await
    }

    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError> {
        self.with(move |d| {
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
            Ok(names
                .iter()
                .take(limit)
                .filter_map(|n| std::fs::read(dir.join(n)).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect())
        })
        .await
    }

    fn supports_enrollment(&self) -> bool {
        true
    }

    async fn put_enrollment(&self, record: &EnrollmentRecord) -> Result<(), ClusterError> {
        let record = record.clone();
        self.with(move |d| {
            let dir = d.ensure("enroll")?;
            let path = dir.join(format!("{}.json", record.token_id));
            // Strings and numbers only: serialising cannot fail.
            let bytes = serde_json::to_vec(&record).unwrap_or_default();
            // Readable by the service account only: the shared directory's permissions are
            // this backend's access control.
            write_atomically(&path, &bytes, 0o600).map_err(|e| io_err("cannot write", &path, e))
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
            let dir = d.sub("enroll");
            let path = dir.join(format!("{id}.json"));
            // The rename is the atomic take: of two nodes, exactly one moves the file.
            let taken = dir.join(format!(".taken-{id}-{:08x}", rand::rng().random::<u32>()));
            match std::fs::rename(&path, &taken) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    d.check_root()?;
                    return Ok(None);
                }
                Err(e) => return Err(io_err("cannot take", &path, e)),
            }
            let bytes = std::fs::read(&taken);
            let _ = std::fs::remove_file(&taken);
            let record: Option<EnrollmentRecord> =
                bytes.ok().and_then(|b| serde_json::from_slice(&b).ok());
            let now = d.now_ms()?;
            Ok(record.filter(|r| r.expires_ms > now))
        })
        .await
    }

    async fn list_enrollments(&self) -> Result<Vec<EnrollmentRecord>, ClusterError> {
        self.with(|d| {
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
                let Some(rec) = std::fs::read(entry.path())
                    .ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> NodeRecord {
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
