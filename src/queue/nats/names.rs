//! The names one destination's records have in the NATS account. Each destination delivers
//! every event routed to it on its own, so each has its own events subjects, consumers, leases,
//! records in `zdmap_entities`, dead letters, request budget and OAuth chain; the streams and
//! buckets themselves, and the partition count, are shared.
//!
//! The default destination ([`DEFAULT_DESTINATION`]) keeps the names of a deployment from
//! before destinations existed, so such a deployment goes on unchanged. Another, `D`, has:
//! - its events on `zdmap.events.D.<partition>` (the default's: `zdmap.events.<partition>`).
//!   The events stream takes [`EVENTS_SUBJECTS`]; its consumers' subjects never overlap, as a
//!   work-queue stream requires: the default's have three tokens, another's four, with its
//!   name as the third;
//! - its consumers `D@p<partition>-<replica>` (the default's: `p<partition>-<replica>`): `@` is
//!   in no destination's name, so no destination's partition prefix starts another's, and a
//!   replica taking a partition of `D` deletes only `D`'s consumer of it;
//! - its keys `d.D.<key>` in the buckets `zdmap_leases` (leases, heartbeats), `zdmap_entities`
//!   (change times, applied writes, holds), `zdmap` (request budget, pause) and `zdmap_oauth`
//!   (token chain); no key of the default starts with `d.`;
//! - its dead letters on `zdmap.dead_letters.D` (the default's: `zdmap.dead_letters`), in the
//!   one dead-letters stream, which takes [`DEAD_LETTERS_SUBJECTS`];
//! - the `Nats-Msg-Id` `<messageId>@D` for a sender's `messageId` (the default's: the id
//!   itself), so one call reaches every destination it names once each.

use crate::queue::{DEFAULT_DESTINATION, QueueError, valid_destination_name};

/// The subjects of the events stream: the default destination's events and every other's.
pub(crate) const EVENTS_SUBJECTS: [&str; 2] = ["zdmap.events.*", "zdmap.events.*.*"];
/// The subjects of the dead-letters stream: the default destination's and every other's.
pub(crate) const DEAD_LETTERS_SUBJECTS: [&str; 2] = ["zdmap.dead_letters", "zdmap.dead_letters.*"];

/// The prefix of another destination's keys, before its name.
const KEY_PREFIX: &str = "d.";

/// The names of one destination's records in the NATS account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Names {
    /// `None`: the default destination, whose names have no part of its own.
    destination: Option<String>,
}

impl Default for Names {
    /// The default destination's.
    fn default() -> Names {
        Names { destination: None }
    }
}

impl std::fmt::Display for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.destination())
    }
}

impl Names {
    /// The names of the destination called `destination`; an invalid name is refused (it
    /// would not make valid subjects and keys).
    pub fn of(destination: &str) -> Result<Names, QueueError> {
        if destination == DEFAULT_DESTINATION {
            return Ok(Names::default());
        }
        if !valid_destination_name(destination) {
            return Err(QueueError::nats_says(format!(
                "{destination:?} cannot name a destination: 1 to 32 of a-z, 0-9, _ and -, starting with a letter"
            )));
        }
        Ok(Names {
            destination: Some(destination.to_owned()),
        })
    }

    /// The destination's name.
    pub fn destination(&self) -> &str {
        self.destination.as_deref().unwrap_or(DEFAULT_DESTINATION)
    }

    /// Whether these are the default destination's names (those from before destinations).
    pub fn is_default(&self) -> bool {
        self.destination.is_none()
    }

    /// The subject of the destination's events of `partition` (a number, or `*` for all).
    fn events_of(&self, partition: &str) -> String {
        match &self.destination {
            None => format!("zdmap.events.{partition}"),
            Some(d) => format!("zdmap.events.{d}.{partition}"),
        }
    }

    /// The subject of the destination's events of `partition`.
    pub fn events_subject(&self, partition: u32) -> String {
        self.events_of(&partition.to_string())
    }

    /// The subjects of all the destination's events (a filter).
    pub fn events_filter(&self) -> String {
        self.events_of("*")
    }

    /// How the names of the destination's consumers of `partition` start (the replica's name
    /// follows).
    pub fn consumer_prefix(&self, partition: u32) -> String {
        match &self.destination {
            None => format!("p{partition}-"),
            Some(d) => format!("{d}@p{partition}-"),
        }
    }

    /// The destination's own `key` in a shared bucket.
    pub fn key(&self, key: &str) -> String {
        match &self.destination {
            None => key.to_owned(),
            Some(d) => format!("{KEY_PREFIX}{d}.{key}"),
        }
    }

