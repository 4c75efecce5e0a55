//! Sources with `format = 'debezium_avro'`: events in the Confluent wire format (a zero byte,
//! the writer schema's registry id, the Avro datum), as `walflow cdc --format avro` and
//! Debezium's AvroConverter write them. The writer schema is fetched from the registry by id
//! once and compiled into walflow-wire's [`Reader`]; each datum is then read with it into the
//! parts of a change event the JSON decoder reads too (decode.rs): the op, the commit time,
//! the position, and the declared columns of each image, other columns skipped unread. Both
//! formats so project onto the declared columns the same way (a column the event lacks reads
//! as NULL, one the pipeline does not declare is skipped).

use std::borrow::Cow;
use std::collections::HashMap;

use apache_avro::Schema;
use walflow_wire::avro::read::SchemaError;
use walflow_wire::avro::read::{DeclaredColumns, Reader};
use walflow_wire::confluent;
use walflow_wire::confluent::NotFramed;
use walflow_wire::registry::{RegistryError, SchemaRegistry};

use crate::decode::{decode_parts, DecodeError, DecodedEvent, EventParts, Image};
use crate::definition::SourceTable;

/// Writer schemas by registry id, compiled.
pub struct WriterSchemas {
    registry: SchemaRegistry,
    schemas: HashMap<u32, Reader>,
}

impl WriterSchemas {
    pub fn new(registry_url: &str) -> Result<WriterSchemas, RegistryError> {
        Ok(WriterSchemas {
            registry: SchemaRegistry::new(registry_url)?,
            schemas: HashMap::new(),
        })
    }

    /// The writer schema's id of a wire-format payload.
    pub fn schema_id(payload: &[u8]) -> Result<u32, NotFramed> {
        confluent::split(payload).map(|(id, _)| id)
    }

    /// Fetches the schema of `id` unless it is known. A registry that cannot be reached or
    /// fails (5xx) is an error of the run, to retry; a registry that has no such schema (4xx)
    /// or one that is not Avro is an error of the event, which waiting never mends.
    pub async fn fetch(&mut self, id: u32) -> Result<(), SchemaFetchError> {
        if self.schemas.contains_key(&id) {
            return Ok(());
        }
        let text = match self.registry.schema(id).await {
            Ok(text) => text,
            Err(error) if error.is_transient() => return Err(SchemaFetchError::Unavailable(error)),
            Err(source) => return Err(SchemaFetchError::NotGiven { id, source }),
        };
        let schema =
            Schema::parse_str(&text).map_err(|source| SchemaFetchError::NotAvro { id, source })?;
        let reader =
            Reader::new(&schema).map_err(|source| SchemaFetchError::Unreadable { id, source })?;
        self.schemas.insert(id, reader);
        Ok(())
    }

    /// A wire-format change event decoded for `source` (its writer schema must have been
    /// fetched).
    pub fn decode(
        &self,
        source: &SourceTable,
        payload: &[u8],
    ) -> Result<DecodedEvent, DecodeError> {
        let (id, mut datum) = confluent::split(payload)?;
        let reader = self
            .schemas
            .get(&id)
            .ok_or(DecodeError::SchemaNotFetched { id })?;
        let declared = DeclaredColumns {
            count: source.columns.len(),
            position_of: |name: &str| source.columns.iter().position(|column| column.name == name),
        };
        let envelope = reader
            .read_envelope(&declared, &mut datum)
            .map_err(|source| DecodeError::Datum { id, source })?;
        if !datum.is_empty() {
            return Err(DecodeError::TrailingBytes {
                id,
                extra_bytes: datum.len(),
            });
        }
        decode_parts(
            source,
            EventParts {
                op: Cow::Owned(envelope.op),
                before: envelope.before.map(Image::Columns),
                after: envelope.after.map(Image::Columns),
                commit_time_ms: envelope.commit_time_ms,
                position: envelope.position,
            },
        )
    }
}

