//! eHealth keystores: the real test keystores, round trips through our PKCS#12 writer,
//! interoperability with OpenSSL, the software key provider, and hostile input.

use etee_formats::keys::{KeyError, KeyId, SignerRef};
use etee_formats::keystore::{
    ehealth_entries, read_pfx, write_pfx, EhealthKeystore, KeyRole, KeystoreError, PfxEntry,
    Profile,
};
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const PASSWORD: &str = "correct horse";

/// The shared vectors, or a skip (a failure under `ETEE_E2E_STRICT`).
#[track_caller]
fn vectors() -> Option<PathBuf> {
    etee_testpki::skip::shared_vectors()
}

fn egelke(dir: &Path, rel: &str) -> PathBuf {
    dir.join("egelke-etee/etee-crypto-test").join(rel)
}

/// One PKI and one institution for all tests (RSA key generation is slow).
fn fixture() -> &'static (TestPki, Institution) {
    static F: OnceLock<(TestPki, Institution)> = OnceLock::new();
    F.get_or_init(|| {
        let pki = TestPki::generate("ks").expect("test PKI");
        let inst = pki
            .institution(&InstitutionSpec::new(
                "NIHII-PHARMACY",
                "27150201",
                "Pharmacy",
            ))
            .expect("institution");
        (pki, inst)
    })
}

#[test]
fn ehealth_entries_follow_the_alias_convention() {
    let (_, inst) = fixture();
    let made = ehealth_entries(
        inst.auth.key.clone(),
        vec![inst.auth.cert.clone()],
        inst.etk_key.clone(),
        inst.etk_cert.clone(),
    )
    .unwrap();
    let by_hand = entries(inst);
    assert_eq!(made.len(), 2);
    for (m, h) in made.iter().zip(&by_hand) {
        assert_eq!(m.alias, h.alias);
        assert!(m.key.public_eq(&h.key));
        assert_eq!(m.chain[0].to_der().unwrap(), h.chain[0].to_der().unwrap());
    }
    assert_eq!(made[0].alias, "authentication");
    assert_eq!(made[1].alias, inst.etk_serial_decimal());
}

fn entries(inst: &Institution) -> Vec<PfxEntry> {
    let mut auth_chain = vec![inst.auth.cert.clone()];
    auth_chain.extend(inst.chain.iter().cloned());
    vec![
        PfxEntry {
            alias: "authentication".into(),
            key: inst.auth.key.clone(),
            chain: auth_chain,
        },
        PfxEntry {
            alias: inst.etk_serial_decimal(),
            key: inst.etk_key.clone(),
            chain: vec![inst.etk_cert.clone()],
        },
    ]
}

fn generated(profile: Profile) -> &'static [u8] {
    static MODERN: OnceLock<Vec<u8>> = OnceLock::new();
    static LEGACY: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = match profile {
        Profile::Modern => &MODERN,
        Profile::Legacy => &LEGACY,
    };
    cell.get_or_init(|| write_pfx(&entries(&fixture().1), PASSWORD, profile).expect("write_pfx"))
}

#[test]
fn bob_keystore() {
    let Some(dir) = vectors() else { return };
    let ks =
        EhealthKeystore::load_file(egelke(&dir, "bob/bobs_private_key_store.p12"), "test").unwrap();
    let auth = ks.authentication().expect("authentication key");
    let SignerRef::Certificate { cert, chain } = &auth.signer else {
        panic!("certificate signer expected")
    };
    println!(
        "bob auth: {} ({} CA certs)",
        cert.subject_string(),
        chain.len()
    );
    assert!(chain.iter().all(|c| c != cert));
    let keys = ks.decryption_keys();
    let serials: Vec<String> = keys
        .iter()
        .map(|k| etee_formats::cert::decimal(&k.serial))
        .collect();
    assert!(serials.contains(&"825373489".to_string()), "{serials:?}");
    let bob = keys.iter().find(|k| k.key.0 == "825373489").unwrap();
    assert!(bob.modulus_bits >= 2048);
    assert_eq!(bob.cert.as_ref().unwrap().serial_decimal(), "825373489");
    assert!(ks.warnings().is_empty(), "{:?}", ks.warnings());
    let der = ks.private_key_der("825373489").unwrap();
    assert!(openssl::pkey::PKey::private_key_from_pkcs8(&der).is_ok());
    assert!(matches!(
        ks.private_key_der("nobody"),
        Err(KeystoreError::UnknownAlias(_))
    ));
}

