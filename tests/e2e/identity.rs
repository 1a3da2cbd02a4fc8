//! A node without a configured name, started under hostname `alpha`, stopped, started under hostname `beta` (each in its own UTS namespace): it keeps its name and its id.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_tests::{TEST_API_KEY, fleet_server_bin, free_port, get_json, require_tool, wait_for};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fleet-server serve` in a new UTS namespace whose hostname is `host`.
fn start_as(host: &str, cfg: &Path, log: &Path) -> Node {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(require_tool("unshare"))
        .args([
            "--uts",
            "--",
            "/bin/sh",
            "-c",
            "hostname \"$0\" && exec \"$@\"",
        ])
        .arg(host)
        .arg(fleet_server_bin())
        .args(["serve", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Node(child)
}

fn health(port: u16) -> serde_json::Value {
    wait_for(
        "health 200",
        Duration::from_secs(15),
        Duration::from_millis(25),
        || match get_json(port, "/api/fleet/cluster/health", None) {
            Ok((200, v)) => Some(v),
            _ => None,
        },
    )
}

fn stop(mut n: Node) {
    let pid = nix::unistd::Pid::from_raw(n.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if n.0.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the node did not stop on SIGTERM");
}

#[test]
fn hostname_change_keeps_the_name_and_the_id() {
    require_tool("hostname");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let state = dir.path().join("state");
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let cfg = dir.path().join("config.yaml");
    // No cluster.node_name: the hostname gives it.
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  backend: storage\n  storage_path: {}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\nauth:\n  api_key: {TEST_API_KEY}\n",
            state.display(),
            share.display()
        ),
    )
    .unwrap();

    let first = start_as("alpha", &cfg, &dir.path().join("alpha.log"));
    let h = health(port);
    let id = h["node_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("alpha-"), "{h}");
    stop(first);
    assert_eq!(
        std::fs::read_to_string(state.join("node_name"))
            .unwrap()
            .trim(),
        "alpha"
    );

    let second = start_as("beta", &cfg, &dir.path().join("beta.log"));
    let h = health(port);
    assert_eq!(h["node_id"].as_str(), Some(id.as_str()), "{h}");
    let log = std::fs::read_to_string(dir.path().join("beta.log")).unwrap();
    assert!(
        log.contains(&format!("✅ Cluster mode ENABLED (node: {id}")),
        "{log}"
    );
    // It really ran under the other hostname: the record it publishes says so, and its name
    // is still the first one.
    let status = wait_for(
        "the node's record",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let (_, v) = get_json(port, "/api/fleet/cluster/status", Some(TEST_API_KEY)).ok()?;
            v.to_string().contains("\"beta\"").then_some(v)
        },
    );
    assert_eq!(status["node_name"].as_str(), Some("alpha"), "{status}");
    assert!(!status.to_string().contains("beta-"), "{status}");
    stop(second);
}

/// Issue 14, item 6: a `node_id` in the state directory that is a symlink (here to a file
/// holding a secret) or a file of another user is refused at start with an error naming the
/// file; the target's content never reaches the log.
#[test]
fn a_symlinked_or_foreign_node_id_is_refused_and_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let share = dir.path().join("share");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&share).unwrap();
    let secret = dir.path().join("secret");
    let canary = "node-secretvalue-do-not-log";
    std::fs::write(&secret, format!("{canary}\n")).unwrap();
    std::os::unix::fs::symlink(&secret, state.join("node_id")).unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: n1\n  backend: storage\n  storage_path: {}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\nauth:\n  api_key: {TEST_API_KEY}\n",
            state.display(),
            share.display()
        ),
    )
    .unwrap();
    let run = || {
        let mut child = Command::new(fleet_server_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon started on a refused node_id");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success(), "it must refuse to start");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let log = run();
    assert!(log.contains("is a symbolic link"), "{log}");
    assert!(log.contains("node_id"), "{log}");
    assert!(
        !log.contains("secretvalue"),
        "the target's content was logged:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        format!("{canary}\n"),
        "the target is untouched"
    );

    // A regular file of another user: refused the same way.
    std::fs::remove_file(state.join("node_id")).unwrap();
    std::fs::write(state.join("node_id"), format!("{canary}\n")).unwrap();
    std::os::unix::fs::chown(state.join("node_id"), Some(65534), Some(65534)).unwrap();
    let log = run();
    assert!(log.contains("owned by uid 65534"), "{log}");
    assert!(
        !log.contains("secretvalue"),
        "the content was logged:\n{log}"
    );
}
