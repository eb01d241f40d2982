//! The bounded load test of the platform services (issue 4), on loopback, in one run:
//!
//! a. ETKDepot: `GET /etee/v1/etks` (REST) and `GetEtk` (SOAP) against the real server
//!    (`server::start`, TLS on 127.0.0.1) with an embedded store in a temporary directory,
//!    beside two references measured in the same run: the store lookup itself
//!    (`etkdepot::lookup`, no network) and the bare HTTPS round trip (`GET /health`);
//! b. KGSS `GetKey` (REST) with KGSS's keys in a SoftHSM2 token made for the run, used
//!    through the custody core (durable audit), against the HSM-bound limit measured in
//!    the same run on the same core: RSA private operations per second ÷ 3 (a `GetKey`
//!    costs one decryption to open the request and two signatures to seal the answer).
//!
//! `cargo bench -p etee-platform --bench load`. Environment: ETEE_LOAD_REQUESTS (ETK
//! lookups per figure, default 20 000), ETEE_LOAD_CONCURRENCY (ETK workers, default twice
//! the cores), ETEE_LOAD_KGSS_REQUESTS (GetKeys per figure, default 1 000),
//! ETEE_LOAD_SECONDS (time limit of each figure, default 60), ETEE_LOAD_DIR (where the
//! store, the token and the audit file go; default the target directory's disk),
//! SOFTHSM2_MODULE (default the Debian path; part b is skipped without it). See
//! docs/benchmarks-platform.md.

use base64::Engine as _;
use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::keys::{KeyRing, SigningKey};
use etee_formats::keystore::{ehealth_entries, write_pfx, EhealthKeystore, PfxEntry, Profile};
use etee_formats::trust::TrustAnchors;
use etee_platform::client::{client_config, Answer, Connection};
use etee_platform::load::{self, LoadReport, LoadRequest, LoadSpec};
use etee_platform::{Platform, PlatformConfig};
use etee_services::etkdepot::rest::EtkJson;
use etee_services::etkdepot::{EtkResult, GetEtkRequest, GetEtkResponse, Identifier};
use etee_services::kgss::{
    vocabulary, GetKeyRequestContent, GetKeyResponseContent, GetNewKeyRequestContent,
    GetNewKeyResponseContent, ReplyTo,
};
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use hyper::body::Bytes;
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// RSA private operations per `GetKey` answered to the caller's ETK, counted from
/// `Kgss::get_key`: opening the sealed request decrypts its content key once with KGSS's
/// ETK key (`Kgss::open` → `unseal_to_vec`); sealing the answer signs the inner and the
/// outer layer with KGSS's authentication key (`Kgss::seal_to` → `seal`). The AES unwrap
/// in the token and the verifications are not RSA private operations.
const PRIVATE_OPS_PER_GET_KEY: f64 = 3.0;
const GET_KEY_TARGET: f64 = 0.8;
const LOOKUP_TARGET: f64 = 5_000.0;
/// How long each measurement of a reference rate runs.
const REFERENCE_SECONDS: f64 = 3.0;
const TOKEN_LABEL: &str = "etee-load";
/// GetKeys whose steps are timed one by one (see [`breakdown`]).
const BREAKDOWN_REQUESTS: usize = 400;
const PEM_PASSWORD: &str = "load-bench";

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

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().expect("certificate DER")).expect("our own certificate")
}

fn write_pem(path: &Path, certs: &[&openssl::x509::X509]) {
    let mut pem = Vec::new();
    for c in certs {
        pem.extend(c.to_pem().expect("PEM"));
    }
    std::fs::write(path, pem).expect("writing a PEM file");
}

/// The entries of an institution's eHealth keystore (software keys).
fn keystore_entries(inst: &Institution) -> Vec<PfxEntry> {
    let auth_chain = std::iter::once(&inst.auth.cert).chain(&inst.chain).cloned();
    ehealth_entries(
        inst.auth.key.clone(),
        auth_chain.collect(),
        inst.etk_key.clone(),
        inst.etk_cert.clone(),
    )
    .expect("the keystore entries of a generated institution")
}

/// An institution's keys as its eHealth keystore holds them (software keys).
fn keystore_of(inst: &Institution) -> EhealthKeystore {
    EhealthKeystore::from_entries(keystore_entries(inst))
        .expect("a keystore of a generated institution")
}

/// The generated world: a CA, the TLS server certificate and the institutions.
struct World {
    pki: TestPki,
    server: etee_testpki::Issued,
    alice: Institution,
    bob: Institution,
    kgss: Institution,
    /// Whose ETKs are registered and looked up.
    holders: Vec<Holder>,
}

/// A holder whose ETK the store holds: the search criteria that find it, and its ETK.
#[derive(Clone)]
struct Holder {
    id_type: &'static str,
    value: String,
    application_id: Option<&'static str>,
    etk: Vec<u8>,
}

