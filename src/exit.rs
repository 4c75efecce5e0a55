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
        eprintln!("error: {error:#}");
    }
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
