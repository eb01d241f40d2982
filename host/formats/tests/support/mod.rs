//! Shared helpers for the integration tests: where the shared vectors are.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/vectors` beside the project root (or `ETEE_VECTORS`), when present.
pub fn vectors() -> Option<PathBuf> {
    let dir = std::env::var_os("ETEE_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors")
        });
    if dir.join("expected-verdicts.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: ../shared/vectors not found (set ETEE_VECTORS to run the conformance tests)"
        );
        None
    }
}

/// Reads a certificate file, PEM or DER.
pub fn read_cert(path: &std::path::Path) -> etee_formats::cert::Certificate {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let der = if bytes.starts_with(b"-----BEGIN") {
        openssl::x509::X509::from_pem(&bytes)
            .and_then(|x| x.to_der())
            .expect("PEM certificate")
    } else if bytes.first() == Some(&0x30) {
        bytes
    } else {
        use base64::Engine;
        let text: String = String::from_utf8_lossy(&bytes)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64 certificate")
    };
    etee_formats::cert::Certificate::from_der(&der)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
