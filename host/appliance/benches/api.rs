//! The appliance's API under load, on one machine, in one bounded run (issue: the
//! appliance's figures):
//!
//! 1. the world: `etee demo --keep DIR --setup-only` (SoftHSM tokens for Alice, a
//!    hospital, and Bob, a pharmacy; the platform's configuration; one appliance
//!    configuration each), the platform as a child process (`etee platform serve`), and
//!    Alice's and Bob's appliances opened in this process and served on their Unix sockets
//!    (`server::start`), as `etee serve` would;
//! 2. the reference, measured in the same run: the custody core's own rate at the same
//!    concurrency, through `Appliance::custody_for("medical-software")` (the core the API
//!    uses): Alice's PSS signatures/s (S) and Bob's PKCS#1 v1.5 decryptions/s (D). A 1 KiB
//!    round trip costs 2 signatures (the inner and outer layer of the seal) and 1
//!    decryption (the unseal), so the custody-bound limit is L = 1 / (2/S + 1/D);
//! 3. 1 KiB round trips through the API (seal at Alice's socket for Bob, unseal at Bob's
//!    socket, content compared) by concurrent clients on kept-alive connections, against L
//!    (target ≥ 0.8), and the same round trips through `Appliance::seal` / `unseal` in
//!    process (no HTTP: a diagnostic of where the time goes);
//! 4. a large message streamed through seal and unseal (content generated on the fly, the
//!    sealed message spooled to a file, the content hashed on the way back), MiB/s each way
//!    and the process's peak RSS, beside OpenSSL's AES-128-CBC and SHA-256 rates measured
//!    in the same run.
//!
//! `cargo bench -p etee-appliance --bench api`. Environment: ETEE_BENCH_REQUESTS (round
//! trips, default 3000), ETEE_BENCH_CONCURRENCY (clients and reference threads, default
//! four times the cores: enough callers to keep the cores busy while some wait for their
//! audit record's sync, on both sides of the ratio), ETEE_BENCH_SECONDS (time limit of the round trips, default 120),
//! ETEE_BENCH_LARGE_MIB (the large message, default 256), ETEE_BENCH_DIR (where the world
//! goes; default the target directory's disk), SOFTHSM2_MODULE (default the Debian path;
//! the bench is skipped without it). See docs/benchmarks-appliance.md.

use etee_appliance::client::UnixClient;
use etee_appliance::config::Operation;
use etee_appliance::policy::Peer;
use etee_appliance::service::SealRequest;
use etee_appliance::{Appliance, ApplianceConfig};
use etee_formats::keys::{KeyId, PrivateKeyOps};
use etee_services::etkdepot::Identifier;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The API client both sides are configured with (`etee demo`).
const CLIENT: &str = "medical-software";
/// Bob, the pharmacy, as Alice's seal names him.
const TO_BOB: &str = "/v1/seal?to=NIHII-PHARMACY:27150201";
/// Round trips' content.
const SMALL: usize = 1024;
/// Private operations of a 1 KiB round trip: signatures (seal) and decryptions (unseal).
const SIGNATURES_PER_ROUND_TRIP: f64 = 2.0;
const DECRYPTIONS_PER_ROUND_TRIP: f64 = 1.0;
const TARGET: f64 = 0.8;
/// How long each measurement of a reference rate runs.
const REFERENCE_SECONDS: f64 = 3.0;
/// Chunks of the large message's content as the client sends it.
const CHUNK: usize = 256 * 1024;
/// What OpenSSL encrypts and hashes for scale, MiB.
const OPENSSL_MIB: usize = 256;

type BoxBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn env_number<T: std::str::FromStr + PartialOrd + Default>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > T::default())
        .unwrap_or(default)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

struct Settings {
    requests: usize,
    concurrency: usize,
    time_limit: Duration,
    large_mib: usize,
}

// ---- the world ----------------------------------------------------------------------------

/// The platform as a child process, killed when dropped (also on a panic).
struct PlatformChild {
    child: Child,
}

impl PlatformChild {
    /// `etee platform serve` in `dir` with its SoftHSM configuration; returns once its TCP
    /// port accepts connections.
    fn start(dir: &Path) -> PlatformChild {
        let log = std::fs::File::create(dir.join("platform.log")).expect("DIR/platform.log");
        let child = Command::new(etee_e2e::etee_bin())
            .args(["platform", "serve", "--config", "platform.toml"])
            .current_dir(dir)
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the platform's log"))
            .stderr(log)
            .spawn()
            .expect("starting `etee platform serve`");
        let mut guard = PlatformChild { child };
        let text = std::fs::read_to_string(dir.join("platform.toml")).expect("DIR/platform.toml");
        let config: toml::Value = toml::from_str(&text).expect("platform.toml is TOML");
        let listen = config["platform"]["listen"]
            .as_str()
            .expect("[platform] listen in platform.toml")
            .to_string();
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(&listen).is_ok() {
                break;
            }
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!(
                    "the platform exited ({status}): {}",
                    std::fs::read_to_string(dir.join("platform.log")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the platform does not listen on {listen} after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        guard
    }
}

impl Drop for PlatformChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the custody budget of a token configuration out of reach: at the default (1 000
/// uses a second sustained, bursts of 10 000) the reference and the round trips of one
/// run use most of the burst on this VM, and a faster machine would be refused by its
/// own rate limit. The figures are the service's cost, not its rate limit.
fn budget_out_of_reach(path: &Path) {
    let text = std::fs::read_to_string(path).expect("the world's token configuration");
    let mut config: toml::Table = toml::from_str(&text).expect("a TOML token configuration");
    let custody = config
        .entry("custody")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[custody] is a table");
    for key in ["budget_burst", "budget_per_second"] {
        custody.insert(key.into(), toml::Value::Integer(i64::from(u32::MAX)));
    }
    std::fs::write(path, toml::to_string(&config).expect("TOML")).expect("rewriting it");
}

/// Takes the world's OCSP responder out of an appliance configuration: the bench measures
/// the appliance against its custody core, and the demo's responder (not started here)
/// would add an exchange with it to every seal.
fn without_ocsp(path: &Path) {
    let text = std::fs::read_to_string(path).expect("the appliance's configuration");
    let mut config: toml::Table = toml::from_str(&text).expect("a TOML configuration");
    if let Some(appliance) = config.get_mut("appliance").and_then(|a| a.as_table_mut()) {
        appliance.remove("ocsp");
    }
    std::fs::write(path, toml::to_string(&config).expect("TOML")).expect("rewriting it");
}

/// Opens the appliance of `config` (logs in to the token: blocking) on `rt`'s blocking
/// pool, as `etee serve` does.
fn open_appliance(rt: &tokio::runtime::Runtime, config: PathBuf) -> Arc<Appliance> {
    let name = config.display().to_string();
    let app = rt
        .block_on(rt.spawn_blocking(move || {
            let config = ApplianceConfig::load(&config)?;
            Appliance::open(config)
        }))
        .expect("the appliance's opening thread")
        .unwrap_or_else(|e| panic!("opening the appliance {name}: {e}"));
    Arc::new(app)
}

// ---- figures ------------------------------------------------------------------------------

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    etee_platform::load::percentile(sorted, q)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
}

fn ms_value(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64() * 1000.0))
}

