//! ETK parsing and validation: the shared vectors (spec §8 row 8) and the generated test PKI.
//!
//! The vectors live in `../shared/vectors` (or `$ETEE_VECTORS`); without them the vector
//! tests print "skipping" and pass (fail under `ETEE_E2E_STRICT=1`). The test-PKI tests
//! always run.

use etee_formats::cert::{Certificate, KeyAlgorithm};
use etee_formats::etk::{ldap_names_equal, Etk, EtkError};
use etee_formats::identity::Identity;
use etee_formats::trust::TrustAnchors;
use etee_formats::verdict::Error as N;
use etee_testpki::{InstitutionSpec, KeyUsageSpec, TestPki, Validity};
use openssl::hash::MessageDigest;
use openssl::x509::{X509Builder, X509};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------
// Helpers.

/// The shared vectors, or a skip (a failure under `ETEE_E2E_STRICT`).
#[track_caller]
fn vectors_dir() -> Option<PathBuf> {
    etee_testpki::skip::shared_vectors()
}

fn find_etks(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            find_etks(&p, out);
        } else if p.extension().is_some_and(|e| e == "etk") {
            out.push(p);
        }
    }
}

/// A certificate file, DER or PEM.
fn load_cert(path: &Path) -> Certificate {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let der = if bytes.starts_with(b"-----") {
        X509::from_pem(&bytes).unwrap().to_der().unwrap()
    } else {
        bytes
    };
    Certificate::from_der(&der).unwrap()
}

/// The test trust anchors of spec §8 row 9: the two "eH Root CA"s.
fn test_anchors(dir: &Path) -> TrustAnchors {
    let imports = dir.join("egelke-etee/etee-crypto-test/imports");
    TrustAnchors::new(vec![
        load_cert(&imports.join("CA.cer")),
        load_cert(&imports.join("CA2.cer")),
    ])
}

