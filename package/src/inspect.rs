//! Reading a pkg back (a product archive or a bare component): members,
//! sizes, every checksum verified, the Distribution, PackageInfo, the
//! Payload and Scripts listings, the raw sealed configuration, and the
//! signature (signer, chain, whether it verifies over the TOC digest).
//! Malformed input of any kind gives [`Error::Corrupt`], never a panic.

use std::fmt;
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::payload::{gunzip, read_odc};
use crate::xar::{CKSUM_SHA1, HEADER_LEN, MAGIC, hex};
use crate::{Error, Result, SEALED_NAME};

pub use crate::payload::CpioEntry;

/// Largest TOC accepted (real ones are a few KiB).
const MAX_TOC: u64 = 16 << 20;
/// Largest decompressed member accepted.
const MAX_MEMBER: u64 = 4 << 30;

/// One member of the XAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `Bom`, `PackageInfo`, `Payload`, `Scripts`, …
    pub name: String,
    /// The TOC's encoding style (`application/x-gzip` = zlib, `application/octet-stream`).
    pub encoding: String,
    /// Offset in the heap.
    pub offset: u64,
    /// Bytes in the heap.
    pub archived_size: u64,
    /// Bytes once decoded.
    pub size: u64,
    /// SHA-1 of the decoded bytes (verified).
    pub sha1: String,
}

/// What PackageInfo says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfoSummary {
    /// `identifier`.
    pub identifier: String,
    /// `version`.
    pub version: String,
    /// `install-location`.
    pub install_location: String,
    /// `auth`.
    pub auth: String,
    /// `payload/@numberOfFiles`.
    pub number_of_files: u64,
    /// `payload/@installKBytes`.
    pub install_kbytes: u64,
    /// `scripts/preinstall/@file`.
    pub preinstall: Option<String>,
    /// `scripts/postinstall/@file`.
    pub postinstall: Option<String>,
    /// The XML as stored.
    pub xml: String,
}

/// What the Distribution (of a product archive) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributionSummary {
    /// `<title>`.
    pub title: String,
    /// `installer-gui-script/@minSpecVersion`.
    pub min_spec_version: String,
    /// `options/@hostArchitectures`, split at commas.
    pub host_architectures: Vec<String>,
    /// `options/@customize`.
    pub customize: String,
    /// `allowed-os-versions/os-version/@min`.
    pub min_macos: Option<String>,
    /// `domains/@enable_localSystem`.
    pub local_system: bool,
    /// Number of `<choice>` elements.
    pub choices: usize,
    /// The `pkg-ref`s that name a component: (id, version, installKBytes, target).
    pub pkg_refs: Vec<(String, String, u64, String)>,
    /// The XML as stored.
    pub xml: String,
}

/// A signature found in the TOC, and what checking it gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureReport {
    /// The signer's subject.
    pub signer: String,
    /// Subjects of the certificates in the TOC, signer first.
    pub chain: Vec<String>,
    /// Whether each certificate is signed by the next one.
    pub chain_verifies: bool,
    /// Whether the signer is a Developer ID Installer certificate.
    pub developer_id_installer: bool,
    /// The signer certificate's expiry (RFC 3339).
    pub not_after: String,
    /// Whether the RSA `<signature>` verifies over the TOC digest with the signer's key.
    pub rsa_verifies: bool,
    /// Whether the CMS `<x-signature>` verifies over the TOC digest (`None`: there is none).
    pub cms_verifies: Option<bool>,
    /// The CMS signing time, if any.
    pub signing_time: Option<String>,
}

impl SignatureReport {
    /// Everything verifies: RSA, CMS (if present) and the chain.
    pub fn verifies(&self) -> bool {
        self.rsa_verifies && self.cms_verifies != Some(false) && self.chain_verifies
    }
}

/// Everything `fleet-server package inspect` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// TOC checksum algorithm (`sha1`) and value, verified.
    pub toc_checksum: String,
    /// Members in TOC order.
    pub members: Vec<Member>,
    /// Parsed Distribution (product archives only).
    pub distribution: Option<DistributionSummary>,
    /// The signature, if the package is signed.
    pub signature: Option<SignatureReport>,
    /// Parsed PackageInfo (the component's).
    pub package_info: Option<PackageInfoSummary>,
    /// Payload entries.
    pub payload: Vec<CpioEntry>,
    /// Scripts entries.
    pub scripts: Vec<CpioEntry>,
    /// The raw `fleet-config.sealed` from Scripts, for printing its header.
    pub sealed_config: Option<Vec<u8>>,
}

