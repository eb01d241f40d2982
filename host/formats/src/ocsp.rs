//! OCSP (RFC 6960): the requests a receiver sends, and what a responder's signed answer
//! says of one certificate.
//!
//! The official library asks an OCSP responder for each signer (spec §1.6, `OCSPPolicy`)
//! and embeds the answers in the outer SignerInfo as `id-aa-ets-revocationValues` when it
//! seals (spec §1.2); a receiver uses those first. Both sides are here: [`request`] (with a
//! nonce), [`judge`] (signature by the certificate's issuer or by a responder it
//! authorised, OpenSSL's `OCSP_basic_verify`; the answer read for that certificate), the
//! `revocationValues` attribute ([`RevocationValues`]) and an online client with its cache
//! ([`Online`]), whose transport (HTTP) the caller supplies. How answers combine with
//! revocation lists is in [`crate::revocation`].

use crate::ber::slice::{parse_exact, Tlv};
use crate::ber::tag;
use crate::ber::write::{cons, octets, seq, set_of, tlv, uint};
use crate::cert::parse_time;
use crate::revocation::{CertStatus, CLOCK_SKEW};
use openssl::hash::{hash, MessageDigest};
use openssl::ocsp::{OcspFlag, OcspResponse};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509Ref, X509};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1).
pub const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-pkix-ocsp-nonce (1.3.6.1.5.5.7.48.1.2).
pub const OID_OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
/// id-aa-ets-revocationValues (1.2.840.113549.1.9.16.2.24), an unsigned attribute.
pub const ATTR_REVOCATION_VALUES: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x18,
];

const ENUMERATED: u8 = 0x0a;

/// Why an OCSP exchange or answer is of no use.
#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    #[error("not an OCSP response (malformed DER)")]
    Malformed,
    #[error("the OCSP responder answered {0}")]
    NotSuccessful(&'static str),
    #[error("the OCSP response is not a basic response")]
    NotBasic,
    #[error(
        "the OCSP response is not signed by the certificate's issuer or by a responder \
         that issuer authorised (id-kp-OCSPSigning)"
    )]
    NotTrusted,
    #[error("the OCSP response does not speak of the certificate asked about")]
    NotAbout,
    #[error("the OCSP response carries another nonce than the request (a replayed answer)")]
    NonceMismatch,
    #[error("no OCSP responder: the certificate names none (authorityInfoAccess) and none is configured")]
    NoResponder,
    #[error(
        "the certificate has a negative serial number (RFC 5280 forbids it): OCSP cannot name it"
    )]
    NegativeSerial,
    #[error("asked a moment ago without a usable answer (not asked again for 30 s)")]
    Recently,
    #[error(
        "the responder's answer was produced too long ago for a receiver to use it \
         (pre-produced answers, or the responder's clock behind)"
    )]
    TooOld,
    #[error("OCSP request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
}

/// Why a sender's own certificates could not be vouched for when sealing.
#[derive(Debug, thiserror::Error)]
pub enum SealingStatus {
    /// A certificate of the sender's own path is outside its validity period now: every
    /// receiver judges it at the message's signing time, and reports
    /// `OUTER_CERTIFICATE_EXPIRED` (or `_NOT_YET_VALID`, or an untrusted chain for an
    /// issuer). Checked whatever the revocation configuration.
    #[error(
        "the sender's own certificate {subject} {}: every receiver would refuse the message \
         (OUTER_CERTIFICATE_{}){}",
        if *expired { format!("expired at {}", crate::rfc3339(*at)) }
        else { format!("is not valid before {}", crate::rfc3339(*at)) },
        if *expired { "EXPIRED" } else { "NOT_YET_VALID" },
        if *expired { "; renew it" } else { "; check this machine's clock" }
    )]
    OutsideValidity {
        subject: String,
        /// `notAfter` when expired, else `notBefore`.
        at: i64,
        expired: bool,
    },
    /// The lists, whether or not a responder is configured: every receiver holding them
    /// would refuse the message.
    #[error(
        "the revocation lists (crl) say the sender's own certificate, or one of its issuers, \
         is revoked; every receiver holding them would report OUTER_CERTIFICATE_REVOKED"
    )]
    RevokedByLists,
    #[error("the OCSP responder says the signing certificate {0} is revoked")]
    Revoked(String),
    #[error("the OCSP responder does not say that {0} is good (status unknown, or an answer not current)")]
    Unknown(String),
    #[error("no OCSP answer for {0}: {1}")]
    NoAnswer(String, OcspError),
    #[error("the issuer of the signing certificate {0} is not known (give its CA certificate)")]
    NoIssuer(String),
    #[error("the signing key has no certificate to ask about (a key-id signer)")]
    NoCertificate,
}

/// What a sender can do about a [`SealingStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotVouched {
    /// The responder says revoked or unknown: a state to fix (a new certificate).
    NotGood,
    /// No usable answer: retry later.
    NoAnswer,
    /// The responder is named nowhere, OCSP cannot name the certificate, answers come
    /// from a signer the issuer did not authorise, the issuer is not among the trust
    /// anchors, or the signing key has no certificate: the configuration is to fix.
    Misconfigured,
}

