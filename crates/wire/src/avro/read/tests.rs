//! The reader against apache-avro as the oracle, and against datums built to cost more than
//! their size.

use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use base64::Engine;
use serde_json::{json, Map, Value as Json};

use super::*;

/// The oracle: apache-avro's own reading of a datum, turned into the same JSON form
/// (dates as days, timestamps as microseconds, bytes as base64, NaN and infinities as
/// strings).
pub(crate) fn oracle(value: &Avro) -> Json {
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(flag) => json!(flag),
        Avro::Int(number) | Avro::Date(number) | Avro::TimeMillis(number) => json!(number),
        Avro::Long(number) | Avro::TimeMicros(number) => json!(number),
        Avro::Float(number) => oracle_float(f64::from(*number)),
        Avro::Double(number) => oracle_float(*number),
        Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Avro::String(text) | Avro::Enum(_, text) => json!(text),
        Avro::Uuid(uuid) => json!(uuid.to_string()),
        Avro::TimestampMillis(millis) | Avro::LocalTimestampMillis(millis) => {
            json!(millis.saturating_mul(1000))
        }
        Avro::TimestampMicros(micros) | Avro::LocalTimestampMicros(micros) => json!(micros),
        Avro::TimestampNanos(nanos) | Avro::LocalTimestampNanos(nanos) => json!(nanos / 1000),
        Avro::Union(_, inner) => oracle(inner),
        Avro::Array(items) => Json::Array(items.iter().map(oracle).collect()),
        Avro::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| (key.clone(), oracle(value)))
                .collect(),
        ),
        Avro::Record(fields) => {
            let mut object = Map::new();
            for (name, value) in fields {
                object.insert(name.clone(), oracle(value));
            }
            Json::Object(object)
        }
        other => panic!("no oracle for {other:?}"),
    }
}

fn oracle_float(number: f64) -> Json {
    if number.is_nan() {
        json!("NaN")
    } else if number.is_infinite() {
        json!(if number > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        })
    } else {
        json!(number)
    }
}

fn read(schema: &Schema, datum: &[u8]) -> Json {
    let mut input = datum;
    let json = Reader::new(schema).unwrap().read(&mut input).unwrap();
    assert!(input.is_empty(), "{} bytes unread", input.len());
    json
}

const ZOO: &str = r#"{"type":"record","name":"Envelope","namespace":"walflow.public.zoo","fields":[
    {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
        {"name":"id","type":"long"},
        {"name":"flag","type":["null","boolean"],"default":null},
        {"name":"small","type":["null","int"],"default":null},
        {"name":"real","type":["null","float"],"default":null},
        {"name":"ratio","type":["null","double"],"default":null},
        {"name":"blob","type":["null","bytes","string"],"default":null},
        {"name":"born","type":["null",{"type":"int","logicalType":"date"}],"default":null},
        {"name":"seen","type":["null",{"type":"long","logicalType":"local-timestamp-micros"}],"default":null},
        {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-millis"}],"default":null},
        {"name":"nanos","type":["null",{"type":"long","logicalType":"timestamp-nanos"}],"default":null},
        {"name":"uid","type":["null",{"type":"string","logicalType":"uuid"}],"default":null},
        {"name":"mood","type":["null",{"type":"enum","name":"Mood","symbols":["sad","happy"]}],"default":null},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"scores","type":{"type":"map","values":["null","long"]}},
        {"name":"hash","type":{"type":"fixed","name":"Hash","size":4}},
        {"name":"note","type":["null","string"],"default":null}]}],"default":null},
    {"name":"after","type":["null","Value"],"default":null},
    {"name":"op","type":"string"}]}"#;

