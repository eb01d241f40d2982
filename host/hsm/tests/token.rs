//! The PKCS#11 backend against a real SoftHSM2 token (one fresh token per test, in a
//! temporary SOFTHSM2_CONF shared by this test process).

mod common;

use common::{
    encrypt_pkcs1, new_token, openssl, parse_pkcs11_tool, pkcs11_tool_objects, vectors, verify_pss,
    USER_PIN,
};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::keys::{KeyError, KeyId, PrivateKeyOps};
use etee_formats::keystore::{ehealth_entries, write_pfx, EhealthKeystore, Profile};
use etee_formats::trust::TrustAnchors;
use etee_hsm::config::PinSource;
use etee_hsm::keys::{csr, install_certificate, subject_der};
use etee_hsm::{Hsm, HsmError, ImportOptions, PinKind};
use etee_testpki::{build_name, ehealth_dn, random_serial, InstitutionSpec, Issued, TestPki};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::x509::extension::KeyUsage;
use openssl::x509::{X509Builder, X509Req, X509};
use std::path::Path;
use std::sync::OnceLock;

fn cert(x: &X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

/// A test CA and two institutions, shared by the tests of this process.
struct World {
    pki: TestPki,
    alice: etee_testpki::Institution,
    bob: etee_testpki::Institution,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let pki = TestPki::generate("etee-hsm tests").unwrap();
        let alice = pki
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Alice"))
            .unwrap();
        let bob = pki
            .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "Bob"))
            .unwrap();
        World { pki, alice, bob }
    })
}

