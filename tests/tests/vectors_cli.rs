//! The shared interoperability vectors through the command line: messages made by the
//! official Java library (etee-crypto-lib 2.2.0 and 2.0.x), the official test ETKs and
//! keystores (legacy PBE, password `test`), compared with the official verdicts of
//! `expected-verdicts.json` evaluated at the same instant (`--at evaluated_at`).
//!
//! Every test prints `skipping: ../shared/vectors not found` and returns when the vectors
//! are absent (`ETEE_E2E_STRICT=1` makes that a failure).

use etee_e2e::{etee, now_unix, parse_rfc3339, scratch, sha256_hex, vectors, Output};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const PASSWORD: &str = "test";
const GEN: &str = "generated-etee-crypto-lib-2.2.0";
const TEST: &str = "egelke-etee/etee-crypto-test";
const BOB_P12: &str = "egelke-etee/etee-crypto-test/bob/bobs_private_key_store.p12";
const BOB_ETK: &str = "egelke-etee/etee-crypto-test/bob/bobs_public_key.etk";
const ALICE_P12: &str = "egelke-etee/etee-crypto-test/alice/alices_private_key_store.p12";
const TRUST: [&str; 2] = [
    "egelke-etee/etee-crypto-test/imports/CA.cer",
    "egelke-etee/etee-crypto-test/imports/CA2.cer",
];
const KEK: &str = "000102030405060708090a0b0c0d0e0f";
const ALICE_SUBJECT: &str = "CN=Alice, OU=eHealth-platform Belgium, O=Federal Government, C=BE";
/// Alice's authentication certificate (vector keystore) is valid until this instant.
const ALICE_AUTH_NOT_AFTER: &str = "2033-05-09T13:21:09Z";

fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("string").to_string())
        .collect()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("string"))
        .collect()
}

/// The official verdict for `message` (with the KEK or with the keystores).
fn official(dir: &Path, message: &str, with_kek: bool) -> Value {
    let all: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected-verdicts.json")).unwrap())
            .expect("expected-verdicts.json");
    all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"] == message && e["kek"].is_null() != with_kek)
        .unwrap_or_else(|| panic!("no official verdict for {message} (kek: {with_kek})"))
        .clone()
}

/// Asserts our verdict equals the official one (fatal, error and warning sets, content).
#[track_caller]
fn assert_official(ours: &Value, official: &Value) {
    assert_eq!(ours["fatal"], official["fatal"], "fatal; ours {ours}");
    assert_eq!(
        set(&ours["errors"]),
        set(&official["errors"]),
        "errors; ours {ours}"
    );
    assert_eq!(
        set(&ours["warnings"]),
        set(&official["warnings"]),
        "warnings; ours {ours}"
    );
    assert_eq!(
        ours["content_len"], official["content_len"],
        "content_len; ours {ours}"
    );
    assert_eq!(
        ours["content_sha256"], official["content_sha256"],
        "sha256; ours {ours}"
    );
}

struct Unseal {
    run: Output,
    verdict: Value,
    out: PathBuf,
    _scratch: tempfile::TempDir,
}

/// `etee unseal --json` of a vector message with vector keystores and/or a KEK, trusting
/// CA.cer and CA2.cer, content to a scratch file.
fn unseal(dir: &Path, message: &str, keystores: &[&str], kek: Option<&str>, at: &str) -> Unseal {
    let s = scratch();
    let out = s.path().join("content");
    let mut cmd = etee(["unseal", "--json", "--at", at, "--in"])
        .arg(dir.join(message))
        .arg("--out")
        .arg(&out)
        .password(PASSWORD);
    for ks in keystores {
        cmd = cmd.arg("--keystore").arg(dir.join(ks));
    }
    for t in TRUST {
        cmd = cmd.arg("--trust").arg(dir.join(t));
    }
    if let Some(k) = kek {
        cmd = cmd.args(["--kek", k]);
    }
    let run = cmd.run();
    let verdict = run.json();
    Unseal {
        run,
        verdict,
        out,
        _scratch: s,
    }
}

