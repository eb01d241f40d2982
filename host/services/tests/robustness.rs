//! Mutation fuzzing of the platform services' message readers on stable Rust, over the
//! same checks as the cargo-fuzz targets `soap`, `kgss_xml` and `services_json` (their
//! bodies, `fuzz/src/services.rs`, are compiled in here). The regression tests of what
//! fuzzing found are with their topics (`xml_safety.rs`, `soap_faults.rs`, `keydepot.rs`);
//! `fuzz/README.md` lists them.
//!
//! - `fuzz_smoke_short` (always run): a fixed seed, about two seconds.
//! - `fuzz_smoke` (ignored): `ETEE_FUZZ_SECS` (default 30) seconds, `ETEE_FUZZ_SEED`
//!   (default: the clock, printed); `ETEE_FUZZ_DUMP=<dir>` writes the first input of each
//!   finding. Besides panics, an input that takes longer than `ETEE_FUZZ_SLOW_MS`
//!   (default 1000) or makes one allocation larger than 1 MiB + 16 × its size is a finding.
//! - `replay_fuzz_inputs` (ignored): `ETEE_FUZZ_REPLAY=<file or dir>`, e.g. libFuzzer's
//!   `fuzz/artifacts/soap`.
//! - `write_fuzz_corpus` (ignored): `ETEE_FUZZ_CORPUS=fuzz/corpus` writes the seeds below
//!   for the cargo-fuzz targets.
//!
//! See `fuzz/README.md`.

#[path = "../../../fuzz/src/services.rs"]
mod targets;

use etee_formats::cert::Certificate;
use etee_services::etkdepot::jwks::{JwkSet, KeyUse};
use etee_services::etkdepot::rest::IdentifierJson;
use etee_services::etkdepot::{
    EtkDepotError, EtkJson, EtkResult, GetEtkRequest, GetEtkResponse, Identifier, MatchingEtk,
    Problem, Status,
};
use etee_services::keydepot::{
    pop_challenge, sign, AddInfoRequest, AttestationStatement, HolderInfo, KeyAttributes, KeyId,
    KeyInfo, KeyListResponse, KeyRecord, KeyStatus, RegisterKeyRequest, RegisterKeyResponse,
    SignedAttestation, TokenInfo,
};
use etee_services::kgss::{
    vocabulary, Credential, EteeError, EteeStatus, GetKeyRequestContent, GetKeyResponseContent,
    GetNewKeyRequestContent, GetNewKeyResponseContent, KgssRequest, KgssResponse, Operation,
    ReplyTo,
};
use etee_services::soap::{self, Environment, Fault, LangString, SoaCode, SOAP11_NS, WSSE_NS};
use etee_services::xml::Element;
use etee_services::{Error, SecretBytes};
use etee_testpki::{InstitutionSpec, TestPki};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---- the largest single allocation, per thread ----------------------------------------

#[global_allocator]
static ALLOCATOR: etee_testpki::peak_alloc::PeakAlloc = etee_testpki::peak_alloc::PeakAlloc;

/// The largest single allocation an input of `len` bytes may make (escaping can make a
/// written document a few times longer than what was read).
fn allocation_bound(len: usize) -> usize {
    (1 << 20) + 16 * len
}

// ---- targets and seeds --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Soap,
    KgssXml,
    ServicesJson,
}

impl Target {
    const ALL: [Target; 3] = [Target::Soap, Target::KgssXml, Target::ServicesJson];

    fn name(self) -> &'static str {
        match self {
            Target::Soap => "soap",
            Target::KgssXml => "kgss_xml",
            Target::ServicesJson => "services_json",
        }
    }

    fn run(self, data: &[u8]) {
        match self {
            Target::Soap => targets::soap(data),
            Target::KgssXml => targets::kgss_xml(data),
            Target::ServicesJson => targets::services_json(data),
        }
    }
}

struct Seed {
    target: Target,
    name: &'static str,
    bytes: Vec<u8>,
}

