//! Load balancers and monitors that follow the cluster by themselves: the active members as
//! targets (`targets`), HAProxy kept in step over its runtime API (`haproxy`), HAProxy/nginx
//! configuration files (`render`), and Prometheus / Traefik discovery documents (`sd`).
//! Members are read only through the `Membership` trait; their records are untrusted input
//! (another machine wrote them), so every field that reaches a configuration file or a runtime
//! command is checked against a strict alphabet first.

pub mod haproxy;
pub mod render;
pub mod sd;

use crate::cluster::{Member, MemberState};

/// The path load balancers probe (200 when the node is registered and healthy).
pub const HEALTH_PATH: &str = "/api/fleet/cluster/health";

/// The load-balancer views a node offers, for the Settings page: what each is for, and its URL
/// on this node (`base_url`, the node's own URL) or the command that keeps it in step.
pub fn views(base_url: &str) -> Vec<(&'static str, String)> {
    let base = base_url.trim_end_matches('/');
    vec![
        (
            "Prometheus (http_sd_configs)",
            format!("{base}/api/fleet/cluster/sd/prometheus"),
        ),
        (
            "Traefik (providers.http)",
            format!("{base}/api/fleet/cluster/sd/traefik"),
        ),
        (
            "HAProxy (runtime API, live)",
            "fleet-server lb haproxy --socket /var/run/haproxy.sock --backend fleet".into(),
        ),
        (
            "HAProxy or nginx (file)",
            "fleet-server lb render --format nginx --output /etc/nginx/fleet-upstream.conf --watch --reload 'nginx -s reload'".into(),
        ),
        ("Health check (every load balancer)", format!("{base}{HEALTH_PATH}")),
    ]
}

/// One active node as a load balancer sees it: where to send traffic and what to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Node id: HAProxy server name, Prometheus label.
    pub id: String,
    pub name: String,
    pub version: String,
    /// `http` or `https`.
    pub scheme: String,
    /// An IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host_port())
    }
}

/// Why a member is left out of the load balancer's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

/// An id or name HAProxy accepts as a server name and nginx/Prometheus carry safely.
fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    // A DNS name: labels of letters, digits and hyphens.
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Splits a node's `url` (`http(s)://host[:port][/]`) into scheme, host and port.
pub fn parse_url(url: &str) -> Result<(String, String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("url `{url}` has no scheme"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("url `{url}`: scheme must be http or https")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "url `{url}`: only scheme://host:port is usable by a load balancer"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("url `{url}`: unclosed `[`"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("url `{url}`: `{h}` is not an IPv6 address"));
        }
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("url `{url}`: port `{p}` is not between 1 and 65535"))?,
        None => default_port,
    };
    if !valid_host(&host) {
        return Err(format!(
            "url `{url}`: host `{host}` is not an IP address or DNS name"
        ));
    }
    Ok((scheme.to_string(), host, port))
}

/// The active members as targets, sorted by node id (so every rendering is deterministic),
/// and the members left out with the reason (a record no load balancer could use safely).
pub fn targets(members: &[Member]) -> (Vec<Target>, Vec<Skipped>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for m in members.iter().filter(|m| m.state == MemberState::Active) {
        let n = &m.node;
        let checked = if !valid_ident(&n.id) {
            Err("node id has characters outside [A-Za-z0-9._-]".to_string())
        } else if !valid_ident(&n.name) {
            Err("node name has characters outside [A-Za-z0-9._-]".to_string())
        } else if !n.version.is_empty() && !valid_ident(&n.version.replace('+', ".")) {
            Err("version has unexpected characters".to_string())
        } else {
            parse_url(&n.url)
        };
        match checked {
            Ok((scheme, host, port)) => out.push(Target {
                id: n.id.clone(),
                name: n.name.clone(),
                version: n.version.clone(),
                scheme,
                host,
                port,
            }),
            Err(reason) => skipped.push(Skipped {
                id: n.id.chars().take(100).collect(),
                reason,
            }),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    (out, skipped)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::NodeRecord;

    pub(crate) fn member(id: &str, url: &str, state: MemberState) -> Member {
        Member {
            node: NodeRecord {
                id: id.into(),
                name: id.rsplit_once('-').map(|(n, _)| n).unwrap_or(id).into(),
                hostname: "h".into(),
                addresses: vec![],
                version: "0.1.0".into(),
                os: "linux".into(),
                started_at: 0,
                url: url.into(),
            },
            last_heartbeat_ms: 0,
            age_ms: 0,
            state,
            age_known: true,
        }
    }

    #[test]
    fn parses_node_urls() {
        assert_eq!(
            parse_url("http://192.0.2.10:8768").unwrap(),
            ("http".into(), "192.0.2.10".into(), 8768)
        );
        assert_eq!(
            parse_url("https://nyc-server.company.com/").unwrap(),
            ("https".into(), "nyc-server.company.com".into(), 443)
        );
        assert_eq!(
            parse_url("http://[2001:db8::1]:9000").unwrap(),
            ("http".into(), "2001:db8::1".into(), 9000)
        );
        for bad in [
            "192.0.2.1:80",
            "ftp://a:1",
            "http://a:0",
            "http://a:99999",
            "http://a b:80",
            "http://a;del server x/y:80",
            "http://a:80/path",
            "http://user@a:80",
            "http://[zz]:80",
            "http://a\nshow:80",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_are_active_checked_and_sorted() {
        let members = vec![
            member("b-222222", "http://192.0.2.2:8768", MemberState::Active),
            member("a-111111", "http://192.0.2.1:8768", MemberState::Active),
            member("c-333333", "http://192.0.2.3:8768", MemberState::Expired),
            member("d;x-444444", "http://192.0.2.4:8768", MemberState::Active),
            member("e-555555", "http://bad host:1", MemberState::Active),
        ];
        let (t, skipped) = targets(&members);
        let ids: Vec<&str> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a-111111", "b-222222"]);
        assert_eq!(t[0].host_port(), "192.0.2.1:8768");
        assert_eq!(skipped.len(), 2, "{skipped:?}");
    }
}
