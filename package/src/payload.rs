//! cpio "odc" archives (magic 070707), gzip-compressed: the pkg's `Payload`
//! and `Scripts`. Entries are `.` and `./…`, depth-first in name order, every
//! one root:wheel (0:0) with [`FIXED_MTIME`](crate::FIXED_MTIME).
//!
//! Written here rather than with `kpea`: kpea 0.4 takes uid, gid, mtime and
//! nlink only from the filesystem (its `Metadata` has no setters), and a
//! build user's uid must never reach a package. The format is 76 bytes of
//! octal header per entry; the tests read it back with GNU cpio, bsdtar and kpea.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::{Compression, GzBuilder};

use crate::FIXED_MTIME;

const MAGIC: &[u8; 6] = b"070707";
const HEADER_LEN: usize = 76;
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// One entry of a payload tree, before it is archived.
#[derive(Clone, Debug)]
pub(crate) struct TreeEntry<'a> {
    /// `.` or `./a/b`.
    pub path: String,
    /// Permission bits (no file type bits).
    pub perm: u32,
    /// File contents; `None` for a directory.
    pub data: Option<&'a [u8]>,
}

impl TreeEntry<'_> {
    /// Mode with the file type bits, as cpio and the Bom store it.
    pub fn mode(&self) -> u32 {
        self.perm
            | if self.data.is_some() {
                S_IFREG
            } else {
                S_IFDIR
            }
    }
}

/// Builds the whole tree from files given as (`a/b/c`, perm, contents):
/// `.` and every parent directory (0755) are added, the order is depth-first
/// by name, so the same files always give the same archive.
pub(crate) fn tree<'a>(files: &[(&str, u32, &'a [u8])]) -> Vec<TreeEntry<'a>> {
    // Key: path components, whose order is depth-first by name.
    let mut all: BTreeMap<Vec<String>, (u32, Option<&'a [u8]>)> = BTreeMap::new();
    all.insert(Vec::new(), (0o755, None));
    for (path, perm, data) in files {
        let parts: Vec<String> = path.split('/').map(str::to_owned).collect();
        for i in 1..parts.len() {
            all.entry(parts[..i].to_vec()).or_insert((0o755, None));
        }
        all.insert(parts, (*perm, Some(*data)));
    }
    all.into_iter()
        .map(|(parts, (perm, data))| TreeEntry {
            path: if parts.is_empty() {
                ".".to_owned()
            } else {
                format!("./{}", parts.join("/"))
            },
            perm,
            data,
        })
        .collect()
}

/// The end of an archive whose last entry's contents are fixed (the installer
/// stub, last in `Scripts`): those contents and the trailer, deflated on their
/// own. A deflate stream may continue after a sync flush with blocks from an
/// independent compressor, so a warm build compresses only the small
/// per-node head and appends these blocks.
#[derive(Debug)]
pub(crate) struct CachedTail {
    deflate: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl CachedTail {
    /// Deflates `data` followed by the archive trailer.
    pub fn new(data: &[u8]) -> std::io::Result<Self> {
        let mut raw = data.to_vec();
        write_header(&mut raw, 0, 0, 1, TRAILER, 0)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&raw);
        Ok(Self {
            deflate: deflate_raw(&raw, flate2::FlushCompress::Finish)?,
            crc,
            len: raw.len() as u64,
        })
    }
}

