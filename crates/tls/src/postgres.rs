//! Postgres connections with TLS as libpq makes them. The connection string (URL or
//! `key=value`) may carry libpq's `sslmode` (disable, allow, prefer, require, verify-ca,
//! verify-full), `sslrootcert` (a CA file, or `system` for the system's CAs), `sslcert` and
//! `sslkey` (a client certificate) and `sslpassword` (the key's passphrase); the `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` variables stand in for what the string leaves
//! out, and `~/.postgresql/root.crt` for a missing `sslrootcert`, as with libpq.
//!
//! The default is libpq's `prefer` (TLS when the server offers it, unverified), except on a
//! loopback address or a Unix socket, where walflow stays in plain text unless told
//! otherwise. `require` verifies the server's CA only when a root certificate is known (as
//! libpq does); `verify-ca` always, `verify-full` also checks the host name against the
//! certificate. A certificate that does not verify fails the connection with what did not
//! match: the certificate, the reason, the trusted CA and the host.
//!
//! [`PostgresTarget::connect`] serves ordinary connections (tokio-postgres over
//! postgres-openssl, with SCRAM channel binding where the server offers it);
//! [`PostgresTarget::start_tls`] the replication connection, which walflow speaks itself.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::{X509StoreContextRef, X509VerifyResult};
use postgres_openssl::MakeTlsConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;
use walflow_redact::conninfo::split_tls_parameters;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: [&'static str; 6] = [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ];

    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CAs a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the CAs the system trusts (OpenSSL's default paths).
    System,
}

impl std::fmt::Display for RootCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootCert::File(path) => write!(f, "{}", path.display()),
            RootCert::System => f.write_str("the system's CAs"),
        }
    }
}

/// A connection's TLS settings, as libpq would take them from the same string.
#[derive(Clone)]
pub struct PostgresTls {
    pub mode: SslMode,
    /// Whether the string or `PGSSLMODE` chose the mode (else libpq's default, `prefer`).
    pub mode_given: bool,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    key_password: Option<String>,
}

