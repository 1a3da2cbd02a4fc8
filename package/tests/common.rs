//! Helpers: fake templates, external tools (missing ones fail loudly), runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleet_package::{NodeFiles, PkgBuilder, PkgFormat, PkgOptions, PkgRoot, Target, Template};

/// A fake thin 64-bit Mach-O (little-endian magic cf fa ed fe), `len` bytes.
pub fn fake_macho(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0xcf, 0xfa, 0xed, 0xfe];
    v.extend((0..len.saturating_sub(4)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

/// A fake ELF, `len` bytes.
pub fn fake_elf(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0x7f, b'E', b'L', b'F'];
    v.extend((0..len.saturating_sub(4)).map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed)));
    v
}

pub fn mac_template() -> Template {
    Template::from_bytes(
        Target::MacOs,
        fake_macho(300_000, 1),
        fake_macho(40_000, 2),
        false,
    )
    .expect("fake Mach-O template")
}

pub fn node() -> NodeFiles {
    NodeFiles {
        sealed: b"FLEETSEAL\x01fake sealed configuration".to_vec(),
        key: Some(vec![7u8; 32]),
    }
}

/// The default `.pkg`: a product archive.
pub fn build_default_pkg() -> Vec<u8> {
    PkgBuilder::new(mac_template(), PkgRoot::embedded())
        .expect("builder")
        .build_pkg(&node(), &PkgOptions::default())
        .expect("build_pkg")
}

/// `--format component`: the bare component package.
pub fn build_component_pkg() -> Vec<u8> {
    let opts = PkgOptions {
        format: PkgFormat::Component,
        ..PkgOptions::default()
    };
    PkgBuilder::new(mac_template(), PkgRoot::embedded())
        .expect("builder")
        .build_pkg(&node(), &opts)
        .expect("build_pkg")
}

/// Where an expanded pkg's component is, as Installer finds it: the
/// Distribution's `pkg-ref` (`#name.pkg`) for a product archive, which must
/// declare both architectures (or Installer on Apple silicon runs the
/// scripts under Rosetta); the archive itself for a bare component.
pub fn component_dir(expanded: &Path) -> PathBuf {
    let dist = expanded.join("Distribution");
    if !dist.exists() {
        return expanded.to_owned();
    }
    let xml = std::fs::read_to_string(&dist).expect("read Distribution");
    let doc = roxmltree::Document::parse(&xml).expect("Distribution is XML");
    let arches = doc
        .descendants()
        .find(|n| n.has_tag_name("options"))
        .and_then(|n| n.attribute("hostArchitectures"))
        .unwrap_or("");
    assert!(
        arches.split(',').any(|a| a == "arm64"),
        "Distribution without hostArchitectures arm64: Rosetta would run the scripts"
    );
    let target = doc
        .descendants()
        .filter(|n| n.has_tag_name("pkg-ref"))
        .find_map(|n| n.text().map(str::trim).filter(|t| !t.is_empty()))
        .expect("a pkg-ref naming the component");
    let name = target
        .strip_prefix('#')
        .expect("a local pkg-ref (#name.pkg)");
    assert!(!name.contains('/') && name.ends_with(".pkg"), "{name}");
    expanded.join(name)
}

/// The path of an external tool; panics (test FAILS) when it is missing.
pub fn tool(name: &str) -> PathBuf {
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` not found on PATH: run scripts/install-deps.sh");
}

/// Runs `cmd`, asserting success; returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = output_retrying(cmd).unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cmd.output()`, retried while the program is "text file busy": a file this test process
/// just wrote can be held open for a moment by a child that another test thread is forking
/// (until that child's exec closes it). Bounded: 50 tries, 20 ms apart.
pub fn output_retrying(cmd: &mut Command) -> std::io::Result<Output> {
    let mut tries = 0;
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// Extracts the pkg's XAR members into `dir` with bsdtar.
pub fn bsdtar_extract(pkg: &Path, dir: &Path) {
    run(Command::new(tool("bsdtar"))
        .arg("-xf")
        .arg(pkg)
        .arg("-C")
        .arg(dir));
}