fn load_etk(dir: &Path, rel: &str) -> Etk {
    let bytes = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Etk::parse(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn names(errors: &[N]) -> Vec<&'static str> {
    errors.iter().map(|e| e.name()).collect()
}

// ---------------------------------------------------------------------------------------
// Shared vectors.

/// When to evaluate a vector: a time at which only the defect under test (if any) shows.
#[derive(Clone, Copy, Debug)]
enum At {
    /// One day after the encryption certificate's notBefore.
    EncStart,
    /// One day after both the encryption cert expired and the authentication cert started.
    EncExpired,
    /// The wall clock.
    Now,
}

impl At {
    fn time(self, etk: &Etk) -> i64 {
        match self {
            At::EncStart => etk.encryption_cert().not_before() + DAY,
            At::EncExpired => {
                etk.encryption_cert()
                    .not_after()
                    .max(etk.authentication_cert().not_before())
                    + DAY
            }
            At::Now => now(),
        }
    }
}

/// Expected verdicts with the test anchors (CA.cer + CA2.cer). Spec §8 row 8 gives the
/// characteristic names; the rest follows from the certificates (checked with `openssl x509`):
const EXPECTED: &[(&str, At, &[N])] = {
    use At::*;
    use N::*;
    &[
        // Valid ETKs of the 2014 test PKI (certificates valid until 2033, under CA2.cer).
        (
            "egelke-etee/etee-crypto-test/bob/bobs_public_key.etk",
            Now,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test/bob/bobs_public_key.etk",
            EncStart,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test-core/bob/bobs_public_key.etk",
            Now,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test/alice/alices_public_key.etk",
            Now,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/Bob2_public_key.etk",
            Now,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/Bob3_public_key.etk",
            Now,
            &[],
        ),
        // Valid ETKs of the 2008 test PKI (2010-2020, under CA.cer which expired in 2023).
        (
            "egelke-etee/etee-crypto-test/bob/old_bobs_public_key.etk",
            EncStart,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test/bob/old_bobs_public_key.etk",
            Now,
            &[
                ETK_ENCRYPTION_CERT_EXPIRED,
                ETK_AUTHENTICATION_CERT_EXPIRED,
                ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
            ],
        ),
        (
            "official-etee-crypto-1.6.1-tests/alice/alices_public_key.etk",
            EncStart,
            &[],
        ),
        (
            "official-etee-crypto-1.6.1-tests/test_keys/openssl_etk_generated.etk",
            EncStart,
            &[],
        ),
        // kgss.etk: "EXPIRED + STATUS_UNKNOWN" (2011-2015; TRAIL root not trusted).
        (
            "egelke-etee/etee-crypto-test/etk/kgss.etk",
            Now,
            &[
                ETK_ENCRYPTION_CERT_EXPIRED,
                ETK_AUTHENTICATION_CERT_EXPIRED,
                ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
            ],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/kgss.etk",
            EncStart,
            &[ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN],
        ),
        // Subjects differ (OU "Different Here" vs "Different There", other RDN order).
        (
            "egelke-etee/etee-crypto-test/etk/auth_and_encr_not_same_DN.etk",
            EncStart,
            &[ETK_CERTS_DO_NOT_MATCH],
        ),
        (
            "official-etee-crypto-1.6.1-tests/test_keys/auth_and_encr_not_same_DN.etk",
            EncStart,
            &[ETK_CERTS_DO_NOT_MATCH],
        ),
        // Encryption cert has keyUsage keyCertSign only; its subject also lacks the CN of
        // the authentication cert (CN=Invalid KeyUsage), so the DNs do not match either.
        (
            "egelke-etee/etee-crypto-test/etk/invalid_encrkey_usage.etk",
            EncStart,
            &[
                ETK_ENCRYPTION_CERT_HAS_INVALID_KEYUSAGE,
                ETK_CERTS_DO_NOT_MATCH,
            ],
        ),
        // Authentication cert has keyUsage keyCertSign only (and the same CN-less
        // encryption subject).
        (
            "official-etee-crypto-1.6.1-tests/test_keys/invalid_authkey_usage.etk",
            EncStart,
            &[
                ETK_AUTHENTICATION_CERT_HAS_INVALID_KEYUSAGE,
                ETK_CERTS_DO_NOT_MATCH,
            ],
        ),
        // The egelke (.NET) variant: its authentication cert has digitalSignature without
        // nonRepudiation. The official check only needs digitalSignature, so: no error.
        (
            "egelke-etee/etee-crypto-test/etk/invalid_authkey_usage.etk",
            EncStart,
            &[],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/invalid_authkey_usage.etk",
            Now,
            &[],
        ),
        // Authentication cert valid for one month (2010-04-26..05-26) before the
        // encryption cert starts (2010-07-26).
        (
            "egelke-etee/etee-crypto-test/etk/expired_auth.etk",
            EncStart,
            &[
                ETK_AUTHENTICATION_CERT_EXPIRED,
                ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
            ],
        ),
        (
            "official-etee-crypto-1.6.1-tests/test_keys/expired_auth.etk",
            EncStart,
            &[
                ETK_AUTHENTICATION_CERT_EXPIRED,
                ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
            ],
        ),
        // Encryption cert valid one week (2014-03-12..18), authentication cert until 2033.
        (
            "egelke-etee/etee-crypto-test/etk/expired_encr.etk",
            EncExpired,
            &[ETK_ENCRYPTION_CERT_EXPIRED],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/expired_encr.etk",
            Now,
            &[ETK_ENCRYPTION_CERT_EXPIRED],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/expired_encr.etk",
            EncStart,
            &[],
        ),
        (
            "official-etee-crypto-1.6.1-tests/test_keys/expired_encr.etk",
            EncExpired,
            &[ETK_ENCRYPTION_CERT_EXPIRED],
        ),
        // Authentication cert valid only from 2029.
        (
            "egelke-etee/etee-crypto-test/etk/not_yet_auth.etk",
            EncStart,
            &[
                ETK_AUTHENTICATION_CERT_NOT_YET_VALID,
                ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
            ],
        ),
        // Issued by another "eH CA"/"eH Root CA" pair (other keys) that is not trusted.
        (
            "egelke-etee/etee-crypto-test/etk/invalid_cert_chain.etk",
            EncStart,
            &[ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN],
        ),
        (
            "official-etee-crypto-1.6.1-tests/test_keys/invalid_cert_chain.etk",
            EncStart,
            &[ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN],
        ),
        // Same RDNs in another order: LdapName equality is ordered.
        (
            "egelke-etee/etee-crypto-test/etk/valid_but_scrambledDN.etk",
            EncStart,
            &[ETK_CERTS_DO_NOT_MATCH],
        ),
        // DSA-1024 authentication key signing the encryption cert (dsaWithSHA1): the
        // official ETK checker does not judge algorithms or sizes.
        (
            "egelke-etee/etee-crypto-test/etk/invalid_key_algorithm.etk",
            EncStart,
            &[],
        ),
        // eID-style authentication cert (2000-bit key) under a Citizen CA that is not in
        // the ETK, with a subject unlike the encryption cert's.
        (
            "egelke-etee/etee-crypto-test/etk/invalid_key_size.etk",
            EncStart,
            &[
                ETK_CERTS_DO_NOT_MATCH,
                ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
            ],
        ),
        // Government CT chain (Belgium Root CT2), not trusted here.
        (
            "egelke-etee/etee-crypto-test/etk/myself.etk",
            EncStart,
            &[ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN],
        ),
        // EC P-384 under the UAT ZetesConfidens root, not in the test anchors.
        (
            "egelke-etee/etee-crypto-test-core/ecc/fred.etk",
            EncStart,
            &[ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN],
        ),
    ]
};

#[test]
fn vector_verdict_table() {
    let Some(dir) = vectors_dir() else { return };
    let anchors = test_anchors(&dir);
    let mut etks = Vec::new();
    find_etks(&dir, &mut etks);
    assert!(
        etks.len() >= 30,
        "expected the vector ETKs, found {}",
        etks.len()
    );

    println!("{:<72} {:<32} errors", "file", "evaluated at");
    for p in &etks {
        let rel = p.strip_prefix(&dir).unwrap().display().to_string();
        match Etk::parse(&std::fs::read(p).unwrap()) {
            Ok(etk) => {
                for at in [At::EncStart, At::Now] {
                    let t = at.time(&etk);
                    let report = etk.validate_report(&anchors, t);
                    println!(
                        "{rel:<72} {:<32} {:?}",
                        format!("{at:?} {}", report.evaluated_at),
                        names(&report.errors)
                    );
                }
            }
            Err(e) => println!("{rel:<72} {:<32} parse error: {e}", "-"),
        }
    }

    let mut failures = Vec::new();
    for (rel, at, expected) in EXPECTED {
        let etk = load_etk(&dir, rel);
        let got = etk.validate(&anchors, at.time(&etk));
        if got != *expected {
            failures.push(format!(
                "{rel} at {at:?}: expected {:?}, got {:?}",
                names(expected),
                names(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "verdict mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_vector_etk_parses_or_fails_with_a_typed_error() {
    let Some(dir) = vectors_dir() else { return };
    let mut etks = Vec::new();
    find_etks(&dir, &mut etks);
    for p in etks {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&p).unwrap();
        match Etk::parse(&bytes) {
            Ok(etk) => {
                assert_ne!(name, "incorrectly_encoded.etk");
                // The roles of §3.1.
                assert!(!etk.authentication_cert().is_ca(), "{name}");
                assert!(etk.ca_chain().iter().all(Certificate::is_ca), "{name}");
                let ra = etk.ra_cert().unwrap_or_else(|| panic!("{name}: no RA"));
                assert_ne!(ra, etk.authentication_cert(), "{name}");
                assert!(etk.ra_signature_valid(), "{name}: RA signature");
                assert_eq!(etk.der(), bytes.as_slice());
                // The encryption certificate is self-issued by the holder.
                assert!(
                    ldap_names_equal(
                        etk.encryption_cert().issuer_der(),
                        etk.authentication_cert().subject_der()
                    ) || name.contains("not_same_DN")
                        || name.contains("scrambled")
                        || name.contains("key_size")
                        || name.contains("encrkey_usage")
                        || name.contains("authkey_usage"),
                    "{name}"
                );
            }
            Err(e) => {
                assert_eq!(name, "incorrectly_encoded.etk", "{}: {e}", p.display());
                // "hack" replaced the ContentInfo header.
                match e {
                    EtkError::Ber(b) => assert_eq!(b.offset, 0),
                    other => panic!("unexpected error {other:?}"),
                }
            }
        }
    }
}

#[test]
fn bobs_etk() {
    let Some(dir) = vectors_dir() else { return };
    let bytes =
        std::fs::read(dir.join("egelke-etee/etee-crypto-test/bob/bobs_public_key.etk")).unwrap();
    let etk = Etk::parse(&bytes).unwrap();
    // README: Bob's key alias is the decimal ETK serial 825373489.
    assert_eq!(etk.key_alias(), "825373489");
    assert_eq!(etk.encryption_cert().serial_decimal(), "825373489");
    let auth = etk.authentication_cert();
    assert_eq!(
        auth.subject_string(),
        "CN=Bob, OU=eHealth-platform Belgium, O=Federal Government, C=BE"
    );
    assert_eq!(etk.encryption_cert().subject_der(), auth.subject_der());
    assert_eq!(
        etk.ra_cert().unwrap().subject_string(),
        "C=BE, O=Federal Government, OU=eHealth-platform Belgium, CN=ETK-RA"
    );
    assert_eq!(etk.ca_chain().len(), 1);
    assert_eq!(
        etk.ca_chain()[0].subject_string(),
        "CN=eH CA, OU=eHealth-platform Belgium, O=Federal Government, C=BE"
    );
    assert_eq!(etk.encryption_cert().key_algorithm(), KeyAlgorithm::Rsa);
    // Bob's subject has no TYPE=value OU (and no serialNumber): no identity.
    assert!(auth.subject().iter().all(|a| !a.value.contains('=')));
    assert!(etk.identities().is_empty());

    // Base64, with line breaks, gives the same ETK.
    let b64 = openssl::base64::encode_block(&bytes);
    let wrapped: String = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n");
    let again = Etk::parse(format!("  {wrapped}\n").as_bytes()).unwrap();
    assert_eq!(again.der(), bytes.as_slice());
    assert_eq!(again.encryption_cert(), etk.encryption_cert());

    // The report.
    let anchors = test_anchors(&dir);
    let t = etk.encryption_cert().not_before() + DAY;
    let report = etk.validate_report(&anchors, t);
    assert!(report.valid && report.errors.is_empty() && report.ra_signature_valid);
    assert_eq!(report.encryption_cert.serial, "825373489");
    assert_eq!(report.encryption_cert.not_before, "2014-03-12T07:13:32Z");
    assert_eq!(report.encryption_cert.not_after, "2033-05-11T07:13:32Z");
    assert_eq!(report.evaluated_at, "2014-03-13T07:13:32Z");
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["errors"], serde_json::json!([]));
    assert_eq!(
        json["encryption_cert"]["subject"],
        "CN=Bob, OU=eHealth-platform Belgium, O=Federal Government, C=BE"
    );
    assert_eq!(json["encryption_cert"]["key_algorithm"], "rsa");

    // Without anchors the chain status is unknown.
    assert_eq!(
        etk.validate(&TrustAnchors::default(), t),
        vec![N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN]
    );
    // Before everything: not yet valid, the chain too.
    assert_eq!(
        etk.validate(&anchors, 1_000_000_000),
        vec![
            N::ETK_ENCRYPTION_CERT_NOT_YET_VALID,
            N::ETK_AUTHENTICATION_CERT_NOT_YET_VALID,
            N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
        ]
    );
}

#[test]
fn vector_identities() {
    let Some(dir) = vectors_dir() else { return };
    let id = |t: &str, v: &str, app: Option<&str>| Identity {
        id_type: t.into(),
        value: v.into(),
        application_id: app.map(Into::into),
    };
    let cases: &[(&str, Vec<Identity>)] = &[
        (
            "egelke-etee/etee-crypto-test/bob/old_bobs_public_key.etk",
            vec![id("NIHII", "00000000202", None)],
        ),
        (
            "official-etee-crypto-1.6.1-tests/alice/alices_public_key.etk",
            vec![id("NIHII", "00000000101", None)],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/kgss.etk",
            vec![id("CBE", "0809394427", Some("KGSS"))],
        ),
        (
            "egelke-etee/etee-crypto-test-core/ecc/fred.etk",
            vec![id("SSIN", "76120902527", None)],
        ),
        (
            "egelke-etee/etee-crypto-test/etk/myself.etk",
            vec![id("SSIN", "79021802145", None)],
        ),
        // eID-style subject: serialNumber=740906124 gives SSIN.
        (
            "egelke-etee/etee-crypto-test/etk/invalid_key_size.etk",
            vec![id("SSIN", "740906124", None)],
        ),
    ];
    for (rel, expected) in cases {
        let etk = load_etk(&dir, rel);
        assert_eq!(&etk.identities(), expected, "{rel}");
        // Cross-check against the subject: each identity's TYPE=value is an OU, or the
        // serialNumber for SSIN.
        for i in expected {
            let ou = format!("{}={}", i.id_type, i.value);
            let subject = etk.authentication_cert().subject();
            assert!(
                subject.iter().any(|a| a.value == ou || a.value == i.value),
                "{rel}: {ou}"
            );
        }
    }
    let kgss = load_etk(&dir, "egelke-etee/etee-crypto-test/etk/kgss.etk");
    assert_eq!(
        kgss.ra_cert().unwrap().subject_string(),
        "O=eHealth-platform Belgium, L=Brussels, 1.2.840.113549.1.9.1=registration@ehealth.fgov.be, C=BE, CN=Registration"
    );
    assert_eq!(
        kgss.encryption_cert().serial_decimal(),
        u128::from_str_radix("0521662CDAF0F4C6A6144640A406CD9D", 16)
            .unwrap()
            .to_string()
    );
}

#[test]
fn kgss_and_fred_under_their_own_roots() {
    let Some(dir) = vectors_dir() else { return };
    for rel in [
        "egelke-etee/etee-crypto-test/etk/kgss.etk",
        "egelke-etee/etee-crypto-test-core/ecc/fred.etk",
    ] {
        let etk = load_etk(&dir, rel);
        // Trust the self-signed root the ETK carries.
        let root = etk
            .ca_chain()
            .iter()
            .find(|c| c.subject_der() == c.issuer_der())
            .unwrap_or_else(|| panic!("{rel}: no root"))
            .clone();
        let anchors = TrustAnchors::new(vec![root]);
        let t = etk.encryption_cert().not_before() + DAY;
        assert_eq!(etk.validate(&anchors, t), vec![], "{rel}");
        // After the encryption cert's end: both expired (same period), chain expired too.
        let late = etk.encryption_cert().not_after() + DAY;
        assert_eq!(
            etk.validate(&anchors, late),
            vec![
                N::ETK_ENCRYPTION_CERT_EXPIRED,
                N::ETK_AUTHENTICATION_CERT_EXPIRED,
                N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
            ],
            "{rel}"
        );
    }
    let fred = load_etk(&dir, "egelke-etee/etee-crypto-test-core/ecc/fred.etk");
    for c in [fred.encryption_cert(), fred.authentication_cert()] {
        assert_eq!(c.key_algorithm(), KeyAlgorithm::Ec);
        assert_eq!(c.key_bits(), 384);
    }
}

// ---------------------------------------------------------------------------------------
// Generated test PKI.

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate("etk tests").unwrap())
}

fn pki_anchors() -> TrustAnchors {
    let root = pki().root.cert.to_der().unwrap();
    TrustAnchors::new(vec![Certificate::from_der(&root).unwrap()])
}

fn issue(spec: &InstitutionSpec) -> (etee_testpki::Institution, Etk) {
    let inst = pki().institution(spec).unwrap();
    let etk = Etk::parse(&inst.etk).unwrap();
    (inst, etk)
}

fn pharmacy() -> InstitutionSpec {
    InstitutionSpec::new("NIHII-PHARMACY", "12345678", "Apotheek Test")
}

#[test]
fn generated_good_etk() {
    let (inst, etk) = issue(&pharmacy());
    assert_eq!(etk.validate(&pki_anchors(), now()), vec![]);
    assert!(etk.ra_signature_valid());
    assert_eq!(etk.key_alias(), inst.etk_serial_decimal());
    assert_eq!(
        etk.encryption_cert().der(),
        inst.etk_cert.to_der().unwrap().as_slice()
    );
    assert_eq!(
        etk.authentication_cert().der(),
        inst.auth.cert.to_der().unwrap().as_slice()
    );
    assert_eq!(
        etk.ra_cert().unwrap().der(),
        pki().ra.cert.to_der().unwrap().as_slice()
    );
    assert_eq!(etk.ca_chain().len(), 1);
    assert_eq!(
        etk.identities(),
        vec![Identity {
            id_type: "NIHII-PHARMACY".into(),
            value: "12345678".into(),
            application_id: None
        }]
    );
    // Base64 of a DER ETK.
    let b64 = openssl::base64::encode_block(&inst.etk);
    assert_eq!(
        Etk::parse(b64.as_bytes()).unwrap().der(),
        inst.etk.as_slice()
    );
}

#[test]
fn generated_etk_with_application_id() {
    let (_, etk) = issue(
        &InstitutionSpec::new("CBE", "0809394427", "eHealth test").with_application_id("KGSS"),
    );
    assert_eq!(etk.validate(&pki_anchors(), now()), vec![]);
    assert_eq!(
        etk.identities(),
        vec![Identity {
            id_type: "CBE".into(),
            value: "0809394427".into(),
            application_id: Some("KGSS".into())
        }]
    );
    assert_eq!(
        etee_formats::identity::primary_identity(etk.authentication_cert()),
        etk.identities().into_iter().next()
    );
}

#[test]
fn generated_dn_mismatch() {
    let mut rdns = pharmacy().subject_rdns();
    // Another holder name.
    rdns[3].1 = "Apotheek Other".into();
    let rdns: Vec<(&str, &str)> = rdns.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
    let (_, etk) = issue(&pharmacy().with_etk_subject(&rdns));
    assert_eq!(
        etk.validate(&pki_anchors(), now()),
        vec![N::ETK_CERTS_DO_NOT_MATCH]
    );

    // Only case differs: equal for LdapName.
    let upper: Vec<(String, String)> = pharmacy()
        .subject_rdns()
        .into_iter()
        .map(|(f, v)| (f, v.to_uppercase()))
        .collect();
    let upper: Vec<(&str, &str)> = upper
        .iter()
        .map(|(f, v)| (f.as_str(), v.as_str()))
        .collect();
    let (_, etk) = issue(&pharmacy().with_etk_subject(&upper));
    assert_eq!(etk.validate(&pki_anchors(), now()), vec![]);

    // Same RDNs, reversed: not equal.
    let mut rev = pharmacy().subject_rdns();
    rev.reverse();
    let rev: Vec<(&str, &str)> = rev.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
    let (_, etk) = issue(&pharmacy().with_etk_subject(&rev));
    assert_eq!(
        etk.validate(&pki_anchors(), now()),
        vec![N::ETK_CERTS_DO_NOT_MATCH]
    );
}

#[test]
fn generated_validity() {
    let anchors = pki_anchors();
    let (_, etk) = issue(&pharmacy().with_auth_validity(Validity::days_around_now(30, -1)));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![
            N::ETK_AUTHENTICATION_CERT_EXPIRED,
            N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
        ]
    );
    let (_, etk) = issue(&pharmacy().with_etk_validity(Validity::days_around_now(30, -1)));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_ENCRYPTION_CERT_EXPIRED]
    );
    let (_, etk) = issue(&pharmacy().with_auth_validity(Validity::days_around_now(-1, 30)));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![
            N::ETK_AUTHENTICATION_CERT_NOT_YET_VALID,
            N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
        ]
    );
    let (_, etk) = issue(&pharmacy().with_etk_validity(Validity::days_around_now(-1, 30)));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_ENCRYPTION_CERT_NOT_YET_VALID]
    );
    // The root (10 years) expires after everything: all expired, the chain included.
    let (_, etk) = issue(&pharmacy());
    assert_eq!(
        etk.validate(&anchors, now() + 11 * 365 * DAY),
        vec![
            N::ETK_ENCRYPTION_CERT_EXPIRED,
            N::ETK_AUTHENTICATION_CERT_EXPIRED,
            N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
        ]
    );
    // Leaf certificates valid, root expired (PKI made 1 day back for 10 years, leaves
    // valid much longer here): EXPIRED comes from the chain only.
    let long = Validity {
        not_before: now() - DAY,
        not_after: now() + 20 * 365 * DAY,
    };
    let (_, etk) = issue(&pharmacy().with_auth_validity(long).with_etk_validity(long));
    assert_eq!(
        etk.validate(&anchors, now() + 11 * 365 * DAY),
        vec![
            N::ETK_AUTHENTICATION_CERT_EXPIRED,
            N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
        ]
    );
}

