//! The cryptographic primitives in one place: Argon2id password hashes, random tokens,
//! constant-time comparison, SHA-256 digests, and the Ed25519 session signatures and login-token
//! MACs of issue 14 (the HTTP layer and the backends use them; none of them does I/O).

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use rand::Rng;
use ring::signature::{self, KeyPair};
use sha2::{Digest, Sha256};

use crate::config::{Loaded, PUBLIC_KEY_PREFIX};

/// Hashes a password as an Argon2id PHC string (`$argon2id$v=19$…`).
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::rng().random();
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        // Default parameters and a 16-byte salt are always accepted.
        .map(|h| h.to_string())
        .unwrap_or_default()
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

/// Lowercase hex of the SHA-256 of `data` (session-id digests, package and password digests).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// Sessions a node cannot mint, and login tokens the server issued (issue 14).
//
// At login the node that checked the password derives an Ed25519 key from it (Argon2id over
// the password, salted with a digest of the stored PHC hash, so the seed is not the hash
// every node holds) and signs the session: user, session-id digest, CSRF token, creation and
// absolute expiry. Every node verifies with the public key in its configuration
// (`auth.session_public_key`); a record written into the session store without the
// password's key is refused. The login form's token is an HMAC of a random nonce and an
// expiry under a key every node derives alike, so any node behind a load balancer accepts it.

/// A signed session ends this long after login however busy it is (idle sessions end
/// earlier, at `sessions.timeout_minutes`).
pub const SESSION_MAX_MS: u64 = 12 * 3600 * 1000;
/// A login form's token is good this long.
pub const LOGIN_TOKEN_MS: u64 = 10 * 60 * 1000;
/// Clock difference between nodes that a login token may show (issued on one, checked on
/// another).
const SKEW_MS: u64 = 60 * 1000;

/// The Ed25519 key pair the password `password` with stored hash `phc_hash` gives. CPU-bound
/// (one Argon2id run): call it off the async workers.
pub fn derive_key(password: &str, phc_hash: &str) -> Result<signature::Ed25519KeyPair, String> {
    let mut salt_input = b"fleet-server session signing key v1\0".to_vec();
    salt_input.extend_from_slice(phc_hash.as_bytes());
    let salt = Sha256::digest(&salt_input);
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), &salt[..16], &mut seed[..])
        .map_err(|e| format!("deriving the session key: {e}"))?;
    signature::Ed25519KeyPair::from_seed_unchecked(&seed[..])
        .map_err(|e| format!("deriving the session key: {e}"))
}

/// `auth.session_public_key` for a key pair: `ed25519:<64 hex>`.
pub fn public_key_text(key: &signature::Ed25519KeyPair) -> String {
    format!(
        "{PUBLIC_KEY_PREFIX}{}",
        hex::encode(key.public_key().as_ref())
    )
}

/// The hash and the public key of a new password (`config hash-password`, `config init`,
/// a plain `auth.web_password` at load).
pub fn credentials_for(password: &str) -> Result<(String, String), String> {
    let hash = hash_password(password);
    let key = derive_key(password, &hash)?;
    Ok((hash, public_key_text(&key)))
}

/// Replaces a plain `auth.web_password` by its hash and session public key, so the plain text
/// is not kept (nor copied into node packages), then a plain `auth.api_key` by its digest; the
/// daemon calls it right after reading the file (and after enrollment). Warns in
/// `loaded.warnings` about what is still stored in plain text or missing.
pub fn secure(loaded: &mut Loaded) {
    let auth = &mut loaded.config.auth;
    if let Some(plain) = auth.web_password.take() {
        if auth.web_password_hash.is_none() {
            // The hash and the public key of the session key, both from the plain text.
            match credentials_for(plain.expose()) {
                Ok((hash, public)) => match (
                    crate::config::PasswordHash::new(hash),
                    crate::config::PublicKey::new(public),
                ) {
                    (Ok(hash), Ok(public)) => {
                        auth.web_password_hash = Some(hash);
                        auth.session_public_key = Some(public);
                    }
                    (Err(e), _) | (_, Err(e)) => loaded.warnings.push(e),
                },
                Err(e) => loaded.warnings.push(e),
            }
        }
        loaded.warnings.push(
            "auth.web_password is stored in plain text: replace it with the auth.web_password_hash and auth.session_public_key lines `fleet-server config hash-password` prints".into(),
        );
    }
    if auth.web_password_hash.is_some() && auth.session_public_key.is_none() {
        loaded.warnings.push(
            "auth.session_public_key is missing: dashboard logins are refused until it is set (`fleet-server config hash-password` prints it with the hash)".into(),
        );
    }
    loaded.hash_plain_api_key();
}

/// What a session's signature covers. Fields are separated by NUL, which none may hold.
pub fn session_message(
    sid_digest: &str,
    user: &str,
    csrf: &str,
    created_ms: u64,
    expires_ms: u64,
) -> Vec<u8> {
    format!("fleet-session-v1\0{sid_digest}\0{user}\0{csrf}\0{created_ms}\0{expires_ms}")
        .into_bytes()
}

