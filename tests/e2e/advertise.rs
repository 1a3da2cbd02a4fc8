//! The URL and addresses a node publishes, on a host in its own network namespace with a link-local address, a host-only bridge (`bridge100`), a side network and a default route: the default route's address wins, link-local and host-only ones are left out.

use std::process::Command;
use std::time::Duration;

use fleet_tests::netns::require_root;
use fleet_tests::{Daemon, TEST_API_KEY, require_tool, wait_for};

/// A network namespace made by this test, removed on drop (also on panic).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("fleet-adv-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    fn run(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_route_first_no_link_local_no_host_only_bridge() {
    require_root();
    require_tool("ip");
    let ns = Netns::new();
    ns.run(&["link", "set", "lo", "up"]);
    // The LAN: a self-assigned address (lowest of all) and the real one, with the default route.
    // veth pairs with both ends inside (no dummy module needed).
    ns.run(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ]);
    ns.run(&["link", "set", "lan0p", "up"]);
    ns.run(&["addr", "add", "169.254.20.20/16", "dev", "lan0"]);
    ns.run(&["addr", "add", "203.0.113.10/24", "dev", "lan0"]);
    ns.run(&["link", "set", "lan0", "up"]);
    ns.run(&[
        "route",
        "add",
        "default",
        "via",
        "203.0.113.1",
        "dev",
        "lan0",
    ]);
    // A side network, lower than the LAN's address: the old rule (lowest address) took it.
    ns.run(&[
        "link", "add", "side0", "type", "veth", "peer", "name", "side0p",
    ]);
    ns.run(&["link", "set", "side0p", "up"]);
    ns.run(&["addr", "add", "198.51.100.10/24", "dev", "side0"]);
    ns.run(&["link", "set", "side0", "up"]);
    // Internet Sharing's host-only bridge, lower still.
    ns.run(&["link", "add", "bridge100", "type", "bridge"]);
    ns.run(&["addr", "add", "192.0.2.1/24", "dev", "bridge100"]);
    ns.run(&["link", "set", "bridge100", "up"]);

    let share = tempfile::tempdir().unwrap();
    let cluster = format!(
        "  backend: storage\n  storage_path: {}\n",
        share.path().display()
    );
    let d = Daemon::start_in_netns(&ns.0, "adv", &cluster);
    d.wait_health(200, Duration::from_secs(15));
    let status = wait_for(
        "the node in the cluster status",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let (code, v) = d
                .api_get("/api/fleet/cluster/status", Some(TEST_API_KEY))
                .ok()?;
            (code == 200 && v["nodes"].as_array().is_some_and(|n| !n.is_empty())).then_some(v)
        },
    );
    let node = &status["nodes"][0];
    assert_eq!(
        node["url"].as_str(),
        Some("http://203.0.113.10:8768"),
        "{node}"
    );
    let addresses: Vec<&str> = node["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(addresses, ["203.0.113.10", "198.51.100.10"], "{node}");
    drop(d);
}