#[test]
fn generated_key_usage() {
    let anchors = pki_anchors();
    let enc_sign_only = KeyUsageSpec {
        critical: true,
        key_encipherment: true,
        ..KeyUsageSpec::default()
    };
    let (_, etk) = issue(&pharmacy().with_etk_key_usage(enc_sign_only));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_ENCRYPTION_CERT_HAS_INVALID_KEYUSAGE]
    );
    // No keyUsage extension at all is invalid too.
    let (_, etk) = issue(&pharmacy().with_etk_key_usage(KeyUsageSpec::none()));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_ENCRYPTION_CERT_HAS_INVALID_KEYUSAGE]
    );
    let non_rep = KeyUsageSpec {
        critical: true,
        non_repudiation: true,
        ..KeyUsageSpec::default()
    };
    let (_, etk) = issue(&pharmacy().with_auth_key_usage(non_rep));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_AUTHENTICATION_CERT_HAS_INVALID_KEYUSAGE]
    );
    let (_, etk) = issue(&pharmacy().with_auth_key_usage(KeyUsageSpec::none()));
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_AUTHENTICATION_CERT_HAS_INVALID_KEYUSAGE]
    );
    // Extra bits are fine.
    let rich = KeyUsageSpec {
        digital_signature: true,
        non_repudiation: true,
        key_encipherment: true,
        ..KeyUsageSpec::default()
    };
    let (_, etk) = issue(&pharmacy().with_auth_key_usage(rich));
    assert_eq!(etk.validate(&anchors, now()), vec![]);
}

