//! The test kit: a private `redis-server` per test, the built `fleet-server` binary run as a
//! black box, and one small HTTP client (`http`). Every wait is bounded; everything started is stopped on
//! drop, and a failing test gets the server's log dumped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod backends;
pub mod etcd;
pub mod etcd_cluster;
pub mod flood;
pub mod http;
pub mod install;
pub mod lb;
pub mod netns;
pub mod pkginstall;
pub mod pki;
pub mod sentinel;
pub mod web;

/// A port nobody listens on right now (the OS picks it; a race with another process is
/// possible but rare, and the callers retry on bind errors).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("reading its address").port()
}

/// Fails loudly when a tool the tests need is missing.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` not found: run scripts/install-deps.sh (it installs every tool the tests need)"
    );
}

/// Polls `f` every `step` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(step);
    }
}

/// A private redis-server on a free loopback port, with no persistence, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub password: Option<String>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The address it binds and is reached at (`127.0.0.1` unless started in a namespace).
    pub host: String,
    /// The network namespace it runs in, if any (`command` then connects from inside it).
    pub netns: Option<String>,
}

impl RedisServer {
    /// Starts one without a password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None, &[])
    }

    /// Starts one with `requirepass` and extra arguments.
    pub fn start_with(password: Option<&str>, extra: &[&str]) -> RedisServer {
        require_tool("redis-server");
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut s = RedisServer {
                child: None,
                port: free_port(),
                password: password.map(str::to_string),
                dir: tempfile::tempdir_in(dir.path()).expect("temp dir"),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                host: "127.0.0.1".into(),
                netns: None,
            };
            match s.spawn() {
                Ok(()) => {
                    // Keep the parent alive with the server.
                    s.dir = dir;
                    return s;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// Starts one inside the network namespace `netns` (`ip netns exec`), bound to `host` on
    /// the standard port 6379 (the namespace has its own ports), with no persistence.
    pub fn start_in_netns(netns: &str, host: &str, password: Option<&str>) -> RedisServer {
        require_tool("redis-server");
        require_tool("ip");
        let mut s = RedisServer {
            child: None,
            port: 6379,
            password: password.map(str::to_string),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra: Vec::new(),
            host: host.to_string(),
            netns: Some(netns.to_string()),
        };
        if let Err(e) = s.spawn() {
            panic!("redis-server in {netns} did not start: {e}");
        }
        s
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg(&self.host)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path());
        if let Some(pw) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        cmd.args(&self.extra);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self
                .command(&["PING"])
                .is_ok_and(|reply| reply.starts_with("+PONG"))
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                self.child = None;
                return Err(format!("redis-server exited ({status}): {log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("redis-server did not answer PING within 10 s".into())
    }

    /// Sends one command (authenticating first when a password is set); returns the raw reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        match &self.netns {
            Some(ns) => netns::in_netns(ns, || self.command_here(args)),
            None => self.command_here(args),
        }
    }

    fn command_here(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(
            &format!("{}:{}", self.host, self.port)
                .parse()
                .expect("address"),
            Duration::from_secs(1),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = Vec::new();
        let mut push = |args: &[&str]| {
            req.extend(format!("*{}\r\n", args.len()).bytes());
            for a in args {
                req.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
            }
        };
        if let Some(pw) = &self.password {
            push(&["AUTH", pw]);
        }
        push(args);
        s.write_all(&req)?;
        let mut reader = BufReader::new(s);
        if self.password.is_some() {
            let mut auth = String::new();
            reader.read_line(&mut auth)?;
        }
        read_reply(&mut reader)
    }

    /// The server's process id (the benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (as an outage would); its data is gone (no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    panic!("redis-server did not restart: {e}")
                }
                // The port may linger a moment after the kill.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The server's clock (`TIME`), ms since the epoch.
    pub fn time_ms(&self) -> u64 {
        let reply = self.command(&["TIME"]).expect("TIME");
        // `*2 $10 <seconds> $6 <microseconds>`: the two values are the lines without a type mark.
        let values: Vec<u64> = reply
            .lines()
            .filter(|l| !l.starts_with(['*', '$']))
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        match values[..] {
            [secs, micros] => secs * 1000 + micros / 1000,
            _ => panic!("TIME answered {reply:?}"),
        }
    }

    pub fn flushall(&self) {
        let r = self.command(&["FLUSHALL"]).expect("FLUSHALL");
        assert!(r.starts_with("+OK"), "FLUSHALL: {r}");
    }

    /// The `redis_*` lines of a cluster config pointing at this server.
    pub fn cluster_yaml(&self) -> String {
        let mut s = format!(
            "  backend: redis\n  redis_host: {}\n  redis_port: {}\n",
            self.host, self.port
        );
        if let Some(pw) = &self.password {
            s.push_str(&format!("  redis_password: \"{pw}\"\n"));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// A raw RESP connection to a redis-server, kept open: for tests that act as a given ACL user
/// (`AUTH user password`) and watch what happens to an open connection. Reads are bounded.
#[derive(Debug)]
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connects without authenticating.
    pub fn connect(host: &str, port: u16) -> std::io::Result<RespConn> {
        let s = TcpStream::connect_timeout(
            &format!("{host}:{port}").parse().expect("address"),
            Duration::from_secs(1),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(RespConn {
            reader: BufReader::new(s),
        })
    }

    /// Sends one command; returns the raw reply (`+OK\r\n`, `-NOPERM …`, `$-1\r\n`, …), or an
    /// error when the server closed the connection.
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.reader.get_mut().write_all(req.as_bytes())?;
        let reply = read_reply(&mut self.reader)?;
        if reply.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(reply)
    }
}

impl RedisServer {
    /// A new connection to this server, not authenticated (from this namespace: not for a
    /// server started with [`RedisServer::start_in_netns`]).
    pub fn connect(&self) -> std::io::Result<RespConn> {
        RespConn::connect(&self.host, self.port)
    }

    /// `AUTH user password` on a new connection: the reply to AUTH, and the connection.
    pub fn connect_as(&self, user: &str, password: &str) -> std::io::Result<(String, RespConn)> {
        let mut c = self.connect()?;
        let auth = c.call(&["AUTH", user, password])?;
        Ok((auth, c))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log (port {}) ----\n{}",
                self.port,
                self.log()
            );
        }
        self.stop();
    }
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut out = line.clone();
    match line.as_bytes().first() {
        Some(b'$') => {
            let n: i64 = line[1..].trim().parse().unwrap_or(-1);
            if n >= 0 {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                out.push_str(&String::from_utf8_lossy(&buf));
            }
        }
        Some(b'*') => {
            let n: i64 = line[1..].trim().parse().unwrap_or(0);
            for _ in 0..n.max(0) {
                out.push_str(&read_reply(r)?);
            }
        }
        _ => {}
    }
    Ok(out)
}

/// libfaketime's preload library (Debian's `faketime` package), which shifts a process's wall
/// clock; fails loudly when it is missing.
pub fn faketime_library() -> PathBuf {
    let found = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1")))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "libfaketime not found: run scripts/install-deps.sh (it installs every tool the tests need)"
        )
    })
}

