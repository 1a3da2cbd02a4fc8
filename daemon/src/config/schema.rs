//! The configuration file's serde tree, in the user guide's shape: every section, its defaults,
//! and the shape rules of single values.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    ApiKey, AtLeastOne, ExpiryDays, KeyPrefix, ListenHost, NodeName, PasswordHash, Port, PublicKey,
    Seconds, Secret, Sha256Hex, UserName,
};

fn default_state_dir() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/FleetServer/state")
    } else {
        PathBuf::from("/var/lib/fleet-server")
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
    pub host: ListenHost,
    /// Port of the API and dashboard.
    pub port: Port,
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
    pub header_timeout_seconds: AtLeastOne,
    /// Open connections served at once (lowered to fit `ulimit -n`); more get health or 503.
    pub max_connections: AtLeastOne,
    /// Open connections served at once from one client address.
    pub max_connections_per_client: AtLeastOne,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: ListenHost::default(),
            port: Port(8768),
            tls_cert: None,
            tls_key: None,
            state_dir: default_state_dir(),
            public_url: None,
            metrics_require_auth: false,
            header_timeout_seconds: AtLeastOne(10),
            max_connections: AtLeastOne(1024),
            max_connections_per_client: AtLeastOne(64),
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
    pub node_name: Option<NodeName>,
    /// Prefix of every backend key (`fleet:` gives `fleet:cluster:members`).
    pub key_prefix: KeyPrefix,
    /// Seconds between heartbeats (at least 1).
    pub heartbeat_interval: Seconds<1>,
    /// Seconds without a heartbeat after which a node counts as gone (at least 3, and at least
    /// twice the interval).
    pub heartbeat_timeout: Seconds<3>,
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
            key_prefix: KeyPrefix("fleet:".into()),
            heartbeat_interval: Seconds(5.0),
            heartbeat_timeout: Seconds(15.0),
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
        self.heartbeat_interval.duration()
    }
    pub fn heartbeat_timeout(&self) -> std::time::Duration {
        self.heartbeat_timeout.duration()
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
    pub timeout_minutes: AtLeastOne,
    /// The session Redis, when `backend: redis`.
    pub redis: SessionRedisConfig,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            backend: SessionBackendKind::Memory,
            timeout_minutes: AtLeastOne(60),
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
    pub api_key: Option<ApiKey>,
    /// A file holding the API key, instead of `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// SHA-256 (hex) of the API key: all a node needs to check it. A plain `api_key` is
    /// replaced by this at load, so neither a node's configuration nor a package holds the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_sha256: Option<Sha256Hex>,
    /// The dashboard's user name.
    pub web_username: UserName,
    /// The dashboard's password in plain text: accepted, hashed at load, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_password: Option<Secret>,
    /// The dashboard's password as an Argon2id hash (`fleet-server config hash-password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_password_hash: Option<PasswordHash>,
    /// `ed25519:<hex>`: the public half of the key the password derives; sessions must carry
    /// its signature (`fleet-server config hash-password` prints it with the hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_public_key: Option<PublicKey>,
}

impl AuthConfig {
    /// The API key's SHA-256 digest, from `api_key_sha256` or a plain `api_key`.
    pub fn api_key_digest(&self) -> Option<[u8; 32]> {
        if let Some(h) = &self.api_key_sha256 {
            return hex::decode(h.as_str()).ok().and_then(|b| b.try_into().ok());
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
            web_username: UserName("admin".into()),
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
    pub expiry_days: ExpiryDays,
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
            expiry_days: ExpiryDays(7),
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

impl Config {
    /// The directory the `storage` backend uses.
    pub fn storage_path(&self) -> PathBuf {
        self.cluster
            .storage_path
            .clone()
            .unwrap_or_else(|| self.server.state_dir.join("cluster-storage"))
    }
}

/// How `auth.session_public_key` starts.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// The 32 bytes of an `ed25519:<64 hex>` public key.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let hex_part = text
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .ok_or_else(|| format!("must start with `{PUBLIC_KEY_PREFIX}`"))?;
    let bytes = hex::decode(hex_part).map_err(|_| "is not hex after `ed25519:`".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "must hold 32 bytes (64 hex digits) after `ed25519:`".to_string())
}

/// True when `hash` looks like a PHC string this server can verify.
pub fn is_password_hash(hash: &str) -> bool {
    hash.starts_with("$argon2")
}

/// The shape of an enrollment token: a 32-hex id and a 64-hex secret.
pub fn validate_token(id: &str, secret: &str) -> Result<(), String> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("token_id must be 32 hex characters".into());
    }
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("token_secret must be 64 hex characters".into());
    }
    Ok(())
}
