//! The one error type of the clients. Each variant is a decision a caller can act on (retry
//! later, ask somebody else, fix the request, distrust the platform) rather than a
//! transport detail, and none carries secret material.

use etee_services::etkdepot::Problem;
use std::time::Duration;

/// The result of every client call.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

/// Why a call to a platform service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The endpoint URL is not `https://host[:port][/prefix]`, or the client is not
    /// configured for this service.
    #[error("endpoint: {0}")]
    Endpoint(String),
    /// No connection could be made (DNS, TCP, or the TLS handshake): nothing was sent.
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    /// Connecting or answering took longer than configured.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The TLS configuration (roots, client identity) is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A request that must not be carried out twice got an answer that does not say
    /// whether it was (a gateway's 502 or 504, a service error or timeout fault): it was
    /// not sent again.
    #[error(
        "{reason} after the request was sent: it may or may not have been carried out, and \
         it was not sent again since it must not be carried out twice; look before trying \
         again"
    )]
    OutcomeUnknown { reason: String },
    /// The exchange broke after the request was (possibly) sent.
    #[error("HTTP exchange: {0}")]
    Io(String),
    /// An HTTP status the service does not answer with on success, with its RFC 7807
    /// problem when it gave one.
    #[error("HTTP {status}{}", problem_text(.problem))]
    Http {
        status: u16,
        problem: Option<Problem>,
    },
    /// A SOAP fault (spec §7): `code` is the SOA code of its detail (`SOA-02001`) or,
    /// without one, the `faultcode`.
    #[error("SOAP fault {}: {}", shown(code), shown(message))]
    SoapFault { code: String, message: String },
    /// The answer does not parse or does not follow the protocol.
    #[error("malformed answer: {}", shown(.0))]
    Malformed(String),
    /// The answer body exceeds the client's limit.
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The request could not be built (e.g. an identifier of an unknown type).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Sealing the request failed (the key provider refused, no recipient...).
    #[error("sealing the request: {0}")]
    Seal(String),
    /// The sealed answer did not open cleanly (the official verdict's findings), or was not
    /// sealed by whom it should be.
    #[error("unsealing the answer: {0}")]
    Unseal(String),
    /// The institution's own private key could not be used (the custody core refused, its
    /// process or the token is unavailable): nothing is known about the answer.
    #[error("the institution's key: {0}")]
    Key(etee_formats::keys::KeyError),
    /// The service knows nothing matching the request.
    #[error("not found")]
    NotFound,
    /// The caller is not allowed to do this (KGSS reader conditions, not the holder).
    #[error("access denied: {}", shown(.0))]
    AccessDenied(String),
    /// The caller must authenticate (a TLS client certificate, a signed request).
    #[error("not authenticated: {}", shown(.0))]
    NotAuthenticated(String),
    /// KGSS or KeyDepot knows no such key.
    #[error("unknown key")]
    UnknownKey,
    /// Any other KGSS business error (`KGSS_REPLAYED_REQUEST`, `KGSS_INVALID_SEAL`, ...).
    #[error("KGSS {}: {}", shown(code), shown(message))]
    Kgss { code: String, message: String },
    /// Any other KeyDepot business error (`KEYDEPOT_DUPLICATE_KEY_ID`, ...).
    #[error("KeyDepot {} (HTTP {status}): {}", shown(code), shown(message))]
    KeyDepot {
        status: u16,
        code: String,
        message: String,
    },
    /// An ETKDepot error answer other than "not found".
    #[error("ETKDepot {}: {}", shown(code), shown(message))]
    EtkDepot { code: String, message: String },
    /// Every ETK found for `identifier` is outside its validity at the evaluation time.
    #[error("the ETK of {identifier} is expired or not yet valid")]
    EtkExpired { identifier: String },
    /// An ETK found for `identifier` fails the official checks (spec §3.2).
    #[error("the ETK of {identifier} is invalid: {}", problems.join(", "))]
    EtkInvalid {
        identifier: String,
        problems: Vec<String>,
    },
    /// ETKs were found but none belongs to the holder asked for (spec §4.1 choice rule).
    #[error("no valid ETK of {identifier}")]
    NoValidEtk { identifier: String },
    /// The operation does not exist in this flavour or configuration.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

fn problem_text(p: &Option<Problem>) -> String {
    match p {
        Some(p) => format!(
            ": {}{}",
            shown(p.title.as_deref().unwrap_or("problem")),
            p.detail
                .as_deref()
                .map(|d| format!(" ({})", shown(d)))
                .unwrap_or_default()
        ),
        None => String::new(),
    }
}

/// The most of a server's text an error shows, in characters.
pub const SHOWN_CHARS: usize = 512;

/// Text a server chose, as errors show it (and so logs and the appliance's answers): at
/// most [`SHOWN_CHARS`] characters, then `…`, and control characters escaped (`\n`,
/// `\u{1b}`), so that a hostile or broken service cannot flood a log or write lines of
/// its own into it.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(SHOWN_CHARS + 8));
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl ProtocolError {
    /// Whether nothing reached the service (so any request may be sent again).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProtocolError::Connect { .. }
                | ProtocolError::Timeout {
                    what: "connect",
                    ..
                }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_text_is_cut_and_its_control_characters_escaped() {
        let detail = format!("line1\nFAKE LOG LINE\u{1b}[2J{}", "x".repeat(900_000));
        let e = ProtocolError::Http {
            status: 400,
            problem: Some(Problem::new(400, "Bad", Some(detail.clone()))),
        };
        let text = e.to_string();
        assert!(text.len() < 700, "{} bytes", text.len());
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
        assert!(text.contains("line1\\nFAKE LOG LINE\\u{1b}[2J"), "{text}");
        assert!(text.ends_with("…)"), "{text}");
        for e in [
            ProtocolError::SoapFault {
                code: "SOA-00001\r\n".into(),
                message: detail.clone(),
            },
            ProtocolError::KeyDepot {
                status: 400,
                code: "X".into(),
                message: detail.clone(),
            },
            ProtocolError::Kgss {
                code: "X".into(),
                message: detail.clone(),
            },
            ProtocolError::EtkDepot {
                code: "X".into(),
                message: detail.clone(),
            },
            ProtocolError::AccessDenied(detail.clone()),
            ProtocolError::NotAuthenticated(detail.clone()),
            ProtocolError::Malformed(detail.clone()),
        ] {
            let text = e.to_string();
            assert!(text.len() < 700, "{e:?}");
            assert!(!text.contains(['\n', '\r', '\u{1b}']), "{text}");
        }
        // Ordinary text is shown as it is.
        assert_eq!(
            shown("KGSS_ACCESS_DENIED: not a reader"),
            "KGSS_ACCESS_DENIED: not a reader"
        );
    }
}
