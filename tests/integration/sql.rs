//! `walflow sql check|explain|test`: no services needed. The golden tests of every shipped
//! pipeline run here; a changed expected file, a broken pipeline and a bad input line are
//! each reported where they are.

use std::path::Path;

use crate::harness::{repo_root, run, stderr, stdout, walflow};

fn sql(args: &[&str]) -> std::process::Output {
    run(walflow("postgres://unused@127.0.0.1/unused")
        .current_dir(repo_root())
        .arg("sql")
        .args(args))
}

#[test]
fn every_shipped_pipeline_has_a_golden_test_and_they_pass() {
    let pipelines = Path::new(repo_root()).join("sql/pipelines");
    let mut shipped = 0;
    for entry in std::fs::read_dir(&pipelines).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "sql") {
            shipped += 1;
            let name = path.file_stem().unwrap().to_str().unwrap();
            for suffix in ["input.jsonl", "expected"] {
                let case = pipelines.join(format!("tests/{name}.{suffix}"));
                assert!(
                    case.exists(),
                    "{} has no {}",
                    path.display(),
                    case.display()
                );
            }
        }
    }
    let output = sql(&["test"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(&format!("{shipped} golden test(s) passed")),
        "{}",
        stdout(&output)
    );
}

#[test]
fn a_changed_result_fails_with_a_diff_and_bless_rewrites_it() {
    let directory = tempfile::tempdir().unwrap();
    let tests = directory.path();
    let shipped = Path::new(repo_root()).join("sql/pipelines/tests");
    for file in ["users_by_country.input.jsonl", "users_by_country.expected"] {
        std::fs::copy(shipped.join(file), tests.join(file)).unwrap();
    }
    let expected = tests.join("users_by_country.expected");
    let good = std::fs::read_to_string(&expected).unwrap();
    std::fs::write(
        &expected,
        good.replace("\"Germany\" | 2 | 36.5", "\"Germany\" | 3 | 36.5"),
    )
    .unwrap();
    let tests_dir = tests.to_str().unwrap();

    let failed = sql(&["test", "--tests-dir", tests_dir]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(stdout(&failed).contains("FAIL users_by_country"));
    let diff = stderr(&failed);
    assert!(diff.contains("-\"Germany\" | 3 | 36.5"), "{diff}");
    assert!(diff.contains("+\"Germany\" | 2 | 36.5"), "{diff}");

    let blessed = sql(&["test", "--tests-dir", tests_dir, "--bless"]);
    assert!(blessed.status.success(), "{}", stderr(&blessed));
    assert_eq!(std::fs::read_to_string(&expected).unwrap(), good);
    let again = sql(&["test", "--tests-dir", tests_dir, "users_by_country"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn a_bad_input_line_is_named_by_file_and_line() {
    let directory = tempfile::tempdir().unwrap();
    let input = directory.path().join("users_by_country.input.jsonl");
    std::fs::write(
        &input,
        "# a comment\n\n{\"topic\": \"walflow.public.orders\", \"value\": null}\n",
    )
    .unwrap();
    let output = sql(&["test", "--tests-dir", directory.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "{}:3: topic walflow.public.orders is not a source of",
            input.display()
        )),
        "{message}"
    );
    assert!(message.contains("walflow.public.users"), "{message}");
}

#[test]
fn check_points_at_the_line_of_an_error_and_exits_2() {
    let directory = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(repo_root()).join("sql/pipelines/users_by_country.sql"))
            .unwrap();
    let misspelled = directory.path().join("misspelled.sql");
    std::fs::write(
        &misspelled,
        shipped.replace("GROUP BY country;", "GROUP BY contry;"),
    )
    .unwrap();
    let unknown_table = directory.path().join("unknown_table.sql");
    std::fs::write(
        &unknown_table,
        shipped.replace("FROM users\n", "FROM userz\n"),
    )
    .unwrap();
    let line_of =
        |text: &str, needle: &str| text.lines().position(|line| line.contains(needle)).unwrap() + 1;

    let output = sql(&[
        "check",
        misspelled.to_str().unwrap(),
        unknown_table.to_str().unwrap(),
        &format!("{}/sql/pipelines/users.sql", repo_root()),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "{}:{}:10: ",
            misspelled.display(),
            line_of(&shipped, "GROUP BY country;")
        )),
        "{message}"
    );
    assert!(
        message.contains("Did you mean 'users.country'"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "{}:{}:",
            unknown_table.display(),
            line_of(&shipped, "FROM users")
        )),
        "{message}"
    );
    assert!(
        message.contains("the sources this file declares") && message.contains(": users"),
        "{message}"
    );
    assert!(message.contains("2 of 3 file(s) have errors"), "{message}");
    assert!(
        stdout(&output).contains("ok ") && stdout(&output).contains("users.sql"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn explain_shows_the_dataflow_its_state_and_the_cassandra_table() {
    let output = sql(&["explain", "sql/pipelines/users_by_region.sql"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "pipeline users_by_region",
        "consumer group walflow-process-users_by_region",
        "users <- topic walflow.public.users",
        "countries <- topic walflow.public.countries",
        "its current rows are kept per key",
        "dataflow: project(aggregate(",
        "join(",
        "join on [",
        "both sides' current rows, per join key",
        "aggregate per group of [",
        "count(distinct ...): a count per distinct value",
        "avg(...): a sum and a count",
        "CREATE TABLE IF NOT EXISTS",
        "users_by_region",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let stateless = stdout(&sql(&["explain", "sql/pipelines/users.sql"]));
    assert!(stateless.contains("state: none (stateless)"), "{stateless}");
}
