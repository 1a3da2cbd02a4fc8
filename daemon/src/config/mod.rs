//! The node's YAML configuration: one serde tree in the user guide's shape, loaded and validated
//! fully before anything binds, with errors that name the file, the field and the problem.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where launchd's plist points the daemon on macOS.
pub const MACOS_CONFIG_PATH: &str = "/Library/FleetServer/config/config.yaml";
/// Where the Linux provision bundle writes the configuration.
pub const LINUX_CONFIG_PATH: &str = "/etc/fleet-server/config.yaml";

/// The configuration path used when none is given on the command line.
pub fn default_config_path() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from(MACOS_CONFIG_PATH)
    } else {
        PathBuf::from(LINUX_CONFIG_PATH)
    }
}

fn default_state_dir() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/FleetServer/state")
    } else {
        PathBuf::from("/var/lib/fleet-server")
    }
}

/// A secret string: serialised as is (the package builder must carry it), but `Debug` and
/// `Display` print `***`, so it cannot reach a log line or an error by accident.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret's value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener, TLS and local directories.
    pub server: ServerConfig,
    /// Cluster membership: backend, heartbeat and this node's name.
    pub cluster: ClusterConfig,
    /// Where web sessions live.
    pub sessions: SessionsConfig,
    /// API key and the dashboard's login.
    pub auth: AuthConfig,
    /// Keys copied to every node (database and payload encryption).
    pub encryption: EncryptionConfig,
    /// The shared database.
    pub database: DatabaseConfig,
    /// Node package building.
    pub package: PackageConfig,
    /// Log level and syslog.
    pub logging: LoggingConfig,
    /// Present only in a package's bootstrap configuration: the single-use token the node
    /// redeems at first start for its full configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentConfig>,
    /// Things worth a warning found while loading (logged once logging is up).
    #[serde(skip)]
    pub load_warnings: Vec<String>,
    /// The file this configuration was loaded from.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// `serve --root`: the node's own paths are under this directory.
    #[serde(skip)]
    pub root: Option<PathBuf>,
    /// `serve --port`.
    #[serde(skip)]
    pub port_override: Option<u16>,
}

/// `enrollment:` (bootstrap configurations only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// Names the enrollment record in the backend (32 hex characters).
    pub token_id: String,
    /// Opens it (64 hex characters).
    pub token_secret: Secret,
}

/// `server:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; `0.0.0.0` behind a load balancer.
    pub host: String,
    /// Port of the API and dashboard.
    pub port: u16,
    /// PEM certificate chain; with `tls_key`, the server speaks HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Where the node keeps its identity (`node_id`) across restarts and reinstalls.
    pub state_dir: PathBuf,
    /// The URL other people reach this node at; derived from the first address when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Require the API key for `/metrics`.
    pub metrics_require_auth: bool,
    /// Seconds a client has to send a request's headers; also how long a kept-alive connection
    /// may wait idle for its next request.
    pub header_timeout_seconds: u32,
    /// Open connections served at once (lowered to fit `ulimit -n`); more get health or 503.
    pub max_connections: u32,
    /// Open connections served at once from one client address.
    pub max_connections_per_client: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 8768,
            tls_cert: None,
            tls_key: None,
            state_dir: default_state_dir(),
            public_url: None,
            metrics_require_auth: false,
            header_timeout_seconds: 10,
            max_connections: 1024,
            max_connections_per_client: 64,
        }
    }
}