/// p50, p99, max of `v` (sorted in place).
fn latencies(v: &mut [Duration]) -> [Option<Duration>; 3] {
    v.sort_unstable();
    [percentile(v, 0.50), percentile(v, 0.99), v.last().copied()]
}

/// Runs `threads` threads for about `secs`, each calling `op` in a loop; returns
/// (operations, failures, operations/s). The first call of each thread is untimed.
fn rate(
    threads: usize,
    secs: f64,
    op: &(dyn Fn() -> Result<(), String> + Sync),
) -> (u64, u64, f64) {
    let barrier = Barrier::new(threads);
    let (ops, failures) = (AtomicU64::new(0), AtomicU64::new(0));
    let longest = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let _ = op();
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed().as_secs_f64() < secs {
                        match op() {
                            Ok(()) => ops.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                                    println!("    reference operation FAILED: {e}");
                                }
                                0
                            }
                        };
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a measuring thread"))
            .max()
            .unwrap_or_default()
    });
    let ops = ops.into_inner();
    (
        ops,
        failures.into_inner(),
        ops as f64 / longest.as_secs_f64().max(1e-9),
    )
}

/// The custody core's own rates (signatures/s of Alice, decryptions/s of Bob).
#[derive(Clone, Copy, Default)]
struct Reference {
    signatures: f64,
    decryptions: f64,
    failures: u64,
    operations: u64,
}

impl Reference {
    /// Round trips per second the custody core allows.
    fn limit(&self) -> f64 {
        1.0 / (SIGNATURES_PER_ROUND_TRIP / self.signatures.max(1e-9)
            + DECRYPTIONS_PER_ROUND_TRIP / self.decryptions.max(1e-9))
    }

    fn mean(a: Reference, b: Reference) -> Reference {
        Reference {
            signatures: (a.signatures + b.signatures) / 2.0,
            decryptions: (a.decryptions + b.decryptions) / 2.0,
            failures: a.failures + b.failures,
            operations: a.operations + b.operations,
        }
    }
}

/// What the reference runs: Alice's authentication key and Bob's ETK key, each through
/// the core as the API's client uses it, and a blob for Bob's key.
struct Custody {
    alice: etee_hsm::CustodyKeys,
    bob: etee_hsm::CustodyKeys,
    bob_etk: KeyId,
    blob: Vec<u8>,
    secret: [u8; 16],
}

impl Custody {
    fn new(alice: &Appliance, bob: &Appliance) -> Custody {
        let alice = alice.custody_for(CLIENT).expect("Alice's custody core");
        let bob = bob.custody_for(CLIENT).expect("Bob's custody core");
        let ring = bob.key_ring().expect("Bob's ETK keys");
        let key = ring
            .keys()
            .first()
            .expect("Bob's token holds an ETK key")
            .clone();
        let cert = key
            .cert
            .as_ref()
            .expect("Bob's ETK key has its certificate");
        let x509 = openssl::x509::X509::from_der(cert.der()).expect("Bob's ETK certificate");
        let public = x509.public_key().expect("Bob's ETK public key");
        let mut secret = [0u8; 16];
        openssl::rand::rand_bytes(&mut secret).expect("random bytes");
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&public).expect("a key context");
        ctx.encrypt_init().expect("RSA encryption");
        ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1)
            .expect("PKCS#1 v1.5 padding");
        let mut blob = Vec::new();
        ctx.encrypt_to_vec(&secret, &mut blob)
            .expect("encrypting to Bob's ETK");
        Custody {
            alice,
            bob,
            bob_etk: key.key.clone(),
            blob,
            secret,
        }
    }

    fn sign(&self) -> Result<(), String> {
        let digest = [7u8; 32];
        self.alice
            .sign_pss_sha256(&KeyId("authentication".into()), &digest)
            .map(|_| ())
            .map_err(|e| format!("sign: {e}"))
    }

    fn decrypt(&self) -> Result<(), String> {
        let plain = self
            .bob
            .decrypt_pkcs1v15(&self.bob_etk, &self.blob)
            .map_err(|e| format!("decrypt: {e}"))?;
        if plain[..] == self.secret {
            Ok(())
        } else {
            Err("decrypt: not the secret encrypted".into())
        }
    }

    fn measure(&self, threads: usize) -> Reference {
        let (s_ops, s_fail, signatures) = rate(threads, REFERENCE_SECONDS, &|| self.sign());
        let (d_ops, d_fail, decryptions) = rate(threads, REFERENCE_SECONDS, &|| self.decrypt());
        Reference {
            signatures,
            decryptions,
            failures: s_fail + d_fail,
            operations: s_ops + d_ops,
        }
    }
}