#[test]
fn alice_and_old_bob_and_official_bob() {
    let Some(dir) = vectors() else { return };
    let alice =
        EhealthKeystore::load_file(egelke(&dir, "alice/alices_private_key_store.p12"), "test")
            .unwrap();
    assert!(alice.authentication().is_some());
    assert!(!alice.decryption_keys().is_empty());

    let old_bob =
        EhealthKeystore::load_file(egelke(&dir, "bob/old_bobs_private_key_store.p12"), "test")
            .unwrap();
    let serials: Vec<String> = old_bob
        .entries()
        .iter()
        .filter_map(|e| e.serial_decimal())
        .collect();
    assert!(
        old_bob
            .decryption_keys()
            .iter()
            .any(|k| etee_formats::cert::decimal(&k.serial)
                == "232784750872845143225881750226911779648"),
        "{serials:?}"
    );

    let official = dir.join("official-etee-crypto-1.6.1-tests/bob/bobs_private_key_store.p12");
    let official = EhealthKeystore::load_file(official, "test").unwrap();
    assert!(official.authentication().is_some());
    assert!(!official.decryption_keys().is_empty());
}

#[test]
fn every_vector_keystore() {
    let Some(dir) = vectors() else { return };
    let mut files = Vec::new();
    collect_p12(&dir, &mut files);
    files.sort();
    assert!(files.len() > 10, "found only {} keystores", files.len());
    for file in files {
        let rel = file.strip_prefix(&dir).unwrap().display().to_string();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let result = EhealthKeystore::load_file(
            &file,
            if rel.ends_with("ecc/bryan.p12") {
                "Test_001"
            } else {
                "test"
            },
        );
        if name == "etk_ra.p12" || name == "alices_eid_keystore.p12" {
            assert!(
                matches!(result, Err(KeystoreError::WrongPasswordOrCorrupt)),
                "{rel}: {result:?}"
            );
            println!("{rel:<75} (password unknown)");
            continue;
        }
        let ks = result.unwrap_or_else(|e| panic!("{rel}: {e}"));
        let aliases: Vec<String> = ks
            .entries()
            .iter()
            .map(|e| {
                let role = if e.role == KeyRole::Authentication {
                    "auth"
                } else {
                    "etk"
                };
                format!(
                    "{}[{role} {} bits serial {}]",
                    e.alias,
                    e.bits,
                    e.serial_decimal().unwrap_or_default()
                )
            })
            .collect();
        println!("{rel:<75} {}", aliases.join(", "));
        for w in ks.warnings() {
            println!("{:<75}   warning: {w}", "");
        }
    }
}

fn collect_p12(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_p12(&path, out);
        } else if path.extension().is_some_and(|e| e == "p12") {
            out.push(path);
        }
    }
}

#[test]
fn wrong_password() {
    let modern = EhealthKeystore::load(generated(Profile::Modern), "wrong");
    assert!(
        matches!(modern, Err(KeystoreError::WrongPasswordOrCorrupt)),
        "{modern:?}"
    );
    let Some(dir) = vectors() else { return };
    let bob = EhealthKeystore::load_file(egelke(&dir, "bob/bobs_private_key_store.p12"), "tset");
    assert!(
        matches!(bob, Err(KeystoreError::WrongPasswordOrCorrupt)),
        "{bob:?}"
    );
}

