//! `etee seal` / `etee unseal` round trips in a world made by `etee pki init`: content,
//! verdict JSON, recipients (ETKs, KEK, both), failures that must withhold content, the
//! password channels, exit codes and the signing-time window.

use etee_e2e::{content, etee, now_unix, parse_rfc3339, rfc3339, scratch, sha256_hex, World};
use serde_json::{json, Value};
use std::path::Path;

const KEK: &str = "00112233445566778899aabbccddeeff";
const OTHER_KEK: &str = "ffeeddccbbaa99887766554433221100";
/// Base64 of the ASCII bytes `etee-e2e-kek-id-0001`.
const KEK_ID: &str = "ZXRlZS1lMmUta2VrLWlkLTAwMDE=";

fn world() -> &'static World {
    World::shared()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")))
        .collect()
}

#[track_caller]
fn assert_clean(v: &Value) {
    assert_eq!(v["fatal"], Value::Null, "verdict {v}");
    assert_eq!(names(&v["errors"]), Vec::<&str>::new(), "verdict {v}");
    assert_eq!(names(&v["warnings"]), Vec::<&str>::new(), "verdict {v}");
}

/// Seals with KEK options (and optionally ETKs) from Alice; file to file.
fn seal_with_kek(dir: &Path, to: &[&str], plaintext: &[u8]) -> Vec<u8> {
    let w = world();
    let input = dir.join("kek-plain");
    let out = dir.join("kek-sealed");
    std::fs::write(&input, plaintext).unwrap();
    let mut cmd = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .args(["--kek", KEK, "--kek-id", KEK_ID, "--trust"])
        .arg(w.ca())
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .password(&w.password);
    for who in to {
        cmd = cmd.arg("--to").arg(w.etk(who));
    }
    cmd.run().code(0);
    std::fs::read(out).unwrap()
}

/// `unseal --kek HEX --json` without any keystore (and without a password).
fn unseal_with_kek(dir: &Path, sealed: &[u8], kek: &str) -> (etee_e2e::Output, Value, Vec<u8>) {
    let input = dir.join(format!("kek-in-{}", etee_e2e::unique()));
    let out = dir.join(format!("kek-out-{}", etee_e2e::unique()));
    std::fs::write(&input, sealed).unwrap();
    let run = etee(["unseal", "--json", "--kek", kek, "--trust"])
        .arg(world().ca())
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .run();
    let v = run.json();
    let content = std::fs::read(&out).unwrap_or_default();
    if run.code != Some(0) {
        assert!(!out.exists(), "content written despite exit {:?}", run.code);
    }
    (run, v, content)
}

#[test]
fn seal_for_bob_then_bob_unseals_with_full_verdict() {
    let w = world();
    let dir = scratch();
    let plain = content(5_000, 1);
    let before = now_unix();
    let sealed = w.seal(dir.path(), "alice", &["bob"], &plain);
    let after = now_unix();
    assert!(sealed.len() > plain.len(), "sealed output is too short");

    let u = w.unseal(dir.path(), "bob", &sealed, &[]);
    u.run.code(0);
    assert_eq!(u.content(), plain, "content differs after the round trip");

    let v = &u.verdict;
    assert_clean(v);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "fatal",
        "errors",
        "warnings",
        "content_len",
        "content_sha256",
        "sender",
        "signing_time",
    ] {
        assert!(keys.contains(&k), "JSON lacks {k:?}: {v}");
    }
    assert_eq!(v["content_len"].as_u64(), Some(plain.len() as u64), "{v}");
    let digest = v["content_sha256"].as_str().expect("content_sha256 string");
    assert_eq!(digest, sha256_hex(&plain));
    assert!(
        digest.len() == 64
            && digest
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    );

    // The sender is Alice, the hospital; not Bob.
    let sender = &v["sender"];
    assert!(sender.is_object(), "sender {sender}");
    assert_eq!(
        sender["identities"],
        json!([{"id_type": "NIHII-HOSPITAL", "value": "71000436", "application_id": null}]),
        "{v}"
    );
    let subject = sender["subject"].as_str().expect("subject string");
    assert!(subject.contains("NIHII-HOSPITAL=71000436") && subject.contains("alice"));
    assert!(!subject.contains("PHARMACY"), "{subject}");
    assert!(sender["issuer"].as_str().is_some_and(|s| !s.is_empty()));
    let serial = sender["serial"].as_str().expect("serial string");
    assert!(
        !serial.is_empty() && serial.bytes().all(|c| c.is_ascii_digit()),
        "{serial}"
    );
    assert_eq!(sender["key_id"], Value::Null);

    let st = v["signing_time"].as_str().expect("signing_time string");
    let t = parse_rfc3339(st).unwrap_or_else(|| panic!("signing_time {st:?} is not RFC 3339"));
    assert!(
        (before - 2..=after + 2).contains(&t),
        "signing time {st} not within the sealing ({}..{})",
        rfc3339(before),
        rfc3339(after)
    );
    assert_eq!(v["opened_with"], format!("key:{}", w.etk_serial("bob")));
}

/// Content past the 64 KiB the output spool keeps in memory waits in an anonymous,
/// encrypted file until the verdict: it comes out whole to standard output and to a file,
/// and nothing is left in the spool's directory (the temporary one, or the file's).
#[test]
fn large_content_waits_in_an_encrypted_spool_and_leaves_nothing_behind() {
    let w = world();
    let scratch = etee_e2e::scratch();
    let tmp = scratch.path().join("tmp");
    let out_dir = scratch.path().join("out");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let plain = content(300_000, 7);
    let sealed = w.seal(scratch.path(), "alice", &["bob"], &plain);
    let unseal = || {
        etee(["unseal", "--keystore"])
            .arg(w.p12("bob"))
            .arg("--trust")
            .arg(w.ca())
            .password(&w.password)
            .env("TMPDIR", &tmp)
    };
    let piped = unseal().stdin(sealed.clone()).run();
    piped.code(0);
    assert!(piped.stdout == plain, "piped content differs");
    let file = out_dir.join("plain.bin");
    unseal()
        .arg("--out")
        .arg(&file)
        .stdin(sealed.clone())
        .run()
        .code(0);
    assert!(
        std::fs::read(&file).unwrap() == plain,
        "written content differs"
    );
    // Refused (a byte of the ciphertext changed): no output, nothing left anywhere.
    let mut bad = sealed.clone();
    let at = bad.len() / 2;
    bad[at] ^= 1;
    let refused = out_dir.join("refused.bin");
    let r = unseal().arg("--out").arg(&refused).stdin(bad).run();
    r.code(1);
    assert!(!refused.exists());
    let left = |d: &std::path::Path| std::fs::read_dir(d).unwrap().count();
    assert_eq!(left(&tmp), 0, "files left in TMPDIR");
    assert_eq!(left(&out_dir), 1, "only the written file");

    // --in and --out the same file (also through another name): refused, input intact.
    let sealed_file = out_dir.join("sealed.p7");
    std::fs::write(&sealed_file, &sealed).unwrap();
    let alias = out_dir.join("alias.p7");
    std::fs::hard_link(&sealed_file, &alias).unwrap();
    for out in [&sealed_file, &alias] {
        let run = unseal()
            .arg("--in")
            .arg(&sealed_file)
            .arg("--out")
            .arg(out)
            .run();
        run.code(2);
        assert!(run.stderr.contains("the same file"), "{}", run.stderr);
    }
    let run = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(&file)
        .arg("--out")
        .arg(&file)
        .password(&w.password)
        .run();
    run.code(2);
    assert!(run.stderr.contains("the same file"), "{}", run.stderr);
    assert!(
        std::fs::read(&file).unwrap() == plain,
        "the input was replaced"
    );
    assert!(std::fs::read(&sealed_file).unwrap() == sealed);

    // A certificate given as the keystore: said what it is.
    let run = etee(["unseal", "--keystore"])
        .arg(w.ca())
        .arg("--in")
        .arg(&sealed_file)
        .password(&w.password)
        .run();
    run.code(2);
    assert!(
        run.stderr
            .contains("not a PKCS#12 keystore (.p12) but a PEM file holding a CERTIFICATE"),
        "{}",
        run.stderr
    );
}