/// Deterministic, varied content (splitmix64): the `i`-th chunk of stream `seed`.
fn fill(buf: &mut [u8], seed: u64, i: u64) {
    let mut x = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for word in buf.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
    }
}

// ---- round trips ---------------------------------------------------------------------------

/// What the round trips did.
#[derive(Default)]
struct RoundTrips {
    planned: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    /// In flight when the time limit came (abandoned).
    cut_off: usize,
    /// Never started because of the time limit.
    not_sent: usize,
    elapsed: Duration,
    round_trip: Vec<Duration>,
    seal: Vec<Duration>,
    unseal: Vec<Duration>,
}

impl RoundTrips {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: RoundTrips) {
        self.ok += other.ok;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.cut_off += other.cut_off;
        self.not_sent += other.not_sent;
        self.round_trip.extend(other.round_trip);
        self.seal.extend(other.seal);
        self.unseal.extend(other.unseal);
    }

    fn describe(&self, name: &str) {
        let mut rt = self.round_trip.clone();
        let [p50, p99, max] = latencies(&mut rt);
        println!(
            "  {name}: {} of {} ok in {:.2} s, {:.1}/s, p50 {} ms, p99 {} ms, max {} ms",
            self.ok,
            self.planned,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            ms(p50),
            ms(p99),
            ms(max)
        );
        for (kind, n) in &self.errors {
            println!("    ERROR ×{n}: {kind}");
        }
        if self.cut_off + self.not_sent > 0 {
            println!(
                "    TIME LIMIT reached: the run stopped early ({} in flight abandoned, {} not \
                 started)",
                self.cut_off, self.not_sent
            );
        }
    }
}

/// The problem title (or the fatal of a verdict) of an answer's JSON body, for grouping
/// errors by kind.
fn kind_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    for key in ["title", "fatal"] {
        if let Some(s) = v[key].as_str() {
            return s.to_string();
        }
    }
    if let Some(e) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        return Value::Array(e.clone()).to_string();
    }
    "no JSON detail".into()
}

/// A failure of one exchange: its kind, and whether the connection must be replaced.
struct Failure {
    kind: String,
    reconnect: bool,
}

impl Failure {
    fn answer(kind: String) -> Self {
        Failure {
            kind,
            reconnect: false,
        }
    }

    fn exchange(what: &str, e: std::io::Error) -> Self {
        Failure {
            kind: format!("{what}: exchange failed: {e}"),
            reconnect: true,
        }
    }
}

async fn seal_once(client: &mut UnixClient, content: Bytes) -> Result<Bytes, Failure> {
    let a = client
        .call("POST", TO_BOB, content, false)
        .await
        .map_err(|e| Failure::exchange("seal", e))?;
    if a.status != 200 {
        return Err(Failure::answer(format!(
            "seal: status {} {}",
            a.status,
            kind_of(&a.body)
        )));
    }
    Ok(a.body)
}

async fn unseal_once(client: &mut UnixClient, sealed: Bytes) -> Result<Bytes, Failure> {
    let a = client
        .call("POST", "/v1/unseal", sealed, false)
        .await
        .map_err(|e| Failure::exchange("unseal", e))?;
    if a.status != 200 {
        return Err(Failure::answer(format!(
            "unseal: status {} {}",
            a.status,
            kind_of(&a.body)
        )));
    }
    let verdict: Value = a
        .header("etee-verdict")
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or(Value::Null);
    let no_errors = matches!(verdict["errors"].as_array(), Some(e) if e.is_empty());
    if !verdict["fatal"].is_null() || !no_errors {
        return Err(Failure::answer(format!(
            "unseal: 200 without a clean etee-verdict header: {verdict}"
        )));
    }
    Ok(a.body)
}

/// One worker's connections (replaced after a failed exchange).
struct Connections {
    alice: PathBuf,
    bob: PathBuf,
    seal: Option<UnixClient>,
    unseal: Option<UnixClient>,
}

impl Connections {
    async fn connect(path: &Path, slot: &mut Option<UnixClient>) -> Result<(), Failure> {
        if slot.is_none() {
            *slot = Some(UnixClient::connect(path).await.map_err(|e| Failure {
                kind: format!("connecting to {}: {e}", path.display()),
                reconnect: true,
            })?);
        }
        Ok(())
    }

    /// One round trip: (seal time, unseal time).
    async fn round_trip(&mut self, content: Bytes) -> Result<(Duration, Duration), Failure> {
        Self::connect(&self.alice, &mut self.seal).await?;
        Self::connect(&self.bob, &mut self.unseal).await?;
        let t0 = Instant::now();
        let client = self.seal.as_mut().expect("connected above");
        let sealed = match seal_once(client, content.clone()).await {
            Ok(s) => s,
            Err(f) => {
                if f.reconnect {
                    self.seal = None;
                }
                return Err(f);
            }
        };
        let t1 = Instant::now();
        let client = self.unseal.as_mut().expect("connected above");
        let opened = match unseal_once(client, sealed).await {
            Ok(o) => o,
            Err(f) => {
                if f.reconnect {
                    self.unseal = None;
                }
                return Err(f);
            }
        };
        let t2 = Instant::now();
        if opened != content {
            return Err(Failure::answer(
                "unseal: the content differs from what was sealed".into(),
            ));
        }
        Ok((t1 - t0, t2 - t1))
    }
}

fn small_content(i: u64) -> Bytes {
    let mut c = vec![0u8; SMALL];
    fill(&mut c, 0x5eed, i);
    Bytes::from(c)
}

