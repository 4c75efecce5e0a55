//! Configuration as a user meets it: bad files are named, secrets stay secret.

use crate::harness::{run, stderr, stdout, walflow, TestDatabase};

#[test]
fn an_unknown_key_is_a_usage_error_naming_the_key_and_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("walflow.toml");
    std::fs::write(
        &path,
        "[postgres]\nurl = \"postgres://x@127.0.0.1/x\"\n\n[kafka]\nbroker = \"typo\"\n",
    )
    .unwrap();
    let output = run(walflow("postgres://unused@127.0.0.1/x")
        .arg("--config")
        .arg(&path)
        .arg("migrate"));
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("broker"), "{message}");
    assert!(message.contains("line 5"), "{message}");
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let output = run(walflow("postgres://unused@127.0.0.1/x").args([
        "--config",
        "/nonexistent/walflow.toml",
        "doctor",
    ]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/walflow.toml"));
}

#[tokio::test]
async fn the_file_is_used_and_the_environment_overrides_it() {
    let database = TestDatabase::create().await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("walflow.toml");
    // The file points at our database; a broken environment value must win over it.
    std::fs::write(&path, format!("[postgres]\nurl = \"{}\"\n", database.url)).unwrap();
    let mut from_file = walflow("unused");
    from_file
        .env_remove("WALFLOW_POSTGRES_URL")
        .arg("--config")
        .arg(&path)
        .arg("migrate");
    assert_eq!(run(&mut from_file).status.code(), Some(0));

    let mut overridden = walflow("postgres://walflow@127.0.0.1:1/nowhere");
    overridden.arg("--config").arg(&path).arg("migrate");
    assert_eq!(run(&mut overridden).status.code(), Some(1));

    let mut flag_wins = walflow("postgres://walflow@127.0.0.1:1/nowhere");
    flag_wins
        .arg("--config")
        .arg(&path)
        .args(["--postgres-url", &database.url, "migrate"]);
    let output = run(&mut flag_wins);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("0 applied"));
}

#[tokio::test]
async fn passwords_never_reach_errors_or_debug_logs() {
    let database = TestDatabase::create().await;
    let mut url = url::Url::parse(&database.url).unwrap();
    url.set_password(Some("hunter2-not-the-password")).unwrap();
    for format in ["human", "json"] {
        let output = run(walflow(url.as_str()).args([
            "--log-level",
            "debug",
            "--log-format",
            format,
            "migrate",
        ]));
        assert_eq!(output.status.code(), Some(1), "a wrong password fails");
        let all = format!("{}{}", stdout(&output), stderr(&output));
        assert!(
            all.contains("password authentication failed") || all.contains("cannot connect"),
            "{all}"
        );
        assert!(!all.contains("hunter2"), "the password leaked: {all}");
        assert!(all.contains("***"), "the redacted URL is shown: {all}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let output = run(walflow("postgres://walflow@127.0.0.1:1/nowhere").args([
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "migrate",
    ]));
    let logs = stderr(&output);
    let json_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(!json_lines.is_empty(), "{logs}");
    assert!(json_lines
        .iter()
        .all(|line| line.get("level").is_some() && line.get("timestamp").is_some()));
}
