//! Who may write what on the shared directory. The cluster's **owner** is the uid that owns
//! `cluster/` (the primary made it). A process whose files come out owned by that uid is the
//! owner: it writes everything, as every machine did when all reached the share under one
//! identity. A machine the file server gives a uid of its own (an NFS export line per host with
//! `all_squash,anonuid=<uid>`, or a local uid) is a **scoped node**: the owner-only directories
//! refuse its writes, and it may write only files of its own in two sticky directories (mode
//! 1777, like `/tmp`: anyone creates, only a file's owner or the directory's owner deletes):
//!
//! - `nodes/<name>.json`: its record; the mtime (the file server's clock) is its heartbeat.
//! - `inbox/<name>.<ms>-<rand>.event.json`: an event it asks the owner to record;
//!   `inbox/claim-<token>`: its claim on an enrollment; `inbox/refused-<token>`: why an install
//!   with a package was refused.
//!
//! Nothing a scoped node wrote is believed for its owner alone: a name is bound to one uid by
//! the owner (`bindings/<name>`, written when that uid's claim on a package for the name was
//! accepted), and `nodes/<name>.json` counts only when its file owner is that uid, it is a valid
//! record of that name and its mtime is not in the future. Files that fail (squatted names,
//! forged times, junk) are ignored by every reader and deleted by the owner's prune turn. The
//! owner forwards notes after the checks of `records::checked_note`, at most `PER_NAME` a pass.
//!
//! Enrollment: a scoped node cannot take (rename) a record in the owner's `enroll/` (mode 0711:
//! a record is read by its name, the token id, never listed). It reads it, writes its claim
//! (the token's `claim_proof`, whose digest the record holds, and its node name) and waits; the
//! owner checks the proof, binds the name to the claim file's owner, writes `granted/<token>`
//! and deletes the record. The node then finds its uid in the grant and opens the record it read.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use serde::{Deserialize, Serialize};

use super::*;
use crate::cluster::records::{NOTE_CAP, checked_note, clean_text};

/// Longest record a node's `nodes/<name>.json` may be.
pub(super) const RECORD_CAP: u64 = 16 * 1024;
/// Longest enrollment record read (its ciphertext may carry the TLS certificate and key).
pub(super) const ENROLL_CAP: u64 = 1 << 20;
/// Longest claim file.
const CLAIM_CAP: u64 = 512;
/// Notes forwarded per node per prune turn (about one heartbeat timeout), however often the
/// inbox is passed over meanwhile; the rest are deleted unread (a flood). As etcd's.
const PER_NAME: usize = 8;
/// Inbox entries looked at per pass; the rest wait for the next one.
const INBOX_PER_PASS: usize = 2000;
/// How long a grant stays for its claimer to find (and a refusal of the same package to be
/// recorded).
const GRANT_GRACE_MS: u64 = 10 * 60 * 1000;
/// The uid NFS's `root_squash` maps root to.
const NOBODY: u32 = 65_534;
/// A heartbeat more than this ahead of the file server's clock was stamped by hand: forged.
const FUTURE_SLACK_MS: u64 = 1000;

/// Who this process is on the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The owner of `cluster/`: writes everything.
    Owner,
    /// Another uid (as the file server records it): writes only its own files.
    Node(u32),
}

/// What a scoped node's record file turned out to be.
enum Verdict {
    Trusted(NodeRecord, Stat),
    /// Its owner is not the uid bound to the name (or none is).
    Foreign,
    /// Unreadable, oversized, not a record of that name, or not a plain file.
    Invalid,
    /// A heartbeat ahead of the file server's clock.
    Future(NodeRecord, Stat),
}

/// What a grant says: whose claim on the token was accepted, for which name.
#[derive(Debug, Serialize, Deserialize)]
struct Grant {
    uid: u32,
    name: String,
}

/// A scoped node's claim on an enrollment.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    proof: String,
    name: String,
}

fn not_permitted(reason: String) -> ClusterError {
    ClusterError::NotPermitted {
        backend: NAME,
        reason,
    }
}

/// Creates a file that cannot exist yet in `dir` and returns the uid and mtime the file server
/// gave it (then deletes it): who this process is on the share, and the share's clock.
fn probe(dir: &Path) -> std::io::Result<(u32, u64)> {
    let (p, f) = create_unique(dir, "probe", 0o600)?;
    let m = f.metadata();
    let _ = std::fs::remove_file(&p);
    let m = m?;
    Ok((m.uid(), ms_of(m.modified().unwrap_or(UNIX_EPOCH))))
}

