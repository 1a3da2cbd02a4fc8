//! The old home of the session signatures and login tokens: they live in `crypto` now.

pub use crate::crypto::{
    LOGIN_TOKEN_MS, PUBLIC_KEY_PREFIX, SESSION_MAX_MS, check_login_token, credentials_for,
    derive_key, issue_login_token, parse_public_key, public_key_text, session_message, sign,
    verify,
};
