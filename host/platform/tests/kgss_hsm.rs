//! KGSS's start with its keys in a SoftHSM2 token (the project's rig, `tests/src/lib.rs`):
//! a wrapping key that is missing, or not a wrapping key, stops the start with the key
//! named and what to do, instead of a KGSS that answers every request with an error.

mod common;

use etee_formats::trust::TrustAnchors;
use etee_hsm::config::KGSS_WRAP_ID;
use etee_platform::kgss::Kgss;

/// One test: `SOFTHSM2_CONF` is the process's, set before the module is loaded.
#[test]
fn kgss_starts_only_with_its_wrapping_key() {
    let dir = tempfile::tempdir().unwrap();
    let rig = etee_e2e::SoftHsm::new(dir.path());
    std::env::set_var("SOFTHSM2_CONF", &rig.conf);
    let path = rig.token_config(
        "kgss",
        "kgss-start",
        "\n[custody]\naudit_file = \"kgss-audit.log\"\n",
    );
    let config = etee_hsm::Config::load(&path).unwrap().hsm;
    etee_hsm::init_token(&config).unwrap();
    let pki = common::pki();
    {
        let hsm = etee_hsm::Hsm::open(&config).unwrap();
        hsm.import(
            &common::keystore_of(&pki.kgss),
            &etee_hsm::ImportOptions::default(),
        )
        .unwrap();
    }
    let anchors = TrustAnchors::new(vec![common::cert(&pki.pki.root.cert)]);
    let start = |wrapping_key: &str| {
        Kgss::from_hsm(&path, wrapping_key, anchors.clone())
            .err()
            .map(|e| e.to_string())
    };

    // The token has KGSS's keys but no wrapping key yet.
    let e = start(KGSS_WRAP_ID).expect("refused without its wrapping key");
    let command = format!(
        "etee keys generate --config {} --profile kgss-wrap",
        path.display()
    );
    assert!(
        e.contains("the wrapping key ([kgss] wrapping_key) \"kgss-wrap\"")
            && e.contains("is not in the token")
            && e.contains(&command)
            && !e.contains("refused by policy"),
        "{e}"
    );
    // Another name: the profile to write is said.
    let e = start("archive-wrap").expect("refused without its wrapping key");
    assert!(
        e.contains("\"archive-wrap\"") && e.contains("role = \"wrapping\""),
        "{e}"
    );
    // A key of another kind named as the wrapping key.
    let e = start("authentication").expect("refused: not a wrapping key");
    assert!(
        e.contains("is a signing key, not an AES wrapping key"),
        "{e}"
    );

    {
        let hsm = etee_hsm::Hsm::open(&config).unwrap();
        hsm.generate(config.profile(KGSS_WRAP_ID).unwrap()).unwrap();
    }
    assert_eq!(start(KGSS_WRAP_ID), None, "started with every key in place");
}
