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

    /// A rig whose token is initialised and holds an authentication key born in it.
    fn with_authentication_key(dir: &Path) -> Rig {
        let rig = Rig::new(dir);
        rig.etee(["hsm", "init"]).run().code(0);
        rig.etee(["keys", "generate", "--profile", "authentication"])
            .run()
            .code(0);
        rig
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
    // openssl opens it too, with Bob's ETK key from the world's files: the outer signature
    // (made in the token through the core), the decryption, the inner signature.
    if etee_e2e::openssl_cli() {
        let recipient = etee_e2e::OpensslRecipient {
            ca: &w.ca(),
            etk_cert: &w.etk_cert_pem("bob"),
            etk_key: &w.etk_key_pem("bob"),
            signer: None,
        };
        let opened = etee_e2e::openssl_open(tmp.path(), &sealed_path, &recipient);
        assert_eq!(opened, plain);
    }

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

    // The chain verifies: the logins of `keys import` and `keys list` (a try and an outcome
    // each), then per run the login and the core's unlock (two records each), the key
    // operations (a use record and an outcome each) and a lock (seal: two signatures, one
    // per layer; unseal: one decryption).
    assert!(rig.audit_file().is_file());
    let run = rig.etee(["audit", "verify", "--json"]).run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true), "{report}");
    let records = report["records"].as_u64().unwrap();
    assert_eq!(records, 4 + (4 + 2 * 2 + 1) + (4 + 2 + 1), "{report}");
    // The text result is on standard output (`etee audit verify > head.txt` keeps the
    // head to record with a backup).
    let run = rig.etee(["audit", "verify"]).run();
    run.code(0);
    let text = String::from_utf8(run.stdout).unwrap();
    let head = report["head"].as_str().unwrap();
    assert!(
        text.starts_with("OK ") && text.contains(&format!("head {head}")),
        "{text} (stderr: {})",
        run.stderr
    );
    assert!(!run.stderr.contains(head), "{}", run.stderr);

    // `audit search`: the uses of Bob's ETK key (the unseal's decryption: its use record
    // and its outcome), the seal's two signatures, nothing before 2000 or after now.
    let etk_id = w.etk_serial("bob");
    let run = rig
        .etee(["audit", "search", "--json", "--key", etk_id])
        .run();
    run.code(0);
    let found = run.json();
    let entries = found["entries"].as_array().unwrap();
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["admitted", "success"], "{found}");
    for e in entries {
        assert_eq!(e["operation"], "DecryptPkcs1v15", "{e}");
        assert_eq!(e["client"], "etee-cli", "{e}");
        assert!(e["time"].as_str().unwrap().starts_with("20"), "{e}");
    }
    assert_eq!(found["chain"]["intact"], Value::Bool(true), "{found}");
    assert_eq!(found["chain"]["records"].as_u64(), Some(records), "{found}");
    assert_eq!(
        (found["matched"].as_u64(), &found["truncated"]),
        (Some(2), &Value::Bool(false))
    );
    let search = |args: &[&str]| {
        let mut cmd = rig.etee(["audit", "search", "--json"]);
        for a in args {
            cmd = cmd.arg(a);
        }
        let run = cmd.run();
        run.code(0);
        run.json()["matched"].as_u64().unwrap()
    };
    assert_eq!(search(&["--operation", "sign", "--outcome", "success"]), 2);
    assert_eq!(
        search(&["--operation", "sign", "--operation", "decrypt"]),
        6
    );
    assert_eq!(search(&["--client", "someone-else"]), 0);
    assert_eq!(search(&["--until", "2000-01-01T00:00:00Z"]), 0);
    assert_eq!(search(&["--since", "2999-01-01T00:00:00Z"]), 0);
    assert_eq!(search(&["--since", "2000-01-01T00:00:00Z"]), records);
    // At most --limit shown, all counted; in text, one line each and a summary.
    let run = rig
        .etee(["audit", "search", "--limit", "1", "--operation", "sign"])
        .run();
    run.code(0);
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(
        text.lines().next().unwrap().contains("SignPssSha256"),
        "{text}"
    );
    assert!(
        text.contains("(the first 1 shown") && text.contains("4 matching record(s) of"),
        "{text}"
    );
    // A malformed time is a usage error.
    rig.etee(["audit", "search", "--since", "yesterday"])
        .run()
        .code(2);

    // An incomplete last record (a crash, or an alteration): still exit 0, with a warning.
    let whole = std::fs::read(rig.audit_file()).unwrap();
    std::fs::write(rig.audit_file(), &whole[..whole.len() - 3]).unwrap();
    let run = rig.etee(["audit", "verify"]).run();
    run.code(0);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains("WARNING the last record is incomplete or damaged"),
        "{text}"
    );
    std::fs::write(rig.audit_file(), &whole).unwrap();

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
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.starts_with("BROKEN ") && text.contains(&format!("record {sequence}")),
        "{text} (stderr: {})",
        run.stderr
    );
    // A search says where the chain breaks and shows only the matches before it (exit 1).
    let run = rig.etee(["audit", "search", "--json"]).run();
    run.code(1);
    let found = run.json();
    assert_eq!(found["chain"]["intact"], Value::Bool(false), "{found}");
    assert_eq!(
        found["chain"]["break"]["sequence"].as_u64(),
        Some(sequence),
        "{found}"
    );
    assert_eq!(found["matched"].as_u64(), Some(sequence), "{found}");
    // The custody core refuses to run on a damaged chain (fail closed), and says so.
    let refused = rig
        .etee(["seal"])
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(&input)
        .run();
    refused.code(2);
    assert!(
        refused.stderr.contains("custody audit chain")
            && refused.stderr.contains("damaged")
            && refused.stderr.contains("A damaged audit chain"),
        "{}",
        refused.stderr
    );
}

#[test]
fn keys_generate_and_list() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    rig.etee(["hsm", "init"]).run().code(0);
    // Nothing went through the custody core yet: no chain to verify.
    rig.etee(["audit", "verify"]).run().code(2);

    let run = rig
        .etee(["keys", "generate", "--json"])
        .args(["--profile", "authentication"])
        .run();
    run.code(0);
    let key = run.json();
    assert_eq!(key["id"], "authentication", "{key}");
    assert_eq!(key["bits"], 2048, "{key}");
    // Without --json, lines for a reader: what was made and its public key.
    let run = rig
        .etee(["keys", "generate"])
        .args(["--profile", "etk"])
        .run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("generated etk key \"etk-pending-") && first.contains("RSA 2048 bits"),
        "{out}"
    );
    let spki = lines
        .next()
        .and_then(|l| l.strip_prefix("public key (SubjectPublicKeyInfo DER, hex): "))
        .map(|h| hex::decode(h).expect("hex"))
        .unwrap_or_default();
    assert_eq!(
        openssl::pkey::PKey::public_key_from_der(&spki)
            .map(|k| k.bits())
            .ok(),
        Some(2048),
        "{out}"
    );
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

