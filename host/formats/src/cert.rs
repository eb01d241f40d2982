//! X.509 certificates as the unsealer and the ETK checks see them.
//!
//! Fields are read with our BER parser (lenient like the official library's, which accepts
//! the slightly irregular encodings of old eID and test certificates); signatures, public
//! keys and chain building go through OpenSSL.

use crate::ber::slice::{parse_exact, Seq, Tlv};
use crate::ber::{tag, BerError, BerErrorKind};
use crate::oid;
use openssl::pkey::{PKey, Public};
use openssl::x509::X509;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// Key usage bits as masks of the extension's first octet (Java's `getKeyUsage` order).
pub mod key_usage {
    pub const DIGITAL_SIGNATURE: u8 = 0x80;
    pub const NON_REPUDIATION: u8 = 0x40;
    pub const KEY_ENCIPHERMENT: u8 = 0x20;
    pub const DATA_ENCIPHERMENT: u8 = 0x10;
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate encoding: {0}")]
    Encoding(#[from] BerError),
    #[error("certificate rejected by OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("not a certificate file: neither DER, PEM nor Base64")]
    NotACertificate,
}

/// The public key algorithm of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    Rsa,
    Ec,
    Dsa,
    Other,
}

/// One relative distinguished name component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAttr {
    /// OID content octets of the attribute type.
    pub oid: Vec<u8>,
    pub value: String,
}

/// A parsed certificate; cheap to clone (shared).
#[derive(Clone)]
pub struct Certificate(Arc<CertData>);

struct CertData {
    der: Vec<u8>,
    /// OpenSSL's view, made on first use (chain checks); kept with the shared parse.
    x509: OnceLock<Option<X509>>,
    /// The public key; RSA keys are decoded directly at parse time.
    key: OnceLock<Option<PKey<Public>>>,
    /// The last [`Certificate::is_signed_by`] answer: the key and the verdict. An ETK's
    /// encryption certificate is checked against the same key at every use.
    signed_by: Mutex<Option<(PKey<Public>, bool)>>,
    serial: Vec<u8>,
    issuer_der: Vec<u8>,
    subject_der: Vec<u8>,
    subject: Vec<NameAttr>,
    issuer: Vec<NameAttr>,
    not_before: i64,
    not_after: i64,
    key_usage: Option<u8>,
    is_ca: bool,
    /// extendedKeyUsage present once, critical, naming id-kp-timeStamping alone (RFC 3161
    /// §2.3): what a time-stamping authority's certificate must say.
    timestamping_only: bool,
    ski: Option<Vec<u8>>,
    key_algorithm: KeyAlgorithm,
    key_bits: u32,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject_string())
            .field("serial", &self.serial_decimal())
            .finish()
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.0.der == other.0.der
    }
}
impl Eq for Certificate {}

