//! The node's life in the cluster: register, heartbeat, re-register after a backend outage or
//! data loss, leave on shutdown; the health state the HTTP API reports; and what the node
//! publishes about itself (name, addresses, record) and the first-outcome file for installers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterError, Heartbeat, Membership, NodeRecord, Timing};
use crate::config::Config;
use crate::identity;

/// Why a node is not healthy, as the health endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// Not registered yet (starting).
    Starting,
    /// The backend cannot be reached or refuses us.
    Backend(String),
    /// Another live node holds our name.
    NameTaken(String),
    /// An admin removed this node.
    Removed,
    /// The package's enrollment was refused: this node is not part of the cluster.
    Enrollment(String),
    /// Shutting down.
    Stopping,
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::Starting => f.write_str("not registered in the cluster yet"),
            Unhealthy::Backend(r) => write!(f, "{r}"),
            Unhealthy::NameTaken(r) => write!(f, "{r}"),
            Unhealthy::Removed => f.write_str("this node was removed from the cluster by an admin"),
            Unhealthy::Enrollment(r) => write!(f, "enrollment refused: {r}"),
            Unhealthy::Stopping => f.write_str("shutting down"),
        }
    }
}

/// Shared, cheap-to-read state of this node (the health endpoint reads it on every request).
#[derive(Debug)]
pub struct NodeState {
    problem: Mutex<Option<Unhealthy>>,
    registered: AtomicBool,
    last_ok: Mutex<Option<Instant>>,
    /// Active nodes as of the last heartbeat.
    pub active_nodes: AtomicU64,
    pub heartbeats_total: AtomicU64,
    pub backend_errors_total: AtomicU64,
    pub registrations_total: AtomicU64,
    /// Last heartbeat round trip, µs.
    pub heartbeat_latency_us: AtomicU64,
    /// Sum of heartbeat round trips, µs (with `heartbeats_total`, a mean).
    pub heartbeat_latency_sum_us: AtomicU64,
    /// Longest a healthy node may go without an acknowledged heartbeat.
    stale_after: Duration,
    /// Wakes the housekeeping task (`app::housekeeping`) out of turn: after the first heartbeat
    /// of a registration, at start and once the backend lost this node (and maybe its users).
    housekeeping_due: tokio::sync::Notify,
}

impl NodeState {
    pub fn new(timing: &Timing) -> Self {
        NodeState {
            problem: Mutex::new(Some(Unhealthy::Starting)),
            registered: AtomicBool::new(false),
            last_ok: Mutex::new(None),
            active_nodes: AtomicU64::new(0),
            heartbeats_total: AtomicU64::new(0),
            backend_errors_total: AtomicU64::new(0),
            registrations_total: AtomicU64::new(0),
            heartbeat_latency_us: AtomicU64::new(0),
            heartbeat_latency_sum_us: AtomicU64::new(0),
            stale_after: timing.interval + timing.op_timeout() * 2,
            housekeeping_due: tokio::sync::Notify::new(),
        }
    }

    /// A state for a server without cluster mode: always healthy.
    pub fn single_node() -> Self {
        let s = NodeState::new(&Timing {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(7200),
        });
        s.set_ok();
        s.active_nodes.store(1, Ordering::Relaxed);
        s
    }

    /// A node whose enrollment was refused: unhealthy for good.
    pub fn refused(reason: String) -> Self {
        let s = NodeState::single_node();
        s.active_nodes.store(0, Ordering::Relaxed);
        s.set_problem(Unhealthy::Enrollment(reason));
        s
    }