fn lang(lang: &str, text: &str) -> LangString {
    LangString {
        lang: Some(lang.into()),
        text: text.into(),
    }
}

/// An envelope with a header holding `blocks`, around `body`.
fn with_header(blocks: Vec<Element>, body: Element) -> Vec<u8> {
    Element::new(Some(SOAP11_NS), "Envelope")
        .with_child(Element::new(Some(SOAP11_NS), "Header").with_children(blocks))
        .with_child(Element::new(Some(SOAP11_NS), "Body").with_child(body))
        .to_document(&[(SOAP11_NS, "soap")])
}

fn xml_seeds() -> Vec<Seed> {
    let etk_request = GetEtkRequest {
        identifiers: vec![
            Identifier::new("CBE", "0809394427", Some("KGSS")),
            Identifier::new("SSIN", "76120902527", Some("")),
            Identifier::new("NIHII-PHARMACY", "27150201", None),
        ],
    };
    let criteria = vec![Identifier::new("SSIN", "76120902527", None)];
    let response = |result| GetEtkResponse {
        id: Some("ID-1".into()),
        status: Status::ok(),
        given_search_criteria: Some(criteria.clone()),
        result,
    };
    let kgss_error = KgssResponse {
        operation: Operation::GetKey,
        id: Some("ID-2".into()),
        status: EteeStatus {
            code: "400".into(),
            message: Some("Bad request".into()),
        },
        errors: vec![EteeError {
            code: "KGSS.NOT_ALLOWED".into(),
            messages: vec![lang("en", "not allowed"), lang("fr", "pas autorisé")],
        }],
        sealed_content: None,
    };
    let mut fault = Fault::from_code(SoaCode::XsdCompliance, Some(Environment::Production));
    if let Some(d) = &mut fault.detail {
        d.id = Some("UNIQUE".into());
        d.contact = Some("service desk".into());
        d.kind = soap::ErrorKind::BusinessError;
    }
    let security = Element::new(Some(WSSE_NS), "Security")
        .with_attr(Some(SOAP11_NS), "mustUnderstand", "1")
        .with_child(Element::leaf(Some(WSSE_NS), "BinarySecurityToken", "AAAA"));
    let must = Element::new(Some("urn:other"), "Routing")
        .with_attr(Some(SOAP11_NS), "mustUnderstand", "1")
        .with_attr(Some(SOAP11_NS), "actor", soap::ACTOR_NEXT);
    let pharmacy = vocabulary::recognised_pharmacy();
    let new_key = GetNewKeyRequestContent {
        allowed_readers: vec![
            pharmacy,
            vocabulary::any_doctor(),
            vocabulary::patient("76120902527"),
        ],
        excluded_readers: vec![Credential::new(
            vocabulary::CERTIFIED_NS,
            vocabulary::DOCTOR_NIHII11,
            &["10203040506"],
        )],
        etk: vec![0x30, 0x80, 1, 2, 3, 0, 0],
        deletion_strategy: true,
    };
    let seeds: Vec<(Target, &'static str, Vec<u8>)> = vec![
        (Target::Soap, "get-etk-request.xml", etk_request.to_xml()),
        (
            Target::Soap,
            "get-etk-request-headers.xml",
            with_header(vec![security, must], etk_request.to_element()),
        ),
        (
            Target::Soap,
            "get-etk-response-etk.xml",
            GetEtkResponse::found(criteria.clone(), vec![0x30, 0x80, 0, 0]).to_xml(),
        ),
        (
            Target::Soap,
            "get-etk-response-matching.xml",
            response(EtkResult::MatchingEtk(vec![
                MatchingEtk {
                    identifiers: vec![Identifier::new("SSIN", "76120902527", Some("A"))],
                },
                MatchingEtk {
                    identifiers: vec![Identifier::new("SSIN", "76120902527", Some("B"))],
                },
            ]))
            .to_xml(),
        ),
        (
            Target::Soap,
            "get-etk-response-errors.xml",
            response(EtkResult::Errors(vec![EtkDepotError {
                code: "ETK-404".into(),
                message: "no ETK".into(),
            }]))
            .to_xml(),
        ),
        (
            Target::Soap,
            "kgss-get-new-key-request.xml",
            KgssRequest {
                operation: Operation::GetNewKey,
                sealed_content: (0..48).collect(),
            }
            .to_xml(),
        ),
        (
            Target::Soap,
            "kgss-get-key-request.xml",
            KgssRequest {
                operation: Operation::GetKey,
                sealed_content: vec![0x30; 20],
            }
            .to_xml(),
        ),
        (
            Target::Soap,
            "kgss-response-ok.xml",
            KgssResponse::ok(Operation::GetNewKey, vec![7; 32]).to_xml(),
        ),
        (Target::Soap, "kgss-response-error.xml", kgss_error.to_xml()),
        (Target::Soap, "fault-business.xml", fault.to_xml()),
        (
            Target::Soap,
            "fault-version.xml",
            Fault::from_error(&Error::SoapVersion("SOAP 1.2".into()), None).to_xml(),
        ),
        (
            Target::Soap,
            "fault-must-understand.xml",
            Fault::must_understand("{urn:other}Routing", Some(Environment::Test)).to_xml(),
        ),
        (
            Target::Soap,
            "fault-foreign.xml",
            br#"<?xml version="1.0"?><S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body><S:Fault xmlns:x="urn:x"><faultcode>S:Client.Auth</faultcode><faultstring xml:lang="en">no</faultstring><faultactor>urn:a</faultactor><detail><ns4:SystemError xmlns:ns4="urn:be:fgov:ehealth:errors:soa:v1" Id="X"><Origin>Server</Origin><Code>SOA-02001</Code><Message xml:lang="en">busy</Message><Retry>true</Retry><ns4:Environment>Production</ns4:Environment></ns4:SystemError></detail></S:Fault></S:Body></S:Envelope>"#.to_vec(),
        ),
        (
            Target::Soap,
            "soap12.xml",
            br#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><a/></e:Body></e:Envelope>"#.to_vec(),
        ),
        (Target::KgssXml, "get-new-key-request-content.xml", new_key.to_xml()),
        (
            Target::KgssXml,
            "get-key-request-content-etk.xml",
            GetKeyRequestContent {
                key_identifier: vec![1; 16],
                reply_to: ReplyTo::Etk(vec![0x30, 0x03, 2, 1, 0]),
            }
            .to_xml()
            .to_vec(),
        ),
        (
            Target::KgssXml,
            "get-key-request-content-kek.xml",
            GetKeyRequestContent {
                key_identifier: vec![1; 16],
                reply_to: ReplyTo::Kek {
                    key: SecretBytes::new(vec![2; 16]),
                    key_identifier: Some(vec![3; 4]),
                },
            }
            .to_xml()
            .to_vec(),
        ),
        (
            Target::KgssXml,
            "get-new-key-response-content.xml",
            GetNewKeyResponseContent {
                new_key_identifier: vec![4; 16],
                new_key: SecretBytes::new(vec![5; 16]),
            }
            .to_xml()
            .to_vec(),
        ),
        (
            Target::KgssXml,
            "get-key-response-content.xml",
            GetKeyResponseContent {
                key: SecretBytes::new(vec![6; 16]),
            }
            .to_xml()
            .to_vec(),
        ),
    ];
    seeds
        .into_iter()
        .map(|(target, name, bytes)| Seed {
            target,
            name,
            bytes,
        })
        .collect()
}

