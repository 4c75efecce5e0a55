//! Avro's variable-length zig-zag integers: ints, longs, lengths, block counts and union
//! branch indexes are all written this way. Small magnitudes, positive or negative, take few
//! bytes: 0 → `00`, -1 → `01`, 1 → `02`, -64 → `7f`, 64 → `80 01`.

/// The longest varint of a 64-bit value.
pub const MAX_LEN: usize = 10;

/// Appends `value` to `buffer`.
pub fn write(buffer: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buffer.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buffer.push(zigzag as u8);
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("the datum ends inside a varint")]
    EndsEarly,
    #[error("a varint longer than {MAX_LEN} bytes")]
    TooLong,
}

/// Reads one value from the front of `input`, advancing it.
pub fn read(input: &mut &[u8]) -> Result<i64, VarintError> {
    let mut value = 0u64;
    for (index, shift) in (0..64).step_by(7).enumerate() {
        let Some(&byte) = input.get(index) else {
            return Err(VarintError::EndsEarly);
        };
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(VarintError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        for (value, bytes) in [
            (0i64, &[0u8][..]),
            (-1, &[1]),
            (1, &[2]),
            (-64, &[0x7f]),
            (64, &[0x80, 1]),
            (
                i64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            ),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            ),
        ] {
            let mut buffer = Vec::new();
            write(&mut buffer, value);
            assert_eq!(buffer, bytes, "{value}");
        }
        assert_eq!(read(&mut &[0x80u8][..]), Err(VarintError::EndsEarly));
        assert_eq!(read(&mut &[0xffu8; 11][..]), Err(VarintError::TooLong));
    }

    proptest! {
        #[test]
        fn every_long_reads_back_and_agrees_with_apache_avro(value: i64, tail: Vec<u8>) {
            let mut buffer = Vec::new();
            write(&mut buffer, value);
            let oracle = apache_avro::to_avro_datum(
                &apache_avro::Schema::Long,
                apache_avro::types::Value::Long(value),
            )
            .unwrap();
            prop_assert_eq!(&buffer, &oracle);
            buffer.extend(&tail);
            let mut input = &buffer[..];
            prop_assert_eq!(read(&mut input), Ok(value));
            prop_assert_eq!(input, &tail[..]);
        }
    }
}
