//! The loaded state beside the file's schema: where the configuration came from, what `serve`
//! overrides, the warnings found while loading; reading the file, its `*_file` secrets, and
//! rebasing the node's paths under `--root`.

use std::path::{Path, PathBuf};

use super::{ApiKey, Config, ConfigError, Port, Secret, invalid};

/// Where a configuration came from and what the command line overrides in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file this configuration was loaded from.
    pub source: Option<PathBuf>,
    /// `serve --root`: the node's own paths are under this directory.
    pub root: Option<PathBuf>,
    /// `serve --port`.
    pub port_override: Option<u16>,
}

/// A configuration read from its file, with its origin and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub origin: Origin,
    /// Things worth a warning found while loading (logged once logging is up).
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Reads, parses and validates a configuration file, resolving `*_file` secrets. Plain
    /// secrets are left for `crypto::secure`.
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let text =
            super::files::read_trusted_text(path, super::files::CONFIG_CAP).map_err(|source| {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let mut config = Config::parse(&text, path)?;
        config.resolve_secret_files(path)?;
        config.validate(path)?;
        Ok(Loaded {
            config,
            origin: Origin {
                source: Some(path.to_path_buf()),
                ..Origin::default()
            },
            warnings: Vec::new(),
        })
    }

    /// Replaces a plain `auth.api_key` by its SHA-256 digest, so that this configuration (and
    /// every node package made from it) holds only what checks the key, not the key.
    pub fn hash_plain_api_key(&mut self) {
        let auth = &mut self.config.auth;
        if auth.api_key.is_some() {
            let digest = auth.api_key_digest().map(super::Sha256Hex::of_digest);
            auth.api_key = None;
            auth.api_key_sha256 = digest.clone();
            // A key file is the primary's own business; inline, the key sits in the YAML.
            if auth.api_key_file.is_some() {
                return;
            }
            self.warnings.push(format!(
                "auth.api_key is stored in plain text: replace it with `api_key_sha256: {}` (the key is then known only to its holders)",
                digest.as_deref().unwrap_or_default()
            ));
        }
    }

    /// Applies `root` and `port_override` (set by `serve --root/--port`), also after the
    /// configuration is replaced by enrollment.
    pub fn apply_overrides(&mut self) {
        if let Some(root) = &self.origin.root {
            self.config.rebase(root);
        }
        // `serve` refuses `--port 0` before it gets here.
        if let Some(port) = self.origin.port_override.and_then(|p| Port::new(p).ok()) {
            self.config.server.port = port;
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file, resolving `*_file` secrets and
    /// replacing a plain `auth.api_key` by its digest. A plain `auth.web_password` is hashed by
    /// `crypto::secure` (the daemon's own load does both).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut loaded = Loaded::read(path)?;
        loaded.hash_plain_api_key();
        Ok(loaded.config)
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
            let text =
                super::files::read_trusted_text(file, super::files::SECRET_CAP).map_err(|e| {
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
        if self.auth.api_key_file.is_some() {
            if self.auth.api_key.is_some() {
                return Err(invalid(
                    origin,
                    "auth.api_key",
                    "give either the value or the `_file`, not both",
                ));
            }
            let mut key = None;
            read_secret(origin, "auth.api_key", &self.auth.api_key_file, &mut key)?;
            // The key from the file is held to the same rule as one written inline.
            self.auth.api_key = key
                .map(|k| ApiKey::new(k.expose()))
                .transpose()
                .map_err(|m| invalid(origin, "auth.api_key", m))?;
        }
        Ok(())
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
}
