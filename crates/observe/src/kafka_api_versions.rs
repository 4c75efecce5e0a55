//! Kafka's ApiVersions request (key 18, version 3), spoken directly: librdkafka does not tell
//! its caller which APIs or which KRaft `metadata.version` a broker has. Encoding and
//! decoding are I/O-free; `request` is the one function that touches the network.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const API_VERSIONS_KEY: i16 = 18;
const API_VERSIONS_VERSION: i16 = 3;
const CORRELATION_ID: i32 = 1;
/// Larger answers are not ApiVersions responses.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
const FINALIZED_FEATURES_TAG: u64 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api_key: i16,
    pub min_version: i16,
    pub max_version: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizedFeature {
    pub name: String,
    pub max_version_level: i16,
    pub min_version_level: i16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerApiVersions {
    pub apis: Vec<ApiVersionRange>,
    pub finalized_features: Vec<FinalizedFeature>,
}

impl BrokerApiVersions {
    pub fn max_version(&self, api_key: i16) -> Option<i16> {
        self.apis
            .iter()
            .find(|api| api.api_key == api_key)
            .map(|api| api.max_version)
    }

    pub fn finalized_feature(&self, name: &str) -> Option<i16> {
        self.finalized_features
            .iter()
            .find(|feature| feature.name == name)
            .map(|feature| feature.max_version_level)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiVersionsError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker answered error code {0} (35 means it does not speak ApiVersions v3)")]
    Broker(i16),
    #[error("malformed response at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
}

/// Sends one ApiVersions v3 request to `broker` (`host:port`) and decodes the answer.
pub async fn request(
    broker: &str,
    timeout: Duration,
) -> Result<BrokerApiVersions, ApiVersionsError> {
    let exchange = async {
        let mut stream = TcpStream::connect(broker).await?;
        stream.write_all(&encode_request("walflow-doctor")).await?;
        let length = stream.read_i32().await?;
        let length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= MAX_RESPONSE_BYTES)
            .ok_or(ApiVersionsError::Malformed {
                offset: 0,
                what: "response length",
            })?;
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        decode_response(&body)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ApiVersionsError::Timeout(timeout))?
}

/// A length-prefixed request: header v2 (key, version, correlation id, client id, no tagged
/// fields) and the v3 body (client software name and version, no tagged fields).
pub fn encode_request(client_id: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&API_VERSIONS_KEY.to_be_bytes());
    message.extend_from_slice(&API_VERSIONS_VERSION.to_be_bytes());
    message.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    let client_id_len = i16::try_from(client_id.len()).unwrap_or(i16::MAX);
    message.extend_from_slice(&client_id_len.to_be_bytes());
    message.extend_from_slice(&client_id.as_bytes()[..client_id_len as usize]);
    message.push(0); // header tagged fields
    put_compact_string(&mut message, "walflow");
    put_compact_string(&mut message, env!("CARGO_PKG_VERSION"));
    message.push(0); // body tagged fields
    let mut framed = Vec::with_capacity(message.len() + 4);
    framed.extend_from_slice(&(message.len() as i32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

fn put_compact_string(buffer: &mut Vec<u8>, value: &str) {
    put_uvarint(buffer, value.len() as u64 + 1);
    buffer.extend_from_slice(value.as_bytes());
}

fn put_uvarint(buffer: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buffer.push((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.push(value as u8);
}

/// Decodes a response without its length prefix. ApiVersions answers always carry header
/// v0 (just the correlation id), whatever the request version.
pub fn decode_response(bytes: &[u8]) -> Result<BrokerApiVersions, ApiVersionsError> {
    let mut reader = Reader { bytes, offset: 0 };
    let correlation_id = reader.i32("correlation id")?;
    if correlation_id != CORRELATION_ID {
        return Err(reader.malformed("correlation id"));
    }
    let error_code = reader.i16("error code")?;
    if error_code != 0 {
        return Err(ApiVersionsError::Broker(error_code));
    }
    let api_count = reader.compact_array_len("api_keys")?;
    let mut apis = Vec::with_capacity(api_count.min(1024));
    for _ in 0..api_count {
        apis.push(ApiVersionRange {
            api_key: reader.i16("api key")?,
            min_version: reader.i16("min version")?,
            max_version: reader.i16("max version")?,
        });
        reader.skip_tagged_fields()?;
    }
    let _throttle_time_ms = reader.i32("throttle time")?;
    let mut finalized_features = Vec::new();
    let tagged_count = reader.uvarint("tagged field count")?;
    for _ in 0..tagged_count {
        let tag = reader.uvarint("tag")?;
        let size = reader.uvarint("tag size")? as usize;
        let field = reader.take(size, "tagged field")?;
        if tag == FINALIZED_FEATURES_TAG {
            let mut field_reader = Reader {
                bytes: field,
                offset: 0,
            };
            finalized_features = field_reader.finalized_features()?;
        }
    }
    Ok(BrokerApiVersions {
        apis,
        finalized_features,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &'static str) -> ApiVersionsError {
        ApiVersionsError::Malformed {
            offset: self.offset,
            what,
        }
    }

    fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], ApiVersionsError> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| self.malformed(what))?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, ApiVersionsError> {
        let bytes = self.take(2, what)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, ApiVersionsError> {
        let bytes = self.take(4, what)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn uvarint(&mut self, what: &'static str) -> Result<u64, ApiVersionsError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1, what)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed(what))
    }

    /// Compact arrays store length + 1; zero means null, read here as empty.
    fn compact_array_len(&mut self, what: &'static str) -> Result<usize, ApiVersionsError> {
        Ok(self.uvarint(what)?.saturating_sub(1) as usize)
    }

    fn compact_string(&mut self, what: &'static str) -> Result<String, ApiVersionsError> {
        let length = self.compact_array_len(what)?;
        let bytes = self.take(length, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed(what))
    }

    fn skip_tagged_fields(&mut self) -> Result<(), ApiVersionsError> {
        let count = self.uvarint("tagged field count")?;
        for _ in 0..count {
            self.uvarint("tag")?;
            let size = self.uvarint("tag size")? as usize;
            self.take(size, "tagged field")?;
        }
        Ok(())
    }

    fn finalized_features(&mut self) -> Result<Vec<FinalizedFeature>, ApiVersionsError> {
        let count = self.compact_array_len("finalized features")?;
        let mut features = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            features.push(FinalizedFeature {
                name: self.compact_string("feature name")?,
                max_version_level: self.i16("max version level")?,
                min_version_level: self.i16("min version level")?,
            });
            self.skip_tagged_fields()?;
        }
        Ok(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_with_metadata_version(level: i16) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        put_uvarint(&mut body, 3); // two APIs
        for (key, max) in [(0i16, 11i16), (22, 5)] {
            body.extend_from_slice(&key.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&max.to_be_bytes());
            body.push(0);
        }
        body.extend_from_slice(&0i32.to_be_bytes());
        let mut features = Vec::new();
        put_uvarint(&mut features, 2); // one feature
        put_compact_string(&mut features, "metadata.version");
        features.extend_from_slice(&level.to_be_bytes());
        features.extend_from_slice(&level.to_be_bytes());
        features.push(0);
        put_uvarint(&mut body, 2); // two tagged fields: epoch (tag 1) and features (tag 2)
        put_uvarint(&mut body, 1);
        put_uvarint(&mut body, 8);
        body.extend_from_slice(&7i64.to_be_bytes());
        put_uvarint(&mut body, FINALIZED_FEATURES_TAG);
        put_uvarint(&mut body, features.len() as u64);
        body.extend_from_slice(&features);
        body
    }

    #[test]
    fn decodes_apis_and_the_metadata_version() {
        let versions = decode_response(&response_with_metadata_version(27)).unwrap();
        assert_eq!(versions.max_version(22), Some(5));
        assert_eq!(versions.max_version(0), Some(11));
        assert_eq!(versions.max_version(1), None);
        assert_eq!(versions.finalized_feature("metadata.version"), Some(27));
    }

    #[test]
    fn truncated_responses_name_the_offset() {
        let full = response_with_metadata_version(27);
        for cut in 0..full.len() {
            match decode_response(&full[..cut]) {
                Err(ApiVersionsError::Malformed { offset, .. }) => assert!(offset <= cut),
                other => panic!("cut at {cut}: expected a malformed error, got {other:?}"),
            }
        }
    }

    #[test]
    fn broker_errors_are_reported() {
        let mut body = CORRELATION_ID.to_be_bytes().to_vec();
        body.extend_from_slice(&35i16.to_be_bytes());
        assert!(matches!(
            decode_response(&body),
            Err(ApiVersionsError::Broker(35))
        ));
    }

    #[test]
    fn requests_are_length_prefixed() {
        let request = encode_request("walflow-doctor");
        let length = i32::from_be_bytes([request[0], request[1], request[2], request[3]]) as usize;
        assert_eq!(length, request.len() - 4);
        assert_eq!(&request[4..6], &API_VERSIONS_KEY.to_be_bytes());
        assert_eq!(&request[6..8], &API_VERSIONS_VERSION.to_be_bytes());
    }
}
