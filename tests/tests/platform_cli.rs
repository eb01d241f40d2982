//! `etee platform serve` as a real process, black-box: a world from `etee platform pki`,
//! KGSS with its keys (authentication and ETK born in a SoftHSM token, AES wrapping key), ETKs
//! registered and attributes set with `etee platform ...`, requests sealed and answers
//! opened with `etee seal` / `etee unseal`, HTTPS with curl.
//!
//! The flows: ETKDepot (SOAP and REST) finds Bob's ETK; Alice creates a key for "any
//! recognised pharmacy", which the store holds only wrapped by the token's AES key (read
//! back from the stopped platform's store); Bob (a recognised pharmacy) gets it, a doctor
//! does not; Alice (the holder) deletes it and then nobody gets it, and the store no longer
//! holds it; every wrap and unwrap is on the KGSS token's custody audit chain. Then the
//! platform is killed (SIGKILL) with key creations in flight and restarted: every key
//! whose creation was acknowledged is still served, and the store holds exactly the keys
//! the audit chain says were created. Both on the embedded store and on PostgreSQL (a
//! scratch database on the server of `ETEE_TEST_POSTGRES_URL`, which `scripts/test`
//! starts). On PostgreSQL also two platform processes sharing one database and KGSS's
//! token: what one instance wrote (keys, deletions, replay digests, audit events), the
//! other serves.

use base64::Engine as _;
use etee_e2e::{scratch, Output, SoftHsm};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// KGSS REST: a new key, a key.
const NEW_KEY: &str = "/etee/v1/kgss/keys";
const GET_KEY: &str = "/etee/v1/kgss/keys/retrieve";

struct Platform {
    child: Child,
}

/// How a request sent with curl ended.
#[derive(Debug)]
enum Sent {
    /// An HTTP answer: status and body.
    Answered(u16, Vec<u8>),
    /// No answer. `code` is curl's exit code: 7, the connection was refused (nothing
    /// reached the platform); 35, the connection was cut during the TLS handshake; 52
    /// (closed with nothing answered), 56 (reset while receiving), 55 (failure sending),
    /// 16 or 92 (HTTP/2 connection or stream cut), the connection was cut once the request
    /// was going out. `uploaded`: the bytes of the request body curl had sent.
    Failed {
        code: i32,
        uploaded: usize,
        message: String,
    },
}

