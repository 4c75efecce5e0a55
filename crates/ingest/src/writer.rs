//! The Postgres side of ingest. Each batch is one transaction: its users are copied (binary
//! COPY) into a temporary table and upserted from there, and its rejects are recorded, so a
//! batch is either entirely in the database or not at all, whatever kills the process.

use std::collections::HashMap;

use serde_json::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::model::User;

/// Columns walflow writes, in COPY order; `ingested_at` and `updated_at` are the table's.
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
    upsert_sql: String,
    copy_sql: String,
}

impl UserWriter {
    /// `source` is recorded with each reject, so a reject says where it came from.
    pub async fn connect(postgres_url: &str, source: &str) -> Result<UserWriter, WriteError> {
        let (client, connection) = tokio_postgres::connect(postgres_url, NoTls)
            .await
            .map_err(WriteError::context("cannot connect to Postgres"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "ingest's Postgres connection ended");
            }
        });
        client
            .batch_execute(
                "CREATE TEMP TABLE walflow_ingest_batch (LIKE users INCLUDING DEFAULTS) \
                 ON COMMIT DELETE ROWS",
            )
            .await
            .map_err(WriteError::context(
                "cannot create the staging table (has `walflow migrate` run?)",
            ))?;
        Ok(UserWriter {
            client,
            source: source.to_owned(),
            upsert_sql: upsert_sql(),
            copy_sql: copy_sql(),
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
            let sink = transaction
                .copy_in(&self.copy_sql)
                .await
                .map_err(WriteError::context("cannot start COPY"))?;
            let types: Vec<Type> = COLUMNS
                .iter()
                .map(|(_, column_type)| column_type.clone())
                .collect();
            let writer = BinaryCopyInWriter::new(sink, &types);
            futures_util::pin_mut!(writer);
            for user in &users {
                writer
                    .as_mut()
                    .write(&row(user))
                    .await
                    .map_err(WriteError::context(format!("cannot copy user {}", user.id)))?;
            }
            writer
                .finish()
                .await
                .map_err(WriteError::context("cannot finish COPY"))?;
            let counts = transaction
                .query_one(&self.upsert_sql, &[])
                .await
                .map_err(WriteError::context("upsert into users failed"))?;
            outcome.inserted = counts.get::<_, i64>(0) as u64;
            outcome.updated = counts.get::<_, i64>(1) as u64;
            outcome.unchanged = users.len() as u64 - outcome.inserted - outcome.updated;
        }
        if !rejects.is_empty() {
            let payloads: Vec<&Value> = rejects.iter().map(|reject| &reject.payload).collect();
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

fn row(user: &User) -> [&(dyn ToSql + Sync); 25] {
    [
        &user.id,
        &user.gender,
        &user.title,
        &user.first_name,
        &user.last_name,
        &user.street_number,
        &user.street_name,
        &user.city,
        &user.state,
        &user.country,
        &user.postcode,
        &user.latitude,
        &user.longitude,
        &user.timezone_offset,
        &user.timezone_name,
        &user.email,
        &user.username,
        &user.dob,
        &user.registered_at,
        &user.phone,
        &user.cell,
        &user.picture_large,
        &user.picture_medium,
        &user.picture_thumbnail,
        &user.nat,
    ]
}

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn copy_sql() -> String {
    format!(
        "COPY walflow_ingest_batch ({}) FROM STDIN BINARY",
        column_list()
    )
}

/// Inserts new users, updates users whose fields differ, and leaves identical ones alone
/// (so a re-run of the same seed changes nothing, not even `updated_at`). `xmax = 0` tells
/// a fresh insert from an update in RETURNING.
fn upsert_sql() -> String {
    let columns = column_list();
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
             INSERT INTO users ({columns}) SELECT {columns} FROM walflow_ingest_batch \
             ON CONFLICT (id) DO UPDATE SET {}, updated_at = now() \
             WHERE ({}) IS DISTINCT FROM ({}) \
             RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        assignments.join(", "),
        current.join(", "),
        incoming.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_has_one_value_per_column() {
        // `row` returns a fixed-size array; this pins its size to the column list.
        assert_eq!(COLUMNS.len(), 25);
        assert!(copy_sql().contains("(id, gender,"));
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
