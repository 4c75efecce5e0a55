//! The user record of the randomuser API (version 1.4) and its validation. A record either
//! becomes a typed `User` or is rejected with a reason that names the field, so that
//! nothing is dropped without a trace.

use chrono::{DateTime, Utc};
use serde::Deserialize;
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
    pub field: String,
    pub problem: String,
}

impl User {
    /// Validates one element of the API's `results` array, given as its JSON text. Fields
    /// the request excluded (`exc=`) may be absent; a present field of the wrong type is
    /// rejected with its path, and so is a record without the fields the table cannot do
    /// without.
    pub fn from_api_json(record: &str) -> Result<User, RejectReason> {
        let mut deserializer = serde_json::Deserializer::from_str(record);
        let api: ApiRecord =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let path = error.path().to_string();
                let problem = error.into_inner().to_string();
                RejectReason {
                    field: field_name(&path),
                    problem: strip_position(&problem),
                }
            })?;
        api.validate()
    }
}

/// The record as the API shapes it. Strings are owned so that they move into `User`
/// without a copy.
#[derive(Debug, Deserialize)]
struct ApiRecord {
    gender: Option<String>,
    #[serde(default)]
    name: ApiName,
    #[serde(default)]
    location: ApiLocation,
    email: Option<String>,
    #[serde(default)]
    login: ApiLogin,
    #[serde(default)]
    dob: ApiDated,
    #[serde(default)]
    registered: ApiDated,
    phone: Option<String>,
    cell: Option<String>,
    #[serde(default)]
    picture: ApiPicture,
    nat: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiName {
    title: Option<String>,
    first: Option<String>,
    last: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiLocation {
    #[serde(default)]
    street: ApiStreet,
    city: Option<String>,
    state: Option<String>,
    country: Option<String>,
    postcode: Option<StringOrNumber>,
    #[serde(default)]
    coordinates: ApiCoordinates,
    #[serde(default)]
    timezone: ApiTimezone,
}

#[derive(Debug, Default, Deserialize)]
struct ApiStreet {
    number: Option<i32>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiCoordinates {
    latitude: Option<StringOrNumber>,
    longitude: Option<StringOrNumber>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiTimezone {
    offset: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiLogin {
    uuid: Option<String>,
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiDated {
    date: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiPicture {
    large: Option<String>,
    medium: Option<String>,
    thumbnail: Option<String>,
}

/// Postcodes are numbers for some nationalities and strings for others; coordinates are
/// strings ("-69.8246") but numbers are accepted too.
#[derive(Debug)]
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StringOrNumber;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<StringOrNumber, E> {
                Ok(StringOrNumber(value.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<StringOrNumber, E> {
                Ok(StringOrNumber(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<StringOrNumber, E> {
                Ok(StringOrNumber(value.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<StringOrNumber, E> {
                Ok(StringOrNumber(value.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<StringOrNumber, E> {
                Ok(StringOrNumber(value.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl ApiRecord {
    fn validate(self) -> Result<User, RejectReason> {
        let id_text = required(self.login.uuid, "login.uuid")?;
        let id = Uuid::parse_str(&id_text).map_err(|_| RejectReason {
            field: "login.uuid".into(),
            problem: format!("{id_text:?} is not a UUID"),
        })?;
        User {
            id,
            gender: self.gender,
            title: self.name.title,
            first_name: required(self.name.first, "name.first")?,
            last_name: required(self.name.last, "name.last")?,
            street_number: self.location.street.number,
            street_name: self.location.street.name,
            city: self.location.city,
            state: self.location.state,
            country: self.location.country,
            postcode: self.location.postcode.map(|postcode| postcode.0),
            latitude: coordinate(
                self.location.coordinates.latitude,
                "location.coordinates.latitude",
                90.0,
            )?,
            longitude: coordinate(
                self.location.coordinates.longitude,
                "location.coordinates.longitude",
                180.0,
            )?,
            timezone_offset: self.location.timezone.offset,
            timezone_name: self.location.timezone.description,
            email: required(self.email, "email")?,
            username: required(self.login.username, "login.username")?,
            dob: timestamp(self.dob.date, "dob.date")?,
            registered_at: timestamp(self.registered.date, "registered.date")?,
            phone: self.phone,
            cell: self.cell,
            picture_large: self.picture.large,
            picture_medium: self.picture.medium,
            picture_thumbnail: self.picture.thumbnail,
            nat: self.nat,
        }
        .without_nul_characters()
    }
}

impl User {
    /// The text fields by their path in the API's record (the uuid and the dates are
    /// parsed, so cannot hold a NUL).
    fn text_fields(&self) -> [(&'static str, Option<&str>); 19] {
        [
            ("gender", self.gender.as_deref()),
            ("name.title", self.title.as_deref()),
            ("name.first", Some(&self.first_name)),
            ("name.last", Some(&self.last_name)),
            ("location.street.name", self.street_name.as_deref()),
            ("location.city", self.city.as_deref()),
            ("location.state", self.state.as_deref()),
            ("location.country", self.country.as_deref()),
            ("location.postcode", self.postcode.as_deref()),
            ("location.timezone.offset", self.timezone_offset.as_deref()),
            (
                "location.timezone.description",
                self.timezone_name.as_deref(),
            ),
            ("email", Some(&self.email)),
            ("login.username", Some(&self.username)),
            ("phone", self.phone.as_deref()),
            ("cell", self.cell.as_deref()),
            ("picture.large", self.picture_large.as_deref()),
            ("picture.medium", self.picture_medium.as_deref()),
            ("picture.thumbnail", self.picture_thumbnail.as_deref()),
            ("nat", self.nat.as_deref()),
        ]
    }

    /// Postgres text cannot hold U+0000: such a user would fail the upsert of its whole
    /// batch, and the same batch again on every re-run.
    fn without_nul_characters(self) -> Result<User, RejectReason> {
        let field = self
            .text_fields()
            .into_iter()
            .find(|(_, text)| text.is_some_and(|text| text.contains('\0')))
            .map(|(field, _)| field);
        match field {
            Some(field) => Err(RejectReason {
                field: field.into(),
                problem: "contains a NUL character (\\u0000), which Postgres cannot store".into(),
            }),
            None => Ok(self),
        }
    }
}

fn required(value: Option<String>, field: &str) -> Result<String, RejectReason> {
    match value {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err(RejectReason {
            field: field.into(),
            problem: "is empty".into(),
        }),
        None => Err(RejectReason {
            field: field.into(),
            problem: "is missing".into(),
        }),
    }
}

fn coordinate(
    value: Option<StringOrNumber>,
    field: &str,
    bound: f64,
) -> Result<Option<f64>, RejectReason> {
    let Some(StringOrNumber(text)) = value else {
        return Ok(None);
    };
    match text.trim().parse::<f64>() {
        Ok(degrees) if degrees.abs() <= bound => Ok(Some(degrees)),
        _ => Err(RejectReason {
            field: field.into(),
            problem: format!("{text:?} is not a coordinate within ±{bound}"),
        }),
    }
}

fn timestamp(value: Option<String>, field: &str) -> Result<Option<DateTime<Utc>>, RejectReason> {
    let Some(text) = value else { return Ok(None) };
    DateTime::parse_from_rfc3339(&text)
        .map(|timestamp| Some(timestamp.with_timezone(&Utc)))
        .map_err(|_| RejectReason {
            field: field.into(),
            problem: format!("{text:?} is not an RFC 3339 timestamp"),
        })
}

/// serde_path_to_error names the root `.`: the record itself is not an object.
fn field_name(path: &str) -> String {
    if path.is_empty() || path == "." {
        "record".to_owned()
    } else {
        path.to_owned()
    }
}

/// serde's messages end with " at line L column C", which says nothing once the field is
/// named.
fn strip_position(problem: &str) -> String {
    match problem.rfind(" at line ") {
        Some(index) => problem[..index].to_owned(),
        None => problem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

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
    fn a_nul_character_in_any_text_field_is_rejected_by_that_field() {
        let user = User::from_api_json(&sample().to_string()).unwrap();
        for (field, _) in user.text_fields() {
            let mut record = sample();
            let mut value = &mut record;
            for key in field.split('.') {
                value = &mut value[key];
            }
            *value = Value::String("a\u{0}b".into());
            let reason = User::from_api_json(&record.to_string()).unwrap_err();
            assert_eq!(reason.field, field);
            assert!(reason.problem.contains("NUL"), "{reason}");
        }
    }

    #[test]
    fn a_complete_record_is_accepted_with_numeric_postcodes_as_text() {
        let user = User::from_api_json(&sample().to_string()).unwrap();
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
            User::from_api_json(&record.to_string())
                .unwrap_err()
                .to_string(),
            "login.uuid: is missing"
        );
    }

    #[test]
    fn a_bad_date_is_rejected_with_the_value() {
        let mut record = sample();
        record["dob"]["date"] = json!("not-a-date");
        let reason = User::from_api_json(&record.to_string()).unwrap_err();
        assert_eq!(reason.field, "dob.date");
        assert!(reason.problem.contains("not-a-date"));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_rejected() {
        let mut record = sample();
        record["location"]["street"]["number"] = json!("twelve");
        assert_eq!(
            User::from_api_json(&record.to_string())
                .unwrap_err()
                .to_string(),
            "location.street.number: invalid type: string \"twelve\", expected i32"
        );
        let mut record = sample();
        record["email"] = json!(42);
        assert_eq!(
            User::from_api_json(&record.to_string()).unwrap_err().field,
            "email"
        );
    }

    #[test]
    fn excluded_optional_fields_are_fine() {
        let mut record = sample();
        record.as_object_mut().unwrap().remove("picture");
        record.as_object_mut().unwrap().remove("dob");
        let user = User::from_api_json(&record.to_string()).unwrap();
        assert_eq!(user.picture_large, None);
        assert_eq!(user.dob, None);
    }

    #[test]
    fn a_record_that_is_not_an_object_is_rejected() {
        assert_eq!(
            User::from_api_json("\"just text\"").unwrap_err().field,
            "record"
        );
    }

    #[test]
    fn out_of_range_coordinates_are_rejected() {
        let mut record = sample();
        record["location"]["coordinates"]["latitude"] = json!("123.5");
        assert_eq!(
            User::from_api_json(&record.to_string()).unwrap_err().field,
            "location.coordinates.latitude"
        );
    }
}