#[test]
fn generated_untrusted_root() {
    let (_, etk) = issue(&pharmacy());
    let other = TestPki::generate("other").unwrap();
    let anchors = TrustAnchors::new(vec![Certificate::from_der(
        &other.root.cert.to_der().unwrap(),
    )
    .unwrap()]);
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN]
    );
    // Trusting the RA's root does not make an ETK of the other PKI valid either way round.
    let theirs = Etk::parse(&other.institution(&pharmacy()).unwrap().etk).unwrap();
    assert_eq!(
        theirs.validate(&pki_anchors(), now()),
        vec![N::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN]
    );
}

/// An encryption certificate for `subject_of` signed by `key` with `md` (None for Ed25519).
fn enc_cert_signed_by(
    subject_of: &X509,
    key: &openssl::pkey::PKeyRef<openssl::pkey::Private>,
    md: Option<MessageDigest>,
) -> X509 {
    let enc_key =
        openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(4242)
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(subject_of.subject_name()).unwrap();
    b.set_issuer_name(subject_of.subject_name()).unwrap();
    b.set_pubkey(&enc_key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::from_unix(now() - DAY).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::from_unix(now() + 365 * DAY).unwrap())
        .unwrap();
    b.append_extension(
        openssl::x509::extension::KeyUsage::new()
            .critical()
            .key_encipherment()
            .data_encipherment()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(key, md.unwrap_or_else(MessageDigest::null)).unwrap();
    b.build()
}

#[test]
fn generated_signature_checks() {
    let anchors = pki_anchors();
    let a = pki().institution(&pharmacy()).unwrap();
    let b = pki().institution(&pharmacy()).unwrap();
    // A's encryption cert (same DN) presented with B's authentication cert.
    let etk = Etk::parse(&pki().sign_etk(&a.etk_cert, &b.auth.cert).unwrap()).unwrap();
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_ENCRYPTION_CERT_SIGNATURE_NOT_VALID]
    );
    assert!(etk.ra_signature_valid());

    // Signed with an EC key while the authentication key is RSA: the key cannot verify.
    let ec = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let ec = openssl::pkey::PKey::from_ec_key(ec).unwrap();
    let enc = enc_cert_signed_by(&a.auth.cert, &ec, Some(MessageDigest::sha256()));
    let etk = Etk::parse(&pki().sign_etk(&enc, &a.auth.cert).unwrap()).unwrap();
    assert_eq!(
        etk.validate(&anchors, now()),
        vec![N::ETK_AUTHENTICATION_CERT_HAS_INVALID_KEY]
    );

    // The right key, SHA-512: fine.
    let enc = enc_cert_signed_by(&a.auth.cert, &a.auth.key, Some(MessageDigest::sha512()));
    let etk = Etk::parse(&pki().sign_etk(&enc, &a.auth.cert).unwrap()).unwrap();
    assert_eq!(etk.validate(&anchors, now()), vec![]);

    // An unknown signature algorithm (1.2.840.113549.1.1.99 in the outer AlgorithmIdentifier).
    let mut der = enc.to_der().unwrap();
    let sha512_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    let pos = der.windows(9).rposition(|w| w == sha512_rsa).unwrap();
    der[pos + 8] = 0x63;
    let weird = X509::from_der(&der).unwrap();
    let etk = Etk::parse(&pki().sign_etk(&weird, &a.auth.cert).unwrap()).unwrap();
    assert_eq!(etk.validate(&anchors, now()), vec![N::ETK_CERTS_INVALID]);
}