/// Which shared backend coordinates the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Redis 6+ or Valkey.
    Redis,
    /// A shared directory (NFS, SMB or local disk): the embedded default.
    Storage,
    /// etcd v3 (leases, transactions) over gRPC.
    Etcd,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Redis => "redis",
            BackendKind::Storage => "storage",
            BackendKind::Etcd => "etcd",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `cluster:`, in the user guide's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Without it the server runs as a single node.
    pub enabled: bool,
    /// `redis`, `storage` or `etcd`.
    pub backend: BackendKind,
    /// This node's name; the hostname (reduced to `[a-z0-9-]`) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Prefix of every backend key (`fleet:` gives `fleet:cluster:members`).
    pub key_prefix: String,
    /// Seconds between heartbeats (at least 1).
    pub heartbeat_interval: f64,
    /// Seconds without a heartbeat after which a node counts as gone (at least 3, and at least
    /// twice the interval).
    pub heartbeat_timeout: f64,
    /// Redis host name or address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_host: Option<String>,
    /// Redis port.
    pub redis_port: u16,
    /// Redis unix socket, instead of host and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_socket: Option<PathBuf>,
    /// Redis Sentinels (`host:port`), instead of `redis_host`: the master of
    /// `redis_master_name` is found through them, and found again after a failover.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis_sentinels: Vec<String>,
    /// The master's name in Sentinel (`sentinel monitor <name> …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_master_name: Option<String>,
    /// The user the Sentinels require (a Sentinel ACL user, Redis 6.2+); `default` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_sentinel_username: Option<String>,
    /// The password the Sentinels require (`requirepass` in sentinel.conf); none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_sentinel_password: Option<Secret>,
    /// A file holding the Sentinels' password, instead of `redis_sentinel_password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_sentinel_password_file: Option<PathBuf>,
    /// Speak TLS to the Sentinels (their `tls-port`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redis_sentinel_tls: bool,
    /// PEM CA certificate that signed the Redis servers' and Sentinels' TLS certificates; the
    /// public web roots when absent (with `redis_tls` / `redis_sentinel_tls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Redis ACL user name (Redis 6+); the default user when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    /// Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<Secret>,
    /// A file holding the Redis password, instead of `redis_password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<PathBuf>,
    /// Redis database index.
    pub redis_db: i64,
    /// Connect with TLS (`rediss://`), as a backend reached over the internet needs.
    pub redis_tls: bool,
    /// The shared directory of the `storage` backend; `<state_dir>/cluster-storage` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_path: Option<PathBuf>,
    /// etcd client URLs, e.g. `["http://127.0.0.1:2379"]`; `https://` for TLS.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// etcd user name, on an etcd with auth enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_username: Option<String>,
    /// The etcd user's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_password: Option<Secret>,
    /// A file holding the etcd password, instead of `etcd_password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_password_file: Option<PathBuf>,
    /// PEM CA certificate that signed etcd's server certificate; the public web roots when
    /// absent (with `https://` endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate, for an etcd that checks client certificates (with `etcd_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of `etcd_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            backend: BackendKind::Storage,
            node_name: None,
            key_prefix: "fleet:".into(),
            heartbeat_interval: 5.0,
            heartbeat_timeout: 15.0,
            redis_host: None,
            redis_port: 6379,
            redis_socket: None,
            redis_sentinels: Vec::new(),
            redis_master_name: None,
            redis_sentinel_username: None,
            redis_sentinel_password: None,
            redis_sentinel_password_file: None,
            redis_sentinel_tls: false,
            redis_tls_ca: None,
            redis_username: None,
            redis_password: None,
            redis_password_file: None,
            redis_db: 0,
            redis_tls: false,
            storage_path: None,
            etcd_endpoints: Vec::new(),
            etcd_username: None,
            etcd_password: None,
            etcd_password_file: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }
}

impl ClusterConfig {
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.heartbeat_interval)
    }
    pub fn heartbeat_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.heartbeat_timeout)
    }
}

/// Which store keeps web sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBackendKind {
    /// In this process only: fine for a single node.
    Memory,
    /// Shared through Redis, so any node behind the load balancer serves any user.
    Redis,
    /// Shared through the cluster's etcd (`cluster.etcd_*`), so an etcd cluster needs no Redis.
    Etcd,
}

/// `sessions:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// `memory`, `redis` or `etcd`.
    pub backend: SessionBackendKind,
    /// Minutes a session lives without use.
    pub timeout_minutes: u32,
    /// The session Redis, when `backend: redis`.
    pub redis: SessionRedisConfig,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            backend: SessionBackendKind::Memory,
            timeout_minutes: 60,
            redis: SessionRedisConfig::default(),
        }
    }
}

/// `sessions.redis:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionRedisConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    pub db: i64,
    pub tls: bool,
    /// Sentinels (`host:port`) of the session Redis, instead of `host`; as
    /// `cluster.redis_sentinels`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<String>,
    /// The master's name in those Sentinels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// The user those Sentinels require.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_username: Option<String>,
    /// The password those Sentinels require.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password: Option<Secret>,
    /// Speak TLS to those Sentinels.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sentinel_tls: bool,
    /// PEM CA certificate for TLS to the session Redis and its Sentinels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
}