#[test]
fn round_trip_both_profiles_sign_and_decrypt() {
    let (_, inst) = fixture();
    for profile in [Profile::Modern, Profile::Legacy] {
        let ks = EhealthKeystore::load(generated(profile), PASSWORD).unwrap();
        assert!(ks.warnings().is_empty(), "{:?}", ks.warnings());

        // Authentication: the chain is the root, not the leaf.
        let auth = ks.authentication().expect("authentication");
        let SignerRef::Certificate { cert, chain } = &auth.signer else {
            panic!()
        };
        assert_eq!(cert.der(), inst.auth.cert.to_der().unwrap());
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].der(), inst.chain[0].to_der().unwrap());

        // PSS-SHA256, salt 32, verified by OpenSSL against the certificate.
        let message = b"signed attributes";
        let digest: [u8; 32] = openssl::sha::sha256(message);
        let sig = auth.ops.sign_pss_sha256(&auth.key, &digest).unwrap();
        let public = inst.auth.cert.public_key().unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), &public).unwrap();
        v.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32)).unwrap();
        v.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        v.update(message).unwrap();
        assert!(
            v.verify(&sig).unwrap(),
            "{profile:?}: PSS signature does not verify"
        );

        // ETK key: found by serial, opens PKCS#1 v1.5 key transport.
        let keys = ks.decryption_keys();
        assert_eq!(keys.len(), 1);
        let dk = &keys[0];
        assert_eq!(
            etee_formats::cert::decimal(&dk.serial),
            inst.etk_serial_decimal()
        );
        assert_eq!(dk.modulus_bits, 2048);
        assert_eq!(
            dk.cert.as_ref().unwrap().der(),
            inst.etk_cert.to_der().unwrap()
        );
        let rsa = inst.etk_cert.public_key().unwrap().rsa().unwrap();
        let mut blob = vec![0u8; rsa.size() as usize];
        let n = rsa
            .public_encrypt(b"0123456789abcdef", &mut blob, Padding::PKCS1)
            .unwrap();
        blob.truncate(n);
        let plain = dk.ops.decrypt_pkcs1v15(&dk.key, &blob).unwrap();
        assert_eq!(&plain[..], b"0123456789abcdef");
        let ring = ks.key_ring();
        let issuer = dk.cert.as_ref().unwrap().issuer_der().to_vec();
        assert_eq!(ring.candidates_by_serial(&issuer, &dk.serial).len(), 1);
    }
}

#[test]
fn decryption_failures_look_alike() {
    let ks = EhealthKeystore::load(generated(Profile::Modern), PASSWORD).unwrap();
    let dk = &ks.decryption_keys()[0];
    let auth = ks.authentication().unwrap();
    // Wrong length.
    assert!(matches!(
        dk.ops.decrypt_pkcs1v15(&dk.key, b"garbage"),
        Err(KeyError::DecryptFailed)
    ));
    // Full length, larger than the modulus.
    assert!(matches!(
        dk.ops.decrypt_pkcs1v15(&dk.key, &[0xff; 256]),
        Err(KeyError::DecryptFailed)
    ));
    // Full length, bad padding. OpenSSL >= 3.2 answers with a synthetic plaintext instead
    // (implicit rejection), which is just as opaque.
    let bad_padding = dk.ops.decrypt_pkcs1v15(&dk.key, &[0x01; 256]);
    if openssl::version::number() < 0x3020_0000 {
        assert!(matches!(bad_padding, Err(KeyError::DecryptFailed)));
    }
    // The wrong key for the blob: the authentication key.
    let rsa = fixture().1.etk_cert.public_key().unwrap().rsa().unwrap();
    let mut blob = vec![0u8; 256];
    rsa.public_encrypt(&[7; 16], &mut blob, Padding::PKCS1)
        .unwrap();
    if openssl::version::number() < 0x3020_0000 {
        assert!(matches!(
            auth.ops.decrypt_pkcs1v15(&auth.key, &blob),
            Err(KeyError::DecryptFailed)
        ));
    }
    // Unknown key.
    let unknown = KeyId("nope".into());
    assert!(matches!(
        dk.ops.decrypt_pkcs1v15(&unknown, &blob),
        Err(KeyError::UnknownKey(_))
    ));
    assert!(matches!(
        dk.ops.sign_pss_sha256(&unknown, &[0; 32]),
        Err(KeyError::UnknownKey(_))
    ));
}

#[test]
fn debug_output_has_no_key_material() {
    let contents = read_pfx(generated(Profile::Modern), PASSWORD).unwrap();
    assert_eq!(contents.keys.len(), 2);
    assert_eq!(contents.certs.len(), 3);
    let ks = EhealthKeystore::load(generated(Profile::Modern), PASSWORD).unwrap();
    let debug = format!(
        "{contents:?} {ks:?} {:?} {:?}",
        contents.entries().unwrap(),
        ks.decryption_keys()
    );
    for bag in &contents.keys {
        // A stretch of the PKCS#8 body (past the common header), in any common rendering.
        let body = &bag.pkcs8_der()[40..56];
        assert!(!debug.contains(&hex::encode(body)));
        assert!(!debug.contains(&hex::encode_upper(body)));
        assert!(!debug.contains(
            &format!("{:?}", &body[..8])
                .trim_matches(['[', ']'])
                .to_string()
        ));
    }
    assert!(debug.contains("authentication"));
}

