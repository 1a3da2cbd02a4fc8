//! Reading a pkg back: members, sizes, every checksum verified, PackageInfo,
//! the Payload and Scripts listings, and the raw sealed configuration.
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

/// Everything `fleet-server package inspect` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// TOC checksum algorithm (`sha1`) and value, verified.
    pub toc_checksum: String,
    /// Members in TOC order.
    pub members: Vec<Member>,
    /// Parsed PackageInfo.
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

    let mut members = Vec::new();
    let mut data = std::collections::HashMap::new();
    for file in toc_el.children().filter(|n| n.has_tag_name("file")) {
        let name = text(file, "name")
            .ok_or("a <file> has no <name>")?
            .to_owned();
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

    let package_info = data
        .get("PackageInfo")
        .map(|x| parse_package_info(x))
        .transpose()?;
    let payload = match data.get("Payload") {
        Some(p) => list_cpio(p, "Payload")?
            .into_iter()
            .map(|(e, _)| e)
            .collect(),
        None => Vec::new(),
    };
    let mut sealed_config = None;
    let scripts = match data.get("Scripts") {
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