/// An eHealth keystore (`authentication` + ETK key by decimal serial) of an institution.
fn keystore_p12(pki: &TestPki, who: &etee_testpki::Institution) -> Vec<u8> {
    let entries = ehealth_entries(
        who.auth.key.clone(),
        vec![who.auth.cert.clone(), pki.root.cert.clone()],
        who.etk_key.clone(),
        who.etk_cert.clone(),
    )
    .unwrap();
    write_pfx(&entries, "secret", Profile::Modern).unwrap()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

/// A certificate for a public key generated in the token, issued by `ca`.
fn issue(ca: &Issued, rdns: &[(String, String)], spki: &[u8], usage: KeyUsage) -> X509 {
    let key = PKey::public_key_from_der(spki).unwrap();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&random_serial().unwrap()).unwrap();
    b.set_subject_name(&build_name(rdns).unwrap()).unwrap();
    b.set_issuer_name(ca.cert.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    let mut usage = usage;
    b.append_extension(usage.critical().build().unwrap())
        .unwrap();
    b.sign(&ca.key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn private_keys(tool_output: &str) -> Vec<common::ToolObject> {
    parse_pkcs11_tool(tool_output)
        .into_iter()
        .filter(|o| o.kind.starts_with("Private Key Object"))
        .collect()
}

fn has(list: &[String], flag: &str) -> bool {
    list.iter().any(|f| f == flag)
}

/// (a) Keys generated in the token: sensitive, never extractable, restricted mechanisms,
/// as our listing says and as OpenSC's pkcs11-tool sees them; CSR; certificates
/// installed beside them; a full seal/unseal through the token.
#[test]
fn generated_keys_stay_in_the_token() {
    let config = new_token("generated");
    let hsm = Hsm::open(&config).unwrap();
    let auth = hsm
        .generate(config.profile("authentication").unwrap())
        .unwrap();
    assert_eq!(auth.id, "authentication");
    assert_eq!(auth.bits, 2048);
    assert!(matches!(
        hsm.generate(config.profile("authentication").unwrap()),
        Err(HsmError::KeyExists(_))
    ));
    let etk = hsm.generate(config.profile("etk").unwrap()).unwrap();
    assert!(etk.id.starts_with("etk-pending-"), "{}", etk.id);

    // Our listing.
    let inventory = hsm.list().unwrap();
    assert_eq!(inventory.token.label, "generated");
    assert_eq!(inventory.keys.len(), 2);
    for k in &inventory.keys {
        assert_eq!(k.sensitive, Some(true), "{k:?}");
        assert_eq!(k.extractable, Some(false), "{k:?}");
        assert_eq!(k.always_sensitive, Some(true), "{k:?}");
        assert_eq!(k.never_extractable, Some(true), "{k:?}");
        assert_eq!(k.local, Some(true), "{k:?}");
        assert_eq!(k.modulus_bits, 2048);
    }
    let listed_auth = inventory
        .keys
        .iter()
        .find(|k| k.id == "authentication")
        .unwrap();
    assert_eq!(listed_auth.sign, Some(true));
    assert_eq!(listed_auth.decrypt, Some(false));
    assert_eq!(
        listed_auth.allowed_mechanisms,
        ["CKM_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS"]
    );
    let listed_etk = inventory.keys.iter().find(|k| k.id == etk.id).unwrap();
    assert_eq!(listed_etk.sign, Some(false));
    assert_eq!(listed_etk.decrypt, Some(true));
    assert_eq!(listed_etk.allowed_mechanisms, ["CKM_RSA_PKCS"]);
    let json = serde_json::to_value(&inventory).unwrap();
    assert_eq!(json["keys"][0]["never_extractable"], true);

    // The same through OpenSC, outside our code.
    let tool = pkcs11_tool_objects(&config);
    let keys = private_keys(&tool);
    assert_eq!(keys.len(), 2, "{tool}");
    for k in &keys {
        for flag in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(has(&k.access, flag), "{flag} missing: {tool}");
        }
        assert!(!has(&k.access, "extractable"), "extractable: {tool}");
    }
    let tool_auth = keys
        .iter()
        .find(|k| k.id_hex == hex::encode("authentication"))
        .unwrap_or_else(|| panic!("no authentication key: {tool}"));
    assert!(
        has(&tool_auth.usage, "sign") && !has(&tool_auth.usage, "decrypt"),
        "{tool}"
    );
    assert!(has(&tool_auth.mechanisms, "RSA-PKCS-PSS"), "{tool}");
    let tool_etk = keys
        .iter()
        .find(|k| k.id_hex == hex::encode(&etk.id))
        .unwrap_or_else(|| panic!("no ETK key: {tool}"));
    assert!(
        has(&tool_etk.usage, "decrypt") && !has(&tool_etk.usage, "sign"),
        "{tool}"
    );
    assert_eq!(tool_etk.mechanisms, ["RSA-PKCS"], "{tool}");

    // The token enforces the roles.
    let keys = hsm.keys();
    let digest = sha256(b"to be signed");
    let sig = keys
        .sign_pss_sha256(&KeyId("authentication".into()), &digest)
        .unwrap();
    assert!(verify_pss(&auth.public_key_der(), &digest, &sig));
    assert!(keys
        .sign_pss_sha256(&KeyId(etk.id.clone()), &digest)
        .is_err());
    assert!(matches!(
        keys.sign_pss_sha256(&KeyId("nobody".into()), &digest),
        Err(KeyError::UnknownKey(_))
    ));
    let secret = [7u8; 16];
    let blob = encrypt_pkcs1(&etk.public_key_der(), &secret);
    assert_eq!(
        &keys
            .decrypt_pkcs1v15(&KeyId(etk.id.clone()), &blob)
            .unwrap()[..],
        &secret
    );
    let blob_for_auth = encrypt_pkcs1(&auth.public_key_der(), &secret);
    assert!(matches!(
        keys.decrypt_pkcs1v15(&KeyId("authentication".into()), &blob_for_auth),
        Err(KeyError::DecryptFailed)
    ));

    // CSR for the authentication key, signed in the token (RSASSA-PSS).
    let rdns = ehealth_dn("NIHII-HOSPITAL", "71000436", "Generated", None);
    let pairs: Vec<(&str, &str)> = rdns.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let request = csr(hsm.pool(), "authentication", &subject_der(&pairs).unwrap()).unwrap();
    let req = X509Req::from_der(&request).unwrap();
    assert!(req.verify(&req.public_key().unwrap()).unwrap());
    assert_eq!(
        req.public_key().unwrap().public_key_to_der().unwrap(),
        auth.public_key_der()
    );
    let dir = tempfile::tempdir().unwrap();
    let csr_path = dir.path().join("auth.csr");
    std::fs::write(&csr_path, &request).unwrap();
    openssl(&[
        "req",
        "-verify",
        "-noout",
        "-inform",
        "DER",
        "-in",
        csr_path.to_str().unwrap(),
    ]);

    // Certificates from a CA; the ETK key takes its certificate's serial as CKA_ID.
    let w = world();
    let auth_cert = issue(&w.pki.root, &rdns, &auth.public_key_der(), {
        let mut u = KeyUsage::new();
        u.digital_signature();
        u
    });
    let etk_cert = issue(&w.pki.root, &rdns, &etk.public_key_der(), {
        let mut u = KeyUsage::new();
        u.key_encipherment().data_encipherment();
        u
    });
    let root = cert(&w.pki.root.cert);
    assert!(install_certificate(hsm.pool(), &etk.id, &cert(&auth_cert), &[]).is_err());
    assert_eq!(
        install_certificate(
            hsm.pool(),
            "authentication",
            &cert(&auth_cert),
            std::slice::from_ref(&root)
        )
        .unwrap(),
        "authentication"
    );
    let etk_id = install_certificate(hsm.pool(), &etk.id, &cert(&etk_cert), &[]).unwrap();
    assert_eq!(etk_id, cert(&etk_cert).serial_decimal());
    let inventory = hsm.list().unwrap();
    let listed = inventory.keys.iter().find(|k| k.id == etk_id).unwrap();
    assert_eq!(listed.label, etk_id);
    assert_eq!(
        listed.certificate.as_ref().unwrap().serial,
        etk_id,
        "{inventory:?}"
    );
    assert_eq!(inventory.other_certificates.len(), 1, "the CA");

    // Seal with the token's authentication key to its own ETK; unseal through the token.
    let signer = keys.signing_key().unwrap();
    match &signer.signer {
        etee_formats::keys::SignerRef::Certificate { cert: c, chain } => {
            assert_eq!(c.der(), auth_cert.to_der().unwrap());
            assert_eq!(chain.len(), 1);
            assert_eq!(chain[0].der(), root.der());
        }
        other => panic!("{other:?}"),
    }
    let ring = keys.key_ring().unwrap();
    assert_eq!(ring.keys().len(), 1);
    let mut sealed = Vec::new();
    seal(
        &signer,
        &[Recipient::Certificate(cert(&etk_cert))],
        None,
        &b"through the token"[..],
        &mut sealed,
        &SealOptions::default(),
    )
    .unwrap();
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(vec![root]),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(&sealed, &ring, &opts).unwrap();
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    assert_eq!(content.as_deref(), Some(&b"through the token"[..]));

    // OpenSC sees the renamed ETK key, still non-extractable.
    let tool = pkcs11_tool_objects(&config);
    let keys = private_keys(&tool);
    let renamed = keys
        .iter()
        .find(|k| k.id_hex == hex::encode(&etk_id))
        .unwrap_or_else(|| panic!("{tool}"));
    assert!(has(&renamed.access, "never extractable"), "{tool}");
}

/// (d) A wrong PIN is a typed error that names the PIN kind and CKR code, never the PIN.
#[test]
fn wrong_pin_is_a_clear_error() {
    let config = new_token("wrong-pin");
    // The token's own counter, as OpenSC sees it: not low on a fresh token.
    let flags = common::pkcs11_tool_token_flags(&config);
    assert!(!flags.contains("user PIN count low"), "{flags}");
    let mut wrong = config.clone();
    let path = common::rig().dir.join("wrong-pin.bad.pin");
    std::fs::write(&path, "not-the-pin\n").unwrap();
    wrong.pin = PinSource::File(path);
    let err = Hsm::open(&wrong).unwrap_err();
    assert!(
        matches!(
            err,
            HsmError::WrongPin {
                kind: PinKind::User,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("wrong user PIN"), "{text}");
    assert!(text.contains("CKR_PIN_INCORRECT"), "{text}");
    assert!(!text.contains("not-the-pin") && !format!("{err:?}").contains("not-the-pin"));
    assert_eq!(err.ckr().as_deref(), Some("CKR_PIN_INCORRECT"));
    // The token's retry counter moved: SoftHSM sets CKF_USER_PIN_COUNT_LOW after a wrong
    // PIN (it never locks the PIN; etee's own count on the audit chain does, see
    // custody.rs). Seen through our listing and through OpenSC's.
    let summary = |label: &str| {
        etee_hsm::Module::load(&config.module)
            .unwrap()
            .tokens()
            .unwrap()
            .into_iter()
            .find(|t| t.label == label)
            .unwrap()
    };
    let after = summary("wrong-pin");
    assert!(
        after.user_pin_count_low && !after.user_pin_locked,
        "after a wrong PIN: count low {}, locked {}",
        after.user_pin_count_low,
        after.user_pin_locked
    );
    let flags = common::pkcs11_tool_token_flags(&config);
    assert!(flags.contains("user PIN count low"), "{flags}");
    // The right PIN still works, and resets the token's counter.
    drop(Hsm::open(&config).unwrap());
    assert!(!summary("wrong-pin").user_pin_count_low);
    let flags = common::pkcs11_tool_token_flags(&config);
    assert!(!flags.contains("user PIN count low"), "{flags}");

    // Other clear refusals.
    assert!(matches!(
        etee_hsm::init_token(&config),
        Err(HsmError::TokenAlreadyInitialized(_))
    ));
    // An initialised label is refused by the check made before anything is written, and
    // an initialisation refused for it says the token was not touched.
    let so_pin = config.so_pin().unwrap();
    assert!(matches!(
        etee_hsm::check_init(&config, &so_pin),
        Err(HsmError::TokenAlreadyInitialized(_))
    ));
    let refused = etee_hsm::init_token_reporting(&config, &so_pin).unwrap_err();
    assert!(!refused.token_initialised, "{refused:?}");
    assert!(matches!(
        refused.error,
        HsmError::TokenAlreadyInitialized(_)
    ));
    let mut missing = config.clone();
    missing.token = etee_hsm::TokenSelector::label("no-such-token");
    let err = Hsm::open(&missing).unwrap_err();
    assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("wrong-pin"),
        "lists present tokens: {err}"
    );
    // And, for SoftHSM, says where it looked for tokens.
    let conf = std::env::var("SOFTHSM2_CONF").unwrap();
    assert!(
        err.to_string().contains(&conf) && err.to_string().contains("SOFTHSM2_CONF"),
        "names the SoftHSM configuration: {err}"
    );
    let mut no_module = config.clone();
    no_module.module = "/nonexistent/libpkcs11.so".into();
    let err = Hsm::open(&no_module).unwrap_err().to_string();
    assert!(err.contains("hsm-config/setup.sh"), "{err}");
}

/// (e) Every failed decryption is the same `DecryptFailed`, and none disturbs the pool.
#[test]
fn failed_decryptions_look_alike() {
    let config = new_token("garbage");
    let hsm = Hsm::open(&config).unwrap();
    let etk = hsm.generate(config.profile("etk").unwrap()).unwrap();
    let auth = hsm
        .generate(config.profile("authentication").unwrap())
        .unwrap();
    let keys = hsm.keys();
    let id = KeyId(etk.id.clone());
    let mut random = vec![0u8; 256];
    openssl::rand::rand_bytes(&mut random).unwrap();
    // Valid RSA input but not PKCS#1 v1.5 padding: encrypt raw with the public key.
    let raw = {
        let key: PKey<Public> = PKey::public_key_from_der(&etk.public_key_der()).unwrap();
        let rsa = key.rsa().unwrap();
        let mut block = vec![0u8; 256];
        block[1] = 0x55; // not 0x02
        let mut out = vec![0u8; 256];
        rsa.public_encrypt(&block, &mut out, Padding::NONE).unwrap();
        out
    };
    let cases: Vec<(&str, KeyId, Vec<u8>)> = vec![
        ("random bytes", id.clone(), random),
        ("bad padding", id.clone(), raw),
        ("too short", id.clone(), vec![1, 2, 3]),
        ("too long", id.clone(), vec![0x42; 300]),
        ("empty", id.clone(), Vec::new()),
        (
            "signing key",
            KeyId(auth.id.clone()),
            encrypt_pkcs1(&auth.public_key_der(), b"x"),
        ),
    ];
    for (what, key, blob) in cases {
        match keys.decrypt_pkcs1v15(&key, &blob) {
            Err(KeyError::DecryptFailed) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(hsm.pool().recoveries(), 0, "no recovery for data errors");
    // A key the token does not have is no decryption at all (it depends on no
    // ciphertext): said as such, so that a message is not judged for it.
    let unknown = KeyId("no-such-key".into());
    match keys.decrypt_pkcs1v15(&unknown, &[0; 256]) {
        Err(KeyError::UnknownKey(k)) => assert_eq!(k, unknown),
        other => panic!("unknown key: {other:?}"),
    }
    // The key still works.
    let ok = encrypt_pkcs1(&etk.public_key_der(), b"fine");
    assert_eq!(&keys.decrypt_pkcs1v15(&id, &ok).unwrap()[..], b"fine");
}

fn assert_not_extractable(hsm: &Hsm, ids: Vec<String>) {
    let checked = hsm
        .pool()
        .run(move |conn| {
            for id in &ids {
                let h = conn.find_object(ObjectClass::PRIVATE_KEY, id.as_bytes())?;
                let s = conn.session();
                let attrs = s
                    .get_attributes(
                        h,
                        &[
                            AttributeType::Extractable,
                            AttributeType::Sensitive,
                            AttributeType::NeverExtractable,
                        ],
                    )
                    .unwrap();
                assert!(
                    attrs.contains(&Attribute::Extractable(false)),
                    "{id}: {attrs:?}"
                );
                assert!(
                    attrs.contains(&Attribute::Sensitive(true)),
                    "{id}: {attrs:?}"
                );
                // Imported: honestly not "never extractable".
                assert!(attrs.contains(&Attribute::NeverExtractable(false)), "{id}");
                // C_GetAttributeValue refuses the private parts.
                let info = s
                    .get_attribute_info(
                        h,
                        &[
                            AttributeType::PrivateExponent,
                            AttributeType::Prime1,
                            AttributeType::Coefficient,
                        ],
                    )
                    .unwrap();
                for i in info {
                    assert!(matches!(i, AttributeInfo::Sensitive), "{id}: {i:?}");
                }
                let values = s
                    .get_attributes(h, &[AttributeType::PrivateExponent])
                    .unwrap();
                assert!(values.is_empty(), "{id}: private exponent readable");
            }
            Ok(ids.len())
        })
        .unwrap();
    assert!(checked > 0);
}

/// (c) + (f) A generated Alice imported from a `.p12` seals through the token; Bob opens
/// it with the software path and `openssl cms` opens it too. The imported keys are
/// sensitive and non-extractable.
#[test]
fn imported_alice_seals_for_software_and_openssl() {
    let w = world();
    let config = new_token("alice");
    let hsm = Hsm::open(&config).unwrap();
    let keystore = EhealthKeystore::load(&keystore_p12(&w.pki, &w.alice), "secret").unwrap();
    let report = hsm.import(&keystore, &ImportOptions::default()).unwrap();
    assert_eq!(report.keys.len(), 2, "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!(report.ca_certificates_added, 1);
    let etk_id = w.alice.etk_serial_decimal();
    assert!(report.keys.iter().any(|k| k.id == etk_id));
    // A second import changes nothing.
    let again = hsm.import(&keystore, &ImportOptions::default()).unwrap();
    assert!(again.keys.iter().all(|k| k.already_present), "{again:?}");
    assert_eq!(again.ca_certificates_added, 0);

    // (f) through PKCS#11 directly and through OpenSC.
    assert_not_extractable(&hsm, vec!["authentication".into(), etk_id.clone()]);
    let tool = pkcs11_tool_objects(&config);
    let keys = private_keys(&tool);
    assert_eq!(keys.len(), 2, "{tool}");
    for k in &keys {
        assert!(has(&k.access, "sensitive"), "{tool}");
        assert!(!has(&k.access, "extractable"), "{tool}");
    }
    let inventory = hsm.list().unwrap();
    assert!(inventory.keys.iter().all(|k| k.sensitive == Some(true)
        && k.extractable == Some(false)
        && k.local == Some(false)));

    // Seal through the token, from Alice to (generated) Bob.
    let signer = hsm.keys().signing_key().unwrap();
    let plain = b"From Alice's HSM to Bob.\n".repeat(100);
    let mut sealed = Vec::new();
    seal(
        &signer,
        &[Recipient::Certificate(cert(&w.bob.etk_cert))],
        None,
        &plain[..],
        &mut sealed,
        &SealOptions::default(),
    )
    .unwrap();

    // The software path (Bob's keystore in memory).
    let bob = EhealthKeystore::load(&keystore_p12(&w.pki, &w.bob), "secret").unwrap();
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(vec![cert(&w.pki.root.cert)]),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(&sealed, &bob.key_ring(), &opts).unwrap();
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    assert_eq!(content.as_deref(), Some(&plain[..]));
    assert_eq!(
        result.sender.unwrap().certificate.unwrap().der(),
        w.alice.auth.cert.to_der().unwrap()
    );

    // openssl cms: verify the outer layer against the CA, decrypt with Bob's ETK key,
    // verify the inner layer with Alice's certificate.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let s = |path: &Path| path.to_str().unwrap().to_string();
    std::fs::write(p("sealed.der"), &sealed).unwrap();
    std::fs::write(p("ca.pem"), w.pki.root.cert.to_pem().unwrap()).unwrap();
    std::fs::write(p("alice.pem"), w.alice.auth.cert.to_pem().unwrap()).unwrap();
    std::fs::write(p("bob-etk.pem"), w.bob.etk_cert.to_pem().unwrap()).unwrap();
    std::fs::write(
        p("bob-etk-key.pem"),
        w.bob.etk_key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    let verify = [
        "cms", "-verify", "-inform", "DER", "-binary", "-purpose", "any", "-CAfile",
    ];
    let mut args: Vec<String> = verify.iter().map(|x| x.to_string()).collect();
    args.extend([s(&p("ca.pem")), "-in".into(), s(&p("sealed.der"))]);
    args.extend(["-out".into(), s(&p("middle.der"))]);
    openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    openssl(&[
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-binary",
        "-recip",
        &s(&p("bob-etk.pem")),
        "-inkey",
        &s(&p("bob-etk-key.pem")),
        "-in",
        &s(&p("middle.der")),
        "-out",
        &s(&p("inner.der")),
    ]);
    let mut args: Vec<String> = verify.iter().map(|x| x.to_string()).collect();
    args.extend([s(&p("ca.pem")), "-certfile".into(), s(&p("alice.pem"))]);
    args.extend(["-in".into(), s(&p("inner.der"))]);
    args.extend(["-out".into(), s(&p("opened"))]);
    openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(std::fs::read(p("opened")).unwrap(), plain);
}

/// (b) Bob's eHealth keystore from the vectors, imported into the token, opens the
/// official library's message with the expected verdict, and every vector addressed to
/// Bob's keys gives the same verdict through the token as with the `.p12`.
#[test]
fn bob_vectors_unseal_through_the_token() {
    let Some(vectors) = vectors() else { return };
    let config = new_token("bob");
    let hsm = Hsm::open(&config).unwrap();
    let bob_dir = vectors.join("egelke-etee/etee-crypto-test/bob");
    let main =
        EhealthKeystore::load_file(bob_dir.join("bobs_private_key_store.p12"), "test").unwrap();
    let report = hsm.import(&main, &ImportOptions::default()).unwrap();
    assert!(
        report.keys.iter().any(|k| k.id == "825373489"),
        "{report:?}"
    );
    assert!(
        report.keys.iter().any(|k| k.id == "authentication"),
        "{report:?}"
    );
    assert_not_extractable(&hsm, report.keys.iter().map(|k| k.id.clone()).collect());
    let tool = pkcs11_tool_objects(&config);
    for k in private_keys(&tool) {
        assert!(
            has(&k.access, "sensitive") && !has(&k.access, "extractable"),
            "{tool}"
        );
    }
    let ring = hsm.keys().key_ring().unwrap();
    assert!(ring
        .keys()
        .iter()
        .any(|k| k.cert.as_ref().unwrap().serial_decimal() == "825373489"));

    // The message from the official library, against expected-verdicts.json.
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors.join("expected-verdicts.json")).unwrap())
            .unwrap();
    let message = "generated-etee-crypto-lib-2.2.0/known_alice_to_bob.msg";
    let entry = expected["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["message"] == message
                && e["keystores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k == "egelke-etee/etee-crypto-test/bob/bobs_private_key_store.p12")
        })
        .expect("expected verdict for known_alice_to_bob.msg");
    let anchors: Vec<Certificate> = entry["trust"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            Certificate::from_file_bytes(&std::fs::read(vectors.join(t.as_str().unwrap())).unwrap())
                .unwrap()
        })
        .collect();
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(anchors),
        at: Some(common::unix_time(entry["evaluated_at"].as_str().unwrap())),
        ..Default::default()
    };
    assert_eq!(opts.at, Some(1_795_442_080));
    let names = |v: &etee_formats::verdict::Verdict| {
        serde_json::json!({
            "fatal": v.fatal.map(|f| f.name()),
            "errors": v.errors.iter().map(|e| e.name()).collect::<Vec<_>>(),
            "warnings": v.warnings.iter().map(|w| w.name()).collect::<Vec<_>>(),
        })
    };
    let msg = std::fs::read(vectors.join(message)).unwrap();
    let (result, content) = unseal_to_vec(&msg, &ring, &opts).unwrap();
    assert_eq!(
        names(&result.verdict),
        serde_json::json!({
            "fatal": entry["fatal"],
            "errors": entry["errors"],
            "warnings": entry["warnings"],
        })
    );
    assert_eq!(
        names(&result.verdict)["warnings"],
        serde_json::json!(["SIGNING_TIME_EXPIRED"])
    );
    let plaintext =
        std::fs::read(vectors.join("generated-etee-crypto-lib-2.2.0/plaintext.txt")).unwrap();
    assert_eq!(content.as_deref(), Some(&plaintext[..]));
    assert_eq!(
        hex::encode(sha256(&plaintext)),
        entry["content_sha256"].as_str().unwrap()
    );

    // Bob's other keystores (old keys, other ETKs) join the token without their
    // authentication keys; then every vector message gives the same verdict and content
    // through the token as through the same keys in software.
    let mut software = etee_formats::keys::KeyRing::new();
    software.extend(main.decryption_keys());
    for other in [
        "old_bobs_private_key_store.p12",
        "Bob2_private_key_store.p12",
        "Bob3_private_key_store.p12",
    ] {
        let ks = EhealthKeystore::load_file(bob_dir.join(other), "test").unwrap();
        // The vectors' Bob has keystores under other names (CN=Bob2, NIHII=...): refused
        // unless allowed.
        let other_name = hsm.import(
            &ks,
            &ImportOptions {
                authentication: false,
                ..Default::default()
            },
        );
        let err = other_name.unwrap_err().to_string();
        assert!(err.contains("another holder"), "{other}: {err}");
        let options = ImportOptions {
            authentication: false,
            allow_other_holder: true,
            ..Default::default()
        };
        let r = hsm.import(&ks, &options).unwrap();
        eprintln!(
            "{other}: imported {:?}, skipped {:?}",
            r.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
            r.skipped
        );
        // The software ring holds the same keys as the token: those imported now.
        let imported: Vec<&str> = r
            .keys
            .iter()
            .filter(|k| !k.already_present)
            .map(|k| k.alias.as_str())
            .collect();
        software.extend(
            ks.decryption_keys()
                .into_iter()
                .filter(|k| imported.contains(&k.key.0.as_str())),
        );
    }
    let ring = hsm.keys().key_ring().unwrap();
    assert_eq!(ring.keys().len(), software.keys().len());
    let mut compared = 0;
    let mut opened = 0;
    let mut seen = std::collections::BTreeSet::new();
    for e in expected["entries"].as_array().unwrap() {
        let m = e["message"].as_str().unwrap();
        if !e["kek"].is_null() || !seen.insert(m.to_string()) {
            continue;
        }
        let Ok(bytes) = std::fs::read(vectors.join(m)) else {
            continue;
        };
        let anchors: Vec<Certificate> = e["trust"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| {
                Certificate::from_file_bytes(&std::fs::read(vectors.join(t.as_str()?)).ok()?).ok()
            })
            .collect();
        let opts = UnsealOptions {
            anchors: TrustAnchors::new(anchors),
            at: e["evaluated_at"].as_str().map(common::unix_time),
            ..Default::default()
        };
        let (hw, hw_content) = unseal_to_vec(&bytes, &ring, &opts).unwrap();
        let (sw, sw_content) = unseal_to_vec(&bytes, &software, &opts).unwrap();
        if hw.opened_with.is_none() && sw.opened_with.is_none() {
            // No key of Bob's opens it, but one has the recipient's serial: the failed key
            // transport goes on with a random content key (no padding oracle), and whether
            // the garbage it decrypts reaches the CBC padding check before the inner
            // structure fails is chance (about 1 in 300 does not). Everything else agrees.
            use etee_formats::verdict::Error as E;
            let without_padding = |v: &etee_formats::verdict::Verdict| {
                let mut v = v.clone();
                v.errors
                    .retain(|e| *e != E::DECRYPTION_SYMMETRIC_KEY_ALGORITHM_PADDING_UNAUTHORIZED);
                v
            };
            assert_eq!(
                without_padding(&hw.verdict),
                without_padding(&sw.verdict),
                "{m}"
            );
        } else {
            assert_eq!(hw.verdict, sw.verdict, "{m}");
        }
        assert_eq!(hw_content, sw_content, "{m}");
        assert_eq!(hw.content_sha256, sw.content_sha256, "{m}");
        compared += 1;
        if hw.opened_with.is_some() {
            opened += 1;
        }
    }
    eprintln!("{compared} vector messages compared, {opened} opened with the token's keys");
    assert!(
        compared >= 20 && opened >= 5,
        "{compared} compared, {opened} opened"
    );
    let _ = USER_PIN;
}

/// A module path that names the wrong library is a clear error, not a panic: a shared
/// library that is not a PKCS#11 module (the C library this test runs with), and a file
/// that is no library at all.
#[test]
fn a_library_that_is_not_a_pkcs11_module_is_a_clear_error() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .expect("the C library is mapped");
    let e = match etee_hsm::Module::load(Path::new(libc)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{libc} loaded as a PKCS#11 module"),
    };
    assert!(e.contains("not a PKCS#11 module"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("module.so");
    std::fs::write(&text, b"not a library").unwrap();
    let e = match etee_hsm::Module::load(&text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a text file loaded"),
    };
    assert!(e.contains("module.so"), "{e}");
}

/// The SO PIN as M-of-N shares only: a token initialised with a random SO PIN that is
/// written nowhere, whose user PIN two of three share holders can set again, while one
/// share alone, or a complete set of another split, cannot.
#[test]
fn the_so_pin_can_exist_only_as_shares() {
    use etee_hsm::so_shares::{new_so_pin, share_file_text, so_pin_from_share_files};
    let rig = common::rig();
    let name = "so-shares";
    let user = rig.dir.join(format!("{name}.user.pin"));
    common::write_secret(&user, USER_PIN);
    let config = etee_hsm::HsmConfig::new(
        rig.module.clone(),
        etee_hsm::TokenSelector::label(name),
        user,
    );
    assert!(config.so_pin.is_none());
    let (so_pin, shares) = new_so_pin(2, 3).unwrap();
    // The check made before the shares are written lets a free token through.
    etee_hsm::check_init(&config, &so_pin).unwrap();
    let files: Vec<_> = shares
        .iter()
        .map(|s| {
            let path = rig.dir.join(format!("{name}.share-{}", s.index));
            common::write_secret(&path, &share_file_text(s, name).unwrap());
            path
        })
        .collect();
    let summary = etee_hsm::init_token_with(&config, &so_pin).unwrap();
    assert!(summary.user_pin_initialized);
    Hsm::open(&config).unwrap();
    let expected_so_pin = so_pin.expose().to_owned();
    drop(so_pin);
    // Nothing the rig wrote holds the SO PIN.
    for entry in std::fs::read_dir(&rig.dir).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(text) = std::fs::read_to_string(&path) {
            assert!(!text.contains(&expected_so_pin), "{}", path.display());
        }
    }

    // Shares 1 and 3 set a new user PIN; the old one stops working.
    let mut renewed = config.clone();
    let new_pin = rig.dir.join(format!("{name}.new-user.pin"));
    common::write_secret(&new_pin, "a-new-user-pin");
    renewed.pin = PinSource::File(new_pin);
    let rebuilt = so_pin_from_share_files(&[&files[0], &files[2]]).unwrap();
    assert_eq!(rebuilt.expose(), expected_so_pin);
    etee_hsm::init_user_pin(&renewed, &rebuilt).unwrap();
    Hsm::open(&renewed).unwrap();
    let err = Hsm::open(&config).unwrap_err();
    assert!(matches!(err, HsmError::WrongPin { .. }), "{err:?}");

    // One share is not enough, and the token is not asked.
    let err = so_pin_from_share_files(&[&files[1]]).unwrap_err();
    assert!(matches!(err, HsmError::Shares(_)), "{err:?}");
    assert!(err.to_string().contains("needs 2"), "{err}");
    // A complete quorum of another split is a wrong SO PIN for this token.
    let (_, others) = new_so_pin(2, 2).unwrap();
    let other_files: Vec<_> = others
        .iter()
        .map(|s| {
            let path = rig.dir.join(format!("{name}.other-{}", s.index));
            common::write_secret(&path, &share_file_text(s, "elsewhere").unwrap());
            path
        })
        .collect();
    let wrong = so_pin_from_share_files(&other_files).unwrap();
    let err = etee_hsm::init_user_pin(&config, &wrong).unwrap_err();
    assert!(
        matches!(
            err,
            HsmError::WrongPin {
                kind: PinKind::SecurityOfficer,
                ..
            }
        ),
        "{err:?}"
    );
    // Mixing them with this token's shares is refused before the token is asked.
    let err = so_pin_from_share_files(&[&files[0], &other_files[1]]).unwrap_err();
    assert!(
        err.to_string().contains("not all of the same split"),
        "{err}"
    );
    // The renewed PIN still works.
    Hsm::open(&renewed).unwrap();
}

/// The user PIN changed behind a running pool (another application, `pkcs11-tool
/// --change-pin`): the pool's next login is refused by the token, and nothing more is
/// tried with that PIN, since each try would be a guess the custody core does not count.
#[test]
fn a_pin_changed_behind_the_pool_is_not_tried_again() {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let config = new_token("pin-changed");
    let hsm = Hsm::open(&config).unwrap();
    let auth = hsm
        .generate(config.profile("authentication").unwrap())
        .unwrap();
    let keys = hsm.keys();
    let id = KeyId(auth.id.clone());
    keys.sign_pss_sha256(&id, &[1; 32]).unwrap();

    // Another handle on the same library (not initialised again) changes the PIN and logs
    // every session out.
    let other = cryptoki::context::Pkcs11::new(&config.module).unwrap();
    let slot = other
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| other.get_token_info(*s).unwrap().label().trim_end() == "pin-changed")
        .unwrap();
    let session = other.open_rw_session(slot).unwrap();
    // Logged in already: the login state is the token's, shared by the pool's sessions.
    let _ = session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())));
    session
        .set_pin(
            &AuthPin::new(USER_PIN.into()),
            &AuthPin::new("a-new-pin".into()),
        )
        .unwrap();
    session.logout().unwrap();
    drop(session);
    // Dropping the last clone of the handle would finalise the library: keep it.
    std::mem::forget(other);

    let first = keys.sign_pss_sha256(&id, &[2; 32]).unwrap_err().to_string();
    assert!(first.contains("wrong user PIN"), "{first}");
    for _ in 0..3 {
        let next = keys.sign_pss_sha256(&id, &[3; 32]).unwrap_err().to_string();
        assert!(next.contains("nothing more is tried"), "{next}");
    }
}