/// Keystores OpenSSL wrote (its modern defaults) read with our reader, and ours read by
/// OpenSSL's PKCS12_parse (first key only, which is all it offers).
#[test]
fn interoperates_with_openssl_library() {
    let (_, inst) = fixture();
    let mut ca = openssl::stack::Stack::new().unwrap();
    ca.push(inst.chain[0].clone()).unwrap();
    let theirs = openssl::pkcs12::Pkcs12::builder()
        .name("authentication")
        .pkey(&inst.auth.key)
        .cert(&inst.auth.cert)
        .ca(ca)
        .build2("pw")
        .unwrap()
        .to_der()
        .unwrap();
    let ks = EhealthKeystore::load(&theirs, "pw").unwrap();
    let SignerRef::Certificate { cert, chain } = ks.authentication().unwrap().signer else {
        panic!()
    };
    assert_eq!(cert.der(), inst.auth.cert.to_der().unwrap());
    assert_eq!(chain.len(), 1);

    for profile in [Profile::Modern, Profile::Legacy] {
        let parsed = openssl::pkcs12::Pkcs12::from_der(generated(profile))
            .unwrap()
            .parse2(PASSWORD)
            .unwrap();
        let key = parsed.pkey.expect("a key");
        let cert = parsed.cert.expect("a certificate");
        assert!(cert.public_key().unwrap().public_eq(&key));
        assert!(openssl::pkcs12::Pkcs12::from_der(generated(profile))
            .unwrap()
            .parse2("wrong")
            .is_err());
    }
}

/// The `openssl pkcs12` command reads what we write (with `-legacy` for the legacy profile).
#[test]
fn openssl_cli_reads_our_keystores() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        etee_testpki::skip::skip("openssl not on PATH");
        return;
    }
    let (_, inst) = fixture();
    let dir = tempfile::tempdir().unwrap();
    for profile in [Profile::Modern, Profile::Legacy] {
        let path = dir.path().join(format!("{profile:?}.p12"));
        std::fs::write(&path, generated(profile)).unwrap();
        let run = |extra: &[&str]| {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(["pkcs12", "-in"])
                .arg(&path)
                .args(["-passin", &format!("pass:{PASSWORD}")])
                .args(extra);
            if profile == Profile::Legacy {
                cmd.arg("-legacy");
            }
            let out = cmd.output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "{profile:?}: openssl pkcs12 {extra:?} failed:\n{text}"
            );
            text
        };
        let info = run(&["-info", "-nokeys"]);
        println!("{profile:?}:\n{info}");
        assert!(info.contains("friendlyName: authentication"), "{info}");
        assert!(
            info.contains(&format!("friendlyName: {}", inst.etk_serial_decimal())),
            "{info}"
        );
        let expected_alg = if profile == Profile::Legacy {
            "pbeWithSHA1And3-KeyTripleDES-CBC"
        } else {
            "PBES2"
        };
        assert!(info.contains(expected_alg), "{info}");
        assert_eq!(info.matches("BEGIN CERTIFICATE").count(), 3, "{info}");
        let keys = run(&["-nocerts", "-noenc"]);
        assert_eq!(keys.matches("BEGIN PRIVATE KEY").count(), 2, "{keys}");
    }
}

/// The other algorithms the reader supports, as the `openssl pkcs12 -export` command
/// writes them: no MAC and plain keyBags, RC2-128 and PKCS#12 3DES with a SHA-384 MAC,
/// PBES2 with 3DES/AES-128 and a SHA-512 MAC, PBES2 AES without MAC.
#[test]
fn reads_what_the_openssl_cli_writes() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        etee_testpki::skip::skip("openssl not on PATH");
        return;
    }
    let (_, inst) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let key_pem = dir.path().join("key.pem");
    let cert_pem = dir.path().join("cert.pem");
    std::fs::write(&key_pem, inst.etk_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&cert_pem, inst.etk_cert.to_pem().unwrap()).unwrap();
    let variants: [(&str, &[&str]); 4] = [
        ("plain", &["-keypbe", "NONE", "-certpbe", "NONE", "-nomac"]),
        (
            "rc2-128",
            &[
                "-keypbe",
                "PBE-SHA1-RC2-128",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha384",
                "-legacy",
            ],
        ),
        (
            "pbes2-3des",
            &[
                "-keypbe",
                "DES-EDE3-CBC",
                "-certpbe",
                "AES-128-CBC",
                "-macalg",
                "sha512",
            ],
        ),
        (
            "pbes2-nomac",
            &[
                "-keypbe",
                "AES-256-CBC",
                "-certpbe",
                "AES-192-CBC",
                "-nomac",
            ],
        ),
    ];
    for (name, args) in variants {
        let out = dir.path().join(format!("{name}.p12"));
        let status = std::process::Command::new("openssl")
            .args([
                "pkcs12",
                "-export",
                "-name",
                "encryption",
                "-passout",
                "pass:pw",
                "-inkey",
            ])
            .arg(&key_pem)
            .arg("-in")
            .arg(&cert_pem)
            .arg("-out")
            .arg(&out)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: openssl pkcs12 -export failed");
        let bytes = std::fs::read(&out).unwrap();
        let ks = EhealthKeystore::load(&bytes, "pw").unwrap_or_else(|e| panic!("{name}: {e}"));
        let keys = ks.decryption_keys();
        assert_eq!(keys.len(), 1, "{name}");
        assert_eq!(
            etee_formats::cert::decimal(&keys[0].serial),
            inst.etk_serial_decimal(),
            "{name}"
        );
        let wrong = EhealthKeystore::load(&bytes, "wp");
        if name == "plain" {
            assert!(wrong.is_ok(), "nothing is encrypted or authenticated");
        } else {
            assert!(
                matches!(wrong, Err(KeystoreError::WrongPasswordOrCorrupt)),
                "{name}: {wrong:?}"
            );
        }
    }
}

