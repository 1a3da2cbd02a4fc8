//! Web sessions, kept in the session backend so that any node behind the load balancer serves
//! any logged-in user: in memory (a single node) or in Redis (`fleet:session:<sha256(sid)>`).
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
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("csrf", &"***")
            .finish()
    }
}

fn digest(sid: &str) -> String {
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

/// Sessions in Redis, shared by every node.
pub struct RedisSessions {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    fn key(&self, sid: &str) -> String {
        format!("{}session:{}", self.prefix, digest(sid))
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(Duration::from_secs(3), cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| crate::cluster::redis::map_err(&e)),
            Err(_) => Err(ClusterError::Unreachable {
                backend: "redis",
                reason: "the session store did not answer in time".into(),
            }),
        }
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

/// Opens the configured session store. `sessions.redis` falls back to the cluster's Redis for
/// any connection setting it does not give.
pub fn open(config: &Config) -> Result<std::sync::Arc<dyn SessionStore>, ClusterError> {
    match config.sessions.backend {
        SessionBackendKind::Memory => Ok(std::sync::Arc::new(MemorySessions::default())),
        SessionBackendKind::Redis => {
            let s = &config.sessions.redis;
            let c = &config.cluster;
            let use_cluster = s.host.is_none();
            let cfg = ClusterConfig {
                redis_host: s.host.clone().or_else(|| c.redis_host.clone()),
                redis_port: if use_cluster { c.redis_port } else { s.port },
                redis_socket: if use_cluster {
                    c.redis_socket.clone()
                } else {
                    None
                },
                redis_username: if use_cluster {
                    c.redis_username.clone()
                } else {
                    s.username.clone()
                },
                redis_password: if use_cluster {
                    c.redis_password.clone()
                } else {
                    s.password.clone()
                },
                redis_db: if use_cluster { c.redis_db } else { s.db },
                redis_tls: if use_cluster { c.redis_tls } else { s.tls },
                ..ClusterConfig::default()
            };
            let info = crate::cluster::redis::connection_info(&cfg)?;
            let timing = Timing {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(6),
            };
            Ok(std::sync::Arc::new(RedisSessions {
                conn: crate::cluster::redis::connect_lazy(info, &timing)?,
                prefix: c.key_prefix.clone(),
            }))
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
