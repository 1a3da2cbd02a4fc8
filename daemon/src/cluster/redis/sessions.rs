//! Web sessions in Redis (`<prefix>session:<sha256(sid)>`), on the same client helpers as the
//! membership backend: the lazy connection, the error mapping and Sentinel's master lookup.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Sentinel, connect_lazy, connection_info, map_err};
use crate::cluster::sessions::{Session, SessionStore, digest};
use crate::cluster::{ClusterError, Timing};
use crate::config::ClusterConfig;

/// Sessions in Redis, shared by every node; through Sentinel, on whichever server is master.
pub struct RedisSessions {
    /// Replaced when Sentinel names another master (or the same one after an error).
    conn: std::sync::RwLock<ConnectionManager>,
    prefix: String,
    timing: Timing,
    /// Set when the master is found through Sentinel (`cluster::redis::Sentinel`).
    sentinel: Option<Sentinel>,
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
    pub(crate) fn new(
        cfg: &ClusterConfig,
        prefix: &str,
        timing: Timing,
    ) -> Result<Self, ClusterError> {
        let (sentinel, settings) = match Sentinel::from_config(cfg) {
            Some((s, settings)) => (Some(s), settings),
            None => (None, cfg.clone()),
        };
        let info = connection_info(&settings)?;
        Ok(RedisSessions {
            conn: std::sync::RwLock::new(connect_lazy(info, &timing)?),
            prefix: prefix.to_string(),
            timing,
            sentinel,
        })
    }

    fn key(&self, sid: &str) -> String {
        format!("{}session:{}", self.prefix, digest(sid))
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        // The membership backend's deadlines: Sentinel answers within one operation's time,
        // a command within two (`RedisMembership::query_on`).
        let deadline = self.timing.op_timeout() * 2;
        if let Some(s) = &self.sentinel {
            s.follow(self.timing.op_timeout(), |settings| {
                let info = connection_info(settings)?;
                let fresh = connect_lazy(info, &self.timing)?;
                *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                Ok(())
            })
            .await?;
        }
        let mut conn = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        let result = match tokio::time::timeout(deadline, cmd.query_async(&mut conn)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => (map_err(&e), e.to_string().contains("READONLY")),
            Err(_) => (
                ClusterError::Unreachable {
                    backend: "redis",
                    reason: format!("the session store did not answer within {deadline:?}"),
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
