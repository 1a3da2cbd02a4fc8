//! Our Bom writer against two readers that are not ours (apple-bom and
//! stuckliste's receipt reader) and against stuckliste's writer as an oracle,
//! field for field, for the same tree; where the writers disagree the test
//! pins what Apple's pkgbuild writes (numberOfPaths + 1, per-arch BomInfo).

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use stuckliste::receipt::{Metadata, Receipt, ReceiptBuilder};

const X86_64: u32 = 0x0100_0007;
const ARM64: u32 = 0x0100_000c;

/// A thin 64-bit little-endian Mach-O slice for `cpu`, `len` bytes.
fn thin_le(cpu: u32, len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0xcf, 0xfa, 0xed, 0xfe];
    v.extend_from_slice(&cpu.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend((v.len()..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)));
    v
}

/// A universal (fat) Mach-O with an x86_64 and an arm64 slice, as `lipo`
/// lays it out (big-endian header, slices page-aligned).
pub fn universal_macho(x86_len: usize, arm_len: usize) -> Vec<u8> {
    let x86 = thin_le(X86_64, x86_len, 1);
    let arm = thin_le(ARM64, arm_len, 2);
    let x86_at = 0x1000usize;
    let arm_at = (x86_at + x86.len()).div_ceil(0x4000) * 0x4000;
    let mut v = vec![0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2];
    for (cpu, sub, at, len, align) in [
        (X86_64, 3u32, x86_at, x86.len(), 12u32),
        (ARM64, 0, arm_at, arm.len(), 14),
    ] {
        for w in [cpu, sub, at as u32, len as u32, align] {
            v.extend_from_slice(&w.to_be_bytes());
        }
    }
    v.resize(x86_at, 0);
    v.extend_from_slice(&x86);
    v.resize(arm_at, 0);
    v.extend_from_slice(&arm);
    v
}

/// A thin big-endian Mach-O (the byte order both writers read alike).
fn thin_be(len: usize) -> Vec<u8> {
    let mut v = vec![0xfe, 0xed, 0xfa, 0xcf, 0x01, 0, 0, 0x0c, 0, 0, 0, 0];
    v.resize(len, 0x5a);
    v
}

fn staged_stuckliste_bom(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(fleet_package::FIXED_MTIME);
    let mut dirs = std::collections::BTreeSet::new();
    for (path, perm, data) in files {
        let p = root.join(path);
        let mut parent = p.parent();
        while let Some(d) = parent.filter(|d| d.starts_with(root) && *d != root) {
            dirs.insert(d.to_owned());
            parent = d.parent();
        }
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(*perm)).unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    for d in dirs.iter().rev().map(|d| d.as_path()).chain([root]) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        fs::File::open(d).unwrap().set_modified(mtime).unwrap();
    }
    let receipt = ReceiptBuilder::new()
        .override_uid(0)
        .override_gid(0)
        .create(root)
        .unwrap();
    let mut out = Cursor::new(Vec::new());
    receipt.write(&mut out).unwrap();
    out.into_inner()
}

/// Every field stuckliste's reader gives, per path.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    entry_type: String,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: u32,
    /// None for directories: their size is the building filesystem's.
    size: Option<u64>,
    checksum: u32,
    executable: Option<String>,
    arches: Vec<(u32, u32, u32, u32)>,
}

/// stuckliste names the root `./.` (so every path reads `././…`); Apple's
/// tools, apple-bom and we name it `.`. Its paths are mapped to ours here.
fn stuckliste_fields(bom: &[u8]) -> BTreeMap<String, Fields> {
    fields(bom)
        .into_iter()
        .map(|(p, f)| (p.strip_prefix("./").unwrap_or(&p).to_owned(), f))
        .collect()
}

