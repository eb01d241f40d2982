//! Checks the generated PKI with OpenSSL (library and, when present, CLI) and
//! with a tiny DER reader for the structural details OpenSSL does not expose.

use std::process::Command;
use std::sync::OnceLock;

use etee_testpki::{ehealth_dn, Institution, InstitutionSpec, KeyUsageSpec, TestPki, Validity};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::stack::Stack;
use openssl::x509::{X509Ref, X509StoreContext, X509VerifyResult, X509};

// Key generation dominates the run time, so tests share one PKI and one
// regular institution.
fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate("tests").unwrap())
}

fn pharmacy() -> &'static Institution {
    static INST: OnceLock<Institution> = OnceLock::new();
    INST.get_or_init(|| {
        pki()
            .institution(&InstitutionSpec::new(
                "NIHII-PHARMACY",
                "12345678",
                "Apotheek Test",
            ))
            .unwrap()
    })
}

/// Verifies `cert` against the PKI root; returns OpenSSL's verdict.
fn verify_chain(cert: &X509Ref) -> X509VerifyResult {
    let store = pki().store().unwrap();
    let mut ctx = X509StoreContext::new().unwrap();
    let untrusted = Stack::new().unwrap();
    ctx.init(&store, cert, &untrusted, |c| {
        c.verify_cert()?;
        Ok(c.error())
    })
    .unwrap()
}

// --- a minimal DER reader (definite lengths only, which is all DER has) ---

/// Splits the first TLV off `buf`: (tag, contents, rest).
fn tlv(buf: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = buf[0];
    let (len, hdr) = match buf[1] {
        l if l < 0x80 => (l as usize, 2),
        l => {
            let n = (l & 0x7f) as usize;
            let len = buf[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        }
    };
    (tag, &buf[hdr..hdr + len], &buf[hdr + len..])
}

/// The TLVs inside a constructed value's contents.
fn children(mut contents: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, value, rest) = tlv(contents);
        out.push((tag, value));
        contents = rest;
    }
    out
}

/// The complete encodings of the TLVs inside a constructed value's contents.
fn raw_children(mut contents: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (_, _, rest) = tlv(contents);
        let len = contents.len() - rest.len();
        out.push(&contents[..len]);
        contents = rest;
    }
    out
}

/// The fields of a certificate's TBSCertificate.
fn tbs_fields(cert: &X509Ref) -> Vec<(u8, Vec<u8>)> {
    let der = cert.to_der().unwrap();
    let (_, cert_seq, _) = tlv(&der);
    let (_, tbs, _) = tlv(cert_seq);
    children(tbs)
        .into_iter()
        .map(|(t, v)| (t, v.to_vec()))
        .collect()
}

fn extension_count(cert: &X509Ref) -> usize {
    match tbs_fields(cert).iter().find(|(t, _)| *t == 0xa3) {
        None => 0,
        Some((_, explicit)) => {
            let (_, exts, _) = tlv(explicit);
            children(exts).len()
        }
    }
}

/// (short name, ASN.1 string tag, value) for each RDN of the subject, in DER order.
fn subject_rdns(cert: &X509Ref) -> Vec<(String, u8, String)> {
    let tags: Vec<u8> = {
        let fields = tbs_fields(cert);
        // version [0], serial, signature, issuer, validity, subject
        let subject = &fields[5].1;
        children(subject)
            .iter()
            .map(|(_, set)| {
                let (_, atv, _) = tlv(set);
                children(atv)[1].0
            })
            .collect()
    };
    cert.subject_name()
        .entries()
        .zip(tags)
        .map(|(e, tag)| {
            (
                e.object().nid().short_name().unwrap().to_owned(),
                tag,
                e.data().to_string().unwrap(),
            )
        })
        .collect()
}

const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

// --- tests ---

