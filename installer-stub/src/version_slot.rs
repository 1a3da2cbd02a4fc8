//! The version stamped into the `fleet-server` binary: a fixed-size, marked slot that the
//! package builder and the upgrade check read out of a binary's bytes without running it.
//!
//! Layout ([`SLOT_LEN`] bytes): [`MARKER`], then [`FIELD_LEN`] bytes holding the version
//! (`[0-9A-Za-z.+-]`, 1 to [`FIELD_LEN`] - 1 bytes) padded with NULs, then [`END`]. The daemon
//! keeps one such slot in a `static` it reads at run time, so a slot patched in a copy of the
//! binary (same length, found by its bytes) is what that copy reports: tests make an "old"
//! build that way without compiling one. A universal macOS binary holds one slot per
//! architecture; they must agree.

/// Opens a slot. Code that searches for slots (this module) holds these bytes too, but not
/// followed by a valid field and [`END`], so such a copy is never taken for a slot.
pub const MARKER: [u8; 24] = *b"\0FLEET-SERVER-VERSION:\x01\0";
/// Closes a slot.
pub const END: [u8; 8] = *b"\0NOISREV";
/// Bytes of the version field.
pub const FIELD_LEN: usize = 32;
/// Bytes of a whole slot.
pub const SLOT_LEN: usize = MARKER.len() + FIELD_LEN + END.len();

/// The slot holding `version`, for a `static` in the daemon. Panics (at compile time, in a
/// const) on a version that does not fit.
pub const fn slot(version: &str) -> [u8; SLOT_LEN] {
    let v = version.as_bytes();
    assert!(
        !v.is_empty() && v.len() < FIELD_LEN,
        "the version must fit the slot"
    );
    let mut out = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        out[i] = MARKER[i];
        i += 1;
    }
    let mut j = 0;
    while j < v.len() {
        assert!(
            is_version_byte(v[j]),
            "the version has a byte the slot refuses"
        );
        out[MARKER.len() + j] = v[j];
        j += 1;
    }
    let mut k = 0;
    while k < END.len() {
        out[MARKER.len() + FIELD_LEN + k] = END[k];
        k += 1;
    }
    out
}

const fn is_version_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'+' || b == b'-'
}

/// Whether `s` is a version a slot may hold (and a package may name).
pub fn is_valid_version(s: &str) -> bool {
    !s.is_empty() && s.len() < FIELD_LEN && s.bytes().all(is_version_byte)
}

/// The version in one slot (`bytes` exactly [`SLOT_LEN`] long), if it is well formed.
pub fn parse_slot(bytes: &[u8]) -> Option<&str> {
    if bytes.len() != SLOT_LEN
        || bytes[..MARKER.len()] != MARKER
        || bytes[MARKER.len() + FIELD_LEN..] != END
    {
        return None;
    }
    let field = &bytes[MARKER.len()..MARKER.len() + FIELD_LEN];
    let len = field.iter().position(|&b| b == 0)?;
    if field[len..].iter().any(|&b| b != 0) {
        return None;
    }
    let v = std::str::from_utf8(&field[..len]).ok()?;
    is_valid_version(v).then_some(v)
}