impl Holder {
    fn new(id_type: &'static str, value: &str, app: Option<&'static str>, i: &Institution) -> Self {
        Holder {
            id_type,
            value: value.into(),
            application_id: app,
            etk: i.etk.clone(),
        }
    }

    fn identifier(&self) -> Identifier {
        Identifier::new(self.id_type, &self.value, self.application_id)
    }
}

fn world() -> World {
    let pki = TestPki::generate("etee-load").expect("a test PKI");
    let inst = |spec: InstitutionSpec| pki.institution(&spec).expect("an institution");
    let alice = inst(InstitutionSpec::new(
        "NIHII-HOSPITAL",
        "71000436",
        "Alice Hospital",
    ));
    let bob = inst(InstitutionSpec::new(
        "NIHII-PHARMACY",
        "27150201",
        "Bob Pharmacy",
    ));
    let kgss = inst(InstitutionSpec::new("CBE", "0809394427", "KGSS").with_application_id("KGSS"));
    let doctor = inst(InstitutionSpec::new("NIHII11", "10203040506", "Dr Dirk"));
    let app_a =
        inst(InstitutionSpec::new("CBE", "0406798006", "Two Apps").with_application_id("APP-A"));
    let app_b =
        inst(InstitutionSpec::new("CBE", "0406798006", "Two Apps").with_application_id("APP-B"));
    let mut holders = vec![
        Holder::new("NIHII-HOSPITAL", "71000436", None, &alice),
        Holder::new("NIHII-PHARMACY", "27150201", None, &bob),
        Holder::new("NIHII11", "10203040506", None, &doctor),
        Holder::new("CBE", "0809394427", Some("KGSS"), &kgss),
        Holder::new("CBE", "0406798006", Some("APP-A"), &app_a),
        Holder::new("CBE", "0406798006", Some("APP-B"), &app_b),
    ];
    // More pharmacies, so that the store is not three rows.
    for i in 0..6 {
        let value = format!("2715030{i}");
        let p = inst(InstitutionSpec::new(
            "NIHII-PHARMACY",
            &value,
            &format!("Pharmacy {i}"),
        ));
        holders.push(Holder::new("NIHII-PHARMACY", &value, None, &p));
    }
    World {
        server: pki
            .tls_server(&["localhost", "127.0.0.1"])
            .expect("a TLS server certificate"),
        pki,
        alice,
        bob,
        kgss,
        holders,
    }
}

/// A SoftHSM2 token for the run: a private `softhsm2.conf` in `dir` (exported before the
/// module is loaded), KGSS's keys imported from a `.p12`, the wrapping key generated in the
/// token. Returns the path of the `etee` HSM configuration for `Kgss::from_hsm`.
fn kgss_token(dir: &Path, w: &World) -> PathBuf {
    // The project's SoftHSM rig (tests/src/lib.rs): its own token directory and PIN files.
    let rig = etee_e2e::SoftHsm::new(dir);
    std::env::set_var("SOFTHSM2_CONF", &rig.conf);
    let path = rig.token_config(
        "kgss",
        TOKEN_LABEL,
        // A budget out of reach: the figures are the service's cost, not the default
        // rate limit (1 000 uses a second, bursts of 10 000), which a run's references and
        // GetKeys nearly use up on this VM.
        "\n[custody]\naudit_file = \"kgss-audit.log\"\n\
         budget_burst = 4294967295\nbudget_per_second = 4294967295\n",
    );
    let config = etee_hsm::Config::load(&path).expect("kgss.toml").hsm;
    etee_hsm::init_token(&config).expect("initialising the token");
    let entries = keystore_entries(&w.kgss);
    let p12 = write_pfx(&entries, PEM_PASSWORD, Profile::Modern).expect("writing the .p12");
    let keystore = EhealthKeystore::load(&p12, PEM_PASSWORD).expect("reading the .p12");
    let hsm = etee_hsm::Hsm::open(&config).expect("opening the token");
    hsm.import(&keystore, &etee_hsm::ImportOptions::default())
        .expect("importing KGSS's keys");
    hsm.generate(
        config
            .profile(etee_hsm::config::KGSS_WRAP_ID)
            .expect("the kgss-wrap profile"),
    )
    .expect("generating the wrapping key");
    path
}