/// Signs `message`: hex of the 64-byte signature.
pub fn sign(key: &signature::Ed25519KeyPair, message: &[u8]) -> String {
    hex::encode(key.sign(message).as_ref())
}

/// True when `sig_hex` is `public_key`'s signature over `message`.
pub fn verify(public_key: &[u8; 32], message: &[u8], sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(message, &sig)
        .is_ok()
}

/// The key of login tokens: derived from the password hash, so every node of the cluster has
/// the same one and a stranger has none; a node without a password uses a random one of its
/// own (no login can succeed there anyway).
fn login_token_key(phc_hash: Option<&str>) -> ring::hmac::Key {
    static RANDOM: OnceLock<[u8; 32]> = OnceLock::new();
    let material: Vec<u8> = match phc_hash {
        Some(h) => {
            let mut m = b"fleet-server login token key v1\0".to_vec();
            m.extend_from_slice(h.as_bytes());
            Sha256::digest(&m).to_vec()
        }
        None => RANDOM
            .get_or_init(|| {
                let mut k = [0u8; 32];
                rand::Rng::fill(&mut rand::rng(), &mut k[..]);
                k
            })
            .to_vec(),
    };
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &material)
}

/// A new login token: `<nonce hex>.<expiry ms>.<hmac hex>`.
pub fn issue_login_token(phc_hash: Option<&str>, now_ms: u64) -> String {
    let body = format!("{}.{}", random_hex(16), now_ms + LOGIN_TOKEN_MS);
    let tag = ring::hmac::sign(&login_token_key(phc_hash), body.as_bytes());
    format!("{body}.{}", hex::encode(tag.as_ref()))
}

/// True when `token` is one this cluster issued and it has not expired (nor claims an expiry
/// further away than any token issued now could).
pub fn check_login_token(phc_hash: Option<&str>, token: &str, now_ms: u64) -> bool {
    let Some((body, tag_hex)) = token.rsplit_once('.') else {
        return false;
    };
    let Some((nonce, expiry)) = body.split_once('.') else {
        return false;
    };
    if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let (Ok(expiry), Ok(tag)) = (expiry.parse::<u64>(), hex::decode(tag_hex)) else {
        return false;
    };
    // Constant-time comparison inside ring.
    if ring::hmac::verify(&login_token_key(phc_hash), body.as_bytes(), &tag).is_err() {
        return false;
    }
    now_ms <= expiry && expiry <= now_ms + LOGIN_TOKEN_MS + SKEW_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{is_password_hash, parse_public_key};

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

    #[test]
    fn sha256_hex_is_the_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_session_signed_with_the_passwords_key_verifies_and_nothing_else() {
        let (hash, public) = credentials_for("correct horse").unwrap();
        let pk = parse_public_key(&public).unwrap();
        let key = derive_key("correct horse", &hash).unwrap();
        let msg = session_message("d1", "admin", "c", 1, 2);
        let sig = sign(&key, &msg);
        assert!(verify(&pk, &msg, &sig));
        assert!(!verify(
            &pk,
            &session_message("d2", "admin", "c", 1, 2),
            &sig
        ));
        assert!(!verify(
            &pk,
            &session_message("d1", "admin", "c", 1, 3),
            &sig
        ));
        let wrong = derive_key("wrong horse", &hash).unwrap();
        assert!(!verify(&pk, &msg, &sign(&wrong, &msg)));
        assert!(!verify(&pk, &msg, "zz"));
        // The seed is not the stored hash's output: the hash alone gives no signing key.
        assert!(!hash.contains(&hex::encode(key.public_key().as_ref())));
        assert!(parse_public_key("ed25519:00").is_err());
        assert!(parse_public_key(&public[8..]).is_err());
    }

    #[test]
    fn login_tokens_are_the_servers_and_expire() {
        let h = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA");
        let t = issue_login_token(h, 1_000_000);
        assert!(check_login_token(h, &t, 1_000_000));
        assert!(check_login_token(h, &t, 1_000_000 + LOGIN_TOKEN_MS));
        assert!(
            !check_login_token(h, &t, 1_000_001 + LOGIN_TOKEN_MS),
            "expired"
        );
        assert!(
            !check_login_token(Some("other"), &t, 1_000_000),
            "another key"
        );
        let planted = format!(
            "{}.{}.{}",
            "a".repeat(32),
            1_000_000 + 60_000,
            "00".repeat(32)
        );
        assert!(!check_login_token(h, &planted, 1_000_000));
        assert!(!check_login_token(h, "anything", 1_000_000));
        // A token far in the future (a forged expiry) is refused even with a valid tag.
        let far = issue_login_token(h, 10_000_000);
        assert!(!check_login_token(h, &far, 1_000_000));
    }

    #[test]
    fn the_example_configuration_keys_match_its_password() {
        let c = crate::config::Config::parse(
            include_str!("../../config_cluster_example.yaml"),
            std::path::Path::new("config_cluster_example.yaml"),
        )
        .unwrap();
        let hash = c.auth.web_password_hash.unwrap();
        let key = derive_key("change-me-please", hash.expose()).unwrap();
        assert_eq!(
            c.auth.session_public_key.as_deref(),
            Some(public_key_text(&key).as_str())
        );
    }
}
