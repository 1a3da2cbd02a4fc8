//! The sealed format: round trips in both key modes, every single-byte change refused, each failure its own error.

use std::time::Instant;

use fleet_installer_stub::sealed::{FORMAT_VERSION, HEADER_LEN, KdfParams};
use fleet_installer_stub::{
    EthernetPolicy, FileKey, Header, KeyMode, KeySource, SealError, TargetLayout, open, seal,
};

use crate::common::{FAST_KDF, now, opts, payload};

#[test]
fn round_trip_key_file() {
    let o = opts(EthernetPolicy::AllowVirtual, TargetLayout::Linux);
    let k = FileKey::generate().unwrap();
    let s = seal(&payload(), &o, KeySource::KeyFile(&k)).unwrap();
    assert_eq!(s.key_file.as_deref(), Some(&k.as_bytes()[..]));
    let k2 = FileKey::from_bytes(s.key_file.as_ref().unwrap()).unwrap();
    let (h, p) = open(&s.blob, KeySource::KeyFile(&k2), now()).unwrap();
    assert_eq!(p, payload());
    assert_eq!(h, s.header);
    assert_eq!(h.version, FORMAT_VERSION);
    assert_eq!(h.key_mode, KeyMode::KeyFile);
    assert_eq!(h.ethernet, EthernetPolicy::AllowVirtual);
    assert_eq!(h.layout, TargetLayout::Linux);
    assert_eq!(h.kdf, None);
    assert_eq!((h.created_at, h.not_after), (o.created_at, o.not_after));
    // The body is encrypted: the secret is not in the blob.
    let needle = b"redis_password";
    assert!(!s.blob.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn round_trip_passphrase() {
    let o = opts(EthernetPolicy::Require, TargetLayout::Macos);
    let s = seal(&payload(), &o, KeySource::Passphrase(b"correct horse")).unwrap();
    assert!(s.key_file.is_none());
    let (h, p) = open(&s.blob, KeySource::Passphrase(b"correct horse"), now()).unwrap();
    assert_eq!(p, payload());
    assert_eq!(h.key_mode, KeyMode::Passphrase);
    assert_eq!(h.kdf, Some(FAST_KDF));
}

#[test]
fn round_trip_passphrase_default_costs() {
    let mut o = opts(EthernetPolicy::Require, TargetLayout::Macos);
    o.kdf = KdfParams::DEFAULT;
    let s = seal(&payload(), &o, KeySource::Passphrase(b"pw")).unwrap();
    let t = Instant::now();
    let (h, _) = open(&s.blob, KeySource::Passphrase(b"pw"), now()).unwrap();
    eprintln!(
        "argon2id default-cost open took {:?} (this build's profile)",
        t.elapsed()
    );
    assert_eq!(h.kdf, Some(KdfParams::DEFAULT));
}

#[test]
fn two_seals_differ() {
    let o = opts(EthernetPolicy::Require, TargetLayout::Macos);
    let k = FileKey::generate().unwrap();
    let a = seal(&payload(), &o, KeySource::KeyFile(&k)).unwrap();
    let b = seal(&payload(), &o, KeySource::KeyFile(&k)).unwrap();
    assert_ne!(a.header.package_id, b.header.package_id);
    assert_ne!(a.header.nonce, b.header.nonce);
}

/// Flips `mask` into each byte of the blob in turn; every result must be refused.
fn assert_every_flip_refused(blob: &[u8], key: KeySource<'_>, masks: &[u8]) -> usize {
    let mut checked = 0;
    for i in 0..blob.len() {
        for &m in masks {
            let mut b = blob.to_vec();
            b[i] ^= m;
            let r = open(&b, key, now());
            assert!(r.is_err(), "flip {m:#04x} at byte {i} was accepted");
            if i >= HEADER_LEN {
                // In the body only authentication can notice.
                assert!(
                    matches!(r, Err(SealError::Tampered)),
                    "byte {i}: {:?}",
                    r.err()
                );
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_byte_flip_refused_key_file() {
    let k = FileKey::generate().unwrap();
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Require, TargetLayout::Macos),
        KeySource::KeyFile(&k),
    )
    .unwrap();
    let masks = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff];
    let n = assert_every_flip_refused(&s.blob, KeySource::KeyFile(&k), &masks);
    assert_eq!(n, s.blob.len() * masks.len());
}

#[test]
fn every_byte_flip_refused_passphrase() {
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Skip, TargetLayout::Linux),
        KeySource::Passphrase(b"pw"),
    )
    .unwrap();
    assert_every_flip_refused(&s.blob, KeySource::Passphrase(b"pw"), &[0x01, 0x80]);
}

fn key_file_blob() -> (FileKey, Vec<u8>) {
    let k = FileKey::generate().unwrap();
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Require, TargetLayout::Macos),
        KeySource::KeyFile(&k),
    )
    .unwrap();
    (k, s.blob)
}

