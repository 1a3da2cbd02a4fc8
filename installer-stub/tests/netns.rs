//! The Ethernet check for real: the stub runs inside network namespaces this test creates, with a veth pair down, up, and up with an address.
//!
//! Needs root (`ip netns add`). Without it these tests fail, loudly: a silent skip would
//! hide that the real-kernel path was never exercised. Only documentation addresses
//! (192.0.2.0/24) are used, and no traffic is sent.

use std::ffi::OsStr;
use std::fs;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use fleet_installer_stub::{EthernetPolicy, TargetLayout};

use crate::common::{Package, STUB, assert_exit, opts, payload, snapshot, stderr, stdout};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by a veth pair: `veth0` in `inner` (where the stub runs),
/// `veth1` in `outer`. Deleting the namespaces (on drop, also after a panic) removes
/// the pair.
#[derive(Debug)]
struct VethPair {
    inner: String,
    outer: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip(8)")
}

fn ip_ok(args: &[&str]) {
    let o = ip(args);
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl VethPair {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network-namespace tests need root (ip netns add): run `cargo test` as root"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("fleetstub-{}-{n}", std::process::id());
        let pair = Self {
            inner: format!("{base}-in"),
            outer: format!("{base}-out"),
        };
        // Constructed before the first `ip` call so Drop cleans up a half-made setup.
        ip_ok(&["netns", "add", &pair.inner]);
        ip_ok(&["netns", "add", &pair.outer]);
        ip_ok(&[
            "link",
            "add",
            "veth0",
            "netns",
            &pair.inner,
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &pair.outer,
        ]);
        pair
    }

    fn up(&self) {
        ip_ok(&["-n", &self.outer, "link", "set", "veth1", "up"]);
        ip_ok(&["-n", &self.inner, "link", "set", "veth0", "up"]);
    }

    fn address(&self, cidr: &str) {
        ip_ok(&["-n", &self.inner, "addr", "add", cidr, "dev", "veth0"]);
    }

    /// Runs the stub inside `inner` (`ip netns exec` also mounts that namespace's
    /// /sys, which is what the check reads).
    fn run_stub(&self, root: &std::path::Path, pkg: &Package) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.inner, STUB])
            .arg("--target-root")
            .arg(root)
            .args(pkg.args().iter().map(|s| s as &OsStr))
            .env_clear();
        cmd.output().expect("ip netns exec")
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.inner, &self.outer] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn refused(pair: &VethPair, policy: EthernetPolicy, status: &str) {
    let pkg = Package::key_file(opts(policy, TargetLayout::Linux));
    let root = tempfile::tempdir().unwrap();
    let o = pair.run_stub(root.path(), &pkg);
    assert_exit(&o, 11);
    let err = stderr(&o);
    assert!(
        err.starts_with("❌ ERROR: No active Ethernet connection detected\n"),
        "{err}"
    );
    assert!(
        err.contains(&format!("\n  • veth0 - Status: {status}\n")),
        "{err}"
    );
    assert!(
        snapshot(root.path()).is_empty(),
        "wrote under the target root"
    );
}

#[test]
fn veth_down_is_not_active() {
    let pair = VethPair::new();
    refused(&pair, EthernetPolicy::AllowVirtual, "inactive");
}

#[test]
fn veth_up_without_ipv4_is_not_active() {
    let pair = VethPair::new();
    pair.up();
    refused(
        &pair,
        EthernetPolicy::AllowVirtual,
        "active, no IPv4 address",
    );
}

#[test]
fn veth_with_address_is_refused_under_require() {
    let pair = VethPair::new();
    pair.up();
    pair.address("192.0.2.2/24");
    refused(
        &pair,
        EthernetPolicy::Require,
        "active (virtual, not accepted)",
    );
}

#[test]
fn veth_with_address_is_accepted_under_allow_virtual() {
    let pair = VethPair::new();
    pair.up();
    pair.address("192.0.2.2/24");
    let pkg = Package::key_file(opts(EthernetPolicy::AllowVirtual, TargetLayout::Linux));
    let root = tempfile::tempdir().unwrap();
    let o = pair.run_stub(root.path(), &pkg);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("Ethernet connection: veth0 (192.0.2.2, virtual), policy allow-virtual"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("etc/fleet-server/config.yaml")).unwrap(),
        payload().config_yaml
    );
}
