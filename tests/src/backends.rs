//! The membership backends as fixtures, for the conformance suite and any test that drives a
//! backend through the `Membership` trait: a private Redis, a shared directory, a private etcd,
//! each opened as the daemon opens it (1 s / 3 s heartbeats), with the ways to make it fail
//! (an outage, data loss) and its own clock read beside it.

use std::sync::Arc;

use fleet_server::cluster::{Membership, NodeRecord};
use fleet_server::config::{BackendKind, Config};

use crate::RedisServer;
use crate::etcd::EtcdServer;

/// A backend under test, and the way to make it fail.
pub trait Fixture: Send {
    fn open(&self) -> Arc<dyn Membership>;
    /// An outage: the backend stops answering.
    fn stop(&mut self);
    /// The outage ends; the backend comes back (a Redis without persistence comes back empty).
    fn start(&mut self);
    /// The backend loses all its data (FLUSHALL, the directory wiped).
    fn wipe(&mut self);
    /// Whether this backend keeps enrollment records (what the suite expects, not what the
    /// backend says of itself).
    fn keeps_enrollments(&self) -> bool;
    /// The backend's own clock, ms since the epoch, read by the test beside the backend (not
    /// through it); `None`: the backend shows its clients no clock (etcd).
    fn clock_ms(&self) -> Option<u64>;
}

/// A backend from a `cluster:` section's backend lines, with 1 s heartbeats.
fn open_with(cluster_yaml: &str) -> Arc<dyn Membership> {
    let text = format!(
        "cluster:\n  enabled: true\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{cluster_yaml}"
    );
    let config = Config::parse(&text, std::path::Path::new("test.yaml")).unwrap();
    fleet_server::cluster::open(&config).unwrap()
}

#[derive(Debug)]
pub struct RedisFixture {
    pub server: RedisServer,
}

impl Fixture for RedisFixture {
    fn open(&self) -> Arc<dyn Membership> {
        open_with(&self.server.cluster_yaml())
    }
    fn stop(&mut self) {
        self.server.stop();
    }
    fn start(&mut self) {
        self.server.restart();
    }
    fn wipe(&mut self) {
        self.server.flushall();
    }
    fn keeps_enrollments(&self) -> bool {
        true
    }
    fn clock_ms(&self) -> Option<u64> {
        Some(self.server.time_ms())
    }
}

#[derive(Debug)]
pub struct StorageFixture {
    dir: tempfile::TempDir,
}

impl StorageFixture {
    /// The shared directory (absent while "unmounted").
    pub fn shared(&self) -> std::path::PathBuf {
        self.dir.path().join("share")
    }
    fn away(&self) -> std::path::PathBuf {
        self.dir.path().join("unmounted")
    }
}

impl Fixture for StorageFixture {
    fn open(&self) -> Arc<dyn Membership> {
        std::fs::create_dir_all(self.shared()).unwrap();
        let mut config = Config::default();
        config.cluster.enabled = true;
        config.cluster.backend = BackendKind::Storage;
        config.cluster.heartbeat_interval = fleet_server::config::Seconds::new(1.0).unwrap();
        config.cluster.heartbeat_timeout = fleet_server::config::Seconds::new(3.0).unwrap();
        config.cluster.storage_path = Some(self.shared());
        fleet_server::cluster::open(&config).unwrap()
    }
    // An unmounted share: the directory is not there.
    fn stop(&mut self) {
        std::fs::rename(self.shared(), self.away()).unwrap();
    }
    fn start(&mut self) {
        std::fs::rename(self.away(), self.shared()).unwrap();
    }
    fn wipe(&mut self) {
        std::fs::remove_dir_all(self.shared()).unwrap();
        std::fs::create_dir_all(self.shared()).unwrap();
    }
    fn keeps_enrollments(&self) -> bool {
        true
    }
    // The time the share stamps on a file just written there (on a local disk that is this
    // machine's kernel clock; on NFS the file server's).
    fn clock_ms(&self) -> Option<u64> {
        let probe = self.shared().join("test-clock-probe");
        std::fs::write(&probe, b"").unwrap();
        let mtime = std::fs::metadata(&probe).unwrap().modified().unwrap();
        std::fs::remove_file(&probe).unwrap();
        Some(
            mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        )
    }
}

#[derive(Debug)]
pub struct EtcdFixture {
    pub server: EtcdServer,
}

impl Fixture for EtcdFixture {
    fn open(&self) -> Arc<dyn Membership> {
        open_with(&self.server.cluster_yaml())
    }
    fn stop(&mut self) {
        self.server.stop();
    }
    // Back with an empty data dir: keys and leases gone.
    fn start(&mut self) {
        self.server.restart();
    }
    // The cluster's keys gone while etcd, and the nodes' leases, stay up.
    fn wipe(&mut self) {
        self.server.delete_prefix("fleet:");
    }
    fn keeps_enrollments(&self) -> bool {
        false
    }
    fn clock_ms(&self) -> Option<u64> {
        None
    }
}

/// A private etcd.
pub fn etcd() -> EtcdFixture {
    EtcdFixture {
        server: EtcdServer::start(),
    }
}

/// A private redis-server with a password.
pub fn redis() -> RedisFixture {
    RedisFixture {
        server: RedisServer::start_with(Some("conformance-pw"), &[]),
    }
}

/// A shared directory in a temporary directory.
pub fn storage() -> StorageFixture {
    StorageFixture {
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A node record as a node named `name` registers it (address 192.0.2.10).
pub fn node(name: &str) -> NodeRecord {
    node_at(name, "192.0.2.10")
}

/// A record for a node named `name` at `ip` (a fresh id; its URL on port 8768).
pub fn node_at(name: &str, ip: &str) -> NodeRecord {
    NodeRecord {
        id: fleet_server::identity::new_node_id(name),
        name: name.into(),
        hostname: format!("{name}.test"),
        addresses: vec![ip.into()],
        version: "0.1.0".into(),
        os: "linux".into(),
        started_at: 1,
        url: format!("http://{ip}:8768"),
    }
}