/// `--out` naming something that is not a regular file (a FIFO here; `/dev/null` or
/// `/dev/stdout` alike) is written in place: the atomic rename used for files would replace
/// it with a regular file.
#[test]
fn out_to_a_fifo_writes_into_it_and_leaves_it_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let w = world();
    let scratch = etee_e2e::scratch();
    let fifo = scratch.path().join("content.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let plain = content(5_000, 3);
    let sealed = w.seal(scratch.path(), "alice", &["bob"], &plain);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--out")
        .arg(&fifo)
        .password(&w.password)
        .stdin(sealed)
        .run()
        .code(0);
    assert!(
        reader.join().unwrap() == plain,
        "the FIFO's reader got the content"
    );
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "still a FIFO: {kind:?}");
}

#[test]
fn stdin_to_stdout_in_both_directions() {
    let w = world();
    let plain = content(2_345, 2);
    let sealed = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--trust")
        .arg(w.ca())
        .password(&w.password)
        .stdin(plain.clone())
        .run();
    sealed.code(0);
    assert!(
        sealed.stdout.starts_with(&[0x30, 0x80]),
        "stdout is not a BER message: {:02x?}",
        &sealed.stdout[..sealed.stdout.len().min(8)]
    );

    let opened = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .password(&w.password)
        .stdin(sealed.stdout.clone())
        .run();
    opened.code(0);
    assert_eq!(opened.stdout, plain, "piped content differs");
    // Without --json the verdict is a human report on stderr.
    assert!(
        opened
            .stderr
            .contains(&format!("OK      {} bytes", plain.len())),
        "stderr: {}",
        opened.stderr
    );

    // --json with no --out: the verdict alone on stdout, content goes nowhere.
    let json_only = etee(["unseal", "--json", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .password(&w.password)
        .stdin(sealed.stdout)
        .run();
    json_only.code(0);
    let v = json_only.json();
    assert_clean(&v);
    assert_eq!(v["content_sha256"], sha256_hex(&plain));
}

#[test]
fn several_recipients_can_each_open() {
    let w = world();
    let dir = scratch();
    let plain = content(1_500, 3);
    let sealed = w.seal(dir.path(), "alice", &["bob", "alice"], &plain);
    for who in ["bob", "alice"] {
        let u = w.unseal(dir.path(), who, &sealed, &[]);
        u.run.code(0);
        assert_clean(&u.verdict);
        assert_eq!(u.content(), plain, "{who} got different content");
        assert_eq!(
            u.verdict["opened_with"],
            format!("key:{}", w.etk_serial(who)),
            "{who}"
        );
    }
}

#[test]
fn kek_only_message_opens_with_the_kek_and_nothing_else() {
    let w = world();
    let dir = scratch();
    let plain = content(3_001, 4);
    let sealed = seal_with_kek(dir.path(), &[], &plain);

    let (run, v, got) = unseal_with_kek(dir.path(), &sealed, KEK);
    run.code(0);
    assert_clean(&v);
    assert_eq!(got, plain);
    assert_eq!(v["opened_with"], "kek");
    assert_eq!(v["sender"]["identities"][0]["id_type"], "NIHII-HOSPITAL");

    // Bob's keystore holds no KEK: the message has no KTRI for it.
    let u = w.unseal(dir.path(), "bob", &sealed, &[]);
    u.run.code(1);
    assert_eq!(
        u.verdict["fatal"], "ENVELOPED_DATA_CONTAINS_NO_KEYTRANSRECIPIENTINFOS",
        "{}",
        u.verdict
    );
    assert!(!u.out.exists(), "content written for a fatal verdict");

    // Another KEK cannot unwrap the content key.
    let (run, v, _) = unseal_with_kek(dir.path(), &sealed, OTHER_KEK);
    run.code(1);
    assert_eq!(
        v["fatal"], "SECRET_KEY_CAN_NOT_DECRYPT_KEKRECIPIENTINFOS",
        "{v}"
    );
    assert_eq!(v["content_len"], Value::Null);
    assert_eq!(v["content_sha256"], Value::Null);
}

#[test]
fn hybrid_message_opens_with_the_etk_key_or_the_kek() {
    let w = world();
    let dir = scratch();
    let plain = content(10, 5);
    let sealed = seal_with_kek(dir.path(), &["bob"], &plain);

    let u = w.unseal(dir.path(), "bob", &sealed, &[]);
    u.run.code(0);
    assert_clean(&u.verdict);
    assert_eq!(u.content(), plain);
    assert_eq!(
        u.verdict["opened_with"],
        format!("key:{}", w.etk_serial("bob"))
    );

    let (run, v, got) = unseal_with_kek(dir.path(), &sealed, KEK);
    run.code(0);
    assert_clean(&v);
    assert_eq!(got, plain);
    assert_eq!(v["opened_with"], "kek");

    // Alice is not a KTRI recipient of it.
    let u = w.unseal(dir.path(), "alice", &sealed, &[]);
    u.run.code(1);
    assert_eq!(u.verdict["fatal"], "DECRYPTION_PRIVATE_KEY_NOT_FOUND");
}

#[test]
fn wrong_keystore_is_fatal_and_creates_no_output() {
    let w = world();
    let dir = scratch();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"for Bob only");
    let u = w.unseal(dir.path(), "alice", &sealed, &[]);
    u.run.code(1);
    let v = &u.verdict;
    assert_eq!(v["fatal"], "DECRYPTION_PRIVATE_KEY_NOT_FOUND", "{v}");
    assert_eq!(v["content_len"], Value::Null, "{v}");
    assert_eq!(v["content_sha256"], Value::Null, "{v}");
    assert_eq!(v["opened_with"], Value::Null, "{v}");
    assert!(!u.out.exists(), "an output file was created");
    // Nor any leftover temporary file next to it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("seal-") && !n.starts_with("unseal-in-"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn tampered_messages_are_refused_without_output() {
    let w = world();
    let dir = scratch();
    let plain = content(4_000, 6);
    let sealed = w.seal(dir.path(), "alice", &["bob"], &plain);
    let n = sealed.len();
    // The middle (inside the encrypted content), both quarters, and the outer signature
    // value near the end (before the six end-of-contents octets).
    for pos in [n / 4, n / 2, 3 * n / 4, n - 20] {
        let mut bad = sealed.clone();
        bad[pos] ^= 0x01;
        let u = w.unseal(dir.path(), "bob", &bad, &[]);
        u.run.code(1);
        let v = &u.verdict;
        assert!(
            !v["fatal"].is_null() || !names(&v["errors"]).is_empty(),
            "byte {pos}: no fatal, no error: {v}"
        );
        assert_eq!(v["content_sha256"], Value::Null, "byte {pos}: {v}");
        assert!(!u.out.exists(), "byte {pos}: output file created");

        // Piped: nothing at all reaches stdout.
        let piped = etee(["unseal", "--keystore"])
            .arg(w.p12("bob"))
            .arg("--trust")
            .arg(w.ca())
            .password(&w.password)
            .stdin(bad)
            .run();
        piped.code(1);
        assert!(
            piped.stdout.is_empty(),
            "byte {pos}: content reached stdout"
        );
    }
}

#[test]
fn refused_message_leaves_an_existing_out_file_untouched() {
    let w = world();
    let dir = scratch();
    let mut sealed = w.seal(dir.path(), "alice", &["bob"], &content(2_000, 7));
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x80;
    let input = dir.path().join("bad.msg");
    let out = dir.path().join("existing.txt");
    std::fs::write(&input, &sealed).unwrap();
    std::fs::write(&out, b"previous content").unwrap();
    etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .password(&w.password)
        .run()
        .code(1);
    assert_eq!(std::fs::read(&out).unwrap(), b"previous content");
}

#[test]
fn untrusted_sender_is_an_error_that_withholds_content() {
    let w = world();
    let dir = scratch();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"hello");
    let input = dir.path().join("m");
    let out = dir.path().join("o");
    std::fs::write(&input, &sealed).unwrap();
    // No --trust: the chain cannot be validated.
    let run = etee(["unseal", "--json", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .password(&w.password)
        .run();
    run.code(1);
    let v = run.json();
    assert_eq!(v["fatal"], Value::Null, "{v}");
    assert!(
        names(&v["errors"]).contains(&"OUTER_CERTIFICATE_CHAIN_NOT_TRUSTED"),
        "{v}"
    );
    assert_eq!(v["content_len"], Value::Null);
    assert!(!out.exists(), "content released despite an error");
}

#[test]
fn password_file_works_for_seal_and_unseal() {
    let w = world();
    let dir = scratch();
    // With a trailing newline, as `echo pw > file` writes it: the first line counts.
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{}\n", w.password)).unwrap();
    let plain = b"sealed with a password file".to_vec();
    let input = dir.path().join("p");
    let sealed = dir.path().join("s");
    let out = dir.path().join("o");
    std::fs::write(&input, &plain).unwrap();
    etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--password-file")
        .arg(&pw_file)
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&sealed)
        .run()
        .code(0);
    etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--password-file")
        .arg(w.password_file()) // pki init's file, no newline
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&sealed)
        .arg("--out")
        .arg(&out)
        .run()
        .code(0);
    assert_eq!(std::fs::read(&out).unwrap(), plain);
}