/// `requests` round trips through the API by `concurrency` workers, each with its own
/// kept-alive connections to both sockets (connected and warmed up by one untimed round
/// trip before the clock starts); stops at `time_limit`.
async fn api_round_trips(
    alice: &Path,
    bob: &Path,
    requests: usize,
    concurrency: usize,
    time_limit: Duration,
) -> RoundTrips {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (next, barrier) = (next.clone(), barrier.clone());
        let mut c = Connections {
            alice: alice.to_path_buf(),
            bob: bob.to_path_buf(),
            seal: None,
            unseal: None,
        };
        workers.push(tokio::spawn(async move {
            let mut report = RoundTrips::default();
            // Warm-up, untimed: connections, Alice's ETK cache (Bob's ETK from ETKDepot).
            if let Err(f) = c.round_trip(small_content(u64::MAX - w as u64)).await {
                *report
                    .errors
                    .entry(format!("warm-up: {}", f.kind))
                    .or_default() += 1;
            }
            barrier.wait().await;
            // The clock starts when every worker is connected and warmed up.
            let deadline = tokio::time::Instant::now() + time_limit;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    report.not_sent += 1;
                    continue;
                }
                let t = Instant::now();
                match tokio::time::timeout_at(deadline, c.round_trip(small_content(i as u64))).await
                {
                    Err(_) => {
                        report.cut_off += 1;
                        // The exchanges under way are abandoned with their connections.
                        c.seal = None;
                        c.unseal = None;
                    }
                    Ok(Ok((seal, unseal))) => {
                        report.ok += 1;
                        report.round_trip.push(t.elapsed());
                        report.seal.push(seal);
                        report.unseal.push(unseal);
                    }
                    Ok(Err(f)) => *report.errors.entry(f.kind).or_default() += 1,
                }
            }
            report
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut total = RoundTrips {
        planned: requests,
        ..Default::default()
    };
    for w in workers {
        total.merge(w.await.expect("a round-trip worker"));
    }
    total.elapsed = start.elapsed();
    total
}

/// The same round trips through `Appliance::seal` and `Appliance::unseal` in process (the
/// service without HTTP and sockets), `concurrency` tasks on the appliances' runtime.
async fn service_round_trips(
    alice: Arc<Appliance>,
    bob: Arc<Appliance>,
    requests: usize,
    concurrency: usize,
) -> RoundTrips {
    let peer = Peer::Unix {
        uid: nix::unistd::getuid().as_raw(),
        pid: Some(std::process::id() as i32),
    };
    let sealer = alice
        .authorise(&peer, Operation::Seal)
        .expect("the bench may seal at Alice's");
    let opener = bob
        .authorise(&peer, Operation::Unseal)
        .expect("the bench may unseal at Bob's");
    let request = SealRequest {
        to: vec![Identifier::new("NIHII-PHARMACY", "27150201", None)],
        ..Default::default()
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (alice, bob, sealer, opener, request, next) = (
            alice.clone(),
            bob.clone(),
            sealer.clone(),
            opener.clone(),
            request.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut report = RoundTrips::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let content = small_content(i as u64);
                let t0 = Instant::now();
                let outcome = async {
                    // Each operation in one of the client's slots, as the API takes it.
                    let sealer = alice
                        .take_slot(sealer.clone())
                        .await
                        .map_err(|e| format!("Appliance::take_slot: {}", e.code()))?;
                    let sealed = alice
                        .seal(
                            &sealer,
                            request.clone(),
                            std::io::Cursor::new(content.clone()),
                            None,
                        )
                        .await
                        .map_err(|e| format!("Appliance::seal: {}", e.code()))?;
                    let message = read_spool(sealed.message).await?;
                    let t1 = Instant::now();
                    let opener = bob
                        .take_slot(opener.clone())
                        .await
                        .map_err(|e| format!("Appliance::take_slot: {}", e.code()))?;
                    let opened = bob
                        .unseal(&opener, std::io::Cursor::new(message))
                        .await
                        .map_err(|e| format!("Appliance::unseal: {}", e.code()))?;
                    let spool = opened.content.ok_or_else(|| {
                        format!(
                            "Appliance::unseal: not clean: {}",
                            etee_appliance::report::unseal_report(&opened.unsealed)
                        )
                    })?;
                    let got = read_spool(spool).await?;
                    let t2 = Instant::now();
                    if got != content {
                        return Err("Appliance::unseal: the content differs".to_string());
                    }
                    Ok((t1 - t0, t2 - t1))
                }
                .await;
                match outcome {
                    Ok((seal, unseal)) => {
                        report.ok += 1;
                        report.round_trip.push(t0.elapsed());
                        report.seal.push(seal);
                        report.unseal.push(unseal);
                    }
                    Err(kind) => *report.errors.entry(kind).or_default() += 1,
                }
            }
            report
        }));
    }
    let mut total = RoundTrips {
        planned: requests,
        ..Default::default()
    };
    for t in tasks {
        total.merge(t.await.expect("an in-process task"));
    }
    total.elapsed = start.elapsed();
    total
}

/// A spool's bytes (read on the blocking pool, as the API does).
async fn read_spool(mut spool: etee_appliance::spool::SpoolReader) -> Result<Vec<u8>, String> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        spool.read_to_end(&mut out).map(|_| out)
    })
    .await
    .map_err(|e| format!("reading a spool: {e}"))?
    .map_err(|e| format!("reading a spool: {e}"))
}

// ---- the large message ---------------------------------------------------------------------

/// Seed of the large message's content.
const LARGE_SEED: u64 = 0x1a26e;

/// The large message's content, chunk by chunk as the client sends it, hashed (untimed:
/// the expected SHA-256, so that the timed stream only generates).
fn large_sha256(total: u64) -> [u8; 32] {
    let mut hasher = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < total {
        let n = CHUNK.min((total - offset) as usize);
        fill(&mut buf[..n], LARGE_SEED, offset / CHUNK as u64);
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hasher.finish()
}

/// The large message's content as a streamed request body: chunks generated on the fly,
/// never held in memory beyond the one being sent.
fn large_body(total: u64) -> BoxBody {
    let stream = futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let n = CHUNK.min((total - offset) as usize);
        let mut buf = vec![0u8; n];
        fill(&mut buf, LARGE_SEED, offset / CHUNK as u64);
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(buf))),
            offset + n as u64,
        ))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// A file as a streamed request body.
