//! The HTTP(S) listener: our own accept loop over hyper's HTTP/1 server, so that a client cannot
//! hold a connection without sending (a deadline for each request's headers, which also bounds
//! an idle kept-alive connection), connections are capped in total and per client address, and
//! health still answers when the cap is reached (a small overflow lane that serves health and
//! answers everything else 503, one request per connection).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::ServerConfig;

/// The client's address, for login throttling and logs (the same for plain and TLS listeners).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Connections beyond the cap that are still served (health, or a quick 503).
const OVERFLOW_CONNECTIONS: usize = 32;
/// Overflow places one client address may hold, so that one client cannot fill the lane.
const OVERFLOW_PER_CLIENT: usize = 4;
/// Deadline for the one request of an overflow connection (TLS handshake included).
const OVERFLOW_DEADLINE: Duration = Duration::from_secs(2);
/// Deadline for a TLS handshake in the normal lane.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Descriptors kept for everything but client connections (backend connections, files, logs).
const RESERVED_DESCRIPTORS: u64 = 64;

/// How many connections, and how long a client may take to send a request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Also how long a kept-alive connection may stay idle before its next request.
    pub header_timeout: Duration,
    pub max_total: usize,
    pub max_per_client: usize,
}

impl Limits {
    /// The configured limits, with the total lowered to fit the process's descriptor limit.
    pub fn from_config(c: &ServerConfig) -> Limits {
        let configured = c.max_connections.get() as usize;
        let max_total = match descriptor_limit() {
            Some(n) => configured.min(
                n.saturating_sub(RESERVED_DESCRIPTORS + OVERFLOW_CONNECTIONS as u64)
                    .max(16) as usize,
            ),
            None => configured,
        };
        if max_total < configured {
            log::info!(
                "server.max_connections lowered to {max_total}: the descriptor limit (ulimit -n) leaves no room for {configured}"
            );
        }
        Limits {
            header_timeout: Duration::from_secs(u64::from(c.header_timeout_seconds)),
            max_total,
            max_per_client: c.max_connections_per_client.get() as usize,
        }
    }
}

fn descriptor_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Which lane an accepted connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Normal,
    /// Over a cap: one request, health or 503.
    Overflow,
}

/// Open connections, in total and per client address.
#[derive(Debug, Default)]
struct Counts {
    normal: usize,
    overflow: usize,
    per_client: HashMap<IpAddr, usize>,
    overflow_per_client: HashMap<IpAddr, usize>,
}

fn give_back(map: &mut HashMap<IpAddr, usize>, ip: &IpAddr) {
    if let Some(n) = map.get_mut(ip) {
        *n -= 1;
        if *n == 0 {
            map.remove(ip);
        }
    }
}

/// Held by a connection's task: gives its place back when the connection ends.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
    lane: Lane,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match self.lane {
            Lane::Normal => {
                c.normal -= 1;
                give_back(&mut c.per_client, &self.ip);
            }
            Lane::Overflow => {
                c.overflow -= 1;
                give_back(&mut c.overflow_per_client, &self.ip);
            }
        }
    }
}

