//! The `fleet-server` binary: parses arguments, loads the configuration, sets up logging, binds,
//! wires SIGTERM/SIGINT to the shutdown token and maps errors to exit codes. The work is in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_server::config::{BackendKind, Config, default_config_path};
use fleet_server::{admin, logging, server};
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
        /// With --daemonize: where to write the process id.
        #[arg(long, default_value = "/var/run/fleet-server.pid")]
        pid_file: PathBuf,
        /// With --daemonize: where log lines go (stderr is closed).
        #[arg(long, default_value = "/var/log/fleet-server.log")]
        log_file: PathBuf,
    },
    /// Check or create a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Read the cluster straight from the backend in the configuration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file as `serve` would.
    Check {
        /// Configuration file (default: the platform's).
        path: Option<PathBuf>,
    },
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
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.unwrap_or_else(default_config_path);
    Ok(Config::load(&path)?)
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
    pid_file: PathBuf,
    log_file: PathBuf,
) -> anyhow::Result<()> {
    let config = Arc::new(load(config)?);
    if daemonize {
        // Before any thread exists: fork and threads do not mix.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .with_context(|| format!("opening the log file {}", log_file.display()))?;
        let log2 = log.try_clone().context("duplicating the log file handle")?;
        daemonize::Daemonize::new()
            .pid_file(&pid_file)
            .working_directory("/")
            .stdout(log)
            .stderr(log2)
            .start()
            .with_context(|| format!("daemonizing (pid file {})", pid_file.display()))?;
    }
    logging::init(config.logging.level.to_filter(), config.logging.syslog);
    let rt = runtime()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr} (server.host, server.port)"))?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                log::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM received"),
                _ = int.recv() => log::info!("SIGINT received"),
            }
            signals.cancel();
        });
        server::run(config, listener, shutdown).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

fn real_main() -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider (for `rediss://`); a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            daemonize,
            pid_file,
            log_file,
        } => serve(config, daemonize, pid_file, log_file),
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
                    force,
                },
        } => {
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
            };
            let (password, api_key) = admin::config_init(&output, &opts, force)?;
            println!("✅ Wrote {}", output.display());
            println!("   Dashboard login: admin / {password}");
            println!("   API key:         {api_key}");
            println!("   (shown once: they are stored only in that file)");
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
            }
        }
    }
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
