//! The bytes of a datum not read yet, read as Avro's primitives, with the limits that keep a
//! hostile datum from costing time or memory its size does not bound.

use super::{DatumError, NodeId};
use crate::avro::zigzag::{self, VarintError};

/// How many zero-width items (nulls, records of them, `fixed` of size 0) one datum may hold
/// in its arrays and maps. They cost nothing to write, so the datum's size does not bound
/// them, and a block count of 2^62 fits in ten bytes.
pub const MAX_ZERO_WIDTH_ITEMS: u64 = 1 << 16;

pub(super) struct Datum<'a> {
    pub(super) bytes: &'a [u8],
    zero_width_items_left: u64,
}

impl<'a> Datum<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Datum<'a> {
        Datum {
            bytes,
            zero_width_items_left: MAX_ZERO_WIDTH_ITEMS,
        }
    }

    pub(super) fn take(&mut self, count: usize) -> Result<&'a [u8], DatumError> {
        if self.bytes.len() < count {
            return Err(DatumError::EndsEarly {
                wanted: count,
                left: self.bytes.len(),
            });
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    /// `N` bytes.
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], DatumError> {
        let mut bytes = [0; N];
        bytes.copy_from_slice(self.take(N)?);
        Ok(bytes)
    }

    /// A zig-zag varint.
    pub(super) fn long(&mut self) -> Result<i64, DatumError> {
        zigzag::read(&mut self.bytes).map_err(|error| match error {
            VarintError::EndsEarly => DatumError::EndsEarly { wanted: 1, left: 0 },
            VarintError::TooLong => DatumError::VarintTooLong,
        })
    }

    pub(super) fn length_prefixed(&mut self) -> Result<&'a [u8], DatumError> {
        let length = self.long()?;
        let length = usize::try_from(length).map_err(|_| DatumError::NegativeLength(length))?;
        self.take(length)
    }

    /// UTF-8 text, length-prefixed; `what` names it in the error.
    pub(super) fn text(&mut self, what: &'static str) -> Result<&'a str, DatumError> {
        std::str::from_utf8(self.length_prefixed()?).map_err(|_| DatumError::NotUtf8(what))
    }

    /// A union's branch, by the index the datum gives.
    pub(super) fn branch(&mut self, branches: &[NodeId]) -> Result<NodeId, DatumError> {
        let index = self.long()?;
        usize::try_from(index)
            .ok()
            .and_then(|index| branches.get(index))
            .copied()
            .ok_or(DatumError::NoSuchBranch {
                index,
                branches: branches.len(),
            })
    }

    /// An array or map block's item count (a negative count is followed by the block's
    /// size in bytes). Refused when the rest of the datum cannot hold that many items of at
    /// least `item_width` bytes, or when it is more zero-width items than a datum may hold:
    /// either way the count is a lie, and believing it costs time or memory the datum's
    /// size does not bound.
    pub(super) fn block_items(&mut self, item_width: u64) -> Result<u64, DatumError> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        let count = count.unsigned_abs();
        if item_width == 0 {
            self.zero_width_items_left = self
                .zero_width_items_left
                .checked_sub(count)
                .ok_or(DatumError::TooManyZeroWidthItems { count })?;
        } else if count > self.bytes.len() as u64 / item_width {
            return Err(DatumError::BlockLargerThanDatum {
                count,
                item_width,
                left: self.bytes.len(),
            });
        }
        Ok(count)
    }
}
