//! The user record of the randomuser API (version 1.4) and its validation. A record either
//! becomes a typed `User` or is rejected with a reason that names the field, so that
//! nothing is dropped without a trace.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// A validated user, one row of the `users` table.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub gender: Option<String>,
    pub title: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub street_number: Option<i32>,
    pub street_name: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub postcode: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub timezone_offset: Option<String>,
    pub timezone_name: Option<String>,
    pub email: String,
    pub username: String,
    pub dob: Option<DateTime<Utc>>,
    pub registered_at: Option<DateTime<Utc>>,
    pub phone: Option<String>,
    pub cell: Option<String>,
    pub picture_large: Option<String>,
    pub picture_medium: Option<String>,
    pub picture_thumbnail: Option<String>,
    pub nat: Option<String>,
}

/// Why a record was not accepted: the field path and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RejectReason {
    pub field: &'static str,
    pub problem: String,
}

impl User {
    /// Validates one element of the API's `results` array. Fields the request excluded
    /// (`exc=`) may be absent; a present field of the wrong type is rejected, and so is a
    /// record without the fields the table cannot do without.
    pub fn from_api(record: &Value) -> Result<User, RejectReason> {
        if !record.is_object() {
            return Err(RejectReason {
                field: "record",
                problem: format!("expected an object, got {}", kind(record)),
            });
        }
        let id_text = required_string(record, "login.uuid")?;
        let id = Uuid::parse_str(&id_text).map_err(|_| RejectReason {
            field: "login.uuid",
            problem: format!("{id_text:?} is not a UUID"),
        })?;
        Ok(User {
            id,
            gender: optional_string(record, "gender")?,
            title: optional_string(record, "name.title")?,
            first_name: required_string(record, "name.first")?,
            last_name: required_string(record, "name.last")?,
            street_number: optional_integer(record, "location.street.number")?,
            street_name: optional_string(record, "location.street.name")?,
            city: optional_string(record, "location.city")?,
            state: optional_string(record, "location.state")?,
            country: optional_string(record, "location.country")?,
            postcode: optional_string_or_number(record, "location.postcode")?,
            latitude: optional_coordinate(record, "location.coordinates.latitude", 90.0)?,
            longitude: optional_coordinate(record, "location.coordinates.longitude", 180.0)?,
            timezone_offset: optional_string(record, "location.timezone.offset")?,
            timezone_name: optional_string(record, "location.timezone.description")?,
            email: required_string(record, "email")?,
            username: required_string(record, "login.username")?,
            dob: optional_timestamp(record, "dob.date")?,
            registered_at: optional_timestamp(record, "registered.date")?,
            phone: optional_string(record, "phone")?,
            cell: optional_string(record, "cell")?,
            picture_large: optional_string(record, "picture.large")?,
            picture_medium: optional_string(record, "picture.medium")?,
            picture_thumbnail: optional_string(record, "picture.thumbnail")?,
            nat: optional_string(record, "nat")?,
        })
    }
}

fn lookup<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(record, |value, key| value.get(key))
        .filter(|value| !value.is_null())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &'static str, expected: &str, value: &Value) -> RejectReason {
    RejectReason {
        field,
        problem: format!("expected {expected}, got {}", kind(value)),
    }
}

