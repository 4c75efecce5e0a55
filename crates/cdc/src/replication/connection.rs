//! A connection in `replication=database` mode: TLS as the URL's `sslmode` says
//! (walflow-tls), startup and authentication (SCRAM-SHA-256, with channel binding over TLS,
//! MD5 or cleartext, as the server asks), the replication commands as simple queries, and
//! the CopyBoth stream of `START_REPLICATION`.

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use walflow_pgoutput::{Lsn, ReplicationMessage, StandbyStatusUpdate};
use walflow_tls::postgres::{PostgresStream, PostgresTarget};

use super::error::ReplicationError;
use super::framing::{next_message, server_error, Backend};
use fallible_iterator::FallibleIterator;

/// Where and as whom to connect; read from the same URL as every other walflow connection.
#[derive(Clone)]
pub struct ReplicationConfig {
    pub host: String,
    /// The address to connect to, when the URL gives one (`hostaddr`) beside the host name.
    pub hostaddr: Option<std::net::IpAddr>,
    pub port: u16,
    /// How TLS is spoken (libpq's `sslmode` and files, from the same URL).
    target: PostgresTarget,
    pub user: String,
    password: Option<Vec<u8>>,
    pub database: String,
    pub application_name: String,
    /// How long connecting, starting up and authenticating may take (the URL's
    /// `connect_timeout`, else 30 s): a server that accepts the connection and never
    /// answers is an error, not a hang.
    pub connect_timeout: std::time::Duration,
}

/// Used when the URL sets no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

impl ReplicationConfig {
    /// From a `postgres://` URL or key/value string, TLS parameters included (as libpq
    /// reads them: walflow-tls). TCP hosts only.
    pub fn from_url(url: &str) -> Result<ReplicationConfig, ReplicationError> {
        let target = PostgresTarget::parse(url)?;
        let config = target.config().clone();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(_) => {
                return Err(ReplicationError::Config(
                    "Unix sockets are not supported for replication".into(),
                ))
            }
            None => "localhost".to_owned(),
        };
        let user = config
            .get_user()
            .map(str::to_owned)
            .ok_or_else(|| ReplicationError::Config("the URL names no user".into()))?;
        Ok(ReplicationConfig {
            host,
            hostaddr: config.get_hostaddrs().first().copied(),
            port: config.get_ports().first().copied().unwrap_or(5432),
            target,
            database: config
                .get_dbname()
                .map(str::to_owned)
                .unwrap_or_else(|| user.clone()),
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            application_name: "walflow cdc".to_owned(),
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }
}

/// IDENTIFY_SYSTEM's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub current_wal_lsn: Lsn,
    pub database: Option<String>,
}

/// CREATE_REPLICATION_SLOT's answer. The exported snapshot lives only while this
/// connection stays open and runs nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

pub struct ReplicationConnection {
    socket: PostgresStream,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
}

