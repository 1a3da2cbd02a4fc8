//! Per-node Redis users that survive a Redis restart or a failover. Redis keeps users in memory
//! (an `aclfile` only when one is configured and `ACL SAVE` runs), and ACLs do not replicate, so
//! the digest of each node user's password (never the password) is kept twice: in the hash
//! `<prefix>cluster:node-users` (which replicates, and which any node that may manage users
//! reads) and in a local copy in the state directory of every such node. Housekeeping re-creates
//! the users the server lacks (`ACL SETUSER <u> on #<sha256> …`) and restores the hash from the
//! local copy when the server lost its data too.
//!
//! A removed node's user must never come back: the removal moves its digest out of the hash
//! into `<prefix>cluster:node-users-revoked` (in one script, before the member is removed), and
//! raises a flag that every node that may manage users checks before each heartbeat. Such a node
//! then deletes the user (master and replicas), drops it from its local copy, and never
//! re-creates a revoked user, so a removal made on a node that may not delete users reaches one
//! that may within a heartbeat interval, and the local copy forgets the user at the same time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use redis::Script;

use super::{RedisMembership, script};
use crate::cluster::{BackendUsers, ClusterError, UserGrant};
use crate::config::Secret;

/// The local copy, in the state directory of the nodes that may manage users.
pub const LOCAL_FILE: &str = "redis-node-users.json";

/// `user → sha256 hex of its password`.
type Registry = BTreeMap<String, String>;

/// Key suffixes: revoked users (`user → ms of the removal`, the server's clock) and the flag
/// that says some are not yet dealt with.
const REVOKED: &str = "node-users-revoked";
const REVOKED_PENDING: &str = "node-users-revoked:pending";

/// ARGV: prefix, user, node id, by, tombstone ms (0: leave the tombstone alone) → now (ms)
/// and the digest the hash held for the user ('' if none).
/// The digest leaves the hash in the same step as the revocation is recorded, so no reader
/// ever finds the user in one without the other; a re-recorded removal (`reassert_removals`)
/// brings back a lost tombstone in the same step.
const REVOKE: &str = r#"
local prefix, user, id, by, tomb = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local digest = redis.call('HGET', prefix .. 'cluster:node-users', user) or ''
redis.call('HDEL', prefix .. 'cluster:node-users', user)
redis.call('HSET', prefix .. 'cluster:node-users-revoked', user, string.format('%d', now))
redis.call('SET', prefix .. 'cluster:node-users-revoked:pending', '1')
if tomb > 0 then redis.call('SET', prefix .. 'cluster:removed:' .. id, by, 'PX', tomb, 'NX') end
return {string.format('%d', now), digest}
"#;

/// Removals this node made, kept in its state directory for the tombstone's lifetime:
/// `user → Removal`. Housekeeping records again any the backend lost with its data.
pub const REMOVALS_FILE: &str = "redis-removals.json";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Removal {
    node_id: String,
    by: String,
    /// When it was made, the server's clock (ms).
    at_ms: u64,
    /// The revoked user's digest ('' if the hash had none): a user made anew under the same
    /// name has another, and is not revoked again.
    digest: String,
}
static REVOKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(REVOKE));

fn digest(password: &Secret) -> String {
    crate::crypto::sha256_hex(password.expose().as_bytes())
}

impl RedisMembership {
    /// What a node user may do, after its password (`roles.rs`: read the membership keys, write
    /// its own); empty for a name that is not one of our node users.
    pub(super) fn node_user_rules(&self, user: &str) -> Vec<String> {
        match self.role_of(Some(user)) {
            super::Role::Node(name) => self.node_rules(&name),
            _ => Vec::new(),
        }
    }

