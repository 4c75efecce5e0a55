//! The Avro schemas and datums cdc writes, read back with apache-avro and walflow-wire.

use bytes::Bytes;
use bytestring::ByteString;
use walflow_pgoutput::{Lsn, PgTimestamp, ReplicaIdentity};

use super::*;
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use walflow_wire::avro::read::{DeclaredColumns, Reader};
use walflow_wire::avro::schema::namespace;

/// Reads a datum with apache-avro, the independent reader, and checks that it used every
/// byte.
fn read_all(schema: &Schema, mut datum: &[u8]) -> Avro {
    let value = apache_avro::from_avro_datum(schema, &mut datum, None).unwrap();
    assert!(datum.is_empty(), "{} bytes left unread", datum.len());
    value
}

fn relation() -> Relation {
    let column = |name: &str, type_oid: u32, is_key: bool| RelationColumn {
        is_key,
        name: ByteString::from(name),
        type_oid,
        type_modifier: -1,
    };
    Relation {
        xid: None,
        oid: 1,
        namespace: ByteString::from("public"),
        name: ByteString::from("zoo"),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            column("id", oid::INT8, true),
            column("flag", oid::BOOL, false),
            column("small", oid::INT2, false),
            column("ratio", oid::FLOAT8, false),
            column("price", oid::NUMERIC, false),
            column("blob", oid::BYTEA, false),
            column("born", oid::DATE, false),
            column("seen", oid::TIMESTAMP, false),
            column("at", oid::TIMESTAMPTZ, false),
            column("uid", oid::UUID, false),
            column("first name", 25, false),
        ],
    }
}

fn text(value: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(value.as_bytes()))
}

#[test]
fn a_change_round_trips_through_its_schema_with_logical_types() {
    let relation = relation();
    let schemas = schemas(&relation, "walflow.public.zoo");
    let parsed = schemas.parse().expect("the schemas are valid Avro");
    let tuple: TupleData = walflow_pgoutput::encode::tuple(&[
        text("7"),
        text("t"),
        text("-3"),
        text("NaN"),
        text("12345678901234567890.5"),
        text("\\x48656c6c6f"),
        text("infinity"),
        text("2026-01-02 03:04:05.5"),
        text("2026-01-02 03:04:05.5+02"),
        text("7a0eed16-9430-4d68-901f-c0d4c1c3bf00"),
        Column::UnchangedToast,
    ]);
    let source = Source {
        name: "walflow",
        database: "db",
        commit_time: PgTimestamp::from_unix_micros(1_767_225_600_000_000),
        xid: 42,
        lsn: Lsn(99),
        snapshot: false,
        position: Some(crate::envelope::EventPosition {
            commit_lsn: Lsn(120),
            total_order: 1,
            data_collection_order: 1,
        }),
    };
    let ids = SchemaIds {
        key: Some(3),
        value: 4,
    };
    let (key, value) = encode_change(
        ids,
        &relation,
        Operation::Update,
        None,
        Some(&tuple),
        &source,
        5,
    )
    .unwrap();
    let key = key.unwrap();
    assert_eq!(key[..5], [0, 0, 0, 0, 3]);
    assert_eq!(value[..5], [0, 0, 0, 0, 4]);
    let key = read_all(parsed.key.as_ref().unwrap(), &key[5..]);
    assert_eq!(key, Avro::Record(vec![("id".into(), Avro::Long(7))]));
    let value = read_all(&parsed.value, &value[5..]);
    let Avro::Record(fields) = value else {
        panic!("{value:?}")
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(field("op"), Avro::String("u".into()));
    assert_eq!(field("before"), Avro::Union(0, Box::new(Avro::Null)));
    let Avro::Union(1, after) = field("after") else {
        panic!("{fields:?}")
    };
    let Avro::Record(after) = *after else {
        panic!()
    };
    let column = |name: &str| match &after.iter().find(|(n, _)| n == name).unwrap().1 {
        Avro::Union(_, inner) => (**inner).clone(),
        other => other.clone(),
    };
    assert_eq!(column("flag"), Avro::Boolean(true));
    assert_eq!(column("small"), Avro::Int(-3));
    assert!(matches!(column("ratio"), Avro::Double(nan) if nan.is_nan()));
    assert_eq!(
        column("price"),
        Avro::String("12345678901234567890.5".into())
    );
    assert_eq!(column("blob"), Avro::Bytes(b"Hello".to_vec()));
    assert_eq!(column("born"), Avro::Date(i32::MAX));
    assert_eq!(
        column("seen"),
        Avro::LocalTimestampMicros(1_767_323_045_500_000)
    );
    assert_eq!(column("at"), Avro::TimestampMicros(1_767_315_845_500_000));
    assert_eq!(
        column("uid"),
        Avro::Uuid("7a0eed16-9430-4d68-901f-c0d4c1c3bf00".parse().unwrap())
    );
    assert_eq!(column("first_name"), Avro::String(UNAVAILABLE_VALUE.into()));
    let Avro::Record(source_block) = field("source") else {
        panic!("{fields:?}")
    };
    assert!(source_block.contains(&(
        "sequence".into(),
        Avro::Union(1, Box::new(Avro::String(r#"["120","99"]"#.into())))
    )));
    assert_eq!(
        field("transaction"),
        Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("id".into(), Avro::String("42:120".into())),
                ("total_order".into(), Avro::Long(1)),
                ("data_collection_order".into(), Avro::Long(1)),
            ]))
        )
    );
}

