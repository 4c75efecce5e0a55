//! `--churn`: changes a share of the users already in Postgres so that downstream sees
//! every kind of change, not just inserts: moves (new address and coordinates), new email
//! addresses, and deletions, in the proportions 2 : 2 : 1.

use tokio_postgres::Client;

use crate::writer::WriteError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChurnOutcome {
    pub moved: u64,
    pub new_emails: u64,
    pub deleted: u64,
}

/// Changes `count` users picked at random, in one transaction.
pub async fn churn(client: &mut Client, count: u64) -> Result<ChurnOutcome, WriteError> {
    let limit = i64::try_from(count).unwrap_or(i64::MAX);
    let transaction = client
        .transaction()
        .await
        .map_err(WriteError::context("cannot begin the churn transaction"))?;
    transaction
        .execute(
            "CREATE TEMP TABLE walflow_churn ON COMMIT DROP AS \
             SELECT id, row_number() OVER () AS n FROM (SELECT id FROM users ORDER BY random() LIMIT $1) AS picked",
            &[&limit],
        )
        .await
        .map_err(WriteError::context("cannot pick users to churn"))?;
    let moved = transaction
        .execute(
            "UPDATE users SET \
                 street_number = 1 + floor(random() * 9999)::int, \
                 postcode = lpad(floor(random() * 99999)::int::text, 5, '0'), \
                 latitude = round((random() * 180 - 90)::numeric, 4)::float8, \
                 longitude = round((random() * 360 - 180)::numeric, 4)::float8, \
                 updated_at = now() \
             FROM walflow_churn WHERE users.id = walflow_churn.id AND walflow_churn.n % 5 IN (1, 2)",
            &[],
        )
        .await
        .map_err(WriteError::context("cannot move users"))?;
    let new_emails = transaction
        .execute(
            "UPDATE users SET \
                 email = lower(first_name || '.' || last_name) || floor(random() * 100000)::int || '@example.org', \
                 updated_at = now() \
             FROM walflow_churn WHERE users.id = walflow_churn.id AND walflow_churn.n % 5 IN (3, 4)",
            &[],
        )
        .await
        .map_err(WriteError::context("cannot change emails"))?;
    let deleted = transaction
        .execute(
            "DELETE FROM users USING walflow_churn \
             WHERE users.id = walflow_churn.id AND walflow_churn.n % 5 = 0",
            &[],
        )
        .await
        .map_err(WriteError::context("cannot delete users"))?;
    transaction
        .commit()
        .await
        .map_err(WriteError::context("cannot commit the churn"))?;
    Ok(ChurnOutcome {
        moved,
        new_emails,
        deleted,
    })
}
