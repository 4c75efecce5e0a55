//! A table's `WITH (key = 'value', ...)` options, with where each key is written, so an error
//! about an option points at it.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{CreateTable, CreateTableOptions, SqlOption};

use super::{ident_position, object_name, Position, TableError};

pub(super) struct TableOptions {
    /// Keys in lower case; values without their quotes.
    values: BTreeMap<String, String>,
    positions: BTreeMap<String, Position>,
    /// The table's name, as errors show it.
    table: String,
}

impl TableOptions {
    pub(super) fn of(create: &CreateTable) -> Result<TableOptions, TableError> {
        let table = object_name(&create.name);
        let CreateTableOptions::With(options) = &create.table_options else {
            return Err((
                None,
                format!(
                    "table {table} needs WITH (connector = 'kafka', topic = '...') for a source \
                     or WITH (connector = 'cassandra', keyspace = '...') for a sink"
                ),
            ));
        };
        let mut values = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for option in options {
            let SqlOption::KeyValue { key, value } = option else {
                return Err((
                    None,
                    format!("table {table}: write options as key = 'value'"),
                ));
            };
            let text = value.to_string();
            let text = text
                .strip_prefix('\'')
                .and_then(|inner| inner.strip_suffix('\''))
                .map(|inner| inner.replace("''", "'"))
                .unwrap_or(text);
            let name = key.value.to_lowercase();
            positions.insert(name.clone(), ident_position(key));
            values.insert(name, text);
        }
        Ok(TableOptions {
            values,
            positions,
            table,
        })
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Where `key` is written; `None` when it is not (the error is then the table's).
    pub(super) fn position(&self, key: &str) -> Option<Position> {
        self.positions.get(key).copied()
    }

    /// An error about option `key`, placed at it.
    pub(super) fn error(&self, key: &str, message: String) -> TableError {
        (
            self.position(key),
            format!("table {}: {message}", self.table),
        )
    }

    pub(super) fn required(&self, key: &str) -> Result<&str, TableError> {
        self.get(key).ok_or_else(|| {
            (
                None,
                format!("table {} needs the option {key} = '...'", self.table),
            )
        })
    }

    /// Refuses the first option not in `known`, at its place.
    pub(super) fn reject_unknown(&self, known: &[&str]) -> Result<(), TableError> {
        match self
            .values
            .keys()
            .find(|key| !known.contains(&key.as_str()))
        {
            Some(unknown) => Err(self.error(
                unknown,
                format!(
                    "unknown option {unknown}; this connector takes {}",
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    /// One of `choices` (the first is the default when the option is not written), as the
    /// value it stands for; `hint` says what to use instead of an unknown value.
    pub(super) fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
        hint: &str,
    ) -> Result<T, TableError> {
        let Some(written) = self.get(key) else {
            return Ok(choices[0].1);
        };
        choices
            .iter()
            .find(|(name, _)| *name == written)
            .map(|(_, value)| *value)
            .ok_or_else(|| self.error(key, format!("{key} '{written}' is not known; {hint}")))
    }
}
