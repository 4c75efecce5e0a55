//! Sources with `format = 'debezium_avro'`: events in the Confluent wire format (a zero byte,
//! the writer schema's registry id, the Avro datum), as `walflow cdc --format avro` and
//! Debezium's AvroConverter write them. The writer schema is fetched from the registry by id
//! once, parsed with apache-avro and compiled into a [`Reader`]; each datum is then read with
//! it into the parts of a change event the JSON decoder reads too (decode.rs): the op, the
//! commit time, and the declared columns of each image, other columns skipped unread. Both
//! formats so project onto the declared columns the same way (a column the event lacks reads
//! as NULL, one the pipeline does not declare is skipped).

use std::collections::HashMap;
use std::time::Duration;

use std::borrow::Cow;

use apache_avro::schema::{Name, Namespace};
use apache_avro::Schema;
use base64::Engine;
use serde_json::Value as Json;

use crate::decode::{decode_parts, DecodedEvent, EventParts, Image};
use crate::definition::SourceTable;

/// Writer schemas by registry id, compiled.
pub struct WriterSchemas {
    base: String,
    /// The registry's address as messages show it: without the userinfo password.
    shown: String,
    client: reqwest::Client,
    schemas: HashMap<u32, Reader>,
}

impl WriterSchemas {
    pub fn new(registry_url: &str) -> Result<WriterSchemas, String> {
        Ok(WriterSchemas {
            base: registry_url.trim_end_matches('/').to_owned(),
            shown: walflow_redact::url(registry_url.trim_end_matches('/')),
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

    /// Fetches the schema of `id` unless it is known. A registry that cannot be reached or
    /// fails (5xx) is an error of the run, to retry; a registry that has no such schema (4xx)
    /// or one that is not Avro is an error of the event, which waiting never mends.
    pub async fn fetch(&mut self, id: u32) -> Result<(), SchemaFetchError> {
        if self.schemas.contains_key(&id) {
            return Ok(());
        }
        let request = format!("{}/schemas/ids/{id}", self.base);
        // Every message names the redacted address; reqwest's own errors lose theirs.
        let url = format!("{}/schemas/ids/{id}", self.shown);
        let response = self.client.get(&request).send().await.map_err(|error| {
            SchemaFetchError::Unavailable(format!(
                "cannot reach the schema registry at {url}: {}",
                error.without_url()
            ))
        })?;
        let status = response.status();
        let body = response.text().await.map_err(|error| {
            SchemaFetchError::Unavailable(format!(
                "GET {url}: HTTP {status}: {}",
                error.without_url()
            ))
        })?;
        if status.is_server_error() {
            return Err(SchemaFetchError::Unavailable(format!(
                "GET {url}: HTTP {status}: {body}"
            )));
        }
        let refused = |message: String| SchemaFetchError::Refused { id, message };
        if !status.is_success() {
            return Err(refused(format!(
                "the schema registry does not give schema {id}: GET {url}: HTTP {status}: {body}"
            )));
        }
        let body: Json = serde_json::from_str(&body)
            .map_err(|error| refused(format!("GET {url}: HTTP {status}: not JSON: {error}")))?;
        let text = body["schema"]
            .as_str()
            .ok_or_else(|| refused(format!("GET {url}: HTTP {status}: no schema in {body}")))?;
        let schema = Schema::parse_str(text).map_err(|error| {
            refused(format!(
                "schema {id} from the registry is not Avro: {error}"
            ))
        })?;
        let reader = Reader::new(&schema)
            .map_err(|error| refused(format!("schema {id} from the registry: {error}")))?;
        self.schemas.insert(id, reader);
        Ok(())
    }

    /// A wire-format change event decoded for `source` (its writer schema must have been
    /// fetched).
    pub fn decode(&self, source: &SourceTable, payload: &[u8]) -> Result<DecodedEvent, String> {
        let id = WriterSchemas::schema_id(payload)?;
        let reader = self
            .schemas
            .get(&id)
            .ok_or_else(|| format!("schema {id} was not fetched"))?;
        let mut datum = &payload[5..];
        let parts = reader
            .event_parts(source, &mut datum)
            .map_err(|error| format!("cannot read the Avro datum with schema {id}: {error}"))?;
        if !datum.is_empty() {
            return Err(format!(
                "the Avro datum has {} bytes more than schema {id} reads",
                datum.len()
            ));
        }
        decode_parts(source, parts)
    }
}

/// Why a writer schema could not be had from the registry.
#[derive(Debug, thiserror::Error)]
pub enum SchemaFetchError {
    /// The registry cannot be reached or failed (5xx): worth waiting for.
    #[error("{0}")]
    Unavailable(String),
    /// The registry answered and the event's schema id is of no use (unknown id, deleted
    /// schema, not Avro): the event cannot be read, however long one waits.
    #[error("{message}")]
    Refused { id: u32, message: String },
}

/// How deep a datum may nest, counting every record, array, map and union. A Debezium
/// envelope nests about six deep. Without a limit a hostile datum (a recursive type, one
/// level per byte) overflows the stack, which aborts the whole process instead of failing
/// one event.
const MAX_DEPTH: usize = 64;

/// How many zero-width items (nulls, records of them, `fixed` of size 0) one datum may hold
/// in its arrays and maps. They cost nothing to write, so the datum's size does not bound
/// them, and a block count of 2^62 fits in ten bytes.
const MAX_ZERO_WIDTH_ITEMS: u64 = 1 << 16;

/// A writer schema compiled for reading: every type a node of one arena, named types and
/// references resolved once.
pub struct Reader {
    nodes: Vec<Node>,
    /// The fewest bytes a value of each node takes.
    widths: Vec<u64>,
}

type NodeId = usize;

enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Uuid,
    /// Days since 1970-01-01, as the JSON decoder reads dates.
    Date,
    TimeMillis,
    TimeMicros,
    /// Timestamps as microseconds since the epoch, whatever the writer's unit.
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    /// Its unscaled value (big-endian two's complement, in bytes or a fixed) as a decimal
    /// string.
    Decimal {
        scale: usize,
        fixed: Option<usize>,
    },
    Fixed(usize),
    Duration,
    Enum(Vec<String>),
    Array(NodeId),
    Map(NodeId),
    Union(Vec<NodeId>),
    /// Fields in the writer's order, by name.
    Record(Vec<(String, NodeId)>),
    /// A named record while its fields are compiled (a recursive reference points here).
    Pending,
}

impl Reader {
    /// Compiles a writer schema; one with a record that contains itself with nothing to end
    /// the recursion (no union with another branch, no array or map on the way) is refused,
    /// since no finite datum has that type.
    pub fn new(schema: &Schema) -> Result<Reader, String> {
        let mut compiler = Compiler {
            nodes: Vec::new(),
            widths: Vec::new(),
            named: HashMap::new(),
        };
        compiler.compile(schema, &None)?;
        compiler.refuse_endless_records()?;
        Ok(Reader {
            nodes: compiler.nodes,
            widths: compiler.widths,
        })
    }

    /// Reads one datum from `input` (advancing it) as JSON: dates as days, timestamps as
    /// microseconds, bytes as base64, decimals as text, NaN and infinities as strings. (The
    /// runner reads only [`Reader::event_parts`]; tests read whole datums with this.)
    #[cfg(test)]
    pub fn read(&self, input: &mut &[u8]) -> Result<Json, String> {
        let mut datum = Datum::new(input);
        let value = self.value(0, &mut datum, 0)?;
        *input = datum.bytes;
        Ok(value)
    }

    /// Reads a change event's datum (the Debezium envelope) into the parts the decoder
    /// reads: `op`, `source.ts_ms`, and of `before` and `after` only the source's declared
    /// columns; everything else is skipped without being built.
    pub fn event_parts(
        &self,
        source: &SourceTable,
        input: &mut &[u8],
    ) -> Result<EventParts<'static>, String> {
        let Node::Record(fields) = &self.nodes[0] else {
            return Err("the writer schema is not a record (a Debezium envelope)".into());
        };
        let datum = &mut Datum::new(input);
        let (mut op, mut before, mut after) = (None, None, None);
        let (mut commit_time_ms, mut sequence, mut transaction) = (None, None, None);
        for (name, node) in fields {
            match name.as_str() {
                "before" => before = self.image(source, *node, datum, 1)?,
                "after" => after = self.image(source, *node, datum, 1)?,
                "op" => op = self.value(*node, datum, 1)?.as_str().map(str::to_owned),
                "source" => (commit_time_ms, sequence) = self.source_block(*node, datum, 1)?,
                "transaction" => transaction = Some(self.value(*node, datum, 1)?),
                _ => self.skip(*node, datum, 1)?,
            }
        }
        *input = datum.bytes;
        Ok(EventParts {
            op: Cow::Owned(op.ok_or("the envelope has no `op` string")?),
            before,
            after,
            commit_time_ms,
            position: crate::decode::ChangePosition::of(
                sequence.as_ref(),
                transaction
                    .as_ref()
                    .and_then(|transaction| transaction.get("total_order")),
            ),
        })
    }

    /// An image: null, or the record of columns, of which the declared ones are kept.
    fn image(
        &self,
        source: &SourceTable,
        node: NodeId,
        datum: &mut Datum<'_>,
        depth: usize,
    ) -> Result<Option<Image<'static>>, String> {
        let depth = deeper(depth)?;
        match &self.nodes[node] {
            Node::Null => Ok(None),
            Node::Union(branches) => {
                let branch = datum.branch(branches)?;
                self.image(source, branch, datum, depth)
            }
            Node::Record(fields) => {
                let mut found = vec![None; source.columns.len()];
                for (name, field) in fields {
                    match source
                        .columns
                        .iter()
                        .position(|column| column.name == *name)
                    {
                        Some(index) => found[index] = Some(self.value(*field, datum, depth)?),
                        None => self.skip(*field, datum, depth)?,
                    }
                }
                Ok(Some(Image::Columns(found)))
            }
            _ => Err("`before` or `after` is not a record of columns".into()),
        }
    }

