//! `Secret`: a string that serialises as is but never shows in `Debug` or `Display`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string: serialised as is (the package builder must carry it), but `Debug` and
/// `Display` print `***`, so it cannot reach a log line or an error by accident.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret's value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A literal secret (tests and fixtures build sessions and configurations so).
impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}
