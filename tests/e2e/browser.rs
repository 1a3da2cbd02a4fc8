//! The Settings page in a real browser: headless Chromium (Debian's) driven by playwright-core
//! (`tests/browser/settings.mjs`): log in, read the status, fill the form, click Build, get the
//! pkg; then remove a node. The screenshot lands in `test-artifacts/settings.png`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fleet_tests::require_tool;

use fleet_tests::web::{WEB_PASSWORD, node_template, start_web_node, web_yaml};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

#[test]
fn settings_page_builds_a_package_and_removes_a_node_in_chromium() {
    let node = require_tool("node");
    let chromium = require_tool("chromium");
    let script_dir = repo_root().join("tests/browser");
    assert!(
        script_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/install-deps.sh (it runs npm install in tests/browser)"
    );
    let artifacts = repo_root().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("settings.png");

    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let extra = web_yaml(&template, "  backend: memory\n");
    let primary = start_web_node("server-01", shared.path(), &extra);
    let second = start_web_node("server-02", shared.path(), &extra);
    primary.wait_health(200, Duration::from_secs(10));
    second.wait_health(200, Duration::from_secs(10));
    let second_id = second.node_id();
    // Both listed before the page is read.
    fleet_tests::wait_for(
        "two active nodes",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || (primary.active_ids()?.len() == 2).then_some(()),
    );
    let downloads = tempfile::tempdir().unwrap();

    let out = Command::new(node)
        .arg(script_dir.join("settings.mjs"))
        .current_dir(&script_dir)
        .env("BASE_URL", format!("http://127.0.0.1:{}", primary.port))
        .env("WEB_USER", "admin")
        .env("WEB_PASSWORD", WEB_PASSWORD)
        .env("DOWNLOAD_DIR", downloads.path())
        .env("SCREENSHOT", &screenshot)
        .env("REMOVE_NODE", &second_id)
        .env("CHROMIUM", chromium)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    eprintln!("browser saw: {seen}");

    assert_eq!(seen["redirected_to_login"], true);
    assert_eq!(seen["bad_login_message"], "Invalid username or password.");
    assert_eq!(seen["heading"], "📦 Cluster Node Installer");
    assert_eq!(seen["status"], "✅ Cluster Mode Enabled");
    assert_eq!(seen["backend"], "storage");
    assert_eq!(seen["active_nodes"], "2");
    assert_eq!(seen["this_node"], primary.node_id().as_str());
    assert_eq!(seen["download_name"], "FleetServerClusterNode.pkg");
    assert!(
        seen["build_status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("✅ Built FleetServerClusterNode.pkg"),
        "{seen}"
    );
    assert!(
        seen["bad_build_status"]
            .as_str()
            .unwrap_or_default()
            .contains("Bad_Name"),
        "{seen}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        seen["upgrade_name"],
        format!("FleetServerClusterNode-upgrade-{version}.pkg")
    );
    assert!(
        seen["upgrade_status"].as_str().unwrap_or_default().contains(&format!(
            "upgrades installed nodes to fleet-server {version} and carries no configuration or secret"
        )),
        "{seen}"
    );
    let upgrade = Command::new(require_tool("bsdtar"))
        .arg("-tf")
        .arg(seen["upgrade_path"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(upgrade.status.success());
    assert!(
        String::from_utf8_lossy(&upgrade.stdout)
            .lines()
            .any(|l| l == "fleet-server.pkg/Scripts"),
        "{}",
        String::from_utf8_lossy(&upgrade.stdout)
    );
    assert_eq!(seen["removed_row_after_reload"], 0);
    assert_eq!(seen["active_nodes_after_remove"], "1");

    let pkg = PathBuf::from(seen["download_path"].as_str().unwrap());
    let listing = Command::new(require_tool("bsdtar"))
        .arg("-tf")
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    // A product archive: the Distribution and the component's members.
    assert!(listing.lines().any(|l| l == "Distribution"), "{listing}");
    for m in ["Bom", "PackageInfo", "Payload", "Scripts"] {
        let m = format!("fleet-server.pkg/{m}");
        assert!(
            listing.lines().any(|l| l == m),
            "{m} missing from the download: {listing}"
        );
    }
    assert!(!primary.active_ids().unwrap().contains(&second_id));
    assert!(
        std::fs::metadata(&screenshot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot"
    );
}