/// The platform: embedded store in `dir` with the holders' ETKs and the attribute
/// registry, KGSS from the token when there is one.
fn platform(dir: &Path, w: &World, kgss_hsm: Option<&Path>) -> Arc<Platform> {
    write_pem(&dir.join("server.pem"), &[&w.server.cert, &w.pki.root.cert]);
    std::fs::write(
        dir.join("server.key"),
        w.server.key.private_key_to_pem_pkcs8().expect("PKCS#8"),
    )
    .expect("server.key");
    write_pem(&dir.join("ca.pem"), &[&w.pki.root.cert]);
    let config = PlatformConfig::from_toml(
        "[platform]\nlisten = \"127.0.0.1:0\"\nstore = \"platform.redb\"\n\
         tls_certificate = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = [\"ca.pem\"]\n",
        dir,
    )
    .expect("platform configuration");
    let store = etee_store::open(&config.store).expect("opening the embedded store");
    let anchors = TrustAnchors::new(vec![cert(&w.pki.root.cert)]);
    let now = etee_platform::unix_now();
    for holder in &w.holders {
        etee_platform::etkdepot::register(store.as_ref(), &holder.etk, &anchors, now)
            .expect("registering an ETK");
    }
    store
        .set_attribute(
            "NIHII-PHARMACY",
            "27150201",
            &etee_store::Attribute {
                namespace: vocabulary::CERTIFIED_NS.into(),
                name: vocabulary::RECOGNISED_PHARMACY.into(),
                value: "true".into(),
            },
        )
        .expect("the attribute registry");
    let kgss = kgss_hsm.map(|path| {
        etee_platform::kgss::Kgss::from_hsm(path, etee_hsm::config::KGSS_WRAP_ID, anchors.clone())
            .expect("KGSS from the token")
    });
    Arc::new(Platform::new(store, config, anchors, kgss))
}

/// One row of the final table.
struct Row {
    name: String,
    done: String,
    errors: usize,
    rate: f64,
    latency: Option<load::Latency>,
    note: String,
}

impl Row {
    fn of(name: String, r: &LoadReport, note: String) -> Self {
        Row {
            name,
            done: format!("{}/{}", r.ok, r.planned),
            errors: r.error_count(),
            rate: r.per_second(),
            latency: r.latency,
            note,
        }
    }