#[test]
fn known_recipient_message_of_the_official_library() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{GEN}/known_alice_to_bob.msg");
    let u = unseal(&dir, &msg, &[BOB_P12], None, "2026-11-23T13:54:40Z");
    u.run.code(0);
    let v = &u.verdict;
    assert_eq!(v["fatal"], Value::Null, "{v}");
    assert_eq!(names(&v["errors"]), Vec::<&str>::new(), "{v}");
    assert_eq!(names(&v["warnings"]), ["SIGNING_TIME_EXPIRED"], "{v}");
    let plaintext = std::fs::read(dir.join(GEN).join("plaintext.txt")).unwrap();
    assert_eq!(std::fs::read(&u.out).expect("content file"), plaintext);
    assert_eq!(v["content_len"], 55);
    assert_eq!(v["content_sha256"], sha256_hex(&plaintext));
    assert_eq!(v["sender"]["subject"], ALICE_SUBJECT);
    assert_eq!(v["signing_time"], "2026-11-23T12:49:46Z");
    assert_eq!(v["opened_with"], "key:825373489");
    assert_official(v, &official(&dir, &msg, false));
}

/// Only the evaluation time makes the warning: shortly after sealing there is none.
#[test]
fn official_message_evaluated_right_after_sealing_has_no_warning() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{GEN}/known_alice_to_bob.msg");
    let u = unseal(&dir, &msg, &[BOB_P12], None, "2026-11-23T12:51:00Z");
    u.run.code(0);
    assert_eq!(
        names(&u.verdict["warnings"]),
        Vec::<&str>::new(),
        "{}",
        u.verdict
    );
    assert_eq!(
        names(&u.verdict["errors"]),
        Vec::<&str>::new(),
        "{}",
        u.verdict
    );
}

#[test]
fn unknown_recipient_message_opens_with_the_kek_only() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{GEN}/unknown_kek.msg");
    let plaintext = std::fs::read(dir.join(GEN).join("plaintext.txt")).unwrap();

    let official_kek = official(&dir, &msg, true);
    let at = official_kek["evaluated_at"].as_str().unwrap();
    let u = unseal(&dir, &msg, &[], Some(KEK), at);
    u.run.code(0);
    assert_official(&u.verdict, &official_kek);
    assert_eq!(u.verdict["opened_with"], "kek");
    assert_eq!(std::fs::read(&u.out).expect("content file"), plaintext);

    // With Bob's keystore instead: no KTRI at all.
    let official_ks = official(&dir, &msg, false);
    let at = official_ks["evaluated_at"].as_str().unwrap();
    let u = unseal(&dir, &msg, &[BOB_P12], None, at);
    u.run.code(1);
    assert_eq!(
        u.verdict["fatal"],
        "ENVELOPED_DATA_CONTAINS_NO_KEYTRANSRECIPIENTINFOS"
    );
    assert_official(&u.verdict, &official_ks);
    assert!(!u.out.exists(), "content written for a fatal verdict");

    // A wrong KEK.
    let u = unseal(
        &dir,
        &msg,
        &[],
        Some("0f0e0d0c0b0a09080706050403020100"),
        at,
    );
    u.run.code(1);
    assert_eq!(
        u.verdict["fatal"],
        "SECRET_KEY_CAN_NOT_DECRYPT_KEKRECIPIENTINFOS"
    );
    assert!(!u.out.exists());
}

#[test]
fn mixed_message_opens_with_bobs_key_or_the_kek() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{GEN}/mixed_bob_and_kek.msg");
    for with_kek in [false, true] {
        let off = official(&dir, &msg, with_kek);
        let at = off["evaluated_at"].as_str().unwrap();
        let u = if with_kek {
            unseal(&dir, &msg, &[], Some(KEK), at)
        } else {
            unseal(&dir, &msg, &[BOB_P12], None, at)
        };
        u.run.code(0);
        assert_official(&u.verdict, &off);
        let expect = if with_kek { "kek" } else { "key:825373489" };
        assert_eq!(u.verdict["opened_with"], expect);
    }
}

