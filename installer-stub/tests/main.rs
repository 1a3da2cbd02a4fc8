//! Integration tests of the installer stub, compiled into one binary (one link, shared helpers).

mod common;
mod e2e;
mod format;
mod macs;
mod netns;
mod randomized;
mod sysfs;
