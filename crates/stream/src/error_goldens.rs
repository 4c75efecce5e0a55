//! Error goldens: every `sql/pipelines/tests/error_*.sql` is a pipeline file that walflow
//! must refuse, with the place and the message written at its end (where they move no line
//! of the SQL above them):
//!
//! ```sql
//! -- What the file gets wrong.
//! CREATE TABLE ...
//! -- error: LINE:COLUMN: the message, exactly
//! -- error: its second line, if it has one
//! ```
//!
//! `WALFLOW_BLESS=1 cargo test -p walflow-stream error_goldens` writes what walflow says into
//! those lines, for review in the diff.

use std::path::{Path, PathBuf};

use crate::definition::{DefinitionError, PipelineDefinition};

const EXPECTED: &str = "-- error: ";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql/pipelines/tests")
}

/// What walflow says of a pipeline file: `LINE:COLUMN: message`, or that it accepted it.
async fn refusal(path: &Path, text: &str) -> String {
    let located =
        |error: DefinitionError| format!("{}:{}: {}", error.line, error.column, error.message);
    let definition = match PipelineDefinition::parse(path, text) {
        Ok(definition) => definition,
        Err(error) => return located(error),
    };
    match crate::plan::compile(&definition).await {
        Ok(_) => "(accepted)".to_owned(),
        Err(error) => located(error),
    }
}

#[tokio::test]
async fn every_error_golden_is_refused_at_its_place_with_its_message() {
    let bless = std::env::var_os("WALFLOW_BLESS").is_some();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("error_") && name.ends_with(".sql"))
        })
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "only {} error goldens", paths.len());
    let mut mismatches = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        let expected_lines: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix(EXPECTED))
            .collect();
        assert!(
            !expected_lines.is_empty(),
            "{}: no `{EXPECTED}` line",
            path.display()
        );
        let expected = expected_lines.join("\n");
        let actual = refusal(path, &text).await;
        if actual == expected {
            continue;
        }
        if bless {
            let mut blessed = Vec::new();
            let mut written = false;
            for line in text.lines() {
                if line.starts_with(EXPECTED) {
                    if !written {
                        blessed.extend(actual.lines().map(|line| format!("{EXPECTED}{line}")));
                        written = true;
                    }
                    continue;
                }
                blessed.push(line.to_owned());
            }
            std::fs::write(path, blessed.join("\n") + "\n").unwrap();
        }
        mismatches.push(format!(
            "{}\n  expected: {expected}\n  walflow:  {actual}",
            path.display()
        ));
    }
    assert!(
        mismatches.is_empty() || bless,
        "{} of {} error goldens differ (WALFLOW_BLESS=1 rewrites them):\n{}",
        mismatches.len(),
        paths.len(),
        mismatches.join("\n")
    );
}