#[test]
fn alias_convention_edge_cases() {
    let (pki, inst) = fixture();
    // An ETK key named "encryption" takes its serial from its certificate; a key with
    // neither certificate nor numeric alias is kept but warned about; a numeric alias
    // without certificate is its serial.
    let list = vec![
        PfxEntry {
            alias: "Authentication".into(),
            key: inst.auth.key.clone(),
            chain: vec![inst.auth.cert.clone()],
        },
        PfxEntry {
            alias: "encryption".into(),
            key: inst.etk_key.clone(),
            chain: vec![inst.etk_cert.clone()],
        },
        // Keys whose certificates are not in the keystore.
        PfxEntry {
            alias: "mystery".into(),
            key: pki.root.key.clone(),
            chain: vec![],
        },
        PfxEntry {
            alias: "4660".into(),
            key: pki.ra.key.clone(),
            chain: vec![],
        },
    ];
    let der = write_pfx(&list, PASSWORD, Profile::Modern).unwrap();
    let ks = EhealthKeystore::load(&der, PASSWORD).unwrap();
    assert_eq!(ks.entries().len(), 4);
    let auth = ks.authentication().unwrap();
    let SignerRef::Certificate { chain, .. } = &auth.signer else {
        panic!()
    };
    assert!(chain.is_empty(), "no CA certificates in this keystore");
    let keys = ks.decryption_keys();
    let serials: Vec<String> = keys
        .iter()
        .map(|k| etee_formats::cert::decimal(&k.serial))
        .collect();
    assert_eq!(serials, [inst.etk_serial_decimal(), "4660".to_string()]);
    assert_eq!(keys[1].serial, [0x12, 0x34]);
    assert_eq!(ks.warnings().len(), 1, "{:?}", ks.warnings());
    assert!(ks.warnings()[0].contains("mystery"));
    assert!(ks.private_key_der("MYSTERY").is_ok());

    // Duplicate aliases and mismatched certificates are refused by the writer.
    let dup = vec![
        PfxEntry {
            alias: "a".into(),
            key: inst.etk_key.clone(),
            chain: vec![],
        },
        PfxEntry {
            alias: "A".into(),
            key: inst.etk_key.clone(),
            chain: vec![],
        },
    ];
    assert!(matches!(
        write_pfx(&dup, PASSWORD, Profile::Modern),
        Err(KeystoreError::InvalidEntry(_))
    ));
    let mismatch = vec![PfxEntry {
        alias: "a".into(),
        key: inst.etk_key.clone(),
        chain: vec![inst.auth.cert.clone()],
    }];
    assert!(matches!(
        write_pfx(&mismatch, PASSWORD, Profile::Modern),
        Err(KeystoreError::InvalidEntry(_))
    ));
}

fn assert_all_fail(name: &str, bytes: &[u8], password: &str, step: usize) {
    for len in (0..bytes.len()).step_by(step.max(1)) {
        assert!(
            EhealthKeystore::load(&bytes[..len], password).is_err(),
            "{name}: truncated to {len} loads"
        );
    }
    let mut copy = bytes.to_vec();
    for pos in (0..bytes.len()).step_by(step) {
        let bit = 1u8 << (pos % 8);
        copy[pos] ^= bit;
        let result = EhealthKeystore::load(&copy, password);
        assert!(
            result.is_err(),
            "{name}: flipping bit {} of byte {pos} still loads",
            pos % 8
        );
        copy[pos] ^= bit;
    }
    assert!(EhealthKeystore::load(&copy, password).is_ok());
}

