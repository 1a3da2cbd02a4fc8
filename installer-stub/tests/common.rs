//! Shared helpers: packages sealed into temp dirs, running the stub binary, snapshots of a target root.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_installer_stub::sealed::KdfParams;
use fleet_installer_stub::{
    EthernetPolicy, FileKey, KeySource, SealOptions, SealedBlob, SealedPayload, TargetLayout, seal,
};

/// The stub binary cargo built for these tests.
pub const STUB: &str = env!("CARGO_BIN_EXE_fleet-installer-stub");

/// A secret that must never show up in any output.
pub const SECRET: &str = "redis-password-s3cr3t-do-not-print";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn payload() -> SealedPayload {
    SealedPayload {
        node_name: "server-02".into(),
        config_yaml: format!(
            "cluster:\n  enabled: true\n  backend: redis\n  redis_password: {SECRET}\n"
        ),
        files: Vec::new(),
    }
}

/// Cheap Argon2id costs: tests seal many blobs in a debug build.
pub const FAST_KDF: KdfParams = KdfParams {
    m_cost_kib: 8,
    t_cost: 1,
    p_cost: 1,
};

pub fn opts(policy: EthernetPolicy, layout: TargetLayout) -> SealOptions {
    let now = now();
    SealOptions {
        created_at: now - 60,
        not_after: now + 7 * 86_400,
        ethernet: policy,
        layout,
        kdf: FAST_KDF,
    }
}

/// A sealed package laid out in a temp dir as it ships: blob and (key-file mode) key.
#[derive(Debug)]
pub struct Package {
    pub dir: tempfile::TempDir,
    pub sealed: PathBuf,
    pub key: PathBuf,
    pub blob: SealedBlob,
}

impl Package {
    pub fn key_file(o: SealOptions) -> Self {
        let k = FileKey::generate().unwrap();
        Self::write(seal(&payload(), &o, KeySource::KeyFile(&k)).unwrap())
    }

    pub fn passphrase(o: SealOptions, pass: &str) -> Self {
        Self::write(seal(&payload(), &o, KeySource::Passphrase(pass.as_bytes())).unwrap())
    }

    pub fn write(blob: SealedBlob) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sealed = dir.path().join(fleet_installer_stub::SEALED_FILE_NAME);
        let key = dir.path().join(fleet_installer_stub::KEY_FILE_NAME);
        fs::write(&sealed, &blob.blob).unwrap();
        if let Some(k) = &blob.key_file {
            fs::write(&key, k).unwrap();
        }
        Self {
            dir,
            sealed,
            key,
            blob,
        }
    }

    /// Arguments pointing the stub at this package.
    pub fn args(&self) -> Vec<&OsStr> {
        vec![
            OsStr::new("--sealed"),
            self.sealed.as_os_str(),
            OsStr::new("--key"),
            self.key.as_os_str(),
        ]
    }
}

/// Runs the stub with `args` (and no inherited environment, as Installer does).
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

pub fn run_stub<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(STUB)
        .args(args)
        .env_clear()
        .output()
        .expect("run the stub")
}

/// Runs the stub with `--target-root root` before `args`.
pub fn run_in(root: &Path, args: &[&OsStr]) -> Output {
    let mut a: Vec<&OsStr> = vec![OsStr::new("--target-root"), root.as_os_str()];
    a.extend_from_slice(args);
    run_stub(&a)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, and that no output leaked the secret.
pub fn assert_exit(o: &Output, code: i32) {
    let (out, err) = (stdout(o), stderr(o));
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    assert!(
        !out.contains(SECRET) && !err.contains(SECRET),
        "secret printed\n{out}\n{err}"
    );
}

/// Every path under a root with its mode and (for files) content.
pub type Snapshot = BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>;

/// A snapshot of everything under `root`: "nothing written" means this is unchanged.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    // Bounded: a test root holds a handful of entries.
    let mut budget = 10_000;
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            budget -= 1;
            assert!(budget > 0, "runaway tree walk under {}", root.display());
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                Some(fs::read(&p).unwrap())
            } else {
                None
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.permissions().mode() & 0o7777, content));
        }
    }
    out
}

/// Splitmix64: a fixed-seed generator, so randomized tests are reproducible without a dependency.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}