/// A signing key generated in the token but without its certificate yet: signing with it
/// says what is missing and how to install it.
#[test]
fn a_key_without_its_certificate_says_how_to_install_it() {
    let config = new_token("no-cert-yet");
    let hsm = Hsm::open(&config).unwrap();
    hsm.generate(config.profile("authentication").unwrap())
        .unwrap();
    let e = hsm.keys().signing_key().unwrap_err();
    assert!(
        matches!(&e, HsmError::NoCertificate(id) if id == "authentication"),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("etee keys install-cert") && text.contains("--key authentication"),
        "{text}"
    );
}

/// Renames the objects of `classes` with CKA_ID `from` to `to` (id and label), as an
/// install that stopped half way would have left them.
fn rename_objects(hsm: &Hsm, from: &str, to: &str, classes: &[ObjectClass]) {
    hsm.pool()
        .run(|conn| {
            for class in classes {
                let template = [Attribute::Class(*class), Attribute::Id(from.into())];
                for o in conn.find_all(&template)? {
                    let rename = [Attribute::Id(to.into()), Attribute::Label(to.into())];
                    conn.session().update_attributes(o, &rename).unwrap();
                }
            }
            conn.forget_handles();
            Ok(())
        })
        .unwrap();
}

/// How many objects of `class` carry CKA_ID `id`.
fn count_objects(hsm: &Hsm, class: ObjectClass, id: &str) -> usize {
    hsm.pool()
        .run(|conn| {
            Ok(conn
                .find_all(&[Attribute::Class(class), Attribute::Id(id.into())])?
                .len())
        })
        .unwrap()
}

