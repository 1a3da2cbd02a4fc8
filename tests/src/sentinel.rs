//! A private Redis Sentinel set for tests: a master and a replica (`redis-server`, password set,
//! no persistence) and three Sentinels (`redis-sentinel`) watching them, on free loopback ports,
//! all stopped on drop. Optionally the Sentinels require a password, and everything also
//! listens for TLS (`tls-port`, certificates from `pki.rs`; replication and Sentinel links use
//! TLS too) beside the plain port the test's own checks use.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::TestPki;
use crate::{RespConn, free_port, require_tool, wait_for};

/// The name the Sentinels monitor the master under.
pub const MASTER_NAME: &str = "fleetmaster";
/// The password of both Redis servers (and of the Sentinels' view of them).
pub const PASSWORD: &str = "sentinel-test-pw";

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    port: u16,
    /// The TLS port, when the set speaks TLS.
    tls_port: Option<u16>,
    log: PathBuf,
}

/// How the set is secured.
#[derive(Debug, Clone, Default)]
pub struct SentinelOptions {
    /// `requirepass` of the Sentinels (and `sentinel sentinel-pass`, for each other).
    pub sentinel_password: Option<String>,
    /// Every server and Sentinel also listens for TLS.
    pub tls: bool,
}

impl Proc {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Master, replica and three Sentinels.
#[derive(Debug)]
pub struct SentinelSet {
    servers: Vec<Proc>,
    sentinels: Vec<Proc>,
    pki: Option<TestPki>,
    dir: tempfile::TempDir,
}

fn call(port: u16, args: &[&str], auth: bool) -> Option<String> {
    call_with(port, args, auth.then_some(PASSWORD))
}

fn call_with(port: u16, args: &[&str], password: Option<&str>) -> Option<String> {
    let mut c = RespConn::connect("127.0.0.1", port).ok()?;
    if let Some(pw) = password {
        c.call(&["AUTH", pw]).ok()?;
    }
    c.call(args).ok()
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        SentinelSet::start_with(SentinelOptions::default())
    }

    pub fn start_with(options: SentinelOptions) -> SentinelSet {
        require_tool("redis-server");
        let sentinel_bin = require_tool("redis-sentinel");
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = options.tls.then(|| {
            let d = dir.path().join("pki");
            std::fs::create_dir_all(&d).unwrap();
            TestPki::make(&d)
        });
        // `tls-port` and friends: servers and Sentinels accept TLS and dial each other with it.
        let tls_conf = |tls_port: u16| -> Vec<String> {
            let Some(p) = &pki else {
                return Vec::new();
            };
            vec![
                format!("tls-port {tls_port}"),
                format!("tls-cert-file {}", p.server_cert.display()),
                format!("tls-key-file {}", p.server_key.display()),
                format!("tls-ca-cert-file {}", p.ca.display()),
                "tls-auth-clients no".into(),
                "tls-replication yes".into(),
            ]
        };
        let mut set = SentinelSet {
            servers: Vec::new(),
            sentinels: Vec::new(),
            pki: pki.clone(),
            dir,
        };
        let master = free_port();
        let master_tls = options.tls.then(free_port);
        for (i, replica_of) in [None, Some(master)].into_iter().enumerate() {
            let port = if i == 0 { master } else { free_port() };
            let tls_port = if i == 0 {
                master_tls
            } else {
                options.tls.then(free_port)
            };
            let d = set.dir.path().join(format!("redis-{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let log = d.join("redis.log");
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&d)
                .arg("--logfile")
                .arg(&log)
                .args(["--requirepass", PASSWORD, "--masterauth", PASSWORD]);
            for line in tls_port.map(tls_conf).unwrap_or_default() {
                let (k, v) = line.split_once(' ').unwrap();
                cmd.arg(format!("--{k}")).arg(v);
            }
            if let Some(m) = replica_of {
                // Over TLS when the set speaks it (the master's TLS port).
                let m = master_tls.unwrap_or(m);
                cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning redis-server");
            set.servers.push(Proc {
                child: Some(child),
                port,
                tls_port,
                log,
            });
        }
        for s in 0..2 {
            let port = set.servers[s].port;
            wait_for(
                &format!("redis-server on {port}"),
                Duration::from_secs(10),
                Duration::from_millis(20),
                || call(port, &["PING"], true).filter(|r| r.starts_with("+PONG")),
            );
        }
        let replica = set.servers[1].port;
        wait_for(
            "the replica to sync",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                call(replica, &["INFO", "replication"], true)
                    .filter(|r| r.contains("master_link_status:up"))
            },
        );
        for i in 0..3 {
            let port = free_port();
            let tls_port = options.tls.then(free_port);
            let d = set.dir.path().join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let conf = d.join("sentinel.conf");
            let log = d.join("sentinel.log");
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\nsentinel auth-pass {MASTER_NAME} {PASSWORD}\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 4000\nsentinel parallel-syncs {MASTER_NAME} 1\n",
                d.display(),
                log.display(),
                master_tls.unwrap_or(master),
            );
            if let Some(pw) = &options.sentinel_password {
                text.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
            }
            for line in tls_port.map(tls_conf).unwrap_or_default() {
                text.push_str(&line);
                text.push('\n');
            }
            std::fs::write(&conf, text).unwrap();
            let child = Command::new(&sentinel_bin)
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning redis-sentinel");
            set.sentinels.push(Proc {
                child: Some(child),
                port,
                tls_port,
                log,
            });
        }
        // Failover needs the Sentinels to know each other (hello messages, every 2 s).
        for s in 0..3 {
            let port = set.sentinels[s].port;
            wait_for(
                &format!("Sentinel on {port} to see a quorum"),
                Duration::from_secs(20),
                Duration::from_millis(100),
                || {
                    call_with(
                        port,
                        &["SENTINEL", "ckquorum", MASTER_NAME],
                        options.sentinel_password.as_deref(),
                    )
                    .filter(|r| r.contains("3 usable"))
                },
            );
        }
        set
    }

