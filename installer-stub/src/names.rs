//! The node-name rule, in one place for every crate: the stub checks the sealed name, the
//! package builder the name it seals, the daemon the configured and derived names.

/// The longest node name: a DNS label.
pub const MAX_NODE_NAME: usize = 63;

/// Checks a node name: 1 to 63 of `[a-z0-9-]`, neither starting nor ending with `-`. The
/// error says what is wrong and names the value.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a node name must not be empty".into());
    }
    if name.len() > MAX_NODE_NAME {
        return Err(format!(
            "`{}…` is {} bytes long: at most {MAX_NODE_NAME}",
            name.chars().take(MAX_NODE_NAME).collect::<String>(),
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{}` has {bad:?}: only lowercase letters, digits and `-` are allowed",
            name.escape_debug()
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("`{name}` must not start or end with `-`"));
    }
    Ok(())
}

/// The rule as a predicate.
pub fn is_node_name(name: &str) -> bool {
    check_node_name(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for ok in ["a", "node-2", "server-03", &"a".repeat(63)] {
            assert!(is_node_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "-",
            "Node",
            "a_b",
            "a.b",
            "a b",
            "é",
            "a\u{1b}[2J",
            &"a".repeat(64),
        ] {
            assert!(!is_node_name(bad), "{bad:?}");
        }
        // Control characters are escaped in the message, never echoed raw.
        let e = check_node_name("a\u{1b}[2J").unwrap_err();
        assert!(!e.contains('\u{1b}'), "{e}");
    }
}
