//! `fleet-server serve`: daemonizing, the pid file, logging, the runtime, binding and the
//! signals (SIGTERM/SIGINT stop, SIGHUP reopens the log file), then `server::run`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{read, runtime};
use crate::config::Loaded;
use crate::{logging, server};

pub(super) fn serve(
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
        crate::identity::write_atomically(path, format!("{pid}\n").as_bytes(), 0o644)
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