impl Default for SessionRedisConfig {
    fn default() -> Self {
        SessionRedisConfig {
            host: None,
            port: 6379,
            username: None,
            password: None,
            db: 0,
            tls: false,
            sentinels: Vec::new(),
            master_name: None,
            sentinel_username: None,
            sentinel_password: None,
            sentinel_tls: false,
            tls_ca: None,
        }
    }
}

/// `auth:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Key for the API (`X-API-Key` or `Authorization: Bearer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// A file holding the API key, instead of `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// SHA-256 (hex) of the API key: all a node needs to check it. A plain `api_key` is
    /// replaced by this at load, so neither a node's configuration nor a package holds the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_sha256: Option<String>,
    /// The dashboard's user name.
    pub web_username: String,
    /// The dashboard's password in plain text: accepted, hashed at load, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_password: Option<Secret>,
    /// The dashboard's password as an Argon2id hash (`fleet-server config hash-password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_password_hash: Option<String>,
    /// `ed25519:<hex>`: the public half of the key the password derives; sessions must carry
    /// its signature (`fleet-server config hash-password` prints it with the hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_public_key: Option<String>,
}

impl AuthConfig {
    /// The API key's SHA-256 digest, from `api_key_sha256` or a plain `api_key`.
    pub fn api_key_digest(&self) -> Option<[u8; 32]> {
        if let Some(h) = &self.api_key_sha256 {
            return hex::decode(h).ok().and_then(|b| b.try_into().ok());
        }
        self.api_key
            .as_ref()
            .map(|k| <sha2::Sha256 as sha2::Digest>::digest(k.expose().as_bytes()).into())
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_key: None,
            api_key_file: None,
            web_username: "admin".into(),
            web_password: None,
            web_password_hash: None,
            api_key_sha256: None,
            session_public_key: None,
        }
    }
}

/// `encryption:`: keys every node of the cluster shares.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Database encryption key (Fernet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_key: Option<Secret>,
    /// Payload encryption key (AES-256-GCM) for end-to-end encryption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_key: Option<Secret>,
}

/// `database:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The shared database's location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// `package:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PackageConfig {
    /// Node template directory with `macos/` and `linux-x86_64/` binaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_dir: Option<PathBuf>,
    /// Days a built package stays installable.
    pub expiry_days: u32,
    /// Build packages even when the template's binaries do not fit the target (a macOS pkg
    /// with Linux binaries): for development and tests on Linux only.
    pub allow_foreign_binaries: bool,
    /// Sign macOS packages (Settings page and CLI) with this Developer ID Installer identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningConfig>,
}

impl Default for PackageConfig {
    fn default() -> Self {
        PackageConfig {
            template_dir: None,
            expiry_days: 7,
            allow_foreign_binaries: false,
            signing: None,
        }
    }
}