impl Platform {
    /// Stops it with SIGTERM and asserts a clean exit within 20 s.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "still serving after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world (`etee platform pki`, KGSS's token, ETKs and attributes registered) and one
/// platform instance of it: its configuration and port ([`Rig::another_instance`] makes
/// another one of the same world and store).
struct Rig {
    dir: PathBuf,
    hsm: SoftHsm,
    /// The HSM configuration of this instance's KGSS custody core.
    kgss_hsm: PathBuf,
    config: PathBuf,
    port: u16,
    store: String,
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
/// `ETEE_E2E_STRICT=1`, and under `scripts/test` unless it runs without PostgreSQL).
fn scratch_postgres() -> Option<etee_store::scratch::ScratchDatabase> {
    etee_store::scratch::ScratchDatabase::for_tests(etee_testpki::skip::postgres_url())
}

/// The `[custody]` table of a KGSS HSM configuration whose chain is `audit_file`.
fn kgss_custody(audit_file: &str) -> String {
    format!("[custody]\naudit_file = \"{audit_file}\"\n")
}

/// Writes `dir/NAME`, a platform configuration listening on `port`, keeping its data in
/// `store`, KGSS's keys in the token of the HSM configuration `kgss_hsm` (a file of `dir`).
fn write_platform_config(
    dir: &Path,
    name: &str,
    port: u16,
    store: &str,
    kgss_hsm: &str,
) -> PathBuf {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "[platform]\nlisten = \"127.0.0.1:{port}\"\nstore = \"{store}\"\n\
             tls_certificate = \"world/tls-server.pem\"\ntls_key = \"world/tls-server-key.pem\"\n\
             client_ca = [\"world/ca.pem\"]\n\n[kgss]\nhsm = \"{kgss_hsm}\"\n"
        ),
    )
    .unwrap();
    config
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
        let kgss_hsm = hsm.token_config("kgss", "e2e-kgss", &kgss_custody("kgss-audit.log"));
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
        let config = write_platform_config(dir, "platform.toml", port, store, "kgss.toml");
        let rig = Rig {
            dir: dir.to_path_buf(),
            hsm,
            kgss_hsm,
            config,
            port,
            store: store.to_owned(),
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

    /// Another platform instance of this world, called `name`: its own configuration and
    /// listen port, the same store, and KGSS's keys in the same token (same SoftHSM2
    /// configuration, token label, PIN and wrapping key) used through a custody core of its
    /// own, whose audit chain is a file of its own: a chain file is held (locked) by one
    /// core at a time, so two running instances cannot share one.
    fn another_instance(&self, name: &str) -> Rig {
        let shared = std::fs::read_to_string(&self.kgss_hsm).unwrap();
        let own_chain = kgss_custody(&format!("{name}-kgss-audit.log"));
        let kgss = shared.replace(&kgss_custody("kgss-audit.log"), &own_chain);
        assert!(kgss.contains(&own_chain), "{kgss}");
        let kgss_name = format!("{name}-kgss.toml");
        let kgss_hsm = self.dir.join(&kgss_name);
        std::fs::write(&kgss_hsm, kgss).unwrap();
        let port = std::iter::repeat_with(free_port)
            .find(|p| *p != self.port)
            .unwrap();
        let config = write_platform_config(
            &self.dir,
            &format!("{name}-platform.toml"),
            port,
            &self.store,
            &kgss_name,
        );
        Rig {
            dir: self.dir.clone(),
            hsm: self.hsm.clone(),
            kgss_hsm,
            config,
            port,
            store: self.store.clone(),
            password: self.password.clone(),
        }
    }

    fn world(&self, name: &str) -> PathBuf {
        self.dir.join("world").join(name)
    }

    fn on_postgres(&self) -> bool {
        self.store.starts_with("postgres://") || self.store.starts_with("postgresql://")
    }

    /// The embedded store's file (relative to the configuration's directory).
    fn store_file(&self) -> PathBuf {
        assert!(!self.on_postgres());
        self.dir.join(&self.store)
    }

    /// The platform's store, opened by this process as the platform opens it. The platform
    /// must be stopped: an embedded store is one process's at a time.
    fn open_store(&self) -> Arc<dyn etee_store::Store> {
        let location = if self.on_postgres() {
            self.store.clone()
        } else {
            self.store_file().display().to_string()
        };
        etee_store::open(&location)
            .unwrap_or_else(|e| panic!("opening the store {location} (platform stopped?): {e}"))
    }

    /// `TOOL URL ARGS` (psql, pg_dump) on the PostgreSQL store: its standard output, or
    /// `None` after a skip (a failure under `ETEE_E2E_STRICT=1`) when the tool is missing.
    fn pg_tool(&self, tool: &str, args: &[&str]) -> Option<Vec<u8>> {
        let out = match Command::new(tool)
            .args(args)
            .arg(&self.store)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                etee_e2e::skip(&format!("{tool} (PostgreSQL's client) cannot run: {e}"));
                return None;
            }
        };
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
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
        self.serve_with(Stdio::inherit())
    }

    /// [`Rig::serve`], its log (standard error) passed on line by line, and
    /// [`Event::KeyStored`] sent to `events` at each line of a `kgss.create` audit event.
    fn serve_watched(&self, events: mpsc::Sender<Event>) -> Platform {
        let mut platform = self.serve_with(Stdio::piped());
        let log = std::io::BufReader::new(platform.child.stderr.take().unwrap());
        // Not joined: it ends when the platform (the pipe's writer) does.
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in log.lines().map_while(Result::ok) {
                eprintln!("{line}");
                if line.contains("\"kgss.create\"") {
                    let _ = events.send(Event::KeyStored);
                }
            }
        });
        platform
    }

    fn serve_with(&self, stderr: Stdio) -> Platform {
        let child = Command::new(etee_e2e::etee_bin())
            .args(["platform", "serve", "--config"])
            .arg(&self.config)
            .env("SOFTHSM2_CONF", &self.hsm.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
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
        match self.send(method, path, body, as_) {
            Sent::Answered(status, body) => (status, body),
            Sent::Failed { message, .. } => {
                eprintln!("curl: {message}");
                (0, Vec::new())
            }
        }
    }

    /// [`Rig::curl`], telling how a request without an answer ended.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        as_: Option<&str>,
    ) -> Sent {
        let out_file = self.dir.join(format!("curl-{}.out", etee_e2e::unique()));
        let mut cmd = Command::new("curl");
        // A bound, so that a platform that never answers fails the test, not hangs it.
        cmd.args(["-sS", "--max-time", "120", "-X", method, "--cacert"])
            .arg(self.world("ca.pem"))
            .args(["-o"])
            .arg(&out_file)
            // Written also when the transfer fails (status 000).
            .args(["-w", "%{http_code} %{size_upload}"]);
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
        let written = String::from_utf8_lossy(&out.stdout);
        let mut written = written.split_whitespace();
        let status = written.next().unwrap_or("");
        let uploaded = written.next().and_then(|n| n.parse().ok());
        match out.status.code() {
            Some(0) => Sent::Answered(
                status
                    .parse()
                    .unwrap_or_else(|_| panic!("curl wrote {status:?}")),
                std::fs::read(&out_file).unwrap_or_default(),
            ),
            code => Sent::Failed {
                code: code.unwrap_or_else(|| panic!("curl killed: {}", out.status)),
                uploaded: uploaded.unwrap_or_else(|| panic!("curl wrote {:?}", out.stdout)),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            },
        }
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

    /// `from`'s sealed `GetNewKey` request: a key for recognised pharmacies.
    fn new_key_request(&self, from: &str) -> Vec<u8> {
        let content = format!(
            r#"<GetNewKeyRequestContent xmlns="urn:be:fgov:ehealth:etee:kgss:1_0:protocol"><AllowedReader><Namespace>urn:be:fgov:certified-namespace:ehealth</Namespace><Name>urn:be:fgov:ehealth:1.0:pharmacy:nihii-number:recognisedpharmacy:boolean</Name><Value>true</Value></AllowedReader><ETK>{}</ETK></GetNewKeyRequestContent>"#,
            B64.encode(std::fs::read(self.world(&format!("{from}.etk"))).unwrap())
        );
        self.seal(from, "kgss", content.as_bytes())
    }

    fn new_key(&self, from: &str) -> (u16, Value) {
        self.kgss_rest(NEW_KEY, &self.new_key_request(from), None)
    }

    /// `who`'s sealed `GetKey` request for `key_id` (Base64).
    fn get_key_request(&self, who: &str, key_id: &str) -> Vec<u8> {
        let content = format!(
            r#"<GetKeyRequestContent xmlns="urn:be:fgov:ehealth:etee:kgss:1_0:protocol"><KeyIdentifier>{key_id}</KeyIdentifier><ETK>{}</ETK></GetKeyRequestContent>"#,
            B64.encode(std::fs::read(self.world(&format!("{who}.etk"))).unwrap())
        );
        self.seal(who, "kgss", content.as_bytes())
    }

    fn get_key(&self, who: &str, key_id: &str) -> (u16, Value) {
        self.kgss_rest(GET_KEY, &self.get_key_request(who, key_id), None)
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

/// The REST path of a KGSS key (its deletion's), from its id in Base64.
fn key_path(key_id: &str) -> String {
    format!(
        "{NEW_KEY}/{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(B64.decode(key_id).unwrap())
    )
}

/// `field` of each event of `action` in the tail of an `etee platform audit --json` report.
fn field_of_events<'a>(report: &'a Value, action: &str, field: &str) -> Vec<&'a str> {
    report["tail"]
        .as_array()
        .unwrap_or_else(|| panic!("no tail: {report}"))
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field}: {e}"))
        })
        .collect()
}

