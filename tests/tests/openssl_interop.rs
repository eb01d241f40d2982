//! What `etee seal` writes, opened by an independent implementation (`openssl cms`):
//! outer signature verified against the world's CA, middle layer decrypted with the
//! recipient's ETK key (or the KEK), inner signature verified with the outer signer's
//! certificate. Plus the BER layout of the official library (indefinite lengths, content
//! in 1000-byte primitive OCTET STRING chunks), checked with a BER reader of our own.

use etee_e2e::{
    assert_chunked, ber, content, etee, openssl, openssl_cli, scratch, Tlv, World, OID_DATA,
    OID_ENVELOPED_DATA, OID_SIGNED_DATA,
};
use std::path::Path;

/// `30 80 06 09 <id-signedData> a0 80`: ContentInfo, contentType, `[0]`, all indefinite.
const OUTER_PREFIX: [u8; 15] = [
    0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80,
];

const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];

const KEK: &str = "0f0e0d0c0b0a09080706050403020100";
/// The KEK identifier as raw bytes; given to `etee` in Base64, to `openssl` in hex.
const KEK_ID: &[u8] = b"kgss-e2e-key-0042";
const KEK_ID_B64: &str = "a2dzcy1lMmUta2V5LTAwNDI=";

/// A SignedData ContentInfo: checks the framing and returns (SignedData, eContent wrapper).
#[track_caller]
fn signed_data<'a>(ci: &'a Tlv<'a>, what: &str) -> (&'a Tlv<'a>, &'a Tlv<'a>) {
    assert_eq!((ci.tag, ci.indefinite), (0x30, true), "{what}: ContentInfo");
    assert_eq!(ci.child(0).value, OID_SIGNED_DATA, "{what}: contentType");
    let explicit = ci.child(1);
    assert_eq!(
        (explicit.tag, explicit.indefinite),
        (0xa0, true),
        "{what}: [0]"
    );
    let sd = explicit.child(0);
    assert_eq!((sd.tag, sd.indefinite), (0x30, true), "{what}: SignedData");
    assert_eq!(sd.child(0).value, [1], "{what}: SignedData version");
    let encap = sd.child(2);
    assert_eq!(
        (encap.tag, encap.indefinite),
        (0x30, true),
        "{what}: encapContentInfo"
    );
    assert_eq!(encap.child(0).value, OID_DATA, "{what}: eContentType");
    let e = encap.child(1);
    assert_eq!((e.tag, e.indefinite), (0xa0, true), "{what}: eContent [0]");
    let octets = e.child(0);
    assert_eq!(
        octets.tag, 0x24,
        "{what}: eContent is not a constructed OCTET STRING"
    );
    // Exactly one SignerInfo: SHA-256, RSASSA-PSS, with signed attributes that include
    // contentType, signingTime and messageDigest.
    let signer_infos = sd.children.last().unwrap();
    assert_eq!(signer_infos.tag, 0x31, "{what}: signerInfos");
    assert_eq!(signer_infos.children.len(), 1, "{what}: SignerInfo count");
    let si = signer_infos.child(0);
    assert_eq!(
        si.child(2).child(0).value,
        OID_SHA256,
        "{what}: digestAlgorithm"
    );
    let attrs = si.child(3);
    assert_eq!(attrs.tag, 0xa0, "{what}: signedAttrs");
    for (oid, name) in [
        (OID_CONTENT_TYPE, "contentType"),
        (OID_SIGNING_TIME, "signingTime"),
        (OID_MESSAGE_DIGEST, "messageDigest"),
    ] {
        assert!(
            attrs.children.iter().any(|a| a.child(0).value == oid),
            "{what}: no {name} signed attribute"
        );
    }
    assert_eq!(
        si.child(4).child(0).value,
        OID_RSASSA_PSS,
        "{what}: signatureAlgorithm"
    );
    (sd, octets)
}