    /// `None` when healthy, else why not.
    pub fn health(&self) -> Option<Unhealthy> {
        // The lock only guards a small value; a poisoned lock still holds a valid one.
        let problem = self
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if problem.is_some() {
            return problem;
        }
        let last = *self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some(t) if t.elapsed() > self.stale_after => Some(Unhealthy::Backend(format!(
                "no heartbeat acknowledged for {:.1} s",
                t.elapsed().as_secs_f64()
            ))),
            _ => None,
        }
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Resolves when the membership loop asks for housekeeping now (a request made while
    /// nobody waits is kept for the next wait).
    pub async fn housekeeping_due(&self) {
        self.housekeeping_due.notified().await
    }

    pub(crate) fn want_housekeeping(&self) {
        self.housekeeping_due.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn mark_registered_for_test(&self) {
        self.registered.store(true, Ordering::Relaxed);
        self.set_ok();
    }

    fn set_ok(&self) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn set_problem(&self, p: Unhealthy) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
    }
}

/// Retry delays after failures: exponential from 200 ms, capped at the heartbeat interval,
/// with jitter so a fleet that lost its backend does not come back in lockstep.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Backoff { attempt: 0, cap }
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let base = Duration::from_millis(200).saturating_mul(1 << self.attempt.min(10));
        self.attempt = self.attempt.saturating_add(1);
        let d = base.min(self.cap);
        // Between half and all of the delay.
        d.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Registers and heartbeats until `shutdown`, then leaves the cluster.
/// `first_attempt` is cancelled once the first registration attempt has ended (either way), so
/// that startup can print its lines in the guide's order.
pub async fn run_membership(
    backend: Arc<dyn Membership>,
    node: NodeRecord,
    timing: Timing,
    state: Arc<NodeState>,
    shutdown: CancellationToken,
    first_attempt: CancellationToken,
) {
    let mut backoff = Backoff::new(timing.interval);
    let mut registered = false;
    let mut ever_registered = false;
    // Housekeeping is asked for after the first heartbeat that follows a registration (at
    // start, and after the backend lost this node), then it keeps its own minute.
    let mut housekeeping_due = true;
    // The last problem logged, so each state change is logged once, not each retry.
    let mut logged: Option<String> = None;

    loop {
        let started = Instant::now();
        let delay = if !registered {
            match backend.register(&node).await {
                Ok(active) => {
                    registered = true;
                    backoff.reset();
                    state.registered.store(true, Ordering::Relaxed);
                    state.registrations_total.fetch_add(1, Ordering::Relaxed);
                    state.active_nodes.store(active as u64, Ordering::Relaxed);
                    record_latency(&state, started.elapsed());
                    state.set_ok();
                    if ever_registered {
                        log::info!("✅ Re-registered node in cluster: {}", node.id);
                    } else {
                        log::info!("✅ Registered node in cluster: {}", node.id);
                    }
                    if logged.take().is_some() && ever_registered {
                        log::info!("✅ Cluster backend reachable again");
                    }
                    ever_registered = true;
                    timing.interval
                }
                Err(e) => {
                    state.backend_errors_total.fetch_add(1, Ordering::Relaxed);
                    on_error(&state, &e, &mut logged, &node);
                    match e {
                        // Waiting for the other holder to leave or expire: no need to hurry.
                        ClusterError::NameTaken { .. } => timing.interval,
                        ClusterError::Removed(_) => break_removed(&state, &shutdown).await,
                        _ => backoff.next_delay(),
                    }
                }
            }
        } else {
            match backend.heartbeat(&node).await {
                Ok(Heartbeat::Alive { active }) => {
                    state.heartbeats_total.fetch_add(1, Ordering::Relaxed);
                    state.active_nodes.store(active as u64, Ordering::Relaxed);
                    record_latency(&state, started.elapsed());
                    state.set_ok();
                    backoff.reset();
                    if logged.take().is_some() {
                        log::info!("✅ Cluster backend reachable again");
                    }
                    if std::mem::take(&mut housekeeping_due) {
                        state.want_housekeeping();
                    }
                    timing.interval
                }
                Ok(Heartbeat::NotMember) => {
                    log::warn!(
                        "the cluster backend no longer lists {} (expired, or the backend lost its data): registering again",
                        node.id
                    );
                    registered = false;
                    state.registered.store(false, Ordering::Relaxed);
                    // The backend may have lost more (its users): housekeeping right after the
                    // next registration's first heartbeat, not a minute later.
                    housekeeping_due = true;
                    Duration::ZERO
                }
                Ok(Heartbeat::Removed) => {
                    registered = false;
                    state.registered.store(false, Ordering::Relaxed);
                    break_removed(&state, &shutdown).await
                }
                Err(e) => {
                    state.backend_errors_total.fetch_add(1, Ordering::Relaxed);
                    on_error(&state, &e, &mut logged, &node);
                    backoff.next_delay()
                }
            }
        };
        first_attempt.cancel();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay.saturating_sub(started.elapsed().min(delay))) => {}
        }
    }

    state.set_problem(Unhealthy::Stopping);
    if registered {
        // Within the backend's leave deadline (`cluster::LEAVE_DEADLINE`, 2 s).
        match backend.deregister(&node.id).await {
            Ok(()) => log::info!("👋 Left the cluster: {}", node.id),
            Err(e) => log::warn!("could not leave the cluster cleanly: {e}"),
        }
    }
}

