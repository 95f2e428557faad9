//! A table of records by id with hash indexes kept in step with the records, so lookups by email,
//! external id, name or owner stay constant-time at a million records. Every change goes through
//! [`Table::insert`], [`Table::update`] or [`Table::remove`], which take the record's keys out of
//! the index before the change and put them back after it; there is no `get_mut`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A record a [`Table`] can hold: its id and the keys it is found by.
pub(crate) trait Record {
    /// What the record is indexed by (an email, an external id, an owner's id...).
    type Key: Hash + Eq + Clone + std::fmt::Debug;

    fn id(&self) -> u64;

    /// Every key this record is found by now.
    fn keys(&self) -> Vec<Self::Key>;
}

#[derive(Debug, Clone)]
pub(crate) struct Table<R: Record> {
    rows: BTreeMap<u64, R>,
    index: HashMap<R::Key, Vec<u64>>,
}

impl<R: Record> Default for Table<R> {
    fn default() -> Self {
        Table {
            rows: BTreeMap::new(),
            index: HashMap::new(),
        }
    }
}

impl<R: Record> Table<R> {
    pub(crate) fn get(&self, id: &u64) -> Option<&R> {
        self.rows.get(id)
    }

    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.rows.contains_key(id)
    }

    /// The records in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &R> {
        self.rows.values()
    }

    /// The ids of the records found by `key`, in id order.
    pub(crate) fn lookup(&self, key: &R::Key) -> &[u64] {
        self.index.get(key).map_or(&[], Vec::as_slice)
    }

    /// The records found by `key`, in id order.
    pub(crate) fn find<'a>(&'a self, key: &R::Key) -> impl Iterator<Item = &'a R> + use<'a, R> {
        let rows = &self.rows;
        self.lookup(key).iter().filter_map(move |id| rows.get(id))
    }

    /// The first record found by `key`.
    pub(crate) fn first(&self, key: &R::Key) -> Option<u64> {
        self.lookup(key).first().copied()
    }

    /// Adds a record, replacing one with the same id.
    pub(crate) fn insert(&mut self, record: R) {
        let id = record.id();
        self.remove(&id);
        self.add_keys(id, record.keys());
        self.rows.insert(id, record);
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<R> {
        let record = self.rows.remove(id)?;
        self.drop_keys(*id, record.keys());
        Some(record)
    }

    /// Changes a record in place and re-indexes it; `None` when there is no such record.
    pub(crate) fn update<T>(&mut self, id: u64, change: impl FnOnce(&mut R) -> T) -> Option<T> {
        let record = self.rows.get_mut(&id)?;
        let before = record.keys();
        let out = change(record);
        let after = record.keys();
        if before != after {
            self.drop_keys(id, before);
            self.add_keys(id, after);
        }
        Some(out)
    }

    fn add_keys(&mut self, id: u64, keys: Vec<R::Key>) {
        for key in keys {
            let ids = self.index.entry(key).or_default();
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        }
    }

    fn drop_keys(&mut self, id: u64, keys: Vec<R::Key>) {
        for key in keys {
            if let Some(ids) = self.index.get_mut(&key) {
                if let Ok(at) = ids.binary_search(&id) {
                    ids.remove(at);
                }
                if ids.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
    }

    /// Whether the index is exactly what the records say (each key once per record, nothing
    /// stale): for tests of the code that changes records.
    #[cfg(test)]
    pub(crate) fn index_agrees(&self) -> bool {
        let mut rebuilt: HashMap<R::Key, Vec<u64>> = HashMap::new();
        // Rows come in id order, so each list is built sorted, as the index keeps it.
        for r in self.rows.values() {
            for key in r.keys() {
                let ids = rebuilt.entry(key).or_default();
                if ids.last() != Some(&r.id()) {
                    ids.push(r.id());
                }
            }
        }
        rebuilt == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Person {
        id: u64,
        emails: Vec<String>,
    }

    impl Record for Person {
        type Key = String;
        fn id(&self) -> u64 {
            self.id
        }
        fn keys(&self) -> Vec<String> {
            self.emails.clone()
        }
    }

    #[test]
    fn index_follows_inserts_updates_and_removes() {
        let mut t = Table::default();
        t.insert(Person {
            id: 1,
            emails: vec!["a".into()],
        });
        t.insert(Person {
            id: 2,
            emails: vec!["a".into(), "b".into()],
        });
        assert_eq!(t.lookup(&"a".to_string()), [1, 2]);
        // A record changed and put back keeps its place in id order.
        t.update(1, |p| p.emails = vec!["x".into()]);
        t.update(1, |p| p.emails = vec!["a".into()]);
        assert_eq!(t.lookup(&"a".to_string()), [1, 2]);
        t.update(1, |p| p.emails = vec!["c".into()]);
        assert_eq!(t.lookup(&"a".to_string()), [2]);
        assert_eq!(t.first(&"c".to_string()), Some(1));
        t.remove(&2);
        assert!(t.lookup(&"b".to_string()).is_empty());
        assert_eq!(t.update(9, |_| ()), None);
        assert!(t.index_agrees());
        assert_eq!(t.values().count(), 1);
    }
}
