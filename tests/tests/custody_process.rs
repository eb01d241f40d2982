//! The custody core as a separate process (`etee custody serve`) against a real SoftHSM2
//! token: `etee seal|unseal --config` with `[custody] mode = "process"` (a configuration
//! whose PIN file does not even exist: only the server reads the PIN), and the server
//! SIGKILLed in the middle of a stream of requests, then restarted on the same audit file;
//! and stopped with SIGTERM in the middle of a stream: everything under way is answered,
//! the core is locked on record, the socket removed. The server's audit file switches to a
//! new segment every 4 KiB, so the chain is checked across segments.
//! The server's own peer check (`[custody] allowed_uids`, `SO_PEERCRED`) is tested with
//! clients running under other uids (copies of this test binary; needs root, else skipped).

use etee_e2e::{etee_bin, scratch, softhsm_module, Etee, SoftHsm, World};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LABEL: &str = "e2e-custody";

/// Records of the logins before the requests: `keys import`'s, then the server's and its
/// core's unlock, each a try (before the PIN reaches the token) and its outcome.
const LOGINS: u64 = 6;

/// A token with Bob's keys, a configuration for the server (with the PIN) and one for
/// the clients (mode "process", no PIN).
struct Rig {
    hsm: SoftHsm,
    server_config: PathBuf,
    client_config: PathBuf,
    socket: PathBuf,
}

impl Rig {
    fn new(dir: &Path, w: &World) -> Rig {
        Rig::with_custody(dir, w, "")
    }

    /// [`Rig::new`] with `extra` lines in the server's `[custody]` table.
    fn with_custody(dir: &Path, w: &World, extra: &str) -> Rig {
        let hsm = SoftHsm::new(dir);
        // Small audit segments: a stream of requests switches files many times, so that a
        // kill may land in a switch too.
        let server_config = hsm.token_config(
            "server",
            LABEL,
            &format!("[custody]\naudit_file = \"audit.log\"\naudit_segment_bytes = 4096\n{extra}"),
        );
        let client_config = dir.join("client.toml");
        std::fs::write(
            &client_config,
            format!(
                "[hsm]\nmodule = {:?}\ntoken_label = {LABEL:?}\npin_file = \"no-such.pin\"\n\
                 [custody]\naudit_file = \"audit.log\"\nmode = \"process\"\nsocket = \"custody.sock\"\n",
                softhsm_module().display().to_string()
            ),
        )
        .unwrap();
        let rig = Rig {
            hsm,
            server_config,
            client_config,
            socket: dir.join("custody.sock"),
        };
        rig.server(["hsm", "init"]).run().code(0);
        rig.server(["keys", "import"])
            .arg("--p12")
            .arg(w.p12("bob"))
            .arg("--password-file")
            .arg(w.password_file())
            .run()
            .code(0);
        rig
    }

    /// `etee ARGS --config server.toml`.
    fn server<const N: usize>(&self, args: [&str; N]) -> Etee {
        self.hsm.etee(args).arg("--config").arg(&self.server_config)
    }

    /// `etee ARGS --config client.toml`.
    fn client<const N: usize>(&self, args: [&str; N]) -> Etee {
        self.hsm.etee(args).arg("--config").arg(&self.client_config)
    }

    /// Starts `etee custody serve` and waits for its socket (mode 0600).
    fn serve(&self) -> Server {
        self.serve_with(Stdio::inherit(), 0o600)
    }

