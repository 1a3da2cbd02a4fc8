//! A node's own events on etcd. A node's user may not write the shared `events/` (it could
//! rewrite, delete or flood everyone's); it writes `node-events/<name>/<ms>-<random>` instead,
//! and the pruner's turn, which runs on the primary's credential only, checks each as
//! untrusted input and forwards it into `events/`, deleting it. The kinds, texts and checks are
//! those of the Redis notes (`cluster/redis/roles.rs`): a node reports its own join, leave and
//! enrollment only, about itself only, in at most `NOTE_CAP` bytes.

use super::*;

/// Keys listed per pruner turn (names only: a value is read one at a time, after the count
/// checks, so one turn never holds more than one oversized value).
const SCAN_LIMIT: i64 = 1000;
/// Events forwarded per pruner turn at most; the rest wait for the next turn.
const FORWARD_LIMIT: usize = 200;
/// Events one node may leave per turn. A node joins, leaves and redeems its enrollment a few
/// times a timeout at most: more is a flood, and its whole prefix is emptied.
const PER_NAME: usize = 8;
pub(super) use crate::cluster::records::{NoteRefused as Refused, checked_note as checked};

impl EtcdMembership {
    /// The pruner's turn (the primary's credential): forwards the events nodes left under
    /// `node-events/`, checked by `checked`, each in one transaction with the deletion of its
    /// key (only as it was read). Unreadable keys and refused events are deleted; a node over
    /// `PER_NAME` or with an oversized event loses its whole prefix. Returns how many were
    /// forwarded.
    pub(super) async fn forward_node_events(
        &self,
        client: &mut Client,
    ) -> Result<usize, ClusterError> {
        let prefix = self.key("node-events/");
        let listed = client
            .get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(SCAN_LIMIT),
                ),
            )
            .await
            .map_err(|e| map_err(&e))?;
        let mut by_name: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut junk: Vec<Vec<u8>> = Vec::new();
        for kv in listed.kvs() {
            let name = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|rest| rest.split_once('/'))
                .filter(|(n, e)| {
                    crate::identity::validate_node_name(n).is_ok()
                        && !e.is_empty()
                        && !e.contains('/')
                })
                .map(|(n, _)| n.to_string());
            match name {
                Some(n) => by_name.entry(n).or_default().push(kv.key().to_vec()),
                None => junk.push(kv.key().to_vec()),
            }
        }
        let now = now_ms();
        let mut forwarded = 0;
        let mut wiped: Vec<String> = Vec::new();
        'names: for (name, keys) in &by_name {
            if keys.len() > PER_NAME {
                log::warn!(
                    "node {name} left more than {PER_NAME} events in one turn: the rest dropped"
                );
                wiped.push(name.clone());
            }
            for key in keys.iter().take(PER_NAME) {
                if forwarded >= FORWARD_LIMIT {
                    break 'names;
                }
                let got = client
                    .get(key.clone(), None)
                    .await
                    .map_err(|e| map_err(&e))?;
                let Some(kv) = got.kvs().first() else {
                    continue;
                };
                let as_read =
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision());
                let mut ops = vec![TxnOp::delete(key.clone(), None)];
                match checked(name, kv.value(), now) {
                    Ok(ev) => {
                        let k = self.key(&format!(
                            "events/{:015}-{:08x}",
                            ev.at_ms,
                            rand::rng().random::<u32>()
                        ));
                        ops.push(TxnOp::put(
                            k,
                            serde_json::to_vec(&ev).unwrap_or_default(),
                            None,
                        ));
                    }
                    Err(why) => {
                        log::warn!(
                            "node {name} left an event that was not recorded ({}): dropped",
                            why.as_str()
                        );
                        if why == Refused::Oversized && !wiped.contains(name) {
                            wiped.push(name.clone());
                        }
                    }
                }
                let forwards = ops.len() == 2;
                let resp = client
                    .txn(Txn::new().when([as_read]).and_then(ops))
                    .await
                    .map_err(|e| map_err(&e))?;
                if resp.succeeded() && forwards {
                    forwarded += 1;
                }
                if wiped.contains(name) && !forwards {
                    continue 'names;
                }
            }
        }
        for name in wiped {
            client
                .delete(
                    self.key(&format!("node-events/{name}/")),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| map_err(&e))?;
        }
        delete_keys(client, &junk).await?;
        Ok(forwarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::records::NOTE_CAP;

    fn ev(kind: EventKind, node_id: &str, at_ms: u64) -> Vec<u8> {
        let e = Event::new(kind, node_id)
            .at(at_ms)
            .with("name", "someone-else")
            .with("token_id", "t\x1b[2J");
        serde_json::to_vec(&e).unwrap()
    }

    #[test]
    fn a_nodes_events_are_checked_as_untrusted() {
        let now = 1_000_000;
        let ok = checked("a", &ev(EventKind::Joined, "a-abc123", 5), now).unwrap();
        assert_eq!(ok.node_id, "a-abc123");
        assert_eq!(ok.at_ms, 5);
        // The name is the key's, whatever the event says; no other field is carried.
        assert_eq!(ok.detail, BTreeMap::from([("name".into(), "a".into())]));
        let future = checked("a", &ev(EventKind::Left, "a-abc123", now * 2), now).unwrap();
        assert_eq!(
            future.at_ms, now,
            "a clock ahead of the primary's is not believed"
        );
        // Node `a` about node `a-b` (whose ids start with `a-`), or of a kind it may not report.
        for (kind, id) in [
            (EventKind::Joined, "a-b-abc123"),
            (EventKind::Left, "b-abc123"),
            (EventKind::EnrollmentRedeemed, "b"),
        ] {
            assert_eq!(
                checked("a", &ev(kind, id, 5), now),
                Err(Refused::AnotherNode),
                "{kind:?} {id}"
            );
        }
        for kind in [
            EventKind::Removed,
            EventKind::Expired,
            EventKind::PackageBuilt,
            EventKind::PackageRevoked,
            EventKind::EnrollmentRejected,
        ] {
            assert_eq!(
                checked("a", &ev(kind, "a-abc123", 5), now),
                Err(Refused::Kind)
            );
        }
        let redeemed = checked("a", &ev(EventKind::EnrollmentRedeemed, "a", 5), now).unwrap();
        assert_eq!(
            redeemed.detail.get("token_id").map(String::as_str),
            Some("t[2J")
        );
        assert!(!redeemed.detail.contains_key("name"));
        let mut big = Event::new(EventKind::Joined, "a-abc123");
        big.detail.insert("pad".into(), "x".repeat(NOTE_CAP));
        let big = serde_json::to_vec(&big).unwrap();
        assert_eq!(checked("a", &big, now), Err(Refused::Oversized));
        assert_eq!(checked("a", b"{", now), Err(Refused::Unreadable));
    }
}
