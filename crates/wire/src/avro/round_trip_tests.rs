//! cdc's side and process's side of the Avro contract against each other and against
//! apache-avro: envelopes of random tables written with [`super::write`] under the schemas of
//! [`super::TableSchemas`] are read back by apache-avro (the oracle) and by [`super::Reader`],
//! whole and as a pipeline reads them.

use apache_avro::Schema;
use proptest::prelude::*;
use serde_json::{json, Value as Json};

use super::read::tests::oracle;
use super::read::{DeclaredColumns, Reader};
use super::schema::{ColumnType, SchemaColumn, TableSchemas};
use super::write::{self, SourceBlock, TransactionBlock};
use crate::envelope::{self, ChangePosition, UNAVAILABLE_VALUE};

/// One column's value in an image.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    /// An untouched TOASTed value: only text and bytes columns have one.
    Unavailable,
    Boolean(bool),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(Vec<u8>),
    Text(String),
}

const TYPES: [ColumnType; 11] = [
    ColumnType::Boolean,
    ColumnType::Int,
    ColumnType::Long,
    ColumnType::Float,
    ColumnType::Double,
    ColumnType::Bytes,
    ColumnType::Date,
    ColumnType::Timestamp,
    ColumnType::TimestampTz,
    ColumnType::Uuid,
    ColumnType::String,
];

fn cell(column_type: ColumnType) -> BoxedStrategy<Cell> {
    let value: BoxedStrategy<Cell> = match column_type {
        ColumnType::Boolean => any::<bool>().prop_map(Cell::Boolean).boxed(),
        ColumnType::Int | ColumnType::Date => {
            any::<i32>().prop_map(|n| Cell::Long(n.into())).boxed()
        }
        ColumnType::Long | ColumnType::Timestamp | ColumnType::TimestampTz => {
            any::<i64>().prop_map(Cell::Long).boxed()
        }
        ColumnType::Float => any::<f32>().prop_map(Cell::Float).boxed(),
        ColumnType::Double => any::<f64>().prop_map(Cell::Double).boxed(),
        ColumnType::Bytes => proptest::collection::vec(any::<u8>(), 0..20)
            .prop_map(Cell::Bytes)
            .boxed(),
        ColumnType::Uuid => any::<[u8; 16]>()
            .prop_map(|bytes| {
                let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
                Cell::Text(format!(
                    "{}-{}-{}-{}-{}",
                    &hex[0..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..32]
                ))
            })
            .boxed(),
        ColumnType::String => ".{0,12}".prop_map(Cell::Text).boxed(),
    };
    match column_type {
        ColumnType::Bytes | ColumnType::String => prop_oneof![
            1 => Just(Cell::Null),
            1 => Just(Cell::Unavailable),
            4 => value,
        ]
        .boxed(),
        _ => prop_oneof![1 => Just(Cell::Null), 4 => value].boxed(),
    }
}

fn image(types: Vec<ColumnType>) -> BoxedStrategy<Option<Vec<Cell>>> {
    let row = types.into_iter().map(cell).collect::<Vec<_>>();
    proptest::option::weighted(0.8, row).boxed()
}

/// A column's value as cdc writes it: a union of null, the type and, for bytes, the string
/// marker.
fn write_cell(buffer: &mut Vec<u8>, column_type: ColumnType, cell: &Cell) {
    match cell {
        Cell::Null => write::branch(buffer, 0),
        Cell::Unavailable => {
            write::branch(
                buffer,
                if column_type == ColumnType::Bytes {
                    2
                } else {
                    1
                },
            );
            write::string(buffer, UNAVAILABLE_VALUE);
        }
        present => {
            write::branch(buffer, 1);
            match present {
                Cell::Boolean(flag) => write::boolean(buffer, *flag),
                Cell::Long(number) => write::long(buffer, *number),
                Cell::Float(number) => write::float(buffer, *number),
                Cell::Double(number) => write::double(buffer, *number),
                Cell::Bytes(bytes) => write::bytes(buffer, bytes),
                Cell::Text(text) => write::string(buffer, text),
                Cell::Null | Cell::Unavailable => unreachable!(),
            }
        }
    }
}

