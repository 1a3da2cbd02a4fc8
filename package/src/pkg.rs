//! The macOS package: Payload and Bom from the template (cached), Scripts
//! and PackageInfo per node; by default inside a product archive (a
//! Distribution beside the component's directory), optionally signed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::embedded::{DAEMON_PATH, NEWSYSLOG_PATH, PLIST_PATH, UNINSTALL_PATH};
use crate::payload::{CachedTail, TreeEntry, tree, write_cpio_gz, write_cpio_gz_with_tail};
use crate::xar::{Entry, Member, TocSigner, write_xar};
use crate::{Error, KEY_NAME, PkgRoot, Result, SEALED_NAME, Target, Template};

/// What differs from one node to the next: the sealed configuration and,
/// in key-file mode, its key. Both go into `Scripts`, beside the stub.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NodeFiles {
    /// `fleet-config.sealed`.
    pub sealed: Vec<u8>,
    /// `fleet-config.key`, absent in passphrase mode.
    pub key: Option<Vec<u8>>,
}

impl std::fmt::Debug for NodeFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeFiles")
            .field("sealed", &format_args!("{} bytes", self.sealed.len()))
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What kind of `.pkg` to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PkgFormat {
    /// A product (distribution) archive, as productbuild writes it: a
    /// `Distribution` and the component under `fleet-server.pkg/`. What
    /// Installer on Apple silicon runs natively and what MDMs deploy.
    #[default]
    Product,
    /// The bare component package (`Bom`, `Payload`, `Scripts`,
    /// `PackageInfo`), as pkgbuild writes it.
    Component,
}

impl PkgFormat {
    /// `pkg` or `component`, as `--format` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PkgFormat::Product => "pkg",
            PkgFormat::Component => "component",
        }
    }
}

/// Per-build choices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkgOptions {
    /// `version` in PackageInfo (the package receipt's version).
    pub version: String,
    /// Product archive (default) or bare component.
    pub format: PkgFormat,
}

impl Default for PkgOptions {
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            format: PkgFormat::Product,
        }
    }
}

/// The template-only parts, built once per template.
#[derive(Debug)]
pub(crate) struct Artifacts {
    payload: Member,
    /// The stub, compressed, as the end of `Scripts`.
    scripts_tail: CachedTail,
    bom: Member,
    number_of_files: u64,
    install_kbytes: u64,
}

/// Payload, Bom and the compressed stub by digest of their inputs (the
/// template's binaries and the pkgroot files), so a build with a known template does only the per-node work.
/// Share one (`Arc`) between builders; it keeps the last few templates.
#[derive(Debug, Default)]
pub struct ArtifactCache {
    entries: Mutex<HashMap<[u8; 32], Arc<Artifacts>>>,
    /// Linux bundles: the two binaries' tar data, deflated, by template digest.
    bundles: Mutex<HashMap<[u8; 32], Arc<crate::bundle::BundleRuns>>>,
}