#[test]
fn missing_password_is_a_usage_error() {
    let w = world();
    let dir = scratch();
    let input = dir.path().join("p");
    std::fs::write(&input, b"x").unwrap();
    let out = dir.path().join("o");
    let seal = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .run();
    seal.code(2);
    let unseal = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .run();
    unseal.code(2);
    for r in [&seal, &unseal] {
        assert!(
            r.stderr.contains("password")
                && r.stderr.contains("--password-file")
                && r.stderr.contains("ETEE_KEYSTORE_PASSWORD"),
            "unclear message: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
    assert!(!out.exists());
}

#[test]
fn wrong_password_is_a_usage_error_naming_the_keystore() {
    let w = world();
    let run = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--to")
        .arg(w.etk("bob"))
        .password("not-the-password")
        .stdin(b"x".to_vec())
        .run();
    run.code(2);
    assert!(run.stderr.contains("alice.p12"), "stderr: {}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "sealed output despite a bad keystore"
    );
}

#[test]
fn bad_usage_exits_2() {
    let w = world();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["unseal".into(), "--bogus".into()], "--bogus"),
        (vec!["seal".into(), "--frobnicate".into()], "--frobnicate"),
        (vec!["no-such-command".into()], "no-such-command"),
        (vec![], "Usage"),
        // No recipient at all.
        (
            vec![
                "seal".into(),
                "--keystore".into(),
                w.p12("alice").display().to_string(),
            ],
            "recipient",
        ),
        // --kek without --kek-id.
        (
            vec![
                "seal".into(),
                "--keystore".into(),
                w.p12("alice").display().to_string(),
                "--kek".into(),
                KEK.into(),
            ],
            "--kek-id",
        ),
        // Neither keystore nor KEK to unseal with.
        (vec!["unseal".into()], "--keystore"),
        // A KEK that is not hex / has a bad length.
        (vec!["unseal".into(), "--kek".into(), "xyz".into()], "hex"),
        (
            vec!["unseal".into(), "--kek".into(), "0011".into()],
            "16, 24 or 32",
        ),
        // --at that is not RFC 3339.
        (
            vec![
                "etk".into(),
                "verify".into(),
                w.etk("bob").display().to_string(),
                "--at".into(),
                "tomorrow".into(),
            ],
            "RFC 3339",
        ),
    ];
    for (args, hint) in cases {
        let r = etee(&args).password(&w.password).run();
        r.code(2);
        assert!(
            r.stderr.contains(hint),
            "`etee {}`: stderr lacks {hint:?}: {}",
            args.join(" "),
            r.stderr
        );
    }
}

#[test]
fn unreadable_input_is_an_io_error() {
    let w = world();
    let dir = scratch();
    let missing = dir.path().join("does-not-exist.msg");
    let r = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--in")
        .arg(&missing)
        .password(&w.password)
        .run();
    r.code(2);
    assert!(r.stderr.contains("does-not-exist.msg"), "{}", r.stderr);
    let r = etee(["seal", "--keystore"])
        .arg(dir.path().join("no.p12"))
        .arg("--to")
        .arg(w.etk("bob"))
        .password(&w.password)
        .stdin(b"x".to_vec())
        .run();
    r.code(2);
    assert!(r.stderr.contains("no.p12"), "{}", r.stderr);
}

#[test]
fn far_future_evaluation_warns_but_releases_reproducibly() {
    let w = world();
    let dir = scratch();
    let plain = content(777, 8);
    let sealed = w.seal(dir.path(), "alice", &["bob"], &plain);
    let at = ["--at", "2099-01-01T00:00:00Z"];
    let a = w.unseal(dir.path(), "bob", &sealed, &at);
    let b = w.unseal(dir.path(), "bob", &sealed, &at);
    for u in [&a, &b] {
        u.run.code(0);
        assert_eq!(u.verdict["fatal"], Value::Null);
        assert_eq!(
            names(&u.verdict["errors"]),
            Vec::<&str>::new(),
            "{}",
            u.verdict
        );
        assert_eq!(names(&u.verdict["warnings"]), ["SIGNING_TIME_EXPIRED"]);
        assert_eq!(u.content(), plain, "warnings must not withhold content");
    }
    assert_eq!(
        a.verdict, b.verdict,
        "same input and --at, different verdicts"
    );
    assert_eq!(a.run.stdout, b.run.stdout);
}

/// The official window: accepted iff `at − 5 min − skew < signingTime < at + skew`, with
/// the default skew of 5 min; outside it, only a warning.
#[test]
fn signing_time_window_edges() {
    let w = world();
    let dir = scratch();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"timing");
    let first = w.unseal(dir.path(), "bob", &sealed, &[]);
    first.run.code(0);
    let st = parse_rfc3339(first.verdict["signing_time"].as_str().unwrap()).unwrap();
    let cases = [
        (st, false),
        (st + 599, false), // signed 9:59 before evaluation
        (st + 601, true),  // 10:01 before: too old
        (st - 299, false), // signed 4:59 in the future: within the skew
        (st - 301, true),  // 5:01 in the future
    ];
    for (at, warned) in cases {
        let at = rfc3339(at);
        let u = w.unseal(dir.path(), "bob", &sealed, &["--at", &at]);
        u.run.code(0);
        let expected: &[&str] = if warned {
            &["SIGNING_TIME_EXPIRED"]
        } else {
            &[]
        };
        assert_eq!(
            names(&u.verdict["warnings"]),
            expected,
            "signed {}, evaluated {at}",
            rfc3339(st)
        );
    }
    // Options widen the window.
    let late = rfc3339(st + 3_600);
    let u = w.unseal(
        dir.path(),
        "bob",
        &sealed,
        &["--at", &late, "--signing-time-expiration", "3600"],
    );
    u.run.code(0);
    assert_eq!(names(&u.verdict["warnings"]), Vec::<&str>::new());
}

#[test]
fn kek_file_for_seal_and_unseal() {
    let w = world();
    let dir = scratch();
    let kek_file = dir.path().join("kek.hex");
    std::fs::write(&kek_file, format!("{KEK}\n")).unwrap();
    let plain = content(1_999, 12);
    let sealed = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--kek-file")
        .arg(&kek_file)
        .args(["--kek-id", KEK_ID])
        .password(&w.password)
        .stdin(plain.clone())
        .run();
    sealed.code(0);
    // The file and the hex option name the same key.
    let (run, v, got) = unseal_with_kek(dir.path(), &sealed.stdout, KEK);
    run.code(0);
    assert_clean(&v);
    assert_eq!(got, plain);
    let opened = etee(["unseal", "--kek-file"])
        .arg(&kek_file)
        .arg("--trust")
        .arg(w.ca())
        .stdin(sealed.stdout)
        .run();
    opened.code(0);
    assert_eq!(opened.stdout, plain);
    // Not both.
    let both = etee(["unseal", "--kek", KEK, "--kek-file"])
        .arg(&kek_file)
        .run();
    both.code(2);
}

