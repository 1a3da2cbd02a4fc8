//! Cluster membership behind one trait: register, heartbeat, leave, list, prune, events.
//! Only this module talks to the backend; every backend keeps the same semantics, which one
//! conformance suite (`tests/e2e/conformance.rs`) checks against each of them.

pub mod etcd;
pub mod records;
pub mod redis;
pub mod sessions;
pub mod storage;
pub mod users;

pub use records::{
    EVENTS_CAP, EnrollmentRecord, Event, EventKind, Heartbeat, Holders, MAX_ADDRESSES, Member,
    MemberState, NodeRecord, REMOVAL_TOMBSTONE, cursor_of, page_of, parse_cursor,
};
pub use sessions::{Session, SessionStore, open_sessions};
pub use users::{BackendUsers, UserGrant};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BackendKind, Config};

/// Whether release `version` is older than `than` (the version order of the stub's library,
/// which the upgrade check uses too).
pub fn is_older_version(version: &str, than: &str) -> bool {
    fleet_installer_stub::version_slot::is_older(version, than)
}

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
    /// Waiting on another party (a storage node's enrollment claim waits for the primary to
    /// accept it): retried, and not an outage.
    #[error("{reason}")]
    Waiting {
        backend: &'static str,
        reason: String,
    },
    /// What this connection's credential may not do by design (a node's own user changes only
    /// that node's records): the reason says where to do it instead. Not transient.
    #[error("{reason}")]
    NotPermitted {
        backend: &'static str,
        reason: String,
    },
}

impl ClusterError {
    /// True for errors that retrying can cure (the backend coming back).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Unreachable { .. }
                | ClusterError::Backend { .. }
                | ClusterError::Waiting { .. }
        )
    }
}

/// The longest a graceful leave may take (shutdown waits for it, then exits anyway). Every
/// backend's `deregister` keeps within it.
pub const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// `f` within `deadline`, or `Unreachable` saying what got no answer.
pub(crate) async fn within<T>(
    backend: &'static str,
    what: &str,
    deadline: Duration,
    f: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(deadline, f).await.unwrap_or_else(|_| {
        Err(ClusterError::Unreachable {
            backend,
            reason: format!("{what}: no answer within {deadline:?}"),
        })
    })
}

/// A fresh password for a backend user: 32 random bytes, hex.
pub(crate) fn random_password() -> crate::config::Secret {
    crate::config::Secret::new(crate::crypto::random_hex(32))
}

