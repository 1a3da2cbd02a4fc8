//! Web sessions, kept in the session backend so that any node behind the load balancer serves
//! any logged-in user: in memory (a single node), in Redis (`fleet:session:<sha256(sid)>`, also
//! through Sentinel, following failovers as the cluster's connection does), or
//! in etcd (`fleet:session/<sha256(sid)>`, bound to a lease of the session's lifetime).
//! The backend stores a digest of the session id, never the id itself, so a reader of the
//! backend cannot take over a session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::etcd::EtcdSessions;
use crate::cluster::redis::RedisSessions;
use crate::cluster::{ClusterError, Timing};
use crate::config::{ClusterConfig, Config, Secret, SessionBackendKind};

/// What a session knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user it belongs to.
    pub user: String,
    /// The token every form and state-changing request must echo.
    pub csrf: Secret,
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

/// The digest a session is stored (and signed) under.
pub fn digest(sid: &str) -> String {
    crate::crypto::sha256_hex(sid.as_bytes())
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

/// Opens the configured session store. `sessions.redis` falls back to the cluster's Redis for
/// any connection setting it does not give; `sessions.backend: etcd` uses the cluster's etcd.
pub fn open_sessions(config: &Config) -> Result<std::sync::Arc<dyn SessionStore>, ClusterError> {
    // The cluster's deadlines, as its backends have them.
    let timing = Timing::of(&config.cluster);
    match config.sessions.backend {
        SessionBackendKind::Memory => Ok(std::sync::Arc::new(MemorySessions::default())),
        SessionBackendKind::Etcd => Ok(std::sync::Arc::new(EtcdSessions::new(
            &config.cluster,
            timing,
        )?)),
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
                timing,
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
        assert!(!format!("{s:?}").contains("\"c\""), "{s:?}");
    }
}