/// The JSON seeds: real keys, proofs and certificates from a test PKI.
fn json_seeds() -> Vec<Seed> {
    let pki = TestPki::generate("fuzz-services").expect("test PKI");
    let inst = pki
        .institution(&InstitutionSpec::new(
            targets::ATTESTATION_HOLDER.0,
            targets::ATTESTATION_HOLDER.1,
            "Fred",
        ))
        .expect("institution");
    let cert = |x: &openssl::x509::X509| {
        Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
    };
    let auth = cert(&inst.auth.cert);
    let chain: Vec<Certificate> = inst.chain.iter().map(cert).collect();
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256"))
            .expect("EC key"),
    )
    .expect("key");
    let spki = key.public_key_to_der().expect("SPKI");
    let key_id = KeyId::of_public_key(&spki).expect("key id");
    let statement = AttestationStatement::new(
        key_id.clone(),
        &spki,
        TokenInfo {
            label: "etee".into(),
            serial: "0001".into(),
            manufacturer: "SoftHSM project".into(),
            model: "SoftHSM v2".into(),
        },
        KeyAttributes {
            sensitive: true,
            extractable: false,
            never_extractable: true,
            local: true,
        },
        1_700_000_000,
    );
    let attestation =
        SignedAttestation::sign(&statement, &inst.auth.key, &auth, &chain).expect("attestation");
    let info = KeyInfo {
        label: Some("laptop".into()),
        key_use: Some(KeyUse::Enc),
        application_id: Some("APP".into()),
        properties: BTreeMap::from([("device".into(), "hsm-1".into())]),
    };
    let register = RegisterKeyRequest {
        key_id: key_id.clone(),
        public_key: spki.clone(),
        proof_of_possession: sign(
            &key,
            &pop_challenge(
                &key_id,
                &spki,
                &etee_formats::identity::Identity {
                    id_type: "SSIN".into(),
                    value: "76120902527".into(),
                    application_id: None,
                },
            ),
        )
        .expect("proof"),
        info: info.clone(),
        attestation: Some(attestation.clone()),
    };
    let holder = HolderInfo {
        identifiers: vec![IdentifierJson {
            id_type: "SSIN".into(),
            value: "76120902527".into(),
            application_identifier: None,
        }],
        name: Some("Fred".into()),
    };
    let record = KeyRecord {
        key_id,
        public_key: spki,
        holder: holder.clone(),
        info: info.clone(),
        attested: true,
        status: KeyStatus::Active,
        created_at: 1_700_000_000,
    };
    let etk = etee_formats::etk::Etk::parse(&inst.etk).expect("ETK");
    let jwks =
        JwkSet::from_certificates(&[auth, cert(&inst.etk_cert)], KeyUse::Sig).expect("JWK set");
    let seeds: Vec<(&'static str, Vec<u8>)> = vec![
        ("register-key-request.json", register.to_json()),
        ("add-info-request.json", AddInfoRequest { info }.to_json()),
        ("signed-attestation.json", attestation.to_json()),
        (
            "attestation-statement.json",
            statement.to_be_signed().expect("canonical"),
        ),
        ("key-record.json", record.to_json()),
        (
            "register-key-response.json",
            RegisterKeyResponse {
                key: record.clone(),
            }
            .to_json(),
        ),
        (
            "key-list-response.json",
            KeyListResponse {
                holder: holder.clone(),
                keys: vec![record.clone(), {
                    let mut r = record;
                    r.status = KeyStatus::Revoked;
                    r.attested = false;
                    r
                }],
            }
            .to_json(),
        ),
        ("holder.json", holder.to_json()),
        (
            "etks.json",
            EtkJson::list_to_json(&[EtkJson::from_etk(&etk)]),
        ),
        (
            "problem.json",
            Problem::unknown_search_criteria(Some("bad".into())).to_json(),
        ),
        ("jwks.json", jwks.to_json()),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| Seed {
            target: Target::ServicesJson,
            name,
            bytes,
        })
        .collect()
}

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut v = xml_seeds();
        v.extend(json_seeds());
        v
    })
}

