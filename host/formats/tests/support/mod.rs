//! Shared helpers for the integration tests: where the shared vectors are.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/vectors` beside the project root (or `ETEE_VECTORS`), when present; else
/// the test is skipped with a message, or fails under `ETEE_E2E_STRICT`
/// ([`etee_testpki::skip::shared_vectors`]).
#[track_caller]
pub fn vectors() -> Option<PathBuf> {
    etee_testpki::skip::shared_vectors()
}

/// Reads a certificate file, PEM, DER or Base64.
pub fn read_cert(path: &std::path::Path) -> etee_formats::cert::Certificate {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    etee_formats::cert::Certificate::from_file_bytes(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A key ring holding `inst`'s ETK key (software), under the id `bob-etk`.
pub fn etk_ring(inst: &etee_testpki::Institution) -> etee_formats::keys::KeyRing {
    use etee_formats::keys::{DecryptionKey, KeyId, KeyRing};
    let mut keys = etee_formats::keystore::SoftwareKeys::new();
    keys.insert(KeyId("bob-etk".into()), inst.etk_key.clone());
    let etk_cert = etee_formats::cert::Certificate::from_der(&inst.etk_cert.to_der().expect("DER"))
        .expect("certificate");
    let mut ring = KeyRing::new();
    ring.add(DecryptionKey {
        ops: std::sync::Arc::new(keys),
        key: KeyId("bob-etk".into()),
        serial: etk_cert.serial().to_vec(),
        cert: Some(etk_cert),
        ski: None,
        modulus_bits: inst.etk_key.bits(),
    });
    ring
}

/// `inst`'s authentication key (software) as a signer, its certificate with `chain`.
pub fn auth_signer(
    inst: &etee_testpki::Institution,
    chain: Vec<etee_formats::cert::Certificate>,
) -> etee_formats::keys::SigningKey {
    use etee_formats::keys::{KeyId, SignerRef, SigningKey};
    let mut keys = etee_formats::keystore::SoftwareKeys::new();
    keys.insert(KeyId("authentication".into()), inst.auth.key.clone());
    let cert = etee_formats::cert::Certificate::from_der(&inst.auth.cert.to_der().expect("DER"))
        .expect("certificate");
    SigningKey {
        ops: std::sync::Arc::new(keys),
        key: KeyId("authentication".into()),
        signer: SignerRef::Certificate { cert, chain },
    }
}
