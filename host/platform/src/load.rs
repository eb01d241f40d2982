//! A bounded load driver for the platform's services: a fixed number of requests, sent by
//! a fixed number of workers over kept-alive TLS connections, stopped at a time limit even
//! if not all were answered. Loopback only: it refuses any other target, so that it cannot
//! be pointed at somebody else's service.
//!
//! Every answer is checked (status, and optionally its body); an answer that is not the
//! expected one is counted as an error by kind, never dropped. Latencies are those of the
//! expected answers. `host/platform/benches/load.rs` uses it; see
//! `docs/benchmarks-platform.md`.

use crate::client::{Answer, Connection};
use hyper::body::Bytes;
use rustls::ClientConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request of a load run.
#[derive(Clone, Debug)]
pub struct LoadRequest {
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    pub content_type: Option<&'static str>,
    /// Shared, so that a request sent many times is not copied each time.
    pub body: Bytes,
    /// The HTTP status of a good answer.
    pub expect_status: u16,
}

impl LoadRequest {
    /// `GET path`, expecting 200.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            content_type: None,
            body: Bytes::new(),
            expect_status: 200,
        }
    }

    /// `POST path` with a body of `content_type`, expecting 200.
    pub fn post(path: impl Into<String>, content_type: &'static str, body: Bytes) -> Self {
        Self {
            method: "POST",
            path: path.into(),
            content_type: Some(content_type),
            body,
            expect_status: 200,
        }
    }
}

/// Makes request number `i` (0-based) of a run.
pub type RequestSource = Arc<dyn Fn(usize) -> LoadRequest + Send + Sync>;

/// Checks the body of an answer that had the expected status; `Err` names what is wrong
/// (the error kind counted in the report).
pub type AnswerCheck = Arc<dyn Fn(&Answer) -> Result<(), String> + Send + Sync>;

/// What to run.
#[derive(Clone)]
pub struct LoadSpec {
    /// Where the platform listens; must be a loopback address.
    pub target: SocketAddr,
    /// The name its TLS certificate is checked for.
    pub server_name: String,
    pub tls: Arc<ClientConfig>,
    /// Requests to send in all.
    pub requests: usize,
    /// Workers, each with its own kept-alive connection.
    pub concurrency: usize,
    /// The run stops when this much time has passed, answered or not.
    pub time_limit: Duration,
    pub source: RequestSource,
    /// Optional check of each answer's body (keep it cheap: it runs in the timed phase).
    pub check: Option<AnswerCheck>,
    /// How many good answers to keep (the first ones to arrive), for checks after the run.
    pub keep_answers: usize,
}

/// Latency figures of the good answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// What a run did.
#[derive(Debug)]
pub struct LoadReport {
    /// Requests asked for.
    pub planned: usize,
    /// Expected answers.
    pub ok: usize,
    /// Unexpected answers, failed exchanges and failed reconnections, by kind (`status 500`,
    /// `transport: ...`, `reconnect: ...`).
    pub errors: BTreeMap<String, usize>,
    /// Requests in flight when the time limit struck (abandoned, neither ok nor errors).
    pub cut_off: usize,
    /// Requests never sent (time limit, or a worker whose connection could not be
    /// reopened).
    pub not_sent: usize,
    /// From the start of the first request to the end of the last worker.
    pub elapsed: Duration,
    /// Whether the time limit ended the run.
    pub timed_out: bool,
    /// `None` when there was no good answer.
    pub latency: Option<Latency>,
    /// The kept good answers, with the index of their request.
    pub answers: Vec<(usize, Answer)>,
}