#[test]
fn seeds_pass_the_checks() {
    for s in seeds() {
        s.target.run(&s.bytes);
    }
}

// ---- mutation ------------------------------------------------------------------------------

use etee_testpki::XorShift;

/// Tokens that matter to the XML reader and the SOAP/KGSS readers.
const XML_TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"/>",
    b"</",
    b"<a>",
    b"</a>",
    b"<a/>",
    b"&amp;",
    b"&lt;",
    b"&#1;",
    b"&#x10FFFF;",
    b"&#0;",
    b"&e;",
    b"&",
    b";",
    b"\"",
    b"'",
    b"=",
    b":",
    b" ",
    b"\r\n",
    b"\t",
    b"<!--x-->",
    b"<!---->",
    b"-->",
    b"<![CDATA[x]]>",
    b"]]>",
    b"<!DOCTYPE a>",
    b"<!doctype a>",
    b"<!ENTITY e \"x\">",
    b"<?pi?>",
    b"<?xml version=\"1.0\"?>",
    b"\xEF\xBB\xBF",
    b" xmlns=\"\"",
    b" xmlns:a=\"urn:a\"",
    b" xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"",
    b" a:x=\"1\"",
    b" xmlns:b=\"urn:a\"",
    b" b:x=\"2\"",
    b" xmlns:a=\"urn:a&amp;b\"",
    b" xmlns:t=\"http://schemas.xmlsoap.org/soap/envelope/\"",
    b" t:mustUnderstand=\"1\"",
    b" s:mustUnderstand=\"1\"",
    b" s:mustUnderstand=\"true\"",
    b" s:actor=\"http://schemas.xmlsoap.org/soap/actor/next\"",
    b" xml:lang=\"en\"",
    b" Id=\"x\"",
    b" Lang=\"FR\"",
    b"AAAA",
    b"====",
    b"\xff",
    b"\0",
    b"\xC3\xA9",
    b"\xEF\xBF\xBE",
];

