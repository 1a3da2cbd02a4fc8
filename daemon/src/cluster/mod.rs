//! Cluster membership behind one trait: register, heartbeat, leave, list, prune, events.
//! Only this module talks to the backend; every backend keeps the same semantics, which one
//! conformance suite (`tests/e2e/conformance.rs`) checks against each of them.

pub mod etcd;
pub mod redis;
pub mod storage;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, Config};

/// Whether release `version` is older than `than` (the version order of the stub's library,
/// which the upgrade check uses too).
pub fn is_older_version(version: &str, than: &str) -> bool {
    fleet_installer_stub::version_slot::is_older(version, than)
}

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

/// Most addresses a record may list.
pub const MAX_ADDRESSES: usize = 64;

impl NodeRecord {
    /// Checks a record read from the backend, which another machine wrote: the name rule, an
    /// id made for that name, parseable addresses, plain text of bounded length. The reason
    /// never repeats the offending value (it may hold terminal escapes).
    pub fn validate(&self) -> Result<(), String> {
        fn plain(
            field: &str,
            v: &str,
            max: usize,
            ok: impl Fn(char) -> bool,
        ) -> Result<(), String> {
            if v.len() > max {
                return Err(format!("{field} is longer than {max} bytes"));
            }
            if !v.chars().all(ok) {
                return Err(format!("{field} has characters outside its alphabet"));
            }
            Ok(())
        }
        if crate::identity::validate_node_name(&self.name).is_err() {
            return Err("name breaks the node name rule ([a-z0-9-], at most 63)".into());
        }
        if !crate::identity::id_belongs_to(&self.id, &self.name) {
            return Err("id is not <name>-<6 [a-z0-9]>".into());
        }
        plain("hostname", &self.hostname, 255, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
        })?;
        plain("version", &self.version, 64, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_' | '~')
        })?;
        plain("os", &self.os, 32, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
        })?;
        plain("url", &self.url, 2048, |c| c.is_ascii_graphic())?;
        if !(self.url.is_empty()
            || self.url.starts_with("http://")
            || self.url.starts_with("https://"))
        {
            return Err("url is not http(s)://".into());
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(format!("more than {MAX_ADDRESSES} addresses"));
        }
        if self.addresses.iter().any(|a| a.parse::<IpAddr>().is_err()) {
            return Err("an address is not an IP address".into());
        }
        Ok(())
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
    /// False when the backend did not read the last heartbeat (etcd, in a list of more active
    /// members than it asks leases for): the member is active, so its age is under the timeout;
    /// `last_heartbeat_ms` is then the list's time and `age_ms` 0, a lower bound.
    #[serde(
        default = "age_known_default",
        skip_serializing_if = "age_known_default_is"
    )]
    pub age_known: bool,
}

fn age_known_default() -> bool {
    true
}

fn age_known_default_is(known: &bool) -> bool {
    *known
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

/// Who holds a name or an address among the live members (`live_holders`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// The id of the live node holding the name.
    pub name: Option<String>,
    /// The first of the addresses asked about that a live node holds, and that node's id.
    pub ip: Option<(IpAddr, String)>,
}

/// The position of a member in the list order, as a page cursor: hex of `<name>\0<id>`, so
/// that it is opaque in a URL and orders as (name, id) does.
pub fn cursor_of(node: &NodeRecord) -> String {
    let mut raw = node.name.clone().into_bytes();
    raw.push(0);
    raw.extend_from_slice(node.id.as_bytes());
    hex::encode(raw)
}

/// The (name, id) a cursor stands for; `None` when it is not one of ours.
pub fn parse_cursor(cursor: &str) -> Option<(String, String)> {
    let raw = hex::decode(cursor).ok()?;
    let at = raw.iter().position(|b| *b == 0)?;
    let name = String::from_utf8(raw[..at].to_vec()).ok()?;
    let id = String::from_utf8(raw[at + 1..].to_vec()).ok()?;
    Some((name, id))
}

/// A page of a list sorted by (name, id): the members after `cursor`, at most `limit`.
pub fn page_of(
    sorted: Vec<Member>,
    limit: usize,
    cursor: Option<&str>,
) -> (Vec<Member>, Option<String>) {
    let after = cursor.and_then(parse_cursor);
    let mut page: Vec<Member> = sorted
        .into_iter()
        .filter(|m| match &after {
            Some((n, i)) => (m.node.name.as_str(), m.node.id.as_str()) > (n.as_str(), i.as_str()),
            None => true,
        })
        .take(limit.saturating_add(1))
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|m| cursor_of(&m.node))
    } else {
        None
    };
    (page, next)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, id: &str) -> Member {
        Member {
            node: NodeRecord {
                id: id.into(),
                name: name.into(),
                hostname: String::new(),
                addresses: Vec::new(),
                version: String::new(),
                os: String::new(),
                started_at: 0,
                url: String::new(),
            },
            last_heartbeat_ms: 0,
            age_ms: 0,
            state: MemberState::Active,
            age_known: true,
        }
    }

    #[test]
    fn records_are_validated_without_echoing_them() {
        let mut m = member("web-01", "web-01-abc123");
        m.node.addresses = vec!["192.0.2.7".into(), "2001:db8::1".into()];
        m.node.url = "http://192.0.2.7:8768".into();
        m.node.version = "0.1.0".into();
        m.node.os = "linux".into();
        m.node.hostname = "web-01.example".into();
        assert_eq!(m.node.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut NodeRecord)| {
            let mut n = m.node.clone();
            f(&mut n);
            let e = n.validate().unwrap_err();
            assert!(!e.contains('\x1b') && !e.contains('\n'), "{e:?}");
            e
        };
        assert!(bad(&|n| n.name = "web\x1b[2J".into()).contains("name"));
        assert!(bad(&|n| n.id = "other-abc123".into()).contains("id"));
        assert!(bad(&|n| n.hostname = "h\r\nFAKE ROW".into()).contains("hostname"));
        assert!(bad(&|n| n.version = "0.1\u{9b}31m".into()).contains("version"));
        assert!(bad(&|n| n.url = "javascript:x".into()).contains("url"));
        assert!(bad(&|n| n.url = "http://a b".into()).contains("url"));
        assert!(bad(&|n| n.addresses = vec!["not-ip".into()]).contains("address"));
        assert!(bad(&|n| n.addresses = vec!["192.0.2.1".into(); 65]).contains("addresses"));
        assert!(bad(&|n| n.hostname = "h".repeat(300)).contains("longer"));
    }

    #[test]
    fn cursors_round_trip_and_order_as_name_then_id() {
        let m = member("alpha", "alpha-abc123");
        let c = cursor_of(&m.node);
        assert_eq!(
            parse_cursor(&c),
            Some(("alpha".into(), "alpha-abc123".into()))
        );
        assert_eq!(parse_cursor("zz"), None);
        assert_eq!(parse_cursor(&hex::encode("no-separator")), None);
        // "alpha" sorts before "alpha-2" by name, as the list does.
        let all = vec![
            member("alpha", "alpha-xxxxxx"),
            member("alpha-2", "alpha-2-aaaaaa"),
            member("bravo", "bravo-bbbbbb"),
        ];
        let (first, next) = page_of(all.clone(), 1, None);
        assert_eq!(first[0].node.name, "alpha");
        let (second, next) = page_of(all.clone(), 1, next.as_deref());
        assert_eq!(second[0].node.name, "alpha-2");
        let (third, next) = page_of(all, 5, next.as_deref());
        assert_eq!(third.len(), 1);
        assert_eq!(next, None);
    }
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
