//! A bounded, fixed-seed mutation run over the unsealer that runs in every `cargo test` (the cargo-fuzz target in `fuzz/` goes further).

use fleet_installer_stub::{EthernetPolicy, FileKey, Header, KeySource, TargetLayout, open, seal};

use crate::common::{Rng, now, opts, payload};

const ROUNDS: usize = 20_000;

#[test]
fn random_mutations_never_open_and_never_panic() {
    let k = FileKey::generate().unwrap();
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Require, TargetLayout::Macos),
        KeySource::KeyFile(&k),
    )
    .unwrap();
    let mut rng = Rng(0x5EA1_ED00_F1EE_7001);
    for round in 0..ROUNDS {
        let mut b = s.blob.clone();
        // 1 to 4 edits: overwrite, insert, delete or truncate.
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    // Never a no-op: xor with a non-zero byte.
                    b[i] ^= 1 + rng.below(255) as u8;
                }
                1 => {
                    let i = rng.below(b.len() + 1);
                    b.insert(i, rng.next() as u8);
                }
                2 if !b.is_empty() => {
                    b.remove(rng.below(b.len()));
                }
                _ => b.truncate(rng.below(b.len() + 1)),
            }
        }
        if b == s.blob {
            continue; // An insert and a delete may cancel out.
        }
        let _ = Header::parse(&b);
        assert!(
            open(&b, KeySource::KeyFile(&k), now()).is_err(),
            "round {round}: a mutated blob opened"
        );
    }
}

#[test]
fn random_bytes_never_panic() {
    let k = FileKey::generate().unwrap();
    let mut rng = Rng(7);
    for _ in 0..2_000 {
        let len = rng.below(400);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half of them with a valid magic and version, to get past the first checks.
        if rng.below(2) == 0 && b.len() >= 10 {
            b[..8].copy_from_slice(b"FLEETSC1");
            b[8..10].copy_from_slice(&1u16.to_be_bytes());
        }
        assert!(open(&b, KeySource::KeyFile(&k), now()).is_err());
        assert!(open(&b, KeySource::Passphrase(b"pw"), now()).is_err());
    }
}