impl ReplicationConnection {
    pub async fn connect(
        config: &ReplicationConfig,
    ) -> Result<ReplicationConnection, ReplicationError> {
        // libpq's hostaddr: where to connect, while the host name is what TLS verifies.
        let address = match &config.hostaddr {
            Some(hostaddr) => std::net::SocketAddr::new(*hostaddr, config.port).to_string(),
            None => format!("{}:{}", config.host, config.port),
        };
        match tokio::time::timeout(
            config.connect_timeout,
            Self::connect_untimed(config, &address),
        )
        .await
        {
            Ok(connected) => connected,
            Err(_) => Err(ReplicationError::Connect {
                address,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {} s (connect_timeout in the URL sets the limit)",
                        config.connect_timeout.as_secs()
                    ),
                ),
            }),
        }
    }

    async fn connect_untimed(
        config: &ReplicationConfig,
        address: &str,
    ) -> Result<ReplicationConnection, ReplicationError> {
        let socket =
            TcpStream::connect(address)
                .await
                .map_err(|source| ReplicationError::Connect {
                    address: address.to_owned(),
                    source,
                })?;
        socket.set_nodelay(true)?;
        // A link that dies without a word (a NAT or firewall dropping it) is noticed in
        // about a minute instead of the kernel's two hours.
        socket2::SockRef::from(&socket).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(std::time::Duration::from_secs(30))
                .with_interval(std::time::Duration::from_secs(10))
                .with_retries(3),
        )?;
        let socket = config.target.start_tls(socket).await?;
        let mut connection = ReplicationConnection {
            socket,
            read_buffer: BytesMut::with_capacity(64 * 1024),
            write_buffer: BytesMut::new(),
        };
        frontend::startup_message(
            [
                ("user", config.user.as_str()),
                ("database", config.database.as_str()),
                ("replication", "database"),
                ("application_name", config.application_name.as_str()),
                ("client_encoding", "UTF8"),
                // The text forms walflow's encoders read (pg_time.rs, avro.rs), whatever the
                // server's defaults.
                ("DateStyle", "ISO"),
                ("IntervalStyle", "postgres"),
                ("bytea_output", "hex"),
            ],
            &mut connection.write_buffer,
        )?;
        connection.flush().await?;
        connection.authenticate(config).await?;
        Ok(connection)
    }

    async fn authenticate(&mut self, config: &ReplicationConfig) -> Result<(), ReplicationError> {
        let missing_password = || {
            ReplicationError::Authentication(format!(
                "Postgres asks for a password for {} and the URL has none",
                config.user
            ))
        };
        let mut scram: Option<ScramSha256> = None;
        // Set once the server's SCRAM final message proved it knows the password.
        let mut server_proven = false;
        let downgrade = || {
            ReplicationError::Authentication(
                "Postgres started SCRAM authentication and then asked for the password in another \
                 way: refusing, as a server that cannot finish SCRAM may not be the real one"
                    .into(),
            )
        };
        loop {
            match self.read_message().await? {
                Backend::Message(Message::AuthenticationOk) => {
                    if scram.is_some() && !server_proven {
                        return Err(ReplicationError::Authentication(
                            "Postgres accepted the login without the SCRAM final message that proves \
                             it knows the password: refusing, the server may not be the real one"
                                .into(),
                        ));
                    }
                }
                Backend::Message(
                    Message::AuthenticationCleartextPassword
                    | Message::AuthenticationMd5Password(_),
                ) if scram.is_some() => return Err(downgrade()),
                Backend::Message(Message::AuthenticationCleartextPassword) => {
                    let password = config.password.as_deref().ok_or_else(missing_password)?;
                    frontend::password_message(password, &mut self.write_buffer)?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationMd5Password(body)) => {
                    let password = config.password.as_deref().ok_or_else(missing_password)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buffer)?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationSasl(body)) => {
                    let mut mechanisms = body.mechanisms();
                    let (mut offers_scram, mut offers_plus) = (false, false);
                    while let Some(mechanism) = mechanisms.next()? {
                        offers_scram |= mechanism == SCRAM_SHA_256;
                        offers_plus |= mechanism == SCRAM_SHA_256_PLUS;
                    }
                    let end_point = self.socket.tls_server_end_point();
                    // Over TLS, SCRAM binds the login to the server's certificate when the
                    // server offers it (SCRAM-SHA-256-PLUS), as libpq does.
                    let (mechanism, binding) = match end_point {
                        Some(hash) if offers_plus => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash),
                        ),
                        Some(_) if offers_scram => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                        None if offers_scram => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                        _ => {
                            return Err(ReplicationError::Authentication(
                                "Postgres offers no SASL mechanism walflow speaks \
                                 (SCRAM-SHA-256, SCRAM-SHA-256-PLUS over TLS)"
                                    .into(),
                            ))
                        }
                    };
                    let password = config.password.as_deref().ok_or_else(missing_password)?;
                    let exchange = ScramSha256::new(password, binding);
                    frontend::sasl_initial_response(
                        mechanism,
                        exchange.message(),
                        &mut self.write_buffer,
                    )?;
                    self.flush().await?;
                    scram = Some(exchange);
                }
                Backend::Message(Message::AuthenticationSaslContinue(body)) => {
                    let exchange = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue before SASL start".into())
                    })?;
                    exchange.update(body.data())?;
                    frontend::sasl_response(exchange.message(), &mut self.write_buffer)?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationSaslFinal(body)) => {
                    let exchange = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final before SASL start".into())
                    })?;
                    exchange.finish(body.data())?;
                    server_proven = true;
                }
                Backend::Message(
                    Message::ParameterStatus(_)
                    | Message::BackendKeyData(_)
                    | Message::NoticeResponse(_),
                ) => {}
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                Backend::Message(_) | Backend::CopyBothResponse => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during authentication".into(),
                    ));
                }
            }
        }
    }

    /// Runs one replication command and returns its rows, each column as text.
    pub async fn simple_query(
        &mut self,
        command: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(command, &mut self.write_buffer)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.read_message().await? {
                Backend::Message(Message::DataRow(row)) => {
                    let buffer = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Some(range) = ranges.next()? {
                        values.push(
                            range.map(|range| String::from_utf8_lossy(&buffer[range]).into_owned()),
                        );
                    }
                    rows.push(values);
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    failure = Some(server_error(body.fields()))
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match failure {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    };
                }
                Backend::Message(_) => {}
                Backend::CopyBothResponse => {
                    return Err(ReplicationError::Protocol(format!(
                        "{command:?} started a copy stream"
                    )));
                }
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let column = |index: usize| row.get(index).cloned().flatten();
        let lsn = column(2).ok_or_else(|| {
            ReplicationError::Protocol("IDENTIFY_SYSTEM returned no xlogpos".into())
        })?;
        Ok(SystemIdentity {
            system_id: column(0).unwrap_or_default(),
            timeline: column(1)
                .and_then(|timeline| timeline.parse().ok())
                .unwrap_or_default(),
            current_wal_lsn: lsn.parse()?,
            database: column(3),
        })
    }

    /// Creates a pgoutput slot. With `export_snapshot`, the answer names a snapshot that
    /// sees exactly the data before the slot's consistent point.
    pub async fn create_logical_slot(
        &mut self,
        slot_name: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        let snapshot = if export_snapshot {
            "EXPORT_SNAPSHOT"
        } else {
            "NOEXPORT_SNAPSHOT"
        };
        self.create_slot(slot_name, "", snapshot).await
    }

    /// A slot that lives only as long as this connection, exporting its snapshot: the
    /// consistent point of a snapshot taken again for a slot that is kept.
    pub async fn create_temporary_logical_slot(
        &mut self,
        slot_name: &str,
    ) -> Result<CreatedSlot, ReplicationError> {
        self.create_slot(slot_name, " TEMPORARY", "EXPORT_SNAPSHOT")
            .await
    }

    async fn create_slot(
        &mut self,
        slot_name: &str,
        temporary: &str,
        snapshot: &str,
    ) -> Result<CreatedSlot, ReplicationError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {snapshot}",
                quote_identifier(slot_name)
            ))
            .await?;
        let row = rows.first().ok_or_else(|| {
            ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no row".into())
        })?;
        let column = |index: usize| row.get(index).cloned().flatten();
        let consistent_point =
            column(1).ok_or_else(|| ReplicationError::Protocol("no consistent point".into()))?;
        Ok(CreatedSlot {
            slot_name: column(0).unwrap_or_else(|| slot_name.to_owned()),
            consistent_point: consistent_point.parse()?,
            snapshot_name: column(2),
        })
    }

    /// Starts streaming from `start_lsn` (0/0: from the slot's confirmed position).
    pub async fn start_replication(
        mut self,
        slot_name: &str,
        start_lsn: Lsn,
        publication_names: &[&str],
        protocol_version: u32,
    ) -> Result<ReplicationStream, ReplicationError> {
        let publications: Vec<String> = publication_names
            .iter()
            .map(|name| quote_identifier(name))
            .collect();
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {start_lsn} (proto_version '{protocol_version}', publication_names {})",
            quote_identifier(slot_name),
            quote_literal(&publications.join(",")),
        );
        frontend::query(&command, &mut self.write_buffer)?;
        self.flush().await?;
        let mut failure = None;
        loop {
            match self.read_message().await? {
                Backend::CopyBothResponse => return Ok(ReplicationStream { connection: self }),
                Backend::Message(Message::ErrorResponse(body)) => {
                    failure = Some(server_error(body.fields()))
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return Err(failure.unwrap_or_else(|| {
                        ReplicationError::Protocol("START_REPLICATION did not start".into())
                    }));
                }
                Backend::Message(_) => {}
            }
        }
    }

    async fn read_message(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(message) = next_message(&mut self.read_buffer)? {
                return Ok(message);
            }
            if self.socket.read_buf(&mut self.read_buffer).await? == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "Postgres closed the replication connection",
                )));
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.socket.write_all(&self.write_buffer).await?;
        self.write_buffer.clear();
        Ok(())
    }
}

