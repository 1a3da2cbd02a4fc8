//! The stub's run: arguments, the four steps in order, and the exit-code table.
//!
//! Order matters: every check (header, Ethernet, passphrase file, key, authentication,
//! expiry) happens before the first write, and the write is the last step, so a failed
//! run leaves the target root as it found it.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ethernet::{self, EthernetError, NetworkInventory, Verdict};
use crate::install::{self, WriteError};
use crate::sealed::{self, FileKey, KeyMode, KeySource, SealError};
use crate::timefmt::format_utc;

/// The stub's exit codes (Installer shows a non-zero one as a failed install; the
/// message is in `/var/log/install.log`).
///
/// | code | meaning |
/// |---|---|
/// | 0 | installed (or `--check-only` passed) |
/// | 1 | internal error (no randomness, key derivation refused) |
/// | 2 | usage: bad arguments, target root not a directory |
/// | 10 | no Ethernet adapter |
/// | 11 | no active Ethernet connection |
/// | 12 | the network interfaces could not be listed |
/// | 20 | sealed configuration (or its key file) missing, unreadable or over its size cap |
/// | 21 | wrong key or passphrase, or the package was tampered with / corrupted |
/// | 22 | the package expired |
/// | 23 | unsupported sealed format version |
/// | 24 | passphrase file missing, empty, over its size cap, or not root-only |
/// | 30 | cannot write the configuration |
/// | 50 | upgrade package: this machine is not a node (no configuration or no node id) |
/// | 51 | upgrade package: the installed daemon is this version or newer |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Installed.
    Ok = 0,
    /// Internal error.
    Internal = 1,
    /// Bad arguments.
    Usage = 2,
    /// No Ethernet adapter.
    NoEthernetAdapter = 10,
    /// No active Ethernet connection.
    NoActiveEthernet = 11,
    /// Interfaces could not be listed.
    EthernetCheckFailed = 12,
    /// Sealed configuration or key file missing.
    SealedMissing = 20,
    /// Wrong key or tampered.
    WrongKeyOrTampered = 21,
    /// Expired.
    Expired = 22,
    /// Unsupported format version.
    UnsupportedVersion = 23,
    /// Passphrase file problem.
    Passphrase = 24,
    /// Cannot write.
    CannotWrite = 30,
    /// Upgrade package on a machine that is not a node.
    NotANode = 50,
    /// Upgrade package not newer than the installed daemon.
    NotNewer = 51,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// How the stub was asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StubArgs {
    /// Everything is written under this directory (`$3`).
    pub target_root: PathBuf,
    /// The sealed blob; default: [`sealed::SEALED_FILE_NAME`] beside the stub.
    pub sealed: Option<PathBuf>,
    /// The key file; default: [`sealed::KEY_FILE_NAME`] beside the blob.
    pub key: Option<PathBuf>,
    /// The passphrase file; default: the layout's documented path under the target root.
    pub passphrase_file: Option<PathBuf>,
    /// Sysfs root for the Linux Ethernet check (tests point it at a fixture tree).
    pub sysfs_root: Option<PathBuf>,
    /// Check and unseal, write nothing.
    pub check_only: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Install (or check).
    Run(StubArgs),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// The usage text.
pub const USAGE: &str = "\
Usage: fleet-installer-stub PACKAGE_PATH INSTALL_LOCATION TARGET_VOLUME SYSTEM_ROOT
       fleet-installer-stub --target-root DIR [OPTIONS]

Checks for an active wired Ethernet connection, unseals this package's node
configuration and writes it under the target volume. Run by Installer as the
package's preinstall (with $1..$4), or by the Linux bundle's provision.sh.
In an upgrade package (fleet-upgrade beside this program, no sealed
configuration) it checks that the target is a node whose daemon is older, and
writes nothing.

