//! The Kafka topic of each table: `<prefix>.<schema>.<table>`, made a valid topic name the
//! way Debezium does it, and checked so that two tables never share a topic.
//!
//! Kafka allows only ASCII letters, digits, `.`, `_` and `-` in a topic name, at most 249 of
//! them. Postgres allows any character in a quoted identifier, so every other character of a
//! schema or table name becomes `_` (`"my table"` → `my_table`, `"Größe"` → `Gr__e`). That
//! mapping, and Kafka's own rule that `.` and `_` collide (`a.b_c` and `a_b.c` cannot both
//! exist), can give two tables one topic: walflow refuses that, naming both tables, instead
//! of mixing their changes in one stream.

use std::collections::HashMap;

/// Kafka's longest topic name.
pub const MAX_TOPIC_LENGTH: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error(
        "the topic prefix {prefix:?} is not a valid Kafka topic name: use only ASCII letters, digits, '.', '_' and '-'"
    )]
    InvalidPrefix { prefix: String },
    #[error(
        "tables {first} and {second} would both write to Kafka topic {topic} (Kafka topic names keep only \
         ASCII letters, digits, '.', '_' and '-', every other character becomes '_', and '.' and '_' \
         collide): rename one of the tables, or leave one out of the publication"
    )]
    Collision {
        first: String,
        second: String,
        topic: String,
    },
    #[error(
        "the Kafka topic of table {table} would be {length} characters long, over Kafka's limit of \
         {MAX_TOPIC_LENGTH}: shorten the table's name or --topic-prefix"
    )]
    TooLong { table: String, length: usize },
}

fn is_topic_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-')
}

/// `name` with every character Kafka does not allow in a topic name replaced by `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|character| {
            if is_topic_char(character) {
                character
            } else {
                '_'
            }
        })
        .collect()
}

/// The topic of `schema.table` under `prefix`.
pub fn topic_name(prefix: &str, schema: &str, table: &str) -> String {
    format!("{prefix}.{}.{}", sanitize(schema), sanitize(table))
}

/// Where `walflow cdc` sends records of events too large for Kafka, by default.
pub fn cdc_dead_letters(prefix: &str) -> String {
    format!("{prefix}.dead_letters")
}

/// The default prefix of `walflow process`'s dead-letter topics (events it cannot read).
pub const PROCESS_DEAD_LETTER_PREFIX: &str = "walflow.dead_letter";

/// The default prefix of `walflow process`'s topics of events too late for their window.
pub const PROCESS_LATE_PREFIX: &str = "walflow.late";

/// A pipeline's own topic under `prefix`: its dead letters, its late events.
pub fn pipeline_topic(prefix: &str, pipeline: &str) -> String {
    format!("{prefix}.{pipeline}")
}

/// A prefix is used as it is, so it must already be a valid topic name.
pub fn check_prefix(prefix: &str) -> Result<(), TopicError> {
    if prefix.is_empty() || !prefix.chars().all(is_topic_char) || prefix.len() > 200 {
        return Err(TopicError::InvalidPrefix {
            prefix: prefix.to_owned(),
        });
    }
    Ok(())
}

/// The topics handed out so far, by the name Kafka compares (`.` read as `_`).
#[derive(Debug, Default)]
pub struct TopicNames {
    /// Compared name -> (schema, table) of its owner, and the topic.
    claimed: HashMap<String, ((String, String), String)>,
}

impl TopicNames {
    /// The topic of `schema.table`, refused when another table already has it (or one Kafka
    /// would take for it). Returns whether the table is new to this map, with its topic.
    pub fn claim(
        &mut self,
        prefix: &str,
        schema: &str,
        table: &str,
    ) -> Result<(bool, String), TopicError> {
        let owner = (schema.to_owned(), table.to_owned());
        let topic = topic_name(prefix, schema, table);
        if topic.len() > MAX_TOPIC_LENGTH {
            return Err(TopicError::TooLong {
                table: format!("{schema}.{table}"),
                length: topic.len(),
            });
        }
        let compared = topic.replace('.', "_");
        match self.claimed.get(&compared) {
            Some((claimed_by, _)) if *claimed_by == owner => Ok((false, topic)),
            Some(((first_schema, first_table), first_topic)) => Err(TopicError::Collision {
                first: format!("{first_schema}.{first_table}"),
                second: format!("{schema}.{table}"),
                topic: first_topic.clone(),
            }),
            None => {
                self.claimed.insert(compared, (owner, topic.clone()));
                Ok((true, topic))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_kafka_refuses_become_underscores() {
        assert_eq!(
            topic_name("walflow", "public", "users"),
            "walflow.public.users"
        );
        assert_eq!(
            topic_name("walflow", "public", "my table"),
            "walflow.public.my_table"
        );
        assert_eq!(
            topic_name("walflow", "public", "Größe"),
            "walflow.public.Gr__e"
        );
        assert_eq!(
            topic_name("walflow", "public", "a/b\"c"),
            "walflow.public.a_b_c"
        );
        assert_eq!(topic_name("w", "s-1", "t_2.x"), "w.s-1.t_2.x");
    }

    #[test]
    fn two_tables_on_one_topic_are_refused_naming_both() {
        let mut names = TopicNames::default();
        assert_eq!(
            names.claim("w", "public", "my table"),
            Ok((true, "w.public.my_table".to_owned()))
        );
        assert_eq!(
            names.claim("w", "public", "my table"),
            Ok((false, "w.public.my_table".to_owned()))
        );
        let error = names.claim("w", "public", "my_table").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("tables public.my table and public.my_table"),
            "{error}"
        );
        // Schema "a.b" with table "c" and schema "a" with table "b.c".
        names.claim("w", "a.b", "c").unwrap();
        assert!(matches!(
            names.claim("w", "a", "b.c"),
            Err(TopicError::Collision { .. })
        ));
        // Kafka's own rule: '.' and '_' collide.
        names.claim("w", "x", "y_z").unwrap();
        assert!(matches!(
            names.claim("w", "x_y", "z"),
            Err(TopicError::Collision { .. })
        ));
    }

    #[test]
    fn an_overlong_topic_and_an_invalid_prefix_are_refused() {
        let mut names = TopicNames::default();
        let long = "t".repeat(250);
        assert!(matches!(
            names.claim("w", "public", &long),
            Err(TopicError::TooLong { .. })
        ));
        assert!(check_prefix("walflow").is_ok());
        assert!(check_prefix("wal flow").is_err());
        assert!(check_prefix("").is_err());
    }
}
