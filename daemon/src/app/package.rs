//! Node packages from the primary's point of view, the pure part: derive the node's
//! configuration from the primary's, seal it (installer-stub's format), and wrap it in a macOS
//! pkg or a Linux provision bundle (fleet-package). `app::build` is the one path that uses it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_installer_stub::sealed::{
    self, ConfigFile, FileKey, KdfParams, KeySource, SealOptions, SealedPayload,
};
use fleet_installer_stub::{EthernetPolicy, TargetLayout};
use fleet_package::{
    ArtifactCache, NodeFiles, PkgBuilder, PkgFormat, PkgOptions, PkgRoot, SigningIdentity,
    SigningOptions, Target, Template,
};

use crate::cluster::ClusterError;
use crate::config::{Config, NodeName, Secret, Sha256Hex, SigningConfig};

/// Which installer to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A macOS product archive (`.pkg`): a Distribution with the component inside, what
    /// Installer on Apple silicon runs natively and MDMs deploy.
    Pkg,
    /// A bare macOS component package (`.pkg`), as pkgbuild writes it.
    Component,
    /// A Linux provision bundle (`<node>_provision.tar.gz`).
    Bundle,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pkg" | "macos" => Ok(Format::Pkg),
            "component" => Ok(Format::Component),
            "bundle" | "linux" => Ok(Format::Bundle),
            other => Err(format!(
                "unknown package format `{other}` (expected pkg, component or bundle)"
            )),
        }
    }
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pkg => "pkg",
            Format::Component => "component",
            Format::Bundle => "bundle",
        }
    }

    /// A macOS `.pkg` (product archive or component).
    pub fn is_macos(self) -> bool {
        matches!(self, Format::Pkg | Format::Component)
    }
}

/// What an admin asks for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The new node's name; `None`: the machine's hostname at first start.
    pub node_name: Option<String>,
    pub format: Format,
    /// The file name; default `FleetServerClusterNode.pkg` or `<node>_provision.tar.gz`.
    pub package_name: Option<String>,
    /// How long the package stays installable.
    pub expires: Duration,
    pub ethernet: EthernetPolicy,
    /// Seal with a passphrase (travels separately) instead of a key file in the package.
    pub passphrase: Option<crate::config::Secret>,
    /// Template directory, overriding `package.template_dir`.
    pub template_dir: Option<PathBuf>,
    /// Accept binaries whose format does not fit the target (development and tests).
    pub allow_foreign_binaries: bool,
    /// Who asked (recorded in the `package_built` event).
    pub built_by: String,
    /// The addresses the new node is meant to have (`--ip`, as `etcd_cluster_add.sh <NodeName>
    /// <IP>`): checked against the live members and recorded in the `package_built` event.
    pub ips: Vec<IpAddr>,
    /// A backend credential of the node's own (a per-node etcd user), sealed into its
    /// configuration instead of the primary's; `None`: the primary's (see [`node_credential`]).
    pub node_credential: Option<NodeCredential>,
    /// `--no-enrollment`: the package carries the node's full configuration (long-lived
    /// secrets included) for an offline install, instead of a single-use enrollment token.
    pub no_enrollment: bool,
    /// Set by [`build_for_cluster`]: the token and the enrollment user this package redeems
    /// with; `None`: no enrollment (offline build, or a backend without records).
    pub enrollment: Option<EnrollmentPlan>,
    /// Set by [`build_for_cluster`]: the backend's clock at the build, ms since the epoch, from
    /// which the package's and its record's expiries are counted; `None`: this machine's.
    pub clock_ms: Option<u64>,
}

/// How a package enrolls: its token, and the backend user that may take its record (`None`:
/// no user of its own, the bootstrap configuration carries the shared credentials, or none on
/// the storage backend).
#[derive(Clone, Debug)]
pub struct EnrollmentPlan {
    pub token: super::enroll::Token,
    pub user: Option<NodeCredential>,
}

impl Default for BuildRequest {
    /// A macOS pkg named after the hostname, with the default expiry and Ethernet policy.
    fn default() -> Self {
        BuildRequest {
            node_name: None,
            format: Format::Pkg,
            package_name: None,
            expires: Duration::from_secs(7 * 86_400),
            ethernet: EthernetPolicy::Require,
            passphrase: None,
            template_dir: None,
            allow_foreign_binaries: false,
            built_by: String::new(),
            ips: Vec::new(),
            node_credential: None,
            no_enrollment: false,
            enrollment: None,
            clock_ms: None,
        }
    }
}