impl std::fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTls")
            .field("mode", &self.mode)
            .field("mode_given", &self.mode_given)
            .field("root_cert", &self.root_cert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("key_password", &self.key_password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PostgresTlsError {
    #[error("the Postgres connection string {connection} does not parse: {source}")]
    InvalidConnection {
        connection: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("sslmode={given} in {connection} is not one of {}", SslMode::NAMES.join(", "))]
    UnknownMode { given: String, connection: String },
    #[error(
        "sslmode={mode} in {connection} verifies the server's certificate, and no CA is given: \
         add sslrootcert=/path/to/ca.crt (the CA that signed the server's certificate), or \
         sslrootcert=system for the CAs this system trusts"
    )]
    NoRootCert { mode: SslMode, connection: String },
    #[error("sslcert={cert} in {connection} needs its private key: add sslkey=/path/to/key")]
    NoKey { cert: String, connection: String },
    #[error("cannot use {parameter}={} for Postgres: {source}", file.display())]
    File {
        parameter: &'static str,
        file: PathBuf,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("cannot read sslkey={}: {source}", file.display())]
    ReadKey {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS for Postgres: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Settings(#[from] PostgresTlsError),
    #[error("Postgres at {address}: the server's certificate does not verify: {detail}")]
    Verify { address: String, detail: String },
    #[error(
        "Postgres at {address} does not speak TLS, and sslmode={mode} requires it: enable ssl \
         on the server, or connect with sslmode=prefer (or disable) if plain text is acceptable"
    )]
    TlsRefused { address: String, mode: SslMode },
    #[error("Postgres at {address}: the TLS handshake failed: {source}")]
    Handshake {
        address: String,
        #[source]
        source: openssl::ssl::Error,
    },
    #[error("Postgres at {address}: {source}")]
    Io {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Postgres at {address}: {source}{hint}")]
    Postgres {
        address: String,
        #[source]
        source: tokio_postgres::Error,
        /// What to do, when walflow can tell (empty otherwise).
        hint: &'static str,
    },
}

/// pg_hba.conf refused a connection without TLS (`hostnossl ... reject`, or only `hostssl`
/// lines): the server takes TLS connections only.
const TLS_ONLY_HINT: &str = "; the server takes TLS connections only: add sslmode=verify-full \
                             and sslrootcert=/path/to/ca.crt to the Postgres URL (or \
                             sslmode=require to encrypt without verifying)";

impl ConnectError {
    /// The driver's error, when the failure came from tokio-postgres (for its SQLSTATE).
    pub fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Postgres { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The connection a [`PostgresTarget::connect`] returns with its client: poll it (spawn it).
pub type PostgresConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    postgres_openssl::TlsStream<tokio_postgres::Socket>,
>;

/// Where and how to connect: tokio-postgres's configuration (everything but TLS parameters)
/// and the TLS settings.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    config: tokio_postgres::Config,
    tls: PostgresTls,
    /// The first host and port, for messages and the replication connection.
    host: String,
    port: u16,
    loopback: bool,
}

impl PostgresTarget {
    /// Reads a connection string (URL or `key=value`), libpq's TLS parameters included.
    pub fn parse(connection: &str) -> Result<PostgresTarget, PostgresTlsError> {
        PostgresTarget::parse_with_env(connection, |name| std::env::var(name).ok())
    }

    /// [`PostgresTarget::parse`] with the environment given (tests).
    pub fn parse_with_env(
        connection: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PostgresTarget, PostgresTlsError> {
        let shown = || walflow_redact::postgres(connection);
        let split = split_tls_parameters(connection);
        let mut config: tokio_postgres::Config =
            split
                .rest
                .parse()
                .map_err(|source| PostgresTlsError::InvalidConnection {
                    connection: shown(),
                    source,
                })?;
        let given = |parameter: &str, variable: &str| -> Option<String> {
            split
                .get(parameter)
                .map(str::to_owned)
                .or_else(|| env(variable))
                .filter(|value| !value.is_empty())
        };
        let (mode, mode_given) = match given("sslmode", "PGSSLMODE") {
            Some(text) => (
                SslMode::parse(&text).ok_or_else(|| PostgresTlsError::UnknownMode {
                    given: text,
                    connection: shown(),
                })?,
                true,
            ),
            None => (SslMode::Prefer, false),
        };
        let home_file = |name: &str| {
            env("HOME")
                .map(|home| PathBuf::from(home).join(".postgresql").join(name))
                .filter(|path| path.is_file())
        };
        let root_cert = match given("sslrootcert", "PGSSLROOTCERT") {
            Some(text) if text == "system" => Some(RootCert::System),
            Some(text) => Some(RootCert::File(PathBuf::from(text))),
            None => home_file("root.crt").map(RootCert::File),
        };
        let cert = given("sslcert", "PGSSLCERT").map(PathBuf::from);
        let key = given("sslkey", "PGSSLKEY").map(PathBuf::from);
        if let (Some(cert), None) = (&cert, &key) {
            return Err(PostgresTlsError::NoKey {
                cert: cert.display().to_string(),
                connection: shown(),
            });
        }
        let tls = PostgresTls {
            mode,
            mode_given,
            root_cert,
            cert,
            key,
            key_password: split.get("sslpassword").map(str::to_owned),
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.root_cert.is_none() {
            return Err(PostgresTlsError::NoRootCert {
                mode,
                connection: shown(),
            });
        }
        let (host, loopback) = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => (host.clone(), is_loopback(host)),
            Some(Host::Unix(path)) => (path.display().to_string(), true),
            None => ("localhost".to_owned(), true),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = PostgresTarget {
            config: config.clone(),
            tls,
            host,
            port,
            loopback,
        };
        config.ssl_mode(match target.effective_mode() {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(PostgresTarget { config, ..target })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    pub fn tls(&self) -> &PostgresTls {
        &self.tls
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the first host is a loopback address or a Unix socket.
    pub fn host_is_loopback(&self) -> bool {
        self.loopback
    }

    /// `host:port` of the first host, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The mode connections use: the one given, else `prefer`, or `disable` on loopback.
    pub fn effective_mode(&self) -> SslMode {
        if !self.tls.mode_given && self.loopback {
            SslMode::Disable
        } else {
            self.tls.mode
        }
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies_certificate(&self) -> bool {
        match self.effective_mode() {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.tls.root_cert.is_some(),
            _ => false,
        }
    }

    /// Connects with tokio-postgres. The connection must be polled (spawned) for the client
    /// to work.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PostgresConnection), ConnectError> {
        let failure = VerifyFailure::default();
        let mut connector = MakeTlsConnector::new(self.ssl_connector(&failure)?);
        let check_host = self.effective_mode() == SslMode::VerifyFull;
        connector.set_callback(move |configuration, _domain| {
            configuration.set_verify_hostname(check_host);
            Ok(())
        });
        self.config
            .connect(connector)
            .await
            .map_err(|source| match failure.take() {
                Some(detail) => ConnectError::Verify {
                    address: self.address(),
                    detail: self.verify_detail(detail),
                },
                None => {
                    let tls_only = self.effective_mode() == SslMode::Disable
                        && source
                            .as_db_error()
                            .is_some_and(|error| error.message().contains("no encryption"));
                    ConnectError::Postgres {
                        address: self.address(),
                        source,
                        hint: if tls_only { TLS_ONLY_HINT } else { "" },
                    }
                }
            })
    }

    /// [`PostgresTarget::connect`], the connection spawned on the runtime; an error that
    /// ends it later is logged with `what` (which connection it was).
    pub async fn connect_spawned(
        &self,
        what: &'static str,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "{what}: the Postgres connection ended");
            }
        });
        Ok(client)
    }

    /// Starts TLS on a fresh connection to the server, before the startup message, as the
    /// mode says: an SSLRequest, then the handshake when the server accepts. For connections
    /// walflow speaks itself (replication).
    pub async fn start_tls(&self, mut socket: TcpStream) -> Result<PostgresStream, ConnectError> {
        let mode = self.effective_mode();
        if mode == SslMode::Disable {
            return Ok(PostgresStream::Plain(socket));
        }
        let io = |source| ConnectError::Io {
            address: self.address(),
            source,
        };
        let mut request = bytes_buffer();
        postgres_protocol::message::frontend::ssl_request(&mut request);
        socket.write_all(&request).await.map_err(io)?;
        let answer = socket.read_u8().await.map_err(io)?;
        match answer {
            b'S' => {}
            b'N' if mode.requires_tls() => {
                return Err(ConnectError::TlsRefused {
                    address: self.address(),
                    mode,
                })
            }
            b'N' => return Ok(PostgresStream::Plain(socket)),
            other => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the server answered the SSLRequest with byte {other}, not S or N"),
                )))
            }
        }
        let failure = VerifyFailure::default();
        let connector = self.ssl_connector(&failure)?;
        let mut configuration = connector.configure().map_err(PostgresTlsError::from)?;
        configuration.set_verify_hostname(mode == SslMode::VerifyFull);
        let ssl = configuration
            .into_ssl(&self.host)
            .map_err(PostgresTlsError::from)?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, socket).map_err(PostgresTlsError::from)?;
        Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|source| match failure.take() {
                Some(detail) => ConnectError::Verify {
                    address: self.address(),
                    detail: self.verify_detail(detail),
                },
                None => ConnectError::Handshake {
                    address: self.address(),
                    source,
                },
            })?;
        Ok(PostgresStream::Tls(Box::new(stream)))
    }

    /// An OpenSSL connector for these settings; a certificate that fails to verify is
    /// described into `failure`.
    fn ssl_connector(&self, failure: &VerifyFailure) -> Result<SslConnector, PostgresTlsError> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        if self.verifies_certificate() {
            match &self.tls.root_cert {
                Some(RootCert::File(path)) => {
                    builder
                        .set_ca_file(path)
                        .map_err(|source| PostgresTlsError::File {
                            parameter: "sslrootcert",
                            file: path.clone(),
                            source,
                        })?
                }
                Some(RootCert::System) | None => builder.set_default_verify_paths()?,
            }
            let failure = failure.clone();
            builder.set_verify_callback(SslVerifyMode::PEER, move |verified, context| {
                if !verified {
                    failure.record(describe_failure(context));
                }
                verified
            });
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            builder
                .set_certificate_chain_file(cert)
                .map_err(|source| PostgresTlsError::File {
                    parameter: "sslcert",
                    file: cert.clone(),
                    source,
                })?;
            let key_error = |source| PostgresTlsError::File {
                parameter: "sslkey",
                file: key.clone(),
                source,
            };
            match &self.tls.key_password {
                Some(password) => {
                    let pem = std::fs::read(key).map_err(|source| PostgresTlsError::ReadKey {
                        file: key.clone(),
                        source,
                    })?;
                    let private = PKey::private_key_from_pem_passphrase(&pem, password.as_bytes())
                        .map_err(key_error)?;
                    builder.set_private_key(&private).map_err(key_error)?;
                }
                None => builder
                    .set_private_key_file(key, SslFiletype::PEM)
                    .map_err(key_error)?,
            }
            builder.check_private_key().map_err(key_error)?;
        }
        Ok(builder.build())
    }

    /// A verification failure, with what was trusted and which host was asked for.
    fn verify_detail(&self, failure: String) -> String {
        let trusted = self
            .tls
            .root_cert
            .as_ref()
            .map_or_else(|| "the system's CAs".to_owned(), ToString::to_string);
        format!(
            "{failure}; trusted: {trusted}; host asked for: {} (sslmode={})",
            self.host,
            self.effective_mode()
        )
    }
}

