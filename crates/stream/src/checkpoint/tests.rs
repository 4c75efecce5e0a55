use super::*;

#[test]
fn a_saved_checkpoint_loads_back_and_a_damaged_one_says_what_to_do() {
    let directory = std::env::temp_dir().join(format!("walflow-ckpt-{}", std::process::id()));
    let path = path_for(&directory, "users");
    assert_eq!(load(&path).unwrap(), None);
    let mut checkpoint = Checkpoint {
        fingerprint: fingerprint("SELECT 1"),
        ..Checkpoint::default()
    };
    checkpoint.offsets.insert(("t".into(), 0), 42);
    checkpoint
        .sources
        .insert("users".into(), SourceState::new(true));
    checkpoint.queries.push(QueryState::default());
    checkpoint.queries.push(QueryState::default());
    save(&path, &checkpoint).unwrap();
    let loaded = load(&path).unwrap().unwrap();
    assert_eq!(loaded.offsets, checkpoint.offsets);
    assert_eq!(loaded.queries.len(), 2);
    std::fs::write(&path, b"\xff\xff").unwrap();
    let error = load(&path).unwrap_err().to_string();
    assert!(error.contains("--rebuild"), "{error}");
    std::fs::remove_dir_all(&directory).unwrap();
}

fn at(commit_lsn: u64, total_order: u64) -> crate::decode::ChangePosition {
    crate::decode::ChangePosition {
        commit_lsn,
        total_order,
    }
}

#[test]
fn a_changelog_event_sent_again_is_dropped_and_one_past_the_newest_counts() {
    let mut checkpoint = Checkpoint::default();
    // Two transactions on partition 0, the second sent again after a restart.
    for (position, ms) in [(at(100, 1), 10), (at(100, 3), 10), (at(200, 1), 20)] {
        assert!(checkpoint.admit_changelog_event("users", 0, position, Some(ms)));
    }
    assert!(!checkpoint.admit_changelog_event("users", 0, at(200, 1), Some(20)));
    assert!(!checkpoint.admit_changelog_event("users", 0, at(100, 3), Some(10)));
    assert!(checkpoint.admit_changelog_event("users", 0, at(200, 2), Some(20)));
    assert!(checkpoint.admit_changelog_event("users", 0, at(300, 1), Some(30)));
    // Partitions and sources keep their own positions.
    assert!(checkpoint.admit_changelog_event("users", 1, at(100, 2), Some(10)));
    assert!(checkpoint.admit_changelog_event("orders", 0, at(100, 1), Some(10)));
}

#[test]
fn a_position_behind_with_a_later_commit_time_counts_as_a_new_server() {
    let mut checkpoint = Checkpoint::default();
    assert!(checkpoint.admit_changelog_event("users", 0, at(900, 1), Some(50)));
    // A database restored to an earlier LSN (or a new server) commits later in time.
    assert!(checkpoint.admit_changelog_event("users", 0, at(400, 1), Some(60)));
    // From there on its positions are the ones compared.
    assert!(!checkpoint.admit_changelog_event("users", 0, at(400, 1), Some(60)));
    assert!(checkpoint.admit_changelog_event("users", 0, at(400, 2), Some(60)));
    // An event without a commit time at or behind the newest position is a resend.
    assert!(!checkpoint.admit_changelog_event("users", 0, at(300, 1), None));
}