#[test]
fn columns_whose_avro_names_collide_are_named() {
    let mut relation = relation();
    assert_eq!(colliding_field_names(&relation), None);
    let mut columns = relation.columns.clone();
    let mut clash = columns[10].clone();
    clash.name = ByteString::from("first-name");
    columns.push(clash);
    relation.columns = columns;
    assert_eq!(
        colliding_field_names(&relation),
        Some((
            "first name".to_owned(),
            "first-name".to_owned(),
            "first_name".to_owned()
        ))
    );
}

#[test]
fn names_are_adjusted_to_avro_and_the_wire_format_has_its_header() {
    assert_eq!(field_name("first name"), "first_name");
    assert_eq!(field_name("2fa"), "_2fa");
    assert_eq!(
        namespace("walflow_test_1.public.zoo"),
        "walflow_test_1.public.zoo"
    );
    assert_eq!(confluent::header(258, 0), vec![0, 0, 0, 1, 2]);
}

fn source() -> Source<'static> {
    Source {
        name: "walflow",
        database: "db",
        commit_time: PgTimestamp::from_unix_micros(1_767_225_600_000_000),
        xid: 42,
        lsn: Lsn(99),
        snapshot: true,
        position: None,
    }
}

#[test]
fn a_value_the_column_type_cannot_hold_is_an_error_naming_the_column() {
    let relation = relation();
    let mut values = vec![text("7"); 1];
    values.extend((1..relation.columns.len()).map(|_| Column::Null));
    values[6] = text("someday");
    let tuple = walflow_pgoutput::encode::tuple(&values);
    let ids = SchemaIds {
        key: Some(1),
        value: 2,
    };
    let error = encode_change(
        ids,
        &relation,
        Operation::Create,
        None,
        Some(&tuple),
        &source(),
        0,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "column born: Postgres sent \"someday\", which is not a date value"
    );
    let no_key = walflow_pgoutput::encode::tuple(
        &(0..relation.columns.len())
            .map(|_| Column::Null)
            .collect::<Vec<_>>(),
    );
    assert!(matches!(
        encode_change(
            ids,
            &relation,
            Operation::Delete,
            Some(&no_key),
            None,
            &source(),
            0
        ),
        Err(EncodeError::MissingKey { .. })
    ));
}

/// Postgres's text for an astronomical year, month and day (year 0 is 1 BC).
fn date_text(year: i32, month: u32, day: u32) -> String {
    if year > 0 {
        format!("{year:04}-{month:02}-{day:02}")
    } else {
        format!("{:04}-{month:02}-{day:02} BC", 1 - year)
    }
}

