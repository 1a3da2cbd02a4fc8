//! Who is asking, for every route: the state handlers reach, the caller (the API key, or a
//! signed session and its CSRF token for a change), the session and login cookies, and the
//! login-attempt limiter. The API and the dashboard both build on it; it uses neither.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::membership::NodeState;
use crate::cluster::sessions::Session;
use crate::cluster::{Membership, NodeRecord};
use crate::config::Config;
use crate::crypto::constant_time_eq;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// `None` without cluster mode.
    pub backend: Option<Arc<dyn Membership>>,
    pub node: Arc<NodeRecord>,
    pub state: Arc<NodeState>,
    /// Web sessions (shared by every node when in Redis or etcd).
    pub sessions: Arc<dyn crate::cluster::sessions::SessionStore>,
    /// Failed-login counts per client and per user.
    pub limiter: Arc<crate::http::auth::LoginLimiter>,
    /// Builds node packages, with the template parts cached between builds.
    pub builder: crate::app::package::Builder,
    /// Served over TLS: cookies get `Secure`.
    pub tls: bool,
    /// Packages left on this node behind a direct download link.
    pub downloads: Arc<crate::app::downloads::DownloadStore>,
}

impl AppState {
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.sessions.timeout_minutes) * 60)
    }
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Holds the API key.
    ApiKey,
    /// A logged-in dashboard user.
    User(String),
}

impl Principal {
    /// For events and logs: `api-key` or `web:<user>`.
    pub fn label(&self) -> String {
        match self {
            Principal::ApiKey => "api-key".into(),
            Principal::User(u) => format!("web:{u}"),
        }
    }
}

/// The caller, by API key or session; for state-changing requests a session must also send its
/// CSRF token in `X-CSRF-Token`. 401 without credentials, 403 with a bad token.
pub async fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    changes_state: bool,
) -> Result<Principal, ApiError> {
    if has_api_key(headers, &app.config.auth) {
        return Ok(Principal::ApiKey);
    }
    let Some((_, session)) = current_session(app, headers).await else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "log in, or send the API key (X-API-Key header or Authorization: Bearer)".into(),
        ));
    };
    if changes_state {
        let token = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if token.is_empty() || !constant_time_eq(token.as_bytes(), session.csrf.expose().as_bytes())
        {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "missing or invalid CSRF token".into(),
            ));
        }
    }
    Ok(Principal::User(session.user))
}