/// What the verify callback saw go wrong, shared with the code that reports the failure.
#[derive(Clone, Default)]
struct VerifyFailure(Arc<Mutex<Option<String>>>);

impl VerifyFailure {
    fn record(&self, detail: String) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The first failure is the cause; later ones follow from it.
        kept.get_or_insert(detail);
    }

    fn take(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// `unable to get local issuer certificate (certificate CN=localhost, depth 0)`, and for a
/// host name that does not match, the names the certificate holds.
fn describe_failure(context: &X509StoreContextRef) -> String {
    let error: X509VerifyResult = context.error();
    let mut text = error.error_string().to_owned();
    if let Some(cert) = context.current_cert() {
        let subject: Vec<String> = cert
            .subject_name()
            .entries()
            .map(|entry| {
                let key = entry.object().nid().short_name().unwrap_or("?");
                let value = String::from_utf8_lossy(entry.data().as_slice());
                format!("{key}={value}")
            })
            .collect();
        text.push_str(&format!(
            " (certificate {}, depth {})",
            subject.join(","),
            context.error_depth()
        ));
        // X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        if matches!(error.as_raw(), 62 | 64) {
            let names: Vec<String> = cert
                .subject_alt_names()
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|name| {
                            name.dnsname()
                                .map(|dns| format!("DNS:{dns}"))
                                .or_else(|| name.ipaddress().map(ip_text))
                        })
                        .collect()
                })
                .unwrap_or_default();
            text.push_str(&format!("; it names {}", names.join(", ")));
        }
    }
    text
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => format!(
            "IP:{}",
            std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
        ),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            format!("IP:{}", std::net::Ipv6Addr::from(octets))
        }
        _ => "IP:?".to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