    /// `source.ts_ms`, the commit time, and `source.sequence`, when the source block has
    /// them.
    fn source_block(
        &self,
        node: NodeId,
        datum: &mut Datum<'_>,
        depth: usize,
    ) -> Result<(Option<i64>, Option<Json>), String> {
        let depth = deeper(depth)?;
        match &self.nodes[node] {
            Node::Record(fields) => {
                let (mut ts_ms, mut sequence) = (None, None);
                for (name, field) in fields {
                    match name.as_str() {
                        "ts_ms" => ts_ms = self.value(*field, datum, depth)?.as_i64(),
                        "sequence" => sequence = Some(self.value(*field, datum, depth)?),
                        _ => self.skip(*field, datum, depth)?,
                    }
                }
                Ok((ts_ms, sequence))
            }
            Node::Union(branches) => {
                let branch = datum.branch(branches)?;
                self.source_block(branch, datum, depth)
            }
            _ => {
                self.skip(node, datum, depth)?;
                Ok((None, None))
            }
        }
    }

    fn value(&self, node: NodeId, datum: &mut Datum<'_>, depth: usize) -> Result<Json, String> {
        let depth = deeper(depth)?;
        Ok(match &self.nodes[node] {
            Node::Null => Json::Null,
            Node::Boolean => match datum.take(1)?[0] {
                0 => Json::Bool(false),
                1 => Json::Bool(true),
                other => return Err(format!("{other} is not a boolean")),
            },
            Node::Int
            | Node::Long
            | Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::TimestampMicros => Json::from(datum.long()?),
            Node::TimestampMillis => Json::from(datum.long()?.saturating_mul(1000)),
            Node::TimestampNanos => Json::from(datum.long()? / 1000),
            Node::Float => {
                let bytes = datum.take(4)?;
                float(f64::from(f32::from_le_bytes(bytes.try_into().unwrap())))
            }
            Node::Double => {
                let bytes = datum.take(8)?;
                float(f64::from_le_bytes(bytes.try_into().unwrap()))
            }
            Node::Bytes => base64_string(datum.length_prefixed()?),
            Node::Fixed(size) => base64_string(datum.take(*size)?),
            Node::String => Json::String(
                std::str::from_utf8(datum.length_prefixed()?)
                    .map_err(|_| "a string that is not UTF-8".to_owned())?
                    .to_owned(),
            ),
            Node::Uuid => {
                let bytes = datum.length_prefixed()?;
                Json::String(match bytes.len() {
                    16 => uuid_text(bytes.try_into().unwrap()),
                    _ => std::str::from_utf8(bytes)
                        .map_err(|_| "a uuid that is not UTF-8".to_owned())?
                        .to_owned(),
                })
            }
            Node::Decimal { scale, fixed } => {
                let bytes = match fixed {
                    Some(size) => datum.take(*size)?,
                    None => datum.length_prefixed()?,
                };
                Json::String(decimal_text(bytes, *scale)?)
            }
            Node::Duration => {
                let bytes = datum.take(12)?;
                let part = |index: usize| {
                    u32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap())
                };
                Json::String(format!(
                    "{} months {} days {} ms",
                    part(0),
                    part(1),
                    part(2)
                ))
            }
            Node::Enum(symbols) => {
                let index = datum.long()?;
                let symbol = usize::try_from(index)
                    .ok()
                    .and_then(|index| symbols.get(index))
                    .ok_or_else(|| format!("enum index {index} of {} symbols", symbols.len()))?;
                Json::String(symbol.clone())
            }
            Node::Array(items) => {
                let mut values = Vec::new();
                loop {
                    let count = datum.block_items(self.widths[*items])?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        values.push(self.value(*items, datum, depth)?);
                    }
                }
                Json::Array(values)
            }
            Node::Map(values) => {
                let mut map = serde_json::Map::new();
                loop {
                    let count = datum.block_items(self.map_entry_width(*values))?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        let key = std::str::from_utf8(datum.length_prefixed()?)
                            .map_err(|_| "a map key that is not UTF-8".to_owned())?
                            .to_owned();
                        map.insert(key, self.value(*values, datum, depth)?);
                    }
                }
                Json::Object(map)
            }
            Node::Union(branches) => {
                let branch = datum.branch(branches)?;
                self.value(branch, datum, depth)?
            }
            Node::Record(fields) => {
                let mut object = serde_json::Map::new();
                for (name, field) in fields {
                    object.insert(name.clone(), self.value(*field, datum, depth)?);
                }
                Json::Object(object)
            }
            Node::Pending => return Err("a reference to an unfinished record".into()),
        })
    }

    /// Moves past a value without building it.
    fn skip(&self, node: NodeId, datum: &mut Datum<'_>, depth: usize) -> Result<(), String> {
        let depth = deeper(depth)?;
        match &self.nodes[node] {
            Node::Null => {}
            Node::Boolean => {
                datum.take(1)?;
            }
            Node::Int
            | Node::Long
            | Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::TimestampMillis
            | Node::TimestampMicros
            | Node::TimestampNanos
            | Node::Enum(_) => {
                datum.long()?;
            }
            Node::Float => {
                datum.take(4)?;
            }
            Node::Double => {
                datum.take(8)?;
            }
            Node::Duration => {
                datum.take(12)?;
            }
            Node::Fixed(size)
            | Node::Decimal {
                fixed: Some(size), ..
            } => {
                datum.take(*size)?;
            }
            Node::Bytes | Node::String | Node::Uuid | Node::Decimal { fixed: None, .. } => {
                datum.length_prefixed()?;
            }
            Node::Array(items) => loop {
                let count = datum.block_items(self.widths[*items])?;
                if count == 0 {
                    break;
                }
                for _ in 0..count {
                    self.skip(*items, datum, depth)?;
                }
            },
            Node::Map(values) => loop {
                let count = datum.block_items(self.map_entry_width(*values))?;
                if count == 0 {
                    break;
                }
                for _ in 0..count {
                    datum.length_prefixed()?;
                    self.skip(*values, datum, depth)?;
                }
            },
            Node::Union(branches) => {
                let branch = datum.branch(branches)?;
                self.skip(branch, datum, depth)?;
            }
            Node::Record(fields) => {
                for (_, field) in fields {
                    self.skip(*field, datum, depth)?;
                }
            }
            Node::Pending => return Err("a reference to an unfinished record".into()),
        }
        Ok(())
    }

    /// The fewest bytes a map entry takes: its key's length, then its value.
    fn map_entry_width(&self, values: NodeId) -> u64 {
        self.widths[values].saturating_add(1)
    }
}