/// Keys born in the token get their certificates: a CSR signed in the token through the
/// custody core (checked and certified by `openssl`), then the issued certificates
/// installed; the ETK key takes its certificate's serial as its id.
#[test]
fn keys_born_in_the_token_get_a_csr_and_their_certificates() {
    if !etee_e2e::openssl_cli() {
        return;
    }
    let tmp = scratch();
    let dir = tmp.path();
    let rig = Rig::new(dir);
    rig.etee(["hsm", "init"]).run().code(0);
    let generate = |profile: &str| {
        let run = rig
            .etee(["keys", "generate", "--json", "--profile", profile])
            .run();
        run.code(0);
        run.json()
    };
    generate("authentication");
    let etk = generate("etk");
    let pending = etk["id"].as_str().unwrap().to_string();
    assert!(pending.starts_with("etk-pending-"), "{etk}");

    // The CSR, written to a file and to standard output; openssl verifies its signature.
    let csr = dir.join("auth.csr");
    rig.etee(["keys", "csr", "--key", "authentication"])
        .args(["--subject", r"C=BE,O=Test\, Hospital,CN=HOSPITAL=71000436"])
        .arg("--out")
        .arg(&csr)
        .run()
        .code(0);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    etee_e2e::openssl(["req", "-verify", "-noout", "-in", &path(&csr)]);
    let run = rig
        .etee([
            "keys",
            "csr",
            "--key",
            "authentication",
            "--subject",
            "CN=again",
        ])
        .run();
    run.code(0);
    assert!(
        String::from_utf8_lossy(&run.stdout).starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    // An ETK key cannot sign, so it has no CSR (said so); a bad subject is a usage error
    // that names what is wrong, without OpenSSL's raw error stack.
    let run = rig
        .etee(["keys", "csr", "--key", &pending, "--subject", "CN=x"])
        .run();
    run.code(2);
    assert!(
        run.stderr.contains("ETK (decryption) key")
            && run
                .stderr
                .contains("CSRs are for authentication (signing) keys"),
        "{}",
        run.stderr
    );
    rig.etee(["keys", "csr", "--key", "authentication", "--subject", "CN"])
        .run()
        .code(2);
    for (subject, says) in [
        ("C=BE,XX=foo", "\"XX\" is unknown"),
        ("C=BEL,CN=x", "C=\"BEL\" is not accepted"),
    ] {
        let run = rig
            .etee([
                "keys",
                "csr",
                "--key",
                "authentication",
                "--subject",
                subject,
            ])
            .run();
        run.code(2);
        assert!(run.stderr.contains(says), "{}", run.stderr);
        assert!(!run.stderr.contains("error:"), "{}", run.stderr);
    }

    // A CA certifies the CSR, and the ETK key's public key (taken from `keys generate`).
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    etee_e2e::openssl([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        &path(&ca_key),
        "-out",
        &path(&ca),
    ]);
    let auth_cert = dir.join("auth.pem");
    etee_e2e::openssl([
        "x509",
        "-req",
        "-in",
        &path(&csr),
        "-CA",
        &path(&ca),
        "-CAkey",
        &path(&ca_key),
        "-set_serial",
        "1001",
        "-days",
        "1",
        "-out",
        &path(&auth_cert),
    ]);
    let etk_pub = dir.join("etk-pub.der");
    std::fs::write(
        &etk_pub,
        hex::decode(etk["public_key_hex"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let etk_pub_pem = dir.join("etk-pub.pem");
    etee_e2e::openssl([
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        &path(&etk_pub),
        "-out",
        &path(&etk_pub_pem),
    ]);
    let etk_cert = dir.join("etk.pem");
    etee_e2e::openssl([
        "x509",
        "-req",
        "-in",
        &path(&csr),
        "-force_pubkey",
        &path(&etk_pub_pem),
        "-CA",
        &path(&ca),
        "-CAkey",
        &path(&ca_key),
        "-set_serial",
        "424242",
        "-days",
        "1",
        "-out",
        &path(&etk_cert),
    ]);

    // A certificate for another key is refused; the right ones are installed.
    rig.etee(["keys", "install-cert", "--key", "authentication"])
        .arg("--cert")
        .arg(&etk_cert)
        .run()
        .code(2);
    rig.etee(["keys", "install-cert", "--key", "authentication"])
        .arg("--cert")
        .arg(&auth_cert)
        .arg("--chain")
        .arg(&ca)
        .run()
        .code(0);
    let run = rig
        .etee(["keys", "install-cert", "--key", &pending])
        .arg("--cert")
        .arg(&etk_cert)
        .run();
    run.code(0);
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("\"424242\""),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );

    // Certificates of a day say when they end, and that it is soon.
    let run = rig.etee(["keys", "list"]).run();
    run.code(0);
    let text = String::from_utf8(run.stdout).unwrap();
    for serial in ["1001", "424242"] {
        // A day, to the second: "in 1 day", or less once a second has passed.
        assert!(
            text.contains(&format!("(serial {serial}), ends ")),
            "{text}"
        );
    }

    let run = rig.etee(["keys", "list", "--json"]).run();
    run.code(0);
    let inv = run.json();
    let ids: Vec<&str> = inv["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"authentication") && ids.contains(&"424242"),
        "{inv}"
    );
    assert!(
        !ids.iter().any(|id| id.starts_with("etk-pending-")),
        "{inv}"
    );
    let text = inv.to_string();
    assert!(text.contains("HOSPITAL=71000436"), "{inv}");

    // The CSRs' signatures are on the audit chain, under the CLI's client.
    let run = rig
        .etee(["audit", "verify", "--json", "--tail", "100"])
        .run();
    run.code(0);
    let report = run.json();
    let signed = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["operation"] == "SignPssSha256"
                && r["key"] == "authentication"
                && r["outcome"] == "success"
        })
        .count();
    assert_eq!(signed, 2, "{report}");
}

/// A renewed keystore: its authentication key is skipped by a plain import and replaces
/// the token's with `--replace-authentication`; the previous key is kept, renamed and no
/// longer allowed to sign; messages are then signed with the new one; an older keystore
/// cannot replace a newer key.
#[test]
fn a_renewed_keystore_replaces_the_authentication_key() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    rig.etee(["hsm", "init"]).run().code(0);
    let import = |world: &World, who: &str, replace: bool| {
        let mut cmd = rig
            .etee(["keys", "import"])
            .arg("--p12")
            .arg(world.p12(who))
            .arg("--password-file")
            .arg(world.password_file());
        if replace {
            cmd = cmd.arg("--replace-authentication");
        }
        cmd.run()
    };
    let keys = || {
        let run = rig.etee(["keys", "list", "--json"]).run();
        run.code(0);
        run.json()["keys"].as_array().unwrap().clone()
    };
    let key = |keys: &[Value], id: &str| {
        keys.iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("no key {id:?} in {keys:?}"))
            .clone()
    };
    import(w, "bob", false).code(0);
    let bob_cert = key(&keys(), "authentication")["certificate"].clone();
    let bob_subject = bob_cert["subject"].clone();
    // The renewal: Bob's keystore issued later (its certificates end later), from another
    // world made a second after the shared one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let renewed = World::create();
    let run = import(&renewed, "bob", false);
    run.code(0);
    assert!(
        run.stderr.contains("--replace-authentication"),
        "{}",
        run.stderr
    );
    assert_eq!(key(&keys(), "authentication")["certificate"], bob_cert);
    // Another holder's keystore (Alice's, renewed or not): refused whole, with or without
    // --replace-authentication; none of its keys joins Bob's token.
    let before = keys();
    for replace in [false, true] {
        let run = import(&renewed, "alice", replace);
        run.code(2);
        assert!(
            run.stderr.contains("belongs to another holder"),
            "{}",
            run.stderr
        );
        assert_eq!(keys(), before, "--replace-authentication {replace}");
    }
    let run = import(&renewed, "bob", true);
    run.code(0);
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(stdout.contains("retired"), "{stdout}");

    let now = keys();
    let current = key(&now, "authentication");
    assert_ne!(current["certificate"], bob_cert, "{current}");
    assert_eq!(current["certificate"]["subject"], bob_subject, "{current}");
    assert_eq!(current["sign"], Value::Bool(true), "{current}");
    let retired: Vec<&Value> = now
        .iter()
        .filter(|k| {
            k["id"]
                .as_str()
                .unwrap()
                .starts_with("authentication-retired-")
        })
        .collect();
    assert_eq!(retired.len(), 1, "{now:?}");
    assert_eq!(retired[0]["sign"], Value::Bool(false), "{}", retired[0]);
    assert_eq!(retired[0]["certificate"]["subject"], bob_subject);
    assert_eq!(retired[0]["extractable"], Value::Bool(false));
    // Its role is still said, with what changed; the text listing says it too.
    assert_eq!(retired[0]["role"], "authentication", "{}", retired[0]);
    assert_eq!(retired[0]["retired"], Value::Bool(true), "{}", retired[0]);
    assert_eq!(current["retired"], Value::Bool(false), "{current}");
    let run = rig.etee(["keys", "list"]).run();
    run.code(0);
    let listing = String::from_utf8_lossy(&run.stdout).to_string();
    let line = listing
        .lines()
        .find(|l| l.contains("authentication-retired-"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains("role authentication (retired) "), "{line}");
    assert!(!listing.contains("role ?"), "{listing}");
    // Both keystores' ETK keys stay.
    key(&now, w.etk_serial("bob"));
    key(&now, renewed.etk_serial("bob"));

    // An older keystore does not replace the newer key; the dates are readable.
    let run = import(w, "bob", true);
    run.code(2);
    assert!(run.stderr.contains("not newer"), "{}", run.stderr);
    assert!(run.stderr.contains("valid until 20"), "{}", run.stderr);
    assert_eq!(
        key(&keys(), "authentication")["certificate"],
        current["certificate"]
    );

    // The token now signs as the renewed keystore's holder.
    let input = tmp.path().join("plain");
    std::fs::write(&input, b"after the renewal").unwrap();
    let sealed_path = tmp.path().join("renewed.p7");
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
    let renewed_ca = renewed.ca().to_str().unwrap().to_string();
    let opened = w.unseal(
        tmp.path(),
        "bob",
        &std::fs::read(&sealed_path).unwrap(),
        &["--trust", &renewed_ca],
    );
    opened.run.code(0);
    assert_eq!(
        opened.verdict["sender"]["subject"], current["certificate"]["subject"],
        "{}",
        opened.verdict
    );
    // Importing the renewed keystore again changes nothing.
    let run = import(&renewed, "bob", true);
    run.code(0);
    assert!(!String::from_utf8_lossy(&run.stdout).contains("retired"));
}