/// Runs `cmd` with its wall clock `offset_secs` away from this machine's (libfaketime
/// preloaded); its monotonic clock, which timers use, is left alone.
pub fn with_clock_offset(cmd: &mut Command, offset_secs: i64) -> &mut Command {
    cmd.env("LD_PRELOAD", faketime_library())
        .env("FAKETIME", format!("{offset_secs:+}s"))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}

/// A command's stdout and then its stderr, as text (for assertions and messages).
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// This machine's wall clock, ms since the epoch.
pub fn local_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The `fleet-server` binary cargo built for this test run.
pub fn fleet_server_bin() -> PathBuf {
    bin_path("fleet-server")
}

/// A binary of this workspace in the same target directory as the running test.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first (`cargo build --workspace --bins`, which `make test` does)",
        p.display()
    );
    p
}

/// One HTTP/1.1 request on loopback ([`http::send`], 5 s per read); returns the status and the
/// body (status 0 when the server closed without answering).
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("address"),
        Duration::from_secs(2),
    )?;
    http::send_lenient(
        s,
        "127.0.0.1",
        method,
        path,
        headers,
        b"",
        Duration::from_secs(5),
    )
}

/// `GET` returning the status and the body parsed as JSON (`Null` when it is not JSON).
pub fn get_json(
    port: u16,
    path: &str,
    api_key: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let headers: Vec<(&str, &str)> = api_key.map(|k| ("X-API-Key", k)).into_iter().collect();
    let (status, body) = http("GET", port, path, &headers)?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// The API key the black-box configurations use.
pub const TEST_API_KEY: &str = "test-api-key-0123456789abcdef";

/// A `fleet-server serve` process with its own config, state dir and log file.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub name: String,
    /// The network namespace it runs in, if any (its HTTP helpers then connect from inside).
    pub netns: Option<String>,
    /// Its configuration file (`<dir>/config.yaml` unless started from an installed root).
    config: PathBuf,
}

