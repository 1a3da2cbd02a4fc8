//! The `fleet-server` command line: the clap tree and `run`, which dispatches each command to
//! its module here (`serve`, `package`, `cluster`, `config`, `lb`, `upgrade`); those do the
//! printing and call the library's layers for the work.

mod cluster;
mod config;
mod lb;
mod package;
mod serve;
mod upgrade;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Loaded, default_config_path};
use crate::logging;

#[derive(Parser, Debug)]
#[command(name = "fleet-server", version = crate::version::version(), about = "Fleet Server cluster node")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node: join the cluster, heartbeat, serve the API on 0.0.0.0:8768.
    Serve {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Detach and run in the background (not under launchd or systemd).
        #[arg(long)]
        daemonize: bool,
        /// Write the process id here (newsyslog signals it); with --daemonize the default
        /// is /var/run/fleet-server.pid.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Append log lines to this file, opened by the daemon and reopened on SIGHUP (after
        /// a rotation); without it lines go to stderr. With --daemonize the default is
        /// /var/log/fleet-server.log.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Run a node installed under DIR instead of `/` (state directory and TLS files are
        /// taken under DIR), as `provision.sh --root DIR` and the emulated installs do.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Listen on this port instead of server.port (several nodes on one machine).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Check or create a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Build or inspect node installers.
    Package {
        #[command(subcommand)]
        command: PackageCommand,
    },
    /// Read the cluster straight from the backend in the configuration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Keep load balancers in step with the cluster (HAProxy live, HAProxy/nginx by file).
    Lb {
        #[command(subcommand)]
        command: LbCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum LbCommand {
    /// Keep an HAProxy backend's servers in step with the cluster through HAProxy's runtime
    /// API (no reload): one pass per heartbeat interval.
    Haproxy {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// HAProxy's runtime API: a unix socket path (`stats socket … level admin`) or host:port.
        #[arg(long, default_value = "/var/run/haproxy.sock")]
        socket: String,
        /// The HAProxy backend to manage (dedicated to the cluster).
        #[arg(long, default_value = "fleet")]
        backend: String,
        /// CA certificates for nodes served over https.
        #[arg(long, default_value = "@system-ca")]
        ca_file: String,
        /// One pass, then exit (non-zero when it failed).
        #[arg(long)]
        once: bool,
    },
    /// Write an HAProxy backend section or an nginx upstream block for the active nodes.
    Render {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// `haproxy` or `nginx`.
        #[arg(long)]
        format: String,
        /// Backend / upstream name.
        #[arg(long, default_value = "fleet")]
        name: String,
        /// Write here (atomically) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Keep running: rewrite the file when the cluster changes (needs --output).
        #[arg(long)]
        watch: bool,
        /// Run this shell command after the file changed (e.g. 'nginx -s reload').
        #[arg(long)]
        reload: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file as `serve` would.
    Check {
        /// Configuration file (default: the platform's).
        path: Option<PathBuf>,
    },
    /// Read a password on standard input and print the two `auth:` lines it gives:
    /// `web_password_hash` (Argon2id) and `session_public_key` (checks signed sessions).
    HashPassword,
    /// Write a new configuration with fresh secrets; prints the admin password once.
    Init {
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "storage")]
        backend: BackendArg,
        /// Shared directory for the storage backend.
        #[arg(long)]
        storage_path: Option<PathBuf>,
        #[arg(long)]
        redis_host: Option<String>,
        #[arg(long, default_value_t = 6379)]
        redis_port: u16,
        /// Where the node keeps its identity.
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        #[arg(long, default_value_t = 8768)]
        port: u16,
        #[arg(long)]
        node_name: Option<String>,
        /// A file holding the Redis password.
        #[arg(long)]
        redis_password_file: Option<PathBuf>,
        /// Node template directory for building packages.
        #[arg(long)]
        template_dir: Option<PathBuf>,
        /// Let packages carry binaries that do not fit their target (development on Linux).
        #[arg(long)]
        allow_foreign_binaries: bool,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum BackendArg {
    Redis,
    Storage,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum PackageCommand {
    /// Build a node installer from this server's configuration.
    Build {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The new node's name ([a-z0-9-]); default: the machine's hostname at first start.
        #[arg(long)]
        node_name: Option<String>,
        /// `pkg` (macOS product archive), `component` (bare macOS component package) or
        /// `bundle` (Linux provision bundle).
        #[arg(long, default_value = "pkg")]
        format: String,
        /// Sign the macOS package with the Developer ID Installer identity in this PKCS#12 file
        /// (default: package.signing).
        #[arg(long, value_name = "FILE", requires = "sign_password_file")]
        sign_p12: Option<PathBuf>,
        /// The file holding the p12's password (readable by its owner only).
        #[arg(long, value_name = "FILE", requires = "sign_p12")]
        sign_password_file: Option<PathBuf>,
        /// An RFC 3161 timestamp server for the signature (default: none, no network).
        #[arg(long, value_name = "URL")]
        timestamp_url: Option<String>,
        /// Sign with a certificate that is not a Developer ID Installer one (Installer and
        /// MDMs will not trust it).
        #[arg(long)]
        allow_any_certificate: bool,
        /// Where to write it (default: the package name in the current directory).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// File name: default FleetServerClusterNode.pkg or <node>_provision.tar.gz.
        #[arg(long)]
        package_name: Option<String>,
        /// How long it stays installable: 7d, 12h, 30m (default: package.expiry_days).
        #[arg(long)]
        expires: Option<String>,
        /// Seal with the passphrase in this file instead of a key file in the package.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Ethernet policy enforced by the installer: require, allow-virtual or skip.
        #[arg(long, default_value = "require")]
        ethernet: String,
        /// Node template directory (default: package.template_dir).
        #[arg(long)]
        template_dir: Option<PathBuf>,
        /// Accept binaries whose format does not fit the target (development, tests).
        #[arg(long)]
        allow_foreign_binaries: bool,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        /// The new node's intended address (repeatable): refused when a live node has it.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// For an offline install: the package carries the node's full configuration, with the
        /// cluster's long-lived secrets, instead of a single-use enrollment token.
        #[arg(long)]
        no_enrollment: bool,
        /// An upgrade package for installed nodes: the node template's binaries, no
        /// configuration, token or key. Installed over a node it replaces the binaries and
        /// restarts the daemon, keeping configuration, state and node id; on a machine that is
        /// not a node it refuses (exit code 50).
        #[arg(long, conflicts_with_all = ["node_name", "expires", "passphrase_file", "ethernet", "ips", "no_enrollment"])]
        upgrade: bool,
    },
    /// Pending packages (enrollments not yet redeemed): node, created, expires, who built it.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a pending package: it can no longer enroll a node.
    Revoke {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The token id shown by `package list` (a prefix of 8 or more characters is enough).
        id: String,
    },
    /// Show a package's members, checksums, Distribution, signature (signer, chain, whether it
    /// verifies), PackageInfo and sealed header (never a secret).
    Inspect {
        /// The .pkg file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Backend, active node count and this node's id.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Every member with its state and last heartbeat.
    Nodes {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The backend and the member table, as EIS's `etcd_cluster_info.sh` shows them.
    Info {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(cli.command, Command::Lb { .. }) {
        // `lb` commands run for long and log each change they make.
        logging::init(log::LevelFilter::Info, false);
    } else if !matches!(cli.command, Command::Serve { .. }) {
        // The CLI's warnings (an event not recorded, …) go to stderr; `serve` sets up its own.
        logging::init(log::LevelFilter::Warn, false);
    }
    match cli.command {
        Command::Serve {
            config,
            daemonize,
            pid_file,
            log_file,
            root,
            port,
        } => serve::serve(config, daemonize, pid_file, log_file, root, port),
        Command::Config { command } => config::run(command),
        Command::Package { command } => package::run(command),
        Command::Cluster { command } => cluster::run(command),
        Command::Lb { command } => lb::run(command),
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(read(path)?.config)
}

/// The configuration and its origin, its plain secrets replaced by what checks them.
fn read(path: Option<PathBuf>) -> anyhow::Result<Loaded> {
    let path = path.unwrap_or_else(default_config_path);
    let mut loaded = Loaded::read(&path)?;
    crate::crypto::secure(&mut loaded);
    Ok(loaded)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Who runs the command, for the `built_by`/`by` fields of the records it writes.
fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "unknown".into())
}
