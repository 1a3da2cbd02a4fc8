//! Cluster membership behind one trait: register, heartbeat, leave, list, prune, events.
//! Only this module talks to the backend; every backend keeps the same semantics, which one
//! conformance suite (`tests/e2e/conformance.rs`) checks against each of them.

pub mod etcd;
pub mod redis;
pub mod storage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, Config};

/// What a node says about itself in the member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `<name>-<6 chars>`.
    pub id: String,
    /// Unique among live nodes.
    pub name: String,
    pub hostname: String,
    /// Non-loopback addresses of the machine.
    pub addresses: Vec<String>,
    /// fleet-server version.
    pub version: String,
    /// `macos`, `linux`, …
    pub os: String,
    /// When this process started, ms since the epoch (the node's clock: informative only).
    pub started_at: u64,
    /// Where this node serves its API.
    pub url: String,
}

impl NodeRecord {
    pub(crate) fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("hostname", self.hostname.clone()),
            ("addresses", self.addresses.join(",")),
            ("version", self.version.clone()),
            ("os", self.os.clone()),
            ("started_at", self.started_at.to_string()),
            ("url", self.url.clone()),
        ]
    }
}

/// Whether a member still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Its last heartbeat is younger than the timeout.
    Active,
    /// Its last heartbeat is older than the timeout; the next prune removes it.
    Expired,
}

/// One entry of the member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(flatten)]
    pub node: NodeRecord,
    /// Time of the last heartbeat, ms since the epoch, on the backend's clock.
    pub last_heartbeat_ms: u64,
    /// How long ago that was, on the backend's clock.
    pub age_ms: u64,
    pub state: MemberState,
}

/// The result of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Recorded; `active` nodes count now.
    Alive { active: usize },
    /// The backend does not know this node any more (it expired, or the backend lost its
    /// data): the node must register again.
    NotMember,
    /// An admin removed this node: it must stop heartbeating.
    Removed,
}

/// The kinds of entry in the events stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Joined,
    Left,
    Expired,
    Removed,
    PackageBuilt,
    EnrollmentRedeemed,
    EnrollmentRejected,
    PackageRevoked,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Left => "left",
            EventKind::Expired => "expired",
            EventKind::Removed => "removed",
            EventKind::PackageBuilt => "package_built",
            EventKind::EnrollmentRedeemed => "enrollment_redeemed",
            EventKind::EnrollmentRejected => "enrollment_rejected",
            EventKind::PackageRevoked => "package_revoked",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Joined,
            EventKind::Left,
            EventKind::Expired,
            EventKind::Removed,
            EventKind::PackageBuilt,
            EventKind::EnrollmentRedeemed,
            EventKind::EnrollmentRejected,
            EventKind::PackageRevoked,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One entry of the events stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// The node it is about.
    pub node_id: String,
    /// ms since the epoch, on the backend's clock.
    pub at_ms: u64,
    /// Anything else worth keeping (node name, who, …). Never a secret.
    #[serde(default)]
    pub detail: BTreeMap<String, String>,
}

/// Events kept at most in the stream.
pub const EVENTS_CAP: usize = 1000;
/// How long an admin's removal of a node stops it from joining again under the same id.
pub const REMOVAL_TOMBSTONE: Duration = Duration::from_secs(24 * 3600);

/// What can go wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("node name `{name}` is already held by the live node {holder}")]
    NameTaken { name: String, holder: String },
    #[error("node {0} was removed from the cluster by an admin")]
    Removed(String),
    #[error("{backend} backend unreachable: {reason}")]
    Unreachable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend refused the credentials: {reason}")]
    Auth {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

impl ClusterError {
    /// True for errors that retrying can cure (the backend coming back).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Unreachable { .. } | ClusterError::Backend { .. }
        )
    }
}

/// Heartbeat settings every backend needs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Timing {
    /// Longest wait for one backend operation: short enough that an outage shows within
    /// about one heartbeat interval, long enough for a backend across the internet.
    pub fn op_timeout(&self) -> Duration {
        (self.interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(2))
    }
}