#[test]
fn expected_signer_is_enforced() {
    let w = world();
    let dir = scratch();
    let plain = content(321, 13);
    let sealed = w.seal(dir.path(), "alice", &["bob"], &plain);
    let alice_auth = dir.path().join("alice-auth.pem");
    std::fs::write(
        &alice_auth,
        etee_e2e::outer_certificate_pem(&sealed, "NIHII-HOSPITAL=71000436"),
    )
    .unwrap();

    let alice_auth_arg = alice_auth.display().to_string();
    let u = w.unseal(
        dir.path(),
        "bob",
        &sealed,
        &["--expect-signer", &alice_auth_arg],
    );
    u.run.code(0);
    assert_clean(&u.verdict);
    assert_eq!(u.content(), plain);

    // Alice's ETK encryption certificate has the same subject, but it is not the signer.
    let other = w.etk_cert_pem("alice").display().to_string();
    let u = w.unseal(dir.path(), "bob", &sealed, &["--expect-signer", &other]);
    u.run.code(1);
    assert!(
        names(&u.verdict["errors"])
            .contains(&"AUTHENTICATION_CERTIFICATE_NOT_IN_LIST_EXPECTED_SIGNERS"),
        "{}",
        u.verdict
    );
    assert!(!u.out.exists(), "content released for an unexpected signer");

    // Either of two expected signers will do.
    let u = w.unseal(
        dir.path(),
        "bob",
        &sealed,
        &[
            "--expect-signer",
            &other,
            "--expect-signer",
            &alice_auth_arg,
        ],
    );
    u.run.code(0);
    assert_clean(&u.verdict);
}

/// A pipe whose reader is already gone, for a child's standard output: every write to it
/// fails with EPIPE, deterministically. (Its read end belonged to a child that has exited:
/// `etee --version`, which does not read its standard input.)
fn closed_pipe() -> std::process::Stdio {
    let mut reader = std::process::Command::new(etee_e2e::etee_bin())
        .arg("--version")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawning etee --version");
    let write_end = reader.stdin.take().expect("stdin pipe");
    assert!(reader.wait().unwrap().success());
    std::process::Stdio::from(write_end)
}

/// Runs etee with `stdout`, returning its exit code and standard error.
fn run_with_stdout(
    args: &[&std::ffi::OsStr],
    stdout: std::process::Stdio,
    password: Option<&str>,
) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(etee_e2e::etee_bin());
    cmd.args(args)
        .env_remove(etee_e2e::PASSWORD_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped());
    if let Some(p) = password {
        cmd.env(etee_e2e::PASSWORD_ENV, p);
    }
    let out = cmd.spawn().unwrap().wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_quiet_stop(what: &str, code: Option<i32>, stderr: &str, expected: i32) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what}: {stderr}"
    );
    assert_ne!(code, Some(101), "{what} panicked: {stderr}");
    assert_eq!(code, Some(expected), "{what}: {stderr}");
}

/// `etee ... | head -1`: a reader that goes away ends the command quietly with 141 (what a
/// shell reports for a writer killed by SIGPIPE), never println!'s panic (exit 101).
#[test]
fn a_closed_standard_output_ends_commands_quietly() {
    let w = world();
    let dir = scratch();
    let os = |s: &str| std::ffi::OsString::from(s);
    let ca = w.ca().into_os_string();
    let bob_etk = w.etk("bob").into_os_string();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"for a reader that left");
    let sealed_path = dir.path().join("sealed");
    std::fs::write(&sealed_path, &sealed).unwrap();
    let input = dir.path().join("plain");
    std::fs::write(&input, b"plain").unwrap();
    let cases: Vec<(Vec<std::ffi::OsString>, i32)> = vec![
        // clap prints help itself and swallows the error: exit 0.
        (vec![os("--help")], 0),
        (
            vec![
                os("etk"),
                os("verify"),
                bob_etk.clone(),
                os("--trust"),
                ca.clone(),
            ],
            141,
        ),
        (
            vec![
                os("etk"),
                os("verify"),
                os("--json"),
                bob_etk.clone(),
                os("--trust"),
                ca.clone(),
            ],
            141,
        ),
        (
            vec![
                os("unseal"),
                os("--json"),
                os("--keystore"),
                w.p12("bob").into_os_string(),
                os("--trust"),
                ca.clone(),
                os("--in"),
                sealed_path.clone().into_os_string(),
            ],
            141,
        ),
        (
            vec![
                os("unseal"),
                os("--keystore"),
                w.p12("bob").into_os_string(),
                os("--trust"),
                ca.clone(),
                os("--in"),
                sealed_path.clone().into_os_string(),
            ],
            141,
        ),
        (
            vec![
                os("seal"),
                os("--keystore"),
                w.p12("alice").into_os_string(),
                os("--to"),
                bob_etk.clone(),
                os("--trust"),
                ca.clone(),
                os("--in"),
                input.into_os_string(),
            ],
            141,
        ),
        (
            vec![
                os("pki"),
                os("init"),
                dir.path().join("world").into_os_string(),
                os("--institution"),
                os("carol:NIHII-HOSPITAL=71000535"),
            ],
            141,
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, stderr) = run_with_stdout(&args, closed_pipe(), Some(&w.password));
        assert_quiet_stop(&format!("{args:?}"), code, &stderr, expected);
    }

    // A reader that reads one line, then closes: a 1 MiB unsealed text (more than a pipe
    // holds) is cut short without a word.
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| {
            format!("line {i:06} of a long unsealed text, for a short reader\n").into_bytes()
        })
        .collect();
    assert!(text.len() > 1 << 20);
    let sealed = w.seal(dir.path(), "alice", &["bob"], &text);
    std::fs::write(&sealed_path, &sealed).unwrap();
    let mut child = std::process::Command::new(etee_e2e::etee_bin())
        .args(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&sealed_path)
        .env(etee_e2e::PASSWORD_ENV, &w.password)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(
            first,
            "line 000000 of a long unsealed text, for a short reader\n"
        );
    } // the read end closes here
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_quiet_stop("unseal | head -1", out.status.code(), &stderr, 141);
}

