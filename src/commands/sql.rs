//! `walflow sql`: the loop from editing a pipeline file to knowing it is right, without
//! Kafka or Cassandra. `check` parses and plans, `explain` shows what will run and what it
//! keeps, `test` runs the golden tests of sql/pipelines/tests/.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use walflow_stream::golden;
use walflow_stream::runner::Pipeline;
use walflow_stream::sink::create_table_cql;

use crate::exit::Failure;

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(subcommand)]
    command: SqlCommand,
}

#[derive(Debug, Subcommand)]
enum SqlCommand {
    /// Parse and plan pipeline files; errors as file:line:col with a hint; exit 2 on error
    #[command(after_help = "Examples:\n  walflow sql check sql/pipelines/*.sql")]
    Check {
        /// Pipeline files [default: every .sql file of --pipelines-dir]
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        #[arg(
            long,
            env = "WALFLOW_PIPELINES_DIR",
            default_value = "sql/pipelines",
            value_name = "DIR"
        )]
        pipelines_dir: PathBuf,
    },
    /// Show what a pipeline runs: its sources, each query's plan, the state it keeps, how it
    /// emits, and the Cassandra table it creates
    #[command(after_help = "Examples:\n  walflow sql explain sql/pipelines/users_by_region.sql")]
    Explain {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Run golden tests: each <name>.input.jsonl of the tests directory through
    /// <pipelines-dir>/<name>.sql in memory, compared with <name>.expected
    #[command(
        long_about = "Runs golden tests. For each <name>.input.jsonl in the tests directory \
            (default sql/pipelines/tests), the pipeline <pipelines-dir>/<name>.sql runs over \
            its change events entirely in memory, through the same batch step as walflow \
            process, and its sink tables are compared with <name>.expected. Each case runs \
            twice, one event per batch and all in one batch, which must agree.\n\n\
            Input lines are {\"topic\": \"walflow.public.users\", \"value\": <Debezium envelope, \
            a raw string, or null for a tombstone>}; blank lines and lines starting with # are \
            skipped. --bless writes the actual output as the expected file: review the diff \
            before committing it.",
        after_help = "Examples:\n  walflow sql test\n  walflow sql test users_by_country\n  walflow sql test --bless users_by_country"
    )]
    Test {
        /// Only these cases (pipeline names) [default: every case]
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Where the cases are
        #[arg(long, default_value = "sql/pipelines/tests", value_name = "DIR")]
        tests_dir: PathBuf,
        #[arg(
            long,
            env = "WALFLOW_PIPELINES_DIR",
            default_value = "sql/pipelines",
            value_name = "DIR"
        )]
        pipelines_dir: PathBuf,
        /// Write the actual output as the expected file instead of comparing
        #[arg(long)]
        bless: bool,
    },
}

pub async fn run(args: SqlArgs) -> Result<ExitCode, Failure> {
    match args.command {
        SqlCommand::Check {
            files,
            pipelines_dir,
        } => check(files, &pipelines_dir).await,
        SqlCommand::Explain { file } => explain(&file).await,
        SqlCommand::Test {
            names,
            tests_dir,
            pipelines_dir,
            bless,
        } => test(&names, &tests_dir, &pipelines_dir, bless).await,
    }
}