/// The depth below `depth`, unless that is too deep.
fn deeper(depth: usize) -> Result<usize, String> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "the datum nests deeper than {MAX_DEPTH} levels of records, arrays, maps and unions"
        ));
    }
    Ok(depth + 1)
}

struct Compiler {
    nodes: Vec<Node>,
    widths: Vec<u64>,
    named: HashMap<Name, NodeId>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(Node::Pending);
        self.widths.push(0);
        let id = self.nodes.len() - 1;
        self.set(id, node);
        id
    }

    /// Puts the compiled `node` at `id`, with the fewest bytes its values take. (A reference
    /// to a record still being compiled counts 0 bytes, which can only err low; only records
    /// that [`Compiler::refuse_endless_records`] refuses are made of such references alone.)
    fn set(&mut self, id: NodeId, node: Node) {
        self.widths[id] = match &node {
            Node::Null | Node::Pending => 0,
            Node::Float => 4,
            Node::Double => 8,
            Node::Duration => 12,
            Node::Fixed(size)
            | Node::Decimal {
                fixed: Some(size), ..
            } => *size as u64,
            Node::Record(fields) => fields.iter().fold(0, |sum: u64, (_, field)| {
                sum.saturating_add(self.widths[*field])
            }),
            // A varint, a length, a block count or a branch index: at least one byte.
            _ => 1,
        };
        self.nodes[id] = node;
    }

    fn name(&mut self, name: &Name, namespace: &Namespace, id: NodeId) -> Name {
        let full = name.fully_qualified_name(namespace);
        self.named.insert(full.clone(), id);
        full
    }

    /// Refuses a schema with a type no finite datum has: a record that always contains
    /// itself again (`A{a: A}`, `A{b: B{a: A}}`, `A{a: ["A"]}`). Reading one would recurse
    /// without consuming input. A type ends when it is not a record or union, when it is an
    /// array or map (which can be empty), when one branch of a union ends, or when every
    /// field of a record ends.
    fn refuse_endless_records(&self) -> Result<(), String> {
        let mut ends = vec![false; self.nodes.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for (id, node) in self.nodes.iter().enumerate() {
                if ends[id] {
                    continue;
                }
                ends[id] = match node {
                    Node::Union(branches) => branches.iter().any(|branch| ends[*branch]),
                    Node::Record(fields) => fields.iter().all(|(_, field)| ends[*field]),
                    Node::Pending => false,
                    _ => true,
                };
                changed |= ends[id];
            }
        }
        if ends.iter().all(|&ends| ends) {
            return Ok(());
        }
        let mut endless: Vec<String> = self
            .named
            .iter()
            .filter(|(_, id)| !ends[**id])
            .map(|(name, _)| name.fullname(None))
            .collect();
        endless.sort();
        if endless.is_empty() {
            return Err(
                "no datum can be written with this schema: it has a union without \
                        branches"
                    .into(),
            );
        }
        Err(format!(
            "no datum can be written with this schema: {}: a record that contains itself with \
             no union branch, array or map to end the recursion",
            endless.join(", ")
        ))
    }

    fn compile(&mut self, schema: &Schema, namespace: &Namespace) -> Result<NodeId, String> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Uuid => Node::Uuid,
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Node::TimestampMillis,
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Node::TimestampMicros,
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::TimestampNanos,
            Schema::Duration => Node::Duration,
            Schema::BigDecimal => return Err("the big-decimal logical type is not read".into()),
            Schema::Decimal(decimal) => {
                let fixed = match decimal.inner.as_ref() {
                    Schema::Fixed(fixed) => {
                        let id = self.push(Node::Fixed(fixed.size));
                        self.name(&fixed.name, namespace, id);
                        Some(fixed.size)
                    }
                    _ => None,
                };
                Node::Decimal {
                    scale: decimal.scale,
                    fixed,
                }
            }
            Schema::Fixed(fixed) => {
                let id = self.push(Node::Fixed(fixed.size));
                self.name(&fixed.name, namespace, id);
                return Ok(id);
            }
            Schema::Enum(schema) => {
                let id = self.push(Node::Enum(schema.symbols.clone()));
                self.name(&schema.name, namespace, id);
                return Ok(id);
            }
            Schema::Array(array) => {
                let id = self.push(Node::Pending);
                let items = self.compile(&array.items, namespace)?;
                self.set(id, Node::Array(items));
                return Ok(id);
            }
            Schema::Map(map) => {
                let id = self.push(Node::Pending);
                let values = self.compile(&map.types, namespace)?;
                self.set(id, Node::Map(values));
                return Ok(id);
            }
            Schema::Union(union) => {
                let id = self.push(Node::Pending);
                let branches = union
                    .variants()
                    .iter()
                    .map(|branch| self.compile(branch, namespace))
                    .collect::<Result<_, _>>()?;
                self.set(id, Node::Union(branches));
                return Ok(id);
            }
            Schema::Record(record) => {
                let id = self.push(Node::Pending);
                let full = self.name(&record.name, namespace, id);
                let mut fields = Vec::with_capacity(record.fields.len());
                for field in &record.fields {
                    let node = self.compile(&field.schema, &full.namespace)?;
                    fields.push((field.name.clone(), node));
                }
                self.set(id, Node::Record(fields));
                return Ok(id);
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                return self.named.get(&full).copied().ok_or_else(|| {
                    format!("the schema refers to {full:?}, which it never defines")
                });
            }
        };
        Ok(self.push(node))
    }
}

