//! A private Redis Sentinel set for tests: a master and a replica (`redis-server`, password set,
//! no persistence) and three Sentinels (`redis-sentinel`) watching them, on free loopback ports,
//! all stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RespConn, free_port, require_tool, wait_for};

/// The name the Sentinels monitor the master under.
pub const MASTER_NAME: &str = "fleetmaster";
/// The password of both Redis servers (and of the Sentinels' view of them).
pub const PASSWORD: &str = "sentinel-test-pw";

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
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
    dir: tempfile::TempDir,
}

fn call(port: u16, args: &[&str], auth: bool) -> Option<String> {
    let mut c = RespConn::connect("127.0.0.1", port).ok()?;
    if auth {
        c.call(&["AUTH", PASSWORD]).ok()?;
    }
    c.call(args).ok()
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        require_tool("redis-server");
        let sentinel_bin = require_tool("redis-sentinel");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut set = SentinelSet {
            servers: Vec::new(),
            sentinels: Vec::new(),
            dir,
        };
        let master = free_port();
        for (i, replica_of) in [None, Some(master)].into_iter().enumerate() {
            let port = if i == 0 { master } else { free_port() };
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
            if let Some(m) = replica_of {
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
            let d = set.dir.path().join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let conf = d.join("sentinel.conf");
            let log = d.join("sentinel.log");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\nsentinel auth-pass {MASTER_NAME} {PASSWORD}\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 4000\nsentinel parallel-syncs {MASTER_NAME} 1\n",
                    d.display(),
                    log.display()
                ),
            )
            .unwrap();
            let child = Command::new(&sentinel_bin)
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning redis-sentinel");
            set.sentinels.push(Proc {
                child: Some(child),
                port,
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
                    call(port, &["SENTINEL", "ckquorum", MASTER_NAME], false)
                        .filter(|r| r.contains("3 usable"))
                },
            );
        }
        set
    }

    /// `host:port` of each Sentinel.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
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