/// Byte offsets of every well-formed slot in `binary`.
pub fn find_slots(binary: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = find(&binary[from..], &MARKER) {
        let at = from + i;
        if let Some(slot) = binary.get(at..at + SLOT_LEN)
            && parse_slot(slot).is_some()
        {
            found.push(at);
        }
        from = at + 1;
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // The marker opens with a NUL: jump between NULs instead of testing every offset.
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == needle[0]) {
        let at = from + i;
        if haystack.len() - at < needle.len() {
            return None;
        }
        if haystack[at..at + needle.len()] == *needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Why a binary's version cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// No slot at all: not a `fleet-server`, or one built before slots existed.
    #[error("it carries no version slot (not a fleet-server binary, or one too old to say)")]
    NoSlot,
    /// Slots that disagree (a universal binary whose halves are different builds).
    #[error("its version slots disagree ({0} and {1})")]
    Disagree(String, String),
}

/// The version `binary` (a `fleet-server`, thin or universal) reports.
pub fn version_of(binary: &[u8]) -> Result<String, VersionError> {
    let mut version: Option<&str> = None;
    for at in find_slots(binary) {
        let v = parse_slot(&binary[at..at + SLOT_LEN]).expect("find_slots checked it");
        match version {
            None => version = Some(v),
            Some(w) if w == v => {}
            Some(w) => return Err(VersionError::Disagree(w.to_owned(), v.to_owned())),
        }
    }
    version.map(str::to_owned).ok_or(VersionError::NoSlot)
}

/// `binary` with every slot holding `version` instead (same length: the result runs as the
/// original does). `None` when it has no slot or `version` does not fit.
pub fn restamp(binary: &[u8], version: &str) -> Option<Vec<u8>> {
    if !is_valid_version(version) {
        return None;
    }
    let slots = find_slots(binary);
    if slots.is_empty() {
        return None;
    }
    let mut out = binary.to_vec();
    let mut field = [0u8; FIELD_LEN];
    field[..version.len()].copy_from_slice(version.as_bytes());
    for at in slots {
        out[at + MARKER.len()..at + MARKER.len() + FIELD_LEN].copy_from_slice(&field);
    }
    Some(out)
}

/// Whether release `version` is older than `than` (dotted numbers, `0.1.0` < `0.10.0`;
/// anything after `-` or `+` ignored). A version that does not parse is never "older".
pub fn is_older(version: &str, than: &str) -> bool {
    fn parts(v: &str) -> Option<Vec<u64>> {
        v.split(['-', '+'])
            .next()?
            .split('.')
            .map(|p| p.parse().ok())
            .collect()
    }
    match (parts(version), parts(than)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_restamp() {
        let s = slot("0.1.0");
        assert_eq!(parse_slot(&s), Some("0.1.0"));
        let mut bin = b"\x7fELF junk".to_vec();
        bin.extend_from_slice(&MARKER); // a bare marker (as the searching code holds it)
        bin.extend_from_slice(b"garbage");
        bin.extend_from_slice(&s);
        bin.extend_from_slice(b"more");
        bin.extend_from_slice(&s); // a second architecture
        assert_eq!(find_slots(&bin).len(), 2);
        assert_eq!(version_of(&bin).as_deref(), Ok("0.1.0"));
        let old = restamp(&bin, "0.0.1").unwrap();
        assert_eq!(old.len(), bin.len());
        assert_eq!(version_of(&old).as_deref(), Ok("0.0.1"));
        assert_eq!(version_of(b"no slot here"), Err(VersionError::NoSlot));
        let mut mixed = s.to_vec();
        mixed.extend_from_slice(&slot("0.2.0"));
        assert!(matches!(
            version_of(&mixed),
            Err(VersionError::Disagree(..))
        ));
        assert_eq!(restamp(&bin, "bad version!"), None);
        assert_eq!(restamp(b"nothing", "0.0.1"), None);
    }

    #[test]
    fn malformed_slots_are_not_slots() {
        let mut s = slot("0.1.0");
        s[MARKER.len() + 10] = b'x'; // a byte after the NUL padding began
        assert_eq!(parse_slot(&s), None);
        let mut s = slot("0.1.0");
        s[MARKER.len()] = b'/';
        assert_eq!(parse_slot(&s), None);
        let mut s = slot("0.1.0");
        s[SLOT_LEN - 1] = b'?';
        assert_eq!(parse_slot(&s), None);
        assert!(!is_valid_version(&"9".repeat(FIELD_LEN)));
    }

    #[test]
    fn order() {
        assert!(is_older("0.0.1", "0.1.0"));
        assert!(is_older("0.9.0", "0.10.0"));
        assert!(!is_older("0.1.0", "0.1.0"));
        assert!(!is_older("garbage", "0.1.0"));
    }
}