Options:
  --target-root DIR       install under DIR instead of TARGET_VOLUME
  --sealed FILE           sealed configuration (default: fleet-config.sealed beside this program)
  --key FILE              key file (default: fleet-config.key beside the sealed configuration)
  --passphrase-file FILE  install passphrase (default: the layout's install.passphrase under the target)
  --check-only            run every check, write nothing
  -h, --help              this text
  -V, --version           the version
";

/// Parses the arguments (without the program name). No clap: the stub stays small.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut a = StubArgs::default();
    let mut target_root = None;
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy().into_owned();
        if !s.starts_with("--") || s == "--" {
            if s == "-h" {
                return Ok(Command::Help);
            }
            if s == "-V" {
                return Ok(Command::Version);
            }
            if s == "--" {
                positional.extend(it.by_ref());
                break;
            }
            positional.push(arg);
            continue;
        }
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(OsString::from(v))),
            None => (s.clone(), None),
        };
        let mut value = |name: &str| -> Result<PathBuf, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            "--check-only" => a.check_only = true,
            "--target-root" => target_root = Some(value("--target-root")?),
            "--sealed" => a.sealed = Some(value("--sealed")?),
            "--key" => a.key = Some(value("--key")?),
            "--passphrase-file" => a.passphrase_file = Some(value("--passphrase-file")?),
            "--sysfs-root" => a.sysfs_root = Some(value("--sysfs-root")?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    a.target_root = match (target_root, positional.len()) {
        (Some(_), n) if n > 0 => {
            return Err("give either Installer's four arguments or --target-root, not both".into());
        }
        (Some(t), _) => t,
        // Installer passes exactly four; $3 is the target volume.
        (None, 4) => PathBuf::from(&positional[2]),
        (None, 0) => return Err("no target: give --target-root DIR".into()),
        (None, n) => return Err(format!("expected 4 arguments from Installer, got {n}")),
    };
    if a.target_root.as_os_str().is_empty() {
        return Err("the target root is empty".into());
    }
    Ok(Command::Run(a))
}

/// A failed run: its exit status and the message for the user.
#[derive(Debug)]
pub struct StubError {
    /// Exit status.
    pub status: ExitStatus,
    /// What to print on stderr.
    pub message: String,
}

impl fmt::Display for StubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StubError {}

