//! Web sessions in etcd (`<prefix>session/<sha256(sid)>` on a lease of the session's
//! lifetime), on the same connect options and error mapping as the membership backend.

use std::time::Duration;

use super::{connect_options, map_err};
use crate::cluster::sessions::{Session, SessionStore, digest};
use crate::cluster::{ClusterError, Timing};
use crate::config::ClusterConfig;

/// Sessions in etcd, shared by every node: `<prefix>session/<sha256(sid)>` holds the session as
/// JSON, bound to a lease of its own whose TTL is the session's lifetime, so etcd deletes it when
/// it runs out. Reading a session renews its lease (a keepalive: the lease starts again from the
/// TTL it was granted with, `sessions.timeout_minutes`, the same on every node).
pub struct EtcdSessions {
    endpoints: Vec<String>,
    /// Holds the password: never printed.
    options: etcd_client::ConnectOptions,
    prefix: String,
    /// Connected on first use, dropped after an outage so the next call connects again.
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
    timing: Timing,
}

impl std::fmt::Debug for EtcdSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSessions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSessions {
    /// Uses the cluster's etcd settings (endpoints, user, TLS); touches no network.
    pub fn new(cluster: &ClusterConfig, timing: Timing) -> Result<Self, ClusterError> {
        if cluster.etcd_endpoints.is_empty() {
            return Err(ClusterError::Backend {
                backend: "etcd",
                reason: "sessions on etcd need cluster.etcd_endpoints".into(),
            });
        }
        Ok(EtcdSessions {
            endpoints: cluster.etcd_endpoints.clone(),
            options: connect_options(cluster, &timing)?,
            prefix: cluster.key_prefix.to_string(),
            client: tokio::sync::Mutex::new(None),
            timing,
        })
    }

    fn key(&self, sid: &str) -> String {
        format!("{}session/{}", self.prefix, digest(sid))
    }

    /// Runs one operation with a deadline; an outage or a refused token drops the client. A
    /// token issued before the server's users or roles last changed ("revision of auth store is
    /// old": the primary's housekeeping grants and narrows roles while nodes serve logins) is
    /// not an outage: the client is dropped, a new one authenticates, and the operation runs
    /// again (`STALE_TRIES` in all).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, ClusterError>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        // A few tries: each fetches a token of the newest revision, and users or roles change
        // rarely (a burst of grants at most).
        for _ in 0..STALE_TRIES {
            match self.run_once(&f).await {
                Ok(r) => return r,
                Err(Stale) => *self.client.lock().await = None,
            }
        }
        Err(ClusterError::Auth {
            backend: "etcd",
            reason: format!(
                "the auth store changed {STALE_TRIES} times while new tokens were fetched"
            ),
        })
    }

    /// One try of `run`: `Err(Stale)` for a token of an old auth revision.
    async fn run_once<T, F, Fut>(&self, f: &F) -> Result<Result<T, ClusterError>, Stale>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        // The membership backend's deadline for one call (`EtcdMembership::run`).
        let deadline = self.timing.op_timeout() * 3;
        let result = tokio::time::timeout(deadline, async {
            let client = {
                let mut slot = self.client.lock().await;
                match slot.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let c = match etcd_client::Client::connect(
                            &self.endpoints,
                            Some(self.options.clone()),
                        )
                        .await
                        {
                            Ok(c) => c,
                            Err(e) => return Ok(Err(map_err(&e))),
                        };
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            match f(client).await {
                Ok(v) => Ok(Ok(v)),
                Err(e) if stale_token(&e) => Err(Stale),
                Err(e) => Ok(Err(map_err(&e))),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Ok(Err(ClusterError::Unreachable {
                backend: "etcd",
                reason: format!("the session store did not answer within {deadline:?}"),
            }))
        });
        if let Ok(Err(ClusterError::Unreachable { .. } | ClusterError::Auth { .. })) = &result {
            *self.client.lock().await = None;
        }
        result
    }
}

/// Tries of one session operation whose token turned out to be of an old auth revision.
const STALE_TRIES: usize = 4;

/// A try that met a token of an old auth revision.
struct Stale;

/// etcd refuses a token issued before its users or roles last changed.
fn stale_token(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("revision of auth store is old"))
}

#[async_trait::async_trait]
impl SessionStore for EtcdSessions {
    async fn put(&self, sid: &str, session: &Session, ttl: Duration) -> Result<(), ClusterError> {
        // A session is strings only: serialising it cannot fail.
        let json = serde_json::to_string(session).unwrap_or_default();
        let key = self.key(sid);
        let ttl = ttl.as_secs().max(1) as i64;
        self.run(|mut c| {
            let (key, json) = (key.clone(), json.clone());
            async move {
                let lease = c.lease_grant(ttl, None).await?.id();
                c.put(
                    key,
                    json,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await?;
                Ok(())
            }
        })
        .await
    }

    async fn get(&self, sid: &str, _ttl: Duration) -> Result<Option<Session>, ClusterError> {
        let key = self.key(sid);
        self.run(|mut c| {
            let key = key.clone();
            async move {
                let resp = c.get(key, None).await?;
                let Some(kv) = resp.kvs().first() else {
                    return Ok(None);
                };
                let session: Option<Session> = serde_json::from_slice(kv.value()).ok();
                if kv.lease() != 0 {
                    match c.lease_keep_alive(kv.lease()).await {
                        Ok(_) => {}
                        // Ran out between the read and the keepalive: the session is over.
                        Err(etcd_client::Error::LeaseKeepAliveError(m))
                            if m.contains("not found") =>
                        {
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(session)
            }
        })
        .await
    }

    async fn delete(&self, sid: &str) -> Result<(), ClusterError> {
        let key = self.key(sid);
        self.run(|mut c| {
            let key = key.clone();
            async move {
                let resp = c
                    .delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()))
                    .await?;
                // Its lease holds nothing now: end it rather than leave it to run out.
                for kv in resp.prev_kvs() {
                    if kv.lease() != 0 {
                        match c.lease_revoke(kv.lease()).await {
                            Ok(_) => {}
                            Err(etcd_client::Error::GRpcStatus(s))
                                if s.message().contains("lease not found") => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            }
        })
        .await
    }
}
