//! Backend users a backend may offer (`Membership::users`): a node's own user, limited to the
//! cluster's prefix and deleted with the node, and a package's enrollment user, which may only
//! take its own record. Redis and etcd offer them; the shared directory has no users.

use crate::cluster::ClusterError;
use crate::config::{BackendKind, ClusterConfig, Config, Secret};

/// What a build gets when it asks for a user.
#[derive(Debug, Clone)]
pub enum UserGrant {
    /// A user of its own.
    Own { user: String, password: Secret },
    /// None made: the package carries the primary's shared credentials, for this reason
    /// (a text the build shows the admin).
    Shared(String),
}

/// Node and enrollment users: create, delete, list.
#[async_trait::async_trait]
pub trait BackendUsers: Send + Sync {
    /// A user of the node's own. `node_name` `None`: the machine's hostname decides the name at
    /// install, so no per-node user can be made (`Shared`). A backend that refuses user
    /// management also gives `Shared`, with its reason.
    async fn create_node_user(&self, node_name: Option<&str>) -> Result<UserGrant, ClusterError>;

    /// The user a package uses to take its enrollment record (expiring with the package, at
    /// `expires_ms` on this node's clock). `Shared`: user management refused.
    async fn create_enrollment_user(
        &self,
        token_id: &str,
        expires_ms: u64,
    ) -> Result<UserGrant, ClusterError>;

    /// Deletes the user `create_node_user` made for `node_name` (a build that failed after).
    async fn delete_node_user(&self, node_name: &str, user: &str) -> Result<(), ClusterError>;

    /// Deletes one user; deleting one that is not there is fine.
    async fn delete_user(&self, user: &str) -> Result<(), ClusterError>;

    /// The users of this cluster (node and enrollment users, by their names' prefix).
    async fn list_users(&self) -> Result<Vec<String>, ClusterError>;
}

/// The one rule for a backend user's name: `<prefix slug>-<kind>-<id>`, the key prefix with
/// every character other than an ASCII letter or digit made `-` and trimmed of `-` at both ends
/// (`fleet:` gives `fleet-node-server-03`, `fleet-enroll-<token id>`); a prefix with no letter
/// or digit gives `fleet`, so that a name never starts with `-` (which command-line tools such
/// as `etcdctl` would take for an option). The etcd backend passes its prefix in lower case, as
/// its names always were.
pub fn user_name(prefix: &str, kind: &str, id: &str) -> String {
    let slug: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "fleet" } else { slug };
    format!("{slug}-{kind}-{id}")
}

/// Makes `user` the credentials `cluster` connects with, in the fields of its backend (the
/// shared directory has none).
pub fn set_credentials(cluster: &mut ClusterConfig, user: &str, password: &Secret) {
    match cluster.backend {
        BackendKind::Redis => {
            cluster.redis_username = Some(user.to_string());
            cluster.redis_password = Some(password.clone());
        }
        BackendKind::Etcd => {
            cluster.etcd_username = Some(user.to_string());
            cluster.etcd_password = Some(password.clone());
        }
        BackendKind::Storage => {}
    }
}

/// Puts a node's own backend user into its configuration: the cluster's credentials, and those
/// of a session store on the cluster's Redis, which then uses the node's user too.
pub fn use_node_user(node: &mut Config, user: &str, password: &Secret) {
    if node.cluster.backend == BackendKind::Redis
        && (node.sessions.redis.host.is_none()
            || node.sessions.redis.host == node.cluster.redis_host)
    {
        node.sessions.redis = Default::default();
    }
    set_credentials(&mut node.cluster, user, password);
}

#[cfg(test)]
mod tests {
    use super::user_name;

    #[test]
    fn user_names_follow_the_key_prefix() {
        assert_eq!(
            user_name("fleet:", "node", "server-03"),
            "fleet-node-server-03"
        );
        assert_eq!(user_name("fleet:", "enroll", "ab12"), "fleet-enroll-ab12");
        assert_eq!(user_name("prod/eu:", "node", "a"), "prod-eu-node-a");
        assert_eq!(user_name("::", "node", "a"), "fleet-node-a");
        assert_eq!(user_name("fleet:", "node", ""), "fleet-node-");
    }
}