/// A backend user made for one node (an etcd user limited to the cluster's prefix).
#[derive(Debug, Clone)]
pub struct NodeCredential {
    pub user: String,
    pub password: Secret,
}

/// Which backend credentials a new node's configuration carries.
#[derive(Debug, Clone)]
pub enum CredentialChoice {
    /// A user of its own, limited to the cluster's prefix and deleted with the node.
    NodeUser(NodeCredential),
    /// The primary's own credentials, and why no node user was made.
    Shared(String),
}

/// A built package, ready to write or to download.
#[derive(Clone)]
pub struct BuiltPackage {
    pub file_name: String,
    pub bytes: Vec<u8>,
    /// Empty when the node takes its hostname.
    pub node_name: String,
    /// The sealed header's package id (hex).
    pub package_id: String,
    /// Unix seconds after which the stub refuses the package.
    pub not_after: u64,
    pub format: Format,
    /// True when the binaries do not fit the target (development builds).
    pub foreign_binaries: bool,
    /// The intended addresses of the node (from the request).
    pub ips: Vec<IpAddr>,
    /// The node's own backend user, when it has one (never its password).
    pub node_user: Option<String>,
    /// The enrollment record to store in the backend (`None`: the package carries the full
    /// configuration).
    pub enrollment: Option<crate::cluster::EnrollmentRecord>,
    /// The signer's subject when the package is signed.
    pub signed_by: Option<String>,
}

impl std::fmt::Debug for BuiltPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltPackage")
            .field("file_name", &self.file_name)
            .field("bytes", &self.bytes.len())
            .field("node_name", &self.node_name)
            .field("package_id", &self.package_id)
            .finish()
    }
}

/// Why a build was refused.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid node name: {0}")]
    NodeName(String),
    #[error(transparent)]
    Package(#[from] fleet_package::Error),
    #[error(
        "no node template: set package.template_dir (or pass --template-dir); `make node-template` fills one"
    )]
    NoTemplate,
    #[error("sealing the node configuration: {0}")]
    Seal(String),
    #[error("the expiry must be between 1 minute and 365 days")]
    Expiry,
    #[error("node name {name} is already held by the live node {holder} (use another name)")]
    NameInUse { name: String, holder: String },
    #[error("IP {ip} is already used by the live node {holder}")]
    IpInUse { ip: IpAddr, holder: String },
    #[error("the cluster: {0}")]
    Cluster(ClusterError),
    #[error("{0}")]
    FormatUnavailable(String),
    #[error("{field}: reading {}: {source}", path.display())]
    NodeFile {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<ClusterError> for BuildError {
    fn from(e: ClusterError) -> Self {
        BuildError::Cluster(e)
    }
}

impl BuildError {
    /// True for errors in what the admin asked (a 400, not a 500).
    pub fn is_bad_request(&self) -> bool {
        match self {
            BuildError::NodeName(_)
            | BuildError::Expiry
            | BuildError::NameInUse { .. }
            | BuildError::IpInUse { .. }
            | BuildError::FormatUnavailable(_) => true,
            BuildError::Package(e) => matches!(
                e,
                fleet_package::Error::InvalidNodeName { .. }
                    | fleet_package::Error::InvalidPackageName { .. }
            ),
            _ => false,
        }
    }
}

/// Parses `7d`, `12h`, `30m` or a number of days.
pub fn parse_expiry(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "d"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 7d, 12h or 30m"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3600,
        "m" => n * 60,
        _ => return Err(format!("`{s}`: the unit must be d, h or m")),
    };
    Ok(Duration::from_secs(secs))
}

