//! `walflow`: change-data-capture from Postgres through Kafka to Cassandra.
//!
//! This binary is only the command line: it parses flags, loads configuration and hands the
//! work to the library crates under `crates/`.

mod commands;
mod config;
mod exit;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;
use crate::config::GlobalArgs;
use crate::exit::Failure;

/// Decoding and evaluating change events allocates many small, short-lived values on
/// several threads; mimalloc serves them with less contention than the system allocator
/// (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "walflow",
    version,
    about = "Change-data-capture from Postgres through Kafka to Cassandra",
    long_about = "Change-data-capture from Postgres through Kafka to Cassandra.\n\n\
        Start with `walflow doctor`: it checks that Postgres, Kafka and Cassandra are reachable \
        and fit for walflow, and names the fix for anything that is not.\n\n\
        Connections come from walflow.toml (--config), overridden by WALFLOW_* environment \
        variables, overridden by flags. `scripts/services env` prints the variables for the \
        local services.",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, \
        3 a health check or threshold failed."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // Output piped into `head` or `less` ends quietly when they stop reading, as with other
    // command-line tools, instead of a panic on a closed stdout.
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap prints help and version on stdout with exit 0, usage errors with exit 2.
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    if let Err(error) = logging::init(
        cli.global.log_format,
        cli.global.log_level.as_deref(),
        cli.command.default_log_filter(),
    ) {
        eprintln!("error: {}", exit::error_text(&error));
        return Failure::Usage(error).exit_code();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli.command, &cli.global)) {
        Ok(code) => code,
        Err(failure) => {
            failure.report();
            failure.exit_code()
        }
    }
}
