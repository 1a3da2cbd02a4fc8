//! etcd users as the build asks for them (`BackendUsers`): a node's own user where the
//! primary's etcd user has the root role; the reasons are the texts the build shows the admin
//! when the node carries the shared credentials instead.

use super::{EtcdMembership, map_err};
use crate::cluster::{BackendUsers, ClusterError, UserGrant};

#[async_trait::async_trait]
impl BackendUsers for EtcdMembership {
    async fn create_node_user(&self, node_name: Option<&str>) -> Result<UserGrant, ClusterError> {
        if self.username.is_none() {
            return Ok(UserGrant::Shared(
                "no cluster.etcd_username (etcd without auth): the node connects as the primary does"
                    .into(),
            ));
        }
        let Some(name) = node_name else {
            return Ok(UserGrant::Shared(
                "no node name: a per-node etcd user needs one (--node-name), so the node carries the shared etcd credentials".into(),
            ));
        };
        match EtcdMembership::create_node_user(self, name).await {
            Ok((user, password)) => Ok(UserGrant::Own { user, password }),
            Err(ClusterError::Auth { reason, .. }) => Ok(UserGrant::Shared(format!(
                "the primary's etcd user may not manage users ({reason}), so the node carries the shared etcd credentials"
            ))),
            Err(e) => Err(e),
        }
    }

    /// etcd keeps no enrollment records, so it makes no enrollment users.
    async fn create_enrollment_user(
        &self,
        _token_id: &str,
        _expires_ms: u64,
    ) -> Result<UserGrant, ClusterError> {
        Err(crate::cluster::Membership::no_enrollment(self))
    }

    async fn delete_node_user(&self, node_name: &str, user: &str) -> Result<(), ClusterError> {
        self.forget_node_user(node_name, user).await
    }

    async fn delete_user(&self, user: &str) -> Result<(), ClusterError> {
        EtcdMembership::delete_node_user(self, user).await
    }

    async fn list_users(&self) -> Result<Vec<String>, ClusterError> {
        let ours = self.node_user_name("");
        self.run("listing users", |mut client| async move {
            let resp = client.user_list().await.map_err(|e| map_err(&e))?;
            Ok(resp
                .users()
                .iter()
                .filter(|u| u.starts_with(&ours))
                .cloned()
                .collect())
        })
        .await
    }
}
