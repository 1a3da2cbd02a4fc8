//! The daemon's layering rules, checked on its source (std only): `use` arrows point only down
//! the layer table, backend names stay inside `cluster/`, callers do not wrap backend calls in
//! deadlines of their own, and `Debug` is derived except for the few types listed here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its rank: a module may use only modules of a lower rank (inside one
/// top-level module, imports are free). `main.rs` may use only `cli`.
const RANK: &[(&str, u8)] = &[
    ("config", 0),
    ("crypto", 1),
    ("identity", 1),
    ("advertise", 1),
    ("logging", 1),
    ("tls", 1),
    ("version", 1),
    ("cluster", 2),
    ("serve", 2),
    ("lb", 3),
    ("app", 4),
    ("http", 5),
    ("server", 6),
    ("cli", 7),
];

/// Names that belong to one backend: only `cluster/` may write them.
const BACKEND_NAMES: &[&str] = &[
    "redis::",
    "etcd_client",
    "RedisMembership",
    "EtcdMembership",
    "StorageMembership",
    "cluster::redis",
    "cluster::etcd",
    "cluster::storage",
];

/// Files that may set a deadline of their own with `tokio::time::timeout`: the backends (where
/// the deadline policy lives), the accept loop, the server's drain and first-join wait, and the
/// load-balancer commands (a local socket and a reload command, not the backend).
const OWN_DEADLINES: &[&str] = &[
    "cluster/",
    "serve.rs",
    "server.rs",
    "lb/haproxy.rs",
    "lb/render.rs",
];

/// Types whose `Debug` is written by hand: `Secret` itself; types holding clients that have no
/// `Debug`; and types that show a byte count (or leave out a ciphertext) instead of their bytes.
/// Every other type derives it (secrets sit in `Secret`).
const HAND_WRITTEN_DEBUG: &[&str] = &[
    "Secret",
    "RedisMembership",
    "EtcdMembership",
    "RedisSessions",
    "EtcdSessions",
    "BuiltPackage",
    "UpgradePackage",
    "EnrollmentRecord",
];

struct Source {
    /// Path under `src/`, with `/` separators.
    path: String,
    /// Its top-level module (`main` for the binary, `lib` for the crate root).
    module: String,
    /// The code without its `#[cfg(test)]` items, comments and string literals.
    code: String,
}

