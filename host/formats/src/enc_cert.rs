//! Issuing the encryption certificate of a new ETK when the holder's authentication key
//! lives in an HSM (spec §3.1–§3.2).
//!
//! The encryption certificate is "self-issued" by its holder: issuer = subject = the
//! authentication certificate's subject, signed by the authentication key, a random serial
//! and one extension, critical keyUsage keyEncipherment + dataEncipherment. The official
//! checker only requires `encCert.verify(authCert.getPublicKey())`, so the signature
//! algorithm is free; etee signs with RSASSA-PSS SHA-256 (salt 32), the one signature an
//! HSM-resident eHealth authentication key is allowed to make (see `docs/deviations.md`).
//!
//! The split into [`tbs_certificate`] and [`certificate`] lets the signature be made
//! elsewhere: the caller hashes the TBS with SHA-256 and asks its key holder (the custody
//! core) for a PSS signature over that digest.

use crate::ber::slice::parse_exact;
use crate::ber::{tag, write, BerError};
use crate::cms::signer::encode_time;
use crate::oid;

/// What goes into a new encryption certificate.
#[derive(Clone, Debug)]
pub struct EncryptionCertSpec<'a> {
    /// DER of the holder's Name: the subject of its authentication certificate.
    pub holder_name: &'a [u8],
    /// DER SubjectPublicKeyInfo of the ETK key.
    pub spki: &'a [u8],
    /// Serial number magnitude (big-endian, positive); 16 random bytes in practice.
    pub serial: &'a [u8],
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// `keyUsage` (2.5.29.15), critical, keyEncipherment + dataEncipherment (bits 2 and 3):
/// BIT STRING with 4 unused bits, value 0x30.
fn key_usage_extension() -> Vec<u8> {
    write::seq(&[
        &oid::der(oid::EXT_KEY_USAGE),
        &write::tlv(tag::BOOLEAN, &[0xff]),
        &write::tlv(
            tag::OCTET_STRING,
            &write::tlv(tag::BIT_STRING, &[0x04, 0x30]),
        ),
    ])
}

/// The DER TBSCertificate of the encryption certificate, with RSASSA-PSS SHA-256 as its
/// signature algorithm. Checks that the name and the key are single DER elements.
pub fn tbs_certificate(spec: &EncryptionCertSpec<'_>) -> Result<Vec<u8>, BerError> {
    parse_exact(spec.holder_name)?.expect(tag::SEQUENCE)?;
    parse_exact(spec.spki)?.expect(tag::SEQUENCE)?;
    let version = write::tlv(tag::ctx_cons(0), &write::tlv(tag::INTEGER, &[2]));
    let validity = write::seq(&[&encode_time(spec.not_before), &encode_time(spec.not_after)]);
    let extensions = write::tlv(tag::ctx_cons(3), &write::seq(&[&key_usage_extension()]));
    Ok(write::seq(&[
        &version,
        &write::uint(spec.serial),
        oid::ALG_RSASSA_PSS_SHA256,
        spec.holder_name,
        &validity,
        spec.holder_name,
        spec.spki,
        &extensions,
    ]))
}

/// The DER Certificate from a TBSCertificate of [`tbs_certificate`] and the PSS signature
/// over SHA-256 of it.
pub fn certificate(tbs: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(signature);
    write::seq(&[
        tbs,
        oid::ALG_RSASSA_PSS_SHA256,
        &write::tlv(tag::BIT_STRING, &bits),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{key_usage, Certificate};
    use openssl::pkey::PKey;
    use openssl::rsa::{Padding, Rsa};
    use openssl::sign::{RsaPssSaltlen, Signer};

    #[test]
    fn a_pss_signed_encryption_certificate_verifies_with_openssl() {
        let auth = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let etk = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("C", "BE").unwrap();
        name.append_entry_by_text("CN", "NIHII-PHARMACY=27150201")
            .unwrap();
        let name = name.build().to_der().unwrap();
        let spki = etk.public_key_to_der().unwrap();
        let spec = EncryptionCertSpec {
            holder_name: &name,
            spki: &spki,
            serial: &[0x80, 1, 2, 3],
            not_before: 1_700_000_000,
            not_after: 2_600_000_000, // after 2050: GeneralizedTime
        };
        let tbs = tbs_certificate(&spec).unwrap();
        let mut s = Signer::new(openssl::hash::MessageDigest::sha256(), &auth).unwrap();
        s.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        s.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32)).unwrap();
        s.set_rsa_mgf1_md(openssl::hash::MessageDigest::sha256())
            .unwrap();
        s.update(&tbs).unwrap();
        let der = certificate(&tbs, &s.sign_to_vec().unwrap());

        let x = openssl::x509::X509::from_der(&der).unwrap();
        assert!(x.verify(&auth).unwrap());
        assert!(!x.verify(&etk).unwrap());
        assert_eq!(x.subject_name().to_der().unwrap(), name);
        assert_eq!(x.issuer_name().to_der().unwrap(), name);
        assert_eq!(x.serial_number().to_bn().unwrap().to_vec(), [0x80, 1, 2, 3]);
        assert_eq!(x.public_key().unwrap().public_key_to_der().unwrap(), spki);
        let c = Certificate::from_der(&der).unwrap();
        assert!(c.allows_any(key_usage::KEY_ENCIPHERMENT));
        assert!(c.allows_any(key_usage::DATA_ENCIPHERMENT));
        assert!(!c.allows_any(key_usage::DIGITAL_SIGNATURE));
        assert_eq!(c.not_after(), 2_600_000_000);
    }

    #[test]
    fn malformed_names_and_keys_are_refused() {
        const OK: &[u8] = &[0x30, 0x00];
        let spec = |name: &'static [u8], spki: &'static [u8]| EncryptionCertSpec {
            holder_name: name,
            spki,
            serial: &[1],
            not_before: 0,
            not_after: 1,
        };
        assert!(tbs_certificate(&spec(&[0x30, 0x05], OK)).is_err());
        assert!(tbs_certificate(&spec(&[0x31, 0x00], OK)).is_err());
        assert!(tbs_certificate(&spec(OK, &[0x30, 0x00, 0x00])).is_err());
    }
}