fn fields(bom: &[u8]) -> BTreeMap<String, Fields> {
    let receipt = Receipt::read(bom).expect("stuckliste reads the Bom");
    receipt
        .entries()
        .unwrap()
        .into_iter()
        .map(|(path, m)| {
            let arches = match &m {
                Metadata::Executable(e) => e
                    .arches()
                    .iter()
                    .map(|a| (a.cpu_type(), a.cpu_sub_type(), a.size(), a.checksum()))
                    .collect(),
                _ => Vec::new(),
            };
            let is_dir = matches!(m, Metadata::Directory(_));
            (
                path.display().to_string(),
                Fields {
                    entry_type: format!("{:?}", m.entry_type()),
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: m.mtime(),
                    size: (!is_dir).then(|| m.size()),
                    checksum: m.checksum(),
                    executable: m.executable_type().map(|k| format!("{k:?}")),
                    arches,
                },
            )
        })
        .collect()
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// The named variables in file order, and each one's block.
fn vars(bom: &[u8]) -> Vec<(String, u32)> {
    let (off, _) = (be32(bom, 24) as usize, be32(bom, 28));
    let mut at = off + 4;
    (0..be32(bom, off))
        .map(|_| {
            let block = be32(bom, at);
            let n = bom[at + 4] as usize;
            let name = String::from_utf8(bom[at + 5..at + 5 + n].to_vec()).unwrap();
            at += 5 + n;
            (name, block)
        })
        .collect()
}

fn block(bom: &[u8], i: u32) -> &[u8] {
    let table = be32(bom, 16) as usize;
    let at = table + 4 + 8 * i as usize;
    let (off, len) = (be32(bom, at) as usize, be32(bom, at + 4) as usize);
    &bom[off..off + len]
}

/// BomInfo: (numberOfPaths, [(cpu type, bytes)]).
fn bom_info(bom: &[u8]) -> (u32, Vec<(u32, u32)>) {
    let i = vars(bom)
        .into_iter()
        .find(|(n, _)| n == "BomInfo")
        .unwrap()
        .1;
    let b = block(bom, i);
    assert_eq!(be32(b, 0), 1, "BomInfo version");
    let n = be32(b, 8) as usize;
    let entries = (0..n)
        .map(|k| (be32(b, 12 + 16 * k), be32(b, 12 + 16 * k + 8)))
        .collect();
    (be32(b, 4), entries)
}

fn tree_header(bom: &[u8], var: &str) -> (u32, u32) {
    let i = vars(bom).into_iter().find(|(n, _)| n == var).unwrap().1;
    let b = block(bom, i);
    assert_eq!(&b[..4], b"tree", "{var} is not a tree");
    (be32(b, 12), be32(b, 16)) // blockSize, pathCount
}

fn sample_files() -> (Vec<u8>, Vec<u8>) {
    (universal_macho(70_000, 50_000), thin_be(9_000))
}

#[test]
fn agrees_with_stuckliste_field_for_field() {
    let (daemon, helper) = sample_files();
    let files: [(&str, u32, &[u8]); 5] = [
        ("Library/FleetServer/bin/fleet-server", 0o755, &daemon),
        ("Library/FleetServer/bin/helper", 0o755, &helper),
        (
            "Library/FleetServer/bin/uninstall.sh",
            0o755,
            b"#!/bin/sh\nexit 0\n",
        ),
        (
            "Library/LaunchDaemons/com.fleet.server.cluster.plist",
            0o644,
            b"<plist/>\n",
        ),
        (
            "private/etc/newsyslog.d/fleet-server.conf",
            0o644,
            b"# conf\n",
        ),
    ];
    let ours = fleet_package::bom_of(&files).unwrap();
    let theirs = staged_stuckliste_bom(&files);
    let (a, b) = (fields(&ours), stuckliste_fields(&theirs));
    assert_eq!(a.len(), 13, "{:?}", a.keys().collect::<Vec<_>>());
    // stuckliste reads a fat header's arch entries as 16 bytes, but
    // mach-o/fat.h's `fat_arch` is 20 (it skips `align`): from the second
    // architecture on its values are garbage. Ours are pinned below against
    // the header this test wrote; the first architecture must agree.
    let first_arch_only = |m: &BTreeMap<String, Fields>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(p, f)| {
                let n = f.arches.len();
                let first = Fields {
                    entry_type: f.entry_type.clone(),
                    executable: f.executable.clone(),
                    arches: f.arches.iter().take(1).copied().collect(),
                    ..*f
                };
                (p.clone(), format!("{first:?} of {n} arches"))
            })
            .collect()
    };
    let (a_cmp, b_cmp) = (first_arch_only(&a), first_arch_only(&b));
    for (path, f) in &a_cmp {
        assert_eq!(
            Some(f),
            b_cmp.get(path),
            "{path}: our Bom and stuckliste's differ"
        );
    }
    assert_eq!(a.len(), b.len());
    let daemon_fields = &a["./Library/FleetServer/bin/fleet-server"];
    assert_eq!(daemon_fields.executable.as_deref(), Some("Fat"));
    assert_eq!(
        daemon_fields
            .arches
            .iter()
            .map(|x| (x.0, x.2))
            .collect::<Vec<_>>(),
        [(X86_64, 70_000), (ARM64, 50_000)]
    );

    // Same named variables, in mkbom's order; the same tree shapes.
    let names = |v: Vec<(String, u32)>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(
        names(vars(&ours)),
        ["BomInfo", "Paths", "HLIndex", "VIndex", "Size64"]
    );
    let mut theirs_sorted = names(vars(&theirs));
    theirs_sorted.sort();
    let mut ours_sorted = names(vars(&ours));
    ours_sorted.sort();
    assert_eq!(ours_sorted, theirs_sorted);
    for var in ["Paths", "HLIndex", "Size64"] {
        assert_eq!(tree_header(&ours, var), tree_header(&theirs, var), "{var}");
    }
    assert_eq!(tree_header(&ours, "Paths"), (4096, 13));

    // Where they disagree, pkgbuild's way: paths + 1, and the bytes of
    // each architecture's slices (cpu type 0: every other file's bytes).
    let (paths, info) = bom_info(&ours);
    let (their_paths, their_info) = bom_info(&theirs);
    assert_eq!(paths, 14);
    // stuckliste counts a path per architecture: 13 + 1 here, by chance.
    assert_eq!(their_paths, 14);
    // The thin big-endian helper is an arm64 slice of its whole size.
    let arm = 50_000 + helper.len() as u32;
    assert_eq!(info, [(0, 17 + 9 + 7), (X86_64, 70_000), (ARM64, arm)]);
    // (stuckliste's list carries its misread second architecture.)
    assert_eq!(their_info[..2], [(0, their_info[0].1), (X86_64, 70_000)]);
}

