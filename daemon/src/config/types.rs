//! Small value types of the schema: a value that is wrong on its own fails while it is
//! deserialised, so serde names its field; rules between fields stay in `validate`.

use std::fmt;
use std::net::IpAddr;

use super::Secret;
use serde::{Deserialize, Deserializer, Serialize};

/// A TCP port to listen on: 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(pub(super) u16);

impl Port {
    pub fn new(port: u16) -> Result<Port, String> {
        if port == 0 {
            return Err("must be between 1 and 65535".into());
        }
        Ok(Port(port))
    }
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// The address the server listens on: an IP address, not a host name.
// Not `Copy`, so that callers written for the `String` it replaced (`.clone()`) stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ListenHost(pub(super) IpAddr);

impl ListenHost {
    pub fn parse(text: &str) -> Result<ListenHost, String> {
        text.parse()
            .map(ListenHost)
            .map_err(|_| format!("`{text}` is not an IP address"))
    }
    pub const fn get(&self) -> IpAddr {
        self.0
    }
}

impl Default for ListenHost {
    /// Every address: a node behind a load balancer.
    fn default() -> Self {
        ListenHost(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

impl<'de> Deserialize<'de> for ListenHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ListenHost::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ListenHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A count or a number of time units that must be at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AtLeastOne(pub(super) u32);

impl AtLeastOne {
    pub fn new(n: u32) -> Result<AtLeastOne, String> {
        if n == 0 {
            return Err("must be at least 1".into());
        }
        Ok(AtLeastOne(n))
    }
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// `package.expiry_days`: 1 to 365.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ExpiryDays(pub(super) u32);

impl ExpiryDays {
    pub fn new(days: u32) -> Result<ExpiryDays, String> {
        if days == 0 || days > 365 {
            return Err("must be between 1 and 365".into());
        }
        Ok(ExpiryDays(days))
    }
    pub const fn get(self) -> u32 {
        self.0
    }
}

// The plain number first (serde's own error for a negative or too large one), then the rule.
impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Port::new(u16::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for AtLeastOne {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AtLeastOne::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ExpiryDays {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ExpiryDays::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for AtLeastOne {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ExpiryDays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// Compared with plain numbers, as the fields were before they had a type.
impl PartialEq<u16> for Port {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl PartialEq<u32> for AtLeastOne {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl PartialEq<u32> for ExpiryDays {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl From<Port> for u16 {
    fn from(p: Port) -> u16 {
        p.0
    }
}

impl From<AtLeastOne> for u64 {
    fn from(n: AtLeastOne) -> u64 {
        u64::from(n.0)
    }
}

impl From<ExpiryDays> for u64 {
    fn from(d: ExpiryDays) -> u64 {
        u64::from(d.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn values_out_of_range_fail_with_todays_texts() {
        assert_eq!(yaml::<Port>("8768").unwrap().get(), 8768);
        assert!(
            yaml::<Port>("0")
                .unwrap_err()
                .contains("must be between 1 and 65535")
        );
        assert!(yaml::<Port>("70000").unwrap_err().contains("70000"));
        assert_eq!(yaml::<AtLeastOne>("1").unwrap().get(), 1);
        assert!(
            yaml::<AtLeastOne>("0")
                .unwrap_err()
                .contains("must be at least 1")
        );
        assert_eq!(yaml::<ExpiryDays>("365").unwrap().get(), 365);
        for bad in ["0", "366"] {
            let err = yaml::<ExpiryDays>(bad).unwrap_err();
            assert!(err.contains("must be between 1 and 365"), "{err}");
        }
        assert_eq!(yaml::<ListenHost>("\"::1\"").unwrap().to_string(), "::1");
        let err = yaml::<ListenHost>("fleet.example").unwrap_err();
        assert!(
            err.contains("`fleet.example` is not an IP address"),
            "{err}"
        );
        assert_eq!(
            serde_yaml::to_string(&ListenHost::default())
                .unwrap()
                .trim(),
            "0.0.0.0"
        );
        // Written back as plain numbers.
        assert_eq!(serde_yaml::to_string(&Port(80)).unwrap().trim(), "80");
    }
}

/// A duration in seconds (fractions allowed), finite and at least `MIN` seconds: the heartbeat
/// interval (`Seconds<1>`) and timeout (`Seconds<3>`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Seconds<const MIN: u32>(pub(super) f64);

impl<const MIN: u32> Seconds<MIN> {
    pub fn new(seconds: f64) -> Result<Seconds<MIN>, String> {
        if !seconds.is_finite() || seconds < f64::from(MIN) {
            return Err(format!("{seconds} s is too short: at least {MIN} s"));
        }
        Ok(Seconds(seconds))
    }
    pub const fn get(self) -> f64 {
        self.0
    }
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.0)
    }
}

impl<'de, const MIN: u32> Deserialize<'de> for Seconds<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Seconds::new(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl<const MIN: u32> fmt::Display for Seconds<MIN> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A string of the schema that must pass `check` on its own: it derefs to `str`, serialises as
/// the string, and a value that fails is refused while it is deserialised (serde names its field).
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub(super) String);

        impl $name {
            pub fn new(text: impl Into<String>) -> Result<$name, String> {
                let text = text.into();
                let check: fn(&str) -> Result<(), String> = $check;
                check(&text)?;
                Ok($name(text))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A secret of the schema that must pass `check` on its own: a [`Secret`] (never shown by
/// `Debug` or `Display`) that is refused while it is deserialised when it fails.
macro_rules! checked_secret {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub(super) Secret);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<$name, String> {
                let value = Secret::new(value);
                let check: fn(&str) -> Result<(), String> = $check;
                check(value.expose())?;
                Ok($name(value))
            }
        }

        impl std::ops::Deref for $name {
            type Target = Secret;
            fn deref(&self) -> &Secret {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

checked_text!(
    /// `cluster.node_name`: the stub library's node-name rule.
    NodeName,
    fleet_installer_stub::names::check_node_name
);

checked_text!(
    /// `cluster.key_prefix`: non-empty, no whitespace.
    KeyPrefix,
    |s| {
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err("must be non-empty and without spaces".into());
        }
        Ok(())
    }
);

checked_text!(
    /// `auth.web_username`: not empty.
    UserName,
    |s| {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(())
    }
);

checked_text!(
    /// `auth.api_key_sha256`: 64 hex digits.
    Sha256Hex,
    |s| {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("must be 64 hex digits (the SHA-256 of the API key)".into());
        }
        Ok(())
    }
);

checked_text!(
    /// `auth.session_public_key`: `ed25519:<64 hex>`.
    PublicKey,
    |s| super::schema::parse_public_key(s).map(|_| ())
);

checked_secret!(
    /// `auth.web_password_hash`: an Argon2 PHC string.
    PasswordHash,
    |s| {
        if !super::schema::is_password_hash(s) {
            return Err(
                "is not an Argon2 hash (make one with `fleet-server config hash-password`)".into(),
            );
        }
        Ok(())
    }
);

checked_secret!(
    /// `auth.api_key`: at least 16 characters.
    ApiKey,
    |s| {
        if s.len() < 16 {
            return Err("is too short: at least 16 characters".into());
        }
        Ok(())
    }
);

impl Sha256Hex {
    /// The hex form of a SHA-256 digest (always 64 hex digits).
    pub fn of_digest(digest: [u8; 32]) -> Sha256Hex {
        Sha256Hex(hex::encode(digest))
    }
}