impl Certificate {
    /// Parses a certificate from its DER (BER tolerated).
    ///
    /// Parses are shared by fingerprint (bounded: the map is cleared past
    /// [`CERT_CACHE_LIMIT`] entries, and certificates over [`CERT_CACHE_MAX_DER`] bytes
    /// are not kept, so that hostile messages cannot fill memory with it): a sender's certificates recur in every message, and
    /// a shared certificate keeps its decoded public key (whose Montgomery context OpenSSL
    /// computes on the first verification only) and OpenSSL's parse for chain checks (a
    /// `d2i_X509` costs ~160 µs on OpenSSL 3.0).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Certificate>>> = OnceLock::new();
        let fp = openssl::sha::sha256(der);
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(c) = cache.lock().ok().and_then(|c| c.get(&fp).cloned()) {
            return Ok(c);
        }
        let cert = Self::parse_der(der)?;
        if der.len() > CERT_CACHE_MAX_DER {
            return Ok(cert);
        }
        if let Ok(mut c) = cache.lock() {
            if c.len() >= CERT_CACHE_LIMIT {
                c.clear();
            }
            c.insert(fp, cert.clone());
        }
        Ok(cert)
    }

    /// The values (the contents of their OCTET STRINGs) of the certificate's extensions
    /// `id` (an OID's content octets, e.g. [`oid::EXT_CRL_DISTRIBUTION_POINTS`]), in order:
    /// at most one in a valid certificate (RFC 5280 §4.2), but a certificate may repeat it.
    pub fn extension_values(&self, id: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
        let top = parse_exact(self.der())?.expect(tag::SEQUENCE)?;
        let tbs = top.seq()?.next(tag::SEQUENCE)?;
        let mut f = tbs.seq()?;
        f.optional(tag::ctx_cons(0))?;
        f.next(tag::INTEGER)?;
        // signature, issuer, validity, subject, subjectPublicKeyInfo
        for _ in 0..5 {
            f.next(tag::SEQUENCE)?;
        }
        Ok(extensions(&mut f)?
            .into_iter()
            .filter(|e| e.id == id)
            .map(|e| e.value.into_owned())
            .collect())
    }

    fn parse_der(der: &[u8]) -> Result<Self, CertError> {
        let top = parse_exact(der)?.expect(tag::SEQUENCE)?;
        let mut cert = top.seq()?;
        let tbs = cert.next(tag::SEQUENCE)?;
        let mut f = tbs.seq()?;
        f.optional(tag::ctx_cons(0))?;
        let serial = f.next(tag::INTEGER)?.uint_bytes()?.to_vec();
        f.next(tag::SEQUENCE)?;
        let issuer = f.next(tag::SEQUENCE)?;
        let mut validity = f.next(tag::SEQUENCE)?.seq()?;
        let not_before = parse_time(&validity.any()?)?;
        let not_after = parse_time(&validity.any()?)?;
        let subject = f.next(tag::SEQUENCE)?;
        let spki = f.next(tag::SEQUENCE)?;
        let mut key_usage = None;
        let mut is_ca = false;
        let mut ski = None;
        let mut ekus = Vec::new();
        for Extension {
            id,
            critical,
            value,
        } in extensions(&mut f)?
        {
            let inner = parse_exact(&value)?;
            match id {
                x if x == oid::EXT_EXTENDED_KEY_USAGE => {
                    // Read only for the time-stamping rule: a malformed list names no
                    // purpose (the certificate is not refused for it, as before).
                    let purposes = inner
                        .expect(tag::SEQUENCE)
                        .ok()
                        .and_then(|list| {
                            list.children()
                                .map(|p| Ok(p?.expect(tag::OID)?.content.to_vec()))
                                .collect::<Result<Vec<_>, BerError>>()
                                .ok()
                        })
                        .unwrap_or_default();
                    ekus.push((critical, purposes));
                }
                x if x == oid::EXT_KEY_USAGE => {
                    let bits = inner.expect(tag::BIT_STRING)?.content;
                    key_usage = Some(bits.get(1).copied().unwrap_or(0));
                }
                x if x == oid::EXT_BASIC_CONSTRAINTS => {
                    let mut bc = inner.seq()?;
                    if let Some(b) = bc.optional(tag::BOOLEAN)? {
                        is_ca = b.content.first().is_some_and(|&v| v != 0);
                    }
                }
                x if x == oid::EXT_SUBJECT_KEY_ID => {
                    ski = Some(inner.expect(tag::OCTET_STRING)?.content.to_vec());
                }
                _ => {}
            }
        }
        let (key_algorithm, fast_key) = read_spki(&spki)?;
        let key = OnceLock::new();
        let mut key_bits = 0;
        if let Some(k) = fast_key {
            key_bits = k.bits();
            let _ = key.set(Some(k));
        }
        let cert = CertData {
            der: der.to_vec(),
            x509: OnceLock::new(),
            key,
            signed_by: Mutex::new(None),
            serial,
            issuer_der: issuer.raw.to_vec(),
            subject_der: subject.raw.to_vec(),
            subject: parse_name(&subject)?,
            issuer: parse_name(&issuer)?,
            not_before,
            not_after,
            key_usage,
            is_ca,
            timestamping_only: matches!(ekus.as_slice(),
                [(true, purposes)] if purposes.as_slice() == [oid::KP_TIME_STAMPING.to_vec()]),
            ski,
            key_algorithm,
            key_bits,
        };
        let mut cert = Self(Arc::new(cert));
        if cert.0.key.get().is_none() {
            // Other key types go through OpenSSL's decoders, which must at least accept
            // the certificate; a key they cannot decode (GOST) counts as zero bits.
            cert.x509()
                .ok_or_else(|| CertError::OpenSsl(openssl::error::ErrorStack::get()))?;
            let bits = cert.public_key().map(|k| k.bits()).unwrap_or(0);
            if let Some(data) = Arc::get_mut(&mut cert.0) {
                data.key_bits = bits;
            }
        }
        Ok(cert)
    }

    /// Reads a certificate file's bytes: DER, PEM, or bare Base64 (as trust stores and
    /// eHealth downloads come).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        use base64::Engine;
        if bytes.first() == Some(&tag::SEQUENCE) {
            return Self::from_der(bytes);
        }
        if bytes.starts_with(b"-----BEGIN") {
            let der = X509::from_pem(bytes)
                .and_then(|x| x.to_der())
                .map_err(|_| CertError::NotACertificate)?;
            return Self::from_der(&der);
        }
        let text: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| CertError::NotACertificate)?;
        Self::from_der(&der)
    }

    pub fn der(&self) -> &[u8] {
        &self.0.der
    }
    /// OpenSSL's parsed certificate (for chain building), if OpenSSL accepts it.
    pub fn x509(&self) -> Option<&X509> {
        self.0
            .x509
            .get_or_init(|| X509::from_der(&self.0.der).ok())
            .as_ref()
    }
    /// The serial number's magnitude, big-endian.
    pub fn serial(&self) -> &[u8] {
        &self.0.serial
    }
    /// The serial number in decimal: the eHealth keystore alias of an ETK key (an absurdly
    /// long one in hex, see [`decimal`]).
    pub fn serial_decimal(&self) -> String {
        decimal(&self.0.serial)
    }
    /// The DER of the issuer Name.
    pub fn issuer_der(&self) -> &[u8] {
        &self.0.issuer_der
    }
    /// The DER of the subject Name.
    pub fn subject_der(&self) -> &[u8] {
        &self.0.subject_der
    }
    /// Subject attributes in encoding order.
    pub fn subject(&self) -> &[NameAttr] {
        &self.0.subject
    }
    pub fn issuer(&self) -> &[NameAttr] {
        &self.0.issuer
    }
    /// Validity bounds, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.0.not_before
    }
    pub fn not_after(&self) -> i64 {
        self.0.not_after
    }
    /// First octet of the keyUsage bits, if the extension is present.
    pub fn key_usage(&self) -> Option<u8> {
        self.0.key_usage
    }
    /// Whether keyUsage is absent or has any of the bits of `mask`.
    pub fn allows_any(&self, mask: u8) -> bool {
        self.0.key_usage.is_none_or(|ku| ku & mask != 0)
    }
    /// Whether keyUsage is absent or has all the bits of `mask`.
    pub fn allows_all(&self, mask: u8) -> bool {
        self.0.key_usage.is_none_or(|ku| ku & mask == mask)
    }
    /// Whether the certificate may sign time-stamp tokens: one critical extendedKeyUsage
    /// with id-kp-timeStamping as its only purpose (RFC 3161 §2.3, as BouncyCastle's
    /// token validation demands).
    pub fn is_timestamping_only(&self) -> bool {
        self.0.timestamping_only
    }
    /// basicConstraints cA.
    pub fn is_ca(&self) -> bool {
        self.0.is_ca
    }
    pub fn subject_key_identifier(&self) -> Option<&[u8]> {
        self.0.ski.as_deref()
    }
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.0.key_algorithm
    }
    /// Modulus size (RSA) or field size (EC) in bits.
    pub fn key_bits(&self) -> u32 {
        self.0.key_bits
    }
    pub fn public_key(&self) -> Result<PKey<Public>, openssl::error::ErrorStack> {
        self.0
            .key
            .get_or_init(|| self.x509().and_then(|x| x.public_key().ok()))
            .clone()
            .ok_or_else(openssl::error::ErrorStack::get)
    }
    /// Whether `self` was signed by the key of `issuer` (the answer for the last key asked
    /// about is remembered: a signature check is an RSA operation).
    pub fn is_signed_by(&self, key: &PKey<Public>) -> bool {
        // The key is compared with `EVP_PKEY_eq`: encoding it to DER to compare costs
        // OpenSSL 3.0's provider encoders more than a lookup should.
        if let Ok(memo) = self.0.signed_by.lock() {
            if let Some((k, verdict)) = memo.as_ref() {
                if k.public_eq(key) {
                    return *verdict;
                }
            }
        }
        let verdict = self.x509().is_some_and(|x| x.verify(key).unwrap_or(false));
        if let Ok(mut memo) = self.0.signed_by.lock() {
            *memo = Some((key.clone(), verdict));
        }
        verdict
    }
    /// Whether the certificate is valid at `t` (unix seconds).
    pub fn valid_at(&self, t: i64) -> Validity {
        if t < self.0.not_before {
            Validity::NotYetValid
        } else if t > self.0.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }
    /// The subject in the customary `CN=…, OU=…, C=…` order (last RDN first).
    pub fn subject_string(&self) -> String {
        name_string(&self.0.subject)
    }
    pub fn issuer_string(&self) -> String {
        name_string(&self.0.issuer)
    }
    /// The first value of a subject attribute.
    pub fn subject_attr(&self, oid: &[u8]) -> Option<&str> {
        self.0
            .subject
            .iter()
            .find(|a| a.oid == oid)
            .map(|a| a.value.as_str())
    }
}