/// The bytes of a datum not read yet, and how many zero-width items it may still hold.
struct Datum<'a> {
    bytes: &'a [u8],
    zero_width_items_left: u64,
}

impl<'a> Datum<'a> {
    fn new(bytes: &'a [u8]) -> Datum<'a> {
        Datum {
            bytes,
            zero_width_items_left: MAX_ZERO_WIDTH_ITEMS,
        }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < count {
            return Err(format!(
                "the datum ends early ({count} bytes wanted, {} left)",
                self.bytes.len()
            ));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    /// A zig-zag varint.
    fn long(&mut self) -> Result<i64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn length_prefixed(&mut self) -> Result<&'a [u8], String> {
        let length = self.long()?;
        let length = usize::try_from(length).map_err(|_| format!("a negative length {length}"))?;
        self.take(length)
    }

    /// A union's branch, by the index the datum gives.
    fn branch(&mut self, branches: &[NodeId]) -> Result<NodeId, String> {
        let index = self.long()?;
        usize::try_from(index)
            .ok()
            .and_then(|index| branches.get(index))
            .copied()
            .ok_or_else(|| format!("union branch {index} of {}", branches.len()))
    }

    /// An array or map block's item count (a negative count is followed by the block's
    /// size in bytes). Refused when the rest of the datum cannot hold that many items of at
    /// least `item_width` bytes, or when it is more zero-width items than a datum may hold:
    /// either way the count is a lie, and believing it costs time or memory the datum's
    /// size does not bound.
    fn block_items(&mut self, item_width: u64) -> Result<u64, String> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        let count = count.unsigned_abs();
        if item_width == 0 {
            self.zero_width_items_left =
                self.zero_width_items_left
                    .checked_sub(count)
                    .ok_or_else(|| {
                        format!(
                            "a block of {count} zero-width items (nulls, empty records or \
                         zero-size fixed), more than the {MAX_ZERO_WIDTH_ITEMS} a datum may \
                         hold"
                        )
                    })?;
        } else if count > self.bytes.len() as u64 / item_width {
            return Err(format!(
                "a block of {count} items of at least {item_width} bytes each, with {} bytes \
                 left in the datum",
                self.bytes.len()
            ));
        }
        Ok(count)
    }
}

/// NaN and the infinities as the strings Debezium's JSON uses.
fn float(value: f64) -> Json {
    if value.is_nan() {
        Json::from("NaN")
    } else if value.is_infinite() {
        Json::from(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Json::from(value)
    }
}

fn base64_string(bytes: &[u8]) -> Json {
    Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A decimal's unscaled value (big-endian two's complement) and scale as its decimal text.
fn decimal_text(bytes: &[u8], scale: usize) -> Result<String, String> {
    if bytes.len() > 16 {
        return Err(format!(
            "a decimal of {} bytes (at most 16 are read)",
            bytes.len()
        ));
    }
    let mut unscaled: i128 = if bytes.first().is_some_and(|byte| byte & 0x80 != 0) {
        -1
    } else {
        0
    };
    for byte in bytes {
        unscaled = (unscaled << 8) | i128::from(*byte);
    }
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    Ok(format!("{sign}{whole}.{fraction}"))
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
    use serde_json::{json, Map};

    /// The oracle: apache-avro's own reading of a datum, turned into the same JSON form
    /// (dates as days, timestamps as microseconds, bytes as base64, NaN and infinities as
    /// strings).
    fn oracle(value: &Avro) -> Json {
        match value {
            Avro::Null => Json::Null,
            Avro::Boolean(flag) => json!(flag),
            Avro::Int(number) | Avro::Date(number) | Avro::TimeMillis(number) => json!(number),
            Avro::Long(number) | Avro::TimeMicros(number) => json!(number),
            Avro::Float(number) => oracle_float(f64::from(*number)),
            Avro::Double(number) => oracle_float(*number),
            Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Avro::String(text) | Avro::Enum(_, text) => json!(text),
            Avro::Uuid(uuid) => json!(uuid.to_string()),
            Avro::TimestampMillis(millis) | Avro::LocalTimestampMillis(millis) => {
                json!(millis.saturating_mul(1000))
            }
            Avro::TimestampMicros(micros) | Avro::LocalTimestampMicros(micros) => json!(micros),
            Avro::TimestampNanos(nanos) | Avro::LocalTimestampNanos(nanos) => json!(nanos / 1000),
            Avro::Union(_, inner) => oracle(inner),
            Avro::Array(items) => Json::Array(items.iter().map(oracle).collect()),
            Avro::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), oracle(value)))
                    .collect(),
            ),
            Avro::Record(fields) => {
                let mut object = Map::new();
                for (name, value) in fields {
                    object.insert(name.clone(), oracle(value));
                }
                Json::Object(object)
            }
            other => panic!("no oracle for {other:?}"),
        }
    }

    fn oracle_float(number: f64) -> Json {
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

    fn read(schema: &Schema, datum: &[u8]) -> Json {
        let mut input = datum;
        let json = Reader::new(schema).unwrap().read(&mut input).unwrap();
        assert!(input.is_empty(), "{} bytes unread", input.len());
        json
    }

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

    #[test]
    fn the_reader_agrees_with_apache_avro_on_every_type() {
        let schema = Schema::parse_str(ZOO).unwrap();
        for variant in 0..7u32 {
            let (before, after) = match variant % 3 {
                0 => (
                    Avro::Union(0, Box::new(Avro::Null)),
                    Avro::Union(1, Box::new(zoo_row(7, variant))),
                ),
                1 => (
                    Avro::Union(1, Box::new(zoo_row(i64::MIN, variant))),
                    Avro::Union(1, Box::new(zoo_row(i64::MAX, variant + 1))),
                ),
                _ => (
                    Avro::Union(1, Box::new(zoo_row(-1, variant))),
                    Avro::Union(0, Box::new(Avro::Null)),
                ),
            };
            let value = Avro::Record(vec![
                ("before".into(), before),
                ("after".into(), after),
                ("op".into(), Avro::String("u".into())),
            ]);
            let datum = apache_avro::to_avro_datum(&schema, value).unwrap();
            let expected = oracle(
                &apache_avro::from_avro_datum(&schema, &mut datum.as_slice(), None).unwrap(),
            );
            assert_eq!(read(&schema, &datum), expected, "variant {variant}");
        }
    }

    #[test]
    fn decimals_read_as_exact_text_and_broken_datums_are_errors() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"D","fields":[
                {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":30,"scale":2}},
                {"name":"whole","type":{"type":"fixed","name":"F","size":3,"logicalType":"decimal","precision":6,"scale":0}},
                {"name":"tiny","type":{"type":"bytes","logicalType":"decimal","precision":5,"scale":4}}]}"#,
        )
        .unwrap();
        // 12345 and -5 as two's complement, big-endian.
        let mut datum = vec![];
        datum.extend([4, 0x30, 0x39]); // length 2 (zig-zag 4), 0x3039 = 12345
        datum.extend([0xff, 0xff, 0xfb]); // -5, fixed 3
        datum.extend([2, 0xfb]); // length 1, -5
        assert_eq!(
            read(&schema, &datum),
            json!({"price": "123.45", "whole": "-5", "tiny": "-0.0005"})
        );
        let reader = Reader::new(&schema).unwrap();
        assert!(reader.read(&mut &datum[..4]).is_err(), "a datum cut short");
        let recursive = Schema::parse_str(
            r#"{"type":"record","name":"Node","fields":[
                {"name":"label","type":"string"},
                {"name":"next","type":["null","Node"]}]}"#,
        )
        .unwrap();
        let value = Avro::Record(vec![
            ("label".into(), Avro::String("a".into())),
            (
                "next".into(),
                Avro::Union(
                    1,
                    Box::new(Avro::Record(vec![
                        ("label".into(), Avro::String("b".into())),
                        ("next".into(), Avro::Union(0, Box::new(Avro::Null))),
                    ])),
                ),
            ),
        ]);
        let datum = apache_avro::to_avro_datum(&recursive, value).unwrap();
        assert_eq!(
            read(&recursive, &datum),
            json!({"label": "a", "next": {"label": "b", "next": null}})
        );
    }

    /// A zig-zag varint, as Avro writes ints and longs.
    fn zigzag(number: i64) -> Vec<u8> {
        let mut value = ((number << 1) ^ (number >> 63)) as u64;
        let mut bytes = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                bytes.push(byte);
                return bytes;
            }
            bytes.push(byte | 0x80);
        }
    }

    /// Runs `work` on a thread with a 1 MiB stack (half of a Tokio worker's) and gives its
    /// result, or `None` when it has not finished within ten seconds.
    fn on_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                let _ = sender.send(work());
            })
            .unwrap();
        receiver.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// An envelope whose images have a column no pipeline declares: an array of nulls.
    const NULLS_ENVELOPE: &str = r#"{"type":"record","name":"Envelope","fields":[
        {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
            {"name":"id","type":"long"},
            {"name":"junk","type":{"type":"array","items":"null"}}]}]},
        {"name":"after","type":["null","Value"]},
        {"name":"op","type":"string"}]}"#;

    #[test]
    fn a_huge_block_count_of_zero_width_items_in_an_undeclared_column_is_an_error_at_once() {
        let schema = Schema::parse_str(NULLS_ENVELOPE).unwrap();
        let mut schemas = WriterSchemas::new("http://unused").unwrap();
        schemas.schemas.insert(1, Reader::new(&schema).unwrap());
        // 2^62 nulls cost nothing to write: the whole event is 22 bytes.
        let mut payload = vec![0, 0, 0, 0, 1, 2];
        payload.extend(zigzag(7));
        payload.extend(zigzag(1 << 62));
        payload.extend([0, 0, 2, b'c']);
        let source = source(crate::definition::SourceMode::Updating);
        let outcome = on_small_stack(move || {
            schemas
                .decode(&source, &payload)
                .map(|_| ())
                .map_err(|error| error.to_string())
        });
        let error = outcome
            .expect("decoding a 22-byte event has not finished within ten seconds")
            .unwrap_err();
        assert!(error.contains("zero-width"), "{error}");
    }

    /// The error of reading `datum`, which must not be read.
    fn refused(reader: &Reader, datum: &[u8]) -> String {
        match reader.read(&mut &datum[..]) {
            Ok(value) => panic!(
                "a datum of {} bytes was read, into {} bytes of JSON",
                datum.len(),
                value.to_string().len()
            ),
            Err(error) => error,
        }
    }

    #[test]
    fn a_datum_with_millions_of_zero_width_items_is_refused_before_it_is_built() {
        let schema = Schema::parse_str(r#"{"type":"array","items":"null"}"#).unwrap();
        let reader = Reader::new(&schema).unwrap();
        let mut datum = zigzag(1 << 22);
        datum.push(0);
        let error = refused(&reader, &datum);
        assert!(error.contains("zero-width"), "{error}");
        // Items of a record without fields, or a fixed of size 0, are zero-width too; many
        // small blocks are counted together.
        let schema = Schema::parse_str(
            r#"{"type":"array","items":{"type":"array","items":{"type":"record","name":"E","fields":[
                {"name":"nothing","type":{"type":"fixed","name":"F","size":0}}]}}}"#,
        )
        .unwrap();
        let reader = Reader::new(&schema).unwrap();
        let mut datum = zigzag(1 << 20);
        for _ in 0..1 << 20 {
            datum.extend(zigzag(1000));
            datum.push(0);
        }
        datum.push(0);
        let error = refused(&reader, &datum);
        assert!(error.contains("zero-width"), "{error}");
        // A few are read as they are.
        let mut datum = zigzag(2);
        datum.push(0);
        datum.extend(zigzag(2));
        datum.extend([0, 0]);
        assert_eq!(
            read(&schema, &datum),
            json!([[], [{"nothing": ""}, {"nothing": ""}]])
        );
        // Items of one byte or more cannot outnumber the bytes left.
        let schema = Schema::parse_str(r#"{"type":"map","values":"long"}"#).unwrap();
        let error = Reader::new(&schema)
            .unwrap()
            .read(&mut zigzag(1 << 40).as_slice())
            .unwrap_err();
        assert!(error.contains("bytes left"), "{error}");
    }

    /// A linked list: every element costs one byte (the union's branch).
    const LIST: &str = r#"{"type":"record","name":"Element","fields":[
        {"name":"next","type":["null","Element"]}]}"#;

    #[test]
    fn a_datum_nested_too_deep_is_an_error_not_a_stack_overflow() {
        let schema = Schema::parse_str(LIST).unwrap();
        let reader = Reader::new(&schema).unwrap();
        let mut deep = vec![2u8; 1_000_000];
        deep.push(0);
        let error = on_small_stack(move || reader.read(&mut deep.as_slice()))
            .expect("reading a deep datum has not finished within ten seconds")
            .unwrap_err();
        assert!(error.contains("deeper than"), "{error}");
        // The same when the deep column is skipped: the list is a column no one declares.
        let envelope = Schema::parse_str(&format!(
            r#"{{"type":"record","name":"Envelope","fields":[
                {{"name":"before","type":["null",{{"type":"record","name":"Value","fields":[
                    {{"name":"id","type":"long"}},{{"name":"list","type":{LIST}}}]}}]}},
                {{"name":"after","type":["null","Value"]}},
                {{"name":"op","type":"string"}}]}}"#
        ))
        .unwrap();
        let mut schemas = WriterSchemas::new("http://unused").unwrap();
        schemas.schemas.insert(1, Reader::new(&envelope).unwrap());
        let mut payload = vec![0, 0, 0, 0, 1, 2];
        payload.extend(zigzag(7));
        payload.extend(vec![2u8; 1_000_000]);
        payload.extend([0, 0, 2, b'c']);
        let source = source(crate::definition::SourceMode::Updating);
        let error = on_small_stack(move || schemas.decode(&source, &payload).map(|_| ()))
            .expect("decoding a deep event has not finished within ten seconds")
            .unwrap_err();
        assert!(error.contains("deeper than"), "{error}");
        // A short list reads.
        let reader = Reader::new(&schema).unwrap();
        assert_eq!(
            reader.read(&mut [2u8, 2, 0].as_slice()).unwrap(),
            json!({"next": {"next": {"next": null}}})
        );
    }

    #[test]
    fn a_schema_whose_records_contain_themselves_without_an_end_is_refused() {
        for (schema, record) in [
            (
                r#"{"type":"record","name":"A","fields":[{"name":"a","type":"A"}]}"#,
                "A",
            ),
            (
                r#"{"type":"record","name":"A","namespace":"n","fields":[
                    {"name":"b","type":{"type":"record","name":"B","fields":[
                        {"name":"x","type":"long"},{"name":"a","type":"A"}]}}]}"#,
                "n.A",
            ),
            (
                r#"{"type":"record","name":"A","fields":[{"name":"a","type":["A"]}]}"#,
                "A",
            ),
        ] {
            let schema = Schema::parse_str(schema).unwrap();
            let error = Reader::new(&schema)
                .err()
                .unwrap_or_else(|| panic!("{schema:?} was compiled"));
            assert!(
                error.contains(record) && error.contains("itself"),
                "{error}"
            );
        }
        // Recursion that a null branch, an array or a map can end is fine.
        for schema in [
            LIST,
            r#"{"type":"record","name":"Tree","fields":[
                {"name":"kids","type":{"type":"array","items":"Tree"}},
                {"name":"named","type":{"type":"map","values":"Tree"}}]}"#,
        ] {
            Reader::new(&Schema::parse_str(schema).unwrap()).unwrap();
        }
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
        assert!(error.contains("1 bytes more"), "{error}");
        assert!(WriterSchemas::schema_id(b"{\"op\":\"c\"}").is_err());
    }
}
