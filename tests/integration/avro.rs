//! Avro change-event schemas against the real schema registry (Apicurio Registry's
//! Confluent-compatible API, from scripts/services): registered once and cached, a compatible
//! evolution accepted, a breaking one refused under the registry's rule with the column named.

use bytestring::ByteString;
use walflow_cdc::avro::schemas;
use walflow_cdc::registry::{column_changes, Compatibility, SchemaRegistry};
use walflow_pgoutput::{Relation, RelationColumn, ReplicaIdentity};

use crate::harness::{services, unique_name};

fn relation(columns: &[(&str, u32, bool)]) -> Relation {
    Relation {
        xid: None,
        oid: 1,
        namespace: ByteString::from("public"),
        name: ByteString::from("people"),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|(name, type_oid, is_key)| RelationColumn {
                is_key: *is_key,
                name: ByteString::from(*name),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

const INT8: u32 = 20;
const INT4: u32 = 23;
const TEXT: u32 = 25;

#[tokio::test]
async fn table_schemas_register_evolve_and_a_breaking_change_is_refused_naming_the_column() {
    let registry = SchemaRegistry::new(&services().schema_registry_url).unwrap();
    let topic = format!("{}.public.people", unique_name("walflow_avro"));
    let subject = format!("{topic}-value");

    let v1 = schemas(
        &relation(&[("id", INT8, true), ("age", INT4, false)]),
        &topic,
    );
    v1.parse().expect("valid Avro");
    assert_eq!(
        registry.check(&subject, &v1.value).await.unwrap(),
        Compatibility::NewSubject
    );
    let first = registry.register(&subject, &v1.value).await.unwrap();
    assert_eq!(registry.register(&subject, &v1.value).await.unwrap(), first);
    assert_eq!(
        registry.cached(),
        1,
        "the second registration came from the cache"
    );
    let key_id = registry
        .register(&format!("{topic}-key"), v1.key.as_ref().unwrap())
        .await
        .unwrap();
    assert!(key_id > 0);

    // A column added (every value column is optional, default null): compatible.
    let v2 = schemas(
        &relation(&[
            ("id", INT8, true),
            ("age", INT4, false),
            ("name", TEXT, false),
        ]),
        &topic,
    );
    assert_eq!(
        registry.check(&subject, &v2.value).await.unwrap(),
        Compatibility::Compatible
    );
    let second = registry.register(&subject, &v2.value).await.unwrap();
    assert_ne!(second, first);

    // A column's type changed: refused under the registry's BACKWARD rule, and walflow can
    // say which column.
    let v3 = schemas(
        &relation(&[
            ("id", INT8, true),
            ("age", TEXT, false),
            ("name", TEXT, false),
        ]),
        &topic,
    );
    match registry.check(&subject, &v3.value).await.unwrap() {
        Compatibility::Incompatible { level, .. } => assert_eq!(level, "BACKWARD"),
        other => panic!("a type change was not refused: {other:?}"),
    }
    assert_eq!(
        column_changes(&v2.value, &v3.value),
        vec!["column age changed from int to string".to_owned()]
    );
    assert!(registry.register(&subject, &v3.value).await.is_err());

    // Allowed explicitly: the subject's rule set to NONE lets it through.
    registry.set_level(&subject, "NONE").await.unwrap();
    assert!(registry.register(&subject, &v3.value).await.is_ok());
}