/// Tokens that matter to the JSON readers.
const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e999",
    b"65536",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\"",
    b"\"AA\"",
    b"\"AA==\"",
    b"\"====\"",
    b"\"x5c\":[]",
    b"\"keys\":[]",
    b"\"info\":{}",
    b"\"properties\":{\"a\":\"b\"}",
    b"\"0000-01-01T00:00:00Z\"",
    b"Z\"",
    b"-00:01\"",
    b"\"9999-12-31T23:59:60Z\"",
    b"\"2020-02-30T00:00:00Z\"",
    b"+23:59\"",
    b"-23:59\"",
    b".999999999",
    b"\"kty\":\"RSA\"",
    b"\"kty\":\"EC\"",
    b"\"crv\":\"P-521\"",
    b"\\",
    b"\xff",
    b" ",
];

/// Mutates `seed` in one to four ways; `others` are seeds of the same target to splice
/// from.
fn mutate(rng: &mut XorShift, seed: &[u8], others: &[&[u8]], json: bool) -> Vec<u8> {
    let tokens = if json { JSON_TOKENS } else { XML_TOKENS };
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if m.is_empty() {
            m.push(b'<');
        }
        let i = rng.below(m.len() + 1);
        match rng.below(11) {
            0 if i < m.len() => m[i] ^= 1 << rng.below(8),
            1 | 2 => {
                let t = rng.pick(tokens);
                m.splice(i..i, t.iter().copied());
            }
            3 => m.truncate(i),
            4 => {
                let n = rng.below(64).min(m.len() - i);
                m.drain(i..i + n);
            }
            5 => {
                // A stretch copied elsewhere: repeated elements, deeper nesting.
                let n = rng.below(400).min(m.len() - i);
                let copy = m[i..i + n].to_vec();
                let at = rng.below(m.len() + 1);
                for _ in 0..1 + rng.below(3) {
                    m.splice(at..at, copy.iter().copied());
                }
            }
            6 => {
                // A stretch of another seed.
                let o = rng.pick(others);
                let from = rng.below(o.len());
                let n = rng.below(200).min(o.len() - from);
                m.splice(i..i, o[from..from + n].iter().copied());
            }
            7 if i < m.len() => {
                let j = rng.below(m.len());
                m.swap(i, j);
            }
            8 => {
                // One token replaced by another where it occurs.
                let a = rng.pick(tokens);
                if let Some(p) = m[i..].windows(a.len()).position(|w| w == *a) {
                    let b = rng.pick(tokens);
                    m.splice(i + p..i + p + a.len(), b.iter().copied());
                }
            }
            9 => {
                // A long run: big values, long names.
                let b = [b'A', b'0', b' ', b'x', b'<'][rng.below(5)];
                let n = 1 << rng.below(14);
                m.splice(i..i, std::iter::repeat_n(b, n));
            }
            _ if i < m.len() => m[i] = m[i].wrapping_add(1 + rng.below(3) as u8),
            _ => {}
        }
    }
    m
}

