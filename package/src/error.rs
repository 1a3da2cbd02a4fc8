//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong building, writing or inspecting a package.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node name outside `[a-z0-9-]{1,63}`, or starting or ending with `-`.
    #[error(
        "invalid node name {0:?}: use 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    InvalidNodeName(String),
    /// A package or bundle file name that is unsafe or has the wrong ending.
    #[error("invalid package name {name:?}: {reason}")]
    InvalidPackageName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The node template directory or one of its files is missing.
    #[error("node template {path} not found (make node-template fills it)")]
    TemplateMissing {
        /// The missing path.
        path: PathBuf,
    },
    /// A binary in the template does not fit the package's target.
    #[error(
        "{path} is {found}, but a {target} package needs {expected}; rebuild the node template or pass --allow-foreign-binaries"
    )]
    ForeignBinary {
        /// The template file.
        path: PathBuf,
        /// What its magic says.
        found: String,
        /// What the target needs.
        expected: &'static str,
        /// The target's name.
        target: &'static str,
    },
    /// A template for the other target (a Linux template for a pkg, or the reverse).
    #[error("a {expected} package needs the {expected_dir}/ template, not {found_dir}/")]
    WrongTarget {
        /// What is being built.
        expected: &'static str,
        /// The template subdirectory it needs.
        expected_dir: &'static str,
        /// The template subdirectory given.
        found_dir: &'static str,
    },
    /// The output exists and `force` was not given.
    #[error("output {0} already exists; pass --force to replace it")]
    OutputExists(PathBuf),
    /// The LaunchDaemon plist does not say what the package needs.
    #[error("launchd plist {what}: {reason}")]
    InvalidPlist {
        /// Which plist.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A pkg that cannot be read back: truncated, corrupted, or not a pkg.
    #[error("{path}: not a valid package: {reason}")]
    Corrupt {
        /// The file inspected (or `<memory>`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A signing identity (`--sign-p12`, `--sign-password-file`) that cannot
    /// be used: the file named is missing, unsafe, undecryptable, or holds a
    /// certificate that is expired or not a Developer ID Installer one. The
    /// reason never contains the password.
    #[error("signing identity {file}: {reason}")]
    SigningIdentity {
        /// The p12 or password file at fault.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Signing failed after the identity was loaded (e.g. the timestamp server).
    #[error("signing the package: {0}")]
    Signing(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
