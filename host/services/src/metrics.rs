//! Prometheus text exposition (format 0.0.4) for etee's services (`GET /metrics` of the
//! appliance and of the platform): requests counted and timed by two labels, and
//! single-value families. Label values are names chosen by the code (operations,
//! outcomes, statuses), never identifiers or content.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Timing {
    count: u64,
    seconds: f64,
}

/// Requests by what was asked and how it ended, and the time they took by what was asked.
#[derive(Default)]
pub struct Requests {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    timings: Mutex<BTreeMap<&'static str, Timing>>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests")
    }
}

impl Requests {
    /// One finished request of `what` that ended with `outcome`, taking `elapsed`.
    pub fn record(&self, what: &'static str, outcome: &'static str, elapsed: Duration) {
        *lock(&self.counts).entry((what, outcome)).or_default() += 1;
        let mut timings = lock(&self.timings);
        let t = timings.entry(what).or_default();
        t.count += 1;
        t.seconds += elapsed.as_secs_f64();
    }

    /// Writes `{prefix}_requests_total{what,outcome}` and
    /// `{prefix}_request_seconds_sum|_count{what}`, described as `{noun}` requests, with
    /// the label names `labels` (what, outcome).
    pub fn render(&self, out: &mut String, prefix: &str, noun: &str, labels: (&str, &str)) {
        let (what_label, outcome_label) = labels;
        let _ = writeln!(
            out,
            "# HELP {prefix}_requests_total {noun} requests by {what_label} and {outcome_label}.\n\
             # TYPE {prefix}_requests_total counter"
        );
        for ((what, outcome), n) in lock(&self.counts).iter() {
            let _ = writeln!(
                out,
                "{prefix}_requests_total{{{what_label}=\"{}\",{outcome_label}=\"{}\"}} {n}",
                escape(what),
                escape(outcome)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {prefix}_request_seconds Time spent answering {noun} requests.\n\
             # TYPE {prefix}_request_seconds summary"
        );
        for (what, t) in lock(&self.timings).iter() {
            let what = escape(what);
            let _ = writeln!(
                out,
                "{prefix}_request_seconds_sum{{{what_label}=\"{what}\"}} {:.6}\n\
                 {prefix}_request_seconds_count{{{what_label}=\"{what}\"}} {}",
                t.seconds, t.count
            );
        }
    }
}

/// Writes a family of one sample without labels: `kind` is `counter` or `gauge`.
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A label value as the format wants it (backslash, quote and newline escaped).
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_render_as_counters_and_summaries() {
        let r = Requests::default();
        r.record("seal", "ok", Duration::from_millis(20));
        r.record("seal", "ok", Duration::from_millis(30));
        r.record("un\"seal", "rejected", Duration::from_millis(5));
        let mut text = String::new();
        r.render(&mut text, "etee_x", "API", ("operation", "outcome"));
        single(&mut text, "etee_x_in_flight", "Requests now.", "gauge", 2);
        let expected = "# HELP etee_x_requests_total API requests by operation and outcome.\n\
            # TYPE etee_x_requests_total counter\n\
            etee_x_requests_total{operation=\"seal\",outcome=\"ok\"} 2\n\
            etee_x_requests_total{operation=\"un\\\"seal\",outcome=\"rejected\"} 1\n\
            # HELP etee_x_request_seconds Time spent answering API requests.\n\
            # TYPE etee_x_request_seconds summary\n\
            etee_x_request_seconds_sum{operation=\"seal\"} 0.050000\n\
            etee_x_request_seconds_count{operation=\"seal\"} 2\n\
            etee_x_request_seconds_sum{operation=\"un\\\"seal\"} 0.005000\n\
            etee_x_request_seconds_count{operation=\"un\\\"seal\"} 1\n\
            # HELP etee_x_in_flight Requests now.\n\
            # TYPE etee_x_in_flight gauge\n\
            etee_x_in_flight 2\n";
        assert_eq!(text, expected);
    }
}
