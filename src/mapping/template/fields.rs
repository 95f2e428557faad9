//! The values of an action's fields for one event, as templates see them (`{{ email }}`).
//!
//! The field mappings (`field`) compute them; templates only read them. They live here, so
//! that the template engine needs nothing from the field mappings.

use serde_json::Value;
use std::sync::Arc;

/// The values of one action's fields for one event, beside the fields' names (in the order the
/// action declares them). A field without a value is there, as `None`.
#[derive(Clone, Debug)]
pub struct FieldValues {
    names: Arc<[String]>,
    values: Vec<Option<Value>>,
}

impl FieldValues {
    /// The fields `names`, none with a value yet.
    pub fn new(names: Arc<[String]>) -> FieldValues {
        FieldValues {
            values: vec![None; names.len()],
            names,
        }
    }

    /// Gives the field at `index` (in the order of the names) its value.
    pub fn set(&mut self, index: usize, value: Value) {
        if let Some(slot) = self.values.get_mut(index) {
            *slot = Some(value);
        }
    }

    /// Where the field `name` is; `None` when there is no such field.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The value of the field at `index`, if it has one.
    pub(crate) fn value_at(&self, index: usize) -> Option<&Value> {
        self.values.get(index)?.as_ref()
    }

    /// `None`: no field of that name. `Some(None)`: the field has no value for this event.
    pub fn get(&self, name: &str) -> Option<Option<&Value>> {
        self.position(name).map(|i| self.value_at(i))
    }
}
