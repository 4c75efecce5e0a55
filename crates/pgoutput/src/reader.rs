//! A cursor over one message's bytes that hands out zero-copy slices and reports errors
//! with the message's tag and the offset reached.

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::{DecodeError, DecodeErrorKind};

pub(crate) struct Reader {
    bytes: Bytes,
    offset: usize,
    tag: Option<u8>,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Reader {
        Reader {
            bytes,
            offset: 0,
            tag: None,
        }
    }

    pub(crate) fn set_tag(&mut self, tag: u8) {
        self.tag = Some(tag);
    }

    pub(crate) fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            tag: self.tag,
            offset: self.offset,
            kind,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn need(&self, count: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() < count {
            return Err(self.error(DecodeErrorKind::Truncated { what }));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        let value = self.bytes[self.offset];
        self.offset += 1;
        Ok(value)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.need(2, what)?;
        let at = self.offset;
        self.offset += 2;
        Ok(i16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.need(4, what)?;
        let at = self.offset;
        self.offset += 4;
        let mut array = [0; 4];
        array.copy_from_slice(&self.bytes[at..at + 4]);
        Ok(i32::from_be_bytes(array))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        let at = self.offset;
        self.offset += 8;
        let mut array = [0; 8];
        array.copy_from_slice(&self.bytes[at..at + 8]);
        Ok(i64::from_be_bytes(array))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(self.i64(what)? as u64)
    }

    /// `count` bytes as a slice of the same buffer.
    pub(crate) fn bytes(&mut self, count: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(count, what)?;
        let slice = self.bytes.slice(self.offset..self.offset + count);
        self.offset += count;
        Ok(slice)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        let slice = self.bytes.slice(self.offset..);
        self.offset = self.bytes.len();
        slice
    }

    /// A NUL-terminated UTF-8 string, without its NUL.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let length = self.bytes[self.offset..]
            .iter()
            .position(|byte| *byte == 0)
            .ok_or_else(|| self.error(DecodeErrorKind::UnterminatedString { what }))?;
        let start = self.offset;
        let text = ByteString::try_from(self.bytes.slice(start..start + length))
            .map_err(|_| self.error(DecodeErrorKind::InvalidUtf8 { what }))?;
        self.offset += length + 1;
        Ok(text)
    }

    /// A non-negative Int32 length or count.
    pub(crate) fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| {
            self.error(DecodeErrorKind::InvalidLength {
                what,
                value: value.into(),
            })
        })
    }

    /// Fails when bytes remain after a message that should have used them all.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error(DecodeErrorKind::TrailingBytes { count })),
        }
    }

    /// The position reached, for slicing out what was just walked over.
    pub(crate) fn position(&self) -> usize {
        self.offset
    }

    pub(crate) fn slice_from(&self, start: usize) -> Bytes {
        self.bytes.slice(start..self.offset)
    }

    pub(crate) fn skip(&mut self, count: usize, what: &'static str) -> Result<(), DecodeError> {
        self.need(count, what)?;
        self.offset += count;
        Ok(())
    }
}
