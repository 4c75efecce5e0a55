//! Is Cassandra fit to hold walflow's results: it answers CQL, runs a supported release,
//! and lets walflow create (and drop) a keyspace.

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use super::{scratch_name, Check, DoctorTargets, ServiceReport};

/// walflow's sinks use features of Cassandra 4.0 and later (and ScyllaDB, which reports a
/// 3.0-compatible release_version, is accepted with a warning).
const MIN_MAJOR_VERSION: u32 = 4;

pub(super) async fn check(targets: &DoctorTargets) -> ServiceReport {
    let mut report = ServiceReport::new("cassandra", targets.cassandra_nodes.join(","));
    let builder = SessionBuilder::new()
        .known_nodes(&targets.cassandra_nodes)
        .connection_timeout(targets.timeout);
    let session = match tokio::time::timeout(targets.timeout, builder.build()).await {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => {
            report
                .checks
                .push(unreachable(format!("cannot connect: {error}")));
            return report;
        }
        Err(_) => {
            report.checks.push(unreachable(format!(
                "no answer within {:?}",
                targets.timeout
            )));
            return report;
        }
    };
    report.checks.push(Check::ok("connect", "connected"));

    match release_version(&session).await {
        Ok(version) => {
            report.checks.push(version_check(&version));
            report.version = Some(version);
        }
        Err(error) => report.checks.push(Check::fail(
            "version",
            format!("SELECT release_version FROM system.local failed: {error}"),
            "check that walflow's role may read the system keyspace",
        )),
    }
    report.checks.push(create_keyspace_check(&session).await);
    report
}

fn unreachable(detail: String) -> Check {
    Check::fail(
        "connect",
        detail,
        "start Cassandra (scripts/services up) or point WALFLOW_CASSANDRA_NODES / \
         --cassandra-nodes at a node's native transport (port 9042)",
    )
}

async fn release_version(session: &Session) -> Result<String, String> {
    let result = session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .map_err(|error| error.to_string())?;
    let rows = result
        .into_rows_result()
        .map_err(|error| error.to_string())?;
    let (version,) = rows
        .single_row::<(String,)>()
        .map_err(|error| error.to_string())?;
    Ok(version)
}

fn version_check(version: &str) -> Check {
    let major = version
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= MIN_MAJOR_VERSION => {
            Check::ok("version", format!("Cassandra {version}"))
        }
        _ => Check::warn(
            "version",
            format!("release_version {version} is older than Cassandra {MIN_MAJOR_VERSION}.0"),
            "use Apache Cassandra 4.0 or newer (walflow is tested on 5.0)",
        ),
    }
}

/// The same rights `walflow process` needs to create its sink keyspaces.
async fn create_keyspace_check(session: &Session) -> Check {
    let keyspace = scratch_name("walflow_doctor");
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} \
         WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    );
    if let Err(error) = session.query_unpaged(create, ()).await {
        return Check::fail(
            "create keyspace",
            format!("could not create keyspace {keyspace}: {error}"),
            "grant walflow's role CREATE on ALL KEYSPACES, or create its keyspaces beforehand",
        );
    }
    match session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
    {
        Ok(_) => Check::ok("create keyspace", format!("created and dropped {keyspace}")),
        Err(error) => Check::warn(
            "create keyspace",
            format!("created {keyspace} but could not drop it: {error}"),
            format!("DROP KEYSPACE {keyspace}; and grant walflow's role DROP on its keyspaces"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn releases_before_four_warn() {
        assert_eq!(version_check("5.0.6").status, Status::Ok);
        assert_eq!(version_check("4.1.3").status, Status::Ok);
        assert_eq!(version_check("3.11.17").status, Status::Warn);
        assert_eq!(version_check("garbage").status, Status::Warn);
    }
}
