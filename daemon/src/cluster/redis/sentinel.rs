//! Redis through Sentinel: the master of `cluster.redis_master_name` is asked of the Sentinels
//! in turn, before the first call and again after any error that says the master may have moved
//! (unreachable, timed out, refused credentials, `READONLY`). After a move to another server the
//! node users are checked at once: ACLs do not replicate, so the new master may lack them.
//! The session store (`sessions.rs`) follows its master with the same [`Sentinel`].
//! Sentinels may require a password (and a user) and speak TLS: `redis_sentinel_*`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{NAME, RedisMembership, connection_info, map_err};
use crate::cluster::ClusterError;
use crate::config::ClusterConfig;

/// Where the master is found, and whether the current connection may be stale.
#[derive(Debug)]
pub struct Sentinel {
    sentinels: Vec<String>,
    master: String,
    /// How a Sentinel is reached (its user, password, TLS, CA); host and port set per Sentinel.
    /// `Debug` prints the password as `***` (`Secret`).
    access: ClusterConfig,
    /// The Redis settings with `redis_host`/`redis_port` set to the current master.
    settings: std::sync::Mutex<ClusterConfig>,
    stale: AtomicBool,
    /// The master moved: its node users are to be checked.
    users_due: AtomicBool,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
}

impl Sentinel {
    /// `None` unless `cfg` names Sentinels; also the settings to start from (the first
    /// Sentinel's address stands in for the master until it is resolved).
    pub fn from_config(cfg: &ClusterConfig) -> Option<(Sentinel, ClusterConfig)> {
        let first = cfg.redis_sentinels.first()?;
        let (host, port) = split(first)?;
        let mut settings = cfg.clone();
        settings.redis_host = Some(host);
        settings.redis_port = port;
        settings.redis_socket = None;
        let access = ClusterConfig {
            redis_username: cfg.redis_sentinel_username.clone(),
            redis_password: cfg.redis_sentinel_password.clone(),
            redis_tls: cfg.redis_sentinel_tls,
            redis_tls_ca: cfg.redis_tls_ca.clone(),
            ..ClusterConfig::default()
        };
        Some((
            Sentinel {
                sentinels: cfg.redis_sentinels.clone(),
                master: cfg.redis_master_name.clone().unwrap_or_default(),
                access,
                settings: std::sync::Mutex::new(settings.clone()),
                stale: AtomicBool::new(true),
                users_due: AtomicBool::new(false),
                resolving: tokio::sync::Mutex::new(()),
            },
            settings,
        ))
    }

    /// After an error: whether it may mean the master moved; if so, resolve again next call.
    pub fn note_error(&self, e: &ClusterError, readonly: bool) {
        if readonly
            || matches!(
                e,
                ClusterError::Unreachable { .. } | ClusterError::Auth { .. }
            )
        {
            self.stale.store(true, Ordering::Relaxed);
        }
    }