impl fmt::Debug for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectReport")
            .field("toc_checksum", &self.toc_checksum)
            .field("members", &self.members)
            .field("distribution", &self.distribution)
            .field("signature", &self.signature)
            .field("package_info", &self.package_info)
            .field("payload", &self.payload)
            .field("scripts", &self.scripts)
            .field(
                "sealed_config",
                &self
                    .sealed_config
                    .as_ref()
                    .map(|s| format!("{} bytes", s.len())),
            )
            .finish()
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "TOC checksum: {} (verified)", self.toc_checksum)?;
        writeln!(f, "Members:")?;
        for m in &self.members {
            writeln!(
                f,
                "  {:<12} {:>10} bytes ({:>10} archived, {}) sha1 {} ok",
                m.name, m.size, m.archived_size, m.encoding, m.sha1
            )?;
        }
        match &self.distribution {
            Some(d) => {
                writeln!(
                    f,
                    "Distribution: product archive \"{}\", minSpecVersion {}, hostArchitectures {}, macOS >= {}, customize {}, {} choice(s), local system {}",
                    d.title,
                    d.min_spec_version,
                    d.host_architectures.join(","),
                    d.min_macos.as_deref().unwrap_or("any"),
                    d.customize,
                    d.choices,
                    if d.local_system { "yes" } else { "no" },
                )?;
                for (id, version, kib, target) in &d.pkg_refs {
                    writeln!(f, "  pkg-ref {id} version {version}, {kib} KiB: {target}")?;
                }
            }
            None => writeln!(f, "Distribution: none (a bare component package)")?,
        }
        match &self.signature {
            Some(s) => {
                writeln!(
                    f,
                    "Signature: {} ({}), expires {}",
                    s.signer,
                    if s.developer_id_installer {
                        "Developer ID Installer"
                    } else {
                        "NOT a Developer ID Installer certificate"
                    },
                    s.not_after
                )?;
                writeln!(
                    f,
                    "  chain: {} ({})",
                    s.chain.join(" <- "),
                    if s.chain_verifies {
                        "each signed by the next"
                    } else {
                        "BROKEN"
                    }
                )?;
                let yes = |b: bool| if b { "verifies" } else { "DOES NOT VERIFY" };
                writeln!(
                    f,
                    "  RSA signature over the TOC digest: {}; CMS signature: {}{}",
                    yes(s.rsa_verifies),
                    s.cms_verifies.map_or("none", yes),
                    s.signing_time
                        .as_ref()
                        .map(|t| format!(" (signed {t})"))
                        .unwrap_or_default()
                )?;
            }
            None => writeln!(f, "Signature: none (unsigned)")?,
        }
        if let Some(p) = &self.package_info {
            writeln!(
                f,
                "PackageInfo: identifier {} version {} install-location {} auth {}",
                p.identifier, p.version, p.install_location, p.auth
            )?;
            writeln!(
                f,
                "  payload: {} files, {} KiB; preinstall {}, postinstall {}",
                p.number_of_files,
                p.install_kbytes,
                p.preinstall.as_deref().unwrap_or("-"),
                p.postinstall.as_deref().unwrap_or("-")
            )?;
        }
        for (title, entries) in [("Payload", &self.payload), ("Scripts", &self.scripts)] {
            writeln!(f, "{title}:")?;
            for e in entries {
                writeln!(
                    f,
                    "  {:06o} {}:{} {:>10} {}",
                    e.mode, e.uid, e.gid, e.size, e.path
                )?;
            }
        }
        Ok(())
    }
}

/// Reads and verifies the pkg at `path`.
pub fn inspect(path: &Path) -> Result<InspectReport> {
    let bytes = std::fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    inspect_bytes(&bytes).map_err(|reason| Error::Corrupt {
        path: path.display().to_string(),
        reason,
    })
}

