//! Logging through `log`: one line per record to stderr (launchd and systemd capture it into
//! `/var/log/fleet-server.log` or the journal), and to syslog when configured.

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

struct Logger {
    level: log::LevelFilter,
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
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger once per process; later calls are ignored.
pub fn init(level: log::LevelFilter, use_syslog: bool) {
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
    if log::set_boxed_logger(Box::new(Logger { level, syslog })).is_ok() {
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
