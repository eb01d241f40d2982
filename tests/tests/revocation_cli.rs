//! Revocation with the world CA's list: `etee pki revoke` issues it (OpenSSL agrees on
//! its signature and on what it revokes), and `--crl` makes `unseal`, `seal` and
//! `etk verify` refuse the revoked institution, under the optional and the mandatory
//! policy, while the others go on; a damaged list is refused when loaded.

use etee_e2e::{etee, openssl_cli, outer_certificate_pem, scratch, World};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn errors(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {v}"))
        .iter()
        .map(|e| e.as_str().expect("name").to_string())
        .collect()
}

/// `openssl` with these arguments: its exit code and everything it printed.
fn openssl_says(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_revoked_institution_is_refused_by_every_receiver_that_has_the_list() {
    let w = World::create();
    let dir = scratch();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let from_bob = w.seal(dir.path(), "bob", &["alice"], b"for Alice");
    let crl = w.path("ca.crl");
    let crl_arg = crl.to_str().unwrap();

    let out = etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice"])
        .run();
    out.code(0);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("alice: revoked (serial "), "{report}");
    assert!(report.contains("number 1, 1 revoked"), "{report}");
    assert!(w.path("ca-crl.pem").is_file());

    // OpenSSL, independently: the list is the CA's, Alice's certificate is revoked by it,
    // Bob's is not.
    if openssl_cli() {
        let pem = |sealed: &[u8], needle: &str, name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, outer_certificate_pem(sealed, needle)).unwrap();
            path
        };
        let alice = pem(&from_alice, "alice", "alice-auth.pem");
        let bob = pem(&from_bob, "bob", "bob-auth.pem");
        let (_, text) = openssl_says(&[
            "crl".as_ref(),
            "-inform".as_ref(),
            "DER".as_ref(),
            "-in".as_ref(),
            crl.as_os_str(),
            "-CAfile".as_ref(),
            w.ca().as_os_str(),
            "-noout".as_ref(),
        ]);
        assert!(text.contains("verify OK"), "{text}");
        let verify = |cert: &Path| {
            openssl_says(&[
                "verify".as_ref(),
                "-crl_check".as_ref(),
                "-CRLfile".as_ref(),
                w.path("ca-crl.pem").as_os_str(),
                "-CAfile".as_ref(),
                w.ca().as_os_str(),
                cert.as_os_str(),
            ])
        };
        let (ok, text) = verify(&alice);
        assert!(!ok && text.contains("certificate revoked"), "{text}");
        let (ok, text) = verify(&bob);
        assert!(ok && text.contains("OK"), "{text}");
    }

    // Bob with the list: Alice's message is refused, under either policy.
    for extra in [
        vec!["--crl", crl_arg],
        vec!["--crl", crl_arg, "--revocation", "mandatory"],
    ] {
        bob_refuses_as_revoked(&w, dir.path(), &from_alice, &extra);
    }
    // Without it, the default policy (none): as before the revocation.
    let r = w.unseal(dir.path(), "bob", &from_alice, &[]);
    r.run.code(0);
    assert_eq!(r.content(), b"for Bob");
    // Alice (still holding her keys) opens Bob's message with the list, also mandatory:
    // the list gives Bob's status.
    let r = w.unseal(
        dir.path(),
        "alice",
        &from_bob,
        &["--crl", crl_arg, "--revocation", "mandatory"],
    );
    r.run.code(0);
    assert_eq!(r.content(), b"for Alice");

    // `from` seals for `to` with the world's CA as trust anchor and `extra` arguments.
    let seals = |from: &str, to: &str, extra: &[&str]| {
        etee(["seal", "--keystore"])
            .arg(w.p12(from))
            .arg("--to")
            .arg(w.etk(to))
            .arg("--trust")
            .arg(w.ca())
            .args(extra)
            .password(&w.password)
            .stdin(b"x".to_vec())
            .run()
    };
    // Alice, revoked, does not seal with the list (every receiver holding it would refuse
    // the message); without it she does, as before.
    let out = seals("alice", "bob", &["--crl", crl_arg]);
    out.code(1);
    assert!(
        out.stderr.contains("not sealed")
            && out.stderr.contains("own certificate")
            && out.stderr.contains("is revoked"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "a message was written");
    seals("alice", "bob", &[]).code(0);
    // Bob, not on the list, seals with it.
    let out = seals(
        "bob",
        "bob",
        &["--crl", crl_arg, "--revocation", "mandatory"],
    );
    out.code(0);
    assert!(!out.stdout.is_empty());

    // Sealing to Alice's ETK with the list is refused, saying why; `etk verify` agrees.
    let out = seals("bob", "alice", &["--crl", crl_arg]);
    out.code(1);
    assert!(
        out.stderr.contains("ETK_AUTHENTICATION_CERT_REVOKED") && out.stderr.contains("revoked"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "a message was written");
    let verify = etee(["etk", "verify", "--json", "--trust"])
        .arg(w.ca())
        .args(["--crl", crl_arg])
        .arg(w.etk("alice"))
        .run();
    verify.code(1);
    assert_eq!(
        errors(&verify.json()),
        vec!["ETK_AUTHENTICATION_CERT_REVOKED"]
    );
    let verify = etee(["etk", "verify", "--json", "--trust"])
        .arg(w.ca())
        .args(["--crl", crl_arg, "--revocation", "mandatory"])
        .arg(w.etk("bob"))
        .run();
    verify.code(0);
    assert_eq!(errors(&verify.json()), Vec::<String>::new());

    // Issued again (no name): the number rises, Alice stays on it.
    let out = etee(["pki", "revoke"]).arg(w.dir()).run();
    out.code(0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("number 2, 1 revoked"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    bob_refuses_as_revoked(&w, dir.path(), &from_alice, &["--crl", crl_arg]);
}

/// Bob opens Alice's `message` with `extra` (lists, a policy): refused as revoked, exit 1,
/// no content released.
fn bob_refuses_as_revoked(w: &World, dir: &Path, message: &[u8], extra: &[&str]) {
    let r = w.unseal(dir, "bob", message, extra);
    r.run.code(1);
    assert_eq!(errors(&r.verdict), vec!["OUTER_CERTIFICATE_REVOKED"]);
    assert!(!r.out.exists(), "content of a revoked sender released");
}

/// `etee unseal` as Bob that is expected to stop before reading the message.
fn refused_unseal(w: &World, extra: &[&str]) -> etee_e2e::Output {
    let out = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .args(extra)
        .password(&w.password)
        .stdin(b"unread".to_vec())
        .run();
    out.code(2);
    assert!(out.stdout.is_empty(), "content written");
    out
}

#[test]
fn bad_lists_and_policies_are_usage_errors() {
    let w = World::shared();
    let dir = scratch();
    let out = etee(["pki", "revoke"]).arg(dir.path()).run();
    out.code(2);
    assert!(out.stderr.contains("not a world"), "{}", out.stderr);

    let garbage = dir.path().join("garbage.crl");
    std::fs::write(&garbage, b"not a list").unwrap();
    let out = refused_unseal(w, &["--crl", garbage.to_str().unwrap()]);
    assert!(
        out.stderr.contains("garbage.crl")
            && out.stderr.contains("not a certificate revocation list"),
        "{}",
        out.stderr
    );
    // Mandatory without any list could never pass: refused up front.
    let out = refused_unseal(w, &["--revocation", "mandatory"]);
    assert!(out.stderr.contains("--crl"), "{}", out.stderr);
    let out = refused_unseal(w, &["--revocation", "often"]);
    assert!(out.stderr.contains("mandatory"), "{}", out.stderr);
}

#[test]
fn a_damaged_list_of_a_trusted_ca_is_refused_when_loaded() {
    let w = World::create();
    let dir = scratch();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"x");
    etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice"])
        .run()
        .code(0);
    let mut bytes = std::fs::read(w.path("ca.crl")).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 1;
    let damaged = dir.path().join("damaged.crl");
    std::fs::write(&damaged, &bytes).unwrap();
    // Ignoring it would let Alice's message through under the optional policy.
    let out = refused_unseal(&w, &["--crl", damaged.to_str().unwrap()]);
    assert!(
        out.stderr.contains("not signed by that trust anchor"),
        "{}",
        out.stderr
    );
    // Intact, the same list refuses Alice's message.
    bob_refuses_as_revoked(
        &w,
        dir.path(),
        &from_alice,
        &["--crl", w.path("ca.crl").to_str().unwrap()],
    );
    // `pki revoke` refuses to extend a list its CA did not sign.
    std::fs::write(w.path("ca.crl"), &bytes).unwrap();
    let out = etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "bob"])
        .run();
    out.code(2);
    assert!(
        out.stderr.contains("not signed by this world's CA"),
        "{}",
        out.stderr
    );
}

