//! `etee etk verify` on the ETKs `etee pki init` makes, and the ETK check `etee seal`
//! applies before encrypting for a recipient.
//!
//! Behaviour without `--trust` (documented here, asserted below): `etk verify` cannot
//! judge the authentication certificate's chain and reports exactly
//! `ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN` (exit 1), every other check still applies;
//! `seal` without `--trust` drops that chain verdict and seals (exit 0), while `seal` with
//! a `--trust` that does not anchor the ETK refuses (exit 1) unless `--skip-etk-check`.

use etee_e2e::{etee, now_unix, parse_rfc3339, rfc3339, scratch, Output, World};
use serde_json::{json, Value};
use std::path::Path;

fn world() -> &'static World {
    World::shared()
}

fn errors(v: &Value) -> Vec<&str> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

fn verify(etk: &Path, trust: &[&Path], at: Option<&str>) -> (Output, Value) {
    let mut cmd = etee(["etk", "verify", "--json"]).arg(etk);
    for t in trust {
        cmd = cmd.arg("--trust").arg(t);
    }
    if let Some(at) = at {
        cmd = cmd.args(["--at", at]);
    }
    let run = cmd.run();
    let v = run.json();
    (run, v)
}

#[test]
fn generated_etks_verify_with_their_identities() {
    let w = world();
    let now = now_unix();
    for (who, id_type, value) in [
        ("bob", "NIHII-PHARMACY", "27150201"),
        ("alice", "NIHII-HOSPITAL", "71000436"),
    ] {
        let (run, v) = verify(&w.etk(who), &[&w.ca()], None);
        run.code(0);
        assert_eq!(errors(&v), Vec::<&str>::new(), "{who}: {v}");
        assert_eq!(
            v["identities"],
            json!([{"id_type": id_type, "value": value, "application_id": null}]),
            "{who}"
        );
        let subject = v["subject"].as_str().unwrap();
        assert!(
            subject.contains(&format!("{id_type}={value}")) && subject.contains(who),
            "{subject}"
        );
        assert_eq!(v["encryption_serial"], w.etk_serial(who), "{who}");
        let nb = parse_rfc3339(v["not_before"].as_str().unwrap()).expect("not_before");
        let na = parse_rfc3339(v["not_after"].as_str().unwrap()).expect("not_after");
        assert!(nb <= now && now < na, "{who}: now outside {nb}..{na}");
    }
}

#[test]
fn human_output_names_the_holder_and_the_verdict() {
    let w = world();
    let run = etee(["etk", "verify"])
        .arg(w.etk("bob"))
        .arg("--trust")
        .arg(w.ca())
        .run();
    run.code(0);
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(
        text.contains("identifier  NIHII-PHARMACY=27150201"),
        "{text}"
    );
    assert!(
        text.contains(&format!("serial      {}", w.etk_serial("bob"))),
        "{text}"
    );
    assert!(text.contains("verdict     OK"), "{text}");
}

#[test]
fn without_trust_anchors_the_chain_status_is_unknown() {
    let w = world();
    let (run, v) = verify(&w.etk("bob"), &[], None);
    run.code(1);
    assert_eq!(
        errors(&v),
        ["ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"],
        "{v}"
    );
    assert_eq!(v["valid"], false, "{v}");
    assert!(run.stderr.contains("no --trust given"), "{}", run.stderr);
    // Identification still works.
    assert_eq!(v["identities"][0]["value"], "27150201");
    let (run, v) = verify(&w.etk("bob"), &[&w.ca()], None);
    run.code(0);
    assert_eq!(v["valid"], true, "{v}");
    assert!(!run.stderr.contains("--trust"), "{}", run.stderr);

    // Human form: the error is listed and there is no OK line.
    let run = etee(["etk", "verify"]).arg(w.etk("bob")).run();
    run.code(1);
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(
        text.contains("error       ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"),
        "{text}"
    );
    assert!(!text.contains("verdict     OK"), "{text}");
}

#[test]
fn an_anchor_that_is_not_the_issuer_is_not_trusted() {
    let w = world();
    // Bob's own ETK certificate is a certificate, but not this chain's anchor.
    let (run, v) = verify(&w.etk("bob"), &[&w.etk_cert_pem("bob")], None);
    run.code(1);
    assert_eq!(
        errors(&v),
        ["ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"],
        "{v}"
    );
}