/// Reads and verifies a pkg in memory; the error says what is wrong.
pub fn inspect_bytes(bytes: &[u8]) -> Result<InspectReport, String> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| format!("{} bytes is too short for a XAR header", bytes.len()))?;
    if &header[..4] != MAGIC {
        return Err("no XAR magic 'xar!' at the start".to_owned());
    }
    let be16 = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let be64 = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let header_len = be16(4) as usize;
    let toc_len = be64(8);
    let toc_raw_len = be64(16);
    let algo = u32::from_be_bytes([header[24], header[25], header[26], header[27]]);
    if header_len < HEADER_LEN {
        return Err(format!(
            "XAR header size {header_len} is below {HEADER_LEN}"
        ));
    }
    if algo != CKSUM_SHA1 {
        return Err(format!("TOC checksum algorithm {algo} is not 1 (sha1)"));
    }
    if toc_len > MAX_TOC || toc_raw_len > MAX_TOC {
        return Err(format!("TOC of {toc_len} bytes is implausibly large"));
    }
    let toc_start = header_len;
    let heap_start = toc_start + toc_len as usize;
    let toc_z = bytes
        .get(toc_start..heap_start)
        .ok_or("truncated in the table of contents")?;
    let heap = &bytes[heap_start.min(bytes.len())..];

    let mut toc = Vec::new();
    use std::io::Read as _;
    flate2::read::ZlibDecoder::new(toc_z)
        .take(MAX_TOC)
        .read_to_end(&mut toc)
        .map_err(|e| format!("table of contents does not decompress: {e}"))?;
    if toc.len() as u64 != toc_raw_len {
        return Err(format!(
            "table of contents is {} bytes, the header says {toc_raw_len}",
            toc.len()
        ));
    }
    let toc = std::str::from_utf8(&toc).map_err(|_| "table of contents is not UTF-8")?;
    let doc = roxmltree::Document::parse(toc)
        .map_err(|e| format!("table of contents is not XML: {e}"))?;
    let toc_el = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("toc"))
        .ok_or("table of contents has no <toc>")?;

    // The TOC checksum.
    let ck = child(toc_el, "checksum").ok_or("table of contents has no <checksum>")?;
    if ck
        .attribute("style")
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("sha1")
    {
        return Err("TOC checksum style is not sha1".to_owned());
    }
    let ck_off = num(ck, "offset")?;
    let ck_size = num(ck, "size")?;
    let stored = slice(heap, ck_off, ck_size).ok_or("truncated in the TOC checksum")?;
    let actual = Sha1::digest(toc_z);
    if stored != actual.as_slice() {
        return Err("TOC checksum mismatch: the table of contents is corrupted".to_owned());
    }

    let mut files = Vec::new();
    walk_files(toc_el, "", 0, &mut files)?;
    let mut members = Vec::new();
    let mut data = std::collections::HashMap::new();
    for (name, file) in files {
        let Some(d) = child(file, "data") else {
            continue; // directories
        };
        let offset = num(d, "offset")?;
        let length = num(d, "length")?;
        let size = num(d, "size")?;
        let encoding = child(d, "encoding")
            .and_then(|e| e.attribute("style"))
            .unwrap_or("application/octet-stream")
            .to_owned();
        let archived =
            slice(heap, offset, length).ok_or_else(|| format!("truncated in member {name}"))?;
        verify(d, "archived-checksum", archived, &name)?;
        let decoded = match encoding.as_str() {
            "application/octet-stream" => archived.to_vec(),
            "application/x-gzip" => {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(archived)
                    .take(MAX_MEMBER)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("member {name} does not decompress: {e}"))?;
                out
            }
            other => return Err(format!("member {name}: unsupported encoding {other}")),
        };
        if decoded.len() as u64 != size {
            return Err(format!(
                "member {name} is {} bytes, the TOC says {size}",
                decoded.len()
            ));
        }
        let sha1 = verify(d, "extracted-checksum", &decoded, &name)?;
        members.push(Member {
            name: name.clone(),
            encoding,
            offset,
            archived_size: length,
            size,
            sha1,
        });
        data.insert(name, decoded);
    }

    let find = |base: &str| {
        data.iter()
            .filter(|(k, _)| {
                k.as_str() == base
                    || k.strip_suffix(base)
                        .and_then(|d| d.strip_suffix('/'))
                        .is_some_and(|d| d.ends_with(".pkg") && !d.contains('/'))
            })
            .min_by_key(|(k, _)| k.len())
            .map(|(_, v)| v)
    };
    let distribution = data
        .get("Distribution")
        .map(|x| parse_distribution(x))
        .transpose()?;
    let signature = signature_report(toc_el, heap, stored)?;
    let package_info = find("PackageInfo")
        .map(|x| parse_package_info(x))
        .transpose()?;
    let payload = match find("Payload") {
        Some(p) => list_cpio(p, "Payload")?
            .into_iter()
            .map(|(e, _)| e)
            .collect(),
        None => Vec::new(),
    };
    let mut sealed_config = None;
    let scripts = match find("Scripts") {
        Some(s) => {
            let raw = gunzip(s, MAX_MEMBER).map_err(|e| format!("Scripts: {e}"))?;
            let entries = read_odc(&raw).map_err(|e| format!("Scripts: {e}"))?;
            let sealed_path = format!("./{SEALED_NAME}");
            for (e, range) in &entries {
                if e.path == sealed_path || e.path == SEALED_NAME {
                    sealed_config = raw.get(range.clone()).map(<[u8]>::to_vec);
                }
            }
            entries.into_iter().map(|(e, _)| e).collect()
        }
        None => Vec::new(),
    };
    Ok(InspectReport {
        toc_checksum: format!("sha1 {}", hex(&actual)),
        members,
        distribution,
        signature,
        package_info,
        payload,
        scripts,
        sealed_config,
    })
}

