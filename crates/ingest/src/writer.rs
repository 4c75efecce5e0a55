//! The Postgres side of ingest. Each batch is one transaction: its users are upserted in one
//! statement from one array per column, and its rejects are recorded, so a batch is either
//! entirely in the database or not at all, whatever kills the process.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::model::User;
use crate::run::IngestError;

/// Columns walflow writes, in parameter order; `ingested_at` and `updated_at` are the table's.
const COLUMNS: &[(&str, Type)] = &[
    ("id", Type::UUID),
    ("gender", Type::TEXT),
    ("title", Type::TEXT),
    ("first_name", Type::TEXT),
    ("last_name", Type::TEXT),
    ("street_number", Type::INT4),
    ("street_name", Type::TEXT),
    ("city", Type::TEXT),
    ("state", Type::TEXT),
    ("country", Type::TEXT),
    ("postcode", Type::TEXT),
    ("latitude", Type::FLOAT8),
    ("longitude", Type::FLOAT8),
    ("timezone_offset", Type::TEXT),
    ("timezone_name", Type::TEXT),
    ("email", Type::TEXT),
    ("username", Type::TEXT),
    ("dob", Type::TIMESTAMPTZ),
    ("registered_at", Type::TIMESTAMPTZ),
    ("phone", Type::TEXT),
    ("cell", Type::TEXT),
    ("picture_large", Type::TEXT),
    ("picture_medium", Type::TEXT),
    ("picture_thumbnail", Type::TEXT),
    ("nat", Type::TEXT),
];