async fn file_body(path: &Path) -> std::io::Result<BoxBody> {
    let file = tokio::fs::File::open(path).await?;
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(|r| r.map(Frame::data));
    Ok(StreamBody::new(stream).boxed_unsync())
}

fn post(path: &str, body: BoxBody) -> Request<BoxBody> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header(hyper::header::HOST, "appliance")
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .expect("a well-formed request")
}

/// The answer's status when 200, else an error with its (small) JSON detail.
async fn expect_ok(what: &str, response: Response<Incoming>) -> Result<Response<Incoming>, String> {
    if response.status() == 200 {
        return Ok(response);
    }
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(format!(
        "{what}: status {status}: {}",
        String::from_utf8_lossy(&body)
    ))
}

/// What the large message did.
#[derive(Default)]
struct Large {
    mib: usize,
    sealed_bytes: u64,
    seal: Duration,
    unseal: Duration,
    content_bytes: u64,
    sha256_matches: bool,
    error: Option<String>,
}

impl Large {
    fn seal_mib_s(&self) -> f64 {
        self.mib as f64 / self.seal.as_secs_f64().max(1e-9)
    }

    fn unseal_mib_s(&self) -> f64 {
        self.mib as f64 / self.unseal.as_secs_f64().max(1e-9)
    }
}

/// Seals `mib` MiB of generated content at Alice's socket (the sealed answer streamed to
/// `sealed_file`), then unseals that file at Bob's socket (the content streamed back,
/// counted and hashed, never collected).
async fn large_message(alice: &Path, bob: &Path, mib: usize, sealed_file: &Path) -> Large {
    let total = (mib as u64) << 20;
    let expected = large_sha256(total);
    let mut large = Large {
        mib,
        ..Default::default()
    };
    let outcome = async {
        let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
        let mut client: UnixClient<BoxBody> = UnixClient::connect(alice).await.map_err(io("connecting to Alice"))?;
        let t0 = Instant::now();
        let response = client
            .send(post(TO_BOB, large_body(total)))
            .await
            .map_err(io("seal"))?;
        let response = expect_ok("seal", response).await?;
        let file = tokio::fs::File::create(sealed_file).await.map_err(io("the sealed file"))?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("seal: reading the answer: {e}"))?;
            if let Ok(data) = frame.into_data() {
                large.sealed_bytes += data.len() as u64;
                file.write_all(&data).await.map_err(io("writing the sealed file"))?;
            }
        }
        file.flush().await.map_err(io("writing the sealed file"))?;
        drop(file);
        large.seal = t0.elapsed();
        println!(
            "  seal: {mib} MiB in {:.2} s ({:.1} MiB/s), sealed message {:.1} MiB",
            large.seal.as_secs_f64(),
            large.seal_mib_s(),
            large.sealed_bytes as f64 / (1 << 20) as f64
        );

        let mut client: UnixClient<BoxBody> = UnixClient::connect(bob).await.map_err(io("connecting to Bob"))?;
        let t0 = Instant::now();
        let body = file_body(sealed_file).await.map_err(io("the sealed file"))?;
        let response = client
            .send(post("/v1/unseal", body))
            .await
            .map_err(io("unseal"))?;
        let response = expect_ok("unseal", response).await?;
        let verdict = response
            .headers()
            .get("etee-verdict")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let v: Value = serde_json::from_str(&verdict).unwrap_or(Value::Null);
        let clean = v["fatal"].is_null() && matches!(v["errors"].as_array(), Some(e) if e.is_empty());
        let mut hasher = openssl::sha::Sha256::new();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("unseal: reading the answer: {e}"))?;
            if let Ok(data) = frame.into_data() {
                large.content_bytes += data.len() as u64;
                hasher.update(&data);
            }
        }
        large.unseal = t0.elapsed();
        large.sha256_matches = hasher.finish() == expected && large.content_bytes == total;
        println!(
            "  unseal: {mib} MiB in {:.2} s ({:.1} MiB/s), content {} bytes, SHA-256 {}; verdict {}",
            large.unseal.as_secs_f64(),
            large.unseal_mib_s(),
            large.content_bytes,
            if large.sha256_matches { "matches" } else { "DIFFERS" },
            if clean { "clean".to_string() } else { verdict }
        );
        Ok::<_, String>(())
    }
    .await;
    if let Err(e) = outcome {
        println!("  large message FAILED: {e}");
        large.error = Some(e);
    } else if !large.sha256_matches {
        large.error = Some("the unsealed content differs from the generated content".into());
    }
    let _ = std::fs::remove_file(sealed_file);
    large
}

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[derive(Clone, Copy, Default)]
struct Memory {
    hwm: Option<f64>,
    rss: Option<f64>,
}

fn memory() -> Memory {
    Memory {
        hwm: status_mib("VmHWM"),
        rss: status_mib("VmRSS"),
    }
}

fn mib_text(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.0} MiB"))
}