/// The port `fleet-server` listens on inside a network namespace: the real one, since each
/// namespace has its own port space.
pub const NETNS_SERVER_PORT: u16 = 8768;

impl Daemon {
    /// Starts `fleet-server serve` with a config whose `cluster:` section is `cluster_yaml`
    /// (indented two spaces), heartbeats 1 s / 3 s unless given.
    pub fn start(name: &str, cluster_yaml: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = Daemon::config_text(name, "127.0.0.1", port, dir.path(), cluster_yaml);
        Daemon::start_with_config(name, dir, port, &config)
    }

    /// As [`Daemon::start`], but inside the network namespace `netns` (`ip netns exec`), on
    /// `0.0.0.0:8768` as in production.
    pub fn start_in_netns(netns: &str, name: &str, cluster_yaml: &str) -> Daemon {
        require_tool("ip");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = NETNS_SERVER_PORT;
        let config = Daemon::config_text(name, "0.0.0.0", port, dir.path(), cluster_yaml);
        Daemon::start_with_config_in(Some(netns), name, dir, port, &config)
    }

    fn config_text(name: &str, host: &str, port: u16, dir: &Path, cluster_yaml: &str) -> String {
        let timing = if cluster_yaml.contains("heartbeat_interval") {
            String::new()
        } else {
            "  heartbeat_interval: 1\n  heartbeat_timeout: 3\n".to_string()
        };
        format!(
            "server:\n  host: {host}\n  port: {port}\n  state_dir: {state}\ncluster:\n  enabled: true\n  node_name: {name}\n{timing}{cluster_yaml}auth:\n  api_key: {TEST_API_KEY}\n",
            state = dir.join("state").display(),
        )
    }

    /// Starts `fleet-server serve` with exactly this configuration text.
    pub fn start_with_config(
        name: &str,
        dir: tempfile::TempDir,
        port: u16,
        config: &str,
    ) -> Daemon {
        Daemon::start_with_config_in(None, name, dir, port, config)
    }