impl ArtifactCache {
    const CAPACITY: usize = 4;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many templates are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
        self.bundle_lock().clear();
    }

    /// How many bundle templates are cached.
    pub fn bundle_len(&self) -> usize {
        self.bundle_lock().len()
    }

    fn bundle_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<crate::bundle::BundleRuns>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.bundles.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn bundle_runs(
        &self,
        key: [u8; 32],
        build: impl FnOnce() -> Result<crate::bundle::BundleRuns>,
    ) -> Result<Arc<crate::bundle::BundleRuns>> {
        if let Some(r) = self.bundle_lock().get(&key) {
            return Ok(r.clone());
        }
        let built = Arc::new(build()?);
        let mut map = self.bundle_lock();
        if map.len() >= Self::CAPACITY && !map.contains_key(&key) {
            map.clear();
        }
        Ok(map.entry(key).or_insert(built).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Artifacts>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_build(
        &self,
        key: [u8; 32],
        build: impl FnOnce() -> Result<Artifacts>,
    ) -> Result<Arc<Artifacts>> {
        if let Some(a) = self.lock().get(&key) {
            return Ok(a.clone());
        }
        // Built outside the lock: two racing cold builds both work, one wins.
        let built = Arc::new(build()?);
        let mut map = self.lock();
        if map.len() >= Self::CAPACITY && !map.contains_key(&key) {
            map.clear();
        }
        Ok(map.entry(key).or_insert(built).clone())
    }
}

/// Builds node packages (`.pkg`) from one macOS template.
#[derive(Debug)]
pub struct PkgBuilder {
    template: Template,
    root: PkgRoot,
    cache: Arc<ArtifactCache>,
}

impl PkgBuilder {
    /// A builder for `template` (which must be a [`Target::MacOs`] template)
    /// and the fixed files `root`, whose LaunchDaemon plist is checked here.
    pub fn new(template: Template, root: PkgRoot) -> Result<Self> {
        if template.target() != Target::MacOs {
            return Err(Error::WrongTarget {
                expected: "macOS",
                expected_dir: Target::MacOs.dir_name(),
                found_dir: template.target().dir_name(),
            });
        }
        crate::check_launchd_plist(&root.launchd_plist)?;
        Ok(Self {
            template,
            root,
            cache: Arc::default(),
        })
    }

    /// Uses a shared cache (e.g. one per daemon) instead of this builder's own.
    pub fn with_cache(mut self, cache: Arc<ArtifactCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The cache this builder uses.
    pub fn cache(&self) -> &Arc<ArtifactCache> {
        &self.cache
    }

    /// Builds Payload and Bom now if they are not cached (e.g. at startup).
    pub fn prepare(&self) -> Result<()> {
        self.artifacts().map(drop)
    }

    /// The whole `.pkg` for one node, unsigned.
    pub fn build_pkg(&self, node: &NodeFiles, options: &PkgOptions) -> Result<Vec<u8>> {
        self.build(node, options, None)
    }

    /// The whole `.pkg` for one node, signed by `identity`. The bytes are
    /// those of [`PkgBuilder::build_pkg`] but for the signature's space and
    /// the TOC entries that describe it.
    pub fn build_signed_pkg(
        &self,
        node: &NodeFiles,
        options: &PkgOptions,
        identity: &crate::SigningIdentity,
    ) -> Result<Vec<u8>> {
        self.build(node, options, Some(identity))
    }

    /// An upgrade package: the same payload (binaries, plist, newsyslog, uninstaller) and
    /// identifier, and in `Scripts` the stub, the postinstall and the upgrade `manifest`
    /// (`fleet-upgrade`) instead of a node's sealed configuration: no configuration, token or
    /// key. Signed when `identity` is given.
    pub fn build_upgrade_pkg(
        &self,
        manifest: &[u8],
        options: &PkgOptions,
        identity: Option<&crate::SigningIdentity>,
    ) -> Result<Vec<u8>> {
        let extra = [(crate::UPGRADE_MANIFEST_NAME, 0o644, manifest)];
        self.build_with(&extra, options, identity.map(|i| i as &dyn TocSigner))
    }

    fn build(
        &self,
        node: &NodeFiles,
        options: &PkgOptions,
        signer: Option<&dyn TocSigner>,
    ) -> Result<Vec<u8>> {
        let mut extra: Vec<(&str, u32, &[u8])> = vec![(SEALED_NAME, 0o600, &node.sealed)];
        if let Some(key) = &node.key {
            extra.push((KEY_NAME, 0o600, key));
        }
        self.build_with(&extra, options, signer)
    }

    fn build_with(
        &self,
        extra: &[(&str, u32, &[u8])],
        options: &PkgOptions,
        signer: Option<&dyn TocSigner>,
    ) -> Result<Vec<u8>> {
        let artifacts = self.artifacts()?;
        let scripts = Member::stored("Scripts", self.scripts(extra, &artifacts.scripts_tail)?);
        let info = crate::package_info::package_info(
            &options.version,
            artifacts.number_of_files,
            artifacts.install_kbytes,
        );
        let info = Member::zlib("PackageInfo", info.as_bytes());
        // pkgbuild's member order.
        let component = [&artifacts.bom, &artifacts.payload, &scripts, &info];
        match options.format {
            PkgFormat::Component => {
                let entries = component.map(Entry::File);
                write_xar(&entries, signer)
            }
            PkgFormat::Product => {
                let dist =
                    crate::distribution::distribution(&options.version, artifacts.install_kbytes);
                let dist = Member::zlib("Distribution", dist.as_bytes());
                let entries = [
                    Entry::File(&dist),
                    Entry::Dir(crate::distribution::COMPONENT_DIR, &component),
                ];
                write_xar(&entries, signer)
            }
        }
    }

    fn payload_files(&self) -> [(&str, u32, &[u8]); 4] {
        [
            (DAEMON_PATH, 0o755, self.template.fleet_server()),
            (UNINSTALL_PATH, 0o755, &self.root.uninstall_sh),
            (PLIST_PATH, 0o644, &self.root.launchd_plist),
            (NEWSYSLOG_PATH, 0o644, &self.root.newsyslog_conf),
        ]
    }

    fn cache_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"fleet-package payload v1\0");
        h.update(self.template.digest());
        for (path, perm, data) in self.payload_files().iter().skip(1) {
            h.update(path.as_bytes());
            h.update(perm.to_be_bytes());
            h.update((data.len() as u64).to_be_bytes());
            h.update(data);
        }
        h.finalize().into()
    }

    fn artifacts(&self) -> Result<Arc<Artifacts>> {
        self.cache.get_or_build(self.cache_key(), || {
            build_artifacts(&self.payload_files(), self.template.installer_stub())
        })
    }

    fn scripts(&self, extra: &[(&str, u32, &[u8])], tail: &CachedTail) -> Result<Vec<u8>> {
        let mut files: Vec<(&str, u32, &[u8])> = vec![
            ("preinstall", 0o755, self.template.installer_stub()),
            ("postinstall", 0o755, &self.root.postinstall),
        ];
        files.extend_from_slice(extra);
        let entries = tree(&files);
        // `preinstall` sorts last, so the cached tail (the stub) ends the archive.
        debug_assert_eq!(
            entries.last().map(|e| e.path.as_str()),
            Some("./preinstall")
        );
        write_cpio_gz_with_tail(&entries, tail).map_err(Error::io("writing Scripts"))
    }
}

