//! `fleet-server lb haproxy | render`: checks their arguments, opens the backend and runs the
//! load-balancer loops of `lb` until SIGTERM/SIGINT (or after one pass with `--once`).

use tokio_util::sync::CancellationToken;

use super::{LbCommand, load, runtime};
use crate::app::backend::open as backend_of;
use crate::config::Config;
use crate::lb;

pub(super) fn run(command: LbCommand) -> anyhow::Result<()> {
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
                haproxy_command(&c, &socket, &backend, &ca_file, once, shutdown).await
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
                render_command(&c, opts, shutdown).await
            }
        }
    })
}

/// `fleet-server lb haproxy`.
async fn haproxy_command(
    config: &Config,
    socket: &str,
    backend_name: &str,
    ca_file: &str,
    once: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if !lb::render::valid_section_name(backend_name) {
        anyhow::bail!("--backend {backend_name}: use letters, digits, `-`, `_` and `.`");
    }
    if ca_file.is_empty() || ca_file.contains(char::is_whitespace) || ca_file.contains(';') {
        anyhow::bail!("--ca-file {ca_file:?}: give a file path without spaces, or @system-ca");
    }
    let socket = lb::haproxy::Socket::parse(socket).map_err(anyhow::Error::msg)?;
    let backend = backend_of(config)?;
    let opts = lb::haproxy::Options {
        backend: backend_name.to_string(),
        ca_file: ca_file.to_string(),
    };
    lb::haproxy::run(
        backend,
        lb::haproxy::Client { socket },
        opts,
        config.cluster.heartbeat_interval(),
        once,
        shutdown,
    )
    .await
}

/// `fleet-server lb render`.
async fn render_command(
    config: &Config,
    opts: lb::render::Options,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if !lb::render::valid_section_name(&opts.name) {
        anyhow::bail!(
            "--name {}: use letters, digits, `-`, `_` and `.`",
            opts.name
        );
    }
    if opts.watch && opts.output.is_none() {
        anyhow::bail!("--watch needs --output FILE (the file the load balancer includes)");
    }
    if opts.reload.is_some() && opts.output.is_none() {
        anyhow::bail!("--reload needs --output FILE");
    }
    let backend = backend_of(config)?;
    lb::render::run(backend, opts, config.cluster.heartbeat_interval(), shutdown).await
}