/// `etee keys list | head -1`: the reader goes away after the first line; the command
/// stops writing and exits quietly (141, as a writer killed by SIGPIPE), no panic.
#[test]
fn keys_list_into_a_closed_pipe_is_quiet() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    rig.etee(["hsm", "init"]).run().code(0);
    for profile in ["authentication", "etk"] {
        rig.etee(["keys", "generate"])
            .args(["--profile", profile])
            .run()
            .code(0);
    }
    // A pipe whose reader has already exited (`etee --version` does not read its input).
    let mut reader = std::process::Command::new(etee_e2e::etee_bin())
        .arg("--version")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let closed = reader.stdin.take().unwrap();
    assert!(reader.wait().unwrap().success());
    let out = std::process::Command::new(etee_e2e::etee_bin())
        .args(["keys", "list", "--config"])
        .arg(&rig.config)
        .env("SOFTHSM2_CONF", &rig.hsm.conf)
        .stdin(std::process::Stdio::null())
        .stdout(closed)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// `hsm init --so-pin-shares 2/3`: the SO PIN exists only as three share files; two of
/// them let `hsm init-pin` set the user PIN again, one does not; the share files are new
/// files, private to their owner, never overwritten.
#[test]
fn the_so_pin_as_shares_and_init_pin() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = scratch();
    let label = "e2e-quorum";
    let hsm = SoftHsm::new(tmp.path());
    let config = hsm.token_config("quorum", label, "");
    // Made by `hsm init`, private to its owner.
    let shares = tmp.path().join("shares");
    let init = |args: &[&str]| {
        hsm.etee(["hsm", "init", "--config"])
            .arg(&config)
            .args(args)
            .run()
    };

    // With so_pin_file still configured: refused before anything is written.
    let run = init(&["--so-pin-shares", "2/3", "--shares-dir", "shares"]);
    run.code(2);
    assert!(run.stderr.contains("remove so_pin_file"), "{}", run.stderr);
    assert!(!shares.exists());

    let text = std::fs::read_to_string(&config).unwrap();
    let without_so_pin: String = text
        .lines()
        .filter(|l| !l.starts_with("so_pin_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, without_so_pin).unwrap();
    // A quorum that is not one.
    init(&["--so-pin-shares", "1/3", "--shares-dir"]).code(2);
    let run = init(&[
        "--so-pin-shares",
        "1/3",
        "--shares-dir",
        shares.to_str().unwrap(),
    ]);
    run.code(2);
    assert!(run.stderr.contains("at least 2"), "{}", run.stderr);

    // A user PIN the token would refuse (SoftHSM takes 4 to 255 characters): refused
    // before any share is written.
    let user_pin = tmp.path().join("quorum-user.pin");
    let good_pin = std::fs::read(&user_pin).unwrap();
    std::fs::write(&user_pin, "12\n").unwrap();
    let run = init(&[
        "--so-pin-shares",
        "2/3",
        "--shares-dir",
        shares.to_str().unwrap(),
    ]);
    run.code(2);
    assert!(
        run.stderr.contains("user PIN has 2 characters"),
        "{}",
        run.stderr
    );
    assert!(!shares.exists());
    let run = hsm.etee(["keys", "list", "--config"]).arg(&config).run();
    run.code(2);
    assert!(run.stderr.contains("no token with"), "{}", run.stderr);
    std::fs::write(&user_pin, good_pin).unwrap();
    // A share file of an earlier split in the way: not overwritten, nothing else written.
    std::fs::create_dir(&shares).unwrap();
    let stray = shares.join(format!("{label}-so-pin-share-2-of-3.txt"));
    std::fs::write(&stray, "an earlier share\n").unwrap();
    let run = init(&[
        "--so-pin-shares",
        "2/3",
        "--shares-dir",
        shares.to_str().unwrap(),
    ]);
    run.code(2);
    assert!(
        run.stderr.contains("refusing to overwrite"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&stray).unwrap(),
        "an earlier share\n"
    );
    assert_eq!(std::fs::read_dir(&shares).unwrap().count(), 1);
    std::fs::remove_file(&stray).unwrap();
    std::fs::set_permissions(&shares, std::fs::Permissions::from_mode(0o700)).unwrap();

    let run = init(&[
        "--so-pin-shares",
        "2/3",
        "--shares-dir",
        shares.to_str().unwrap(),
    ]);
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("any 2 of which"), "{out}");
    let mode = std::fs::metadata(&shares).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let files: Vec<PathBuf> = (1..=3)
        .map(|i| shares.join(format!("{label}-so-pin-share-{i}-of-3.txt")))
        .collect();
    for f in &files {
        assert!(out.contains(&f.display().to_string()), "{out}");
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        let share = std::fs::read_to_string(f).unwrap();
        assert!(share.contains("etee-share-v1 "), "{share}");
    }
    hsm.etee(["keys", "list", "--config"])
        .arg(&config)
        .run()
        .code(0);
    // The token is initialised: a second init is refused for that reason, into another
    // directory before any share is written (no claim about new shares), and into the
    // same one before the existing shares are looked at.
    let other = tmp.path().join("other-shares");
    for dir in [&other, &shares] {
        let run = init(&[
            "--so-pin-shares",
            "2/3",
            "--shares-dir",
            dir.to_str().unwrap(),
        ]);
        run.code(2);
        assert!(run.stderr.contains("already initialised"), "{}", run.stderr);
        assert!(
            !run.stderr.contains("share files are kept")
                && !run.stderr.contains("refusing to overwrite"),
            "{}",
            run.stderr
        );
    }
    assert!(!other.exists());
    for f in &files {
        assert!(f.is_file(), "{}", f.display());
    }

    // The user PIN file now says something else: the token refuses it until the officers
    // set it with two shares.
    std::fs::write(&user_pin, "a-renewed-user-pin\n").unwrap();
    let run = hsm.etee(["keys", "list", "--config"]).arg(&config).run();
    run.code(2);
    assert!(run.stderr.contains("wrong user PIN"), "{}", run.stderr);
    let init_pin = |shares: &[&PathBuf]| {
        let mut e = hsm.etee(["hsm", "init-pin", "--config"]).arg(&config);
        for s in shares {
            e = e.arg("--so-pin-share").arg(s);
        }
        e.run()
    };
    let run = init_pin(&[&files[1]]);
    run.code(2);
    assert!(run.stderr.contains("needs 2"), "{}", run.stderr);
    let run = init_pin(&[]);
    run.code(2);
    assert!(run.stderr.contains("--so-pin-share"), "{}", run.stderr);
    let run = init_pin(&[&files[2], &files[0]]);
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("user PIN of token"), "{out}");
    assert!(out.contains("recorded on the audit chain"), "{out}");
    hsm.etee(["keys", "list", "--config"])
        .arg(&config)
        .run()
        .code(0);
    // On the chain (before the login of `keys list`: its try and outcome), which verifies.
    let run = hsm
        .etee(["audit", "verify", "--tail", "3", "--config"])
        .arg(&config)
        .run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("UserPinSet"), "{out}");
}