fn build_artifacts(files: &[(&str, u32, &[u8])], stub: &[u8]) -> Result<Artifacts> {
    let entries = tree(files);
    let number_of_files = entries.len() as u64;
    let install_kbytes = entries
        .iter()
        .map(|e| e.data.map_or(0, |d| (d.len() as u64).div_ceil(1024)))
        .sum();
    // Two independent halves: compress on one core, stage and scan on the other.
    let (payload, bom, tail) = std::thread::scope(|s| {
        let payload = s.spawn(|| payload_member(&entries));
        let bom = crate::bom::build_bom(&entries).map(|b| Member::zlib("Bom", &b));
        let tail = CachedTail::new(stub).map_err(Error::io("compressing the installer stub"));
        let payload = payload
            .join()
            .unwrap_or_else(|_| Err(Error::io("writing Payload")(std::io::Error::other("panic"))));
        (payload, bom, tail)
    });
    Ok(Artifacts {
        payload: payload?,
        scripts_tail: tail?,
        bom: bom?,
        number_of_files,
        install_kbytes,
    })
}

fn payload_member(entries: &[TreeEntry<'_>]) -> Result<Member> {
    let gz = write_cpio_gz(entries).map_err(Error::io("writing Payload"))?;
    Ok(Member::stored("Payload", gz))
}