#[test]
fn root_and_ra() {
    let pki = pki();
    assert!(pki.root.cert.verify(&pki.root.key).unwrap(), "self-signed");
    assert_eq!(verify_chain(&pki.root.cert), X509VerifyResult::OK);
    assert_eq!(verify_chain(&pki.ra.cert), X509VerifyResult::OK);
    let text = String::from_utf8(pki.root.cert.to_text().unwrap()).unwrap();
    assert!(text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE"));
    assert!(text.contains("Certificate Sign, CRL Sign"));
    assert!(text.contains("CN=etee Test Root CA tests"));
    assert_eq!(pki.root.key.bits(), 2048);
    let text = String::from_utf8(pki.ra.cert.to_text().unwrap()).unwrap();
    assert!(text.contains("CN=ETK RA tests"));
    assert!(text.contains("X509v3 Key Usage: critical\n                Digital Signature\n"));
}

#[test]
fn auth_cert_chains_to_root() {
    let inst = pharmacy();
    assert_eq!(verify_chain(&inst.auth.cert), X509VerifyResult::OK);
    assert_eq!(inst.chain.len(), 1);
    assert_eq!(
        inst.chain[0].to_der().unwrap(),
        pki().root.cert.to_der().unwrap()
    );
    let text = String::from_utf8(inst.auth.cert.to_text().unwrap()).unwrap();
    assert!(text.contains("X509v3 Key Usage: critical\n                Digital Signature\n"));
    assert!(text.contains("CA:FALSE"));
    assert!(text.contains("X509v3 Subject Key Identifier"));
    assert!(text.contains("X509v3 Authority Key Identifier"));
    assert_eq!(inst.auth.key.bits(), 2048);
}

#[test]
fn enc_cert_is_signed_by_auth_key() {
    let inst = pharmacy();
    let auth_pub = inst.auth.cert.public_key().unwrap();
    assert!(inst.etk_cert.verify(&auth_pub).unwrap());
    assert!(!inst.etk_cert.verify(&pki().root.key).unwrap());
    // issuer = subject = the authentication certificate's subject
    let auth_der = inst.auth.cert.subject_name().to_der().unwrap();
    assert_eq!(inst.etk_cert.subject_name().to_der().unwrap(), auth_der);
    assert_eq!(inst.etk_cert.issuer_name().to_der().unwrap(), auth_der);
    // the encryption key matches the certificate
    assert!(inst.etk_cert.public_key().unwrap().public_eq(&inst.etk_key));
    assert_eq!(inst.etk_cert.version(), 2);
    assert_eq!(
        inst.etk_cert.signature_algorithm().object().to_string(),
        "sha256WithRSAEncryption"
    );
}

#[test]
fn enc_cert_has_only_critical_encipherment_key_usage() {
    let inst = pharmacy();
    assert_eq!(extension_count(&inst.etk_cert), 1);
    let text = String::from_utf8(inst.etk_cert.to_text().unwrap()).unwrap();
    assert!(text.contains(
        "X509v3 Key Usage: critical\n                Key Encipherment, Data Encipherment\n"
    ));
}

#[test]
fn serial_is_positive_random_64_bit() {
    let inst = pharmacy();
    let bn = inst.etk_cert.serial_number().to_bn().unwrap();
    assert!(!bn.is_negative());
    assert!(bn.num_bits() > 0 && bn.num_bits() <= 63);
    assert_eq!(
        inst.etk_serial_decimal(),
        bn.to_dec_str().unwrap().to_string()
    );
    // different certificates, different serials
    assert_ne!(
        inst.etk_cert.serial_number().to_bn().unwrap(),
        inst.auth.cert.serial_number().to_bn().unwrap()
    );
}

#[test]
fn dn_profile_order_and_string() {
    let inst = pharmacy();
    let expected = [
        ("C", "BE"),
        ("O", "Federal Government"),
        ("OU", "eHealth-platform Belgium"),
        ("OU", "Apotheek Test"),
        ("OU", "NIHII-PHARMACY=12345678"),
        ("CN", "NIHII-PHARMACY=12345678"),
    ];
    let rdns = subject_rdns(&inst.auth.cert);
    let got: Vec<(&str, &str)> = rdns
        .iter()
        .map(|(f, _, v)| (f.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected);
    // UTF8String everywhere except countryName (PrintableString by ASN.1 definition)
    for (field, tag, _) in &rdns {
        let want = if field == "C" { 0x13 } else { 0x0c };
        assert_eq!(*tag, want, "{field}");
    }
    assert_eq!(
        inst.subject_string(),
        "CN=NIHII-PHARMACY=12345678,OU=NIHII-PHARMACY=12345678,OU=Apotheek Test,\
         OU=eHealth-platform Belgium,O=Federal Government,C=BE"
    );
}

#[test]
fn dn_with_application_id() {
    let rdns = ehealth_dn("CBE", "0123456789", "Hospital", Some("ETEE"));
    let got: Vec<(&str, &str)> = rdns.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
    assert_eq!(
        got,
        [
            ("C", "BE"),
            ("O", "Federal Government"),
            ("OU", "eHealth-platform Belgium"),
            ("OU", "Hospital"),
            ("OU", "CBE=0123456789"),
            ("OU", "ETEE"),
            ("CN", "CBE=0123456789, ETEE"),
        ]
    );
}

#[test]
fn etk_cms_verifies_and_wraps_enc_cert() {
    let inst = pharmacy();
    let mut cms = CmsContentInfo::from_der(&inst.etk).unwrap();
    let store = pki().store().unwrap();
    let mut content = Vec::new();
    cms.verify(
        None,
        Some(&store),
        None,
        Some(&mut content),
        CMSOptions::BINARY,
    )
    .unwrap();
    assert_eq!(content, inst.etk_cert.to_der().unwrap());
}

#[test]
fn etk_cms_structure() {
    let inst = pharmacy();
    let (tag, ci, rest) = tlv(&inst.etk);
    assert_eq!(tag, 0x30);
    assert!(rest.is_empty());
    let ci = children(ci);
    assert_eq!(ci[0], (0x06, OID_SIGNED_DATA));
    let (_, sd, _) = tlv(ci[1].1);
    let sd = children(sd);
    // version, digestAlgorithms, encapContentInfo, [0] certificates, signerInfos
    let tags: Vec<u8> = sd.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, [0x02, 0x31, 0x30, 0xa0, 0x31]);

    let encap = children(sd[2].1);
    assert_eq!(encap[0], (0x06, OID_DATA));
    assert_eq!(encap.len(), 2, "content is attached");
    let (tag, octets, _) = tlv(encap[1].1);
    assert_eq!(tag, 0x04);
    assert_eq!(octets, inst.etk_cert.to_der().unwrap());

    let certs: Vec<X509> = raw_children(sd[3].1)
        .into_iter()
        .map(|der| X509::from_der(der).unwrap())
        .collect();
    let mut got: Vec<Vec<u8>> = certs.iter().map(|c| c.to_der().unwrap()).collect();
    let mut want = vec![
        pki().ra.cert.to_der().unwrap(),
        inst.auth.cert.to_der().unwrap(),
        pki().root.cert.to_der().unwrap(),
    ];
    got.sort();
    want.sort();
    assert_eq!(got, want);

    let signers = children(sd[4].1);
    assert_eq!(signers.len(), 1);
    let si = children(signers[0].1);
    // version, sid, digestAlgorithm, signatureAlgorithm, signature: no [0] signedAttrs
    let tags: Vec<u8> = si.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, [0x02, 0x30, 0x30, 0x30, 0x04]);
    assert_eq!(children(si[2].1)[0], (0x06, OID_SHA256));
    assert_eq!(children(si[3].1)[0], (0x06, OID_RSA_ENCRYPTION));
}

