//! What every benchmark uses: percentiles, peak memory, scratch databases, psql.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_postgres::Client;

/// Latency samples (any one unit) and their percentiles, kept by hdrhistogram to three
/// significant digits: memory stays flat however many samples a run takes.
pub(crate) struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    pub(crate) fn of(samples: impl IntoIterator<Item = u64>) -> Latencies {
        // Three significant digits, any value a u64 holds: creating it cannot fail.
        let mut histogram = hdrhistogram::Histogram::new(3).expect("3 significant digits");
        for sample in samples {
            histogram.saturating_record(sample);
        }
        Latencies(histogram)
    }

    /// The value at or below which `share` of the samples lie (0 when there are none).
    pub(crate) fn percentile(&self, share: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.value_at_quantile(share)
    }

    pub(crate) fn max(&self) -> u64 {
        self.0.max()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len() as usize
    }
}

/// The process's peak resident set (VmHWM), in MB.
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kilobytes| kilobytes.parse::<f64>().ok())
        })
        .map(|kilobytes| kilobytes / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A database of its own for one benchmark run, named after `prefix` and this process.
pub(crate) async fn create_scratch_database(
    admin: &Client,
    prefix: &str,
) -> anyhow::Result<String> {
    let database = format!("{prefix}_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .with_context(|| {
            format!("cannot create the scratch database {database} (walflow's role needs CREATEDB)")
        })?;
    Ok(database)
}

/// Drops a scratch database, and first its replication slots, which would keep it (ending
/// the connections that still hold them).
pub(crate) async fn drop_scratch_database(admin: &Client, database: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let active: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE database = $1 AND active",
                &[&database],
            )
            .await?
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
            &[&database],
        )
        .await
        .with_context(|| format!("cannot drop the slots of {database}"))?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .with_context(|| format!("cannot drop the scratch database {database}"))?;
    Ok(())
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    Ok(walflow_tls::postgres::connect(url, "bench").await?)
}

pub(crate) fn which_psql() -> anyhow::Result<()> {
    match Command::new("psql").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!("psql is needed for the COPY baseline: install postgresql-client"),
    }
}

/// Runs one psql meta-command. The password goes through PGPASSWORD, not the command line.
pub(crate) fn psql(url: &str, command: &str) -> anyhow::Result<()> {
    let mut parsed = url::Url::parse(url)?;
    let password = parsed.password().map(str::to_owned);
    let _ = parsed.set_password(None);
    let mut psql = Command::new("psql");
    psql.args([
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-X",
        "-d",
        parsed.as_str(),
        "-c",
        command,
    ]);
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    let output = psql.output().context("cannot run psql")?;
    if !output.status.success() {
        bail!(
            "psql {command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_thousand_samples_are_within_a_thousandth() {
        let latencies = Latencies::of(1..=1000);
        assert_eq!(latencies.len(), 1000);
        assert_eq!(latencies.percentile(0.5), 500);
        assert_eq!(latencies.percentile(0.99), 990);
        assert_eq!(latencies.max(), 1000);
        assert_eq!(Latencies::of([]).percentile(0.99), 0);
    }
}