#[test]
fn two_outer_signer_infos_are_fatal() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{TEST}/msg/triple_wrapped_with_2_signerinfos.msg");
    let off = official(&dir, &msg, false);
    let u = unseal(
        &dir,
        &msg,
        &[BOB_P12],
        None,
        off["evaluated_at"].as_str().unwrap(),
    );
    u.run.code(1);
    assert_eq!(
        u.verdict["fatal"],
        "MESSAGE_OUTER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION"
    );
    assert_official(&u.verdict, &off);
    assert!(!u.out.exists(), "content written for a fatal verdict");
}

/// The 2014 Java 2.0.x message, and the three-recipient one opened by each recipient.
#[test]
fn older_official_messages_open_for_each_recipient() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{TEST}/msg/message_from_alice_for_bob.msg");
    let off = official(&dir, &msg, false);
    let u = unseal(
        &dir,
        &msg,
        &[BOB_P12],
        None,
        off["evaluated_at"].as_str().unwrap(),
    );
    u.run.code(0);
    assert_official(&u.verdict, &off);
    let text = std::fs::read_to_string(&u.out).unwrap();
    assert!(
        text.starts_with("This is a secret message from Alice for Bob"),
        "{text}"
    );

    let msg = format!("{TEST}/msg/triple_wrapped_multi_recipients.msg");
    let off = official(&dir, &msg, false);
    for ks in [
        BOB_P12,
        "egelke-etee/etee-crypto-test/bob/Bob2_private_key_store.p12",
    ] {
        let u = unseal(
            &dir,
            &msg,
            &[ks],
            None,
            off["evaluated_at"].as_str().unwrap(),
        );
        u.run.code(0);
        assert_official(&u.verdict, &off);
    }
}

/// Bob3 is the third recipient of `triple_wrapped_multi_recipients.msg` (`openssl cms
/// -decrypt -inkey` with Bob3's key opens it). Bob2's and Bob3's encryption certificates
/// share one serial number (ASCII "serialNumberToDefine"): exact issuer-and-serial matches
/// must be tried before serial-only ones, or Bob3's key is tried on Bob2's RecipientInfo.
/// (The official library reads aliases literally; this keystore's alias is `encryption`,
/// so it would answer DECRYPTION_PRIVATE_KEY_NOT_FOUND: a documented deviation.)
#[test]
fn third_recipient_with_a_shared_serial_opens() {
    let Some(dir) = vectors() else { return };
    let msg = format!("{TEST}/msg/triple_wrapped_multi_recipients.msg");
    let off = official(&dir, &msg, false);
    let ks = "egelke-etee/etee-crypto-test/bob/Bob3_private_key_store.p12";
    let u = unseal(
        &dir,
        &msg,
        &[ks],
        None,
        off["evaluated_at"].as_str().unwrap(),
    );
    u.run.code(0);
    assert_official(&u.verdict, &off);
}

