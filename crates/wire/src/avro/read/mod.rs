//! The reader `walflow process` decodes Avro change events with: a writer schema (fetched
//! from the registry by the id in the event's framing) compiled once into an arena of nodes,
//! then each datum read with it. Of an envelope only what a pipeline reads is built (`op`,
//! the commit time, the position, and the declared columns of each image); everything else is
//! skipped without being built.
//!
//! Values read as the JSON decoder reads Debezium's JSON: dates as days, timestamps as
//! microseconds (whatever the writer's unit), bytes as base64, decimals as exact text, NaN
//! and infinities as strings.
//!
//! A datum is input from the network: every read is bounded (nesting depth, block counts
//! against the bytes left, zero-width items) so a hostile datum fails one event instead of
//! exhausting the stack or memory.

mod compile;
mod datum;
mod text;

use apache_avro::Schema;
use serde_json::Value as Json;

use crate::envelope::{self, ChangePosition};
use datum::Datum;
pub use datum::MAX_ZERO_WIDTH_ITEMS;

/// How deep a datum may nest, counting every record, array, map and union. A Debezium
/// envelope nests about six deep. Without a limit a hostile datum (a recursive type, one
/// level per byte) overflows the stack, which aborts the whole process instead of failing
/// one event.
pub const MAX_DEPTH: usize = 64;

/// Why a writer schema cannot be read with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("the big-decimal logical type is not read")]
    BigDecimal,
    #[error("the schema refers to {0}, which it never defines")]
    Undefined(String),
    #[error("no datum can be written with this schema: it has a union without branches")]
    EmptyUnion,
    #[error(
        "no datum can be written with this schema: {}: a record that contains itself with no \
         union branch, array or map to end the recursion",
        .0.join(", ")
    )]
    EndlessRecords(Vec<String>),
}

/// Why a datum could not be read with its writer schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatumError {
    #[error("the datum ends early ({wanted} bytes wanted, {left} left)")]
    EndsEarly { wanted: usize, left: usize },
    #[error("a varint longer than 10 bytes")]
    VarintTooLong,
    #[error("a negative length {0}")]
    NegativeLength(i64),
    #[error("{0} is not a boolean")]
    NotBoolean(u8),
    #[error("a {0} that is not UTF-8")]
    NotUtf8(&'static str),
    #[error("union branch {index} of {branches}")]
    NoSuchBranch { index: i64, branches: usize },
    #[error("enum index {index} of {symbols} symbols")]
    NoSuchSymbol { index: i64, symbols: usize },
    #[error("a decimal of {0} bytes (at most 16 are read)")]
    DecimalTooWide(usize),
    #[error(
        "a block of {count} zero-width items (nulls, empty records or zero-size fixed), more \
         than the {MAX_ZERO_WIDTH_ITEMS} a datum may hold"
    )]
    TooManyZeroWidthItems { count: u64 },
    #[error(
        "a block of {count} items of at least {item_width} bytes each, with {left} bytes left \
         in the datum"
    )]
    BlockLargerThanDatum {
        count: u64,
        item_width: u64,
        left: usize,
    },
    #[error("the datum nests deeper than {MAX_DEPTH} levels of records, arrays, maps and unions")]
    TooDeep,
    #[error("a reference to an unfinished record")]
    UnfinishedRecord,
    #[error("the writer schema is not a record (a Debezium envelope)")]
    NotAnEnvelope,
    #[error("the envelope has no `op` string")]
    NoOp,
    #[error("`before` or `after` is not a record of columns")]
    ImageNotARecord,
}

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

/// What a change event's envelope says, as a pipeline reads it. An image is `None` when the
/// envelope's is null; its columns are the declared ones, `None` where the event lacks one.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub op: String,
    pub before: Option<Vec<Option<Json>>>,
    pub after: Option<Vec<Option<Json>>>,
    /// `source.ts_ms`.
    pub commit_time_ms: Option<i64>,
    pub position: Option<ChangePosition>,
}

/// The columns a pipeline declares: how many, and which one (if any) an event's column of a
/// given name is.
pub struct DeclaredColumns<F: Fn(&str) -> Option<usize>> {
    pub count: usize,
    pub position_of: F,
}

impl Reader {
    /// Compiles a writer schema; one with a record that contains itself with nothing to end
    /// the recursion (no union with another branch, no array or map on the way) is refused,
    /// since no finite datum has that type.
    pub fn new(schema: &Schema) -> Result<Reader, SchemaError> {
        let mut compiler = compile::Compiler::new();
        compiler.compile(schema, &None)?;
        compiler.refuse_endless_records()?;
        Ok(Reader {
            nodes: compiler.nodes,
            widths: compiler.widths,
        })
    }

    /// Reads one whole datum from `input` (advancing it) as JSON.
    pub fn read(&self, input: &mut &[u8]) -> Result<Json, DatumError> {
        let mut datum = Datum::new(input);
        let value = self.value(0, &mut datum, 0)?;
        *input = datum.bytes;
        Ok(value)
    }

