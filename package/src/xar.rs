//! XAR, the flat pkg's container: a 28-byte big-endian header, a
//! zlib-compressed XML table of contents, and the heap, whose first 20 bytes
//! are the SHA-1 of the compressed TOC (checksum algorithm 1).
//!
//! Written here rather than with `zar`: zar stamps the TOC with the current
//! time (no byte-identical rebuilds), and zar 0.2's liblzma cannot share a
//! dependency graph with apple-flat-package's xz2, which the tests read our
//! packages with. Members are either zlib-encoded (`application/x-gzip` in
//! a TOC means bare zlib) or stored (`application/octet-stream`).

use std::fmt::Write as _;
use std::io::Write as _;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use sha1::{Digest, Sha1};

/// `xar!`.
pub(crate) const MAGIC: &[u8; 4] = b"xar!";
/// Header length in bytes.
pub(crate) const HEADER_LEN: usize = 28;
/// Checksum algorithm 1: SHA-1.
pub(crate) const CKSUM_SHA1: u32 = 1;
const SHA1_LEN: usize = 20;
/// Times written into the TOC (the package's fixed mtime).
const TOC_TIME: &str = "2024-01-01T00:00:00Z";

/// How a member is stored in the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// zlib (`application/x-gzip`).
    Zlib,
    /// As it is (`application/octet-stream`).
    Stored,
}

impl Encoding {
    fn style(self) -> &'static str {
        match self {
            Encoding::Zlib => "application/x-gzip",
            Encoding::Stored => "application/octet-stream",
        }
    }
}

/// A member ready for the heap: its archived bytes and both checksums.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: &'static str,
    pub encoding: Encoding,
    pub archived: Vec<u8>,
    pub archived_sha1: [u8; SHA1_LEN],
    pub extracted_len: u64,
    pub extracted_sha1: [u8; SHA1_LEN],
}

impl Member {
    /// A member stored as it is.
    pub fn stored(name: &'static str, data: Vec<u8>) -> Self {
        let sha1: [u8; SHA1_LEN] = Sha1::digest(&data).into();
        Self {
            name,
            encoding: Encoding::Stored,
            extracted_len: data.len() as u64,
            archived: data,
            archived_sha1: sha1,
            extracted_sha1: sha1,
        }
    }

    /// A member zlib-compressed (level 9: these are small).
    pub fn zlib(name: &'static str, data: &[u8]) -> Self {
        let archived = zlib(data, 9);
        Self {
            name,
            encoding: Encoding::Zlib,
            archived_sha1: Sha1::digest(&archived).into(),
            extracted_len: data.len() as u64,
            extracted_sha1: Sha1::digest(data).into(),
            archived,
        }
    }
}

fn zlib(data: &[u8], level: u32) -> Vec<u8> {
    let mut z = ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    let _ = z.write_all(data);
    z.finish().unwrap_or_default()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The TOC XML for `members` laid out in that order after the TOC checksum.
fn toc_xml(members: &[&Member]) -> String {
    let mut x = String::with_capacity(1024 + members.len() * 900);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xar>\n <toc>\n");
    let _ = write!(
        x,
        "  <checksum style=\"sha1\">\n   <offset>0</offset>\n   <size>{SHA1_LEN}</size>\n  </checksum>\n"
    );
    let _ = writeln!(x, "  <creation-time>{TOC_TIME}</creation-time>");
    let mut offset = SHA1_LEN as u64;
    for (i, m) in members.iter().enumerate() {
        let _ = write!(
            x,
            concat!(
                "  <file id=\"{id}\">\n",
                "   <data>\n",
                "    <length>{length}</length>\n",
                "    <offset>{offset}</offset>\n",
                "    <size>{size}</size>\n",
                "    <encoding style=\"{style}\"/>\n",
                "    <archived-checksum style=\"sha1\">{archived}</archived-checksum>\n",
                "    <extracted-checksum style=\"sha1\">{extracted}</extracted-checksum>\n",
                "   </data>\n",
                "   <ctime>{t}</ctime>\n",
                "   <mtime>{t}</mtime>\n",
                "   <atime>{t}</atime>\n",
                "   <group>wheel</group>\n",
                "   <gid>0</gid>\n",
                "   <user>root</user>\n",
                "   <uid>0</uid>\n",
                "   <mode>0644</mode>\n",
                "   <type>file</type>\n",
                "   <name>{name}</name>\n",
                "  </file>\n"
            ),
            id = i + 1,
            length = m.archived.len(),
            offset = offset,
            size = m.extracted_len,
            style = m.encoding.style(),
            archived = hex(&m.archived_sha1),
            extracted = hex(&m.extracted_sha1),
            t = TOC_TIME,
            name = m.name,
        );
        offset += m.archived.len() as u64;
    }
    x.push_str(" </toc>\n</xar>\n");
    x
}

/// The whole archive.
pub(crate) fn write_xar(members: &[&Member]) -> Vec<u8> {
    let toc = toc_xml(members);
    let toc_z = zlib(toc.as_bytes(), 6);
    let heap: usize = members.iter().map(|m| m.archived.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + toc_z.len() + SHA1_LEN + heap);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(toc_z.len() as u64).to_be_bytes());
    out.extend_from_slice(&(toc.len() as u64).to_be_bytes());
    out.extend_from_slice(&CKSUM_SHA1.to_be_bytes());
    out.extend_from_slice(&toc_z);
    out.extend_from_slice(&Sha1::digest(&toc_z));
    for m in members {
        out.extend_from_slice(&m.archived);
    }
    out
}
