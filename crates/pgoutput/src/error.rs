use std::fmt;

/// What went wrong, where: the tag of the message being decoded (when known) and the byte
/// offset within the buffer handed to the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    pub tag: Option<u8>,
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The buffer ended while `what` was being read.
    Truncated { what: &'static str },
    /// A tag byte this decoder does not know.
    UnknownTag { what: &'static str },
    /// A length or count that is negative or impossible.
    InvalidLength { what: &'static str, value: i64 },
    /// A C string without its terminating NUL.
    UnterminatedString { what: &'static str },
    /// A name that is not UTF-8.
    InvalidUtf8 { what: &'static str },
    /// Bytes left over after a complete message.
    TrailingBytes { count: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            Some(tag) if tag.is_ascii_graphic() => {
                write!(f, "message '{}' at byte {}: ", tag as char, self.offset)?
            }
            Some(tag) => write!(f, "message 0x{tag:02x} at byte {}: ", self.offset)?,
            None => write!(f, "at byte {}: ", self.offset)?,
        }
        match &self.kind {
            DecodeErrorKind::Truncated { what } => write!(f, "truncated while reading {what}"),
            DecodeErrorKind::UnknownTag { what } => write!(f, "unknown {what}"),
            DecodeErrorKind::InvalidLength { what, value } => write!(f, "invalid {what} {value}"),
            DecodeErrorKind::UnterminatedString { what } => {
                write!(f, "{what} has no terminating NUL")
            }
            DecodeErrorKind::InvalidUtf8 { what } => write!(f, "{what} is not UTF-8"),
            DecodeErrorKind::TrailingBytes { count } => {
                write!(f, "{count} bytes after the end of the message")
            }
        }
    }
}
