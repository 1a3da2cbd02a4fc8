//! Test hosts on separate networks: network namespaces `cloud`, `office` and `datacenter`, each
//! linked by a veth pair to a `router` namespace that forwards office↔cloud and datacenter↔cloud
//! but drops office↔datacenter, made by a test and removed by its drop (also on panic).
//!
//! Addresses come only from the documentation ranges: office 192.0.2.0/24, datacenter
//! 198.51.100.0/24, cloud 203.0.113.0/24; hosts are `.10`, the router is `.1` on each.
//!
//! How the test process reaches into a namespace: a short-lived thread calls `setns(2)` on
//! `/run/netns/<name>` and opens the socket there ([`in_netns`]); a socket belongs to the
//! namespace it was made in for its whole life, so the [`TcpStream`] or [`TcpListener`] it returns
//! is then used from any thread. No `curl`, no helper process. Processes (redis-server,
//! fleet-server, the installer) run under `ip netns exec <name>`, which `exec`s the program, so
//! the child's pid is the program's own and signals reach it directly.
//!
//! How office↔datacenter is dropped: two `iptables -A FORWARD … -j DROP` rules in the router
//! namespace (iptables-nft here); where iptables is missing or cannot load its tables, two
//! `ip rule … blackhole` policy rules instead (iproute2 only). Either way packets vanish
//! silently, so a connection attempt times out rather than being refused, as between real sites.
//!
//! How a link is cut: the router's end of the site's veth goes down. The site keeps its address
//! and routes; its packets are lost without an error, as when a WAN link fails.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::http::{HttpResponse, http_over};
use crate::{Daemon, RedisServer, require_tool};

/// A place in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// The shared backend, on 203.0.113.0/24.
    Cloud,
    /// The primary, on 192.0.2.0/24.
    Office,
    /// The new node, on 198.51.100.0/24.
    Datacenter,
    /// Forwards between the three; has `.1` on each subnet.
    Router,
}

impl Site {
    /// The three sites with a host (all but the router).
    pub const HOSTS: [Site; 3] = [Site::Cloud, Site::Office, Site::Datacenter];
    const ALL: [Site; 4] = [Site::Cloud, Site::Office, Site::Datacenter, Site::Router];

    pub fn label(self) -> &'static str {
        match self {
            Site::Cloud => "cloud",
            Site::Office => "office",
            Site::Datacenter => "datacenter",
            Site::Router => "router",
        }
    }

    fn octets(self) -> [u8; 3] {
        match self {
            Site::Cloud => [203, 0, 113],
            Site::Office => [192, 0, 2],
            Site::Datacenter => [198, 51, 100],
            Site::Router => panic!("the router has no subnet of its own"),
        }
    }

    /// The host's address (`.10` of its subnet).
    pub fn addr(self) -> Ipv4Addr {
        let [a, b, c] = self.octets();
        Ipv4Addr::new(a, b, c, 10)
    }

    /// The router's address on this site's subnet (`.1`), the site's default gateway.
    pub fn gateway(self) -> Ipv4Addr {
        let [a, b, c] = self.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The site's subnet, as `ip` and `iptables` take it.
    pub fn subnet(self) -> String {
        let [a, b, c] = self.octets();
        format!("{a}.{b}.{c}.0/24")
    }

    /// The router's end of the site's veth pair (the site's end is `eth0`).
    fn router_if(self) -> String {
        format!("to-{}", self.label())
    }
}

