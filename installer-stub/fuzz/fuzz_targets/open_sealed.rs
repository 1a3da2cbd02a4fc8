//! Fuzz target: the unsealer on arbitrary bytes must return an error or a payload, never panic, hang or allocate wildly.
#![no_main]

use fleet_installer_stub::{FileKey, Header, KeySource, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    // A fixed key: the fuzzer cannot forge the tag, so this exercises every check
    // before authentication. Passphrase mode is left out on purpose: each attempt
    // would run Argon2id with whatever (bounded) costs the input claims.
    let key = FileKey::from_bytes(&[7u8; 32]).expect("32 bytes");
    let _ = open(data, KeySource::KeyFile(&key), 1_700_000_000);
});