#[test]
fn missing_parts_are_typed_errors() {
    let inst = pki().institution(&pharmacy()).unwrap();
    // Only the RA certificate: no authentication certificate.
    let only_ra = openssl::cms::CmsContentInfo::sign(
        Some(&pki().ra.cert),
        Some(&pki().ra.key),
        None,
        Some(&inst.etk_cert.to_der().unwrap()),
        openssl::cms::CMSOptions::NOATTR | openssl::cms::CMSOptions::BINARY,
    )
    .unwrap()
    .to_der()
    .unwrap();
    assert!(matches!(
        Etk::parse(&only_ra),
        Err(EtkError::NoAuthenticationCert)
    ));
    // Detached: no encapsulated content.
    let detached = openssl::cms::CmsContentInfo::sign(
        Some(&inst.auth.cert),
        Some(&inst.auth.key),
        None,
        Some(&inst.etk_cert.to_der().unwrap()),
        openssl::cms::CMSOptions::NOATTR
            | openssl::cms::CMSOptions::BINARY
            | openssl::cms::CMSOptions::DETACHED,
    )
    .unwrap()
    .to_der()
    .unwrap();
    assert!(matches!(
        Etk::parse(&detached),
        Err(EtkError::NoContent { .. })
    ));
    // Content that is not a certificate.
    let not_a_cert = openssl::cms::CmsContentInfo::sign(
        Some(&pki().ra.cert),
        Some(&pki().ra.key),
        None,
        Some(b"hello"),
        openssl::cms::CMSOptions::NOATTR | openssl::cms::CMSOptions::BINARY,
    )
    .unwrap()
    .to_der()
    .unwrap();
    assert!(matches!(
        Etk::parse(&not_a_cert),
        Err(EtkError::EncryptionCert { .. })
    ));
    // Not SignedData: an EnvelopedData OID.
    let mut der = inst.etk.clone();
    let pos = der
        .windows(9)
        .position(|w| w == etee_formats::oid::SIGNED_DATA)
        .unwrap();
    der[pos + 8] = 0x03;
    assert!(
        matches!(Etk::parse(&der), Err(EtkError::NotSignedData { offset, .. }) if offset as usize == pos - 2)
    );
    assert!(matches!(Etk::parse(b""), Err(EtkError::Empty)));
    assert!(matches!(
        Etk::parse(b"not base64!"),
        Err(EtkError::Base64 { offset: 10 })
    ));
    // Trailing garbage after the ContentInfo.
    let mut der = inst.etk.clone();
    der.push(0);
    assert!(matches!(Etk::parse(&der), Err(EtkError::Ber(_))));
}

