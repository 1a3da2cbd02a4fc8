//! etcd users as the build asks for them (`BackendUsers`): a node's own user where the
//! primary's etcd user has the root role; the reasons are the texts the build shows the admin
//! when the node carries the shared credentials instead.

use super::*;
use crate::cluster::{BackendUsers, UserGrant};

impl EtcdMembership {
    /// The user name `create_node_user` gives a node: `<prefix>-node-<name>`, with the key
    /// prefix reduced as `users::user_name` says (`fleet:` gives `fleet-node-server-03`).
    pub fn node_user_name(&self, node_name: &str) -> String {
        // etcd's names have always been lower case (`Fleet:` gives `fleet-node-…`): kept, so
        // the users of an existing cluster keep their names.
        crate::cluster::users::user_name(&self.key_prefix.to_ascii_lowercase(), "node", node_name)
    }

    /// Creates an etcd user for a new node, with a role (of the same name) that may read the
    /// cluster's keys and write its own and the sessions (`etcd/roles.rs`), and records it in
    /// `users/<node_name>`.
    /// Needs an etcd with auth enabled and a configured `etcd_username` that has the `root`
    /// role. Creating it again gives it a new password. Returns the user name and its password.
    pub async fn create_node_user(
        &self,
        node_name: &str,
    ) -> Result<(String, Secret), ClusterError> {
        crate::identity::validate_node_name(node_name).map_err(backend_err)?;
        let Some(me) = self.username.clone() else {
            return Err(ClusterError::Auth {
                backend: NAME,
                reason: "creating node users needs cluster.etcd_username: a user with the root role, on an etcd with auth enabled".into(),
            });
        };
        let user = self.node_user_name(node_name);
        let password = Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 32));
        let users_key = self.key(&format!("users/{node_name}"));
        let (u, pw) = (user.clone(), password.clone());
        // An admin's operation of several raft writes (role, six grants, four revocations, user): a deadline of
        // its own, longer than a heartbeat's.
        let deadline = std::time::Duration::from_secs(15);
        self.run_within("creating a node user", deadline, |mut client| async move {
            let roles = client
                .user_get(me.clone())
                .await
                .map_err(|e| map_err(&e))?
                .roles()
                .to_vec();
            if !roles.iter().any(|r| r == "root") {
                return Err(ClusterError::Auth {
                    backend: NAME,
                    reason: format!(
                        "etcd user `{me}` lacks the root role, so it cannot create node users"
                    ),
                });
            }
            match client.role_add(u.clone()).await {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("already exists") => {}
                Err(e) => return Err(map_err(&e)),
            }
            // Read the cluster, write its own keys (`etcd/roles.rs`).
            self.narrow_role(&mut client, &u, node_name).await?;
            match client.user_add(u.clone(), pw.expose(), None).await {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("already exists") =>
                {
                    client
                        .user_change_password(u.clone(), pw.expose())
                        .await
                        .map_err(|e| map_err(&e))?;
                }
                Err(e) => return Err(map_err(&e)),
            }
            client
                .user_grant_role(u.clone(), u.clone())
                .await
                .map_err(|e| map_err(&e))?;
            client
                .put(users_key, u.clone(), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await?;
        log::info!("created etcd user {user} for node {node_name}");
        Ok((user, password))
    }

    /// Deletes the user `create_node_user` made for `node_name` and its `users/` record (a
    /// build that failed after making it).
    pub async fn forget_node_user(&self, node_name: &str, user: &str) -> Result<(), ClusterError> {
        self.delete_node_user(user).await?;
        let key = self.key(&format!("users/{node_name}"));
        self.run("forgetting a node user", |mut client| async move {
            client.delete(key, None).await.map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await
    }

    /// After a node left by an admin's removal: deletes the etcd user recorded for its name,
    /// unless a live node holds that name now (it would be that node's credential). A failure
    /// is logged, not returned: the node is out of the cluster either way.
    pub(super) async fn delete_user_of(&self, name: &str) {
        let (k_user, k_name) = (
            self.key(&format!("users/{name}")),
            self.key(&format!("names/{name}")),
        );
        let found = self
            .run("reading a node user", |mut client| async move {
                let resp = client
                    .txn(Txn::new().and_then([
                        TxnOp::get(k_user.clone(), None),
                        TxnOp::get(k_name.clone(), None),
                    ]))
                    .await
                    .map_err(|e| map_err(&e))?;
                let user = kvs_of(&resp, 0)
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                Ok(user.filter(|_| count_of(&resp, 1) == 0))
            })
            .await;
        match found {
            Ok(Some(user)) => {
                if let Err(e) = self.forget_node_user(name, &user).await {
                    log::error!(
                        "node {name} removed, but its etcd user {user} was not deleted: {e} (delete it from the primary, or with `etcdctl user delete {user}`)"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("node {name} removed, but its etcd user was not looked up: {e}"),
        }
    }

    /// Deletes a node's etcd user and its role; deleting one that is not there is fine.
    pub async fn delete_node_user(&self, user: &str) -> Result<(), ClusterError> {
        let u = user.to_string();
        self.run("deleting a node user", |mut client| async move {
            let gone = |r: Result<(), etcd_client::Error>| match r {
                Ok(()) => Ok(()),
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => {
                    Ok(())
                }
                Err(e) => Err(map_err(&e)),
            };
            gone(client.user_delete(u.clone()).await.map(|_| ()))?;
            gone(client.role_delete(u.clone()).await.map(|_| ()))
        })
        .await?;
        log::info!("deleted etcd user {user}");
        Ok(())
    }
}

#[async_trait::async_trait]
impl BackendUsers for EtcdMembership {
    async fn create_node_user(&self, node_name: Option<&str>) -> Result<UserGrant, ClusterError> {
        // Never "the shared credentials" from a node's own user: they would be this node's.
        self.admin_only("build node packages")?;
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
