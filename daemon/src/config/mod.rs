//! The node's YAML configuration: one serde tree in the user guide's shape, loaded and validated
//! fully before anything binds, with errors that name the file, the field and the problem.
//! A leaf: it imports nothing from the rest of the crate.

use std::path::{Path, PathBuf};

pub mod files;
mod loaded;
mod schema;
mod secret;
mod types;
mod validate;

pub use loaded::{Loaded, Origin};
pub use schema::*;
pub use secret::Secret;
pub use types::{
    ApiKey, AtLeastOne, ExpiryDays, KeyPrefix, ListenHost, NodeName, PasswordHash, Port, PublicKey,
    Seconds, Sha256Hex, UserName,
};

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

impl ConfigError {
    /// `field` of the configuration `origin` cannot be used: `message` says why.
    pub fn invalid(origin: &Path, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: origin.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

fn invalid(origin: &Path, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(origin, field, message)
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