#[test]
fn an_etk_with_too_many_certificates_is_refused() {
    use etee_formats::ber::BerErrorKind;
    use etee_formats::cms::MAX_CERTIFICATES;
    use openssl::{ec, nid::Nid, pkey::PKey};
    let inst = pki().institution(&pharmacy()).unwrap();
    // Distinct certificates (CMS refuses a repeated one), cheap to make.
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
    let filler = |i: usize| {
        let name = etee_testpki::build_name(&[("CN", format!("filler {i}"))]).unwrap();
        etee_testpki::self_signed(&name, &key, None).unwrap()
    };
    // The RA's (added by CMS), the authentication certificate, and fillers: n in all.
    let etk_of = |n: usize| {
        let mut extra = openssl::stack::Stack::new().unwrap();
        extra.push(inst.auth.cert.clone()).unwrap();
        for i in 2..n {
            extra.push(filler(i)).unwrap();
        }
        openssl::cms::CmsContentInfo::sign(
            Some(&pki().ra.cert),
            Some(&pki().ra.key),
            Some(&extra),
            Some(&inst.etk_cert.to_der().unwrap()),
            openssl::cms::CMSOptions::NOATTR | openssl::cms::CMSOptions::BINARY,
        )
        .unwrap()
        .to_der()
        .unwrap()
    };
    let etk = Etk::parse(&etk_of(MAX_CERTIFICATES)).unwrap();
    assert_eq!(
        etk.authentication_cert().der(),
        inst.auth.cert.to_der().unwrap()
    );
    match Etk::parse(&etk_of(MAX_CERTIFICATES + 1)) {
        Err(EtkError::Ber(e)) => assert_eq!(
            e.kind,
            BerErrorKind::TooMany {
                limit: MAX_CERTIFICATES as u64
            }
        ),
        other => panic!("{other:?}"),
    }
}

