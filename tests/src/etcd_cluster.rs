//! A private three-member etcd cluster on free loopback ports (members can be killed, e.g. the
//! leader), and a single etcd that speaks TLS and requires client certificates, with a CA,
//! server and client certificates made by `openssl` for the test. Requests go through `curl`
//! (etcd's JSON gateway), which also speaks the TLS. Everything is stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use crate::pki::TestPki;
use crate::{free_port, require_tool, wait_for};

#[derive(Debug)]
struct Member {
    name: String,
    child: Option<Child>,
    client_port: u16,
    log: PathBuf,
}

/// Three etcd members, or one with TLS and client certificates.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    pki: Option<TestPki>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Three members, elected within about a second.
    pub fn start_three() -> EtcdCluster {
        EtcdCluster::start(3, false)
    }

    /// One member that speaks only TLS and requires a client certificate from the test CA.
    pub fn start_tls() -> EtcdCluster {
        EtcdCluster::start(1, true)
    }

    fn start(n: usize, tls: bool) -> EtcdCluster {
        require_tool("etcd");
        require_tool("curl");
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let pki = tls.then(|| TestPki::make(dir.path()));
        let scheme = if tls { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let data = dir.path().join(format!("{name}.data"));
            let log = dir.path().join(format!("{name}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let url = format!("{scheme}://127.0.0.1:{client}");
            let mut cmd = Command::new("etcd");
            cmd.args(["--name", &name])
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args([
                    "--initial-cluster-token",
                    &format!("fleet-test-{}", ports[0].0),
                ])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-outputs", "stderr"]);
            if let Some(p) = &pki {
                cmd.arg("--cert-file")
                    .arg(&p.server_cert)
                    .arg("--key-file")
                    .arg(&p.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&p.ca)
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawning etcd");
            members.push(Member {
                name,
                child: Some(child),
                client_port: *client,
                log,
            });
        }
        let c = EtcdCluster { members, pki, dir };
        for i in 0..n {
            wait_for(
                &format!("etcd member m{i} healthy"),
                Duration::from_secs(20),
                Duration::from_millis(50),
                || {
                    c.gateway(i, "/health", None)
                        .filter(|b| b.contains("\"true\""))
                },
            );
        }
        c
    }

    /// `POST` (or `GET` without a body) through member `i`'s gateway; the body, if it answered.
    fn gateway(&self, i: usize, path: &str, body: Option<&str>) -> Option<String> {
        let m = &self.members[i];
        m.child.as_ref()?;
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "2"])
            .arg(format!("{scheme}://127.0.0.1:{}{path}", m.client_port));
        if let Some(p) = &self.pki {
            cmd.arg("--cacert")
                .arg(&p.ca)
                .arg("--cert")
                .arg(&p.client_cert)
                .arg("--key")
                .arg(&p.client_key);
        }
        if let Some(b) = body {
            cmd.args(["-X", "POST", "-d", b]);
        }
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> usize {
        wait_for(
            "an etcd leader",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                (0..self.members.len()).find(|&i| {
                    self.gateway(i, "/v3/maintenance/status", Some("{}"))
                        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                        .is_some_and(|v| {
                            v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
                        })
                })
            },
        )
    }

    /// Kills member `i` (as a crash would).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `cluster:` lines of a node config using every member (and the client certificate
    /// when `with_cert`).
    pub fn cluster_yaml(&self, with_cert: bool) -> String {
        let list = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!("  backend: etcd\n  etcd_endpoints: [{list}]\n");
        if let Some(p) = &self.pki {
            s.push_str(&format!("  etcd_ca: {}\n", p.ca.display()));
            if with_cert {
                s.push_str(&format!(
                    "  etcd_cert: {}\n  etcd_key: {}\n",
                    p.client_cert.display(),
                    p.client_key.display()
                ));
            }
        }
        s
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!(
                "---- etcd {} (client port {}), last lines ----\n{}\n",
                m.name,
                m.client_port,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