fn sealed_response(v: &Value) -> Vec<u8> {
    B64.decode(v["sealedResponse"].as_str().unwrap()).unwrap()
}

/// `f` of each of `items`, on four threads (each call runs `etee` or curl: processes that
/// mostly wait), in the order of `items`.
fn in_parallel<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let result = f(item);
                done.lock().unwrap().push((i, result));
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, result)| result).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `etee platform kgss list --json` with `args`: the keys listed.
fn kgss_listing(rig: &Rig, args: &[&str]) -> Vec<Value> {
    let run = rig.platform(["kgss", "list", "--json"]).args(args).run();
    run.code(0);
    run.json().as_array().expect("a JSON array").clone()
}

/// `etee platform kgss list` with `args`, as text.
fn kgss_listing_text(rig: &Rig, args: &[&str]) -> String {
    let run = rig.platform(["kgss", "list"]).args(args).run();
    run.code(0);
    String::from_utf8(run.stdout).unwrap()
}

/// A KGSS key id in Base64 (as the protocol carries it) as the store keys it.
fn store_id(key_id: &str) -> [u8; 16] {
    B64.decode(key_id)
        .unwrap()
        .try_into()
        .unwrap_or_else(|id| panic!("key id {key_id}: {} bytes", Vec::len(&id)))
}

