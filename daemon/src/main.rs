//! The `fleet-server` binary: parses the command line and hands it to `fleet_server::cli`, which
//! does the work; here only the process-wide setup and the exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // rustls needs one process-wide crypto provider (for `rediss://`); a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = fleet_server::cli::Cli::parse();
    match fleet_server::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("❌ error: {e:#}");
            ExitCode::from(1)
        }
    }
}
