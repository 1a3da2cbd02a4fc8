//! The dashboard's credentials: Argon2id password hashes (PHC strings), verification in constant
//! time, random tokens and constant-time comparison. The login-attempt limiter is in `http::auth`.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use rand::Rng;

/// Shim: the login limiter moved to `http::auth`.
pub use crate::http::auth::{
    Busy, GLOBAL_LOGIN_FAILURES, GlobalPlace, LOGIN_ATTEMPTS, LOGIN_WINDOW, LoginLimiter,
    VERIFY_QUEUE, Verifier,
};

/// Hashes a password as an Argon2id PHC string (`$argon2id$v=19$…`).
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::rng().random();
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        // Default parameters and a 16-byte salt are always accepted.
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// True when `hash` looks like a PHC string this server can verify.
pub fn is_password_hash(hash: &str) -> bool {
    hash.starts_with("$argon2")
}

/// Checks a password against a PHC string; Argon2's comparison is constant-time.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A random token of `bytes` random bytes, hex-encoded (session ids, CSRF tokens).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify() {
        let h = hash_password("correct horse");
        assert!(is_password_hash(&h), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse"), "salted");
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(32));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