/// A place for a new connection from `ip`, or `None`: close it at once.
fn admit(counts: &Arc<Mutex<Counts>>, limits: &Limits, ip: IpAddr) -> Option<Slot> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    let mine = c.per_client.get(&ip).copied().unwrap_or(0);
    let lane = if c.normal < limits.max_total && mine < limits.max_per_client {
        c.normal += 1;
        *c.per_client.entry(ip).or_default() += 1;
        Lane::Normal
    } else if c.overflow < OVERFLOW_CONNECTIONS
        && c.overflow_per_client.get(&ip).copied().unwrap_or(0) < OVERFLOW_PER_CLIENT
    {
        c.overflow += 1;
        *c.overflow_per_client.entry(ip).or_default() += 1;
        Lane::Overflow
    } else {
        return None;
    };
    Some(Slot {
        counts: counts.clone(),
        ip,
        lane,
    })
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown`, then lets open
/// connections finish their requests; returns once they all ended. `overflow` answers the
/// connections over a cap (it should serve health and answer 503 otherwise).
pub async fn serve(
    listener: Arc<TcpListener>,
    tls: Option<rustls::ServerConfig>,
    app: Router,
    overflow: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let tracker = TaskTracker::new();
    // Logged once per run of failures, not per attempt (EMFILE repeats until a descriptor frees).
    let mut accept_failing = false;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if !accept_failing {
                        log::warn!("accepting connections failed: {e} (retrying)");
                        accept_failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        accept_failing = false;
        let Some(slot) = admit(&counts, &limits, peer.ip()) else {
            log::debug!("connection from {peer} closed: over the connection cap");
            continue;
        };
        let router = match slot.lane {
            Lane::Normal => app.clone(),
            Lane::Overflow => overflow.clone(),
        };
        let (acceptor, stop) = (acceptor.clone(), shutdown.clone());
        tracker.spawn(async move {
            let lane = slot.lane;
            let handshake = match lane {
                Lane::Normal => HANDSHAKE_DEADLINE,
                Lane::Overflow => OVERFLOW_DEADLINE,
            };
            match acceptor {
                None => connection(tcp, peer, router, lane, &limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection(tls, peer, router, lane, &limits, stop).await,
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection until the client is done, a deadline passes, or shutdown (which lets
/// the request in flight finish).
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    lane: Lane,
    limits: &Limits,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(ClientAddr(peer)));
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    match lane {
        Lane::Normal => builder.header_read_timeout(limits.header_timeout),
        Lane::Overflow => builder
            .header_read_timeout(OVERFLOW_DEADLINE)
            .keep_alive(false),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let deadline = async {
        match lane {
            Lane::Normal => std::future::pending::<()>().await,
            Lane::Overflow => tokio::time::sleep(OVERFLOW_DEADLINE * 2).await,
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                log::debug!("connection from {peer} ended: {e}");
            }
        }
        _ = deadline => log::debug!("connection from {peer} closed: overflow deadline"),
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_send_connections_to_the_overflow_lane_then_close_them() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            max_total: 3,
            max_per_client: 2,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = admit(&counts, &limits, a).unwrap();
        let s2 = admit(&counts, &limits, a).unwrap();
        assert_eq!((s1.lane, s2.lane), (Lane::Normal, Lane::Normal));
        // `a` has its two; `b` still gets the last normal place.
        assert_eq!(admit(&counts, &limits, a).unwrap().lane, Lane::Overflow);
        let s3 = admit(&counts, &limits, b).unwrap();
        assert_eq!(s3.lane, Lane::Normal);
        let over_b: Vec<Slot> = (0..OVERFLOW_PER_CLIENT)
            .map(|_| admit(&counts, &limits, b).unwrap())
            .collect();
        assert!(over_b.iter().all(|s| s.lane == Lane::Overflow));
        assert!(
            admit(&counts, &limits, b).is_none(),
            "b used its overflow places"
        );
        let over: Vec<Slot> = (0..OVERFLOW_CONNECTIONS - OVERFLOW_PER_CLIENT)
            .map(|i| admit(&counts, &limits, IpAddr::from([198, 51, 100, i as u8])).unwrap())
            .collect();
        assert!(over.iter().all(|s| s.lane == Lane::Overflow));
        assert!(admit(&counts, &limits, a).is_none(), "both lanes full");
        drop(s1);
        assert_eq!(admit(&counts, &limits, a).unwrap().lane, Lane::Normal);
        drop((s2, s3, over, over_b));
        let c = counts.lock().unwrap();
        assert_eq!((c.normal, c.overflow, c.per_client.len()), (0, 0, 0));
        assert!(c.overflow_per_client.is_empty());
    }
}
