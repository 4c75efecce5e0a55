//! A pipeline's checkpoint: the Kafka offsets it has fully written to Cassandra and the
//! operator state as of those offsets, in one file replaced atomically (write, fsync,
//! rename, fsync the directory). After a crash the pipeline restores both and replays what
//! follows; since sink writes are absolute, replaying converges to the same tables.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::operators::normalize::SourceState;
use crate::operators::QueryState;

mod write;
pub use write::CheckpointWriter;

/// 2: per-query state holds aggregates and joins. 3: `newest_commit_ms`. 7: the changelog
/// positions, and the head (what `walflow lag` reads) before the state (a format 6
/// checkpoint is read as one without positions).
const FORMAT_VERSION: u32 = 7;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    // The head: the fields of [`CheckpointHead`], first and in its order.
    pub format_version: u32,
    /// Fingerprint of the pipeline file the state belongs to.
    pub fingerprint: u64,
    pub written_at_ms: i64,
    /// Postgres commit time (Unix ms) of the newest change whose results are in Cassandra as
    /// of this checkpoint; 0 when no event said (`walflow lag`'s end-to-end measure).
    pub newest_commit_ms: i64,
    /// Per source with a WATERMARK: its partitions' event-time clocks and watermark.
    pub watermarks: BTreeMap<String, crate::operators::watermark::SourceWatermark>,
    // The state.
    /// Next offset to read, per topic and partition.
    pub offsets: BTreeMap<(String, i32), i64>,
    pub sources: BTreeMap<String, SourceState>,
    /// One per query, in file order.
    pub queries: Vec<QueryState>,
    /// Per changelog source, per partition: the newest event it counted.
    pub changelog_positions: BTreeMap<String, BTreeMap<i32, SeenPosition>>,
}

/// What `walflow lag` and the dashboard read of a checkpoint, decoded without the state
/// (kept rows, aggregates) behind it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CheckpointHead {
    pub format_version: u32,
    pub fingerprint: u64,
    pub written_at_ms: i64,
    pub newest_commit_ms: i64,
    pub watermarks: BTreeMap<String, crate::operators::watermark::SourceWatermark>,
}

/// The newest event a changelog source counted on one partition, and the newest commit
/// time it met there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenPosition {
    pub position: crate::decode::ChangePosition,
    pub newest_commit_ms: i64,
}

impl Checkpoint {
    /// Whether a changelog source counts its event at `position` on `partition`: yes when
    /// it is past the newest position counted there. An event at or before it is one cdc
    /// sent again after a restart (its commit time is one already met) and is dropped;
    /// unless its transaction committed after every one met so far: then the positions
    /// went back because the events come from another server, or from a database
    /// restored to an earlier point, and the event counts (with a warning), never lost.
    pub fn admit_changelog_event(
        &mut self,
        source: &str,
        partition: i32,
        position: crate::decode::ChangePosition,
        commit_time_ms: Option<i64>,
    ) -> bool {
        let commit_ms = commit_time_ms.unwrap_or(0);
        let first = SeenPosition {
            position,
            newest_commit_ms: commit_ms,
        };
        // Looked up by &str: no allocation per event once the source is known.
        let Some(partitions) = self.changelog_positions.get_mut(source) else {
            self.changelog_positions
                .insert(source.to_owned(), BTreeMap::from([(partition, first)]));
            return true;
        };
        let Some(seen) = partitions.get_mut(&partition) else {
            partitions.insert(partition, first);
            return true;
        };
        if position > seen.position {
            seen.position = position;
            seen.newest_commit_ms = seen.newest_commit_ms.max(commit_ms);
            return true;
        }
        if commit_ms > seen.newest_commit_ms {
            tracing::warn!(
                source,
                partition,
                ?position,
                newest = ?seen.position,
                "an event's position is behind the newest one counted, but it committed later \
                 than any counted: another server, or a database restored to an earlier \
                 point? it counts, and positions start over from it"
            );
            seen.position = position;
            seen.newest_commit_ms = commit_ms;
            return true;
        }
        false
    }
}

