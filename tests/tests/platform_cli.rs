//! `etee platform serve` as a real process, black-box: a world from `etee platform pki`,
//! KGSS with its keys (authentication and ETK born in a SoftHSM token, AES wrapping key), ETKs
//! registered and attributes set with `etee platform ...`, requests sealed and answers
//! opened with `etee seal` / `etee unseal`, HTTPS with curl.
//!
//! The flows: ETKDepot (SOAP and REST) finds Bob's ETK; Alice creates a key for "any
//! recognised pharmacy"; Bob (a recognised pharmacy) gets it, a doctor does not; Alice
//! (the holder) deletes it and then nobody gets it; every wrap and unwrap is on the KGSS
//! token's custody audit chain. Then the platform is killed (SIGKILL) in the middle of a
//! stream of key creations and restarted: every key whose creation was acknowledged is
//! still there. Both on the embedded store and on PostgreSQL (a scratch database on the
//! server of `ETEE_TEST_POSTGRES_URL`, which `scripts/test` starts).

use base64::Engine as _;
use etee_e2e::{scratch, Output, SoftHsm};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Platform {
    child: Child,
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Rig {
    dir: PathBuf,
    hsm: SoftHsm,
    kgss_hsm: PathBuf,
    config: PathBuf,
    port: u16,
    password: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throw-away database on the test PostgreSQL server (`scripts/test` starts one and sets
/// `ETEE_TEST_POSTGRES_URL`), or `None` after reporting the skip (a failure under
/// `ETEE_E2E_STRICT=1`).
fn scratch_postgres() -> Option<etee_store::scratch::ScratchDatabase> {
    let Ok(url) = std::env::var(etee_store::scratch::TEST_URL_VAR) else {
        etee_e2e::skip(&format!(
            "{} is not set (scripts/test starts a PostgreSQL and sets it)",
            etee_store::scratch::TEST_URL_VAR
        ));
        return None;
    };
    Some(etee_store::scratch::ScratchDatabase::create(&url).expect("a scratch database"))
}

impl Rig {
    /// A world whose platform keeps its data in an embedded store file.
    fn new(dir: &Path) -> Rig {
        Rig::with_store(dir, "platform.redb")
    }

    /// A world whose platform keeps its data in `store` (a file or a `postgres://` URL).
    fn with_store(dir: &Path, store: &str) -> Rig {
        let hsm = SoftHsm::new(dir);
        let world = dir.join("world");
        // KGSS's token: its authentication and ETK keys are born in it (`platform pki
        // --hsm`), then the wrapping key.
        let kgss_hsm = hsm.token_config(
            "kgss",
            "e2e-kgss",
            "[custody]\naudit_file = \"kgss-audit.log\"\n",
        );
        hsm.etee(["hsm", "init", "--config"])
            .arg(&kgss_hsm)
            .run()
            .code(0);
        hsm.etee(["platform", "pki"])
            .arg(&world)
            .args([
                "--institution",
                "alice:NIHII-HOSPITAL=71000436",
                "--institution",
                "bob:NIHII-PHARMACY=27150201",
                "--institution",
                "doctor:NIHII11=10203040506",
                "--institution",
                "kgss:CBE=0809394427/KGSS",
                "--tls-server",
                "localhost",
                "--hsm",
            ])
            .arg(format!("kgss={}", kgss_hsm.display()))
            .run()
            .code(0);
        assert!(
            !world.join("kgss.p12").exists(),
            "KGSS's keys were written to a file"
        );
        let password = std::fs::read_to_string(world.join("password"))
            .unwrap()
            .trim()
            .to_string();
        hsm.etee(["keys", "generate", "--profile", "kgss-wrap", "--config"])
            .arg(&kgss_hsm)
            .run()
            .code(0);

        let port = free_port();
        let config = dir.join("platform.toml");
        std::fs::write(
            &config,
            format!(
                "[platform]\nlisten = \"127.0.0.1:{port}\"\nstore = \"{store}\"\n\
                 tls_certificate = \"world/tls-server.pem\"\ntls_key = \"world/tls-server-key.pem\"\n\
                 client_ca = [\"world/ca.pem\"]\n\n[kgss]\nhsm = \"kgss.toml\"\n"
            ),
        )
        .unwrap();
        let rig = Rig {
            dir: dir.to_path_buf(),
            hsm,
            kgss_hsm,
            config,
            port,
            password,
        };
        let etks: Vec<PathBuf> = ["alice", "bob", "doctor", "kgss"]
            .iter()
            .map(|n| rig.world(&format!("{n}.etk")))
            .collect();
        rig.platform(["etk", "register"]).args(&etks).run().code(0);
        // Again: nothing changes, said so, and no second event (counted below).
        let again = rig.platform(["etk", "register"]).args(&etks).run();
        again.code(0);
        let said = String::from_utf8_lossy(&again.stdout);
        assert_eq!(said.matches("already registered ").count(), 4, "{said}");
        rig.platform([
            "attributes",
            "set",
            "--holder",
            "NIHII-PHARMACY=27150201",
            "--recognised-pharmacy",
        ])
        .run()
        .code(0);
        rig.platform([
            "attributes",
            "set",
            "--holder",
            "NIHII11=10203040506",
            "--doctor",
        ])
        .run()
        .code(0);
        rig
    }

    fn world(&self, name: &str) -> PathBuf {
        self.dir.join("world").join(name)
    }

    /// `etee platform ARGS --config platform.toml`.
    fn platform<const N: usize>(&self, args: [&str; N]) -> etee_e2e::Etee {
        self.hsm
            .etee(["platform"])
            .args(args)
            .arg("--config")
            .arg(&self.config)
    }

    fn serve(&self) -> Platform {
        let child = Command::new(etee_e2e::etee_bin())
            .args(["platform", "serve", "--config"])
            .arg(&self.config)
            .env("SOFTHSM2_CONF", &self.hsm.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut p = Platform { child };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("etee platform serve exited: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no platform after 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// curl over HTTPS to the platform, trusting the world's CA; `as_` presents that
    /// institution's keystore as client certificate. Returns (status, body); status 0 when
    /// curl got no answer (connection refused or cut).
    fn curl(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        as_: Option<&str>,
    ) -> (u16, Vec<u8>) {
        let out_file = self.dir.join(format!("curl-{}.out", etee_e2e::unique()));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "--cacert"])
            .arg(self.world("ca.pem"))
            .args(["-o"])
            .arg(&out_file)
            .args(["-w", "%{http_code}"]);
        if let Some(who) = as_ {
            cmd.args(["--cert-type", "P12", "--cert"]).arg(format!(
                "{}:{}",
                self.world(&format!("{who}.p12")).display(),
                self.password
            ));
        }
        if let Some((content_type, bytes)) = body {
            let body_file = self.dir.join(format!("curl-{}.in", etee_e2e::unique()));
            std::fs::write(&body_file, bytes).unwrap();
            cmd.args([
                "-H",
                &format!("content-type: {content_type}"),
                "--data-binary",
            ])
            .arg(format!("@{}", body_file.display()));
        }
        cmd.arg(format!("https://localhost:{}{path}", self.port));
        let out = cmd.output().expect("curl");
        if !out.status.success() {
            eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
            return (0, Vec::new());
        }
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        (status, std::fs::read(&out_file).unwrap_or_default())
    }

    /// `content` sealed by `from` (its keystore) to `to`'s ETK with `etee seal`.
    fn seal(&self, from: &str, to: &str, content: &[u8]) -> Vec<u8> {
        let n = etee_e2e::unique();
        let input = self.dir.join(format!("seal-{n}.in"));
        let out = self.dir.join(format!("seal-{n}.p7"));
        std::fs::write(&input, content).unwrap();
        self.hsm
            .etee(["seal", "--keystore"])
            .arg(self.world(&format!("{from}.p12")))
            .arg("--password-file")
            .arg(self.world("password"))
            .arg("--to")
            .arg(self.world(&format!("{to}.etk")))
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .run()
            .code(0);
        std::fs::read(out).unwrap()
    }

    /// An answer of KGSS opened with `etee unseal` by `who`, checking it comes from KGSS.
    fn unseal(&self, who: &str, sealed: &[u8]) -> String {
        let n = etee_e2e::unique();
        let input = self.dir.join(format!("unseal-{n}.p7"));
        let out = self.dir.join(format!("unseal-{n}.out"));
        std::fs::write(&input, sealed).unwrap();
        let run: Output = self
            .hsm
            .etee(["unseal", "--json", "--keystore"])
            .arg(self.world(&format!("{who}.p12")))
            .arg("--password-file")
            .arg(self.world("password"))
            .arg("--trust")
            .arg(self.world("ca.pem"))
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .run();
        run.code(0);
        let sender = &run.json()["sender"]["identities"];
        assert!(
            sender
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id_type"] == "CBE" && i["value"] == "0809394427"),
            "not from KGSS: {sender}"
        );
        String::from_utf8(std::fs::read(out).unwrap()).unwrap()
    }

    /// REST `POST path` with `{"sealedRequest": ...}`; returns (status, JSON).
    fn kgss_rest(&self, path: &str, sealed: &[u8], as_: Option<&str>) -> (u16, Value) {
        let body = serde_json::json!({ "sealedRequest": B64.encode(sealed) }).to_string();
        let (status, answer) = self.curl(
            "POST",
            path,
            Some(("application/json", body.as_bytes())),
            as_,
        );
        (
            status,
            serde_json::from_slice(&answer).unwrap_or(Value::Null),
        )
    }

    fn new_key(&self, from: &str) -> (u16, Value) {
        let content = format!(
            r#"<GetNewKeyRequestContent xmlns="urn:be:fgov:ehealth:etee:kgss:1_0:protocol"><AllowedReader><Namespace>urn:be:fgov:certified-namespace:ehealth</Namespace><Name>urn:be:fgov:ehealth:1.0:pharmacy:nihii-number:recognisedpharmacy:boolean</Name><Value>true</Value></AllowedReader><ETK>{}</ETK></GetNewKeyRequestContent>"#,
            B64.encode(std::fs::read(self.world(&format!("{from}.etk"))).unwrap())
        );
        self.kgss_rest(
            "/etee/v1/kgss/keys",
            &self.seal(from, "kgss", content.as_bytes()),
            None,
        )
    }

    fn get_key(&self, who: &str, key_id: &str) -> (u16, Value) {
        let content = format!(
            r#"<GetKeyRequestContent xmlns="urn:be:fgov:ehealth:etee:kgss:1_0:protocol"><KeyIdentifier>{key_id}</KeyIdentifier><ETK>{}</ETK></GetKeyRequestContent>"#,
            B64.encode(std::fs::read(self.world(&format!("{who}.etk"))).unwrap())
        );
        self.kgss_rest(
            "/etee/v1/kgss/keys/retrieve",
            &self.seal(who, "kgss", content.as_bytes()),
            None,
        )
    }
}

/// The text of the first `<name>` element (the contents are small, known XML).
fn element(xml: &str, name: &str) -> String {
    let start = xml
        .find(&format!("{name}>"))
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + name.len()
        + 1;
    let end = start + xml[start..].find('<').unwrap();
    xml[start..end].to_string()
}

fn sealed_response(v: &Value) -> Vec<u8> {
    B64.decode(v["sealedResponse"].as_str().unwrap()).unwrap()
}

#[test]
fn platform_serves_etkdepot_and_kgss_with_keys_in_softhsm() {
    let tmp = scratch();
    serves_etkdepot_and_kgss(Rig::new(tmp.path()));
}

/// The same flows with the platform's data in PostgreSQL (KGSS's keys wrapped in SoftHSM).
#[test]
fn platform_serves_etkdepot_and_kgss_with_keys_in_softhsm_on_postgresql() {
    let Some(db) = scratch_postgres() else { return };
    let tmp = scratch();
    serves_etkdepot_and_kgss(Rig::with_store(tmp.path(), db.url()));
}

fn serves_etkdepot_and_kgss(rig: Rig) {
    let platform = rig.serve();

    // ETKDepot, SOAP and REST: Bob's ETK, byte for byte.
    let soap = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetEtkRequest xmlns="urn:be:fgov:ehealth:etkdepot:1_0:protocol"><SearchCriteria><Identifier><Type>NIHII-PHARMACY</Type><Value>27150201</Value></Identifier></SearchCriteria></GetEtkRequest></s:Body></s:Envelope>"#;
    let (status, body) = rig.curl(
        "POST",
        "/EtkDepot/v1",
        Some(("text/xml; charset=utf-8", soap.as_bytes())),
        None,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let body = String::from_utf8(body).unwrap();
    let etk = B64
        .decode(element(&body, "ETK").replace(['\n', '\r', ' '], ""))
        .unwrap();
    assert_eq!(etk, std::fs::read(rig.world("bob.etk")).unwrap());
    let (status, body) = rig.curl(
        "GET",
        "/etee/v1/etks?identifier=27150201&type=NIHII-PHARMACY",
        None,
        None,
    );
    assert_eq!(status, 200);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(B64.decode(list[0]["etk"].as_str().unwrap()).unwrap(), etk);
    let (status, body) = rig.curl("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let api: Value = serde_json::from_slice(&body).unwrap();
    assert!(api["paths"]["/etee/v1/kgss/keys"].is_object());

    // KGSS: Alice's key for recognised pharmacies.
    let (status, created) = rig.new_key("alice");
    assert_eq!(status, 201, "{created}");
    let answer = rig.unseal("alice", &sealed_response(&created));
    let key_id = element(&answer, "NewKeyIdentifier");
    let key = element(&answer, "NewKey");
    assert_eq!(B64.decode(&key).unwrap().len(), 16);
    assert_eq!(created["keyId"].as_str().unwrap(), key_id);

    // Bob gets it; the doctor does not.
    let (status, got) = rig.get_key("bob", &key_id);
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        element(&rig.unseal("bob", &sealed_response(&got)), "Key"),
        key
    );
    let (status, refused) = rig.get_key("doctor", &key_id);
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["title"], "KGSS_ACCESS_DENIED");

    // Only the holder deletes (authenticated by its TLS client certificate); then the key
    // is gone for everybody.
    let path = format!(
        "/etee/v1/kgss/keys/{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(B64.decode(&key_id).unwrap())
    );
    assert_eq!(rig.curl("DELETE", &path, None, Some("bob")).0, 403);
    assert_eq!(rig.curl("DELETE", &path, None, None).0, 401);
    assert_eq!(rig.curl("DELETE", &path, None, Some("alice")).0, 204);
    assert_eq!(rig.get_key("bob", &key_id).0, 404);

    // Stopped with SIGTERM: a clean exit.
    let mut platform = platform;
    Command::new("kill")
        .args(["-TERM", &platform.child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = platform.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still serving after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    // Every wrap and unwrap went through the KGSS token's custody core, on its chain.
    let run = rig
        .hsm
        .etee(["audit", "verify", "--json", "--tail", "20", "--config"])
        .arg(&rig.kgss_hsm)
        .run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true));
    let ops: Vec<&str> = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert!(ops.contains(&"WrapSecret"), "{ops:?}");
    assert!(ops.contains(&"UnwrapSecret"), "{ops:?}");
    assert!(ops.contains(&"DecryptPkcs1v15"), "{ops:?}");
    assert!(ops.contains(&"SignPssSha256"), "{ops:?}");

    // The platform's own chain (in its store): who created, read, was refused, deleted.
    let run = rig.platform(["audit", "--json", "--tail", "10"]).run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true), "{report}");
    let hex_id = hex::encode(B64.decode(&key_id).unwrap());
    let seen: Vec<(String, String)> = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == hex_id.as_str())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("kgss.create", "created"),
        ("kgss.read", "granted"),
        ("kgss.read", "denied"),
        ("kgss.delete", "denied"),
        ("kgss.delete", "deleted"),
    ];
    assert_eq!(
        seen,
        expected.map(|(a, o)| (a.to_string(), o.to_string())),
        "{report}"
    );
    // The administrative commands of the set-up are on the chain too, with who ran them.
    let run = rig.platform(["audit", "--json", "--tail", "1000"]).run();
    run.code(0);
    let report = run.json();
    let admin = |action: &str| {
        report["tail"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["action"] == action && e["actor"].as_str().unwrap_or("").starts_with("admin uid ")
            })
            .count()
    };
    assert_eq!(admin("etkdepot.register"), 4, "{report}");
    assert_eq!(admin("attributes.set"), 2, "{report}");

    // Filters: the events of one key, of one action or action family, by outcome, by
    // actor, by time; `matched` counts them all, `tail` shows the last ones.
    let filtered = |args: &[&str]| {
        let mut cmd = rig.platform(["audit", "--json", "--tail", "1000"]);
        for a in args {
            cmd = cmd.arg(a);
        }
        let run = cmd.run();
        run.code(0);
        let report = run.json();
        assert_eq!(report["intact"], Value::Bool(true), "{report}");
        let shown: Vec<(String, String)> = report["tail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_string(),
                    e["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            report["matched"].as_u64(),
            Some(shown.len() as u64),
            "{report}"
        );
        shown
    };
    let upper = hex_id.to_uppercase();
    assert_eq!(
        filtered(&["--subject", &upper]),
        expected.map(|(a, o)| (a.to_string(), o.to_string()))
    );
    let reads = filtered(&["--subject", &hex_id, "--action", "kgss.read"]);
    assert_eq!(reads.len(), 2, "{reads:?}");
    let refused = filtered(&[
        "--subject",
        &hex_id,
        "--action",
        "kgss",
        "--outcome",
        "denied",
    ]);
    assert_eq!(
        refused,
        [("kgss.read", "denied"), ("kgss.delete", "denied")].map(|(a, o)| (a.into(), o.into()))
    );
    assert!(filtered(&["--action", "kgss"])
        .iter()
        .all(|(a, _)| a.starts_with("kgss.")));
    assert_eq!(
        filtered(&["--actor", "admin uid "]).len(),
        6 + admin("keydepot.register")
    );
    assert!(filtered(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert!(filtered(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    let run = rig
        .platform(["audit", "--tail", "2", "--action", "kgss.read"])
        .run();
    run.code(0);
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(text.contains("matching event(s) among the"), "{text}");
    rig.platform(["audit", "--since", "yesterday"])
        .run()
        .code(2);
}

#[test]
fn platform_killed_during_key_creation_loses_no_acknowledged_key() {
    let tmp = scratch();
    killed_during_key_creation(Rig::new(tmp.path()));
}

/// The same with the platform's data in PostgreSQL.
#[test]
fn platform_killed_during_key_creation_loses_no_acknowledged_key_on_postgresql() {
    let Some(db) = scratch_postgres() else { return };
    let tmp = scratch();
    killed_during_key_creation(Rig::with_store(tmp.path(), db.url()));
}

fn killed_during_key_creation(rig: Rig) {
    // Requests sealed beforehand, so that the stream is as dense as the platform allows.
    let mut platform = rig.serve();
    let acknowledged = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            for _ in 0..200 {
                let (status, created) = rig.new_key("alice");
                if status != 201 {
                    break;
                }
                acknowledged
                    .lock()
                    .unwrap()
                    .push(created["keyId"].as_str().unwrap().to_owned());
            }
        });
        // Kill once a few keys went through.
        let start = Instant::now();
        while acknowledged.lock().unwrap().len() < 3 {
            assert!(start.elapsed() < Duration::from_secs(60), "no key created");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = platform.child.kill(); // SIGKILL
        let _ = platform.child.wait();
        worker.join().unwrap();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    eprintln!("{} keys acknowledged before the kill", acknowledged.len());

    // Restarted: every acknowledged key is served (Bob may read them all).
    let _platform = rig.serve();
    for key_id in &acknowledged {
        let (status, got) = rig.get_key("bob", key_id);
        assert_eq!(status, 200, "acknowledged key {key_id} lost: {got}");
    }
    // The custody chain of the KGSS token survived too.
    let run = rig
        .hsm
        .etee(["audit", "verify", "--json", "--config"])
        .arg(&rig.kgss_hsm)
        .run();
    run.code(0);
    assert_eq!(run.json()["intact"], Value::Bool(true));
}

/// KeyDepot with a key born in an HSM: Alice's token holds her imported authentication
/// key and a signing key generated in it; `etee keys attest` proves possession and attests
/// the key through the custody core; the platform registers it as attested and serves the
/// attestation back. An imported (once extractable) key's attestation, and Alice's
/// attestation presented by Bob, are refused.
#[test]
fn keydepot_registers_a_key_born_in_the_hsm_with_its_attestation() {
    let tmp = scratch();
    let rig = Rig::new(tmp.path());
    let alice = rig.hsm.token_config(
        "alice",
        "e2e-alice",
        "[hsm.profiles.keydepot]\nrole = \"authentication\"\nid = \"keydepot-1\"\n",
    );
    rig.hsm
        .etee(["hsm", "init", "--config"])
        .arg(&alice)
        .run()
        .code(0);
    rig.hsm
        .etee(["keys", "import", "--config"])
        .arg(&alice)
        .arg("--p12")
        .arg(rig.world("alice.p12"))
        .arg("--password-file")
        .arg(rig.world("password"))
        .run()
        .code(0);
    rig.hsm
        .etee(["keys", "generate", "--profile", "keydepot", "--config"])
        .arg(&alice)
        .run()
        .code(0);
    let attest = |key: &str| {
        let out = rig
            .hsm
            .etee([
                "keys",
                "attest",
                "--key",
                key,
                "--label",
                "e-prescriptions",
                "--config",
            ])
            .arg(&alice)
            .run();
        out.code(0);
        out.stdout.clone()
    };
    let request = attest("keydepot-1");
    let sent: Value = serde_json::from_slice(&request).unwrap();
    let key_id = sent["keyId"].as_str().unwrap().to_string();

    let _platform = rig.serve();
    let json = Some(("application/json", request.as_slice()));
    let (status, body) = rig.curl("POST", "/etee/v1/keydepot/keys", json, Some("alice"));
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let registered: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(registered["key"]["keyId"], key_id.as_str());
    assert_eq!(registered["key"]["attested"], true);
    assert_eq!(registered["key"]["info"]["label"], "e-prescriptions");

    // Anyone reads the key and its attestation, served as registered.
    let path = format!("/etee/v1/keydepot/keys/{key_id}");
    let (status, body) = rig.curl("GET", &format!("{path}/attestation"), None, None);
    assert_eq!(status, 200);
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, sent["attestation"]);
    let statement: Value =
        serde_json::from_slice(&B64.decode(served["statement"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(statement["token"]["label"], "e2e-alice");
    assert_eq!(statement["attributes"]["neverExtractable"], true);
    assert_eq!(statement["attributes"]["local"], true);

    // The same attestation presented by Bob: he is not the key's holder (checked before the
    // duplicate key id).
    let (status, body) = rig.curl("POST", "/etee/v1/keydepot/keys", json, Some("bob"));
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    // The imported authentication key was outside the token once: `keys attest` refuses
    // to make an attestation for it (the platform would refuse one too: see
    // host/services/tests/keydepot.rs).
    let refused = rig
        .hsm
        .etee(["keys", "attest", "--key", "authentication", "--config"])
        .arg(&alice)
        .run();
    refused.code(2);
    assert!(
        refused.stderr.contains("cannot be attested") && refused.stderr.contains("CKA_LOCAL"),
        "{}",
        refused.stderr
    );

    // Both proofs were signed through Alice's custody core: on her token's chain.
    let run = rig
        .hsm
        .etee(["audit", "verify", "--json", "--tail", "20", "--config"])
        .arg(&alice)
        .run();
    run.code(0);
    let signatures = run.json()["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "SignPssSha256" && r["outcome"] == "success")
        .count();
    assert_eq!(signatures, 4, "two proofs and two attestations");
}

/// The administrative commands for a doctor known as a natural person (holder SSIN),
/// without serving: `etk register --also NIHII11=…` publishes the person's ETK under the
/// doctor's number too (zero-padded) and says so on the audit chain; `--also` is refused
/// for an institution's ETK and for another type than NIHII/NIHII11. `attributes set
/// --doctor` takes the doctor's NIHII11 number for such a holder (not its SSIN), and
/// refuses to guess it.
#[test]
fn a_doctor_known_by_its_ssin_is_administered_with_its_nihii11() {
    let dir = scratch();
    let world = dir.path().join("world");
    etee_e2e::etee(["platform", "pki"])
        .arg(&world)
        .args([
            "--institution",
            "alice:NIHII-HOSPITAL=71000436",
            "--institution",
            "dirk:SSIN=85010112345",
            "--tls-server",
            "localhost",
        ])
        .run()
        .code(0);
    let config = dir.path().join("platform.toml");
    std::fs::write(
        &config,
        "[platform]\nstore = \"platform.redb\"\ntls_certificate = \"world/tls-server.pem\"\n\
         tls_key = \"world/tls-server-key.pem\"\nclient_ca = [\"world/ca.pem\"]\n",
    )
    .unwrap();
    let platform = |args: &[&str]| {
        etee_e2e::etee(["platform"])
            .args(args)
            .arg("--config")
            .arg(&config)
    };
    let etk = |who: &str| world.join(format!("{who}.etk"));

    // Refused: an institution's ETK, another type (nothing registered by either).
    let out = platform(&["etk", "register", "--also", "NIHII=1234567"])
        .arg(etk("alice"))
        .run();
    out.code(1);
    assert!(out.stderr.contains("natural person"), "{}", out.stderr);
    let out = platform(&["etk", "register", "--also", "CBE=0406798006"])
        .arg(etk("dirk"))
        .run();
    out.code(1);
    assert!(out.stderr.contains("NIHII or NIHII11"), "{}", out.stderr);
    platform(&["etk", "register", "--also", "NIHII11"])
        .arg(etk("dirk"))
        .run()
        .code(2);

    let out = platform(&["etk", "register", "--also", "nihii11=9876543210"])
        .arg(etk("dirk"))
        .run();
    out.code(0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("SSIN=85010112345; also NIHII11=09876543210"),
        "{said}"
    );

    // --doctor: the number for a person, never its SSIN.
    let out = platform(&[
        "attributes",
        "set",
        "--holder",
        "SSIN=85010112345",
        "--doctor",
    ])
    .run();
    out.code(2);
    assert!(out.stderr.contains("NIHII11 number"), "{}", out.stderr);
    platform(&[
        "attributes",
        "set",
        "--holder",
        "SSIN=85010112345",
        "--doctor",
        "123456789012",
    ])
    .run()
    .code(2);
    platform(&[
        "attributes",
        "set",
        "--holder",
        "SSIN=85010112345",
        "--doctor",
        "9876543210",
    ])
    .run()
    .code(0);
    // A NIHII11 holder is its own number, as the demo sets it; set again, it is
    // already there: said, and no second event.
    platform(&[
        "attributes",
        "set",
        "--holder",
        "NIHII11=10203040506",
        "--doctor",
    ])
    .run()
    .code(0);
    let again = platform(&[
        "attributes",
        "set",
        "--holder",
        "NIHII11=10203040506",
        "--doctor",
    ])
    .run();
    again.code(0);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already (nothing changed"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let out = platform(&["attributes", "list", "--json"]).run();
    out.code(0);
    let list = out.json();
    let doctor = |value: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|h| h["value"] == value)
            .unwrap_or_else(|| panic!("{value}: {list}"))["attributes"][0]["value"]
            .clone()
    };
    assert_eq!(doctor("85010112345"), "09876543210", "{list}");
    assert_eq!(doctor("10203040506"), "10203040506", "{list}");

    // The registration's audit event names the extra identifier.
    let out = platform(&["audit", "--json"]).run();
    out.code(0);
    let report = out.json();
    let registered: Vec<&str> = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "etkdepot.register")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        registered,
        ["SSIN=85010112345; also NIHII11=09876543210"],
        "{report}"
    );
    let set: Vec<&str> = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "attributes.set")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        set,
        ["SSIN=85010112345", "NIHII11=10203040506"],
        "one event per change: {report}"
    );
}

/// `etk find` shows what is published under an identifier (with its SHA-256); `etk remove`
/// unpublishes by file or by SHA-256, on the audit chain; removing what is not published
/// is exit 1, a malformed digest a usage error.
#[test]
fn etks_are_found_and_removed_on_record() {
    let dir = scratch();
    let world = dir.path().join("world");
    etee_e2e::etee(["platform", "pki"])
        .arg(&world)
        .args([
            "--institution",
            "alice:NIHII-HOSPITAL=71000436",
            "--tls-server",
            "localhost",
        ])
        .run()
        .code(0);
    let config = dir.path().join("platform.toml");
    std::fs::write(
        &config,
        "[platform]\nstore = \"platform.redb\"\ntls_certificate = \"world/tls-server.pem\"\n\
         tls_key = \"world/tls-server-key.pem\"\nclient_ca = [\"world/ca.pem\"]\n",
    )
    .unwrap();
    let platform = |args: &[&str]| {
        etee_e2e::etee(["platform"])
            .args(args)
            .arg("--config")
            .arg(&config)
    };
    let alice = world.join("alice.etk");
    let find = |json: bool| {
        let mut args = vec!["etk", "find", "--identifier", "nihii-hospital=71000436"];
        if json {
            args.push("--json");
        }
        let out = platform(&args).run();
        out.code(0);
        String::from_utf8(out.stdout.clone()).unwrap()
    };
    platform(&["etk", "register"]).arg(&alice).run().code(0);
    let listed: serde_json::Value = serde_json::from_str(&find(true)).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["valid_now"], true);
    let digest = listed[0]["sha256"].as_str().unwrap().to_owned();
    assert!(find(false).contains(&digest));

    let out = platform(&["etk", "remove"]).arg(&alice).run();
    out.code(0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest));
    assert!(find(false).contains("no ETK published"), "{}", find(false));
    let again = platform(&["etk", "remove"]).arg(&alice).run();
    again.code(1);
    assert!(again.stderr.contains("not published"), "{}", again.stderr);

    platform(&["etk", "register"]).arg(&alice).run().code(0);
    platform(&["etk", "remove", "--digest", &digest])
        .run()
        .code(0);
    assert!(find(false).contains("no ETK published"));
    platform(&["etk", "remove", "--digest", "zz"]).run().code(2);
    platform(&["etk", "remove"]).run().code(2);

    let audit = platform(&["audit", "--json"]).run();
    audit.code(0);
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["intact"], true, "{report}");
    let removals: Vec<&serde_json::Value> = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "etkdepot.remove")
        .collect();
    assert_eq!(removals.len(), 2, "{report}");
    for removal in removals {
        // By file or by digest alike: the identifiers it was published under.
        assert_eq!(removal["subject"], digest.as_str(), "{removal}");
        assert_eq!(removal["detail"], "NIHII-HOSPITAL=71000436", "{removal}");
    }
}
