//! The admin CLI's work: `cluster status`, `cluster nodes` (read the backend directly from the
//! configuration) and `config init` (a ready-to-run configuration with fresh secrets).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use serde_json::json;

use crate::cluster::{self, Member, MemberState};
use crate::config::{BackendKind, Config};
use crate::identity;

fn backend_of(config: &Config) -> anyhow::Result<std::sync::Arc<dyn cluster::Membership>> {
    if !config.cluster.enabled {
        anyhow::bail!(
            "Cluster mode not enabled: set cluster.enabled: true (and a backend) in the configuration"
        );
    }
    Ok(cluster::open(config)?)
}

/// A backend call: its own deadline bounds it (a timeout is `ClusterError::Unreachable`).
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, cluster::ClusterError>>,
) -> anyhow::Result<T> {
    Ok(f.await?)
}

/// Text another machine wrote, made safe for a terminal: C0 and C1 controls (ESC, CR, LF, the
/// 8-bit CSI), DEL and the bidirectional overrides become visible `\u{..}` escapes, so a record
/// can neither move the cursor, clear the screen, forge a row nor reorder the columns.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// JSON for a terminal: serde_json escapes C0 controls but writes DEL, C1 controls and the
/// bidirectional marks as they are; those only occur inside strings, where `\uXXXX` is valid.
pub fn json_terminal_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        // A newline is the pretty printer's own (serde_json escapes those inside strings).
        if c != '\n' && is_unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The member list as JSON, each record that fails validation marked `"invalid": <reason>`.
fn members_json(members: &[Member]) -> serde_json::Value {
    serde_json::Value::Array(
        members
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                if let (Err(why), Some(o)) = (m.node.validate(), v.as_object_mut()) {
                    o.insert("invalid".into(), why.into());
                }
                v
            })
            .collect(),
    )
}

async fn members_and_active(
    backend: &dyn cluster::Membership,
) -> anyhow::Result<(Vec<Member>, usize)> {
    let members = timed(backend.members()).await?;
    let active = members
        .iter()
        .filter(|m| m.state == MemberState::Active)
        .count();
    Ok((members, active))
}

/// `fleet-server cluster status`.
pub async fn cluster_status(
    config: &Config,
    as_json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let backend = backend_of(config)?;
    let (members, active) = members_and_active(&*backend).await?;
    // Read as the daemon reads it: no symlink, our own file, capped (issue 14).
    let this_id = identity::read_own_file(
        &config.server.state_dir.join(identity::NODE_ID_FILE),
        identity::STATE_FILE_CAP,
    )
    .ok()
    .flatten()
    .map(|s| terminal_safe(s.trim()));
    if as_json {
        writeln!(
            out,
            "{}",
            json!({
                "enabled": true,
                "backend": backend.kind().as_str(),
                "active_nodes": active,
                "members": members.len(),
                "node_id": this_id,
            })
        )?;
    } else {
        writeln!(out, "✅ Cluster Mode Enabled")?;
        writeln!(out)?;
        writeln!(out, "Backend: {}", backend.kind())?;
        writeln!(out, "Active Nodes: {active}")?;
        if let Some(id) = this_id {
            writeln!(out, "This Node ID: {id}")?;
        }
    }
    Ok(())
}

/// `fleet-server cluster nodes`.
pub async fn cluster_nodes(
    config: &Config,
    as_json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let backend = backend_of(config)?;
    let members = timed(backend.members()).await?;
    if as_json {
        let text = serde_json::to_string_pretty(&members_json(&members))?;
        writeln!(out, "{}", json_terminal_safe(&text))?;
        return Ok(());
    }
    write_table(&members, out)
}

/// Where the backend is, without credentials: `redis://host:port/db`, the storage directory, or
/// the etcd endpoints.
pub fn backend_location(config: &Config) -> String {
    cluster::location(config)
}