impl StubError {
    fn new(status: ExitStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

const REBUILD: &str = "Build a new package from the primary server's Settings page (Cluster Node Installer) and try again.";

impl From<EthernetError> for StubError {
    fn from(e: EthernetError) -> Self {
        let status = match e {
            EthernetError::NoAdapter { .. } => ExitStatus::NoEthernetAdapter,
            EthernetError::NoActive { .. } => ExitStatus::NoActiveEthernet,
            EthernetError::Inventory(_) => ExitStatus::EthernetCheckFailed,
        };
        Self::new(status, e.to_string())
    }
}

fn seal_error(e: SealError) -> StubError {
    use ExitStatus as X;
    let (status, text) = match &e {
        SealError::Missing(p) => (
            X::SealedMissing,
            format!(
                "❌ ERROR: Sealed configuration not found: {}\n\nThe package is incomplete. {REBUILD}",
                p.display()
            ),
        ),
        SealError::Io { .. } => (
            X::SealedMissing,
            format!("❌ ERROR: Cannot read the sealed configuration: {e}"),
        ),
        SealError::UnsupportedVersion(v) => (
            X::UnsupportedVersion,
            format!(
                "❌ ERROR: This package's sealed configuration has format version {v}, which this installer cannot read.\n\n{REBUILD}"
            ),
        ),
        SealError::Expired { not_after } => (
            X::Expired,
            format!(
                "❌ ERROR: This installer package expired on {}.\n\n{REBUILD}",
                format_utc(*not_after)
            ),
        ),
        SealError::EmptyPassphrase => (
            X::Passphrase,
            "❌ ERROR: The install passphrase file is empty.".to_string(),
        ),
        SealError::Kdf(_) | SealError::Random(_) | SealError::InvalidOptions(_) => {
            (X::Internal, format!("❌ ERROR: {e}"))
        }
        SealError::WrongKey => (
            X::WrongKeyOrTampered,
            "❌ ERROR: The sealed configuration cannot be opened: wrong key or passphrase.\n\nCheck the install passphrase (or that the key file came with this package) and try again.".to_string(),
        ),
        SealError::Tampered
        | SealError::BadMagic
        | SealError::Truncated { .. }
        | SealError::Malformed(_)
        | SealError::KeyModeMismatch { .. }
        | SealError::BadKeyFile(_)
        | SealError::InvalidPayload(_) => (
            X::WrongKeyOrTampered,
            format!(
                "❌ ERROR: The sealed configuration cannot be opened: {e}.\n\nThe package was modified or damaged. {REBUILD}"
            ),
        ),
    };
    StubError::new(status, text)
}

/// What a successful run did (the summary's content; nothing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Node name from the package.
    pub node_name: String,
    /// Full package id (hex).
    pub package_id: String,
    /// Expiry, unix seconds.
    pub not_after: u64,
    /// The Ethernet verdict.
    pub ethernet: Verdict,
    /// The policy it was checked under.
    pub policy: ethernet::EthernetPolicy,
    /// What was written; `None` with `--check-only`.
    pub written: Option<install::Written>,
}

/// Runs the four steps. `exe_dir` is where the stub binary lives (default place of the
/// blob); `now` is unix seconds; `is_root` decides whether the passphrase file must be
/// owned by root. The summary goes to `out`.
pub fn run(
    args: &StubArgs,
    exe_dir: &Path,
    now: u64,
    is_root: bool,
    inventory: &dyn NetworkInventory,
    out: &mut dyn Write,
) -> Result<Summary, StubError> {
    if !args.target_root.is_dir() {
        return Err(StubError::new(
            ExitStatus::Usage,
            format!(
                "❌ ERROR: The target {} is not a directory.",
                args.target_root.display()
            ),
        ));
    }
    // An upgrade package carries a manifest instead of a sealed configuration.
    let manifest_path = exe_dir.join(crate::upgrade::MANIFEST_NAME);
    if args.sealed.is_none() && manifest_path.exists() {
        return run_upgrade_check(args, &manifest_path, out);
    }
    // 0. The header (no key needed) says which policy, key mode and layout apply.
    let sealed_path = args
        .sealed
        .clone()
        .unwrap_or_else(|| exe_dir.join(sealed::SEALED_FILE_NAME));
    let blob = sealed::read_file(&sealed_path, sealed::MAX_SEALED_LEN).map_err(seal_error)?;
    let header = sealed::Header::parse(&blob).map_err(seal_error)?;

    // 1. Ethernet. The policy is read before authentication, but a forged policy
    // gets no further than the tag check below, before anything is written.
    let verdict = ethernet::check(header.ethernet, inventory, ethernet::THIS_MACHINE)?;

    // 2. Unseal.
    let passphrase_path = args
        .passphrase_file
        .clone()
        .unwrap_or_else(|| header.layout.passphrase_file(&args.target_root));
    let (header, payload) = match header.key_mode {
        KeyMode::KeyFile => {
            let key_path = args.key.clone().unwrap_or_else(|| {
                sealed_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(sealed::KEY_FILE_NAME)
            });
            let bytes = zeroize::Zeroizing::new(sealed::read_file(&key_path, sealed::MAX_KEY_FILE_LEN).map_err(|e| {
                match e {
                    SealError::Missing(p) => StubError::new(
                        ExitStatus::SealedMissing,
                        format!(
                            "❌ ERROR: Key file not found: {}\n\nThe package is incomplete. {REBUILD}",
                            p.display()
                        ),
                    ),
                    other => seal_error(other),
                }
            })?);
            let key = FileKey::from_bytes(&bytes).map_err(seal_error)?;
            sealed::open(&blob, KeySource::KeyFile(&key), now).map_err(seal_error)?
        }
        KeyMode::Passphrase => {
            let content = read_passphrase_file(&passphrase_path, is_root)?;
            let p = sealed::passphrase_from_file_content(&content)
                .map_err(|_| passphrase_error(&passphrase_path, "the file is empty".to_string()))?;
            sealed::open(&blob, KeySource::Passphrase(p), now).map_err(seal_error)?
        }
    };

    // 3. Write (last: everything above can fail without leaving a trace).
    let written = if args.check_only {
        None
    } else {
        let w = install::write_config(
            header.layout,
            &args.target_root,
            &payload.config_yaml,
            &payload.files,
        )
        .map_err(write_error)?;
        Some(w)
    };

    // 4. Summary.
    let summary = Summary {
        node_name: payload.node_name.clone(),
        package_id: header.package_id_hex(),
        not_after: header.not_after,
        ethernet: verdict,
        policy: header.ethernet,
        written,
    };
    // Output failures (a closed stdout) must not fail an install that succeeded.
    let _ = write_summary(out, &summary, &header.package_id_short());

    // The passphrase has served its purpose once the configuration is in place; kept
    // after a failure or a check so the admin can retry without recreating it.
    if header.key_mode == KeyMode::Passphrase
        && summary.written.is_some()
        && let Err(e) = std::fs::remove_file(&passphrase_path)
    {
        let _ = writeln!(
            out,
            "⚠️  Could not remove the install passphrase file {}: {e}. Remove it by hand.",
            passphrase_path.display()
        );
    }
    Ok(summary)
}

/// The upgrade package's check: a node is installed under the target root and its daemon is
/// older than the package's. No Ethernet check (the machine is a node already) and no write.
fn run_upgrade_check(
    args: &StubArgs,
    manifest_path: &Path,
    out: &mut dyn Write,
) -> Result<Summary, StubError> {
    use crate::upgrade::{self, Manifest, Refusal};
    let text = std::fs::read_to_string(manifest_path).map_err(|e| {
        StubError::new(
            ExitStatus::SealedMissing,
            format!(
                "❌ ERROR: Cannot read the upgrade manifest {}: {e}",
                manifest_path.display()
            ),
        )
    })?;
    let manifest = Manifest::parse(&text).map_err(|why| {
        StubError::new(
            ExitStatus::WrongKeyOrTampered,
            format!(
                "❌ ERROR: The upgrade manifest {} is damaged: {why}.",
                manifest_path.display()
            ),
        )
    })?;
    let installed = upgrade::check(&manifest, &args.target_root).map_err(|r| match r {
        Refusal::NotANode { missing } => StubError::new(
            ExitStatus::NotANode,
            format!(
                "❌ ERROR: This is an upgrade package, and {} is not a Fleet Server cluster node: {} is missing.\n\nNothing was installed. A new node needs a node package (Settings page, Cluster Node Installer); an upgrade only replaces the binaries of an installed node.",
                args.target_root.display(),
                missing.display()
            ),
        ),
        Refusal::NotNewer { installed, offered } => StubError::new(
            ExitStatus::NotNewer,
            format!(
                "❌ ERROR: This node already runs fleet-server {installed}; this upgrade package holds {offered}. An upgrade must be newer than what is installed.\n\nNothing was installed."
            ),
        ),
    })?;
    // Output failures (a closed stdout) must not fail a check that passed.
    let _ = writeln!(
        out,
        "✅ Upgrade check: node {} ({}), fleet-server {} → {}; configuration, state and node id are kept",
        installed.node_id,
        installed.config_file.display(),
        installed.version.as_deref().unwrap_or("(version unknown)"),
        manifest.version
    );
    Ok(Summary {
        node_name: String::new(),
        package_id: String::new(),
        not_after: 0,
        ethernet: Verdict::Skipped,
        policy: ethernet::EthernetPolicy::Skip,
        written: None,
    })
}

fn write_summary(out: &mut dyn Write, s: &Summary, short_id: &str) -> std::io::Result<()> {
    match &s.ethernet {
        Verdict::Accepted {
            interface,
            address,
            is_virtual,
        } => writeln!(
            out,
            "✅ Ethernet connection: {interface} ({address}{}), policy {}",
            if *is_virtual { ", virtual" } else { "" },
            s.policy
        )?,
        Verdict::Skipped => writeln!(out, "⚠️  Ethernet check skipped (package policy: skip)")?,
    }
    writeln!(
        out,
        "✅ Node configuration unsealed: node {}, package {short_id}, expires {}",
        if s.node_name.is_empty() {
            "(named after its hostname)"
        } else {
            &s.node_name
        },
        format_utc(s.not_after)
    )?;
    match &s.written {
        Some(w) => {
            writeln!(out, "✅ Configuration written: {}", w.config_file.display())?;
            writeln!(
                out,
                "   State directory: {}{}",
                w.state_dir.display(),
                if w.node_id_kept {
                    " (existing node identity kept)"
                } else {
                    ""
                }
            )?;
        }
        None => writeln!(out, "✅ Checks passed; nothing written (--check-only)")?,
    }
    Ok(())
}

fn write_error(e: WriteError) -> StubError {
    StubError::new(
        ExitStatus::CannotWrite,
        format!("❌ ERROR: Cannot write the node configuration: {e}"),
    )
}

fn passphrase_error(path: &Path, why: String) -> StubError {
    StubError::new(
        ExitStatus::Passphrase,
        format!(
            "❌ ERROR: Install passphrase file {}: {why}\n\nThis package is sealed with an install passphrase. Put it in {} (owned by root, mode 600) and try again.",
            path.display(),
            path.display()
        ),
    )
}

/// Reads the passphrase file after checking that only root can read it: refuses a
/// symlink, a non-file, group or world permissions, and (when running as root) another
/// owner, since anyone else could have planted or read it.
fn read_passphrase_file(
    path: &Path,
    is_root: bool,
) -> Result<zeroize::Zeroizing<Vec<u8>>, StubError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        passphrase_error(
            path,
            if e.kind() == std::io::ErrorKind::NotFound {
                "not found".to_string()
            } else {
                e.to_string()
            },
        )
    })?;
    if !meta.file_type().is_file() {
        return Err(passphrase_error(path, "not a regular file".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(passphrase_error(
            path,
            format!(
                "readable by group or others (mode {:o}); run chmod 600",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    if is_root && meta.uid() != 0 {
        return Err(passphrase_error(
            path,
            format!("owned by uid {}, not root", meta.uid()),
        ));
    }
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a symlink swapped in after the check above is refused, not followed.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| sealed::read_capped(f, sealed::MAX_KEY_FILE_LEN))
        .map(zeroize::Zeroizing::new)
        .map_err(|e| passphrase_error(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Command, String> {
        parse_args(a.iter().map(OsString::from))
    }

    #[test]
    fn installer_arguments() {
        let Command::Run(a) = parse(&["/tmp/p.pkg", "/", "/Volumes/T", "/"]).unwrap() else {
            panic!()
        };
        assert_eq!(a.target_root, Path::new("/Volumes/T"));
        assert!(!a.check_only);
    }

    #[test]
    fn flags() {
        let Command::Run(a) = parse(&[
            "--target-root=/r",
            "--sealed",
            "/s",
            "--key",
            "/k",
            "--passphrase-file",
            "/p",
            "--sysfs-root",
            "/sys2",
            "--check-only",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.target_root, Path::new("/r"));
        assert_eq!(a.sealed.as_deref(), Some(Path::new("/s")));
        assert_eq!(a.key.as_deref(), Some(Path::new("/k")));
        assert_eq!(a.passphrase_file.as_deref(), Some(Path::new("/p")));
        assert_eq!(a.sysfs_root.as_deref(), Some(Path::new("/sys2")));
        assert!(a.check_only);
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["--bogus"],
            &["--sealed"],
            &["a", "b"],
            &["--target-root", "/r", "a", "b", "c", "d"],
            &["--target-root="],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