/// A distribution point on loopback: answers every GET with the bytes `list` holds then.
struct DistributionPoint {
    url: String,
    list: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl DistributionPoint {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ca.crl", listener.local_addr().unwrap());
        let list = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let served = list.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = served.lock().unwrap().clone();
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend(body);
                let _ = s.write_all(&answer);
            }
        });
        Self { url, list }
    }

    fn serve(&self, bytes: Vec<u8>) {
        *self.list.lock().unwrap() = bytes;
    }
}

/// `etee crl fetch` keeps a lists file up to date from the CA's distribution point: the
/// list is taken and written (and then used by `unseal --crl`), an unchanged list leaves
/// the file alone, a newer one replaces it, an older (replayed) one or another CA's is
/// refused with exit 1 and the file kept, and a file that is not lists is never
/// overwritten.
#[test]
fn crl_fetch_keeps_a_lists_file_up_to_date() {
    let w = World::create();
    let dir = scratch();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let point = DistributionPoint::start();
    let lists = dir.path().join("lists.pem");
    let fetch = |out: &Path| {
        etee(["crl", "fetch", "--url", &point.url, "--issuer"])
            .arg(w.ca())
            .arg("--out")
            .arg(out)
            .run()
    };

    etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice"])
        .run()
        .code(0);
    let first = std::fs::read(w.path("ca.crl")).unwrap();
    point.serve(first.clone());
    let out = fetch(&lists);
    out.code(0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(": new — ") && text.contains("1 revoked") && text.contains("written, 1 list"),
        "{text}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lists).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "lists are public: {mode:o}");
    }
    bob_refuses_as_revoked(
        &w,
        dir.path(),
        &from_alice,
        &["--crl", lists.to_str().unwrap()],
    );

    // The same list again: the file is not touched (the services would read it again).
    let before = std::fs::read(&lists).unwrap();
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let ino = inode(&lists);
    let out = fetch(&lists);
    out.code(0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(": unchanged — ") && text.contains("unchanged, 1 list"),
        "{text}"
    );
    assert_eq!(inode(&lists), ino, "an unchanged list rewrote the file");

    // The CA issues a newer list (a later second): it replaces the old one, as JSON.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    etee(["pki", "revoke"]).arg(w.dir()).run().code(0);
    point.serve(std::fs::read(w.path("ca.crl")).unwrap());
    let out = etee(["crl", "fetch", "--json", "--url", &point.url, "--issuer"])
        .arg(w.ca())
        .arg("--out")
        .arg(&lists)
        .run();
    out.code(0);
    let report = out.json();
    assert_eq!(report["written"], true, "{report}");
    assert_eq!(
        report["urls"][0]["taken"][0]["freshness"], "newer",
        "{report}"
    );
    let newer = std::fs::read(&lists).unwrap();
    assert_ne!(newer, before);

    // The first list served again (a replay): refused, exit 1, the file kept.
    point.serve(first);
    let out = fetch(&lists);
    out.code(1);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("refused — ") && text.contains("older"),
        "{text}"
    );
    assert_eq!(std::fs::read(&lists).unwrap(), newer);

    // The list checked against another world's CA (the same name, another key), as a
    // forged list would be: refused.
    let other = World::shared();
    point.serve(std::fs::read(w.path("ca.crl")).unwrap());
    let out = etee(["crl", "fetch", "--url", &point.url, "--issuer"])
        .arg(other.ca())
        .arg("--out")
        .arg(dir.path().join("other.pem"))
        .run();
    out.code(1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not signed by"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!dir.path().join("other.pem").exists());

    // A --out that is not a lists file (a mistyped path): never overwritten.
    let wrong = dir.path().join("pin.txt");
    std::fs::write(&wrong, b"123456\n").unwrap();
    let out = fetch(&wrong);
    out.code(2);
    assert!(out.stderr.contains("not overwritten"), "{}", out.stderr);
    assert_eq!(std::fs::read(&wrong).unwrap(), b"123456\n");
}