    /// [`Rig::serve`] with the server's standard error going to `stderr`, expecting the
    /// socket's mode to be `mode`.
    fn serve_with(&self, stderr: Stdio, mode: u32) -> Server {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(etee_bin())
            .args(["custody", "serve", "--config"])
            .arg(&self.server_config)
            .arg("--socket")
            .arg(&self.socket)
            .env("SOFTHSM2_CONF", &self.hsm.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning etee custody serve");
        let mut server = Server { child };
        let start = Instant::now();
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("etee custody serve exited: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no socket after 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        use std::os::unix::fs::PermissionsExt;
        let got = std::fs::metadata(&self.socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(got & 0o777, mode, "socket mode {got:o}");
        server
    }

    /// `etee audit verify --json` (intact, records, torn tail).
    fn audit(&self) -> (bool, u64, bool) {
        let report = self.audit_report();
        (
            report["intact"] == Value::Bool(true),
            report["records"].as_u64().unwrap_or(0),
            report["torn_tail"] == Value::Bool(true),
        )
    }

    fn audit_report(&self) -> Value {
        self.server(["audit", "verify", "--json"]).run().json()
    }
}

/// The server child, SIGKILLed when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The custody frame protocol's version (u16 BE), as documented in firmware/README.md.
const PROTOCOL_VERSION: [u8; 2] = [0, 2];

/// A `SignPssSha256` request frame for client `etee-cli` and key `authentication`, built
/// here from the documented layout (version | id 0x10 | postcard body).
fn sign_frame(digest: [u8; 32]) -> Vec<u8> {
    let mut f = PROTOCOL_VERSION.to_vec();
    f.push(0x10);
    for s in ["etee-cli", "authentication"] {
        f.push(s.len() as u8);
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(&digest);
    f
}

/// Sends one length-prefixed frame and reads the response frame.
fn exchange(stream: &mut UnixStream, frame: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(&(frame.len() as u32).to_be_bytes())?;
    stream.write_all(frame)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut resp = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut resp)?;
    Ok(resp)
}

/// A signature response: header `0 1 0x10`, then the signature.
fn is_signature(resp: &[u8]) -> bool {
    resp.len() > 200 && resp[..2] == PROTOCOL_VERSION && resp[2] == 0x10
}

fn seal_with(rig: &Rig, w: &World, dir: &Path, plain: &[u8], name: &str) -> Vec<u8> {
    let input = dir.join(format!("{name}.plain"));
    std::fs::write(&input, plain).unwrap();
    let out = dir.join(format!("{name}.p7"));
    rig.client(["seal"])
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .run()
        .code(0);
    std::fs::read(out).unwrap()
}

#[test]
fn seal_and_unseal_through_the_custody_process() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path(), w);

    // Without a server, the client says so (and does not fall back to the token).
    let run = rig
        .client(["seal"])
        .arg("--to")
        .arg(w.etk("bob"))
        .stdin(b"x".to_vec())
        .run();
    run.code(2);
    assert!(
        run.stderr.contains("custody process not reachable")
            && run.stderr.contains("etee custody serve"),
        "{}",
        run.stderr
    );

    let server = rig.serve();
    let plain = b"Sealed by Bob's HSM through the custody process.\n".repeat(20);
    // The custody process signs; the software path with bob.p12 opens it.
    let sealed = seal_with(&rig, w, tmp.path(), &plain, "from-hsm");
    let opened = w.unseal(tmp.path(), "bob", &sealed, &[]);
    opened.run.code(0);
    assert_eq!(opened.content(), plain);

    // Alice's keystore seals for Bob's ETK; the custody process decrypts.
    let sealed = w.seal(tmp.path(), "alice", &["bob"], &plain);
    let sealed_path = tmp.path().join("for-hsm.p7");
    std::fs::write(&sealed_path, &sealed).unwrap();
    let out = tmp.path().join("opened");
    let run = rig
        .client(["unseal", "--json"])
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

    // On the chain: the login of `keys import`, the server's login and its core's unlock
    // (a try and an outcome each), two signatures, one decryption (a use record and an
    // outcome each).
    let (intact, records, torn) = rig.audit();
    assert!(intact && !torn);
    assert_eq!(records, LOGINS + (2 + 1) * 2);
    drop(server);
}

/// `keys csr` with `mode = "process"`: the CSR is signed by the custody process (no PIN,
/// no audit file of its own here); without it, said at once; an ETK key has none.
#[test]
fn keys_csr_is_signed_by_the_custody_process() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path(), w);
    let csr = [
        "keys",
        "csr",
        "--key",
        "authentication",
        "--subject",
        "C=BE,CN=bob",
    ];
    let started = Instant::now();
    let run = rig.client(csr).run();
    run.code(2);
    assert!(
        run.stderr.contains("custody process not reachable"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5), "not at once");

    let _server = rig.serve();
    let (_, before, _) = rig.audit();
    let run = rig.client(csr).run();
    run.code(0);
    let pem = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{pem}"
    );
    if etee_e2e::openssl_cli() {
        let file = tmp.path().join("bob.csr");
        std::fs::write(&file, &pem).unwrap();
        etee_e2e::openssl(["req", "-verify", "-noout", "-in", file.to_str().unwrap()]);
    }
    let run = rig
        .client([
            "keys",
            "csr",
            "--key",
            w.etk_serial("bob"),
            "--subject",
            "CN=x",
        ])
        .run();
    run.code(2);
    assert!(
        run.stderr
            .contains("CSRs are for authentication (signing) keys"),
        "{}",
        run.stderr
    );
    // On the custody process's chain: the signature (use and outcome), the refusal, and
    // the question that explained it.
    let report = rig
        .server(["audit", "verify", "--json", "--tail", "4"])
        .run()
        .json();
    assert_eq!(report["records"].as_u64(), Some(before + 4), "{report}");
    let tail: Vec<(&str, &str)> = report["tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(tail[0], ("SignPssSha256", "admitted"), "{report}");
    assert_eq!(tail[1], ("SignPssSha256", "success"), "{report}");
    assert_eq!(tail[2].0, "SignPssSha256", "{report}");
    assert_ne!(tail[2].1, "success", "{report}");
    assert_eq!(tail[3], ("DescribeKey", "success"), "{report}");
}