#[test]
fn etk_verifies_with_openssl_cli() {
    let inst = pharmacy();
    let dir = tempfile::tempdir().unwrap();
    let etk = dir.path().join("etk.der");
    let root = dir.path().join("root.pem");
    let out = dir.path().join("content.der");
    std::fs::write(&etk, &inst.etk).unwrap();
    std::fs::write(&root, pki().root.cert.to_pem().unwrap()).unwrap();
    let output = Command::new("openssl")
        .args(["cms", "-verify", "-inform", "DER", "-binary", "-in"])
        .arg(&etk)
        .arg("-CAfile")
        .arg(&root)
        .arg("-out")
        .arg(&out)
        .output();
    let Ok(output) = output else {
        eprintln!("openssl CLI not found; skipping");
        return;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        inst.etk_cert.to_der().unwrap()
    );
}

#[test]
fn negative_weak_auth_key_and_mismatched_etk_subject() {
    let spec = InstitutionSpec::new("NIHII-HOSPITAL", "71000000", "Weak Hospital")
        .with_auth_key_bits(1024)
        .with_application_id("ETEE")
        .with_etk_subject(&[("C", "BE"), ("CN", "NIHII-HOSPITAL=99999999")]);
    let inst = pki().institution(&spec).unwrap();
    assert_eq!(inst.auth.key.bits(), 1024);
    assert_eq!(verify_chain(&inst.auth.cert), X509VerifyResult::OK);
    let etk_subject = inst.etk_cert.subject_name().to_der().unwrap();
    assert_eq!(inst.etk_cert.issuer_name().to_der().unwrap(), etk_subject);
    assert_ne!(etk_subject, inst.auth.cert.subject_name().to_der().unwrap());
    // still signed by the authentication key and wrapped in a valid ETK
    assert!(inst
        .etk_cert
        .verify(&inst.auth.cert.public_key().unwrap())
        .unwrap());
    let mut cms = CmsContentInfo::from_der(&inst.etk).unwrap();
    let store = pki().store().unwrap();
    cms.verify(None, Some(&store), None, None, CMSOptions::BINARY)
        .unwrap();
    assert!(inst
        .subject_string()
        .starts_with("CN=NIHII-HOSPITAL=71000000\\, ETEE,OU=ETEE,"));
}

#[test]
fn negative_key_usage_and_validity() {
    let spec = InstitutionSpec::new("SSIN", "85073003328", "Expired Person")
        .with_auth_validity(Validity::days_around_now(30, -1))
        .with_auth_key_usage(KeyUsageSpec {
            key_encipherment: true,
            ..KeyUsageSpec::none()
        })
        .with_etk_key_usage(KeyUsageSpec::none())
        .with_etk_key_bits(1024);
    let inst = pki().institution(&spec).unwrap();
    assert_eq!(
        verify_chain(&inst.auth.cert).error_string(),
        "certificate has expired"
    );
    let text = String::from_utf8(inst.auth.cert.to_text().unwrap()).unwrap();
    assert!(text.contains("X509v3 Key Usage: \n                Key Encipherment\n"));
    assert_eq!(extension_count(&inst.etk_cert), 0);
    assert_eq!(inst.etk_key.bits(), 1024);
}

#[test]
fn inverted_validity_is_rejected() {
    let spec = InstitutionSpec::new("EHP", "1990000000", "Broken").with_etk_validity(Validity {
        not_before: 2_000_000_000,
        not_after: 1_000_000_000,
    });
    assert!(pki().institution(&spec).is_err());
}