// ---- the runner ----------------------------------------------------------------------------

thread_local! {
    /// Set while the current thread runs fuzz inputs: its panics are recorded, not printed.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
}

/// Where the last panic of a fuzzing thread happened.
static SITE: Mutex<Option<String>> = Mutex::new(None);

/// Installs (once) a panic hook that records the site and message of a fuzzing thread's
/// panics and leaves every other thread's to the default hook.
fn install_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !FUZZING.with(Cell::get) {
                return default(info);
            }
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            let msg = etee_testpki::panic_message(info.payload());
            // The first line names the failed check; the rest (the input) varies.
            let first = msg.lines().next().unwrap_or_default().to_owned();
            *SITE.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{at}: {first}"));
        }));
    });
}

/// What went wrong with one input.
fn run_one(target: Target, data: &[u8], slow: Duration) -> Option<String> {
    let start = Instant::now();
    let (r, peak) = etee_testpki::peak_alloc::peak_allocation(|| {
        panic::catch_unwind(panic::AssertUnwindSafe(|| target.run(data)))
    });
    let took = start.elapsed();
    if r.is_err() {
        let site = SITE.lock().unwrap_or_else(|e| e.into_inner()).take();
        return Some(format!("PANIC {}", site.unwrap_or_default()));
    }
    if took > slow {
        return Some(format!("SLOW ({} input)", target.name()));
    }
    if peak > allocation_bound(data.len()) {
        return Some(format!("ALLOCATION ({} input)", target.name()));
    }
    None
}

struct Report {
    inputs: u64,
    /// Finding → (first input number, its target, count, an example's size and detail).
    found: BTreeMap<String, (u64, Target, u64, String)>,
}