/// The ids (hex) of every KGSS key the (stopped) platform's store holds, as `etee platform
/// kgss list` shows them.
fn stored_kgss_ids(rig: &Rig) -> BTreeSet<String> {
    kgss_listing(rig, &[])
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that KGSS key `key_id` (Base64), whose bytes are `key` (Base64), is in the
/// (stopped) platform's store only wrapped by the KGSS token's AES key: its row holds an
/// RFC 3394 wrap, and nothing the store keeps holds the key in clear.
fn assert_wrapped_at_rest(rig: &Rig, key_id: &str, key: &str) {
    let key_bytes = B64.decode(key).unwrap();
    let row = rig
        .open_store()
        .get_kgss_key(&store_id(key_id))
        .unwrap()
        .unwrap_or_else(|| panic!("key {key_id} is not in the store"));
    // The token's AES key (the `kgss-wrap` profile's CKA_ID), not a key in memory.
    assert_eq!(row.wrapping_key_label, "kgss-wrap", "{row:?}");
    assert_eq!(
        (row.creator.id_type.as_str(), row.creator.value.as_str()),
        ("NIHII-HOSPITAL", "71000436"),
        "{row:?}"
    );
    // RFC 3394 key wrap of the key (16 bytes) followed by its 16-byte binding (its id,
    // creator and reader conditions: host/platform/src/kgss.rs, `wrap_bound`): 8 bytes
    // more than the 32 wrapped.
    assert_eq!(row.wrapped_key.len(), 16 + 16 + 8, "{row:?}");
    assert!(
        !contains(&row.wrapped_key, &key_bytes),
        "the wrapped key contains the key"
    );
    // Everything the store keeps, as bytes: the redb file, or a dump of every row of the
    // PostgreSQL database.
    let (what, at_rest) = if rig.on_postgres() {
        let Some(dump) = rig.pg_tool("pg_dump", &["--data-only", "--no-owner"]) else {
            return;
        };
        ("pg_dump of the database", dump)
    } else {
        ("the store file", std::fs::read(rig.store_file()).unwrap())
    };
    // The right place to look: the wrapped key is there (a redb row keeps it in hex, pg_dump
    // shows a bytea in hex).
    assert!(
        contains(&at_rest, hex::encode(&row.wrapped_key).as_bytes()),
        "the wrapped key is not in {what}"
    );
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key_bytes);
    for (form, needle) in [
        ("raw", key_bytes.clone()),
        ("Base64", key.as_bytes().to_vec()),
        ("Base64url", url_safe.into_bytes()),
        ("hex", hex::encode(&key_bytes).into_bytes()),
        ("HEX", hex::encode_upper(&key_bytes).into_bytes()),
    ] {
        assert!(
            !contains(&at_rest, &needle),
            "the key in clear ({form}) is in {what}"
        );
    }
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

    // At rest, the key is only wrapped by the KGSS token's key: read from the store with
    // the platform stopped (an embedded store is one process's at a time), then served again.
    platform.stop();
    assert_wrapped_at_rest(&rig, &key_id, &key);
    let listed = kgss_listing(&rig, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let entry = &listed[0];
    assert_eq!(entry["keyId"], key_id.as_str());
    assert_eq!(entry["id"], hex::encode(B64.decode(&key_id).unwrap()));
    assert_eq!(
        entry["creator"],
        serde_json::json!({"type": "NIHII-HOSPITAL", "value": "71000436", "applicationId": null})
    );
    assert_eq!(
        entry["allowedReaders"],
        serde_json::json!([{
            "namespace": "urn:be:fgov:certified-namespace:ehealth",
            "name": "urn:be:fgov:ehealth:1.0:pharmacy:nihii-number:recognisedpharmacy:boolean",
            "values": ["true"],
        }])
    );
    assert_eq!(entry["excludedReaders"], serde_json::json!([]));
    assert_eq!(entry["wrappingKey"], "kgss-wrap");
    let text = kgss_listing_text(&rig, &[]);
    assert!(
        text.contains("by NIHII-HOSPITAL=71000436, no deletion strategy\n  readers: recognised pharmacy\n  excluded: none\n1 KGSS key stored"),
        "{text}"
    );
    // Neither form shows the key, even wrapped.
    let stored = rig
        .open_store()
        .get_kgss_key(&store_id(&key_id))
        .unwrap()
        .unwrap();
    for shown in [text.clone(), serde_json::to_string(&listed).unwrap()] {
        assert!(!shown.contains(&key), "{shown}");
        assert!(
            !shown.contains(&hex::encode(&stored.wrapped_key)),
            "{shown}"
        );
        assert!(!shown.contains(&B64.encode(&stored.wrapped_key)), "{shown}");
    }
    assert!(kgss_listing(&rig, &["--creator", "nihii-pharmacy=27150201"]).is_empty());
    assert_eq!(
        kgss_listing(&rig, &["--creator", "NIHII-HOSPITAL=71000436"]).len(),
        1
    );
    let platform = rig.serve();
    if rig.on_postgres() {
        // A PostgreSQL store is read while the platform runs.
        assert_eq!(kgss_listing(&rig, &[]).len(), 1);
    } else {
        // An embedded store is the running platform's: the listing says so.
        let run = rig.platform(["kgss", "list"]).run();
        run.code(2);
        let said = &run.stderr;
        assert!(said.contains("in use by another process"), "{said}");
    }

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
    let path = key_path(&key_id);
    assert_eq!(rig.curl("DELETE", &path, None, Some("bob")).0, 403);
    assert_eq!(rig.curl("DELETE", &path, None, None).0, 401);
    assert_eq!(rig.curl("DELETE", &path, None, Some("alice")).0, 204);
    assert_eq!(rig.get_key("bob", &key_id).0, 404);

    // Stopped with SIGTERM: a clean exit. The deleted key is no longer in the store.
    platform.stop();
    assert!(
        rig.open_store()
            .get_kgss_key(&store_id(&key_id))
            .unwrap()
            .is_none(),
        "deleted key {key_id} still stored"
    );
    assert!(kgss_listing(&rig, &[]).is_empty());
    assert_eq!(kgss_listing_text(&rig, &[]), "no KGSS key stored\n");

    // Every wrap and unwrap went through the KGSS token's custody core, on its chain.
    let run = rig
        .hsm
        .etee(["audit", "verify", "--json", "--tail", "100", "--config"])
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

/// Concurrent senders of `GetNewKey` requests in [`killed_during_key_creation`].
const SENDERS: usize = 4;
/// Acknowledged key creations after which the platform is killed (each attempt).
const ACKS_BEFORE_KILL: usize = 6;
/// Kills tried until one catches a request inside `GetNewKey`.
const KILL_ATTEMPTS: usize = 4;
/// `GetNewKey` requests sealed before the first kill (enough for every attempt).
const SEALED_REQUESTS: usize = 40;

/// The platform killed (SIGKILL) in the middle of `GetNewKey`s and restarted. Checked after
/// every kill, on the store of the dead platform: the keys it holds are exactly those named
/// by `kgss.create` events on the platform's audit chain (no key without its event, no
/// event without its key: nothing half-written), among them every acknowledged key, each
/// wrapped by the token's key. At the end, restarted: every stored key is released to an
/// allowed reader (it unwraps), an acknowledged one with the bytes its creator got; the
/// chains are intact.
///
/// The requests are sealed first (`etee seal` is slower than the platform), then sent by
/// [`SENDERS`] senders at once, each sending its next request as soon as it has an answer;
/// after [`ACKS_BEFORE_KILL`] acknowledgements the platform is killed, at the next key it
/// logs as stored (its answer not yet sealed), while the senders keep going.
/// A request is cut in flight when curl had sent it whole (its body uploaded) and then lost
/// the connection without an answer (curl 52, 56, or HTTP/2's 16 and 92; a refused
/// connection is 7, a connection cut before the request went out 35 or 55). Sent again to
/// the restarted platform, a request cut in flight is a replay when the killed platform had
/// recorded it (`GetNewKey`'s first write, once the request is opened and checked): it was
/// inside `GetNewKey`. A kill counts when it caught one there; else it is tried again, up
/// to [`KILL_ATTEMPTS`] times, on the same store, with the requests that never reached the
/// platform.
fn killed_during_key_creation(rig: Rig) {
    let bodies: Vec<Vec<u8>> = in_parallel(&[(); SEALED_REQUESTS], |_| {
        let sealed = rig.new_key_request("alice");
        serde_json::json!({ "sealedRequest": B64.encode(sealed) })
            .to_string()
            .into_bytes()
    });
    let new_key = |request: usize| {
        let body = Some(("application/json", bodies[request].as_slice()));
        rig.send("POST", NEW_KEY, body, None)
    };
    let mut unsent: Vec<usize> = (0..bodies.len()).collect();
    // The 201 answers.
    let mut acknowledged: Vec<Value> = Vec::new();
    // Keys created before the current attempt.
    let mut known = 0;
    let mut caught = 0;
    let mut attempts = 0;
    while caught == 0 {
        attempts += 1;
        assert!(
            attempts <= KILL_ATTEMPTS,
            "{KILL_ATTEMPTS} kills, none caught a request inside GetNewKey"
        );
        assert!(
            unsent.len() >= ACKS_BEFORE_KILL + SENDERS,
            "{} sealed requests left",
            unsent.len()
        );
        let outcomes = stream_then_kill(&rig, &unsent, new_key);
        let sent: HashSet<usize> = outcomes.iter().map(|(request, _)| *request).collect();
        unsent.retain(|request| !sent.contains(request));
        let (mut acks, mut refused, mut cut_early, mut in_flight) = (0, 0, 0, Vec::new());
        for (request, outcome) in outcomes {
            match outcome {
                Sent::Answered(201, body) => {
                    acks += 1;
                    acknowledged.push(serde_json::from_slice(&body).unwrap());
                }
                Sent::Answered(status, body) => panic!(
                    "GetNewKey answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
                // Never reached the platform: for the next attempt.
                Sent::Failed { code: 7, .. } => {
                    refused += 1;
                    unsent.push(request);
                }
                Sent::Failed {
                    code,
                    uploaded,
                    message,
                } => {
                    if uploaded == bodies[request].len() && [52, 56, 16, 92].contains(&code) {
                        in_flight.push(request);
                    } else {
                        cut_early += 1;
                    }
                    eprintln!(
                        "request {request} cut ({uploaded} of {} bytes sent): {message}",
                        bodies[request].len()
                    );
                }
            }
        }

        // The dead platform's store: what its chain says was created, and nothing else.
        let created = check_created_keys(&rig, &acknowledged).len();
        assert!(created >= known + acks, "keys gone after a kill");
        let unanswered = created - known - acks;
        known = created;
        assert!(
            unanswered <= in_flight.len(),
            "{unanswered} keys created without an answer, {} requests cut in flight",
            in_flight.len()
        );

        // Restarted: the requests cut in flight sent again.
        let platform = rig.serve();
        let again = in_parallel(&in_flight, |&request| new_key(request));
        platform.stop();
        let mut recorded = 0;
        for (request, outcome) in in_flight.iter().zip(again) {
            match outcome {
                Sent::Answered(409, _) => recorded += 1,
                // Not recorded: a new key now.
                Sent::Answered(201, body) => {
                    acknowledged.push(serde_json::from_slice(&body).unwrap());
                    known += 1;
                }
                other => panic!("request {request} sent again: {other:?}"),
            }
        }
        assert!(
            unanswered <= recorded,
            "{unanswered} keys created without an answer, {recorded} of their requests recorded"
        );
        eprintln!(
            "kill {attempts}: {acks} keys acknowledged; {} requests cut in flight, {recorded} \
             of them inside GetNewKey ({unanswered} after their key was stored); {cut_early} \
             cut before they went out; {refused} refused after the kill",
            in_flight.len()
        );
        caught += recorded;
    }

    let created: Vec<String> = check_created_keys(&rig, &acknowledged)
        .into_iter()
        .collect();
    assert_eq!(created.len(), known);
    // Each acknowledged key as its creator has it: the id (the answer's keyId too) and
    // the bytes, from the sealed answer.
    let acknowledged: HashMap<String, String> = in_parallel(&acknowledged, |created| {
        let answer = rig.unseal("alice", &sealed_response(created));
        let key_id = element(&answer, "NewKeyIdentifier");
        assert_eq!(created["keyId"], key_id.as_str(), "{created}");
        (
            hex::encode(B64.decode(&key_id).unwrap()),
            element(&answer, "NewKey"),
        )
    })
    .into_iter()
    .collect();
    eprintln!(
        "{attempts} kill(s); {} keys acknowledged, {} stored",
        acknowledged.len(),
        created.len()
    );

    // Restarted: every stored key is released to Bob (a recognised pharmacy), so it
    // unwraps in the token with its binding intact; an acknowledged one with the bytes its
    // creator got.
    let platform = rig.serve();
    in_parallel(&created, |id| {
        let key_id = B64.encode(hex::decode(id).unwrap());
        let (status, got) = rig.get_key("bob", &key_id);
        assert_eq!(status, 200, "stored key {id} not served: {got}");
        let key = element(&rig.unseal("bob", &sealed_response(&got)), "Key");
        assert_eq!(B64.decode(&key).unwrap().len(), 16, "key {id}");
        if let Some(acknowledged) = acknowledged.get(id) {
            assert_eq!(
                &key, acknowledged,
                "key {id}: not the bytes its creator got"
            );
        }
    });
    platform.stop();
    // The custody chain of the KGSS token survived too.
    let run = rig
        .hsm
        .etee(["audit", "verify", "--json", "--config"])
        .arg(&rig.kgss_hsm)
        .run();
    run.code(0);
    assert_eq!(run.json()["intact"], Value::Bool(true));
}

/// With the platform down (killed or stopped): the ids (hex) of the KGSS keys its audit
/// chain says were created (read by `etee platform audit`, which repairs a store left by a
/// killed platform as the platform does at start), checked to be exactly the keys the
/// store holds, each wrapped by the token's key, and to include the keys of the answers
/// `acknowledged` (201 answers to `GetNewKey`, whose `keyId` is the key's id).
fn check_created_keys(rig: &Rig, acknowledged: &[Value]) -> BTreeSet<String> {
    let run = rig
        .platform([
            "audit",
            "--json",
            "--tail",
            "100000",
            "--action",
            "kgss.create",
        ])
        .run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true), "{report}");
    let events = report["tail"].as_array().unwrap();
    assert_eq!(report["matched"].as_u64(), Some(events.len() as u64));
    for event in events {
        assert_eq!(event["outcome"], "created", "{event}");
        assert_eq!(event["actor"], "NIHII-HOSPITAL=71000436", "{event}");
    }
    let created: BTreeSet<String> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created.len(), events.len(), "a key created twice: {report}");
    for answer in acknowledged {
        let id = hex::encode(B64.decode(answer["keyId"].as_str().unwrap()).unwrap());
        assert!(
            created.contains(&id),
            "acknowledged key {id}: no kgss.create event"
        );
    }
    let store = rig.open_store();
    for id in &created {
        let row = store
            .get_kgss_key(&hex::decode(id).unwrap().try_into().unwrap())
            .unwrap()
            .unwrap_or_else(|| panic!("key {id}: a kgss.create event, not in the store"));
        assert_eq!(row.wrapping_key_label, "kgss-wrap", "{row:?}");
        assert_eq!(row.wrapped_key.len(), 16 + 16 + 8, "{row:?}");
    }
    // An embedded store admits one process at a time.
    drop(store);
    let stored = stored_kgss_ids(rig);
    assert_eq!(
        stored,
        created,
        "stored without a kgss.create event: {:?}",
        stored.difference(&created).collect::<Vec<_>>(),
    );
    created
}

