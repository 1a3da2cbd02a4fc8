//! Load for the login-flood test and benchmark: wrong-password logins through the real form
//! (GET for the CSRF cookie, then POST) from many loopback source addresses, and a health
//! poller that times every answer meanwhile.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest one request of the flood may take before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// How a flood went: the POST statuses seen, and requests that failed outright.
#[derive(Debug, Default)]
pub struct FloodOutcome {
    pub statuses: BTreeMap<u16, usize>,
    /// Connections refused, reset or timed out (with the first few reasons).
    pub failures: usize,
    pub failure_samples: Vec<String>,
    pub elapsed: Duration,
}

/// One HTTP/1.1 exchange from `source` (a loopback address) with `Connection: close`.
async fn exchange(source: Ipv4Addr, port: u16, request: String) -> Result<String, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let work = async {
        let mut s = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .map_err(|e| format!("connect from {source}: {e}"))?;
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(String::from_utf8_lossy(&resp).into_owned())
    };
    tokio::time::timeout(REQUEST_DEADLINE, work)
        .await
        .map_err(|_| format!("no answer within {REQUEST_DEADLINE:?}"))?
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One wrong-password login through the form; the POST's status.
async fn bad_login(source: Ipv4Addr, port: u16, n: usize) -> Result<u16, String> {
    let page = exchange(
        source,
        port,
        "GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into(),
    )
    .await?;
    let cookie = page
        .lines()
        .find_map(|l| {
            let l = l
                .strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))?;
            l.split(';').next().map(str::to_string)
        })
        .ok_or_else(|| format!("GET /login set no cookie (status {})", status_of(&page)))?;
    let needle = "name=\"csrf\" value=\"";
    let at = page
        .find(needle)
        .ok_or("the login page has no csrf field")?
        + needle.len();
    let csrf = &page[at..at + page[at..].find('"').ok_or("unterminated csrf")?];
    let body = format!("username=flood-{n}&password=wrong-{n}&csrf={csrf}");
    let post = format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Ok(status_of(&exchange(source, port, post).await?))
}

/// Sends `attempts` wrong-password logins (distinct user names) to the server on `port`, from
/// `addresses` loopback addresses (127.0.0.2 and up), `concurrency` at a time.
pub fn login_flood(port: u16, attempts: usize, addresses: u8, concurrency: usize) -> FloodOutcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("flood runtime");
    rt.block_on(async {
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let next = next.clone();
            workers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= attempts {
                        return seen;
                    }
                    let source = Ipv4Addr::new(127, 0, 0, 2 + (n % usize::from(addresses)) as u8);
                    seen.push(bad_login(source, port, n).await);
                }
            }));
        }
        let mut outcome = FloodOutcome::default();
        for w in workers {
            for r in w.await.expect("flood worker") {
                match r {
                    Ok(s) => *outcome.statuses.entry(s).or_default() += 1,
                    Err(e) => {
                        outcome.failures += 1;
                        if outcome.failure_samples.len() < 5 {
                            outcome.failure_samples.push(e);
                        }
                    }
                }
            }
        }
        outcome.elapsed = started.elapsed();
        outcome
    })
}

/// Polls `GET /api/fleet/cluster/health` every `every` until stopped; each answer's latency and
/// status (0: no answer within 5 s).
#[derive(Debug)]
pub struct HealthPoller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Duration, u16)>>>,
}

impl HealthPoller {
    pub fn start(port: u16, every: Duration) -> HealthPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Bounded even if nobody stops it: ten minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = Instant::now();
                let status = crate::http("GET", port, "/api/fleet/cluster/health", &[])
                    .map(|(s, _)| s)
                    .unwrap_or(0);
                samples.push((t.elapsed(), status));
                std::thread::sleep(every);
            }
            samples
        });
        HealthPoller {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling; the samples in order.
    pub fn finish(mut self) -> Vec<(Duration, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("health poller"))
            .unwrap_or_default()
    }
}

impl Drop for HealthPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `p` quantile (0..=1) of `samples`' latencies.
pub fn latency_quantile(samples: &[(Duration, u16)], p: f64) -> Duration {
    let mut d: Vec<Duration> = samples.iter().map(|(d, _)| *d).collect();
    d.sort();
    if d.is_empty() {
        return Duration::ZERO;
    }
    d[((d.len() as f64 - 1.0) * p).round() as usize]
}

/// A node configuration with the dashboard's password set (sessions in memory), for floods.
pub fn flood_node_config(name: &str, port: u16, dir: &std::path::Path, cluster: &str) -> String {
    let (hash, public) =
        fleet_server::crypto::credentials_for("the-right-password").expect("credentials");
    format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  state_dir: {}\ncluster:\n  enabled: true\n  node_name: {name}\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n{cluster}auth:\n  api_key: {}\n  web_username: admin\n  web_password_hash: \"{hash}\"\n  session_public_key: \"{public}\"\nsessions:\n  backend: memory\n",
        dir.join("state").display(),
        crate::TEST_API_KEY,
    )
}
