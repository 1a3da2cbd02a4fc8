//! Old paths (removed at the end of the layering work): the password and token primitives live
//! in `crypto`, the login limiter in `http::auth`.

pub use crate::crypto::{
    constant_time_eq, hash_password, is_password_hash, random_hex, verify_password,
};
pub use crate::http::auth::{
    Busy, GLOBAL_LOGIN_FAILURES, GlobalPlace, LOGIN_ATTEMPTS, LOGIN_WINDOW, LoginLimiter,
    VERIFY_QUEUE, Verifier,
};