/// What [`stream_then_kill`] waits for.
enum Event {
    /// A request ended (its index), how.
    Ended(usize, Sent),
    /// The platform logged a key's `kgss.create` audit event: written once the key and its
    /// event are committed, before the answer is sealed and sent.
    KeyStored,
    /// A sender stopped.
    SenderDone,
}

/// Serves the platform and sends the sealed `GetNewKey` requests `order` (with `new_key`)
/// from [`SENDERS`] senders, each sending its next one as soon as it has an answer; kills
/// the platform (SIGKILL) at the first key stored (by its log) once [`ACKS_BEFORE_KILL`]
/// keys were acknowledged, while the senders go on until each is refused a connection.
/// (Should the log no longer show key creations, at the acknowledgement that makes
/// [`ACKS_BEFORE_KILL`] + 2 × [`SENDERS`].) How each request sent ended, in the order
/// they ended.
fn stream_then_kill(
    rig: &Rig,
    order: &[usize],
    new_key: impl Fn(usize) -> Sent + Sync,
) -> Vec<(usize, Sent)> {
    let (tx, rx) = mpsc::channel();
    let mut platform = rig.serve_watched(tx.clone());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..SENDERS {
            let (tx, next, new_key) = (tx.clone(), &next, &new_key);
            s.spawn(move || {
                while let Some(&request) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let sent = new_key(request);
                    let refused = matches!(sent, Sent::Failed { code: 7, .. });
                    tx.send(Event::Ended(request, sent)).unwrap();
                    if refused {
                        break;
                    }
                }
                tx.send(Event::SenderDone).unwrap();
            });
        }
        let (mut outcomes, mut acks, mut done, mut killed) = (Vec::new(), 0, 0, None);
        while done < SENDERS {
            let event = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("no request ended in 60 s");
            let trigger = match event {
                Event::Ended(request, sent) => {
                    if matches!(sent, Sent::Answered(201, _)) {
                        acks += 1;
                    }
                    outcomes.push((request, sent));
                    (acks >= ACKS_BEFORE_KILL + 2 * SENDERS)
                        .then_some("an acknowledgement (no key creation in the log)")
                }
                Event::KeyStored => (acks >= ACKS_BEFORE_KILL).then_some("a key stored"),
                Event::SenderDone => {
                    done += 1;
                    None
                }
            };
            if let (Some(trigger), None) = (trigger, killed) {
                platform.child.kill().unwrap(); // SIGKILL
                let status = platform.child.wait().unwrap();
                assert_eq!(status.signal(), Some(9), "not ended by the kill: {status}");
                eprintln!("killed after {acks} acknowledgements, at {trigger}");
                killed = Some(trigger);
            }
        }
        assert!(
            killed.is_some(),
            "the requests ran out after {acks} acknowledgements: {outcomes:?}"
        );
        outcomes
    })
}

