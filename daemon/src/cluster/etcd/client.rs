//! The etcd client: connect options (credentials, TLS), which endpoints answer, error mapping,
//! and `run`/`run_within`, which bound every call with a deadline and drop the client after an
//! outage or a refused token.

use super::*;

pub(super) fn backend_err(reason: impl Into<String>) -> ClusterError {
    ClusterError::Backend {
        backend: NAME,
        reason: reason.into(),
    }
}

/// The error's message with its sources (a transport error's own text is only "transport
/// error"). etcd's messages never carry a password.
pub(super) fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Maps an etcd client error to our kinds: outages are `Unreachable`, refused credentials and
/// missing permissions `Auth`.
pub fn map_err(e: &etcd_client::Error) -> ClusterError {
    use etcd_client::Error as E;
    use tonic::Code;
    let reason = describe(e);
    let unreachable = ClusterError::Unreachable {
        backend: NAME,
        reason: reason.clone(),
    };
    let auth = ClusterError::Auth {
        backend: NAME,
        reason: reason.clone(),
    };
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message();
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => auth,
                _ if msg.contains("authentication failed")
                    || msg.contains("authentication is not enabled")
                    || msg.contains("invalid auth token")
                    || msg.contains("permission denied")
                    || msg.contains("user name") =>
                {
                    auth
                }
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    unreachable
                }
                // Connection failures below gRPC arrive as `Unknown` with a transport message.
                Code::Unknown
                    if msg.contains("transport")
                        || msg.contains("connect")
                        || msg.contains("broken pipe")
                        || msg.contains("h2 protocol") =>
                {
                    unreachable
                }
                _ if msg.contains("leader changed")
                    || msg.contains("no leader")
                    || msg.contains("timed out") =>
                {
                    unreachable
                }
                _ => backend_err(reason),
            }
        }
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            unreachable
        }
        _ => backend_err(reason),
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, ClusterError> {
    crate::config::files::read_trusted(path, crate::config::files::PEM_CAP).map_err(|e| {
        backend_err(format!(
            "cluster.{field}: cannot read {}: {e}",
            path.display()
        ))
    })
}

/// The endpoints that accept a TCP connection within `limit` (tried at once), in the given
/// order; all of them when there is only one, or when none answers.
pub(super) async fn reachable_endpoints(
    endpoints: &[String],
    limit: std::time::Duration,
) -> Vec<String> {
    if endpoints.len() < 2 {
        return endpoints.to_vec();
    }
    let probes = endpoints.iter().map(|e| {
        let hostport = e
            .split_once("://")
            .map_or(e.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        async move {
            matches!(
                tokio::time::timeout(limit, tokio::net::TcpStream::connect(hostport)).await,
                Ok(Ok(_))
            )
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in probes.enumerate() {
        set.spawn(async move { (i, p.await) });
    }
    let mut up = vec![false; endpoints.len()];
    while let Some(Ok((i, ok))) = set.join_next().await {
        up[i] = ok;
    }
    let live: Vec<String> = endpoints
        .iter()
        .zip(up)
        .filter(|(_, ok)| *ok)
        .map(|(e, _)| e.clone())
        .collect();
    if live.is_empty() {
        endpoints.to_vec()
    } else {
        live
    }
}

/// Builds the connection options from the configuration; the password goes only here.
pub(crate) fn connect_options(
    cfg: &ClusterConfig,
    timing: &Timing,
) -> Result<ConnectOptions, ClusterError> {
    let op = timing.op_timeout();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(op)
        .with_timeout(op)
        .with_keep_alive(timing.interval.max(op), op)
        .with_auto_token_refresh(true);
    if let Some(user) = &cfg.etcd_username {
        let pw = cfg.etcd_password.as_ref().map(Secret::expose).unwrap_or("");
        options = options.with_user(user.clone(), pw);
    }
    let tls_wanted = cfg.etcd_ca.is_some()
        || cfg.etcd_cert.is_some()
        || cfg.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
    if tls_wanted {
        let mut tls = TlsOptions::new();
        tls = match &cfg.etcd_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("etcd_ca", ca)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&cfg.etcd_cert, &cfg.etcd_key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("etcd_cert", cert)?,
                read_pem("etcd_key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

impl EtcdMembership {
    /// The connected client, connecting (and authenticating) first when needed.
    pub(super) async fn client(&self) -> Result<Client, ClusterError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // The client balances over every endpoint it is given, dead ones included: connect to
        // those that accept a connection now (all of them if none does, for the error).
        let endpoints = reachable_endpoints(&self.endpoints, self.timing.op_timeout()).await;
        let c = Client::connect(&endpoints, Some(self.options.clone()))
            .await
            .map_err(|e| map_err(&e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one operation with a deadline; an outage or a refused token drops the client, so
    /// that the next operation starts from a fresh connection.
    pub(super) async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        self.run_within(what, self.timing.op_timeout() * 3, f).await
    }

    /// `run` with its own deadline (a member list reads every record at once).
    pub(super) async fn run_within<T, F, Fut>(
        &self,
        what: &str,
        deadline: std::time::Duration,
        f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let result = match tokio::time::timeout(deadline, async {
            let client = self.client().await?;
            f(client).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ClusterError::Unreachable {
                backend: NAME,
                reason: format!(
                    "{what}: no answer from {} within {deadline:?}",
                    self.endpoints.join(",")
                ),
            }),
        };
        if let Err(ClusterError::Unreachable { .. } | ClusterError::Auth { .. }) = &result {
            *self.client.lock().await = None;
        }
        result
    }
}
