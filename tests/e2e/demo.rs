//! `make demo` stays working: the script runs with this build's binaries (`BIN_DIR`), stops
//! after showing the status (`DEMO_ONCE=1`), and must show two active nodes on both backends;
//! run to its "Press Ctrl-C" line, it stops cleanly on SIGTERM too.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet_tests::{bin_path, free_port, require_tool};

/// Two free ports in a row: the primary's and node2's.
fn two_ports() -> u16 {
    loop {
        let p = free_port();
        if p < 65_000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    }
}

/// `bash scripts/demo.sh` with this build's binaries, on `port` and `port + 1`; `timeout`
/// (seconds) wraps it in coreutils' `timeout`.
fn demo_command(backend: &str, port: u16, timeout: Option<u32>) -> Command {
    require_tool("curl");
    require_tool("python3");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let bin_dir = bin_path("fleet-server").parent().unwrap().to_path_buf();
    let mut cmd = match timeout {
        Some(secs) => {
            let mut c = Command::new("timeout");
            c.arg(secs.to_string()).arg("bash");
            c
        }
        None => Command::new("bash"),
    };
    cmd.arg(repo.join("scripts/demo.sh"))
        .env("BACKEND", backend)
        .env("BIN_DIR", &bin_dir)
        .env("PORT", port.to_string());
    cmd
}

/// Stops whatever a failed run leaves: the script's process group (the primary, the sleeper)
/// and node2's daemon, which daemonized into a session of its own; then the demo directory.
/// After a clean stop all of them are already gone.
struct DemoGuard {
    pgid: i32,
    demo_dir: Option<std::path::PathBuf>,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Some(dir) = &self.demo_dir {
            let pid_file = dir.join("node2/run/fleet-server.pid");
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The lines of `stream`, read on a thread of their own.
fn line_channel(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn run_demo(backend: &str) -> String {
    let out = demo_command(backend, two_ports(), Some(120))
        .env("DEMO_ONCE", "1")
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

#[test]
fn demo_stops_cleanly_on_sigterm() {
    let port = two_ports();
    let mut child = demo_command("storage", port, None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting scripts/demo.sh");
    let mut guard = DemoGuard {
        pgid: child.id() as i32,
        demo_dir: None,
    };
    // Both streams are read on their own threads, so no read here can block past a deadline:
    // a demo that stalls fails the test with what it printed so far.
    let lines = line_channel(child.stdout.take().unwrap());
    let errors = line_channel(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(dir) = line
                    .split("Wrote ")
                    .nth(1)
                    .and_then(|p| p.strip_suffix("/primary/config.yaml"))
                {
                    guard.demo_dir = Some(std::path::PathBuf::from(dir));
                }
                if line.contains("Press Ctrl-C to stop the demo.") {
                    ready = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if !ready {
        drop(guard);
        let _ = child.wait();
        let err: Vec<String> = errors.try_iter().collect();
        panic!(
            "the demo did not reach its prompt within 120 s:\n{seen}\nstderr:\n{}",
            err.join("\n")
        );
    }
    let demo_dir = guard
        .demo_dir
        .clone()
        .unwrap_or_else(|| panic!("no demo directory in:\n{seen}"));
    assert!(demo_dir.exists());

    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            drop(guard);
            let _ = child.wait();
            panic!("the demo did not stop within 15 s of SIGTERM:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the script printed while stopping; a process still holding its stdout would
    // keep the channel open, so this waits at most 5 s.
    let mut rest = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => rest.push(line),
            Err(_) => break,
        }
    }
    let rest = rest.join("\n");
    assert!(status.success(), "exit {status:?}:\n{seen}{rest}");
    assert!(rest.contains("Stopped."), "{rest}");
    assert!(!demo_dir.exists(), "{} left behind", demo_dir.display());
    // Nothing of the script's process group outlives it (the primary, the idle sleeper).
    let group_gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(guard.pgid), None).is_err()
    });
    assert!(group_gone, "processes of the demo's group outlived it");
    // Both nodes are gone: their ports are free again.
    for p in [port, port + 1] {
        let free = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        assert!(free, "port {p} still in use after the demo stopped");
    }
}