fn valid_token_id(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Dir {
    /// This process's role and the owner's uid, found once: whoever makes `cluster/` owns it;
    /// a probe file in `cluster/` tells the file server's uid for this process, and where the
    /// owner-only directory refuses it, one in `nodes/`.
    pub(super) fn who(&self) -> Result<(Role, u32), ClusterError> {
        if let Some(w) = self.who.get() {
            return Ok(*w);
        }
        // As the first write always did: a share that is there but empty gets `cluster/`.
        if !self.root.exists() {
            std::fs::create_dir_all(&self.root)
                .map_err(|e| io_err("cannot create", &self.root, e))?;
        }
        let owner = std::fs::metadata(&self.root)
            .map_err(|e| io_err("cannot reach", &self.root, e))?
            .uid();
        let role = match probe(&self.root) {
            Ok((uid, _)) if uid == owner => {
                if uid == NOBODY {
                    log::warn!(
                        "this machine writes to {} as nobody (uid {NOBODY}, root_squash), which owns it: every machine squashed so is the cluster's owner and can write every record; give each host a uid of its own (all_squash,anonuid=…)",
                        self.root.display()
                    );
                }
                self.prepare()?;
                Role::Owner
            }
            Ok((uid, _)) => {
                log::warn!(
                    "{} is writable by uid {uid}, which does not own it: every machine that reaches the share so can write every record; make it mode 0755, owned by the primary's uid",
                    self.root.display()
                );
                Role::Node(uid)
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                let nodes = self.sub("nodes");
                match probe(&nodes) {
                    Ok((uid, _)) => Role::Node(uid),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(ClusterError::Backend {
                            backend: NAME,
                            reason: format!(
                                "{} does not exist yet: the primary (the owner of {}) makes it when it starts",
                                nodes.display(),
                                self.root.display()
                            ),
                        });
                    }
                    Err(e) => return Err(io_err("cannot write", &nodes, e)),
                }
            }
            Err(e) => return Err(io_err("cannot write", &self.root, e)),
        };
        let _ = self.who.set((role, owner));
        Ok((role, owner))
    }

    pub(super) fn role(&self) -> Result<Role, ClusterError> {
        self.who().map(|(r, _)| r)
    }

    pub(super) fn owner(&self) -> Result<u32, ClusterError> {
        self.who().map(|(_, o)| o)
    }

    /// What only the owner may do: `Err(NotPermitted)` saying so on a scoped node.
    pub(super) fn owner_only(&self, what: &str) -> Result<(), ClusterError> {
        match self.role()? {
            Role::Owner => Ok(()),
            Role::Node(uid) => Err(not_permitted(format!(
                "{what}: this node reaches the shared directory as uid {uid}, which writes only its own records; do it on the primary"
            ))),
        }
    }

    /// The owner's directories with the modes the scheme needs (at start and at each prune
    /// turn, so that a wiped share gets them back).
    pub(super) fn prepare(&self) -> Result<(), ClusterError> {
        for (sub, mode) in [("nodes", 0o1777), ("inbox", 0o1733), ("enroll", 0o711)] {
            let p = self.sub(sub);
            match std::fs::DirBuilder::new().mode(mode & 0o777).create(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("cannot create", &p, e)),
            }
            let m = std::fs::symlink_metadata(&p).map_err(|e| io_err("cannot reach", &p, e))?;
            if !m.is_dir() {
                return Err(ClusterError::Backend {
                    backend: NAME,
                    reason: format!("{} is not a directory", p.display()),
                });
            }
            if m.permissions().mode() & 0o7777 != mode {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err("cannot set the mode of", &p, e))?;
            }
        }
        Ok(())
    }

    pub(super) fn node_path(&self, name: &str) -> PathBuf {
        self.sub("nodes").join(format!("{name}.json"))
    }

    /// The uid bound to `name` (`bindings/<name>`, believed only when the owner wrote it).
    fn binding(&self, name: &str) -> Result<Option<u32>, ClusterError> {
        let owner = self.owner()?;
        let p = self.sub("bindings").join(name);
        Ok(match read_capped(&p, 16)? {
            Some((st, Some(b))) if st.uid == owner => {
                String::from_utf8_lossy(&b).trim().parse().ok()
            }
            _ => None,
        })
    }

    /// The file server's clock as a scoped node reads it: the mtime of a file it creates.
    fn node_now_ms(&self) -> Result<u64, ClusterError> {
        let nodes = self.sub("nodes");
        probe(&nodes)
            .map(|(_, t)| t)
            .map_err(|e| io_err("cannot write", &nodes, e))
    }

    /// The file server's clock, for either role.
    pub(super) fn clock_ms(&self) -> Result<u64, ClusterError> {
        match self.role()? {
            Role::Owner => self.now_ms(),
            Role::Node(_) => self.node_now_ms(),
        }
    }

    /// Judges `nodes/<name>.json` against the binding `bound` and the clock `now`.
    fn judge(
        &self,
        name: &str,
        bound: Option<u32>,
        now: u64,
    ) -> Result<Option<Verdict>, ClusterError> {
        let Some((st, bytes)) = read_capped(&self.node_path(name), RECORD_CAP)? else {
            return Ok(None);
        };
        if Some(st.uid) != bound {
            return Ok(Some(Verdict::Foreign));
        }
        let Some(rec) = bytes
            .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
            .filter(|r| r.name == name && r.validate().is_ok())
        else {
            return Ok(Some(Verdict::Invalid));
        };
        Ok(Some(if st.mtime_ms > now + FUTURE_SLACK_MS {
            Verdict::Future(rec, st)
        } else {
            Verdict::Trusted(rec, st)
        }))
    }

    /// The names that have a file in `nodes/` (`<name>.json`), and the other entries.
    fn node_files(&self) -> Result<(Vec<String>, Vec<String>), ClusterError> {
        let dir = self.sub("nodes");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        let (mut names, mut other) = (Vec::new(), Vec::new());
        for entry in rd {
            let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
            let f = entry.file_name().to_string_lossy().into_owned();
            match f.strip_suffix(".json") {
                Some(n) if crate::identity::validate_node_name(n).is_ok() => {
                    names.push(n.to_string())
                }
                _ => other.push(f),
            }
        }
        Ok((names, other))
    }

    /// The scoped nodes' members that every reader believes (a forged heartbeat is listed as
    /// expired, as Redis lists one).
    pub(super) fn scoped_members(&self, now: u64) -> Result<Vec<Member>, ClusterError> {
        let timeout = self.timeout_ms();
        let mut out = Vec::new();
        for name in self.node_files()?.0 {
            let bound = self.binding(&name)?;
            let (node, last, forged) = match self.judge(&name, bound, now)? {
                Some(Verdict::Trusted(r, st)) => (r, st.mtime_ms, false),
                Some(Verdict::Future(r, st)) => (r, st.mtime_ms, true),
                _ => continue,
            };
            let age = if forged {
                timeout
            } else {
                now.saturating_sub(last)
            };
            out.push(Member {
                age_known: !forged,
                ..Member::aged(node, last.min(now), age, timeout)
            });
        }
        Ok(out)
    }

    /// The id of the live scoped node that holds `name`, if any.
    pub(super) fn scoped_holder(
        &self,
        name: &str,
        now: u64,
    ) -> Result<Option<String>, ClusterError> {
        if !self.sub("nodes").join(format!("{name}.json")).exists() {
            return Ok(None);
        }
        let bound = self.binding(name)?;
        Ok(match self.judge(name, bound, now)? {
            Some(Verdict::Trusted(r, st))
                if now.saturating_sub(st.mtime_ms) < self.timeout_ms() =>
            {
                Some(r.id)
            }
            _ => None,
        })
    }

    /// The owner's prune turn over `nodes/`: deletes what no reader believes (files of another
    /// uid than the name's binding, invalid records, forged heartbeats, stale temporary files)
    /// and expired records (recording `expired`); returns the expired ids and the active count.
    pub(super) fn scoped_prune(&self, now: u64) -> Result<(Vec<String>, usize), ClusterError> {
        let timeout = self.timeout_ms();
        let dir = self.sub("nodes");
        let (names, other) = self.node_files()?;
        for f in other {
            let p = dir.join(&f);
            // Temporary files of a write in progress (and probes) live a moment; junk goes.
            let fresh = f.starts_with('.')
                && stat(&p)?.is_some_and(|st| st.file && now.saturating_sub(st.mtime_ms) < timeout);
            if !fresh {
                remove_entry(&p);
            }
        }
        let (mut gone, mut active) = (Vec::new(), 0);
        for name in names {
            let p = self.node_path(&name);
            let bound = self.binding(&name)?;
            let verdict = match self.judge(&name, bound, now) {
                Ok(v) => v,
                // Left for the next turn (an I/O error is no reason to delete a record).
                Err(e) => {
                    log::warn!("prune: {}: {e}", p.display());
                    continue;
                }
            };
            match verdict {
                None => {}
                Some(Verdict::Trusted(_, st)) if now.saturating_sub(st.mtime_ms) < timeout => {
                    active += 1;
                }
                Some(Verdict::Trusted(r, _)) if std::fs::remove_file(&p).is_ok() => {
                    self.event(
                        EventKind::Expired,
                        &r.id,
                        now,
                        BTreeMap::from([("name".into(), name.clone())]),
                    )?;
                    gone.push(r.id);
                }
                Some(Verdict::Trusted(..)) => {}
                Some(verdict) => {
                    let why = match verdict {
                        Verdict::Foreign => "written by a uid not bound to that name",
                        Verdict::Future(..) => "a heartbeat ahead of the file server's clock",
                        _ => "not a valid record of that name",
                    };
                    log::warn!("deleting {}: {why}", p.display());
                    remove_entry(&p);
                }
            }
        }
        Ok((gone, active))
    }

    /// Whether `inbox/` changed since the owner's last pass (one stat: the directory's mtime
    /// moves with every entry made or deleted).
    pub(super) fn inbox_changed(&self) -> bool {
        let Ok(m) = std::fs::metadata(self.sub("inbox")) else {
            return false;
        };
        let seen = self
            .inbox_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|s| s == (m.mtime(), m.mtime_nsec()));
        !seen
    }

    /// The owner's pass over `inbox/`: claims, refusals and notes, each checked as untrusted
    /// input and deleted after; anything else is deleted unread.
    pub(super) fn inbox_pass(&self, now: u64) -> Result<(), ClusterError> {
        let dir = self.sub("inbox");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot list", &dir, e)),
        };
        let mut per_name = self
            .notes_forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for entry in rd.take(INBOX_PER_PASS) {
            let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
            let f = entry.file_name().to_string_lossy().into_owned();
            let p = dir.join(&f);
            if f.starts_with('.') {
                if stat(&p)?.is_none_or(|st| {
                    !st.file || now.saturating_sub(st.mtime_ms) >= self.timeout_ms()
                }) {
                    remove_entry(&p);
                }
                continue;
            }
            // One entry's failure (a file that cannot be read, say) costs that entry only: it is
            // deleted all the same, and the pass goes on.
            let done = if let Some(token) = f.strip_prefix("claim-").filter(|t| valid_token_id(t)) {
                self.accept_claim(token, &p, now)
            } else if let Some(token) = f.strip_prefix("refused-").filter(|t| valid_token_id(t)) {
                self.forward_refusal(token, &p, now)
            } else if let Some((name, _)) = f
                .strip_suffix(".event.json")
                .and_then(|r| r.split_once('.'))
                .filter(|(n, _)| crate::identity::validate_node_name(n).is_ok())
            {
                let n = per_name.entry(name.to_string()).or_default();
                *n += 1;
                if *n <= PER_NAME {
                    self.forward_note(name, &p, now)
                } else {
                    Ok(())
                }
            } else {
                Ok(())
            };
            if let Err(e) = done {
                log::warn!("inbox: {}: {e}", p.display());
            }
            remove_entry(&p);
        }
        drop(per_name);
        if let Ok(m) = std::fs::metadata(&dir) {
            *self.inbox_seen.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((m.mtime(), m.mtime_nsec()));
        }
        Ok(())
    }

    /// A note of the node bound to `name`: recorded when its owner is that node's uid and it
    /// passes `checked_note`.
    fn forward_note(&self, name: &str, p: &Path, now: u64) -> Result<(), ClusterError> {
        let Some((st, bytes)) = read_capped(p, NOTE_CAP as u64)? else {
            return Ok(());
        };
        if self.binding(name)? != Some(st.uid) {
            log::warn!(
                "dropping {}: not written by the uid bound to {name}",
                p.display()
            );
            return Ok(());
        }
        let Some(bytes) = bytes else {
            log::warn!("dropping {}: over {NOTE_CAP} bytes", p.display());
            return Ok(());
        };
        match checked_note(name, &bytes, now) {
            Ok(ev) => self.event(ev.kind, &ev.node_id, ev.at_ms, ev.detail),
            Err(why) => {
                log::warn!("dropping {}: {}", p.display(), why.as_str());
                Ok(())
            }
        }
    }

    /// Why an install with the package of `token` was refused: recorded as
    /// `enrollment_rejected` when the token is pending or was granted lately (whoever holds the
    /// package may say so, once per file name), with its text cleaned and capped.
    fn forward_refusal(&self, token: &str, p: &Path, now: u64) -> Result<(), ClusterError> {
        let owner = self.owner()?;
        let known = [
            self.sub("enroll").join(format!("{token}.json")),
            self.sub("granted").join(token),
        ]
        .iter()
        .any(|k| matches!(stat(k), Ok(Some(st)) if st.uid == owner));
        if !known {
            return Ok(());
        }
        let Some((_, Some(bytes))) = read_capped(p, NOTE_CAP as u64)? else {
            return Ok(());
        };
        let Ok(ev) = serde_json::from_slice::<Event>(&bytes) else {
            return Ok(());
        };
        let node = Some(ev.node_id.as_str())
            .filter(|n| crate::identity::validate_node_name(n).is_ok())
            .unwrap_or("unknown");
        let mut detail = BTreeMap::from([("token_id".to_string(), token.to_string())]);
        for (k, max) in [("reason", 500), ("host", 255)] {
            if let Some(v) = ev.detail.get(k) {
                detail.insert(k.to_string(), clean_text(v, max));
            }
        }
        self.event(EventKind::EnrollmentRejected, node, now, detail)
    }

    /// A claim on the enrollment `token`: accepted when the record is pending, unexpired and
    /// holds the digest of the claim's proof, and the name is the record's (or, for a package
    /// without one, a valid name): the name is then bound to the claim file's owner.
    fn accept_claim(&self, token: &str, p: &Path, now: u64) -> Result<(), ClusterError> {
        let owner = self.owner()?;
        let Some((st, Some(bytes))) = read_capped(p, CLAIM_CAP)? else {
            return Ok(());
        };
        let short = &token[..8];
        let refuse = |why: &str| {
            log::warn!(
                "refused a claim on package token {short}… by uid {}: {why}",
                st.uid
            );
            Ok(())
        };
        if !st.file || st.uid == owner {
            return refuse("not a node's file");
        }
        let Ok(claim) = serde_json::from_slice::<Claim>(&bytes) else {
            return refuse("unreadable");
        };
        let rec_path = self.sub("enroll").join(format!("{token}.json"));
        let record = match read_capped(&rec_path, ENROLL_CAP)? {
            Some((rst, Some(b))) if rst.uid == owner => {
                serde_json::from_slice::<EnrollmentRecord>(&b).ok()
            }
            _ => None,
        };
        let Some(record) = record else {
            return refuse("no such pending package");
        };
        if record.expires_ms <= now {
            return refuse("the package expired");
        }
        if record.claim.is_empty()
            || crate::crypto::sha256_hex(claim.proof.as_bytes()) != record.claim
        {
            return refuse("the proof does not match the package's token");
        }
        let name_ok = if record.node_name.is_empty() {
            crate::identity::validate_node_name(&claim.name).is_ok()
        } else {
            claim.name == record.node_name
        };
        if !name_ok {
            return refuse("not the package's node name");
        }
        let bindings = self.ensure("bindings")?;
        let bp = bindings.join(&claim.name);
        write_atomically(&bp, st.uid.to_string().as_bytes(), 0o644)
            .map_err(|e| io_err("cannot write", &bp, e))?;
        let granted = self.ensure("granted")?;
        let gp = granted.join(token);
        let grant = serde_json::to_vec(&Grant {
            uid: st.uid,
            name: claim.name.clone(),
        })
        .unwrap_or_default();
        write_atomically(&gp, &grant, 0o644).map_err(|e| io_err("cannot write", &gp, e))?;
        let _ = std::fs::remove_file(&rec_path);
        log::info!(
            "🔑 Bound node name {} to uid {} on the shared directory (package token {short}…)",
            claim.name,
            st.uid
        );
        Ok(())
    }

    /// Grants older than `GRANT_GRACE_MS` are deleted (their claimers had time to read them).
    pub(super) fn sweep_grants(&self, now: u64) {
        let dir = self.sub("granted");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in rd.filter_map(|e| e.ok()) {
            let p = entry.path();
            if stat(&p)
                .ok()
                .flatten()
                .is_some_and(|st| now.saturating_sub(st.mtime_ms) >= GRANT_GRACE_MS)
            {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    /// Deletes the binding of `name` (a removed node's uid writes no record of it again).
    pub(super) fn unbind(&self, name: &str) {
        let _ = std::fs::remove_file(self.sub("bindings").join(name));
    }

    // ---- a scoped node's own path ----

    /// Joins as a scoped node: its uid must be the name's binding; writes its own record.
    pub(super) fn node_register(&self, uid: u32, node: &NodeRecord) -> Result<usize, ClusterError> {
        let now = self.node_now_ms()?;
        if self.is_removed(&node.id, now)? {
            return Err(ClusterError::Removed(node.id.clone()));
        }
        let bound = self.binding(&node.name)?;
        if bound != Some(uid) {
            return Err(not_permitted(format!(
                "uid {uid} may not write the records of node {} on the shared directory {} ({}): enroll this machine with a package built for that name",
                node.name,
                self.root.display(),
                match bound {
                    None => "no machine was enrolled under that name".to_string(),
                    Some(other) => format!("the name is bound to uid {other}"),
                }
            )));
        }
        if let Some(holder) = self.name_holder(&node.name)?
            && holder != node.id
            && mtime_ms(&self.member_path(&holder))?
                .is_some_and(|t| now.saturating_sub(t) < self.timeout_ms())
        {
            return Err(ClusterError::NameTaken {
                name: node.name.clone(),
                holder,
            });
        }
        let path = self.node_path(&node.name);
        let fresh = match self.judge(&node.name, bound, now)? {
            Some(Verdict::Trusted(r, st)) => {
                r.id != node.id || now.saturating_sub(st.mtime_ms) >= self.timeout_ms()
            }
            _ => true,
        };
        let bytes = serde_json::to_vec(node).unwrap_or_default();
        write_atomically(&path, &bytes, 0o644).map_err(|e| io_err("cannot write", &path, e))?;
        touch(&path)?;
        if fresh {
            let ev = Event::new(EventKind::Joined, &node.id).at(now);
            self.note(&node.name, &ev)?;
        }
        Ok((self.read_active() + usize::from(fresh)).max(1))
    }

    /// A scoped node's heartbeat: its own file only (the owner prunes and counts).
    pub(super) fn node_heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError> {
        let (beat, _) = self.beat_file(&self.node_path(&node.name), &node.id)?;
        Ok(match beat {
            Heartbeat::Alive { .. } => Heartbeat::Alive {
                active: self.read_active().max(1),
            },
            other => other,
        })
    }

    /// A scoped node leaves: deletes its own record (if it is this id's) and asks the owner to
    /// record `left`.
    pub(super) fn node_leave(&self, id: &str) -> Result<(), ClusterError> {
        let Some(name) = name_of_id(id) else {
            return Ok(());
        };
        let path = self.node_path(name);
        let mine = read_capped(&path, RECORD_CAP)?
            .and_then(|(_, b)| b)
            .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
            .is_some_and(|r| r.id == id);
        if !mine {
            return Ok(());
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot remove", &path, e)),
        }
        let now = self.node_now_ms()?;
        self.note(name, &Event::new(EventKind::Left, id).at(now))
    }

    /// A scoped node's event: a note in `inbox/` under its name (or, for a refused install,
    /// under the package's token), for the owner to check and record.
    pub(super) fn node_event(&self, event: &Event) -> Result<(), ClusterError> {
        if event.kind == EventKind::EnrollmentRejected {
            let Some(token) = event.detail.get("token_id").filter(|t| valid_token_id(t)) else {
                return Ok(());
            };
            let p = self.sub("inbox").join(format!("refused-{token}"));
            let bytes = serde_json::to_vec(event).unwrap_or_default();
            return put_note(&p, &bytes);
        }
        let name = name_of_id(&event.node_id)
            .or(Some(event.node_id.as_str()))
            .filter(|n| crate::identity::validate_node_name(n).is_ok());
        match name {
            Some(name) => self.note(name, event),
            None => Ok(()),
        }
    }

    fn note(&self, name: &str, event: &Event) -> Result<(), ClusterError> {
        let p = self.sub("inbox").join(format!(
            "{name}.{:015}-{:08x}.event.json",
            event.at_ms,
            rand::rng().random::<u32>()
        ));
        let bytes = serde_json::to_vec(event).unwrap_or_default();
        put_note(&p, &bytes)
    }

    /// A scoped node's take of an enrollment: read the record, claim it with `proof`, and wait
    /// (a transient error) until the owner's grant names this uid.
    pub(super) fn node_claim(
        &self,
        uid: u32,
        token: &str,
        proof: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        if !valid_token_id(token) {
            return Ok(None);
        }
        let owner = self.owner()?;
        let short = &token[..8];
        let cached = || {
            self.claims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(token)
                .cloned()
        };
        // The owner's grant, if it came: this uid's (the record read before) or another's.
        let granted = || -> Result<Option<Option<EnrollmentRecord>>, ClusterError> {
            match read_capped(&self.sub("granted").join(token), 256)? {
                Some((st, Some(b))) if st.uid == owner => {
                    let mine = serde_json::from_slice::<Grant>(&b).is_ok_and(|g| g.uid == uid);
                    if !mine {
                        return Ok(Some(None));
                    }
                    let _ = std::fs::remove_file(self.sub("inbox").join(format!("claim-{token}")));
                    Ok(Some(cached()))
                }
                _ => Ok(None),
            }
        };
        if let Some(verdict) = granted()? {
            return Ok(verdict);
        }
        // Read again on every try (not from the cache): a record revoked or taken by another
        // machine while this claim waited is gone, and the claim is refused.
        let p = self.sub("enroll").join(format!("{token}.json"));
        let read = read_capped(&p, ENROLL_CAP)?;
        if let Some((st, None)) = &read
            && st.uid == owner
            && st.file
        {
            return Err(not_permitted(format!(
                "package token {short}… has a record this node cannot read (made by an earlier release, readable by the primary only): build a new package"
            )));
        }
        let Some(record) = read
            .filter(|(st, _)| st.uid == owner)
            .and_then(|(_, b)| b)
            .and_then(|b| serde_json::from_slice::<EnrollmentRecord>(&b).ok())
        else {
            // Gone: granted since the look above, or revoked, expired or taken.
            if let Some(verdict) = granted()? {
                return Ok(verdict);
            }
            self.claims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(token);
            return Ok(None);
        };
        let now = self.node_now_ms()?;
        if record.expires_ms <= now {
            return Ok(None);
        }
        if record.claim.is_empty() {
            return Err(not_permitted(format!(
                "package token {short}… was built by an earlier release, which a node with a uid of its own cannot redeem: build a new package"
            )));
        }
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), record.clone());
        let name = if record.node_name.is_empty() {
            crate::identity::hostname_node_name()
        } else {
            record.node_name.clone()
        };
        let cp = self.sub("inbox").join(format!("claim-{token}"));
        let body = serde_json::to_vec(&Claim {
            proof: proof.to_string(),
            name,
        })
        .unwrap_or_default();
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&cp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &body));
        match made {
            Ok(()) => {}
            // Ours from an earlier try, or another uid's: the primary judges that one (a valid
            // claim wins, and the grant then names the other uid; a squat is deleted and this
            // node's next try claims).
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("cannot write", &cp, e)),
        }
        Err(ClusterError::Waiting {
            backend: NAME,
            reason: format!(
                "the claim on package token {short}… waits for the primary to accept it (uid {uid} on the shared directory)"
            ),
        })
    }
}

