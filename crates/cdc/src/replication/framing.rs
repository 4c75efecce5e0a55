//! Splits the server's byte stream into messages. postgres-protocol 0.6 parses every
//! message a replication session needs except CopyBothResponse ('W', the answer to
//! START_REPLICATION), which is framed here.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};

use super::error::{ReplicationError, ServerError};

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

pub(crate) enum Backend {
    CopyBothResponse,
    Message(Message),
}

/// The longest message walflow accepts: a row of Postgres's largest values (1 GB per
/// field) fits, a length field gone wrong does not.
const MAX_MESSAGE_LENGTH: usize = (1 << 30) + (1 << 20);

/// One whole message from the front of `buffer`, or `None` when more bytes are needed.
/// Nothing is parsed (or reserved) before the whole message is there, so the memory a
/// message takes grows with the bytes that actually arrive, never with what its length
/// field claims.
pub(crate) fn next_message(buffer: &mut BytesMut) -> Result<Option<Backend>, ReplicationError> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    let length = i32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
    let total = usize::try_from(length)
        .ok()
        .filter(|length| (4..=MAX_MESSAGE_LENGTH).contains(length))
        .ok_or_else(|| {
            ReplicationError::Protocol(format!(
                "a message of type {:?} claims a length of {length} bytes",
                char::from(buffer[0])
            ))
        })?
        + 1;
    if buffer.len() < total {
        return Ok(None);
    }
    if buffer[0] == COPY_BOTH_RESPONSE_TAG {
        let _ = buffer.split_to(total);
        return Ok(Some(Backend::CopyBothResponse));
    }
    Ok(Message::parse(buffer)?.map(Backend::Message))
}

pub(crate) fn server_error(fields: ErrorFields<'_>) -> ReplicationError {
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = fields;
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' | b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_both_responses_are_framed_and_consumed() {
        let mut buffer = BytesMut::new();
        // 'W', length 7: format 0, zero columns.
        buffer.extend_from_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        buffer.extend_from_slice(&[b'd', 0, 0, 0, 5, b'x']);
        assert!(matches!(
            next_message(&mut buffer).unwrap(),
            Some(Backend::CopyBothResponse)
        ));
        assert!(matches!(
            next_message(&mut buffer).unwrap(),
            Some(Backend::Message(Message::CopyData(_)))
        ));
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_huge_claimed_length_reserves_nothing_and_an_absurd_one_is_refused() {
        // CopyData claiming 1 GB, with only a few bytes there yet.
        let mut buffer = BytesMut::from(&[b'd', 0x40, 0, 0, 0, 1, 2, 3][..]);
        assert!(next_message(&mut buffer).unwrap().is_none());
        assert!(
            buffer.capacity() < 1024,
            "reserved {} bytes",
            buffer.capacity()
        );
        let mut buffer = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff, 1][..]);
        assert!(matches!(
            next_message(&mut buffer),
            Err(ReplicationError::Protocol(_))
        ));
    }

    #[test]
    fn partial_messages_wait_for_more_bytes() {
        let mut buffer = BytesMut::from(&[b'W', 0, 0, 0, 7, 0][..]);
        assert!(next_message(&mut buffer).unwrap().is_none());
        assert_eq!(buffer.len(), 6, "nothing consumed");
    }
}