/// `etee crl fetch --from-cert`: an institution's own authentication certificate names
/// where its CA publishes its list (crlDistributionPoints, written by `pki init
/// --crl-url`), and that list is the one that checks the other institutions: fetched from
/// there, it makes Bob refuse Alice's message once the CA revoked her. The URL is fetched
/// once whether given by certificates, --url or both, and each output line says where it
/// came from; a certificate that names no point is a warning and exit 1 (the others are
/// fetched all the same); none at all is exit 2.
#[test]
fn crl_fetch_finds_the_list_where_a_certificate_says() {
    let point = DistributionPoint::start();
    let w = World::create_with(&["--crl-url", &point.url]);
    let dir = scratch();
    let from_alice = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let from_bob = w.seal(dir.path(), "bob", &["alice"], b"for Alice");
    // Bob's own authentication certificate, as his keystore holds it.
    let bob_auth = dir.path().join("bob-auth.pem");
    std::fs::write(&bob_auth, outer_certificate_pem(&from_bob, "bob")).unwrap();
    if openssl_cli() {
        let (ok, text) = openssl_says(&[
            "x509".as_ref(),
            "-noout".as_ref(),
            "-ext".as_ref(),
            "crlDistributionPoints".as_ref(),
            "-in".as_ref(),
            bob_auth.as_os_str(),
        ]);
        assert!(ok && text.contains(&format!("URI:{}", point.url)), "{text}");
    }
    etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice"])
        .run()
        .code(0);
    point.serve(std::fs::read(w.path("ca.crl")).unwrap());

    let lists = dir.path().join("lists.pem");
    // `crl fetch` with `extra` options and these certificates, into `lists`.
    let fetch_from = |extra: &[&str], certs: &[&Path]| {
        let mut cmd = etee(["crl", "fetch"]).args(extra);
        for cert in certs {
            cmd = cmd.arg("--from-cert").arg(cert);
        }
        cmd.arg("--issuer")
            .arg(w.ca())
            .arg("--out")
            .arg(&lists)
            .run()
    };
    let out = fetch_from(&[], &[&bob_auth]);
    out.code(0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "{} (from {}): new — ",
            point.url,
            bob_auth.display()
        )) && text.contains("1 revoked")
            && text.contains("written, 1 list"),
        "{text}"
    );
    bob_refuses_as_revoked(
        &w,
        dir.path(),
        &from_alice,
        &["--crl", lists.to_str().unwrap()],
    );

    // The same point from Alice's certificate, from --url, and a bundle of Bob's
    // certificate with the CA's (a root names no point: a note, not a failure): fetched
    // once, named by all; the list unchanged.
    let alice_auth = dir.path().join("alice-auth.pem");
    std::fs::write(&alice_auth, outer_certificate_pem(&from_alice, "alice")).unwrap();
    let bundle = dir.path().join("bundle.pem");
    let mut both = std::fs::read(&bob_auth).unwrap();
    both.extend(std::fs::read(w.ca()).unwrap());
    std::fs::write(&bundle, both).unwrap();
    let out = fetch_from(&["--json", "--url", &point.url], &[&alice_auth, &bundle]);
    out.code(0);
    let report = out.json();
    let urls = report["urls"].as_array().unwrap();
    assert_eq!(urls.len(), 1, "{report}");
    assert_eq!(urls[0]["url"], point.url.as_str());
    assert_eq!(urls[0]["given"], true);
    assert_eq!(urls[0]["taken"][0]["freshness"], "unchanged", "{report}");
    let from: Vec<(String, u64)> = urls[0]["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["file"].as_str().unwrap().to_string(),
                c["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        from,
        vec![
            (alice_auth.display().to_string(), 1),
            (bundle.display().to_string(), 1)
        ],
        "{report}"
    );
    let certs = report["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 3, "{report}");
    assert_eq!(certs[2]["position"], 2);
    assert_eq!(certs[2]["skipped"][0]["kind"], "no-extension", "{report}");
    assert_eq!(
        certs[2]["missing"], false,
        "a root names no point: {report}"
    );
    assert_eq!(report["written"], false);

    // A certificate that names no point (a world made without --crl-url): a warning
    // naming it, exit 1, the other URLs fetched all the same.
    let plain = World::shared();
    let plain_from_bob = plain.seal(dir.path(), "bob", &["alice"], b"x");
    let no_point = dir.path().join("no-point.pem");
    std::fs::write(&no_point, outer_certificate_pem(&plain_from_bob, "bob")).unwrap();
    let out = fetch_from(&[], &[&no_point, &bob_auth]);
    out.code(1);
    assert!(
        out.stderr.contains("etee: warning: ")
            && out.stderr.contains(&no_point.display().to_string())
            && out.stderr.contains("no crlDistributionPoints"),
        "{}",
        out.stderr
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": unchanged — "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Only such certificates: nothing to fetch, a usage error, the file untouched.
    let before = std::fs::read(&lists).unwrap();
    let out = fetch_from(&[], &[&no_point]);
    out.code(2);
    assert!(
        out.stderr.contains("no http:// distribution point"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&lists).unwrap(), before);
    // Neither --url nor --from-cert: refused by the parser.
    etee(["crl", "fetch", "--issuer"])
        .arg(w.ca())
        .arg("--out")
        .arg(&lists)
        .run()
        .code(2);
}

/// `pki revoke` refuses to list the world CA's own certificate and a list current for no
/// time at all, saying why, and leaves the list as it was.
#[test]
fn revoking_the_ca_itself_or_for_no_time_is_refused() {
    let w = World::create();
    etee(["pki", "revoke"]).arg(w.dir()).run().code(0);
    let before = std::fs::read(w.path("ca.crl")).unwrap();
    let out = etee(["pki", "revoke"])
        .arg(w.dir())
        .arg("--cert")
        .arg(w.ca())
        .run();
    out.code(2);
    assert!(
        out.stderr.contains("the world CA's own certificate"),
        "{}",
        out.stderr
    );
    let out = etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice", "--valid-for", "0"])
        .run();
    out.code(2);
    assert!(
        out.stderr.contains("--valid-for 0") && out.stderr.contains("at least 1 second"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(w.path("ca.crl")).unwrap(), before);
}

/// Two revocations at once do not undo each other: the second waits for the first's
/// lock (`ca.crl.lock`), saying so, and then adds to its list.
#[test]
fn a_revocation_waits_for_one_under_way() {
    let w = World::create();
    let lock = std::fs::File::create(w.path("ca.crl.lock")).unwrap();
    lock.lock().unwrap();
    let child = std::process::Command::new(etee_e2e::etee_bin())
        .args(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "alice"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !w.path("ca.crl").exists(),
        "the list was written while another update held its lock"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("being updated by another etee command"),
        "{stderr}"
    );
    assert!(w.path("ca.crl").exists());
}
