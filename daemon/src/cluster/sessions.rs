//! Web sessions, kept in the session backend so that any node behind the load balancer serves
//! any logged-in user: in memory (a single node), in Redis (`fleet:session:<sha256(sid)>`, also
//! through Sentinel, following failovers as the cluster's connection does), or
//! in etcd (`fleet:session/<sha256(sid)>`, bound to a lease of the session's lifetime).
//! The backend stores a digest of the session id, never the id itself, so a reader of the
//! backend cannot take over a session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::{ClusterError, Timing};
use crate::config::{ClusterConfig, Config, SessionBackendKind};

/// What a session knows.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user it belongs to.
    pub user: String,
    /// The token every form and state-changing request must echo.
    pub csrf: String,
    /// When it was made, ms since the epoch (the creating node's clock: informative).
    pub created_ms: u64,
    /// When it ends at the latest, ms since the epoch (signed: sliding expiry cannot pass it).
    #[serde(default)]
    pub expires_ms: u64,
    /// Hex Ed25519 signature by the key the admin's password derives, over the session id's
    /// digest and the fields above (`sessionsig::session_message`). A record without a valid
    /// one is refused, so a node that can write the store still cannot mint a session.
    #[serde(default)]
    pub sig: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("csrf", &"***")
            .finish()
    }
}

/// The digest a session is stored (and signed) under.
pub fn digest(sid: &str) -> String {
    hex::encode(Sha256::digest(sid.as_bytes()))
}

/// Where sessions live.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Stores a session under `sid` for `ttl`.
    async fn put(&self, sid: &str, session: &Session, ttl: Duration) -> Result<(), ClusterError>;
    /// The session, if it exists; its lifetime starts again (sliding expiry).
    async fn get(&self, sid: &str, ttl: Duration) -> Result<Option<Session>, ClusterError>;
    /// Ends a session everywhere.
    async fn delete(&self, sid: &str) -> Result<(), ClusterError>;
}

/// Sessions in this process only.
#[derive(Debug, Default)]
pub struct MemorySessions {
    map: Mutex<HashMap<String, (Session, Instant)>>,
}

#[async_trait::async_trait]
impl SessionStore for MemorySessions {
    async fn put(&self, sid: &str, session: &Session, ttl: Duration) -> Result<(), ClusterError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, until)| *until > Instant::now());
        map.insert(digest(sid), (session.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn get(&self, sid: &str, ttl: Duration) -> Result<Option<Session>, ClusterError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(sid);
        match map.get_mut(&key) {
            Some((s, until)) if *until > Instant::now() => {
                *until = Instant::now() + ttl;
                Ok(Some(s.clone()))
            }
            Some(_) => {
                map.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, sid: &str) -> Result<(), ClusterError> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(sid));
        Ok(())
    }
}

/// Sessions in Redis, shared by every node; through Sentinel, on whichever server is master.
pub struct RedisSessions {
    /// Replaced when Sentinel names another master (or the same one after an error).
    conn: std::sync::RwLock<ConnectionManager>,
    prefix: String,
    timing: Timing,
    /// Set when the master is found through Sentinel (`cluster::redis::Sentinel`).
    sentinel: Option<crate::cluster::redis::Sentinel>,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// Touches no network: connects at the first call (through the Sentinels when `cfg`
    /// names them).
    fn new(cfg: &ClusterConfig, prefix: &str) -> Result<Self, ClusterError> {
        let timing = Timing {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(6),
        };
        let (sentinel, settings) = match crate::cluster::redis::Sentinel::from_config(cfg) {
            Some((s, settings)) => (Some(s), settings),
            None => (None, cfg.clone()),
        };
        let info = crate::cluster::redis::connection_info(&settings)?;
        Ok(RedisSessions {
            conn: std::sync::RwLock::new(crate::cluster::redis::connect_lazy(info, &timing)?),
            prefix: prefix.to_string(),
            timing,
            sentinel,
        })
    }

