//! `lb render`: an HAProxy `backend` section or an nginx `upstream` block for the active nodes,
//! as pure functions of the target list (same members, same bytes), and the atomic file write
//! that `--watch` uses so a reload never reads a half-written file.

use std::path::Path;

use super::{HEALTH_PATH, Target};

/// Which configuration language to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Haproxy,
    Nginx,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "haproxy" => Ok(Format::Haproxy),
            "nginx" => Ok(Format::Nginx),
            other => Err(format!("--format {other}: use haproxy or nginx")),
        }
    }
}

/// True for a name HAProxy and nginx both take as a backend / upstream name.
pub fn valid_section_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The configuration text for `targets` in backend / upstream `name`.
pub fn render(format: Format, name: &str, targets: &[Target]) -> String {
    match format {
        Format::Haproxy => haproxy(name, targets),
        Format::Nginx => nginx(name, targets),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// An HAProxy `backend` section with health checks on the nodes' health endpoint.
pub fn haproxy(name: &str, targets: &[Target]) -> String {
    let mut s = format!(
        "# Written by `fleet-server lb render`: {} active node{}. Rewritten on every change; do not edit.\n\
backend {name}\n    balance roundrobin\n    option httpchk GET {HEALTH_PATH}\n    http-check expect status 200\n",
        targets.len(),
        plural(targets.len())
    );
    for t in targets {
        let tls = if t.scheme == "https" {
            " ssl verify required ca-file @system-ca"
        } else {
            ""
        };
        s.push_str(&format!(
            "    server {} {} check inter 2s fall 2 rise 1{tls}\n",
            t.id,
            t.host_port()
        ));
    }
    s
}

/// An nginx `upstream` block. nginx refuses an empty upstream, so a cluster without active
/// nodes gets one placeholder server marked `down` (requests then get 502, as they should).
pub fn nginx(name: &str, targets: &[Target]) -> String {
    let mut s = format!(
        "# Written by `fleet-server lb render`: {} active node{}. Rewritten on every change; do not edit.\n\
upstream {name} {{\n",
        targets.len(),
        plural(targets.len())
    );
    for t in targets {
        s.push_str(&format!(
            "    server {} max_fails=2 fail_timeout=5s; # {}\n",
            t.host_port(),
            t.id
        ));
    }
    if targets.is_empty() {
        s.push_str("    server 127.0.0.1:1 down; # placeholder: no active node\n");
    }
    s.push_str("}\n");
    s
}

/// Writes `content` to `path` so readers see the old file or the new one, never a part (the
/// one atomic write); a missing directory is an error, not created.
pub fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    fleet_installer_stub::install::write_file_atomically(path, content.as_bytes(), 0o644)
        .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
}

/// Options of `lb render`.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// Backend / upstream name.
    pub name: String,
    /// `None`: standard output (a single pass).
    pub output: Option<std::path::PathBuf>,
    /// Run with `sh -c` after the file changed.
    pub reload: Option<String>,
    pub watch: bool,
}

/// Runs the reload command; its failure is reported with its exit status and output.
async fn reload(cmd: &str) -> Result<(), String> {
    let out = tokio::time::timeout(
        RELOAD_DEADLINE,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`{cmd}` did not finish within {RELOAD_DEADLINE:?}"))?
    .map_err(|e| format!("`{cmd}` could not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if why.is_empty() {
            why = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            why.chars().take(500).collect::<String>()
        ))
    }
}

/// Longest a reload command may run.
const RELOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// `lb render`: one pass, or with `watch` a pass per heartbeat interval until `shutdown`. The
/// file is written only when its content changes, and the reload command runs only after such
/// a write (again on the next pass if it failed); a backend error leaves the file alone.
pub async fn run(
    backend: std::sync::Arc<dyn crate::cluster::Membership>,
    opts: Options,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // What the load balancer has loaded, as far as we know: the file as we found it.
    let mut applied: Option<String> = match &opts.output {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        },
        None => None,
    };
    let mut cluster_state = super::haproxy::Transitions::default();
    let mut reload_state = super::haproxy::Transitions::default();
    let mut skipped_logged: Vec<String> = Vec::new();
    loop {
        // Within the backend's own deadline.
        let members = match backend.members().await {
            Ok(m) => Some(m),
            Err(e) if !opts.watch => return Err(e.into()),
            Err(e) => {
                cluster_state.fail("cluster backend unavailable, keeping the file as it is", &e);
                None
            }
        };
        if let Some(members) = members {
            cluster_state.ok("cluster backend");
            let (targets, skipped) = super::targets(&members);
            for s in &skipped {
                if !skipped_logged.contains(&s.id) {
                    log::warn!(
                        "⚠️ node {} left out of the {:?} file: {}",
                        s.id,
                        opts.format,
                        s.reason
                    );
                    skipped_logged.push(s.id.clone());
                }
            }
            let text = render(opts.format, &opts.name, &targets);
            match &opts.output {
                None => {
                    print!("{text}");
                    return Ok(());
                }
                Some(path) if applied.as_deref() != Some(text.as_str()) => {
                    let on_disk = std::fs::read_to_string(path).ok();
                    if on_disk.as_deref() != Some(text.as_str()) {
                        write_atomic(path, &text)
                            .with_context(|| format!("writing {}", path.display()))?;
                        log::info!(
                            "📝 Wrote {} ({} active node{})",
                            path.display(),
                            targets.len(),
                            plural(targets.len())
                        );
                    }
                    match &opts.reload {
                        Some(cmd) => match reload(cmd).await {
                            Ok(()) => {
                                reload_state.ok("reload command");
                                log::info!("🔄 Reloaded: {cmd}");
                                applied = Some(text);
                            }
                            Err(e) if !opts.watch => anyhow::bail!("{e}"),
                            Err(e) => reload_state.fail("reload failed (retried next pass)", &e),
                        },
                        None => applied = Some(text),
                    }
                }
                Some(_) => {}
            }
        }
        if !opts.watch {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MemberState;
    use crate::lb::targets;
    use crate::lb::tests::member;

    fn two() -> Vec<Target> {
        targets(&[
            member("b-222222", "http://192.0.2.2:8768", MemberState::Active),
            member("a-111111", "http://[2001:db8::1]:8768", MemberState::Active),
        ])
        .0
    }

    #[test]
    fn haproxy_backend_is_deterministic() {
        let text = haproxy("fleet", &two());
        assert!(text.contains("backend fleet\n"), "{text}");
        assert!(text.contains("option httpchk GET /api/fleet/cluster/health\n"));
        let a = text
            .find("server a-111111 [2001:db8::1]:8768 check")
            .unwrap();
        let b = text.find("server b-222222 192.0.2.2:8768 check").unwrap();
        assert!(a < b, "sorted by id:\n{text}");
        assert_eq!(text, haproxy("fleet", &two()));
    }

    #[test]
    fn nginx_upstream_never_empty() {
        let text = nginx("fleet", &two());
        assert!(
            text.contains("    server 192.0.2.2:8768 max_fails=2"),
            "{text}"
        );
        let empty = nginx("fleet", &[]);
        assert!(empty.contains("server 127.0.0.1:1 down;"), "{empty}");
        assert!(empty.ends_with("}\n"));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.conf");
        write_atomic(&p, "one\n").unwrap();
        write_atomic(&p, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/x"), "x").is_err());
    }

    #[test]
    fn section_names() {
        assert!(valid_section_name("fleet_nodes-1"));
        assert!(!valid_section_name("fleet nodes"));
        assert!(!valid_section_name("x{"));
        assert!(!valid_section_name(""));
    }
}
