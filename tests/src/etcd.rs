//! A private `etcd` per test (Debian's etcd-server, v3.4): free loopback ports for clients and
//! peers (or, inside a network namespace, the standard ports on the namespace's address), a
//! temporary data dir, killed on drop, its log dumped when a test fails. Setup that the daemon
//! does not do itself (enabling auth, wiping keys) goes through etcd's JSON gateway.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool};

/// The etcd member name every test server uses.
const MEMBER: &str = "fleet-test";

/// A private single-member etcd on free loopback ports, killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    /// The `root` user's password, once auth is enabled.
    pub root_password: Option<String>,
    dir: tempfile::TempDir,
    /// The address it binds and is reached at (`127.0.0.1` unless started in a namespace).
    pub host: String,
    /// The network namespace it runs in, if any (the gateway calls then go from inside it).
    pub netns: Option<String>,
}

impl EtcdServer {
    /// Starts one without auth.
    pub fn start() -> EtcdServer {
        require_tool("etcd");
        let mut last_err = String::new();
        for _ in 0..5 {
            // A directory per attempt, kept as long as the server: etcd checks its data dir
            // every 30 s (WAL purge) and exits when it has gone.
            let mut s = EtcdServer {
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
                root_password: None,
                dir: tempfile::tempdir().expect("temp dir for etcd"),
                host: "127.0.0.1".into(),
                netns: None,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => {
                    last_err = e;
                    s.stop();
                }
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    /// Starts one inside the network namespace `netns` (`ip netns exec`), bound to `host` on the
    /// standard ports 2379 (clients) and 2380 (peers): the namespace has its own port space.
    pub fn start_in_netns(netns: &str, host: &str) -> EtcdServer {
        require_tool("etcd");
        require_tool("ip");
        let mut s = EtcdServer {
            child: None,
            client_port: 2379,
            peer_port: 2380,
            root_password: None,
            dir: tempfile::tempdir().expect("temp dir for etcd"),
            host: host.to_string(),
            netns: Some(netns.to_string()),
        };
        if let Err(e) = s.spawn() {
            s.stop();
            panic!("etcd in {netns} did not start: {e}");
        }
        s
    }

    /// Starts one with auth enabled: a `root` user (with the root role) and this password.
    pub fn start_with_auth(root_password: &str) -> EtcdServer {
        let mut s = EtcdServer::start();
        s.enable_auth(root_password);
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// `http://<host>:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// One gateway request, from inside the namespace when etcd runs in one.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        match &self.netns {
            Some(ns) => crate::netns::in_netns(ns, || {
                request(&self.host, self.client_port, method, path, body, token)
            }),
            None => request(&self.host, self.client_port, method, path, body, token),
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("etcd log file: {e}"))?;
        let mut cmd = match &self.netns {
            // `ip netns exec` execs etcd: the child's pid is etcd's own.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = cmd
            .arg("--name")
            .arg(MEMBER)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER}={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            // A single member elects itself after one election timeout: keep it short.
            .arg("--heartbeat-interval")
            .arg("10")
            .arg("--election-timeout")
            .arg("100")
            // For profiling a benchmark: `FLEET_ETCD_PPROF=1` serves /debug/pprof/.
            .args(std::env::var_os("FLEET_ETCD_PPROF").map(|_| "--enable-pprof"))
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning etcd: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok((200, body)) = self.request("GET", "/health", None, None)
                && body.contains("true")
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("etcd exited ({status}):\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "etcd did not report healthy within 15 s:\n{}",
            self.log()
        ))
    }

    /// Kills it (an outage); its data stays on disk until `restart` wipes it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports with an empty data dir: etcd lost its data (leases,
    /// keys and users). Auth, when it was enabled, is set up again with the same root password.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.respawn();
        if let Some(pw) = self.root_password.take() {
            self.enable_auth(&pw);
        }
    }

    /// Starts it again on the same ports with its data (keys, leases, users) kept.
    pub fn restart_keep_data(&mut self) {
        self.stop();
        self.respawn();
    }

    fn respawn(&mut self) {
        let started = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    panic!("etcd did not restart: {e}")
                }
                // The ports may linger a moment after the kill.
                Err(_) => {
                    self.stop();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// The server's process id (the benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Adds `root` with the root role and enables auth.
    pub fn enable_auth(&mut self, root_password: &str) {
        self.call(
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": root_password}),
            None,
        )
        .expect("adding the root user");
        self.call(
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
            None,
        )
        .expect("granting the root role");
        self.call("/v3/auth/enable", serde_json::json!({}), None)
            .expect("enabling auth");
        self.root_password = Some(root_password.to_string());
    }

    /// A token for `user`, or etcd's refusal.
    pub fn authenticate(&self, user: &str, password: &str) -> Result<String, String> {
        let v = self.call(
            "/v3/auth/authenticate",
            serde_json::json!({"name": user, "password": password}),
            None,
        )?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no token in {v}"))
    }

    /// Writes `key` as `user`: Ok, or etcd's refusal (wrong password, permission denied).
    pub fn put_as(&self, user: &str, password: &str, key: &str, value: &str) -> Result<(), String> {
        let token = self.authenticate(user, password)?;
        self.call(
            "/v3/kv/put",
            serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())}),
            Some(&token),
        )
        .map(|_| ())
    }

    /// As `root`: grants `role` read-write on every key under `prefix` (what node roles of an
    /// earlier release had).
    pub fn grant_prefix_rw(&self, role: &str, prefix: &str) -> Result<(), String> {
        let pw = self.root_password.clone().ok_or("auth is off")?;
        let token = self.authenticate("root", &pw)?;
        self.call(
            "/v3/auth/role/grant",
            serde_json::json!({"name": role, "perm": {
                "permType": "READWRITE",
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&prefix_end(prefix.as_bytes())),
            }}),
            Some(&token),
        )
        .map(|_| ())
    }

    /// One gateway call (`/v3/...`, JSON in and out) as `user`, or as `root` when `user` is
    /// `None` (with auth on): etcd's answer, or its refusal. Keys in `body` are base64
    /// (`etcd::b64`).
    pub fn call_as(
        &self,
        user: Option<(&str, &str)>,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let token = match user {
            Some((u, pw)) => Some(self.authenticate(u, pw)?),
            None => match &self.root_password {
                Some(pw) => Some(self.authenticate("root", pw)?),
                None => None,
            },
        };
        self.call(path, body, token.as_deref())
    }

    /// Deletes the one key `key` as `user`: Ok, or etcd's refusal.
    pub fn delete_as(&self, user: &str, password: &str, key: &str) -> Result<(), String> {
        self.call_as(
            Some((user, password)),
            "/v3/kv/deleterange",
            serde_json::json!({"key": b64(key.as_bytes())}),
        )
        .map(|_| ())
    }

    /// Deletes every key under `prefix` as `user`: Ok, or etcd's refusal.
    pub fn delete_prefix_as(&self, user: &str, password: &str, prefix: &str) -> Result<(), String> {
        let token = self.authenticate(user, password)?;
        self.call(
            "/v3/kv/deleterange",
            serde_json::json!({
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&prefix_end(prefix.as_bytes())),
            }),
            Some(&token),
        )
        .map(|_| ())
    }

    /// Deletes every key that starts with `prefix` (the backend lost the cluster's data, while
    /// etcd and its leases stay up).
    pub fn delete_prefix(&self, prefix: &str) {
        let token = self
            .root_password
            .as_ref()
            .map(|pw| self.authenticate("root", pw).expect("root token"));
        self.call(
            "/v3/kv/deleterange",
            serde_json::json!({
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&prefix_end(prefix.as_bytes())),
            }),
            token.as_deref(),
        )
        .expect("deleting the prefix");
    }

    /// The keys under `prefix` with their values (as `root` when auth is on), sorted by key.
    pub fn entries(&self, prefix: &str) -> Vec<(String, String)> {
        let token = self
            .root_password
            .as_ref()
            .map(|pw| self.authenticate("root", pw).expect("root token"));
        let v = self
            .call(
                "/v3/kv/range",
                serde_json::json!({
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&prefix_end(prefix.as_bytes())),
                }),
                token.as_deref(),
            )
            .expect("listing the prefix");
        let text = |v: &serde_json::Value| {
            String::from_utf8_lossy(&unb64(v.as_str().unwrap_or_default())).into_owned()
        };
        let mut out: Vec<(String, String)> = v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (text(&kv["key"]), text(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The member's current revision and database size in bytes (`Status`), as root with auth.
    pub fn status(&self) -> (i64, i64) {
        let token = self
            .root_password
            .as_ref()
            .map(|pw| self.authenticate("root", pw).expect("root token"));
        let v = self
            .call(
                "/v3/maintenance/status",
                serde_json::json!({}),
                token.as_deref(),
            )
            .expect("etcd status");
        // The gateway writes 64-bit integers as strings.
        let num = |v: &serde_json::Value| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0)
        };
        (num(&v["header"]["revision"]), num(&v["dbSize"]))
    }

    /// Reads `key` as it was at revision `rev`: Err with etcd's message once that revision has
    /// been compacted away.
    pub fn read_at_revision(&self, key: &str, rev: i64) -> Result<(), String> {
        let token = self
            .root_password
            .as_ref()
            .map(|pw| self.authenticate("root", pw).expect("root token"));
        self.call(
            "/v3/kv/range",
            serde_json::json!({"key": b64(key.as_bytes()), "revision": rev.to_string()}),
            token.as_deref(),
        )
        .map(|_| ())
    }

    /// POSTs JSON to the gateway; the answer as JSON, or the error etcd gave.
    fn call(
        &self,
        path: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        let (status, text) = self
            .request("POST", path, Some(&body.to_string()), token)
            .map_err(|e| format!("{path}: {e}"))?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if status != 200 || v.get("error").is_some() {
            return Err(format!("{path}: {status} {text}"));
        }
        Ok(v)
    }

    /// The `cluster:` lines of a config that points at this server (as `root` with auth).
    pub fn cluster_yaml(&self) -> String {
        let mut s = format!(
            "  backend: etcd\n  etcd_endpoints: [\"{}\"]\n",
            self.endpoint()
        );
        if let Some(pw) = &self.root_password {
            s.push_str(&format!(
                "  etcd_username: root\n  etcd_password: \"{pw}\"\n"
            ));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            // etcd logs a lot: the end tells what happened.
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- etcd log (client port {}), last lines ----\n{}",
                self.client_port,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.stop();
    }
}

/// One HTTP/1.1 request with an optional JSON body and etcd token.
fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let s = TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().expect("address"),
        Duration::from_secs(1),
    )?;
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(t) = token {
        headers.push(("Authorization", t));
    }
    crate::http::send_lenient(
        s,
        host,
        method,
        path,
        &headers,
        body.unwrap_or("").as_bytes(),
        Duration::from_secs(5),
    )
}

/// The end of the range of keys that start with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Standard base64 with padding (the gateway's encoding of bytes).
pub fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding and unknown characters skipped).
pub fn unb64(text: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let Some(v) = A.iter().position(|&a| a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::b64(b"fleet:"), "ZmxlZXQ6");
        assert_eq!(super::b64(b"ab"), "YWI=");
        assert_eq!(super::b64(b"a"), "YQ==");
        for s in [&b"fleet:cluster/users/node2"[..], b"ab", b"a", b""] {
            assert_eq!(super::unb64(&super::b64(s)), s);
        }
    }
}
