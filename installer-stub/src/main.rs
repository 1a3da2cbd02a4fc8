//! The installer stub: the pkg's `preinstall` and the Linux bundle's checker; argument parsing and exit codes only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_installer_stub::ethernet::{self, NetworkInventory, SysfsInventory, SystemIpv4};
use fleet_installer_stub::stub::{self, Command, ExitStatus};

fn main() -> ExitCode {
    let cmd = match stub::parse_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-installer-stub: {e}\n\n{}", stub::USAGE);
            return ExitCode::from(ExitStatus::Usage.code());
        }
    };
    let args = match cmd {
        Command::Help => {
            print!("{}", stub::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("fleet-installer-stub {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(a) => a,
    };
    // Installer's working directory is not documented: files shipped with the stub are
    // found from its own path.
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let is_root = nix::unistd::geteuid().is_root();
    let inventory: Box<dyn NetworkInventory> = match &args.sysfs_root {
        Some(root) => Box::new(SysfsInventory::new(root, SystemIpv4)),
        None => ethernet::system_inventory(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match stub::run(&args, &exe_dir, now, is_root, inventory.as_ref(), &mut out) {
        Ok(_) => {
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = out.flush();
            eprintln!("{e}");
            ExitCode::from(e.status.code())
        }
    }
}
