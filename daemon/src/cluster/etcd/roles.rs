//! What a node's own etcd role may do: read the cluster's keys, write its own
//! (`alive/<name>/`, `members/<name>/`, `node-events/<name>/`, the key `names/<name>`) and the
//! session store (`<prefix>session/`: sessions are signed with the admin's key, so a node can
//! store and delete them but not mint one). Tombstones, the users registry, the active count,
//! the pruner's turn, the shared `events/` and other nodes' keys are the primary's (a node's
//! user never prunes, so it never deletes another node's keys). The primary narrows the roles
//! of earlier releases (the whole prefix; then `alive/<name>-`, `members/<name>-` and
//! `events/`, which overlapped the keys of names extending `<name>-`) at its first
//! housekeeping.

use std::sync::atomic::Ordering;

use etcd_client::{Client, GetOptions, Permission, RoleRevokePermissionOptions};

use super::{EtcdMembership, map_err};
use crate::cluster::ClusterError;

impl EtcdMembership {
    /// The node name of this connection's user when it is a node's own (`<prefix>-node-<name>`).
    pub(super) fn own_name(&self) -> Option<&str> {
        let ours = self.node_user_name("");
        self.username
            .as_deref()
            .and_then(|u| u.strip_prefix(ours.as_str()))
            .filter(|n| crate::identity::validate_node_name(n).is_ok())
    }

    /// Whether this connection is a node's own user (`<prefix>-node-<name>`).
    pub(super) fn is_node_user(&self) -> bool {
        self.own_name().is_some()
    }

    /// `Ok` for the primary's (or a shared) credential; for a node's own user, what it may not
    /// do (`what`), said plainly instead of etcd's "permission denied".
    pub(super) fn admin_only(&self, what: &str) -> Result<(), ClusterError> {
        match self.own_name() {
            None => Ok(()),
            Some(name) => Err(ClusterError::NotPermitted {
                backend: "etcd",
                reason: format!(
                    "this node's own etcd user (node {name}) may change only its own records: {what} on the primary or on a node with the cluster's credentials"
                ),
            }),
        }
    }

    /// The permissions of the role of the node named `name`.
    pub(super) fn node_permissions(&self, name: &str) -> Vec<Permission> {
        vec![
            Permission::read(self.root.clone()).with_prefix(),
            Permission::read_write(self.key(&format!("alive/{name}/"))).with_prefix(),
            Permission::read_write(self.key(&format!("members/{name}/"))).with_prefix(),
            Permission::read_write(self.key(&format!("node-events/{name}/"))).with_prefix(),
            Permission::read_write(self.key(&format!("names/{name}"))),
            Permission::read_write(format!("{}session/", self.key_prefix)).with_prefix(),
        ]
    }

    /// The prefix grants of earlier releases, revoked by `narrow_role`: the whole key prefix,
    /// then `alive/<name>-` and `members/<name>-` (which covered the keys of `<name>-…`, other
    /// nodes' names) and the shared `events/`.
    fn earlier_grants(&self, name: &str) -> Vec<String> {
        vec![
            self.key_prefix.clone(),
            self.key(&format!("alive/{name}-")),
            self.key(&format!("members/{name}-")),
            self.key("events/"),
        ]
    }

    /// Grants `role` the node permissions and revokes the prefix grants of earlier releases
    /// (absent: fine).
    pub(super) async fn narrow_role(
        &self,
        client: &mut Client,
        role: &str,
        name: &str,
    ) -> Result<(), ClusterError> {
        for p in self.node_permissions(name) {
            client
                .role_grant_permission(role.to_string(), p)
                .await
                .map_err(|e| map_err(&e))?;
        }
        for prefix in self.earlier_grants(name) {
            match client
                .role_revoke_permission(
                    role.to_string(),
                    prefix,
                    Some(RoleRevokePermissionOptions::new().with_prefix()),
                )
                .await
            {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not granted") => {}
                Err(e) => return Err(map_err(&e)),
            }
        }
        Ok(())
    }

    /// Once per process, on the primary: every role recorded under `users/<name>` gets the
    /// node permissions (migration from the broad role). A node's user does nothing.
    pub(super) async fn narrow_node_roles(&self) -> Result<(), ClusterError> {
        if self.is_node_user() || self.username.is_none() {
            return Ok(());
        }
        if self.roles_narrowed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let prefix = self.key("users/");
        let result = self
            .run("narrowing node roles", |mut client| async move {
                let resp = client
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(|e| map_err(&e))?;
                for kv in resp.kvs() {
                    let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                    let role = String::from_utf8_lossy(kv.value()).into_owned();
                    // Only the roles we name so (`users/` is primary-written, still checked).
                    if crate::identity::validate_node_name(&name).is_err()
                        || role != self.node_user_name(&name)
                    {
                        continue;
                    }
                    self.narrow_role(&mut client, &role, &name).await?;
                }
                Ok(())
            })
            .await;
        if result.is_err() {
            self.roles_narrowed.store(false, Ordering::Relaxed);
        }
        result
    }
}
