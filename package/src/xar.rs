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

/// An entry of the TOC: a member, or a directory of members (a product
/// archive's component, `<name>.pkg/…`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Entry<'a> {
    File(&'a Member),
    Dir(&'a str, &'a [&'a Member]),
}

/// The space a signature takes, known before the TOC is hashed: the RSA
/// signature's and the CMS blob's byte lengths, and the certificates (DER,
/// signer first) that both `<KeyInfo>` elements list.
#[derive(Clone, Debug)]
pub(crate) struct SignatureSpace {
    pub rsa_len: usize,
    pub cms_len: usize,
    pub certificates: Vec<Vec<u8>>,
}

/// Signs a TOC digest (the SHA-1 stored at heap offset 0).
pub(crate) trait TocSigner {
    /// What [`TocSigner::sign`] will return, in size.
    fn space(&self) -> crate::Result<SignatureSpace>;
    /// The RSA signature and the CMS blob over `toc_digest`; the CMS blob
    /// may be shorter than reserved (it is padded with zeros).
    fn sign(&self, toc_digest: &[u8]) -> crate::Result<(Vec<u8>, Vec<u8>)>;
}

fn file_meta(x: &mut String, pad: &str, mode: &str, kind: &str, name: &str) {
    let _ = write!(
        x,
        concat!(
            "{p}<ctime>{t}</ctime>\n",
            "{p}<mtime>{t}</mtime>\n",
            "{p}<atime>{t}</atime>\n",
            "{p}<group>wheel</group>\n",
            "{p}<gid>0</gid>\n",
            "{p}<user>root</user>\n",
            "{p}<uid>0</uid>\n",
            "{p}<mode>{mode}</mode>\n",
            "{p}<type>{kind}</type>\n",
            "{p}<name>{name}</name>\n",
        ),
        p = pad,
        t = TOC_TIME,
        mode = mode,
        kind = kind,
        name = name,
    );
}

fn file_xml(x: &mut String, depth: usize, id: usize, m: &Member, offset: u64) {
    let pad = " ".repeat(depth + 1);
    let _ = write!(
        x,
        concat!(
            "{q}<file id=\"{id}\">\n",
            "{p}<data>\n",
            "{p} <length>{length}</length>\n",
            "{p} <offset>{offset}</offset>\n",
            "{p} <size>{size}</size>\n",
            "{p} <encoding style=\"{style}\"/>\n",
            "{p} <archived-checksum style=\"sha1\">{archived}</archived-checksum>\n",
            "{p} <extracted-checksum style=\"sha1\">{extracted}</extracted-checksum>\n",
            "{p}</data>\n",
        ),
        q = &pad[1..],
        p = pad,
        id = id,
        length = m.archived.len(),
        offset = offset,
        size = m.extracted_len,
        style = m.encoding.style(),
        archived = hex(&m.archived_sha1),
        extracted = hex(&m.extracted_sha1),
    );
    file_meta(x, &pad, "0644", "file", m.name);
    let _ = writeln!(x, "{}</file>", &pad[1..]);
}

fn key_info(x: &mut String, certs: &[Vec<u8>]) {
    use base64::Engine as _;
    x.push_str("   <KeyInfo xmlns=\"http://www.w3.org/2000/09/xmldsig#\">\n    <X509Data>\n");
    for c in certs {
        let _ = writeln!(
            x,
            "     <X509Certificate>{}</X509Certificate>",
            base64::engine::general_purpose::STANDARD.encode(c)
        );
    }
    x.push_str("    </X509Data>\n   </KeyInfo>\n");
}

/// The TOC XML for `entries`, their data laid out in that order after the
/// TOC checksum and the signatures (if any).
fn toc_xml(entries: &[Entry<'_>], sig: Option<&SignatureSpace>) -> String {
    let mut x = String::with_capacity(2048 + entries.len() * 900);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xar>\n <toc>\n");
    let _ = write!(
        x,
        "  <checksum style=\"sha1\">\n   <offset>0</offset>\n   <size>{SHA1_LEN}</size>\n  </checksum>\n"
    );
    let mut offset = SHA1_LEN as u64;
    if let Some(s) = sig {
        for (tag, style, len) in [
            ("signature", "RSA", s.rsa_len),
            ("x-signature", "CMS", s.cms_len),
        ] {
            let _ = write!(
                x,
                "  <{tag} style=\"{style}\">\n   <offset>{offset}</offset>\n   <size>{len}</size>\n"
            );
            key_info(&mut x, &s.certificates);
            let _ = writeln!(x, "  </{tag}>");
            offset += len as u64;
        }
    }
    let _ = writeln!(x, "  <creation-time>{TOC_TIME}</creation-time>");
    let mut id = 0;
    for e in entries {
        id += 1;
        match e {
            Entry::File(m) => {
                file_xml(&mut x, 1, id, m, offset);
                offset += m.archived.len() as u64;
            }
            Entry::Dir(name, members) => {
                let _ = writeln!(x, "  <file id=\"{id}\">");
                file_meta(&mut x, "   ", "0755", "directory", name);
                for m in members.iter() {
                    id += 1;
                    file_xml(&mut x, 2, id, m, offset);
                    offset += m.archived.len() as u64;
                }
                x.push_str("  </file>\n");
            }
        }
    }
    x.push_str(" </toc>\n</xar>\n");
    x
}

/// The whole archive, signed by `signer` if given.
pub(crate) fn write_xar(
    entries: &[Entry<'_>],
    signer: Option<&dyn TocSigner>,
) -> crate::Result<Vec<u8>> {
    let space = signer.map(|s| s.space()).transpose()?;
    let toc = toc_xml(entries, space.as_ref());
    let toc_z = zlib(toc.as_bytes(), 6);
    let mut members: Vec<&Member> = Vec::new();
    for e in entries {
        match e {
            Entry::File(m) => members.push(m),
            Entry::Dir(_, ms) => members.extend_from_slice(ms),
        }
    }
    let heap: usize = members.iter().map(|m| m.archived.len()).sum();
    let sig_len = space.as_ref().map_or(0, |s| s.rsa_len + s.cms_len);
    let mut out = Vec::with_capacity(HEADER_LEN + toc_z.len() + SHA1_LEN + sig_len + heap);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(toc_z.len() as u64).to_be_bytes());
    out.extend_from_slice(&(toc.len() as u64).to_be_bytes());
    out.extend_from_slice(&CKSUM_SHA1.to_be_bytes());
    out.extend_from_slice(&toc_z);
    let digest = Sha1::digest(&toc_z);
    out.extend_from_slice(&digest);
    if let (Some(signer), Some(space)) = (signer, &space) {
        let (rsa, mut cms) = signer.sign(&digest)?;
        if rsa.len() != space.rsa_len || cms.len() > space.cms_len {
            return Err(crate::Error::Signing(format!(
                "signature of {} + {} bytes does not fit the {} + {} reserved",
                rsa.len(),
                cms.len(),
                space.rsa_len,
                space.cms_len
            )));
        }
        cms.resize(space.cms_len, 0);
        out.extend_from_slice(&rsa);
        out.extend_from_slice(&cms);
    }
    for m in members {
        out.extend_from_slice(&m.archived);
    }
    Ok(out)
}