/// Format 6: format 7 without the changelog positions.
#[derive(Serialize, Deserialize)]
struct CheckpointV6 {
    format_version: u32,
    fingerprint: u64,
    offsets: BTreeMap<(String, i32), i64>,
    sources: BTreeMap<String, SourceState>,
    queries: Vec<QueryState>,
    written_at_ms: i64,
    newest_commit_ms: i64,
    watermarks: BTreeMap<String, crate::operators::watermark::SourceWatermark>,
}

impl From<CheckpointV6> for Checkpoint {
    fn from(old: CheckpointV6) -> Checkpoint {
        Checkpoint {
            format_version: old.format_version,
            fingerprint: old.fingerprint,
            offsets: old.offsets,
            sources: old.sources,
            queries: old.queries,
            written_at_ms: old.written_at_ms,
            newest_commit_ms: old.newest_commit_ms,
            watermarks: old.watermarks,
            changelog_positions: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {action} checkpoint {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {} is damaged or from another walflow version ({message}); remove it and run with --rebuild", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "pipeline {pipeline} is already run by another walflow process on {} (it holds {}); \
         two processes on one pipeline would overwrite each other's checkpoint and sink \
         rows: stop the other one, or give this one its own --checkpoint-dir",
        directory.display(),
        lock.display()
    )]
    Locked {
        pipeline: String,
        directory: PathBuf,
        lock: PathBuf,
    },
}

/// A pipeline's hold on its checkpoint: at most one process runs a pipeline of one
/// checkpoint directory at a time. Released when dropped, or when the process dies.
#[derive(Debug)]
pub struct CheckpointLock {
    _file: std::fs::File,
}

/// Takes the lock of `pipeline` in `directory` (`<pipeline>.lock`, created when missing),
/// or says which process-wide lock is held by another process.
pub fn lock(directory: &Path, pipeline: &str) -> Result<CheckpointLock, CheckpointError> {
    let path = directory.join(format!("{pipeline}.lock"));
    let io = |action: &'static str, source| CheckpointError::Io {
        action,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(directory).map_err(|source| io("create the directory of", source))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| io("open the lock of", source))?;
    match file.try_lock() {
        Ok(()) => Ok(CheckpointLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(CheckpointError::Locked {
            pipeline: pipeline.to_owned(),
            directory: directory.to_owned(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(io("lock", source)),
    }
}

pub fn path_for(directory: &Path, pipeline: &str) -> PathBuf {
    directory.join(format!("{pipeline}.checkpoint"))
}

/// A stable fingerprint of a pipeline's text (FNV-1a), to notice that the file changed
/// since the state was taken. Comments, blank lines and the spaces around lines do not
/// count; strings and quoted names count as written, `--` inside them included.
pub fn fingerprint(text: &str) -> u64 {
    without_comments(text)
        .bytes()
        .fold(0xcbf29ce484222325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
        })
}

/// The lines of `text` without `--` comments, trimmed, blank ones left out; a line's part
/// inside a string or quoted name (`'...'`, `"..."`, a doubled quote inside) is kept
/// untouched, even where it spans lines. Lines are kept as lines so that a file without
/// `--` inside quotes keeps the fingerprint it had when comments were cut at any `--`.
fn without_comments(text: &str) -> String {
    let mut lines = Vec::new();
    // The quote of the string or name the scan is inside.
    let mut open_quote: Option<char> = None;
    for line in text.lines() {
        let starts_quoted = open_quote.is_some();
        let mut end = line.len();
        for (index, character) in line.char_indices() {
            match open_quote {
                // A doubled quote closes and reopens: it stays inside.
                Some(quote) if character == quote => open_quote = None,
                Some(_) => {}
                None if character == '\'' || character == '"' => open_quote = Some(character),
                None if line[index..].starts_with("--") => {
                    end = index;
                    break;
                }
                None => {}
            }
        }
        let mut kept = &line[..end];
        if !starts_quoted {
            kept = kept.trim_start();
        }
        if open_quote.is_none() {
            kept = kept.trim_end();
        }
        if !kept.is_empty() || starts_quoted {
            lines.push(kept);
        }
    }
    lines.join("\n")
}

/// The bytes of the checkpoint at `path` and its format version, which leads the file and
/// is read alone first, so a checkpoint of another layout is named as such rather than
/// misread; `None` when there is no checkpoint.
fn read_versioned(path: &Path) -> Result<Option<(Vec<u8>, u32)>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        }
    };
    let (format_version, _) = postcard::take_from_bytes::<u32>(&bytes)
        .map_err(|error| corrupt(path, error.to_string()))?;
    Ok(Some((bytes, format_version)))
}