/// Runs mutated seeds for `budget` (or `max_inputs`), from `seed`.
fn fuzz(seed: u64, budget: Duration, max_inputs: u64, dump: Option<&std::path::Path>) -> Report {
    install_hook();
    let seeds = seeds();
    let env_ms = std::env::var("ETEE_FUZZ_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let slow = Duration::from_millis(env_ms.unwrap_or(1000));
    let mut rng = XorShift(seed | 1);
    let deadline = Instant::now() + budget;
    let mut report = Report {
        inputs: 0,
        found: BTreeMap::new(),
    };
    FUZZING.with(|f| f.set(true));
    while Instant::now() < deadline && report.inputs < max_inputs {
        let s = rng.pick(seeds);
        let others: Vec<&[u8]> = seeds
            .iter()
            .filter(|o| o.target == s.target)
            .map(|o| o.bytes.as_slice())
            .collect();
        let input = mutate(
            &mut rng,
            &s.bytes,
            &others,
            s.target == Target::ServicesJson,
        );
        report.inputs += 1;
        let n = report.inputs;
        if let Some(what) = run_one(s.target, &input, slow) {
            let e = report.found.entry(what).or_insert((
                n,
                s.target,
                0,
                format!("{} bytes, from {}", input.len(), s.name),
            ));
            e.2 += 1;
            if let (Some(dir), 1) = (dump, e.2) {
                std::fs::create_dir_all(dir).expect("dump directory");
                let file = dir.join(format!("{}-{seed}-{n}", s.target.name()));
                std::fs::write(&file, &input).expect("dump");
                println!("dumped {}", file.display());
            }
        }
    }
    FUZZING.with(|f| f.set(false));
    report
}

fn print(report: &Report, seed: u64) {
    println!("{} inputs", report.inputs);
    for (what, (first, target, count, example)) in &report.found {
        println!(
            "{what}\n  {count}×, first at input #{first} ({}; seed {seed}; {example})",
            target.name()
        );
    }
}

/// A short run on every `cargo test`: a fixed seed, about two seconds.
#[test]
fn fuzz_smoke_short() {
    let _ = seeds();
    let seed = 0x5EED_2024;
    let report = fuzz(seed, Duration::from_secs(2), u64::MAX, None);
    print(&report, seed);
    assert!(report.inputs > 0);
    assert!(report.found.is_empty(), "{} findings", report.found.len());
}

/// Bounded mutation fuzzing (see the module doc).
#[test]
#[ignore = "bounded fuzzing: run with --ignored fuzz_smoke"]
fn fuzz_smoke() {
    let (secs, seed) = etee_testpki::fuzz_run_settings();
    println!("fuzz_smoke: seed {seed}, {secs} s");
    let _ = seeds();
    let dump = std::env::var_os("ETEE_FUZZ_DUMP").map(etee_testpki::from_project_root);
    let report = fuzz(seed, Duration::from_secs(secs), u64::MAX, dump.as_deref());
    print(&report, seed);
    assert!(report.found.is_empty(), "{} findings", report.found.len());
}

/// Replays the files in `ETEE_FUZZ_REPLAY` (a file or a directory) through the checks.
/// The target comes from the file name's prefix (`soap-…`, as `fuzz_smoke` dumps them) or
/// the directory's name (`fuzz/artifacts/soap/crash-…`); otherwise every target.
#[test]
#[ignore = "replays inputs: run with --ignored replay_fuzz_inputs"]
fn replay_fuzz_inputs() {
    let Some(path) = std::env::var_os("ETEE_FUZZ_REPLAY").map(etee_testpki::from_project_root)
    else {
        println!("set ETEE_FUZZ_REPLAY to a file or directory");
        return;
    };
    install_hook();
    let single = !path.is_dir();
    let mut failed = false;
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(&path)
            .expect("directory")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    } else {
        vec![path]
    };
    for f in files {
        let bytes = std::fs::read(&f).expect("input");
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        let dir = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|d| d.to_string_lossy().into_owned());
        let named: Vec<Target> = Target::ALL
            .into_iter()
            .filter(|t| {
                name.as_deref().is_some_and(|n| n.starts_with(t.name()))
                    || dir.as_deref() == Some(t.name())
            })
            .collect();
        let chosen = if named.is_empty() {
            Target::ALL.to_vec()
        } else {
            named
        };
        println!("{} ({} bytes): {chosen:?}", f.display(), bytes.len());
        for t in chosen {
            if single {
                // One file: its panic as it comes, with the whole message.
                t.run(&bytes);
                continue;
            }
            let start = Instant::now();
            FUZZING.with(|f| f.set(true));
            let outcome = run_one(t, &bytes, Duration::from_secs(10));
            FUZZING.with(|f| f.set(false));
            println!(
                "  {}: {:?} {}",
                t.name(),
                start.elapsed(),
                outcome.as_deref().unwrap_or("ok")
            );
            failed |= outcome.is_some();
        }
    }
    assert!(
        !failed,
        "some inputs fail the checks (replay one alone for details)"
    );
}

/// Writes the seeds for the cargo-fuzz targets: `ETEE_FUZZ_CORPUS=fuzz/corpus`.
#[test]
#[ignore = "writes files: run with --ignored write_fuzz_corpus"]
fn write_fuzz_corpus() {
    let Some(dir) = etee_testpki::fuzz_corpus_dir() else {
        return;
    };
    for s in seeds() {
        let d = dir.join(s.target.name());
        std::fs::create_dir_all(&d).expect("corpus directory");
        std::fs::write(d.join(s.name), &s.bytes).expect("seed");
        println!("wrote {}", d.join(s.name).display());
    }
}