/// OpenSSL's single-thread rates, MiB/s, for scale: AES-128-CBC encryption (the seal's
/// content cipher), AES-128-CTR (the spools'), SHA-256 (the signatures' digests).
fn openssl_rates() -> (f64, f64, f64) {
    use openssl::symm::{Cipher, Crypter, Mode};
    let mut buf = vec![0u8; CHUNK];
    fill(&mut buf, 3, 0);
    let mut out = vec![0u8; CHUNK + 32];
    let rounds = OPENSSL_MIB * (1 << 20) / CHUNK;
    let mut cipher_rate = |cipher: Cipher| {
        let mut c = Crypter::new(cipher, Mode::Encrypt, &[1u8; 16], Some(&[2u8; 16]))
            .expect("an OpenSSL cipher");
        let t = Instant::now();
        for _ in 0..rounds {
            c.update(&buf, &mut out).expect("encrypting");
        }
        c.finalize(&mut out).expect("encrypting");
        OPENSSL_MIB as f64 / t.elapsed().as_secs_f64()
    };
    let cbc = cipher_rate(Cipher::aes_128_cbc());
    let ctr = cipher_rate(Cipher::aes_128_ctr());
    let t = Instant::now();
    let mut h = openssl::sha::Sha256::new();
    for _ in 0..rounds {
        h.update(&buf);
    }
    std::hint::black_box(h.finish());
    let sha = OPENSSL_MIB as f64 / t.elapsed().as_secs_f64();
    (cbc, ctr, sha)
}

// ---- the run -------------------------------------------------------------------------------