/// `seal` refuses an ETK that fails the checks with exit 1 (a check's outcome, like
/// `etk verify`), and a hint that fits the problem, the override last.
#[test]
fn seal_refusals_say_what_to_check() {
    let w = world();
    let dir = scratch();
    let seal = |etk: &Path, trust: &Path| {
        etee(["seal", "--keystore"])
            .arg(w.p12("alice"))
            .arg("--to")
            .arg(etk)
            .arg("--trust")
            .arg(trust)
            .arg("--out")
            .arg(dir.path().join("refused"))
            .password(&w.password)
            .stdin(b"x".to_vec())
            .run()
    };
    // A chain problem: a --trust that does not anchor Bob's ETK.
    let r = seal(&w.etk("bob"), &w.etk_cert_pem("alice"));
    r.code(1);
    let e = &r.stderr;
    assert!(e.contains("ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"), "{e}");
    assert!(e.contains("check that --trust"), "{e}");
    assert!(e.contains("substituted key"), "{e}");
    let skip = e.find("--skip-etk-check").expect("the override is named");
    assert!(e.find("--trust").unwrap() < skip, "{e}");
    assert!(e.find("substituted").unwrap() < skip, "{e}");
    assert!(!e.contains("expired or not yet valid"), "{e}");
    assert!(!dir.path().join("refused").exists());

    // An expired ETK (the chain is fine): get a current one.
    let other = dir.path().join("world");
    etee(["pki", "init"])
        .arg(&other)
        .args(["--institution", "carol:NIHII-HOSPITAL=71000535"])
        .args(["--etk-valid-for", "1"])
        .run()
        .code(0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = seal(&other.join("carol.etk"), &other.join("ca.pem"));
    r.code(1);
    let e = &r.stderr;
    assert!(e.contains("ETK_ENCRYPTION_CERT_EXPIRED"), "{e}");
    assert!(e.contains("current ETK"), "{e}");
    assert!(!e.contains("check that --trust"), "{e}");
    assert!(
        e.contains("substituted key") && e.contains("--skip-etk-check"),
        "{e}"
    );
    assert!(!dir.path().join("refused").exists());
}

/// Without --trust no sender can be trusted: the human verdict says why (not --json).
#[test]
fn unseal_without_trust_says_so() {
    let w = world();
    let dir = scratch();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"who sent this?");
    let input = dir.path().join("sealed");
    std::fs::write(&input, &sealed).unwrap();
    let unseal = |extra: &[&str]| {
        etee(["unseal", "--keystore"])
            .arg(w.p12("bob"))
            .arg("--in")
            .arg(&input)
            .args(extra)
            .password(&w.password)
            .run()
    };
    let r = unseal(&[]);
    r.code(1);
    assert!(
        r.stderr.contains("OUTER_CERTIFICATE_CHAIN_NOT_TRUSTED"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("note: no --trust given"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "content released");

    let r = unseal(&["--json"]);
    r.code(1);
    assert!(!r.stderr.contains("--trust"), "{}", r.stderr);
    assert_eq!(
        names(&r.json()["errors"]),
        ["OUTER_CERTIFICATE_CHAIN_NOT_TRUSTED"]
    );

    let ca = w.ca().display().to_string();
    let r = unseal(&["--trust", &ca]);
    r.code(0);
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);
}

/// A password file that is missing or empty is named as such (not "wrong password").
#[test]
fn password_file_problems_name_the_password_file() {
    let w = world();
    let dir = scratch();
    let empty = dir.path().join("empty.pass");
    std::fs::write(&empty, b"\n").unwrap();
    let missing = dir.path().join("missing.pass");
    let endless = std::path::PathBuf::from("/dev/zero");
    for (file, expected) in [
        (&missing, "keystore password file"),
        (&empty, "the password file is empty"),
        (&endless, "larger than 4096 bytes"),
    ] {
        let r = etee(["seal", "--keystore"])
            .arg(w.p12("alice"))
            .arg("--password-file")
            .arg(file)
            .arg("--to")
            .arg(w.etk("bob"))
            .stdin(b"x".to_vec())
            .run();
        r.code(2);
        // A missing file is named by its directory only: what was given may be the
        // password itself, written where its file's path belongs.
        let named = if file == &missing {
            dir.path().display().to_string()
        } else {
            file.display().to_string()
        };
        assert!(
            r.stderr.contains(expected) && r.stderr.contains(&named),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("missing.pass"), "{}", r.stderr);
        assert!(!r.stderr.contains("wrong"), "{}", r.stderr);
        assert!(r.stdout.is_empty());
    }
}

/// A keystore password file that group or others may read is reported (it is used).
#[test]
fn a_password_file_open_to_others_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let dir = scratch();
    let file = dir.path().join("open.pass");
    std::fs::write(&file, format!("{}\n", w.password)).unwrap();
    let run = |mode: u32| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = etee(["seal", "--keystore"])
            .arg(w.p12("alice"))
            .arg("--password-file")
            .arg(&file)
            .arg("--to")
            .arg(w.etk("bob"))
            .stdin(b"x".to_vec())
            .run();
        r.code(0);
        r.stderr.contains(&format!(
            "keystore password file {} is readable or writable by group or others",
            file.display()
        ))
    };
    assert!(run(0o644));
    assert!(!run(0o600));
}

/// `seal` with a 32-byte KEK seals (allowed on purpose: docs/deviations.md row 20) but
/// warns that `unseal` and the official Java library will withhold the content, which
/// `unseal` then does; a 16-byte KEK gets no warning.
#[test]
fn a_kek_other_than_aes_128_is_sealed_with_a_warning() {
    let w = world();
    let dir = scratch();
    let input = dir.path().join("plain");
    std::fs::write(&input, b"for readers with a long key").unwrap();
    let seal = |kek: &str, out: &str| {
        etee(["seal", "--keystore"])
            .arg(w.p12("alice"))
            .args(["--kek", kek, "--kek-id", KEK_ID, "--trust"])
            .arg(w.ca())
            .arg("--in")
            .arg(&input)
            .arg("--out")
            .arg(dir.path().join(out))
            .password(&w.password)
            .run()
    };
    let long_kek = KEK.repeat(2);
    let run = seal(&long_kek, "sealed-256");
    run.code(0);
    assert!(
        run.stderr
            .contains("warning: the KEK is 32 bytes (AES-256)")
            && run
                .stderr
                .contains("DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED")
            && run.stderr.contains("deviations.md"),
        "{}",
        run.stderr
    );
    let sealed = std::fs::read(dir.path().join("sealed-256")).unwrap();
    let (run, v, _) = unseal_with_kek(dir.path(), &sealed, &long_kek);
    run.code(1);
    assert!(
        names(&v["errors"]).contains(&"DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED")
            || v["fatal"] == "DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED",
        "{v}"
    );

    let run = seal(KEK, "sealed-128");
    run.code(0);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

/// On a terminal, a seal or unseal that takes more than a second shows how much it has
/// read (a pipe has no size to compare with; a file does), each line replacing the one
/// before, and erases its line at the end. Every other test runs without a terminal and
/// gets exit codes and outputs with no progress in them. `script` (util-linux) gives the
/// command a pseudo-terminal; the input pauses for 1.5 s after 2 MiB so that the work
/// lasts long enough whatever the machine's speed.
#[test]
fn long_work_on_a_terminal_shows_its_progress_and_erases_it() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        etee_e2e::skip("no `script` (util-linux) to give the command a terminal");
        return;
    }
    let w = world();
    let dir = scratch();
    let sealed = dir.path().join("sealed");
    let opened = dir.path().join("opened");
    let quote = |p: &Path| format!("'{}'", p.display());
    let slow_input = "(head -c 2097152 /dev/zero; sleep 1.5; head -c 2097152 /dev/zero)";
    let on_terminal = |command: String| {
        let run = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script runs");
        let shown = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(run.status.success(), "{command}: {:?}\n{shown}", run.status);
        shown
    };

    let shown = on_terminal(format!(
        "{slow_input} | {} seal --keystore {} --password-file {} --to {} --trust {} --out {}",
        quote(etee_e2e::etee_bin()),
        quote(&w.p12("alice")),
        quote(&w.password_file()),
        quote(&w.etk("bob")),
        quote(&w.ca()),
        quote(&sealed),
    ));
    assert!(shown.contains("\r\x1b[Ksealing: "), "{shown:?}");
    assert!(
        shown.contains(" MiB read, "),
        "a pipe has no size: {shown:?}"
    );
    assert!(
        shown.trim_end().ends_with("\r\x1b[K"),
        "line left behind: {shown:?}"
    );

    // Unsealing from a pipe that pauses: the same line.
    let bob = |input: &str| {
        format!(
            "{input} {} unseal --keystore {} --password-file {} --trust {} --out {}",
            quote(etee_e2e::etee_bin()),
            quote(&w.p12("bob")),
            quote(&w.password_file()),
            quote(&w.ca()),
            quote(&opened),
        )
    };
    let s = quote(&sealed);
    let shown = on_terminal(bob(&format!(
        "(head -c 2097152 {s}; sleep 1.5; tail -c +2097153 {s}) |"
    )));
    assert!(shown.contains("\r\x1b[Kunsealing: "), "{shown:?}");
    assert!(
        shown.contains("\r\x1b[KOK      4194304 bytes of content"),
        "{shown:?}"
    );
    assert_eq!(std::fs::read(&opened).unwrap(), vec![0u8; 4 << 20]);

    // A sealed message (binary) is not written to the terminal.
    let run = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "echo hi | {} seal --keystore {} --password-file {} --to {} --trust {}",
                quote(etee_e2e::etee_bin()),
                quote(&w.p12("alice")),
                quote(&w.password_file()),
                quote(&w.etk("bob")),
                quote(&w.ca()),
            ),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("the sealed message is binary and standard output is a terminal"),
        "{shown}"
    );

    // Quick work (4 MiB from a file at once) shows no line, only the verdict.
    std::fs::remove_file(&opened).unwrap();
    let shown = on_terminal(bob(&format!("< {s}")));
    assert!(!shown.contains("unsealing: "), "{shown:?}");
    assert!(
        shown.starts_with("OK      4194304 bytes of content"),
        "{shown:?}"
    );
    assert_eq!(std::fs::read(&opened).unwrap(), vec![0u8; 4 << 20]);
}

