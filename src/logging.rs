//! tracing to stderr: human-readable by default, one JSON object per line with
//! `--log-format json`. Level from `--log-level`, else `RUST_LOG`, else the command's default.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `default_filter` applies when neither `--log-level` nor `RUST_LOG` is given.
pub fn init(format: LogFormat, level: Option<&str>, default_filter: &str) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).map_err(|error| {
            anyhow::anyhow!("--log-level {level:?} is not a valid filter: {error}")
        })?,
        None => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only on a terminal: a log file or a pipe gets plain `key=value` text.
        LogFormat::Human => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}