#[test]
fn a_format_6_checkpoint_loads_without_changelog_positions() {
    let directory = std::env::temp_dir().join(format!("walflow-ckpt-v6-{}", std::process::id()));
    let path = path_for(&directory, "users");
    let mut offsets = BTreeMap::new();
    offsets.insert(("t".to_owned(), 0), 7);
    let old = CheckpointV6 {
        format_version: 6,
        fingerprint: fingerprint("SELECT 1"),
        offsets: offsets.clone(),
        sources: BTreeMap::new(),
        queries: vec![QueryState::default()],
        written_at_ms: 1,
        newest_commit_ms: 2,
        watermarks: BTreeMap::new(),
    };
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(&path, postcard::to_stdvec(&old).unwrap()).unwrap();
    let loaded = load(&path).unwrap().unwrap();
    assert_eq!(loaded.offsets, offsets);
    assert_eq!(loaded.newest_commit_ms, 2);
    assert!(loaded.changelog_positions.is_empty());
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn the_head_is_read_without_the_state_in_formats_7_and_6() {
    let directory = std::env::temp_dir().join(format!("walflow-ckpt-head-{}", std::process::id()));
    let path = path_for(&directory, "users");
    assert_eq!(load_head(&path).unwrap(), None);
    let mut checkpoint = Checkpoint {
        fingerprint: 11,
        written_at_ms: 22,
        newest_commit_ms: 33,
        ..Checkpoint::default()
    };
    checkpoint.offsets.insert(("t".into(), 0), 42);
    checkpoint.queries.push(QueryState::default());
    save(&path, &checkpoint).unwrap();
    let head = load_head(&path).unwrap().unwrap();
    assert_eq!(
        (
            head.format_version,
            head.fingerprint,
            head.written_at_ms,
            head.newest_commit_ms
        ),
        (FORMAT_VERSION, 11, 22, 33)
    );
    // The head alone, the state cut off: still read.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    assert_eq!(load_head(&path).unwrap().unwrap().written_at_ms, 22);
    assert!(load(&path).is_err());

    let old = CheckpointV6 {
        format_version: 6,
        fingerprint: 11,
        offsets: BTreeMap::new(),
        sources: BTreeMap::new(),
        queries: Vec::new(),
        written_at_ms: 44,
        newest_commit_ms: 55,
        watermarks: BTreeMap::new(),
    };
    std::fs::write(&path, postcard::to_stdvec(&old).unwrap()).unwrap();
    let head = load_head(&path).unwrap().unwrap();
    assert_eq!((head.written_at_ms, head.newest_commit_ms), (44, 55));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_pipeline_is_locked_by_one_holder_at_a_time() {
    let directory = std::env::temp_dir().join(format!("walflow-ckpt-lock-{}", std::process::id()));
    let held = lock(&directory, "users").unwrap();
    let error = lock(&directory, "users").unwrap_err().to_string();
    assert!(
        error.contains("pipeline users is already run") && error.contains("users.lock"),
        "{error}"
    );
    // Another pipeline of the directory is free.
    let _other = lock(&directory, "orders").unwrap();
    drop(held);
    let _again = lock(&directory, "users").unwrap();
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn comments_and_blank_lines_do_not_change_the_fingerprint() {
    assert_eq!(
        fingerprint("SELECT a\n  FROM t;"),
        fingerprint("-- users\nSELECT a   \n\nFROM t; -- done")
    );
    assert_ne!(
        fingerprint("SELECT a FROM t"),
        fingerprint("SELECT b FROM t")
    );
}

#[test]
fn dashes_inside_strings_and_quoted_names_are_part_of_the_fingerprint() {
    assert_ne!(
        fingerprint("SELECT * FROM t WHERE x = 'a--b'"),
        fingerprint("SELECT * FROM t WHERE x = 'a--c'")
    );
    assert_ne!(
        fingerprint(r#"SELECT "a--b" FROM t"#),
        fingerprint(r#"SELECT "a--c" FROM t"#)
    );
    // A doubled quote stays inside the string; the comment after it is still one.
    assert_ne!(
        fingerprint("SELECT 'it''s -- a' FROM t"),
        fingerprint("SELECT 'it''s -- b' FROM t")
    );
    assert_eq!(
        fingerprint("SELECT 'it''s' FROM t -- one"),
        fingerprint("SELECT 'it''s' FROM t -- two")
    );
    // A string that spans lines keeps its lines as they are.
    assert_ne!(
        fingerprint("SELECT 'a\n-- b' FROM t"),
        fingerprint("SELECT 'a\n-- c' FROM t")
    );
    assert_ne!(
        fingerprint("SELECT 'a\n\n' FROM t"),
        fingerprint("SELECT 'a\n' FROM t")
    );
    // Quotes in a comment open nothing.
    assert_eq!(
        fingerprint("-- the country's name\nSELECT a FROM t -- it's\n"),
        fingerprint("SELECT a FROM t")
    );
}

/// The fingerprint as walflow computed it before strings were told apart from comments:
/// a pipeline without `--` in a string or quoted name must keep its fingerprint, or an
/// upgrade would make `--rebuild-if-changed` rebuild every sink.
fn line_wise_fingerprint(text: &str) -> u64 {
    let normalized: String = text
        .lines()
        .map(|line| line.split("--").next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    normalized
        .bytes()
        .fold(0xcbf29ce484222325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
        })
}

#[test]
fn the_shipped_pipelines_keep_their_fingerprints() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql/pipelines");
    let mut files = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "sql") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                fingerprint(&text),
                line_wise_fingerprint(&text),
                "{}",
                path.display()
            );
            files += 1;
        }
    }
    assert!(files >= 6, "{files} pipelines in {}", directory.display());
}
