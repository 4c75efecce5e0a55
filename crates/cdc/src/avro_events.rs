//! `walflow cdc --format avro`: each table's key and value schemas registered in the schema
//! registry before its first event (subjects `<topic>-key` and `<topic>-value`), checked
//! against the subject's compatibility rule first, and again whenever a Relation message
//! changes the table; events encoded in the Confluent wire format with the registered ids.
//! Ids are kept per table, so an event costs no registry call.

use std::collections::HashMap;

use walflow_pgoutput::Relation;

use crate::avro::{self, SchemaIds};
use crate::envelope::{topic_for, Change, ChangeEvent};
use walflow_wire::avro::schema::column_changes;
use walflow_wire::avro::TableSchemas;
use walflow_wire::registry::{Compatibility, RegistryError, SchemaRegistry};

#[derive(Debug, thiserror::Error)]
pub enum AvroEventError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "table {table}: the new schema of {subject} breaks its readers under the registry's \
         {level} rule ({changes}); registry: {reasons}. Keep the column compatible (add \
         columns instead of changing them), or run cdc with --allow-incompatible-schemas to \
         register it anyway (the subject's rule is set to NONE)"
    )]
    Incompatible {
        table: String,
        subject: String,
        level: String,
        changes: String,
        reasons: String,
    },
    #[error(
        "table {table}: columns \"{first}\" and \"{second}\" both become the Avro field \
         {adjusted} (Avro names hold only letters, digits and _); rename one of them, or stream \
         this table with --format json"
    )]
    CollidingFieldNames {
        table: String,
        first: String,
        second: String,
        adjusted: String,
    },
    /// The table's schemas, as walflow writes them, are not Avro apache-avro accepts.
    #[error("table {table}: {source}")]
    InvalidSchema {
        table: String,
        #[source]
        source: apache_avro::Error,
    },
    #[error("table {table}: no registered schema (a change before its Relation message)")]
    NoRegisteredSchema { table: String },
    #[error("table {table}: {source}")]
    Encode {
        table: String,
        #[source]
        source: avro::EncodeError,
    },
}

struct RegisteredTable {
    schemas: TableSchemas,
    ids: SchemaIds,
}

pub struct AvroEvents {
    registry: SchemaRegistry,
    allow_incompatible: bool,
    tables: HashMap<u32, RegisteredTable>,
}

impl AvroEvents {
    pub fn new(registry_url: &str, allow_incompatible: bool) -> Result<AvroEvents, RegistryError> {
        Ok(AvroEvents {
            registry: SchemaRegistry::new(registry_url)?,
            allow_incompatible,
            tables: HashMap::new(),
        })
    }

    /// Makes sure the table's current schemas are registered (a no-op when they already
    /// are); called for every Relation message and before a snapshot copies the table.
    pub async fn prepare(
        &mut self,
        relation: &Relation,
        topic_prefix: &str,
    ) -> Result<(), AvroEventError> {
        let topic = topic_for(topic_prefix, relation);
        let schemas = avro::schemas(relation, &topic);
        if self
            .tables
            .get(&relation.oid)
            .is_some_and(|known| known.schemas == schemas)
        {
            return Ok(());
        }
        let table = format!("{}.{}", relation.namespace, relation.name);
        if let Some((first, second, adjusted)) = avro::colliding_field_names(relation) {
            return Err(AvroEventError::CollidingFieldNames {
                table,
                first,
                second,
                adjusted,
            });
        }
        // Checked here, before the registry sees it.
        schemas
            .parse()
            .map_err(|source| AvroEventError::InvalidSchema {
                table: table.clone(),
                source,
            })?;
        let value_id = self
            .register(
                &table,
                &format!("{topic}-value"),
                &schemas.value,
                relation.oid,
            )
            .await?;
        let key_id = match &schemas.key {
            Some(key) => Some(
                self.register(&table, &format!("{topic}-key"), key, relation.oid)
                    .await?,
            ),
            None => None,
        };
        tracing::info!(%table, value_id, ?key_id, "Avro schemas registered");
        self.tables.insert(
            relation.oid,
            RegisteredTable {
                schemas,
                ids: SchemaIds {
                    key: key_id,
                    value: value_id,
                },
            },
        );
        Ok(())
    }

    async fn register(
        &self,
        table: &str,
        subject: &str,
        schema: &serde_json::Value,
        oid: u32,
    ) -> Result<u32, AvroEventError> {
        if let Compatibility::Incompatible { level, reasons } =
            self.registry.check(subject, schema).await?
        {
            let previous = self.tables.get(&oid).map(|known| {
                if subject.ends_with("-value") {
                    column_changes(&known.schemas.value, schema)
                } else {
                    vec!["the key columns changed".to_owned()]
                }
            });
            let changes = previous
                .filter(|changes| !changes.is_empty())
                .map(|changes| changes.join(", "))
                .unwrap_or_else(|| "the table changed since its last registered schema".into());
            if !self.allow_incompatible {
                return Err(AvroEventError::Incompatible {
                    table: table.to_owned(),
                    subject: subject.to_owned(),
                    level,
                    changes,
                    reasons: if reasons.is_empty() {
                        "incompatible".into()
                    } else {
                        reasons.join("; ")
                    },
                });
            }
            tracing::warn!(%table, %subject, %changes, "registering an incompatible schema, as --allow-incompatible-schemas says (the subject's rule is set to NONE)");
            self.registry.set_level(subject, "NONE").await?;
        }
        Ok(self.registry.register(subject, schema).await?)
    }

    /// A change as an Avro event (its table must have been prepared).
    pub fn row_event(&self, change: &Change<'_>) -> Result<ChangeEvent, AvroEventError> {
        let relation = change.relation;
        let table =
            self.tables
                .get(&relation.oid)
                .ok_or_else(|| AvroEventError::NoRegisteredSchema {
                    table: format!("{}.{}", relation.namespace, relation.name),
                })?;
        let (key, value) = avro::encode_change(
            table.ids,
            relation,
            change.operation,
            change.before,
            change.after,
            &change.source,
            change.ts_ms,
        )
        .map_err(|source| AvroEventError::Encode {
            table: format!("{}.{}", relation.namespace, relation.name),
            source,
        })?;
        Ok(ChangeEvent {
            topic: topic_for(change.topic_prefix, relation),
            key,
            value: Some(value),
        })
    }
}
