//! The last write applied per entity in the bucket `zdmap_entities` (for `skip_unchanged`):
//! keys `w.<base64url of the entity>` (another destination's `d.<name>.w.…`), the value [`AppliedWrite::encode`], or empty once the
//! record is forgotten (a write to the entity is going out).
//!
//! The replicas share the records through [`super::entities::NatsClock`], which follows the
//! bucket into memory and writes them (see there for why a record read is never older than the
//! last write applied to its entity, whichever replica applied it).

use super::names::Names;
use crate::deliver::unchanged::AppliedWrite;
use base64::Engine as _;

/// The prefix of the records' keys.
const PREFIX: &str = "w.";

/// The bucket key of `entity`'s record for the destination of `names`.
pub(super) fn key(names: &Names, entity: &str) -> String {
    names.key(&format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(entity)
    ))
}

/// The entity whose record `key` (a destination's key, without its prefix) is; `None` for
/// another kind of key.
pub(super) fn entity_of(key: &str) -> Option<String> {
    let encoded = key.strip_prefix(PREFIX)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The record a value holds; `None` for a forgotten one (empty) or one that does not read.
pub(super) fn record_of(value: &[u8]) -> Option<AppliedWrite> {
    AppliedWrite::decode(std::str::from_utf8(value).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_are_valid_nats_keys_apart_from_the_others() {
        for entity in ["user:u1", "membership:u1/acme", "organization:a b/ü"] {
            let k = key(&Names::default(), entity);
            assert!(k.starts_with("w."), "{k}");
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=.".contains(c)),
                "{k}"
            );
            assert_eq!(entity_of(&k).as_deref(), Some(entity));
        }
        assert_eq!(entity_of("e.dXNlcjp1MQ"), None, "a change time's key");
        assert_eq!(entity_of("h.Z3JvdXA6YWNtZQ"), None, "a hold's key");
    }

    #[test]
    fn an_empty_value_is_a_forgotten_record() {
        let write = AppliedWrite {
            digest: "d".into(),
            at_ms: 5,
            outputs: Default::default(),
            learned: Vec::new(),
        };
        let value = write.encode().unwrap_or_default();
        assert_eq!(record_of(value.as_bytes()), Some(write));
        assert_eq!(record_of(b""), None);
    }
}
