//! The `fleet-server` binary: parses arguments, loads the configuration, sets up logging, binds,
//! wires SIGTERM/SIGINT to the shutdown token and maps errors to exit codes. The work is in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_server::config::{BackendKind, Config, Loaded, default_config_path};
use fleet_server::{admin, logging, packages, server};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "fleet-server", version, about = "Fleet Server cluster node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
enum LbCommand {
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
enum ConfigCommand {
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
enum BackendArg {
    Redis,
    Storage,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum PackageCommand {
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
enum ClusterCommand {
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

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(read(path)?.config)
}

/// The configuration and its origin, its plain secrets replaced by what checks them.
fn read(path: Option<PathBuf>) -> anyhow::Result<Loaded> {
    let path = path.unwrap_or_else(default_config_path);
    let mut loaded = Loaded::read(&path)?;
    fleet_server::crypto::secure(&mut loaded);
    Ok(loaded)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(
    config: Option<PathBuf>,
    daemonize: bool,
    pid_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    root: Option<PathBuf>,
    port: Option<u16>,
) -> anyhow::Result<()> {
    let mut loaded = read(config)?;
    if port == Some(0) {
        anyhow::bail!("--port: must be between 1 and 65535");
    }
    loaded.origin.root = root;
    loaded.origin.port_override = port;
    loaded.apply_overrides();
    let Loaded {
        config,
        origin,
        warnings,
    } = loaded;
    let config = Arc::new(config);
    let (pid_file, log_file) = if daemonize {
        (
            Some(pid_file.unwrap_or_else(|| "/var/run/fleet-server.pid".into())),
            Some(log_file.unwrap_or_else(|| "/var/log/fleet-server.log".into())),
        )
    } else {
        (pid_file, log_file)
    };
    if let (true, Some(pid_file), Some(log_file)) = (daemonize, &pid_file, &log_file) {
        // Before any thread exists: fork and threads do not mix.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .with_context(|| format!("opening the log file {}", log_file.display()))?;
        let log2 = log.try_clone().context("duplicating the log file handle")?;
        daemonize::Daemonize::new()
            .pid_file(pid_file)
            .working_directory("/")
            .stdout(log)
            .stderr(log2)
            .start()
            .with_context(|| format!("daemonizing (pid file {})", pid_file.display()))?;
    }
    let (level, syslog) = (config.logging.level.to_filter(), config.logging.syslog);
    match &log_file {
        Some(path) => logging::init_with_file(level, syslog, path)?,
        None => logging::init(level, syslog),
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr} (server.host, server.port)"))?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int, mut hup) = (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        );
        // Only now the pid file: whoever reads it may signal at once (newsyslog's SIGHUP would
        // otherwise end the process). Daemonize wrote and locks its own.
        let _pid_file = match (&pid_file, daemonize) {
            (Some(path), false) => Some(PidFile::write(path)?),
            _ => None,
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { log::info!("SIGTERM received"); break; }
                    _ = int.recv() => { log::info!("SIGINT received"); break; }
                    // newsyslog (or logrotate) renamed the log: continue in a new file.
                    _ = hup.recv() => match logging::reopen() {
                        Ok(Some(path)) => log::info!("SIGHUP: log file {} reopened", path.display()),
                        Ok(None) => log::info!("SIGHUP: logging to stderr, nothing to reopen"),
                        Err(e) => log::error!("SIGHUP: {e}; still writing to the old log file"),
                    },
                }
            }
            signals.cancel();
        });
        server::run(config, origin, listener, shutdown).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

/// A pid file written at start and removed at a clean stop (when it still holds our pid).
#[derive(Debug)]
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> anyhow::Result<Self> {
        let pid = std::process::id();
        fleet_server::identity::write_atomically(path, format!("{pid}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing the pid file {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "unknown".into())
}

fn print_built(path: &std::path::Path, b: &packages::BuiltPackage, passphrase: bool) {
    println!("✅ Built {} ({} bytes)", path.display(), b.bytes.len());
    println!(
        "   Node: {}",
        if b.node_name.is_empty() {
            "(named after its hostname)"
        } else {
            &b.node_name
        }
    );
    println!(
        "   Package id: {}",
        &b.package_id[..12.min(b.package_id.len())]
    );
    println!(
        "   Installable until: {} UTC",
        fleet_server::logging::timestamp(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(b.not_after)
        )
    );
    if passphrase {
        println!(
            "   Sealed with the passphrase: put it in the install.passphrase file on the new machine (see the README)"
        );
    }
    if b.foreign_binaries {
        println!(
            "   ⚠️  Development build: the binaries do not fit the target (--allow-foreign-binaries)"
        );
    }
    if b.format.is_macos() {
        match &b.signed_by {
            Some(who) => println!("   Signed by: {who}"),
            None => println!(
                "   Unsigned (MDMs and Gatekeeper want a signed package: --sign-p12 or package.signing)"
            ),
        }
    }
    match b.format {
        packages::Format::Pkg | packages::Format::Component => {
            println!("   Install: sudo installer -pkg {} -target /", b.file_name)
        }
        packages::Format::Bundle => println!(
            "   Install: sudo tar -xzf {} && cd {}_provision && sudo ./provision.sh",
            b.file_name,
            if b.node_name.is_empty() {
                "node"
            } else {
                &b.node_name
            }
        ),
    }
}

/// `package build --upgrade`: builds, writes, records the event, says how to install it.
fn build_upgrade_cli(
    c: &fleet_server::config::Config,
    builder: &packages::Builder,
    req: fleet_server::upgrade::UpgradeRequest,
    output: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let c = Arc::new(c.clone());
    let built_by = req.built_by.clone();
    let (path, built) = rt.block_on(async {
        let built = fleet_server::upgrade::build_upgrade_async(builder, &c, req).await?;
        let path = output.unwrap_or_else(|| PathBuf::from(&built.file_name));
        fleet_package::write_atomically(&path, &built.bytes, force)?;
        let backend = if c.cluster.enabled {
            fleet_server::cluster::open(&c).ok()
        } else {
            None
        };
        fleet_server::upgrade::record_built(backend.as_deref(), &built, &built_by).await;
        anyhow::Ok((path, built))
    })?;
    println!(
        "✅ Built the upgrade package {} ({} bytes)",
        path.display(),
        built.bytes.len()
    );
    println!(
        "   Installs fleet-server {} over an installed node: binaries only, no configuration, token or key",
        built.version
    );
    if built.foreign_binaries {
        println!(
            "   ⚠️  Development build: the binaries do not fit the target (--allow-foreign-binaries)"
        );
    }
    if built.format.is_macos() {
        match &built.signed_by {
            Some(who) => println!("   Signed by: {who}"),
            None => println!(
                "   Unsigned (MDMs and Gatekeeper want a signed package: --sign-p12 or package.signing)"
            ),
        }
        println!(
            "   Install: sudo installer -pkg {} -target /",
            built.file_name
        );
    } else {
        println!(
            "   Install: sudo tar -xzf {} && cd {} && sudo ./provision.sh",
            built.file_name,
            fleet_package::UPGRADE_BUNDLE_DIR
        );
    }
    println!("   On a machine that is not a node it refuses (exit code 50) and installs nothing");
    Ok(())
}

fn real_main() -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider (for `rediss://`); a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `--version` says what the binary's version slot says (fleet_server::version).
    let cli = {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command()
            .version(fleet_server::version::version())
            .get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    };
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
        } => serve(config, daemonize, pid_file, log_file, root, port),
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            let path = path.unwrap_or_else(default_config_path);
            let c = Config::load(&path)?;
            println!(
                "✅ {} is valid (cluster {}, backend {})",
                path.display(),
                if c.cluster.enabled {
                    "enabled"
                } else {
                    "not enabled"
                },
                c.cluster.backend
            );
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::HashPassword,
        } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password on standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("no password on standard input");
            }
            // Both lines go under `auth:`: the hash checks logins, the public key checks the
            // sessions that logins sign.
            let (hash, public) =
                fleet_server::sessionsig::credentials_for(password).map_err(anyhow::Error::msg)?;
            println!("web_password_hash: \"{hash}\"");
            println!("session_public_key: \"{public}\"");
            Ok(())
        }
        Command::Config {
            command:
                ConfigCommand::Init {
                    output,
                    backend,
                    storage_path,
                    redis_host,
                    redis_port,
                    state_dir,
                    host,
                    port,
                    node_name,
                    redis_password_file,
                    template_dir,
                    allow_foreign_binaries,
                    force,
                },
        } => {
            let redis_password = match redis_password_file {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                None => None,
            };
            let opts = admin::InitOptions {
                backend: match backend {
                    BackendArg::Redis => BackendKind::Redis,
                    BackendArg::Storage => BackendKind::Storage,
                },
                storage_path,
                redis_host,
                redis_port,
                state_dir,
                host,
                port,
                node_name,
                redis_password: redis_password.map(fleet_server::config::Secret::new),
                template_dir,
                allow_foreign_binaries,
            };
            let (password, api_key) = admin::config_init(&output, &opts, force)?;
            println!("✅ Wrote {}", output.display());
            println!("   Dashboard login: admin / {password}");
            println!("   API key:         {api_key}");
            println!("   (shown once: they are stored only in that file)");
            Ok(())
        }
        Command::Package {
            command:
                PackageCommand::Build {
                    config,
                    node_name,
                    format,
                    sign_p12,
                    sign_password_file,
                    timestamp_url,
                    allow_any_certificate,
                    output,
                    package_name,
                    expires,
                    passphrase_file,
                    ethernet,
                    template_dir,
                    allow_foreign_binaries,
                    force,
                    ips,
                    no_enrollment,
                    upgrade,
                },
        } => {
            let c = load(config)?;
            let format: packages::Format = format.parse().map_err(anyhow::Error::msg)?;
            // The identity is loaded (and checked) before anything is built or written.
            let signing = match (sign_p12, sign_password_file) {
                (Some(p12_file), Some(password_file)) => {
                    if !format.is_macos() {
                        anyhow::bail!(
                            "--sign-p12 signs macOS packages; a {} is not signed",
                            format.as_str()
                        );
                    }
                    Some(fleet_server::config::SigningConfig {
                        p12_file,
                        password_file,
                        timestamp_url: timestamp_url.clone(),
                        allow_any_certificate,
                    })
                }
                _ => c.package.signing.clone().map(|mut s| {
                    if timestamp_url.is_some() {
                        s.timestamp_url = timestamp_url.clone();
                    }
                    s.allow_any_certificate |= allow_any_certificate;
                    s
                }),
            };
            let identity = match signing.as_ref().filter(|_| format.is_macos()) {
                Some(s) => Some(packages::load_signing(s)?),
                None => None,
            };
            if upgrade {
                let req = fleet_server::upgrade::UpgradeRequest {
                    format,
                    package_name,
                    template_dir,
                    allow_foreign_binaries,
                    built_by: format!("cli:{}", whoami()),
                };
                let builder = packages::Builder::new().with_signing(identity);
                return build_upgrade_cli(&c, &builder, req, output, force);
            }
            let expires = match expires {
                Some(e) => packages::parse_expiry(&e).map_err(anyhow::Error::msg)?,
                None => std::time::Duration::from_secs(u64::from(c.package.expiry_days) * 86_400),
            };
            let passphrase = match passphrase_file {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("reading the passphrase file {}", p.display()))?;
                    let pass = text.trim_end_matches(['\r', '\n']);
                    if pass.len() < 8 {
                        anyhow::bail!(
                            "{}: the passphrase must have at least 8 characters",
                            p.display()
                        );
                    }
                    Some(fleet_server::config::Secret::new(pass))
                }
                None => None,
            };
            let req = packages::BuildRequest {
                node_name,
                format,
                package_name,
                expires,
                ethernet: ethernet.parse().map_err(anyhow::Error::msg)?,
                passphrase,
                template_dir,
                allow_foreign_binaries,
                built_by: format!("cli:{}", whoami()),
                ips,
                no_enrollment,
                ..Default::default()
            };
            let rt = runtime()?;
            let c = Arc::new(c);
            let built_by = req.built_by.clone();
            let passphrase = req.passphrase.is_some();
            let result = rt.block_on(async {
                let backend = if c.cluster.enabled {
                    Some(fleet_server::cluster::open(&c)?)
                } else {
                    None
                };
                let cb = packages::build_for_cluster(
                    &c,
                    backend.as_deref(),
                    &packages::Builder::new().with_signing(identity),
                    req.clone(),
                )
                .await?;
                let path = output.unwrap_or_else(|| PathBuf::from(&cb.built.file_name));
                if let Err(e) = packages::write_package(&path, &cb.built, force) {
                    // Nothing of a package that was not written may linger: its pending
                    // record, its enrollment user, its node user.
                    packages::discard_built(&c, backend.as_deref(), &req, &cb).await;
                    return Err(anyhow::Error::from(e));
                }
                packages::record_built(backend.as_deref(), &cb.built, &built_by).await;
                anyhow::Ok((path, cb))
            });
            let (path, cb) = result?;
            let (built, shared_note, enrollment_note) =
                (cb.built, cb.shared_credentials, cb.enrollment_note);
            print_built(&path, &built, passphrase);
            if !built.ips.is_empty() {
                let ips: Vec<String> = built.ips.iter().map(ToString::to_string).collect();
                println!("   Intended address: {}", ips.join(", "));
            }
            // The backend whose user this is (etcd or Redis), never a hard-coded name.
            let backend_name = c.cluster.backend.as_str();
            if let Some(user) = &built.node_user {
                println!(
                    "   {backend_name} user: {user} (its own, limited to the cluster prefix {}; deleted when the node is removed)",
                    c.cluster.key_prefix
                );
            }
            match (&built.enrollment, &enrollment_note) {
                (Some(rec), _) => println!(
                    "   Enrollment: single-use token {}… (pending until redeemed by the node; `fleet-server package revoke {}` cancels it)",
                    &rec.token_id[..8],
                    &rec.token_id[..12]
                ),
                (None, Some(note)) => println!("   ⚠️  {note}"),
                (None, None) => {}
            }
            if let Some(why) = shared_note {
                println!("   ⚠️  {backend_name} user: shared with the primary: {why}");
            }
            Ok(())
        }
        Command::Package {
            command: PackageCommand::List { config, json },
        } => {
            let c = load(config)?;
            let rt = runtime()?;
            rt.block_on(admin::package_list(&c, json, &mut std::io::stdout().lock()))
        }
        Command::Package {
            command: PackageCommand::Revoke { config, id },
        } => {
            let c = load(config)?;
            let rt = runtime()?;
            rt.block_on(admin::package_revoke(
                &c,
                &id,
                &format!("cli:{}", whoami()),
                &mut std::io::stdout().lock(),
            ))
        }
        Command::Package {
            command: PackageCommand::Inspect { file },
        } => {
            let report = fleet_package::inspect(&file)?;
            print!("{report}");
            if let Some(sealed) = &report.sealed_config {
                match fleet_installer_stub::sealed::Header::parse(sealed) {
                    Ok(h) => println!("Sealed configuration:\n{h}"),
                    Err(e) => println!("Sealed configuration: unreadable header ({e})"),
                }
            }
            if report.signature.as_ref().is_some_and(|s| !s.verifies()) {
                anyhow::bail!(
                    "{}: the package's signature does not verify",
                    file.display()
                );
            }
            Ok(())
        }
        Command::Cluster { command } => {
            let rt = runtime()?;
            let mut out = std::io::stdout().lock();
            match command {
                ClusterCommand::Status { config, json } => {
                    let c = load(config)?;
                    rt.block_on(admin::cluster_status(&c, json, &mut out))
                }
                ClusterCommand::Nodes { config, json } => {
                    let c = load(config)?;
                    rt.block_on(admin::cluster_nodes(&c, json, &mut out))
                }
                ClusterCommand::Info { config, json } => {
                    let c = load(config)?;
                    rt.block_on(admin::cluster_info(&c, json, &mut out))
                }
            }
        }
        Command::Lb { command } => lb_command(command),
    }
}

fn lb_command(command: LbCommand) -> anyhow::Result<()> {
    use fleet_server::lb;
    let rt = runtime()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            signals.cancel();
        });
        match command {
            LbCommand::Haproxy {
                config,
                socket,
                backend,
                ca_file,
                once,
            } => {
                let c = load(config)?;
                lb::haproxy_command(&c, &socket, &backend, &ca_file, once, shutdown).await
            }
            LbCommand::Render {
                config,
                format,
                name,
                output,
                watch,
                reload,
            } => {
                let c = load(config)?;
                let opts = lb::render::Options {
                    format: format.parse().map_err(anyhow::Error::msg)?,
                    name,
                    output,
                    reload,
                    watch,
                };
                lb::render_command(&c, opts, shutdown).await
            }
        }
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("❌ error: {e:#}");
            ExitCode::from(1)
        }
    }
}
