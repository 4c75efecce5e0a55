//! Values whose JSON form is text: floats that JSON cannot hold, bytes, uuids, decimals.

use base64::Engine;
use serde_json::Value as Json;

use super::DatumError;

/// NaN and the infinities as the strings Debezium's JSON uses.
pub(super) fn float(value: f64) -> Json {
    if value.is_nan() {
        Json::from("NaN")
    } else if value.is_infinite() {
        Json::from(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Json::from(value)
    }
}

pub(super) fn base64(bytes: &[u8]) -> Json {
    Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub(super) fn uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A decimal's unscaled value (big-endian two's complement) and scale as its decimal text.
pub(super) fn decimal(bytes: &[u8], scale: usize) -> Result<String, DatumError> {
    if bytes.len() > 16 {
        return Err(DatumError::DecimalTooWide(bytes.len()));
    }
    let mut unscaled: i128 = if bytes.first().is_some_and(|byte| byte & 0x80 != 0) {
        -1
    } else {
        0
    };
    for byte in bytes {
        unscaled = (unscaled << 8) | i128::from(*byte);
    }
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    Ok(format!("{sign}{whole}.{fraction}"))
}
