//! The records the cluster persists (nodes, members, events, enrollment records) and the
//! helpers that page through them: plain data, the same for every backend.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

impl Member {
    /// A member whose last heartbeat, `age_ms` ago, the backend read: active while that is
    /// under `timeout_ms`.
    pub fn aged(node: NodeRecord, last_heartbeat_ms: u64, age_ms: u64, timeout_ms: u64) -> Member {
        Member {
            node,
            last_heartbeat_ms,
            age_ms,
            state: if age_ms < timeout_ms {
                MemberState::Active
            } else {
                MemberState::Expired
            },
            age_known: true,
        }
    }
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

impl Event {
    /// An event about `node_id`, with no detail, its time left to the backend (`at_ms` 0: the
    /// backend stamps it with its own clock when it records it).
    pub fn new(kind: EventKind, node_id: impl Into<String>) -> Event {
        Event {
            kind,
            node_id: node_id.into(),
            at_ms: 0,
            detail: BTreeMap::new(),
        }
    }

    /// Adds one detail field.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Event {
        self.detail.insert(key.into(), value.into());
        self
    }

    /// Adds every field of `detail`.
    pub fn with_detail(mut self, detail: BTreeMap<String, String>) -> Event {
        self.detail.extend(detail);
        self
    }

    /// The time it happened, ms since the epoch on the backend's clock (for backends).
    pub fn at(mut self, at_ms: u64) -> Event {
        self.at_ms = at_ms;
        self
    }
}

/// Events kept at most in the stream.
pub const EVENTS_CAP: usize = 1000;
/// How long an admin's removal of a node stops it from joining again under the same id.
pub const REMOVAL_TOMBSTONE: Duration = Duration::from_secs(24 * 3600);

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

/// A pending enrollment as the backend keeps it: metadata in clear (for `package list`), the
/// node's configuration sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// 32 hex characters; names the record. Not secret.
    pub token_id: String,
    /// The intended node name (empty: the machine's hostname).
    pub node_name: String,
    /// ms since the epoch.
    pub created_ms: u64,
    /// ms since the epoch; the backend forgets the record then.
    pub expires_ms: u64,
    /// Who built the package (`web:admin`, `cli:root`, `api-key`).
    pub built_by: String,
    /// The sealed header's package id.
    pub package_id: String,
    /// The backend users made for this package (deleted on revoke), if any.
    #[serde(default)]
    pub users: Vec<String>,
    /// ChaCha20-Poly1305 nonce, hex.
    pub nonce: String,
    /// The node's configuration (YAML), encrypted; hex.
    pub ciphertext: String,
    /// SHA-256 (hex) of the token's claim proof (`enroll::Token::claim_proof`): lets a backend
    /// whose taker cannot delete the record itself (a storage node with a uid of its own) check
    /// that a claim comes from the package's holder. Empty in records of earlier releases.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
}

impl std::fmt::Debug for EnrollmentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentRecord")
            .field("token_id", &self.token_id)
            .field("node_name", &self.node_name)
            .field("expires_ms", &self.expires_ms)
            .field("built_by", &self.built_by)
            .finish_non_exhaustive()
    }
}

impl EnrollmentRecord {
    /// What `package list` and the API show of a pending package: no ciphertext, no users.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "token_id": self.token_id,
            "node_name": self.node_name,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "built_by": self.built_by,
            "package_id": self.package_id,
        })
    }
}

// A node's own events, as the primary forwards them where a node may not write the shared
// events: what a node may say.

/// Longest event a node may leave for the primary to forward; a larger one is dropped unread.
pub const NOTE_CAP: usize = 4096;
/// What a node may report about itself (everything else, the primary records itself).
const NODE_KINDS: [EventKind; 3] = [
    EventKind::Joined,
    EventKind::Left,
    EventKind::EnrollmentRedeemed,
];

/// Text another machine wrote, safe to store and show: no control characters, at most `max`.
pub fn clean_text(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Why a node's event is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteRefused {
    Oversized,
    Unreadable,
    Kind,
    AnotherNode,
}

impl NoteRefused {
    pub fn as_str(self) -> &'static str {
        match self {
            NoteRefused::Oversized => "over 4 KiB",
            NoteRefused::Unreadable => "not an event",
            NoteRefused::Kind => "a kind a node may not report",
            NoteRefused::AnotherNode => "about another node",
        }
    }
}

/// The event a node named `name` left (`value`, as stored), as the shared stream gets it: its
/// kind one a node may report, about itself, its detail the fields that kind has (the name the
/// key says, cleaned), its time the node's clock unless that is unset or ahead of `now_ms`.
pub fn checked_note(name: &str, value: &[u8], now_ms: u64) -> Result<Event, NoteRefused> {
    if value.len() > NOTE_CAP {
        return Err(NoteRefused::Oversized);
    }
    let ev: Event = serde_json::from_slice(value).map_err(|_| NoteRefused::Unreadable)?;
    if !NODE_KINDS.contains(&ev.kind) {
        return Err(NoteRefused::Kind);
    }
    let at = if ev.at_ms == 0 || ev.at_ms > now_ms {
        now_ms
    } else {
        ev.at_ms
    };
    match ev.kind {
        EventKind::EnrollmentRedeemed => {
            // About the node by its name (as `app::enroll` records it).
            if ev.node_id != name {
                return Err(NoteRefused::AnotherNode);
            }
            let detail = ["token_id", "package_id", "host"]
                .into_iter()
                .filter_map(|k| Some((k.to_string(), clean_text(ev.detail.get(k)?, 255))))
                .collect();
            Ok(Event::new(ev.kind, name).at(at).with_detail(detail))
        }
        _ => {
            if !crate::identity::id_belongs_to(&ev.node_id, name) {
                return Err(NoteRefused::AnotherNode);
            }
            Ok(Event::new(ev.kind, ev.node_id).at(at).with("name", name))
        }
    }
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
    fn events_are_built_field_by_field() {
        let ev = Event::new(EventKind::PackageRevoked, "web-01")
            .with("by", "cli:root")
            .with_detail([("token_id".to_string(), "ab".to_string())].into());
        assert_eq!(ev.at_ms, 0, "the backend stamps the time");
        assert_eq!(ev.node_id, "web-01");
        assert_eq!(ev.detail.len(), 2);
        assert_eq!(ev.detail["by"], "cli:root");
        assert_eq!(ev.clone().at(7).at_ms, 7);
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