#[test]
fn damaged_keystores_fail_cleanly() {
    for profile in [Profile::Modern, Profile::Legacy] {
        let bytes = generated(profile);
        assert_all_fail(&format!("{profile:?}"), bytes, PASSWORD, bytes.len() / 150);
    }
    // The structure around the MAC, byte by byte.
    let bytes = generated(Profile::Legacy);
    let tail = bytes.len() - 80;
    let mut copy = bytes.to_vec();
    for pos in tail..bytes.len() {
        for bit in 0..8 {
            copy[pos] ^= 1 << bit;
            assert!(
                EhealthKeystore::load(&copy, PASSWORD).is_err(),
                "bit {bit} of byte {pos}"
            );
            copy[pos] ^= 1 << bit;
        }
    }
    let Some(dir) = vectors() else { return };
    let bob = std::fs::read(egelke(&dir, "bob/bobs_private_key_store.p12")).unwrap();
    assert_all_fail("bob", &bob, "test", 7);
}

#[test]
fn hostile_iteration_counts_are_refused() {
    // A PFX whose MAC asks for 2^31 iterations: refused before any work.
    use etee_formats::ber::write;
    let auth_safe = write::seq(&[]);
    let content = write::seq(&[
        &etee_formats::oid::der(etee_formats::oid::DATA),
        &write::cons(0xa0, &[&write::octets(&auth_safe)]),
    ]);
    let alg = write::seq(&[&etee_formats::oid::der(etee_formats::oid::SHA1), &[5, 0]]);
    let mac = write::seq(&[
        &write::seq(&[&alg, &write::octets(&[0; 20])]),
        &write::octets(&[1; 8]),
        &write::small_uint(1 << 31),
    ]);
    let pfx = write::seq(&[&write::small_uint(3), &content, &mac]);
    let start = std::time::Instant::now();
    assert!(matches!(
        read_pfx(&pfx, "x"),
        Err(KeystoreError::TooManyIterations(_))
    ));
    assert!(start.elapsed().as_secs() < 2);
}

/// A keystore of more keys or certificates than one holder's is refused as malformed
/// before its keys are compared with its certificates (each key with each certificate: a
/// hostile file of many of both would take hours); up to the bounds it reads.
#[test]
fn a_keystore_holds_a_bounded_number_of_keys_and_certificates() {
    use etee_formats::keystore::pkcs12::{MAX_CERTIFICATES, MAX_KEYS};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let entry = |i: usize, chain: Vec<openssl::x509::X509>| PfxEntry {
        alias: format!("key {i}"),
        key: key.clone(),
        chain,
    };
    let keys = |n: usize| -> Vec<PfxEntry> { (0..n).map(|i| entry(i, vec![])).collect() };
    let most = write_pfx(&keys(MAX_KEYS), PASSWORD, Profile::Modern).unwrap();
    assert_eq!(read_pfx(&most, PASSWORD).unwrap().keys.len(), MAX_KEYS);
    let more = write_pfx(&keys(MAX_KEYS + 1), PASSWORD, Profile::Modern).unwrap();
    match read_pfx(&more, PASSWORD) {
        Err(KeystoreError::Malformed(e)) => assert!(e.contains("more than"), "{e}"),
        other => panic!(
            "{} keys read: {:?}",
            MAX_KEYS + 1,
            other.map(|c| c.keys.len())
        ),
    }

    // One key whose chain is its certificate and MAX_CERTIFICATES others (distinct).
    let cert = |serial: u32| {
        let name = etee_testpki::build_name(&[("CN", &format!("decoy {serial}"))]).unwrap();
        etee_testpki::self_signed(&name, &key, Some(&serial.to_be_bytes())).unwrap()
    };
    let chain: Vec<_> = (0..=MAX_CERTIFICATES as u32).map(|s| cert(s + 1)).collect();
    let many = write_pfx(&[entry(0, chain)], PASSWORD, Profile::Modern).unwrap();
    match read_pfx(&many, PASSWORD) {
        Err(KeystoreError::Malformed(e)) => assert!(e.contains("more than"), "{e}"),
        other => panic!(
            "too many certificates read: {:?}",
            other.map(|c| c.certs.len())
        ),
    }
}
