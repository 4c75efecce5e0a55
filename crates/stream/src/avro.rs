//! Sources with `format = 'debezium_avro'`: events in the Confluent wire format (a zero byte,
//! the writer schema's registry id, the Avro datum), as `walflow cdc --format avro` and
//! Debezium's AvroConverter write them. The writer schema is fetched from the registry by id
//! once and kept; each datum is then read with it and turned into the JSON envelope the
//! Debezium JSON decoder reads, so both formats project onto the declared columns the same
//! way (a column the event lacks reads as NULL, one the pipeline does not declare is
//! skipped).

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{json, Map, Value as Json};

/// Writer schemas by registry id.
pub struct WriterSchemas {
    base: String,
    client: reqwest::Client,
    schemas: HashMap<u32, Schema>,
}

impl WriterSchemas {
    pub fn new(registry_url: &str) -> Result<WriterSchemas, String> {
        Ok(WriterSchemas {
            base: registry_url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|error| error.to_string())?,
            schemas: HashMap::new(),
        })
    }

    /// The writer schema's id of a wire-format payload.
    pub fn schema_id(payload: &[u8]) -> Result<u32, String> {
        match payload {
            [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(
                "not an Avro event in the Confluent wire format (no leading zero byte and \
                 schema id)"
                    .into(),
            ),
        }
    }

    /// Fetches the schema of `id` unless it is known. A registry that cannot be reached is
    /// an error of the run (retried), not of the event.
    pub async fn fetch(&mut self, id: u32) -> Result<(), String> {
        if self.schemas.contains_key(&id) {
            return Ok(());
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|error| format!("cannot reach the schema registry at {url}: {error}"))?;
        let status = response.status();
        let body: Json = response
            .json()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        let text = body["schema"]
            .as_str()
            .ok_or_else(|| format!("GET {url}: HTTP {status}: {body}"))?;
        let schema = Schema::parse_str(text)
            .map_err(|error| format!("schema {id} from the registry is not Avro: {error}"))?;
        self.schemas.insert(id, schema);
        Ok(())
    }

    /// The datum of a wire-format payload as the Debezium JSON envelope (the schema must have
    /// been fetched).
    pub fn to_json(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let id = WriterSchemas::schema_id(payload)?;
        let schema = self
            .schemas
            .get(&id)
            .ok_or_else(|| format!("schema {id} was not fetched"))?;
        let value = apache_avro::from_avro_datum(schema, &mut &payload[5..], None)
            .map_err(|error| format!("cannot read the Avro datum with schema {id}: {error}"))?;
        Ok(json(&value).to_string().into_bytes())
    }
}

/// An Avro value as the JSON form walflow's Debezium JSON decoder reads: dates as days,
/// timestamps as microseconds, bytes as base64, NaN and infinities as strings.
fn json(value: &Avro) -> Json {
    use base64::Engine;
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(flag) => json!(flag),
        Avro::Int(number) => json!(number),
        Avro::Long(number) => json!(number),
        Avro::Float(number) => float(f64::from(*number)),
        Avro::Double(number) => float(*number),
        Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Avro::String(text) | Avro::Enum(_, text) => json!(text),
        Avro::Uuid(uuid) => json!(uuid.to_string()),
        Avro::Date(days) => json!(days),
        Avro::TimeMillis(millis) => json!(millis),
        Avro::TimeMicros(micros) => json!(micros),
        Avro::TimestampMillis(millis) | Avro::LocalTimestampMillis(millis) => {
            json!(millis.saturating_mul(1000))
        }
        Avro::TimestampMicros(micros) | Avro::LocalTimestampMicros(micros) => json!(micros),
        Avro::TimestampNanos(nanos) | Avro::LocalTimestampNanos(nanos) => json!(nanos / 1000),
        Avro::Union(_, inner) => json(inner),
        Avro::Array(items) => Json::Array(items.iter().map(json).collect()),
        Avro::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| (key.clone(), json(value)))
                .collect(),
        ),
        Avro::Record(fields) => {
            let mut object = Map::new();
            for (name, value) in fields {
                object.insert(name.clone(), json(value));
            }
            Json::Object(object)
        }
        Avro::Decimal(decimal) => json!(format!("{decimal:?}")),
        other => json!(format!("{other:?}")),
    }
}

fn float(number: f64) -> Json {
    if number.is_nan() {
        json!("NaN")
    } else if number.is_infinite() {
        json!(if number > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        })
    } else {
        json!(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_format_datum_reads_as_the_json_envelope() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"Envelope","fields":[
                {"name":"after","type":["null",{"type":"record","name":"Value","fields":[
                    {"name":"id","type":"long"},
                    {"name":"ratio","type":["null","double"],"default":null},
                    {"name":"born","type":["null",{"type":"int","logicalType":"date"}],"default":null}]}]},
                {"name":"op","type":"string"}]}"#,
        )
        .unwrap();
        let datum = apache_avro::to_avro_datum(
            &schema,
            Avro::Record(vec![
                (
                    "after".into(),
                    Avro::Union(
                        1,
                        Box::new(Avro::Record(vec![
                            ("id".into(), Avro::Long(7)),
                            (
                                "ratio".into(),
                                Avro::Union(1, Box::new(Avro::Double(f64::NAN))),
                            ),
                            ("born".into(), Avro::Union(1, Box::new(Avro::Date(3)))),
                        ])),
                    ),
                ),
                ("op".into(), Avro::String("c".into())),
            ]),
        )
        .unwrap();
        let mut payload = vec![0, 0, 0, 0, 9];
        payload.extend(datum);
        assert_eq!(WriterSchemas::schema_id(&payload), Ok(9));
        let mut schemas = WriterSchemas::new("http://unused").unwrap();
        schemas.schemas.insert(9, schema);
        let json: Json = serde_json::from_slice(&schemas.to_json(&payload).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"after": {"id": 7, "ratio": "NaN", "born": 3}, "op": "c"})
        );
        assert!(WriterSchemas::schema_id(b"{\"op\":\"c\"}").is_err());
    }
}
