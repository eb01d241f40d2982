//! ETEE formats: BER/CMS sealing and unsealing as the official eHealth libraries do it.
//!
//! Pure code: bytes (or streams) in, bytes (or streams) out. Private-key operations go
//! through [`keys::PrivateKeyOps`], so keys may live in a keystore file or in an HSM.
//!
//! ```
//! use etee_formats::cert::Certificate;
//! use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
//! use etee_formats::keys::{DecryptionKey, KeyId, KeyRing, SignerRef, SigningKey};
//! use etee_formats::keystore::SoftwareKeys;
//! use etee_formats::trust::TrustAnchors;
//! use etee_testpki::{InstitutionSpec, TestPki};
//! use std::sync::Arc;
//!
//! // A generated test world: a CA, a hospital (sender) and a pharmacy (recipient).
//! let pki = TestPki::generate("doc").unwrap();
//! let hospital = pki.institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "H")).unwrap();
//! let pharmacy = pki.institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "P")).unwrap();
//! let cert = |x: &openssl::x509::X509| Certificate::from_der(&x.to_der().unwrap()).unwrap();
//!
//! // Keys sit behind PrivateKeyOps; here in memory, in production in an HSM.
//! let mut keys = SoftwareKeys::new();
//! keys.insert(KeyId("auth".into()), hospital.auth.key.clone());
//! keys.insert(KeyId("etk".into()), pharmacy.etk_key.clone());
//! let keys = Arc::new(keys);
//!
//! let sender = SigningKey {
//!     ops: keys.clone(),
//!     key: KeyId("auth".into()),
//!     signer: SignerRef::Certificate { cert: cert(&hospital.auth.cert), chain: vec![cert(&pki.root.cert)] },
//! };
//! let etk = cert(&pharmacy.etk_cert);
//! let mut sealed = Vec::new();
//! seal(&sender, &[Recipient::Certificate(etk.clone())], None, &b"prescription"[..], &mut sealed, &SealOptions::default()).unwrap();
//!
//! let mut ring = KeyRing::new();
//! ring.add(DecryptionKey { ops: keys, key: KeyId("etk".into()), serial: etk.serial().to_vec(), cert: Some(etk), ski: None, modulus_bits: 2048 });
//! let opts = UnsealOptions { anchors: TrustAnchors::new(vec![cert(&pki.root.cert)]), ..Default::default() };
//! let (result, content) = unseal_to_vec(&sealed, &ring, &opts).unwrap();
//! assert!(result.verdict.is_clean());
//! assert_eq!(content.as_deref(), Some(&b"prescription"[..]));
//! ```
#![forbid(unsafe_code)]

pub mod ber;
pub mod cert;
pub mod cms;
pub mod digest;
pub mod enc_cert;
pub mod etk;
pub mod identity;
pub mod keys;
pub mod keystore;
pub mod ocsp;
pub mod oid;
pub mod revocation;
pub mod trust;
pub mod verdict;

/// Unix seconds now: the one clock the etee crates read for validity and signing times.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix seconds as RFC 3339 UTC (`2014-03-12T07:13:32Z`), for reports and messages;
/// out-of-range times as the number.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Reads all of `input` into `into`, up to `limit` bytes: `Ok(false)` when there is more
/// (a file far larger than its kind ever is, `/dev/zero` given by mistake), without
/// reading further. For whole files whose size bounds the memory a mistake can take.
pub fn read_at_most(
    input: impl std::io::Read,
    limit: u64,
    into: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use std::io::Read;
    input.take(limit.saturating_add(1)).read_to_end(into)?;
    Ok(into.len() as u64 <= limit)
}