/// The node name an id carries (`<name>-<6 chars>`).
pub(super) fn name_of_id(id: &str) -> Option<&str> {
    let (name, _) = id.rsplit_once('-')?;
    (crate::identity::validate_node_name(name).is_ok() && crate::identity::id_belongs_to(id, name))
        .then_some(name)
}

/// Writes a note into `inbox/` whole: a temporary dot-file (which the owner's pass skips while
/// it is fresh) renamed into place. Not `write_atomically`: that fsyncs the directory, which
/// needs read permission on it, and `inbox/` may be listed by its owner only.
fn put_note(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (tmp, mut f) =
        create_unique(dir, "note", 0o644).map_err(|e| io_err("cannot write", path, e))?;
    let written = std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("cannot write", path, e)
    })
}

/// Creates (exclusively, with `mode`) a dot-file in `dir` that no other process's can be
/// named as: `.<kind>-<pid>-<64 random bits>`. The owner's passes skip such files while fresh.
fn create_unique(dir: &Path, kind: &str, mode: u32) -> std::io::Result<(PathBuf, std::fs::File)> {
    let p = dir.join(format!(
        ".{kind}-{}-{:016x}",
        std::process::id(),
        rand::rng().random::<u64>()
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&p)?;
    Ok((p, f))
}

/// Deletes a file (or an empty directory) another uid may have put in a sticky directory.
fn remove_entry(p: &Path) {
    if std::fs::remove_file(p).is_err() {
        let _ = std::fs::remove_dir(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MemberState;
    use std::os::unix::fs::PermissionsExt;

    const NODE_UID: u32 = 52_101;
    const OTHER_UID: u32 = 52_102;

    #[test]
    fn ids_carry_their_names() {
        assert_eq!(name_of_id("web-3-abc123"), Some("web-3"));
        assert_eq!(name_of_id("web"), None);
        assert_eq!(name_of_id("../x-abc123"), None);
    }

    fn owner_dir(root: &Path) -> Arc<Dir> {
        let timing = Timing {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
        };
        let d = StorageMembership::new(root, timing).unwrap().inner;
        assert_eq!(
            d.role().unwrap(),
            Role::Owner,
            "the test's uid made cluster/"
        );
        d
    }

    /// Writes `bytes` to `path` as uid `uid` would have (the test runs as root, as CI does).
    fn plant(path: &Path, bytes: &[u8], uid: u32) {
        std::fs::write(path, bytes).unwrap();
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None)
            .unwrap_or_else(|e| panic!("chown {} (these tests need root): {e}", path.display()));
    }

    fn record(name: &str) -> NodeRecord {
        super::super::tests::record(&format!("{name}-abc123"), name)
    }

    /// `nodes/<name>.json` holding `record(record_of)`, as uid `uid` wrote it.
    fn plant_record(d: &Dir, name: &str, record_of: &str, uid: u32) {
        let body = serde_json::to_vec(&record(record_of)).unwrap();
        plant(&d.node_path(name), &body, uid);
    }

    /// A current-thread runtime and the membership over `d`, for the trait's calls.
    fn membership(d: &Arc<Dir>) -> (tokio::runtime::Runtime, StorageMembership) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (rt, StorageMembership { inner: d.clone() })
    }

    fn bind(d: &Dir, name: &str, uid: u32) {
        let b = d.ensure("bindings").unwrap();
        std::fs::write(b.join(name), uid.to_string()).unwrap();
    }

    fn listed(d: &Dir) -> Vec<(String, MemberState)> {
        let now = d.now_ms().unwrap();
        d.members_at(now)
            .unwrap()
            .into_iter()
            .map(|m| (m.node.name, m.state))
            .collect()
    }

    #[test]
    fn the_owner_makes_the_sticky_and_private_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        let mode = |s: &str| std::fs::metadata(d.sub(s)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("nodes"), 0o1777);
        assert_eq!(mode("inbox"), 0o1733);
        assert_eq!(mode("enroll"), 0o711);
    }

    #[test]
    fn a_record_counts_only_for_the_uid_bound_to_its_name_and_never_from_the_future() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        let body = serde_json::to_vec(&record("web")).unwrap();
        plant(&d.node_path("web"), &body, NODE_UID);
        assert!(listed(&d).is_empty(), "no binding: not believed");
        bind(&d, "web", OTHER_UID);
        assert!(listed(&d).is_empty(), "bound to another uid: not believed");
        bind(&d, "web", NODE_UID);
        assert_eq!(listed(&d), vec![("web".to_string(), MemberState::Active)]);
        // A record of another name in this name's file is not one.
        plant_record(&d, "web", "db", NODE_UID);
        assert!(listed(&d).is_empty());
        plant(&d.node_path("web"), &body, NODE_UID);
        // A heartbeat stamped a day ahead is listed, never alive, and the turn deletes it.
        let later = TimeSpec::from_duration(
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(86_400),
        );
        utimensat(
            AT_FDCWD,
            &d.node_path("web"),
            &later,
            &later,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        assert_eq!(listed(&d), vec![("web".to_string(), MemberState::Expired)]);
        let now = d.now_ms().unwrap();
        let (gone, active) = d.scoped_prune(now).unwrap();
        assert_eq!((gone.len(), active), (0, 0));
        assert!(
            !d.node_path("web").exists(),
            "the forged record was deleted"
        );
    }

    #[test]
    fn the_prune_turn_deletes_squats_and_expires_the_silent() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        bind(&d, "web", NODE_UID);
        plant_record(&d, "web", "web", NODE_UID);
        // Another uid squats a name bound to nobody, and plants junk and a link.
        plant_record(&d, "db", "db", OTHER_UID);
        plant(&d.sub("nodes").join("junk"), b"x", OTHER_UID);
        std::os::unix::fs::symlink("/etc/passwd", d.node_path("api")).unwrap();
        // A socket cannot be opened (ENXIO): neither the list nor the turn may fail on it.
        let _sock = std::os::unix::net::UnixListener::bind(d.node_path("sock")).unwrap();
        assert_eq!(listed(&d).len(), 1, "the list reads past the socket");
        let now = d.now_ms().unwrap();
        let (gone, active) = d.scoped_prune(now).unwrap();
        assert_eq!((gone.len(), active), (0, 1));
        assert!(d.node_path("web").exists());
        for f in ["db.json", "junk", "api.json", "sock.json"] {
            assert!(
                std::fs::symlink_metadata(d.sub("nodes").join(f)).is_err(),
                "{f} was left"
            );
        }
        std::thread::sleep(Duration::from_millis(400));
        let now = d.now_ms().unwrap();
        let (gone, active) = d.scoped_prune(now).unwrap();
        assert_eq!((gone, active), (vec!["web-abc123".to_string()], 0));
        let (rt, m) = membership(&d);
        let events = rt.block_on(m.events(10)).unwrap();
        assert_eq!(events[0].kind, EventKind::Expired);
        assert_eq!(events[0].node_id, "web-abc123");
    }

    #[test]
    fn owner_only_files_planted_by_another_uid_are_not_believed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        let now = d.now_ms().unwrap();
        let removed = d.ensure("removed").unwrap();
        plant(&removed.join("web-abc123"), b"admin", OTHER_UID);
        assert!(!d.is_removed("web-abc123", now).unwrap());
        std::fs::write(removed.join("db-abc123"), b"admin").unwrap();
        assert!(d.is_removed("db-abc123", now).unwrap());
        let names = d.ensure("names").unwrap();
        plant(&names.join("web"), b"web-zzzzzz", OTHER_UID);
        assert_eq!(d.name_holder("web").unwrap(), None);
        plant(
            &d.ensure("bindings").unwrap().join("web"),
            b"52102",
            OTHER_UID,
        );
        assert_eq!(d.binding("web").unwrap(), None);
        let events = d.ensure("events").unwrap();
        let forged = Event::new(EventKind::Removed, "web-abc123").at(now);
        plant(
            &events.join("999999999999999-0-0.json"),
            &serde_json::to_vec(&forged).unwrap(),
            OTHER_UID,
        );
        let (rt, m) = membership(&d);
        assert!(rt.block_on(m.events(10)).unwrap().is_empty());
    }

    #[test]
    fn notes_are_forwarded_only_from_the_bound_uid_and_only_what_a_node_may_say() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        bind(&d, "web", NODE_UID);
        let inbox = d.sub("inbox");
        let note = |kind, id: &str| serde_json::to_vec(&Event::new(kind, id).at(1)).unwrap();
        // One good note; then one of another uid, one about another node, one of a kind a node
        // may not report, one oversized.
        let planted = [
            ("web.1-a", note(EventKind::Joined, "web-abc123"), NODE_UID),
            ("web.2-a", note(EventKind::Left, "web-abc123"), OTHER_UID),
            ("web.3-a", note(EventKind::Left, "db-abc123"), NODE_UID),
            ("web.4-a", note(EventKind::Removed, "web-abc123"), NODE_UID),
            ("web.5-a", vec![b' '; 5000], NODE_UID),
        ];
        for (name, body, uid) in planted {
            plant(&inbox.join(format!("{name}.event.json")), &body, uid);
        }
        // Entries that cannot be opened cost themselves only: the pass goes on past them.
        let _socks = [
            format!("claim-{}", "b".repeat(32)),
            "web.0-s.event.json".into(),
        ]
        .map(|n| std::os::unix::net::UnixListener::bind(inbox.join(n)).unwrap());
        let (rt, m) = membership(&d);
        assert!(d.inbox_changed());
        d.inbox_pass(d.now_ms().unwrap()).unwrap();
        assert!(!d.inbox_changed(), "one stat tells nothing came since");
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0, "all deleted");
        let events = rt.block_on(m.events(100)).unwrap();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.node_id.as_str()))
            .collect();
        assert_eq!(kinds, vec![(EventKind::Joined, "web-abc123")]);
        // A flood: at most 8 of one node's notes a pass, the rest deleted.
        for i in 0..20 {
            plant(
                &inbox.join(format!("web.{}-b.event.json", 100 + i)),
                &note(EventKind::Left, "web-abc123"),
                NODE_UID,
            );
        }
        d.inbox_pass(d.now_ms().unwrap()).unwrap();
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0, "all deleted");
        let events = rt.block_on(m.events(100)).unwrap();
        // The good note, and the flood's share of the turn's budget: the first pass's six
        // notes of `web` (five planted files and the socket) counted against it.
        assert_eq!(events.len(), 1 + (PER_NAME - 6), "{events:?}");
        // Passes between turns share one budget: a second flood forwards nothing.
        let before = events.len();
        for i in 0..20 {
            plant(
                &inbox.join(format!("web.{}-c.event.json", 200 + i)),
                &note(EventKind::Left, "web-abc123"),
                NODE_UID,
            );
        }
        d.inbox_pass(d.now_ms().unwrap()).unwrap();
        assert_eq!(rt.block_on(m.events(100)).unwrap().len(), before);
        // A turn renews it.
        d.turn(d.now_ms().unwrap()).unwrap();
        for i in 0..20 {
            plant(
                &inbox.join(format!("web.{}-d.event.json", 300 + i)),
                &note(EventKind::Left, "web-abc123"),
                NODE_UID,
            );
        }
        d.inbox_pass(d.now_ms().unwrap()).unwrap();
        assert_eq!(rt.block_on(m.events(100)).unwrap().len(), before + PER_NAME);
    }

    #[test]
    fn a_claim_binds_the_name_to_its_owner_only_with_the_tokens_proof() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        let (proof, digest) = (
            "p".repeat(64),
            crate::crypto::sha256_hex("p".repeat(64).as_bytes()),
        );
        let token = "a".repeat(32);
        let rec = EnrollmentRecord {
            token_id: token.clone(),
            node_name: "web".into(),
            created_ms: 0,
            expires_ms: u64::MAX / 2,
            built_by: "t".into(),
            package_id: "p".into(),
            users: vec![],
            nonce: String::new(),
            ciphertext: String::new(),
            claim: digest,
        };
        let rec_path = d.sub("enroll").join(format!("{token}.json"));
        std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
        let claim_path = d.sub("inbox").join(format!("claim-{token}"));
        let claim = |proof: &str, name: &str| {
            serde_json::to_vec(&Claim {
                proof: proof.into(),
                name: name.into(),
            })
            .unwrap()
        };
        let now = d.now_ms().unwrap();
        // A wrong proof, then another name: nothing bound, the record still pending.
        plant(&claim_path, &claim("wrong", "web"), OTHER_UID);
        d.inbox_pass(now).unwrap();
        plant(&claim_path, &claim(&proof, "db"), OTHER_UID);
        d.inbox_pass(now).unwrap();
        assert_eq!(d.binding("web").unwrap(), None);
        assert_eq!(d.binding("db").unwrap(), None);
        assert!(rec_path.exists() && !claim_path.exists());
        // The package holder's claim.
        plant(&claim_path, &claim(&proof, "web"), NODE_UID);
        d.inbox_pass(now).unwrap();
        assert_eq!(d.binding("web").unwrap(), Some(NODE_UID));
        assert!(!rec_path.exists(), "the record is taken");
        let grant: Grant =
            serde_json::from_slice(&std::fs::read(d.sub("granted").join(&token)).unwrap()).unwrap();
        assert_eq!((grant.uid, grant.name.as_str()), (NODE_UID, "web"));
        // Used now: a second claim (the package installed again) binds nothing new.
        plant(&claim_path, &claim(&proof, "web"), OTHER_UID);
        d.inbox_pass(now).unwrap();
        assert_eq!(d.binding("web").unwrap(), Some(NODE_UID));
    }

    #[test]
    fn removing_a_scoped_node_deletes_its_record_and_its_binding() {
        let tmp = tempfile::tempdir().unwrap();
        let d = owner_dir(tmp.path());
        bind(&d, "web", NODE_UID);
        plant_record(&d, "web", "web", NODE_UID);
        assert!(d.leave("web-abc123", EventKind::Removed, "admin").unwrap());
        assert!(!d.node_path("web").exists());
        assert_eq!(d.binding("web").unwrap(), None);
        let now = d.now_ms().unwrap();
        assert!(d.is_removed("web-abc123", now).unwrap());
    }
}