/// `keys destroy`: says what would go and does nothing without `--yes`; refuses the
/// active authentication key; destroys an ETK key (with a warning) on the audit chain.
#[test]
fn keys_destroy_asks_first_and_destroys_on_record() {
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    let run = rig
        .etee(["keys", "generate", "--json", "--profile", "etk"])
        .run();
    run.code(0);
    let etk = run.json()["id"].as_str().unwrap().to_owned();
    let listed = |id: &str| {
        let run = rig.etee(["keys", "list", "--json"]).run();
        run.code(0);
        run.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id)
    };

    let run = rig
        .etee(["keys", "destroy", "--yes", "--key", "authentication"])
        .run();
    run.code(2);
    assert!(
        run.stderr.contains("active authentication key"),
        "{}",
        run.stderr
    );
    assert!(listed("authentication"));

    let run = rig.etee(["keys", "destroy", "--key", &etk]).run();
    run.code(2);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        out.contains("would destroy") && out.contains("--yes"),
        "{out}"
    );
    assert!(
        run.stderr.contains("can no longer be opened"),
        "{}",
        run.stderr
    );
    assert!(listed(&etk), "nothing destroyed without --yes");

    let run = rig.etee(["keys", "destroy", "--yes", "--key", &etk]).run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        out.contains("destroyed") && out.contains("audit chain"),
        "{out}"
    );
    assert!(!listed(&etk));
    assert!(listed("authentication"));

    let run = rig.etee(["audit", "verify", "--tail", "100"]).run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    // The use and its outcome.
    assert_eq!(out.matches("KeyDestroy").count(), 2, "{out}");
}