/// The new node's configuration: the primary's, with this node's name, the target's paths,
/// and nothing that only makes sense on the primary.
pub fn node_config(primary: &Config, node_name: Option<&NodeName>, format: Format) -> Config {
    let mut c = primary.clone();
    c.cluster.node_name = node_name.cloned();
    c.server.state_dir = PathBuf::from(match format {
        Format::Pkg | Format::Component => "/Library/FleetServer/state",
        Format::Bundle => "/var/lib/fleet-server",
    });
    c.server.host = crate::config::ListenHost::default();
    c.server.public_url = None;
    // Secrets read from files on the primary travel as values: the files are not on the node.
    c.cluster.redis_password_file = None;
    c.cluster.redis_sentinel_password_file = None;
    c.cluster.etcd_password_file = None;
    c.auth.api_key_file = None;
    c.auth.web_password = None;
    // A node checks the API key by its digest and never holds the key (issue 14).
    c.auth.api_key_sha256 = primary.auth.api_key_digest().map(Sha256Hex::of_digest);
    c.auth.api_key = None;
    // Every node can build packages for its own platform: the package installs its binaries
    // as a node template (postinstall / provision.sh), and the node's configuration names it.
    c.package = crate::config::PackageConfig {
        template_dir: Some(PathBuf::from(node_template_dir(format))),
        expiry_days: primary.package.expiry_days,
        // A development cluster (Linux binaries in macOS packages) stays one.
        allow_foreign_binaries: primary.package.allow_foreign_binaries,
        ..Default::default()
    };
    c
}

/// Where a package of `format` installs the node template (the node's own binaries).
pub fn node_template_dir(format: Format) -> &'static str {
    if format.is_macos() {
        "/Library/FleetServer/node-template"
    } else {
        "/usr/local/lib/fleet-server/node-template"
    }
}

/// Whether this node can build `format`, and if not, why (the Settings page offers only the
/// formats it can build; the CLI and the API refuse the others with this reason).
pub fn can_build(config: &Config, format: Format) -> Result<(), String> {
    let Some(dir) = &config.package.template_dir else {
        return Err(
            "no node template is configured (package.template_dir; `make node-template` fills one)"
                .into(),
        );
    };
    let (target, platform) = if format.is_macos() {
        (Target::MacOs, "macOS packages")
    } else {
        (Target::LinuxX86_64, "Linux bundles")
    };
    Template::probe(dir, target, config.package.allow_foreign_binaries).map_err(|e| {
        format!(
            "this node cannot build {platform}: {e}; a node carries the template of its own platform only (build {platform} on the primary or on a node of that platform)"
        )
    })
}

/// Files the node's configuration names, by the field that names them and the name they
/// get in the node's configuration directory.
const NODE_FILES: [(&str, &str, u32); 6] = [
    ("server.tls_cert", "server-tls.crt", 0o644),
    ("server.tls_key", "server-tls.key", 0o600),
    ("cluster.etcd_ca", "etcd-ca.pem", 0o644),
    ("cluster.etcd_cert", "etcd-client.crt", 0o644),
    ("cluster.etcd_key", "etcd-client.key", 0o600),
    ("cluster.redis_tls_ca", "redis-ca.pem", 0o644),
];

/// The files of `NODE_FILES` that hold no secret and that an enrolling package's bootstrap
/// needs to reach the backend at all.
const PUBLIC_NODE_FILES: [&str; 2] = ["etcd-ca.pem", "redis-ca.pem"];

fn file_field<'a>(c: &'a mut Config, field: &str) -> &'a mut Option<PathBuf> {
    match field {
        "server.tls_cert" => &mut c.server.tls_cert,
        "server.tls_key" => &mut c.server.tls_key,
        "cluster.etcd_ca" => &mut c.cluster.etcd_ca,
        "cluster.etcd_cert" => &mut c.cluster.etcd_cert,
        "cluster.etcd_key" => &mut c.cluster.etcd_key,
        "cluster.redis_tls_ca" => &mut c.cluster.redis_tls_ca,
        _ => unreachable!("NODE_FILES names only these fields"),
    }
}

/// The primary's TLS certificate and key and etcd's CA and client certificate, as files that
/// travel with the node's configuration (sealed, or inside the encrypted enrollment record),
/// and the node's configuration pointing at them in its own configuration directory.
pub fn node_files(
    primary: &Config,
    node: &mut Config,
    format: Format,
) -> Result<Vec<ConfigFile>, BuildError> {
    let layout = match format {
        Format::Pkg | Format::Component => TargetLayout::Macos,
        Format::Bundle => TargetLayout::Linux,
    };
    let dir = layout.config_dir(Path::new("/"));
    let mut primary = primary.clone();
    let mut files = Vec::new();
    for (field, name, mode) in NODE_FILES {
        let Some(path) = file_field(&mut primary, field).clone() else {
            continue;
        };
        let content = crate::config::files::read_trusted(&path, ConfigFile::MAX_LEN)
            .and_then(|b| {
                String::from_utf8(b).map_err(|_| std::io::Error::other("not a PEM text file"))
            })
            .map_err(|source| BuildError::NodeFile {
                field,
                path: path.clone(),
                source,
            })?;
        *file_field(node, field) = Some(dir.join(name));
        files.push(ConfigFile {
            name: name.to_string(),
            mode,
            content,
        });
    }
    Ok(files)
}