    /// As [`Daemon::start_with_config`], inside the network namespace `netns` when given.
    pub fn start_with_config_in(
        netns: Option<&str>,
        name: &str,
        dir: tempfile::TempDir,
        port: u16,
        config: &str,
    ) -> Daemon {
        let cmd = match netns {
            // `ip netns exec` execs the program: the child's pid is the daemon's own.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(fleet_server_bin());
                c
            }
            None => Command::new(fleet_server_bin()),
        };
        Daemon::start_with_command(netns, name, dir, port, config, cmd)
    }

    /// As [`Daemon::start_with_config`], with at most `nofile` open descriptors
    /// (`prlimit --nofile`, which execs the daemon: the child's pid is the daemon's own).
    pub fn start_with_fd_limit(
        name: &str,
        dir: tempfile::TempDir,
        port: u16,
        config: &str,
        nofile: u32,
    ) -> Daemon {
        let mut cmd = Command::new(require_tool("prlimit"));
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(fleet_server_bin());
        Daemon::start_with_command(None, name, dir, port, config, cmd)
    }

    /// As [`Daemon::start`], with the process's wall clock `offset_secs` away from this
    /// machine's (libfaketime preloaded; timers, on the monotonic clock, run as usual): a node
    /// whose clock is wrong, for the checks that the cluster's times are the backend's.
    pub fn start_with_clock_offset(name: &str, cluster_yaml: &str, offset_secs: i64) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = Daemon::config_text(name, "127.0.0.1", port, dir.path(), cluster_yaml);
        let mut cmd = Command::new(fleet_server_bin());
        with_clock_offset(&mut cmd, offset_secs);
        Daemon::start_with_command(None, name, dir, port, &config, cmd)
    }

    /// Runs `cmd` (which ends in the daemon's binary) with `serve --config`.
    fn start_with_command(
        netns: Option<&str>,
        name: &str,
        dir: tempfile::TempDir,
        port: u16,
        config: &str,
        cmd: Command,
    ) -> Daemon {
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, config).expect("writing config");
        Daemon::serve_with(netns, name, dir, port, cfg, &[], cmd)
    }

    /// As [`Daemon::start`], run as `uid` (and the group of the same number, no supplementary
    /// groups: `setpriv`), its directory, configuration and state directory owned by that uid
    /// (the daemon refuses a configuration owned by anyone but itself or root). The directory
    /// is made traversable by everyone, so that the daemon reaches it.
    pub fn start_as(uid: u32, name: &str, cluster_yaml: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = Daemon::config_text(name, "127.0.0.1", port, dir.path(), cluster_yaml);
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, config).expect("writing config");
        std::fs::create_dir_all(dir.path().join("state")).expect("the state directory");
        chown_tree(dir.path(), uid);
        Daemon::serve_with(
            None,
            name,
            dir,
            port,
            cfg,
            &[],
            as_uid(uid, &fleet_server_bin()),
        )
    }

    /// `fleet-server serve --config <root>/etc/fleet-server/config.yaml --root <root> --port P`
    /// as `uid` (see [`Daemon::start_as`]): a node installed into `root` (by the installer stub's
    /// `--target-root`), every file of it chowned to `uid` first.
    pub fn serve_root_as(uid: u32, name: &str, root: tempfile::TempDir, port: u16) -> Daemon {
        let cfg = root.path().join("etc/fleet-server/config.yaml");
        assert!(cfg.is_file(), "no configuration at {}", cfg.display());
        chown_tree(root.path(), uid);
        let root_arg = root.path().to_path_buf();
        let port_arg = port.to_string();
        Daemon::serve_with(
            None,
            name,
            root,
            port,
            cfg,
            &[
                std::ffi::OsStr::new("--root"),
                root_arg.as_os_str(),
                std::ffi::OsStr::new("--port"),
                std::ffi::OsStr::new(&port_arg),
            ],
            as_uid(uid, &fleet_server_bin()),
        )
    }

    /// Runs `cmd` (which ends in the daemon's binary) with `serve --config cfg ARGS`, its
    /// output in `<dir>/daemon.log` (made by this process: the daemon writes to the handle).
    fn serve_with(
        netns: Option<&str>,
        name: &str,
        dir: tempfile::TempDir,
        port: u16,
        cfg: PathBuf,
        args: &[&std::ffi::OsStr],
        mut cmd: Command,
    ) -> Daemon {
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning fleet-server");
        Daemon {
            child: Some(child),
            port,
            dir,
            name: name.to_string(),
            netns: netns.map(str::to_string),
            config: cfg,
        }
    }

    /// `GET` on this daemon's API, from inside its namespace when it runs in one.
    pub fn api_get(
        &self,
        path: &str,
        api_key: Option<&str>,
    ) -> std::io::Result<(u16, serde_json::Value)> {
        match &self.netns {
            Some(ns) => netns::in_netns(ns, || get_json(self.port, path, api_key)),
            None => get_json(self.port, path, api_key),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        wait_for(
            &format!("`{needle}` in the log of {}:\n{}", self.name, self.log()),
            limit,
            Duration::from_millis(25),
            || self.log().contains(needle).then_some(()),
        );
    }

    /// Waits until the health endpoint answers `status`.
    pub fn wait_health(&self, status: u16, limit: Duration) -> serde_json::Value {
        wait_for(
            &format!("health {status} from {}", self.name),
            limit,
            Duration::from_millis(25),
            || match self.api_get("/api/fleet/cluster/health", None) {
                Ok((s, body)) if s == status => Some(body),
                _ => None,
            },
        )
    }

    /// This node's id, from its health answer.
    pub fn node_id(&self) -> String {
        let (_, body) = self
            .api_get("/api/fleet/cluster/health", None)
            .expect("health");
        body["node_id"].as_str().unwrap_or_default().to_string()
    }

    /// The ids of the active nodes, as this node's API lists them.
    pub fn active_ids(&self) -> Option<Vec<String>> {
        let (s, body) = self
            .api_get("/api/fleet/cluster/nodes", Some(TEST_API_KEY))
            .ok()?;
        if s != 200 {
            return None;
        }
        Some(
            body["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "active")
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Waits until this node lists an active node whose id starts with `prefix`; returns its id.
    pub fn wait_listed(&self, prefix: &str, limit: Duration) -> String {
        wait_for(
            &format!("{} to list a node {prefix}… as active", self.name),
            limit,
            Duration::from_millis(10),
            || {
                self.active_ids()?
                    .into_iter()
                    .find(|id| id.starts_with(prefix))
            },
        )
    }

    /// Waits until this node lists exactly `expected` as the active nodes.
    pub fn wait_active(&self, expected: &[&str], limit: Duration) {
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(
            &format!("active nodes {want:?} as seen by {}", self.name),
            limit,
            Duration::from_millis(25),
            || {
                let mut ids = self.active_ids()?;
                ids.sort();
                (ids == want).then_some(())
            },
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Waits for the process to exit; returns its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("daemon already reaped");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {limit:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- fleet-server log ({}) ----\n{}", self.name, self.log());
        }
        self.kill9();
    }
}

/// The two ways a node leaves, as every backend must handle them: `c` is killed with -9 and
/// expires (not before 2 s, within the 3 s timeout and a heartbeat), then `b` gets SIGTERM,
/// exits 0 within 5 s and is gone from `a`'s list at once. `a`, `b`, `c` start active.
/// Returns the detection time and the leave time.
pub fn kill9_then_sigterm(a: &Daemon, b: &mut Daemon, c: &mut Daemon) -> (Duration, Duration) {
    let (ia, ib) = (a.node_id(), b.node_id());
    let killed = Instant::now();
    c.kill9();
    a.wait_active(&[&ia, &ib], Duration::from_secs(8));
    let detected = killed.elapsed();
    assert!(detected >= Duration::from_secs(2), "expired too early");

    let termed = Instant::now();
    b.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0), "{}", b.log());
    a.wait_active(&[&ia], Duration::from_millis(500));
    (detected, termed.elapsed())
}

/// Runs the built `fleet-server` with arguments; returns the exit code, stdout and stderr.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(fleet_server_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running fleet-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command that runs `program` as `uid`, with the group of the same number and no
/// supplementary groups (`setpriv --reuid U --regid U --clear-groups`; fails loudly when
/// `setpriv` is missing). The uid needs no `/etc/passwd` entry.
pub fn as_uid(uid: u32, program: &Path) -> Command {
    let mut cmd = Command::new(require_tool("setpriv"));
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    cmd
}

/// What [`run_as`] saw: the exit code (None when killed by a signal) and the output.
#[derive(Debug, Clone)]
pub struct AsOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl AsOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Whether it failed with the file system's refusal (EACCES or EPERM, as the tools word
    /// them).
    pub fn refused(&self) -> bool {
        !self.success()
            && (self.stderr.contains("Permission denied")
                || self.stderr.contains("Operation not permitted"))
    }
}

/// Runs `sh -c SCRIPT` as `uid` (see [`as_uid`]) in `/`, with a plain environment, killed after
/// `limit`.
pub fn run_as(uid: u32, script: &str, limit: Duration) -> AsOutput {
    let o = pkginstall::output_within(
        as_uid(uid, Path::new("/bin/sh"))
            .arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .current_dir("/"),
        limit,
    );
    AsOutput {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Gives `path` and everything under it (symlinks not followed) to `uid` and the group of the
/// same number.
pub fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {uid} {}: {e}", path.display()));
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("listing").flatten() {
            chown_tree(&entry.path(), uid);
        }
    }
}

/// `fleet-server package list --json --config CONFIG` (bounded): the pending packages.
pub fn pending_packages(config: &Path) -> Vec<serde_json::Value> {
    let o = pkginstall::output_within(
        Command::new(bin_path("fleet-server"))
            .args(["package", "list", "--json", "--config"])
            .arg(config),
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "fleet-server package list --json failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("package list --json prints JSON");
    v.as_array().expect("an array").clone()
}

/// The token id of the one pending package for `node` (`pending_packages`).
pub fn pending_token(config: &Path, node: &str) -> String {
    let rows: Vec<_> = pending_packages(config)
        .into_iter()
        .filter(|r| r["node_name"] == node)
        .collect();
    assert_eq!(rows.len(), 1, "one pending package for {node}: {rows:?}");
    rows[0]["token_id"].as_str().expect("token_id").to_string()
}

/// (id, name, state) of every member, as the daemon on `port` lists them through its API.
pub fn listed_members(port: u16) -> Vec<(String, String, String)> {
    let (s, body) =
        get_json(port, "/api/fleet/cluster/nodes", Some(TEST_API_KEY)).expect("the daemon's API");
    assert_eq!(s, 200, "{body}");
    let field = |m: &serde_json::Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
    body["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|m| (field(m, "id"), field(m, "name"), field(m, "state")))
        .collect()
}

/// The ids of the members named `name` that the daemon on `port` lists as active.
pub fn active_named(port: u16, name: &str) -> Vec<String> {
    listed_members(port)
        .into_iter()
        .filter(|(_, n, s)| n == name && s == "active")
        .map(|(id, _, _)| id)
        .collect()
}

/// Waits (at most `limit`) until the daemon on `port` lists `name` as active; returns its id.
pub fn wait_joined(port: u16, name: &str, limit: Duration) -> String {
    wait_for(
        &format!("{name} listed as active by the daemon on port {port}"),
        limit,
        Duration::from_millis(100),
        || active_named(port, name).into_iter().next(),
    )
}