fn zoo_row(id: i64, variant: u32) -> Avro {
    let some = |value: Avro| Avro::Union(1, Box::new(value));
    let null = || Avro::Union(0, Box::new(Avro::Null));
    let pick = |value: Avro| {
        if variant % 3 == 2 {
            null()
        } else {
            some(value)
        }
    };
    Avro::Record(vec![
        ("id".into(), Avro::Long(id)),
        (
            "flag".into(),
            pick(Avro::Boolean(variant.is_multiple_of(2))),
        ),
        ("small".into(), pick(Avro::Int(i32::MIN + variant as i32))),
        (
            "real".into(),
            pick(Avro::Float(
                [1.5, f32::NAN, f32::NEG_INFINITY][variant as usize % 3],
            )),
        ),
        (
            "ratio".into(),
            pick(Avro::Double(
                [-0.1, f64::INFINITY, 1e300][variant as usize % 3],
            )),
        ),
        (
            "blob".into(),
            if variant % 2 == 1 {
                Avro::Union(
                    2,
                    Box::new(Avro::String("__debezium_unavailable_value".into())),
                )
            } else {
                pick(Avro::Bytes(vec![0, 255, variant as u8]))
            },
        ),
        ("born".into(), pick(Avro::Date(-735_160 + variant as i32))),
        (
            "seen".into(),
            pick(Avro::LocalTimestampMicros(i64::MAX - i64::from(variant))),
        ),
        (
            "at".into(),
            pick(Avro::TimestampMillis(
                1_767_315_845_500 + i64::from(variant),
            )),
        ),
        ("nanos".into(), pick(Avro::TimestampNanos(-1_500_000_999))),
        (
            "uid".into(),
            pick(Avro::Uuid(
                "7a0eed16-9430-4d68-901f-c0d4c1c3bf00".parse().unwrap(),
            )),
        ),
        (
            "mood".into(),
            pick(Avro::Enum(
                variant % 2,
                ["sad", "happy"][variant as usize % 2].into(),
            )),
        ),
        (
            "tags".into(),
            Avro::Array(
                (0..variant)
                    .map(|tag| Avro::String(format!("t\"{tag}\\é")))
                    .collect(),
            ),
        ),
        (
            "scores".into(),
            Avro::Map(
                (0..variant)
                    .map(|key| (format!("k{key}"), some(Avro::Long(-(1 << (key * 9))))))
                    .collect(),
            ),
        ),
        ("hash".into(), Avro::Fixed(4, vec![1, 2, 3, variant as u8])),
        ("note".into(), pick(Avro::String("héllo\n\u{1}".into()))),
    ])
}

#[test]
fn the_reader_agrees_with_apache_avro_on_every_type() {
    let schema = Schema::parse_str(ZOO).unwrap();
    for variant in 0..7u32 {
        let (before, after) = match variant % 3 {
            0 => (
                Avro::Union(0, Box::new(Avro::Null)),
                Avro::Union(1, Box::new(zoo_row(7, variant))),
            ),
            1 => (
                Avro::Union(1, Box::new(zoo_row(i64::MIN, variant))),
                Avro::Union(1, Box::new(zoo_row(i64::MAX, variant + 1))),
            ),
            _ => (
                Avro::Union(1, Box::new(zoo_row(-1, variant))),
                Avro::Union(0, Box::new(Avro::Null)),
            ),
        };
        let value = Avro::Record(vec![
            ("before".into(), before),
            ("after".into(), after),
            ("op".into(), Avro::String("u".into())),
        ]);
        let datum = apache_avro::to_avro_datum(&schema, value).unwrap();
        let expected =
            oracle(&apache_avro::from_avro_datum(&schema, &mut datum.as_slice(), None).unwrap());
        assert_eq!(read(&schema, &datum), expected, "variant {variant}");
    }
}

#[test]
fn decimals_read_as_exact_text_and_broken_datums_are_errors() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"D","fields":[
            {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":30,"scale":2}},
            {"name":"whole","type":{"type":"fixed","name":"F","size":3,"logicalType":"decimal","precision":6,"scale":0}},
            {"name":"tiny","type":{"type":"bytes","logicalType":"decimal","precision":5,"scale":4}}]}"#,
    )
    .unwrap();
    // 12345 and -5 as two's complement, big-endian.
    let mut datum = vec![];
    datum.extend([4, 0x30, 0x39]); // length 2 (zig-zag 4), 0x3039 = 12345
    datum.extend([0xff, 0xff, 0xfb]); // -5, fixed 3
    datum.extend([2, 0xfb]); // length 1, -5
    assert_eq!(
        read(&schema, &datum),
        json!({"price": "123.45", "whole": "-5", "tiny": "-0.0005"})
    );
    let reader = Reader::new(&schema).unwrap();
    assert!(reader.read(&mut &datum[..4]).is_err(), "a datum cut short");
    let recursive = Schema::parse_str(
        r#"{"type":"record","name":"Node","fields":[
            {"name":"label","type":"string"},
            {"name":"next","type":["null","Node"]}]}"#,
    )
    .unwrap();
    let value = Avro::Record(vec![
        ("label".into(), Avro::String("a".into())),
        (
            "next".into(),
            Avro::Union(
                1,
                Box::new(Avro::Record(vec![
                    ("label".into(), Avro::String("b".into())),
                    ("next".into(), Avro::Union(0, Box::new(Avro::Null))),
                ])),
            ),
        ),
    ]);
    let datum = apache_avro::to_avro_datum(&recursive, value).unwrap();
    assert_eq!(
        read(&recursive, &datum),
        json!({"label": "a", "next": {"label": "b", "next": null}})
    );
}