/// Modules that `lib.rs` declares under `#[cfg(test)]`: tests, not layers.
fn test_only_modules(root: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let mut out = Vec::new();
    let mut rest = lib.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        rest = rest[i + "#[cfg(test)]".len()..].trim_start();
        if let Some(m) = rest.strip_prefix("mod ") {
            out.push(ident_at(m).to_string());
        }
    }
    out
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tests = test_only_modules(&root);
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let path = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let first = path.split('/').next().unwrap();
            let module = first.strip_suffix(".rs").unwrap_or(first).to_string();
            let text = std::fs::read_to_string(&file).unwrap();
            Source {
                path,
                module,
                code: without_tests(&strip(&text)),
            }
        })
        .filter(|s| !tests.contains(&s.module))
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code without comments, and with string and char literals emptied (so a log message that
/// says "redis::" is not a use of it).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) && is_raw_start(b, i)
        {
            // r"…" or r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && is_char_literal(b, i) {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// `code` (already stripped) without each item marked `#[cfg(test)]`: the attribute, then up to
/// the `;` or the brace that closes the item's first block.
fn without_tests(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        let item = &rest[i + MARK.len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (j, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_raw_start(b: &[u8], i: usize) -> bool {
    // `r` must start a token (not end an identifier such as `for` or `br`).
    let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    let mut j = i + 1;
    while j < b.len() && b[j] == b'#' {
        j += 1;
    }
    before_ok && b.get(j) == Some(&b'"')
}

/// `'x'`, `'\n'`, `'\u{..}'` are char literals; `'a` (a lifetime) is not.
fn is_char_literal(b: &[u8], i: usize) -> bool {
    match (b.get(i + 1), b.get(i + 2)) {
        (Some(b'\\'), _) => true,
        (Some(_), Some(b'\'')) => true,
        _ => {
            // A multi-byte UTF-8 char: find the closing quote within 5 bytes.
            b.get(i + 1).is_some_and(|c| *c >= 0x80)
                && b[i + 1..b.len().min(i + 6)].contains(&b'\'')
        }
    }
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The crate's top-level modules that `code` names through `prefix` (`crate::` or
/// `fleet_server::`), including each name at the top level of `prefix{…}`.
fn targets(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        let name = ident_at(group[start..j].trim_start());
                        if !name.is_empty() {
                            out.insert(name.to_string());
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let name = ident_at(group[start..j].trim_start());
                        if !name.is_empty() {
                            out.insert(name.to_string());
                        }
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn rank(module: &str) -> Option<u8> {
    RANK.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

#[test]
fn use_arrows_point_down_the_layer_table() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for s in sources() {
        if s.module == "lib" {
            continue;
        }
        if s.module == "main" {
            for t in targets(&s.code, "fleet_server::") {
                if t != "cli" {
                    problems.push(format!(
                        "main.rs uses fleet_server::{t}: it may use only cli"
                    ));
                }
            }
            continue;
        }
        let Some(from) = rank(&s.module) else {
            problems.push(format!(
                "{}: module {} is not in the layer table (add it to RANK)",
                s.path, s.module
            ));
            continue;
        };
        for t in targets(&s.code, "crate::") {
            if t == s.module {
                continue;
            }
            graph.entry(s.module.clone()).or_default().insert(t.clone());
            match rank(&t) {
                None => problems.push(format!(
                    "{} uses crate::{t}, which is not in the layer table (add it to RANK)",
                    s.path
                )),
                Some(to) if to >= from => problems.push(format!(
                    "{} (rank {from}) uses crate::{t} (rank {to}): arrows must point down",
                    s.path
                )),
                Some(_) => {}
            }
        }
    }
    let shown: Vec<String> = graph
        .iter()
        .map(|(m, ts)| {
            format!(
                "  {m} -> {}",
                ts.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        problems.is_empty(),
        "layering broken:\n{}\nthe graph:\n{}",
        problems.join("\n"),
        shown.join("\n")
    );
}

#[test]
fn sub_modules_keep_their_own_rules() {
    // (file prefix, names it must not use)
    let rules: &[(&str, &[&str])] = &[
        ("http/auth.rs", &["api::", "dashboard::"]),
        ("http/api.rs", &["dashboard::"]),
        ("http/dashboard.rs", &["api::"]),
        ("cluster/records.rs", BACKEND_NAMES),
        ("cluster/users.rs", BACKEND_NAMES),
        ("cluster/redis", &["etcd", "storage::"]),
        ("cluster/etcd", &["redis::", "storage::"]),
        ("cluster/storage", &["redis::", "etcd"]),
    ];
    let mut problems = Vec::new();
    for s in sources() {
        for (prefix, names) in rules {
            if !s.path.starts_with(prefix) {
                continue;
            }
            for n in *names {
                if s.code.contains(n) {
                    problems.push(format!("{} uses {n}", s.path));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_cluster_names_a_backend() {
    let mut problems = Vec::new();
    for s in sources() {
        if s.module == "cluster" {
            continue;
        }
        for n in BACKEND_NAMES {
            if s.code.contains(n) {
                problems.push(format!("{} names the backend: {n}", s.path));
            }
        }
        if s.module == "config" {
            continue;
        }
        // A branch on the backend kind: `BackendKind::X ==`, `!= BackendKind::X`, `BackendKind::X =>`
        // or `BackendKind::X |`.
        for line in s.code.lines() {
            let Some(i) = line.find("BackendKind::") else {
                continue;
            };
            let after = &line[i + "BackendKind::".len()..];
            let after = after[ident_at(after).len()..].trim_start();
            let before = line[..i].trim_end();
            if after.starts_with("==")
                || after.starts_with("!=")
                || after.starts_with("=>")
                || after.starts_with('|')
                || before.ends_with("==")
                || before.ends_with("!=")
            {
                problems.push(format!(
                    "{} branches on the backend: {}",
                    s.path,
                    line.trim()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn callers_do_not_wrap_backend_deadlines() {
    let mut problems = Vec::new();
    for s in sources() {
        for n in ["with_deadline", "fn timed(", "CHECK_DEADLINE"] {
            if s.code.contains(n) {
                problems.push(format!(
                    "{} has {n}: deadlines live in the backends",
                    s.path
                ));
            }
        }
        if OWN_DEADLINES.iter().any(|p| s.path.starts_with(p)) {
            continue;
        }
        if s.code.contains("tokio::time::timeout(") || s.code.contains("time::timeout(") {
            problems.push(format!(
                "{} sets a deadline of its own (tokio::time::timeout): deadlines live in the backends",
                s.path
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn debug_is_derived_except_for_the_listed_types() {
    let mut problems = Vec::new();
    for s in sources() {
        let mut rest = s.code.as_str();
        while let Some(i) = rest.find("Debug for ") {
            rest = &rest[i + "Debug for ".len()..];
            let name = ident_at(rest.trim_start());
            if !HAND_WRITTEN_DEBUG.contains(&name) {
                problems.push(format!(
                    "{}: Debug for {name} is written by hand (derive it; put secrets in Secret)",
                    s.path
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_skips_test_items_only() {
    let code = without_tests(&strip(
        "use crate::a;\n#[cfg(test)]\nmod tests { fn f() { crate::b::g(); } }\n#[cfg(test)]\nuse crate::c;\nfn h() { crate::d::e(); }",
    ));
    assert_eq!(
        targets(&code, "crate::"),
        ["a", "d"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn the_scanner_sees_through_comments_and_strings() {
    let code = strip(
        "use crate::a; // crate::b\nlet s = \"crate::c\"; /* crate::d */ r#\"crate::e\"#; let c = '\"'; use crate::{f::G, h};",
    );
    assert_eq!(
        targets(&code, "crate::"),
        ["a", "f", "h"].iter().map(|s| s.to_string()).collect()
    );
}
