//! Removing a node from the cluster on an admin's request (`DELETE
//! /api/fleet/cluster/nodes/<id>`). The backend records the `removed` event in the same change
//! that removes the node; this adds the id check and the log line.

use crate::cluster::{ClusterError, Membership};

/// Why a removal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Not the shape of a node id (`[A-Za-z0-9-]`, 1 to 80).
    #[error("invalid node id")]
    InvalidId,
    #[error("no member {0} in the cluster")]
    NotFound(String),
    #[error(transparent)]
    Backend(#[from] ClusterError),
}

/// True for the shape of a node id (`<name>-<6 chars>`, or anything a backend may list).
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 80 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Removes node `id` on behalf of `by` (`api-key`, `web:<user>`).
pub async fn remove(backend: &dyn Membership, id: &str, by: &str) -> Result<(), RemoveError> {
    if !is_node_id(id) {
        return Err(RemoveError::InvalidId);
    }
    if !backend.remove(id, by).await? {
        return Err(RemoveError::NotFound(id.to_string()));
    }
    log::info!("🗑 Node removed from the cluster by {by}: {id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{self, EventKind, NodeRecord};

    #[tokio::test]
    async fn removes_a_member_once_and_refuses_what_is_not_a_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster::test_config(dir.path());
        let backend = cluster::open(&c).unwrap();
        let node = NodeRecord {
            id: "node2-abc123".into(),
            name: "node2".into(),
            hostname: "node2.test".into(),
            addresses: vec!["198.51.100.7".into()],
            version: "0.1.0".into(),
            os: "linux".into(),
            started_at: 1,
            url: "http://198.51.100.7:8768".into(),
        };
        backend.register(&node).await.unwrap();

        for bad in ["", "node2/../x", "node 2", &"n".repeat(81)] {
            let e = remove(&*backend, bad, "api-key").await.unwrap_err();
            assert!(matches!(e, RemoveError::InvalidId), "{bad:?}: {e}");
            assert_eq!(e.to_string(), "invalid node id");
        }
        assert_eq!(backend.members().await.unwrap().len(), 1, "nothing removed");

        remove(&*backend, "node2-abc123", "web:admin")
            .await
            .unwrap();
        assert!(backend.members().await.unwrap().is_empty());
        let events = backend.events(10).await.unwrap();
        let ev = events
            .iter()
            .find(|e| e.kind == EventKind::Removed)
            .expect("a removed event");
        assert_eq!(ev.node_id, "node2-abc123");
        assert_eq!(ev.detail.get("by").map(String::as_str), Some("web:admin"));

        let e = remove(&*backend, "node2-abc123", "web:admin")
            .await
            .unwrap_err();
        assert!(matches!(e, RemoveError::NotFound(_)), "{e}");
        assert_eq!(e.to_string(), "no member node2-abc123 in the cluster");
    }
}
