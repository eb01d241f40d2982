//! `etee platform pki` with an institution whose keys are born in a SoftHSM token: the
//! token holds them sensitive and never extractable (as `pkcs11-tool` reports, not only
//! our own listing), nothing secret of that institution is written, its ETK passes the
//! official checks, and messages go both ways — Alice's HSM-signed message opened by
//! `openssl cms` with Bob's key, Bob's message opened by Alice's token. A second run extends
//! the same world and refuses a token that already has an authentication key.

use etee_e2e::{openssl_cli, outer_certificate_pem, scratch, skip, SoftHsm};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Rig {
    hsm: SoftHsm,
    world: PathBuf,
    alice: PathBuf,
}

impl Rig {
    fn new(dir: &Path) -> Rig {
        let hsm = SoftHsm::new(dir);
        let alice = hsm.token_config("alice", "e2e-alice", "");
        hsm.etee(["hsm", "init", "--config"])
            .arg(&alice)
            .run()
            .code(0);
        let world = dir.join("world");
        let out = hsm
            .etee(["platform", "pki"])
            .arg(&world)
            .args([
                "--institution",
                "alice:NIHII-HOSPITAL=71000436",
                "--institution",
                "bob:NIHII-PHARMACY=27150201",
                "--hsm",
            ])
            .arg(format!("alice={}", alice.display()))
            .run();
        out.code(0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("alice: ")
                && String::from_utf8_lossy(&out.stdout).contains("(ETK serial "),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Rig { hsm, world, alice }
    }

    fn world(&self, name: &str) -> PathBuf {
        self.world.join(name)
    }
}

#[test]
fn keys_born_in_the_hsm_never_leave_it_and_messages_go_both_ways() {
    let dir = scratch();
    let rig = Rig::new(dir.path());

    // Nothing secret of Alice's on disk; Bob (software) has his keystore.
    for f in ["alice.p12", "alice-etk-key.pem"] {
        assert!(!rig.world(f).exists(), "{f} was written");
    }
    for f in [
        "alice.etk",
        "bob.etk",
        "bob.p12",
        "ca.pem",
        "ca-key.pem",
        "ra-key.pem",
    ] {
        assert!(rig.world(f).is_file(), "{f} is missing");
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca-key.pem", "ra-key.pem", "bob.p12", "password"] {
        let mode = std::fs::metadata(rig.world(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others ({mode:o})");
    }

    // The ETK passes the official checks against the world's CA.
    let verified = rig
        .hsm
        .etee(["etk", "verify", "--json", "--trust"])
        .arg(rig.world("ca.pem"))
        .arg(rig.world("alice.etk"))
        .run();
    verified.code(0);
    let report = verified.json();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["identities"][0]["value"], "71000436", "{report}");

    // The token's listing and, independently, pkcs11-tool's.
    let listed = rig
        .hsm
        .etee(["keys", "list", "--json", "--config"])
        .arg(&rig.alice)
        .run();
    listed.code(0);
    let keys = listed.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert_eq!(k["sensitive"], true, "{k}");
        assert_eq!(k["extractable"], false, "{k}");
        assert!(k["certificate"].is_object(), "no certificate beside {k}");
    }
    pkcs11_tool_reports_non_extractable_local_keys(&rig);

    // Alice (keys in the token) seals for Bob; openssl opens it with Bob's key.
    let plain = b"discharge letter for the pharmacy";
    let msg = dir.path().join("a2b.p7");
    rig.hsm
        .etee(["seal", "--config"])
        .arg(&rig.alice)
        .arg("--to")
        .arg(rig.world("bob.etk"))
        .arg("--trust")
        .arg(rig.world("ca.pem"))
        .arg("--out")
        .arg(&msg)
        .stdin(plain.to_vec())
        .run()
        .code(0);
    if openssl_cli() {
        openssl_opens(dir.path(), &rig, &msg, plain);
    }

    // Bob seals for Alice's ETK; her token opens it.
    let reply = rig
        .hsm
        .etee(["seal", "--keystore"])
        .arg(rig.world("bob.p12"))
        .arg("--password-file")
        .arg(rig.world("password"))
        .arg("--to")
        .arg(rig.world("alice.etk"))
        .arg("--trust")
        .arg(rig.world("ca.pem"))
        .stdin(b"medication delivered".to_vec())
        .run();
    reply.code(0);
    let opened = rig
        .hsm
        .etee(["unseal", "--config"])
        .arg(&rig.alice)
        .arg("--trust")
        .arg(rig.world("ca.pem"))
        .stdin(reply.stdout.clone())
        .run();
    opened.code(0);
    assert_eq!(opened.stdout, b"medication delivered");

    // The encryption certificate's signature went through the custody core: on the chain.
    let audit = rig
        .hsm
        .etee(["audit", "verify", "--json", "--tail", "50", "--config"])
        .arg(&rig.alice)
        .run();
    audit.code(0);
    let records = audit.json()["tail"].as_array().unwrap().clone();
    let ops: Vec<&str> = records
        .iter()
        .filter_map(|r| r["operation"].as_str())
        .collect();
    assert!(
        ops.iter().filter(|o| o.contains("Sign")).count() >= 3,
        "expected the certificate signature and two message signatures: {ops:?}"
    );
    assert!(ops.iter().any(|o| o.contains("Decrypt")), "{ops:?}");
}

#[test]
fn a_second_run_extends_the_world_and_refuses_a_used_token() {
    let dir = scratch();
    let rig = Rig::new(dir.path());
    let ca = std::fs::read(rig.world("ca.pem")).unwrap();

    let refused = rig
        .hsm
        .etee(["platform", "pki"])
        .arg(&rig.world)
        .args(["--institution", "again:NIHII-HOSPITAL=71000444", "--hsm"])
        .arg(format!("again={}", rig.alice.display()))
        .run();
    refused.code(2);
    assert!(
        refused
            .stderr
            .contains("already holds an authentication key"),
        "{}",
        refused.stderr
    );
    assert!(!rig.world("again.etk").exists());

    // A failure once a key is in the token says so, and what to do: here the ETK profile
    // wants the authentication key's CKA_ID.
    let dana = rig.hsm.token_config(
        "dana",
        "e2e-dana",
        "[hsm.profiles.etk]\nrole = \"etk\"\nid = \"authentication\"\nbits = 2048\n\
         mechanisms = [\"CKM_RSA_PKCS\"]\n",
    );
    rig.hsm
        .etee(["hsm", "init", "--config"])
        .arg(&dana)
        .run()
        .code(0);
    let failed = rig
        .hsm
        .etee(["platform", "pki"])
        .arg(&rig.world)
        .args(["--institution", "dana:NIHII-HOSPITAL=71000455", "--hsm"])
        .arg(format!("dana={}", dana.display()))
        .run();
    failed.code(2);
    assert!(
        failed.stderr.contains(
            "keys were generated in token label \"e2e-dana\" (authentication key \
             \"authentication\"), but the institution could not be completed"
        ) && failed.stderr.contains("give dana a new token"),
        "{}",
        failed.stderr
    );
    assert!(!rig.world("dana.etk").exists());

    rig.hsm
        .etee(["platform", "pki"])
        .arg(&rig.world)
        .args(["--institution", "carol:NIHII-PHARMACY=27150302"])
        .run()
        .code(0);
    assert_eq!(
        std::fs::read(rig.world("ca.pem")).unwrap(),
        ca,
        "the CA was replaced"
    );
    rig.hsm
        .etee(["etk", "verify", "--trust"])
        .arg(rig.world("ca.pem"))
        .arg(rig.world("carol.etk"))
        .run()
        .code(0);

    // Carol again: refused before anything is written (her keys would be lost), unless
    // asked for by name.
    let carol = |extra: &[&str]| {
        rig.hsm
            .etee(["platform", "pki"])
            .arg(&rig.world)
            .args(["--institution", "carol:NIHII-PHARMACY=27150302"])
            .args(extra)
            .run()
    };
    let files = ["carol.etk", "carol.p12", "carol-etk-key.pem"].map(|f| rig.world(f));
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let refused = carol(&[]);
    refused.code(2);
    assert!(
        refused.stderr.contains("institution carol is already in")
            && refused.stderr.contains("--replace carol"),
        "{}",
        refused.stderr
    );
    let unchanged: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(unchanged, before, "a refused run changed carol's files");
    carol(&["--replace", "dave"]).code(2);
    carol(&["--replace", "carol"]).code(0);
    assert_ne!(
        std::fs::read(&files[2]).unwrap(),
        before[2],
        "--replace issued carol anew"
    );
    let marker = rig.world("institutions-unfinished");
    assert!(!marker.exists(), "a finished run leaves no marker");

    // A run issuing carol cut short (its marker left, as a kill between her files
    // would): the world refuses other work, naming her, until she is issued again.
    std::fs::write(&marker, "carol\n").unwrap();
    let refused = rig
        .hsm
        .etee(["platform", "pki"])
        .arg(&rig.world)
        .args(["--institution", "erin:NIHII-PHARMACY=27150303"])
        .run();
    refused.code(2);
    assert!(
        refused
            .stderr
            .contains("a run issuing carol did not finish")
            && refused.stderr.contains("--replace"),
        "{}",
        refused.stderr
    );
    assert!(!rig.world("erin.etk").exists(), "nothing written");
    // Erin first, then Carol again: the marker keeps Carol's name until she is issued.
    rig.hsm
        .etee(["platform", "pki"])
        .arg(&rig.world)
        .args([
            "--institution",
            "erin:NIHII-PHARMACY=27150303",
            "--institution",
            "carol:NIHII-PHARMACY=27150302",
            "--replace",
            "carol",
        ])
        .run()
        .code(0);
    assert!(rig.world("erin.etk").exists());
    assert!(!marker.exists(), "issued again: the marker is gone");

    // Bad arguments are usage errors, before anything is written.
    for args in [
        vec![
            "--institution",
            "x:NIHII-HOSPITAL=71000436",
            "--hsm",
            "y=z.toml",
        ],
        vec!["--institution", "../x:NIHII-HOSPITAL=71000436"],
        vec!["--institution", "noid"],
    ] {
        let out = rig
            .hsm
            .etee(["platform", "pki"])
            .arg(&rig.world)
            .args(&args)
            .run();
        out.code(2);
    }
}

/// Outer signature (Alice's authentication certificate, chained to the world's CA),
/// decryption with Bob's ETK key, inner signature: all by openssl.
fn openssl_opens(dir: &Path, rig: &Rig, msg: &Path, plain: &[u8]) {
    let sealed = std::fs::read(msg).unwrap();
    let alice = dir.join("alice-auth.pem");
    std::fs::write(&alice, outer_certificate_pem(&sealed, "71000436")).unwrap();
    let recipient = etee_e2e::OpensslRecipient {
        ca: &rig.world("ca.pem"),
        etk_cert: &rig.world("bob-etk-cert.pem"),
        etk_key: &rig.world("bob-etk-key.pem"),
        signer: Some(&alice),
    };
    assert_eq!(etee_e2e::openssl_open(dir, msg, &recipient), plain);
}

fn pkcs11_tool_reports_non_extractable_local_keys(rig: &Rig) {
    let pin = std::fs::read_to_string(rig.hsm.dir.join("alice-user.pin")).unwrap();
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &rig.hsm.conf)
        .arg("--module")
        .arg(etee_e2e::softhsm_module())
        .args(["--token-label", "e2e-alice", "--login", "--pin", pin.trim()])
        .arg("--list-objects")
        .output();
    let Ok(out) = out else {
        skip("pkcs11-tool (OpenSC) is not installed");
        return;
    };
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let private: Vec<&str> = text
        .split("Private Key Object")
        .skip(1)
        .map(|block| block.split(" Object;").next().unwrap_or(block))
        .collect();
    assert_eq!(private.len(), 2, "{text}");
    for block in private {
        for flag in ["sensitive", "never extractable", "local"] {
            assert!(block.contains(flag), "a private key is not {flag}: {block}");
        }
    }
}