/// Puts a node's own backend user into its configuration.
fn use_credential(node: &mut Config, cred: &NodeCredential) {
    crate::cluster::users::use_node_user(node, &cred.user, &cred.password);
}

/// What an enrolling package carries instead of the node's configuration: how to reach the
/// backend, the credentials that may only take the enrollment record, and the token. No API
/// key, no dashboard password, no encryption key, no session store secret.
pub fn bootstrap_config(node: &Config, plan: &EnrollmentPlan) -> Config {
    let mut b = Config::default();
    b.server.host = node.server.host.clone();
    b.server.port = node.server.port;
    b.server.state_dir = node.server.state_dir.clone();
    b.logging = node.logging.clone();
    let mut c = node.cluster.clone();
    c.redis_password_file = None;
    c.redis_sentinel_password_file = None;
    c.etcd_password_file = None;
    // No user of its own: the shared credentials the node has anyway (said at build).
    if let Some(u) = &plan.user {
        crate::cluster::users::set_credentials(&mut c, &u.user, &u.password);
    }
    b.cluster = c;
    b.enrollment = Some(crate::config::EnrollmentConfig {
        token_id: plan.token.id.clone(),
        token_secret: plan.token.secret.clone(),
    });
    b
}

/// Builds node packages, keeping the template-only parts (Payload, Bom) cached between builds,
/// and signs the macOS ones when it has an identity.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    cache: Arc<ArtifactCache>,
    signing: Option<Arc<SigningIdentity>>,
}