impl SealingStatus {
    pub fn kind(&self) -> NotVouched {
        match self {
            Self::OutsideValidity { .. }
            | Self::RevokedByLists
            | Self::Revoked(_)
            | Self::Unknown(_) => NotVouched::NotGood,
            Self::NoAnswer(
                _,
                OcspError::NoResponder
                | OcspError::NegativeSerial
                | OcspError::NotTrusted
                | OcspError::NotAbout
                | OcspError::NotBasic,
            ) => NotVouched::Misconfigured,
            Self::NoAnswer(..) => NotVouched::NoAnswer,
            Self::NoIssuer(_) | Self::NoCertificate => NotVouched::Misconfigured,
        }
    }
}

/// A certificate as OCSP names it (CertID): hashes of its issuer's name and key, and its
/// serial number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CertId {
    /// The hash algorithm's OID content.
    alg: &'static [u8],
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
}

impl fmt::Debug for CertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertId(serial {})", hex::encode(&self.serial))
    }
}

impl CertId {
    /// The CertID of `cert` issued by `issuer`, with SHA-1 (what requests use, RFC 6960
    /// §4.3 and every responder understands).
    pub fn of(cert: &X509Ref, issuer: &X509Ref) -> Result<Self, OcspError> {
        Self::with(crate::oid::SHA1, cert, issuer)
    }

    fn with(alg: &'static [u8], cert: &X509Ref, issuer: &X509Ref) -> Result<Self, OcspError> {
        let md = digest(alg).ok_or(OcspError::NotAbout)?;
        let bad = |_| OcspError::Malformed;
        // RFC 6960 §4.1.1: the hash of the issuer's name as the certificate carries it.
        let name = cert.issuer_name().to_der().map_err(bad)?;
        let key_hash = issuer_key_hash(md, issuer).ok_or(OcspError::Malformed)?;
        let serial = cert.serial_number().to_bn().map_err(bad)?;
        if serial.is_negative() {
            return Err(OcspError::NegativeSerial);
        }
        let serial = serial.to_vec();
        Ok(Self {
            alg,
            name_hash: hash(md, &name).map_err(bad)?.to_vec(),
            key_hash,
            serial,
        })
    }

    /// `CertID ::= SEQUENCE { hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber }`.
    pub fn der(&self) -> Vec<u8> {
        seq(&[
            &seq(&[&crate::oid::der(self.alg), &tlv(tag::NULL, &[])]),
            &octets(&self.name_hash),
            &octets(&self.key_hash),
            &uint(&self.serial),
        ])
    }
}

/// The digest a CertID's hash algorithm (OID content) names, among SHA-1, -256, -384 and
/// -512.
fn digest(alg: &[u8]) -> Option<MessageDigest> {
    match alg {
        a if a == crate::oid::SHA1 => Some(MessageDigest::sha1()),
        a if a == crate::oid::SHA256 => Some(MessageDigest::sha256()),
        a if a == crate::oid::SHA384 => Some(MessageDigest::sha384()),
        a if a == crate::oid::SHA512 => Some(MessageDigest::sha512()),
        _ => None,
    }
}

/// The hash of `issuer`'s subjectPublicKey BIT STRING value (without its unused-bits
/// octet), read from the certificate's own encoding: re-encoding a decoded key goes
/// through OpenSSL 3.0's provider encoders, which cost more than the rest of an unseal.
fn issuer_key_hash(md: MessageDigest, issuer: &X509Ref) -> Option<Vec<u8>> {
    let bits = subject_public_key(&issuer.to_der().ok()?)?;
    Some(hash(md, &bits).ok()?.to_vec())
}

/// The (name, key) hashes by which a CertID with hash algorithm `alg` (OID content) names
/// `issuer` as the issuer (RFC 6960 §4.1.1, of the issuer's own subject name): what a
/// responder compares a request's CertID with. `None` for an algorithm not known here.
pub fn issuer_hashes(alg: &[u8], issuer: &X509Ref) -> Option<(Vec<u8>, Vec<u8>)> {
    let md = digest(alg)?;
    let name = hash(md, &issuer.subject_name().to_der().ok()?)
        .ok()?
        .to_vec();
    Some((name, issuer_key_hash(md, issuer)?))
}

/// A CertID as read from a request or an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadCertId {
    /// The hash algorithm's OID content.
    pub alg: Vec<u8>,
    pub name_hash: Vec<u8>,
    pub key_hash: Vec<u8>,
    /// The serial as a magnitude (no leading zeros), or `None` for a negative INTEGER: it
    /// names no certificate (dropping the sign would make −N match N).
    pub serial: Option<Vec<u8>>,
}

impl ReadCertId {
    /// Reads `CertID ::= SEQUENCE { hashAlgorithm, issuerNameHash, issuerKeyHash,
    /// serialNumber }`.
    pub fn read(t: &Tlv<'_>) -> Result<Self, crate::ber::BerError> {
        let mut id = t.seq()?;
        let alg = id
            .next(tag::SEQUENCE)?
            .seq()?
            .next(tag::OID)?
            .content
            .to_vec();
        let name_hash = id.next(tag::OCTET_STRING)?.content.to_vec();
        let key_hash = id.next(tag::OCTET_STRING)?.content.to_vec();
        let serial = id.next(tag::INTEGER)?.content;
        let serial = match serial.first() {
            Some(b) if b & 0x80 != 0 => None,
            _ => Some(serial.iter().copied().skip_while(|b| *b == 0).collect()),
        };
        Ok(Self {
            alg,
            name_hash,
            key_hash,
            serial,
        })
    }
}

