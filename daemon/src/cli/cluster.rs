//! `fleet-server cluster status | nodes | info` and `package list | revoke`: they read the
//! backend straight from the configuration and print what it holds (made safe for a terminal).

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use super::{ClusterCommand, load, runtime};
use crate::app::backend::open as backend_of;
use crate::cluster::{self, Member, MemberState};
use crate::config::Config;
use crate::identity;

pub(super) fn run(command: ClusterCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    let mut out = std::io::stdout().lock();
    match command {
        ClusterCommand::Status { config, json } => {
            let c = load(config)?;
            rt.block_on(cluster_status(&c, json, &mut out))
        }
        ClusterCommand::Nodes { config, json } => {
            let c = load(config)?;
            rt.block_on(cluster_nodes(&c, json, &mut out))
        }
        ClusterCommand::Info { config, json } => {
            let c = load(config)?;
            rt.block_on(cluster_info(&c, json, &mut out))
        }
    }
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
    let members = backend.members().await?;
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
    let members = backend.members().await?;
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
    let pending = backend.list_enrollments().await?;
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

/// `fleet-server package revoke ID`.
pub async fn package_revoke(
    config: &Config,
    id: &str,
    by: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let backend = backend_of(config)?;
    let token = crate::app::revoke::resolve_token(&*backend, id).await?;
    match crate::app::revoke::revoke(&*backend, &token, by, None).await? {
        Some(rec) => {
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
    use crate::config::BackendKind;

    #[tokio::test]
    async fn cluster_info_prints_the_summary_and_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cluster::test_config(dir.path());
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