/// Loads the signing identity `package.signing` (or the CLI's `--sign-p12`) names. Errors name
/// the file at fault and never the password.
pub fn load_signing(s: &SigningConfig) -> Result<SigningIdentity, fleet_package::Error> {
    SigningIdentity::load(
        &s.p12_file,
        &s.password_file,
        &SigningOptions {
            allow_any_certificate: s.allow_any_certificate,
            timestamp_url: s.timestamp_url.clone(),
        },
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }

    /// A builder that signs with `package.signing`, if set (loaded now: a bad identity is an
    /// error at startup, not at the first build).
    pub fn from_config(c: &Config) -> Result<Self, fleet_package::Error> {
        let signing = c.package.signing.as_ref().map(load_signing).transpose()?;
        Ok(Builder::new().with_signing(signing))
    }

    /// Signs macOS packages with `identity` (`None`: unsigned).
    pub fn with_signing(mut self, identity: Option<SigningIdentity>) -> Self {
        self.signing = identity.map(Arc::new);
        self
    }

    /// The identity macOS packages are signed with.
    pub fn signing(&self) -> Option<&SigningIdentity> {
        self.signing.as_deref()
    }

    /// Builds the package `req` asks for from the primary's configuration. CPU-bound: call it
    /// from a blocking thread in async code.
    pub fn build(&self, primary: &Config, req: &BuildRequest) -> Result<BuiltPackage, BuildError> {
        let node_name = match &req.node_name {
            Some(name) => Some(NodeName::new(name.as_str()).map_err(BuildError::NodeName)?),
            None => None,
        };
        if req.expires < Duration::from_secs(60) || req.expires > Duration::from_secs(365 * 86_400)
        {
            return Err(BuildError::Expiry);
        }
        let file_name = match (req.format, &req.package_name) {
            (Format::Pkg | Format::Component, Some(n)) => {
                fleet_package::validate_package_name(n)?;
                n.clone()
            }
            (Format::Pkg | Format::Component, None) => fleet_package::DEFAULT_PKG_NAME.to_string(),
            (Format::Bundle, Some(n)) => {
                fleet_package::validate_bundle_name(n)?;
                n.clone()
            }
            (Format::Bundle, None) => {
                fleet_package::default_bundle_name(req.node_name.as_deref().unwrap_or("node"))
            }
        };
        let template_dir = req
            .template_dir
            .clone()
            .or_else(|| primary.package.template_dir.clone())
            .ok_or(BuildError::NoTemplate)?;
        if req.template_dir.is_none() {
            can_build(primary, req.format).map_err(BuildError::FormatUnavailable)?;
        }
        let target = match req.format {
            Format::Pkg | Format::Component => Target::MacOs,
            Format::Bundle => Target::LinuxX86_64,
        };
        let allow_foreign = req.allow_foreign_binaries || primary.package.allow_foreign_binaries;
        let template = Template::load(&template_dir, target, allow_foreign)?;
        let foreign_binaries = allow_foreign && !template_fits(&template, target);

        let mut node = node_config(primary, node_name.as_ref(), req.format);
        let node_files = node_files(primary, &mut node, req.format)?;
        if let Some(cred) = &req.node_credential {
            use_credential(&mut node, cred);
        }
        let full_yaml =
            serde_yaml::to_string(&node).map_err(|e| BuildError::Seal(e.to_string()))?;
        let (yaml, files, mut record) = match &req.enrollment {
            None => (full_yaml, node_files, None),
            Some(plan) => {
                let boot = bootstrap_config(&node, plan);
                let boot_yaml =
                    serde_yaml::to_string(&boot).map_err(|e| BuildError::Seal(e.to_string()))?;
                // The CA certificates (public) travel in the package too: the bootstrap needs
                // them to reach a TLS backend with a private CA and take its record.
                let public: Vec<ConfigFile> = node_files
                    .iter()
                    .filter(|f| PUBLIC_NODE_FILES.contains(&f.name.as_str()))
                    .cloned()
                    .collect();
                // The files (the TLS key is a long-lived secret) wait in the record too.
                let enrolled = super::enroll::EnrolledConfig {
                    config_yaml: full_yaml,
                    files: node_files,
                };
                let (nonce, ciphertext) =
                    super::enroll::seal(&plan.token, &enrolled.to_plaintext());
                let now_ms = req.clock_ms.unwrap_or_else(|| now_secs() * 1000);
                let users = [&req.node_credential, &plan.user]
                    .into_iter()
                    .flatten()
                    .map(|c| c.user.clone())
                    .collect();
                let record = crate::cluster::EnrollmentRecord {
                    token_id: plan.token.id.clone(),
                    node_name: req.node_name.clone().unwrap_or_default(),
                    created_ms: now_ms,
                    expires_ms: now_ms + req.expires.as_millis() as u64,
                    built_by: req.built_by.clone(),
                    package_id: String::new(),
                    users,
                    nonce,
                    ciphertext,
                    claim: plan.token.claim_digest(),
                };
                (boot_yaml, public, Some(record))
            }
        };
        let created_at = req.clock_ms.map_or_else(now_secs, |ms| ms / 1000);
        let opts = SealOptions {
            created_at,
            not_after: created_at + req.expires.as_secs(),
            ethernet: req.ethernet,
            layout: match req.format {
                Format::Pkg | Format::Component => TargetLayout::Macos,
                Format::Bundle => TargetLayout::Linux,
            },
            kdf: KdfParams::DEFAULT,
        };
        let payload = SealedPayload {
            node_name: req.node_name.clone().unwrap_or_default(),
            config_yaml: format!(
                "# Fleet Server node configuration, from the primary's package builder.\n{yaml}"
            ),
            files,
        };
        let key;
        let source = match &req.passphrase {
            Some(p) => KeySource::Passphrase(p.expose().as_bytes()),
            None => {
                key = FileKey::generate().map_err(|e| BuildError::Seal(e.to_string()))?;
                KeySource::KeyFile(&key)
            }
        };
        let sealed =
            sealed::seal(&payload, &opts, source).map_err(|e| BuildError::Seal(e.to_string()))?;
        if let Some(r) = record.as_mut() {
            r.package_id = sealed.header.package_id_hex();
        }
        let files = NodeFiles {
            sealed: sealed.blob,
            key: sealed.key_file,
        };
        let root = PkgRoot::embedded();
        // The package's version is the daemon's it installs (what an upgrade compares with);
        // binaries without a version slot (placeholders) get this builder's.
        let version = super::upgrade::template_version(&template)
            .unwrap_or_else(|_| crate::version::version().to_owned());
        let pkg_options = |format| PkgOptions {
            format,
            version: version.clone(),
        };
        let signer = self.signing.as_deref().filter(|_| req.format.is_macos());
        let bytes = match req.format {
            Format::Pkg | Format::Component => {
                let options = pkg_options(if req.format == Format::Pkg {
                    PkgFormat::Product
                } else {
                    PkgFormat::Component
                });
                let builder = PkgBuilder::new(template, root)?.with_cache(self.cache.clone());
                match signer {
                    Some(id) => builder.build_signed_pkg(&files, &options, id)?,
                    None => builder.build_pkg(&files, &options)?,
                }
            }
            Format::Bundle => fleet_package::build_bundle_cached(
                &template,
                &root,
                req.node_name.as_deref().unwrap_or("node"),
                &files,
                &self.cache,
            )?,
        };
        Ok(BuiltPackage {
            file_name,
            bytes,
            node_name: req.node_name.clone().unwrap_or_default(),
            package_id: sealed.header.package_id_hex(),
            not_after: opts.not_after,
            format: req.format,
            foreign_binaries,
            ips: req.ips.clone(),
            node_user: req.node_credential.as_ref().map(|c| c.user.clone()),
            enrollment: record,
            signed_by: signer.map(SigningIdentity::subject),
        })
    }
}