/// `custody status`: fine after a normal start; after five wrong PIN files (counted on the
/// chain by commands that open the core) it says the core is locked out and how to clear
/// it, exit 1; after `custody reset-pin` fine again.
#[test]
fn custody_status_tells_a_lock_out_and_its_remedy() {
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    // A command that opens the core makes the chain.
    rig.etee(["keys", "destroy", "--key", "nothing"])
        .run()
        .code(2);
    let run = rig.etee(["custody", "status"]).run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("user PIN ok"), "{out}");
    assert!(out.contains("0 wrong PIN(s)"), "{out}");

    let pin_file = tmp.path().join("institution-user.pin");
    let good = std::fs::read(&pin_file).unwrap();
    std::fs::write(&pin_file, "not-the-pin\n").unwrap();
    for _ in 0..5 {
        rig.etee(["keys", "destroy", "--key", "nothing"])
            .run()
            .code(2);
    }
    let run = rig.etee(["custody", "status", "--json"]).run();
    run.code(1);
    let report = run.json();
    assert_eq!(report["wrong_pins"], 5, "{report}");
    assert_eq!(report["core_locked_out"], true, "{report}");
    assert!(
        report["advice"][0]
            .as_str()
            .unwrap_or("")
            .contains("etee custody reset-pin"),
        "{report}"
    );
    assert!(
        report["audit"]["records"].as_u64().unwrap() >= 7,
        "{report}"
    );

    std::fs::write(&pin_file, good).unwrap();
    rig.etee(["custody", "reset-pin"]).run().code(0);
    // The anchor it prints is the one `audit verify` checks.
    let run = rig.etee(["custody", "status", "--json"]).run();
    run.code(0);
    let anchor = run.json()["audit"]["anchor"].as_str().unwrap().to_owned();
    rig.etee(["audit", "verify", "--expect-head", &anchor])
        .run()
        .code(0);
    // A configuration naming no token: said, exit 1.
    let missing = tmp.path().join("missing.toml");
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        "token_label = \"e2e-bob\"",
        "token_label = \"no-such-token\"",
    );
    std::fs::write(&missing, text).unwrap();
    let run = rig
        .hsm
        .etee(["custody", "status", "--config"])
        .arg(&missing)
        .run();
    run.code(1);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("not found"), "{out}");
    // The advice lists the tokens there and points at the label before `hsm init`.
    assert!(
        out.contains("e2e-bob") && out.contains("check token_label"),
        "{out}"
    );
    // A chain for the label says the token existed: a mistyped label, not a new token.
    let typo = tmp.path().join("typo.toml");
    std::fs::write(
        &typo,
        format!(
            "{}\n[custody]\naudit_file = {:?}\n",
            std::fs::read_to_string(&missing).unwrap(),
            rig.audit_file().display().to_string()
        ),
    )
    .unwrap();
    let run = rig
        .hsm
        .etee(["custody", "status", "--config"])
        .arg(&typo)
        .run();
    run.code(1);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        out.contains("yet its audit chain is there") && !out.contains("hsm init"),
        "{out}"
    );
    let run = rig.etee(["custody", "status"]).run();
    run.code(0);
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("0 wrong PIN(s)"),
        "{:?}",
        run.stdout
    );
    // A damaged chain: exit 2, with what to do.
    let mut bytes = std::fs::read(rig.audit_file()).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(rig.audit_file(), &bytes).unwrap();
    let run = rig.etee(["custody", "status"]).run();
    run.code(2);
    assert!(
        run.stderr.contains("etee audit verify") && run.stderr.contains("A damaged audit chain"),
        "{}",
        run.stderr
    );
}

/// A rig's configuration with another user PIN file (holding `pin`), as `NAME.toml`.
fn config_with_pin(rig: &Rig, name: &str, pin: &str) -> PathBuf {
    let pin_file = rig.dir.join(format!("{name}.pin"));
    etee_e2e::secret_file(&pin_file, pin);
    let config = rig.dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replace("institution-user.pin", &format!("{name}.pin"));
    std::fs::write(&config, text).unwrap();
    config
}

/// The outcomes of the `Unlock` records on the chain (every login with the user PIN).
fn unlocks(rig: &Rig) -> Vec<String> {
    let run = rig
        .etee(["audit", "verify", "--json", "--tail", "1000"])
        .run();
    run.code(0);
    run.json()["tail"]
        .as_array()
        .unwrap()
        .iter()
        // Outcomes: each try (`admitted`, before the PIN reaches the token) has one.
        .filter(|r| r["operation"] == "Unlock" && r["outcome"] != "admitted")
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect()
}

/// Every command that logs in with the user PIN follows the custody core's rule: wrong
/// PINs are counted on the chain whichever command tried them, and once the chain ends
/// locked out, `keys list`, `keys generate` and `keys import` are refused without asking
/// the token, even with the right PIN file, adding nothing to the chain.
/// `custody reset-pin` with a wrong PIN file resets without trying it; the next wrong PIN
/// counts again and the right one works.
#[test]
fn a_lock_out_stops_every_login_with_the_user_pin() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    let bad = config_with_pin(&rig, "bad", "not-the-pin");
    let with = |config: &Path, args: &[&str]| rig.hsm.etee(args).arg("--config").arg(config).run();
    assert_eq!(
        unlocks(&rig),
        ["success"],
        "`keys generate` logged in on record"
    );

    let csr = [
        "keys",
        "csr",
        "--key",
        "authentication",
        "--subject",
        "CN=x",
    ];
    for attempt in 1..=5 {
        let run = with(&bad, &csr);
        run.code(2);
        // Each try reached the token, the fifth too (which says the next ones won't).
        assert!(run.stderr.contains("CKR_PIN_INCORRECT"), "{}", run.stderr);
        assert!(!run.stderr.contains("not asked"), "{}", run.stderr);
        assert_eq!(
            run.stderr.contains("now locked out"),
            attempt == 5,
            "{}",
            run.stderr
        );
    }
    let before = unlocks(&rig);
    assert_eq!(before.len(), 6, "{before:?}");
    let (p12, password) = (w.p12("bob"), w.password_file());
    let import = [
        "keys",
        "import",
        "--p12",
        p12.to_str().unwrap(),
        "--password-file",
        password.to_str().unwrap(),
    ];
    for (config, args) in [
        (&bad, &["keys", "list"][..]),
        (&bad, &["keys", "generate", "--profile", "etk"][..]),
        (&rig.config, &["keys", "list"][..]),
        (&rig.config, &["keys", "generate", "--profile", "etk"][..]),
        (&rig.config, &import[..]),
    ] {
        let run = with(config, args);
        run.code(2);
        assert!(
            run.stderr.contains("locked out") && run.stderr.contains("not asked"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(unlocks(&rig), before, "refused before any login");
    with(&rig.config, &["custody", "status"]).code(1);

    // The reset does not try the (wrong) PIN of its configuration.
    let run = with(&bad, &["custody", "reset-pin"]);
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("5 consecutive failure(s) cleared"), "{out}");
    assert!(out.contains("not tried"), "{out}");
    assert_eq!(unlocks(&rig), before, "no login by the reset");
    // Counted again from zero; the right PIN is let in again.
    let run = with(&bad, &["keys", "list"]);
    run.code(2);
    assert!(run.stderr.contains("4 more wrong PIN(s)"), "{}", run.stderr);
    with(&rig.config, &["keys", "generate", "--profile", "etk"]).code(0);
    let run = with(&rig.config, &["keys", "list", "--json"]);
    run.code(0);
    assert_eq!(run.json()["keys"].as_array().unwrap().len(), 2);
    let after = unlocks(&rig);
    assert_eq!(after.len(), before.len() + 3, "{after:?}");
    assert!(after.last().unwrap() == "success", "{after:?}");
    with(&rig.config, &["custody", "status"]).code(0);
}

/// A configuration naming no token: `seal`, `keys list` and the other commands that would
/// open the core fail without making an audit file; `audit verify` on an audit file with
/// no record at all says so (exit 2) instead of "OK", and checks a recorded head against
/// it (cut).
#[test]
fn no_token_no_audit_file_and_an_empty_chain_is_not_ok() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    let missing = tmp.path().join("nolabel.toml");
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        "token_label = \"e2e-bob\"",
        "token_label = \"no-such-token\"",
    );
    std::fs::write(&missing, text).unwrap();
    let audit = tmp.path().join("audit-no-such-token.log");
    let with = |args: &[&str]| rig.hsm.etee(args).arg("--config").arg(&missing);
    let etk = w.etk("bob");
    for args in [
        &["seal", "--to", etk.to_str().unwrap()][..],
        &["keys", "list"][..],
        &["keys", "destroy", "--key", "x", "--yes"][..],
        &["custody", "reset-pin"][..],
    ] {
        let run = with(args).stdin(b"x".to_vec()).run();
        run.code(2);
        assert!(
            run.stderr.contains("no token with"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!audit.exists(), "{args:?} made {}", audit.display());
    }
    let run = with(&["audit", "verify"]).run();
    run.code(2);
    assert!(run.stderr.contains("no audit file"), "{}", run.stderr);

    // An empty audit file (left by an older etee, or emptied): not a verified chain.
    std::fs::write(&audit, b"").unwrap();
    let run = with(&["audit", "verify"]).run();
    run.code(2);
    assert!(run.stderr.contains("no record at all"), "{}", run.stderr);
    assert!(!String::from_utf8_lossy(&run.stdout).contains("OK"));
    // A head recorded elsewhere: the records it covers are gone.
    let anchor = rig.etee(["audit", "verify", "--json"]).run().json()["anchor"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = with(&["audit", "verify", "--expect-head", &anchor]).run();
    run.code(1);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.starts_with("EMPTY") && out.contains("CUT"), "{out}");
}

