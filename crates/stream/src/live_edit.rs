//! Live edits of a running pipeline's file. `walflow process` looks at the file about once a
//! second; when its text changes, the new text is checked. A file that does not check leaves
//! the running version going (the error is logged with file:line:col). One that checks
//! replaces the running version at the next batch, from a checkpoint taken just before,
//! when what is already in Cassandra stays right under the new text: same sources and sinks,
//! queries with state unchanged, and in a query without state only the SELECT's non-key
//! columns changed (the rows already written keep their values until their source row
//! changes; keys and filters must stay, or deletes and retractions would miss rows written
//! under the old text). Anything else needs the sinks rebuilt from the start of the topics:
//! that is said, and the running version keeps going until `walflow process --rebuild`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::checkpoint;
use crate::definition::{SinkTable, SourceTable};
use crate::pipeline::Pipeline;
use crate::plan::{CompiledQuery, Node, Step};

/// Notices when a file's text changes.
pub struct FileWatch {
    path: PathBuf,
    /// The fingerprint of the text now running.
    running: u64,
    seen: Option<(SystemTime, u64)>,
    last_look: Instant,
    every: Duration,
}

impl FileWatch {
    pub fn new(path: &Path, running_text: &str) -> FileWatch {
        FileWatch {
            path: path.to_owned(),
            running: checkpoint::fingerprint(running_text),
            seen: modified(path),
            last_look: Instant::now(),
            every: Duration::from_secs(1),
        }
    }

    /// True when the file's text has changed from the running one since the last call
    /// that said so (each edit is reported once).
    pub fn changed(&mut self) -> bool {
        if self.last_look.elapsed() < self.every {
            return false;
        }
        self.last_look = Instant::now();
        let now = modified(&self.path);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        match std::fs::read_to_string(&self.path) {
            Ok(text) => checkpoint::fingerprint(&text) != self.running,
            // Mid-save or removed: look again at the next change.
            Err(_) => false,
        }
    }

    /// The running version is now `text`.
    pub fn switched_to(&mut self, text: &str) {
        self.running = checkpoint::fingerprint(text);
    }
}

fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Why an edited pipeline cannot take over the running one's state (the running version keeps
/// going).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditRefused {
    #[error("its sources are declared differently")]
    SourcesChanged,
    #[error("its sinks are declared differently")]
    SinksChanged,
    #[error("it has {edited} queries instead of {running}")]
    QueryCount { running: usize, edited: usize },
    #[error("query {query} now writes {edited} instead of {running}")]
    SinkChanged {
        query: usize,
        running: String,
        edited: String,
    },
    #[error(
        "query {query} into {sink} keeps state (an aggregate, join or window), and its rows in \
         Cassandra were computed by the old text"
    )]
    StatefulQueryChanged { query: usize, sink: String },
    #[error("query {query} into {sink}: {why}")]
    StatelessQueryChanged {
        query: usize,
        sink: String,
        #[source]
        why: StatelessEditRefused,
    },
}

/// Why a query without state cannot take over from its old text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatelessEditRefused {
    #[error("its shape changed")]
    ShapeChanged,
    #[error(
        "its FROM or WHERE changed: rows written under the old text would no longer be deleted \
         or replaced"
    )]
    InputChanged,
    #[error("its columns changed")]
    ColumnsChanged,
    #[error(
        "the key column {column} is computed differently: rows written under the old key would \
         stay"
    )]
    KeyChanged { column: String },
}

/// `Ok` when `edited` can take over `running`'s state; else why not.
pub fn state_fits(running: &Pipeline, edited: &Pipeline) -> Result<(), EditRefused> {
    let sources = |pipeline: &Pipeline| -> Vec<String> {
        pipeline
            .definition
            .sources
            .iter()
            .map(source_shape)
            .collect()
    };
    if sources(running) != sources(edited) {
        return Err(EditRefused::SourcesChanged);
    }
    let sinks = |pipeline: &Pipeline| -> Vec<String> {
        pipeline.definition.sinks.iter().map(sink_shape).collect()
    };
    if sinks(running) != sinks(edited) {
        return Err(EditRefused::SinksChanged);
    }
    if running.queries.len() != edited.queries.len() {
        return Err(EditRefused::QueryCount {
            running: running.queries.len(),
            edited: edited.queries.len(),
        });
    }
    for (index, (old, new)) in running.queries.iter().zip(&edited.queries).enumerate() {
        if old.sink.name != new.sink.name {
            return Err(EditRefused::SinkChanged {
                query: index + 1,
                running: old.sink.name.clone(),
                edited: new.sink.name.clone(),
            });
        }
        if old.is_stateful() || new.is_stateful() {
            if format!("{:?}", old.root) != format!("{:?}", new.root) {
                return Err(EditRefused::StatefulQueryChanged {
                    query: index + 1,
                    sink: new.sink.name.clone(),
                });
            }
            continue;
        }
        stateless_edit_fits(old, new).map_err(|why| EditRefused::StatelessQueryChanged {
            query: index + 1,
            sink: new.sink.name.clone(),
            why,
        })?;
    }
    Ok(())
}