    fn reference(name: String, ops: u64, rate: f64, note: String) -> Self {
        Row {
            name,
            done: ops.to_string(),
            errors: 0,
            rate,
            latency: None,
            note,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Prints what a load run did, errors by kind included.
fn describe(name: &str, r: &LoadReport) {
    print!(
        "  {name}: {} of {} ok in {:.2} s, {:.0}/s",
        r.ok,
        r.planned,
        r.elapsed.as_secs_f64(),
        r.per_second()
    );
    if let Some(l) = r.latency {
        print!(
            ", p50 {} ms, p99 {} ms, max {} ms",
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        );
    }
    println!();
    for (kind, n) in &r.errors {
        println!("    ERROR ×{n}: {kind}");
    }
    if r.timed_out {
        println!(
            "    time limit reached: {} in flight abandoned, {} not sent",
            r.cut_off, r.not_sent
        );
    }
    let _ = std::io::stdout().flush();
}

/// Runs `threads` threads for about `secs`, each calling `op` (which returns how many
/// operations it did, or an error); returns (operations, failures, operations/s).
fn rate(
    threads: usize,
    secs: f64,
    op: &(dyn Fn() -> Result<u64, String> + Sync),
) -> (u64, u64, f64) {
    let barrier = Barrier::new(threads);
    let (ops, failures) = (AtomicU64::new(0), AtomicU64::new(0));
    let longest = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    // Untimed: the first use of a key or session pays for lookups.
                    let _ = op();
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed().as_secs_f64() < secs {
                        match op() {
                            Ok(n) => ops.fetch_add(n, Ordering::Relaxed),
                            Err(e) => {
                                if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                                    println!("    reference operation failed: {e}");
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

struct Settings {
    requests: usize,
    concurrency: usize,
    kgss_requests: usize,
    time_limit: Duration,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("load: bench");
        return;
    }
    let s = Settings {
        requests: env_number("ETEE_LOAD_REQUESTS", 20_000),
        concurrency: env_number("ETEE_LOAD_CONCURRENCY", 2 * cores()),
        kgss_requests: env_number("ETEE_LOAD_KGSS_REQUESTS", 1_000),
        time_limit: Duration::from_secs_f64(env_number("ETEE_LOAD_SECONDS", 60.0)),
    };
    let started = Instant::now();
    // By default on the target directory's disk, like a real store and audit file (their
    // durable writes are part of the cost); ETEE_LOAD_DIR=/dev/shm shows their share.
    let parent = std::env::var_os("ETEE_LOAD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::Builder::new()
        .prefix("bench-load-")
        .tempdir_in(&parent)
        .expect("a temporary directory");
    println!(
        "etee platform load test: loopback, {} CPU(s), ETK figures {} requests × {} workers, \
         time limit {:.0} s per figure; store, token and audit files in {}",
        cores(),
        s.requests,
        s.concurrency,
        s.time_limit.as_secs_f64(),
        parent.display()
    );
    let w = world();
    let module = etee_e2e::softhsm_module();
    let kgss_hsm = if module.exists() {
        Some(kgss_token(dir.path(), &w))
    } else {
        println!(
            "SoftHSM2 is missing ({}): part b (KGSS GetKey) is skipped. Run `bash \
             hsm-config/setup.sh` or set SOFTHSM2_MODULE.",
            module.display()
        );
        None
    };
    let platform = platform(dir.path(), &w, kgss_hsm.as_deref());
    println!(
        "setup (PKI, token, store): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The server and the load client on runtimes of their own, as two processes would be
    // (they share the machine's cores all the same).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .expect("the server's runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("load-client")
        .build()
        .expect("the client's runtime");
    let running = server_rt
        .block_on(etee_platform::server::start(platform.clone()))
        .expect("starting the platform");
    let target = running.addr;
    let root = CertificateDer::from(w.pki.root.cert.to_der().expect("DER"));
    let tls = client_config(&[root], None).expect("a TLS client configuration");
    let spec = |requests: usize,
                concurrency: usize,
                source: load::RequestSource,
                check: Option<load::AnswerCheck>| LoadSpec {
        target,
        server_name: "localhost".into(),
        tls: tls.clone(),
        requests,
        concurrency,
        time_limit: s.time_limit,
        source,
        check,
        keep_answers: 32,
    };
    let run = |spec: LoadSpec| {
        client_rt
            .block_on(load::run(spec))
            .expect("the load run (loopback)")
    };

    let mut rows = etk_lookups(&s, &w, &platform, &spec, &run);
    if platform.kgss.is_some() {
        rows.extend(kgss_get_key(&s, &w, &platform, &spec, &run, &client_rt));
    }

    println!();
    println!(
        "{:<40} {:>12} {:>6} {:>9} {:>8} {:>8} {:>8}  ratio and target",
        "figure", "done", "errors", "rate/s", "p50 ms", "p99 ms", "max ms"
    );
    for r in &rows {
        let (p50, p99, max) = r.latency.map_or(("-".into(), "-".into(), "-".into()), |l| {
            (ms(l.p50), ms(l.p99), ms(l.max))
        });
        println!(
            "{:<40} {:>12} {:>6} {:>9.0} {:>8} {:>8} {:>8}  {}",
            r.name, r.done, r.errors, r.rate, p50, p99, max, r.note
        );
    }
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::io::stdout().flush();
    server_rt
        .block_on(running.stop())
        .expect("stopping the platform");
    drop(platform);
}

/// Part a: ETK lookups, REST and SOAP, and their references.
fn etk_lookups(
    s: &Settings,
    w: &World,
    platform: &Arc<Platform>,
    spec: &dyn Fn(usize, usize, load::RequestSource, Option<load::AnswerCheck>) -> LoadSpec,
    run: &dyn Fn(LoadSpec) -> LoadReport,
) -> Vec<Row> {
    println!();
    println!("a. ETKDepot lookups");
    let holders = Arc::new(w.holders.clone());
    let n = holders.len();

    // Reference 1: the lookup itself on the store, as the route runs it, no network.
    let criteria: Vec<Identifier> = holders.iter().map(Holder::identifier).collect();
    let next = AtomicU64::new(0);
    let (lookups, failures, store_rate) = rate(cores(), REFERENCE_SECONDS, &|| {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize % n;
        let found = etee_platform::etkdepot::lookup(
            platform.store.as_ref(),
            std::slice::from_ref(&criteria[i]),
            etee_platform::unix_now(),
        )
        .map_err(|e| format!("{e:?}"))?;
        if found.len() == 1 {
            Ok(1)
        } else {
            Err(format!("{} ETKs for {:?}", found.len(), criteria[i]))
        }
    });
    assert_eq!(failures, 0, "the store lookups must succeed");
    println!(
        "  store lookup (etkdepot::lookup, {} threads): {store_rate:.0}/s",
        cores()
    );

    // Reference 2: the bare HTTPS round trip on the same connections.
    let health = run(spec(
        s.requests,
        s.concurrency,
        Arc::new(|_| LoadRequest::get("/health")),
        None,
    ));
    describe("GET /health", &health);

    let h = holders.clone();
    let rest = run(spec(
        s.requests,
        s.concurrency,
        Arc::new(move |i| {
            let x = &h[i % h.len()];
            let app = x
                .application_id
                .map_or(String::new(), |a| format!("&applicationIdentifier={a}"));
            LoadRequest::get(format!(
                "/etee/v1/etks?identifier={}&type={}{app}",
                x.value, x.id_type
            ))
        }),
        None,
    ));
    describe("REST GET /etee/v1/etks", &rest);
    for (i, answer) in &rest.answers {
        let list = EtkJson::parse_list(&answer.body).expect("a REST ETK answer");
        assert!(
            list.len() == 1 && list[0].etk == holders[i % n].etk,
            "REST answer {i}: not the holder's ETK"
        );
    }

    let envelopes: Arc<Vec<Bytes>> = Arc::new(
        holders
            .iter()
            .map(|x| {
                Bytes::from(
                    GetEtkRequest {
                        identifiers: vec![x.identifier()],
                    }
                    .to_xml(),
                )
            })
            .collect(),
    );
    let soap = run(spec(
        s.requests,
        s.concurrency,
        Arc::new(move |i| {
            LoadRequest::post(
                "/EtkDepot/v1",
                "text/xml; charset=utf-8",
                envelopes[i % envelopes.len()].clone(),
            )
        }),
        // Status 200 also carries "not found" in SOAP: look for the error code (cheap).
        Some(Arc::new(|a: &Answer| {
            if a.body.windows(13).any(|x| x == b"ETK_NOT_FOUND") {
                Err("SOAP ETK_NOT_FOUND".into())
            } else {
                Ok(())
            }
        })),
    ));
    describe("SOAP GetEtk", &soap);
    for (i, answer) in &soap.answers {
        let parsed = GetEtkResponse::parse(&answer.body).expect("a SOAP GetEtk answer");
        assert!(
            matches!(&parsed.result, EtkResult::Etk(e) if *e == holders[i % n].etk),
            "SOAP answer {i}: not the holder's ETK"
        );
    }
    println!(
        "  checked {} REST and {} SOAP answers against the registered ETKs",
        rest.answers.len(),
        soap.answers.len()
    );

    let note = |r: &LoadReport| {
        format!(
            "{:.2} of /health, {:.2} of the store; ≥ {LOOKUP_TARGET:.0}/s {}",
            r.per_second() / health.per_second(),
            r.per_second() / store_rate,
            verdict(r.per_second() >= LOOKUP_TARGET && r.error_count() == 0 && r.complete())
        )
    };
    vec![
        Row::reference(
            format!("store lookup ({} threads, no network)", cores()),
            lookups,
            store_rate,
            "reference".into(),
        ),
        Row::of(
            format!("HTTPS GET /health (c={})", s.concurrency),
            &health,
            "reference".into(),
        ),
        Row::of(
            format!("ETK REST GET /etee/v1/etks (c={})", s.concurrency),
            &rest,
            note(&rest),
        ),
        Row::of(
            format!("ETK SOAP GetEtk (c={})", s.concurrency),
            &soap,
            note(&soap),
        ),
    ]
}

fn seal_for(from: &SigningKey, to: &Institution, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    seal(
        from,
        &[Recipient::Certificate(cert(&to.etk_cert))],
        None,
        content,
        &mut out,
        &SealOptions::default(),
    )
    .expect("sealing a request");
    out
}

fn sealed_json(sealed: &[u8]) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD;
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "sealedRequest": b64.encode(sealed) }))
            .expect("JSON"),
    )
}

fn sealed_response(body: &[u8]) -> Vec<u8> {
    sealed_response_field(body, "sealedResponse")
}

/// The base64 field `name` of a KGSS JSON body, decoded.
fn sealed_response_field(body: &[u8], name: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a KGSS JSON body");
    let b64 = base64::engine::general_purpose::STANDARD;
    b64.decode(v[name].as_str().expect("a base64 field"))
        .expect("base64")
}

/// `Kgss::get_key` on `threads` threads over `requests` (each once), as the route's
/// blocking task runs it: (ok, failed, ok per second).
fn get_key_in_process(
    platform: &Platform,
    requests: &[Vec<u8>],
    threads: usize,
) -> (u64, u64, f64) {
    let kgss = platform.kgss.as_ref().expect("KGSS");
    let next = AtomicU64::new(0);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(sealed) = requests.get(i) else { break };
                match kgss.get_key(platform.store.as_ref(), sealed, etee_platform::unix_now()) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            println!("    Kgss::get_key failed: {e}");
                        }
                        0
                    }
                };
            });
        }
    });
    let ok = ok.into_inner();
    (
        ok,
        failed.into_inner(),
        ok as f64 / start.elapsed().as_secs_f64().max(1e-9),
    )
}

