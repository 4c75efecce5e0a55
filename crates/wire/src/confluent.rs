//! The Confluent wire framing of an Avro datum, as Kafka Connect's AvroConverter, Flink's
//! avro-confluent, ksqlDB and confluent-kafka clients read and write it: a zero byte, the
//! writer schema's registry id as four big-endian bytes, then the datum.

/// The framing's first byte.
pub const MAGIC_BYTE: u8 = 0;
/// The magic byte and the schema id.
pub const HEADER_LEN: usize = 5;

/// A payload that is not in the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Avro event in the Confluent wire format (no leading zero byte and schema id)")]
pub struct NotFramed;

/// A buffer holding the header for `schema_id`, with room for `datum_capacity` bytes of
/// datum to be written after it.
pub fn header(schema_id: u32, datum_capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + datum_capacity);
    bytes.push(MAGIC_BYTE);
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    bytes
}

/// The writer schema's id of a framed payload, and its datum.
pub fn split(payload: &[u8]) -> Result<(u32, &[u8]), NotFramed> {
    match payload {
        [MAGIC_BYTE, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(NotFramed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_datum_splits_into_its_schema_id_and_datum() {
        let mut payload = header(0x0102_0304, 3);
        assert_eq!(payload, [0, 1, 2, 3, 4]);
        payload.extend([7, 8, 9]);
        assert_eq!(split(&payload), Ok((0x0102_0304, &[7u8, 8, 9][..])));
        assert_eq!(split(&payload[..5]), Ok((0x0102_0304, &[][..])));
        assert_eq!(split(&payload[..4]), Err(NotFramed));
        assert_eq!(split(b"{\"op\":\"c\"}"), Err(NotFramed));
    }
}