/// WEB_AUTHN (KeyDepot) signer: SignerInfo by subjectKeyIdentifier, no certificates; the
/// caller names the key with `--expect-key KEYID,FILE`. The key is Alice's authentication
/// key, whose certificate we take from the outer layer of `known_alice_to_bob.msg`.
#[test]
fn web_authn_message_with_the_expected_key() {
    let Some(dir) = vectors() else { return };
    let s = scratch();
    let pem = s.path().join("alice-auth.pem");
    let known = std::fs::read(dir.join(GEN).join("known_alice_to_bob.msg")).unwrap();
    std::fs::write(&pem, etee_e2e::outer_certificate_pem(&known, "Alice")).unwrap();

    let msg = "egelke-etee/etee-crypto-test-core/msg/web-auth.cms";
    let off = official(&dir, msg, false);
    let key_id = off["expect_signer"]["key_id"].as_str().unwrap();
    let at = off["evaluated_at"].as_str().unwrap();
    let out = s.path().join("content");
    let mut cmd = etee(["unseal", "--json", "--at", at, "--keystore"])
        .arg(dir.join(BOB_P12))
        .arg("--expect-key")
        .arg(format!("{key_id},{}", pem.display()))
        .arg("--in")
        .arg(dir.join(msg))
        .arg("--out")
        .arg(&out)
        .password(PASSWORD);
    for t in TRUST {
        cmd = cmd.arg("--trust").arg(dir.join(t));
    }
    let run = cmd.run();
    run.code(0);
    let v = run.json();
    assert_official(&v, &off);
    assert_eq!(v["sender"]["key_id"], key_id, "{v}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "this is just a test message"
    );

    // Without the expected key, the signature cannot be verified: content withheld.
    let mut cmd = etee(["unseal", "--json", "--at", at, "--keystore"])
        .arg(dir.join(BOB_P12))
        .arg("--in")
        .arg(dir.join(msg))
        .password(PASSWORD);
    for t in TRUST {
        cmd = cmd.arg("--trust").arg(dir.join(t));
    }
    let run = cmd.run();
    run.code(1);
    let v = run.json();
    assert!(
        set(&v["errors"]).contains("OUTER_SIGNATURE_COULD_NOT_BE_VERIFIED"),
        "{v}"
    );
}

fn etk_verify(dir: &Path, etk: &str, at: Option<&str>) -> (Output, Value) {
    let mut cmd = etee(["etk", "verify", "--json"]).arg(dir.join(etk));
    for t in TRUST {
        cmd = cmd.arg("--trust").arg(dir.join(t));
    }
    if let Some(at) = at {
        cmd = cmd.args(["--at", at]);
    }
    let run = cmd.run();
    let v = run.json();
    (run, v)
}

#[test]
fn bobs_official_etk_verifies_inside_its_validity() {
    let Some(dir) = vectors() else { return };
    let (run, v) = etk_verify(&dir, BOB_ETK, Some("2024-01-01T00:00:00Z"));
    run.code(0);
    assert_eq!(names(&v["errors"]), Vec::<&str>::new(), "{v}");
    assert_eq!(v["encryption_serial"], "825373489");
    assert_eq!(
        v["subject"],
        "CN=Bob, OU=eHealth-platform Belgium, O=Federal Government, C=BE"
    );
    assert_eq!(v["not_before"], "2014-03-12T07:13:32Z");
    assert_eq!(v["not_after"], "2033-05-11T07:13:32Z");
    // The test DN carries no eHealth identifier.
    assert_eq!(v["identities"], serde_json::json!([]));

    // Outside its validity.
    let (run, v) = etk_verify(&dir, BOB_ETK, Some("2034-01-01T00:00:00Z"));
    run.code(1);
    assert!(
        set(&v["errors"]).contains("ETK_ENCRYPTION_CERT_EXPIRED"),
        "{v}"
    );
    let (run, v) = etk_verify(&dir, BOB_ETK, Some("2013-01-01T00:00:00Z"));
    run.code(1);
    assert!(
        set(&v["errors"]).contains("ETK_ENCRYPTION_CERT_NOT_YET_VALID"),
        "{v}"
    );

    // The official negative vector whose encryption certificate expired in 2014.
    let (run, v) = etk_verify(
        &dir,
        "egelke-etee/etee-crypto-test/etk/expired_encr.etk",
        None,
    );
    run.code(1);
    assert!(
        set(&v["errors"]).contains("ETK_ENCRYPTION_CERT_EXPIRED"),
        "{v}"
    );
}

