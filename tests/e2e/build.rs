//! A clean clone builds with no `protoc` on the machine: the tree as git knows it is copied to a
//! temporary directory and etcd-client (the one crate that compiles .proto files) is checked there
//! with a fresh target directory, inside a mount namespace where every `protoc` on PATH is
//! masked. Needs root (`unshare -m`), like the network-namespace tests; fails loudly without it.

use std::process::Command;

use fleet_tests::require_tool;

#[test]
fn a_clean_clone_builds_without_protoc() {
    require_tool("git");
    require_tool("unshare");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test masks protoc in a mount namespace (unshare -m): run `cargo test` as root"
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    // The tracked files of the working tree (what a clone of this commit would hold, with
    // uncommitted edits to tracked files included, so the test checks what is being changed).
    let files = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-files", "-z", "--cached"])
        .output()
        .unwrap();
    assert!(files.status.success(), "git ls-files failed");
    for name in files.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let (from, to) = (repo.join(name), clone.join(name));
        if !from.exists() {
            continue; // deleted in the working tree
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
    // Every protoc on PATH (and the usual places) becomes /dev/null, which cannot be run.
    let script = r#"
set -eu
for d in $(echo "$PATH" | tr ':' ' ') /usr/bin /usr/local/bin; do
  [ -e "$d/protoc" ] && mount --bind /dev/null "$d/protoc"
done
if protoc --version >/dev/null 2>&1; then echo "protoc still runs" >&2; exit 99; fi
unset PROTOC
cd "$1"
cargo check --offline --quiet -p etcd-client --target-dir "$2"
"#;
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            script,
            "build",
        ])
        .arg(&clone)
        .arg(tmp.path().join("target"))
        .env_remove("PROTOC")
        .output()
        .expect("running unshare");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(99), "protoc was not masked: {log}");
    assert!(
        out.status.success(),
        "the clean copy did not build without protoc:\n{log}"
    );
    // The generated etcd API is really there (not an empty build).
    let generated = std::fs::read_dir(tmp.path().join("target/debug/build"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("out/etcdserverpb.rs"))
        .find(|p| p.exists())
        .expect("no etcdserverpb.rs generated");
    let code = std::fs::read_to_string(generated).unwrap();
    assert!(
        code.contains("pub struct RangeRequest"),
        "generated code lacks RangeRequest"
    );
}