/// Writes `entries`, whose last one is a file with the contents `tail` was
/// made from, as a gzip-compressed odc cpio archive: byte for byte what
/// [`write_cpio_gz`] gives, but compressing only the entries before it.
pub(crate) fn write_cpio_gz_with_tail(
    entries: &[TreeEntry<'_>],
    tail: &CachedTail,
) -> std::io::Result<Vec<u8>> {
    let Some((last, head_entries)) = entries.split_last() else {
        return Err(std::io::Error::other("empty archive"));
    };
    let mut head = Vec::new();
    write_entries(&mut head, head_entries, entries, 0)?;
    let last_len = last.data.map_or(0, <[u8]>::len) as u64;
    write_header(
        &mut head,
        entries.len() as u64,
        last.mode(),
        1,
        &last.path,
        last_len,
    )?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.combine(&tail.crc);
    let total = head.len() as u64 + tail.len;
    let head_deflate = deflate_raw(&head, flate2::FlushCompress::Sync)?;
    let mut out = Vec::with_capacity(18 + head_deflate.len() + tail.deflate.len());
    // gzip header: deflate, no flags, mtime 0, no extra flags, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    out.extend_from_slice(&head_deflate);
    out.extend_from_slice(&tail.deflate);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    Ok(out)
}

/// A run of bytes deflated on its own and ended by a sync flush, so that it can sit anywhere
/// in a deflate stream between independently compressed runs (the binaries of a bundle: the
/// same for every node, compressed once per template).
#[derive(Debug)]
pub(crate) struct DeflatedRun {
    deflate: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl DeflatedRun {
    pub fn new(data: &[u8]) -> std::io::Result<Self> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(data);
        Ok(Self {
            deflate: deflate_raw(data, flate2::FlushCompress::Sync)?,
            crc,
            len: data.len() as u64,
        })
    }
}

/// One part of a gzip member built by [`gzip_runs`].
pub(crate) enum Run<'a> {
    /// Compressed now.
    Fresh(Vec<u8>),
    /// Compressed earlier.
    Cached(&'a DeflatedRun),
}

/// A gzip member (level 6, mtime 0, OS unknown) whose deflate stream is the runs in order:
/// fresh ones compressed here (the last with the final block), cached ones copied. The bytes
/// depend only on the runs' contents and where the cached ones sit.
pub(crate) fn gzip_runs(runs: &[Run<'_>]) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut crc = crc32fast::Hasher::new();
    let mut total: u64 = 0;
    for (i, run) in runs.iter().enumerate() {
        let last = i + 1 == runs.len();
        match run {
            Run::Fresh(data) => {
                crc.update(data);
                total += data.len() as u64;
                let flush = if last {
                    flate2::FlushCompress::Finish
                } else {
                    flate2::FlushCompress::Sync
                };
                out.extend_from_slice(&deflate_raw(data, flush)?);
            }
            Run::Cached(c) => {
                if last {
                    return Err(std::io::Error::other("a cached run cannot end the stream"));
                }
                crc.combine(&c.crc);
                total += c.len;
                out.extend_from_slice(&c.deflate);
            }
        }
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    Ok(out)
}

/// Raw deflate (level 6) of `data`, ended by `flush`: `Sync` leaves the
/// stream open and byte-aligned, `Finish` writes the final block.
fn deflate_raw(data: &[u8], flush: flate2::FlushCompress) -> std::io::Result<Vec<u8>> {
    let mut c = flate2::Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    loop {
        let done = c.total_in() as usize;
        let status = c
            .compress_vec(&data[done..], &mut out, flush)
            .map_err(std::io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        let finished = match flush {
            flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
            // zlib: a flush is complete when output space is left over.
            _ => all_in && out.len() < out.capacity(),
        };
        if finished {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

/// Writes `entries` as a gzip-compressed odc cpio archive (level 6, gzip
/// header mtime 0 and OS "unknown", so the bytes depend on the entries only).
pub(crate) fn write_cpio_gz(entries: &[TreeEntry<'_>]) -> std::io::Result<Vec<u8>> {
    let raw: usize = entries
        .iter()
        .map(|e| HEADER_LEN + e.path.len() + 1 + e.data.map_or(0, <[u8]>::len))
        .sum();
    let out = Vec::with_capacity(raw / 2 + 1024);
    let mut gz = GzBuilder::new()
        .operating_system(255)
        .write(out, Compression::new(6));
    write_cpio(&mut gz, entries)?;
    gz.finish()
}

fn write_cpio(w: &mut impl Write, entries: &[TreeEntry<'_>]) -> std::io::Result<()> {
    write_entries(w, entries, entries, 0)?;
    write_header(w, 0, 0, 1, TRAILER, 0)
}

/// Writes `part` (a slice of `all`, starting at index `first`); directory
/// link counts look at `all`.
fn write_entries(
    w: &mut impl Write,
    part: &[TreeEntry<'_>],
    all: &[TreeEntry<'_>],
    first: usize,
) -> std::io::Result<()> {
    let entries = all;
    for (i, e) in part.iter().enumerate().map(|(i, e)| (i + first, e)) {
        let nlink = if e.data.is_some() {
            1
        } else {
            // A directory's links: itself, its `.`, and each subdirectory's `..`.
            let prefix = format!("{}/", e.path);
            2 + entries
                .iter()
                .filter(|c| {
                    c.data.is_none()
                        && c.path.starts_with(&prefix)
                        && !c.path[prefix.len()..].contains('/')
                })
                .count() as u64
        };
        let data = e.data.unwrap_or(&[]);
        write_header(w, i as u64 + 1, e.mode(), nlink, &e.path, data.len() as u64)?;
        w.write_all(data)?;
    }
    Ok(())
}

fn write_header(
    w: &mut impl Write,
    ino: u64,
    mode: u32,
    nlink: u64,
    name: &str,
    size: u64,
) -> std::io::Result<()> {
    let too_big = |what: &str| std::io::Error::other(format!("{what} too large for cpio odc"));
    let namesize = name.len() as u64 + 1;
    if ino >= 0o1000000 {
        return Err(too_big("entry count"));
    }
    if namesize >= 0o1000000 {
        return Err(too_big("path"));
    }
    if size >= 0o100000000000 {
        return Err(too_big("file"));
    }
    // The trailer's mtime is 0, as other writers have it.
    let mtime = if name == TRAILER { 0 } else { FIXED_MTIME };
    // dev, ino, mode, uid, gid, nlink, rdev, mtime, namesize, filesize
    let header = format!(
        "070707{:06o}{:06o}{:06o}{:06o}{:06o}{:06o}{:06o}{:011o}{:06o}{:011o}",
        0, ino, mode, 0, 0, nlink, 0, mtime, namesize, size
    );
    debug_assert_eq!(header.len(), HEADER_LEN);
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])
}

/// One entry read back from an odc archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpioEntry {
    /// The path as stored (`.`, `./…`).
    pub path: String,
    /// Mode with file type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Size of the contents in bytes.
    pub size: u64,
}

/// Decompresses a gzip member, refusing more than `limit` bytes of output.
pub(crate) fn gunzip(data: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Err("not gzip-compressed".to_owned());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip stream is damaged: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("decompresses to more than {limit} bytes"));
    }
    Ok(out)
}

/// Reads an odc archive; returns each entry with the range of its contents.
pub(crate) fn read_odc(archive: &[u8]) -> Result<Vec<(CpioEntry, std::ops::Range<usize>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let header = archive
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| format!("cpio archive truncated at byte {pos} (no trailer)"))?;
        if &header[..6] != MAGIC {
            return Err(format!(
                "cpio entry at byte {pos} is not odc (magic 070707)"
            ));
        }
        let field = |start: usize, len: usize| -> Result<u64, String> {
            let s = std::str::from_utf8(&header[start..start + len])
                .map_err(|_| format!("bad cpio header at byte {pos}"))?;
            u64::from_str_radix(s, 8).map_err(|_| format!("bad cpio header at byte {pos}"))
        };
        let mode = field(18, 6)? as u32;
        let uid = field(24, 6)? as u32;
        let gid = field(30, 6)? as u32;
        let mtime = field(48, 11)?;
        let namesize = field(59, 6)? as usize;
        let size = field(65, 11)?;
        let name_start = pos + HEADER_LEN;
        let name = archive
            .get(name_start..name_start + namesize)
            .ok_or_else(|| format!("cpio archive truncated in a name at byte {name_start}"))?;
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        let path = String::from_utf8_lossy(name).into_owned();
        let data_start = name_start + namesize;
        let data_end = usize::try_from(size)
            .ok()
            .and_then(|s| data_start.checked_add(s))
            .filter(|&end| end <= archive.len())
            .ok_or_else(|| format!("cpio archive truncated in the contents of {path}"))?;
        if path == TRAILER {
            return Ok(out);
        }
        out.push((
            CpioEntry {
                path,
                mode,
                uid,
                gid,
                mtime,
                size,
            },
            data_start..data_end,
        ));
        pos = data_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tail_gives_the_same_archive() {
        let stub: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files: [(&str, u32, &[u8]); 3] = [
            ("postinstall", 0o755, b"#!/bin/sh\n"),
            ("fleet-config.sealed", 0o600, b"sealed"),
            ("preinstall", 0o755, &stub),
        ];
        let entries = tree(&files);
        let plain = gunzip(&write_cpio_gz(&entries).unwrap(), 1 << 30).unwrap();
        let tail = CachedTail::new(&stub).unwrap();
        let gz = write_cpio_gz_with_tail(&entries, &tail).unwrap();
        // flate2 checks the CRC and length in the gzip trailer.
        let cached = gunzip(&gz, 1 << 30).unwrap();
        assert!(plain == cached);
        let listed: Vec<String> = read_odc(&cached)
            .unwrap()
            .into_iter()
            .map(|e| e.0.path)
            .collect();
        assert_eq!(
            listed,
            [
                ".",
                "./fleet-config.sealed",
                "./postinstall",
                "./preinstall"
            ]
        );
    }
}
