//! Cluster events recorded after a change: best effort, since the change has happened by then;
//! a backend that does not take the event gets one warning of one shape, never an error.

use crate::cluster::{Event, Membership};

/// Records `event`. On failure logs "`<what>`, but not recorded in the cluster's events: …"
/// (`what` names the change that was made, e.g. "package revoked").
pub async fn record(backend: &dyn Membership, event: &Event, what: &str) {
    if let Err(e) = backend.record_event(event).await {
        log::warn!("{what}, but not recorded in the cluster's events: {e}");
    }
}