    /// Data another machine may have written: only our node users, with a well-formed digest.
    fn plausible(&self, user: &str, digest: &str) -> bool {
        self.plausible_user(user)
            && digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit())
    }

    fn plausible_user(&self, user: &str) -> bool {
        let ours = self.user_name("node", "");
        user.strip_prefix(&ours).is_some_and(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    }

    fn read_local(&self, path: &Path) -> Registry {
        let Some(text) = read_state_file(path) else {
            return Registry::new();
        };
        match serde_json::from_str::<Registry>(&text) {
            Ok(r) => r
                .into_iter()
                .filter(|(u, d)| self.plausible(u, d))
                .collect(),
            Err(e) => {
                log::warn!("ignoring {}: not a node-user list ({e})", path.display());
                Registry::new()
            }
        }
    }

    fn write_local(&self, registry: &Registry) {
        let Some(path) = &self.users_file else {
            return;
        };
        if self.read_local(path) == *registry {
            return;
        }
        let json = serde_json::to_vec_pretty(registry).unwrap_or_default();
        if let Err(e) = crate::identity::write_atomically(path, &json, 0o600) {
            log::warn!("cannot keep the node-user list in {}: {e}", path.display());
        }
    }

    /// Records a new node user's digest (hash and local copy) and saves the ACL file.
    pub(super) async fn remember_user(
        &self,
        user: &str,
        password: &Secret,
    ) -> Result<(), ClusterError> {
        let d = digest(password);
        // A user made anew under a removed node's name has a new password: no longer revoked.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(self.key(REVOKED))
            .arg(user)
            .ignore()
            .cmd("HSET")
            .arg(self.key("node-users"))
            .arg(user)
            .arg(&d)
            .ignore();
        // The roster of names listed from their own records (`roles.rs`).
        if let super::Role::Node(name) = self.role_of(Some(user)) {
            pipe.zadd(self.key("roster"), name, 0).ignore();
        }
        self.query::<()>(&pipe).await?;
        let on_replicas = super::setuser(user, format!("#{d}"), self.node_user_rules(user));
        if let Some(path) = &self.users_file {
            let mut local = self.read_local(path);
            local.insert(user.to_string(), d);
            self.write_local(&local);
        }
        self.save_acl().await;
        self.acl_on_replicas(&on_replicas).await;
        Ok(())
    }

    /// Records that `user` (a removed node's) must never exist again, until a new user is made
    /// under that name: its digest leaves the hash and this node's local copy. Runs before the
    /// member is removed; the user itself is deleted by the caller if this node may, else by
    /// the next node that may manage users, before its next heartbeat.
    pub(super) async fn revoke_user(
        &self,
        user: &str,
        node_id: &str,
        by: &str,
    ) -> Result<(), ClusterError> {
        let args = [
            self.prefix.clone(),
            user.to_string(),
            node_id.to_string(),
            by.to_string(),
            "0".into(),
        ];
        let (at, digest): (String, String) = self.run(&REVOKE_SCRIPT, &args).await?;
        if let Some(path) = &self.users_file {
            let mut local = self.read_local(path);
            if local.remove(user).is_some() {
                self.write_local(&local);
            }
        }
        // Kept until the tombstone ends, to record it again should the backend lose it before
        // a node that may manage users has dealt with it.
        let mut removals = self.read_removals();
        removals.insert(
            user.to_string(),
            Removal {
                node_id: node_id.to_string(),
                by: by.to_string(),
                at_ms: at.parse().unwrap_or(0),
                digest,
            },
        );
        self.write_removals(&removals);
        Ok(())
    }

    fn removals_file(&self) -> Option<std::path::PathBuf> {
        Some(self.users_file.as_ref()?.with_file_name(REMOVALS_FILE))
    }

    /// This node's removals; entries that are not ours or malformed are left out.
    fn read_removals(&self) -> BTreeMap<String, Removal> {
        let Some(path) = self.removals_file() else {
            return BTreeMap::new();
        };
        let Some(text) = read_state_file(&path) else {
            return BTreeMap::new();
        };
        match serde_json::from_str::<BTreeMap<String, Removal>>(&text) {
            Ok(r) => r
                .into_iter()
                .filter(|(u, r)| {
                    self.plausible_user(u)
                        && !r.node_id.is_empty()
                        && r.node_id.len() <= 80
                        && r.node_id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && r.by.len() <= 200
                        && (r.digest.is_empty() || self.plausible(u, &r.digest))
                })
                .collect(),
            Err(e) => {
                log::warn!("ignoring {}: not a removal list ({e})", path.display());
                BTreeMap::new()
            }
        }
    }

    fn write_removals(&self, removals: &BTreeMap<String, Removal>) {
        let Some(path) = self.removals_file() else {
            return;
        };
        if removals.is_empty() && !path.exists() {
            return;
        }
        let json = serde_json::to_vec_pretty(removals).unwrap_or_default();
        if let Err(e) = crate::identity::write_atomically(&path, &json, 0o600) {
            log::warn!("cannot keep the removal list in {}: {e}", path.display());
        }
    }

    /// Housekeeping, on every node: the removals this node made that the backend no longer
    /// knows (it lost its data, perhaps before a node that may manage users saw them) are
    /// recorded again, revocation and tombstone, for the rest of the tombstone's lifetime.
    pub(super) async fn reassert_removals(&self) -> Result<(), ClusterError> {
        let mut removals = self.read_removals();
        if removals.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TIME").cmd("HMGET").arg(self.key(REVOKED));
        for user in removals.keys() {
            pipe.arg(user);
        }
        pipe.cmd("HMGET").arg(self.key("node-users"));
        for user in removals.keys() {
            pipe.arg(user);
        }
        #[allow(clippy::type_complexity)]
        let ((secs, micros), known, digests): (
            (u64, u64),
            Vec<Option<String>>,
            Vec<Option<String>>,
        ) = self.query(&pipe).await?;
        let now = secs * 1000 + micros / 1000;
        let tomb = crate::cluster::REMOVAL_TOMBSTONE.as_millis() as u64;
        let before = removals.len();
        let mut again = Vec::new();
        let mut superseded = Vec::new();
        for (((user, r), known), digest) in removals.iter().zip(known).zip(digests) {
            let left = (r.at_ms + tomb).saturating_sub(now);
            if left == 0 || known.is_some() {
                continue;
            }
            match digest {
                // A user made anew under that name since: not the one removed.
                Some(d) if d != r.digest => superseded.push(user.clone()),
                _ => again.push((user.clone(), r.clone(), left)),
            }
        }
        removals.retain(|u, r| r.at_ms + tomb > now && !superseded.contains(u));
        for (user, r, left) in again {
            let args = [
                self.prefix.clone(),
                user.clone(),
                r.node_id.clone(),
                r.by.clone(),
                left.to_string(),
            ];
            let _: (String, String) = self.run(&REVOKE_SCRIPT, &args).await?;
            log::warn!(
                "recorded again the removal of node {} and the revocation of its Redis user {user}: the backend had lost them",
                r.node_id
            );
        }
        if removals.len() != before {
            self.write_removals(&removals);
        }
        Ok(())
    }

    /// Before each heartbeat of a node that may manage users: deals with revocations made
    /// since (by any node) at once, rather than at the next housekeeping.
    pub(super) async fn check_revocations(&self) {
        if self.users_file.is_none() || !self.manages_users.load(Ordering::Relaxed) {
            return;
        }
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.key(REVOKED_PENDING));
        match self.query::<(i64,)>(redis::pipe().add_command(cmd)).await {
            Ok((1,)) => {
                if let Err(e) = self.restore_users().await {
                    log::debug!("dealing with revoked node users: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => log::debug!("checking for revoked node users: {e}"),
        }
    }

    /// Deletes the revoked users the server (or a replica) still has, takes them out of the
    /// registry, and forgets revocations older than the removal tombstone. Returns the revoked
    /// users, which are never to be re-created.
    async fn apply_revocations(
        &self,
        existing: &[String],
        registry: &mut Registry,
    ) -> Result<Vec<String>, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME").cmd("HGETALL").arg(self.key(REVOKED));
        let ((secs, micros), revoked): ((u64, u64), BTreeMap<String, u64>) =
            self.query(&pipe).await?;
        let now = secs * 1000 + micros / 1000;
        let revoked: BTreeMap<String, u64> = revoked
            .into_iter()
            .filter(|(u, _)| self.plausible_user(u))
            .collect();
        let mut deleted = Vec::new();
        for user in revoked.keys() {
            registry.remove(user);
            if existing.iter().any(|e| e == user) {
                self.acl(&["DELUSER".into(), user.clone()]).await?;
                // Replicas too: ACLs do not replicate.
                self.acl_on_replicas(&["DELUSER".into(), user.clone()])
                    .await;
                deleted.push(user.as_str());
            }
        }
        let mut done = redis::pipe();
        done.cmd("DEL").arg(self.key(REVOKED_PENDING)).ignore();
        if !revoked.is_empty() {
            done.cmd("HDEL").arg(self.key("node-users"));
            for user in revoked.keys() {
                done.arg(user);
            }
            done.ignore();
        }
        let old: Vec<&String> = revoked
            .iter()
            .filter(|(_, at)| {
                now.saturating_sub(**at) > crate::cluster::REMOVAL_TOMBSTONE.as_millis() as u64
            })
            .map(|(u, _)| u)
            .collect();
        if !old.is_empty() {
            done.cmd("HDEL").arg(self.key(REVOKED));
            for user in old {
                done.arg(user);
            }
            done.ignore();
        }
        self.query::<()>(&done).await?;
        if !deleted.is_empty() {
            log::info!(
                "deleted the Redis user(s) of removed node(s): {}",
                deleted.join(", ")
            );
            self.save_acl().await;
        }
        Ok(revoked.into_keys().collect())
    }

    /// Forgets a deleted node user (hash and local copy) and saves the ACL file.
    pub(super) async fn forget_user(&self, user: &str) {
        self.acl_on_replicas(&["DELUSER".into(), user.to_string()])
            .await;
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.key("node-users")).arg(user);
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).ignore();
        if let super::Role::Node(name) = self.role_of(Some(user)) {
            pipe.zrem(self.key("roster"), name).ignore();
        }
        if let Err(e) = self.query::<()>(&pipe).await {
            log::warn!("could not forget the Redis user {user}: {e}");
        }
        if let Some(path) = &self.users_file {
            let mut local = self.read_local(path);
            if local.remove(user).is_some() {
                self.write_local(&local);
            }
        }
        self.save_acl().await;
    }

    /// `ACL SAVE` when the server keeps its users in an `aclfile`; nothing otherwise.
    pub(super) async fn save_acl(&self) {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("aclfile");
        let file = match self
            .query::<(Vec<String>,)>(redis::pipe().add_command(get))
            .await
        {
            Ok((pair,)) => pair.get(1).cloned().unwrap_or_default(),
            // May not read the configuration (a managed Redis, a limited user): nothing to do.
            Err(e) => {
                log::debug!("CONFIG GET aclfile: {e}");
                return;
            }
        };
        if file.is_empty() {
            return;
        }
        let mut save = redis::cmd("ACL");
        save.arg("SAVE");
        if let Err(e) = self
            .query::<()>(redis::pipe().add_command(save).ignore())
            .await
        {
            log::warn!("ACL SAVE to the server's aclfile {file} failed: {e}");
        }
    }

    /// Re-creates the node users the server lacks (after a restart without an ACL file, or a
    /// failover to a replica), from the hash, or from the local copy when the hash is gone too;
    /// keeps the local copy in step with the hash. A node that may not manage users does nothing.
    pub(super) async fn restore_users(&self) -> Result<usize, ClusterError> {
        let mut users = redis::cmd("ACL");
        users.arg("USERS");
        let existing: Vec<String> = match self
            .query::<(Vec<String>,)>(redis::pipe().add_command(users))
            .await
        {
            Ok((u,)) => u,
            Err(ClusterError::Auth { .. }) | Err(ClusterError::Backend { .. }) => {
                self.manages_users.store(false, Ordering::Relaxed);
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        self.manages_users.store(true, Ordering::Relaxed);
        let mut all = redis::cmd("HGETALL");
        all.arg(self.key("node-users"));
        let (shared,): (Registry,) = self.query(redis::pipe().add_command(all)).await?;
        let shared: Registry = shared
            .into_iter()
            .filter(|(u, d)| self.plausible(u, d))
            .collect();
        // An empty hash: the server lost its data too, so what this node kept.
        let from_local = shared.is_empty();
        let mut registry = if from_local {
            match &self.users_file {
                Some(p) => self.read_local(p),
                None => Registry::new(),
            }
        } else {
            shared
        };
        let revoked = self.apply_revocations(&existing, &mut registry).await?;
        if from_local && !registry.is_empty() {
            let mut put = redis::cmd("HSET");
            put.arg(self.key("node-users"));
            for (u, d) in &registry {
                put.arg(u).arg(d);
            }
            self.query::<()>(redis::pipe().add_command(put).ignore())
                .await?;
        }
        self.write_local(&registry);
        // The roster follows the registry (both written by the primary alone).
        let mut roster = redis::pipe();
        for user in registry.keys() {
            if let super::Role::Node(name) = self.role_of(Some(user)) {
                roster.zadd(self.key("roster"), name, 0).ignore();
            }
        }
        if !registry.is_empty() {
            self.query::<()>(&roster).await?;
        }
        // Once per process, the users that exist get the current rules again: nodes of an
        // earlier release had the broad `~fleet:* +@all -@dangerous -@admin`.
        let rewrite = !self
            .rules_applied
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        let mut restored = Vec::new();
        for (user, d) in &registry {
            if revoked.contains(user) {
                continue;
            }
            if existing.iter().any(|e| e == user) {
                if rewrite {
                    let args = super::setuser(user, format!("#{d}"), self.node_user_rules(user));
                    if let Err(e) = self.acl(&args).await {
                        log::warn!("could not renew the rules of the Redis user {user}: {e}");
                    }
                }
                continue;
            }
            let args = super::setuser(user, format!("#{d}"), self.node_user_rules(user));
            self.acl(&args).await?;
            restored.push(user.as_str());
        }
        if !restored.is_empty() {
            log::warn!(
                "re-created {} node user(s) the Redis server had lost: {}",
                restored.len(),
                restored.join(", ")
            );
            self.save_acl().await;
        }
        Ok(restored.len())
    }
}

/// ACL users as the build asks for them; the reasons are the texts the build shows the admin
/// when the node carries the shared credentials instead.
#[async_trait::async_trait]
impl BackendUsers for RedisMembership {
    async fn create_node_user(&self, node_name: Option<&str>) -> Result<UserGrant, ClusterError> {
        // Never "the shared credentials" from a node's own user: they would be this node's.
        self.admin_only("build node packages")?;
        let Some(name) = node_name else {
            return Ok(UserGrant::Shared(
                "no node name: a per-node Redis user needs one, so the node carries the shared Redis credentials".into(),
            ));
        };
        match RedisMembership::create_node_user(self, name).await {
            Ok((user, password)) => Ok(UserGrant::Own { user, password }),
            Err(ClusterError::Auth { reason, .. }) => Ok(UserGrant::Shared(format!(
                "this Redis refuses user management ({reason}), so the node carries the shared Redis credentials"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn create_enrollment_user(
        &self,
        token_id: &str,
        expires_ms: u64,
    ) -> Result<UserGrant, ClusterError> {
        self.admin_only("build node packages")?;
        match RedisMembership::create_enrollment_user(self, token_id, expires_ms).await {
            Ok((user, password)) => Ok(UserGrant::Own { user, password }),
            Err(ClusterError::Auth { .. }) => Ok(UserGrant::Shared(
                "this Redis refuses user management (a managed Redis?): the package carries the shared Redis credentials".into(),
            )),
            Err(e) => Err(e),
        }
    }

    async fn delete_node_user(&self, _node_name: &str, user: &str) -> Result<(), ClusterError> {
        RedisMembership::delete_user(self, user).await
    }

    async fn delete_user(&self, user: &str) -> Result<(), ClusterError> {
        RedisMembership::delete_user(self, user).await
    }

    async fn list_users(&self) -> Result<Vec<String>, ClusterError> {
        let (node, enroll) = (self.user_name("node", ""), self.user_name("enroll", ""));
        let (all,): (Vec<String>,) = self.query(redis::pipe().cmd("ACL").arg("USERS")).await?;
        Ok(all
            .into_iter()
            .filter(|u| u.starts_with(&node) || u.starts_with(&enroll))
            .collect())
    }
}

/// A list of this node's own in its state directory (`config::files` rule, 4 MiB at most):
/// `None` when absent; refused (planted, a link out, too big) with a warning naming the file.
fn read_state_file(path: &std::path::Path) -> Option<String> {
    match crate::config::files::read_trusted_text(path, 4 << 20) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}