/// The sender's own certificate: from 30 days before its end each seal reminds of it
/// (sealed all the same, and the message opens cleanly); after its end nothing is sealed
/// (exit 1, no output), since every receiver would report `OUTER_CERTIFICATE_EXPIRED`.
#[test]
fn a_senders_certificate_near_or_past_its_end() {
    let w = World::create();
    let add = |who: &str, id: &str, seconds: &str| {
        etee(["pki", "init"])
            .arg(w.dir())
            .args(["--institution", &format!("{who}:NIHII-HOSPITAL={id}")])
            .args(["--auth-valid-for", seconds])
            .run()
            .code(0);
    };
    add("soon", "71000834", &(10 * 24 * 3600).to_string());
    add("ended", "71000835", "2");
    let ended_at = now_unix() + 2;
    let dir = scratch();
    let seal = |who: &str| {
        let out = dir.path().join(format!("{who}.msg"));
        let run = etee(["seal", "--keystore"])
            .arg(w.p12(who))
            .arg("--to")
            .arg(w.etk("bob"))
            .arg("--trust")
            .arg(w.ca())
            .arg("--out")
            .arg(&out)
            .arg("--json")
            .password(&w.password)
            .stdin(b"for Bob".to_vec())
            .run();
        (run, out)
    };

    let (run, out) = seal("alice");
    run.code(0);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    // --json: what was done, once sealed.
    let done = run.json();
    assert_eq!(
        done["bytes"],
        std::fs::metadata(&out).unwrap().len(),
        "{done}"
    );
    assert_eq!(done["out"], out.display().to_string(), "{done}");
    assert_eq!(done["warnings"], json!([]), "{done}");
    assert_eq!(
        done["recipients"].as_array().map(Vec::len),
        Some(1),
        "{done}"
    );

    let (run, out) = seal("soon");
    run.code(0);
    assert!(
        run.stderr
            .contains("warning: the authentication certificate")
            && run
                .stderr
                .contains(" days: then nothing it signs is accepted")
            && run.stderr.contains("renew it"),
        "{}",
        run.stderr
    );
    let warnings = run.json()["warnings"].clone();
    assert!(
        warnings.as_array().map(Vec::len) == Some(1)
            && warnings[0].as_str().unwrap_or("").contains("expires at"),
        "{warnings}"
    );
    let opened = w.unseal(dir.path(), "bob", &std::fs::read(&out).unwrap(), &[]);
    assert_eq!(opened.content(), b"for Bob");

    while now_unix() <= ended_at {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (run, out) = seal("ended");
    run.code(1);
    assert!(
        run.stderr.contains("expired at") && run.stderr.contains("OUTER_CERTIFICATE_EXPIRED"),
        "{}",
        run.stderr
    );
    assert!(!out.exists(), "nothing is written");
}

/// Files given in the wrong place are named by what they seem to be (an ETK for a
/// keystore, a keystore for an ETK or a certificate, an empty file, Base64 text for a
/// message), a directory for `--in` by its path, and a password written where its file's
/// path belongs is not repeated in the error.
#[test]
fn files_in_the_wrong_place_say_what_they_seem_to_be() {
    let w = world();
    let dir = scratch();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let seal = |keystore: &Path, to: &Path, trust: &Path| {
        etee(["seal", "--keystore"])
            .arg(keystore)
            .arg("--to")
            .arg(to)
            .arg("--trust")
            .arg(trust)
            .arg("--out")
            .arg(dir.path().join("never"))
            .password(&w.password)
            .stdin(b"x".to_vec())
            .run()
    };
    for (run, says) in [
        (
            seal(&w.etk("alice"), &w.etk("bob"), &w.ca()),
            "alice.etk: not a PKCS#12 keystore (.p12) but a CMS SignedData",
        ),
        (
            seal(&w.p12("alice"), &w.p12("bob"), &w.ca()),
            "bob.p12: not an ETK but a PKCS#12 keystore",
        ),
        (
            seal(&w.p12("alice"), &w.etk("bob"), &w.p12("bob")),
            "bob.p12: not a certificate but a PKCS#12 keystore",
        ),
        (
            seal(&empty, &w.etk("bob"), &w.ca()),
            "empty: not a PKCS#12 keystore (.p12) but an empty file",
        ),
    ] {
        run.code(2);
        assert!(run.stderr.contains(says), "{says:?} in {}", run.stderr);
        assert!(!dir.path().join("never").exists());
    }

    let run = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--to")
        .arg(w.etk("bob"))
        .arg("--in")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("never"))
        .password(&w.password)
        .run();
    run.code(2);
    let said = format!("--in {}: a directory, not a file", dir.path().display());
    assert!(run.stderr.contains(&said), "{}", run.stderr);

    // A sealed message in Base64: the verdict, and a note saying what the file is.
    use base64::Engine;
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"for Bob");
    let b64 = dir.path().join("sealed.b64");
    std::fs::write(
        &b64,
        base64::engine::general_purpose::STANDARD.encode(&sealed),
    )
    .unwrap();
    let run = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&b64)
        .password(&w.password)
        .run();
    run.code(1);
    assert!(
        run.stderr
            .contains("FATAL   OUTER_SIGNED_DATA_STRUCTURE_INCORRECT")
            && run
                .stderr
                .contains("sealed.b64 is Base64 text (decode it first"),
        "{}",
        run.stderr
    );

    // `--password-file MyP@ssw0rd`: the password itself, where its file belongs.
    let run = etee(["seal", "--keystore"])
        .arg(w.p12("alice"))
        .arg("--to")
        .arg(w.etk("bob"))
        .args(["--password-file", "MyP@ssw0rd"])
        .stdin(b"x".to_vec())
        .run();
    run.code(2);
    assert!(!run.stderr.contains("MyP@ssw0rd"), "{}", run.stderr);
    assert!(
        run.stderr.contains("keystore password file"),
        "{}",
        run.stderr
    );
}

/// Keystores with different passwords (a renewed one beside the old one): one
/// `--password-file` per `--keystore`, in order; one for all only when they share it.
#[test]
fn keystores_with_different_passwords_each_get_theirs() {
    let (old, renewed) = (world(), World::create());
    assert_ne!(old.password, renewed.password);
    let dir = scratch();
    let sealed = renewed.seal(dir.path(), "alice", &["bob"], b"to the renewed key");
    let input = dir.path().join("sealed");
    std::fs::write(&input, &sealed).unwrap();
    let unseal = |passwords: &[std::path::PathBuf]| {
        let mut cmd = etee(["unseal", "--keystore"])
            .arg(old.p12("bob"))
            .arg("--keystore")
            .arg(renewed.p12("bob"))
            .arg("--trust")
            .arg(renewed.ca())
            .arg("--in")
            .arg(&input);
        for p in passwords {
            cmd = cmd.arg("--password-file").arg(p);
        }
        cmd.run()
    };
    let run = unseal(&[old.password_file(), renewed.password_file()]);
    run.code(0);
    assert_eq!(run.stdout, b"to the renewed key");
    // One password for both: the renewed keystore's is wrong.
    let run = unseal(&[old.password_file()]);
    run.code(2);
    assert!(
        run.stderr.contains("wrong keystore password"),
        "{}",
        run.stderr
    );
    let run = unseal(&[
        old.password_file(),
        old.password_file(),
        old.password_file(),
    ]);
    run.code(2);
    assert!(
        run.stderr.contains("3 --password-file for 2 --keystore"),
        "{}",
        run.stderr
    );
}