/// `custody status` with `mode = "process"`: keys can be used only through the custody
/// process, so without it the status says so and exits 1; with it, 0.
#[test]
fn custody_status_asks_the_custody_process() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path(), w);
    let run = rig.client(["custody", "status"]).run();
    run.code(1);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("user PIN ok"), "{out}");
    assert!(out.contains("DOES NOT ANSWER"), "{out}");
    assert!(out.contains("etee custody serve"), "{out}");
    let run = rig.client(["custody", "status", "--json"]).run();
    run.code(1);
    assert_eq!(run.json()["process"]["answers"], false, "{:?}", run.json());

    let _server = rig.serve();
    let run = rig.client(["custody", "status"]).run();
    run.code(0);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("answers, core unlocked"), "{out}");
    let run = rig.client(["custody", "status", "--json"]).run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["process"]["answers"], true, "{report}");
    assert_eq!(report["process"]["state"], "Unlocked", "{report}");
    // The server's own configuration (in-process) does not ask.
    let run = rig.server(["custody", "status", "--json"]).run();
    run.code(0);
    assert!(run.json()["process"].is_null());
}

/// A second core on the chain the custody process holds (`keys list` with the server's
/// configuration logs in on that chain) says at once, on standard error, that it waits.
#[test]
fn a_second_core_says_at_once_that_it_waits_for_the_chain() {
    use std::io::BufRead;
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path(), w);
    let _server = rig.serve();
    let mut child = Command::new(etee_bin())
        .args(["keys", "list", "--config"])
        .arg(&rig.server_config)
        .env("SOFTHSM2_CONF", &rig.hsm.conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(3));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("nothing on standard error within 3 s");
    assert!(
        line.contains("in use by another custody core") && line.contains("waiting up to 10 s"),
        "{line}"
    );
}

/// The digest client `client` of a stream asks to sign in its `n`th request: unique to
/// the pair, so that each signature a client received can be found on the chain.
fn stream_digest(client: u8, n: u64) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest[0] = 0x5e;
    digest[1] = client;
    digest[2..10].copy_from_slice(&n.to_be_bytes());
    digest
}