/// Runs [`run_membership`] and the backend's housekeeping (`app::housekeeping`, its own task)
/// on their own OS thread and single-threaded runtime, so that heartbeats never wait behind
/// request handling (a login flood, a package build) on the shared workers.
/// `open` makes the backend instance it uses, inside that runtime, so that its connections and
/// their background tasks live on that thread too. The returned receiver resolves once the node
/// has left the cluster (or the thread ended).
pub fn spawn_membership_thread(
    open: impl FnOnce() -> anyhow::Result<Arc<dyn Membership>>,
    node: NodeRecord,
    timing: Timing,
    state: Arc<NodeState>,
    shutdown: CancellationToken,
    first_attempt: CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let backend = {
        let _inside = runtime.enter();
        open()?
    };
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Beside the loop, on the same backend instance: what housekeeping learns
                // there (Redis: whether this credential may manage users) the heartbeat uses.
                let housekeeping = tokio::spawn(super::housekeeping::run(
                    backend.clone(),
                    state.clone(),
                    shutdown.clone(),
                ));
                run_membership(backend, node, timing, state, shutdown, first_attempt).await;
                housekeeping.abort();
            });
            // Dropping the runtime here closes the backend's connections on this thread.
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// A removed node stays up (serving 503) but stops heartbeating until restarted.
async fn break_removed(state: &NodeState, shutdown: &CancellationToken) -> Duration {
    state.set_problem(Unhealthy::Removed);
    log::error!(
        "❌ This node was removed from the cluster by an admin: heartbeats stopped. Remove {} and restart to join as a new node.",
        crate::identity::NODE_ID_FILE
    );
    shutdown.cancelled().await;
    Duration::ZERO
}

fn record_latency(state: &NodeState, d: Duration) {
    let us = d.as_micros() as u64;
    state.heartbeat_latency_us.store(us, Ordering::Relaxed);
    state
        .heartbeat_latency_sum_us
        .fetch_add(us, Ordering::Relaxed);
}

fn on_error(state: &NodeState, e: &ClusterError, logged: &mut Option<String>, node: &NodeRecord) {
    let (problem, text) = match e {
        ClusterError::NameTaken { .. } => (
            Unhealthy::NameTaken(e.to_string()),
            format!("❌ Cannot join the cluster as {}: {e}", node.id),
        ),
        // This node's credential may not do it (a storage node whose uid is not its name's):
        // not an outage; retried in case an admin enrolls it.
        ClusterError::NotPermitted { .. } => (
            Unhealthy::Backend(e.to_string()),
            format!("❌ Cannot join the cluster as {}: {e}", node.id),
        ),
        _ => (
            Unhealthy::Backend(e.to_string()),
            format!("❌ Cluster backend unavailable: {e} (retrying)"),
        ),
    };
    state.set_problem(problem);
    // Log once per kind of failure; the text of a repeated error may vary (ports, timings).
    let key = std::mem::discriminant(e);
    let key = format!("{key:?}");
    if logged.as_deref() != Some(key.as_str()) {
        log::error!("{text}");
        *logged = Some(key);
    }
}

/// This node's name: the configured one, or the hostname reduced to `[a-z0-9-]` at first
/// start, kept in the state directory (a later hostname does not rename the node).
pub fn node_name(config: &Config) -> std::io::Result<String> {
    match &config.cluster.node_name {
        Some(n) => Ok(n.to_string()),
        None => identity::load_or_keep_derived_name(
            &config.server.state_dir,
            &identity::hostname_node_name(),
        ),
    }
}

/// This machine's addresses to publish, best first (see [`crate::advertise`]).
pub fn local_addresses() -> Vec<String> {
    crate::advertise::local_addresses()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The file in the state directory that says how this start's first step ended: `joined <id>`
/// once the node registered, or `refused <reason>` when its enrollment was refused. Installers
/// (`provision.sh`, the pkg's postinstall) remove it, start the daemon and wait for it.
pub const OUTCOME_FILE: &str = "first-outcome";

pub fn record_outcome(state_dir: &std::path::Path, line: &str) {
    // One line, whatever the reason held.
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let path = state_dir.join(OUTCOME_FILE);
    if let Err(e) = identity::write_atomically(&path, format!("{line}\n").as_bytes(), 0o644) {
        log::warn!("cannot write {}: {e}", path.display());
    }
}

/// The record this node publishes about itself.
pub fn node_record(config: &Config, id: String, name: String, port: u16) -> NodeRecord {
    let addresses = local_addresses();
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let url = config.server.public_url.clone().unwrap_or_else(|| {
        let host = addresses
            .first()
            .map(|a| {
                if a.contains(':') {
                    format!("[{a}]")
                } else {
                    a.clone()
                }
            })
            .unwrap_or_else(|| "127.0.0.1".into());
        format!("{scheme}://{host}:{port}")
    });
    NodeRecord {
        id,
        name,
        hostname: identity::hostname(),
        addresses,
        version: crate::version::version().into(),
        os: std::env::consts::OS.into(),
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }

    #[test]
    fn health_goes_stale_without_acknowledged_heartbeats() {
        let s = NodeState::new(&Timing {
            interval: Duration::from_millis(1),
            timeout: Duration::from_millis(3),
        });
        assert_eq!(s.health(), Some(Unhealthy::Starting));
        s.set_ok();
        assert_eq!(s.health(), None);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(s.health(), Some(Unhealthy::Backend(_))));
    }
}