/// `package.signing:`: a PKCS#12 identity and the file with its password (readable by its
/// owner only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The `.p12` (Developer ID Installer certificate, its key and chain).
    pub p12_file: PathBuf,
    /// The file holding the p12's password (mode 0600 or stricter).
    pub password_file: PathBuf,
    /// An RFC 3161 timestamp server (e.g. `http://timestamp.apple.com/ts01`); none: no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_url: Option<String>,
    /// Sign with a certificate that is not a Developer ID Installer one (in-house CA, tests).
    #[serde(default)]
    pub allow_any_certificate: bool,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `logging:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: LogLevel,
    /// Also send log lines to the system log.
    pub syslog: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: LogLevel::Info,
            syslog: false,
        }
    }
}

/// A configuration that cannot be used; the message names the file, the field and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates a configuration file, resolving `*_file` secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.resolve_secret_files(path)?;
        config.validate(path)?;
        config.hash_plain_password();
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses YAML text; `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let field = err.path().to_string();
            let mut message = err.inner().to_string();
            // serde_yaml starts its message with its own (parent) path: keep only the problem.
            if let Some((head, rest)) = message.split_once(": ")
                && !head.is_empty()
                && !head.contains(' ')
                && field.starts_with(head)
            {
                message = rest.to_string();
            }
            if field.is_empty() || field == "." {
                ConfigError::Syntax {
                    path: origin.to_path_buf(),
                    message,
                }
            } else {
                ConfigError::Invalid {
                    path: origin.to_path_buf(),
                    field,
                    message,
                }
            }
        })
    }

    fn resolve_secret_files(&mut self, origin: &Path) -> Result<(), ConfigError> {
        fn read_secret(
            origin: &Path,
            field: &str,
            file: &Option<PathBuf>,
            value: &mut Option<Secret>,
        ) -> Result<(), ConfigError> {
            let Some(file) = file else { return Ok(()) };
            if value.is_some() {
                return Err(invalid(
                    origin,
                    field,
                    "give either the value or the `_file`, not both",
                ));
            }
            let text = std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    origin,
                    &format!("{field}_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            *value = Some(Secret::new(text.trim_end_matches(['\r', '\n'])));
            Ok(())
        }
        read_secret(
            origin,
            "cluster.redis_password",
            &self.cluster.redis_password_file,
            &mut self.cluster.redis_password,
        )?;
        read_secret(
            origin,
            "cluster.redis_sentinel_password",
            &self.cluster.redis_sentinel_password_file,
            &mut self.cluster.redis_sentinel_password,
        )?;
        read_secret(
            origin,
            "cluster.etcd_password",
            &self.cluster.etcd_password_file,
            &mut self.cluster.etcd_password,
        )?;
        read_secret(
            origin,
            "auth.api_key",
            &self.auth.api_key_file,
            &mut self.auth.api_key,
        )?;
        Ok(())
    }

    /// Checks every value that serde's types cannot express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if self.server.port == 0 {
            return Err(invalid(
                origin,
                "server.port",
                "must be between 1 and 65535",
            ));
        }
        if self.server.host.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                origin,
                "server.host",
                format!("`{}` is not an IP address", self.server.host),
            ));
        }
        for (field, value) in [
            (
                "server.header_timeout_seconds",
                self.server.header_timeout_seconds,
            ),
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_connections_per_client",
                self.server.max_connections_per_client,
            ),
        ] {
            if value == 0 {
                return Err(invalid(origin, field, "must be at least 1"));
            }
        }
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
        if !c.heartbeat_interval.is_finite() || c.heartbeat_interval < 1.0 {
            return Err(invalid(
                origin,
                "cluster.heartbeat_interval",
                format!("{} s is too short: at least 1 s", c.heartbeat_interval),
            ));
        }
        if !c.heartbeat_timeout.is_finite() || c.heartbeat_timeout < 3.0 {
            return Err(invalid(
                origin,
                "cluster.heartbeat_timeout",
                format!("{} s is too short: at least 3 s", c.heartbeat_timeout),
            ));
        }
        if c.heartbeat_timeout < 2.0 * c.heartbeat_interval {
            return Err(invalid(
                origin,
                "cluster.heartbeat_timeout",
                format!(
                    "{} s must be at least twice cluster.heartbeat_interval ({} s)",
                    c.heartbeat_timeout, c.heartbeat_interval
                ),
            ));
        }
        if let Some(name) = &c.node_name {
            crate::identity::validate_node_name(name)
                .map_err(|msg| invalid(origin, "cluster.node_name", msg))?;
        }
        if c.key_prefix.is_empty() || c.key_prefix.chars().any(|ch| ch.is_whitespace()) {
            return Err(invalid(
                origin,
                "cluster.key_prefix",
                "must be non-empty and without spaces",
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
        if self.sessions.timeout_minutes == 0 {
            return Err(invalid(
                origin,
                "sessions.timeout_minutes",
                "must be at least 1",
            ));
        }
        if let Some(h) = &self.auth.web_password_hash
            && !crate::auth::is_password_hash(h)
        {
            return Err(invalid(
                origin,
                "auth.web_password_hash",
                "is not an Argon2 hash (make one with `fleet-server config hash-password`)",
            ));
        }
        if self.auth.web_username.trim().is_empty() {
            return Err(invalid(origin, "auth.web_username", "must not be empty"));
        }
        if let Some(h) = &self.auth.api_key_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    origin,
                    "auth.api_key_sha256",
                    "must be 64 hex digits (the SHA-256 of the API key)",
                ));
            }
            if self.auth.api_key.is_some() {
                return Err(invalid(
                    origin,
                    "auth.api_key_sha256",
                    "give either auth.api_key or its digest, not both",
                ));
            }
        }
        if let Some(k) = &self.auth.session_public_key {
            crate::sessionsig::parse_public_key(k)
                .map_err(|m| invalid(origin, "auth.session_public_key", m))?;
        }
        if let Some(key) = &self.auth.api_key
            && key.expose().len() < 16
        {
            return Err(invalid(
                origin,
                "auth.api_key",
                "is too short: at least 16 characters",
            ));
        }
        if let Some(e) = &self.enrollment {
            crate::enrollment::validate_token(&e.token_id, e.token_secret.expose())
                .map_err(|m| invalid(origin, "enrollment", m))?;
            if !self.cluster.enabled {
                return Err(invalid(
                    origin,
                    "enrollment",
                    "needs cluster.enabled: true (the token is redeemed at the cluster backend)",
                ));
            }
        }
        if self.package.expiry_days == 0 || self.package.expiry_days > 365 {
            return Err(invalid(
                origin,
                "package.expiry_days",
                "must be between 1 and 365",
            ));
        }
        Ok(())
    }

    /// Replaces a plain `auth.web_password` by its hash, so the plain text is not kept (nor
    /// copied into node packages).
    pub fn hash_plain_password(&mut self) {
        if let Some(plain) = self.auth.web_password.take() {
            if self.auth.web_password_hash.is_none() {
                // The hash and the public key of the session key, both from the plain text.
                match crate::sessionsig::credentials_for(plain.expose()) {
                    Ok((hash, public)) => {
                        self.auth.web_password_hash = Some(hash);
                        self.auth.session_public_key = Some(public);
                    }
                    Err(e) => self.load_warnings.push(e),
                }
            }
            self.load_warnings.push(
                "auth.web_password is stored in plain text: replace it with the auth.web_password_hash and auth.session_public_key lines `fleet-server config hash-password` prints".into(),
            );
        }
        if self.auth.web_password_hash.is_some() && self.auth.session_public_key.is_none() {
            self.load_warnings.push(
                "auth.session_public_key is missing: dashboard logins are refused until it is set (`fleet-server config hash-password` prints it with the hash)".into(),
            );
        }
        self.hash_plain_api_key();
    }

    /// Replaces a plain `auth.api_key` by its SHA-256 digest, so that this configuration (and
    /// every node package made from it) holds only what checks the key, not the key.
    pub fn hash_plain_api_key(&mut self) {
        if self.auth.api_key.is_some() {
            let digest = self.auth.api_key_digest().map(hex::encode);
            self.auth.api_key = None;
            self.auth.api_key_sha256 = digest.clone();
            // A key file is the primary's own business; inline, the key sits in the YAML.
            if self.auth.api_key_file.is_some() {
                return;
            }
            self.load_warnings.push(format!(
                "auth.api_key is stored in plain text: replace it with `api_key_sha256: {}` (the key is then known only to its holders)",
                digest.unwrap_or_default()
            ));
        }
    }

    /// Applies `root` and `port_override` (set by `serve --root/--port`), also after the
    /// configuration is replaced by enrollment.
    pub fn apply_overrides(&mut self) {
        if let Some(root) = self.root.clone() {
            self.rebase(&root);
        }
        if let Some(port) = self.port_override {
            self.server.port = port;
        }
    }

    /// Moves the node's own absolute paths (state directory, TLS and etcd files, node template) under `root`, for a
    /// node installed into a directory instead of `/` (`serve --root`). The shared storage
    /// path is left alone: it names a shared mount, not a file of this node.
    pub fn rebase(&mut self, root: &Path) {
        fn under(root: &Path, p: &Path) -> PathBuf {
            match p.strip_prefix("/") {
                Ok(rel) => root.join(rel),
                Err(_) => p.to_path_buf(),
            }
        }
        self.server.state_dir = under(root, &self.server.state_dir);
        self.server.tls_cert = self.server.tls_cert.as_deref().map(|p| under(root, p));
        self.server.tls_key = self.server.tls_key.as_deref().map(|p| under(root, p));
        for p in [
            &mut self.cluster.etcd_ca,
            &mut self.cluster.etcd_cert,
            &mut self.cluster.etcd_key,
            &mut self.package.template_dir,
        ] {
            *p = p.as_deref().map(|p| under(root, p));
        }
    }

    /// The directory the `storage` backend uses.
    pub fn storage_path(&self) -> PathBuf {
        self.cluster
            .storage_path
            .clone()
            .unwrap_or_else(|| self.server.state_dir.join("cluster-storage"))
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

fn invalid(origin: &Path, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: origin.to_path_buf(),
        field: field.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(text, Path::new("/etc/fleet.yaml"))?;
        c.validate(Path::new("/etc/fleet.yaml"))?;
        Ok(c)
    }

    #[test]
    fn the_guides_example_parses() {
        let c = parse(
            "cluster:\n  enabled: true\n  backend: redis\n  redis_host: \"redis.company.com\"\n  redis_password: \"password\"\n\nsessions:\n  backend: redis\n  redis:\n    host: \"redis.company.com\"\n    password: \"password\"\n",
        )
        .unwrap();
        assert!(c.cluster.enabled);
        assert_eq!(c.cluster.backend, BackendKind::Redis);
        assert_eq!(c.cluster.redis_port, 6379);
        assert_eq!(c.server.port, 8768);
        assert_eq!(c.sessions.backend, SessionBackendKind::Redis);
    }

    #[test]
    fn unknown_field_names_its_place() {
        let err = parse("cluster:\n  enabled: true\n  redis_hots: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/fleet.yaml: cluster.redis_hots: unknown field `redis_hots`"),
            "{err}"
        );
        assert!(err.contains("line 3 column 3"), "{err}");
    }

    #[test]
    fn port_out_of_range_names_the_field() {
        let err = parse("server:\n  port: 70000\n").unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        assert!(err.contains("70000"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_a_syntax_error() {
        // Streaming parsing names the section it was in, when there is one.
        let err = parse("cluster:\n\tenabled: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot start any token at line 2"), "{err}");
        let err = parse("server: 'unterminated\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/fleet.yaml: "), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn heartbeat_bounds_are_checked() {
        let err = parse("cluster:\n  heartbeat_interval: 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.heartbeat_interval"), "{err}");
        let err = parse("cluster:\n  heartbeat_interval: 5\n  heartbeat_timeout: 6\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least twice"), "{err}");
        parse("cluster:\n  heartbeat_interval: 1\n  heartbeat_timeout: 3\n").unwrap();
    }

    #[test]
    fn invalid_node_name_is_refused() {
        let err = parse("cluster:\n  node_name: \"Server 03!\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.node_name"), "{err}");
    }

    #[test]
    fn redis_backend_needs_a_host() {
        let err = parse("cluster:\n  enabled: true\n  backend: redis\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.redis_host"), "{err}");
    }

    #[test]
    fn sentinels_need_a_master_name_and_host_ports() {
        let base = "cluster:\n  enabled: true\n  backend: redis\n";
        let c = parse(&format!(
            "{base}  redis_sentinels: [\"192.0.2.1:26379\", \"192.0.2.2:26379\"]\n  redis_master_name: fleet\n"
        ))
        .unwrap();
        assert_eq!(c.cluster.redis_sentinels.len(), 2);
        let err = parse(&format!("{base}  redis_sentinels: [\"192.0.2.1:26379\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.redis_master_name"), "{err}");
        let err = parse(&format!(
            "{base}  redis_sentinels: [\"192.0.2.1\"]\n  redis_master_name: fleet\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`192.0.2.1` is not host:port"), "{err}");
        let err = parse(&format!(
            "{base}  redis_host: 192.0.2.9\n  redis_sentinels: [\"192.0.2.1:26379\"]\n  redis_master_name: fleet\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn sentinel_credentials_and_session_sentinels() {
        let c = parse(
            "cluster:\n  enabled: true\n  backend: redis\n  redis_sentinels: [\"192.0.2.1:26379\"]\n  redis_master_name: fleet\n  redis_sentinel_password: \"s3ntinel-pw\"\n  redis_sentinel_tls: true\n  redis_tls_ca: /etc/fleet/redis-ca.pem\nsessions:\n  backend: redis\n",
        )
        .unwrap();
        assert!(c.cluster.redis_sentinel_tls);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3ntinel-pw"), "{shown}");
        let c = parse(
            "sessions:\n  backend: redis\n  redis:\n    sentinels: [\"192.0.2.1:26379\"]\n    master_name: web\n    sentinel_password: \"pw2-secret\"\n",
        )
        .unwrap();
        assert_eq!(c.sessions.redis.sentinels.len(), 1);
        assert!(!format!("{c:?}").contains("pw2-secret"));
        let err =
            parse("sessions:\n  backend: redis\n  redis:\n    sentinels: [\"192.0.2.1:26379\"]\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("sessions.redis.master_name"), "{err}");
        let err = parse("sessions:\n  backend: redis\n  redis:\n    host: a\n    sentinels: [\"192.0.2.1:26379\"]\n    master_name: web\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sessions.redis.sentinels"), "{err}");
    }

    #[test]
    fn etcd_backend_parses_and_is_checked() {
        let c = parse(
            "cluster:\n  enabled: true\n  backend: etcd\n  etcd_endpoints: [\"http://127.0.0.1:2379\"]\n  etcd_username: fleet\n  etcd_password: etcd-secret-pw\n",
        )
        .unwrap();
        assert_eq!(c.cluster.backend, BackendKind::Etcd);
        assert_eq!(c.cluster.backend.to_string(), "etcd");
        assert_eq!(c.cluster.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert!(!format!("{c:?}").contains("etcd-secret-pw"));
        // Optional fields stay out of a written file.
        let yaml = serde_yaml::to_string(&Config::default()).unwrap();
        assert!(!yaml.contains("etcd_"), "{yaml}");

        let base = "cluster:\n  enabled: true\n  backend: etcd\n";
        for (extra, field, words) in [
            ("", "cluster.etcd_endpoints", "is required"),
            (
                "  etcd_endpoints: [\"127.0.0.1:2379\"]\n",
                "cluster.etcd_endpoints",
                "not an http:// or https:// URL",
            ),
            (
                "  etcd_endpoints: [\"https://etcd:2379\"]\n  etcd_cert: /c.pem\n",
                "cluster.etcd_key",
                "required with etcd_cert",
            ),
            (
                "  etcd_endpoints: [\"https://etcd:2379\"]\n  etcd_key: /k.pem\n",
                "cluster.etcd_cert",
                "required with etcd_key",
            ),
            (
                "  etcd_endpoints: [\"http://etcd:2379\"]\n  etcd_ca: /ca.pem\n",
                "cluster.etcd_endpoints",
                "https://",
            ),
            (
                "  etcd_endpoints: [\"http://etcd:2379\"]\n  etcd_username: fleet\n",
                "cluster.etcd_password",
                "required with etcd_username",
            ),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(words), "{extra}: {err}");
        }
    }

    #[test]
    fn etcd_sessions_use_the_cluster_etcd() {
        let c = parse(
            "cluster:\n  enabled: true\n  backend: etcd\n  etcd_endpoints: [\"http://127.0.0.1:2379\"]\nsessions:\n  backend: etcd\n",
        )
        .unwrap();
        assert_eq!(c.sessions.backend, SessionBackendKind::Etcd);
        let err = parse("sessions:\n  backend: etcd\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster.etcd_endpoints") && err.contains("sessions.backend: etcd"),
            "{err}"
        );
    }

    #[test]
    fn etcd_password_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("etcd-pw");
        std::fs::write(&pw, "from-a-file\n").unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            format!(
                "cluster:\n  enabled: true\n  backend: etcd\n  etcd_endpoints: [\"http://127.0.0.1:2379\"]\n  etcd_username: fleet\n  etcd_password_file: {}\n",
                pw.display()
            ),
        )
        .unwrap();
        let c = Config::load(&cfg).unwrap();
        assert_eq!(
            c.cluster.etcd_password.as_ref().map(Secret::expose),
            Some("from-a-file")
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = parse("cluster:\n  redis_password: hunter2-very-secret\nauth:\n  api_key: abcdefghijklmnopqrstuvwxyz\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("abcdefghijklmnop"), "{dbg}");
        assert!(dbg.contains("***"));
    }
}