async fn check(files: Vec<PathBuf>, pipelines_dir: &Path) -> Result<ExitCode, Failure> {
    let files = if files.is_empty() {
        super::process::default_pipelines(pipelines_dir).map_err(Failure::Usage)?
    } else {
        files
    };
    let mut failed = 0;
    for file in &files {
        match Pipeline::load(file).await {
            Ok(pipeline) => println!(
                "ok {}: {} source(s), {} quer{}",
                file.display(),
                pipeline.definition.sources.len(),
                pipeline.queries.len(),
                if pipeline.queries.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            ),
            Err(error) => {
                // file:line:col: message, as compilers print, for editors to jump to.
                eprintln!("{error}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} file(s) have errors", files.len());
        return Ok(ExitCode::from(crate::exit::EXIT_USAGE));
    }
    Ok(ExitCode::SUCCESS)
}

async fn explain(file: &Path) -> Result<ExitCode, Failure> {
    let pipeline = Pipeline::load(file)
        .await
        .map_err(|error| Failure::Usage(error.into()))?;
    let definition = &pipeline.definition;
    println!("pipeline {} ({})", definition.name, file.display());
    println!(
        "consumer group {}; checkpoint <checkpoint-dir>/{}.checkpoint",
        definition.consumer_group(),
        definition.name
    );
    println!();
    println!("sources (Kafka change streams):");
    let keyed: Vec<&str> = pipeline
        .queries
        .iter()
        .filter(|query| query.is_stateful())
        .flat_map(|query| query.sources.iter().map(String::as_str))
        .collect();
    for source in &definition.sources {
        if source.mode == walflow_stream::definition::SourceMode::Changelog {
            let event_time = match &source.watermark {
                Some(watermark) => format!(
                    "; event time {}, watermark {} behind the newest seen (slowest partition; \
                     idle after {})",
                    source.columns[watermark.column].name,
                    walflow_stream::time::human_micros(watermark.delay_us.max(1)),
                    walflow_stream::time::human_micros(watermark.idle_timeout_us)
                ),
                None => String::new(),
            };
            println!(
                "  {} <- topic {} (debezium_json), changelog: each change event is one appended \
                 row (after image, or before image of a delete; _op, _commit_time){event_time}",
                source.name, source.topic
            );
            continue;
        }
        let key: Vec<&str> = source
            .primary_key
            .iter()
            .map(|&index| source.columns[index].name.as_str())
            .collect();
        println!(
            "  {} <- topic {} (debezium_json), key ({}){}",
            source.name,
            source.topic,
            key.join(", "),
            if keyed.contains(&source.name.as_str()) {
                "; its current rows are kept per key (a stateful query reads it, and a change \
                 must retract exactly the row it replaces)"
            } else {
                "; stateless: each change passes through"
            }
        );
    }
    for (index, query) in pipeline.queries.iter().enumerate() {
        println!();
        println!(
            "query {} -> {} (Cassandra {}.{})",
            index + 1,
            query.sink.name,
            query.sink.keyspace,
            query.sink.table
        );
        println!("  dataflow: {}", query.root.describe());
        let state = query.root.state_description();
        if state.is_empty() {
            println!("  state: none (stateless)");
        } else {
            println!("  state (checkpointed with the Kafka offsets):");
            for line in state {
                println!("    {line}");
            }
        }
        let windowed = query
            .root
            .state_description()
            .iter()
            .any(|line| line.starts_with("windows of") || line.starts_with("sessions per key"));
        let sink = &query.sink;
        if !windowed {
            println!(
                "  emits: updating; each result row is upserted when it changes and deleted when \
                 it disappears (no event-time windows, so no watermark)"
            );
        } else {
            use walflow_stream::definition::{EmitMode, LateEvents};
            println!(
                "  emits: {}",
                match sink.emit {
                    EmitMode::OnClose => "on close: a window's row is written once, when the watermark passes its end",
                    EmitMode::Updating => "updating: a window's row is upserted as the window grows",
                }
            );
            println!(
                "  late events: {}",
                match sink.late_events {
                    LateEvents::Topic => format!(
                        "counted and sent to walflow.late.{} (--late-events-prefix)",
                        definition.name
                    ),
                    LateEvents::Update => format!(
                        "applied to their window for {} after its end, then sent to walflow.late.{}",
                        walflow_stream::time::human_micros(sink.allowed_lateness_us),
                        definition.name
                    ),
                }
            );
        }
        println!("  logical plan (DataFusion):");
        for line in query.logical_plan.lines() {
            println!("    {line}");
        }
        println!("  Cassandra table (created when missing):");
        println!("    {}", create_table_cql(&query.sink));
    }
    Ok(ExitCode::SUCCESS)
}

async fn test(
    names: &[String],
    tests_dir: &Path,
    pipelines_dir: &Path,
    bless: bool,
) -> Result<ExitCode, Failure> {
    let mut cases = golden::cases(tests_dir, pipelines_dir).map_err(|error| {
        Failure::Usage(anyhow::anyhow!(
            "cannot list the golden tests in {}: {error}",
            tests_dir.display()
        ))
    })?;
    if !names.is_empty() {
        for name in names {
            if !cases.iter().any(|case| &case.name == name) {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "no golden test {name}: expected {}",
                    tests_dir.join(format!("{name}.input.jsonl")).display()
                )));
            }
        }
        cases.retain(|case| names.contains(&case.name));
    }
    if cases.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "no golden tests (<name>.input.jsonl) in {}",
            tests_dir.display()
        )));
    }
    let mut failed = Vec::new();
    for case in &cases {
        match run_case(case, bless).await {
            Ok(verdict) => println!("{verdict} {}", case.name),
            Err(message) => {
                println!("FAIL {}", case.name);
                eprintln!("---- {} ----\n{message}", case.name);
                failed.push(case.name.clone());
            }
        }
    }
    if failed.is_empty() {
        println!("{} golden test(s) passed", cases.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} of {} golden test(s) failed: {}",
            failed.len(),
            cases.len(),
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// "ok" or "blessed", or what went wrong (a diff when the output differs).
async fn run_case(case: &golden::GoldenCase, bless: bool) -> Result<&'static str, String> {
    let pipeline = Pipeline::load(&case.pipeline)
        .await
        .map_err(|error| error.to_string())?;
    let input = std::fs::read_to_string(&case.input)
        .map_err(|error| format!("cannot read {}: {error}", case.input.display()))?;
    let events =
        golden::read_input(&pipeline, &case.input, &input).map_err(|error| error.to_string())?;
    let actual = golden::evaluate(&pipeline, &events).map_err(|error| error.to_string())?;
    if bless {
        std::fs::write(&case.expected, &actual)
            .map_err(|error| format!("cannot write {}: {error}", case.expected.display()))?;
        return Ok("blessed");
    }
    let expected = std::fs::read_to_string(&case.expected).map_err(|error| {
        format!(
            "cannot read {}: {error} (run walflow sql test --bless {} to write it, then review it)",
            case.expected.display(),
            case.name
        )
    })?;
    if expected == actual {
        return Ok("ok");
    }
    let diff = similar::TextDiff::from_lines(&expected, &actual);
    Err(format!(
        "{}",
        diff.unified_diff()
            .context_radius(3)
            .header(&case.expected.display().to_string(), "actual")
    ))
}