/// An API error: the status and a short reason for the client.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        log::warn!("request failed: {e}");
        let status = match e {
            crate::cluster::ClusterError::NotPermitted { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

/// True when the request carries the configured API key (`X-API-Key` or a bearer token):
/// its SHA-256 matches the configured digest (nodes hold only the digest), compared in
/// constant time.
pub fn has_api_key(headers: &HeaderMap, auth: &crate::config::AuthConfig) -> bool {
    let Some(want) = auth.api_key_digest() else {
        return false;
    };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    given.is_some_and(|g| {
        let got: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(g.as_bytes()).into();
        constant_time_eq(&got, &want)
    })
}

/// The session cookie.
pub const SESSION_COOKIE: &str = "fleet_session";
/// The login form's double-submit cookie (there is no session yet to hold its token).
pub const LOGIN_COOKIE: &str = "fleet_login";

/// Reads one cookie from the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub fn set_cookie(app: &AppState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if app.tls {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    // Names and values are hex or fixed ASCII: always a valid header.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The logged-in session of a request, if any (and its id).
pub async fn current_session(app: &AppState, headers: &HeaderMap) -> Option<(String, Session)> {
    let sid = cookie(headers, SESSION_COOKIE)?;
    if sid.len() != 64 || !sid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match app.sessions.get(&sid, app.session_ttl()).await {
        Ok(Some(s)) if session_is_signed(app, &sid, &s) => Some((sid, s)),
        Ok(Some(_)) => {
            log::warn!(
                "a session record without a valid signature was refused (written by someone without the admin's password?)"
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            log::warn!("session store unavailable: {e}");
            None
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True when the stored session carries the signature of the key the admin's password
/// derives (checked with `auth.session_public_key`), for this very session id, for the
/// configured user, and has not passed its signed expiry.
fn session_is_signed(app: &AppState, sid: &str, s: &Session) -> bool {
    let auth = &app.config.auth;
    let Some(pk) = auth
        .session_public_key
        .as_deref()
        .and_then(|k| crate::config::parse_public_key(k).ok())
    else {
        return false;
    };
    let msg = crate::crypto::session_message(
        &crate::cluster::sessions::digest(sid),
        &s.user,
        s.csrf.expose(),
        s.created_ms,
        s.expires_ms,
    );
    s.user == auth.web_username.as_str()
        && now_ms() < s.expires_ms
        && crate::crypto::verify(&pk, &msg, &s.sig)
}

/// The login limiter's key for a client: its address, or for IPv6 its /64 (one subscriber's
/// prefix, which hands out addresses by the billion).
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        std::net::IpAddr::V6(v6) => format!(
            "ip:{}",
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
        ),
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
    }
}

/// Failed logins allowed per client (address, or IPv6 /64) within `LOGIN_WINDOW`; the next is
/// refused.
pub const LOGIN_ATTEMPTS: u32 = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Failed logins allowed per node within `LOGIN_WINDOW`, whoever sends them: an attacker with
/// many addresses and user names gets this many Argon2 verifications a minute, not 5 per address.
/// Every login (the right password too) is refused while it is used up.
pub const GLOBAL_LOGIN_FAILURES: u32 = 100;
/// Logins that may wait for a verification slot; the next is answered 503 at once.
pub const VERIFY_QUEUE: usize = 16;

/// neither the async workers (health, heartbeats, every other request) nor all the cores.
#[derive(Debug)]
pub struct Verifier {
    /// One permit per verification that may run at once.
    running: Arc<tokio::sync::Semaphore>,
    /// One permit per login admitted (running or waiting): bounds the queue.
    admitted: Arc<tokio::sync::Semaphore>,
}

/// Too many logins are waiting for a verification: answer 503 and let the client retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Default for Verifier {
    fn default() -> Self {
        // Half the cores (at least one): the other half keeps serving while logins pour in.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Verifier::new((cores / 2).max(1), VERIFY_QUEUE)
    }
}

impl Verifier {
    pub fn new(parallel: usize, queue: usize) -> Self {
        Verifier {
            running: Arc::new(tokio::sync::Semaphore::new(parallel)),
            admitted: Arc::new(tokio::sync::Semaphore::new(parallel + queue)),
        }
    }

    /// `verify_password` on the blocking pool; `Err(Busy)` at once when the queue is full.
    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, Busy> {
        let _admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        // The semaphore is never closed.
        let _running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        let (password, hash) = (password.to_string(), hash.to_string());
        tokio::task::spawn_blocking(move || crate::crypto::verify_password(&password, &hash))
            .await
            .map_err(|_| Busy)
    }
}

/// Counts failed logins per key (a client address, a user name) in a sliding window.
/// Kept per node: a client spreading attempts over N nodes gets N times the budget, which the
/// window keeps small; sessions themselves are shared.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
    /// The node's failures within the window and the attempts being checked now.
    global: Mutex<GlobalBudget>,
    /// Where the password checks run.
    pub verifier: Verifier,
}

/// The per-node budget: every attempt takes a place before its password is checked, so that
/// concurrent attempts cannot all pass the check of a budget that only failures fill.
#[derive(Debug, Default)]
struct GlobalBudget {
    /// Failures within the window, oldest first.
    failed: VecDeque<Instant>,
    /// Attempts holding a place (`GlobalPlace`) that have not ended yet.
    pending: u32,
}

/// One attempt's place in the per-node budget. Dropped, it gives the place back (a good login,
/// or one refused before its password was checked); `failed` keeps it for the window.
#[derive(Debug)]
pub struct GlobalPlace<'a> {
    limiter: &'a LoginLimiter,
    done: bool,
}

impl GlobalPlace<'_> {
    /// The attempt failed: its place stays taken for `LOGIN_WINDOW`.
    pub fn failed(mut self) {
        let mut g = self.limiter.global();
        g.pending = g.pending.saturating_sub(1);
        g.failed.push_back(Instant::now());
        // Bounded: older entries beyond the budget can never matter.
        while g.failed.len() > GLOBAL_LOGIN_FAILURES as usize {
            g.failed.pop_front();
        }
        self.done = true;
    }
}

impl Drop for GlobalPlace<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut g = self.limiter.global();
            g.pending = g.pending.saturating_sub(1);
        }
    }
}