/// A message sealed now by us with the vectors' Alice (legacy-PBE keystore of the official
/// test suite) for Bob's official ETK, opened with Bob's official keystore.
#[test]
fn seal_with_the_official_test_identities() {
    let Some(dir) = vectors() else { return };
    let s = scratch();
    let plain = b"Hello Bob, sealed by etee with Alice's official test keystore".to_vec();
    std::fs::write(s.path().join("plain"), &plain).unwrap();
    let sealed = s.path().join("sealed");
    let mut seal = etee(["seal", "--keystore"])
        .arg(dir.join(ALICE_P12))
        .arg("--to")
        .arg(dir.join(BOB_ETK))
        .arg("--in")
        .arg(s.path().join("plain"))
        .arg("--out")
        .arg(&sealed)
        .password(PASSWORD);
    for t in TRUST {
        seal = seal.arg("--trust").arg(dir.join(t));
    }
    let now = now_unix();
    let alice_valid = now < parse_rfc3339(ALICE_AUTH_NOT_AFTER).unwrap();
    // Bob's ETK is checked against CA.cer/CA2.cer at the current time; its certificates
    // are valid until 2033-05-11, so this holds until then.
    let (etk_run, etk) = etk_verify(&dir, BOB_ETK, None);
    if etk_run.code == Some(0) {
        seal.run().code(0);
    } else {
        // After 2033-05-11: sealing refuses the expired ETK (exit 1, a refused recipient
        // ETK, naming the checks).
        let r = seal.run();
        r.code(1);
        for e in set(&etk["errors"]) {
            assert!(r.stderr.contains(&e), "{e} not in: {}", r.stderr);
        }
        return;
    }

    let out = s.path().join("opened");
    let mut unseal = etee(["unseal", "--json", "--keystore"])
        .arg(dir.join(BOB_P12))
        .arg("--in")
        .arg(&sealed)
        .arg("--out")
        .arg(&out)
        .password(PASSWORD);
    for t in TRUST {
        unseal = unseal.arg("--trust").arg(dir.join(t));
    }
    let run = unseal.run();
    let v = run.json();
    if alice_valid {
        run.code(0);
        assert_eq!(v["fatal"], Value::Null, "{v}");
        assert_eq!(names(&v["errors"]), Vec::<&str>::new(), "{v}");
        assert_eq!(names(&v["warnings"]), Vec::<&str>::new(), "{v}");
        assert_eq!(std::fs::read(&out).unwrap(), plain);
        assert_eq!(v["sender"]["subject"], ALICE_SUBJECT);
        assert_eq!(v["opened_with"], "key:825373489");
    } else {
        // Alice's certificate expired before the signing time (spec §1.4 step 2).
        run.code(1);
        assert!(
            set(&v["errors"]).contains("OUTER_CERTIFICATE_EXPIRED"),
            "{v}"
        );
        assert!(!out.exists());
    }
}