fn write_image(buffer: &mut Vec<u8>, types: &[ColumnType], image: &Option<Vec<Cell>>) {
    match image {
        None => write::null_image(buffer),
        Some(cells) => {
            write::row_image(buffer);
            for (column_type, cell) in types.iter().zip(cells) {
                write_cell(buffer, *column_type, cell);
            }
        }
    }
}

type Table = (Vec<ColumnType>, Option<Vec<Cell>>, Option<Vec<Cell>>);

fn table() -> impl Strategy<Value = Table> {
    proptest::collection::vec(proptest::sample::select(TYPES.to_vec()), 1..6).prop_flat_map(
        |types| {
            (
                Just(types.clone()),
                image(types.clone()),
                image(types.clone()),
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelopes_cdc_writes_read_back_alike_in_apache_avro_and_the_reader(
        (types, before, after) in table(),
        op in proptest::sample::select(envelope::Operation::ALL.to_vec()),
        commit_lsn in 0u64..1 << 40,
        total_order in 1i64..1000,
        streamed: bool,
        extra_declared: bool,
    ) {
        let names: Vec<String> = (0..types.len()).map(|index| format!("c{index}")).collect();
        let schemas = TableSchemas::of(
            names.iter().zip(&types).enumerate().map(|(index, (name, column_type))| SchemaColumn {
                name,
                column_type: *column_type,
                is_key: index == 0,
            }),
            "walflow.public.things",
        );
        let schema = Schema::parse(&schemas.value).unwrap();

        let mut datum = Vec::new();
        write_image(&mut datum, &types, &before);
        write_image(&mut datum, &types, &after);
        let sequence = envelope::sequence(commit_lsn, commit_lsn + 8);
        let transaction_id = envelope::transaction_id(7, commit_lsn);
        write::envelope_tail(
            &mut datum,
            &SourceBlock {
                version: "walflow-test",
                name: "walflow",
                ts_ms: 1_767_315_845_500,
                snapshot: !streamed,
                db: "db",
                schema: "public",
                table: "things",
                tx_id: 7,
                lsn: (commit_lsn + 8) as i64,
                sequence: streamed.then_some(sequence.as_str()),
            },
            op.code(),
            1_767_315_845_999,
            streamed
                .then_some(TransactionBlock {
                    id: &transaction_id,
                    total_order,
                    data_collection_order: 1,
                })
                .as_ref(),
        );

        // apache-avro reads every byte, and the reader reads what apache-avro reads.
        let mut rest = datum.as_slice();
        let expected = oracle(&apache_avro::from_avro_datum(&schema, &mut rest, None).unwrap());
        prop_assert!(rest.is_empty(), "{} bytes apache-avro did not read", rest.len());
        let reader = Reader::new(&schema).unwrap();
        let mut rest = datum.as_slice();
        prop_assert_eq!(reader.read(&mut rest).unwrap(), expected.clone());
        prop_assert!(rest.is_empty());

        // As a pipeline reads it: its declared columns in its own order, one it declares
        // that the event lacks reading as absent.
        let mut declared_names: Vec<String> = names.iter().rev().cloned().collect();
        if extra_declared {
            declared_names.push("not_in_the_table".into());
        }
        let declared = DeclaredColumns {
            count: declared_names.len(),
            position_of: |name: &str| declared_names.iter().position(|declared| declared == name),
        };
        let mut rest = datum.as_slice();
        let read = reader.read_envelope(&declared, &mut rest).unwrap();
        prop_assert!(rest.is_empty());
        let projected = |image: &Json| -> Option<Vec<Option<Json>>> {
            let row = image.as_object()?;
            Some(declared_names.iter().map(|name| row.get(name).cloned()).collect())
        };
        prop_assert_eq!(read.op.as_str(), op.code());
        prop_assert_eq!(read.before, projected(&expected["before"]));
        prop_assert_eq!(read.after, projected(&expected["after"]));
        prop_assert_eq!(read.commit_time_ms, Some(1_767_315_845_500));
        prop_assert_eq!(
            read.position,
            streamed.then_some(ChangePosition { commit_lsn, total_order: total_order as u64 })
        );
        prop_assert_eq!(&expected["source"]["connector"], &json!(envelope::CONNECTOR));
    }
}