    fn key(&self, sid: &str) -> String {
        format!("{}session:{}", self.prefix, digest(sid))
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let deadline = Duration::from_secs(3);
        if let Some(s) = &self.sentinel {
            s.follow(deadline, |settings| {
                let info = crate::cluster::redis::connection_info(settings)?;
                let fresh = crate::cluster::redis::connect_lazy(info, &self.timing)?;
                *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                Ok(())
            })
            .await?;
        }
        let mut conn = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        let result = match tokio::time::timeout(deadline, cmd.query_async(&mut conn)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => (
                crate::cluster::redis::map_err(&e),
                e.to_string().contains("READONLY"),
            ),
            Err(_) => (
                ClusterError::Unreachable {
                    backend: "redis",
                    reason: "the session store did not answer in time".into(),
                },
                false,
            ),
        };
        // An error that may mean the master moved: the next call asks the Sentinels again.
        if let Some(s) = &self.sentinel {
            s.note_error(&result.0, result.1);
        }
        Err(result.0)
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisSessions {
    async fn put(&self, sid: &str, session: &Session, ttl: Duration) -> Result<(), ClusterError> {
        // A session is strings only: serialising it cannot fail.
        let json = serde_json::to_string(session).unwrap_or_default();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(sid))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        self.run::<()>(&cmd).await
    }

    async fn get(&self, sid: &str, ttl: Duration) -> Result<Option<Session>, ClusterError> {
        let mut cmd = redis::cmd("GETEX");
        cmd.arg(self.key(sid)).arg("PX").arg(ttl.as_millis() as u64);
        let v: Option<String> = self.run(&cmd).await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn delete(&self, sid: &str) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(sid));
        self.run::<()>(&cmd).await
    }
}

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
    pub fn new(cluster: &ClusterConfig) -> Result<Self, ClusterError> {
        if cluster.etcd_endpoints.is_empty() {
            return Err(ClusterError::Backend {
                backend: "etcd",
                reason: "sessions on etcd need cluster.etcd_endpoints".into(),
            });
        }
        let timing = Timing {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(6),
        };
        Ok(EtcdSessions {
            endpoints: cluster.etcd_endpoints.clone(),
            options: crate::cluster::etcd::connect_options(cluster, &timing)?,
            prefix: cluster.key_prefix.clone(),
            client: tokio::sync::Mutex::new(None),
        })
    }

    fn key(&self, sid: &str) -> String {
        format!("{}session/{}", self.prefix, digest(sid))
    }

    /// Runs one operation with a deadline; an outage or a refused token drops the client.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let result = tokio::time::timeout(Duration::from_secs(3), async {
            let client = {
                let mut slot = self.client.lock().await;
                match slot.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let c = etcd_client::Client::connect(
                            &self.endpoints,
                            Some(self.options.clone()),
                        )
                        .await
                        .map_err(|e| crate::cluster::etcd::map_err(&e))?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            f(client)
                .await
                .map_err(|e| crate::cluster::etcd::map_err(&e))
        })
        .await
        .unwrap_or_else(|_| {
            Err(ClusterError::Unreachable {
                backend: "etcd",
                reason: "the session store did not answer in time".into(),
            })
        });
        if let Err(ClusterError::Unreachable { .. } | ClusterError::Auth { .. }) = &result {
            *self.client.lock().await = None;
        }
        result
    }
}

