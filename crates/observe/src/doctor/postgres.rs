//! Is Postgres fit to be a walflow source: logical WAL, a role allowed to replicate, a free
//! replication slot and WAL sender, and a bound on the WAL a stalled slot can hold back.

use tokio_postgres::Client;
use walflow_tls::postgres::{ConnectError, PostgresTarget, SslMode};

use super::{error_chain, Check, DoctorTargets, ServiceReport};

/// pgoutput exists since Postgres 10; protocol version 2 (streaming of large
/// transactions) since 14.
const MIN_SERVER_VERSION_NUM: i32 = 100_000;
const RECOMMENDED_SERVER_VERSION_NUM: i32 = 140_000;

pub(super) async fn check(targets: &DoctorTargets) -> ServiceReport {
    let mut report = ServiceReport::new("postgres", targets.postgres_display.clone());
    let (client, target) = match connect(targets).await {
        Ok(connected) => connected,
        Err(failure) => {
            report
                .checks
                .push(Check::fail("connect", failure.detail, failure.fix));
            return report;
        }
    };
    report.checks.push(Check::ok("connect", "connected"));
    report.checks.push(tls_check(&client, &target).await);
    let timeout = targets.timeout;
    match tokio::time::timeout(timeout, inspect(&client, &mut report)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => report.checks.push(Check::fail(
            "query",
            format!("a catalog query failed: {}", error_chain(&error)),
            "give the walflow role read access to pg_settings, pg_roles and \
             pg_replication_slots",
        )),
        Err(_) => report.checks.push(Check::fail(
            "query",
            format!("catalog queries did not answer within {timeout:?}"),
            "check the server's load and locks (pg_stat_activity)",
        )),
    }
    report
}

/// Why doctor could not connect, and what to do about it.
struct ConnectFailure {
    detail: String,
    fix: &'static str,
}

const START_FIX: &str = "start Postgres (scripts/services up) or point WALFLOW_POSTGRES_URL / \
                         --postgres-url at it";
const TLS_REQUIRED_FIX: &str = "the server accepts TLS connections only: add sslmode=verify-full \
                                and sslrootcert=/path/to/ca.crt to the Postgres URL (or \
                                sslmode=require to encrypt without verifying)";
const VERIFY_FIX: &str = "give the CA that signed the server's certificate (sslrootcert=) and \
                          connect by a host name the certificate names, or use \
                          sslmode=verify-ca to check the CA alone";
const TLS_REFUSED_FIX: &str = "the server does not offer TLS: turn ssl on in postgresql.conf, or \
                               connect with sslmode=prefer";

async fn connect(targets: &DoctorTargets) -> Result<(Client, PostgresTarget), ConnectFailure> {
    let mut target =
        PostgresTarget::parse(&targets.postgres_url).map_err(|error| ConnectFailure {
            detail: format!("the Postgres URL cannot be used: {}", error_chain(&error)),
            fix: "correct the URL as the message says",
        })?;
    target
        .config_mut()
        .connect_timeout(targets.timeout)
        .application_name("walflow doctor");
    let client = match tokio::time::timeout(targets.timeout, target.connect_spawned("doctor")).await
    {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => {
            let detail = format!("cannot connect: {}", error_chain(&error));
            let fix = match &error {
                ConnectError::Verify { .. } => VERIFY_FIX,
                ConnectError::TlsRefused { .. } => TLS_REFUSED_FIX,
                // pg_hba.conf's hostnossl ... reject: "no encryption".
                _ if detail.contains("no encryption") => TLS_REQUIRED_FIX,
                _ => START_FIX,
            };
            return Err(ConnectFailure { detail, fix });
        }
        Err(_) => {
            return Err(ConnectFailure {
                detail: format!("no answer within {:?}", targets.timeout),
                fix: START_FIX,
            })
        }
    };
    Ok((client, target))
}

