//! `etee hsm init`, `etee keys import|list`, `etee seal|unseal --config` and
//! `etee audit verify` against a real SoftHSM2 token in a temporary `SOFTHSM2_CONF`
//! (passed to each child process), with the keystores of `etee pki init`.

use etee_e2e::{etee, scratch, Etee, SoftHsm, World};
use serde_json::Value;
use std::path::{Path, PathBuf};

const LABEL: &str = "e2e-bob";

struct Rig {
    hsm: SoftHsm,
    config: PathBuf,
    dir: PathBuf,
}

impl Rig {
    fn new(dir: &Path) -> Rig {
        let hsm = SoftHsm::new(dir);
        let config = hsm.token_config("institution", LABEL, "");
        Rig {
            hsm,
            config,
            dir: dir.to_path_buf(),
        }
    }

    fn etee<const N: usize>(&self, args: [&str; N]) -> Etee {
        self.hsm.etee(args).arg("--config").arg(&self.config)
    }

    fn audit_file(&self) -> PathBuf {
        self.dir.join(format!("audit-{LABEL}.log"))
    }
}

#[test]
fn hsm_token_seals_unseals_and_audits() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path());

    let run = rig.etee(["hsm", "init"]).run();
    run.code(0);
    // A second init refuses (it would destroy the keys).
    rig.etee(["hsm", "init"]).run().code(2);

    rig.etee(["keys", "import"])
        .arg("--p12")
        .arg(w.p12("bob"))
        .arg("--password-file")
        .arg(w.password_file())
        .run()
        .code(0);

    let run = rig.etee(["keys", "list", "--json"]).run();
    run.code(0);
    let inv = run.json();
    let keys = inv["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{inv}");
    for k in keys {
        assert_eq!(k["sensitive"], Value::Bool(true), "{k}");
        assert_eq!(k["extractable"], Value::Bool(false), "{k}");
    }
    let ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"authentication"), "{ids:?}");
    assert!(ids.contains(&w.etk_serial("bob")), "{ids:?}");

    // --keystore and --config are exclusive.
    etee(["seal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--config")
        .arg(&rig.config)
        .arg("--to")
        .arg(w.etk("alice"))
        .run()
        .code(2);

    // Bob's HSM seals for Bob's ETK; the software path with bob.p12 opens it.
    let plain = b"Sealed by Bob's HSM through the custody core.\n".repeat(20);
    let input = tmp.path().join("plain");
    std::fs::write(&input, &plain).unwrap();
    let sealed_path = tmp.path().join("from-hsm.p7");
    rig.etee(["seal"])
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&sealed_path)
        .run()
        .code(0);
    let sealed = std::fs::read(&sealed_path).unwrap();
    let opened = w.unseal(tmp.path(), "bob", &sealed, &[]);
    opened.run.code(0);
    assert_eq!(opened.content(), plain);

    // Alice's keystore seals for Bob's ETK (held in the HSM); `unseal --config` opens it.
    let sealed = w.seal(tmp.path(), "alice", &["bob"], &plain);
    let sealed_path = tmp.path().join("for-hsm.p7");
    std::fs::write(&sealed_path, &sealed).unwrap();
    let out = tmp.path().join("opened");
    let run = rig
        .etee(["unseal", "--json"])
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&sealed_path)
        .arg("--out")
        .arg(&out)
        .run();
    run.code(0);
    let verdict = run.json();
    assert_eq!(
        verdict["opened_with"],
        Value::String(format!("key:{}", w.etk_serial("bob"))),
        "{verdict}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), plain);

    // The chain verifies: per run an unlock, the key operations (a use record and an
    // outcome each) and a lock (seal: two signatures, one per layer; unseal: one
    // decryption).
    assert!(rig.audit_file().is_file());
    let run = rig.etee(["audit", "verify", "--json"]).run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true), "{report}");
    let records = report["records"].as_u64().unwrap();
    assert_eq!(records, (1 + 2 * 2 + 1) + (1 + 2 + 1), "{report}");
    rig.etee(["audit", "verify"]).run().code(0);

    // A damaged byte in the middle: exit 1, naming the first broken record.
    let mut bytes = std::fs::read(rig.audit_file()).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(rig.audit_file(), &bytes).unwrap();
    let run = rig.etee(["audit", "verify", "--json"]).run();
    run.code(1);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(false), "{report}");
    let sequence = report["break"]["sequence"].as_u64().unwrap();
    assert!(sequence > 0 && sequence < records, "{report}");
    let run = rig.etee(["audit", "verify"]).run();
    run.code(1);
    assert!(
        run.stderr.contains(&format!("record {sequence}")),
        "{}",
        run.stderr
    );
    // The custody core refuses to run on a damaged chain (fail closed).
    rig.etee(["seal"])
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(&input)
        .run()
        .code(2);
}

#[test]
fn keys_generate_and_list() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    rig.etee(["hsm", "init"]).run().code(0);
    // Nothing went through the custody core yet: no chain to verify.
    rig.etee(["audit", "verify"]).run().code(2);

    let run = rig
        .etee(["keys", "generate"])
        .args(["--profile", "authentication"])
        .run();
    run.code(0);
    let key = run.json();
    assert_eq!(key["id"], "authentication", "{key}");
    assert_eq!(key["bits"], 2048, "{key}");
    rig.etee(["keys", "generate"])
        .args(["--profile", "etk"])
        .run()
        .code(0);
    let run = rig
        .etee(["keys", "generate"])
        .args(["--profile", "nope"])
        .run();
    run.code(2);
    assert!(run.stderr.contains("no key profile"), "{}", run.stderr);

    let run = rig.etee(["keys", "list"]).run();
    run.code(0);
    let text = String::from_utf8(run.stdout).unwrap();
    assert_eq!(
        text.matches("sensitive=yes extractable=no").count(),
        2,
        "{text}"
    );
    assert!(text.contains("\"authentication\""), "{text}");
}