fn list_cpio(gz: &[u8], what: &str) -> Result<Vec<(CpioEntry, std::ops::Range<usize>)>, String> {
    let raw = gunzip(gz, MAX_MEMBER).map_err(|e| format!("{what}: {e}"))?;
    read_odc(&raw).map_err(|e| format!("{what}: {e}"))
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn text<'a>(n: roxmltree::Node<'a, '_>, tag: &str) -> Option<&'a str> {
    child(n, tag).and_then(|c| c.text()).map(str::trim)
}

fn num(n: roxmltree::Node<'_, '_>, tag: &str) -> Result<u64, String> {
    text(n, tag)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("table of contents: missing or bad <{tag}>"))
}

fn slice(heap: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    heap.get(start..end)
}

fn verify(
    d: roxmltree::Node<'_, '_>,
    tag: &str,
    bytes: &[u8],
    name: &str,
) -> Result<String, String> {
    let el = child(d, tag).ok_or_else(|| format!("member {name} has no <{tag}>"))?;
    let style = el.attribute("style").unwrap_or("").to_ascii_lowercase();
    let expected = el.text().unwrap_or("").trim().to_ascii_lowercase();
    let actual = match style.as_str() {
        "sha1" => hex(&Sha1::digest(bytes)),
        "sha256" => hex(&sha2::Sha256::digest(bytes)),
        other => {
            return Err(format!(
                "member {name}: unsupported checksum style {other:?}"
            ));
        }
    };
    if actual != expected {
        return Err(format!("member {name}: {tag} mismatch (corrupted)"));
    }
    Ok(actual)
}

fn parse_package_info(xml: &[u8]) -> Result<PackageInfoSummary, String> {
    let xml = String::from_utf8(xml.to_vec()).map_err(|_| "PackageInfo is not UTF-8")?;
    let doc = roxmltree::Document::parse(&xml).map_err(|e| format!("PackageInfo: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("pkg-info") {
        return Err("PackageInfo has no <pkg-info>".to_owned());
    }
    let attr = |n: roxmltree::Node<'_, '_>, a: &str| n.attribute(a).unwrap_or("").to_owned();
    let payload = child(root, "payload");
    let count = |a: &str| {
        payload
            .and_then(|p| p.attribute(a))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let scripts = child(root, "scripts");
    let script = |tag: &str| {
        scripts
            .and_then(|s| child(s, tag))
            .and_then(|s| s.attribute("file"))
            .map(str::to_owned)
    };
    Ok(PackageInfoSummary {
        identifier: attr(root, "identifier"),
        version: attr(root, "version"),
        install_location: attr(root, "install-location"),
        auth: attr(root, "auth"),
        number_of_files: count("numberOfFiles"),
        install_kbytes: count("installKBytes"),
        preinstall: script("preinstall"),
        postinstall: script("postinstall"),
        xml: xml.clone(),
    })
}

/// Every `<file>` under `parent`, depth first, with its path (`a/b`).
fn walk_files<'a, 'i>(
    parent: roxmltree::Node<'a, 'i>,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, roxmltree::Node<'a, 'i>)>,
) -> Result<(), String> {
    if depth > 8 {
        return Err("table of contents nests files too deeply".to_owned());
    }
    for file in parent.children().filter(|n| n.has_tag_name("file")) {
        let name = text(file, "name").ok_or("a <file> has no <name>")?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("a <file> has a bad name {name:?}"));
        }
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        out.push((path.clone(), file));
        walk_files(file, &path, depth + 1, out)?;
    }
    Ok(())
}