/// The key algorithm of a SubjectPublicKeyInfo, and the key itself when it is RSA.
///
/// RSA keys are decoded directly: OpenSSL 3.0 decodes a certificate's key through its
/// provider decoders at ~160 µs a certificate, more than the rest of a small unseal.
/// An extension: its OID's content octets and its value (the OCTET STRING's contents).
/// One extension: its OID's content octets, its critical flag, its value's octets.
struct Extension<'a> {
    id: &'a [u8],
    critical: bool,
    value: Cow<'a, [u8]>,
}

/// The extensions of a TBSCertificate read up to its subjectPublicKeyInfo (the unique ids
/// are skipped), in order.
fn extensions<'a>(f: &mut Seq<'a>) -> Result<Vec<Extension<'a>>, BerError> {
    f.optional(tag::ctx_prim(1))?;
    f.optional(tag::ctx_prim(2))?;
    let mut out = Vec::new();
    if let Some(exts) = f.optional(tag::ctx_cons(3))? {
        let list = exts.seq()?.next(tag::SEQUENCE)?;
        for ext in list.children() {
            let mut e = ext?.seq()?;
            let id = e.next(tag::OID)?.content;
            let critical = e
                .optional(tag::BOOLEAN)?
                .is_some_and(|b| b.content.first().is_some_and(|&v| v != 0));
            let value = e.next(tag::OCTET_STRING)?.octets()?;
            out.push(Extension {
                id,
                critical,
                value,
            });
        }
    }
    Ok(out)
}