    /// The destination's key that `stored` (a bucket's key) is, without its prefix; `None`
    /// for another destination's.
    pub fn own_key<'k>(&self, stored: &'k str) -> Option<&'k str> {
        match &self.destination {
            None => (!stored.starts_with(KEY_PREFIX)).then_some(stored),
            Some(d) => stored
                .strip_prefix(KEY_PREFIX)?
                .strip_prefix(d.as_str())?
                .strip_prefix('.'),
        }
    }

    /// The subject of the destination's dead letters.
    pub fn dead_letters_subject(&self) -> String {
        match &self.destination {
            None => "zdmap.dead_letters".to_owned(),
            Some(d) => format!("zdmap.dead_letters.{d}"),
        }
    }

    /// The `Nats-Msg-Id` of a sender's `messageId` sent to the destination.
    pub fn message_id(&self, message_id: &str) -> String {
        match &self.destination {
            None => message_id.to_owned(),
            Some(d) => format!("{message_id}@{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the NATS subject `pattern` (`*` a token, `>` the rest) takes `subject`.
    fn takes(pattern: &str, subject: &str) -> bool {
        let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn names(d: &str) -> Names {
        Names::of(d).expect("a valid name")
    }

    #[test]
    fn the_default_destination_keeps_the_names_from_before_destinations() {
        let n = names(DEFAULT_DESTINATION);
        assert!(n.is_default());
        assert_eq!(n, Names::default());
        assert_eq!(n.events_subject(7), "zdmap.events.7");
        assert_eq!(n.events_filter(), "zdmap.events.*");
        assert_eq!(n.consumer_prefix(7), "p7-");
        assert_eq!(n.key("p.7"), "p.7");
        assert_eq!(n.key("budget"), "budget");
        assert_eq!(n.key("chain"), "chain");
        assert_eq!(n.dead_letters_subject(), "zdmap.dead_letters");
        assert_eq!(n.message_id("m-1"), "m-1");
        assert_eq!(n.destination(), "default");
    }

    #[test]
    fn another_destination_has_names_of_its_own() {
        let eu = names("eu");
        assert_eq!(eu.events_subject(7), "zdmap.events.eu.7");
        assert_eq!(eu.events_filter(), "zdmap.events.eu.*");
        assert_eq!(eu.consumer_prefix(7), "eu@p7-");
        assert_eq!(eu.key("p.7"), "d.eu.p.7");
        assert_eq!(eu.key("e.dXNlcg"), "d.eu.e.dXNlcg");
        assert_eq!(eu.dead_letters_subject(), "zdmap.dead_letters.eu");
        assert_eq!(eu.message_id("m-1"), "m-1@eu");
        assert_eq!(eu.to_string(), "eu");
        assert!(Names::of("EU").is_err());
        assert!(Names::of("e.u").is_err());
        assert!(Names::of("").is_err());
    }

    #[test]
    fn each_key_belongs_to_one_destination() {
        let (default, eu, eu_x, d) = (Names::default(), names("eu"), names("eu-x"), names("d"));
        for key in [
            "p.3",
            "r.host-1",
            "e.dXNlcg",
            "w.dXNlcg",
            "h.Z3JvdXA",
            "budget",
            "chain",
        ] {
            for own in [&default, &eu, &eu_x, &d] {
                let stored = own.key(key);
                assert_eq!(own.own_key(&stored), Some(key), "{own}: {stored}");
                for other in [&default, &eu, &eu_x, &d].into_iter().filter(|o| *o != own) {
                    assert_eq!(other.own_key(&stored), None, "{other} takes {stored}");
                }
            }
        }
    }

    #[test]
    fn consumers_and_subjects_of_destinations_never_overlap_and_the_streams_take_them() {
        let all = [
            Names::default(),
            names("eu"),
            names("eu-x"),
            names("p3"),
            names("d"),
        ];
        for a in &all {
            let filter = a.events_filter();
            assert!(
                EVENTS_SUBJECTS.iter().any(|s| takes(s, &filter)),
                "{filter}"
            );
            assert!(
                DEAD_LETTERS_SUBJECTS
                    .iter()
                    .any(|s| takes(s, &a.dead_letters_subject()))
            );
            for p in [0, 3, 31] {
                let subject = a.events_subject(p);
                assert!(takes(&filter, &subject), "{filter} takes {subject}");
                for b in all.iter().filter(|b| *b != a) {
                    assert!(!takes(&b.events_filter(), &subject), "{b} takes {subject}");
                    for q in [0, 3, 31] {
                        assert_ne!(subject, b.events_subject(q));
                        let name = format!("{}host-1", b.consumer_prefix(q));
                        assert!(!name.starts_with(&a.consumer_prefix(p)), "{a}: {name}");
                    }
                }
            }
        }
        // No two of a stream's subjects take the same subject.
        for (i, s) in EVENTS_SUBJECTS.iter().enumerate() {
            for t in &EVENTS_SUBJECTS[i + 1..] {
                for a in &all {
                    assert!(!(takes(s, &a.events_subject(1)) && takes(t, &a.events_subject(1))));
                }
            }
        }
    }
}
