//! Signing: each test makes its own CA and a Developer-ID-Installer-shaped
//! leaf with openssl, signs a product archive, and checks the signature
//! independently: openssl over the TOC digest with the certificate found in
//! the TOC (RSA and CMS), and apple-xar's reader. A flipped byte anywhere
//! makes that check fail. Bad identities are refused, naming the file and
//! never printing the password.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_package::{PkgBuilder, PkgOptions, PkgRoot, SigningIdentity, SigningOptions};
use sha1::Digest as _;

use crate::common::*;

const PASSWORD: &str = "correct horse battery staple 7";

/// Which leaf certificate to make.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaf {
    DeveloperIdInstaller,
    Expired,
    /// A plain code-signing certificate: no Developer ID Installer marks.
    Other,
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) -> String {
        stdout(&run(Command::new(tool("openssl"))
            .args(args)
            .current_dir(self.dir.path())))
    }

    /// A CA, a leaf of `kind` issued by it (with `openssl ca`, which can
    /// back-date), and `id.p12` holding the leaf's key and chain.
    fn new(kind: Leaf, legacy_p12: bool) -> Self {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let d = pki.dir.path();
        std::fs::create_dir(d.join("newcerts")).unwrap();
        std::fs::write(d.join("index.txt"), "").unwrap();
        std::fs::write(d.join("serial"), "1000\n").unwrap();
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndir = .\ndatabase = ./index.txt\n\
             new_certs_dir = ./newcerts\nserial = ./serial\ndefault_md = sha256\n\
             policy = any\nunique_subject = no\ncopy_extensions = none\n\
             [any]\ncommonName = supplied\norganizationalUnitName = optional\n\
             organizationName = optional\n",
        )
        .unwrap();
        let ext = match kind {
            Leaf::DeveloperIdInstaller | Leaf::Expired => {
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = critical,1.2.840.113635.100.4.13\n\
                 1.2.840.113635.100.6.1.14 = critical,DER:05:00\n"
            }
            Leaf::Other => {
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = codeSigning\n"
            }
        };
        std::fs::write(d.join("leaf.ext"), ext).unwrap();
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
            "30",
            "-subj",
            "/CN=Fleet Test Root CA/O=Fleet Test",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
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
            "/CN=Developer ID Installer: Fleet Test (TEAM123456)/OU=TEAM123456/O=Fleet Test",
        ]);
        let (start, end) = match kind {
            Leaf::Expired => ("20200101000000Z", "20210101000000Z"),
            _ => ("20240101000000Z", "20991231000000Z"),
        };
        pki.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            "leaf.csr",
            "-out",
            "leaf.pem",
            "-notext",
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            "leaf.ext",
        ]);
        pki.write_password(PASSWORD, 0o600);
        let mut export = vec![
            "pkcs12",
            "-export",
            "-inkey",
            "leaf.key",
            "-in",
            "leaf.pem",
            "-certfile",
            "ca.pem",
            "-name",
            "Fleet Test installer",
            "-out",
            "id.p12",
            "-passout",
            "file:password",
        ];
        if legacy_p12 {
            // What older Keychain Access exports: 3DES, SHA-1 MAC.
            export.extend([
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ]);
        }
        pki.openssl(&export);
        pki
    }

    fn write_password(&self, password: &str, mode: u32) {
        let p = self.path("password");
        std::fs::write(&p, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn load(&self, options: &SigningOptions) -> fleet_package::Result<SigningIdentity> {
        SigningIdentity::load(&self.path("id.p12"), &self.path("password"), options)
    }
}

fn signed_pkg(pki: &Pki) -> Vec<u8> {
    let identity = pki
        .load(&SigningOptions::default())
        .expect("identity loads");
    PkgBuilder::new(mac_template(), PkgRoot::embedded())
        .unwrap()
        .build_signed_pkg(&node(), &PkgOptions::default(), &identity)
        .expect("signed build")
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Independent verification, with openssl doing the cryptography: the TOC
/// digest at heap offset 0 is the SHA-1 of the compressed TOC; the RSA
/// signature verifies over it with the public key of the first certificate
/// in the TOC, the CMS signature over the same bytes with the test CA as
/// the only trust anchor; every member's archived checksum matches the heap.
fn verify_independently(pkg: &[u8], ca: &Path) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str, bytes: &[u8]| write(work.path(), name, bytes);
    if pkg.len() < 28 || &pkg[..4] != b"xar!" {
        return Err("no XAR header".into());
    }
    let header_len = u16::from_be_bytes([pkg[4], pkg[5]]) as usize;
    let toc_len = be64(pkg, 8) as usize;
    let toc_z = pkg
        .get(header_len..header_len + toc_len)
        .ok_or("truncated TOC")?;
    let heap = &pkg[header_len + toc_len..];
    let mut toc = String::new();
    flate2::read::ZlibDecoder::new(toc_z)
        .read_to_string(&mut toc)
        .map_err(|e| format!("TOC does not inflate: {e}"))?;
    let doc = roxmltree::Document::parse(&toc).map_err(|e| format!("TOC not XML: {e}"))?;
    let toc_el = doc
        .descendants()
        .find(|n| n.has_tag_name("toc"))
        .ok_or("no <toc>")?;
    let num = |n: roxmltree::Node<'_, '_>, tag: &str| -> Result<usize, String> {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| format!("no <{tag}>"))
    };
    let part = |off: usize, len: usize| heap.get(off..off + len).ok_or("heap truncated");
    let sig_el = |tag: &str| {
        toc_el
            .children()
            .find(|n| n.has_tag_name(tag))
            .ok_or_else(|| format!("no <{tag}>"))
    };

    // The TOC digest, by openssl.
    let toc_file = w("toc.z", toc_z);
    let digest = run(Command::new(tool("openssl"))
        .args(["dgst", "-sha1", "-binary"])
        .arg(&toc_file))
    .stdout;
    let ck = toc_el
        .children()
        .find(|n| n.has_tag_name("checksum"))
        .ok_or("no <checksum>")?;
    if part(num(ck, "offset")?, num(ck, "size")?)? != digest.as_slice() {
        return Err("the stored TOC digest is not the TOC's SHA-1".into());
    }
    let digest_file = w("digest", &digest);

    // The signer's certificate, as the TOC carries it.
    let rsa_el = sig_el("signature")?;
    if rsa_el.attribute("style") != Some("RSA") {
        return Err("signature style is not RSA".into());
    }
    let certs: Vec<Vec<u8>> = rsa_el
        .descendants()
        .filter(|n| n.has_tag_name("X509Certificate"))
        .map(|n| {
            use base64::Engine as _;
            let b64: String = n.text().unwrap_or("").split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .collect();
    let leaf = w(
        "leaf.der",
        certs.first().ok_or("no certificate in the TOC")?,
    );
    let pubkey = run(Command::new(tool("openssl"))
        .args(["x509", "-inform", "DER", "-pubkey", "-noout", "-in"])
        .arg(&leaf))
    .stdout;
    let pubkey = w("pub.pem", &pubkey);
    let rsa = w(
        "rsa.sig",
        part(num(rsa_el, "offset")?, num(rsa_el, "size")?)?,
    );
    let out = output_retrying(
        Command::new(tool("openssl"))
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pubkey)
            .arg("-signature")
            .arg(&rsa)
            .arg(&digest_file),
    )
    .unwrap();
    if !out.status.success() || !stdout(&out).contains("Verified OK") {
        return Err(format!("openssl: RSA signature: {}", stdout(&out)));
    }

    // The CMS signature (zero padding cut at its DER length).
    let cms_el = sig_el("x-signature")?;
    let cms = part(num(cms_el, "offset")?, num(cms_el, "size")?)?;
    let len = if cms.get(1) == Some(&0x82) {
        4 + ((cms[2] as usize) << 8 | cms[3] as usize)
    } else if cms.get(1) == Some(&0x83) {
        5 + ((cms[2] as usize) << 16 | (cms[3] as usize) << 8 | cms[4] as usize)
    } else {
        return Err("CMS blob is not a long DER SEQUENCE".into());
    };
    let cms = w("cms.der", cms.get(..len).ok_or("CMS blob truncated")?);
    let out = output_retrying(
        Command::new(tool("openssl"))
            .args(["cms", "-verify", "-binary", "-inform", "DER", "-in"])
            .arg(&cms)
            .arg("-content")
            .arg(&digest_file)
            .arg("-CAfile")
            .arg(ca)
            // The Apple extensions are critical and unknown to openssl.
            .args(["-purpose", "any", "-ignore_critical", "-out", "/dev/null"]),
    )
    .unwrap();
    if !out.status.success() {
        return Err(format!(
            "openssl: CMS signature: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // Every member's bytes, as the (signed) TOC describes them.
    for data in toc_el.descendants().filter(|n| n.has_tag_name("data")) {
        let bytes = part(num(data, "offset")?, num(data, "length")?)?;
        let want = data
            .children()
            .find(|c| c.has_tag_name("archived-checksum"))
            .and_then(|c| c.text())
            .ok_or("no archived-checksum")?;
        let got: String = sha1::Sha1::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want.trim() {
            return Err("a member's bytes do not match the signed TOC".into());
        }
    }
    Ok(())
}

#[test]
fn signed_product_archive_verifies_with_openssl_and_apple_xar() {
    let pki = Pki::new(Leaf::DeveloperIdInstaller, false);
    let pkg = signed_pkg(&pki);
    verify_independently(&pkg, &pki.path("ca.pem")).expect("openssl verifies the signature");

    let mut xar =
        apple_xar::reader::XarReader::new(std::io::Cursor::new(pkg.clone())).expect("apple-xar");
    assert!(xar.verify_table_of_contents_checksum().unwrap());
    assert!(
        xar.verify_rsa_checksum_signature()
            .expect("RSA signature verifies")
    );
    assert!(xar.verify_cms_signature().expect("CMS signature verifies"));
    let (_, certs) = xar.rsa_signature().unwrap().unwrap();
    assert_eq!(certs.len(), 2, "leaf and CA in the TOC");

    // Still a product archive to the other readers.
    let mut reader = apple_flat_package::PkgReader::new(std::io::Cursor::new(pkg.clone())).unwrap();
    assert!(reader.distribution().unwrap().is_some());
    assert_eq!(reader.component_packages().unwrap().len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.pkg", &pkg);
    let out = run(Command::new(tool("7z")).args(["t", "-txar"]).arg(&path));
    assert!(stdout(&out).contains("Everything is Ok"));

    // Our inspect: signer, chain, verification.
    let report = fleet_package::inspect_bytes(&pkg).unwrap();
    let sig = report.signature.as_ref().expect("signature found");
    assert!(
        sig.signer.contains("Developer ID Installer: Fleet Test"),
        "{sig:?}"
    );
    assert_eq!(sig.chain.len(), 2);
    assert!(sig.chain[1].contains("Fleet Test Root CA"), "{sig:?}");
    assert!(sig.developer_id_installer && sig.rsa_verifies && sig.chain_verifies);
    assert_eq!(sig.cms_verifies, Some(true));
    assert!(sig.verifies());
    let shown = report.to_string();
    assert!(
        shown.contains("RSA signature over the TOC digest: verifies"),
        "{shown}"
    );
}

#[test]
fn a_flipped_byte_in_toc_signature_or_heap_fails_verification() {
    let pki = Pki::new(Leaf::DeveloperIdInstaller, false);
    let pkg = signed_pkg(&pki);
    let ca = pki.path("ca.pem");
    let toc_len = be64(&pkg, 8) as usize;
    let heap = 28 + toc_len;
    // In the compressed TOC, in the TOC digest, in the RSA signature, in the
    // CMS blob, in the first and the last member.
    for pos in [
        28 + toc_len / 2,
        heap + 3,
        heap + 20 + 100,
        heap + 20 + 256 + 200,
        pkg.len() / 2,
        pkg.len() - 10,
    ] {
        let mut bad = pkg.clone();
        bad[pos] ^= 0x01;
        assert!(
            verify_independently(&bad, &ca).is_err(),
            "flipped byte at {pos} of {} still verifies",
            pkg.len()
        );
    }
    // Our inspect: a corrupt TOC or member is an error; a damaged signature is reported.
    let mut bad = pkg.clone();
    bad[heap + 20 + 100] ^= 0x01;
    let sig = fleet_package::inspect_bytes(&bad)
        .unwrap()
        .signature
        .unwrap();
    assert!(!sig.rsa_verifies && !sig.verifies());
    assert!(
        fleet_package::inspect_bytes(&bad)
            .unwrap()
            .to_string()
            .contains("DOES NOT VERIFY")
    );
}

#[test]
fn legacy_3des_p12_as_keychain_exports_it_signs_too() {
    let pki = Pki::new(Leaf::DeveloperIdInstaller, true);
    let pkg = signed_pkg(&pki);
    verify_independently(&pkg, &pki.path("ca.pem")).unwrap();
}

#[test]
fn signing_keeps_the_rest_deterministic() {
    let pki = Pki::new(Leaf::DeveloperIdInstaller, false);
    let a = fleet_package::inspect_bytes(&signed_pkg(&pki)).unwrap();
    let b = fleet_package::inspect_bytes(&signed_pkg(&pki)).unwrap();
    // Same TOC (it holds the reserved sizes and the certificates), same members.
    assert_eq!(a.toc_checksum, b.toc_checksum);
    assert_eq!(a.members, b.members);
}

/// Every bad identity: the error names the file at fault, the password
/// never appears, and the builder is never reached (no package).
fn refused(pki: &Pki, options: &SigningOptions, file: &str, words: &str) {
    let e = pki.load(options).expect_err("bad identity accepted");
    let shown = e.to_string();
    assert!(
        shown.contains(&pki.path(file).display().to_string()),
        "error does not name {file}: {shown}"
    );
    assert!(
        shown.contains(words),
        "error does not say {words:?}: {shown}"
    );
    assert!(!shown.contains(PASSWORD) && !format!("{e:?}").contains(PASSWORD));
}

#[test]
fn bad_identities_are_refused_naming_the_file() {
    let pki = Pki::new(Leaf::DeveloperIdInstaller, false);
    let opts = SigningOptions::default();
    pki.write_password("not the password", 0o600);
    refused(&pki, &opts, "id.p12", "wrong password");
    pki.write_password(PASSWORD, 0o644);
    refused(&pki, &opts, "password", "readable by everyone");
    pki.write_password(PASSWORD, 0o640);
    refused(&pki, &opts, "password", "readable by its group");
    std::fs::remove_file(pki.path("password")).unwrap();
    refused(&pki, &opts, "password", "password file not found");
    pki.write_password(PASSWORD, 0o600);
    std::fs::write(pki.path("id.p12"), b"not a p12").unwrap();
    refused(&pki, &opts, "id.p12", "not a PKCS#12");
    std::fs::remove_file(pki.path("id.p12")).unwrap();
    refused(&pki, &opts, "id.p12", "p12 file not found");

    let expired = Pki::new(Leaf::Expired, false);
    refused(&expired, &opts, "id.p12", "expired on 2021-01-01");
    // Not even with --allow-any-certificate.
    let any = SigningOptions {
        allow_any_certificate: true,
        ..SigningOptions::default()
    };
    refused(&expired, &any, "id.p12", "expired");
}

#[test]
fn other_certificates_need_allow_any_certificate() {
    let pki = Pki::new(Leaf::Other, false);
    refused(
        &pki,
        &SigningOptions::default(),
        "id.p12",
        "is not a Developer ID Installer certificate",
    );
    let identity = pki
        .load(&SigningOptions {
            allow_any_certificate: true,
            ..SigningOptions::default()
        })
        .expect("allowed with allow_any_certificate");
    assert!(!identity.is_developer_id_installer());
    let pkg = PkgBuilder::new(mac_template(), PkgRoot::embedded())
        .unwrap()
        .build_signed_pkg(&node(), &PkgOptions::default(), &identity)
        .unwrap();
    verify_independently(&pkg, &pki.path("ca.pem")).unwrap();
    let report = fleet_package::inspect_bytes(&pkg).unwrap();
    assert!(!report.signature.as_ref().unwrap().developer_id_installer);
    assert!(report.to_string().contains("NOT a Developer ID Installer"));
}
