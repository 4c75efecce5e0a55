//! The stdout sink, for looking at events: one JSON line an event, acknowledged as soon as
//! it is written and flushed.

use std::io::Write;
use std::sync::Arc;

use walflow_pgoutput::Lsn;

use super::{EventSink, SinkError};
use crate::envelope::ChangeEvent;
use crate::metrics::CdcMetrics;

#[derive(Default)]
pub struct StdoutSink {
    metrics: Arc<CdcMetrics>,
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink::default()
    }
}

impl EventSink for StdoutSink {
    async fn send(&mut self, event: &ChangeEvent) -> Result<(), SinkError> {
        let key = event.key.as_ref();
        let value = event.value.as_ref();
        self.metrics.record_event(
            &event.topic,
            key.map_or(0, Vec::len) + value.map_or(0, Vec::len),
        );
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{{\"topic\":{},\"key\":{},\"value\":{}}}",
            serde_json::Value::String(event.topic.clone()),
            key.map_or("null".into(), |key| String::from_utf8_lossy(key)),
            value.map_or("null".into(), |value| String::from_utf8_lossy(value)),
        )?;
        Ok(())
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time_us: Option<i64>) -> Result<(), SinkError> {
        std::io::stdout().flush()?;
        self.metrics.record_acked(end_lsn.0, commit_time_us);
        Ok(())
    }

    /// Written is as good as acknowledged: nothing to take back.
    fn abandon_open_transaction(&mut self) {}

    fn reset(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn failure(&self) -> Option<super::DeliveryFailure> {
        None
    }

    fn backlogged(&self) -> bool {
        false
    }

    fn metrics(&self) -> &Arc<CdcMetrics> {
        &self.metrics
    }

    fn latencies_us(&self) -> Vec<u64> {
        Vec::new()
    }
}