#[test]
fn wrong_key() {
    let (_, blob) = key_file_blob();
    let other = FileKey::generate().unwrap();
    assert!(matches!(
        open(&blob, KeySource::KeyFile(&other), now()),
        Err(SealError::WrongKey)
    ));
}

#[test]
fn wrong_passphrase() {
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Require, TargetLayout::Macos),
        KeySource::Passphrase(b"right"),
    )
    .unwrap();
    assert!(matches!(
        open(&s.blob, KeySource::Passphrase(b"wrong"), now()),
        Err(SealError::WrongKey)
    ));
    assert!(matches!(
        open(&s.blob, KeySource::Passphrase(b""), now()),
        Err(SealError::EmptyPassphrase)
    ));
}

#[test]
fn key_mode_mismatch() {
    let (k, blob) = key_file_blob();
    assert!(matches!(
        open(&blob, KeySource::Passphrase(b"x"), now()),
        Err(SealError::KeyModeMismatch {
            sealed: KeyMode::KeyFile,
            given: KeyMode::Passphrase
        })
    ));
    drop(k);
}

#[test]
fn truncated() {
    let (k, blob) = key_file_blob();
    for len in [0, 5, 9, HEADER_LEN - 1, HEADER_LEN, blob.len() - 1] {
        let r = open(&blob[..len], KeySource::KeyFile(&k), now());
        assert!(
            matches!(r, Err(SealError::Truncated { actual, .. }) if actual == len),
            "len {len}: {:?}",
            r.err()
        );
    }
    let mut long = blob.clone();
    long.push(0);
    assert!(matches!(
        open(&long, KeySource::KeyFile(&k), now()),
        Err(SealError::Malformed(_))
    ));
}

#[test]
fn expired() {
    let k = FileKey::generate().unwrap();
    let mut o = opts(EthernetPolicy::Require, TargetLayout::Macos);
    o.created_at = now() - 10 * 86_400;
    o.not_after = now() - 3 * 86_400;
    let s = seal(&payload(), &o, KeySource::KeyFile(&k)).unwrap();
    match open(&s.blob, KeySource::KeyFile(&k), now()) {
        Err(SealError::Expired { not_after }) => assert_eq!(not_after, o.not_after),
        other => panic!("{:?}", other.err()),
    }
    // The boundary: valid until the second before not_after.
    assert!(open(&s.blob, KeySource::KeyFile(&k), o.not_after - 1).is_ok());
    assert!(open(&s.blob, KeySource::KeyFile(&k), o.not_after).is_err());
}

#[test]
fn future_version() {
    let (k, mut blob) = key_file_blob();
    blob[8..10].copy_from_slice(&2u16.to_be_bytes());
    assert!(matches!(
        open(&blob, KeySource::KeyFile(&k), now()),
        Err(SealError::UnsupportedVersion(2))
    ));
    // Reported as such even when the rest would not parse as version 1.
    assert!(matches!(
        Header::parse(&blob[..12]),
        Err(SealError::UnsupportedVersion(2))
    ));
}

#[test]
fn bad_magic_and_bad_key_file() {
    let (_, mut blob) = key_file_blob();
    blob[0] = b'X';
    assert!(matches!(Header::parse(&blob), Err(SealError::BadMagic)));
    assert!(matches!(
        Header::parse(b"PK\x03\x04"),
        Err(SealError::BadMagic)
    ));
    assert!(matches!(
        FileKey::from_bytes(&[0u8; 31]),
        Err(SealError::BadKeyFile(31))
    ));
}

#[test]
fn header_parse_needs_no_key_and_displays_no_secret() {
    let (_, blob) = key_file_blob();
    let h = Header::parse(&blob).unwrap();
    let shown = h.to_string();
    assert!(shown.contains(&h.package_id_hex()));
    assert!(shown.contains("require"));
    assert!(shown.contains("macos"));
    assert!(!shown.contains("redis"));
}

#[test]
fn forged_kdf_costs_are_bounded() {
    let s = seal(
        &payload(),
        &opts(EthernetPolicy::Require, TargetLayout::Macos),
        KeySource::Passphrase(b"pw"),
    )
    .unwrap();
    let mut b = s.blob.clone();
    b[14..18].copy_from_slice(&u32::MAX.to_be_bytes()); // 4 TiB of memory
    let t = Instant::now();
    assert!(matches!(
        open(&b, KeySource::Passphrase(b"pw"), now()),
        Err(SealError::Malformed(_))
    ));
    assert!(t.elapsed().as_secs() < 5);
}
