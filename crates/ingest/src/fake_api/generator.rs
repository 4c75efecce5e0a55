//! Deterministic users: the same seed and position always give the same user, so a run of
//! `walflow ingest --seed S` can be repeated and checked. A user depends only on the seed
//! and its position in the sequence ((page - 1) × results + index), like pages of one list.

use serde::Serialize;
use serde_json::{json, Value};

use super::names::*;

/// SplitMix64: tiny, fast, and stable forever (unlike a library's default generator).
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// FNV-1a: turns a seed string into a number.
pub fn hash_seed(seed: &str) -> u64 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn rng_for(seed: &str, position: u64, stream: u64) -> SplitMix64 {
    SplitMix64::new(
        hash_seed(seed) ^ position.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ stream.rotate_left(32),
    )
}

/// One user as the API sends it. Typed so that serialising thousands per request is cheap;
/// the fields a fault can give the wrong type are `Value`s. Top-level fields are optional
/// because `inc`/`exc` select them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiUser {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dob: Option<Dated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered: Option<Dated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<IdDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub picture: Option<Picture>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Name {
    pub title: &'static str,
    pub first: &'static str,
    pub last: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Location {
    pub street: Street,
    pub city: &'static str,
    pub state: &'static str,
    pub country: &'static str,
    pub postcode: Value,
    pub coordinates: Coordinates,
    pub timezone: Timezone,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Street {
    pub number: Value,
    pub name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coordinates {
    pub latitude: String,
    pub longitude: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timezone {
    pub offset: &'static str,
    pub description: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Login {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub username: String,
    pub password: &'static str,
    pub salt: String,
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dated {
    pub date: Value,
    pub age: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdDocument {
    pub name: &'static str,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Picture {
    pub large: String,
    pub medium: String,
    pub thumbnail: String,
}

/// The user at `position` of the sequence for `seed`, restricted to `nationalities` (all
/// when empty).
pub fn user(seed: &str, position: u64, nationalities: &[&'static Nationality]) -> ApiUser {
    let mut rng = rng_for(seed, position, 0);
    let nat: &'static Nationality = if nationalities.is_empty() {
        &NATIONALITIES[rng.below(NATIONALITIES.len() as u64) as usize]
    } else {
        rng.pick(nationalities)
    };
    let female = rng.below(2) == 0;
    let title = if female {
        rng.pick(&["Miss", "Ms", "Mrs", "Mme"])
    } else {
        rng.pick(&["Mr", "Monsieur"])
    };
    let first = rng.pick(if female {
        FIRST_NAMES_FEMALE
    } else {
        FIRST_NAMES_MALE
    });
    let last = rng.pick(LAST_NAMES);
    let (city, state) = rng.pick(nat.places);
    let postcode = if nat.numeric_postcode {
        json!(10_000 + rng.below(89_999))
    } else {
        json!(format!(
            "{}{} {}{}",
            letter(&mut rng),
            rng.below(10),
            rng.below(10),
            letter(&mut rng)
        ))
    };
    let (offset, description) = rng.pick(TIMEZONES);
    let uuid = uuid_v4(&mut rng);
    let username = format!(
        "{}{}{}",
        rng.pick(ADJECTIVES),
        rng.pick(ANIMALS),
        100 + rng.below(900)
    );
    let (dob, dob_year) = timestamp(&mut rng, 1945, 2005);
    let (registered, registered_year) = timestamp(&mut rng, 2002, 2022);
    let portrait = rng.below(100);
    let folder = if female { "women" } else { "men" };
    ApiUser {
        gender: Some(if female { "female" } else { "male" }),
        name: Some(Name { title, first, last }),
        location: Some(Location {
            street: Street {
                number: json!(1 + rng.below(9999)),
                name: rng.pick(STREETS),
            },
            city,
            state,
            country: nat.country,
            postcode,
            coordinates: Coordinates {
                latitude: format!("{:.4}", rng.next_f64() * 180.0 - 90.0),
                longitude: format!("{:.4}", rng.next_f64() * 360.0 - 180.0),
            },
            timezone: Timezone {
                offset,
                description,
            },
        }),
        email: Some(json!(format!(
            "{}.{}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        ))),
        login: Some(Login {
            uuid: Some(uuid),
            username,
            password: rng.pick(ANIMALS),
            salt: hex(&mut rng, 8),
            md5: hex(&mut rng, 32),
            sha1: hex(&mut rng, 40),
            sha256: hex(&mut rng, 64),
        }),
        // Ages are counted to a fixed year so that a seed's users never change.
        dob: Some(Dated {
            date: json!(dob),
            age: AGE_REFERENCE_YEAR - dob_year,
        }),
        registered: Some(Dated {
            date: json!(registered),
            age: AGE_REFERENCE_YEAR - registered_year,
        }),
        phone: Some(phone(&mut rng, nat.phone_pattern)),
        cell: Some(phone(&mut rng, nat.phone_pattern)),
        id: Some(IdDocument {
            name: "ID",
            value: hex(&mut rng, 10),
        }),
        picture: Some(Picture {
            large: format!("https://randomuser.me/api/portraits/{folder}/{portrait}.jpg"),
            medium: format!("https://randomuser.me/api/portraits/med/{folder}/{portrait}.jpg"),
            thumbnail: format!("https://randomuser.me/api/portraits/thumb/{folder}/{portrait}.jpg"),
        }),
        nat: Some(nat.code),
    }
}

const AGE_REFERENCE_YEAR: i32 = 2026;

/// Keeps only the fields of `inc`, or drops those of `exc` (the API's own parameters).
pub fn select_fields(user: &mut ApiUser, include: &[String], exclude: &[String]) {
    if include.is_empty() && exclude.is_empty() {
        return;
    }
    let keep = |name: &str| {
        (include.is_empty() || include.iter().any(|wanted| wanted == name))
            && !exclude.iter().any(|unwanted| unwanted == name)
    };
    macro_rules! select {
        ($($field:ident),*) => {
            $(if !keep(stringify!($field)) { user.$field = None; })*
        };
    }
    select!(gender, name, location, email, login, dob, registered, phone, cell, id, picture, nat);
}

fn letter(rng: &mut SplitMix64) -> char {
    (b'A' + rng.below(26) as u8) as char
}

fn hex(rng: &mut SplitMix64, length: usize) -> String {
    (0..length)
        .map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap_or('0'))
        .collect()
}

fn uuid_v4(rng: &mut SplitMix64) -> String {
    let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    let bits = (bits & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    uuid::Uuid::from_u128(bits).to_string()
}

fn phone(rng: &mut SplitMix64, pattern: &str) -> String {
    pattern
        .chars()
        .map(|character| match character {
            '#' => char::from_digit(rng.below(10) as u32, 10).unwrap_or('0'),
            'I' => char::from_digit(2 + rng.below(8) as u32, 10).unwrap_or('2'),
            other => other,
        })
        .collect()
}

/// An RFC 3339 timestamp with milliseconds, as the API sends, and its year.
fn timestamp(rng: &mut SplitMix64, first_year: i32, last_year: i32) -> (String, i32) {
    let year = first_year + rng.below((last_year - first_year + 1) as u64) as i32;
    let text = format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000)
    );
    (text, year)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;

    #[test]
    fn the_same_seed_and_position_give_the_same_user() {
        assert_eq!(user("abc", 7, &[]), user("abc", 7, &[]));
        assert_ne!(user("abc", 7, &[]), user("abc", 8, &[]));
        assert_ne!(user("abc", 7, &[]), user("abd", 7, &[]));
    }

    #[test]
    fn generated_users_validate() {
        for position in 0..2000 {
            let record = serde_json::to_string(&user("validate", position, &[])).unwrap();
            User::from_api_json(&record).unwrap_or_else(|reason| panic!("{record}: {reason}"));
        }
    }

    #[test]
    fn uuids_are_version_4() {
        let record = user("v4", 1, &[]);
        let id = uuid::Uuid::parse_str(record.login.unwrap().uuid.as_deref().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn inc_and_exc_select_top_level_fields() {
        let mut only = user("s", 1, &[]);
        select_fields(&mut only, &["name".into(), "email".into()], &[]);
        assert_eq!(
            serde_json::to_value(&only)
                .unwrap()
                .as_object()
                .unwrap()
                .len(),
            2
        );
        let mut without = user("s", 1, &[]);
        select_fields(&mut without, &[], &["picture".into()]);
        assert!(without.picture.is_none());
        assert!(without.login.is_some());
    }
}