/// A new audit chain is never silent: normal once per token (its first login), and the
/// sign of a mistyped `[custody] audit_file` anywhere else (it restarts the record).
#[test]
fn a_new_audit_chain_is_announced() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    rig.etee(["hsm", "init"]).run().code(0);
    let first = rig.etee(["keys", "list"]).run();
    first.code(0);
    assert!(
        first.stderr.contains("a new chain starts there"),
        "{}",
        first.stderr
    );
    let list = rig.etee(["keys", "list"]).run();
    list.code(0);
    assert!(!list.stderr.contains("new chain"), "{}", list.stderr);
    let typo = tmp.path().join("typo.toml");
    let text = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &typo,
        format!("{text}\n[custody]\naudit_file = \"audti/chain.log\"\n"),
    )
    .unwrap();
    let run = rig.hsm.etee(["keys", "list", "--config"]).arg(&typo).run();
    run.code(0);
    assert!(
        run.stderr.contains("a new chain starts there")
            && run.stderr.contains("audti")
            && run.stderr.contains("created"),
        "{}",
        run.stderr
    );
}

/// `hsm init` for a label that two tokens already carry is refused before anything is
/// touched: no free token is used up (each retry used to initialise one more).
#[test]
fn hsm_init_of_a_label_two_tokens_carry_touches_nothing() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    // The SO PIN equal to the user PIN: refused, before anything is touched.
    let same = config_with_pin(&rig, "same", "institution-so-5678");
    let run = rig.hsm.etee(["hsm", "init", "--config"]).arg(&same).run();
    run.code(2);
    assert!(run.stderr.contains("are the same"), "{}", run.stderr);
    rig.etee(["hsm", "init"]).run().code(0);
    let softhsm = |args: &[&str]| {
        let out = std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &rig.hsm.conf)
            .args(args)
            .output()
            .expect("softhsm2-util");
        assert!(out.status.success(), "softhsm2-util {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    softhsm(
        &[
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--so-pin",
            "12345678",
        ][..]
            .iter()
            .copied()
            .chain(["--pin", "87654321"])
            .collect::<Vec<_>>(),
    );
    let free = || {
        softhsm(&["--show-slots"])
            .matches("Initialized:      no")
            .count()
    };
    let before = free();
    assert!(before > 0, "SoftHSM always offers a free token");
    for _ in 0..2 {
        let run = rig.etee(["hsm", "init"]).run();
        run.code(2);
        assert!(run.stderr.contains("2 tokens match"), "{}", run.stderr);
        assert_eq!(
            free(),
            before,
            "a free token was initialised: {}",
            run.stderr
        );
    }
}