/// Seals `plain` (Alice → `--to` ETKs and/or the KEK), checks the three layers with
/// `openssl cms` and with the BER reader.
fn check_with_openssl(w: &World, dir: &Path, plain: &[u8], to: &[&str], kek: bool) {
    let p = |n: &str| dir.join(n);
    std::fs::write(p("plain"), plain).unwrap();
    let mut cmd = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(p("plain"))
        .arg("--out")
        .arg(p("sealed"))
        .password(&w.password);
    for who in to {
        cmd = cmd.arg("--to").arg(w.etk(who));
    }
    if kek {
        cmd = cmd.args(["--kek", KEK, "--kek-id", KEK_ID_B64]);
    }
    cmd.run().code(0);
    let sealed = std::fs::read(p("sealed")).unwrap();

    // Outer layer: layout, then openssl verifies it and hands out the middle layer.
    assert_eq!(
        sealed[..OUTER_PREFIX.len()],
        OUTER_PREFIX,
        "outer prefix {}",
        hex::encode(&sealed[..sealed.len().min(16)])
    );
    let outer = ber(&sealed).unwrap_or_else(|e| panic!("outer layer is not BER: {e}"));
    let (outer_sd, outer_octets) = signed_data(&outer, "outer");
    let middle_from_ber = assert_chunked(outer_octets, "outer eContent");
    // The outer layer carries the signer's certificates.
    assert!(
        outer_sd
            .children
            .iter()
            .any(|c| c.tag == 0xa0 && !c.children.is_empty()),
        "outer SignedData has no certificates"
    );

    ossl(
        VERIFY,
        &[
            ("-in", &p("sealed")),
            ("-CAfile", &w.ca()),
            ("-certsout", &p("signers.pem")),
            ("-out", &p("middle.der")),
        ],
    );
    let middle = std::fs::read(p("middle.der")).unwrap();
    assert_eq!(
        middle, middle_from_ber,
        "openssl and the BER reader disagree on eContent"
    );

    // The outer layer carries Alice's (the hospital's) certificate and the CA, as the
    // official library does (signer + chain).
    let certs = openssl::x509::X509::stack_from_pem(&std::fs::read(p("signers.pem")).unwrap())
        .expect("signers.pem");
    let subjects: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            c.subject_name()
                .entries()
                .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
                .collect()
        })
        .collect();
    assert_eq!(certs.len(), 2, "outer certificates: {subjects:?}");
    assert!(
        subjects
            .iter()
            .any(|s| s.iter().any(|v| v == "NIHII-HOSPITAL=71000436")),
        "Alice is not among {subjects:?}"
    );
    let ca = openssl::x509::X509::from_pem(&std::fs::read(w.ca()).unwrap()).unwrap();
    assert!(
        certs
            .iter()
            .any(|c| c.to_der().unwrap() == ca.to_der().unwrap()),
        "the CA certificate is not in the outer layer"
    );

    // Middle layer: EnvelopedData with the ciphertext in 1000-byte chunks.
    let mid = ber(&middle).unwrap_or_else(|e| panic!("middle layer is not BER: {e}"));
    assert_eq!(
        (mid.tag, mid.indefinite),
        (0x30, true),
        "middle ContentInfo"
    );
    assert_eq!(mid.child(0).value, OID_ENVELOPED_DATA, "middle contentType");
    let env = mid.child(1).child(0);
    assert_eq!((env.tag, env.indefinite), (0x30, true), "EnvelopedData");
    // v0, or v2 when a KEKRecipientInfo is present (RFC 5652 §6.1).
    let version: &[u8] = if kek { &[2] } else { &[0] };
    assert_eq!(env.child(0).value, version, "EnvelopedData version");
    let recipient_infos = env.child(1);
    assert_eq!(recipient_infos.tag, 0x31, "recipientInfos");
    let ktri = recipient_infos
        .children
        .iter()
        .filter(|r| r.tag == 0x30)
        .count();
    let kekri = recipient_infos
        .children
        .iter()
        .filter(|r| r.tag == 0xa2)
        .count();
    assert_eq!(
        (ktri, kekri),
        (to.len(), usize::from(kek)),
        "recipient infos"
    );
    let eci = env.child(2);
    assert_eq!(eci.child(0).value, OID_DATA, "encrypted contentType");
    let enc = eci.child(2);
    assert_eq!(enc.tag, 0xa0, "encryptedContent [0] IMPLICIT, constructed");
    let ciphertext = assert_chunked(enc, "encryptedContent");

    // Decrypt with each recipient's key, and with the KEK.
    let mut ways: Vec<Vec<String>> = to
        .iter()
        .map(|who| {
            vec![
                "-recip".into(),
                w.etk_cert_pem(who).display().to_string(),
                "-inkey".into(),
                w.etk_key_pem(who).display().to_string(),
            ]
        })
        .collect();
    if kek {
        ways.push(vec![
            "-secretkey".into(),
            KEK.into(),
            "-secretkeyid".into(),
            hex::encode(KEK_ID),
        ]);
    }
    assert!(!ways.is_empty());
    for (i, way) in ways.iter().enumerate() {
        let inner_path = p(&format!("inner-{i}.der"));
        let opened_path = p(&format!("opened-{i}"));
        let mut args: Vec<String> = ["cms", "-decrypt", "-inform", "DER", "-binary"]
            .map(String::from)
            .to_vec();
        args.extend(way.iter().cloned());
        args.extend([
            "-in".into(),
            p("middle.der").display().to_string(),
            "-out".into(),
            inner_path.display().to_string(),
        ]);
        openssl(&args);
        let inner = std::fs::read(&inner_path).unwrap();
        // AES-128-CBC with PKCS#7 padding.
        assert_eq!(
            ciphertext.len(),
            (inner.len() / 16 + 1) * 16,
            "ciphertext length"
        );

        // Inner layer: SignedData over the plaintext, in 1000-byte chunks.
        let tlv = ber(&inner).unwrap_or_else(|e| panic!("inner layer is not BER: {e}"));
        let (inner_sd, inner_octets) = signed_data(&tlv, "inner");
        // Inner signer = outer signer: the inner layer carries no certificates.
        assert!(
            !inner_sd.children.iter().any(|c| c.tag == 0xa0),
            "inner SignedData has certificates"
        );
        let from_ber = assert_chunked(inner_octets, "inner eContent");
        assert_eq!(from_ber, plain, "inner eContent is not the plaintext");
        assert_eq!(
            inner_octets.children.len(),
            plain.len().div_ceil(1000),
            "chunk count"
        );

        // openssl verifies the inner signature with the outer signer's certificate.
        ossl(
            VERIFY,
            &[
                ("-in", &inner_path),
                ("-CAfile", &w.ca()),
                ("-certfile", &p("signers.pem")),
                ("-out", &opened_path),
            ],
        );
        assert_eq!(
            std::fs::read(&opened_path).unwrap(),
            plain,
            "openssl's plaintext differs ({})",
            way.join(" ")
        );
    }
}

