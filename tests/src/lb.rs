//! Real load balancers for the `lb` tests and benchmarks: a private HAProxy (runtime socket in
//! a temporary directory, foreground, no master-worker) and a private nginx (its own prefix,
//! pid file and logs), each on a free loopback port and killed on drop; and cluster nodes that
//! publish their loopback URL, so the load balancer can reach them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, TEST_API_KEY, free_port, require_tool};

/// Starts a node on a free loopback port whose record's `url` is `http://127.0.0.1:<port>`
/// (`server.public_url`), heartbeats 1 s / 3 s.
pub fn start_node(name: &str, cluster_yaml: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = node_config(name, port, dir.path(), cluster_yaml);
    Daemon::start_with_config(name, dir, port, &config)
}

/// The configuration of such a node (also what `lb` commands are given: same cluster).
pub fn node_config(name: &str, port: u16, dir: &Path, cluster_yaml: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  public_url: http://127.0.0.1:{port}\n  state_dir: {state}\ncluster:\n  enabled: true\n  node_name: {name}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{cluster_yaml}auth:\n  api_key: {TEST_API_KEY}\n",
        state = dir.join("state").display(),
    )
}

/// The node id answering a plain GET of the health endpoint on `port` (through a load
/// balancer: whichever node it picked), or `None` when no node answered 200.
pub fn health_via(port: u16) -> Option<String> {
    let (status, body) = crate::get_json(port, "/api/fleet/cluster/health", None).ok()?;
    if status != 200 {
        return None;
    }
    body["node_id"].as_str().map(str::to_string)
}

/// Node ids seen in `n` requests through a load balancer on `port` (`None` for a failure).
pub fn spread(port: u16, n: usize) -> Vec<Option<String>> {
    (0..n).map(|_| health_via(port)).collect()
}

/// A private HAProxy with a frontend on `port`, a backend `fleet` health-checking the nodes'
/// health endpoint, and its runtime API on `socket` (`level admin`).
#[derive(Debug)]
pub struct Haproxy {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub socket: PathBuf,
}

impl Haproxy {
    pub fn start() -> Haproxy {
        require_tool("haproxy");
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let mut h = Haproxy {
            child: None,
            socket: dir.path().join("admin.sock"),
            dir,
            port: 0,
        };
        let mut last = String::new();
        for _ in 0..5 {
            h.port = free_port();
            match h.spawn() {
                Ok(()) => return h,
                Err(e) => last = e,
            }
        }
        panic!("haproxy did not start: {last}");
    }

    fn config(&self) -> String {
        format!(
            "global\n    stats socket {sock} mode 600 level admin\n    pidfile {dir}/haproxy.pid\n\
defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
frontend fe\n    bind 127.0.0.1:{port}\n    default_backend fleet\n\
backend fleet\n    balance roundrobin\n    option httpchk GET /api/fleet/cluster/health\n    http-check expect status 200\n",
            sock = self.socket.display(),
            dir = self.dir.path().display(),
            port = self.port
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let cfg = self.dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, self.config()).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        // -db: foreground, no daemon, no master-worker.
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning haproxy: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.command("show info").is_ok_and(|r| r.contains("Name:")) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("haproxy exited ({status}): {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "haproxy's runtime socket did not answer: {}",
            self.log()
        ))
    }

    /// One runtime API command, answered in full.
    pub fn command(&self, cmd: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The server names in backend `fleet` (`None` while HAProxy does not answer).
    pub fn servers(&self) -> Option<Vec<String>> {
        let r = self.command("show servers state fleet").ok()?;
        if !r.starts_with('1') {
            return None;
        }
        Some(
            r.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && l.trim() != "1")
                .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
                .collect(),
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it and starts it again with the same configuration: no dynamic servers.
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    panic!("haproxy did not restart: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- haproxy log ----\n{}", self.log());
        }
        self.stop();
    }
}

/// A private nginx proxying `127.0.0.1:<port>` to the upstream `fleet` that `upstream.conf`
/// in its directory declares (the file `lb render` writes; it must exist before `start`).
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Nginx {
    pub fn upstream_file(dir: &Path) -> PathBuf {
        dir.join("upstream.conf")
    }

    /// The reload command for `lb render --reload`.
    pub fn reload_command(&self) -> String {
        format!(
            "nginx -p {dir} -c {dir}/nginx.conf -s reload",
            dir = self.dir.path().display()
        )
    }

    /// Starts nginx in `dir` (which holds `upstream.conf`).
    pub fn start(dir: tempfile::TempDir) -> Nginx {
        require_tool("nginx");
        let mut n = Nginx {
            child: None,
            dir,
            port: 0,
        };
        let mut last = String::new();
        for _ in 0..5 {
            n.port = free_port();
            match n.spawn() {
                Ok(()) => return n,
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path().display().to_string();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
events {{ worker_connections 64; }}\n\
http {{\n    access_log off;\n    client_body_temp_path {d}/tmp;\n    proxy_temp_path {d}/tmp;\n\
    include {d}/upstream.conf;\n\
    server {{\n        listen 127.0.0.1:{port};\n        location / {{ proxy_pass http://fleet; proxy_next_upstream error timeout http_502 http_503; }}\n    }}\n}}\n",
            port = self.port
        );
        std::fs::write(self.dir.path().join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(self.dir.path().join("tmp")).map_err(|e| e.to_string())?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning nginx: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("nginx exited ({status}): {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("nginx did not listen: {}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- nginx error log ----\n{}", self.log());
        }
        if let Some(mut c) = self.child.take() {
            // SIGQUIT: the master stops its workers and removes its pid file.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A long-running `fleet-server lb …` process, its output in a log file, killed on drop.
#[derive(Debug)]
pub struct LbProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl LbProcess {
    /// Runs `fleet-server <args>` with its stdout and stderr in `log`.
    pub fn spawn(args: &[&str], log: PathBuf) -> LbProcess {
        let f = std::fs::File::create(&log).expect("lb log file");
        let child = Command::new(crate::fleet_server_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log handle"))
            .stderr(f)
            .spawn()
            .expect("spawning fleet-server lb");
        LbProcess {
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and its exit code (it must stop by itself within 5 s).
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- fleet-server lb log ----\n{}", self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