    /// `host:port` of the master this node talks to now (for messages).
    pub fn current(&self) -> String {
        let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "{}:{}",
            s.redis_host.as_deref().unwrap_or("?"),
            s.redis_port
        )
    }

    /// When the connection may be stale: asks the Sentinels for the master and hands its
    /// settings to `connect` (which makes fresh connections there), one caller at a time.
    /// Returns whether the master is another server than before.
    pub async fn follow(
        &self,
        deadline: Duration,
        connect: impl FnOnce(&ClusterConfig) -> Result<(), ClusterError>,
    ) -> Result<bool, ClusterError> {
        if !self.stale.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let _one = self.resolving.lock().await;
        if !self.stale.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (host, port) = self.ask(deadline).await?;
        let (moved, settings) = {
            let mut cur = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            let moved = cur.redis_host.as_deref() != Some(host.as_str()) || cur.redis_port != port;
            cur.redis_host = Some(host.clone());
            cur.redis_port = port;
            (moved, cur.clone())
        };
        connect(&settings)?;
        self.stale.store(false, Ordering::Relaxed);
        if moved {
            log::info!(
                "Redis master {} is {host}:{port} (from Sentinel)",
                self.master
            );
        }
        Ok(moved)
    }

    /// A connection to one Sentinel, with its credentials and TLS.
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let mut access = self.access.clone();
        access.redis_host = Some(host.to_string());
        access.redis_port = port;
        let info = connection_info(&access).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "", e.to_string()))
        })?;
        redis::Client::open(info)?
            .get_multiplexed_async_connection()
            .await
    }

    /// Asks each Sentinel in turn for the address of the master. When every Sentinel that
    /// answered refused the credentials, the error says so (`Auth`), naming them.
    async fn ask(&self, deadline: Duration) -> Result<(String, u16), ClusterError> {
        let name = &self.master;
        let mut last = String::new();
        let mut all_refused = true;
        // The Sentinels that refused the credentials, and the last refusal.
        let mut refused: Vec<&str> = Vec::new();
        let mut refusal = String::new();
        for s in &self.sentinels {
            let Some((host, port)) = split(s) else {
                continue;
            };
            let work = async {
                let mut c = self.connect(&host, port).await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            match tokio::time::timeout(deadline, work).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => {
                    all_refused = false;
                    last = format!("Sentinel {s} knows no master named {name}");
                }
                Ok(Err(e)) if matches!(map_err(&e), ClusterError::Auth { .. }) => {
                    refused.push(s);
                    refusal = e.to_string();
                }
                Ok(Err(e)) => {
                    all_refused = false;
                    last = format!("Sentinel {s}: {e}");
                }
                Err(_) => {
                    all_refused = false;
                    last = format!("Sentinel {s}: no answer within {deadline:?}");
                }
            }
        }
        if !refused.is_empty() {
            let said = format!(
                "Sentinel {} refused authentication ({refusal}): check the redis_sentinel_username/redis_sentinel_password settings",
                refused.join(", ")
            );
            last = if last.is_empty() {
                said
            } else {
                format!("{said}; {last}")
            };
        }
        let reason = format!("no Sentinel gave the address of master {name}: {last}");
        Err(if all_refused && !refused.is_empty() {
            ClusterError::Auth {
                backend: NAME,
                reason,
            }
        } else {
            ClusterError::Unreachable {
                backend: NAME,
                reason,
            }
        })
    }

    /// The replicas Sentinel knows for the master (`ip`, `port`), from the first Sentinel that
    /// answers.
    async fn replicas(&self, deadline: Duration) -> Vec<(String, u16)> {
        for s in &self.sentinels {
            let Some((host, port)) = split(s) else {
                continue;
            };
            let work = async {
                let mut c = self.connect(&host, port).await?;
                redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg(&self.master)
                    .query_async::<Vec<std::collections::HashMap<String, String>>>(&mut c)
                    .await
            };
            if let Ok(Ok(list)) = tokio::time::timeout(deadline, work).await {
                return list
                    .into_iter()
                    .filter(|r| !r.get("flags").is_some_and(|f| f.contains("down")))
                    .filter_map(|r| Some((r.get("ip")?.clone(), r.get("port")?.parse().ok()?)))
                    .collect();
            }
        }
        Vec::new()
    }
}

fn split(hostport: &str) -> Option<(String, u16)> {
    let (h, p) = hostport.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

impl RedisMembership {
    /// In Sentinel mode, runs `ACL <args…>` on every replica too (ACLs do not replicate), so a
    /// node user exists wherever a failover may land. Failures are logged: housekeeping
    /// re-creates missing users after a move anyway.
    pub(super) async fn acl_on_replicas(&self, args: &[String]) {
        let Some(s) = &self.sentinel else {
            return;
        };
        let op = self.timing.op_timeout();
        for (host, port) in s.replicas(op).await {
            let mut settings = s.settings.lock().unwrap_or_else(|p| p.into_inner()).clone();
            settings.redis_host = Some(host.clone());
            settings.redis_port = port;
            let work = async {
                let info = connection_info(&settings).map_err(|e| e.to_string())?;
                let client = redis::Client::open(info).map_err(|e| e.to_string())?;
                let mut c = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut cmd = redis::cmd("ACL");
                for a in args {
                    cmd.arg(a);
                }
                cmd.query_async::<()>(&mut c)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(op, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("ACL {} on replica {host}:{port}: {e}", args[0]),
                Err(_) => log::warn!("ACL {} on replica {host}:{port}: no answer", args[0]),
            }
        }
    }

    /// In Sentinel mode, connects to the current master when the connection may be stale.
    pub(super) async fn follow_master(&self) -> Result<(), ClusterError> {
        let Some(s) = &self.sentinel else {
            return Ok(());
        };
        let moved = s
            .follow(self.timing.op_timeout(), |settings| {
                self.reconnect(connection_info(settings)?)
            })
            .await?;
        if moved {
            s.users_due.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Called before each heartbeat: follows the master, and after a move re-creates the node
    /// users the new master lacks (ACLs do not replicate).
    pub(super) async fn check_users_after_move(&self) {
        let Some(s) = &self.sentinel else {
            return;
        };
        if self.follow_master().await.is_err() || !s.users_due.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.restore_users().await {
            // Try again before the next heartbeat.
            s.users_due.store(true, Ordering::Relaxed);
            log::debug!("checking node users on the new master: {e}");
        }
    }
}