fn bytes_buffer() -> bytes::BytesMut {
    bytes::BytesMut::with_capacity(8)
}

/// Connects to `connection` and spawns the connection; see [`PostgresTarget`].
pub async fn connect(
    connection: &str,
    what: &'static str,
) -> Result<tokio_postgres::Client, ConnectError> {
    PostgresTarget::parse(connection)?
        .connect_spawned(what)
        .await
}

/// A connection to Postgres that walflow speaks itself, in plain text or TLS.
#[derive(Debug)]
pub enum PostgresStream {
    Plain(TcpStream),
    Tls(Box<tokio_openssl::SslStream<TcpStream>>),
}

impl PostgresStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, PostgresStream::Tls(_))
    }

    /// The `tls-server-end-point` channel binding of SCRAM (RFC 5929): a hash of the server's
    /// certificate, SHA-256 unless its signature uses a stronger one. None in plain text.
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let PostgresStream::Tls(stream) = self else {
            return None;
        };
        let certificate = stream.ssl().peer_certificate()?;
        let signature = certificate.signature_algorithm().object().nid();
        let digest = match signature.signature_algorithms()?.digest {
            Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
            nid => MessageDigest::from_nid(nid)?,
        };
        certificate.digest(digest).ok().map(|hash| hash.to_vec())
    }

    /// The TCP socket beneath (for its options).
    pub fn socket(&self) -> &TcpStream {
        match self {
            PostgresStream::Plain(socket) => socket,
            PostgresStream::Tls(stream) => stream.get_ref(),
        }
    }
}