fn optional_string(record: &Value, field: &'static str) -> Result<Option<String>, RejectReason> {
    match lookup(record, field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

fn required_string(record: &Value, field: &'static str) -> Result<String, RejectReason> {
    match optional_string(record, field)? {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err(RejectReason {
            field,
            problem: "is empty".into(),
        }),
        None => Err(RejectReason {
            field,
            problem: "is missing".into(),
        }),
    }
}

/// Postcodes are numbers for some nationalities and strings for others.
fn optional_string_or_number(
    record: &Value,
    field: &'static str,
) -> Result<Option<String>, RejectReason> {
    match lookup(record, field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(other) => Err(wrong_type(field, "a string or a number", other)),
    }
}

fn optional_integer(record: &Value, field: &'static str) -> Result<Option<i32>, RejectReason> {
    match lookup(record, field) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .map(Some)
            .ok_or_else(|| RejectReason {
                field,
                problem: format!("{number} is not a 32-bit integer"),
            }),
        Some(other) => Err(wrong_type(field, "an integer", other)),
    }
}

/// The API sends coordinates as strings ("-69.8246"); numbers are accepted too.
fn optional_coordinate(
    record: &Value,
    field: &'static str,
    bound: f64,
) -> Result<Option<f64>, RejectReason> {
    let degrees = match lookup(record, field) {
        None => return Ok(None),
        Some(Value::Number(number)) => number.as_f64(),
        Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
        Some(other) => return Err(wrong_type(field, "a coordinate", other)),
    };
    match degrees {
        Some(degrees) if degrees.abs() <= bound => Ok(Some(degrees)),
        _ => Err(RejectReason {
            field,
            problem: format!("not a coordinate within ±{bound}"),
        }),
    }
}

fn optional_timestamp(
    record: &Value,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, RejectReason> {
    match optional_string(record, field)? {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(&text)
            .map(|timestamp| Some(timestamp.with_timezone(&Utc)))
            .map_err(|_| RejectReason {
                field,
                problem: format!("{text:?} is not an RFC 3339 timestamp"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Value {
        json!({
            "gender": "female",
            "name": {"title": "Miss", "first": "Jennie", "last": "Nichols"},
            "location": {
                "street": {"number": 8929, "name": "Valwood Pkwy"},
                "city": "Billings", "state": "Michigan", "country": "United States",
                "postcode": 63104,
                "coordinates": {"latitude": "-69.8246", "longitude": "134.8719"},
                "timezone": {"offset": "+9:30", "description": "Adelaide, Darwin"}
            },
            "email": "jennie.nichols@example.com",
            "login": {"uuid": "7a0eed16-9430-4d68-901f-c0d4c1c3bf00", "username": "yellowpeacock117"},
            "dob": {"date": "1992-03-08T15:13:16.688Z", "age": 30},
            "registered": {"date": "2007-07-09T05:51:59.390Z", "age": 14},
            "phone": "(272) 790-0888", "cell": "(489) 330-2385",
            "picture": {"large": "l.jpg", "medium": "m.jpg", "thumbnail": "t.jpg"},
            "nat": "US"
        })
    }

    #[test]
    fn a_complete_record_is_accepted_with_numeric_postcodes_as_text() {
        let user = User::from_api(&sample()).unwrap();
        assert_eq!(user.id.to_string(), "7a0eed16-9430-4d68-901f-c0d4c1c3bf00");
        assert_eq!(user.postcode.as_deref(), Some("63104"));
        assert_eq!(user.latitude, Some(-69.8246));
        assert_eq!(user.street_number, Some(8929));
        assert_eq!(
            user.dob.unwrap().to_rfc3339(),
            "1992-03-08T15:13:16.688+00:00"
        );
    }

    #[test]
    fn a_missing_uuid_is_rejected_by_name() {
        let mut record = sample();
        record["login"].as_object_mut().unwrap().remove("uuid");
        assert_eq!(
            User::from_api(&record).unwrap_err().to_string(),
            "login.uuid: is missing"
        );
    }

    #[test]
    fn a_bad_date_is_rejected_with_the_value() {
        let mut record = sample();
        record["dob"]["date"] = json!("not-a-date");
        let reason = User::from_api(&record).unwrap_err();
        assert_eq!(reason.field, "dob.date");
        assert!(reason.problem.contains("not-a-date"));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_rejected() {
        let mut record = sample();
        record["location"]["street"]["number"] = json!("twelve");
        assert_eq!(
            User::from_api(&record).unwrap_err().to_string(),
            "location.street.number: expected an integer, got a string"
        );
        let mut record = sample();
        record["email"] = json!(42);
        assert_eq!(User::from_api(&record).unwrap_err().field, "email");
    }

    #[test]
    fn excluded_optional_fields_are_fine() {
        let mut record = sample();
        record.as_object_mut().unwrap().remove("picture");
        record.as_object_mut().unwrap().remove("dob");
        let user = User::from_api(&record).unwrap();
        assert_eq!(user.picture_large, None);
        assert_eq!(user.dob, None);
    }

    #[test]
    fn out_of_range_coordinates_are_rejected() {
        let mut record = sample();
        record["location"]["coordinates"]["latitude"] = json!("123.5");
        assert_eq!(
            User::from_api(&record).unwrap_err().field,
            "location.coordinates.latitude"
        );
    }
}
