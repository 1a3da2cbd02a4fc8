//! The pkg's `Bom` (bill of materials), written here from the in-memory
//! payload tree: no staging directory, no GPL code.
//!
//! The format (all integers big-endian): a 512-byte header (`BOMStore`,
//! version 1, count of non-empty blocks, offset and length of the block
//! table, offset and length of the named variables), the blocks, the
//! variables (`BomInfo`, `Paths`, `HLIndex`, `VIndex`, `Size64`, each a
//! block index) and the block table (count, then offset and length of each
//! block, block 0 empty, then a free list of two empty entries).
//!
//! `Paths` is a B-tree (`tree` header, blockSize 4096) of path records: a
//! key block (path id, index of the metadata block) and a value block
//! (parent id, name). Ids are given breadth-first with siblings in name
//! order, as Apple's mkbom numbers them, so leaves are sorted by parent id
//! and name. Where the writers we know disagree we follow what Apple's
//! pkgbuild writes (`../shared/PKG_NOTES.md`): `BomInfo.numberOfPaths` is the
//! path count plus one, and `BomInfo` holds per-architecture byte sizes.
//! Owners are root:wheel (0:0), times the package's fixed mtime, directory
//! sizes 0 (they depend on the building filesystem).

use std::collections::BTreeMap;

use crate::payload::TreeEntry;
use crate::{Error, FIXED_MTIME, Result};

const HEADER_LEN: usize = 512;
/// Block size recorded in the `Paths` and `HLIndex` trees (Apple's value).
const PATHS_BLOCK_SIZE: u32 = 4096;
/// Block size recorded in the `Size64` tree.
const SIZE64_BLOCK_SIZE: u32 = 128;
/// Path records per leaf node of `Paths` before it is split under a branch
/// node (mkbom's split).
const PATHS_PER_LEAF: usize = 256;

const TYPE_FILE: u8 = 1;
const TYPE_DIR: u8 = 2;

/// How a regular file is a Mach-O, as the metadata's flags record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MachKind {
    Thin = 1,
    Fat = 2,
}

/// One architecture of a Mach-O file: cpu type and subtype, the bytes of
/// its slice and their `cksum` CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arch {
    pub cpu_type: u32,
    pub cpu_subtype: u32,
    pub size: u32,
    pub crc: u32,
}

/// The architectures of a Mach-O file, from its thin or universal (fat)
/// header; `None` for anything else (a script, an ELF, a truncated or
/// inconsistent header).
fn mach_arches(data: &[u8]) -> Option<(MachKind, Vec<Arch>)> {
    let word = |at: usize, big: bool| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let quad = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
    };
    match word(0, true)? {
        // Thin, in either byte order; the header is in the file's own order.
        m @ (0xfeed_face | 0xfeed_facf | 0xcefa_edfe | 0xcffa_edfe) => {
            let big = m >> 24 == 0xfe;
            let size = u32::try_from(data.len()).ok()?;
            Some((
                MachKind::Thin,
                vec![Arch {
                    cpu_type: word(4, big)?,
                    cpu_subtype: word(8, big)?,
                    size,
                    crc: cksum(data),
                }],
            ))
        }
        // Universal: always big-endian; 0xcafebabf has 64-bit offsets.
        m @ (0xcafe_babe | 0xcafe_babf) => {
            let wide = m == 0xcafe_babf;
            let count = word(4, true)? as usize;
            // 0xcafebabe is also a Java class file's magic; its "count" is a
            // version number in the forties or more, and its slices would
            // not fit the file.
            if count == 0 || count > 30 {
                return None;
            }
            let entry_len = if wide { 32 } else { 20 };
            let mut arches = Vec::with_capacity(count);
            for i in 0..count {
                let at = 8 + i * entry_len;
                let (offset, size) = if wide {
                    (quad(at + 8)?, quad(at + 16)?)
                } else {
                    (
                        u64::from(word(at + 8, true)?),
                        u64::from(word(at + 12, true)?),
                    )
                };
                let start = usize::try_from(offset).ok()?;
                let end = start.checked_add(usize::try_from(size).ok()?)?;
                let slice = data.get(start..end)?;
                arches.push(Arch {
                    cpu_type: word(at, true)?,
                    cpu_subtype: word(at + 4, true)?,
                    size: u32::try_from(size).ok()?,
                    crc: cksum(slice),
                });
            }
            Some((MachKind::Fat, arches))
        }
        _ => None,
    }
}