/// The CopyBoth phase: replication messages in, status updates out.
pub struct ReplicationStream {
    connection: ReplicationConnection,
}

impl ReplicationStream {
    /// The next message, or `None` when the server ended the stream (CopyDone).
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        loop {
            match self.connection.read_message().await? {
                Backend::Message(Message::CopyData(body)) => {
                    let payload: Bytes = body.into_bytes();
                    return Ok(Some(ReplicationMessage::parse(payload)?));
                }
                Backend::Message(Message::CopyDone) => return Ok(None),
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                Backend::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                // After CopyDone or a shutdown the server closes the session: the stream is over.
                Backend::Message(Message::CommandComplete(_) | Message::ReadyForQuery(_)) => {
                    return Ok(None)
                }
                Backend::Message(_) | Backend::CopyBothResponse => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message in the replication stream".into(),
                    ));
                }
            }
        }
    }

    /// Tells the server how far walflow got: WAL up to `flushed` may be recycled.
    pub async fn send_status(
        &mut self,
        update: StandbyStatusUpdate,
    ) -> Result<(), ReplicationError> {
        let payload = update.encode();
        frontend::CopyData::new(&payload[..])?.write(&mut self.connection.write_buffer);
        self.connection.flush().await
    }
}

/// A double-quoted identifier, as `quote_ident` would write it.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake server that starts SCRAM and then says "ok" without the final message that
    /// would prove it knows the password.
    #[tokio::test]
    async fn a_server_that_skips_the_scram_proof_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0u8; 4096];
            let _ = socket.read(&mut buffer).await.unwrap();
            // AuthenticationSASL offering SCRAM-SHA-256.
            let mechanism = b"SCRAM-SHA-256\0\0";
            let mut message = vec![b'R'];
            message.extend(((4 + 4 + mechanism.len()) as i32).to_be_bytes());
            message.extend(10i32.to_be_bytes());
            message.extend(mechanism);
            socket.write_all(&message).await.unwrap();
            let _ = socket.read(&mut buffer).await.unwrap();
            // AuthenticationOk, then ReadyForQuery.
            let mut message = vec![b'R'];
            message.extend(8i32.to_be_bytes());
            message.extend(0i32.to_be_bytes());
            message.extend([b'Z', 0, 0, 0, 5, b'I']);
            socket.write_all(&message).await.unwrap();
            let _ = socket.read(&mut buffer).await;
        });
        let config = ReplicationConfig::from_url(&format!(
            "postgres://walflow:secret@127.0.0.1:{port}/walflow"
        ))
        .unwrap();
        let result = ReplicationConnection::connect(&config).await;
        let error = result.err().expect("the login must be refused");
        assert!(error.to_string().contains("SCRAM final message"), "{error}");
        server.abort();
    }

    #[test]
    fn identifiers_and_literals_are_quoted_safely() {
        assert_eq!(quote_identifier("users"), "\"users\"");
        assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn configs_come_from_urls_without_showing_passwords() {
        let config =
            ReplicationConfig::from_url("postgres://walflow:s3cret@db.example:6543/source")
                .unwrap();
        assert_eq!(
            (
                config.host.as_str(),
                config.port,
                config.user.as_str(),
                config.database.as_str()
            ),
            ("db.example", 6543, "walflow", "source")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