/// A zig-zag varint, as Avro writes ints and longs.
fn zigzag(number: i64) -> Vec<u8> {
    let mut value = ((number << 1) ^ (number >> 63)) as u64;
    let mut bytes = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(byte);
            return bytes;
        }
        bytes.push(byte | 0x80);
    }
}

/// Runs `work` on a thread with a 1 MiB stack (half of a Tokio worker's) and gives its
/// result, or `None` when it has not finished within ten seconds.
fn on_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let _ = sender.send(work());
        })
        .unwrap();
    receiver.recv_timeout(Duration::from_secs(10)).ok()
}

/// An envelope whose images have a column no pipeline declares: an array of nulls.
const NULLS_ENVELOPE: &str = r#"{"type":"record","name":"Envelope","fields":[
    {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
        {"name":"id","type":"long"},
        {"name":"junk","type":{"type":"array","items":"null"}}]}]},
    {"name":"after","type":["null","Value"]},
    {"name":"op","type":"string"}]}"#;

#[test]
fn a_huge_block_count_of_zero_width_items_in_an_undeclared_column_is_an_error_at_once() {
    let reader = Reader::new(&Schema::parse_str(NULLS_ENVELOPE).unwrap()).unwrap();
    // 2^62 nulls cost nothing to write: the whole datum is 17 bytes.
    let mut datum = vec![2];
    datum.extend(zigzag(7));
    datum.extend(zigzag(1 << 62));
    datum.extend([0, 0, 2, b'c']);
    let outcome = on_small_stack(move || {
        reader
            .read_envelope(&declared_id(), &mut datum.as_slice())
            .map(|_| ())
            .map_err(|error| error.to_string())
    });
    let error = outcome
        .expect("reading a 17-byte datum has not finished within ten seconds")
        .unwrap_err();
    assert!(error.contains("zero-width"), "{error}");
}

/// A pipeline that declares one column, `id`.
fn declared_id() -> DeclaredColumns<impl Fn(&str) -> Option<usize>> {
    DeclaredColumns {
        count: 1,
        position_of: |name: &str| (name == "id").then_some(0),
    }
}

/// The error of reading `datum`, which must not be read.
fn refused(reader: &Reader, datum: &[u8]) -> String {
    match reader.read(&mut &datum[..]) {
        Ok(value) => panic!(
            "a datum of {} bytes was read, into {} bytes of JSON",
            datum.len(),
            value.to_string().len()
        ),
        Err(error) => error.to_string(),
    }
}

#[test]
fn a_datum_with_millions_of_zero_width_items_is_refused_before_it_is_built() {
    let schema = Schema::parse_str(r#"{"type":"array","items":"null"}"#).unwrap();
    let reader = Reader::new(&schema).unwrap();
    let mut datum = zigzag(1 << 22);
    datum.push(0);
    let error = refused(&reader, &datum);
    assert!(error.contains("zero-width"), "{error}");
    // Items of a record without fields, or a fixed of size 0, are zero-width too; many
    // small blocks are counted together.
    let schema = Schema::parse_str(
        r#"{"type":"array","items":{"type":"array","items":{"type":"record","name":"E","fields":[
            {"name":"nothing","type":{"type":"fixed","name":"F","size":0}}]}}}"#,
    )
    .unwrap();
    let reader = Reader::new(&schema).unwrap();
    let mut datum = zigzag(1 << 20);
    for _ in 0..1 << 20 {
        datum.extend(zigzag(1000));
        datum.push(0);
    }
    datum.push(0);
    let error = refused(&reader, &datum);
    assert!(error.contains("zero-width"), "{error}");
    // A few are read as they are.
    let mut datum = zigzag(2);
    datum.push(0);
    datum.extend(zigzag(2));
    datum.extend([0, 0]);
    assert_eq!(
        read(&schema, &datum),
        json!([[], [{"nothing": ""}, {"nothing": ""}]])
    );
    // Items of one byte or more cannot outnumber the bytes left.
    let schema = Schema::parse_str(r#"{"type":"map","values":"long"}"#).unwrap();
    let error = Reader::new(&schema)
        .unwrap()
        .read(&mut zigzag(1 << 40).as_slice())
        .unwrap_err()
        .to_string();
    assert!(error.contains("bytes left"), "{error}");
}