/// A source as it shapes events and state (not where it is written in the file).
fn source_shape(source: &SourceTable) -> String {
    format!(
        "{} {:?} {:?} {} {:?} {:?} {:?}",
        source.name,
        source.columns,
        source.primary_key,
        source.topic,
        source.format,
        source.mode,
        source.watermark
    )
}

fn sink_shape(sink: &SinkTable) -> String {
    format!(
        "{} {:?} {:?} {}.{} {:?} {:?} {}",
        sink.name,
        sink.columns,
        sink.primary_key,
        sink.keyspace,
        sink.table,
        sink.emit,
        sink.late_events,
        sink.allowed_lateness_us
    )
}

/// A query without state may change the expressions of its non-key output columns only.
fn stateless_edit_fits(
    old: &CompiledQuery,
    new: &CompiledQuery,
) -> Result<(), StatelessEditRefused> {
    let (
        Node::Step {
            input: old_input,
            step: Step::Project {
                exprs: old_exprs, ..
            },
        },
        Node::Step {
            input: new_input,
            step: Step::Project {
                exprs: new_exprs, ..
            },
        },
    ) = (&old.root, &new.root)
    else {
        return Err(StatelessEditRefused::ShapeChanged);
    };
    if format!("{old_input:?}") != format!("{new_input:?}") {
        return Err(StatelessEditRefused::InputChanged);
    }
    if old_exprs.len() != new_exprs.len()
        || old.sink_columns_from_output != new.sink_columns_from_output
    {
        return Err(StatelessEditRefused::ColumnsChanged);
    }
    for &key in &new.sink.primary_key {
        let output = new.sink_columns_from_output[key];
        if format!("{:?}", old_exprs[output]) != format!("{:?}", new_exprs[output]) {
            return Err(StatelessEditRefused::KeyChanged {
                column: new.sink.columns[key].name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::PipelineDefinition;

    #[test]
    fn an_edit_inside_a_string_is_noticed_and_one_in_a_comment_is_not() {
        let directory = std::env::temp_dir().join(format!("walflow-watch-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("p.sql");
        let text = "SELECT * FROM t WHERE x = 'a--b' -- first\n";
        std::fs::write(&path, text).unwrap();
        let mut watch = FileWatch::new(&path, text);
        watch.every = Duration::ZERO;
        let mut saved = |text: &str| {
            std::fs::write(&path, text).unwrap();
            // The modification time may not move within a test's few microseconds.
            watch.seen = None;
            watch.changed()
        };
        assert!(!saved("SELECT * FROM t WHERE x = 'a--b' -- second\n"));
        assert!(saved("SELECT * FROM t WHERE x = 'a--c' -- second\n"));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    async fn pipeline(select: &str) -> Pipeline {
        let definition = PipelineDefinition::parse(
            Path::new("p.sql"),
            &format!(
                "CREATE TABLE users (id TEXT PRIMARY KEY, country TEXT, age INT)
                   WITH (connector = 'kafka', topic = 't');
                 CREATE TABLE out (k TEXT PRIMARY KEY, n BIGINT)
                   WITH (connector = 'cassandra', keyspace = 'ks');
                 INSERT INTO out {select};"
            ),
        )
        .unwrap();
        let queries = crate::plan::compile(&definition).await.unwrap();
        Pipeline {
            definition,
            queries,
        }
    }

    #[tokio::test]
    async fn only_edits_that_keep_cassandra_right_fit() {
        let running =
            pipeline("SELECT country, count(*) FROM users WHERE age > 18 GROUP BY country").await;
        // Above the aggregate: its rows in Cassandra were written under the old key.
        let above =
            pipeline("SELECT upper(country), count(*) FROM users WHERE age > 18 GROUP BY country")
                .await;
        let refused = state_fits(&running, &above).unwrap_err();
        assert!(
            matches!(refused, EditRefused::StatefulQueryChanged { query: 1, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("keeps state"));
        // Below it (the filter the counts were built with): neither.
        let below =
            pipeline("SELECT country, count(*) FROM users WHERE age > 21 GROUP BY country").await;
        assert!(state_fits(&running, &below).is_err());
        // The same query, reformatted: fits.
        let same =
            pipeline("SELECT country, count(*)  FROM users  WHERE age > 18  GROUP BY country")
                .await;
        assert_eq!(state_fits(&running, &same), Ok(()));
        // A stateless query may change its non-key columns...
        let mirror = pipeline("SELECT id, age FROM users").await;
        let edited_mirror = pipeline("SELECT id, age * 2 FROM users").await;
        assert_eq!(state_fits(&mirror, &edited_mirror), Ok(()));
        // ...but not its key or its filter.
        let new_key = pipeline("SELECT upper(id), age FROM users").await;
        assert!(state_fits(&mirror, &new_key)
            .unwrap_err()
            .to_string()
            .contains("key column"));
        let new_filter = pipeline("SELECT id, age FROM users WHERE age > 1").await;
        assert!(state_fits(&mirror, &new_filter).is_err());
    }
}