/// `pki init` and `pki revoke` say what is wrong with what they were given: an identifier
/// ETKDepot would not take, a file where the world's directory belongs, an existing world
/// with nothing asked of it (said, exit 0), an institution the world does not have.
#[test]
fn the_test_pki_commands_say_what_is_wrong() {
    let dir = scratch();
    let new_world = dir.path().join("world");
    for (spec, says) in [
        ("erin:FOO=123", "unknown identifier type \"FOO\""),
        ("erin:NIHII-HOSPITAL=12x", "is not all digits"),
    ] {
        let run = etee(["pki", "init"])
            .arg(&new_world)
            .args(["--institution", spec])
            .run();
        run.code(2);
        assert!(run.stderr.contains(says), "{spec}: {}", run.stderr);
        assert!(!new_world.join("erin.etk").exists());
    }
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let run = etee(["pki", "init"]).arg(&file).run();
    run.code(2);
    assert!(run.stderr.contains("not a directory"), "{}", run.stderr);

    let w = world();
    let run = etee(["pki", "init"]).arg(w.dir()).run();
    run.code(0);
    assert!(
        run.stderr
            .contains("the world exists and nothing was asked of it"),
        "{}",
        run.stderr
    );
    let run = etee(["pki", "revoke"])
        .arg(w.dir())
        .args(["--name", "nosuch"])
        .run();
    run.code(2);
    assert!(
        run.stderr
            .contains("--name nosuch: no institution nosuch in"),
        "{}",
        run.stderr
    );
}

/// Every `etee` process makes itself undumpable at start: no core file, and another
/// process of the same user cannot read its memory, environment or files (`/proc/PID/…`,
/// `ptrace`). Observed from outside, as that other process: `etee` and the probe run as
/// one non-root uid (`nobody` when the tests run as root, whom nothing stops). And a
/// non-root, undumpable `etee` still writes its output through `/proc/self/fd`.
#[test]
fn etee_processes_keep_their_memory_from_other_processes_of_their_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};

    // The owner of /proc/self is this process's effective uid.
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let root = me == 0;
    let uid = if root { 65_534 } else { me };
    let as_uid = |cmd: &mut Command| {
        if root {
            cmd.uid(uid).gid(uid);
        }
    };
    // A directory and a copy of the binary that uid can reach (the target directory may
    // not be).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("etee");
    std::fs::copy(etee_e2e::etee_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    // `etee unseal --kek` waits for its message on standard input, kept open.
    let start = |allow: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args(["unseal", "--kek", KEK])
            .env_remove("ETEE_ALLOW_CORE_DUMPS")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if allow {
            cmd.env("ETEE_ALLOW_CORE_DUMPS", "1");
        }
        as_uid(&mut cmd);
        cmd.spawn().unwrap()
    };
    // Reads /proc/PID/environ as that uid: its text, or why not.
    let probe = |pid: u32| -> Result<String, String> {
        let mut cmd = Command::new("cat");
        cmd.arg(format!("/proc/{pid}/environ"));
        as_uid(&mut cmd);
        let out = cmd.output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    // The owner of /proc/PID/status: the process's uid, or root once it is undumpable.
    let owner = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/status"))
            .unwrap()
            .uid()
    };

    let hardened = start(false);
    let control = start(true);
    let pid = hardened.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while owner(pid) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "etee (pid {pid}, uid {uid}) never became undumpable"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let refused = probe(pid).expect_err("another process of the same uid read etee's environment");
    assert!(refused.contains("Permission denied"), "{refused}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    // The probe can tell: with ETEE_ALLOW_CORE_DUMPS=1 the process is left as it was.
    let seen = probe(control.id()).expect("the probe reads a dumpable process of its uid");
    assert!(seen.contains("ETEE_ALLOW_CORE_DUMPS=1"), "{seen:?}");
    assert_eq!(owner(control.id()), uid);
    for mut child in [hardened, control] {
        let _ = child.kill();
        child.wait().unwrap();
    }

    // The same uid unseals to a file: written through /proc/self/fd (an unnamed file
    // given its name once complete), which the process may still use.
    let w = world();
    let sealed = seal_with_kek(dir.path(), &[], b"undumpable, and still writing");
    let input = dir.path().join("sealed");
    std::fs::write(&input, &sealed).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::copy(w.ca(), &ca).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.path().join("plain");
    let mut cmd = Command::new(&bin);
    cmd.args(["unseal", "--kek", KEK, "--trust"])
        .arg(&ca)
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .env_remove("ETEE_ALLOW_CORE_DUMPS");
    as_uid(&mut cmd);
    let run = cmd.output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"undumpable, and still writing"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), uid);
}

/// A world whose making was cut short (here: an institution's HSM configuration that does
/// not exist, found once the CA is written) is not taken for a whole one: the next run
/// says so, instead of adding to a world without its first institutions. A world made in
/// full keeps no such mark, and arguments refused at once write nothing.
#[test]
fn an_unfinished_world_is_refused_until_made_again() {
    let dir = scratch();
    let cut = dir.path().join("cut");
    let run = etee(["pki", "init"])
        .arg(&cut)
        .args(["--institution", "erin:NIHII-HOSPITAL=71000436"])
        .args(["--hsm", "erin=/nonexistent/erin-hsm.toml"])
        .run();
    run.code(2);
    assert!(cut.join("ca.pem").exists(), "the CA came first");
    assert!(!cut.join("erin.etk").exists());
    assert!(cut.join("world-unfinished").exists());
    let again = etee(["pki", "init"])
        .arg(&cut)
        .args(["--institution", "frank:NIHII-HOSPITAL=71000437"])
        .run();
    again.code(2);
    assert!(again.stderr.contains("did not finish"), "{}", again.stderr);
    assert!(!cut.join("frank.etk").exists());

    let whole = dir.path().join("whole");
    etee(["pki", "init"]).arg(&whole).run().code(0);
    assert!(whole.join("bob.etk").exists());
    assert!(!whole.join("world-unfinished").exists());
    // Extending it afterwards works as before.
    etee(["pki", "init"])
        .arg(&whole)
        .args(["--institution", "frank:NIHII-HOSPITAL=71000437"])
        .run()
        .code(0);

    let refused = dir.path().join("refused");
    etee(["pki", "init"])
        .arg(&refused)
        .args(["--institution", "erin:FOO=1"])
        .run()
        .code(2);
    assert!(
        !refused.join("ca.pem").exists(),
        "nothing written for refused arguments"
    );
}