impl AsyncRead for PostgresStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PostgresStream::Plain(socket) => Pin::new(socket).poll_read(context, buffer),
            PostgresStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for PostgresStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PostgresStream::Plain(socket) => Pin::new(socket).poll_write(context, buffer),
            PostgresStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PostgresStream::Plain(socket) => Pin::new(socket).poll_flush(context),
            PostgresStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PostgresStream::Plain(socket) => Pin::new(socket).poll_shutdown(context),
            PostgresStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(connection: &str) -> Result<PostgresTarget, PostgresTlsError> {
        PostgresTarget::parse_with_env(connection, |_| None)
    }

    #[test]
    fn loopback_stays_plain_unless_told_and_elsewhere_prefers_tls() {
        let local = parse("postgres://u:p@127.0.0.1:5432/db").unwrap();
        assert_eq!(local.effective_mode(), SslMode::Disable);
        assert_eq!(
            local.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let told = parse("postgres://u:p@localhost/db?sslmode=require").unwrap();
        assert_eq!(told.effective_mode(), SslMode::Require);
        assert!(
            !told.verifies_certificate(),
            "require without a CA: libpq's"
        );
        let remote = parse("host=db.example.com user=u").unwrap();
        assert_eq!(remote.effective_mode(), SslMode::Prefer);
        assert_eq!(
            remote.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn libpq_parameters_are_read_and_the_rest_reaches_tokio_postgres() {
        let target = parse(
            "postgres://u:p@db:6543/app?sslmode=verify-full&sslrootcert=/ca.crt\
             &sslcert=/c.crt&sslkey=/c.key&connect_timeout=7",
        )
        .unwrap();
        assert_eq!(target.tls().mode, SslMode::VerifyFull);
        assert_eq!(
            target.tls().root_cert,
            Some(RootCert::File(PathBuf::from("/ca.crt")))
        );
        assert_eq!(target.tls().cert, Some(PathBuf::from("/c.crt")));
        assert!(target.verifies_certificate());
        assert_eq!(target.address(), "db:6543");
        assert_eq!(
            target.config().get_connect_timeout(),
            Some(&std::time::Duration::from_secs(7))
        );
        assert_eq!(
            target.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn the_environment_stands_in_for_what_the_string_leaves_out() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-ca".to_owned()),
            "PGSSLROOTCERT" => Some("system".to_owned()),
            _ => None,
        };
        let target = PostgresTarget::parse_with_env("postgres://u@db/app", env).unwrap();
        assert_eq!(target.tls().mode, SslMode::VerifyCa);
        assert_eq!(target.tls().root_cert, Some(RootCert::System));
        let overridden =
            PostgresTarget::parse_with_env("postgres://u@db/app?sslmode=disable", env).unwrap();
        assert_eq!(overridden.effective_mode(), SslMode::Disable);
    }

    #[test]
    fn settings_that_cannot_work_say_what_to_add() {
        let error = parse("postgres://u:secret@db/app?sslmode=verify-full")
            .unwrap_err()
            .to_string();
        assert!(error.contains("add sslrootcert=/path/to/ca.crt"), "{error}");
        assert!(!error.contains("secret"), "{error}");
        let error = parse("postgres://u@db/app?sslmode=verify_full")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sslmode=verify_full") && error.contains("verify-full"),
            "{error}"
        );
        let error = parse("postgres://u@db/app?sslcert=/c.crt")
            .unwrap_err()
            .to_string();
        assert!(error.contains("add sslkey="), "{error}");
    }
}