/// The subjectPublicKey bits of a certificate (DER): `Certificate { tbsCertificate {
/// [0] version?, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo { algorithm, subjectPublicKey } … } … }`.
fn subject_public_key(cert: &[u8]) -> Option<Vec<u8>> {
    let t = parse_exact(cert).ok()?;
    let mut tbs = t.seq().ok()?.next(tag::SEQUENCE).ok()?.seq().ok()?;
    tbs.optional(tag::ctx_cons(0)).ok()?;
    for _ in 0..5 {
        tbs.any().ok()?;
    }
    let mut spki = tbs.next(tag::SEQUENCE).ok()?.seq().ok()?;
    spki.next(tag::SEQUENCE).ok()?;
    let bits = spki.next(tag::BIT_STRING).ok()?;
    Some(bits.content.get(1..)?.to_vec())
}

/// An OCSPRequest (DER) for one certificate, with `nonce` in the id-pkix-ocsp-nonce
/// extension (RFC 8954: its value an OCTET STRING), unsigned.
pub fn request(id: &CertId, nonce: &[u8]) -> Vec<u8> {
    let nonce_ext = seq(&[&crate::oid::der(OID_OCSP_NONCE), &octets(&octets(nonce))]);
    let request_list = seq(&[&seq(&[&id.der()])]);
    let extensions = cons(tag::ctx_cons(2), &[&seq(&[&nonce_ext])]);
    seq(&[&seq(&[&request_list, &extensions])])
}

/// The BasicOCSPResponse (DER) inside an OCSPResponse; an error for any status but
/// successful, or another response type.
pub fn basic_of(response: &[u8]) -> Result<Vec<u8>, OcspError> {
    let m = |_| OcspError::Malformed;
    let t = parse_exact(response).map_err(m)?;
    let mut s = t.seq().map_err(m)?;
    let status = s.next(ENUMERATED).map_err(m)?;
    let status = match status.content {
        [0] => None,
        [1] => Some("malformedRequest"),
        [2] => Some("internalError"),
        [3] => Some("tryLater"),
        [5] => Some("sigRequired"),
        [6] => Some("unauthorized"),
        _ => Some("an unknown status"),
    };
    if let Some(status) = status {
        return Err(OcspError::NotSuccessful(status));
    }
    let bytes = s.next(tag::ctx_cons(0)).map_err(m)?;
    let mut rb = bytes
        .seq()
        .map_err(m)?
        .next(tag::SEQUENCE)
        .map_err(m)?
        .seq()
        .map_err(m)?;
    if rb.next(tag::OID).map_err(m)?.content != OID_OCSP_BASIC {
        return Err(OcspError::NotBasic);
    }
    Ok(rb
        .next(tag::OCTET_STRING)
        .map_err(m)?
        .octets()
        .map_err(m)?
        .into_owned())
}

/// A successful OCSPResponse (DER) carrying `basic`: how OpenSSL takes it in.
fn wrap(basic: &[u8]) -> Vec<u8> {
    seq(&[
        &tlv(ENUMERATED, &[0]),
        &cons(
            tag::ctx_cons(0),
            &[&seq(&[&crate::oid::der(OID_OCSP_BASIC), &octets(basic)])],
        ),
    ])
}

/// What a responder said of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Said {
    Good,
    /// Revoked since that time (unix seconds; `None` when the time cannot be read).
    Revoked(Option<i64>),
    /// The responder does not know the certificate.
    Unknown,
}

/// A verified answer about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub said: Said,
    pub this_update: i64,
    pub next_update: Option<i64>,
    pub produced_at: i64,
    /// The nonce of the response's extensions, if any.
    pub nonce: Option<Vec<u8>>,
}

impl Answer {
    /// The status this answer gives at `at`: a revocation dated at or before it (with
    /// [`CLOCK_SKEW`]) revokes; good counts while the answer is current: from its
    /// thisUpdate to its nextUpdate, or, without nextUpdate, for [`CLOCK_SKEW`] after
    /// thisUpdate (a responder that says nothing of the next update speaks only of now).
    pub fn status_at(&self, at: i64) -> CertStatus {
        match self.said {
            Said::Revoked(when) if when.is_none_or(|w| w <= at + CLOCK_SKEW) => CertStatus::Revoked,
            Said::Good if self.current_at(at) => CertStatus::Good,
            _ => CertStatus::Unknown,
        }
    }

    fn current_at(&self, at: i64) -> bool {
        let until = self.next_update.unwrap_or(self.this_update + CLOCK_SKEW);
        self.this_update <= at + CLOCK_SKEW && at <= until
    }
}

