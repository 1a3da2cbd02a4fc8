//! The dashboard's credentials: Argon2id password hashes (PHC strings), verification in constant
//! time, random tokens, and the login-attempt limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use rand::Rng;

/// Failed logins allowed per client and per user within `LOGIN_WINDOW`; the next is refused.
pub const LOGIN_ATTEMPTS: u32 = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

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

/// Counts failed logins per key (a client address, a user name) in a sliding window.
/// Kept per node: a client spreading attempts over N nodes gets N times the budget, which the
/// window keeps small; sessions themselves are shared.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    /// True when `key` has used up its attempts.
    pub fn is_blocked(&self, key: &str) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(key) else {
            return false;
        };
        list.retain(|t| t.elapsed() < LOGIN_WINDOW);
        list.len() as u32 >= LOGIN_ATTEMPTS
    }

    /// Records a failure for `key`.
    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the map: forget the quietest keys when an attacker sprays addresses.
        if map.len() > 10_000 {
            map.retain(|_, v| v.iter().any(|t| t.elapsed() < LOGIN_WINDOW));
        }
        map.entry(key.to_string()).or_default().push(Instant::now());
    }

    /// Forgets `key`'s failures after a good login.
    pub fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
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
    fn the_sixth_attempt_is_blocked() {
        let l = LoginLimiter::default();
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(!l.is_blocked("ip:192.0.2.1"));
            l.fail("ip:192.0.2.1");
        }
        assert!(l.is_blocked("ip:192.0.2.1"));
        assert!(!l.is_blocked("ip:192.0.2.2"));
        l.clear("ip:192.0.2.1");
        assert!(!l.is_blocked("ip:192.0.2.1"));
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(32));
    }
}