fn corrupt(path: &Path, message: String) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_owned(),
        message,
    }
}

pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some((bytes, format_version)) = read_versioned(path)? else {
        return Ok(None);
    };
    decode(path, &bytes, format_version).map(Some)
}

fn decode(path: &Path, bytes: &[u8], format_version: u32) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |error: postcard::Error| corrupt(path, error.to_string());
    match format_version {
        FORMAT_VERSION => postcard::from_bytes(bytes).map_err(corrupt),
        6 => Ok(postcard::from_bytes::<CheckpointV6>(bytes)
            .map_err(corrupt)?
            .into()),
        _ => Err(self::corrupt(
            path,
            format!("format {format_version}, this walflow reads formats 6 and {FORMAT_VERSION}"),
        )),
    }
}

/// The head of the checkpoint at `path` (`None` when there is none), decoding none of the
/// state behind it; a format 6 checkpoint, whose head comes last, is read whole.
pub fn load_head(path: &Path) -> Result<Option<CheckpointHead>, CheckpointError> {
    let Some((bytes, format_version)) = read_versioned(path)? else {
        return Ok(None);
    };
    if format_version != FORMAT_VERSION {
        let checkpoint = decode(path, &bytes, format_version)?;
        return Ok(Some(CheckpointHead {
            format_version: checkpoint.format_version,
            fingerprint: checkpoint.fingerprint,
            written_at_ms: checkpoint.written_at_ms,
            newest_commit_ms: checkpoint.newest_commit_ms,
            watermarks: checkpoint.watermarks,
        }));
    }
    let (head, _state) = postcard::take_from_bytes::<CheckpointHead>(&bytes)
        .map_err(|error| corrupt(path, error.to_string()))?;
    Ok(Some(head))
}

/// Replaces the checkpoint atomically; returns its size in bytes.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<usize, CheckpointError> {
    let io = |action: &'static str| {
        move |source| CheckpointError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut checkpoint = checkpoint.clone();
    checkpoint.format_version = FORMAT_VERSION;
    let bytes = postcard::to_stdvec(&checkpoint).map_err(|error| CheckpointError::Corrupt {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory).map_err(io("create the directory of"))?;
    let temporary = path.with_extension("checkpoint.tmp");
    {
        let mut file = std::fs::File::create(&temporary).map_err(io("write"))?;
        file.write_all(&bytes).map_err(io("write"))?;
        file.sync_all().map_err(io("sync"))?;
    }
    std::fs::rename(&temporary, path).map_err(io("replace"))?;
    sync_directory(directory).map_err(io("sync the directory of"))?;
    Ok(bytes.len())
}

/// Makes a rename in `directory` durable. A file system that cannot sync directories at all
/// (it answers EINVAL, as some network and FUSE file systems do) is let be, as Postgres does;
/// any other failure is an error, since the new checkpoint may not survive a crash.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    match std::fs::File::open(directory).and_then(|directory| directory.sync_all()) {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

pub fn remove(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CheckpointError::Io {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
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
        let directory =
            std::env::temp_dir().join(format!("walflow-ckpt-v6-{}", std::process::id()));
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
        let directory =
            std::env::temp_dir().join(format!("walflow-ckpt-head-{}", std::process::id()));
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
        let directory =
            std::env::temp_dir().join(format!("walflow-ckpt-lock-{}", std::process::id()));
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
}