/// The records of the custody process's chain for `operation` (`etee audit search
/// --json`, every match): (sequence, input SHA-256 in hex, outcome).
fn searched(rig: &Rig, operation: &str) -> Vec<(u64, String, String)> {
    let run = rig
        .server(["audit", "search", "--json", "--limit", "1000000"])
        .arg(format!("--operation={operation}"))
        .run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["truncated"], Value::Bool(false), "{report}");
    report["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries: {report}"))
        .iter()
        .map(|r| {
            (
                r["sequence"].as_u64().unwrap(),
                r["input_sha256"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn custody_process_killed_mid_stream_keeps_the_chain_intact() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path(), w);
    let mut server = rig.serve();

    // Two clients send signature requests back to back until the server dies; each keeps
    // the digests whose signatures it received.
    const CLIENTS: u64 = 2;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS as u8)
        .map(|c| {
            let socket = rig.socket.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stream = UnixStream::connect(&socket).unwrap();
                let mut received = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let digest = stream_digest(c, received.len() as u64);
                    match exchange(&mut stream, &sign_frame(digest)) {
                        Ok(resp) => {
                            assert!(is_signature(&resp), "{:02x?}", &resp[..resp.len().min(8)]);
                            received.push(digest);
                        }
                        Err(_) => break,
                    }
                }
                received
            })
        })
        .collect();
    // A random moment, once the stream is flowing.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis(150 + u64::from(nanos % 350)));
    server.kill();
    let received: Vec<[u8; 32]> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let signed = received.len() as u64;
    assert!(signed > 0, "no request went through before the kill");

    // Intact, no torn record. The chain holds the logins (of `keys import` and the
    // server), the use record and the outcome record of every released signature, and
    // for each client at most its one request in flight at the kill: nothing, its use
    // record alone (an unconcluded use), or its use and outcome records (the signature
    // made, the answer not received).
    let (intact, records, torn) = rig.audit();
    let unconcluded = rig.audit_report()["unconcluded"]
        .as_array()
        .map_or(u64::MAX, |u| u.len() as u64);
    eprintln!("killed after {signed} signatures; {records} records, {unconcluded} unconcluded");
    assert!(intact, "chain broken after SIGKILL");
    assert!(!torn, "torn record after SIGKILL");
    assert!(
        records >= LOGINS + 2 * signed,
        "{records} records: fewer than the {LOGINS} of the logins and two for each of the \
         {signed} signatures released"
    );
    let in_flight = records - LOGINS - 2 * signed;
    assert!(
        unconcluded <= in_flight && (in_flight - unconcluded).is_multiple_of(2),
        "{in_flight} records beyond the released signatures, {unconcluded} of them uses \
         without an outcome: the others must be whole uses (two records each)"
    );
    let concluded_unreleased = (in_flight - unconcluded) / 2;
    assert!(
        unconcluded + concluded_unreleased <= CLIENTS,
        "{unconcluded} unconcluded and {concluded_unreleased} concluded uses whose answer \
         no client received: more than one request in flight per client ({CLIENTS})"
    );
    // Each signature a client received is on the chain: its use record, then its
    // outcome (success), found by the SHA-256 of the digest it asked to sign.
    let signs = searched(&rig, "sign");
    for digest in &received {
        let input = hex::encode(openssl::sha::sha256(digest));
        let with = |outcome: &str| -> Vec<u64> {
            signs
                .iter()
                .filter(|(_, i, o)| *i == input && o == outcome)
                .map(|(seq, ..)| *seq)
                .collect()
        };
        let (used, succeeded) = (with("admitted"), with("success"));
        assert!(
            used.len() == 1 && succeeded.len() == 1 && used[0] < succeeded[0],
            "the signature of {} was received, but the chain holds use records {used:?} \
             and successes {succeeded:?} for it",
            hex::encode(digest)
        );
    }
    // ... and the only other successes are the uses whose answer was lost with the server.
    let received_inputs: std::collections::HashSet<String> = received
        .iter()
        .map(|d| hex::encode(openssl::sha::sha256(d)))
        .collect();
    let other_successes = signs
        .iter()
        .filter(|(_, i, o)| o == "success" && !received_inputs.contains(i))
        .count() as u64;
    assert_eq!(
        other_successes, concluded_unreleased,
        "successful signatures on the chain that no client received"
    );
    assert_eq!(
        signs
            .iter()
            .filter(|(.., o)| o != "success" && o != "admitted")
            .count(),
        0,
        "a signature refused in the stream: {signs:?}"
    );
    let segments = rig.audit_report()["segments"].as_u64().unwrap_or(0);
    assert!(segments >= 2, "only {segments} archived segments");

    // Restarted on the same audit file: requests succeed again, the chain continues.
    let _server = rig.serve();
    let mut stream = UnixStream::connect(&rig.socket).unwrap();
    assert!(is_signature(
        &exchange(&mut stream, &sign_frame([7; 32])).unwrap()
    ));
    let plain = b"after the crash".to_vec();
    let sealed = seal_with(&rig, w, tmp.path(), &plain, "after");
    let opened = w.unseal(tmp.path(), "bob", &sealed, &[]);
    opened.run.code(0);
    assert_eq!(opened.content(), plain);
    let (intact, after, torn) = rig.audit();
    assert!(intact && !torn);
    assert_eq!(
        after,
        records + 4 + 2 + 2 * 2,
        "the login and the unlock, one raw signature, a seal (two records a signature)"
    );
}

