//! `lb haproxy`: keeps one HAProxy backend in step with the cluster through HAProxy's runtime
//! API (2.6 or later, no reload). Each pass reads the backend's servers (`show servers state`),
//! adds active nodes (`add server … check`, `enable health`, `enable server`), follows address
//! changes (`set server … addr`), and drains and deletes servers of nodes that left or expired
//! (`set server … state maint`, then `del server` once their connections are gone). The
//! backend is dedicated to the cluster: every server in it that is not an active node goes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::cluster::Membership;

/// Longest wait for one runtime API command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(3);
/// A runtime API answer larger than this is not HAProxy's.
const MAX_REPLY: usize = 16 * 1024 * 1024;
/// `srv_admin_state` bits that keep a server out of rotation (forced, inherited, configured
/// or resolver-caused maintenance, drain).
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;

/// Where HAProxy's runtime API listens: a unix socket (`stats socket … level admin`) or TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    Unix(PathBuf),
    Tcp(String),
}

impl Socket {
    /// A path (starting with `/` or `.`) is a unix socket; `host:port` or `tcp:host:port` TCP.
    pub fn parse(s: &str) -> Result<Socket, String> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            return Ok(Socket::Tcp(addr.to_string()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Socket::Unix(PathBuf::from(s)));
        }
        if s.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Ok(Socket::Tcp(s.to_string()));
        }
        Err(format!(
            "--socket {s}: give a unix socket path (/var/run/haproxy.sock) or host:port"
        ))
    }
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Unix(p) => write!(f, "{}", p.display()),
            Socket::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// What went wrong talking to HAProxy.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("HAProxy runtime API at {socket} unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("HAProxy refused `{command}`: {reply}")]
    Refused { command: String, reply: String },
    #[error("HAProxy has no backend `{0}` (declare it in haproxy.cfg)")]
    NoBackend(String),
}

/// A runtime API client: one connection per command (HAProxy's non-interactive mode).
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: Socket,
}

impl Client {
    /// Sends one command and returns HAProxy's whole answer. Commands are built only from
    /// checked names and addresses; a newline or `;` (HAProxy's command separators) is refused.
    pub async fn command(&self, cmd: &str) -> Result<String, HaproxyError> {
        if cmd.contains(['\n', '\r', ';']) {
            return Err(HaproxyError::Refused {
                command: cmd.escape_debug().to_string(),
                reply: "refused to send a command with a separator in it".into(),
            });
        }
        let unreachable = |reason: String| HaproxyError::Unreachable {
            socket: self.socket.to_string(),
            reason,
        };
        let io = async {
            let mut reply = Vec::new();
            match &self.socket {
                Socket::Unix(p) => {
                    let mut s = tokio::net::UnixStream::connect(p).await?;
                    s.write_all(format!("{cmd}\n").as_bytes()).await?;
                    (&mut s)
                        .take(MAX_REPLY as u64)
                        .read_to_end(&mut reply)
                        .await?;
                }
                Socket::Tcp(a) => {
                    let mut s = tokio::net::TcpStream::connect(a).await?;
                    s.write_all(format!("{cmd}\n").as_bytes()).await?;
                    (&mut s)
                        .take(MAX_REPLY as u64)
                        .read_to_end(&mut reply)
                        .await?;
                }
            }
            std::io::Result::Ok(reply)
        };
        match tokio::time::timeout(COMMAND_DEADLINE, io).await {
            Ok(Ok(r)) => Ok(String::from_utf8_lossy(&r).into_owned()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {COMMAND_DEADLINE:?}"
            ))),
        }
    }

    /// The servers of `backend`, by name.
    pub async fn servers(&self, backend: &str) -> Result<BTreeMap<String, Server>, HaproxyError> {
        let reply = self
            .command(&format!("show servers state {backend}"))
            .await?;
        parse_servers_state(&reply, backend)
    }
}

/// One server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub admin_state: u32,
}

impl Server {
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & ADMIN_MAINT != 0
    }
}

/// Parses `show servers state <backend>` (format version 1: a version line, a `#` header that
/// names the columns, one line per server).
pub fn parse_servers_state(
    reply: &str,
    backend: &str,
) -> Result<BTreeMap<String, Server>, HaproxyError> {
    let mut lines = reply.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default().trim();
    if first != "1" {
        if first.contains("Can't find backend") || first.contains("No such backend") {
            return Err(HaproxyError::NoBackend(backend.to_string()));
        }
        return Err(HaproxyError::Refused {
            command: format!("show servers state {backend}"),
            reply: first.chars().take(200).collect(),
        });
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .map(|h| h.split_whitespace().collect())
        .unwrap_or_default();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(be), Some(name), Some(addr), Some(admin), Some(port)) = (
        col("be_name"),
        col("srv_name"),
        col("srv_addr"),
        col("srv_admin_state"),
        col("srv_port"),
    ) else {
        return Err(HaproxyError::Refused {
            command: format!("show servers state {backend}"),
            reply: "unexpected header (HAProxy 2.6 or later is needed)".into(),
        });
    };
    let mut out = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < header.len() || f[be] != backend {
            continue;
        }
        out.insert(
            f[name].to_string(),
            Server {
                name: f[name].to_string(),
                addr: f[addr].to_string(),
                port: f[port].parse().unwrap_or(0),
                admin_state: f[admin].parse().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// What one pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub enabled: Vec<String>,
    pub drained: Vec<String>,
    pub deleted: Vec<String>,
    /// Drained servers that still have connections: deleted by a later pass.
    pub draining: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.enabled.is_empty()
            && self.drained.is_empty()
            && self.deleted.is_empty()
    }
}

/// Options of `lb haproxy`.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: String,
    /// CA file for nodes served over https (`@system-ca`: the system's roots).
    pub ca_file: String,
}