/// Two `etee platform serve` processes on one PostgreSQL database, as docs/platform.md
/// describes instances behind a load balancer: what one instance wrote, the other serves.
///
/// Instance A is the rig's; B ([`Rig::another_instance`]) has its own listen port and
/// configuration, the same `postgres://` store, and KGSS's keys in the same SoftHSM2 token
/// (same `SOFTHSM2_CONF`, token label, PIN and wrapping key: SoftHSM2 lets several
/// processes use one token). Each uses the token through a custody core of its own, with
/// an audit chain file of its own: a core holds its chain file locked, so two running
/// instances cannot share one (each token-side operation is on the chain of the instance
/// that made it).
///
/// A key created through A is served by B to an allowed reader (the same key bytes as the
/// creator got) and refused by both to a reader who is not allowed; a sealed request
/// served by one instance is refused by the other as a replay (`GetKey`, granted or
/// denied, and `GetNewKey`: the replay table is in the store); the holder deletes the key
/// through B and A no longer knows it; keys created through both at once are all readable
/// through the other; ETK lookups answer the same on both, also right after an ETK is
/// unpublished; and the platform's audit chain, appended to by both, verifies as one
/// gap-free chain, as does each instance's custody chain.
#[test]
fn two_platform_instances_share_one_postgresql_database() {
    let Some(db) = scratch_postgres() else { return };
    let tmp = scratch();
    let a = Rig::with_store(tmp.path(), db.url());
    let b = a.another_instance("b");
    let platform_a = a.serve();
    let platform_b = b.serve();

    // ETK lookups (REST): the same answer from both, Bob's ETK byte for byte; an
    // identifier nobody has is 404 on both.
    let lookup = |rig: &Rig, query: &str| {
        let (status, body) = rig.curl("GET", &format!("/etee/v1/etks?{query}"), None, None);
        let json: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{query}: {e}: {}", String::from_utf8_lossy(&body)));
        (status, json)
    };
    let same_lookup = |query: &str| {
        let (from_a, from_b) = (lookup(&a, query), lookup(&b, query));
        assert_eq!(from_a.0, from_b.0, "{query}: A's status, B's");
        assert_eq!(from_a.1, from_b.1, "{query}: A's answer, B's");
        from_a
    };
    let (status, list) = same_lookup("identifier=27150201&type=NIHII-PHARMACY");
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        B64.decode(list[0]["etk"].as_str().unwrap()).unwrap(),
        std::fs::read(a.world("bob.etk")).unwrap()
    );
    let (status, list) = same_lookup("identifier=71000436&type=NIHII-HOSPITAL");
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        B64.decode(list[0]["etk"].as_str().unwrap()).unwrap(),
        std::fs::read(a.world("alice.etk")).unwrap()
    );
    let (status, problem) = same_lookup("identifier=99999999&type=NIHII-PHARMACY");
    assert_eq!(status, 404, "{problem}");

    // Alice creates a key through A; Bob (a recognised pharmacy) gets it through B, the
    // same bytes; the doctor is refused by B, as by A.
    let (status, created) = a.new_key("alice");
    assert_eq!(status, 201, "{created}");
    let answer = a.unseal("alice", &sealed_response(&created));
    let key_id = element(&answer, "NewKeyIdentifier");
    let key = element(&answer, "NewKey");
    assert_eq!(B64.decode(&key).unwrap().len(), 16);
    let (status, got) = b.get_key("bob", &key_id);
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        element(&b.unseal("bob", &sealed_response(&got)), "Key"),
        key
    );
    for rig in [&b, &a] {
        let (status, refused) = rig.get_key("doctor", &key_id);
        assert_eq!(status, 403, "{refused}");
        assert_eq!(refused["title"], "KGSS_ACCESS_DENIED", "{refused}");
    }

    // Replays: one sealed request, served by one instance, is refused by the other (and
    // again by the first).
    let replayed = |first: &Rig, then: &Rig, path: &str, sealed: &[u8], status: u16| {
        let (got, answer) = first.kgss_rest(path, sealed, None);
        assert_eq!(got, status, "{answer}");
        for rig in [then, first] {
            let (got, refused) = rig.kgss_rest(path, sealed, None);
            assert_eq!(got, 409, "{refused}");
            assert_eq!(refused["title"], "KGSS_REPLAYED_REQUEST", "{refused}");
        }
        answer
    };
    // Bob's GetKey, granted by A, then sent to B.
    let served = replayed(&a, &b, GET_KEY, &a.get_key_request("bob", &key_id), 200);
    assert_eq!(
        element(&a.unseal("bob", &sealed_response(&served)), "Key"),
        key
    );
    // The doctor's GetKey, denied by B (a decision, remembered), then sent to A.
    let denied = replayed(&b, &a, GET_KEY, &b.get_key_request("doctor", &key_id), 403);
    assert_eq!(denied["title"], "KGSS_ACCESS_DENIED", "{denied}");
    // Alice's GetNewKey, served by A, then sent to B: no second key.
    let again = replayed(&a, &b, NEW_KEY, &a.new_key_request("alice"), 201);
    assert!(again["keyId"].is_string(), "{again}");

    // The holder deletes the key through B (Bob, who is not, is refused there); then A
    // does not know it: not released, not deleted again.
    let path = key_path(&key_id);
    assert_eq!(b.curl("DELETE", &path, None, Some("bob")).0, 403);
    assert_eq!(b.curl("DELETE", &path, None, Some("alice")).0, 204);
    for rig in [&a, &b] {
        let (status, refused) = rig.get_key("bob", &key_id);
        assert_eq!(status, 404, "{refused}");
        assert_eq!(refused["title"], "KGSS_UNKNOWN_KEY", "{refused}");
    }
    let (status, body) = a.curl("DELETE", &path, None, Some("alice"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // Keys created through both at once (their events appended to one chain by two
    // processes): every one acknowledged, and each readable through the other instance.
    let created: Vec<(bool, String)> = std::thread::scope(|s| {
        let creating = [(&a, true), (&b, false)].map(|(rig, through_a)| {
            s.spawn(move || {
                (0..4)
                    .map(|_| {
                        let (status, created) = rig.new_key("alice");
                        assert_eq!(status, 201, "{created}");
                        let answer = rig.unseal("alice", &sealed_response(&created));
                        (through_a, element(&answer, "NewKeyIdentifier"))
                    })
                    .collect::<Vec<_>>()
            })
        });
        creating
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    for (through_a, id) in &created {
        let other = if *through_a { &b } else { &a };
        let (status, got) = other.get_key("bob", id);
        assert_eq!(status, 200, "key {id}: {got}");
    }

    // An ETK unpublished with the administrative command while both run: neither answers
    // it any more.
    let doctor = "identifier=10203040506&type=NIHII11";
    assert_eq!(same_lookup(doctor).0, 200);
    a.platform(["etk", "remove"])
        .arg(a.world("doctor.etk"))
        .run()
        .code(0);
    assert_eq!(same_lookup(doctor).0, 404);

    platform_a.stop();
    platform_b.stop();

    // The platform's chain in the shared store: intact, one sequence without gaps, and the
    // key's story told by both instances in the order it happened (replays left no event;
    // the refusals of an unknown key, before any decision, neither).
    let run = a.platform(["audit", "--json", "--tail", "1000"]).run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true), "{report}");
    assert!(report["break"].is_null(), "{report}");
    let tail = report["tail"].as_array().unwrap();
    assert_eq!(
        report["events"].as_u64(),
        Some(tail.len() as u64),
        "{report}"
    );
    let sequences: Vec<u64> = tail
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=tail.len() as u64).collect::<Vec<_>>(),
        "{report}"
    );
    let hex_id = hex::encode(B64.decode(&key_id).unwrap());
    let story: Vec<(&str, &str)> = tail
        .iter()
        .filter(|e| e["subject"] == hex_id.as_str())
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        story,
        [
            ("kgss.create", "created"), // A
            ("kgss.read", "granted"),   // B, Bob
            ("kgss.read", "denied"),    // B, the doctor
            ("kgss.read", "denied"),    // A, the doctor
            ("kgss.read", "granted"),   // A, Bob's request replayed to B
            ("kgss.read", "denied"),    // B, the doctor's request replayed to A
            ("kgss.delete", "denied"),  // B, Bob
            ("kgss.delete", "deleted"), // B, Alice
        ],
        "{report}"
    );
    let creations = tail.iter().filter(|e| e["action"] == "kgss.create").count();
    assert_eq!(creations, 1 + 1 + created.len(), "{report}");

    // Each instance's custody chain is intact and holds its own token work: A wrapped the
    // first key, B unwrapped it for Bob.
    for (rig, operation) in [(&a, "WrapSecret"), (&b, "UnwrapSecret")] {
        let run = rig
            .hsm
            .etee(["audit", "verify", "--json", "--tail", "1000", "--config"])
            .arg(&rig.kgss_hsm)
            .run();
        run.code(0);
        let report = run.json();
        assert_eq!(report["intact"], Value::Bool(true), "{report}");
        assert!(
            report["tail"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["operation"] == operation && r["outcome"] == "success"),
            "{}: no {operation}: {report}",
            rig.kgss_hsm.display()
        );
    }
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
    // A number of the vocabulary given with --attribute: checked, and stored padded.
    let dentist = [
        "attributes",
        "set",
        "--holder",
        "SSIN=85010112346",
        "--attribute",
        "urn:be:fgov:certified-namespace:ehealth",
        "urn:be:fgov:person:ssin:ehealth:1.0:nihii:dentist:nihii11",
    ];
    let out = platform(&[&dentist[..], &["5x5"]].concat()).run();
    out.code(2);
    assert!(
        out.stderr.contains("not a NIHII11 number"),
        "{}",
        out.stderr
    );
    platform(&[&dentist[..], &["555"]].concat()).run().code(0);
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
    assert_eq!(doctor("85010112346"), "00000000555", "{list}");

    // The registration's audit event names the extra identifier.
    let out = platform(&["audit", "--json"]).run();
    out.code(0);
    let report = out.json();
    assert_eq!(
        field_of_events(&report, "etkdepot.register", "detail"),
        ["SSIN=85010112345; also NIHII11=09876543210"],
        "{report}"
    );
    assert_eq!(
        field_of_events(&report, "attributes.set", "subject"),
        [
            "SSIN=85010112345",
            "NIHII11=10203040506",
            "SSIN=85010112346"
        ],
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
    assert_eq!(listed[0]["readable"], true);
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
    // An ETK file is read within the inputs' bound (64 MiB), not whole.
    for command in ["register", "remove"] {
        let endless = platform(&["etk", command]).arg("/dev/zero").run();
        endless.code(2);
        assert!(
            endless.stderr.contains("larger than 64 MiB"),
            "{}",
            endless.stderr
        );
    }
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

/// `etee platform kgss list` pages through the store (1 000 keys a read): with more keys
/// than a page, every one is listed once, in id order, and `--creator` keeps a holder's.
#[test]
fn kgss_keys_are_listed_page_after_page() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("platform.toml");
    // The listing reads the store only: no certificate file is opened.
    std::fs::write(
        &config,
        "[platform]\nlisten = \"127.0.0.1:1\"\nstore = \"platform.redb\"\n\
         tls_certificate = \"absent.pem\"\ntls_key = \"absent-key.pem\"\n",
    )
    .unwrap();
    let list = |args: &[&str]| {
        let run = etee_e2e::etee(["platform", "kgss", "list", "--config"])
            .arg(&config)
            .args(args)
            .run();
        run.code(0);
        run
    };
    assert_eq!(list(&["--json"]).json(), serde_json::json!([]));

    const KEYS: usize = 2_345;
    let pharmacy = etee_store::Identifier::new("NIHII-PHARMACY", "27150201", None);
    let hospital = etee_store::Identifier::new("NIHII-HOSPITAL", "71000436", Some("KGSS"));
    let mut ids = BTreeSet::new();
    {
        let store = etee_store::open(dir.path().join("platform.redb").to_str().unwrap()).unwrap();
        for n in 0..KEYS {
            // Ids spread over the whole range, not in insertion order.
            let id: [u8; 16] = openssl::sha::sha256(&n.to_be_bytes())[..16]
                .try_into()
                .unwrap();
            store
                .insert_kgss_key(&etee_store::KgssKey {
                    id,
                    wrapped_key: vec![0x77; 40],
                    wrapping_key_label: "kgss-wrap".into(),
                    creator: if n % 5 == 0 { &pharmacy } else { &hospital }.clone(),
                    allowed_readers: vec![],
                    excluded_readers: vec![],
                    deletion_strategy: Some("holder".into()),
                    created_at: 1_765_000_000 + n as i64,
                })
                .unwrap();
            ids.insert(hex::encode(id));
        }
    }
    let listed = list(&["--json"]).json();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), KEYS, "each key once");
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "in id order");
    assert_eq!(
        listed
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        ids
    );

    let pharmacy_keys = list(&["--json", "--creator", "NIHII-PHARMACY=27150201"]).json();
    let pharmacy_keys = pharmacy_keys.as_array().unwrap();
    assert_eq!(pharmacy_keys.len(), KEYS.div_ceil(5));
    assert!(pharmacy_keys
        .iter()
        .all(|k| k["creator"]["value"] == "27150201" && k["deletionStrategy"] == "holder"));
    let text = String::from_utf8(
        list(&["--creator", "nihii-hospital=71000436"])
            .stdout
            .clone(),
    )
    .unwrap();
    assert_eq!(
        text.lines().last(),
        Some(
            format!(
                "{} of the {KEYS} stored KGSS keys created by NIHII-HOSPITAL=71000436",
                KEYS - KEYS.div_ceil(5)
            )
            .as_str()
        )
    );
    assert_eq!(
        text.matches("by NIHII-HOSPITAL=71000436 (KGSS), deletion strategy holder\n  readers: none\n  excluded: none\n").count(),
        KEYS - KEYS.div_ceil(5)
    );
    let wrapped = [0x77; 40];
    assert!(!text.contains(&hex::encode(wrapped)), "wrapped bytes shown");
    assert!(!text.contains(&B64.encode(wrapped)), "wrapped bytes shown");
}

/// A platform configuration whose store URL holds a database password is a secret: the
/// platform warns when group or others may read it (as of a PIN or key file), and says
/// nothing once it is 0600 or the URL has no password.
#[test]
fn a_configuration_holding_a_database_password_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let config = dir.path().join("platform.toml");
    let with_store = |store: &str, mode: u32| {
        std::fs::write(
            &config,
            format!(
                "[platform]\nstore = \"{store}\"\ntls_certificate = \"tls.pem\"\n\
                 tls_key = \"tls-key.pem\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        // The store cannot be reached (port 9): the warning comes before.
        let run = etee_e2e::etee(["platform", "audit", "--config"])
            .arg(&config)
            .run();
        assert_ne!(run.code, Some(0));
        run.stderr.clone()
    };
    let url = "postgres://etee:s3cret@127.0.0.1:9/etee";
    let said = with_store(url, 0o644);
    assert!(
        said.contains("holds a password") && said.contains("chmod 600"),
        "{said}"
    );
    assert!(
        !said.contains("s3cret"),
        "the password itself is never shown: {said}"
    );
    assert!(!with_store(url, 0o600).contains("holds a password"));
    assert!(!with_store("postgres://etee@127.0.0.1:9/etee", 0o644).contains("holds a password"));
}
