//! Avro's binary encoding of the shapes walflow's envelope uses, written straight into a
//! buffer without building Avro values: longs (and ints, union branch indexes, lengths) as
//! zig-zag varints, strings and bytes length-prefixed, floats little-endian.

use super::zigzag;

/// An int or a long.
pub fn long(buffer: &mut Vec<u8>, value: i64) {
    zigzag::write(buffer, value);
}

pub fn boolean(buffer: &mut Vec<u8>, value: bool) {
    buffer.push(u8::from(value));
}

pub fn float(buffer: &mut Vec<u8>, value: f32) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

pub fn double(buffer: &mut Vec<u8>, value: f64) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

pub fn bytes(buffer: &mut Vec<u8>, value: &[u8]) {
    long(buffer, value.len() as i64);
    buffer.extend_from_slice(value);
}

pub fn string(buffer: &mut Vec<u8>, value: &str) {
    bytes(buffer, value.as_bytes());
}

/// A union's branch, by its index in the union.
pub fn branch(buffer: &mut Vec<u8>, index: i64) {
    long(buffer, index);
}

/// The envelope's `source` block, field by field as [`TableSchemas`](super::TableSchemas)
/// declares it.
#[derive(Debug, Clone)]
pub struct SourceBlock<'a> {
    /// `walflow-<version>`.
    pub version: &'a str,
    /// The logical server name: the topic prefix.
    pub name: &'a str,
    /// The commit time.
    pub ts_ms: i64,
    pub snapshot: bool,
    pub db: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub tx_id: i64,
    pub lsn: i64,
    /// [`crate::envelope::sequence`]; `None` for snapshot rows.
    pub sequence: Option<&'a str>,
}

/// The envelope's `transaction` block.
#[derive(Debug, Clone)]
pub struct TransactionBlock<'a> {
    /// [`crate::envelope::transaction_id`].
    pub id: &'a str,
    pub total_order: i64,
    pub data_collection_order: i64,
}

/// An image (`before` or `after`) that is null.
pub fn null_image(buffer: &mut Vec<u8>) {
    branch(buffer, 0);
}

/// Starts an image that is a row: its columns follow, each a union of
/// [`ColumnType::value_branches`](super::ColumnType::value_branches).
pub fn row_image(buffer: &mut Vec<u8>) {
    branch(buffer, 1);
}

/// What follows `before` and `after`: `source`, `op`, `ts_ms` (when walflow wrote the
/// event) and `transaction`.
pub fn envelope_tail(
    buffer: &mut Vec<u8>,
    source: &SourceBlock<'_>,
    op: &str,
    ts_ms: i64,
    transaction: Option<&TransactionBlock<'_>>,
) {
    string(buffer, source.version);
    string(buffer, crate::envelope::CONNECTOR);
    string(buffer, source.name);
    long(buffer, source.ts_ms);
    // snapshot: ["string", "null"], the string.
    branch(buffer, 0);
    string(buffer, if source.snapshot { "true" } else { "false" });
    string(buffer, source.db);
    string(buffer, source.schema);
    string(buffer, source.table);
    branch(buffer, 1);
    long(buffer, source.tx_id);
    branch(buffer, 1);
    long(buffer, source.lsn);
    match source.sequence {
        Some(sequence) => {
            branch(buffer, 1);
            string(buffer, sequence);
        }
        None => branch(buffer, 0),
    }
    string(buffer, op);
    branch(buffer, 1);
    long(buffer, ts_ms);
    match transaction {
        Some(transaction) => {
            branch(buffer, 1);
            string(buffer, transaction.id);
            long(buffer, transaction.total_order);
            long(buffer, transaction.data_collection_order);
        }
        None => branch(buffer, 0),
    }
}