/// Every single-bit flip and every truncation of an ETK gives a typed error or a parsed ETK
/// whose validation and report run: never a panic.
#[test]
fn mutations_never_panic() {
    let mut inputs = vec![pki().institution(&pharmacy()).unwrap().etk];
    if let Some(dir) = vectors_dir() {
        inputs.push(
            std::fs::read(dir.join("egelke-etee/etee-crypto-test/bob/bobs_public_key.etk"))
                .unwrap(),
        );
        inputs.push(
            std::fs::read(dir.join("egelke-etee/etee-crypto-test-core/ecc/fred.etk")).unwrap(),
        );
    }
    let anchors = pki_anchors();
    let t = now();
    let (mut ok, mut err) = (0usize, 0usize);
    let mut check = |bytes: &[u8]| match Etk::parse(bytes) {
        Ok(etk) => {
            ok += 1;
            let _ = etk.validate(&anchors, t);
            if ok % 16 == 0 {
                let _ = serde_json::to_string(&etk.validate_report(&anchors, t)).unwrap();
            }
        }
        Err(e) => {
            err += 1;
            let _ = e.to_string();
        }
    };
    for (n, input) in inputs.iter().enumerate() {
        // Certificate parsing is OpenSSL-bound (~0.3 ms per certificate in debug builds):
        // every byte of the generated ETK, every third byte of the vectors.
        let stride = if n == 0 { 1 } else { 3 };
        for i in (0..input.len()).step_by(stride) {
            let mut m = input.clone();
            m[i] ^= 1 << (i % 8);
            check(&m);
        }
        for len in 0..input.len() {
            check(&input[..len]);
        }
        // As Base64, truncated.
        let b64 = openssl::base64::encode_block(input);
        for len in (0..b64.len()).step_by(7) {
            check(&b64.as_bytes()[..len]);
        }
    }
    println!("mutations: {ok} parsed, {err} rejected");
    assert!(err > 0 && ok > 0);
}