fn server_line(t: &Target, opts: &Options) -> String {
    let mut s = format!(
        "add server {}/{} {} check inter 1s fall 2 rise 1",
        opts.backend,
        t.id,
        t.host_port()
    );
    if t.scheme == "https" {
        s.push_str(&format!(" ssl verify required ca-file {}", opts.ca_file));
    }
    s
}

fn expect_empty(cmd: &str, reply: String) -> Result<(), HaproxyError> {
    if reply.trim().is_empty() {
        Ok(())
    } else {
        Err(HaproxyError::Refused {
            command: cmd.to_string(),
            reply: reply.trim().chars().take(300).collect(),
        })
    }
}

async fn run_expect_empty(client: &Client, cmd: String) -> Result<(), HaproxyError> {
    let reply = client.command(&cmd).await?;
    expect_empty(&cmd, reply)
}

/// One pass: makes the backend's servers the `targets`, logging each change.
pub async fn sync(
    client: &Client,
    targets: &[Target],
    opts: &Options,
) -> Result<Changes, HaproxyError> {
    let be = &opts.backend;
    let current = client.servers(be).await?;
    let mut changes = Changes::default();
    for t in targets {
        let srv = format!("{be}/{}", t.id);
        match current.get(&t.id) {
            None => {
                let cmd = server_line(t, opts);
                let reply = client.command(&cmd).await?;
                if !reply.contains("New server registered") {
                    return Err(HaproxyError::Refused {
                        command: cmd,
                        reply: reply.trim().chars().take(300).collect(),
                    });
                }
                run_expect_empty(client, format!("enable health {srv}")).await?;
                run_expect_empty(client, format!("enable server {srv}")).await?;
                log::info!(
                    "➕ HAProxy: added server {srv} ({}, node {})",
                    t.url(),
                    t.name
                );
                changes.added.push(t.id.clone());
            }
            Some(s) => {
                // Compared as addresses (HAProxy may print an IPv6 address in another form);
                // a DNS name is HAProxy's to resolve, so only its port is compared.
                let same_addr = match (
                    s.addr.parse::<std::net::IpAddr>(),
                    t.host.parse::<std::net::IpAddr>(),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    (_, Err(_)) => true,
                    (Err(_), Ok(_)) => false,
                };
                if !same_addr || s.port != t.port {
                    let cmd = format!("set server {srv} addr {} port {}", t.host, t.port);
                    let reply = client.command(&cmd).await?;
                    if !(reply.contains("changed") || reply.contains("no need")) {
                        return Err(HaproxyError::Refused {
                            command: cmd,
                            reply: reply.trim().chars().take(300).collect(),
                        });
                    }
                    log::info!(
                        "🔁 HAProxy: server {srv} now at {} (was {}:{})",
                        t.host_port(),
                        s.addr,
                        s.port
                    );
                    changes.updated.push(t.id.clone());
                }
                if s.in_maintenance() {
                    run_expect_empty(client, format!("enable health {srv}")).await?;
                    run_expect_empty(client, format!("enable server {srv}")).await?;
                    log::info!("✅ HAProxy: server {srv} back in rotation");
                    changes.enabled.push(t.id.clone());
                }
            }
        }
    }
    for (name, s) in &current {
        if targets.iter().any(|t| &t.id == name) {
            continue;
        }
        let srv = format!("{be}/{name}");
        if !s.in_maintenance() {
            run_expect_empty(client, format!("set server {srv} state maint")).await?;
            log::info!("⏸ HAProxy: draining server {srv} (node left or expired)");
            changes.drained.push(name.clone());
        }
        let reply = client.command(&format!("del server {srv}")).await?;
        if reply.contains("Server deleted") {
            log::info!("➖ HAProxy: removed server {srv}");
            changes.deleted.push(name.clone());
        } else {
            // Connections still open (or idle ones HAProxy keeps): a later pass deletes it.
            log::debug!("HAProxy: {srv} not deleted yet: {}", reply.trim());
            changes.draining.push(name.clone());
        }
    }
    Ok(changes)
}