/// A linked list: every element costs one byte (the union's branch).
const LIST: &str = r#"{"type":"record","name":"Element","fields":[
    {"name":"next","type":["null","Element"]}]}"#;

#[test]
fn a_datum_nested_too_deep_is_an_error_not_a_stack_overflow() {
    let schema = Schema::parse_str(LIST).unwrap();
    let reader = Reader::new(&schema).unwrap();
    let mut deep = vec![2u8; 1_000_000];
    deep.push(0);
    let error = on_small_stack(move || reader.read(&mut deep.as_slice()))
        .expect("reading a deep datum has not finished within ten seconds")
        .unwrap_err()
        .to_string();
    assert!(error.contains("deeper than"), "{error}");
    // The same when the deep column is skipped: the list is a column no one declares.
    let envelope = Schema::parse_str(&format!(
        r#"{{"type":"record","name":"Envelope","fields":[
            {{"name":"before","type":["null",{{"type":"record","name":"Value","fields":[
                {{"name":"id","type":"long"}},{{"name":"list","type":{LIST}}}]}}]}},
            {{"name":"after","type":["null","Value"]}},
            {{"name":"op","type":"string"}}]}}"#
    ))
    .unwrap();
    let reader = Reader::new(&envelope).unwrap();
    let mut datum = vec![2];
    datum.extend(zigzag(7));
    datum.extend(vec![2u8; 1_000_000]);
    datum.extend([0, 0, 2, b'c']);
    let error = on_small_stack(move || {
        reader
            .read_envelope(&declared_id(), &mut datum.as_slice())
            .map(|_| ())
    })
    .expect("reading a deep event has not finished within ten seconds")
    .unwrap_err();
    assert!(error.to_string().contains("deeper than"), "{error}");
    // A short list reads.
    let reader = Reader::new(&schema).unwrap();
    assert_eq!(
        reader.read(&mut [2u8, 2, 0].as_slice()).unwrap(),
        json!({"next": {"next": {"next": null}}})
    );
}

#[test]
fn a_schema_whose_records_contain_themselves_without_an_end_is_refused() {
    for (schema, record) in [
        (
            r#"{"type":"record","name":"A","fields":[{"name":"a","type":"A"}]}"#,
            "A",
        ),
        (
            r#"{"type":"record","name":"A","namespace":"n","fields":[
                {"name":"b","type":{"type":"record","name":"B","fields":[
                    {"name":"x","type":"long"},{"name":"a","type":"A"}]}}]}"#,
            "n.A",
        ),
        (
            r#"{"type":"record","name":"A","fields":[{"name":"a","type":["A"]}]}"#,
            "A",
        ),
    ] {
        let schema = Schema::parse_str(schema).unwrap();
        let error = Reader::new(&schema)
            .err()
            .unwrap_or_else(|| panic!("{schema:?} was compiled"))
            .to_string();
        assert!(
            error.contains(record) && error.contains("itself"),
            "{error}"
        );
    }
    // Recursion that a null branch, an array or a map can end is fine.
    for schema in [
        LIST,
        r#"{"type":"record","name":"Tree","fields":[
            {"name":"kids","type":{"type":"array","items":"Tree"}},
            {"name":"named","type":{"type":"map","values":"Tree"}}]}"#,
    ] {
        Reader::new(&Schema::parse_str(schema).unwrap()).unwrap();
    }
}
