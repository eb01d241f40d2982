//! Prometheus metrics of the appliance, in the text exposition format (`GET /metrics`).
//! Counters only hold names of operations and outcomes: no identifiers, no content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Timing {
    count: u64,
    seconds: f64,
}

/// The appliance's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    timings: Mutex<BTreeMap<&'static str, Timing>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Extra gauges and counters read when the metrics are rendered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub etk_cache_hits: u64,
    pub etk_cache_misses: u64,
    /// Known when the custody core runs in the appliance's process.
    pub custody_audit_syncs: Option<u64>,
    /// `None` when the custody process does not answer.
    pub custody_audit_sequence: Option<u64>,
}

/// Counts a request in flight until dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// One finished request of `operation` with `outcome` (`ok`, `refused`, `failed`,
    /// `rejected`...), taking `elapsed`.
    pub fn request(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((operation, outcome))
            .or_default() += 1;
        let mut timings = self
            .timings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = timings.entry(operation).or_default();
        t.count += 1;
        t.seconds += elapsed.as_secs_f64();
    }

    pub fn bytes(&self, inbound: u64, outbound: u64) {
        self.bytes_in.fetch_add(inbound, Ordering::Relaxed);
        self.bytes_out.fetch_add(outbound, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, extra: Snapshot) -> String {
        let mut s = String::new();
        s.push_str("# HELP etee_appliance_requests_total API requests by operation and outcome.\n");
        s.push_str("# TYPE etee_appliance_requests_total counter\n");
        for ((op, outcome), n) in self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                s,
                "etee_appliance_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        s.push_str("# HELP etee_appliance_request_seconds Time spent answering API requests.\n");
        s.push_str("# TYPE etee_appliance_request_seconds summary\n");
        for (op, t) in self
            .timings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                s,
                "etee_appliance_request_seconds_sum{{operation=\"{op}\"}} {:.6}",
                t.seconds
            );
            let _ = writeln!(
                s,
                "etee_appliance_request_seconds_count{{operation=\"{op}\"}} {}",
                t.count
            );
        }
        let mut counter = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        counter(
            "etee_appliance_bytes_received_total",
            "Request body bytes received.",
            "counter",
            self.bytes_in.load(Ordering::Relaxed).to_string(),
        );
        counter(
            "etee_appliance_bytes_sent_total",
            "Response body bytes sent (sealed messages, released content).",
            "counter",
            self.bytes_out.load(Ordering::Relaxed).to_string(),
        );
        counter(
            "etee_appliance_requests_in_flight",
            "API requests being answered.",
            "gauge",
            self.in_flight.load(Ordering::Relaxed).to_string(),
        );
        counter(
            "etee_appliance_etk_cache_hits_total",
            "ETK lookups answered from the cache.",
            "counter",
            extra.etk_cache_hits.to_string(),
        );
        counter(
            "etee_appliance_etk_cache_misses_total",
            "ETK lookups that went to ETKDepot.",
            "counter",
            extra.etk_cache_misses.to_string(),
        );
        if let Some(syncs) = extra.custody_audit_syncs {
            counter(
                "etee_appliance_custody_audit_syncs_total",
                "fdatasyncs of the custody audit chain since the appliance started.",
                "counter",
                syncs.to_string(),
            );
        }
        if let Some(sequence) = extra.custody_audit_sequence {
            counter(
                "etee_appliance_custody_audit_sequence",
                "Sequence number of the last record on the custody audit chain.",
                "gauge",
                sequence.to_string(),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_timings_and_gauges() {
        let m = Metrics::default();
        {
            let _a = m.start();
            let _b = m.start();
            assert!(m
                .render(Snapshot::default())
                .contains("etee_appliance_requests_in_flight 2\n"));
        }
        m.request("seal", "ok", Duration::from_millis(20));
        m.request("seal", "ok", Duration::from_millis(30));
        m.request("unseal", "rejected", Duration::from_millis(5));
        m.bytes(100, 250);
        let text = m.render(Snapshot {
            etk_cache_hits: 3,
            ..Snapshot::default()
        });
        for line in [
            "etee_appliance_requests_total{operation=\"seal\",outcome=\"ok\"} 2\n",
            "etee_appliance_requests_total{operation=\"unseal\",outcome=\"rejected\"} 1\n",
            "etee_appliance_request_seconds_sum{operation=\"seal\"} 0.050000\n",
            "etee_appliance_request_seconds_count{operation=\"seal\"} 2\n",
            "etee_appliance_bytes_received_total 100\n",
            "etee_appliance_bytes_sent_total 250\n",
            "etee_appliance_requests_in_flight 0\n",
            "etee_appliance_etk_cache_hits_total 3\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