    /// `host:port` of each Sentinel (their TLS ports when the set speaks TLS).
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.tls_port.unwrap_or(s.port)))
            .collect()
    }

    /// The certificates, when the set speaks TLS.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// The `cluster:` lines for a node that finds the master through these Sentinels, giving
    /// them `sentinel_password` (and with TLS, the CA), for the shared Redis password.
    pub fn secure_cluster_yaml(&self, sentinel_password: Option<&str>) -> String {
        let mut y = self.cluster_yaml(None);
        if let Some(pw) = sentinel_password {
            y.push_str(&format!("  redis_sentinel_password: \"{pw}\"\n"));
        }
        if let Some(p) = &self.pki {
            y.push_str(&format!(
                "  redis_sentinel_tls: true\n  redis_tls: true\n  redis_tls_ca: {}\n",
                p.ca.display()
            ));
        }
        y
    }

    /// The `cluster:` lines for a node that finds the master through these Sentinels.
    pub fn cluster_yaml(&self, user: Option<(&str, &str)>) -> String {
        let list = self
            .sentinel_addresses()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let creds = match user {
            Some((u, p)) => format!("  redis_username: {u}\n  redis_password: \"{p}\"\n"),
            None => format!("  redis_password: \"{PASSWORD}\"\n"),
        };
        format!(
            "  backend: redis\n  redis_sentinels: [{list}]\n  redis_master_name: {MASTER_NAME}\n{creds}"
        )
    }

    pub fn master_port(&self) -> u16 {
        self.servers[0].port
    }

    pub fn replica_port(&self) -> u16 {
        self.servers[1].port
    }

    /// One command on the server at `port`, as the default user.
    pub fn command(&self, port: u16, args: &[&str]) -> Option<String> {
        call(port, args, true)
    }

    /// Kills the master (as a crash would).
    pub fn kill_master(&mut self) {
        self.servers[0].stop();
    }

    /// Waits until the replica has been promoted; how long that took from `since`.
    pub fn wait_promoted(&self, since: Instant, limit: Duration) -> Duration {
        let replica = self.replica_port();
        wait_for(
            "the replica to be promoted",
            limit,
            Duration::from_millis(20),
            || call(replica, &["ROLE"], true).filter(|r| r.contains("master")),
        );
        since.elapsed()
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.servers.iter().chain(&self.sentinels) {
            out.push_str(&format!(
                "---- {} ----\n{}\n",
                p.log.display(),
                std::fs::read_to_string(&p.log).unwrap_or_default()
            ));
        }
        out
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for p in self.servers.iter_mut().chain(self.sentinels.iter_mut()) {
            p.stop();
        }
    }
}
