//! Logging through `log`: one line per record to the daemon's own log file (`serve
//! --log-file`, reopened on SIGHUP for newsyslog/logrotate) or else to stderr (systemd's
//! journal), and to syslog when configured.
//!
//! Why its own file: launchd opens `StandardOutPath` for the job and keeps that descriptor,
//! and macOS newsyslog rotates by renaming (it has no copytruncate), so a daemon writing to
//! stdout writes into the renamed file forever. The daemon opens the log itself, appending,
//! and on SIGHUP (newsyslog signals the pid file's process) opens the path anew and closes the
//! old descriptor; each line is written whole under one lock, so none is lost or split.
//! Standard output and error are pointed at the same file each time (launchd's descriptors
//! would otherwise keep the renamed file alive, and its disk space, until a restart).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The log file's mode when the daemon creates it: readable by the file's group (on macOS
/// newsyslog and postinstall make it `root:admin`, so admins can `tail -f` it).
pub const LOG_FILE_MODE: u32 = 0o640;

/// The daemon's own log file: its path, and the descriptor lines go to.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// Set once by [`init_with_file`]; [`reopen`] swaps its descriptor.
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("opening the log file {}: {e}", path.display()),
            )
        })
}

/// Points the process's stdout and stderr at `file`, closing what they held (launchd's
/// descriptors of a file that rotation renamed).
fn point_stdio_at(file: &File) -> std::io::Result<()> {
    nix::unistd::dup2_stdout(file)
        .and_then(|()| nix::unistd::dup2_stderr(file))
        .map_err(std::io::Error::from)
}

struct Logger {
    level: log::LevelFilter,
    file: Option<Arc<LogFile>>,
    syslog: Option<Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
            // Dependencies' chatter stays out unless asked for.
            && (metadata.target().starts_with("fleet") || self.level >= log::LevelFilter::Debug)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} {:<5} {}\n",
            timestamp(SystemTime::now()),
            record.level(),
            record.args()
        );
        // A log line that cannot be written has nowhere else to go.
        match &self.file {
            Some(f) => {
                if let Ok(mut file) = f.file.lock() {
                    let _ = file.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
        if let Some(sys) = &self.syslog
            && let Ok(mut w) = sys.lock()
        {
            let msg = record.args().to_string();
            let _ = match record.level() {
                log::Level::Error => w.err(msg),
                log::Level::Warn => w.warning(msg),
                log::Level::Info => w.info(msg),
                _ => w.debug(msg),
            };
        }
    }

    fn flush(&self) {
        match &self.file {
            Some(f) => {
                if let Ok(mut file) = f.file.lock() {
                    let _ = file.flush();
                }
            }
            None => {
                let _ = std::io::stderr().flush();
            }
        }
    }
}

/// Installs the logger once per process, writing to stderr; later calls are ignored.
pub fn init(level: log::LevelFilter, use_syslog: bool) {
    install(level, use_syslog, None);
}

/// Installs the logger once per process, appending to the log file at `path` (created with
/// [`LOG_FILE_MODE`]); [`reopen`] reopens it. A panic's message goes there too (stderr is
/// launchd's descriptor, which rotation leaves behind).
pub fn init_with_file(
    level: log::LevelFilter,
    use_syslog: bool,
    path: &Path,
) -> std::io::Result<()> {
    let opened = open_log(path)?;
    point_stdio_at(&opened)?;
    let file = Arc::new(LogFile {
        path: path.to_path_buf(),
        file: Mutex::new(opened),
    });
    if LOG_FILE.set(file.clone()).is_err() {
        return Ok(());
    }
    install(level, use_syslog, Some(file));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("panic: {info}");
        default_hook(info);
    }));
    Ok(())
}

/// Opens the log file's path anew and closes the old descriptor (after a rotation moved the
/// file away). Returns the path, or `None` when logging goes to stderr.
pub fn reopen() -> std::io::Result<Option<PathBuf>> {
    let Some(f) = LOG_FILE.get() else {
        return Ok(None);
    };
    // Opened before the lock is taken: lines keep going to the old file meanwhile.
    let new = open_log(&f.path)?;
    point_stdio_at(&new)?;
    let old = match f.file.lock() {
        Ok(mut guard) => std::mem::replace(&mut *guard, new),
        Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), new),
    };
    drop(old);
    Ok(Some(f.path.clone()))
}

fn install(level: log::LevelFilter, use_syslog: bool, file: Option<Arc<LogFile>>) {
    let syslog = if use_syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "fleet-server".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(l) => Some(Mutex::new(l)),
            Err(e) => {
                eprintln!("warning: syslog unavailable ({e}); logging to stderr only");
                None
            }
        }
    } else {
        None
    };
    if log::set_boxed_logger(Box::new(Logger {
        level,
        file,
        syslog,
    }))
    .is_ok()
    {
        log::set_max_level(level);
    }
}

/// `2026-11-21 09:52:14` in UTC, without a date library.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_calendar_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_254_734);
        assert_eq!(timestamp(t), "2026-11-21 09:52:14");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00");
    }
}