#[async_trait::async_trait]
impl SessionStore for EtcdSessions {
    async fn put(&self, sid: &str, session: &Session, ttl: Duration) -> Result<(), ClusterError> {
        // A session is strings only: serialising it cannot fail.
        let json = serde_json::to_string(session).unwrap_or_default();
        let key = self.key(sid);
        let ttl = ttl.as_secs().max(1) as i64;
        self.run(|mut c| async move {
            let lease = c.lease_grant(ttl, None).await?.id();
            c.put(
                key,
                json,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn get(&self, sid: &str, _ttl: Duration) -> Result<Option<Session>, ClusterError> {
        let key = self.key(sid);
        self.run(|mut c| async move {
            let resp = c.get(key, None).await?;
            let Some(kv) = resp.kvs().first() else {
                return Ok(None);
            };
            let session: Option<Session> = serde_json::from_slice(kv.value()).ok();
            if kv.lease() != 0 {
                match c.lease_keep_alive(kv.lease()).await {
                    Ok(_) => {}
                    // Ran out between the read and the keepalive: the session is over.
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(session)
        })
        .await
    }

    async fn delete(&self, sid: &str) -> Result<(), ClusterError> {
        let key = self.key(sid);
        self.run(|mut c| async move {
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
        })
        .await
    }
}

/// Opens the configured session store. `sessions.redis` falls back to the cluster's Redis for
/// any connection setting it does not give; `sessions.backend: etcd` uses the cluster's etcd.
pub fn open(config: &Config) -> Result<std::sync::Arc<dyn SessionStore>, ClusterError> {
    match config.sessions.backend {
        SessionBackendKind::Memory => Ok(std::sync::Arc::new(MemorySessions::default())),
        SessionBackendKind::Etcd => Ok(std::sync::Arc::new(EtcdSessions::new(&config.cluster)?)),
        SessionBackendKind::Redis => {
            let s = &config.sessions.redis;
            let c = &config.cluster;
            let cfg = if !s.sentinels.is_empty() {
                ClusterConfig {
                    redis_sentinels: s.sentinels.clone(),
                    redis_master_name: s.master_name.clone(),
                    redis_sentinel_username: s.sentinel_username.clone(),
                    redis_sentinel_password: s.sentinel_password.clone(),
                    redis_sentinel_tls: s.sentinel_tls,
                    redis_tls_ca: s.tls_ca.clone(),
                    redis_username: s.username.clone(),
                    redis_password: s.password.clone(),
                    redis_db: s.db,
                    redis_tls: s.tls,
                    ..ClusterConfig::default()
                }
            } else if s.host.is_none() {
                // The cluster's Redis, Sentinels included.
                ClusterConfig {
                    redis_host: c.redis_host.clone(),
                    redis_port: c.redis_port,
                    redis_socket: c.redis_socket.clone(),
                    redis_sentinels: c.redis_sentinels.clone(),
                    redis_master_name: c.redis_master_name.clone(),
                    redis_sentinel_username: c.redis_sentinel_username.clone(),
                    redis_sentinel_password: c.redis_sentinel_password.clone(),
                    redis_sentinel_tls: c.redis_sentinel_tls,
                    redis_tls_ca: c.redis_tls_ca.clone(),
                    redis_username: c.redis_username.clone(),
                    redis_password: c.redis_password.clone(),
                    redis_db: c.redis_db,
                    redis_tls: c.redis_tls,
                    ..ClusterConfig::default()
                }
            } else {
                ClusterConfig {
                    redis_host: s.host.clone(),
                    redis_port: s.port,
                    redis_username: s.username.clone(),
                    redis_password: s.password.clone(),
                    redis_db: s.db,
                    redis_tls: s.tls,
                    redis_tls_ca: s.tls_ca.clone(),
                    ..ClusterConfig::default()
                }
            };
            Ok(std::sync::Arc::new(RedisSessions::new(
                &cfg,
                &c.key_prefix,
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_sessions_expire_and_delete() {
        let store = MemorySessions::default();
        let s = Session {
            user: "admin".into(),
            csrf: "c".into(),
            created_ms: 1,
            expires_ms: 2,
            sig: String::new(),
        };
        store
            .put("sid1", &s, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(
            store.get("sid1", Duration::from_millis(50)).await.unwrap(),
            Some(s.clone())
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            store.get("sid1", Duration::from_millis(50)).await.unwrap(),
            None
        );
        store.put("sid2", &s, Duration::from_secs(5)).await.unwrap();
        store.delete("sid2").await.unwrap();
        assert_eq!(
            store.get("sid2", Duration::from_secs(5)).await.unwrap(),
            None
        );
        assert!(!format!("{s:?}").contains("\"c\""));
    }
}