/// Checks `basic` (a BasicOCSPResponse, DER) and reads what it says of `cert`, issued by
/// `issuer`: it must be signed by `issuer` or by a certificate `issuer` issued for OCSP
/// signing (id-kp-OCSPSigning), valid at `at`, and hold a SingleResponse for `cert`.
pub fn judge(basic: &[u8], cert: &X509Ref, issuer: &X509Ref, at: i64) -> Result<Answer, OcspError> {
    let parsed = Parsed::of(basic).map_err(|_| OcspError::Malformed)?;
    // The answer about this certificate, found by reading alone: the signature (the
    // costly part) is checked only for an answer that speaks of it. The certificate's
    // CertID is computed once per hash algorithm the answer uses.
    let mut found = None;
    let mut ids: Vec<CertId> = Vec::new();
    for single in &parsed.responses {
        let alg = [
            crate::oid::SHA1,
            crate::oid::SHA256,
            crate::oid::SHA384,
            crate::oid::SHA512,
        ]
        .into_iter()
        .find(|a| *a == single.id.alg.as_slice());
        let Some(alg) = alg else { continue };
        let id = match ids.iter().find(|i| i.alg == alg) {
            Some(id) => id,
            None => {
                ids.push(CertId::with(alg, cert, issuer)?);
                &ids[ids.len() - 1]
            }
        };
        if id.name_hash == single.id.name_hash
            && id.key_hash == single.id.key_hash
            && single.id.serial.as_ref() == Some(&id.serial)
        {
            found = Some(single);
            break;
        }
    }
    let single = found.ok_or(OcspError::NotAbout)?;
    let answer = Answer {
        said: single.said,
        this_update: single.this_update,
        next_update: single.next_update,
        produced_at: parsed.produced_at,
        nonce: parsed.nonce.clone(),
    };
    // The same answer recurs in every message of a sender (and a cached one at every
    // question): its signature check is remembered, for the time all the certificates it
    // involves are valid (the only part of the check that depends on the time).
    let key = verified_key(basic, issuer);
    if let Some(key) = &key {
        if verified()
            .lock()
            .ok()
            .and_then(|v| v.get(key).copied())
            .is_some_and(|(from, until)| from <= at && at <= until)
        {
            return Ok(answer);
        }
    }
    let response = OcspResponse::from_der(&wrap(basic)).map_err(|_| OcspError::Malformed)?;
    let basic_response = response.basic().map_err(|_| OcspError::Malformed)?;
    let trusted = (|| -> Result<(), openssl::error::ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        store.add_cert(issuer.to_owned())?;
        let mut param = X509VerifyParam::new()?;
        // The issuer is the anchor here, whether or not it is a root.
        param.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
        param.set_time(at as _);
        store.set_param(&param)?;
        let store = store.build();
        let mut certs: Stack<X509> = Stack::new()?;
        certs.push(issuer.to_owned())?;
        basic_response.verify(&certs, &store, OcspFlag::empty())
    })();
    if trusted.is_err() {
        return Err(OcspError::NotTrusted);
    }
    if let (Some(key), Some(window)) = (key, validity_window(issuer, &parsed.certs)) {
        if let Ok(mut v) = verified().lock() {
            if v.len() >= VERIFIED_LIMIT {
                v.clear();
            }
            v.insert(key, window);
        }
    }
    Ok(answer)
}

/// Answers whose signature was found good: (answer, issuer) digest → the time window in
/// which that holds.
type Verified = Mutex<HashMap<[u8; 32], (i64, i64)>>;

/// Entries remembered by [`verified`] (cleared when full).
const VERIFIED_LIMIT: usize = 4096;

fn verified() -> &'static Verified {
    static VERIFIED: std::sync::OnceLock<Verified> = std::sync::OnceLock::new();
    VERIFIED.get_or_init(Verified::default)
}

/// SHA-256 over the answer and the issuer's certificate.
fn verified_key(basic: &[u8], issuer: &X509Ref) -> Option<[u8; 32]> {
    let mut h = openssl::sha::Sha256::new();
    h.update(&(basic.len() as u64).to_be_bytes());
    h.update(basic);
    h.update(&issuer.to_der().ok()?);
    Some(h.finish())
}

/// The times at which the issuer and every certificate an answer carries (its responder's)
/// are all within their validity; `None` if one cannot be read.
fn validity_window(issuer: &X509Ref, carried: &[Vec<u8>]) -> Option<(i64, i64)> {
    let mut window = (i64::MIN, i64::MAX);
    let mut narrow = |c: &X509Ref| -> Option<()> {
        window.0 = window.0.max(crate::revocation::unix(c.not_before())?);
        window.1 = window.1.min(crate::revocation::unix(c.not_after())?);
        Some(())
    };
    narrow(issuer)?;
    for der in carried {
        let cert = X509::from_der(der).ok()?;
        narrow(&cert)?;
    }
    Some(window)
}

/// The fields of a BasicOCSPResponse read here (the signature is OpenSSL's to check).
struct Parsed {
    produced_at: i64,
    nonce: Option<Vec<u8>>,
    responses: Vec<Single>,
    /// The certificates the answer carries (DER): its responder's, when delegated.
    certs: Vec<Vec<u8>>,
}

struct Single {
    id: ReadCertId,
    said: Said,
    this_update: i64,
    next_update: Option<i64>,
}