/// The CRC table of POSIX `cksum` (polynomial 0x04C11DB7, most significant
/// bit first), computed at compile time.
const CKSUM_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04c1_1db7
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// POSIX `cksum`: the CRC of the bytes, then of their length (least
/// significant byte first, no trailing zero bytes), complemented.
pub(crate) fn cksum(data: &[u8]) -> u32 {
    let step = |crc: u32, byte: u8| (crc << 8) ^ CKSUM_TABLE[((crc >> 24) as u8 ^ byte) as usize];
    let mut crc = data.iter().fold(0u32, |c, &b| step(c, b));
    let mut len = data.len() as u64;
    while len != 0 {
        crc = step(crc, len as u8);
        len >>= 8;
    }
    !crc
}

/// One path of the Bom, numbered.
struct Node<'e, 'a> {
    id: u32,
    parent: u32,
    name: &'e str,
    entry: &'e TreeEntry<'a>,
}

/// Numbers `entries` breadth-first, siblings by name; `.` is 1.
fn number<'e, 'a>(entries: &'e [TreeEntry<'a>]) -> Result<Vec<Node<'e, 'a>>> {
    let bad = |why: String| Error::io("writing the Bom")(std::io::Error::other(why));
    let mut children: BTreeMap<&str, Vec<(&str, &TreeEntry<'a>)>> = BTreeMap::new();
    let mut root = None;
    for e in entries {
        if e.path == "." {
            root = Some(e);
            continue;
        }
        let (parent, name) = e
            .path
            .rsplit_once('/')
            .ok_or_else(|| bad(format!("payload path {:?} is not under .", e.path)))?;
        children.entry(parent).or_default().push((name, e));
    }
    let root = root.ok_or_else(|| bad("payload tree has no \".\"".to_owned()))?;
    let mut out = vec![Node {
        id: 1,
        parent: 0,
        name: ".",
        entry: root,
    }];
    let mut next = 0;
    while next < out.len() {
        let (id, path) = (out[next].id, out[next].entry.path.as_str());
        next += 1;
        let Some(kids) = children.get_mut(path) else {
            continue;
        };
        kids.sort_by(|a, b| a.0.cmp(b.0));
        for (name, entry) in kids.iter() {
            let child_id = out.len() as u32 + 1;
            out.push(Node {
                id: child_id,
                parent: id,
                name,
                entry,
            });
        }
    }
    if out.len() != entries.len() {
        return Err(bad("payload tree has entries without a parent".to_owned()));
    }
    Ok(out)
}

/// The blocks being written: the file so far and the block table.
struct Store {
    data: Vec<u8>,
    blocks: Vec<(u32, u32)>,
}

impl Store {
    fn new() -> Self {
        Self {
            data: vec![0; HEADER_LEN],
            blocks: vec![(0, 0)],
        }
    }

    fn add(&mut self, bytes: &[u8]) -> Result<u32> {
        let too_big = || Error::io("writing the Bom")(std::io::Error::other("Bom over 4 GiB"));
        let offset = u32::try_from(self.data.len()).map_err(|_| too_big())?;
        let len = u32::try_from(bytes.len()).map_err(|_| too_big())?;
        self.data.extend_from_slice(bytes);
        self.blocks.push((offset, len));
        u32::try_from(self.blocks.len() - 1).map_err(|_| too_big())
    }

    /// A tree node: leaf flag, entry count, forward and backward links, entries.
    fn node(&mut self, leaf: bool, entries: &[(u32, u32)], fwd: u32, back: u32) -> Result<u32> {
        let mut b = Vec::with_capacity(12 + entries.len() * 8);
        b.extend_from_slice(&u16::from(leaf).to_be_bytes());
        b.extend_from_slice(&(entries.len() as u16).to_be_bytes());
        b.extend_from_slice(&fwd.to_be_bytes());
        b.extend_from_slice(&back.to_be_bytes());
        for (k, v) in entries {
            b.extend_from_slice(&k.to_be_bytes());
            b.extend_from_slice(&v.to_be_bytes());
        }
        self.add(&b)
    }

    /// A B-tree of (key block, value block) entries; returns its header block.
    fn tree(&mut self, entries: &[(u32, u32)], block_size: u32) -> Result<u32> {
        let root = if entries.len() <= PATHS_PER_LEAF {
            self.node(true, entries, 0, 0)?
        } else {
            let leaves: Vec<&[(u32, u32)]> = entries.chunks(PATHS_PER_LEAF).collect();
            if leaves.len() > usize::from(u16::MAX) {
                return Err(Error::io("writing the Bom")(std::io::Error::other(
                    "too many paths for one Bom",
                )));
            }
            // Leaves are consecutive blocks, linked both ways.
            let first = self.blocks.len() as u32;
            let last = first + leaves.len() as u32 - 1;
            let mut branch = Vec::with_capacity(leaves.len());
            for (i, leaf) in leaves.iter().enumerate() {
                let at = first + i as u32;
                let fwd = if at == last { 0 } else { at + 1 };
                let back = if at == first { 0 } else { at - 1 };
                let block = self.node(true, leaf, fwd, back)?;
                // A branch entry: the child, and the value of its last entry.
                branch.push((block, leaf[leaf.len() - 1].1));
            }
            self.node(false, &branch, 0, 0)?
        };
        let mut h = Vec::with_capacity(21);
        h.extend_from_slice(b"tree");
        h.extend_from_slice(&1u32.to_be_bytes());
        h.extend_from_slice(&root.to_be_bytes());
        h.extend_from_slice(&block_size.to_be_bytes());
        h.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        h.push(0);
        self.add(&h)
    }
}

/// The metadata record of one path, and its architectures for `BomInfo`.
fn metadata(e: &TreeEntry<'_>) -> (Vec<u8>, Option<Vec<Arch>>) {
    let data = e.data;
    let mach = data.and_then(mach_arches);
    let mut b = Vec::with_capacity(64);
    b.push(if data.is_some() { TYPE_FILE } else { TYPE_DIR });
    b.push(1);
    // Flags: 0xf = full metadata; the high nibble says thin or universal Mach-O.
    let flags = 0xf | mach.as_ref().map_or(0, |(k, _)| (*k as u16) << 12);
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&(e.mode() as u16).to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // uid root
    b.extend_from_slice(&0u32.to_be_bytes()); // gid wheel
    b.extend_from_slice(&(FIXED_MTIME as u32).to_be_bytes());
    let size = data.map_or(0, |d| d.len() as u64);
    // Sizes over 4 GiB are truncated here and recorded in full in Size64.
    b.extend_from_slice(&(size as u32).to_be_bytes());
    b.push(1);
    if let Some(d) = data {
        b.extend_from_slice(&cksum(d).to_be_bytes());
        if let Some((_, arches)) = &mach {
            b.push(1);
            b.extend_from_slice(&(arches.len() as u32).to_be_bytes());
            for a in arches {
                for v in [a.cpu_type, a.cpu_subtype, a.size, a.crc] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    b.extend_from_slice(&[0; 8]);
    (b, mach.map(|(_, a)| a))
}

/// Builds the Bom of `entries` (a tree from [`crate::payload::tree`]).
pub(crate) fn build_bom(entries: &[TreeEntry<'_>]) -> Result<Vec<u8>> {
    let nodes = number(entries)?;
    let mut s = Store::new();

    // BomInfo's entries: cpu type 0 for every byte that is not in a Mach-O
    // slice, then each architecture, in the order first seen.
    let mut info: Vec<(u32, u64)> = Vec::new();
    let mut count = |cpu: u32, bytes: u64| match info.iter_mut().find(|(c, _)| *c == cpu) {
        Some((_, n)) => *n += bytes,
        None => info.push((cpu, bytes)),
    };
    let mut paths = Vec::with_capacity(nodes.len());
    let mut big_files = Vec::new();
    for n in &nodes {
        let (meta, arches) = metadata(n.entry);
        match arches {
            Some(arches) => arches
                .iter()
                .for_each(|a| count(a.cpu_type, u64::from(a.size))),
            None => count(0, n.entry.data.map_or(0, |d| d.len() as u64)),
        }
        let meta_block = s.add(&meta)?;
        let size = n.entry.data.map_or(0, |d| d.len() as u64);
        if size > u64::from(u32::MAX) {
            big_files.push((meta_block, size));
        }
        let mut key = Vec::with_capacity(8);
        key.extend_from_slice(&n.id.to_be_bytes());
        key.extend_from_slice(&meta_block.to_be_bytes());
        let key = s.add(&key)?;
        let mut value = Vec::with_capacity(5 + n.name.len());
        value.extend_from_slice(&n.parent.to_be_bytes());
        value.extend_from_slice(n.name.as_bytes());
        value.push(0);
        let value = s.add(&value)?;
        paths.push((key, value));
    }
    let paths = s.tree(&paths, PATHS_BLOCK_SIZE)?;
    let hl_index = s.tree(&[], PATHS_BLOCK_SIZE)?;
    let mut sizes = Vec::with_capacity(big_files.len());
    for (meta_block, size) in big_files {
        let key = s.add(&size.to_be_bytes())?;
        let value = s.add(&meta_block.to_be_bytes())?;
        sizes.push((key, value));
    }
    let size64 = s.tree(&sizes, SIZE64_BLOCK_SIZE)?;
    let v_tree = s.tree(&[], PATHS_BLOCK_SIZE)?;
    let mut v = Vec::with_capacity(13);
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&v_tree.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.push(1);
    let v_index = s.add(&v)?;

    let mut b = Vec::with_capacity(12 + info.len() * 16);
    b.extend_from_slice(&1u32.to_be_bytes());
    // pkgbuild's count: the paths plus one.
    b.extend_from_slice(&(nodes.len() as u32 + 1).to_be_bytes());
    b.extend_from_slice(&(info.len() as u32).to_be_bytes());
    for (cpu, bytes) in &info {
        b.extend_from_slice(&cpu.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(*bytes as u32).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
    }
    let bom_info = s.add(&b)?;

    // Named variables, in mkbom's order.
    let vars_offset = s.data.len() as u32;
    let vars: [(&str, u32); 5] = [
        ("BomInfo", bom_info),
        ("Paths", paths),
        ("HLIndex", hl_index),
        ("VIndex", v_index),
        ("Size64", size64),
    ];
    s.data.extend_from_slice(&(vars.len() as u32).to_be_bytes());
    for (name, block) in vars {
        s.data.extend_from_slice(&block.to_be_bytes());
        s.data.push(name.len() as u8);
        s.data.extend_from_slice(name.as_bytes());
    }
    let vars_len = s.data.len() as u32 - vars_offset;

    // The block table, then a free list of two empty entries.
    let index_offset = s.data.len() as u32;
    let table = std::mem::take(&mut s.blocks);
    s.data
        .extend_from_slice(&(table.len() as u32).to_be_bytes());
    for (offset, len) in &table {
        s.data.extend_from_slice(&offset.to_be_bytes());
        s.data.extend_from_slice(&len.to_be_bytes());
    }
    s.data.extend_from_slice(&2u32.to_be_bytes());
    s.data.extend_from_slice(&[0; 16]);
    let index_len = s.data.len() as u32 - index_offset;
    if u32::try_from(s.data.len()).is_err() {
        return Err(Error::io("writing the Bom")(std::io::Error::other(
            "Bom over 4 GiB",
        )));
    }

    let non_empty = table.iter().filter(|(o, l)| (*o, *l) != (0, 0)).count() as u32;
    let mut header = Vec::with_capacity(32);
    header.extend_from_slice(b"BOMStore");
    for v in [1, non_empty, index_offset, index_len, vars_offset, vars_len] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    s.data[..header.len()].copy_from_slice(&header);
    Ok(s.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_TYPE_ARM64: u32 = 0x0100_000c;

    #[test]
    fn cksum_matches_posix() {
        // `printf 'hello\n' | cksum` and `printf '' | cksum`.
        assert_eq!(cksum(b"hello\n"), 3_015_617_425);
        assert_eq!(cksum(b""), 4_294_967_295);
    }

    #[test]
    fn thin_little_endian_macho_has_its_native_cpu_type() {
        let mut v = vec![0xcf, 0xfa, 0xed, 0xfe];
        v.extend_from_slice(&CPU_TYPE_ARM64.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&[0; 20]);
        let (kind, arches) = mach_arches(&v).unwrap();
        assert_eq!(kind, MachKind::Thin);
        assert_eq!(arches[0].cpu_type, CPU_TYPE_ARM64);
        assert_eq!(arches[0].size as usize, v.len());
    }

    #[test]
    fn java_class_and_truncated_fat_headers_are_not_macho() {
        assert!(mach_arches(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 0x41]).is_none());
        let mut fat = vec![0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 1];
        fat.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0x10, 0]);
        assert!(mach_arches(&fat).is_none(), "slice past the end");
    }
}