fn read_spki(spki: &Tlv<'_>) -> Result<(KeyAlgorithm, Option<PKey<Public>>), BerError> {
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
    let mut s = spki.seq()?;
    let alg = s.next(tag::SEQUENCE)?.seq()?.next(tag::OID)?.content;
    let bits = s.next(tag::BIT_STRING)?;
    Ok(match alg {
        a if a == oid::RSA_ENCRYPTION => {
            let key = bits
                .content
                .get(1..)
                .and_then(|der| openssl::rsa::Rsa::public_key_from_der_pkcs1(der).ok())
                .and_then(|rsa| PKey::from_rsa(rsa).ok());
            (KeyAlgorithm::Rsa, key)
        }
        a if a == oid::RSASSA_PSS => (KeyAlgorithm::Rsa, None),
        EC => (KeyAlgorithm::Ec, None),
        DSA => (KeyAlgorithm::Dsa, None),
        _ => (KeyAlgorithm::Other, None),
    })
}

/// Entries kept by the cache of [`Certificate::from_der`].
pub const CERT_CACHE_LIMIT: usize = 1024;

/// The largest certificate the cache keeps (real ones are 1–2 KiB): the cache then holds
/// at most 16 MiB of DER, with their parsed names, whatever messages come in.
pub const CERT_CACHE_MAX_DER: usize = 16 * 1024;

/// Where a time falls in a certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

