//! The node template directory: the target binaries the packages ship, and
//! the check that their format fits the target.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// What a package installs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// macOS (universal Mach-O binaries), a `.pkg`.
    MacOs,
    /// Linux x86-64 (ELF binaries), a provision bundle.
    LinuxX86_64,
}

impl Target {
    /// The template's subdirectory for this target.
    pub fn dir_name(self) -> &'static str {
        match self {
            Target::MacOs => "macos",
            Target::LinuxX86_64 => "linux-x86_64",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::MacOs => "macOS",
            Target::LinuxX86_64 => "Linux",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Target::MacOs => "a Mach-O binary",
            Target::LinuxX86_64 => "an ELF binary",
        }
    }

    fn fits(self, format: BinaryFormat) -> bool {
        match self {
            Target::MacOs => matches!(format, BinaryFormat::MachO | BinaryFormat::MachOFat),
            Target::LinuxX86_64 => format == BinaryFormat::Elf,
        }
    }
}

/// A binary's format, from its magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFormat {
    /// A thin Mach-O (32 or 64 bit, either byte order).
    MachO,
    /// A universal (fat) Mach-O.
    MachOFat,
    /// ELF.
    Elf,
    /// A `#!` script.
    Script,
    /// Anything else.
    Unknown,
}

impl BinaryFormat {
    /// Reads the magic number at the start of `bytes`.
    pub fn detect(bytes: &[u8]) -> Self {
        match bytes {
            [0x7f, b'E', b'L', b'F', ..] => Self::Elf,
            [0xfe, 0xed, 0xfa, 0xce | 0xcf, ..] | [0xce | 0xcf, 0xfa, 0xed, 0xfe, ..] => {
                Self::MachO
            }
            [0xca, 0xfe, 0xba, 0xbe | 0xbf, ..] | [0xbe | 0xbf, 0xba, 0xfe, 0xca, ..] => {
                Self::MachOFat
            }
            [b'#', b'!', ..] => Self::Script,
            _ => Self::Unknown,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::MachO => "a Mach-O binary",
            Self::MachOFat => "a universal Mach-O binary",
            Self::Elf => "an ELF binary",
            Self::Script => "a script",
            Self::Unknown => "not an executable this builder knows",
        }
    }
}

/// The two binaries for one target, read into memory, with the digest the
/// payload cache is keyed by.
#[derive(Clone)]
pub struct Template {
    target: Target,
    fleet_server: Vec<u8>,
    installer_stub: Vec<u8>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("target", &self.target)
            .field("fleet_server", &self.fleet_server.len())
            .field("installer_stub", &self.installer_stub.len())
            .finish()
    }
}

impl Template {
    /// Reads `<template_dir>/<macos|linux-x86_64>/{fleet-server,fleet-installer-stub}`
    /// and checks their format unless `allow_foreign_binaries`.
    pub fn load(template_dir: &Path, target: Target, allow_foreign_binaries: bool) -> Result<Self> {
        if !template_dir.is_dir() {
            return Err(Error::TemplateMissing {
                path: template_dir.to_owned(),
            });
        }
        let dir = template_dir.join(target.dir_name());
        let read = |name: &str| -> Result<(PathBuf, Vec<u8>)> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok((path, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(Error::TemplateMissing { path })
                }
                Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
            }
        };
        let (server_path, fleet_server) = read("fleet-server")?;
        let (stub_path, installer_stub) = read("fleet-installer-stub")?;
        if !allow_foreign_binaries {
            check_format(&server_path, &fleet_server, target)?;
            check_format(&stub_path, &installer_stub, target)?;
        }
        Ok(Self::new(target, fleet_server, installer_stub))
    }

    /// What [`Template::load`] would say, without reading the binaries: both files are there
    /// and start as the target's binaries do (unless `allow_foreign_binaries`). Cheap enough
    /// for every Settings page.
    pub fn probe(template_dir: &Path, target: Target, allow_foreign_binaries: bool) -> Result<()> {
        use std::io::Read;
        if !template_dir.is_dir() {
            return Err(Error::TemplateMissing {
                path: template_dir.to_owned(),
            });
        }
        for name in ["fleet-server", "fleet-installer-stub"] {
            let path = template_dir.join(target.dir_name()).join(name);
            let mut head = [0u8; 8];
            let n = match std::fs::File::open(&path) {
                Ok(mut f) => f
                    .read(&mut head)
                    .map_err(Error::io(format!("reading {}", path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::TemplateMissing { path });
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
            };
            if !allow_foreign_binaries {
                check_format(&path, &head[..n], target)?;
            }
        }
        Ok(())
    }

    /// A template from bytes in memory, with the same format check as [`Template::load`].
    pub fn from_bytes(
        target: Target,
        fleet_server: Vec<u8>,
        installer_stub: Vec<u8>,
        allow_foreign_binaries: bool,
    ) -> Result<Self> {
        if !allow_foreign_binaries {
            check_format(Path::new("fleet-server"), &fleet_server, target)?;
            check_format(Path::new("fleet-installer-stub"), &installer_stub, target)?;
        }
        Ok(Self::new(target, fleet_server, installer_stub))
    }

    fn new(target: Target, fleet_server: Vec<u8>, installer_stub: Vec<u8>) -> Self {
        let mut h = Sha256::new();
        h.update((fleet_server.len() as u64).to_be_bytes());
        h.update(&fleet_server);
        h.update(&installer_stub);
        let digest = h.finalize().into();
        Self {
            target,
            fleet_server,
            installer_stub,
            digest,
        }
    }

    /// The target this template is for.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The daemon binary.
    pub fn fleet_server(&self) -> &[u8] {
        &self.fleet_server
    }

    /// The installer stub binary (the pkg's `preinstall`).
    pub fn installer_stub(&self) -> &[u8] {
        &self.installer_stub
    }

    /// SHA-256 of both binaries (the cache key's template part).
    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

fn check_format(path: &Path, bytes: &[u8], target: Target) -> Result<()> {
    let format = BinaryFormat::detect(bytes);
    if target.fits(format) {
        return Ok(());
    }
    Err(Error::ForeignBinary {
        path: path.to_owned(),
        found: format.describe().to_owned(),
        expected: target.expected(),
        target: target.name(),
    })
}
