//! The sealed node configuration and the installer stub's checks (filled in by the installer-stub work).
