//! The forms of the per-node keys: `alive/<name>/<id>` and `members/<name>/<id>` (this
//! release), beside `alive/<id>` and `members/<id>` (earlier releases, still read, deleted by
//! the primary). Names never contain `/`, so the prefix `alive/<name>/` that a node's role may
//! write covers no other node's keys (`alive/a-` covered `alive/a-b-…`, node `a-b`'s).

use super::EtcdMembership;

/// The name an id carries (`<name>-<6 [a-z0-9]>`), if it is a valid node name.
pub(super) fn name_of_id(id: &str) -> Option<&str> {
    let (name, _) = id.rsplit_once('-')?;
    (crate::identity::validate_node_name(name).is_ok() && crate::identity::id_belongs_to(id, name))
        .then_some(name)
}

/// The id a key names, from what follows `alive/` or `members/`: `<name>/<id>` when the id
/// carries that name, or an earlier release's `<id>`; `None` for anything else (a key of
/// another form is nobody's).
pub(super) fn id_of_key(rest: &str) -> Option<&str> {
    match rest.split_once('/') {
        Some((name, id)) => (name_of_id(id) == Some(name)).then_some(id),
        None => (!rest.is_empty()).then_some(rest),
    }
}

/// Whether `rest` (after `alive/` or `members/`) is the form of this release.
pub(super) fn is_current_form(rest: &str) -> bool {
    rest.contains('/')
}

impl EtcdMembership {
    /// `<sub>/<name>/<id>`, the key this release writes for `id` (`sub`: `alive` or
    /// `members`); an id that carries no valid name keeps the earlier form `<sub>/<id>`.
    pub(super) fn id_key(&self, sub: &str, id: &str) -> String {
        match name_of_id(id) {
            Some(name) => self.key(&format!("{sub}/{name}/{id}")),
            None => self.key(&format!("{sub}/{id}")),
        }
    }

    /// `<sub>/<id>`, the key earlier releases wrote, when it differs from `id_key`.
    pub(super) fn legacy_key(&self, sub: &str, id: &str) -> Option<String> {
        name_of_id(id).map(|_| self.key(&format!("{sub}/{id}")))
    }

    /// The keys of `id` under `sub` that this connection may delete: both forms for the
    /// primary's credential, this release's only for a node's own user (its role covers no
    /// earlier-form key: etcd refuses a delete of a key outside it even when the key is absent).
    pub(super) fn deletable_keys(&self, sub: &str, id: &str) -> Vec<String> {
        let mut keys = vec![self.id_key(sub, id)];
        if !self.is_node_user() {
            keys.extend(self.legacy_key(sub, id));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_node_and_old_forms_are_still_read() {
        assert_eq!(name_of_id("a-b-abc123"), Some("a-b"));
        assert_eq!(name_of_id("a-abc123"), Some("a"));
        assert_eq!(name_of_id("a-ABC123"), None);
        assert_eq!(name_of_id("abc123"), None);
        assert_eq!(id_of_key("a-b/a-b-abc123"), Some("a-b-abc123"));
        // A key under one name holding an id of another is nobody's.
        assert_eq!(id_of_key("a/a-b-abc123"), None);
        assert_eq!(id_of_key("a-b/a-abc123"), None);
        assert_eq!(id_of_key("a/x/a-abc123"), None);
        assert_eq!(id_of_key("a-b-abc123"), Some("a-b-abc123"));
        assert_eq!(id_of_key(""), None);
        assert!(is_current_form("a/a-abc123") && !is_current_form("a-abc123"));
    }
}
