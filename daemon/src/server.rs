//! `run`: the daemon as a library. It takes an already bound listener and a shutdown token, so
//! tests run it in-process on port 0 and `cli serve` only parses, binds and wires signals.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::membership::{
    NodeState, node_name, node_record, record_outcome, spawn_membership_thread,
};
use crate::cluster::{self, Timing};
use crate::config::{Config, Origin};
use crate::http::{AppState, router};
use crate::identity;

/// How long in-flight HTTP requests may take to finish once shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// Runs the node until `shutdown` is cancelled: joins the cluster (when enabled), heartbeats,
/// serves HTTP on `listener`, then leaves the cluster and drains.
pub async fn run(
    config: Arc<Config>,
    origin: Origin,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = Arc::new(listener);
    // A package's first start: redeem its enrollment token for the full configuration. The
    // port answers meanwhile: 503 with "enrolling: …" (health included), so an installer or a
    // load balancer sees why, even while the backend is unreachable.
    let (config, refused) = if config.enrollment.is_some() {
        let (status, reason) =
            tokio::sync::watch::channel("enrolling: contacting the cluster backend".to_string());
        let early_tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            _ => None,
        };
        let early_stop = shutdown.child_token();
        let early = tokio::spawn(crate::serve::serve(
            listener.clone(),
            early_tls,
            crate::http::enrolling_router(reason.clone()),
            crate::http::enrolling_router(reason),
            crate::serve::Limits::from_config(&config.server),
            early_stop.clone(),
        ));
        let redeemed = crate::app::enroll::redeem(&config, &origin, &shutdown, &status).await;
        early_stop.cancel();
        let _ = tokio::time::timeout(DRAIN_DEADLINE, early).await;
        match redeemed {
            crate::app::enroll::Redemption::Redeemed(c) => (Arc::new(*c), None),
            crate::app::enroll::Redemption::Stopped => return Ok(()),
            crate::app::enroll::Redemption::Refused(reason) => (config, Some(reason)),
        }
    } else {
        (config, None)
    };
    // TLS settings (which enrollment may have brought) are checked before anything joins.
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    let state_dir = &config.server.state_dir;
    let name = node_name(&config).with_context(|| {
        format!(
            "keeping the node name in server.state_dir {}",
            state_dir.display()
        )
    })?;
    let id = identity::load_or_create_node_id(state_dir, &name).with_context(|| {
        format!(
            "keeping the node identity in server.state_dir {}",
            state_dir.display()
        )
    })?;
    let node = Arc::new(node_record(&config, id, name, local.port()));
    let tracker = TaskTracker::new();

    let (backend, state) = if let Some(reason) = refused {
        record_outcome(state_dir, &format!("refused {reason}"));
        // Not in the cluster: serve health (503, with the reason) until stopped; no retries.
        (None, Arc::new(NodeState::refused(reason)))
    } else if config.cluster.enabled {
        let timing = Timing::of(&config.cluster);
        let backend = cluster::open(&config).context("opening the cluster backend")?;
        log::info!(
            "✅ Cluster mode ENABLED (node: {}, backend: {})",
            node.id,
            backend.kind()
        );
        let state = Arc::new(NodeState::new(&timing));
        let first = CancellationToken::new();
        // Its own backend instance and thread: heartbeats do not queue behind requests.
        let for_membership = config.clone();
        let left = spawn_membership_thread(
            move || cluster::open(&for_membership).context("opening the cluster backend"),
            (*node).clone(),
            timing,
            state.clone(),
            shutdown.child_token(),
            first.clone(),
        )
        .context("starting the membership thread")?;
        tracker.spawn(async move {
            let _ = left.await;
        });
        let (joined, stopping, id, dir) = (
            state.clone(),
            shutdown.child_token(),
            node.id.clone(),
            state_dir.clone(),
        );
        tracker.spawn(async move {
            // Until the first registration (a backend that is down may take a while) or a stop.
            while !joined.is_registered() {
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
            record_outcome(&dir, &format!("joined {id}"));
        });
        // Startup lines come in the guide's order when the backend answers promptly; a backend
        // that is down does not hold up serving (health says 503 meanwhile).
        let _ = tokio::time::timeout(timing.op_timeout() * 3, first.cancelled()).await;
        (Some(backend), state)
    } else {
        log::info!(
            "ℹ️ Cluster mode not enabled: running as a single node (node: {}). Set cluster.enabled: true to join a cluster.",
            node.id
        );
        (None, Arc::new(NodeState::single_node()))
    };

    let sessions = crate::cluster::open_sessions(&config).context("opening the session store")?;
    let app = AppState {
        config: config.clone(),
        backend,
        node,
        state,
        sessions,
        limiter: Default::default(),
        builder: crate::app::package::Builder::from_config(&config)
            .context("loading the package signing identity (package.signing)")?,
        tls: tls.is_some(),
        downloads: Arc::new(crate::app::downloads::DownloadStore::new(state_dir)),
    };
    // Expired download links go within a minute, even if nobody asks for them.
    let (downloads, stopping) = (app.downloads.clone(), shutdown.child_token());
    tracker.spawn(async move {
        loop {
            let d = downloads.clone();
            let _ = tokio::task::spawn_blocking(move || d.sweep()).await;
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            }
        }
    });
    let overflow = crate::http::overflow_router(app.clone());
    let app_router = router(app);
    let limits = crate::serve::Limits::from_config(&config.server);
    if tls.is_some() {
        log::info!("✅ Fleet server started on {local} (HTTPS)");
    } else {
        log::info!("✅ Fleet server started on {local}");
    }
    let served = tokio::spawn(crate::serve::serve(
        listener,
        tls,
        app_router,
        overflow,
        limits,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    log::info!("stopping: leaving the cluster and draining requests");
    tracker.close();
    // Leaving the cluster has its own deadline inside the membership task.
    tracker.wait().await;
    match tokio::time::timeout(DRAIN_DEADLINE, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("HTTP server task failed: {e}"),
        Err(_) => log::warn!("requests still open after {DRAIN_DEADLINE:?}: closing them"),
    }
    log::info!("stopped");
    Ok(())
}