proptest::proptest! {
    /// Every value as Postgres prints it, written by walflow's encoder and read back by
    /// apache-avro with the registered schema: the same value, and every byte used.
    #[test]
    fn apache_avro_reads_back_what_the_encoder_writes(
        id in proptest::num::i64::ANY,
        flag in proptest::option::of(proptest::bool::ANY),
        small in proptest::num::i16::ANY,
        ratio in proptest::num::f64::ANY,
        price in "-?[0-9]{1,30}(\\.[0-9]{1,10})?",
        blob in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        (year, month, day) in (-4000i32..9999, 1u32..=12, 1u32..=28),
        micros in 0i64..86_400_000_000,
        offset_minutes in -15i64 * 60..=15 * 60,
        note in "\\PC{0,40}",
        toast in proptest::bool::ANY,
        operation_index in 0usize..4,
    ) {
        let relation = relation();
        let time = format!(
            "{:02}:{:02}:{:02}.{:06}",
            micros / 3_600_000_000,
            micros / 60_000_000 % 60,
            micros / 1_000_000 % 60,
            micros % 1_000_000
        );
        let date = date_text(year, month, day);
        let (date_part, era) = match date.strip_suffix(" BC") {
            Some(part) => (part.to_owned(), " BC"),
            None => (date.clone(), ""),
        };
        let offset = format!(
            "{}{:02}:{:02}",
            if offset_minutes < 0 { '-' } else { '+' },
            offset_minutes.abs() / 60,
            offset_minutes.abs() % 60
        );
        let hex: String = blob.iter().map(|byte| format!("{byte:02x}")).collect();
        let columns = vec![
            text(&id.to_string()),
            flag.map_or(Column::Null, |flag| text(if flag { "t" } else { "f" })),
            text(&small.to_string()),
            text(&if ratio.is_nan() { "NaN".to_owned() } else if ratio.is_infinite() {
                if ratio > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() }
            } else { ratio.to_string() }),
            text(&price),
            text(&format!("\\x{hex}")),
            text(&date),
            text(&format!("{date_part} {time}{era}")),
            text(&format!("{date_part} {time}{offset}{era}")),
            text("7a0eed16-9430-4d68-901f-c0d4c1c3bf00"),
            if toast { Column::UnchangedToast } else { text(&note) },
        ];
        let tuple = walflow_pgoutput::encode::tuple(&columns);
        let operation = [Operation::Read, Operation::Create, Operation::Update, Operation::Delete][operation_index];
        let (before, after) = match operation {
            Operation::Delete => (Some(&tuple), None),
            Operation::Update => (Some(&tuple), Some(&tuple)),
            _ => (None, Some(&tuple)),
        };
        let parsed = schemas(&relation, "walflow.public.zoo").parse().unwrap();
        let ids = SchemaIds { key: Some(1), value: 2 };
        let (key, value) =
            encode_change(ids, &relation, operation, before, after, &source(), 5).unwrap();
        let key = read_all(parsed.key.as_ref().unwrap(), &key.unwrap()[5..]);
        proptest::prop_assert_eq!(key, Avro::Record(vec![("id".into(), Avro::Long(id))]));
        let Avro::Record(fields) = read_all(&parsed.value, &value[5..]) else {
            panic!("not a record")
        };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        proptest::prop_assert_eq!(field("op"), Avro::String(operation.code().into()));
        let row = field(if operation == Operation::Delete { "before" } else { "after" });
        let Avro::Union(1, row) = row else { panic!("{row:?}") };
        let Avro::Record(row) = *row else { panic!() };
        let column = |name: &str| match &row.iter().find(|(n, _)| n == name).unwrap().1 {
            Avro::Union(_, inner) => (**inner).clone(),
            other => other.clone(),
        };
        let epoch = chrono::NaiveDate::default();
        let days = (chrono::NaiveDate::from_ymd_opt(year, month, day).unwrap() - epoch).num_days();
        proptest::prop_assert_eq!(column("flag"), flag.map_or(Avro::Null, Avro::Boolean));
        proptest::prop_assert_eq!(column("small"), Avro::Int(i32::from(small)));
        match column("ratio") {
            Avro::Double(read) if ratio.is_nan() => proptest::prop_assert!(read.is_nan()),
            read => proptest::prop_assert_eq!(read, Avro::Double(ratio)),
        }
        proptest::prop_assert_eq!(column("price"), Avro::String(price.clone()));
        proptest::prop_assert_eq!(column("blob"), Avro::Bytes(blob.clone()));
        proptest::prop_assert_eq!(column("born"), Avro::Date(days as i32));
        proptest::prop_assert_eq!(
            column("seen"),
            Avro::LocalTimestampMicros(days * 86_400_000_000 + micros)
        );
        proptest::prop_assert_eq!(
            column("at"),
            Avro::TimestampMicros(days * 86_400_000_000 + micros - offset_minutes * 60_000_000)
        );
        proptest::prop_assert_eq!(
            column("first_name"),
            Avro::String(if toast { UNAVAILABLE_VALUE.to_owned() } else { note.clone() })
        );

        // process's reader reads the same event back, as a pipeline declaring some of
        // the columns (and one the table lacks) sees it.
        let declared = ["first_name", "small", "id", "born", "missing"];
        let reader = Reader::new(&parsed.value).unwrap();
        let (id_in_framing, mut datum) = confluent::split(&value).unwrap();
        proptest::prop_assert_eq!(id_in_framing, 2);
        let envelope = reader
            .read_envelope(
                &DeclaredColumns {
                    count: declared.len(),
                    position_of: |name: &str| declared.iter().position(|d| *d == name),
                },
                &mut datum,
            )
            .unwrap();
        proptest::prop_assert!(datum.is_empty());
        proptest::prop_assert_eq!(envelope.op.as_str(), operation.code());
        proptest::prop_assert_eq!(envelope.commit_time_ms, Some(source().commit_time.unix_millis()));
        let image = if operation == Operation::Delete { &envelope.before } else { &envelope.after };
        let expected_note = if toast { UNAVAILABLE_VALUE.to_owned() } else { note.clone() };
        proptest::prop_assert_eq!(
            image.clone().unwrap(),
            vec![
                Some(serde_json::json!(expected_note)),
                Some(serde_json::json!(small)),
                Some(serde_json::json!(id)),
                Some(serde_json::json!(days)),
                None,
            ]
        );
    }
}
