//! Issue 14, part B: what a node's configuration, a planted record or a planted cookie can no
//! longer do. Real daemons and a real redis-server; each attempt refused, nothing left behind.

use std::path::Path;

use fleet_server::cluster::{self, NodeRecord};
use fleet_server::config::Config;
use fleet_tests::{RedisServer, run_cli};

/// Control bytes an attacker's record may carry: ESC, CR, LF, the 8-bit CSI, DEL.
fn has_control_bytes(s: &str) -> bool {
    s.chars().any(|c| c != '\n' && c.is_control()) || s.contains("\r")
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("config.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A node writes its record with ESC, CR and LF in it (through the backend's own register, as
/// a node with its own credential can): `cluster nodes` and `cluster info` print no control
/// byte, the row says `invalid`, and the JSON keeps the value escaped and marks it.
#[test]
fn cluster_nodes_prints_no_control_bytes_from_a_forged_record() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "server:\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: admin-box\n  heartbeat_interval: 1\n  heartbeat_timeout: 30\n{}",
            dir.path().join("state").display(),
            redis.cluster_yaml()
        ),
    );
    let config = Config::load(&cfg).unwrap();
    let evil = NodeRecord {
        id: "evil-abc123".into(),
        name: "evil".into(),
        hostname: "h\x1b[2J\x1b[H".into(),
        addresses: vec!["192.0.2.9\r\nfake-node  fake-aaaaaa  203.0.113.1  active".into()],
        version: "0.1.0\u{9b}31m\x7f".into(),
        os: "linux".into(),
        started_at: 1,
        url: "http://192.0.2.9:8768/\x1b]0;pwned\x07".into(),
    };
    let good = NodeRecord {
        id: "good-abc123".into(),
        name: "good".into(),
        hostname: "good.example".into(),
        addresses: vec!["192.0.2.10".into()],
        version: "0.1.0".into(),
        os: "linux".into(),
        started_at: 1,
        url: "http://192.0.2.10:8768".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = cluster::open(&config).unwrap();
        backend.register(&evil).await.unwrap();
        backend.register(&good).await.unwrap();
    });
    let c = cfg.to_str().unwrap();
    for args in [
        vec!["cluster", "nodes", "--config", c],
        vec!["cluster", "info", "--config", c],
        vec!["cluster", "nodes", "--json", "--config", c],
        vec!["cluster", "info", "--json", "--config", c],
    ] {
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 0, "{args:?}\n{out}\n{err}");
        assert!(
            !has_control_bytes(&out) && !has_control_bytes(&err),
            "{args:?} printed control bytes:\n{out:?}\n{err:?}"
        );
        assert!(out.contains("good-abc123"), "{out}");
        assert!(out.contains("evil-abc123"), "{out}");
        if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let list = v
                .as_array()
                .or_else(|| v["nodes"].as_array())
                .unwrap()
                .clone();
            let evil_row = list.iter().find(|m| m["id"] == "evil-abc123").unwrap();
            assert!(evil_row["invalid"].is_string(), "{evil_row}");
            assert_eq!(evil_row["hostname"], "h\x1b[2J\x1b[H", "the value, escaped");
            let good_row = list.iter().find(|m| m["id"] == "good-abc123").unwrap();
            assert!(good_row.get("invalid").is_none(), "{good_row}");
        } else {
            // The forged row did not become a row of its own, and the record is flagged.
            assert!(
                !out.lines().any(|l| l.starts_with("fake-node")),
                "a forged row:\n{out}"
            );
            let row = out.lines().find(|l| l.starts_with("evil ")).unwrap();
            assert!(row.contains("invalid"), "{out}");
            assert!(out.contains("evil-abc123 is not trusted"), "{out}");
            let row = out.lines().find(|l| l.starts_with("good ")).unwrap();
            assert!(row.contains("active"), "{out}");
        }
    }
}