/// `fleet-server cluster info`: a summary line (members, active, backend and where it is) and
/// the member table, as EIS's `etcd_cluster_info.sh` lists the cluster.
pub async fn cluster_info(
    config: &Config,
    as_json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let backend = backend_of(config)?;
    let (members, active) = members_and_active(&*backend).await?;
    let location = backend_location(config);
    if as_json {
        writeln!(
            out,
            "{}",
            json_terminal_safe(&serde_json::to_string_pretty(&json!({
                "backend": backend.kind().as_str(),
                "endpoint": location,
                "members": members.len(),
                "active_nodes": active,
                "nodes": members_json(&members),
            }))?)
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Cluster: {} member{} ({active} active), backend {} at {location}",
        members.len(),
        if members.len() == 1 { "" } else { "s" },
        backend.kind()
    )?;
    writeln!(out)?;
    write_table(&members, out)
}

/// The member table, as `etcd_cluster_info.sh` shows one.
pub fn write_table(members: &[Member], out: &mut impl Write) -> anyhow::Result<()> {
    let rows: Vec<[String; 6]> = members
        .iter()
        .map(|m| {
            let valid = m.node.validate().is_ok();
            [
                m.node.name.clone(),
                m.node.id.clone(),
                m.node.addresses.join(","),
                match m.state {
                    // Not trusted, whatever its heartbeat says.
                    _ if !valid => "invalid".into(),
                    MemberState::Active => "active".into(),
                    MemberState::Expired => "expired".into(),
                },
                if m.age_known {
                    format!("{:.1}s ago", m.age_ms as f64 / 1000.0)
                } else {
                    "within timeout".into()
                },
                if crate::cluster::is_older_version(&m.node.version, crate::version::version()) {
                    format!("{} (older)", m.node.version)
                } else {
                    m.node.version.clone()
                },
            ]
        })
        .map(|r: [String; 6]| r.map(|c| terminal_safe(&c)))
        .collect();
    let header = [
        "NAME",
        "ID",
        "ADDRESSES",
        "STATE",
        "LAST HEARTBEAT",
        "VERSION",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&header))?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    if rows.is_empty() {
        writeln!(out, "(no members)")?;
    }
    for m in members {
        if let Err(why) = m.node.validate() {
            writeln!(
                out,
                "⚠️  {} is not trusted: its record fails validation ({why})",
                terminal_safe(&m.node.id)
            )?;
        }
    }
    Ok(())
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Options of `config init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub backend: BackendKind,
    pub storage_path: Option<std::path::PathBuf>,
    pub redis_host: Option<String>,
    pub redis_port: u16,
    pub state_dir: std::path::PathBuf,
    pub host: String,
    pub port: u16,
    pub node_name: Option<String>,
    pub redis_password: Option<String>,
    pub template_dir: Option<std::path::PathBuf>,
    pub allow_foreign_binaries: bool,
}

/// Writes a configuration with fresh secrets (API key, admin password, encryption keys) and
/// returns the admin password and API key, for the caller to show once.
pub fn config_init(
    path: &Path,
    opts: &InitOptions,
    force: bool,
) -> anyhow::Result<(String, String)> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists: not overwriting it (use --force)",
            path.display()
        );
    }
    let password = random_token(20);
    let api_key = random_token(40);
    let mut c = Config::default();
    c.server.host = opts.host.clone();
    c.server.port = opts.port;
    c.server.state_dir = opts.state_dir.clone();
    c.cluster.enabled = true;
    c.cluster.backend = opts.backend;
    c.cluster.node_name = opts.node_name.clone();
    c.cluster.storage_path = opts.storage_path.clone();
    c.cluster.redis_host = opts.redis_host.clone();
    c.cluster.redis_port = opts.redis_port;
    c.cluster.redis_password = opts.redis_password.clone().map(crate::config::Secret::new);
    c.package.template_dir = opts.template_dir.clone();
    c.package.allow_foreign_binaries = opts.allow_foreign_binaries;
    // Only the key's digest is kept: the key is shown once, to the admin.
    c.auth.api_key_sha256 = Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        api_key.as_bytes(),
    )));
    let (hash, public) =
        crate::sessionsig::credentials_for(&password).map_err(anyhow::Error::msg)?;
    c.auth.web_password_hash = Some(hash);
    c.auth.session_public_key = Some(public);
    c.encryption.database_key = Some(crate::config::Secret::new(random_token(44)));
    c.encryption.payload_key = Some(crate::config::Secret::new(random_token(44)));
    c.validate(path)?;
    let yaml = serde_yaml::to_string(&c).context("rendering the configuration")?;
    let text = format!(
        "# Fleet Server node configuration, made by `fleet-server config init`.\n# It holds secrets: keep it 0600.\n{yaml}"
    );
    identity::write_atomically(path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((password, api_key))
}

fn utc_ms(ms: u64) -> String {
    crate::logging::timestamp(std::time::UNIX_EPOCH + Duration::from_millis(ms)) + " UTC"
}

/// `fleet-server package list`: the pending enrollments.
pub async fn package_list(
    config: &Config,
    as_json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let backend = backend_of(config)?;
    let pending = timed(backend.list_enrollments()).await?;
    if as_json {
        let rows: Vec<serde_json::Value> = pending.iter().map(|r| r.summary()).collect();
        writeln!(
            out,
            "{}",
            json_terminal_safe(&serde_json::to_string_pretty(&rows)?)
        )?;
        return Ok(());
    }
    if pending.is_empty() {
        writeln!(out, "No pending packages.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:<20} {:<24} {:<24} BUILT BY",
        "ID", "NODE", "CREATED", "EXPIRES"
    )?;
    for r in &pending {
        writeln!(
            out,
            "{:<14} {:<20} {:<24} {:<24} {}",
            terminal_safe(&r.token_id.chars().take(12).collect::<String>()),
            if r.node_name.is_empty() {
                "(hostname)".to_string()
            } else {
                terminal_safe(&r.node_name)
            },
            utc_ms(r.created_ms),
            utc_ms(r.expires_ms),
            terminal_safe(&r.built_by)
        )?;
    }
    Ok(())
}

/// Finds the one pending enrollment whose token id starts with `id`.
pub async fn resolve_token(backend: &dyn cluster::Membership, id: &str) -> anyhow::Result<String> {
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "`{id}` is not a package id: give 8 or more hex characters from `fleet-server package list`"
        );
    }
    let pending = timed(backend.list_enrollments()).await?;
    let matches: Vec<&str> = pending
        .iter()
        .map(|r| r.token_id.as_str())
        .filter(|t| t.starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => anyhow::bail!("no pending package {id} (already used, revoked or expired?)"),
        _ => anyhow::bail!("{id} matches several pending packages: give more characters"),
    }
}

/// `fleet-server package revoke ID`.
pub async fn package_revoke(
    config: &Config,
    id: &str,
    by: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let backend = backend_of(config)?;
    let token = resolve_token(&*backend, id).await?;
    match timed(backend.revoke_enrollment(&token)).await? {
        Some(rec) => {
            let ev = cluster::Event::new(cluster::EventKind::PackageRevoked, &rec.node_name)
                .with("by", by)
                .with("token_id", &rec.token_id);
            if let Err(e) = timed(backend.record_event(&ev)).await {
                log::warn!("revoked, but not recorded in the events: {e}");
            }
            writeln!(
                out,
                "✅ Revoked package {} (node {}): it can no longer join the cluster",
                terminal_safe(&rec.token_id.chars().take(12).collect::<String>()),
                if rec.node_name.is_empty() {
                    "(hostname)".to_string()
                } else {
                    terminal_safe(&rec.node_name)
                }
            )?;
            Ok(())
        }
        None => anyhow::bail!("no pending package {id} (already used, revoked or expired?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cluster_info_prints_the_summary_and_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.cluster.enabled = true;
        c.cluster.backend = BackendKind::Storage;
        c.cluster.storage_path = Some(dir.path().join("share"));
        let backend = cluster::open(&c).unwrap();
        let node = cluster::NodeRecord {
            id: "node2-abc123".into(),
            name: "node2".into(),
            hostname: "node2.test".into(),
            addresses: vec!["198.51.100.7".into()],
            version: "0.1.0".into(),
            os: "linux".into(),
            started_at: 1,
            url: "http://198.51.100.7:8768".into(),
        };
        backend.register(&node).await.unwrap();
        let mut out = Vec::new();
        cluster_info(&c, false, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let share = dir.path().join("share");
        assert!(
            text.starts_with(&format!(
                "Cluster: 1 member (1 active), backend storage at {}\n\nNAME ",
                share.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("node2-abc123  198.51.100.7  active"),
            "{text}"
        );
        let mut out = Vec::new();
        cluster_info(&c, true, &mut out).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["active_nodes"], 1);
        assert_eq!(v["nodes"][0]["name"], "node2");

        // Locations never carry credentials.
        c.cluster.backend = BackendKind::Redis;
        c.cluster.redis_host = Some("203.0.113.10".into());
        c.cluster.redis_password = Some(crate::config::Secret::new("pw-secret"));
        c.cluster.redis_tls = true;
        assert_eq!(backend_location(&c), "rediss://203.0.113.10:6379/0");
        c.cluster.backend = BackendKind::Etcd;
        c.cluster.etcd_endpoints = vec!["http://203.0.113.10:2379".into()];
        c.cluster.etcd_password = Some(crate::config::Secret::new("pw-secret"));
        assert_eq!(backend_location(&c), "http://203.0.113.10:2379");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let evil = "web\x1b[2J\r\nFAKE  1.2.3.4  active\u{9b}31m\u{7f}\u{202e}x";
        let safe = terminal_safe(evil);
        assert!(!safe.chars().any(is_unsafe_char), "{safe:?}");
        assert!(safe.contains("\\u{1b}[2J\\u{d}\\u{a}FAKE"), "{safe}");
        let json = serde_json::to_string(&serde_json::json!({ "n": evil })).unwrap();
        let j = json_terminal_safe(&json);
        assert!(!j.chars().any(is_unsafe_char), "{j:?}");
        let pretty = serde_json::to_string_pretty(&serde_json::json!({ "n": evil })).unwrap();
        let p = json_terminal_safe(&pretty);
        assert!(!p.chars().any(|c| c != '\n' && is_unsafe_char(c)), "{p:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&p).unwrap()["n"],
            evil
        );
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["n"], evil, "still the same JSON value");
    }
}
