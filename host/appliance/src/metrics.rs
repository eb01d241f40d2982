//! Prometheus metrics of the appliance, in the text exposition format (`GET /metrics`).
//! Counters only hold names of operations and outcomes: no identifiers, no content.

use etee_services::metrics::{single, Requests};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The appliance's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Requests,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicI64,
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
        self.requests.record(operation, outcome, elapsed);
    }

    pub fn bytes(&self, inbound: u64, outbound: u64) {
        self.bytes_in.fetch_add(inbound, Ordering::Relaxed);
        self.bytes_out.fetch_add(outbound, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, extra: Snapshot) -> String {
        let mut s = String::new();
        self.requests
            .render(&mut s, "etee_appliance", "API", ("operation", "outcome"));
        single(
            &mut s,
            "etee_appliance_bytes_received_total",
            "Request body bytes received.",
            "counter",
            self.bytes_in.load(Ordering::Relaxed),
        );
        single(
            &mut s,
            "etee_appliance_bytes_sent_total",
            "Response body bytes sent (sealed messages, released content).",
            "counter",
            self.bytes_out.load(Ordering::Relaxed),
        );
        single(
            &mut s,
            "etee_appliance_requests_in_flight",
            "API requests (/v1 routes) being handled: from their start, waiting for a \
             client's slot included, until their answer's status is ready.",
            "gauge",
            self.in_flight.load(Ordering::Relaxed),
        );
        single(
            &mut s,
            "etee_appliance_etk_cache_hits_total",
            "ETK lookups answered from the cache.",
            "counter",
            extra.etk_cache_hits,
        );
        single(
            &mut s,
            "etee_appliance_etk_cache_misses_total",
            "ETK lookups that went to ETKDepot.",
            "counter",
            extra.etk_cache_misses,
        );
        if let Some(syncs) = extra.custody_audit_syncs {
            single(
                &mut s,
                "etee_appliance_custody_audit_syncs_total",
                "fdatasyncs of the custody audit chain since the appliance started.",
                "counter",
                syncs,
            );
        }
        if let Some(sequence) = extra.custody_audit_sequence {
            single(
                &mut s,
                "etee_appliance_custody_audit_sequence",
                "Sequence number of the last record on the custody audit chain.",
                "gauge",
                sequence,
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