fn parse_distribution(xml: &[u8]) -> Result<DistributionSummary, String> {
    let xml = String::from_utf8(xml.to_vec()).map_err(|_| "Distribution is not UTF-8")?;
    let doc = roxmltree::Document::parse(&xml).map_err(|e| format!("Distribution: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("installer-gui-script") {
        return Err("Distribution has no <installer-gui-script>".to_owned());
    }
    let attr = |n: Option<roxmltree::Node<'_, '_>>, a: &str| {
        n.and_then(|n| n.attribute(a)).unwrap_or("").to_owned()
    };
    let options = child(root, "options");
    let min_macos = root
        .descendants()
        .find(|n| n.has_tag_name("os-version"))
        .and_then(|n| n.attribute("min"))
        .map(str::to_owned);
    let pkg_refs = root
        .children()
        .filter(|n| n.has_tag_name("pkg-ref"))
        .filter_map(|n| {
            let target = n.text().map(str::trim).filter(|t| !t.is_empty())?;
            Some((
                attr(Some(n), "id"),
                attr(Some(n), "version"),
                attr(Some(n), "installKBytes").parse().unwrap_or(0),
                target.to_owned(),
            ))
        })
        .collect();
    Ok(DistributionSummary {
        title: text(root, "title").unwrap_or("").to_owned(),
        min_spec_version: attr(Some(root), "minSpecVersion"),
        host_architectures: attr(options, "hostArchitectures")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        customize: attr(options, "customize"),
        min_macos,
        local_system: attr(child(root, "domains"), "enable_localSystem") == "true",
        choices: root.children().filter(|n| n.has_tag_name("choice")).count(),
        pkg_refs,
        xml: xml.clone(),
    })
}

/// The certificates (DER) in a signature element's `KeyInfo/X509Data`.
fn key_info_certs(sig: roxmltree::Node<'_, '_>) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine as _;
    sig.descendants()
        .filter(|n| n.has_tag_name("X509Certificate"))
        .map(|n| {
            let b64: String = n.text().unwrap_or("").split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "a signature certificate is not base64".to_owned())
        })
        .collect()
}

/// The length of the DER value at the start of `b` (tag, length, contents),
/// so that the zero padding after a CMS blob can be cut off.
fn der_len(b: &[u8]) -> Option<usize> {
    let first = *b.get(1)? as usize;
    if first < 0x80 {
        return Some(2 + first);
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let len = b
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |a, &x| (a << 8) | x as usize);
    Some(2 + n + len).filter(|&l| l <= b.len())
}

fn signature_report(
    toc: roxmltree::Node<'_, '_>,
    heap: &[u8],
    toc_digest: &[u8],
) -> Result<Option<SignatureReport>, String> {
    use x509_certificate::CapturedX509Certificate;
    let Some(rsa_el) = toc
        .children()
        .find(|n| n.has_tag_name("signature") && n.attribute("style") == Some("RSA"))
    else {
        return Ok(None);
    };
    let rsa = slice(heap, num(rsa_el, "offset")?, num(rsa_el, "size")?)
        .ok_or("truncated in the RSA signature")?;
    let certs = key_info_certs(rsa_el)?
        .into_iter()
        .map(|der| {
            CapturedX509Certificate::from_der(der)
                .map_err(|e| format!("a signature certificate does not parse: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = certs
        .first()
        .ok_or("the RSA signature lists no certificate")?;
    let rsa_verifies = leaf
        .verify_signed_data_with_algorithm(
            toc_digest,
            rsa,
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        )
        .is_ok();
    let chain_verifies = certs
        .windows(2)
        .all(|w| w[0].verify_signed_by_certificate(&w[1]).is_ok());
    let mut cms_verifies = None;
    let mut signing_time = None;
    if let Some(cms_el) = toc
        .children()
        .find(|n| n.has_tag_name("x-signature") && n.attribute("style") == Some("CMS"))
    {
        let blob = slice(heap, num(cms_el, "offset")?, num(cms_el, "size")?)
            .ok_or("truncated in the CMS signature")?;
        let ok = der_len(blob)
            .and_then(|l| cryptographic_message_syntax::SignedData::parse_ber(&blob[..l]).ok())
            .is_some_and(|sd| {
                let mut any = false;
                let all = sd.signers().all(|s| {
                    any = true;
                    if let Some(t) = s.signed_attributes().and_then(|a| a.signing_time()) {
                        signing_time = Some(t.to_rfc3339());
                    }
                    s.verify_signature_with_signed_data(&sd).is_ok()
                        && s.verify_message_digest_with_content(toc_digest).is_ok()
                });
                any && all
            });
        cms_verifies = Some(ok);
    }
    Ok(Some(SignatureReport {
        signer: crate::sign::subject_of(leaf),
        chain: certs.iter().map(crate::sign::subject_of).collect(),
        chain_verifies,
        developer_id_installer: crate::sign::is_developer_id_installer(leaf),
        not_after: leaf.validity_not_after().to_rfc3339(),
        rsa_verifies,
        cms_verifies,
        signing_time,
    }))
}