    /// Reads a change event's datum (the Debezium envelope, advancing `input`) into what a
    /// pipeline reads of it: `op`, `source.ts_ms`, the position, and of `before` and `after`
    /// only the `declared` columns.
    pub fn read_envelope<F: Fn(&str) -> Option<usize>>(
        &self,
        declared: &DeclaredColumns<F>,
        input: &mut &[u8],
    ) -> Result<Envelope, DatumError> {
        let Node::Record(fields) = &self.nodes[0] else {
            return Err(DatumError::NotAnEnvelope);
        };
        let datum = &mut Datum::new(input);
        let (mut op, mut before, mut after) = (None, None, None);
        let (mut commit_time_ms, mut sequence, mut transaction) = (None, None, None);
        for (name, node) in fields {
            match name.as_str() {
                envelope::BEFORE => before = self.image(declared, *node, datum, 1)?,
                envelope::AFTER => after = self.image(declared, *node, datum, 1)?,
                envelope::OP => op = self.value(*node, datum, 1)?.as_str().map(str::to_owned),
                envelope::SOURCE => {
                    (commit_time_ms, sequence) = self.source_block(*node, datum, 1)?
                }
                envelope::TRANSACTION => transaction = Some(self.value(*node, datum, 1)?),
                _ => self.skip(*node, datum, 1)?,
            }
        }
        *input = datum.bytes;
        Ok(Envelope {
            op: op.ok_or(DatumError::NoOp)?,
            before,
            after,
            commit_time_ms,
            position: ChangePosition::of(
                sequence.as_ref(),
                transaction
                    .as_ref()
                    .and_then(|transaction| transaction.get(envelope::TOTAL_ORDER)),
            ),
        })
    }

    /// An image: null, or the record of columns, of which the declared ones are kept.
    fn image<F: Fn(&str) -> Option<usize>>(
        &self,
        declared: &DeclaredColumns<F>,
        node: NodeId,
        datum: &mut Datum<'_>,
        depth: usize,
    ) -> Result<Option<Vec<Option<Json>>>, DatumError> {
        let depth = deeper(depth)?;
        match &self.nodes[node] {
            Node::Null => Ok(None),
            Node::Union(branches) => {
                let branch = datum.branch(branches)?;
                self.image(declared, branch, datum, depth)
            }
            Node::Record(fields) => {
                let mut found = vec![None; declared.count];
                for (name, field) in fields {
                    match (declared.position_of)(name) {
                        Some(index) if index < found.len() => {
                            found[index] = Some(self.value(*field, datum, depth)?)
                        }
                        _ => self.skip(*field, datum, depth)?,
                    }
                }
                Ok(Some(found))
            }
            _ => Err(DatumError::ImageNotARecord),
        }
    }

    /// `source.ts_ms`, the commit time, and `source.sequence`, when the source block has
    /// them.
    fn source_block(
        &self,
        node: NodeId,
        datum: &mut Datum<'_>,
        depth: usize,
    ) -> Result<(Option<i64>, Option<Json>), DatumError> {
        let depth = deeper(depth)?;
        match &self.nodes[node] {
            Node::Record(fields) => {
                let (mut ts_ms, mut sequence) = (None, None);
                for (name, field) in fields {
                    match name.as_str() {
                        envelope::TS_MS => ts_ms = self.value(*field, datum, depth)?.as_i64(),
                        envelope::SEQUENCE => sequence = Some(self.value(*field, datum, depth)?),
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

    fn value(&self, node: NodeId, datum: &mut Datum<'_>, depth: usize) -> Result<Json, DatumError> {
        let depth = deeper(depth)?;
        Ok(match &self.nodes[node] {
            Node::Null => Json::Null,
            Node::Boolean => match datum.take(1)?[0] {
                0 => Json::Bool(false),
                1 => Json::Bool(true),
                other => return Err(DatumError::NotBoolean(other)),
            },
            Node::Int
            | Node::Long
            | Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::TimestampMicros => Json::from(datum.long()?),
            Node::TimestampMillis => Json::from(datum.long()?.saturating_mul(1000)),
            Node::TimestampNanos => Json::from(datum.long()? / 1000),
            Node::Float => text::float(f64::from(f32::from_le_bytes(datum.array()?))),
            Node::Double => text::float(f64::from_le_bytes(datum.array()?)),
            Node::Bytes => text::base64(datum.length_prefixed()?),
            Node::Fixed(size) => text::base64(datum.take(*size)?),
            Node::String => Json::String(datum.text("string")?.to_owned()),
            Node::Uuid => {
                let bytes = datum.length_prefixed()?;
                Json::String(match <[u8; 16]>::try_from(bytes) {
                    Ok(binary) => text::uuid(&binary),
                    Err(_) => std::str::from_utf8(bytes)
                        .map_err(|_| DatumError::NotUtf8("uuid"))?
                        .to_owned(),
                })
            }
            Node::Decimal { scale, fixed } => {
                let bytes = match fixed {
                    Some(size) => datum.take(*size)?,
                    None => datum.length_prefixed()?,
                };
                Json::String(text::decimal(bytes, *scale)?)
            }
            Node::Duration => {
                let bytes: [u8; 12] = datum.array()?;
                let part = |index: usize| {
                    u32::from_le_bytes([
                        bytes[index * 4],
                        bytes[index * 4 + 1],
                        bytes[index * 4 + 2],
                        bytes[index * 4 + 3],
                    ])
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
                    .ok_or(DatumError::NoSuchSymbol {
                        index,
                        symbols: symbols.len(),
                    })?;
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
                        let key = datum.text("map key")?.to_owned();
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
            Node::Pending => return Err(DatumError::UnfinishedRecord),
        })
    }

    /// Moves past a value without building it.
    fn skip(&self, node: NodeId, datum: &mut Datum<'_>, depth: usize) -> Result<(), DatumError> {
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
            Node::Pending => return Err(DatumError::UnfinishedRecord),
        }
        Ok(())
    }

    /// The fewest bytes a map entry takes: its key's length, then its value.
    fn map_entry_width(&self, values: NodeId) -> u64 {
        self.widths[values].saturating_add(1)
    }
}

/// The depth below `depth`, unless that is too deep.
fn deeper(depth: usize) -> Result<usize, DatumError> {
    if depth >= MAX_DEPTH {
        return Err(DatumError::TooDeep);
    }
    Ok(depth + 1)
}

#[cfg(test)]
pub(crate) mod tests;