/// `keys install-cert` for an ETK key that stopped half way completes on a retry with
/// either id: the key renamed to its serial without its certificate (what the former
/// order, rename first, left), the private key renamed but not its public key, the
/// certificate stored but the key not yet renamed (what the current order can leave).
#[test]
fn an_interrupted_certificate_install_completes_on_retry() {
    let config = new_token("install-retry");
    let hsm = Hsm::open(&config).unwrap();
    let w = world();
    let rdns = ehealth_dn("NIHII-HOSPITAL", "71000436", "Retry", None);
    let etk_usage = || {
        let mut u = KeyUsage::new();
        u.key_encipherment().data_encipherment();
        u
    };
    let both = [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY];
    let installed = |pending: &str, serial: &str| {
        for class in both {
            assert_eq!(count_objects(&hsm, class, serial), 1, "{class} {serial}");
            assert_eq!(count_objects(&hsm, class, pending), 0, "{class} {pending}");
        }
        assert_eq!(count_objects(&hsm, ObjectClass::CERTIFICATE, serial), 1);
        let inventory = hsm.list().unwrap();
        let key = inventory.keys.iter().find(|k| k.id == serial).unwrap();
        assert_eq!(key.label, serial);
        assert_eq!(key.certificate.as_ref().unwrap().serial, serial);
    };

    for case in [
        "renamed, no certificate",
        "private renamed only",
        "certificate only",
    ] {
        let etk = hsm.generate(config.profile("etk").unwrap()).unwrap();
        let c = cert(&issue(
            &w.pki.root,
            &rdns,
            &etk.public_key_der(),
            etk_usage(),
        ));
        let serial = c.serial_decimal();
        let retry_with = match case {
            "renamed, no certificate" => {
                rename_objects(&hsm, &etk.id, &serial, &both);
                etk.id.clone()
            }
            "private renamed only" => {
                rename_objects(&hsm, &etk.id, &serial, &[ObjectClass::PRIVATE_KEY]);
                etk.id.clone()
            }
            _ => {
                // Installed once, then the key's name put back: the certificate is there
                // under the serial, the key still pending.
                install_certificate(hsm.pool(), &etk.id, &c, &[]).unwrap();
                rename_objects(&hsm, &serial, &etk.id, &both);
                serial.clone()
            }
        };
        assert_eq!(
            install_certificate(hsm.pool(), &retry_with, &c, &[]).unwrap(),
            serial,
            "{case}"
        );
        installed(&etk.id, &serial);
        // Once more: nothing left to do, same answer.
        assert_eq!(
            install_certificate(hsm.pool(), &etk.id, &c, &[]).unwrap(),
            serial,
            "{case}"
        );
        installed(&etk.id, &serial);
    }
    // A name that is no key and a certificate for no key in the token: still NotFound.
    let stranger = issue(
        &w.pki.root,
        &rdns,
        &w.alice
            .etk_cert
            .public_key()
            .unwrap()
            .public_key_to_der()
            .unwrap(),
        etk_usage(),
    );
    assert!(matches!(
        install_certificate(hsm.pool(), "etk-pending-00", &cert(&stranger), &[]),
        Err(HsmError::NotFound { .. })
    ));
}
