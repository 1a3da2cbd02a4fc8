//! The backend's housekeeping (expired enrollment users, node users a Redis restart lost, etcd
//! node roles) as its own task beside the membership loop, on the membership thread and its
//! backend instance: once a minute while the node is in the cluster, and at once when the
//! membership loop asks (the first heartbeat at start, and again once the backend had lost
//! this node).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::membership::NodeState;
use crate::cluster::{ClusterError, Membership};

/// How often a node runs the backend's housekeeping.
pub const EVERY: Duration = Duration::from_secs(60);

/// Runs `backend.housekeeping()` until `shutdown`: see the module's comment for when.
pub async fn run(backend: Arc<dyn Membership>, state: Arc<NodeState>, shutdown: CancellationToken) {
    schedule(state, shutdown, EVERY, || {
        let backend = backend.clone();
        async move { backend.housekeeping().await }
    })
    .await
}

/// The schedule of [`run`], apart from the backend so that a test can count the turns.
async fn schedule<F, Fut>(
    state: Arc<NodeState>,
    shutdown: CancellationToken,
    every: Duration,
    mut turn: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ClusterError>>,
{
    // No periodic turn before the membership loop asked for the first one (after joining):
    // a node that never joined has nothing to keep tidy, and a backend that is down would
    // only log the same failures every minute.
    let mut next: Option<tokio::time::Instant> = None;
    loop {
        let periodic = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.housekeeping_due() => true,
            _ = periodic => false,
        };
        next = Some(tokio::time::Instant::now() + every);
        // A periodic turn waits for a node in the cluster with a backend that answers (the
        // membership loop's own retries cover an outage); one asked for runs at once.
        if !asked && (!state.is_registered() || state.health().is_some()) {
            continue;
        }
        // Shutdown does not wait for a turn (leaving the cluster has a 2 s budget).
        tokio::select! {
            _ = shutdown.cancelled() => return,
            done = turn() => if let Err(e) = done {
                log::debug!("housekeeping: {e}");
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Timing;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    fn state() -> Arc<NodeState> {
        Arc::new(NodeState::new(&Timing {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(7200),
        }))
    }

    /// The schedule with a counting turn; stopped when the token is.
    fn counted(
        state: &Arc<NodeState>,
        stop: &CancellationToken,
        every: Duration,
    ) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let turns = Arc::new(AtomicUsize::new(0));
        let counter = turns.clone();
        let task = tokio::spawn(schedule(state.clone(), stop.clone(), every, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }));
        (turns, task)
    }

    async fn wait_turns(turns: &AtomicUsize, at_least: usize) {
        let start = Instant::now();
        while turns.load(Ordering::SeqCst) < at_least {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} turns, not {at_least}",
                turns.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn runs_at_once_when_asked_not_before() {
        // A period far longer than the test: every turn seen was asked for.
        let (state, stop) = (state(), CancellationToken::new());
        let (turns, task) = counted(&state, &stop, Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(turns.load(Ordering::SeqCst), 0, "not asked yet");
        // The membership loop asks (its first heartbeat after joining).
        state.mark_registered_for_test();
        state.want_housekeeping();
        wait_turns(&turns, 1).await;
        // Asked again (the backend had lost the node): at once, not a period later.
        state.want_housekeeping();
        wait_turns(&turns, 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(turns.load(Ordering::SeqCst), 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn then_runs_once_a_period_while_in_the_cluster() {
        let (state, stop) = (state(), CancellationToken::new());
        let every = Duration::from_millis(100);
        let (turns, task) = counted(&state, &stop, every);
        state.mark_registered_for_test();
        state.want_housekeeping();
        let asked = Instant::now();
        wait_turns(&turns, 4).await;
        // Three periodic turns after the asked one: never faster than the period.
        assert!(asked.elapsed() >= every * 3, "{:?}", asked.elapsed());
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn periodic_turns_skip_a_node_out_of_the_cluster() {
        let (state, stop) = (state(), CancellationToken::new());
        let (turns, task) = counted(&state, &stop, Duration::from_millis(50));
        // Asked (a loss seen) while not registered: that turn runs, the periodic ones do not.
        state.want_housekeeping();
        wait_turns(&turns, 1).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(turns.load(Ordering::SeqCst), 1);
        stop.cancel();
        task.await.unwrap();
    }
}