#[test]
fn apple_bom_reads_every_path_with_its_metadata() {
    let (daemon, _) = sample_files();
    let files: [(&str, u32, &[u8]); 2] =
        [("a/b/fleet-server", 0o755, &daemon), ("a/c", 0o600, b"x")];
    let ours = fleet_package::bom_of(&files).unwrap();
    let parsed = apple_bom::ParsedBom::parse(&ours).expect("apple-bom parses our Bom");
    let got: Vec<(String, u16, u32, u32, usize)> = parsed
        .paths()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.path().to_owned(),
                p.file_mode(),
                p.user_id(),
                p.group_id(),
                p.size(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (".".to_owned(), 0o40755, 0, 0, 0),
            ("./a".to_owned(), 0o40755, 0, 0, 0),
            ("./a/b".to_owned(), 0o40755, 0, 0, 0),
            ("./a/c".to_owned(), 0o100600, 0, 0, 1),
            (
                "./a/b/fleet-server".to_owned(),
                0o100755,
                0,
                0,
                daemon.len()
            ),
        ]
    );
}

#[test]
fn many_paths_split_into_leaves_under_a_branch() {
    let names: Vec<String> = (0..700).map(|i| format!("d{}/f{i:04}", i % 7)).collect();
    let files: Vec<(&str, u32, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), 0o644, n.as_bytes()))
        .collect();
    let ours = fleet_package::bom_of(&files).unwrap();
    let theirs = staged_stuckliste_bom(&files);
    assert_eq!(fields(&ours), stuckliste_fields(&theirs));
    assert_eq!(tree_header(&ours, "Paths"), (4096, 708));
    assert_eq!(tree_header(&theirs, "Paths"), (4096, 708));
    let parsed = apple_bom::ParsedBom::parse(&ours).expect("apple-bom parses a split tree");
    assert_eq!(parsed.paths().unwrap().len(), 708);
    assert_eq!(bom_info(&ours).0, 709, "pkgbuild: the path count plus one");
    assert_eq!(bom_info(&theirs).0, 708, "stuckliste: the path count");
}

#[test]
fn same_tree_same_bytes_and_no_staging() {
    let (daemon, helper) = sample_files();
    let files: [(&str, u32, &[u8]); 2] = [("x/d", 0o755, &daemon), ("x/h", 0o755, &helper)];
    let a = fleet_package::bom_of(&files).unwrap();
    let b = fleet_package::bom_of(&files).unwrap();
    assert!(a == b);
    // Nothing about the building machine: no uid/gid but 0, one fixed mtime.
    let f = fields(&a);
    assert!(f.values().all(|x| x.uid == 0 && x.gid == 0));
    assert!(
        f.values()
            .all(|x| u64::from(x.mtime) == fleet_package::FIXED_MTIME)
    );
}
