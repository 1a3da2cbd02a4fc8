//! This build's version, read at run time from a marked slot in the binary
//! (`fleet_installer_stub::version_slot`), so the package builder and an upgrade's check can read
//! a daemon's version from its bytes, and a copy whose slot was patched reports that version.

use std::sync::OnceLock;

use fleet_installer_stub::version_slot::{self, SLOT_LEN};

/// The slot. `#[used]` keeps it in the binary; it is read through `black_box`, so the compiler
/// cannot fold the read into the constant it was built from.
#[used]
static VERSION_SLOT: [u8; SLOT_LEN] = version_slot::slot(env!("CARGO_PKG_VERSION"));

/// The version this binary reports (its node record, health, status, metrics, `--version`).
pub fn version() -> &'static str {
    static CACHED: OnceLock<String> = OnceLock::new();
    CACHED.get_or_init(|| {
        let slot: &[u8; SLOT_LEN] = std::hint::black_box(&VERSION_SLOT);
        let copy = *std::hint::black_box(slot);
        version_slot::parse_slot(&copy)
            .unwrap_or(env!("CARGO_PKG_VERSION"))
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slot_holds_the_crate_version() {
        assert_eq!(super::version(), env!("CARGO_PKG_VERSION"));
    }
}
