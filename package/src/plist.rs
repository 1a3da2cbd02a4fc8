//! The LaunchDaemon plist: what it must say, checked with the `launchd` crate.

use launchd::{Launchd, ProcessType};

use crate::{Error, IDENTIFIER, Result};

/// The daemon as installed by the pkg.
pub(crate) const DAEMON_BIN: &str = "/Library/FleetServer/bin/fleet-server";
/// The configuration the installer stub writes.
pub(crate) const CONFIG_PATH: &str = "/Library/FleetServer/config/config.yaml";
/// The daemon's own log (`--log-file`, reopened on SIGHUP); launchd's StandardOutPath and
/// StandardErrorPath name it too, for what is printed before logging starts (a bad
/// configuration).
pub(crate) const LOG_PATH: &str = "/var/log/fleet-server.log";
/// The pid file newsyslog signals after a rotation (`--pid-file`; the newsyslog conf names it).
pub(crate) const PID_PATH: &str = "/var/run/fleet-server.pid";

/// The LaunchDaemon job the package installs.
pub fn expected_launchd_plist() -> Launchd {
    let args = [
        DAEMON_BIN,
        "serve",
        "--config",
        CONFIG_PATH,
        "--log-file",
        LOG_PATH,
        "--pid-file",
        PID_PATH,
    ];
    let job = Launchd::default()
        .with_label(IDENTIFIER)
        .with_program_arguments(args.iter().map(|s| s.to_string()).collect())
        .with_run_at_load(true)
        .with_keep_alive(true.into())
        .with_throttle_interval(10)
        .with_exit_timeout(30)
        .with_process_type(ProcessType::Standard);
    // Both setters only fail for paths that are not UTF-8.
    job.with_standard_out_path(LOG_PATH)
        .and_then(|j| j.with_standard_error_path(LOG_PATH))
        .unwrap_or_default()
}

/// Checks that `bytes` is a plist that says exactly [`expected_launchd_plist`].
pub fn check_launchd_plist(bytes: &[u8]) -> Result<()> {
    let what = "Library/LaunchDaemons/com.fleet.server.cluster.plist".to_owned();
    let parsed = Launchd::from_bytes(bytes).map_err(|e| Error::InvalidPlist {
        what: what.clone(),
        reason: format!("does not parse: {e}"),
    })?;
    let expected = expected_launchd_plist();
    if parsed != expected {
        return Err(Error::InvalidPlist {
            what,
            reason: format!("differs from the expected job: got {parsed:?}, expected {expected:?}"),
        });
    }
    Ok(())
}