/// A PIN file loses exactly one trailing `\n` or `\r\n`: with a second newline (or a
/// trailing space) the PIN is another one, refused (and counted), with a hint at the
/// whitespace that does not show the PIN.
#[test]
fn pin_files_lose_one_line_ending_only() {
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    let pin_file = tmp.path().join("institution-user.pin");
    let pin = "institution-user-1234";
    for (content, accepted) in [
        (format!("{pin}\r\n"), true),
        (format!("{pin}\n\n"), false),
        (format!("{pin} \n"), false),
        (format!("{pin}\n"), true),
    ] {
        std::fs::write(&pin_file, &content).unwrap();
        let run = rig.etee(["keys", "list"]).run();
        if accepted {
            run.code(0);
            continue;
        }
        run.code(2);
        assert!(
            run.stderr.contains("CKR_PIN_INCORRECT")
                && run.stderr.contains("more wrong PIN(s)")
                && run.stderr.contains("begins or ends with whitespace"),
            "{content:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains(pin), "{}", run.stderr);
    }
}

/// `audit verify --expect-head`: a head recorded earlier (the `anchor`) is found in the
/// grown chain; a chain restored from an older copy is reported cut, a head that does not
/// match is reported altered (both exit 1); a malformed anchor is a usage error.
#[test]
fn audit_verify_checks_a_recorded_head() {
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    // Each command that opens the core adds records (unlock, lock).
    rig.etee(["keys", "destroy", "--key", "nothing"])
        .run()
        .code(2);
    let run = rig.etee(["audit", "verify", "--json"]).run();
    run.code(0);
    let anchor = run.json()["anchor"].as_str().unwrap().to_owned();
    let older = tmp.path().join("audit-copy.log");
    std::fs::copy(rig.audit_file(), &older).unwrap();

    rig.etee(["keys", "destroy", "--key", "nothing"])
        .run()
        .code(2);
    let run = rig
        .etee(["audit", "verify", "--expect-head", &anchor])
        .run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("still holds the recorded head"), "{out}");
    assert!(out.contains("anchor  "), "{out}");
    let later = out
        .lines()
        .find_map(|l| l.strip_prefix("anchor  "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_ne!(later, anchor);

    // The same length with another hash: rewritten.
    let (n, hash) = anchor.split_once(':').unwrap();
    let flipped = format!(
        "{n}:{}{}",
        if hash.starts_with('0') { '1' } else { '0' },
        &hash[1..]
    );
    let run = rig
        .etee(["audit", "verify", "--json", "--expect-head", &flipped])
        .run();
    run.code(1);
    assert_eq!(run.json()["expected_head"]["verdict"], "differs");

    // An older copy put back: the later head is missing.
    std::fs::copy(&older, rig.audit_file()).unwrap();
    let run = rig.etee(["audit", "verify", "--expect-head", &later]).run();
    run.code(1);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        out.contains("CUT") && out.contains("records were removed"),
        "{out}"
    );

    // The empty chain's head is all zeros; any other hash after 0 records is not it.
    let zeros = format!("0:{}", "0".repeat(64));
    rig.etee(["audit", "verify", "--expect-head", &zeros])
        .run()
        .code(0);
    let ones = format!("0:{}", "1".repeat(64));
    rig.etee(["audit", "verify", "--expect-head", &ones])
        .run()
        .code(1);

    let run = rig
        .etee(["audit", "verify", "--expect-head", "12:nothex"])
        .run();
    run.code(2);
    assert!(run.stderr.contains("RECORDS:HASH"), "{}", run.stderr);
}

/// Anchors across segments: with a small `audit_segment_bytes` the chain spans archived
/// segments; an early anchor is found while they are present and reported UNKNOWN once
/// they are moved away, while the current anchor (records ever written, not records
/// present) is still found; `custody status` prints the same anchor.
#[test]
fn anchors_hold_across_archived_segments() {
    let w = World::shared();
    let tmp = scratch();
    let hsm = SoftHsm::new(tmp.path());
    let config = hsm.token_config("segments", LABEL, "[custody]\naudit_segment_bytes = 4096\n");
    let etee = |args: &[&str]| hsm.etee(args).arg("--config").arg(&config);
    etee(&["hsm", "init"]).run().code(0);
    etee(&["keys", "import"])
        .arg("--p12")
        .arg(w.p12("bob"))
        .arg("--password-file")
        .arg(w.password_file())
        .run()
        .code(0);
    let verify = |extra: &[&str]| {
        let mut e = etee(&["audit", "verify", "--json"]);
        for a in extra {
            e = e.arg(a);
        }
        e.run()
    };
    let input = tmp.path().join("plain");
    std::fs::write(&input, b"a short message").unwrap();
    let seal = || {
        etee(&["seal"])
            .arg("--to")
            .arg(w.etk("alice"))
            .arg("--trust")
            .arg(w.ca())
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(tmp.path().join("sealed"))
            .run()
            .code(0);
    };
    seal();
    let early = verify(&[]).json()["anchor"].as_str().unwrap().to_owned();
    for _ in 0..12 {
        seal();
    }
    let report = verify(&[]).json();
    assert!(report["segments"].as_u64().unwrap() > 0, "{report}");
    let now = report["anchor"].as_str().unwrap().to_owned();
    verify(&["--expect-head", &early]).code(0);

    // The archived segments moved away (to cold storage, say).
    let audit = tmp.path().join(format!("audit-{LABEL}.log"));
    let name = audit.file_name().unwrap().to_str().unwrap().to_owned();
    let cold = tmp.path().join("cold");
    std::fs::create_dir(&cold).unwrap();
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        if file.starts_with(&format!("{name}."))
            && file[name.len() + 1..].bytes().all(|b| b.is_ascii_digit())
        {
            std::fs::rename(&path, cold.join(&file)).unwrap();
        }
    }
    let run = verify(&["--expect-head", &early]);
    run.code(1);
    let report = run.json();
    assert_eq!(
        report["expected_head"]["verdict"], "unavailable",
        "{report}"
    );
    assert!(report["first_sequence"].as_u64().unwrap() > 0, "{report}");
    // Fewer records present than ever written: the anchor counts the latter.
    let (written, _) = now.split_once(':').unwrap();
    assert!(report["records"].as_u64().unwrap() < written.parse::<u64>().unwrap());
    assert_eq!(report["anchor"], now.as_str(), "{report}");
    verify(&["--expect-head", &now]).code(0);
    let status = etee(&["custody", "status", "--json"]).run();
    status.code(0);
    assert_eq!(status.json()["audit"]["anchor"], now.as_str());
}

/// A PIN file that group or others may read or write is reported by every command that
/// reads it (each file once), the SO PIN file of `hsm init` and the user PIN file of
/// `hsm init` and `hsm init-pin` included; a private one is not.
#[test]
fn pin_files_open_to_others_are_reported_by_every_command() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    let user = tmp.path().join("institution-user.pin");
    let so = tmp.path().join("institution-so.pin");
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(&user, 0o644);
    chmod(&so, 0o640);
    let reported = |stderr: &str, path: &Path| {
        stderr
            .matches(&format!(
                "PIN file {} is readable or writable",
                path.display()
            ))
            .count()
    };
    let init = rig.etee(["hsm", "init"]).run();
    init.code(0);
    assert_eq!(reported(&init.stderr, &so), 1, "{}", init.stderr);
    assert_eq!(reported(&init.stderr, &user), 1, "{}", init.stderr);
    let again = rig.etee(["hsm", "init-pin"]).run();
    again.code(0);
    assert_eq!(reported(&again.stderr, &so), 1, "{}", again.stderr);
    assert_eq!(reported(&again.stderr, &user), 1, "{}", again.stderr);
    let list = rig.etee(["keys", "list"]).run();
    list.code(0);
    assert_eq!(reported(&list.stderr, &user), 1, "{}", list.stderr);
    chmod(&user, 0o600);
    let quiet = rig.etee(["keys", "list"]).run();
    quiet.code(0);
    assert_eq!(reported(&quiet.stderr, &user), 0, "{}", quiet.stderr);
}