/// Why a writer schema could not be had from the registry.
#[derive(Debug, thiserror::Error)]
pub enum SchemaFetchError {
    /// The registry cannot be reached or failed (5xx): worth waiting for.
    #[error(transparent)]
    Unavailable(RegistryError),
    /// The registry answered and has no such schema (unknown id, deleted schema).
    #[error("the schema registry does not give schema {id}: {source}")]
    NotGiven {
        id: u32,
        #[source]
        source: RegistryError,
    },
    #[error("schema {id} from the registry is not Avro: {source}")]
    NotAvro {
        id: u32,
        #[source]
        source: apache_avro::Error,
    },
    #[error("schema {id} from the registry: {source}")]
    Unreadable {
        id: u32,
        #[source]
        source: SchemaError,
    },
}

impl SchemaFetchError {
    /// Whether waiting may mend it: only a registry that cannot be reached or failed. The
    /// others make the event unreadable however long one waits.
    pub fn is_transient(&self) -> bool {
        matches!(self, SchemaFetchError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's userinfo password never reaches the errors logged on every retry.
    #[tokio::test]
    async fn an_unreachable_registry_is_named_without_its_password() {
        let mut schemas =
            WriterSchemas::new("http://user:s3cret@127.0.0.1:1/apis/ccompat/v7").unwrap();
        let error = schemas.fetch(7).await.unwrap_err();
        let message = format!("{error:?}");
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
    use apache_avro::types::Value as Avro;

    /// An envelope with a column of every type, as cdc and Debezium write them.
    const ZOO: &str = r#"{"type":"record","name":"Envelope","namespace":"walflow.public.zoo","fields":[
        {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
            {"name":"id","type":"long"},
            {"name":"flag","type":["null","boolean"],"default":null},
            {"name":"small","type":["null","int"],"default":null},
            {"name":"real","type":["null","float"],"default":null},
            {"name":"ratio","type":["null","double"],"default":null},
            {"name":"blob","type":["null","bytes","string"],"default":null},
            {"name":"born","type":["null",{"type":"int","logicalType":"date"}],"default":null},
            {"name":"seen","type":["null",{"type":"long","logicalType":"local-timestamp-micros"}],"default":null},
            {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-millis"}],"default":null},
            {"name":"nanos","type":["null",{"type":"long","logicalType":"timestamp-nanos"}],"default":null},
            {"name":"uid","type":["null",{"type":"string","logicalType":"uuid"}],"default":null},
            {"name":"mood","type":["null",{"type":"enum","name":"Mood","symbols":["sad","happy"]}],"default":null},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"scores","type":{"type":"map","values":["null","long"]}},
            {"name":"hash","type":{"type":"fixed","name":"Hash","size":4}},
            {"name":"note","type":["null","string"],"default":null}]}],"default":null},
        {"name":"after","type":["null","Value"],"default":null},
        {"name":"op","type":"string"}]}"#;

    fn zoo_row(id: i64, variant: u32) -> Avro {
        let some = |value: Avro| Avro::Union(1, Box::new(value));
        let null = || Avro::Union(0, Box::new(Avro::Null));
        let pick = |value: Avro| {
            if variant % 3 == 2 {
                null()
            } else {
                some(value)
            }
        };
        Avro::Record(vec![
            ("id".into(), Avro::Long(id)),
            (
                "flag".into(),
                pick(Avro::Boolean(variant.is_multiple_of(2))),
            ),
            ("small".into(), pick(Avro::Int(i32::MIN + variant as i32))),
            (
                "real".into(),
                pick(Avro::Float(
                    [1.5, f32::NAN, f32::NEG_INFINITY][variant as usize % 3],
                )),
            ),
            (
                "ratio".into(),
                pick(Avro::Double(
                    [-0.1, f64::INFINITY, 1e300][variant as usize % 3],
                )),
            ),
            (
                "blob".into(),
                if variant % 2 == 1 {
                    Avro::Union(
                        2,
                        Box::new(Avro::String("__debezium_unavailable_value".into())),
                    )
                } else {
                    pick(Avro::Bytes(vec![0, 255, variant as u8]))
                },
            ),
            ("born".into(), pick(Avro::Date(-735_160 + variant as i32))),
            (
                "seen".into(),
                pick(Avro::LocalTimestampMicros(i64::MAX - i64::from(variant))),
            ),
            (
                "at".into(),
                pick(Avro::TimestampMillis(
                    1_767_315_845_500 + i64::from(variant),
                )),
            ),
            ("nanos".into(), pick(Avro::TimestampNanos(-1_500_000_999))),
            (
                "uid".into(),
                pick(Avro::Uuid(
                    "7a0eed16-9430-4d68-901f-c0d4c1c3bf00".parse().unwrap(),
                )),
            ),
            (
                "mood".into(),
                pick(Avro::Enum(
                    variant % 2,
                    ["sad", "happy"][variant as usize % 2].into(),
                )),
            ),
            (
                "tags".into(),
                Avro::Array(
                    (0..variant)
                        .map(|tag| Avro::String(format!("t\"{tag}\\é")))
                        .collect(),
                ),
            ),
            (
                "scores".into(),
                Avro::Map(
                    (0..variant)
                        .map(|key| (format!("k{key}"), some(Avro::Long(-(1 << (key * 9))))))
                        .collect(),
                ),
            ),
            ("hash".into(), Avro::Fixed(4, vec![1, 2, 3, variant as u8])),
            ("note".into(), pick(Avro::String("héllo\n\u{1}".into()))),
        ])
    }

    fn source(mode: crate::definition::SourceMode) -> SourceTable {
        use crate::definition::{Column, Position, SourceFormat};
        use crate::value::ColumnType;
        let column = |name: &str, column_type| Column {
            name: name.into(),
            column_type,
        };
        SourceTable {
            name: "zoo".into(),
            columns: vec![
                column("id", ColumnType::Int64),
                column("born", ColumnType::Date),
                column("at", ColumnType::Timestamp),
                column("real", ColumnType::Float64),
                column("blob", ColumnType::Text),
                column("dropped_long_ago", ColumnType::Text),
            ],
            primary_key: vec![0],
            topic: "t".into(),
            format: SourceFormat::DebeziumAvro,
            mode,
            watermark: None,
            position: Position::default(),
        }
    }

    #[test]
    fn a_wire_format_event_decodes_onto_the_declared_columns() {
        use crate::decode::DecodedEvent;
        use crate::definition::SourceMode;
        use crate::operators::normalize::SourceChange;
        use crate::value::Value;

        let schema = Schema::parse_str(ZOO).unwrap();
        let value = Avro::Record(vec![
            ("before".into(), Avro::Union(1, Box::new(zoo_row(7, 0)))),
            ("after".into(), Avro::Union(1, Box::new(zoo_row(7, 1)))),
            ("op".into(), Avro::String("u".into())),
        ]);
        let mut payload = vec![0, 0, 0, 0, 9];
        payload.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
        assert_eq!(WriterSchemas::schema_id(&payload), Ok(9));
        let mut schemas = WriterSchemas::new("http://unused").unwrap();
        schemas.schemas.insert(9, Reader::new(&schema).unwrap());
        let DecodedEvent {
            change,
            commit_time_ms,
            position,
        } = schemas
            .decode(&source(SourceMode::Updating), &payload)
            .unwrap();
        // The test envelope has no source block and no transaction block.
        assert_eq!(commit_time_ms, None);
        assert_eq!(position, None);
        let SourceChange::Upsert {
            before,
            after,
            unavailable,
        } = change
        else {
            panic!("an update is an upsert: {change:?}")
        };
        assert_eq!(
            before.unwrap(),
            vec![
                Value::Int64(7),
                Value::Date(-735_160),
                Value::Timestamp(1_767_315_845_500_000),
                Value::Float64(1.5),
                Value::Text("AP8A".into()),
                Value::Null,
            ]
        );
        assert_eq!(after[1], Value::Date(-735_159));
        // The TOASTed bytea of variant 1: its marker, and the column named unavailable.
        assert_eq!(unavailable, vec![4]);

        let changelog = schemas
            .decode(&source(SourceMode::Changelog), &payload)
            .unwrap();
        assert!(matches!(changelog.change, SourceChange::Append(_)));

        let mut longer = payload.clone();
        longer.push(0);
        let error = schemas
            .decode(&source(SourceMode::Updating), &longer)
            .unwrap_err();
        assert!(
            matches!(error, DecodeError::TrailingBytes { extra_bytes: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("1 bytes more"), "{error}");
        assert!(WriterSchemas::schema_id(b"{\"op\":\"c\"}").is_err());
    }
}
