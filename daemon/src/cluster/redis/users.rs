//! Per-node Redis users that survive a Redis restart or a failover. Redis keeps users in memory
//! (an `aclfile` only when one is configured and `ACL SAVE` runs), and ACLs do not replicate, so
//! the digest of each node user's password (never the password) is kept twice: in the hash
//! `<prefix>cluster:node-users` (which replicates, and which any node that may manage users
//! reads) and in a local copy in the state directory of every such node. Housekeeping re-creates
//! the users the server lacks (`ACL SETUSER <u> on #<sha256> …`) and restores the hash from the
//! local copy when the server lost its data too.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::RedisMembership;
use crate::cluster::ClusterError;
use crate::config::Secret;

/// The local copy, in the state directory of the nodes that may manage users.
pub const LOCAL_FILE: &str = "redis-node-users.json";

/// `user → sha256 hex of its password`.
type Registry = BTreeMap<String, String>;

fn digest(password: &Secret) -> String {
    hex::encode(Sha256::digest(password.expose().as_bytes()))
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
        let ours = self.user_name("node", "");
        user.strip_prefix(&ours).is_some_and(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) && digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit())
    }

    fn read_local(&self, path: &Path) -> Registry {
        let Ok(text) = std::fs::read_to_string(path) else {
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
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.key("node-users")).arg(user).arg(&d);
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).ignore();
        // The roster of names listed from their own records (`roles.rs`).
        if let super::Role::Node(name) = self.role_of(Some(user)) {
            pipe.zadd(self.key("roster"), name, 0).ignore();
        }
        self.query::<()>(&pipe).await?;
        let mut on_replicas: Vec<String> = vec![
            "SETUSER".into(),
            user.to_string(),
            "reset".into(),
            "on".into(),
            format!("#{d}"),
        ];
        on_replicas.extend(self.node_user_rules(user));
        if let Some(path) = &self.users_file {
            let mut local = self.read_local(path);
            local.insert(user.to_string(), d);
            self.write_local(&local);
        }
        self.save_acl().await;
        self.acl_on_replicas(&on_replicas).await;
        Ok(())
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
            Err(ClusterError::Auth { .. }) | Err(ClusterError::Backend { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut all = redis::cmd("HGETALL");
        all.arg(self.key("node-users"));
        let (shared,): (Registry,) = self.query(redis::pipe().add_command(all)).await?;
        let shared: Registry = shared
            .into_iter()
            .filter(|(u, d)| self.plausible(u, d))
            .collect();
        let registry = if shared.is_empty() {
            // The server lost its data too: what this node kept.
            let local = match &self.users_file {
                Some(p) => self.read_local(p),
                None => Registry::new(),
            };
            if !local.is_empty() {
                let mut put = redis::cmd("HSET");
                put.arg(self.key("node-users"));
                for (u, d) in &local {
                    put.arg(u).arg(d);
                }
                self.query::<()>(redis::pipe().add_command(put).ignore())
                    .await?;
            }
            local
        } else {
            self.write_local(&shared);
            shared
        };
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
            if existing.iter().any(|e| e == user) {
                if rewrite {
                    let mut args: Vec<String> = vec![
                        "SETUSER".into(),
                        user.clone(),
                        "reset".into(),
                        "on".into(),
                        format!("#{d}"),
                    ];
                    args.extend(self.node_user_rules(user));
                    if let Err(e) = self.acl(&args).await {
                        log::warn!("could not renew the rules of the Redis user {user}: {e}");
                    }
                }
                continue;
            }
            let mut args: Vec<String> = vec![
                "SETUSER".into(),
                user.clone(),
                "reset".into(),
                "on".into(),
                format!("#{d}"),
            ];
            args.extend(self.node_user_rules(user));
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