/// PINs given as systemd credentials (`pin_credential`, `so_pin_credential`: files in
/// `$CREDENTIALS_DIRECTORY`, set here for each `etee` child only): `hsm init` sets the
/// token's PINs from them, and the user PIN from the credential logs in (`keys generate`,
/// `keys list`). The PIN really is the credential's content: the same token then opens
/// with a PIN file holding it. A missing credential, or no `CREDENTIALS_DIRECTORY` at all,
/// is a clear error that names the credential, and is no login: nothing goes on the
/// chain (no try, no wrong PIN).
#[test]
fn pins_from_systemd_credentials_log_in() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    // Another user PIN than the file-based configuration's, so that a login that read the
    // PIN file instead would fail.
    etee_e2e::secret_file(&creds.join("etee-user-pin"), "from-a-credential-1234");
    etee_e2e::secret_file(&creds.join("etee-so-pin"), "so-from-a-credential-5678");
    let config = tmp.path().join("credentials.toml");
    std::fs::write(
        &config,
        format!(
            "[hsm]\nmodule = {:?}\ntoken_label = {LABEL:?}\npin_credential = \"etee-user-pin\"\n\
             so_pin_credential = \"etee-so-pin\"\n",
            etee_e2e::softhsm_module().display().to_string()
        ),
    )
    .unwrap();
    let with_creds = |args: &[&str]| {
        rig.hsm
            .etee(args)
            .arg("--config")
            .arg(&config)
            .env("CREDENTIALS_DIRECTORY", &creds)
    };
    with_creds(&["hsm", "init"]).run().code(0);
    let run = with_creds(&["keys", "generate", "--json", "--profile", "authentication"]).run();
    run.code(0);
    assert_eq!(run.json()["id"], "authentication");
    let run = with_creds(&["keys", "list"]).run();
    run.code(0);
    let listed = String::from_utf8(run.stdout).unwrap();
    assert!(listed.contains("\"authentication\""), "{listed}");
    // The token's user PIN is the credential's content.
    let by_file = config_with_pin(&rig, "credential-pin-file", "from-a-credential-1234");
    rig.hsm
        .etee(["keys", "list"])
        .arg("--config")
        .arg(&by_file)
        .run()
        .code(0);
    let records = || {
        rig.etee(["audit", "verify", "--json"]).run().json()["records"]
            .as_u64()
            .unwrap()
    };
    let before = records();
    let wrong_pins = || {
        let run = rig.etee(["custody", "status", "--json"]).run();
        run.code(0);
        run.json()["wrong_pins"].as_u64().unwrap()
    };
    assert_eq!(wrong_pins(), 0);

    // The credential missing from the directory.
    std::fs::remove_file(creds.join("etee-user-pin")).unwrap();
    let run = with_creds(&["keys", "list"]).run();
    run.code(2);
    assert!(
        run.stderr.contains("PIN credential etee-user-pin")
            && run
                .stderr
                .contains(&creds.join("etee-user-pin").display().to_string())
            && run.stderr.contains("No such file"),
        "{}",
        run.stderr
    );
    // No credentials directory at all (not started by systemd with LoadCredential=).
    let run = rig
        .hsm
        .etee(["keys", "list", "--config"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .run();
    run.code(2);
    assert!(
        run.stderr.contains("PIN credential etee-user-pin")
            && run.stderr.contains("CREDENTIALS_DIRECTORY is not set"),
        "{}",
        run.stderr
    );
    // No PIN, no login to record: the chain is as it was, and no wrong PIN is counted.
    assert_eq!(records(), before);
    assert_eq!(wrong_pins(), 0);
    // The credential back: the next login is on the chain (a try and its success).
    etee_e2e::secret_file(&creds.join("etee-user-pin"), "from-a-credential-1234");
    with_creds(&["keys", "list"]).run().code(0);
    assert_eq!(records(), before + 2);
}

/// The token's serial as OpenSC's `pkcs11-tool --list-token-slots` prints it (not through
/// etee); `None` after a skip when pkcs11-tool is not installed.
fn serial_of(rig: &Rig, label: &str) -> Option<String> {
    let out = std::process::Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &rig.hsm.conf)
        .arg("--module")
        .arg(etee_e2e::softhsm_module())
        .arg("--list-token-slots")
        .output();
    let Ok(out) = out else {
        etee_e2e::skip("pkcs11-tool (OpenSC) is not installed");
        return None;
    };
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Each slot: `Slot N (...): ...`, then indented `name : value` lines.
    let mut token_label = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        match key.trim() {
            "token label" => token_label = Some(value.trim().to_string()),
            "serial num" if token_label.as_deref() == Some(label) => {
                return Some(value.trim().to_string());
            }
            _ => {}
        }
    }
    panic!("no token {label:?} in:\n{text}");
}

/// A configuration that selects the token by `token_serial` alone (no label) finds it and
/// logs in; its default audit file is named after the serial, another chain than the
/// label's (what docs/custody.md tells operators who switch selectors). A serial that
/// matches no token is a clear error naming the serial and the tokens present.
#[test]
fn a_token_is_found_by_its_serial_alone() {
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    let Some(serial) = serial_of(&rig, LABEL) else {
        return;
    };
    assert_eq!(serial.len(), 16, "{serial}");
    let by_serial = |name: &str, serial: &str| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[hsm]\nmodule = {:?}\ntoken_serial = {serial:?}\npin_file = \"institution-user.pin\"\n",
                etee_e2e::softhsm_module().display().to_string()
            ),
        )
        .unwrap();
        path
    };
    let config = by_serial("serial", &serial);
    let run = rig
        .hsm
        .etee(["keys", "list", "--config"])
        .arg(&config)
        .run();
    run.code(0);
    let listed = String::from_utf8(run.stdout).unwrap();
    assert!(listed.contains("\"authentication\""), "{listed}");
    assert!(listed.contains("sensitive=yes extractable=no"), "{listed}");
    // The same token, a new chain: audit-<serial>.log, with only this login on it, beside
    // the label's, which is left as it was.
    let label_chain = std::fs::read(rig.audit_file()).unwrap();
    assert!(run.stderr.contains("a new chain starts"), "{}", run.stderr);
    let serial_chain = tmp.path().join(format!("audit-{serial}.log"));
    assert!(serial_chain.is_file(), "no {}", serial_chain.display());
    let report = rig
        .hsm
        .etee(["audit", "verify", "--json", "--config"])
        .arg(&config)
        .run()
        .json();
    assert_eq!(report["intact"], true, "{report}");
    // A login: its try and its outcome.
    assert_eq!(report["records"], 2, "{report}");
    assert_eq!(std::fs::read(rig.audit_file()).unwrap(), label_chain);

    // No token with that serial.
    let wrong = if serial == "0000000000000000" {
        "1111111111111111"
    } else {
        "0000000000000000"
    };
    let config = by_serial("wrong-serial", wrong);
    let run = rig
        .hsm
        .etee(["keys", "list", "--config"])
        .arg(&config)
        .run();
    run.code(2);
    assert!(
        run.stderr
            .contains(&format!("no token with serial \"{wrong}\""))
            && run.stderr.contains(&format!("(serial {serial})")),
        "{}",
        run.stderr
    );
    assert!(!tmp.path().join(format!("audit-{wrong}.log")).exists());
}

/// Run as root on a SoftHSM token directory that belongs to the service's user, a command
/// that adds an object says so: SoftHSM writes the object as a root-owned 0600 file, which
/// the service's user cannot read and SoftHSM then leaves out without a word. The warning
/// names the chown to run; once it is run, nothing is said.
#[test]
fn root_adding_to_a_service_users_token_is_warned() {
    // Not a missing tool: a run as another user has nothing to warn about.
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: needs root (the warning is about files root creates)");
        return;
    }
    let tmp = scratch();
    let rig = Rig::with_authentication_key(tmp.path());
    let tokens = tmp.path().join("tokens");
    let give = |uid: u32| {
        for path in walk(&tokens) {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).unwrap();
        }
    };
    give(65534);
    let run = rig.etee(["keys", "generate", "--profile", "etk"]).run();
    run.code(0);
    assert!(
        run.stderr.contains("file(s) of the SoftHSM token in")
            && run.stderr.contains("belong to root")
            && run
                .stderr
                .contains(&format!("chown -R 65534:65534 {}", tokens.display())),
        "{}",
        run.stderr
    );
    give(65534);
    let run = rig.etee(["keys", "list"]).run();
    run.code(0);
    assert!(!run.stderr.contains("belong to root"), "{}", run.stderr);
    // Root's own token directory: nothing to say either.
    give(0);
    let run = rig.etee(["keys", "generate", "--profile", "etk"]).run();
    run.code(0);
    assert!(!run.stderr.contains("belong to root"), "{}", run.stderr);
}

/// `dir` and everything under it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
