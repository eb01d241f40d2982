//! Conformance with the official library: every entry of `expected-verdicts.json` (the
//! verdicts of etee-crypto-lib 2.2.0 on the shared vectors) must come out the same here:
//! same fatal, same set of errors, same set of warnings, same content.

mod support;

use etee_formats::cms::{unseal_to_vec, ExpectedSigner, UnsealOptions};
use etee_formats::keys::KeyRing;
use etee_formats::keystore::EhealthKeystore;
use etee_formats::trust::TrustAnchors;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use zeroize::Zeroizing;

/// Deliberate differences from the official verdict, by message path, with the reason
/// (also listed in docs/deviations.md).
const DEVIATIONS: &[(&str, &str)] = &[];

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn load_keystore(dir: &Path, rel: &str) -> EhealthKeystore {
    let bytes = std::fs::read(dir.join(rel)).unwrap();
    EhealthKeystore::load(&bytes, "test").unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn official_verdicts_are_reproduced() {
    let Some(dir) = support::vectors() else {
        return;
    };
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected-verdicts.json")).unwrap())
            .unwrap();
    let mut stores: HashMap<String, EhealthKeystore> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for e in json["entries"].as_array().unwrap() {
        let msg = e["message"].as_str().unwrap();
        let mut ring = KeyRing::new();
        for ks in e["keystores"].as_array().unwrap() {
            let ks = ks.as_str().unwrap();
            let store = stores
                .entry(ks.to_string())
                .or_insert_with(|| load_keystore(&dir, ks));
            ring.extend(store.decryption_keys());
        }
        let anchors = TrustAnchors::new(
            e["trust"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| support::read_cert(&dir.join(t.as_str().unwrap())))
                .collect(),
        );
        let mut opts = UnsealOptions {
            anchors,
            ..Default::default()
        };
        if let Some(kek) = e["kek"].as_str() {
            opts.kek = Some(Zeroizing::new(hex::decode(kek).unwrap()));
        }
        if let Some(s) = e["expect_signer"].as_object() {
            use base64::Engine;
            let ski = base64::engine::general_purpose::STANDARD
                .decode(s["key_id"].as_str().unwrap())
                .unwrap();
            let from = s["public_key_from"].as_str().unwrap();
            let store = stores
                .entry(from.to_string())
                .or_insert_with(|| load_keystore(&dir, from));
            let auth = store.authentication().expect("authentication key");
            let etee_formats::keys::SignerRef::Certificate { cert, .. } = auth.signer else {
                panic!("certificate signer")
            };
            opts.expected_signers.push(ExpectedSigner::KeyId {
                ski,
                public_key: cert.public_key().unwrap(),
            });
        }
        let at = time::OffsetDateTime::parse(
            e["evaluated_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        opts.at = Some(at.unix_timestamp());
        let message = std::fs::read(dir.join(msg)).unwrap();
        let (res, content) = unseal_to_vec(&message, &ring, &opts).unwrap();
        let got_fatal = res.verdict.fatal.map(|f| f.name().to_string());
        let want_fatal = e["fatal"].as_str().map(String::from);
        let got_errors: BTreeSet<String> = res
            .verdict
            .errors
            .iter()
            .map(|x| x.name().to_string())
            .collect();
        let got_warnings: BTreeSet<String> = res
            .verdict
            .warnings
            .iter()
            .map(|x| x.name().to_string())
            .collect();
        let want_sha = e["content_sha256"].as_str().map(String::from);
        let got_sha = content
            .as_ref()
            .map(|c| hex::encode(openssl::sha::sha256(c)));
        let ok = got_fatal == want_fatal
            && got_errors == names(&e["errors"])
            && got_warnings == names(&e["warnings"])
            && got_sha == want_sha;
        checked += 1;
        if !ok && !DEVIATIONS.iter().any(|(m, _)| *m == msg) {
            failures.push(format!(
                "{msg}{}\n   want fatal={want_fatal:?} errors={:?} warnings={:?} content={want_sha:?}\n   got  fatal={got_fatal:?} errors={got_errors:?} warnings={got_warnings:?} content={got_sha:?}",
                if opts.kek.is_some() { " (KEK)" } else { "" },
                names(&e["errors"]),
                names(&e["warnings"]),
            ));
        }
    }
    println!(
        "checked {checked} official verdicts, {} differ",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} verdicts differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