fn name_string(attrs: &[NameAttr]) -> String {
    attrs
        .iter()
        .rev()
        .map(|a| {
            let key = match a.oid.as_slice() {
                x if x == oid::AT_COMMON_NAME => "CN".to_string(),
                x if x == oid::AT_SERIAL_NUMBER => "SERIALNUMBER".to_string(),
                x if x == oid::AT_COUNTRY => "C".to_string(),
                x if x == oid::AT_ORGANIZATION => "O".to_string(),
                x if x == oid::AT_ORGANIZATIONAL_UNIT => "OU".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x04] => "SURNAME".to_string(),
                [0x55, 0x04, 0x2a] => "GIVENNAME".to_string(),
                other => crate::ber::slice::oid_to_string(other),
            };
            let v = &a.value;
            if v.contains([',', '+', '"', '\\', '<', '>', ';', '=']) {
                format!("{key}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                format!("{key}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The most attributes a certificate's name may have: far more than any real one's (the
/// eHealth ones have about ten), few enough that a name cannot be made of a great many
/// tiny attributes, each costing far more memory parsed than in the certificate.
const MAX_NAME_ATTRIBUTES: usize = 1024;

fn parse_name(name: &Tlv<'_>) -> Result<Vec<NameAttr>, BerError> {
    let mut out = Vec::new();
    for rdn in name.children() {
        for atv in rdn?.expect(tag::SET)?.children() {
            let atv = atv?;
            // Before it is copied: a name of a great many tiny attributes is no one's.
            if out.len() == MAX_NAME_ATTRIBUTES {
                return Err(atv.err(BerErrorKind::BadValue(
                    "more attributes in a name than any certificate's",
                )));
            }
            let mut s = atv.seq()?;
            let id = s.next(tag::OID)?;
            let value = s.any()?;
            out.push(NameAttr {
                oid: id.content.to_vec(),
                value: decode_string(&value),
            });
        }
    }
    Ok(out)
}

/// Whether two names are equal as OpenSSL compares them (its canonical form), not byte
/// for byte: how issuers are matched to subjects.
pub fn same_name(a: &openssl::x509::X509NameRef, b: &openssl::x509::X509NameRef) -> bool {
    a.try_cmp(b).is_ok_and(|o| o.is_eq())
}

/// When a client's verified TLS chain (leaf first, as presented) stops being valid, in
/// Unix seconds: the earliest notAfter of the leaf and of the other certificates still
/// valid at the handshake time `now`. Those already expired then cannot be on the path
/// the verifier accepted (clients may send extra ones, e.g. an old cross-signed root);
/// certificates that cannot be read are left out. `None` when none can be read.
pub fn chain_valid_until(chain: &[impl AsRef<[u8]>], now: i64) -> Option<i64> {
    let end = |der: &[u8]| Certificate::from_der(der).ok().map(|c| c.not_after());
    let leaf = chain.first().and_then(|c| end(c.as_ref()));
    let others = chain
        .iter()
        .skip(1)
        .filter_map(|c| end(c.as_ref()))
        .filter(|&t| t >= now)
        .min();
    match (leaf, others) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Decodes the directory string types; unknown types as lossy UTF-8.
pub fn decode_string(v: &Tlv<'_>) -> String {
    match v.tag {
        tag::BMP_STRING => {
            let units: Vec<u16> = v
                .content
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        tag::UNIVERSAL_STRING => v
            .content
            .chunks(4)
            .filter_map(|c| {
                (c.len() == 4)
                    .then(|| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .flatten()
            })
            .collect(),
        // T.61 in practice carries Latin-1.
        tag::T61_STRING => v.content.iter().map(|&b| char::from(b)).collect(),
        _ => String::from_utf8_lossy(v.content).into_owned(),
    }
}

/// Parses UTCTime or GeneralizedTime into unix seconds.
pub fn parse_time(t: &Tlv<'_>) -> Result<i64, BerError> {
    let bad = || t.err(BerErrorKind::BadValue("time"));
    let s = std::str::from_utf8(t.content).map_err(|_| bad())?;
    // Only ASCII digits, taken with `get`: a range that splits a multi-byte character
    // (hostile input) is an error, not a panic.
    let digits_in = |s: &str, r: std::ops::Range<usize>| -> Result<i32, BerError> {
        s.get(r)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)
    };
    let digits = |r: std::ops::Range<usize>| digits_in(s, r);
    let (year, rest) = match t.tag {
        tag::UTC_TIME => {
            let yy = digits(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        tag::GENERALIZED_TIME => (digits(0..4)?, 4),
        _ => return Err(bad()),
    };
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let minute = digits(rest + 6..rest + 8)?;
    // Seconds are optional in UTCTime's BER form.
    let (second, tail) = match digits(rest + 8..rest + 10) {
        Ok(sec) => (sec, rest + 10),
        Err(_) => (0, rest + 8),
    };
    let mut tail = &s[tail.min(s.len())..];
    if let Some(frac) = tail.strip_prefix('.') {
        tail = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset_secs: i64 = match tail {
        "Z" | "" => 0,
        tz if tz.len() == 5 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let v = i64::from(digits_in(tz, 1..3)?) * 3600 + i64::from(digits_in(tz, 3..5)?) * 60;
            if tz.starts_with('+') {
                v
            } else {
                -v
            }
        }
        _ => return Err(bad()),
    };
    let month =
        time::Month::try_from(u8::try_from(month).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(day).map_err(|_| bad())?)
        .map_err(|_| bad())?;
    let tod = time::Time::from_hms(
        u8::try_from(hour).map_err(|_| bad())?,
        u8::try_from(minute).map_err(|_| bad())?,
        u8::try_from(second).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    Ok(time::PrimitiveDateTime::new(date, tod)
        .assume_utc()
        .unix_timestamp()
        - offset_secs)
}

/// The longest magnitude, in octets without its leading zeros, that [`decimal`] writes in
/// decimal. RFC 5280 allows serial numbers of 20 octets and real certificates sometimes
/// have a few more, but a serial's length is not limited when parsing (lenient, like
/// the official library), and the conversion to decimal takes time quadratic in it: a
/// 64 KiB serial took 34 s.
pub const MAX_DECIMAL_OCTETS: usize = 32;

/// Big-endian magnitude to decimal (serial numbers can exceed 128 bits), or, past
/// [`MAX_DECIMAL_OCTETS`] significant octets, `0x` and its significant octets in lowercase
/// hex: a form a decimal number never has, and linear to write.
pub fn decimal(magnitude: &[u8]) -> String {
    let significant = magnitude
        .iter()
        .position(|&b| b != 0)
        .map_or(&[][..], |first| &magnitude[first..]);
    if significant.len() > MAX_DECIMAL_OCTETS {
        return format!("0x{}", hex::encode(significant));
    }
    let mut digits: Vec<u8> = vec![0];
    for &byte in significant {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            let v = u32::from(*d) * 256 + carry;
            *d = (v % 10) as u8;
            carry = v / 10;
        }
        while carry > 0 {
            digits.push((carry % 10) as u8);
            carry /= 10;
        }
    }
    while digits.len() > 1 && *digits.last().unwrap_or(&1) == 0 {
        digits.pop();
    }
    digits.iter().rev().map(|d| char::from(b'0' + d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_parsed_twice_is_shared_with_its_decoded_key() {
        let pki = etee_testpki::TestPki::generate("cert-cache").unwrap();
        let der = pki.root.cert.to_der().unwrap();
        let a = Certificate::from_der(&der).unwrap();
        let b = Certificate::from_der(&der).unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "the second parse was not shared");
        let key = a.public_key().unwrap();
        assert!(key.public_eq(&b.public_key().unwrap()));
        // Other bytes, another certificate; bad bytes are still refused.
        let other = etee_testpki::TestPki::generate("cert-cache-2").unwrap();
        let c = Certificate::from_der(&other.root.cert.to_der().unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&a.0, &c.0) && a != c);
        assert!(Certificate::from_der(&der[..der.len() - 1]).is_err());
    }

    #[test]
    fn signature_checks_are_remembered_per_key_and_stay_right() {
        let pki = etee_testpki::TestPki::generate("signed-by").unwrap();
        let other = etee_testpki::TestPki::generate("signed-by-2").unwrap();
        let leaf = pki
            .institution(&etee_testpki::InstitutionSpec::new(
                "NIHII", "12345678", "T",
            ))
            .unwrap();
        let cert = Certificate::from_der(&leaf.auth.cert.to_der().unwrap()).unwrap();
        let key_of = |x: &openssl::x509::X509| x.public_key().unwrap();
        let (issuer, stranger) = (key_of(&pki.root.cert), key_of(&other.root.cert));
        for _ in 0..2 {
            assert!(cert.is_signed_by(&issuer));
            assert!(cert.is_signed_by(&issuer));
            assert!(!cert.is_signed_by(&stranger));
            assert!(!cert.is_signed_by(&stranger));
        }
    }

    #[test]
    fn decimal_serials() {
        assert_eq!(decimal(&[0x31, 0x32, 0x33, 0x31]), "825373489");
        assert_eq!(decimal(&[]), "0");
        assert_eq!(decimal(&[0x00, 0x01, 0x00]), "256");
        assert_eq!(
            decimal(&hex::decode("af2088ebe8f95c3f8e0e8e1e6c2b3140").unwrap()),
            u128::from_str_radix("af2088ebe8f95c3f8e0e8e1e6c2b3140", 16)
                .unwrap()
                .to_string()
        );
        // Up to MAX_DECIMAL_OCTETS significant octets in decimal, leading zeros aside;
        // more in hex.
        let mut most = vec![0u8; 3];
        most.extend([0xff; MAX_DECIMAL_OCTETS]);
        assert_eq!(
            decimal(&most),
            // 2^256 - 1
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
        let mut more = vec![0u8; 2];
        more.extend([0xab; MAX_DECIMAL_OCTETS + 1]);
        assert_eq!(
            decimal(&more),
            format!("0x{}", "ab".repeat(MAX_DECIMAL_OCTETS + 1))
        );
    }

    #[test]
    fn a_huge_serial_is_written_in_hex() {
        use openssl::{ec, nid::Nid, pkey::PKey};
        // 16 KiB: RFC 5280 allows 20 octets, a hostile certificate any number.
        let mut serial = vec![0x5a; 16 * 1024];
        serial[0] = 0x12;
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let name = etee_testpki::build_name(&[("CN", "huge serial")]).unwrap();
        let x = etee_testpki::self_signed(&name, &key, Some(&serial)).unwrap();
        let cert = Certificate::from_der(&x.to_der().unwrap()).unwrap();
        assert_eq!(cert.serial(), serial);
        let hex = format!("0x{}", hex::encode(&serial));
        assert_eq!(cert.serial_decimal(), hex);
        assert!(format!("{cert:?}").contains(&hex));
    }

    #[test]
    fn only_certificates_of_a_sane_size_are_cached() {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let make = |ous: usize| {
            let mut name = x509::X509NameBuilder::new().unwrap();
            name.append_entry_by_text("CN", "cache").unwrap();
            for i in 0..ous {
                name.append_entry_by_text("OU", &format!("organisational unit {i:06}"))
                    .unwrap();
            }
            let name = name.build();
            let mut b = x509::X509Builder::new().unwrap();
            b.set_subject_name(&name).unwrap();
            b.set_issuer_name(&name).unwrap();
            b.set_pubkey(&key).unwrap();
            b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
                .unwrap();
            b.sign(&key, MessageDigest::sha256()).unwrap();
            b.build().to_der().unwrap()
        };
        let (small, large) = (make(1), make(1000));
        assert!(small.len() < CERT_CACHE_MAX_DER && large.len() > CERT_CACHE_MAX_DER);
        let same = |der: &[u8]| {
            let (a, b) = (
                Certificate::from_der(der).unwrap(),
                Certificate::from_der(der).unwrap(),
            );
            assert_eq!(a, b);
            Arc::ptr_eq(&a.0, &b.0)
        };
        assert!(same(&small), "a usual certificate is parsed once");
        assert!(
            !same(&large),
            "an oversized one is parsed each time, not kept"
        );
        // A name of more attributes than any real one's is refused (CN and the OUs).
        assert!(Certificate::from_der(&make(MAX_NAME_ATTRIBUTES - 1)).is_ok());
        let e = Certificate::from_der(&make(MAX_NAME_ATTRIBUTES)).unwrap_err();
        assert!(e.to_string().contains("more attributes in a name"), "{e}");
    }

    #[test]
    fn times() {
        let utc = crate::ber::slice::parse_exact(b"\x17\x0d261123124946Z").unwrap();
        assert_eq!(parse_time(&utc).unwrap(), 1_795_438_186);
        let gen = crate::ber::slice::parse_exact(b"\x18\x0f20261123124946Z").unwrap();
        assert_eq!(parse_time(&gen).unwrap(), 1_795_438_186);
        let bad = crate::ber::slice::parse_exact(b"\x17\x0d261323124946Z").unwrap();
        assert!(parse_time(&bad).is_err());
        // Offsets: digits only; a multi-byte character inside the zone is refused, not a
        // panic on a char boundary (found by review: reachable from any signingTime).
        let east = crate::ber::slice::parse_exact(b"\x17\x0f2611231249+0130").unwrap();
        assert_eq!(parse_time(&east).unwrap(), 1_795_438_140 - 5400);
        for zone in [&b"+0\xc3\xa90"[..], b"+-130", b"+01+0", b"-0a30"] {
            let mut der = vec![0x17, 10 + zone.len() as u8];
            der.extend_from_slice(b"2611231249");
            der.extend_from_slice(zone);
            let t = crate::ber::slice::parse_exact(&der).unwrap();
            assert!(parse_time(&t).is_err(), "{zone:?}");
        }
    }
}