impl LoadReport {
    /// All unexpected answers and failures.
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// Good answers per second.
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Whether every planned request got its expected answer.
    pub fn complete(&self) -> bool {
        self.ok == self.planned
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not a loopback address: the load client only runs on loopback")]
    NotLoopback(SocketAddr),
    #[error("resolving {0:?}: {1}")]
    Resolve(String, String),
    #[error("{0:?} resolves to no address")]
    NoAddress(String),
    #[error("invalid load specification: {0}")]
    Spec(&'static str),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, crate::PlatformError),
}

/// Whether `addr` is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// `addr` if it is a loopback address, else [`LoadError::NotLoopback`].
pub fn require_loopback(addr: SocketAddr) -> Result<SocketAddr, LoadError> {
    if is_loopback(&addr) {
        Ok(addr)
    } else {
        Err(LoadError::NotLoopback(addr))
    }
}

/// Resolves `host:port`; every address it resolves to must be loopback (a name that also
/// resolves elsewhere is refused rather than half-trusted).
pub async fn resolve_loopback(target: &str) -> Result<SocketAddr, LoadError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|e| LoadError::Resolve(target.to_owned(), e.to_string()))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| LoadError::NoAddress(target.to_owned()))?;
    for a in &addrs {
        require_loopback(*a)?;
    }
    Ok(first)
}

/// The `q` quantile (0 < q ≤ 1) of `sorted` (ascending) by the nearest-rank method: the
/// smallest value with at least `q` of the values at or below it. `None` when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() || q.is_nan() {
        return None;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// p50, p99 and max of `latencies` (sorted in place).
pub fn latency_figures(latencies: &mut [Duration]) -> Option<Latency> {
    latencies.sort_unstable();
    Some(Latency {
        p50: percentile(latencies, 0.50)?,
        p99: percentile(latencies, 0.99)?,
        max: *latencies.last()?,
    })
}

/// What one worker saw.
#[derive(Default)]
struct WorkerTally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    cut_off: usize,
}