impl Parsed {
    fn of(basic: &[u8]) -> Result<Self, crate::ber::BerError> {
        let t = parse_exact(basic)?;
        let mut top = t.seq()?;
        let data = top.next(tag::SEQUENCE)?;
        // signatureAlgorithm, signature, then [0] EXPLICIT SEQUENCE OF Certificate.
        top.next(tag::SEQUENCE)?;
        top.next(tag::BIT_STRING)?;
        let mut certs = Vec::new();
        if let Some(carried) = top.optional(tag::ctx_cons(0))? {
            for c in carried.seq()?.next(tag::SEQUENCE)?.children() {
                let c = c?;
                // Checked before it is copied: the answer's signature is not yet.
                if certs.len() == MAX_CARRIED {
                    return Err(c.err(crate::ber::BerErrorKind::BadValue(
                        "more certificates than an OCSP responder carries",
                    )));
                }
                certs.push(c.raw.to_vec());
            }
        }
        let mut d = data.seq()?;
        d.optional(tag::ctx_cons(0))?; // version
        d.any()?; // responderID
        let produced_at = parse_time(&d.next(tag::GENERALIZED_TIME)?)?;
        let list = d.next(tag::SEQUENCE)?;
        let mut responses = Vec::new();
        for single in list.children() {
            if responses.len() == MAX_SINGLES {
                return Err(single?.err(crate::ber::BerErrorKind::BadValue(
                    "more SingleResponses than an OCSP answer about a few certificates has",
                )));
            }
            responses.push(Single::of(&single?)?);
        }
        let mut nonce = None;
        if let Some(exts) = d.optional(tag::ctx_cons(1))? {
            for ext in exts.seq()?.next(tag::SEQUENCE)?.children() {
                let ext = ext?;
                let mut e = ext.seq()?;
                let id = e.next(tag::OID)?.content;
                e.optional(tag::BOOLEAN)?;
                let value = e.next(tag::OCTET_STRING)?.octets()?;
                if id == OID_OCSP_NONCE {
                    // RFC 8954: an OCTET STRING inside; older responders put the raw bytes.
                    let inner = parse_exact(&value)
                        .ok()
                        .filter(|v| v.tag == tag::OCTET_STRING)
                        .map(|v| v.content.to_vec());
                    nonce = Some(inner.unwrap_or_else(|| value.to_vec()));
                }
            }
        }
        Ok(Self {
            produced_at,
            nonce,
            responses,
            certs,
        })
    }
}

impl Single {
    fn of(t: &Tlv<'_>) -> Result<Self, crate::ber::BerError> {
        let mut s = t.seq()?;
        let id = ReadCertId::read(&s.next(tag::SEQUENCE)?)?;
        let status = s.any()?;
        let said = match status.tag {
            t if t == tag::ctx_prim(0) => Said::Good,
            t if t == tag::ctx_cons(1) => {
                let when = status
                    .seq()
                    .and_then(|mut r| r.next(tag::GENERALIZED_TIME))
                    .and_then(|t| parse_time(&t))
                    .ok();
                Said::Revoked(when)
            }
            _ => Said::Unknown,
        };
        let this_update = parse_time(&s.next(tag::GENERALIZED_TIME)?)?;
        let next_update = match s.optional(tag::ctx_cons(0))? {
            Some(n) => Some(parse_time(&n.seq()?.next(tag::GENERALIZED_TIME)?)?),
            None => None,
        };
        Ok(Self {
            id,
            said,
            this_update,
            next_update,
        })
    }
}

/// The `RevocationValues` of an `id-aa-ets-revocationValues` attribute (ETSI TS 101 733):
/// `SEQUENCE { crlVals [0] SEQUENCE OF CertificateList OPTIONAL, ocspVals [1] SEQUENCE OF
/// BasicOCSPResponse OPTIONAL, otherRevVals [2] OPTIONAL }`, each value as DER.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationValues {
    pub crls: Vec<Vec<u8>>,
    pub ocsp: Vec<Vec<u8>>,
}

impl RevocationValues {
    /// Reads the attribute value (the RevocationValues SEQUENCE, DER or BER).
    pub fn parse(value: &[u8]) -> Result<Self, crate::ber::BerError> {
        let t = parse_exact(value)?;
        let mut out = Self::default();
        let mut s = t.seq()?;
        while s.has_more()? {
            let field = s.any()?;
            let list = if field.tag == tag::ctx_cons(0) {
                &mut out.crls
            } else if field.tag == tag::ctx_cons(1) {
                &mut out.ocsp
            } else {
                continue;
            };
            for v in field.seq()?.next(tag::SEQUENCE)?.children() {
                if list.len() < MAX_EMBEDDED {
                    list.push(v?.raw.to_vec());
                }
            }
        }
        Ok(out)
    }

