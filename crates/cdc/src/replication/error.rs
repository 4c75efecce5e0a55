use std::fmt;

/// What went wrong on the replication connection, with what the server said when it said
/// something.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot reach Postgres at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("the replication connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("Postgres: {0}")]
    Server(ServerError),
    #[error("{0}")]
    Authentication(String),
    #[error("unexpected message from Postgres: {0}")]
    Protocol(String),
    /// A position in a replication command's answer that is not an LSN.
    #[error("unexpected message from Postgres: {0}")]
    InvalidLsn(#[from] walflow_pgoutput::ParseLsnError),
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] walflow_pgoutput::DecodeError),
    /// The URL (or key/value string) as tokio-postgres reads it.
    #[error("invalid connection URL: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// TLS settings that cannot work, a certificate that does not verify, a server that
    /// refuses TLS the URL requires.
    #[error(transparent)]
    Tls(#[from] walflow_tls::postgres::ConnectError),
    #[error(transparent)]
    TlsSettings(#[from] walflow_tls::postgres::PostgresTlsError),
    /// A URL tokio-postgres reads that the replication connection cannot use.
    #[error("invalid connection URL: {0}")]
    Config(String),
}

/// An ErrorResponse, with the fields people act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl ReplicationError {
    /// The SQLSTATE, when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(error) => Some(&error.code),
            _ => None,
        }
    }
}
