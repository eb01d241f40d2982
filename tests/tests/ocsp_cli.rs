//! OCSP against an independent responder: `openssl ocsp` serving the world CA's status
//! on a loopback port. `etee unseal --ocsp` asks it (good, revoked, unreachable under
//! each policy), `etee seal --ocsp` embeds its answer in the message (then a receiver
//! needs no responder, and `openssl cms` still verifies the message; `openssl ocsp`
//! accepts the embedded answer) and refuses to seal for a revoked sender.

use etee_e2e::{etee, openssl_cli, outer_certificate_pem, scratch, World};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn errors(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {v}"))
        .iter()
        .map(|e| e.as_str().expect("name").to_string())
        .collect()
}

/// `openssl ocsp` as a responder for the world CA (signing with the CA's key) over
/// `index` (OpenSSL's CA database format), on a free loopback port; killed on drop.
struct Responder {
    child: Child,
    url: String,
}

impl Responder {
    fn start(w: &World, index: &Path) -> Responder {
        let mut child = Command::new("openssl")
            .args(["ocsp", "-port", "0", "-nmin", "5", "-index"])
            .arg(index)
            .arg("-CA")
            .arg(w.ca())
            .arg("-rsigner")
            .arg(w.ca())
            .arg("-rkey")
            .arg(w.path("ca-key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl ocsp");
        // "ACCEPT [::]:PORT PID=…" on either stream, depending on the version.
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let port = loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("openssl ocsp did not say where it listens");
            if let Some(rest) = line.strip_prefix("ACCEPT ") {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        };
        Responder {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alice's authentication certificate (from a message she sealed), as a PEM file.
fn alice_cert(dir: &Path, from_alice: &[u8]) -> PathBuf {
    let path = dir.join("alice-auth.pem");
    std::fs::write(&path, outer_certificate_pem(from_alice, "alice")).unwrap();
    path
}

/// An index file where Alice's certificate is valid, or revoked an hour ago.
fn index(dir: &Path, alice: &Path, revoked: bool) -> PathBuf {
    let cert = openssl::x509::X509::from_pem(&std::fs::read(alice).unwrap()).unwrap();
    let serial = cert.serial_number().to_bn().unwrap().to_hex_str().unwrap();
    // YYMMDDHHMMSSZ, from the RFC 3339 form.
    let stamp = |t: i64| {
        let digits: String = etee_e2e::rfc3339(t)
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        format!("{}Z", &digits[2..14])
    };
    let now = etee_e2e::now_unix();
    let expiry = stamp(now + 365 * 86_400);
    let line = if revoked {
        let at = stamp(now - 3600);
        format!("R\t{expiry}\t{at}\t{serial}\tunknown\t/CN=alice\n")
    } else {
        format!("V\t{expiry}\t\t{serial}\tunknown\t/CN=alice\n")
    };
    let path = dir.join(if revoked {
        "index-revoked.txt"
    } else {
        "index-valid.txt"
    });
    std::fs::write(&path, line).unwrap();
    path
}

#[test]
fn receivers_ask_an_openssl_responder_and_senders_embed_its_answer() {
    if !openssl_cli() {
        return;
    }
    let w = World::shared();
    let dir = scratch();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let alice = alice_cert(dir.path(), &from_alice);
    let valid = Responder::start(w, &index(dir.path(), &alice, false));

    // Mandatory with the responder: Alice is good, the content is released.
    for policy in ["optional", "mandatory"] {
        let r = w.unseal(
            dir.path(),
            "bob",
            &from_alice,
            &["--ocsp", &valid.url, "--revocation", policy],
        );
        r.run.code(0);
        assert_eq!(r.content(), b"for Bob");
    }
    // The responder says revoked: refused under either policy.
    let revoked = Responder::start(w, &index(dir.path(), &alice, true));
    for policy in ["optional", "mandatory"] {
        let r = w.unseal(
            dir.path(),
            "bob",
            &from_alice,
            &["--ocsp", &revoked.url, "--revocation", policy],
        );
        r.run.code(1);
        assert_eq!(errors(&r.verdict), vec!["OUTER_CERTIFICATE_REVOKED"]);
        assert!(!r.out.exists(), "content of a revoked sender released");
    }
    // Nobody answers: unknown, refused only under mandatory.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = w.unseal(
        dir.path(),
        "bob",
        &from_alice,
        &["--ocsp", &closed, "--revocation", "mandatory"],
    );
    r.run.code(1);
    assert_eq!(errors(&r.verdict), vec!["OUTER_CERTIFICATE_STATUS_UNKNOWN"]);
    // Standard error says why.
    assert!(
        r.run.stderr.contains("etee: note: OCSP (") && r.run.stderr.contains("failed"),
        "{}",
        r.run.stderr
    );
    let r = w.unseal(dir.path(), "bob", &from_alice, &["--ocsp", &closed]);
    r.run.code(0);

    // Alice seals with the responder: its answer travels in the message.
    let plain = dir.path().join("plain");
    let sealed_path = dir.path().join("sealed-with-ocsp");
    std::fs::write(&plain, b"with evidence").unwrap();
    etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--trust")
        .arg(w.ca())
        .args(["--ocsp", &valid.url])
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(&plain)
        .arg("--out")
        .arg(&sealed_path)
        .password(&w.password)
        .run()
        .code(0);
    let sealed = std::fs::read(&sealed_path).unwrap();
    drop(valid);
    // Bob, mandatory, with a responder that is gone: the message's answer suffices.
    let r = w.unseal(
        dir.path(),
        "bob",
        &sealed,
        &["--ocsp", &closed, "--revocation", "mandatory"],
    );
    r.run.code(0);
    assert_eq!(r.content(), b"with evidence");
    // OpenSSL still verifies the outer layer, and accepts the embedded answer as the
    // CA's, saying good for Alice.
    let middle = dir.path().join("middle.der");
    etee_e2e::openssl([
        "cms".as_ref(),
        "-verify".as_ref(),
        "-inform".as_ref(),
        "DER".as_ref(),
        "-binary".as_ref(),
        "-in".as_ref(),
        sealed_path.as_os_str(),
        "-CAfile".as_ref(),
        w.ca().as_os_str(),
        "-out".as_ref(),
        middle.as_os_str(),
    ]);
    let response = dir.path().join("embedded-response.der");
    std::fs::write(
        &response,
        ocsp_response_of(&embedded_basic_response(&sealed)),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args(["ocsp", "-respin"])
        .arg(&response)
        .arg("-issuer")
        .arg(w.ca())
        .arg("-cert")
        .arg(&alice)
        .arg("-CAfile")
        .arg(w.ca())
        .arg("-no_nonce")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Response verify OK") && text.contains(": good"),
        "{text}"
    );

    // A revoked sender is not sealed for (exit 1, nothing written).
    let out = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--trust")
        .arg(w.ca())
        .args(["--ocsp", &revoked.url])
        .arg("--to")
        .arg(w.etk("bob"))
        .password(&w.password)
        .stdin(b"x".to_vec())
        .run();
    out.code(1);
    assert!(
        out.stderr.contains("not sealed") && out.stderr.contains("revoked"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "a message was written");
    // No responder to ask: a usage/I-O error (exit 2), nothing written.
    let out = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--trust")
        .arg(w.ca())
        .args(["--ocsp", &closed])
        .arg("--to")
        .arg(w.etk("bob"))
        .password(&w.password)
        .stdin(b"x".to_vec())
        .run();
    out.code(2);
    assert!(out.stderr.contains("no OCSP answer"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "a message was written");
}

#[test]
fn bad_responders_are_usage_errors() {
    let w = World::shared();
    for (responder, says) in [
        ("https://ocsp.example", "http://"),
        ("ocsp.example", "auto"),
    ] {
        let out = etee(["unseal", "--keystore"])
            .arg(w.p12("bob"))
            .arg("--trust")
            .arg(w.ca())
            .args(["--ocsp", responder])
            .password(&w.password)
            .stdin(b"unread".to_vec())
            .run();
        out.code(2);
        assert!(out.stderr.contains(says), "{}", out.stderr);
    }
    let out = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .args(["--ocsp", "auto", "--revocation", "none"])
        .password(&w.password)
        .stdin(b"unread".to_vec())
        .run();
    out.code(2);
    assert!(out.stderr.contains("would not be used"), "{}", out.stderr);
}

/// The BasicOCSPResponse of the outer SignerInfo's revocationValues (the only one).
fn embedded_basic_response(sealed: &[u8]) -> Vec<u8> {
    const OID: &[u8] = &[
        0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x18,
    ];
    let at = sealed
        .windows(OID.len())
        .position(|w| w == OID)
        .expect("a revocationValues attribute")
        + OID.len();
    // SET { RevocationValues SEQUENCE { [1] { SEQUENCE OF { BasicOCSPResponse } } } }
    let set = content(&sealed[at..], 0x31);
    let values = content(set, 0x30);
    let ocsp_vals = content(values, 0xa1);
    let list = content(ocsp_vals, 0x30);
    element(list).to_vec()
}

/// The content of the DER element at the start of `der`, which must have tag `tag`.
fn content(der: &[u8], tag: u8) -> &[u8] {
    assert_eq!(der[0], tag, "unexpected tag");
    let (len, head) = length(der);
    &der[head..head + len]
}

/// The whole DER element at the start of `der`.
fn element(der: &[u8]) -> &[u8] {
    let (len, head) = length(der);
    &der[..head + len]
}

fn length(der: &[u8]) -> (usize, usize) {
    match der[1] {
        l if l < 0x80 => (l as usize, 2),
        l => {
            let n = (l & 0x7f) as usize;
            let len = der[2..2 + n]
                .iter()
                .fold(0usize, |a, b| a << 8 | *b as usize);
            (len, 2 + n)
        }
    }
}

/// A successful OCSPResponse around `basic` (what `openssl ocsp -respin` reads).
fn ocsp_response_of(basic: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    const BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
    let bytes = tlv(0x30, &[tlv(0x06, BASIC), tlv(0x04, basic)].concat());
    tlv(0x30, &[tlv(0x0a, &[0]), tlv(0xa0, &bytes)].concat())
}

/// `etee pki ocsp` on a free loopback port; killed on drop.
struct OwnResponder {
    child: Child,
    url: String,
}

impl OwnResponder {
    fn start(world: &Path) -> OwnResponder {
        Self::start_on(world, "127.0.0.1:0")
    }

    fn start_on(world: &Path, listen: &str) -> OwnResponder {
        let mut child = Command::new(etee_e2e::etee_bin())
            .args(["pki", "ocsp"])
            .arg(world)
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("etee pki ocsp");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let url = first
            .rsplit_once(" on ")
            .map(|(_, u)| u.to_string())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        // Keep reading (the responder logs each answer) so that it never blocks.
        std::thread::spawn(move || for _ in lines {});
        OwnResponder { child, url }
    }
}

impl Drop for OwnResponder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl ocsp` asking `url` about `cert`: what it printed.
fn openssl_asks(w: &World, url: &str, cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["ocsp", "-url", url, "-issuer"])
        .arg(w.ca())
        .arg("-cert")
        .arg(cert)
        .arg("-CAfile")
        .arg(w.ca())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn etee_s_own_responder_answers_openssl_and_follows_the_list() {
    if !openssl_cli() {
        return;
    }
    let w = World::create();
    let dir = scratch();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let alice = alice_cert(dir.path(), &from_alice);
    // Without the CA's list the responder knows nothing, and says so (never "good").
    let responder = OwnResponder::start(w.dir());
    let text = openssl_asks(&w, &responder.url, &alice);
    assert!(text.contains("internalerror"), "{text}");
    drop(responder);
    etee(["pki", "revoke"]).arg(w.dir()).run().code(0);
    let responder = OwnResponder::start(w.dir());

    // OpenSSL's client, independently: the answer is the CA's, with its nonce, good.
    let text = openssl_asks(&w, &responder.url, &alice);
    assert!(
        text.contains("Response verify OK") && text.contains(": good") && !text.contains("WARNING"),
        "{text}"
    );
    let r = w.unseal(
        dir.path(),
        "bob",
        &from_alice,
        &["--ocsp", &responder.url, "--revocation", "mandatory"],
    );
    r.run.code(0);
    assert_eq!(r.content(), b"for Bob");

    // The CA revokes Alice: the running responder says so at once.
    etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice"])
        .run()
        .code(0);
    let text = openssl_asks(&w, &responder.url, &alice);
    assert!(
        text.contains("Response verify OK") && text.contains(": revoked"),
        "{text}"
    );
    let r = w.unseal(dir.path(), "bob", &from_alice, &["--ocsp", &responder.url]);
    r.run.code(1);
    assert_eq!(errors(&r.verdict), vec!["OUTER_CERTIFICATE_REVOKED"]);
    // Not a world: a usage error.
    let out = etee(["pki", "ocsp"]).arg(dir.path()).run();
    out.code(2);
    assert!(out.stderr.contains("not a world"), "{}", out.stderr);
}

#[test]
fn with_auto_each_certificate_names_its_responder() {
    if !openssl_cli() {
        return;
    }
    let dir = scratch();
    let world = dir.path().join("world");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    etee(["pki", "init"])
        .arg(&world)
        .args(["--ocsp-url", &url])
        .run()
        .code(0);
    etee(["pki", "revoke"]).arg(&world).run().code(0);
    let _responder = OwnResponder::start_on(&world, &format!("127.0.0.1:{port}"));
    let password = std::fs::read_to_string(world.join("password")).unwrap();
    let password = password.trim_end();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"asked where the certificate says").unwrap();
    let sealed = dir.path().join("sealed");
    etee(["seal", "--keystore"])
        .arg(world.join("alice.p12"))
        .arg("--trust")
        .arg(world.join("ca.pem"))
        .args(["--ocsp", "auto", "--to"])
        .arg(world.join("bob.etk"))
        .arg("--in")
        .arg(&plain)
        .arg("--out")
        .arg(&sealed)
        .password(password)
        .run()
        .code(0);
    let bytes = std::fs::read(&sealed).unwrap();
    // OpenSSL reads the responder's address in Alice's certificate.
    let alice = alice_cert(dir.path(), &bytes);
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ocsp_uri", "-in"])
        .arg(&alice)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url);
    embedded_basic_response(&bytes);
    let out = etee(["unseal", "--json", "--keystore"])
        .arg(world.join("bob.p12"))
        .arg("--trust")
        .arg(world.join("ca.pem"))
        .args(["--ocsp", "auto", "--revocation", "mandatory", "--in"])
        .arg(&sealed)
        .password(password)
        .run();
    out.code(0);
    // A certificate that names no responder: nothing to ask, unknown under mandatory.
    let w = World::shared();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let r = w.unseal(
        dir.path(),
        "bob",
        &from_alice,
        &["--ocsp", "auto", "--revocation", "mandatory"],
    );
    r.run.code(1);
    assert_eq!(errors(&r.verdict), vec!["OUTER_CERTIFICATE_STATUS_UNKNOWN"]);
}
