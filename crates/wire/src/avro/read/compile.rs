//! A writer schema compiled into the reader's arena of nodes: named types and references
//! resolved once, the fewest bytes of every node's values computed, and schemas that no
//! finite datum can have refused.

use std::collections::HashMap;

use apache_avro::schema::{Name, Namespace};
use apache_avro::Schema;

use super::{Node, NodeId, SchemaError};

pub(super) struct Compiler {
    pub(super) nodes: Vec<Node>,
    pub(super) widths: Vec<u64>,
    named: HashMap<Name, NodeId>,
}

impl Compiler {
    pub(super) fn new() -> Compiler {
        Compiler {
            nodes: Vec::new(),
            widths: Vec::new(),
            named: HashMap::new(),
        }
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(Node::Pending);
        self.widths.push(0);
        let id = self.nodes.len() - 1;
        self.set(id, node);
        id
    }

    /// Puts the compiled `node` at `id`, with the fewest bytes its values take. (A reference
    /// to a record still being compiled counts 0 bytes, which can only err low; only records
    /// that [`Compiler::refuse_endless_records`] refuses are made of such references alone.)
    fn set(&mut self, id: NodeId, node: Node) {
        self.widths[id] = match &node {
            Node::Null | Node::Pending => 0,
            Node::Float => 4,
            Node::Double => 8,
            Node::Duration => 12,
            Node::Fixed(size)
            | Node::Decimal {
                fixed: Some(size), ..
            } => *size as u64,
            Node::Record(fields) => fields.iter().fold(0, |sum: u64, (_, field)| {
                sum.saturating_add(self.widths[*field])
            }),
            // A varint, a length, a block count or a branch index: at least one byte.
            _ => 1,
        };
        self.nodes[id] = node;
    }

    fn name(&mut self, name: &Name, namespace: &Namespace, id: NodeId) -> Name {
        let full = name.fully_qualified_name(namespace);
        self.named.insert(full.clone(), id);
        full
    }

    /// Refuses a schema with a type no finite datum has: a record that always contains
    /// itself again (`A{a: A}`, `A{b: B{a: A}}`, `A{a: ["A"]}`). Reading one would recurse
    /// without consuming input. A type ends when it is not a record or union, when it is an
    /// array or map (which can be empty), when one branch of a union ends, or when every
    /// field of a record ends.
    pub(super) fn refuse_endless_records(&self) -> Result<(), SchemaError> {
        let mut ends = vec![false; self.nodes.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for (id, node) in self.nodes.iter().enumerate() {
                if ends[id] {
                    continue;
                }
                ends[id] = match node {
                    Node::Union(branches) => branches.iter().any(|branch| ends[*branch]),
                    Node::Record(fields) => fields.iter().all(|(_, field)| ends[*field]),
                    Node::Pending => false,
                    _ => true,
                };
                changed |= ends[id];
            }
        }
        if ends.iter().all(|&ends| ends) {
            return Ok(());
        }
        let mut endless: Vec<String> = self
            .named
            .iter()
            .filter(|(_, id)| !ends[**id])
            .map(|(name, _)| name.fullname(None))
            .collect();
        endless.sort();
        if endless.is_empty() {
            return Err(SchemaError::EmptyUnion);
        }
        Err(SchemaError::EndlessRecords(endless))
    }

    pub(super) fn compile(
        &mut self,
        schema: &Schema,
        namespace: &Namespace,
    ) -> Result<NodeId, SchemaError> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Uuid => Node::Uuid,
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Node::TimestampMillis,
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Node::TimestampMicros,
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::TimestampNanos,
            Schema::Duration => Node::Duration,
            Schema::BigDecimal => return Err(SchemaError::BigDecimal),
            Schema::Decimal(decimal) => {
                let fixed = match decimal.inner.as_ref() {
                    Schema::Fixed(fixed) => {
                        let id = self.push(Node::Fixed(fixed.size));
                        self.name(&fixed.name, namespace, id);
                        Some(fixed.size)
                    }
                    _ => None,
                };
                Node::Decimal {
                    scale: decimal.scale,
                    fixed,
                }
            }
            Schema::Fixed(fixed) => {
                let id = self.push(Node::Fixed(fixed.size));
                self.name(&fixed.name, namespace, id);
                return Ok(id);
            }
            Schema::Enum(schema) => {
                let id = self.push(Node::Enum(schema.symbols.clone()));
                self.name(&schema.name, namespace, id);
                return Ok(id);
            }
            Schema::Array(array) => {
                let id = self.push(Node::Pending);
                let items = self.compile(&array.items, namespace)?;
                self.set(id, Node::Array(items));
                return Ok(id);
            }
            Schema::Map(map) => {
                let id = self.push(Node::Pending);
                let values = self.compile(&map.types, namespace)?;
                self.set(id, Node::Map(values));
                return Ok(id);
            }
            Schema::Union(union) => {
                let id = self.push(Node::Pending);
                let branches = union
                    .variants()
                    .iter()
                    .map(|branch| self.compile(branch, namespace))
                    .collect::<Result<_, _>>()?;
                self.set(id, Node::Union(branches));
                return Ok(id);
            }
            Schema::Record(record) => {
                let id = self.push(Node::Pending);
                let full = self.name(&record.name, namespace, id);
                let mut fields = Vec::with_capacity(record.fields.len());
                for field in &record.fields {
                    let node = self.compile(&field.schema, &full.namespace)?;
                    fields.push((field.name.clone(), node));
                }
                self.set(id, Node::Record(fields));
                return Ok(id);
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                return self
                    .named
                    .get(&full)
                    .copied()
                    .ok_or_else(|| SchemaError::Undefined(format!("{full:?}")));
            }
        };
        Ok(self.push(node))
    }
}