/// `openssl FIXED... OPT PATH...`, failing the test when openssl fails.
fn ossl(fixed: &[&str], paths: &[(&str, &Path)]) {
    let mut args: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    for (opt, path) in paths {
        args.push((*opt).to_string());
        args.push(path.display().to_string());
    }
    openssl(&args);
}

const VERIFY: &[&str] = &[
    "cms", "-verify", "-inform", "DER", "-binary", "-purpose", "any",
];

fn size_case(len: usize) {
    if !openssl_cli() {
        return;
    }
    let w = World::shared();
    let dir = scratch();
    check_with_openssl(w, dir.path(), &content(len, 42), &["bob"], false);
}

#[test]
fn openssl_opens_0_bytes() {
    size_case(0);
}

#[test]
fn openssl_opens_1_byte() {
    size_case(1);
}

#[test]
fn openssl_opens_999_bytes() {
    size_case(999);
}

#[test]
fn openssl_opens_1000_bytes() {
    size_case(1000);
}

#[test]
fn openssl_opens_1001_bytes() {
    size_case(1001);
}

#[test]
fn openssl_opens_100000_bytes() {
    size_case(100_000);
}

#[test]
fn openssl_opens_two_recipients_each_with_its_key() {
    if !openssl_cli() {
        return;
    }
    let dir = scratch();
    check_with_openssl(
        World::shared(),
        dir.path(),
        &content(2_500, 9),
        &["bob", "alice"],
        false,
    );
}

#[test]
fn openssl_decrypts_the_kek_form() {
    if !openssl_cli() {
        return;
    }
    let dir = scratch();
    check_with_openssl(World::shared(), dir.path(), &content(1_234, 10), &[], true);
}

#[test]
fn openssl_decrypts_the_hybrid_form_both_ways() {
    if !openssl_cli() {
        return;
    }
    let dir = scratch();
    check_with_openssl(
        World::shared(),
        dir.path(),
        &content(64, 11),
        &["bob"],
        true,
    );
}

/// openssl must also *reject* what it should: a wrong KEK, and a CA that is not ours.
#[test]
fn openssl_refuses_wrong_kek_and_foreign_ca() {
    if !openssl_cli() {
        return;
    }
    let w = World::shared();
    let dir = scratch();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("plain"), b"kek only").unwrap();
    etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .args(["--kek", KEK, "--kek-id", KEK_ID_B64, "--in"])
        .arg(p("plain"))
        .arg("--out")
        .arg(p("sealed"))
        .password(&w.password)
        .run()
        .code(0);
    let run = |args: Vec<String>| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    };
    let s = |x: &Path| x.display().to_string();
    // A certificate that is not a CA of this world (Bob's ETK certificate) as the anchor.
    let verify_foreign = run(vec![
        "cms".into(),
        "-verify".into(),
        "-inform".into(),
        "DER".into(),
        "-binary".into(),
        "-purpose".into(),
        "any".into(),
        "-in".into(),
        s(&p("sealed")),
        "-CAfile".into(),
        s(&w.etk_cert_pem("bob")),
        "-out".into(),
        s(&p("middle-foreign.der")),
    ]);
    assert!(!verify_foreign, "openssl verified against a foreign anchor");
    ossl(
        VERIFY,
        &[
            ("-in", &p("sealed")),
            ("-CAfile", &w.ca()),
            ("-out", &p("middle.der")),
        ],
    );
    let wrong = run(vec![
        "cms".into(),
        "-decrypt".into(),
        "-inform".into(),
        "DER".into(),
        "-binary".into(),
        "-secretkey".into(),
        "00000000000000000000000000000000".into(),
        "-secretkeyid".into(),
        hex::encode(KEK_ID),
        "-in".into(),
        s(&p("middle.der")),
        "-out".into(),
        s(&p("inner.der")),
    ]);
    assert!(!wrong, "openssl decrypted with a wrong KEK");
}
