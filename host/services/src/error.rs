//! The one error type of the crate, and how each failure is reported to a caller: as an SOA
//! fault code (SOAP services, spec §7) or as an HTTP status (REST services).

use crate::soap::SoaCode;

/// Why a message could not be read, or a proof could not be verified.
///
/// Every variant says which SOA code (§7) and which HTTP status a service answers with, so
/// that the servers never have to guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not well-formed XML (syntax, unknown entity, bad UTF-8, truncated, unbound prefix).
    #[error("malformed XML: {0}")]
    MalformedXml(String),
    /// XML constructs refused for safety: DOCTYPE/DTD, processing instructions.
    #[error("forbidden XML construct: {0}")]
    ForbiddenXml(String),
    /// A size, depth or count limit was exceeded.
    #[error("message too large: {what} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, limit: usize },
    /// The root is not a SOAP envelope.
    #[error("Message must be SOAP: {0}")]
    NotSoap(String),
    /// A SOAP envelope of another version (SOAP 1.2): the services speak SOAP 1.1, whose
    /// answer to it is a `VersionMismatch` fault (SOAP 1.1 §4.4.1).
    #[error("Message must be SOAP: {0}")]
    SoapVersion(String),
    /// The envelope has no `Body`.
    #[error("Message must contain SOAP body")]
    MissingBody,
    /// The body must hold exactly one element (WS-I Basic Profile, document/literal).
    #[error("SOAP body must hold exactly one element, found {0}")]
    BodyChildren(usize),
    /// A schema violation: missing, extra or misplaced element, bad base64, bad value.
    #[error("XSD compliance failure: {0}")]
    Schema(String),
    /// Well-formed and schema-valid, but the content makes no sense (e.g. unknown identifier type).
    #[error("message content validation failure: {0}")]
    Content(String),
    /// A JSON body that does not parse or does not fit the type.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A proof (proof of possession, attestation) does not verify.
    #[error("verification failed: {0}")]
    Verification(String),
    /// A key or certificate that cannot be used (unsupported algorithm, OpenSSL refused it).
    #[error("unusable key or certificate: {0}")]
    Key(String),
}

impl Error {
    /// The SOA code a SOAP service puts in its fault for this error.
    pub fn soa_code(&self) -> SoaCode {
        match self {
            Error::MalformedXml(_) | Error::ForbiddenXml(_) | Error::TooLarge { .. } => {
                SoaCode::MalformedMessage
            }
            Error::NotSoap(_) | Error::SoapVersion(_) => SoaCode::MustBeSoap,
            Error::MissingBody => SoaCode::MissingBody,
            Error::BodyChildren(_) => SoaCode::WsiCompliance,
            Error::Schema(_) | Error::Json(_) => SoaCode::XsdCompliance,
            Error::Content(_) | Error::Verification(_) | Error::Key(_) => {
                SoaCode::ContentValidation
            }
        }
    }

    /// The HTTP status a REST service answers with for this error (its body being a
    /// [`Problem`](crate::etkdepot::Problem)). SOAP services answer faults with
    /// [`soap::FAULT_HTTP_STATUS`](crate::soap::FAULT_HTTP_STATUS) instead.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::TooLarge { .. } => 413,
            Error::Verification(_) | Error::Content(_) | Error::Key(_) => 422,
            _ => 400,
        }
    }
}

pub(crate) fn schema(msg: impl Into<String>) -> Error {
    Error::Schema(msg.into())
}
