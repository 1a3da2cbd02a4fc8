//! Signed node packages end to end (issue 17): a primary configured with `package.signing`
//! says so on its Settings page and signs what `package build` writes from its
//! configuration; `--sign-p12` signs a product archive or a bare component;
//! `package inspect` shows the signer and that the signature verifies; a wrong password or
//! a password file others can read fails the build naming the file, writes no package and
//! prints no password. The identity is a throwaway CA and Developer-ID-Installer-shaped
//! leaf made here with openssl.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fleet_tests::pkginstall::{ExpandedPkg, output_within};
use fleet_tests::{bin_path, require_tool};

use fleet_tests::output_text as text;
use fleet_tests::web::{Client, WEB_PASSWORD, node_template, start_web_node, web_yaml};

const LIMIT: Duration = Duration::from_secs(60);
const P12_PASSWORD: &str = "e2e-p12-password-4b8d2f";

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn openssl(&self, args: &[&str]) {
        let o = output_within(
            Command::new(require_tool("openssl"))
                .args(args)
                .current_dir(self.dir.path()),
            LIMIT,
        );
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    }

    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            pki.path("leaf.ext"),
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = critical,1.2.840.113635.100.4.13\n\
             1.2.840.113635.100.6.1.14 = critical,DER:05:00\n",
        )
        .unwrap();
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=E2E Throwaway Root CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        pki.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=Developer ID Installer: E2E Test (E2ETEAM001)/OU=E2ETEAM001",
        ]);
        pki.openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ]);
        pki.password("good", P12_PASSWORD, 0o600);
        pki.openssl(&[
            "pkcs12",
            "-export",
            "-inkey",
            "leaf.key",
            "-in",
            "leaf.pem",
            "-certfile",
            "ca.pem",
            "-out",
            "id.p12",
            "-passout",
            "file:good",
        ]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn password(&self, name: &str, password: &str, mode: u32) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

fn cli(config: &Path, args: &[&str]) -> Output {
    output_within(
        Command::new(bin_path("fleet-server"))
            .args(args)
            .arg("--config")
            .arg(config),
        LIMIT,
    )
}

fn build(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "package",
        "build",
        "--node-name",
        "signed-node",
        "--ethernet",
        "skip",
        "--allow-foreign-binaries",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli(config, &args)
}

fn inspect(pkg: &Path) -> String {
    let o = output_within(
        Command::new(bin_path("fleet-server"))
            .args(["package", "inspect"])
            .arg(pkg),
        LIMIT,
    );
    assert!(o.status.success(), "package inspect: {}", text(&o));
    text(&o)
}

#[test]
fn signed_packages_from_the_config_and_the_cli() {
    let pki = Pki::new();
    let shared = tempfile::tempdir().unwrap();
    let template = node_template(shared.path());
    let signing = format!(
        "  signing:\n    p12_file: {}\n    password_file: {}\n",
        pki.path("id.p12").display(),
        pki.path("good").display()
    );
    let d = start_web_node(
        "sign-primary",
        shared.path(),
        &(web_yaml(&template, "  backend: memory\n") + &signing),
    );
    d.wait_health(200, Duration::from_secs(10));
    let config = d.config_path();

    // The Settings page says who signs.
    let mut c = Client::new(d.port);
    assert_eq!(c.login("admin", WEB_PASSWORD).status, 303);
    let html = c.get("/settings").text();
    assert!(
        html.contains("macOS packages are signed by CN=Developer ID Installer: E2E Test"),
        "{html}"
    );
    assert!(!html.contains(P12_PASSWORD));

    // `package build` signs with package.signing; the default pkg is a product archive.
    let out = shared.path().join("from-config.pkg");
    let o = build(&config, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Signed by: CN=Developer ID Installer: E2E Test"),
        "{}",
        text(&o)
    );
    let shown = inspect(&out);
    for want in [
        "Distribution: product archive",
        "hostArchitectures arm64,x86_64",
        "Signature: CN=Developer ID Installer: E2E Test (E2ETEAM001), OU=E2ETEAM001 (Developer ID Installer)",
        "E2E Throwaway Root CA (each signed by the next)",
        "RSA signature over the TOC digest: verifies; CMS signature: verifies",
    ] {
        assert!(shown.contains(want), "`{want}` not in:\n{shown}");
    }
    let x = ExpandedPkg::extract(&out, &shared.path().join("x"));
    assert!(x.distribution.is_some(), "not a product archive");
    assert!(x.scripts.join("preinstall").exists());

    // --sign-p12 on a bare component.
    let out = shared.path().join("component.pkg");
    let p12 = pki.path("id.p12");
    let good = pki.path("good");
    let o = build(
        &config,
        &out,
        &[
            "--format",
            "component",
            "--sign-p12",
            p12.to_str().unwrap(),
            "--sign-password-file",
            good.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let shown = inspect(&out);
    assert!(shown.contains("Distribution: none"), "{shown}");
    assert!(
        shown.contains("RSA signature over the TOC digest: verifies"),
        "{shown}"
    );

    // Bad identities: the build fails naming the file, writes nothing, prints no password.
    let wrong = pki.password("wrong", "not-the-password", 0o600);
    let open = pki.password("open", P12_PASSWORD, 0o644);
    for (password_file, named, says) in [
        (&wrong, &p12, "wrong password"),
        (&open, &open, "readable by everyone"),
    ] {
        let out = shared.path().join("refused.pkg");
        let o = build(
            &config,
            &out,
            &[
                "--sign-p12",
                p12.to_str().unwrap(),
                "--sign-password-file",
                password_file.to_str().unwrap(),
            ],
        );
        let t = text(&o);
        assert!(!o.status.success(), "a bad identity was accepted:\n{t}");
        assert!(t.contains(&named.display().to_string()), "{t}");
        assert!(t.contains(says), "{t}");
        assert!(!t.contains(P12_PASSWORD), "the password was printed:\n{t}");
        assert!(!out.exists(), "a package was written with a bad identity");
    }
}