/// Whether the connection is encrypted, and whether the server's certificate was checked.
async fn tls_check(client: &Client, target: &PostgresTarget) -> Check {
    let row = client
        .query_opt(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await;
    let mode = target.effective_mode();
    match row {
        Ok(Some(row)) if row.get::<_, bool>(0) => {
            let version: Option<String> = row.get(1);
            let version = version.unwrap_or_default();
            if target.verifies_certificate() {
                let host = if mode == SslMode::VerifyFull {
                    ", host name matched"
                } else {
                    ""
                };
                Check::ok(
                    "tls",
                    format!("encrypted ({version}), certificate verified (sslmode={mode}{host})"),
                )
            } else {
                Check::warn(
                    "tls",
                    format!("encrypted ({version}), the server's certificate not verified (sslmode={mode})"),
                    "add sslmode=verify-full and sslrootcert=/path/to/ca.crt to check whom you talk to",
                )
            }
        }
        Ok(_) if target.host_is_loopback() => {
            Check::ok("tls", format!("plain text on loopback (sslmode={mode})"))
        }
        Ok(_) => Check::warn(
            "tls",
            format!("plain text over the network (sslmode={mode})"),
            "add sslmode=verify-full and sslrootcert=/path/to/ca.crt to the Postgres URL",
        ),
        Err(error) => Check::warn(
            "tls",
            format!("cannot read pg_stat_ssl: {}", error_chain(&error)),
            "grant the walflow role pg_read_all_stats to see it",
        ),
    }
}

async fn inspect(client: &Client, report: &mut ServiceReport) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int, \
                    current_setting('wal_level'), \
                    current_user::text, \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*)::int FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'walsender'), \
                    current_setting('max_slot_wal_keep_size', true)",
            &[],
        )
        .await?;
    let version: String = row.get(0);
    let version_num: i32 = row.get(1);
    let wal_level: String = row.get(2);
    let role: String = row.get(3);
    let can_replicate: Option<bool> = row.get(4);
    let max_slots: i32 = row.get(5);
    let used_slots: i32 = row.get(6);
    let max_senders: i32 = row.get(7);
    let used_senders: i32 = row.get(8);
    let max_slot_wal_keep_size: Option<String> = row.get(9);

    report.version = Some(version.clone());
    report.checks.push(version_check(&version, version_num));
    report.checks.push(wal_level_check(&wal_level));
    report.checks.push(replication_privilege_check(
        &role,
        can_replicate.unwrap_or(false),
    ));
    report.checks.push(free_slots_check(max_slots, used_slots));
    report
        .checks
        .push(free_senders_check(max_senders, used_senders));
    report
        .checks
        .push(wal_keep_size_check(max_slot_wal_keep_size.as_deref()));
    Ok(())
}

fn version_check(version: &str, version_num: i32) -> Check {
    if version_num < MIN_SERVER_VERSION_NUM {
        Check::fail(
            "version",
            format!("Postgres {version} has no pgoutput logical decoding"),
            "upgrade to Postgres 14 or newer",
        )
    } else if version_num < RECOMMENDED_SERVER_VERSION_NUM {
        Check::warn(
            "version",
            format!("Postgres {version}: large transactions cannot be streamed before 14"),
            "upgrade to Postgres 14 or newer",
        )
    } else {
        Check::ok("version", format!("Postgres {version}"))
    }
}

fn wal_level_check(wal_level: &str) -> Check {
    if wal_level == "logical" {
        Check::ok("wal_level", "logical")
    } else {
        Check::fail(
            "wal_level",
            format!("wal_level is {wal_level}: logical decoding needs logical"),
            "set wal_level = logical (ALTER SYSTEM SET wal_level = logical, or in \
             postgresql.conf) and restart Postgres: it only changes at server start",
        )
    }
}

fn replication_privilege_check(role: &str, can_replicate: bool) -> Check {
    if can_replicate {
        Check::ok(
            "replication privilege",
            format!("role {role} may replicate"),
        )
    } else {
        Check::fail(
            "replication privilege",
            format!("role {role} has no REPLICATION attribute"),
            format!("ALTER ROLE \"{role}\" WITH REPLICATION; (as a superuser)"),
        )
    }
}

fn free_slots_check(max_slots: i32, used_slots: i32) -> Check {
    let free = max_slots - used_slots;
    let detail = format!("{free} of {max_slots} free");
    if free > 0 {
        Check::ok("replication slots", detail)
    } else {
        Check::fail(
            "replication slots",
            detail,
            "drop unused slots (SELECT pg_drop_replication_slot(name)) or raise \
             max_replication_slots (ALTER SYSTEM SET max_replication_slots = ...; restart)",
        )
    }
}

fn free_senders_check(max_senders: i32, used_senders: i32) -> Check {
    let free = max_senders - used_senders;
    let detail = format!("{free} of {max_senders} free");
    if free > 0 {
        Check::ok("wal senders", detail)
    } else {
        Check::fail(
            "wal senders",
            detail,
            "raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = ...; restart)",
        )
    }
}

fn wal_keep_size_check(max_slot_wal_keep_size: Option<&str>) -> Check {
    match max_slot_wal_keep_size {
        Some("-1") => Check::warn(
            "max_slot_wal_keep_size",
            "unlimited: a stalled slot keeps WAL until the disk is full",
            "bound it: ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf();",
        ),
        Some(size) => Check::ok("max_slot_wal_keep_size", size.to_owned()),
        None => Check::warn(
            "max_slot_wal_keep_size",
            "not available before Postgres 13: a stalled slot keeps WAL without bound",
            "upgrade to Postgres 14 or newer, and watch slot lag (walflow lag)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn replica_wal_level_fails_and_names_the_setting() {
        let check = wal_level_check("replica");
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.unwrap().contains("wal_level = logical"));
    }

    #[test]
    fn no_free_slot_fails() {
        assert_eq!(free_slots_check(4, 4).status, Status::Fail);
        assert_eq!(free_slots_check(4, 3).status, Status::Ok);
    }

    #[test]
    fn unbounded_wal_retention_warns() {
        assert_eq!(wal_keep_size_check(Some("-1")).status, Status::Warn);
        assert_eq!(wal_keep_size_check(Some("4GB")).status, Status::Ok);
    }

    #[test]
    fn old_servers_are_flagged() {
        assert_eq!(version_check("9.6", 90_600).status, Status::Fail);
        assert_eq!(version_check("13.1", 130_001).status, Status::Warn);
        assert_eq!(version_check("15.18", 150_018).status, Status::Ok);
    }
}
