//! A developer tool: seals a YAML file into a package directory (blob and key) for trying the stub by hand, until the daemon's builder does it.
//!
//! `cargo run -p fleet-installer-stub --example seal -- OUT_DIR NODE_NAME CONFIG_YAML [require|allow-virtual|skip] [macos|linux] [DAYS] [PASSPHRASE_FILE]`

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_installer_stub::sealed::{KdfParams, passphrase_from_file_content};
use fleet_installer_stub::{
    FileKey, KEY_FILE_NAME, KeySource, SEALED_FILE_NAME, SealOptions, SealedPayload, seal,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        return Err(
            "usage: seal OUT_DIR NODE_NAME CONFIG_YAML [POLICY] [LAYOUT] [DAYS] [PASSPHRASE_FILE]"
                .into(),
        );
    }
    let out = PathBuf::from(&a[0]);
    let payload = SealedPayload {
        node_name: a[1].clone(),
        config_yaml: std::fs::read_to_string(&a[2])?,
        files: Vec::new(),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let days: u64 = a.get(5).map_or(Ok(7), |d| d.parse())?;
    let opts = SealOptions {
        created_at: now,
        not_after: now + days * 86_400,
        ethernet: a.get(3).map_or("require", |s| s).parse()?,
        layout: a.get(4).map_or("macos", |s| s).parse()?,
        kdf: KdfParams::DEFAULT,
    };
    std::fs::create_dir_all(&out)?;
    let sealed = match a.get(6) {
        Some(p) => {
            let content = std::fs::read(p)?;
            seal(
                &payload,
                &opts,
                KeySource::Passphrase(passphrase_from_file_content(&content)?),
            )?
        }
        None => seal(&payload, &opts, KeySource::KeyFile(&FileKey::generate()?))?,
    };
    std::fs::write(out.join(SEALED_FILE_NAME), &sealed.blob)?;
    if let Some(k) = &sealed.key_file {
        std::fs::write(out.join(KEY_FILE_NAME), k)?;
    }
    println!("{}", sealed.header);
    Ok(())
}