/// A record the API sent that did not validate, kept with its reason.
#[derive(Debug, Clone)]
pub struct Reject {
    pub payload: Value,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub inserted: u64,
    /// Existing users whose fields changed.
    pub updated: u64,
    /// Existing users sent again exactly as stored: not written, so they cause no WAL and
    /// no change event.
    pub unchanged: u64,
    pub rejected: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct WriteError {
    context: String,
    #[source]
    source: tokio_postgres::Error,
}

impl WriteError {
    /// For `map_err`: wraps a Postgres error with what walflow was doing.
    pub fn context(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> WriteError {
        let context = context.into();
        move |source| WriteError { context, source }
    }
}

pub struct UserWriter {
    client: Client,
    source: String,
    upsert: Statement,
}

impl UserWriter {
    /// `source` is recorded with each reject, so a reject says where it came from.
    pub async fn connect(postgres_url: &str, source: &str) -> Result<UserWriter, IngestError> {
        let client = walflow_tls::postgres::connect(postgres_url, "ingest").await?;
        // Preparing once also fails early, and clearly, when the schema is missing.
        let upsert = client
            .prepare(&upsert_sql())
            .await
            .map_err(WriteError::context(
                "cannot prepare the upsert into users (has `walflow migrate` run?)",
            ))?;
        Ok(UserWriter {
            client,
            source: source.to_owned(),
            upsert,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Writes one batch in one transaction. Users repeated within the batch keep their last
    /// version (the table holds one row per id).
    pub async fn write_batch(
        &mut self,
        users: &[User],
        rejects: &[Reject],
    ) -> Result<BatchOutcome, WriteError> {
        let users = last_of_each_id(users);
        let transaction = self
            .client
            .transaction()
            .await
            .map_err(WriteError::context("cannot begin a transaction"))?;
        let mut outcome = BatchOutcome {
            rejected: rejects.len() as u64,
            ..BatchOutcome::default()
        };

        if !users.is_empty() {
            let columns = ColumnArrays::of(&users);
            let counts = transaction
                .query_one(&self.upsert, &columns.parameters())
                .await
                .map_err(WriteError::context("upsert into users failed"))?;
            outcome.inserted = counts.get::<_, i64>(0) as u64;
            outcome.updated = counts.get::<_, i64>(1) as u64;
            outcome.unchanged = users.len() as u64 - outcome.inserted - outcome.updated;
        }
        if !rejects.is_empty() {
            let storable: Vec<Cow<'_, Value>> = rejects
                .iter()
                .map(|reject| storable_in_jsonb(&reject.payload))
                .collect();
            let payloads: Vec<&Value> = storable.iter().map(AsRef::as_ref).collect();
            let reasons: Vec<&str> = rejects
                .iter()
                .map(|reject| reject.reason.as_str())
                .collect();
            transaction
                .execute(
                    "INSERT INTO ingest_rejects (source, payload, reason) \
                     SELECT $1, payload, reason FROM unnest($2::jsonb[], $3::text[]) AS r(payload, reason)",
                    &[&self.source, &payloads, &reasons],
                )
                .await
                .map_err(WriteError::context("cannot record rejects in ingest_rejects"))?;
        }
        transaction
            .commit()
            .await
            .map_err(WriteError::context("cannot commit the batch"))?;
        Ok(outcome)
    }
}

/// `payload` as jsonb accepts it: jsonb cannot hold U+0000, so a NUL in a string or a key
/// is written as the six characters `\u0000` (which JSON text would show anyway).
fn storable_in_jsonb(payload: &Value) -> Cow<'_, Value> {
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(fields) => fields
                .iter()
                .any(|(key, value)| key.contains('\0') || has_nul(value)),
            _ => false,
        }
    }
    fn escaped(value: &Value) -> Value {
        let escape = |text: &str| text.replace('\0', "\\u0000");
        match value {
            Value::String(text) => Value::String(escape(text)),
            Value::Array(items) => Value::Array(items.iter().map(escaped).collect()),
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(key, value)| (escape(key), escaped(value)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    if has_nul(payload) {
        Cow::Owned(escaped(payload))
    } else {
        Cow::Borrowed(payload)
    }
}

/// A batch as one array per column: the upsert reads them with `unnest`, so the rows go
/// straight into `users` in one statement, with no staging table to write and read back.
struct ColumnArrays<'a> {
    id: Vec<uuid::Uuid>,
    gender: Vec<Option<&'a str>>,
    title: Vec<Option<&'a str>>,
    first_name: Vec<&'a str>,
    last_name: Vec<&'a str>,
    street_number: Vec<Option<i32>>,
    street_name: Vec<Option<&'a str>>,
    city: Vec<Option<&'a str>>,
    state: Vec<Option<&'a str>>,
    country: Vec<Option<&'a str>>,
    postcode: Vec<Option<&'a str>>,
    latitude: Vec<Option<f64>>,
    longitude: Vec<Option<f64>>,
    timezone_offset: Vec<Option<&'a str>>,
    timezone_name: Vec<Option<&'a str>>,
    email: Vec<&'a str>,
    username: Vec<&'a str>,
    dob: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    registered_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    phone: Vec<Option<&'a str>>,
    cell: Vec<Option<&'a str>>,
    picture_large: Vec<Option<&'a str>>,
    picture_medium: Vec<Option<&'a str>>,
    picture_thumbnail: Vec<Option<&'a str>>,
    nat: Vec<Option<&'a str>>,
}

impl<'a> ColumnArrays<'a> {
    fn of(users: &[&'a User]) -> ColumnArrays<'a> {
        let text = |value: &'a Option<String>| value.as_deref();
        ColumnArrays {
            id: users.iter().map(|user| user.id).collect(),
            gender: users.iter().map(|user| text(&user.gender)).collect(),
            title: users.iter().map(|user| text(&user.title)).collect(),
            first_name: users.iter().map(|user| user.first_name.as_str()).collect(),
            last_name: users.iter().map(|user| user.last_name.as_str()).collect(),
            street_number: users.iter().map(|user| user.street_number).collect(),
            street_name: users.iter().map(|user| text(&user.street_name)).collect(),
            city: users.iter().map(|user| text(&user.city)).collect(),
            state: users.iter().map(|user| text(&user.state)).collect(),
            country: users.iter().map(|user| text(&user.country)).collect(),
            postcode: users.iter().map(|user| text(&user.postcode)).collect(),
            latitude: users.iter().map(|user| user.latitude).collect(),
            longitude: users.iter().map(|user| user.longitude).collect(),
            timezone_offset: users
                .iter()
                .map(|user| text(&user.timezone_offset))
                .collect(),
            timezone_name: users.iter().map(|user| text(&user.timezone_name)).collect(),
            email: users.iter().map(|user| user.email.as_str()).collect(),
            username: users.iter().map(|user| user.username.as_str()).collect(),
            dob: users.iter().map(|user| user.dob).collect(),
            registered_at: users.iter().map(|user| user.registered_at).collect(),
            phone: users.iter().map(|user| text(&user.phone)).collect(),
            cell: users.iter().map(|user| text(&user.cell)).collect(),
            picture_large: users.iter().map(|user| text(&user.picture_large)).collect(),
            picture_medium: users
                .iter()
                .map(|user| text(&user.picture_medium))
                .collect(),
            picture_thumbnail: users
                .iter()
                .map(|user| text(&user.picture_thumbnail))
                .collect(),
            nat: users.iter().map(|user| text(&user.nat)).collect(),
        }
    }

    /// In the order of `COLUMNS`.
    fn parameters(&self) -> [&(dyn ToSql + Sync); 25] {
        [
            &self.id,
            &self.gender,
            &self.title,
            &self.first_name,
            &self.last_name,
            &self.street_number,
            &self.street_name,
            &self.city,
            &self.state,
            &self.country,
            &self.postcode,
            &self.latitude,
            &self.longitude,
            &self.timezone_offset,
            &self.timezone_name,
            &self.email,
            &self.username,
            &self.dob,
            &self.registered_at,
            &self.phone,
            &self.cell,
            &self.picture_large,
            &self.picture_medium,
            &self.picture_thumbnail,
            &self.nat,
        ]
    }
}

fn last_of_each_id(users: &[User]) -> Vec<&User> {
    let mut position: HashMap<uuid::Uuid, usize> = HashMap::with_capacity(users.len());
    let mut unique: Vec<&User> = Vec::with_capacity(users.len());
    for user in users {
        match position.get(&user.id) {
            Some(&index) => unique[index] = user,
            None => {
                position.insert(user.id, unique.len());
                unique.push(user);
            }
        }
    }
    unique
}

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts new users, updates users whose fields differ, and leaves identical ones alone
/// (so a re-run of the same seed changes nothing, not even `updated_at`). `xmax = 0` tells
/// a fresh insert from an update in RETURNING.
fn upsert_sql() -> String {
    let columns = column_list();
    let typed_parameters: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(index, (_, column_type))| format!("${}::{}[]", index + 1, column_type.name()))
        .collect();
    let data_columns: Vec<&str> = COLUMNS.iter().skip(1).map(|(name, _)| *name).collect();
    let assignments: Vec<String> = data_columns
        .iter()
        .map(|name| format!("{name} = EXCLUDED.{name}"))
        .collect();
    let current: Vec<String> = data_columns
        .iter()
        .map(|name| format!("users.{name}"))
        .collect();
    let incoming: Vec<String> = data_columns
        .iter()
        .map(|name| format!("EXCLUDED.{name}"))
        .collect();
    format!(
        "WITH written AS ( \
             INSERT INTO users ({columns}) SELECT * FROM unnest({}) \
             ON CONFLICT (id) DO UPDATE SET {}, updated_at = now() \
             WHERE ({}) IS DISTINCT FROM ({}) \
             RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        typed_parameters.join(", "),
        assignments.join(", "),
        current.join(", "),
        incoming.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_in_reject_payloads_are_written_as_escapes() {
        let payload = serde_json::json!({"a\u{0}": ["x\u{0}y", 1, {"k": "\u{0}"}], "b": "fine"});
        let stored = storable_in_jsonb(&payload);
        assert_eq!(
            stored.to_string(),
            r#"{"a\\u0000":["x\\u0000y",1,{"k":"\\u0000"}],"b":"fine"}"#
        );
        let clean = serde_json::json!({"b": "fine"});
        assert!(matches!(storable_in_jsonb(&clean), Cow::Borrowed(_)));
    }

    #[test]
    fn every_column_is_one_typed_array_parameter() {
        // `ColumnArrays::parameters` returns a fixed-size array; this pins it to the columns.
        assert_eq!(COLUMNS.len(), 25);
        let sql = upsert_sql();
        assert!(sql.contains("unnest($1::uuid[], $2::text[]"), "{sql}");
        assert!(sql.contains("$25::text[])"), "{sql}");
    }

    #[test]
    fn the_upsert_skips_identical_rows() {
        let sql = upsert_sql();
        assert!(sql.contains("IS DISTINCT FROM"));
        assert!(
            !sql.contains("id = EXCLUDED.id"),
            "the key is never updated"
        );
    }
}
