//! TupleData: the column values of one row, walked lazily over the message's own bytes.

use bytes::Bytes;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::reader::Reader;

/// One column's value as pgoutput sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Null,
    /// A TOASTed value that the change did not touch: its value is not in the WAL record.
    /// It must be reported as "unchanged", never as NULL.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(Bytes),
    /// The value in the type's binary format (when the subscription asked for `binary`).
    Binary(Bytes),
}

/// The columns of one row. Decoding checked the whole structure once; iterating hands out
/// slices of the same buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    column_count: u16,
    /// The columns' bytes, after the Int16 count.
    columns: Bytes,
}

impl TupleData {
    pub fn column_count(&self) -> usize {
        usize::from(self.column_count)
    }

    pub fn iter(&self) -> TupleIter {
        TupleIter {
            bytes: self.columns.clone(),
            offset: 0,
            left: self.column_count,
        }
    }

    /// Builds a TupleData from its encoded form (count and columns), checking it.
    pub(crate) fn read(reader: &mut Reader) -> Result<TupleData, DecodeError> {
        let count = reader.i16("tuple column count")?;
        let column_count = u16::try_from(count).map_err(|_| {
            reader.error(DecodeErrorKind::InvalidLength {
                what: "tuple column count",
                value: count.into(),
            })
        })?;
        let start = reader.position();
        for _ in 0..column_count {
            match reader.u8("column kind")? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let length = reader.length("column value length")?;
                    reader.skip(length, "column value")?;
                }
                _ => {
                    return Err(reader.error(DecodeErrorKind::UnknownTag {
                        what: "column kind",
                    }))
                }
            }
        }
        Ok(TupleData {
            column_count,
            columns: reader.slice_from(start),
        })
    }

    pub(crate) fn encoded_columns(&self) -> &Bytes {
        &self.columns
    }

    /// For encoders: a tuple from already-encoded column bytes. Not checked.
    pub(crate) fn from_parts(column_count: u16, columns: Bytes) -> TupleData {
        TupleData {
            column_count,
            columns,
        }
    }
}

impl IntoIterator for &TupleData {
    type Item = Column;
    type IntoIter = TupleIter;

    fn into_iter(self) -> TupleIter {
        self.iter()
    }
}

/// Iterates the columns of a [`TupleData`]. The structure was checked when the tuple was
/// decoded, so this yields values, not results.
pub struct TupleIter {
    bytes: Bytes,
    offset: usize,
    left: u16,
}

impl Iterator for TupleIter {
    type Item = Column;

    fn next(&mut self) -> Option<Column> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let kind = *self.bytes.get(self.offset)?;
        self.offset += 1;
        match kind {
            b'n' => Some(Column::Null),
            b'u' => Some(Column::UnchangedToast),
            b't' | b'b' => {
                let length_bytes = self.bytes.get(self.offset..self.offset + 4)?;
                let length = u32::from_be_bytes([
                    length_bytes[0],
                    length_bytes[1],
                    length_bytes[2],
                    length_bytes[3],
                ]) as usize;
                let start = self.offset + 4;
                if start + length > self.bytes.len() {
                    return None;
                }
                let value = self.bytes.slice(start..start + length);
                self.offset = start + length;
                Some(if kind == b't' {
                    Column::Text(value)
                } else {
                    Column::Binary(value)
                })
            }
            _ => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}