#[test]
fn expired_and_not_yet_valid_etks() {
    let w = world();
    let (_, good) = verify(&w.etk("bob"), &[&w.ca()], None);
    let not_before = parse_rfc3339(good["not_before"].as_str().unwrap()).unwrap();
    let not_after = parse_rfc3339(good["not_after"].as_str().unwrap()).unwrap();

    for at in [
        rfc3339(not_after + 86_400),
        "2099-01-01T00:00:00Z".to_string(),
    ] {
        let (run, v) = verify(&w.etk("bob"), &[&w.ca()], Some(&at));
        run.code(1);
        let e = errors(&v);
        assert!(
            e.contains(&"ETK_ENCRYPTION_CERT_EXPIRED")
                && e.contains(&"ETK_AUTHENTICATION_CERT_EXPIRED"),
            "at {at}: {v}"
        );
        assert!(
            !e.iter().any(|x| x.ends_with("NOT_YET_VALID")),
            "at {at}: {v}"
        );
    }

    let at = rfc3339(not_before - 86_400);
    let (run, v) = verify(&w.etk("bob"), &[&w.ca()], Some(&at));
    run.code(1);
    let e = errors(&v);
    assert!(
        e.contains(&"ETK_ENCRYPTION_CERT_NOT_YET_VALID")
            && e.contains(&"ETK_AUTHENTICATION_CERT_NOT_YET_VALID"),
        "at {at}: {v}"
    );
    assert!(!e.iter().any(|x| x.ends_with("_EXPIRED")), "at {at}: {v}");

    // Just inside both ends: clean.
    for at in [rfc3339(not_before + 60), rfc3339(not_after - 60)] {
        let (run, v) = verify(&w.etk("bob"), &[&w.ca()], Some(&at));
        run.code(0);
        assert_eq!(errors(&v), Vec::<&str>::new(), "at {at}: {v}");
    }
}

#[test]
fn base64_etk_is_accepted_like_the_binary_one() {
    let w = world();
    let dir = scratch();
    let b64 = dir.path().join("bob.etk.b64");
    let text = openssl::base64::encode_block(&std::fs::read(w.etk("bob")).unwrap());
    // Wrapped at 64 columns, as ETKDepot answers often are.
    let wrapped: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    std::fs::write(&b64, wrapped.join("\n") + "\n").unwrap();
    let (run, v) = verify(&b64, &[&w.ca()], None);
    run.code(0);
    let (_, raw) = verify(&w.etk("bob"), &[&w.ca()], None);
    assert_eq!(v, raw);
}

#[test]
fn malformed_or_missing_etk_is_exit_2() {
    let w = world();
    let dir = scratch();
    let garbage = dir.path().join("garbage.etk");
    std::fs::write(&garbage, b"this is not an ETK").unwrap();
    let truncated = dir.path().join("truncated.etk");
    let etk = std::fs::read(w.etk("bob")).unwrap();
    std::fs::write(&truncated, &etk[..etk.len() / 2]).unwrap();
    // Not an ETK: the check fails (exit 1) and says why.
    for path in [garbage, truncated] {
        let run = etee(["etk", "verify", "--json"]).arg(&path).run();
        run.code(1);
        let v = run.json();
        assert!(
            v["parse_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{v}"
        );
        // No list of errors to mistake for an empty one: no check could run.
        assert!(v["errors"].is_null() && v["valid"] == false, "{v}");
    }
    // A file that cannot be read is an I/O problem (exit 2), named on stderr.
    let run = etee(["etk", "verify", "--json"])
        .arg(dir.path().join("missing.etk"))
        .run();
    run.code(2);
    assert!(run.stderr.contains("missing.etk"), "{}", run.stderr);
    // With --json the failure is JSON on standard output too (no verdict in it).
    let v = run.json();
    assert_eq!(v["exit"], 2, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.etk")),
        "{v}"
    );
    assert!(v.get("valid").is_none(), "{v}");
    // An endless file given by mistake is refused at a bound, not read until memory runs
    // out: an input (ETK, certificate...) and a configuration alike.
    let run = etee(["etk", "verify"]).arg("/dev/zero").run();
    run.code(2);
    assert!(run.stderr.contains("larger than 64 MiB"), "{}", run.stderr);
    let run = etee(["keys", "list", "--config", "/dev/zero"]).run();
    run.code(2);
    assert!(
        run.stderr.contains("not a configuration file"),
        "{}",
        run.stderr
    );
}

#[test]
fn seal_checks_the_recipient_etk() {
    let w = world();
    let dir = scratch();
    let seal = |trust: Option<&Path>, skip: bool, out: &str| {
        let mut cmd = etee(["seal", "--keystore"])
            .arg(w.p12("alice"))
            .arg("--to")
            .arg(w.etk("bob"))
            .arg("--out")
            .arg(dir.path().join(out))
            .password(&w.password)
            .stdin(b"checked".to_vec());
        if let Some(t) = trust {
            cmd = cmd.arg("--trust").arg(t);
        }
        if skip {
            cmd = cmd.arg("--skip-etk-check");
        }
        cmd.run()
    };

    // An anchor that does not vouch for Bob's ETK: refused, nothing written.
    let foreign = w.etk_cert_pem("alice");
    let r = seal(Some(&foreign), false, "refused");
    r.code(1);
    assert!(
        r.stderr.contains("fails the official checks")
            && r.stderr.contains("ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN")
            && r.stderr.contains("--skip-etk-check"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("refused").exists());

    // The same with --skip-etk-check, and without any --trust: sealed, and Bob opens both.
    seal(Some(&foreign), true, "skipped").code(0);
    seal(None, false, "untrusted").code(0);
    for f in ["skipped", "untrusted"] {
        let sealed = std::fs::read(dir.path().join(f)).unwrap();
        let u = w.unseal(dir.path(), "bob", &sealed, &[]);
        u.run.code(0);
        assert_eq!(u.content(), b"checked");
    }
}