/// Runs `spec`: opens `concurrency` connections (before the clock starts), then each
/// worker takes the next request number until all are taken or the time limit passes.
pub async fn run(spec: LoadSpec) -> Result<LoadReport, LoadError> {
    require_loopback(spec.target)?;
    if spec.concurrency == 0 {
        return Err(LoadError::Spec("concurrency must be at least 1"));
    }
    if spec.time_limit.is_zero() {
        return Err(LoadError::Spec("the time limit must be positive"));
    }
    let workers = spec.concurrency.min(spec.requests.max(1));
    let mut connections = Vec::with_capacity(workers);
    for _ in 0..workers {
        connections.push(
            Connection::open(spec.target, &spec.server_name, spec.tls.clone())
                .await
                .map_err(|e| LoadError::Connect(spec.target, e))?,
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let spec = Arc::new(spec);
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + spec.time_limit);
    let mut tasks = Vec::with_capacity(workers);
    for connection in connections {
        let (spec, next, kept) = (spec.clone(), next.clone(), kept.clone());
        tasks.push(tokio::spawn(async move {
            worker(&spec, connection, &next, &kept, deadline).await
        }));
    }
    let mut latencies = Vec::with_capacity(spec.requests);
    let mut errors = BTreeMap::new();
    let mut cut_off = 0;
    for task in tasks {
        match task.await {
            Ok(t) => {
                latencies.extend(t.latencies);
                for (k, n) in t.errors {
                    *errors.entry(k).or_insert(0) += n;
                }
                cut_off += t.cut_off;
            }
            // A worker that panicked (a check that panics): say so, do not hide it.
            Err(e) => *errors.entry(format!("worker failed: {e}")).or_insert(0) += 1,
        }
    }
    let elapsed = start.elapsed();
    let taken = next.load(Ordering::Relaxed).min(spec.requests);
    let ok = latencies.len();
    let answers = std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(LoadReport {
        planned: spec.requests,
        ok,
        errors,
        cut_off,
        not_sent: spec.requests - taken,
        elapsed,
        timed_out: tokio::time::Instant::now() >= deadline && ok < spec.requests,
        latency: latency_figures(&mut latencies),
        answers,
    })
}

async fn worker(
    spec: &LoadSpec,
    mut connection: Connection,
    next: &AtomicUsize,
    kept: &Mutex<Vec<(usize, Answer)>>,
    deadline: tokio::time::Instant,
) -> WorkerTally {
    let mut tally = WorkerTally::default();
    let count = |tally: &mut WorkerTally, kind: String| {
        *tally.errors.entry(kind).or_insert(0) += 1;
    };
    let mut broken = false;
    loop {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        if broken {
            // A failed exchange leaves the connection unusable: open another one.
            match tokio::time::timeout_at(
                deadline,
                Connection::open(spec.target, &spec.server_name, spec.tls.clone()),
            )
            .await
            {
                Ok(Ok(c)) => {
                    connection = c;
                    broken = false;
                }
                Ok(Err(e)) => {
                    count(&mut tally, format!("reconnect: {e}"));
                    break;
                }
                Err(_) => break,
            }
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= spec.requests {
            break;
        }
        let r = (spec.source)(i);
        let sent = Instant::now();
        let exchange = connection.send_bytes(r.method, &r.path, r.content_type, r.body);
        let answer = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => {
                tally.cut_off += 1;
                break;
            }
            Ok(Err(e)) => {
                count(&mut tally, format!("transport: {e}"));
                broken = true;
                continue;
            }
            Ok(Ok(a)) => a,
        };
        let took = sent.elapsed();
        if answer.status != r.expect_status {
            count(&mut tally, format!("status {}", answer.status));
            continue;
        }
        if let Some(check) = &spec.check {
            if let Err(why) = check(&answer) {
                count(&mut tally, why);
                continue;
            }
        }
        tally.latencies.push(took);
        if spec.keep_answers > 0 {
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() < spec.keep_answers {
                kept.push((i, answer));
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&hundred, 0.50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&hundred, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 1.0), Some(Duration::from_millis(100)));
        // Below the first rank: the smallest value.
        assert_eq!(percentile(&hundred, 0.0), Some(Duration::from_millis(1)));
        let one = ms(&[7]);
        assert_eq!(percentile(&one, 0.5), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 0.99), Some(Duration::from_millis(7)));
        // Ten values: p99 is the largest, p50 the fifth.
        let ten = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&ten, 0.99), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ten, 0.5), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&ten, f64::NAN), None);
    }

    #[test]
    fn figures_sort_first() {
        let mut v = ms(&[30, 10, 20, 40]);
        let f = latency_figures(&mut v).unwrap();
        assert_eq!(f.p50, Duration::from_millis(20));
        assert_eq!(f.p99, Duration::from_millis(40));
        assert_eq!(f.max, Duration::from_millis(40));
        assert_eq!(latency_figures(&mut []), None);
    }

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "127.0.0.1:8443",
            "127.8.9.10:1",
            "[::1]:8443",
            "[::ffff:127.0.0.1]:1",
        ] {
            let a: SocketAddr = ok.parse().unwrap();
            assert_eq!(require_loopback(a).unwrap(), a, "{ok}");
        }
        for bad in [
            "10.0.0.1:8443",
            "0.0.0.0:8443",
            "[2001:db8::1]:443",
            "[::]:1",
        ] {
            let a: SocketAddr = bad.parse().unwrap();
            assert!(
                matches!(require_loopback(a), Err(LoadError::NotLoopback(x)) if x == a),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolve_to_loopback_or_are_refused() {
        assert!(resolve_loopback("127.0.0.1:9")
            .await
            .is_ok_and(|a| is_loopback(&a)));
        assert!(matches!(
            resolve_loopback("192.0.2.1:9").await,
            Err(LoadError::NotLoopback(_))
        ));
    }

    #[tokio::test]
    async fn a_remote_target_is_refused_before_connecting() {
        let tls = crate::client::client_config(&[], None).unwrap();
        let spec = LoadSpec {
            target: "192.0.2.1:443".parse().unwrap(),
            server_name: "example".into(),
            tls,
            requests: 1,
            concurrency: 1,
            time_limit: Duration::from_secs(1),
            source: Arc::new(|_| LoadRequest::get("/health")),
            check: None,
            keep_answers: 0,
        };
        assert!(matches!(run(spec).await, Err(LoadError::NotLoopback(_))));
    }
}