/// A signature timestamp, put on a sealed message with `etee timestamp` (the hash to stamp
/// from `imprint`, the answer of `openssl ts -reply` given to `attach`), counts only with
/// `--tsa-trust`: without it, the official error and a note saying what to give; with it, a
/// clean verdict that names the token's time. `attach` refuses an answer stamping
/// something else, one from an authority outside its `--tsa-trust`, and a second token.
#[test]
fn a_signature_timestamp_needs_tsa_trust() {
    use etee_testpki::tsa::{openssl_ts_reply, EssVersion, TsaUsage};
    if !etee_e2e::openssl_cli() {
        return;
    }
    let w = world();
    let dir = scratch();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"stamped");
    let message = dir.path().join("message");
    std::fs::write(&message, &sealed).unwrap();
    let run = etee(["timestamp", "imprint", "--in"]).arg(&message).run();
    run.code(0);
    let hex = String::from_utf8(run.stdout.clone()).unwrap();
    let imprint: [u8; 32] = hex::decode(hex.trim()).unwrap().try_into().unwrap();

    let tsa_pki = etee_testpki::TestPki::generate("e2e-tsa").unwrap();
    let tsa = tsa_pki.timestamp_authority(TsaUsage::TimeStamping).unwrap();
    let reply_for = |imprint: &[u8; 32], name: &str| {
        let reply = openssl_ts_reply(&tsa, &[&tsa_pki.root.cert], imprint, EssVersion::V2).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, reply).unwrap();
        path
    };
    let tsa_root = dir.path().join("tsa-root.pem");
    std::fs::write(&tsa_root, tsa_pki.root.cert.to_pem().unwrap()).unwrap();
    let attach = |reply: &Path, out: &Path, extra: &[&str]| {
        etee(["timestamp", "attach", "--in"])
            .arg(&message)
            .arg("--reply")
            .arg(reply)
            .arg("--out")
            .arg(out)
            .args(extra)
            .run()
    };
    // Refused: an answer for another signature, an authority not trusted as asked.
    let other = reply_for(&[7; 32], "other.tsr");
    let refused = dir.path().join("refused");
    let run = attach(&other, &refused, &[]);
    run.code(1);
    assert!(
        run.stderr
            .contains("TIMESTAMPTOKEN_DOES_NOT_MATCH_OUTER_SIGNATURE"),
        "{}",
        run.stderr
    );
    let reply = reply_for(&imprint, "reply.tsr");
    let run = attach(&reply, &refused, &["--tsa-trust", w.ca().to_str().unwrap()]);
    run.code(1);
    assert!(
        run.stderr.contains("TIMESTAMPTOKEN_TRUST_FAILED"),
        "{}",
        run.stderr
    );
    assert!(!refused.exists(), "nothing written when refused");

    let stamped_path = dir.path().join("stamped");
    attach(
        &reply,
        &stamped_path,
        &["--tsa-trust", tsa_root.to_str().unwrap()],
    )
    .code(0);
    let stamped = std::fs::read(&stamped_path).unwrap();
    assert_ne!(stamped, sealed);

    let u = w.unseal(dir.path(), "bob", &stamped, &[]);
    u.run.code(1);
    assert_eq!(
        names(&u.verdict["errors"]),
        ["TIMESTAMPTOKEN_TRUST_FAILED"],
        "{}",
        u.verdict
    );
    assert_eq!(u.verdict["timestamp"], Value::Null);
    assert!(!u.out.exists(), "content released despite an error");
    // In words, the note says which option is missing.
    let run = etee(["unseal", "--keystore"])
        .arg(w.p12("bob"))
        .arg("--trust")
        .arg(w.ca())
        .arg("--in")
        .arg(&stamped_path)
        .arg("--out")
        .arg(dir.path().join("words"))
        .password(&w.password)
        .run();
    run.code(1);
    assert!(
        run.stderr.contains("TIMESTAMPTOKEN_TRUST_FAILED"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--tsa-trust"), "{}", run.stderr);

    let tsa_trust = ["--tsa-trust", tsa_root.to_str().unwrap()];
    let u = w.unseal(dir.path(), "bob", &stamped, &tsa_trust);
    u.run.code(0);
    assert_clean(&u.verdict);
    assert_eq!(u.content(), b"stamped");
    let stamped_at = parse_rfc3339(u.verdict["timestamp"].as_str().expect("timestamp"))
        .expect("an RFC 3339 time");
    assert!((stamped_at - now_unix()).abs() < 600, "{}", u.verdict);
    // The CA of the senders is no authority for timestamps: trusting it changes nothing.
    let u = w.unseal(
        dir.path(),
        "bob",
        &stamped,
        &["--tsa-trust", w.ca().to_str().unwrap()],
    );
    assert_eq!(names(&u.verdict["errors"]), ["TIMESTAMPTOKEN_TRUST_FAILED"]);
    // A stamped message takes no second token.
    let run = etee(["timestamp", "attach", "--in"])
        .arg(&stamped_path)
        .arg("--reply")
        .arg(&reply)
        .arg("--out")
        .arg(dir.path().join("twice"))
        .run();
    run.code(2);
    assert!(run.stderr.contains("timestamp already"), "{}", run.stderr);
}

/// A one-thread HTTP server on loopback answering each POST with `answer(body)`: status
/// and body; the requests' Content-Type headers are kept. Serves `requests` requests.
fn http_server(
    requests: usize,
    answer: impl Fn(&[u8]) -> (u16, Vec<u8>) + Send + 'static,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/tsa", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let mut content_types = Vec::new();
        for _ in 0..requests {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end().to_ascii_lowercase();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if let Some(v) = line.strip_prefix("content-type:") {
                    content_types.push(v.trim().to_owned());
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (status, reply) = answer(&body);
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/timestamp-reply\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            )
            .unwrap();
            stream.write_all(&reply).unwrap();
        }
        content_types
    });
    (url, server)
}

/// `etee timestamp fetch` asks an authority over HTTP (here `openssl ts -reply` behind a
/// loopback server, answering the request we send) and attaches its checked token; an
/// answer replayed for a later request (another nonce) is refused, as are an HTTP error
/// and an https:// URL, writing nothing.
#[test]
fn a_timestamp_is_fetched_from_an_authority_over_http() {
    use etee_testpki::tsa::{openssl_ts_reply_to_query, EssVersion, TsaUsage};
    use std::sync::{Arc, Mutex};
    if !etee_e2e::openssl_cli() {
        return;
    }
    let w = world();
    let dir = scratch();
    let sealed = w.seal(dir.path(), "alice", &["bob"], b"fetched stamp");
    let message = dir.path().join("message");
    std::fs::write(&message, &sealed).unwrap();
    let tsa_pki = etee_testpki::TestPki::generate("e2e-tsa-http").unwrap();
    let tsa = tsa_pki.timestamp_authority(TsaUsage::TimeStamping).unwrap();
    let tsa_root = dir.path().join("tsa-root.pem");
    std::fs::write(&tsa_root, tsa_pki.root.cert.to_pem().unwrap()).unwrap();
    let root = tsa_pki.root.cert.clone();

    // The first request answered, the second given the first answer again.
    let first: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let (url, server) = http_server(2, move |query| {
        let mut first = first.lock().unwrap();
        let reply = match &*first {
            Some(old) => old.clone(),
            None => openssl_ts_reply_to_query(&tsa, &[&root], query, EssVersion::V2).unwrap(),
        };
        first.get_or_insert(reply.clone());
        (200, reply)
    });
    let fetch = |url: &str, out: &Path| {
        etee(["timestamp", "fetch", "--in"])
            .arg(&message)
            .args(["--url", url, "--tsa-trust"])
            .arg(&tsa_root)
            .arg("--out")
            .arg(out)
            .run()
    };
    let stamped_path = dir.path().join("stamped");
    let run = fetch(&url, &stamped_path);
    run.code(0);
    assert!(run.stderr.contains("stamped at"), "{}", run.stderr);
    let replayed = dir.path().join("replayed");
    let run = fetch(&url, &replayed);
    run.code(1);
    assert!(run.stderr.contains("nonce"), "{}", run.stderr);
    assert!(!replayed.exists(), "nothing written when refused");
    assert_eq!(
        server.join().unwrap(),
        ["application/timestamp-query"; 2],
        "RFC 3161 over HTTP"
    );

    let stamped = std::fs::read(&stamped_path).unwrap();
    let u = w.unseal(
        dir.path(),
        "bob",
        &stamped,
        &["--tsa-trust", tsa_root.to_str().unwrap()],
    );
    u.run.code(0);
    assert_clean(&u.verdict);
    assert_eq!(u.content(), b"fetched stamp");
    assert!(u.verdict["timestamp"].is_string(), "{}", u.verdict);

    // An authority failing, and a URL that is not http://: refused, nothing written.
    let (url, server) = http_server(1, |_| (500, b"broken".to_vec()));
    let failed = dir.path().join("failed");
    let run = fetch(&url, &failed);
    run.code(1);
    assert!(run.stderr.contains("500"), "{}", run.stderr);
    server.join().unwrap();
    let run = fetch("https://127.0.0.1:9/tsa", &failed);
    run.code(2);
    assert!(run.stderr.contains("only http://"), "{}", run.stderr);
    assert!(!failed.exists());
}