fn template_fits(t: &Template, target: Target) -> bool {
    let want = match target {
        Target::MacOs => fleet_package::BinaryFormat::MachO,
        Target::LinuxX86_64 => fleet_package::BinaryFormat::Elf,
    };
    fleet_package::BinaryFormat::detect(t.fleet_server()) == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_parses() {
        assert_eq!(parse_expiry("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_expiry("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_expiry("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_expiry("3").unwrap(), Duration::from_secs(3 * 86_400));
        assert!(parse_expiry("7w").is_err());
        assert!(parse_expiry("soon").is_err());
    }

    #[test]
    fn the_redis_ca_travels_with_the_node_and_is_public() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut p = Config::default();
        p.cluster.redis_tls_ca = Some(ca);
        p.cluster.redis_sentinel_password_file = Some("/etc/sentinel-pw".into());
        p.cluster.redis_sentinel_password = Some(crate::config::Secret::new("spw"));
        let mut n = node_config(&p, NodeName::new("server-03").ok().as_ref(), Format::Bundle);
        assert_eq!(n.cluster.redis_sentinel_password_file, None);
        let files = node_files(&p, &mut n, Format::Bundle).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].name.as_str(), files[0].mode),
            ("redis-ca.pem", 0o644)
        );
        assert!(PUBLIC_NODE_FILES.contains(&files[0].name.as_str()));
        assert_eq!(
            n.cluster.redis_tls_ca.as_deref(),
            Some(Path::new("/etc/fleet-server/redis-ca.pem"))
        );
    }

    #[test]
    fn node_config_drops_primary_only_settings() {
        let mut p = Config::default();
        p.cluster.redis_password_file = Some("/etc/pw".into());
        p.cluster.redis_password = Some(crate::config::Secret::new("pw"));
        p.package.template_dir = Some("/tpl".into());
        p.server.public_url = Some("https://primary:8768".into());
        let n = node_config(&p, NodeName::new("server-03").ok().as_ref(), Format::Pkg);
        assert_eq!(n.cluster.node_name.as_deref(), Some("server-03"));
        assert_eq!(n.cluster.redis_password_file, None);
        assert_eq!(
            n.cluster.redis_password.as_ref().map(|s| s.expose()),
            Some("pw")
        );
        // Not the primary's template: the one this package installs on the node.
        assert_eq!(
            n.package.template_dir.as_deref(),
            Some(Path::new("/Library/FleetServer/node-template"))
        );
        assert_eq!(n.server.public_url, None);
        assert_eq!(
            n.server.state_dir,
            PathBuf::from("/Library/FleetServer/state")
        );
        // The node's file must load as a valid configuration.
        let yaml = serde_yaml::to_string(&n).unwrap();
        let back = Config::parse(&yaml, Path::new("node.yaml")).unwrap();
        back.validate(Path::new("node.yaml")).unwrap();
    }
}
