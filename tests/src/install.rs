//! The install fixtures: a primary in its network namespaces (redis in `cloud`, the primary in
//! `office`, a node template), run as the install and upgrade tests need it, and a daemon that
//! `provision.sh --no-systemd` started (known by its pid file, killed on drop).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::netns::{Site, Topology};
use crate::pkginstall::{self, as_installer_runs, contains_bytes, output_within};
use crate::{Daemon, RedisServer, bin_path, wait_for};

/// How long any one command (a build, a script, the CLI) may take.
pub const LIMIT: Duration = Duration::from_secs(120);

/// The primary's Redis password, which no package may carry in clear.
pub const REDIS_PASSWORD: &str = "install-e2e-redis-pw-7c41d9";

/// A topology with redis in cloud and the primary in office, and a node template.
/// Locals drop in reverse order: callers keep this first so daemons stop before it.
#[derive(Debug)]
pub struct Primary {
    pub primary: Daemon,
    _redis: RedisServer,
    pub topo: Topology,
    pub template: PathBuf,
}

impl Primary {
    pub fn start() -> Primary {
        let topo = Topology::new();
        let redis = topo.redis(REDIS_PASSWORD);
        let primary = topo.daemon(Site::Office, "primary", &redis.cluster_yaml());
        primary.wait_health(200, Duration::from_secs(20));
        let template = pkginstall::node_template(&topo.root().join("node-template"));
        Primary {
            primary,
            _redis: redis,
            topo,
            template,
        }
    }

    pub fn root(&self) -> &Path {
        self.topo.root()
    }

    /// `fleet-server package build` with the primary's config, run in `office` so the
    /// build reaches the backend as it would on the primary.
    pub fn build(&self, out: &Path, node: &str, args: &[&str]) -> String {
        let started = Instant::now();
        let mut cmd = self.topo.command(Site::Office, bin_path("fleet-server"));
        cmd.args(["package", "build", "--config"])
            .arg(self.primary.config_path())
            .arg("--template-dir")
            .arg(&self.template)
            .args(["--node-name", node, "--allow-foreign-binaries", "--output"])
            .arg(out)
            .args(args);
        let o = output_within(&mut cmd, LIMIT);
        assert_ok(&o, "fleet-server package build");
        eprintln!(
            "install: package build {args:?} took {:?} ({} bytes)",
            started.elapsed(),
            std::fs::metadata(out).map(|m| m.len()).unwrap_or(0)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The members `fleet-server cluster nodes --json` lists, read in `office` from the
    /// primary's backend: (id, name, state).
    pub fn cluster_nodes(&self) -> Vec<(String, String, String)> {
        let mut cmd = self.topo.command(Site::Office, bin_path("fleet-server"));
        cmd.args(["cluster", "nodes", "--json", "--config"])
            .arg(self.primary.config_path());
        let o = output_within(&mut cmd, LIMIT);
        assert_ok(&o, "fleet-server cluster nodes");
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).expect("cluster nodes --json prints JSON");
        let field = |m: &serde_json::Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
        v.as_array()
            .expect("cluster nodes --json: an array")
            .iter()
            .map(|m| (field(m, "id"), field(m, "name"), field(m, "state")))
            .collect()
    }

    /// Waits until both the CLI and the primary's API list an active node named `name`;
    /// returns its id.
    pub fn wait_joined(&self, name: &str) -> String {
        let prefix = format!("{name}-");
        wait_for(
            &format!("{name} listed as active by `cluster nodes` and the primary's API"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let id = self
                    .cluster_nodes()
                    .into_iter()
                    .find(|(id, n, state)| {
                        n == name && id.starts_with(&prefix) && state == "active"
                    })
                    .map(|(id, _, _)| id)?;
                self.primary.active_ids()?.contains(&id).then_some(id)
            },
        )
    }

    /// Waits until `id` is no longer in the member list (deregistered on SIGTERM).
    pub fn wait_left(&self, id: &str) {
        wait_for(
            &format!("{id} to leave the member list"),
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let gone = !self.cluster_nodes().iter().any(|(i, _, _)| i == id);
                let api_gone = !self.primary.active_ids()?.iter().any(|i| i == id);
                (gone && api_gone).then_some(())
            },
        )
    }

    /// Runs one of the pkg's scripts as Installer does, inside `site`.
    pub fn installer_run(&self, site: Site, script: &Path, pkg: &Path, target: &Path) -> Output {
        let mut cmd = self.topo.command(site, script);
        as_installer_runs(&mut cmd, pkg, target);
        output_within(&mut cmd, LIMIT)
    }
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A daemon started by `provision.sh --no-systemd` (`--daemonize`): not our child, known by
/// its pid file. Killed on drop when the pid file still names a live fleet-server.
#[derive(Debug)]
pub struct Daemonized {
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

impl Daemonized {
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether `pid` is a live (not zombie) fleet-server.
    pub fn alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        state != Some("Z") && contains_bytes(&cmdline, b"fleet-server")
    }
}

impl Drop for Daemonized {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- provisioned node's log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if let Some(pid) = self.pid()
            && Daemonized::alive(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