    /// The DER of the whole unsigned attribute: `Attribute { revocationValues, SET {
    /// RevocationValues } }`, with the OCSP answers (and lists, if any).
    pub fn attribute(&self) -> Vec<u8> {
        let mut fields = Vec::new();
        if !self.crls.is_empty() {
            let all: Vec<&[u8]> = self.crls.iter().map(|c| c.as_slice()).collect();
            fields.push(cons(tag::ctx_cons(0), &[&seq(&all)]));
        }
        if !self.ocsp.is_empty() {
            let all: Vec<&[u8]> = self.ocsp.iter().map(|c| c.as_slice()).collect();
            fields.push(cons(tag::ctx_cons(1), &[&seq(&all)]));
        }
        let refs: Vec<&[u8]> = fields.iter().map(|f| f.as_slice()).collect();
        seq(&[
            &crate::oid::der(ATTR_REVOCATION_VALUES),
            &set_of(vec![seq(&refs)]),
        ])
    }

    pub fn is_empty(&self) -> bool {
        self.crls.is_empty() && self.ocsp.is_empty()
    }

    /// Adds `more`, keeping at most [`MAX_EMBEDDED`] of each kind (the rest is left out:
    /// each answer kept costs a signature check at every unseal).
    pub fn add(&mut self, more: RevocationValues) {
        for (mine, theirs) in [(&mut self.crls, more.crls), (&mut self.ocsp, more.ocsp)] {
            let room = MAX_EMBEDDED.saturating_sub(mine.len());
            mine.extend(theirs.into_iter().take(room));
        }
    }
}

/// SingleResponses read from one answer (a responder answers about the certificates asked
/// for; a request names one).
pub const MAX_SINGLES: usize = 64;
/// The most certificates an answer may carry (a responder sends its own, and perhaps its
/// issuer's).
pub const MAX_CARRIED: usize = 16;

/// OCSP answers, and lists, read from one signer's revocationValues (a real signer's path
/// has a few certificates; a message with more is not given more of our time).
pub const MAX_EMBEDDED: usize = 16;

/// How an OCSPRequest reaches a responder: an HTTP POST (RFC 6960 appendix A) in the
/// services, a canned answer in tests.
pub trait OcspTransport: Send + Sync {
    /// Sends `request` (DER) to `url` and returns the body of the answer (DER).
    fn post(&self, url: &str, request: &[u8]) -> Result<Vec<u8>, String>;
}

/// Where requests go: each certificate's own responder (its authorityInfoAccess), or one
/// responder for all (the official `OCSP_URI` option).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Responder {
    FromCertificate,
    Url(String),
}

impl std::str::FromStr for Responder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::FromCertificate),
            url if url.starts_with("http://") => Ok(Self::Url(url.to_string())),
            other => Err(format!(
                "OCSP responder {other:?}: \"auto\" (each certificate's authorityInfoAccess) \
                 or an http:// address"
            )),
        }
    }
}

impl fmt::Display for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromCertificate => f.write_str("auto"),
            Self::Url(u) => f.write_str(u),
        }
    }
}

/// How long (seconds) a sender reuses an answer for the messages it seals, at most.
pub const SEALING_REUSE: i64 = 60;

/// How long a responder that could not be reached is not asked again (seconds): a
/// receiver unsealing many messages would otherwise wait for its timeout at each one.
pub const UNREACHABLE_BACKOFF: i64 = 30;
/// Answers remembered (cleared when full).
pub const CACHE_LIMIT: usize = 4096;

/// An online OCSP client: asks the responder, checks the answer (signature, nonce,
/// certificate) and remembers it while it is current, so that a certificate seen in
/// every message is not asked about at each one.
pub struct Online {
    responder: Responder,
    transport: Box<dyn OcspTransport>,
    cache: Mutex<HashMap<CertId, Answer>>,
    /// Answers fetched for embedding, with their DER.
    for_sealing: Mutex<HashMap<CertId, (Vec<u8>, Answer)>>,
    unreachable: Mutex<HashMap<String, i64>>,
    /// Certificates that got no usable answer (an error status, an answer that failed its
    /// checks, unknown), until when they are not asked about again.
    failed_recently: Mutex<HashMap<CertId, i64>>,
    /// Certificates being asked about now, and the signal that one question ended.
    in_flight: Mutex<HashSet<CertId>>,
    landed: Condvar,
    counts: Counts,
    /// Told of every question that got no usable answer (a service logs them).
    observer: Option<Box<Observer>>,
}

/// What [`Online::with_observer`] takes: the responder's address and what went wrong.
pub type Observer = dyn Fn(&str, &OcspError) + Send + Sync;

/// How long a question waits for another one about the same certificate (longer than a
/// transport's timeouts: the other one ends first; if not, the waiting one gives up).
const FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// A question under way about one certificate; its end wakes those waiting for it.
struct Flight<'a> {
    online: &'a Online,
    id: CertId,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flying = self
            .online
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        flying.remove(&self.id);
        self.online.landed.notify_all();
    }
}

/// What an [`Online`] client did since it was made (for metrics).
#[derive(Debug, Default)]
struct Counts {
    asked: AtomicU64,
    failed: AtomicU64,
    remembered: AtomicU64,
}

/// A snapshot of an [`Online`] client's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnlineStats {
    /// Requests sent to a responder.
    pub asked: u64,
    /// Exchanges that gave no usable answer (unreachable, an error status, an answer that
    /// failed its checks), and questions not asked during a back-off.
    pub failed: u64,
    /// Questions answered from the remembered answers.
    pub remembered: u64,
}