#[test]
fn custody_process_stops_cleanly_on_sigterm() {
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::new(tmp.path(), w);
    let mut server = rig.serve();
    let pid = server.child.id().to_string();

    // Two clients send signature requests until the server closes their connection.
    let clients: Vec<_> = (0..2u8)
        .map(|c| {
            let socket = rig.socket.clone();
            std::thread::spawn(move || {
                let mut stream = UnixStream::connect(&socket).unwrap();
                let mut signed = 0u64;
                loop {
                    let frame = sign_frame([c.wrapping_add(signed as u8); 32]);
                    match exchange(&mut stream, &frame) {
                        Ok(resp) => {
                            assert!(is_signature(&resp), "{:02x?}", &resp[..resp.len().min(8)]);
                            signed += 1;
                        }
                        Err(_) => break,
                    }
                }
                signed
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let signed: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(signed > 0, "no request went through before SIGTERM");
    assert!(!rig.socket.exists(), "socket file left behind");

    // Every request the server read was answered: the chain holds the logins (`keys
    // import`, the server's unlock), exactly the released signatures, and the lock at the
    // end.
    let run = rig
        .server(["audit", "verify", "--json", "--tail", "1"])
        .run();
    run.code(0);
    let report = run.json();
    assert_eq!(report["intact"], Value::Bool(true), "{report}");
    assert_eq!(
        report["records"].as_u64(),
        Some(LOGINS + 2 * signed + 1),
        "{report}"
    );
    assert_eq!(report["unconcluded"], serde_json::json!([]), "{report}");
    assert_eq!(report["tail"][0]["operation"], "Lock", "{report}");
    assert_eq!(report["tail"][0]["outcome"], "success", "{report}");

    // The administrator's reset is recorded (no failures to clear here).
    let run = rig.server(["custody", "reset-pin"]).run();
    run.code(0);
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("nothing to clear: no wrong PIN is counted"),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let (intact, records, _) = rig.audit();
    assert!(intact);
    assert_eq!(records, LOGINS + 2 * signed + 2);
}

/// Set in the environment of a copy of this test binary that the test below runs under
/// another uid: that run of the test is the peer probe (see [`peer_probe`]).
const PEER_PROBE_ENV: &str = "ETEE_E2E_PEER_PROBE";

/// The server's own check of its peers (`SO_PEERCRED` against its uid and `[custody]
/// allowed_uids`), with the socket's mode out of the way: the socket is 0660 and its
/// directory 0750, both in the group the probes run in, so the kernel lets every probe
/// connect. A probe under a uid not in `allowed_uids` (65534) is connected, then closed
/// without an answer, nothing of its request reaches the core (no record on the chain) and
/// the server logs the refusal; a probe under an allowed uid (65533) gets its signature.
/// Running as another uid takes root: otherwise the test says it skipped.
#[test]
fn the_custody_process_serves_only_allowed_uids() {
    if let Some(socket) = std::env::var_os(PEER_PROBE_ENV) {
        peer_probe(Path::new(&socket));
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !running_as_root() {
        eprintln!(
            "skipping: the_custody_process_serves_only_allowed_uids runs its clients as \
             other uids, which needs root"
        );
        return;
    }
    const REFUSED: u32 = 65534;
    const ALLOWED: u32 = 65533;
    let w = World::shared();
    let tmp = scratch();
    let rig = Rig::with_custody(tmp.path(), w, &format!("allowed_uids = [{ALLOWED}]\n"));
    let log_path = tmp.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = rig.serve_with(Stdio::from(log), 0o660);
    let group = std::fs::metadata(&rig.socket).unwrap().gid();
    // The probes may enter the directory and connect (group), nothing more.
    std::os::unix::fs::chown(tmp.path(), None, Some(group)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    // A copy of this test binary where the probes can run it (the target directory may be
    // closed to other users).
    let probe_exe = tmp.path().join("peer-probe");
    std::fs::copy(std::env::current_exe().unwrap(), &probe_exe).unwrap();
    std::fs::set_permissions(&probe_exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = |uid: u32| -> String {
        use std::os::unix::process::CommandExt;
        let out = Command::new(&probe_exe)
            .args([
                "--exact",
                "the_custody_process_serves_only_allowed_uids",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PEER_PROBE_ENV, &rig.socket)
            .current_dir("/")
            .uid(uid)
            .gid(group)
            .stdin(Stdio::null())
            .output()
            .expect("running the probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "probe as uid {uid}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            // libtest may print `test NAME ... ` on the same line first.
            .find_map(|l| l.split_once("probe: ").map(|(_, said)| said))
            .unwrap_or_else(|| panic!("no probe line from uid {uid}:\n{stdout}"))
            .to_string()
    };
    let server_log = || std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        probe(REFUSED),
        "connected; closed with no answer",
        "server log:\n{}",
        server_log()
    );
    assert_eq!(
        probe(ALLOWED),
        "connected; signature",
        "server log:\n{}",
        server_log()
    );
    // Written before the refused connection was closed, so there by now.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(&format!(
            "refused a connection from uid {REFUSED} (not in [custody] allowed_uids)"
        )),
        "{log}"
    );
    assert!(!log.contains(&format!("uid {ALLOWED} (not")), "{log}");
    drop(server);
    // The logins, then the allowed probe's signature (its use and outcome records);
    // nothing of the refused one.
    let (intact, records, _) = rig.audit();
    assert!(intact);
    assert_eq!(records, LOGINS + 2);
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective uid).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The probe's side: connects to `socket`, sends one signature request and prints one
/// `probe: ...` line saying what came back.
fn peer_probe(socket: &Path) {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            println!("probe: not connected: {e}");
            return;
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let outcome = match exchange(&mut stream, &sign_frame([7; 32])) {
        Ok(resp) if is_signature(&resp) => "signature".to_string(),
        Ok(resp) => format!("answer {:02x?}", &resp[..resp.len().min(8)]),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            "closed with no answer".to_string()
        }
        Err(e) => format!("error: {e}"),
    };
    println!("probe: connected; {outcome}");
}
