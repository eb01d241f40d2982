//! The official notification model (spec §1.5): at most one fatal, a list of errors, a list
//! of warnings, with the official names, so that a receiver's software sees the verdict the
//! official library would give.

use serde::Serialize;
use std::fmt;

macro_rules! notifications {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[allow(non_camel_case_types)]
        pub enum $name { $($variant),* }
        impl $name {
            /// Every value, in the official ordinal order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The official name.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }
            /// Looks a value up by its official name.
            pub fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

notifications! {
    /// A failure that stops unsealing: no content is released.
    Fatal {
        ENVELOPED_DATA_STRUCTURE_INCORRECT,
        DECRYPTION_PRIVATE_KEY_NOT_FOUND,
        OUTER_SIGNED_DATA_CONTENT_STRUCTURE_INVALID,
        SECRET_KEY_CAN_NOT_DECRYPT_KEKRECIPIENTINFOS,
        ENVELOPED_DATA_CONTAINS_NO_KEYTRANSRECIPIENTINFOS,
        ENVELOPED_DATA_CONTAINS_NO_KEKRECIPIENTINFOS,
        CERTIFICATION_PATH_CHECK_FAILED,
        CRL_CHECK_FAILED,
        OCSP_CHECK_FAILED,
        STAMP_FAILED,
        MESSAGE_INNER_SIGNED_PART_HAS_NO_SIGNER_INFORMATION,
        MESSAGE_OUTER_SIGNED_PART_HAS_NO_SIGNER_INFORMATION,
        MESSAGE_INNER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION,
        MESSAGE_OUTER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION,
        INNER_SIGNED_DATA_STRUCTURE_INCORRECT,
        OUTER_SIGNED_DATA_STRUCTURE_INCORRECT,
        INNER_SIGNED_DATA_CONTENT_MISSING,
        OUTER_SIGNED_DATA_CONTENT_MISSING,
        MESSAGE_INNER_SIGNED_PART_CONTAINS_INCORRECTLY_ENCODED_CERTIFICATES_SET,
        MESSAGE_OUTER_SIGNED_PART_CONTAINS_INCORRECTLY_ENCODED_CERTIFICATES_SET,
    }
}

notifications! {
    /// A failed check: processing continues, but content is withheld.
    Error {
        DECRYPTION_SYMMETRIC_KEY_LENGTH_UNAUTHORIZED,
        DECRYPTION_SYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED,
        DECRYPTION_SYMMETRIC_KEY_ALGORITHM_PADDING_UNAUTHORIZED,
        DECRYPTION_ASYMMETRIC_KEY_LENGTH_UNAUTHORIZED,
        DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED,
        MESSAGE_INTEGRITY_INVALID,
        INNER_SIGNATURE_ALGORITHM_UNAUTHORIZED,
        OUTER_SIGNATURE_ALGORITHM_UNAUTHORIZED,
        INNER_SIGNATURE_DIGEST_ALGORITHM_UNAUTHORIZED,
        OUTER_SIGNATURE_DIGEST_ALGORITHM_UNAUTHORIZED,
        INNER_SIGNATURE_KEY_LENGTH_UNAUTHORIZED,
        OUTER_SIGNATURE_KEY_LENGTH_UNAUTHORIZED,
        INNER_CERTIFICATE_EXPECTED_BUT_NOT_PRESENT,
        OUTER_CERTIFICATE_EXPECTED_BUT_NOT_PRESENT,
        INNER_CERTIFICATE_HAS_INVALID_KEYUSAGE,
        OUTER_CERTIFICATE_HAS_INVALID_KEYUSAGE,
        INNER_CERTIFICATE_REVOKED,
        OUTER_CERTIFICATE_REVOKED,
        INNER_CERTIFICATE_STATUS_UNKNOWN,
        OUTER_CERTIFICATE_STATUS_UNKNOWN,
        INNER_CERTIFICATE_EXPIRED,
        OUTER_CERTIFICATE_EXPIRED,
        INNER_CERTIFICATE_NOT_YET_VALID,
        OUTER_CERTIFICATE_NOT_YET_VALID,
        INNER_CERTIFICATE_CHAIN_NOT_TRUSTED,
        OUTER_CERTIFICATE_CHAIN_NOT_TRUSTED,
        INNER_SIGNATURE_DOES_NOT_MATCH_SIGNATURE_CERTIFICATE,
        OUTER_SIGNATURE_DOES_NOT_MATCH_AUTHENTICATION_CERTIFICATE,
        SIGNATURE_CERTIFICATE_NOT_IN_LIST_EXPECTED_SIGNERS,
        AUTHENTICATION_CERTIFICATE_NOT_IN_LIST_EXPECTED_SIGNERS,
        INNER_SIGNATURE_COULD_NOT_BE_VERIFIED,
        OUTER_SIGNATURE_COULD_NOT_BE_VERIFIED,
        OCSP_NOT_EMBEDDED,
        OCSP_RESPONSE_INVALID,
        OCSP_RESPONDER_TRUST_FAILED,
        OCSP_RESPONDER_CHAIN_EXPIRED,
        OCSP_RESPONDER_CHAIN_REVOKED,
        OCSP_RESPONDER_CHAIN_COULD_NOT_BE_VERIFIED,
        TIMESTAMPTOKEN_DOES_NOT_MATCH_OUTER_SIGNATURE,
        TIMESTAMPTOKEN_INVALID,
        TIMESTAMPTOKEN_TRUST_FAILED,
        TIMESTAMPTOKEN_CHAIN_EXPIRED,
        TIMESTAMPTOKEN_CHAIN_REVOKED,
        ETK_ENCRYPTION_CERT_SIGNATURE_NOT_VALID,
        ETK_AUTHENTICATION_CERT_HAS_INVALID_KEY,
        ETK_CERTS_INVALID,
        ETK_ENCRYPTION_CERT_EXPIRED,
        ETK_ENCRYPTION_CERT_NOT_YET_VALID,
        ETK_AUTHENTICATION_CERT_EXPIRED,
        ETK_AUTHENTICATION_CERT_NOT_YET_VALID,
        ETK_ENCRYPTION_CERT_HAS_INVALID_KEYUSAGE,
        ETK_AUTHENTICATION_CERT_HAS_INVALID_KEYUSAGE,
        ETK_CERTS_DO_NOT_MATCH,
        ETK_AUTHENTICATION_CERT_REVOKED,
        ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN,
        ETK_RA_CERT_EXPIRED,
        ETK_RA_CERT_REVOKED,
        ETK_RA_CERT_STATUS_UNKNOWN,
        CRL_TRUST_FAILED,
        CRL_NOT_SUPPORTED,
        INNER_SUBJECT_KEY_IDENTIFIER_EXPECTED_BUT_NOT_PRESENT,
        OUTER_SUBJECT_KEY_IDENTIFIER_EXPECTED_BUT_NOT_PRESENT,
    }
}

notifications! {
    /// Worth knowing; content is still released.
    Warning {
        SIGNING_TIME_MISSING,
        SIGNING_TIME_EXPIRED,
        OCSP_NOT_EMBEDDED,
        CRL_TRUST_NOT_VERIFIED,
    }
}

/// The outcome of a check run: one fatal or none, errors and warnings in the order found
/// (each at most once).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub fatal: Option<Fatal>,
    pub errors: Vec<Error>,
    pub warnings: Vec<Warning>,
}

impl Verdict {
    pub fn error(&mut self, e: Error) {
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }
    pub fn warning(&mut self, w: Warning) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }
    /// Records a fatal; the first one stands.
    pub fn fatal(&mut self, f: Fatal) {
        self.fatal.get_or_insert(f);
    }
    /// Whether the content may be released: no fatal and no error.
    pub fn is_clean(&self) -> bool {
        self.fatal.is_none() && self.errors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_counts_and_names() {
        assert_eq!(Fatal::ALL.len(), 20);
        assert_eq!(Error::ALL.len(), 62);
        assert_eq!(Warning::ALL.len(), 4);
        assert_eq!(
            Error::from_name("MESSAGE_INTEGRITY_INVALID"),
            Some(Error::MESSAGE_INTEGRITY_INVALID)
        );
        assert_eq!(
            Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT.to_string(),
            "OUTER_SIGNED_DATA_STRUCTURE_INCORRECT"
        );
    }
}