/// Every official verdict of `expected-verdicts.json` through the CLI (fatal, error and
/// warning sets, content length and hash, and the exit code that follows from them); the
/// WEB_AUTHN entry with `--expect-key`. Lists are compared as sets, as the library's own
/// conformance test does (the order differs for the LT_*/LTA_* messages). About 30 s in a debug build (each entry loads the 40 legacy-PBE keystores), hence
/// ignored by default: `cargo test -p etee-e2e --test vectors_cli -- --ignored`.
#[test]
#[ignore = "slow: every entry loads 40 keystores"]
fn all_official_verdicts_through_the_cli() {
    let Some(dir) = vectors() else { return };
    let all: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected-verdicts.json")).unwrap())
            .unwrap();
    let entries = all["entries"].as_array().unwrap();
    let s = scratch();
    let alice_pem = s.path().join("alice-auth.pem");
    let known = std::fs::read(dir.join(GEN).join("known_alice_to_bob.msg")).unwrap();
    std::fs::write(&alice_pem, etee_e2e::outer_certificate_pem(&known, "Alice")).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for e in entries {
        let msg = e["message"].as_str().unwrap();
        let mut cmd = etee(["unseal", "--json", "--at"])
            .arg(e["evaluated_at"].as_str().unwrap())
            .arg("--in")
            .arg(dir.join(msg))
            .password(PASSWORD);
        for ks in e["keystores"].as_array().unwrap() {
            cmd = cmd.arg("--keystore").arg(dir.join(ks.as_str().unwrap()));
        }
        for t in e["trust"].as_array().unwrap() {
            cmd = cmd.arg("--trust").arg(dir.join(t.as_str().unwrap()));
        }
        if let Some(k) = e["kek"].as_str() {
            cmd = cmd.args(["--kek", k]);
        }
        if let Some(signer) = e["expect_signer"].as_object() {
            // The public key of Alice's authentication key (the only such entry).
            assert_eq!(signer["public_key_from"], ALICE_P12, "{msg}");
            cmd = cmd.arg("--expect-key").arg(format!(
                "{},{}",
                signer["key_id"].as_str().unwrap(),
                alice_pem.display()
            ));
        }
        let run = cmd.run();
        checked += 1;
        let Ok(v) = serde_json::from_slice::<Value>(&run.stdout) else {
            failures.push(format!("{msg}: exit {:?}, {}", run.code, run.stderr.trim()));
            continue;
        };
        let blocked = !e["fatal"].is_null() || !set(&e["errors"]).is_empty();
        let same = v["fatal"] == e["fatal"]
            && set(&v["errors"]) == set(&e["errors"])
            && set(&v["warnings"]) == set(&e["warnings"])
            && v["content_len"] == e["content_len"]
            && v["content_sha256"] == e["content_sha256"]
            && run.code == Some(if blocked { 1 } else { 0 });
        if !same {
            failures.push(format!(
                "{msg} (kek {}): ours {v}, exit {:?}",
                e["kek"], run.code
            ));
        }
    }
    assert_eq!(checked, entries.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bob's keystore imported into a SoftHSM token: `etee unseal --config`, where the custody
/// core asks the token for the decryption, gives the official verdict and content, as the
/// `.p12` does, and the decryption is on the custody audit chain.
#[test]
fn official_message_opens_through_the_custody_core() {
    let Some(dir) = vectors() else { return };
    let s = scratch();
    let rig = etee_e2e::SoftHsm::new(s.path());
    let config = rig.token_config("bob", "vectors-bob", "");
    let with_config = |args: &[&str]| rig.etee(args).arg("--config").arg(&config);
    with_config(&["hsm", "init"]).run().code(0);
    let password = s.path().join("bob-p12.password");
    etee_e2e::secret_file(&password, PASSWORD);
    with_config(&["keys", "import"])
        .arg("--p12")
        .arg(dir.join(BOB_P12))
        .arg("--password-file")
        .arg(&password)
        .run()
        .code(0);

    let msg = format!("{GEN}/known_alice_to_bob.msg");
    let out = s.path().join("content");
    let mut cmd = with_config(&["unseal", "--json", "--at", "2026-11-23T13:54:40Z"])
        .arg("--in")
        .arg(dir.join(&msg))
        .arg("--out")
        .arg(&out);
    for t in TRUST {
        cmd = cmd.arg("--trust").arg(dir.join(t));
    }
    let run = cmd.run();
    run.code(0);
    let v = run.json();
    assert_official(&v, &official(&dir, &msg, false));
    assert_eq!(v["opened_with"], "key:825373489", "{v}");
    let plaintext = std::fs::read(dir.join(GEN).join("plaintext.txt")).unwrap();
    assert_eq!(std::fs::read(&out).expect("content file"), plaintext);

    // The token was asked through the core: the use and its outcome are on the chain.
    let run = with_config(&["audit", "search", "--operation", "decrypt", "--json"]).run();
    run.code(0);
    let report = run.json();
    let uses: Vec<(&str, &str)> = report["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|e| (e["key"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        uses,
        [("825373489", "admitted"), ("825373489", "success")],
        "{report}"
    );
}
