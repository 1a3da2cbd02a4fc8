//! Integration tests of fleet-package: packages read back by readers that are
//! not ours (bsdtar, 7z, GNU cpio, apple-flat-package, apple-bom, kpea),
//! determinism, an emulated macOS install, and bad input.

mod common;

mod bad_input;
mod bom;
mod bundle;
mod determinism;
mod emulated_install;
mod files;
mod readers;
mod signing;
mod upgrade;