/// Fails with a clear message unless the process is root (the tests never skip silently).
pub fn require_root() {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if euid != Some(0) {
        panic!(
            "the network-namespace tests need root (ip netns, veth pairs, iptables in the router \
             namespace), and this process runs as uid {euid:?}: run them as root, e.g. \
             `sudo -E cargo test -p fleet-tests -- netns`; CI runs as root"
        );
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns` (`/run/netns/<ns>`).
/// Sockets made inside `f` stay in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let path = Path::new("/run/netns").join(ns);
                let file = std::fs::File::open(&path).unwrap_or_else(|e| {
                    panic!(
                        "opening {} (does the namespace exist? are we root?): {e}",
                        path.display()
                    )
                });
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(
                    |e| panic!("entering network namespace {ns} (needs root): {e}"),
                );
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);
const NAME_PREFIX: &str = "fleettest-";

/// How the router drops office↔datacenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    Iptables,
    IpRuleBlackhole,
}

/// The four namespaces and their links; everything is removed on drop.
#[derive(Debug)]
pub struct Topology {
    /// Namespace names by site, unique per process and topology (`fleettest-<site>-<pid>-<n>`).
    names: BTreeMap<Site, String>,
    root: tempfile::TempDir,
    blocking: Blocking,
}

impl Topology {
    /// Builds the topology; panics with the failing command's output when a step fails.
    pub fn new() -> Topology {
        require_root();
        require_tool("ip");
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let names = Site::ALL
            .iter()
            .map(|s| (*s, format!("{NAME_PREFIX}{}-{pid}-{n}", s.label())))
            .collect();
        let mut topo = Topology {
            names,
            root: tempfile::tempdir().expect("temp root for the topology"),
            blocking: Blocking::Iptables,
        };
        // From here on, a failing step still removes what was made (drop).
        for site in Site::ALL {
            run(Command::new("ip").args(["netns", "add", topo.ns(site)]));
            topo.ip(site, &["link", "set", "lo", "up"]);
        }
        let router = topo.ns(Site::Router).to_string();
        for site in Site::HOSTS {
            let rif = site.router_if();
            run(Command::new("ip").args([
                "link",
                "add",
                "eth0",
                "netns",
                topo.ns(site),
                "type",
                "veth",
                "peer",
                "name",
                &rif,
                "netns",
                &router,
            ]));
            topo.ip(
                site,
                &["addr", "add", &format!("{}/24", site.addr()), "dev", "eth0"],
            );
            topo.ip(site, &["link", "set", "eth0", "up"]);
            topo.ip(
                Site::Router,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", site.gateway()),
                    "dev",
                    &rif,
                ],
            );
            topo.ip(Site::Router, &["link", "set", &rif, "up"]);
            topo.ip(
                site,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &site.gateway().to_string(),
                ],
            );
        }
        // /proc/sys/net is per namespace: the one of the task that opens the file.
        in_netns(&router, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
                .expect("enabling forwarding in the router namespace")
        });
        topo.blocking = topo.block_office_datacenter();
        topo
    }

    /// Drops office↔datacenter in the router: iptables when it works here, else blackhole rules.
    fn block_office_datacenter(&self) -> Blocking {
        let (o, d) = (Site::Office.subnet(), Site::Datacenter.subnet());
        let pairs = [(&o, &d), (&d, &o)];
        let iptables_ok = pairs.iter().all(|(from, to)| {
            self.command(Site::Router, "iptables")
                .args([
                    "-w", "5", "-A", "FORWARD", "-s", from, "-d", to, "-j", "DROP",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if iptables_ok {
            return Blocking::Iptables;
        }
        eprintln!("netns: iptables unusable in the router namespace; using ip rule blackhole");
        for (from, to) in pairs {
            self.ip(
                Site::Router,
                &[
                    "rule",
                    "add",
                    "pref",
                    "100",
                    "from",
                    from,
                    "to",
                    to,
                    "blackhole",
                ],
            );
        }
        Blocking::IpRuleBlackhole
    }

    /// How office↔datacenter is dropped in this topology.
    pub fn blocking(&self) -> Blocking {
        self.blocking
    }

    /// The namespace name of a site (for `ip netns exec`, `ip -n`, [`in_netns`]).
    pub fn ns(&self, site: Site) -> &str {
        &self.names[&site]
    }

    /// A temporary directory removed with the topology: install roots, configs, packages.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A command that runs `program` inside the site's namespace (`ip netns exec NS program`);
    /// add arguments, environment and stdio, then `status()`, `output()` or `spawn()` it.
    pub fn command(&self, site: Site, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(site)]).arg(program);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `args[0]` with the rest as arguments inside the site's namespace; returns its output.
    pub fn exec(&self, site: Site, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a command to run");
        self.command(site, program)
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} in {}: {e}", self.ns(site)))
    }

    /// As [`Topology::exec`], and panics unless it succeeds; returns its stdout.
    pub fn exec_ok(&self, site: Site, args: &[&str]) -> String {
        let out = self.exec(site, args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed ({}):\n{}{}",
            self.ns(site),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS <args>`, which must succeed.
    fn ip(&self, site: Site, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(self.ns(site)).args(args));
    }

    /// Runs `f` on a thread inside the site's namespace (see [`in_netns`]).
    pub fn in_ns<T: Send>(&self, site: Site, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.ns(site), f)
    }

    /// A TCP connection from inside `from` to `to`.
    pub fn connect(&self, from: Site, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.in_ns(from, || TcpStream::connect_timeout(&to, timeout))
    }

    /// Whether `from` can open a TCP connection to `ip:port` within a second.
    pub fn can_connect(&self, from: Site, ip: Ipv4Addr, port: u16) -> bool {
        self.connect(
            from,
            SocketAddrV4::new(ip, port).into(),
            Duration::from_secs(1),
        )
        .is_ok()
    }

    /// A listener bound inside the site's namespace (`0.0.0.0:port`; port 0 picks one).
    pub fn listen(&self, site: Site, port: u16) -> TcpListener {
        self.in_ns(site, || TcpListener::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("listening on port {port} in {}: {e}", self.ns(site)))
    }

    /// One HTTP request from inside `from` to `to`.
    pub fn http(
        &self,
        from: Site,
        to: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        let s = self.connect(from, to, Duration::from_secs(2))?;
        http_over(s, &to.to_string(), method, path, headers, body)
    }

    /// `GET` from inside `from`, with the API key when given.
    pub fn get_json(
        &self,
        from: Site,
        to: SocketAddr,
        path: &str,
        api_key: Option<&str>,
    ) -> io::Result<HttpResponse> {
        let headers: Vec<(&str, &str)> = api_key.map(|k| ("X-API-Key", k)).into_iter().collect();
        self.http(from, to, "GET", path, &headers, b"")
    }

    /// Cuts the site off: the router's end of its veth goes down; packets vanish silently.
    pub fn cut_link(&self, site: Site) {
        self.ip(Site::Router, &["link", "set", &site.router_if(), "down"]);
    }

    /// Undoes [`Topology::cut_link`] (addresses and routes come back with the link).
    pub fn restore_link(&self, site: Site) {
        self.ip(Site::Router, &["link", "set", &site.router_if(), "up"]);
    }

    /// A redis-server in `cloud`, bound to the cloud address on port 6379, with a password.
    pub fn redis(&self, password: &str) -> RedisServer {
        RedisServer::start_in_netns(
            self.ns(Site::Cloud),
            &Site::Cloud.addr().to_string(),
            Some(password),
        )
    }

    /// An etcd in `cloud`, bound to the cloud address on ports 2379 and 2380, without auth.
    pub fn etcd(&self) -> crate::etcd::EtcdServer {
        crate::etcd::EtcdServer::start_in_netns(
            self.ns(Site::Cloud),
            &Site::Cloud.addr().to_string(),
        )
    }

    /// `fleet-server serve` inside the site, on `0.0.0.0:8768` (the site's own port space),
    /// heartbeats 1 s / 3 s unless `cluster_yaml` sets them.
    pub fn daemon(&self, site: Site, name: &str, cluster_yaml: &str) -> Daemon {
        Daemon::start_in_netns(self.ns(site), name, cluster_yaml)
    }

    /// The address of the fleet-server a site runs (`<site address>:8768`).
    pub fn server_addr(site: Site) -> SocketAddr {
        SocketAddrV4::new(site.addr(), crate::NETNS_SERVER_PORT).into()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.names.values() {
            delete_namespace(ns);
        }
    }
}

/// Ends what still runs in the namespace (only our own children can be there), then deletes it;
/// its veth ends go with it.
fn delete_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let status = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("netns: could not delete namespace {ns}");
    }
}

/// Deletes namespaces left by an earlier test process that was killed before its drops ran
/// (`fleettest-<site>-<pid>-<n>` whose pid is gone).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let mut parts = rest.rsplitn(3, '-');
        let (_n, pid) = (parts.next(), parts.next());
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            delete_namespace(name);
        }
    }
}

/// Runs a setup command; panics with its output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_documentation_ranges() {
        for s in Site::HOSTS {
            let [a, b, c, _] = s.addr().octets();
            assert!(matches!(
                [a, b, c],
                [192, 0, 2] | [198, 51, 100] | [203, 0, 113]
            ));
        }
    }
}