/// Splits off targets whose host is a DNS name: HAProxy 2.6 does not resolve the address of a
/// server added at run time, so such a server would never come up.
pub fn by_address(targets: Vec<Target>) -> (Vec<Target>, Vec<super::Skipped>) {
    let (ips, names): (Vec<Target>, Vec<Target>) = targets
        .into_iter()
        .partition(|t| t.host.parse::<std::net::IpAddr>().is_ok());
    let skipped = names
        .into_iter()
        .map(|t| super::Skipped {
            reason: format!(
                "its url names the host `{}`: HAProxy does not resolve names of servers added at run time (give the node an IP address in server.public_url, or use `lb render --format haproxy`)",
                t.host
            ),
            id: t.id,
        })
        .collect();
    (ips, skipped)
}

/// Logs a line when a state turns bad or good again, not on every pass.
#[derive(Debug, Default)]
pub struct Transitions {
    failing: Option<String>,
}

impl Transitions {
    /// Records a failure; logs it when things were fine until now.
    pub fn fail(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if self.failing.is_none() {
            let msg = e.to_string();
            log::error!("❌ {what}: {msg}");
            self.failing = Some(msg);
        }
    }

    pub fn ok(&mut self, what: &str) {
        if self.failing.take().is_some() {
            log::info!("✅ {what} reachable again");
        }
    }
}

/// `lb haproxy`: a pass per heartbeat interval until `shutdown` (or a single pass with
/// `once`, whose failure is the command's). While the cluster backend is unreachable the last
/// member list read is kept, so a restarted HAProxy still gets its servers back.
pub async fn run(
    backend: Arc<dyn Membership>,
    client: Client,
    opts: Options,
    interval: Duration,
    once: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut last: Option<Vec<Target>> = None;
    let mut cluster_state = Transitions::default();
    let mut haproxy_state = Transitions::default();
    let mut skipped_logged: Vec<String> = Vec::new();
    log::info!(
        "🔄 Keeping HAProxy backend `{}` at {} in step with the cluster (every {:?})",
        opts.backend,
        client.socket,
        interval
    );
    loop {
        // Within the backend's own deadline.
        match backend.members().await {
            Ok(members) => {
                cluster_state.ok("cluster backend");
                let (targets, mut skipped) = super::targets(&members);
                let (targets, named) = by_address(targets);
                skipped.extend(named);
                for s in &skipped {
                    if !skipped_logged.contains(&s.id) {
                        log::warn!("⚠️ node {} left out of HAProxy: {}", s.id, s.reason);
                        skipped_logged.push(s.id.clone());
                    }
                }
                last = Some(targets);
            }
            Err(e) => {
                if once {
                    return Err(e.into());
                }
                cluster_state.fail("cluster backend unavailable, keeping HAProxy as it is", &e)
            }
        }
        if let Some(targets) = &last {
            match sync(&client, targets, &opts).await {
                Ok(changes) => {
                    haproxy_state.ok("HAProxy runtime API");
                    if once {
                        println!(
                            "✅ HAProxy backend {}: {} server{} ({} added, {} removed, {} draining)",
                            opts.backend,
                            targets.len(),
                            if targets.len() == 1 { "" } else { "s" },
                            changes.added.len(),
                            changes.deleted.len(),
                            changes.draining.len()
                        );
                    }
                }
                Err(e) => {
                    if once {
                        return Err(e.into());
                    }
                    haproxy_state.fail("HAProxy", &e)
                }
            }
        }
        if once {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 fleet 1 node-a-abc123 127.0.0.1 2 0 1 1 5 6 3 4 6 0 0 0 - 40001 - 0 0 - - 0\n3 fleet 2 node-b-def456 127.0.0.1 0 1 1 1 5 6 3 4 6 0 0 0 - 40002 - 0 0 - - 0\n\n";

    #[test]
    fn parses_servers_state() {
        let s = parse_servers_state(STATE, "fleet").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s["node-a-abc123"].port, 40001);
        assert!(!s["node-a-abc123"].in_maintenance());
        assert!(s["node-b-def456"].in_maintenance());
        assert!(matches!(
            parse_servers_state("Can't find backend.\n", "x"),
            Err(HaproxyError::NoBackend(_))
        ));
        assert!(parse_servers_state("1\n# nonsense\n", "fleet").is_err());
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            Socket::parse("/var/run/haproxy.sock").unwrap(),
            Socket::Unix("/var/run/haproxy.sock".into())
        );
        assert_eq!(
            Socket::parse("127.0.0.1:9999").unwrap(),
            Socket::Tcp("127.0.0.1:9999".into())
        );
        assert!(Socket::parse("haproxy.sock").is_err());
    }

    #[test]
    fn names_are_left_to_files() {
        use crate::cluster::MemberState;
        use crate::lb::tests::member;
        let (t, _) = crate::lb::targets(&[
            member("a-111111", "http://192.0.2.1:8768", MemberState::Active),
            member("b-222222", "http://b.example:8768", MemberState::Active),
        ]);
        let (ips, named) = by_address(t);
        assert_eq!(ips.len(), 1);
        assert_eq!(named[0].id, "b-222222");
    }

    #[tokio::test]
    async fn refuses_command_separators() {
        let c = Client {
            socket: Socket::Unix("/nonexistent".into()),
        };
        assert!(matches!(
            c.command("show info; del server a/b").await,
            Err(HaproxyError::Refused { .. })
        ));
    }
}
