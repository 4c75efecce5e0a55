//! Exit codes that scripts rely on: 0 ok, 1 runtime failure, 2 usage or configuration
//! error, 3 a health check or threshold failed.

use std::process::ExitCode;

pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNHEALTHY: u8 = 3;

/// Why a command stopped, which decides its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags, a bad or unreadable configuration file: exit 2.
    Usage(anyhow::Error),
    /// Anything that went wrong while doing the work: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(EXIT_USAGE),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }

    pub fn report(&self) {
        let (Failure::Usage(error) | Failure::Runtime(error)) = self;
        tracing::debug!(error = format!("{error:?}"), "command failed");
        eprintln!("error: {}", error_text(error));
    }
}

/// An error and its causes, joined by `: `, leaving out a cause whose text the error above
/// it already shows (many errors print their source in their own message too).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    let mut above = text.clone();
    for cause in error.chain().skip(1) {
        let cause_text = cause.to_string();
        if !above.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        above = cause_text;
    }
    text
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(error: crate::config::ConfigError) -> Self {
        Failure::Usage(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot prepare the upsert: {source}")]
    struct Prepare {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_shown_by_its_error_is_not_repeated() {
        let io = std::io::Error::other("relation \"users\" does not exist");
        let error = anyhow::Error::new(Prepare { source: io }).context("writing users failed");
        assert_eq!(
            error_text(&error),
            "writing users failed: cannot prepare the upsert: relation \"users\" does not exist"
        );
        let plain = anyhow::anyhow!("disk full").context("cannot save the checkpoint");
        assert_eq!(error_text(&plain), "cannot save the checkpoint: disk full");
    }
}
