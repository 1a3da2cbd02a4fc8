//! `Config::validate`: every rule serde's types cannot express, most of them spanning fields
//! (a backend and its settings, a TLS pair, the heartbeat timeout against its interval).

use std::path::Path;

use super::{
    BackendKind, ClusterConfig, Config, ConfigError, SessionBackendKind, SessionRedisConfig,
    invalid, validate_token,
};

impl Config {
    /// Checks every value that serde's types cannot express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let c = &self.cluster;
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    origin,
                    "server.tls_key",
                    "is required with tls_cert",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    origin,
                    "server.tls_cert",
                    "is required with tls_key",
                ));
            }
            _ => {}
        }
        if c.heartbeat_timeout.get() < 2.0 * c.heartbeat_interval.get() {
            return Err(invalid(
                origin,
                "cluster.heartbeat_timeout",
                format!(
                    "{} s must be at least twice cluster.heartbeat_interval ({} s)",
                    c.heartbeat_timeout, c.heartbeat_interval
                ),
            ));
        }
        if c.enabled && c.backend == BackendKind::Redis {
            if !c.redis_sentinels.is_empty() {
                validate_sentinels(origin, c)?;
            } else if c.redis_host.is_none() && c.redis_socket.is_none() {
                return Err(invalid(
                    origin,
                    "cluster.redis_host",
                    "is required with `backend: redis` (or give cluster.redis_socket or cluster.redis_sentinels)",
                ));
            }
            if let Some(host) = &c.redis_host
                && (host.is_empty() || host.contains(['/', ' ']))
            {
                return Err(invalid(
                    origin,
                    "cluster.redis_host",
                    format!("`{host}` is not a host name or address"),
                ));
            }
            if c.redis_port == 0 {
                return Err(invalid(
                    origin,
                    "cluster.redis_port",
                    "must be between 1 and 65535",
                ));
            }
            if !(0..=15_999).contains(&c.redis_db) {
                return Err(invalid(
                    origin,
                    "cluster.redis_db",
                    format!("{} is not a database index", c.redis_db),
                ));
            }
        }
        if c.enabled && c.backend == BackendKind::Etcd {
            validate_etcd(origin, c)?;
        }
        if self.sessions.backend == SessionBackendKind::Redis
            && !self.sessions.redis.sentinels.is_empty()
        {
            validate_session_sentinels(origin, &self.sessions.redis)?;
        }
        if self.sessions.backend == SessionBackendKind::Redis
            && self.sessions.redis.host.is_none()
            && self.sessions.redis.sentinels.is_empty()
            && !(c.backend == BackendKind::Redis
                && (c.redis_host.is_some() || !c.redis_sentinels.is_empty()))
        {
            return Err(invalid(
                origin,
                "sessions.redis.host",
                "is required with `sessions.backend: redis`",
            ));
        }
        if self.sessions.backend == SessionBackendKind::Etcd && c.etcd_endpoints.is_empty() {
            return Err(invalid(
                origin,
                "cluster.etcd_endpoints",
                "is required with `sessions.backend: etcd` (sessions use the cluster's etcd)",
            ));
        }
        if self.sessions.backend == SessionBackendKind::Etcd
            && !(c.enabled && c.backend == BackendKind::Etcd)
        {
            validate_etcd(origin, c)?;
        }
        if self.auth.api_key_sha256.is_some() && self.auth.api_key.is_some() {
            return Err(invalid(
                origin,
                "auth.api_key_sha256",
                "give either auth.api_key or its digest, not both",
            ));
        }
        if let Some(e) = &self.enrollment {
            validate_token(&e.token_id, e.token_secret.expose())
                .map_err(|m| invalid(origin, "enrollment", m))?;
            if !self.cluster.enabled {
                return Err(invalid(
                    origin,
                    "enrollment",
                    "needs cluster.enabled: true (the token is redeemed at the cluster backend)",
                ));
            }
        }
        Ok(())
    }
}

/// `sessions.redis.sentinels` and its master name, as the cluster's pair.
fn validate_session_sentinels(origin: &Path, s: &SessionRedisConfig) -> Result<(), ConfigError> {
    if s.host.is_some() {
        return Err(invalid(
            origin,
            "sessions.redis.sentinels",
            "give either sentinels or host, not both",
        ));
    }
    if s.master_name.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            origin,
            "sessions.redis.master_name",
            "is required with sessions.redis.sentinels (the name in `sentinel monitor <name> …`)",
        ));
    }
    for a in &s.sentinels {
        if !is_host_port(a) {
            return Err(invalid(
                origin,
                "sessions.redis.sentinels",
                format!("`{a}` is not host:port"),
            ));
        }
    }
    Ok(())
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(['/', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

/// The `etcd_*` fields, with `backend: etcd`.
fn validate_sentinels(origin: &Path, c: &ClusterConfig) -> Result<(), ConfigError> {
    if c.redis_host.is_some() || c.redis_socket.is_some() {
        return Err(invalid(
            origin,
            "cluster.redis_sentinels",
            "give either redis_sentinels or redis_host/redis_socket, not both",
        ));
    }
    if c.redis_master_name.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            origin,
            "cluster.redis_master_name",
            "is required with cluster.redis_sentinels (the name in `sentinel monitor <name> …`)",
        ));
    }
    for s in &c.redis_sentinels {
        let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['/', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(invalid(
                origin,
                "cluster.redis_sentinels",
                format!("`{s}` is not host:port"),
            ));
        }
    }
    Ok(())
}

fn validate_etcd(origin: &Path, c: &ClusterConfig) -> Result<(), ConfigError> {
    if c.etcd_endpoints.is_empty() {
        return Err(invalid(
            origin,
            "cluster.etcd_endpoints",
            "is required with `backend: etcd` (e.g. [\"http://127.0.0.1:2379\"])",
        ));
    }
    for e in &c.etcd_endpoints {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains([' ', '@'])) {
            return Err(invalid(
                origin,
                "cluster.etcd_endpoints",
                format!("`{e}` is not an http:// or https:// URL of an etcd client endpoint"),
            ));
        }
    }
    let tls_files = c.etcd_ca.is_some() || c.etcd_cert.is_some() || c.etcd_key.is_some();
    if tls_files && c.etcd_endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(invalid(
            origin,
            "cluster.etcd_endpoints",
            "must all be https:// when etcd_ca, etcd_cert or etcd_key is set",
        ));
    }
    match (&c.etcd_cert, &c.etcd_key) {
        (Some(_), None) => {
            return Err(invalid(
                origin,
                "cluster.etcd_key",
                "is required with etcd_cert",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                origin,
                "cluster.etcd_cert",
                "is required with etcd_key",
            ));
        }
        _ => {}
    }
    match (&c.etcd_username, &c.etcd_password) {
        (Some(u), _) if u.trim().is_empty() => Err(invalid(
            origin,
            "cluster.etcd_username",
            "must not be empty",
        )),
        (Some(_), None) => Err(invalid(
            origin,
            "cluster.etcd_password",
            "is required with etcd_username (or give cluster.etcd_password_file)",
        )),
        (None, Some(_)) => Err(invalid(
            origin,
            "cluster.etcd_username",
            "is required with etcd_password",
        )),
        _ => Ok(()),
    }
}