/// Opens an answer of KGSS with `ring`, checking it is cleanly signed by KGSS.
fn open_answer(w: &World, ring: &KeyRing, sealed: &[u8]) -> Vec<u8> {
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(vec![cert(&w.pki.root.cert)]),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(sealed, ring, &opts).unwrap();
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    let sender = result.sender.and_then(|s| s.certificate).expect("a signer");
    assert_eq!(
        sender.der(),
        cert(&w.kgss.auth.cert).der(),
        "not signed by KGSS"
    );
    content.expect("the answer's content")
}

/// Part b: KGSS GetKey against the HSM-bound limit.
fn kgss_get_key(
    s: &Settings,
    w: &World,
    platform: &Arc<Platform>,
    spec: &dyn Fn(usize, usize, load::RequestSource, Option<load::AnswerCheck>) -> LoadSpec,
    run: &dyn Fn(LoadSpec) -> LoadReport,
    client_rt: &tokio::runtime::Runtime,
) -> Vec<Row> {
    println!();
    println!("b. KGSS GetKey, keys in SoftHSM2 through the custody core");
    let kgss = platform.kgss.as_ref().expect("KGSS");
    let alice = keystore_of(&w.alice);
    let bob = keystore_of(&w.bob);
    let bob_signer = bob.authentication().expect("Bob's authentication key");
    let bob_ring = bob.key_ring();

    // One key, created by Alice for any recognised pharmacy.
    let content = GetNewKeyRequestContent {
        allowed_readers: vec![vocabulary::recognised_pharmacy()],
        excluded_readers: vec![],
        etk: w.alice.etk.clone(),
        deletion_strategy: true,
    }
    .to_xml();
    let request = seal_for(
        &alice.authentication().expect("Alice's authentication key"),
        &w.kgss,
        &content,
    );
    let spec0 = spec(1, 1, Arc::new(|_| LoadRequest::get("/")), None);
    let answer = client_rt
        .block_on(async {
            let mut c = Connection::open(spec0.target, &spec0.server_name, spec0.tls).await?;
            c.send_bytes(
                "POST",
                "/etee/v1/kgss/keys",
                Some("application/json"),
                sealed_json(&request),
            )
            .await
        })
        .expect("GetNewKey");
    assert_eq!(
        answer.status,
        201,
        "GetNewKey: {}",
        String::from_utf8_lossy(&answer.body)
    );
    let new = GetNewKeyResponseContent::parse(&open_answer(
        w,
        &alice.key_ring(),
        &sealed_response(&answer.body),
    ))
    .expect("GetNewKey's answer");
    let key_id = new.new_key_identifier.clone();

    // Every GetKey must be a distinct sealed request (replays are refused); sealing costs
    // the client RSA operations, so all are made before the clock starts.
    let phases = [2usize, 4, 8];
    // Per phase: the GetKeys over the network, then as many called in process.
    let in_process = s.kgss_requests;
    let total = (s.kgss_requests + in_process) * phases.len() + BREAKDOWN_REQUESTS;
    let sealing = Instant::now();
    let get_key = GetKeyRequestContent {
        key_identifier: key_id.clone(),
        reply_to: ReplyTo::Etk(w.bob.etk.clone()),
    }
    .to_xml();
    let per_thread = total.div_ceil(cores());
    let sealed: Vec<Bytes> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores())
            .map(|t| {
                let (signer, get_key) = (&bob_signer, &get_key);
                scope.spawn(move || {
                    let n = per_thread.min(total.saturating_sub(t * per_thread));
                    (0..n)
                        .map(|_| sealed_json(&seal_for(signer, &w.kgss, get_key)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sealing thread"))
            .collect()
    });
    println!(
        "  {} GetKey requests sealed by Bob beforehand in {:.1} s",
        sealed.len(),
        sealing.elapsed().as_secs_f64()
    );
    let (breakdown_requests, sealed) = {
        let mut sealed = sealed;
        let rest = sealed.split_off(BREAKDOWN_REQUESTS);
        (sealed, Arc::new(rest))
    };

    // The HSM-bound reference: the private operations of a GetKey (one decryption with
    // KGSS's ETK key, two PSS signatures with its authentication key) on the same custody
    // core, as many at once as there are GetKeys under way.
    let etk_key = kgss.ring.keys()[0].clone();
    let blob = {
        let public = w.kgss.etk_cert.public_key().expect("KGSS's ETK public key");
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&public).expect("a key context");
        ctx.encrypt_init().expect("encrypt");
        ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1)
            .expect("PKCS#1");
        let mut out = vec![];
        ctx.encrypt_to_vec(&[7u8; 16], &mut out).expect("encrypt");
        out
    };
    let digest = [1u8; 32];
    let private_ops = || -> Result<u64, String> {
        let plain = etk_key
            .ops
            .decrypt_pkcs1v15(&etk_key.key, &blob)
            .map_err(|e| format!("decrypt: {e}"))?;
        if plain.len() != 16 {
            return Err("decrypt: wrong length".into());
        }
        for _ in 0..2 {
            kgss.signer
                .ops
                .sign_pss_sha256(&kgss.signer.key, &digest)
                .map_err(|e| format!("sign: {e}"))?;
        }
        Ok(3)
    };

    breakdown(w, platform, &key_id, &breakdown_requests, &blob);

    let mut rows = Vec::new();
    for (phase, &concurrency) in phases.iter().enumerate() {
        // The limit before and after the GetKeys, averaged: a drifting machine affects
        // both sides alike.
        let (ops_a, fail_a, before) = rate(concurrency, REFERENCE_SECONDS, &private_ops);
        let offset = phase * s.kgss_requests;
        let requests = sealed.clone();
        let report = run(spec(
            s.kgss_requests,
            concurrency,
            Arc::new(move |i| {
                LoadRequest::post(
                    "/etee/v1/kgss/keys/retrieve",
                    "application/json",
                    requests[offset + i].clone(),
                )
            }),
            None,
        ));
        let (ops_b, fail_b, after) = rate(concurrency, REFERENCE_SECONDS, &private_ops);
        let ops_rate = (before + after) / 2.0;
        let limit = ops_rate / PRIVATE_OPS_PER_GET_KEY;
        println!(
            "  HSM private operations through the core, {concurrency} threads: {before:.0}/s \
             before, {after:.0}/s after{}",
            if fail_a + fail_b > 0 {
                format!(" ({} FAILED)", fail_a + fail_b)
            } else {
                String::new()
            }
        );
        describe(&format!("GetKey (c={concurrency})"), &report);
        // The same service logic without the network: `Kgss::get_key` called by as many
        // threads, each request distinct (decoded from its JSON before the clock starts).
        let first = phases.len() * s.kgss_requests + phase * in_process;
        let direct: Vec<Vec<u8>> = sealed[first..first + in_process]
            .iter()
            .map(|b| sealed_response_field(b, "sealedRequest"))
            .collect();
        let (direct_ok, direct_failed, direct_rate) =
            get_key_in_process(platform, &direct, concurrency);
        println!(
            "  Kgss::get_key in process, {concurrency} threads: {direct_ok} ok, {direct_failed} failed, {direct_rate:.0}/s"
        );
        // The answers are real: a sample opens with Bob's ETK key to the key Alice got.
        let sample = report.answers.iter().take(8);
        let mut checked = 0;
        for (i, a) in sample {
            let got =
                GetKeyResponseContent::parse(&open_answer(w, &bob_ring, &sealed_response(&a.body)))
                    .unwrap_or_else(|e| panic!("GetKey answer {i}: {e}"));
            assert_eq!(got.key.expose(), new.new_key.expose(), "GetKey answer {i}");
            checked += 1;
        }
        println!("  checked {checked} answers: Bob got the key Alice created");
        rows.push(Row::reference(
            format!("HSM limit: private ops/s ÷ 3 ({concurrency} thr)"),
            ops_a + ops_b,
            limit,
            format!(
                "{ops_rate:.0} private ops/s{}",
                if fail_a + fail_b > 0 {
                    format!(", {} FAILED", fail_a + fail_b)
                } else {
                    String::new()
                }
            ),
        ));
        rows.push(Row::reference(
            format!("Kgss::get_key in process ({concurrency} thr)"),
            direct_ok,
            direct_rate,
            format!(
                "{:.2} of the HSM limit{}",
                direct_rate / limit,
                if direct_failed > 0 {
                    format!(", {direct_failed} FAILED")
                } else {
                    String::new()
                }
            ),
        ));
        let ratio = report.per_second() / limit;
        rows.push(Row::of(
            format!("KGSS REST GetKey (c={concurrency})"),
            &report,
            format!(
                "{ratio:.2} of the HSM limit; ≥ {GET_KEY_TARGET} {}",
                verdict(ratio >= GET_KEY_TARGET && report.error_count() == 0 && report.complete())
            ),
        ));
    }
    rows
}

const STEPS: [&str; 8] = [
    "open the request (outer check with no key, then unseal: 1 HSM decryption, 3 verifications)",
    "  of which the HSM decryption alone",
    "read the key and the caller's attributes",
    "remember the request with its audit event (one durable commit, after the unwrap, beside the ETK check and the sealing)",
    "unwrap the key (custody core, AES in the token, audit sync)",
    "check the caller's ETK (parse, validate)",
    "seal the answer (2 HSM signatures, 1 encryption)",
    "  of which one HSM signature alone (×2)",
];

/// Where a GetKey's time goes: the steps of `Kgss::get_key` (answer to the caller's ETK)
/// replayed one by one, in process, on the same store and custody core, each timed (mean
/// per request, each request distinct), on 1 thread and then on 2 threads at once (half of
/// `requests` each time), so that what slows down under concurrency shows. A diagnostic,
/// not a figure of the issue: it must follow `Kgss::get_key` when that changes. The audit
/// events it appends say `load-bench breakdown`.
fn breakdown(w: &World, platform: &Platform, key_id: &[u8], requests: &[Bytes], blob: &[u8]) {
    // Half of the requests for the steps, half for `Kgss::get_key` itself.
    let (requests, whole) = requests.split_at(requests.len() / 2);
    let decoded: Vec<Vec<u8>> = whole
        .iter()
        .map(|b| sealed_response_field(b, "sealedRequest"))
        .collect();
    let (whole_one, whole_two) = decoded.split_at(decoded.len() / 2);
    let (ok1, failed1, rate1) = get_key_in_process(platform, whole_one, 1);
    let (ok2, failed2, rate2) = get_key_in_process(platform, whole_two, 2);
    assert_eq!((failed1, failed2), (0, 0), "Kgss::get_key failed");
    let (one, two) = requests.split_at(requests.len() / 2);
    let single = breakdown_steps(w, platform, key_id, one, blob);
    let (a, b) = two.split_at(two.len() / 2);
    let (da, db) = std::thread::scope(|scope| {
        let ha = scope.spawn(|| breakdown_steps(w, platform, key_id, a, blob));
        let hb = scope.spawn(|| breakdown_steps(w, platform, key_id, b, blob));
        (
            ha.join().expect("a breakdown thread"),
            hb.join().expect("a breakdown thread"),
        )
    });
    let mean = |d: Duration, n: usize| d.as_secs_f64() * 1000.0 / n.max(1) as f64;
    let m1: Vec<f64> = single.iter().map(|d| mean(*d, one.len())).collect();
    let m2: Vec<f64> = da
        .iter()
        .zip(&db)
        .map(|(x, y)| mean(*x + *y, two.len()))
        .collect();
    let sum = |m: &[f64]| [0, 2, 4, 5, 6].iter().map(|&i| m[i]).sum::<f64>();
    println!(
        "  where a GetKey's time goes (its steps replayed in process; mean ms per request, \
         1 thread | 2 threads at once):"
    );
    for (i, name) in STEPS.iter().enumerate() {
        println!("    {:>7.3} | {:>7.3}  {name}", m1[i], m2[i]);
    }
    println!(
        "    {:>7.3} | {:>7.3}  in all but the commit (the 3 private operations alone: {:.3} | {:.3})",
        sum(&m1),
        sum(&m2),
        m1[1] + 2.0 * m1[7],
        m2[1] + 2.0 * m2[7]
    );
    println!(
        "    {:>7.3} | {:>7.3}  Kgss::get_key itself ({ok1} | {ok2} requests)",
        1000.0 / rate1.max(1e-9),
        2000.0 / rate2.max(1e-9)
    );
}

/// The steps of one GetKey for each of `requests`, on this thread: total time per step.
fn breakdown_steps(
    w: &World,
    platform: &Platform,
    key_id: &[u8],
    requests: &[Bytes],
    blob: &[u8],
) -> [Duration; 8] {
    use etee_platform::kgss::REPLAY_WINDOW;
    let kgss = platform.kgss.as_ref().expect("KGSS");
    let store = platform.store.as_ref();
    let id: [u8; 16] = key_id.try_into().expect("a 16-byte key id");
    let etk_key = &kgss.ring.keys()[0];
    let bob_etk = &w.bob.etk;
    let mut total = [Duration::ZERO; 8];
    let time = |slot: &mut Duration, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        *slot += t.elapsed();
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    for body in requests {
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        let sealed = b64
            .decode(v["sealedRequest"].as_str().expect("sealedRequest"))
            .expect("base64");
        let now = etee_platform::unix_now();
        let mut content = None;
        time(&mut total[0], &mut || {
            let opts = UnsealOptions {
                anchors: kgss.anchors.clone(),
                at: Some(now),
                signing_time_expiration: REPLAY_WINDOW,
                ..Default::default()
            };
            // As `Kgss::open`: the outer layer checked with no key first, then opened.
            let (outer, _) = unseal_to_vec(&sealed, &KeyRing::new(), &opts).unwrap();
            assert!(outer.verdict.errors.is_empty(), "{:?}", outer.verdict);
            let (result, c) = unseal_to_vec(&sealed, &kgss.ring, &opts).unwrap();
            assert!(result.verdict.is_clean(), "{:?}", result.verdict);
            content = c;
        });
        GetKeyRequestContent::parse(&content.expect("content")).expect("a GetKey request");
        time(&mut total[1], &mut || {
            etk_key
                .ops
                .decrypt_pkcs1v15(&etk_key.key, blob)
                .expect("decrypt");
        });
        let mut record = None;
        time(&mut total[2], &mut || {
            record = store.get_kgss_key(&id).expect("read");
            store
                .attributes("NIHII-PHARMACY", "27150201")
                .expect("attributes");
        });
        let record = record.expect("the key");
        time(&mut total[3], &mut || {
            let hash = openssl::sha::sha256(&sealed);
            let event = etee_store::AuditEvent {
                at: now,
                action: "kgss.read".into(),
                actor: "load-bench breakdown".into(),
                subject: hex::encode(id),
                outcome: "granted".into(),
                detail: None,
            };
            assert!(store
                .remember_request_with_event(&hash, now + REPLAY_WINDOW, now, &event)
                .expect("remember")
                .is_some());
        });
        let mut key = None;
        time(&mut total[4], &mut || {
            key = Some(kgss.unwrap_bound(&record).expect("unwrap"));
        });
        let mut etk = None;
        time(&mut total[5], &mut || {
            let e = etee_formats::etk::Etk::parse(bob_etk).expect("Bob's ETK");
            assert!(e.validate(&kgss.anchors, now).is_empty());
            etk = Some(e);
        });
        let (key, etk) = (key.expect("key"), etk.expect("ETK"));
        time(&mut total[6], &mut || {
            let answer = GetKeyResponseContent {
                key: etee_services::secret::SecretBytes::from_slice(&key),
            }
            .to_xml();
            let mut out = Vec::new();
            seal(
                &kgss.signer,
                &[Recipient::Certificate(etk.encryption_cert().clone())],
                None,
                &answer[..],
                &mut out,
                &SealOptions::default(),
            )
            .expect("seal");
        });
        time(&mut total[7], &mut || {
            kgss.signer
                .ops
                .sign_pss_sha256(&kgss.signer.key, &[1u8; 32])
                .expect("sign");
        });
    }
    total
}
