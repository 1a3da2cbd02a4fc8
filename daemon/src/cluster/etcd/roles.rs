//! What a node's own etcd role may do: read the cluster's keys, write its own (`alive/` and
//! `members/` of ids that carry its name, `names/<name>`) and append events. Tombstones, the
//! users registry, the active count, the pruner's turn, sessions and other nodes' names are the
//! primary's (a node's user never prunes, so it never deletes another node's keys). The
//! primary narrows the roles of an earlier release (whole prefix read-write) at its first
//! housekeeping.

use std::sync::atomic::Ordering;

use etcd_client::{Client, GetOptions, Permission, RoleRevokePermissionOptions};

use super::{EtcdMembership, map_err};
use crate::cluster::ClusterError;

impl EtcdMembership {
    /// Whether this connection is a node's own user (`<prefix>-node-<name>`).
    pub(super) fn is_node_user(&self) -> bool {
        let ours = self.node_user_name("");
        self.username
            .as_deref()
            .and_then(|u| u.strip_prefix(&ours))
            .is_some_and(|n| crate::identity::validate_node_name(n).is_ok())
    }

    /// The permissions of the role of the node named `name`.
    pub(super) fn node_permissions(&self, name: &str) -> Vec<Permission> {
        vec![
            Permission::read(self.root.clone()).with_prefix(),
            Permission::read_write(self.key(&format!("alive/{name}-"))).with_prefix(),
            Permission::read_write(self.key(&format!("members/{name}-"))).with_prefix(),
            Permission::read_write(self.key(&format!("names/{name}"))),
            Permission::read_write(self.key("events/")).with_prefix(),
        ]
    }

    /// Grants `role` the node permissions and revokes the whole-prefix one earlier releases
    /// granted (absent: fine).
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
        match client
            .role_revoke_permission(
                role.to_string(),
                self.key_prefix.clone(),
                Some(RoleRevokePermissionOptions::new().with_prefix()),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not granted") => Ok(()),
            Err(e) => Err(map_err(&e)),
        }
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