/// A cluster backend. Every method is idempotent where the semantics allow it, so that any node
/// may call it at any time (prune, remove, deregister).
#[async_trait::async_trait]
pub trait Membership: Send + Sync + std::fmt::Debug {
    /// `redis`, `storage` or `etcd`.
    fn kind(&self) -> BackendKind;

    /// Joins (or re-joins) the cluster: refuses a name another live node holds, records the
    /// heartbeat on the backend's clock, and records `joined` when the node was not a member.
    async fn register(&self, node: &NodeRecord) -> Result<usize, ClusterError>;

    /// Records a heartbeat, and prunes members whose heartbeat is older than the timeout.
    async fn heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError>;

    /// Leaves at once (graceful shutdown): gone from the list, `left` recorded.
    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError>;

    /// An admin removes a node: gone from the list, `removed` recorded, and a running node that
    /// heartbeats again is told it was removed. Returns whether it was a member.
    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError>;

    /// Every member with its state and last heartbeat, sorted by name.
    async fn members(&self) -> Result<Vec<Member>, ClusterError>;

    /// How many members are active.
    async fn active_count(&self) -> Result<usize, ClusterError>;

    /// Removes members older than the timeout, recording `expired` for each; returns their ids.
    async fn prune(&self) -> Result<Vec<String>, ClusterError>;

    /// Appends an event.
    async fn record_event(&self, event: &Event) -> Result<(), ClusterError>;

    /// The newest `limit` events, newest first.
    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError>;

    /// Whether this backend keeps enrollment records (packages then carry a token, not secrets).
    fn supports_enrollment(&self) -> bool {
        false
    }

    /// Stores a pending enrollment until its expiry.
    async fn put_enrollment(
        &self,
        _record: &crate::enrollment::EnrollmentRecord,
    ) -> Result<(), ClusterError> {
        Err(self.no_enrollment())
    }

    /// Takes a pending enrollment atomically: of two takers, exactly one gets it; after, it is
    /// gone. `None`: used, revoked, expired or unknown.
    async fn take_enrollment(
        &self,
        _token_id: &str,
    ) -> Result<Option<crate::enrollment::EnrollmentRecord>, ClusterError> {
        Err(self.no_enrollment())
    }

    /// The pending enrollments, oldest first.
    async fn list_enrollments(
        &self,
    ) -> Result<Vec<crate::enrollment::EnrollmentRecord>, ClusterError> {
        Err(self.no_enrollment())
    }

    /// Deletes a pending enrollment; returns it if it was pending.
    async fn revoke_enrollment(
        &self,
        _token_id: &str,
    ) -> Result<Option<crate::enrollment::EnrollmentRecord>, ClusterError> {
        Err(self.no_enrollment())
    }

    /// Occasional cleanup any node may run (idempotent): on Redis, deletes the enrollment
    /// users of expired packages, where this node may manage users.
    async fn housekeeping(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    #[doc(hidden)]
    fn no_enrollment(&self) -> ClusterError {
        ClusterError::Backend {
            backend: self.kind().as_str(),
            reason: "this backend keeps no enrollment records (build with --no-enrollment)".into(),
        }
    }
}

/// Opens the backend the configuration names. Never blocks on the network: a backend that is
/// down at start is reached later, by the first operation that needs it.
pub fn open(config: &Config) -> Result<Arc<dyn Membership>, ClusterError> {
    let timing = Timing {
        interval: config.cluster.heartbeat_interval(),
        timeout: config.cluster.heartbeat_timeout(),
    };
    Ok(match config.cluster.backend {
        BackendKind::Redis => Arc::new(
            redis::RedisMembership::new(&config.cluster, timing)?
                .with_user_registry(&config.server.state_dir),
        ),
        BackendKind::Storage => Arc::new(storage::StorageMembership::new(
            &config.storage_path(),
            timing,
        )?),
        BackendKind::Etcd => Arc::new(etcd::EtcdMembership::new(&config.cluster, timing)?),
    })
}
