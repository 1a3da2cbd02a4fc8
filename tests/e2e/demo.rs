//! `make demo` stays working: the script runs with this build's binaries (`BIN_DIR`), stops
//! after showing the status (`DEMO_ONCE=1`), and must show two active nodes on both backends.

use std::process::Command;

use fleet_tests::{bin_path, free_port, require_tool};

fn run_demo(backend: &str) -> String {
    require_tool("curl");
    require_tool("python3");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let bin_dir = bin_path("fleet-server").parent().unwrap().to_path_buf();
    // Two ports in a row: the primary's and node2's.
    let port = loop {
        let p = free_port();
        if p < 65_000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let out = Command::new("timeout")
        .arg("120")
        .arg("bash")
        .arg(repo.join("scripts/demo.sh"))
        .env("DEMO_ONCE", "1")
        .env("BACKEND", backend)
        .env("BIN_DIR", &bin_dir)
        .env("PORT", port.to_string())
        .output()
        .expect("running scripts/demo.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed:\n{text}");
    text
}

#[test]
fn demo_on_the_storage_backend_shows_two_active_nodes() {
    let text = run_demo("storage");
    assert!(text.contains("Active Nodes: 2"), "{text}");
    assert!(
        text.contains("node2 | ") && text.contains("✅ Registered node in cluster: node2-"),
        "{text}"
    );
    assert!(
        text.contains("Dashboard: http://127.0.0.1:") && text.contains("(login: admin / "),
        "{text}"
    );
    assert!(text.contains("Stopped."), "{text}");
}

#[test]
fn demo_on_a_private_redis_shows_two_active_nodes() {
    require_tool("redis-server");
    let text = run_demo("redis");
    assert!(
        text.contains("Backend: redis") && text.contains("Active Nodes: 2"),
        "{text}"
    );
}
