//! Revoking a pending package, for `fleet-server package revoke` and
//! `DELETE /api/fleet/cluster/packages/<id>` alike: the enrollment record goes (the package can
//! no longer join), a `package_revoked` event says who did it, and a download link this node
//! keeps for the package ends.

use std::sync::Arc;

use crate::app::downloads::DownloadStore;
use crate::cluster::EnrollmentRecord;
use crate::cluster::{ClusterError, Event, EventKind, Membership};

/// The one pending package whose token id starts with `id` (8 or more hex characters, as
/// `package list` shows them).
pub async fn resolve_token(backend: &dyn Membership, id: &str) -> anyhow::Result<String> {
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "`{id}` is not a package id: give 8 or more hex characters from `fleet-server package list`"
        );
    }
    let pending = backend.list_enrollments().await?;
    let matches: Vec<&str> = pending
        .iter()
        .map(|r| r.token_id.as_str())
        .filter(|t| t.starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => anyhow::bail!("no pending package {id} (already used, revoked or expired?)"),
        _ => anyhow::bail!("{id} matches several pending packages: give more characters"),
    }
}

/// Revokes the package of `token_id` on behalf of `by` (`api-key`, `web:<user>`, `cli:<user>`).
/// `None`: no such pending package (used, revoked or expired). `downloads`: this node's
/// download links, when the caller runs inside the daemon that keeps them.
pub async fn revoke(
    backend: &dyn Membership,
    token_id: &str,
    by: &str,
    downloads: Option<&Arc<DownloadStore>>,
) -> Result<Option<EnrollmentRecord>, ClusterError> {
    let Some(rec) = backend.revoke_enrollment(token_id).await? else {
        return Ok(None);
    };
    let event = Event {
        kind: EventKind::PackageRevoked,
        node_id: rec.node_name.clone(),
        at_ms: 0,
        detail: [
            ("by".to_string(), by.to_string()),
            ("token_id".to_string(), rec.token_id.clone()),
        ]
        .into(),
    };
    super::events::record(backend, &event, "package revoked").await;
    if let Some(store) = downloads {
        let (store, token) = (store.clone(), rec.token_id.clone());
        // A file operation: off the async workers. It logs its own failures.
        let _ = tokio::task::spawn_blocking(move || store.revoke_token(&token)).await;
    }
    log::info!(
        "🚫 {by} revoked package {}",
        &token_id[..12.min(token_id.len())]
    );
    Ok(Some(rec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{self, Membership};

    fn backend(dir: &std::path::Path) -> Arc<dyn Membership> {
        cluster::open(&cluster::test_config(dir)).unwrap()
    }

    fn pending(token_id: &str) -> EnrollmentRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        EnrollmentRecord {
            token_id: token_id.into(),
            node_name: "node7".into(),
            created_ms: now,
            expires_ms: now + 3_600_000,
            built_by: "web:admin".into(),
            package_id: "p".repeat(64),
            users: Vec::new(),
            nonce: "00".repeat(12),
            ciphertext: "00".repeat(32),
            claim: String::new(),
        }
    }

    #[tokio::test]
    async fn revoking_takes_the_record_records_who_and_ends_the_download_link() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        let token = "ab".repeat(16);
        backend.put_enrollment(&pending(&token)).await.unwrap();
        let store = Arc::new(DownloadStore::new(&dir.path().join("state")));
        let offered = store
            .offer(
                "node7.pkg",
                b"package bytes",
                Some(&token),
                u64::MAX / 2,
                std::time::Duration::from_secs(600),
            )
            .unwrap();

        let rec = revoke(&*backend, &token, "web:admin", Some(&store))
            .await
            .unwrap()
            .expect("pending");
        assert_eq!(
            (rec.token_id.as_str(), rec.node_name.as_str()),
            (token.as_str(), "node7")
        );
        assert!(backend.list_enrollments().await.unwrap().is_empty());
        let events = backend.events(10).await.unwrap();
        let ev = events
            .iter()
            .find(|e| e.kind == EventKind::PackageRevoked)
            .expect("a package_revoked event");
        assert_eq!(ev.node_id, "node7");
        assert_eq!(ev.detail.get("by").map(String::as_str), Some("web:admin"));
        assert_eq!(ev.detail.get("token_id"), Some(&token));
        assert!(ev.at_ms > 0, "stamped by the backend");
        match store.take(&offered.id, offered.key.expose(), true) {
            Err(crate::app::downloads::DownloadError::Gone(why)) => {
                assert_eq!(why, "revoked or used")
            }
            other => panic!("the link still works: {:?}", other.map(|t| t.file_name)),
        }

        // Once only: the second revoke finds nothing, and records nothing.
        assert!(
            revoke(&*backend, &token, "web:admin", Some(&store))
                .await
                .unwrap()
                .is_none()
        );
        let revoked = backend.events(10).await.unwrap();
        assert_eq!(
            revoked
                .iter()
                .filter(|e| e.kind == EventKind::PackageRevoked)
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn a_token_is_found_by_its_prefix_and_only_when_unambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        let (a, b) = (
            format!("abcdef01{}", "1".repeat(24)),
            format!("abcdef01{}", "2".repeat(24)),
        );
        backend.put_enrollment(&pending(&a)).await.unwrap();
        backend.put_enrollment(&pending(&b)).await.unwrap();
        let err = |id: &'static str| {
            let backend = backend.clone();
            async move { resolve_token(&*backend, id).await.unwrap_err().to_string() }
        };

        assert_eq!(resolve_token(&*backend, "abcdef011").await.unwrap(), a);
        assert_eq!(resolve_token(&*backend, &b).await.unwrap(), b);
        assert_eq!(
            err("abcdef01").await,
            "abcdef01 matches several pending packages: give more characters"
        );
        assert_eq!(
            err("abcdef0").await,
            "`abcdef0` is not a package id: give 8 or more hex characters from `fleet-server package list`"
        );
        assert_eq!(
            err("abcdefgh").await,
            "`abcdefgh` is not a package id: give 8 or more hex characters from `fleet-server package list`"
        );
        assert_eq!(
            err("abcdef013").await,
            "no pending package abcdef013 (already used, revoked or expired?)"
        );
    }
}
