//! Package build benchmark (`cargo bench -p fleet-package`, `make bench`):
//! a pkg with a 10 MB daemon, cold (no cache) and warm (Payload and Bom
//! cached), beside copying a file of the package's size and `gzip -6` of the
//! payload alone; then, warm, the bare component, the product archive and the
//! signed product archive (a throwaway identity made with openssl), each
//! against the unsigned component measured in the same run. Prints figures;
//! asserts nothing.

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_package::{
    ArtifactCache, NodeFiles, PkgBuilder, PkgFormat, PkgOptions, PkgRoot, SigningIdentity,
    SigningOptions, Target, Template, build_bundle_cached, write_atomically,
};

const MB: usize = 1 << 20;

/// Half random (incompressible), half repetitive text-like bytes, as binaries are.
fn mixed(len: usize, magic: [u8; 4], mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&magic);
    while v.len() < len / 2 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    let words: [&[u8]; 8] = [
        b"__TEXT",
        b"_main",
        b"fleet_server::cluster::",
        b"core::fmt::",
        b"\0\0\0\0",
        b"heartbeat",
        b"register",
        b"\x48\x89\xe5\x41\x57",
    ];
    let mut i = 0usize;
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(words[(seed as usize + i) % words.len()]);
        v.push((seed >> 40) as u8 & 0x3f);
        i += 1;
    }
    v.truncate(len);
    v
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    let dir = tempfile::tempdir().expect("tempdir");
    let macho = [0xcf, 0xfa, 0xed, 0xfe];
    let template = Template::from_bytes(
        Target::MacOs,
        mixed(10 * MB, macho, 0x9e37_79b9_7f4a_7c15),
        mixed(MB, macho, 42),
        false,
    )
    .expect("template");
    let node = NodeFiles {
        sealed: mixed(4096, *b"FSC1", 7),
        key: Some(vec![1; 32]),
    };
    let opts = PkgOptions::default();
    let builder = PkgBuilder::new(template.clone(), PkgRoot::embedded()).expect("builder");
    let out = dir.path().join("FleetServerClusterNode.pkg");

    let build_and_write = |b: &PkgBuilder| {
        let pkg = b.build_pkg(&node, &opts).expect("build");
        write_atomically(&out, &pkg, true).expect("write");
        pkg.len()
    };

    let cold = time(3, || {
        let b = PkgBuilder::new(template.clone(), PkgRoot::embedded())
            .expect("builder")
            .with_cache(Arc::new(ArtifactCache::new()));
        build_and_write(&b)
    });
    builder.prepare().expect("prepare");
    let warm = time(7, || build_and_write(&builder));
    let pkg_len = std::fs::metadata(&out).expect("pkg").len();
    let warm_build_only = time(7, || builder.build_pkg(&node, &opts).expect("build").len());
    let pkg = builder.build_pkg(&node, &opts).expect("build");
    let write_only = time(7, || write_atomically(&out, &pkg, true).expect("write"));

    let copy_src = dir.path().join("copy-src");
    std::fs::write(&copy_src, mixed(pkg_len as usize, macho, 3)).expect("copy src");
    let copy_dst = dir.path().join("copy-dst");
    let copy = time(7, || {
        let _ = std::fs::remove_file(&copy_dst);
        std::fs::copy(&copy_src, &copy_dst).expect("copy")
    });
    // The same copy made durable, as write_atomically does (fsync).
    let copy_sync = time(7, || {
        let _ = std::fs::remove_file(&copy_dst);
        std::fs::copy(&copy_src, &copy_dst).expect("copy");
        std::fs::File::open(&copy_dst)
            .and_then(|f| f.sync_all())
            .expect("fsync")
    });

    // The payload's files, uncompressed, through gzip -6.
    let raw = dir.path().join("payload-files");
    let root = PkgRoot::embedded();
    let mut files = template.fleet_server().to_vec();
    files.extend_from_slice(&root.uninstall_sh);
    files.extend_from_slice(&root.launchd_plist);
    files.extend_from_slice(&root.newsyslog_conf);
    std::fs::write(&raw, &files).expect("payload files");
    let gzip = gzip6(&raw);

    println!("fleet-package build benchmark (10 MB daemon, 1 MB stub; medians)");
    println!(
        "  package size        {:>9.1} MB",
        pkg_len as f64 / MB as f64
    );
    println!("  cold build (no cache) {:>7.1} ms", ms(cold));
    println!("  warm build (cached)   {:>7.1} ms", ms(warm));
    println!("    of which build      {:>7.1} ms", ms(warm_build_only));
    println!("    of which write+fsync{:>7.1} ms", ms(write_only));
    println!(
        "  copy of {:.1} MB        {:>7.1} ms",
        pkg_len as f64 / MB as f64,
        ms(copy)
    );
    match gzip {
        Some(g) => {
            println!("  gzip -6 of payload    {:>7.1} ms", ms(g));
            println!(
                "  cold / gzip -6        {:>7.2}x (target <= 1.5x)",
                cold.as_secs_f64() / g.as_secs_f64()
            );
        }
        None => println!("  gzip -6 of payload       n/a (gzip not found)"),
    }
    println!("  copy + fsync          {:>7.1} ms", ms(copy_sync));
    println!(
        "  warm / copy           {:>7.2}x (target <= 2x)",
        warm.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "  warm / (copy + fsync) {:>7.2}x",
        warm.as_secs_f64() / copy_sync.as_secs_f64()
    );
    println!("  the guide's own build: 10 to 30 s");

    // The Linux bundle: cold (a fresh cache each time) against warm (the binaries' compressed
    // data cached), built in memory, with the same 10 MB daemon and 1 MB stub.
    let elf = [0x7f, b'E', b'L', b'F'];
    let linux = Template::from_bytes(
        Target::LinuxX86_64,
        mixed(10 * MB, elf, 0x9e37_79b9_7f4a_7c15),
        mixed(MB, elf, 42),
        false,
    )
    .expect("linux template");
    let bundle_cold = time(3, || {
        build_bundle_cached(&linux, &root, "node2", &node, &ArtifactCache::new())
            .expect("bundle")
            .len()
    });
    let bundle_cache = ArtifactCache::new();
    build_bundle_cached(&linux, &root, "node2", &node, &bundle_cache).expect("bundle");
    let bundle_warm = time(7, || {
        build_bundle_cached(&linux, &root, "node2", &node, &bundle_cache)
            .expect("bundle")
            .len()
    });
    println!("  bundle, cold          {:>7.1} ms", ms(bundle_cold));
    println!(
        "  bundle, warm (cached) {:>7.1} ms ({:.3}x of cold)",
        ms(bundle_warm),
        bundle_warm.as_secs_f64() / bundle_cold.as_secs_f64()
    );

    // Product archive and signed product archive beside the bare component, warm, written.
    let identity = throwaway_identity(dir.path());
    let component = PkgOptions {
        format: PkgFormat::Component,
        ..PkgOptions::default()
    };
    let write = |pkg: Vec<u8>| {
        write_atomically(&out, &pkg, true).expect("write");
        pkg.len()
    };
    // Interleaved rounds, so that drift (page cache, other load) hits all three alike.
    let mut runs: [Vec<Duration>; 6] = Default::default();
    for _ in 0..21 {
        let builds: [&dyn Fn() -> Vec<u8>; 3] = [
            &|| builder.build_pkg(&node, &component).expect("build"),
            &|| builder.build_pkg(&node, &opts).expect("build"),
            &|| {
                builder
                    .build_signed_pkg(&node, &opts, &identity)
                    .expect("signed build")
            },
        ];
        for (k, b) in builds.iter().enumerate() {
            let t = Instant::now();
            let pkg = black_box(b());
            runs[k + 3].push(t.elapsed());
            write(pkg);
            runs[k].push(t.elapsed());
        }
    }
    let [written_c, written_p, written_s, mem_c, mem_p, mem_s] = runs.map(median);
    println!(
        "warm builds (medians of 21 interleaved rounds; written = built + written + fsynced):"
    );
    for (what, written, mem) in [
        ("component (unsigned)  ", written_c, mem_c),
        ("product archive       ", written_p, mem_p),
        ("signed product archive", written_s, mem_s),
    ] {
        println!(
            "  {what} written {:>6.1} ms {:>5.2}x (target <= 1.2x)   in memory {:>6.2} ms {:>5.2}x",
            ms(written),
            written.as_secs_f64() / written_c.as_secs_f64(),
            ms(mem),
            mem.as_secs_f64() / mem_c.as_secs_f64(),
        );
    }
}

/// A CA and a Developer-ID-Installer-shaped leaf, made with openssl, as a p12.
fn throwaway_identity(dir: &Path) -> SigningIdentity {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the signed build (scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "extendedKeyUsage = critical,1.2.840.113635.100.4.13\n\
         1.2.840.113635.100.6.1.14 = critical,DER:05:00\n",
    )
    .expect("leaf.ext");
    openssl(&[
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
        "/CN=Bench Root CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=Developer ID Installer: Bench (BENCH00001)",
    ]);
    openssl(&[
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
    let password = dir.join("password");
    std::fs::write(&password, "bench-password\n").expect("password");
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    openssl(&[
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
        "file:password",
    ]);
    SigningIdentity::load(&dir.join("id.p12"), &password, &SigningOptions::default())
        .expect("the throwaway identity loads")
}

fn gzip6(path: &Path) -> Option<Duration> {
    let runs: Option<Vec<Duration>> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let ok = Command::new("gzip")
                .args(["-6", "-c"])
                .arg(path)
                .stdout(Stdio::null())
                .status()
                .ok()?
                .success();
            ok.then(|| t.elapsed())
        })
        .collect();
    runs.map(median)
}