/// Heartbeat settings every backend needs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Timing {
    /// The cluster's heartbeat settings: the one place a running node's `Timing` is built
    /// (the backends derive every deadline of theirs from it, see `op_timeout`).
    pub fn of(cluster: &crate::config::ClusterConfig) -> Timing {
        Timing {
            interval: cluster.heartbeat_interval(),
            timeout: cluster.heartbeat_timeout(),
        }
    }

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

    /// Records a heartbeat: constant work, whatever the cluster's size. About once per timeout
    /// across the whole cluster (a backend-side "pruner" claim that expires after the timeout),
    /// one heartbeat also prunes expired members and refreshes the stored active count.
    async fn heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError>;

    /// Leaves at once (graceful shutdown): gone from the list, `left` recorded.
    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError>;

    /// An admin removes a node: gone from the list, `removed` recorded, and a running node that
    /// heartbeats again is told it was removed. Returns whether it was a member.
    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError>;

    /// The backend's clock, ms since the epoch, for expiries that others check (a package's,
    /// an enrollment record's): Redis `TIME`, the file server's time. etcd gives clients no
    /// clock: there it is this node's.
    async fn backend_now_ms(&self) -> Result<u64, ClusterError> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }

    /// Every member with its state and last heartbeat, sorted by name.
    async fn members(&self) -> Result<Vec<Member>, ClusterError>;

    /// One page of the member list, in the order of `members` (name, then id), starting after
    /// `cursor` (from the previous page); returns the page and the next cursor (`None`: the last
    /// page). Backends override it to read only the page.
    async fn members_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Member>, Option<String>), ClusterError> {
        let all = self.members().await?;
        Ok(page_of(all, limit, cursor))
    }

    /// The live holders of a node name and of any of `ips` (the build's checks). Backends with
    /// an index override it; the default reads the whole list.
    async fn live_holders(
        &self,
        name: Option<&str>,
        ips: &[IpAddr],
    ) -> Result<Holders, ClusterError> {
        let mut out = Holders::default();
        for m in self.members().await? {
            // A record that fails validation is not trusted to hold a name or an address.
            if m.state != MemberState::Active || m.node.validate().is_err() {
                continue;
            }
            if out.name.is_none() && name == Some(m.node.name.as_str()) {
                out.name = Some(m.node.id.clone());
            }
            if out.ip.is_none()
                && let Some(ip) = ips.iter().find(|ip| {
                    m.node
                        .addresses
                        .iter()
                        .any(|a| a.parse().ok() == Some(**ip))
                })
            {
                out.ip = Some((*ip, m.node.id.clone()));
            }
        }
        Ok(out)
    }

    /// How many members are active. Redis counts them exactly; etcd and storage read the count
    /// that joins and leaves adjust and the periodic prune recounts (at most one timeout old).
    async fn active_count(&self) -> Result<usize, ClusterError>;

    /// Removes members older than the timeout, recording `expired` for each; returns their ids.
    async fn prune(&self) -> Result<Vec<String>, ClusterError>;

    /// Appends an event.
    async fn record_event(&self, event: &Event) -> Result<(), ClusterError>;

    /// The newest `limit` events, newest first.
    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError>;

    /// The backend's users (node and enrollment users), if it has any.
    fn users(&self) -> Option<&dyn BackendUsers> {
        None
    }

    /// Whether this backend keeps enrollment records (packages then carry a token, not secrets).
    fn supports_enrollment(&self) -> bool {
        false
    }

    /// Stores a pending enrollment until its expiry.
    async fn put_enrollment(&self, _record: &EnrollmentRecord) -> Result<(), ClusterError> {
        Err(self.no_enrollment())
    }

    /// Takes a pending enrollment atomically: of two takers, exactly one gets it; after, it is
    /// gone. `None`: used, revoked, expired or unknown.
    async fn take_enrollment(
        &self,
        _token_id: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        Err(self.no_enrollment())
    }

    /// As [`Membership::take_enrollment`], proving the holding of the token with `proof`
    /// (`enroll::Token::claim_proof`): for a taker that may not delete the record itself (a
    /// storage node with a uid of its own), the primary checks the proof against the record's
    /// `claim` digest and hands the record over. While that waits, a transient error.
    async fn claim_enrollment(
        &self,
        token_id: &str,
        _proof: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        self.take_enrollment(token_id).await
    }

    /// The pending enrollments, oldest first.
    async fn list_enrollments(&self) -> Result<Vec<EnrollmentRecord>, ClusterError> {
        Err(self.no_enrollment())
    }

    /// Deletes a pending enrollment; returns it if it was pending.
    async fn revoke_enrollment(
        &self,
        _token_id: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
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

/// Where the configured backend is, for people (`cluster info`): a Redis URL without
/// credentials or its socket, the shared directory, the etcd endpoints.
pub fn location(config: &Config) -> String {
    let c = &config.cluster;
    match c.backend {
        BackendKind::Redis => match (&c.redis_socket, &c.redis_host) {
            (Some(sock), _) => format!("unix:{}", sock.display()),
            (None, host) => format!(
                "{}://{}:{}/{}",
                if c.redis_tls { "rediss" } else { "redis" },
                host.as_deref().unwrap_or("?"),
                c.redis_port,
                c.redis_db
            ),
        },
        BackendKind::Storage => config.storage_path().display().to_string(),
        // Validated as http(s)://host:port without user info.
        BackendKind::Etcd => c.etcd_endpoints.join(","),
    }
}

/// Opens the backend the configuration names. Never blocks on the network: a backend that is
/// down at start is reached later, by the first operation that needs it.
pub fn open(config: &Config) -> Result<Arc<dyn Membership>, ClusterError> {
    let timing = Timing::of(&config.cluster);
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

/// A cluster configuration on the embedded backend (a shared directory under `dir`), for the
/// unit tests of the layers above, which open it with `open` and never name a backend.
#[cfg(test)]
pub(crate) fn test_config(dir: &std::path::Path) -> crate::config::Config {
    let mut c = crate::config::Config::default();
    c.cluster.enabled = true;
    c.cluster.backend = crate::config::BackendKind::Storage;
    c.cluster.storage_path = Some(dir.join("share"));
    c
}

#[cfg(test)]
mod version_tests {
    use super::is_older_version;

    #[test]
    fn versions_compare_as_numbers() {
        assert!(is_older_version("0.1.0", "0.2.0"));
        assert!(is_older_version("0.9.0", "0.10.0"));
        assert!(is_older_version("0.1", "0.1.1"));
        assert!(!is_older_version("0.1.0", "0.1.0"));
        assert!(!is_older_version("1.0.0", "0.9.9"));
        assert!(!is_older_version("0.1.0+abc", "0.1.0"));
        assert!(!is_older_version("garbage", "0.1.0"));
        assert!(!is_older_version("0.1.0", "garbage"));
    }
}