/// One row of the summary.
struct Row {
    name: String,
    done: String,
    errors: usize,
    rate: String,
    p50: String,
    p99: String,
    note: String,
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("api: bench");
        return;
    }
    let s = Settings {
        requests: env_number("ETEE_BENCH_REQUESTS", 3000),
        concurrency: env_number("ETEE_BENCH_CONCURRENCY", 4 * cores()),
        time_limit: Duration::from_secs_f64(env_number("ETEE_BENCH_SECONDS", 120.0)),
        large_mib: env_number("ETEE_BENCH_LARGE_MIB", 256),
    };
    let module = etee_e2e::softhsm_module();
    if !module.exists() {
        println!(
            "skipping the appliance benchmark: SoftHSM2 is missing ({}). Run `bash \
             hsm-config/setup.sh` or set SOFTHSM2_MODULE.",
            module.display()
        );
        return;
    }
    // The `etee` binary first (cargo builds it when needed), outside the setup's time.
    let building = Instant::now();
    let bin = etee_e2e::etee_bin();
    println!(
        "etee binary {} ready in {:.1} s",
        bin.display(),
        building.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let parent = std::env::var_os("ETEE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_tmp.clone());
    std::fs::create_dir_all(&parent).expect("the world's parent directory");
    let world = tempfile::Builder::new()
        .prefix("bench-appliance-")
        .tempdir_in(&parent)
        .expect("a temporary directory for the world");
    let dir = world.path().to_path_buf();
    // A Unix socket's path must fit in sockaddr_un (108 bytes with the final NUL).
    assert!(
        dir.join("alice.sock").as_os_str().len() < 100,
        "{} is too long a path for the appliances' sockets: set ETEE_BENCH_DIR to a shorter \
         directory",
        dir.display()
    );
    println!(
        "etee appliance API benchmark: {} CPU(s), {} round trips of {SMALL} bytes × {} clients, \
         time limit {:.0} s, large message {} MiB; world in {}",
        cores(),
        s.requests,
        s.concurrency,
        s.time_limit.as_secs_f64(),
        s.large_mib,
        dir.display()
    );

    // 1. The world.
    let demo = Command::new(bin)
        .arg("demo")
        .arg("--keep")
        .arg(&dir)
        .arg("--setup-only")
        .stdin(Stdio::null())
        .output()
        .expect("running `etee demo --setup-only`");
    assert!(
        demo.status.success(),
        "`etee demo --keep {} --setup-only` failed ({}):\n{}\n{}",
        dir.display(),
        demo.status,
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );
    std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
    for name in ["alice", "bob"] {
        budget_out_of_reach(&dir.join(format!("{name}-hsm.toml")));
        without_ocsp(&dir.join(format!("{name}-appliance.toml")));
    }
    let platform = PlatformChild::start(&dir);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("appliances")
        .build()
        .expect("the appliances' runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("the clients' runtime");
    let alice = open_appliance(&server_rt, dir.join("alice-appliance.toml"));
    let bob = open_appliance(&server_rt, dir.join("bob-appliance.toml"));
    let alice_running = server_rt
        .block_on(etee_appliance::server::start(alice.clone()))
        .expect("serving Alice's appliance");
    let bob_running = server_rt
        .block_on(etee_appliance::server::start(bob.clone()))
        .expect("serving Bob's appliance");
    let alice_sock = alice_running.socket.clone().expect("Alice's socket");
    let bob_sock = bob_running.socket.clone().expect("Bob's socket");
    println!(
        "setup (etee demo --setup-only, platform, two appliances): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 2. and 3. The reference, the round trips through the API, the reference again (the
    // limit is the mean of before and after: a drifting machine affects both sides alike).
    println!();
    println!(
        "1 KiB round trips (seal at Alice's, unseal at Bob's), c = {}",
        s.concurrency
    );
    let custody = Custody::new(&alice, &bob);
    let before = custody.measure(s.concurrency);
    println!(
        "  custody core before: {:.0} signatures/s (Alice), {:.0} decryptions/s (Bob), limit {:.1} round trips/s",
        before.signatures,
        before.decryptions,
        before.limit()
    );
    let audit = |a: &Appliance| {
        let snap = a.snapshot();
        // The bench runs the cores in process: both figures are known.
        (
            snap.custody_audit_sequence.unwrap_or(0),
            snap.custody_audit_syncs.unwrap_or(0),
        )
    };
    let (a0, b0) = (audit(&alice), audit(&bob));
    let api = client_rt.block_on(api_round_trips(
        &alice_sock,
        &bob_sock,
        s.requests,
        s.concurrency,
        s.time_limit,
    ));
    let (a1, b1) = (audit(&alice), audit(&bob));
    api.describe("through the API");
    println!(
        "    audit records | syncs during the run (warm-up included): Alice {} | {}, Bob {} | {}",
        a1.0 - a0.0,
        a1.1 - a0.1,
        b1.0 - b0.0,
        b1.1 - b0.1
    );
    let after = custody.measure(s.concurrency);
    println!(
        "  custody core after: {:.0} signatures/s (Alice), {:.0} decryptions/s (Bob), limit {:.1} round trips/s",
        after.signatures,
        after.decryptions,
        after.limit()
    );
    let reference = Reference::mean(before, after);
    let limit = reference.limit();
    let service = server_rt.block_on(service_round_trips(
        alice.clone(),
        bob.clone(),
        s.requests,
        s.concurrency,
    ));
    service.describe("in process (Appliance::seal + unseal, no HTTP)");
    let ratio = api.per_second() / limit;
    let api_met = ratio >= TARGET && api.error_count() == 0 && api.ok == api.planned;
    println!(
        "  ratio to the custody-bound limit: {ratio:.2} (target ≥ {TARGET}: {})",
        met(api_met)
    );

    // 4. The large message.
    println!();
    println!("large message: {} MiB", s.large_mib);
    let (aes_cbc, aes_ctr, sha256) = openssl_rates();
    println!(
        "  OpenSSL, 1 thread, {OPENSSL_MIB} MiB each: AES-128-CBC encrypt {aes_cbc:.0} MiB/s, \
         AES-128-CTR {aes_ctr:.0} MiB/s, SHA-256 {sha256:.0} MiB/s"
    );
    let mem_before = memory();
    // Writing 5 to clear_refs resets the high-water mark to the current RSS (Linux ≥ 4.0),
    // so that the mark after is the large message's own peak.
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let mem_reset = memory();
    let large = client_rt.block_on(large_message(
        &alice_sock,
        &bob_sock,
        s.large_mib,
        &dir.join("large.sealed"),
    ));
    let mem_after = memory();
    println!(
        "  memory of this process (the appliances AND the bench client): before VmHWM {} \
         VmRSS {}; {}; after VmHWM {} VmRSS {}",
        mib_text(mem_before.hwm),
        mib_text(mem_before.rss),
        if hwm_reset {
            format!("high-water mark reset to {}", mib_text(mem_reset.hwm))
        } else {
            "high-water mark NOT reset (clear_refs refused): it covers the whole run".into()
        },
        mib_text(mem_after.hwm),
        mib_text(mem_after.rss)
    );

    // 5. The summary.
    let mut rt = api.round_trip.clone();
    let mut seal = api.seal.clone();
    let mut unseal = api.unseal.clone();
    let (lrt, lseal, lunseal) = (
        latencies(&mut rt),
        latencies(&mut seal),
        latencies(&mut unseal),
    );
    let mut srt = service.round_trip.clone();
    let lsrt = latencies(&mut srt);
    let c = s.concurrency;
    let failures = |n: u64| {
        if n > 0 {
            format!(", {n} FAILED")
        } else {
            String::new()
        }
    };
    let rows = vec![
        Row {
            name: format!("custody signatures, Alice ({c} thr)"),
            done: "".into(),
            errors: 0,
            rate: format!("{:.0} ops/s", reference.signatures),
            p50: "-".into(),
            p99: "-".into(),
            note: format!(
                "reference (mean of {:.0} before, {:.0} after)",
                before.signatures, after.signatures
            ),
        },
        Row {
            name: format!("custody decryptions, Bob ({c} thr)"),
            done: "".into(),
            errors: 0,
            rate: format!("{:.0} ops/s", reference.decryptions),
            p50: "-".into(),
            p99: "-".into(),
            note: format!(
                "reference (mean of {:.0} before, {:.0} after)",
                before.decryptions, after.decryptions
            ),
        },
        Row {
            name: "custody-bound limit L = 1/(2/S + 1/D)".into(),
            done: reference.operations.to_string(),
            errors: reference.failures as usize,
            rate: format!("{limit:.1} rt/s"),
            p50: "-".into(),
            p99: "-".into(),
            note: format!(
                "reference ({} private ops measured){}",
                reference.operations,
                failures(reference.failures)
            ),
        },
        Row {
            name: format!("1 KiB round trip via the API (c={c})"),
            done: format!("{}/{}", api.ok, api.planned),
            errors: api.error_count(),
            rate: format!("{:.1} rt/s", api.per_second()),
            p50: ms(lrt[0]),
            p99: ms(lrt[1]),
            note: format!("{ratio:.2} of L; ≥ {TARGET} {}", met(api_met)),
        },
        Row {
            name: "  of which seal (Alice's socket)".into(),
            done: "".into(),
            errors: 0,
            rate: "".into(),
            p50: ms(lseal[0]),
            p99: ms(lseal[1]),
            note: "".into(),
        },
        Row {
            name: "  of which unseal (Bob's socket)".into(),
            done: "".into(),
            errors: 0,
            rate: "".into(),
            p50: ms(lunseal[0]),
            p99: ms(lunseal[1]),
            note: "".into(),
        },
        Row {
            name: format!("1 KiB round trip in process (c={c})"),
            done: format!("{}/{}", service.ok, service.planned),
            errors: service.error_count(),
            rate: format!("{:.1} rt/s", service.per_second()),
            p50: ms(lsrt[0]),
            p99: ms(lsrt[1]),
            note: format!(
                "{:.2} of L (no HTTP; diagnostic)",
                service.per_second() / limit
            ),
        },
        Row {
            name: format!("large seal, {} MiB streamed", s.large_mib),
            done: if large.seal > Duration::ZERO {
                "1/1".into()
            } else {
                "0/1".into()
            },
            errors: usize::from(large.error.is_some()),
            rate: format!("{:.1} MiB/s", large.seal_mib_s()),
            p50: "-".into(),
            p99: "-".into(),
            note: format!(
                "{:.2} of OpenSSL AES-128-CBC (1 thread)",
                large.seal_mib_s() / aes_cbc
            ),
        },
        Row {
            name: format!("large unseal, {} MiB streamed", s.large_mib),
            done: if large.sha256_matches {
                "1/1".into()
            } else {
                "0/1".into()
            },
            errors: usize::from(large.error.is_some()),
            rate: format!("{:.1} MiB/s", large.unseal_mib_s()),
            p50: "-".into(),
            p99: "-".into(),
            note: format!(
                "SHA-256 {}",
                if large.sha256_matches {
                    "matches"
                } else {
                    "DIFFERS"
                }
            ),
        },
        Row {
            name: "peak RSS during the large message".into(),
            done: "".into(),
            errors: 0,
            rate: mib_text(mem_after.hwm),
            p50: "-".into(),
            p99: "-".into(),
            note: format!(
                "VmHWM of the process: appliances + bench client{}",
                if hwm_reset { "" } else { " (whole run)" }
            ),
        },
        Row {
            name: "OpenSSL AES-128-CBC encrypt (1 thr)".into(),
            done: "".into(),
            errors: 0,
            rate: format!("{aes_cbc:.0} MiB/s"),
            p50: "-".into(),
            p99: "-".into(),
            note: "scale".into(),
        },
        Row {
            name: "OpenSSL SHA-256 (1 thr)".into(),
            done: "".into(),
            errors: 0,
            rate: format!("{sha256:.0} MiB/s"),
            p50: "-".into(),
            p99: "-".into(),
            note: "scale".into(),
        },
    ];
    println!();
    println!(
        "{:<40} {:>9} {:>6} {:>13} {:>8} {:>8}  note",
        "figure", "done", "errors", "rate", "p50 ms", "p99 ms"
    );
    for r in &rows {
        println!(
            "{:<40} {:>9} {:>6} {:>13} {:>8} {:>8}  {}",
            r.name, r.done, r.errors, r.rate, r.p50, r.p99, r.note
        );
    }
    let total_time = started.elapsed();
    println!("total time {:.1} s", total_time.as_secs_f64());

    let figures = json!({
        "bench": "etee-appliance api",
        "cores": cores(),
        "settings": {
            "requests": s.requests,
            "concurrency": s.concurrency,
            "time_limit_s": s.time_limit.as_secs_f64(),
            "large_mib": s.large_mib,
            "world": dir.display().to_string(),
        },
        "reference": {
            "signatures_per_s": reference.signatures,
            "decryptions_per_s": reference.decryptions,
            "before": {"signatures_per_s": before.signatures, "decryptions_per_s": before.decryptions},
            "after": {"signatures_per_s": after.signatures, "decryptions_per_s": after.decryptions},
            "failures": reference.failures,
            "limit_round_trips_per_s": limit,
        },
        "api_round_trips": {
            "planned": api.planned,
            "ok": api.ok,
            "errors": api.errors,
            "cut_off": api.cut_off,
            "not_sent": api.not_sent,
            "elapsed_s": api.elapsed.as_secs_f64(),
            "per_s": api.per_second(),
            "round_trip_ms": {"p50": ms_value(lrt[0]), "p99": ms_value(lrt[1]), "max": ms_value(lrt[2])},
            "seal_ms": {"p50": ms_value(lseal[0]), "p99": ms_value(lseal[1]), "max": ms_value(lseal[2])},
            "unseal_ms": {"p50": ms_value(lunseal[0]), "p99": ms_value(lunseal[1]), "max": ms_value(lunseal[2])},
            "ratio_to_limit": ratio,
            "target": TARGET,
            "target_met": api_met,
            "audit": {
                "alice_records": a1.0 - a0.0, "alice_syncs": a1.1 - a0.1,
                "bob_records": b1.0 - b0.0, "bob_syncs": b1.1 - b0.1,
            },
        },
        "in_process_round_trips": {
            "ok": service.ok,
            "errors": service.errors,
            "per_s": service.per_second(),
            "ratio_to_limit": service.per_second() / limit,
            "round_trip_ms": {"p50": ms_value(lsrt[0]), "p99": ms_value(lsrt[1]), "max": ms_value(lsrt[2])},
        },
        "large_message": {
            "mib": large.mib,
            "sealed_bytes": large.sealed_bytes,
            "seal_s": large.seal.as_secs_f64(),
            "seal_mib_per_s": large.seal_mib_s(),
            "unseal_s": large.unseal.as_secs_f64(),
            "unseal_mib_per_s": large.unseal_mib_s(),
            "content_bytes": large.content_bytes,
            "sha256_matches": large.sha256_matches,
            "error": large.error,
            "memory_mib": {
                "note": "this process: the two appliances and the bench client",
                "before": {"VmHWM": mem_before.hwm, "VmRSS": mem_before.rss},
                "hwm_reset": hwm_reset,
                "after_reset": {"VmHWM": mem_reset.hwm, "VmRSS": mem_reset.rss},
                "after": {"VmHWM": mem_after.hwm, "VmRSS": mem_after.rss},
            },
            "seal_ratio_to_aes_128_cbc": large.seal_mib_s() / aes_cbc,
        },
        "openssl_mib_per_s": {"aes_128_cbc_encrypt": aes_cbc, "aes_128_ctr": aes_ctr, "sha256": sha256},
        "total_s": total_time.as_secs_f64(),
    });
    // <target>/bench-appliance.json (CARGO_TARGET_TMPDIR is <target>/tmp).
    let json_path = target_tmp.parent().map_or_else(
        || dir.join("bench-appliance.json"),
        |t| t.join("bench-appliance.json"),
    );
    match std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&figures).expect("the figures as JSON"),
    ) {
        Ok(()) => println!("figures written to {}", json_path.display()),
        Err(e) => println!("could not write {}: {e}", json_path.display()),
    }
    let _ = std::io::stdout().flush();

    // Stop the servers, the platform; the world goes with `world`.
    server_rt.block_on(async {
        alice_running.stop().await;
        bob_running.stop().await;
    });
    drop(custody);
    drop((alice, bob));
    drop(platform);
    drop(world);
}
