//! The installer stub's library: the sealed node configuration, the wired-Ethernet check, and the stub's steps.
//!
//! The builder (in the daemon crate) seals with [`sealed::seal`]; the stub binary
//! (`src/main.rs`, shipped as the pkg's `preinstall` and in the Linux bundle) runs
//! [`stub::run`]. The exit codes are [`stub::ExitStatus`]; README.md has the table.
//!
//! Invariant: no async runtime and no network access; the only I/O is reading the
//! package's files and sysfs, and writing the configuration under the target root.

pub mod ethernet;
pub mod install;
pub mod layout;
pub mod mac_ethernet;
pub mod names;
pub mod sealed;
pub mod stub;
pub mod timefmt;
pub mod upgrade;
pub mod version_slot;

pub use ethernet::{EthernetPolicy, Interface, InterfaceKind, NetworkInventory, Verdict};
pub use layout::TargetLayout;
pub use sealed::{
    FileKey, Header, KEY_FILE_NAME, KeyMode, KeySource, SEALED_FILE_NAME, SealError, SealOptions,
    SealedBlob, SealedPayload, open, seal,
};
pub use stub::ExitStatus;
