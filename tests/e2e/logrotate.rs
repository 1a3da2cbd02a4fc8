//! The daemon's own log file rotated as macOS newsyslog does it (rename, new file, SIGHUP to the pid file's process) while lines are being written: none lost, new lines in the new file, the old descriptor closed; and the pid file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_tests::{fleet_server_bin, free_port, get_json, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How many log lines the client makes (each a failed login naming `probe-<n>`).
const PROBES: usize = 300;
/// After these many probes, a rotation.
const ROTATE_AT: [usize; 2] = [100, 200];

/// A failed login for `user`: the daemon logs one line naming the user before it answers.
fn failed_login(port: u16, user: &str) -> std::io::Result<u16> {
    // The form's token must be one the server issued (issue 14): fetch the form first.
    let token = login_token(port)?;
    let body = format!("username={user}&password=x&csrf={token}");
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: fleet_login={token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// The login form's token, from the cookie `GET /login` sets.
fn login_token(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    resp.lines()
        .find_map(|l| {
            let v = l.strip_prefix("set-cookie: fleet_login=")?;
            Some(v.split(';').next()?.to_string())
        })
        .ok_or_else(|| std::io::Error::other(format!("no login cookie in:\n{resp}")))
}

/// What newsyslog does: shift `log.N` up, rename `log` to `log.0`, create a new `log` with the
/// conf line's mode, signal the pid file's process with SIGHUP.
fn rotate(log: &Path, pid: Pid) {
    let n = |i: u32| PathBuf::from(format!("{}.{i}", log.display()));
    if n(0).exists() {
        std::fs::rename(n(0), n(1)).unwrap();
    }
    std::fs::rename(log, n(0)).unwrap();
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o640)
        .open(log)
        .unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
}

/// The paths the process's descriptors point to (`/proc/<pid>/fd`).
fn open_paths(pid: Pid) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

struct Stop(Option<std::process::Child>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn newsyslog_rotation_loses_no_line_and_closes_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: false\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("fleet-server.log");
    let pid_file = dir.path().join("fleet-server.pid");
    // What launchd's StandardOutPath would catch: only what precedes logging.
    let stdio = std::fs::File::create(dir.path().join("stdio.log")).unwrap();
    let child = Command::new(fleet_server_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--log-file")
        .arg(&log)
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(stdio.try_clone().unwrap())
        .stderr(stdio)
        .spawn()
        .unwrap();
    let mut guard = Stop(Some(child));
    let pid = Pid::from_raw(guard.0.as_ref().unwrap().id() as i32);
    let written: i32 = wait_for(
        "the pid file",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok(),
    );
    assert_eq!(written, pid.as_raw(), "the pid file names the daemon");
    wait_for(
        "health 200",
        Duration::from_secs(10),
        Duration::from_millis(25),
        || {
            matches!(
                get_json(port, "/api/fleet/cluster/health", None),
                Ok((200, _))
            )
            .then_some(())
        },
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o640,
        "the log is created group-readable, not world-readable"
    );

    // The client keeps logging while the main thread rotates twice.
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let client = std::thread::spawn(move || {
        for i in 0..PROBES {
            let status = failed_login(port, &format!("probe-{i}")).expect("login request");
            assert!(
                status == 401 || status == 429 || status == 200,
                "status {status}"
            );
            let _ = tx.send(i + 1);
        }
    });
    let mut done = 0;
    for (k, at) in ROTATE_AT.iter().enumerate() {
        while done < *at {
            done = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("client progress");
        }
        rotate(&log, pid);
        let reopened = wait_for(
            "the reopen line in the new file",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let text = std::fs::read_to_string(&log).ok()?;
                text.contains("SIGHUP: log file").then_some(text)
            },
        );
        assert!(reopened.contains("reopened"), "{reopened}");
        let rotated = PathBuf::from(format!("{}.0", log.display()));
        let fds = open_paths(pid);
        assert!(
            !fds.iter().any(|p| p == &rotated.display().to_string()
                || p.contains("(deleted)") && p.contains("fleet-server.log")),
            "rotation {k}: the old log is still open: {fds:?}"
        );
        // The daemon's own descriptor, and stdout and stderr pointed at it too.
        assert_eq!(
            fds.iter()
                .filter(|p| **p == log.display().to_string())
                .count(),
            3,
            "rotation {k}: the new log is open as the log, stdout and stderr: {fds:?}"
        );
    }
    client.join().expect("client thread");

    let files = [
        PathBuf::from(format!("{}.1", log.display())),
        PathBuf::from(format!("{}.0", log.display())),
        log.clone(),
    ];
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for i in 0..PROBES {
        let needle = format!("(user \"probe-{i}\")");
        let count: usize = texts.iter().map(|t| t.matches(&needle).count()).sum();
        assert_eq!(
            count, 1,
            "probe-{i} appears {count} times across the rotated logs"
        );
    }
    for t in &texts {
        assert!(
            t.lines().all(|l| l.len() >= 20 && l.as_bytes()[4] == b'-'),
            "every line is whole and starts with its timestamp:\n{t}"
        );
    }
    assert!(
        texts[2].contains(&format!("(user \"probe-{}\")", PROBES - 1)),
        "the last lines are in the new file"
    );
    assert!(
        texts[0].contains("Fleet server started"),
        "the first file has the start"
    );

    kill(pid, Signal::SIGTERM).unwrap();
    let status = guard.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !pid_file.exists(),
        "the pid file is removed at a clean stop"
    );
    let stdio = std::fs::read_to_string(dir.path().join("stdio.log")).unwrap();
    assert!(
        !stdio.contains("probe-"),
        "log lines went to stdout/stderr too:\n{stdio}"
    );
    let last = std::fs::read_to_string(&log).unwrap();
    assert!(last.contains("stopped"), "{last}");
}

#[test]
fn sighup_without_a_log_file_is_harmless() {
    let share = tempfile::tempdir().unwrap();
    let d = fleet_tests::Daemon::start(
        "hup",
        &format!(
            "  backend: storage\n  storage_path: {}\n",
            share.path().display()
        ),
    );
    d.wait_health(200, Duration::from_secs(10));
    d.signal(Signal::SIGHUP);
    d.wait_log(
        "SIGHUP: logging to stderr, nothing to reopen",
        Duration::from_secs(5),
    );
    d.wait_health(200, Duration::from_secs(5));
}
