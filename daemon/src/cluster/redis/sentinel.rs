//! Redis through Sentinel: the master of `cluster.redis_master_name` is asked of the Sentinels
//! in turn, before the first call and again after any error that says the master may have moved
//! (unreachable, timed out, refused credentials, `READONLY`). After a move to another server the
//! node users are checked at once: ACLs do not replicate, so the new master may lack them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::{NAME, RedisMembership, connection_info};
use crate::cluster::ClusterError;
use crate::config::ClusterConfig;

/// Where the master is found, and whether the current connection may be stale.
#[derive(Debug)]
pub(super) struct Sentinel {
    sentinels: Vec<String>,
    master: String,
    /// The cluster settings with `redis_host`/`redis_port` set to the current master.
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
    pub(super) fn from_config(cfg: &ClusterConfig) -> Option<(Sentinel, ClusterConfig)> {
        let first = cfg.redis_sentinels.first()?;
        let (host, port) = split(first)?;
        let mut settings = cfg.clone();
        settings.redis_host = Some(host);
        settings.redis_port = port;
        settings.redis_socket = None;
        Some((
            Sentinel {
                sentinels: cfg.redis_sentinels.clone(),
                master: cfg.redis_master_name.clone().unwrap_or_default(),
                settings: std::sync::Mutex::new(settings.clone()),
                stale: AtomicBool::new(true),
                users_due: AtomicBool::new(false),
                resolving: tokio::sync::Mutex::new(()),
            },
            settings,
        ))
    }

    /// After an error: whether it may mean the master moved; if so, resolve again next call.
    pub(super) fn note_error(&self, e: &ClusterError, readonly: bool) {
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
    pub(super) fn current(&self) -> String {
        let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "{}:{}",
            s.redis_host.as_deref().unwrap_or("?"),
            s.redis_port
        )
    }
}

fn split(hostport: &str) -> Option<(String, u16)> {
    let (h, p) = hostport.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

/// Asks each Sentinel in turn for the address of the master `name`.
async fn ask(
    sentinels: &[String],
    name: &str,
    deadline: Duration,
) -> Result<(String, u16), ClusterError> {
    let mut last = String::new();
    for s in sentinels {
        let Some((host, port)) = split(s) else {
            continue;
        };
        let work = async {
            let info = ConnectionAddr::Tcp(host.clone(), port).into_connection_info()?;
            let client = redis::Client::open(info)?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(name)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(Some(addr))) => return Ok(addr),
            Ok(Ok(None)) => last = format!("Sentinel {s} knows no master named {name}"),
            Ok(Err(e)) => last = format!("Sentinel {s}: {e}"),
            Err(_) => last = format!("Sentinel {s}: no answer within {deadline:?}"),
        }
    }
    Err(ClusterError::Unreachable {
        backend: NAME,
        reason: format!("no Sentinel gave the address of master {name}: {last}"),
    })
}

/// The replicas Sentinel knows for `name` (`ip`, `port`), from the first Sentinel that answers.
async fn replicas(sentinels: &[String], name: &str, deadline: Duration) -> Vec<(String, u16)> {
    for s in sentinels {
        let Some((host, port)) = split(s) else {
            continue;
        };
        let work = async {
            let info = ConnectionAddr::Tcp(host.clone(), port).into_connection_info()?;
            let client = redis::Client::open(info)?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(name)
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

impl RedisMembership {
    /// In Sentinel mode, runs `ACL <args…>` on every replica too (ACLs do not replicate), so a
    /// node user exists wherever a failover may land. Failures are logged: housekeeping
    /// re-creates missing users after a move anyway.
    pub(super) async fn acl_on_replicas(&self, args: &[String]) {
        let Some(s) = &self.sentinel else {
            return;
        };
        let op = self.timing.op_timeout();
        for (host, port) in replicas(&s.sentinels, &s.master, op).await {
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
        if !s.stale.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _one = s.resolving.lock().await;
        if !s.stale.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (host, port) = ask(&s.sentinels, &s.master, self.timing.op_timeout()).await?;
        let (moved, settings) = {
            let mut cur = s.settings.lock().unwrap_or_else(|p| p.into_inner());
            let moved = cur.redis_host.as_deref() != Some(host.as_str()) || cur.redis_port != port;
            cur.redis_host = Some(host.clone());
            cur.redis_port = port;
            (moved, cur.clone())
        };
        self.reconnect(connection_info(&settings)?)?;
        s.stale.store(false, Ordering::Relaxed);
        if moved {
            log::info!("Redis master {} is {host}:{port} (from Sentinel)", s.master);
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