impl fmt::Debug for Online {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Online")
            .field("responder", &self.responder)
            .finish()
    }
}

impl Online {
    pub fn new(responder: Responder, transport: Box<dyn OcspTransport>) -> Self {
        Self {
            responder,
            transport,
            cache: Mutex::default(),
            for_sealing: Mutex::default(),
            unreachable: Mutex::default(),
            failed_recently: Mutex::default(),
            in_flight: Mutex::default(),
            landed: Condvar::new(),
            counts: Counts::default(),
            observer: None,
        }
    }

    /// The same client, telling `observer` of each question that got no usable answer
    /// (not of those skipped during a back-off: at most one a certificate, or a responder,
    /// every [`UNREACHABLE_BACKOFF`] seconds).
    pub fn with_observer(
        mut self,
        observer: impl Fn(&str, &OcspError) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    pub fn responder(&self) -> &Responder {
        &self.responder
    }

    pub fn stats(&self) -> OnlineStats {
        OnlineStats {
            asked: self.counts.asked.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
            remembered: self.counts.remembered.load(Ordering::Relaxed),
        }
    }

    /// The address to ask about `cert`.
    pub fn url_for(&self, cert: &X509Ref) -> Result<String, OcspError> {
        match &self.responder {
            Responder::Url(u) => Ok(u.clone()),
            Responder::FromCertificate => cert
                .ocsp_responders()
                .ok()
                .and_then(|list| {
                    list.iter()
                        .map(|u| u.to_string())
                        .find(|u| u.starts_with("http://"))
                })
                .ok_or(OcspError::NoResponder),
        }
    }

    /// The answer remembered about `cert` that still speaks for `at`, if any: no
    /// question is sent.
    pub fn remembered(&self, cert: &X509Ref, issuer: &X509Ref, at: i64) -> Option<Answer> {
        let id = CertId::of(cert, issuer).ok()?;
        self.lock_cache()
            .get(&id)
            .filter(|a| a.status_at(at) != CertStatus::Unknown)
            .cloned()
    }

    /// A verified answer about `cert` (issued by `issuer`), current at `at`: the one
    /// remembered, or a fresh one (`now` is the clock's time, for the back-off).
    pub fn answer(
        &self,
        cert: &X509Ref,
        issuer: &X509Ref,
        at: i64,
        now: i64,
    ) -> Result<Answer, OcspError> {
        let id = CertId::of(cert, issuer)?;
        let url = self.url_for(cert)?;
        self.question(
            &id,
            &url,
            now,
            || self.remembered(cert, issuer, at),
            || {
                let (_, answer) = self.ask(&id, url.clone(), cert, issuer, at)?;
                let mut cache = self.lock_cache();
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(id.clone(), answer.clone());
                Ok(answer)
            },
            |answer| answer.status_at(at) != CertStatus::Unknown,
        )
    }

    /// Asks about `id` at `url` (with `ask`, which also remembers what it got), unless
    /// `known` has the answer already, the responder could not be reached or this
    /// certificate got no usable answer a moment ago (back-offs of
    /// [`UNREACHABLE_BACKOFF`]), or another question about it is under way: then this
    /// one waits for it (up to [`FLIGHT_WAIT`]) and looks again. `usable` tells an answer
    /// that gives a status from one that does not (which backs off like a failure).
    fn question<T>(
        &self,
        id: &CertId,
        url: &str,
        now: i64,
        known: impl Fn() -> Option<T>,
        ask: impl FnOnce() -> Result<T, OcspError>,
        usable: impl Fn(&T) -> bool,
    ) -> Result<T, OcspError> {
        let mut waited = false;
        let _flight = loop {
            if let Some(hit) = known() {
                self.counts.remembered.fetch_add(1, Ordering::Relaxed);
                return Ok(hit);
            }
            if let Some(why) = self.backing_off(id, url, now) {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                return Err(why);
            }
            let mut flying = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !flying.contains(id) {
                flying.insert(id.clone());
                break Flight {
                    online: self,
                    id: id.clone(),
                };
            }
            if waited {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                return Err(OcspError::Transport {
                    url: url.to_string(),
                    reason: "another question about this certificate is still under way".into(),
                });
            }
            let (flying, _) = self
                .landed
                .wait_timeout_while(flying, FLIGHT_WAIT, |f| f.contains(id))
                .unwrap_or_else(|e| e.into_inner());
            drop(flying);
            waited = true;
        };
        let result = ask();
        let lock_failed = || {
            self.failed_recently
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let (Err(e), Some(observer)) = (&result, &self.observer) {
            observer(url, e);
        }
        match &result {
            Err(OcspError::Transport { .. }) => {
                self.lock_unreachable()
                    .insert(url.to_string(), now + UNREACHABLE_BACKOFF);
            }
            Ok(t) if usable(t) => {
                self.lock_unreachable().remove(url);
                lock_failed().remove(id);
            }
            _ => {
                let mut failed = lock_failed();
                if failed.len() >= CACHE_LIMIT {
                    failed.clear();
                }
                failed.insert(id.clone(), now + UNREACHABLE_BACKOFF);
            }
        }
        result
    }

    /// Why not to ask about `id` at `url` now, if so.
    fn backing_off(&self, id: &CertId, url: &str, now: i64) -> Option<OcspError> {
        if self
            .lock_unreachable()
            .get(url)
            .is_some_and(|until| now < *until)
        {
            return Some(OcspError::Transport {
                url: url.to_string(),
                reason: format!(
                    "unreachable a moment ago (not asked again for {UNREACHABLE_BACKOFF} s)"
                ),
            });
        }
        let failed = self
            .failed_recently
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failed
            .get(id)
            .is_some_and(|until| now < *until)
            .then_some(OcspError::Recently)
    }

    /// A BasicOCSPResponse about `cert` to embed when sealing at `at`, with its answer:
    /// the one fetched before while it was produced at most [`SEALING_REUSE`] ago (a
    /// receiver ignores an answer produced more than [`CLOCK_SKEW`] before the signing
    /// time, spec §1.6) and its nextUpdate is more than [`CLOCK_SKEW`] away (the time a
    /// receiver may take), else a fresh one. An answer without nextUpdate, or one current
    /// for 300 s or less (as `etee pki ocsp` gives by default), is fetched anew for every
    /// seal: a revocation then reaches the sender at once.
    pub fn fetch(
        &self,
        cert: &X509Ref,
        issuer: &X509Ref,
        at: i64,
    ) -> Result<(Vec<u8>, Answer), OcspError> {
        let id = CertId::of(cert, issuer)?;
        let url = self.url_for(cert)?;
        let lock = || self.for_sealing.lock().unwrap_or_else(|e| e.into_inner());
        let known = || {
            let kept = lock();
            let (basic, answer) = kept.get(&id)?;
            let young = at - answer.produced_at <= SEALING_REUSE;
            let lasts = answer
                .next_update
                .is_some_and(|next| next - at > CLOCK_SKEW);
            (answer.said == Said::Good
                && answer.status_at(at) == CertStatus::Good
                && young
                && lasts)
                .then(|| (basic.clone(), answer.clone()))
        };
        self.question(
            &id,
            &url,
            at,
            known,
            || {
                let fresh = self.ask(&id, url.clone(), cert, issuer, at)?;
                // A receiver ignores an answer produced more than the skew before the
                // signing time (spec §1.6): an old one (pre-produced, or a responder's
                // clock behind) would be embedded for nothing.
                if at - fresh.1.produced_at > CLOCK_SKEW - SEALING_REUSE {
                    return Err(OcspError::TooOld);
                }
                let mut kept = lock();
                if kept.len() >= CACHE_LIMIT {
                    kept.clear();
                }
                kept.insert(id.clone(), fresh.clone());
                Ok(fresh)
            },
            |(_, answer)| answer.status_at(at) != CertStatus::Unknown,
        )
    }

    /// One exchange: a request with a fresh nonce, the answer checked.
    fn ask(
        &self,
        id: &CertId,
        url: String,
        cert: &X509Ref,
        issuer: &X509Ref,
        at: i64,
    ) -> Result<(Vec<u8>, Answer), OcspError> {
        self.counts.asked.fetch_add(1, Ordering::Relaxed);
        let exchange = || {
            let mut nonce = [0u8; 16];
            openssl::rand::rand_bytes(&mut nonce).map_err(|_| OcspError::Malformed)?;
            let body = self
                .transport
                .post(&url, &request(id, &nonce))
                .map_err(|reason| OcspError::Transport {
                    url: url.clone(),
                    reason,
                })?;
            let basic = basic_of(&body)?;
            let answer = judge(&basic, cert, issuer, at)?;
            // A responder may leave the nonce out (pre-produced answers, RFC 5019); one
            // that echoes another is replaying.
            if answer.nonce.as_deref().is_some_and(|n| n != nonce) {
                return Err(OcspError::NonceMismatch);
            }
            Ok((basic, answer))
        };
        let result = exchange();
        if result.is_err() {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The answers to embed when sealing with `path` (the signer's certificate first,
    /// then its issuers as far as they are known): one answer ([`Online::fetch`]) for each
    /// certificate issued by the next, each of which must say good at `at` (the official
    /// sealer refuses to seal otherwise, spec §1.2).
    pub fn values_for(
        &self,
        path: &[crate::cert::Certificate],
        at: i64,
    ) -> Result<RevocationValues, SealingStatus> {
        let mut values = RevocationValues::default();
        for pair in path.windows(2) {
            let (Some(cert), Some(issuer)) = (pair[0].x509(), pair[1].x509()) else {
                continue;
            };
            let subject = pair[0].subject_string();
            let (basic, answer) = self
                .fetch(cert, issuer, at)
                .map_err(|e| SealingStatus::NoAnswer(subject.clone(), e))?;
            match answer.status_at(at) {
                CertStatus::Good => values.ocsp.push(basic),
                CertStatus::Revoked => return Err(SealingStatus::Revoked(subject)),
                CertStatus::Unknown => return Err(SealingStatus::Unknown(subject)),
            }
        }
        if path.len() < 2 {
            return Err(SealingStatus::NoIssuer(
                path.first().map(|c| c.subject_string()).unwrap_or_default(),
            ));
        }
        Ok(values)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<CertId, Answer>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_unreachable(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner())
    }
}
