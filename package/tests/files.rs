//! The shipped files: the LaunchDaemon plist, newsyslog conf, scripts.

use fleet_package::PkgRoot;

#[test]
fn plist_has_the_keys() {
    let root = PkgRoot::embedded();
    let v: plist::Value = plist::from_bytes(&root.launchd_plist).expect("plist parses");
    let d = v.as_dictionary().expect("a dict");
    assert_eq!(d["Label"].as_string(), Some("com.fleet.server.cluster"));
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "/Library/FleetServer/bin/fleet-server",
            "serve",
            "--config",
            "/Library/FleetServer/config/config.yaml",
            "--log-file",
            "/var/log/fleet-server.log",
            "--pid-file",
            "/var/run/fleet-server.pid"
        ]
    );
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    assert_eq!(d["KeepAlive"].as_boolean(), Some(true));
    assert_eq!(d["ThrottleInterval"].as_unsigned_integer(), Some(10));
    assert_eq!(
        d["StandardOutPath"].as_string(),
        Some("/var/log/fleet-server.log")
    );
    assert_eq!(
        d["StandardErrorPath"].as_string(),
        Some("/var/log/fleet-server.log")
    );
    assert_eq!(d["ProcessType"].as_string(), Some("Standard"));
    // And the launchd crate agrees with the model.
    fleet_package::check_launchd_plist(&root.launchd_plist).expect("launchd check");
}

#[test]
fn a_wrong_plist_is_refused() {
    let mut root = PkgRoot::embedded();
    root.launchd_plist = String::from_utf8(root.launchd_plist)
        .unwrap()
        .replace("<integer>10</integer>", "<integer>1</integer>")
        .into_bytes();
    let err = fleet_package::check_launchd_plist(&root.launchd_plist).unwrap_err();
    assert!(err.to_string().contains("launchd plist"), "{err}");
    let t = crate::common::mac_template();
    assert!(fleet_package::PkgBuilder::new(t, root).is_err());
}

#[test]
fn newsyslog_line_signals_the_daemon_through_its_pid_file() {
    let conf = String::from_utf8(PkgRoot::embedded().newsyslog_conf).unwrap();
    let lines: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(lines.len(), 1);
    let f: Vec<&str> = lines[0].split_whitespace().collect();
    // logfile owner:group mode count size when flags pid_file sig_num
    assert_eq!(f.len(), 9, "{f:?}");
    assert_eq!(f[0], "/var/log/fleet-server.log");
    // Admins read it (`tail -f`), others do not.
    assert_eq!(f[1], "root:admin");
    assert_eq!(f[2], "640");
    assert!(f[3].parse::<u32>().is_ok() && f[4].parse::<u32>().is_ok());
    // N would mean "signal nobody": the daemon must hear of the rename.
    assert!(!f[6].contains('N'), "{f:?}");
    // The pid file the plist's --pid-file names, and SIGHUP (1), which reopens the log.
    assert_eq!(f[7], "/var/run/fleet-server.pid");
    assert_eq!(f[8], "1");
}

#[test]
fn embedded_files_match_the_source_tree() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let from_disk = PkgRoot::from_dirs(&repo.join("pkgroot"), &repo.join("scripts")).unwrap();
    assert_eq!(from_disk, PkgRoot::embedded());
}

#[test]
fn shell_scripts_parse() {
    let root = PkgRoot::embedded();
    for (name, body) in [
        ("postinstall", &root.postinstall),
        ("provision.sh", &root.provision_sh),
        ("uninstall.sh", &root.uninstall_sh),
    ] {
        assert!(
            body.starts_with(b"#!/bin/sh\n"),
            "{name} is not a /bin/sh script"
        );
        let out = std::process::Command::new("/bin/sh")
            .arg("-n")
            .arg("-c")
            .arg(String::from_utf8_lossy(body).as_ref())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
