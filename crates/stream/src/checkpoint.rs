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
    #[error("checkpoint {} is damaged or from another walflow version ({source}); remove it and run with --rebuild", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: postcard::Error,
    },
    #[error("checkpoint {} is damaged or from another walflow version (format {format_version}, this walflow reads formats 6 and {FORMAT_VERSION}); remove it and run with --rebuild", path.display())]
    UnknownFormat { path: PathBuf, format_version: u32 },
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
    let (format_version, _) =
        postcard::take_from_bytes::<u32>(&bytes).map_err(|source| corrupt(path, source))?;
    Ok(Some((bytes, format_version)))
}

fn corrupt(path: &Path, source: postcard::Error) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_owned(),
        source,
    }
}

pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some((bytes, format_version)) = read_versioned(path)? else {
        return Ok(None);
    };
    decode(path, &bytes, format_version).map(Some)
}

fn decode(path: &Path, bytes: &[u8], format_version: u32) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |source: postcard::Error| corrupt(path, source);
    match format_version {
        FORMAT_VERSION => postcard::from_bytes(bytes).map_err(corrupt),
        6 => Ok(postcard::from_bytes::<CheckpointV6>(bytes)
            .map_err(corrupt)?
            .into()),
        _ => Err(CheckpointError::UnknownFormat {
            path: path.to_owned(),
            format_version,
        }),
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
        .map_err(|source| corrupt(path, source))?;
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
    let bytes = postcard::to_stdvec(&checkpoint).map_err(|source| corrupt(path, source))?;
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
mod tests;