impl LoginLimiter {
    fn global(&self) -> std::sync::MutexGuard<'_, GlobalBudget> {
        self.global.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place in this node's failure budget for one attempt, or `None` when the failures
    /// within the window and the attempts being checked together use it up. At most
    /// `GLOBAL_LOGIN_FAILURES` passwords are checked per window beyond the good ones.
    pub fn reserve_global(&self) -> Option<GlobalPlace<'_>> {
        let mut g = self.global();
        while g
            .failed
            .front()
            .is_some_and(|t| t.elapsed() >= LOGIN_WINDOW)
        {
            g.failed.pop_front();
        }
        if g.failed.len() as u32 + g.pending >= GLOBAL_LOGIN_FAILURES {
            return None;
        }
        g.pending += 1;
        Some(GlobalPlace {
            limiter: self,
            done: false,
        })
    }

    /// True when `key` has used up its attempts.
    pub fn is_blocked(&self, key: &str) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(key) else {
            return false;
        };
        list.retain(|t| t.elapsed() < LOGIN_WINDOW);
        list.len() as u32 >= LOGIN_ATTEMPTS
    }

    /// Records a failure for `key`.
    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the map: forget the quietest keys when an attacker sprays addresses.
        if map.len() > 10_000 {
            map.retain(|_, v| v.iter().any(|t| t.elapsed() < LOGIN_WINDOW));
        }
        map.entry(key.to_string()).or_default().push(Instant::now());
    }

    /// Forgets `key`'s failures after a good login.
    pub fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::hash_password;

    #[test]
    fn the_sixth_attempt_is_blocked() {
        let l = LoginLimiter::default();
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(!l.is_blocked("ip:192.0.2.1"));
            l.fail("ip:192.0.2.1");
        }
        assert!(l.is_blocked("ip:192.0.2.1"));
        assert!(!l.is_blocked("ip:192.0.2.2"));
        l.clear("ip:192.0.2.1");
        assert!(!l.is_blocked("ip:192.0.2.1"));
    }

    #[test]
    fn the_global_budget_blocks_everyone() {
        let l = LoginLimiter::default();
        for _ in 0..GLOBAL_LOGIN_FAILURES {
            l.reserve_global().expect("within the budget").failed();
        }
        assert!(l.reserve_global().is_none());
        assert!(
            !l.is_blocked("ip:192.0.2.9"),
            "per-client counts are separate"
        );
    }

    #[test]
    fn a_good_login_gives_its_place_back() {
        let l = LoginLimiter::default();
        for _ in 0..GLOBAL_LOGIN_FAILURES - 1 {
            l.reserve_global().unwrap().failed();
        }
        // The last place, taken and given back by good logins, again and again.
        for _ in 0..10 {
            let place = l.reserve_global().expect("one place left");
            assert!(
                l.reserve_global().is_none(),
                "the place is held while checked"
            );
            drop(place);
        }
        l.reserve_global().unwrap().failed();
        assert!(l.reserve_global().is_none());
    }

    /// Many wrong logins at once, each checked by a real Argon2 verification: no more passwords
    /// are checked than the budget, however the attempts interleave.
    #[test]
    fn concurrent_wrong_logins_are_checked_at_most_budget_times() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let checked = rt.block_on(async {
            let hash = Arc::new(hash_password("right"));
            let limiter = Arc::new(LoginLimiter {
                verifier: Verifier::new(8, 400),
                ..LoginLimiter::default()
            });
            let checked = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let mut tasks = Vec::new();
            for _ in 0..300 {
                let (limiter, hash, checked) = (limiter.clone(), hash.clone(), checked.clone());
                tasks.push(tokio::spawn(async move {
                    let Some(place) = limiter.reserve_global() else {
                        return;
                    };
                    let ok = limiter.verifier.verify("wrong", &hash).await;
                    checked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert_eq!(ok, Ok(false));
                    place.failed();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            checked.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert_eq!(checked, GLOBAL_LOGIN_FAILURES, "passwords checked");
    }

    #[test]
    fn a_full_verification_queue_answers_busy_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let hash = hash_password("pw");
            let v = Verifier::new(1, 1);
            assert_eq!(v.verify("pw", &hash).await, Ok(true));
            assert_eq!(v.verify("nope", &hash).await, Ok(false));
            // Both places taken (one running, one waiting): the next finds no room.
            let held = v.admitted.clone().try_acquire_many_owned(2).unwrap();
            let started = Instant::now();
            assert_eq!(v.verify("pw", &hash).await, Err(Busy));
            assert!(started.elapsed() < Duration::from_millis(50), "not at once");
            drop(held);
            assert_eq!(v.verify("pw", &hash).await, Ok(true), "room again");
        });
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fleet_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "fleet_session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
