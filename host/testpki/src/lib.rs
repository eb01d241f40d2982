//! A self-contained test PKI for etee.
//!
//! It produces, entirely in memory and with the system OpenSSL, everything the
//! eHealth end-to-end encryption formats need in tests and benchmarks:
//!
//! * a self-signed root CA and an "ETK registration authority" (RA) issued by it
//!   ([`TestPki::generate`]);
//! * for an institution, an AUTHENTICATION certificate issued by the root, an
//!   encryption certificate signed by the authentication key, and the ETK: a CMS
//!   SignedData wrapping the encryption certificate, signed by the RA
//!   ([`TestPki::institution`]).
//!
//! Every knob needed for negative tests (weak keys, wrong key usages, expired
//! validity, mismatching DNs) lives in [`InstitutionSpec`].
//!
//! Cost: every certificate gets a fresh RSA key. An RSA-2048 key takes roughly
//! 50–100 ms to generate (with a long tail), so a [`TestPki`] costs two keys and
//! each [`Institution`] two more. Tests should share a `TestPki` (for example
//! through a `std::sync::OnceLock`) rather than build one per test.

use openssl::asn1::{Asn1Integer, Asn1IntegerRef, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, CrlNumber, ExtendedKeyUsage, KeyUsage,
    SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{
    X509Builder, X509Crl, X509CrlBuilder, X509Extension, X509Name, X509NameRef, X509Ref,
    X509RevokedBuilder, X509,
};

pub mod ocsp;
pub mod peak_alloc;
pub mod skip;
pub mod tsa;

/// A path given to a test (an environment variable's value): relative ones are taken from
/// the project root, where the commands of the docs run, rather than from the crate's
/// folder, where cargo runs tests.
pub fn from_project_root(p: std::ffi::OsString) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(p);
    if p.is_relative() {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(p)
    } else {
        p
    }
}

/// A tiny deterministic generator (xorshift64) for the seeded robustness runners: the same
/// seed gives the same inputs, so a finding can be replayed. Seed it with a non-zero value.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One of `v` (not empty).
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The bounded fuzz runs' settings, from the environment: (`ETEE_FUZZ_SECS`, default 30
/// seconds; `ETEE_FUZZ_SEED`, default taken from the clock: print it, so that the run can
/// be repeated).
pub fn fuzz_run_settings() -> (u64, u64) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let secs = env("ETEE_FUZZ_SECS").unwrap_or(30);
    let seed = env("ETEE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    (secs, seed)
}

/// Where a `write_fuzz_corpus` test writes the cargo-fuzz seeds: `ETEE_FUZZ_CORPUS` (taken
/// from the project root when relative); `None`, having said how to set it, when unset.
pub fn fuzz_corpus_dir() -> Option<std::path::PathBuf> {
    let Some(dir) = std::env::var_os("ETEE_FUZZ_CORPUS") else {
        println!("set ETEE_FUZZ_CORPUS to the corpus directory (e.g. fuzz/corpus)");
        return None;
    };
    Some(from_project_root(dir))
}

/// The message of a panic's payload (a `&str` or a `String`; empty for any other), for the
/// robustness runners that sort panics by site and message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// An HTTP route's path with its parameters' names blanked (`/v1/kgss/keys/{id}` →
/// `/v1/kgss/keys/{}`): how the tests compare a router's routes with an OpenAPI file's.
pub fn route_shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

pub use ocsp::{ocsp_successful, ocsp_unsuccessful, OcspAnswer, OcspStatus};

/// Errors from building the test PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// OpenSSL refused an operation (key generation, signing, encoding, ...).
    #[error("openssl: {0}")]
    Openssl(#[from] ErrorStack),
    /// The requested specification cannot be turned into a certificate.
    #[error("invalid test PKI specification: {0}")]
    InvalidSpec(String),
    /// The `openssl` command (used for time-stamp tokens) failed or could not run.
    #[error("openssl command: {0}")]
    Command(String),
}

/// A certificate together with its private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: X509,
    /// The private key matching the certificate's public key.
    pub key: PKey<Private>,
}

/// A validity period, in Unix seconds (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity (notBefore), Unix seconds.
    pub not_before: i64,
    /// End of validity (notAfter), Unix seconds.
    pub not_after: i64,
}

const DAY: i64 = 24 * 60 * 60;

impl Validity {
    /// A period from `back` days before now until `ahead` days after now.
    ///
    /// Negative values move the bound the other way, so
    /// `days_around_now(30, -1)` is a certificate that expired yesterday and
    /// `days_around_now(-1, 30)` one that is not yet valid.
    pub fn days_around_now(back: i64, ahead: i64) -> Self {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Validity {
            not_before: now - back * DAY,
            not_after: now + ahead * DAY,
        }
    }
}

impl Default for Validity {
    /// One day back (tolerates clock skew between machines), two years ahead.
    fn default() -> Self {
        Validity::days_around_now(1, 2 * 365)
    }
}

/// The bits of a keyUsage extension to put in a certificate.
///
/// If no usage bit is set, the certificate gets no keyUsage extension at all
/// (an empty keyUsage is not valid DER-wise, and "no extension" is the more
/// useful negative case).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyUsageSpec {
    /// Mark the extension critical.
    pub critical: bool,
    /// digitalSignature.
    pub digital_signature: bool,
    /// nonRepudiation (contentCommitment).
    pub non_repudiation: bool,
    /// keyEncipherment.
    pub key_encipherment: bool,
    /// dataEncipherment.
    pub data_encipherment: bool,
    /// keyAgreement.
    pub key_agreement: bool,
    /// keyCertSign.
    pub key_cert_sign: bool,
    /// cRLSign.
    pub crl_sign: bool,
}

impl KeyUsageSpec {
    /// No keyUsage extension.
    pub fn none() -> Self {
        Self::default()
    }

    /// The authentication certificate profile: critical digitalSignature.
    pub fn authentication() -> Self {
        KeyUsageSpec {
            critical: true,
            digital_signature: true,
            ..Self::default()
        }
    }

    /// The ETK encryption certificate profile: critical keyEncipherment and
    /// dataEncipherment.
    pub fn encryption() -> Self {
        KeyUsageSpec {
            critical: true,
            key_encipherment: true,
            data_encipherment: true,
            ..Self::default()
        }
    }

    /// True when no usage bit is set (the extension is then omitted).
    pub fn is_empty(&self) -> bool {
        !(self.digital_signature
            || self.non_repudiation
            || self.key_encipherment
            || self.data_encipherment
            || self.key_agreement
            || self.key_cert_sign
            || self.crl_sign)
    }

    /// Appends the extension to `builder`, unless no bit is set.
    fn apply(&self, builder: &mut X509Builder) -> Result<(), Error> {
        if self.is_empty() {
            return Ok(());
        }
        let mut ku = KeyUsage::new();
        if self.critical {
            ku.critical();
        }
        if self.digital_signature {
            ku.digital_signature();
        }
        if self.non_repudiation {
            ku.non_repudiation();
        }
        if self.key_encipherment {
            ku.key_encipherment();
        }
        if self.data_encipherment {
            ku.data_encipherment();
        }
        if self.key_agreement {
            ku.key_agreement();
        }
        if self.key_cert_sign {
            ku.key_cert_sign();
        }
        if self.crl_sign {
            ku.crl_sign();
        }
        builder.append_extension(ku.build()?)?;
        Ok(())
    }
}

/// What to issue for one institution (certificate holder).
///
/// [`InstitutionSpec::new`] gives the regular eHealth profile; the `with_*`
/// setters bend it for negative tests.
#[derive(Clone, Debug)]
pub struct InstitutionSpec {
    /// Identifier type, e.g. `NIHII-PHARMACY`, `NIHII-HOSPITAL`, `SSIN`, `CBE`, `EHP`.
    pub id_type: String,
    /// Identifier value (digits).
    pub id_value: String,
    /// Holder name, used as an OU.
    pub name: String,
    /// Optional application identifier (adds an OU and a suffix to the CN).
    pub application_id: Option<String>,
    /// RSA modulus size of the authentication key (default 2048).
    pub auth_key_bits: u32,
    /// RSA modulus size of the ETK encryption key (default 2048).
    pub etk_key_bits: u32,
    /// Validity of the authentication certificate.
    pub auth_validity: Validity,
    /// Validity of the encryption certificate.
    pub etk_validity: Validity,
    /// keyUsage of the authentication certificate.
    pub auth_key_usage: KeyUsageSpec,
    /// keyUsage of the encryption certificate.
    pub etk_key_usage: KeyUsageSpec,
    /// When set, the encryption certificate's subject and issuer use this RDN
    /// list (field, value; first to last as in the DER) instead of the
    /// authentication certificate's subject. Fields are OpenSSL short or long
    /// names (`C`, `O`, `OU`, `CN`, ...).
    pub etk_subject_override: Option<Vec<(String, String)>>,
    /// When set, the authentication certificate names this OCSP responder in its
    /// authorityInfoAccess (as eHealth's certificates name theirs).
    pub ocsp_url: Option<String>,
    /// When set, the authentication certificate names this address (an `http://` URL)
    /// as the distribution point of its issuer's revocation list (crlDistributionPoints,
    /// one point with this URI as its full name), for tests of the lists' discovery.
    pub crl_url: Option<String>,
}

impl InstitutionSpec {
    /// The regular profile: RSA-2048 keys, validity from one day back to two
    /// years ahead, the standard key usages, no application id.
    pub fn new(id_type: &str, id_value: &str, name: &str) -> Self {
        InstitutionSpec {
            id_type: id_type.to_owned(),
            id_value: id_value.to_owned(),
            name: name.to_owned(),
            application_id: None,
            auth_key_bits: 2048,
            etk_key_bits: 2048,
            auth_validity: Validity::default(),
            etk_validity: Validity::default(),
            auth_key_usage: KeyUsageSpec::authentication(),
            etk_key_usage: KeyUsageSpec::encryption(),
            etk_subject_override: None,
            ocsp_url: None,
            crl_url: None,
        }
    }

    /// Sets the application identifier.
    pub fn with_application_id(mut self, application_id: &str) -> Self {
        self.application_id = Some(application_id.to_owned());
        self
    }

    /// Sets the authentication key size (e.g. 1024 for weak-key tests).
    pub fn with_auth_key_bits(mut self, bits: u32) -> Self {
        self.auth_key_bits = bits;
        self
    }

    /// Sets the encryption key size.
    pub fn with_etk_key_bits(mut self, bits: u32) -> Self {
        self.etk_key_bits = bits;
        self
    }

    /// Sets the authentication certificate's validity.
    pub fn with_auth_validity(mut self, validity: Validity) -> Self {
        self.auth_validity = validity;
        self
    }

    /// Sets the encryption certificate's validity.
    pub fn with_etk_validity(mut self, validity: Validity) -> Self {
        self.etk_validity = validity;
        self
    }

    /// Sets the authentication certificate's keyUsage.
    pub fn with_auth_key_usage(mut self, usage: KeyUsageSpec) -> Self {
        self.auth_key_usage = usage;
        self
    }

    /// Sets the encryption certificate's keyUsage.
    pub fn with_etk_key_usage(mut self, usage: KeyUsageSpec) -> Self {
        self.etk_key_usage = usage;
        self
    }

    /// Names an OCSP responder in the authentication certificate (see
    /// [`InstitutionSpec::ocsp_url`]).
    pub fn with_ocsp_url(mut self, url: &str) -> Self {
        self.ocsp_url = Some(url.to_string());
        self
    }

    /// Names a revocation list's distribution point in the authentication certificate
    /// (see [`InstitutionSpec::crl_url`]).
    pub fn with_crl_url(mut self, url: &str) -> Self {
        self.crl_url = Some(url.to_string());
        self
    }

    /// Gives the encryption certificate its own subject/issuer RDN list
    /// (see [`InstitutionSpec::etk_subject_override`]).
    pub fn with_etk_subject(mut self, rdns: &[(&str, &str)]) -> Self {
        self.etk_subject_override = Some(
            rdns.iter()
                .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self
    }

    /// The holder's DN as RDNs, first to last as in the DER (see [`ehealth_dn`]).
    pub fn subject_rdns(&self) -> Vec<(String, String)> {
        ehealth_dn(
            &self.id_type,
            &self.id_value,
            &self.name,
            self.application_id.as_deref(),
        )
    }
}

/// The eHealth DN profile as (field, value) RDNs, first to last as in the DER:
/// `C=BE, O=Federal Government, OU=eHealth-platform Belgium, OU=<name>,
/// OU=<TYPE>=<value>, [OU=<application id>], CN=<TYPE>=<value>[, <APPID>]`.
pub fn ehealth_dn(
    id_type: &str,
    id_value: &str,
    name: &str,
    application_id: Option<&str>,
) -> Vec<(String, String)> {
    let id = format!("{id_type}={id_value}");
    let mut rdns = vec![
        ("C".to_owned(), "BE".to_owned()),
        ("O".to_owned(), "Federal Government".to_owned()),
        ("OU".to_owned(), "eHealth-platform Belgium".to_owned()),
        ("OU".to_owned(), name.to_owned()),
        ("OU".to_owned(), id.clone()),
    ];
    let cn = match application_id {
        Some(app) => {
            rdns.push(("OU".to_owned(), app.to_owned()));
            format!("{id}, {app}")
        }
        None => id,
    };
    rdns.push(("CN".to_owned(), cn));
    rdns
}

/// A self-signed certificate of `name` for `key` (SHA-256), valid from now for a day, with
/// `serial` (its magnitude, big-endian; 1 when `None`): a certificate of a given shape for
/// tests of parsers and limits, not a member of a PKI.
pub fn self_signed(
    name: &X509NameRef,
    key: &PKeyRef<Private>,
    serial: Option<&[u8]>,
) -> Result<X509, Error> {
    let mut b = X509::builder()?;
    let serial = match serial {
        Some(s) => BigNum::from_slice(s)?,
        None => BigNum::from_u32(1)?,
    };
    let serial: Asn1Integer = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(name)?;
    b.set_issuer_name(name)?;
    b.set_pubkey(key)?;
    let (from, until): (Asn1Time, Asn1Time) =
        (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(1)?);
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// Builds an X.509 name from (field, value) RDNs, in the given order, one
/// attribute per RDN, values encoded as OpenSSL's default (UTF8String, except
/// countryName which ASN.1 fixes as PrintableString).
pub fn build_name<F: AsRef<str>, V: AsRef<str>>(rdns: &[(F, V)]) -> Result<X509Name, Error> {
    if rdns.is_empty() {
        return Err(Error::InvalidSpec("empty distinguished name".into()));
    }
    let mut b = X509Name::builder()?;
    for (field, value) in rdns {
        b.append_entry_by_text(field.as_ref(), value.as_ref())?;
    }
    Ok(b.build())
}

/// Formats a name as an RFC 4514 string: last RDN first, `,` separated, short
/// attribute names, special characters backslash-escaped (this matches Java's
/// `X500Principal.getName()` for the names this crate issues).
pub fn name_to_rfc4514(name: &X509NameRef) -> String {
    let entries: Vec<_> = name.entries().collect();
    let mut parts = Vec::with_capacity(entries.len());
    for e in entries.iter().rev() {
        let nid = e.object().nid();
        let field = nid
            .short_name()
            .map(str::to_owned)
            .unwrap_or_else(|_| e.object().to_string());
        let value = match e.data().to_string() {
            Ok(s) => s,
            Err(_) => String::from_utf8_lossy(e.data().as_slice()).into_owned(),
        };
        parts.push(format!("{field}={}", escape_rfc4514(&value)));
    }
    parts.join(",")
}

fn escape_rfc4514(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A random positive serial: 63 random bits (the top bit of a 64-bit value is
/// cleared so the DER INTEGER never needs a sign byte), never zero.
pub fn random_serial() -> Result<Asn1Integer, Error> {
    let mut bn = BigNum::new()?;
    loop {
        bn.rand(63, MsbOption::MAYBE_ZERO, false)?;
        if bn.num_bits() > 0 {
            return Ok(bn.to_asn1_integer()?);
        }
    }
}

fn unix_time(t: i64) -> Result<Asn1Time, Error> {
    Ok(Asn1Time::from_unix(t as _)?)
}

/// Generates an RSA key of `bits` bits (public exponent 65537).
pub fn rsa_key(bits: u32) -> Result<PKey<Private>, Error> {
    Ok(PKey::from_rsa(Rsa::generate(bits)?)?)
}

/// Starts a v3 certificate with everything but extensions and signature.
fn cert_builder<T: HasPublic>(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKeyRef<T>,
    validity: Validity,
) -> Result<X509Builder, Error> {
    if validity.not_after < validity.not_before {
        return Err(Error::InvalidSpec("notAfter is before notBefore".into()));
    }
    let mut b = X509Builder::new()?;
    b.set_version(2)?; // v3, needed for extensions
    let serial = random_serial()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    let not_before = Asn1Time::from_unix(validity.not_before as _)?;
    let not_after = Asn1Time::from_unix(validity.not_after as _)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    Ok(b)
}

/// A CA `C=BE, O=etee test, CN=<cn>` with a new RSA-2048 key: self-signed without an
/// issuer, else issued by it.
fn ca(cn: &str, issuer: Option<&Issued>, validity: Validity) -> Result<Issued, Error> {
    let key = rsa_key(2048)?;
    let subject = build_name(&[("C", "BE"), ("O", "etee test"), ("CN", cn)])?;
    let issuer_name = issuer.map_or(subject.as_ref(), |i| i.cert.subject_name());
    let mut b = cert_builder(&subject, issuer_name, &key, validity)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    KeyUsageSpec {
        critical: true,
        key_cert_sign: true,
        crl_sign: true,
        ..KeyUsageSpec::default()
    }
    .apply(&mut b)?;
    add_key_ids(&mut b, issuer.map(|i| i.cert.as_ref()))?;
    b.sign(issuer.map_or(&key, |i| &i.key), MessageDigest::sha256())?;
    Ok(Issued {
        cert: b.build(),
        key,
    })
}

/// Adds SKI (and AKI when an issuer certificate is given) to `b`.
fn add_key_ids(b: &mut X509Builder, issuer: Option<&X509Ref>) -> Result<(), Error> {
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer, None))?;
    b.append_extension(ski)?;
    if let Some(issuer) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(issuer), None))?;
        b.append_extension(aki)?;
    }
    Ok(())
}

/// A test root CA and an ETK registration authority issued by it.
#[derive(Clone)]
pub struct TestPki {
    /// Self-signed root CA (RSA-2048).
    pub root: Issued,
    /// ETK registration authority that signs ETKs, issued by `root` (RSA-2048).
    pub ra: Issued,
}

impl TestPki {
    /// Generates a root CA `CN=etee Test Root CA <name>` and an RA
    /// `CN=ETK RA <name>` (both under `C=BE, O=etee test`), valid from one day
    /// back to ten years ahead. Costs two RSA-2048 key generations.
    pub fn generate(name: &str) -> Result<TestPki, Error> {
        let validity = Validity::days_around_now(1, 10 * 365);

        let root = ca(&format!("etee Test Root CA {name}"), None, validity)?;

        let ra_key = rsa_key(2048)?;
        let ra_name = build_name(&[
            ("C", "BE"),
            ("O", "etee test"),
            ("CN", &format!("ETK RA {name}")),
        ])?;
        let ra = issue_end_entity(
            &root,
            &ra_name,
            ra_key,
            validity,
            KeyUsageSpec::authentication(),
        )?;

        Ok(TestPki { root, ra })
    }

    /// An intermediate CA `CN=etee Test Intermediate CA <name>` issued by this root, as a
    /// `TestPki` whose `root` is the intermediate (its institutions and lists are the
    /// intermediate's; their `chain` holds only the intermediate) and whose RA is this
    /// one's. Costs one RSA-2048 key generation.
    pub fn subordinate(&self, name: &str) -> Result<TestPki, Error> {
        let root = ca(
            &format!("etee Test Intermediate CA {name}"),
            Some(&self.root),
            Validity::days_around_now(1, 5 * 365),
        )?;
        Ok(TestPki {
            root,
            ra: self.ra.clone(),
        })
    }

    /// A revocation list (CRL v2) of the root: `revoked` holds the serials it revokes with
    /// their revocation times (unix seconds); `number` is its CRL number, which a CA raises
    /// at every list. Signed with SHA-256, with the root's key id (AKI), as RFC 5280 wants.
    pub fn crl(
        &self,
        revoked: &[(&Asn1IntegerRef, i64)],
        number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<X509Crl, Error> {
        self.crl_with(revoked, number, this_update, next_update, Vec::new())
    }

    /// [`TestPki::crl`] with more extensions (a delta indicator, an issuing distribution
    /// point, ...), for tests of lists that do not cover everything.
    pub fn crl_with(
        &self,
        revoked: &[(&Asn1IntegerRef, i64)],
        number: u64,
        this_update: i64,
        next_update: i64,
        extensions: Vec<X509Extension>,
    ) -> Result<X509Crl, Error> {
        let mut b = X509CrlBuilder::new()?;
        for e in extensions {
            b.append_extension(e)?;
        }
        b.set_issuer_name(self.root.cert.subject_name())?;
        let (this_update, next_update) = (unix_time(this_update)?, unix_time(next_update)?);
        b.set_last_update(&this_update)?;
        b.set_next_update(&next_update)?;
        for (serial, at) in revoked {
            let mut r = X509RevokedBuilder::new()?;
            r.set_serial_number(serial)?;
            let at = unix_time(*at)?;
            r.set_revocation_date(&at)?;
            b.add_revoked(r.build())?;
        }
        // The AKI is made the way a certificate's is: from a context naming the issuer.
        let ctx_holder = X509Builder::new()?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&ctx_holder.x509v3_context(Some(&self.root.cert), None))?;
        b.append_extension(aki)?;
        let number = BigNum::from_dec_str(&number.to_string())?;
        b.append_extension(CrlNumber::new(number)?.build()?)?;
        b.sort()?;
        b.sign(&self.root.key, MessageDigest::sha256())?;
        Ok(b.build()?)
    }

    /// A certificate store trusting this PKI's root, for chain verification.
    pub fn store(&self) -> Result<X509Store, Error> {
        let mut b = X509StoreBuilder::new()?;
        b.add_cert(self.root.cert.clone())?;
        Ok(b.build())
    }

    /// Issues an institution's authentication certificate, encryption
    /// certificate and ETK as described by `spec`. Costs two RSA key
    /// generations of the requested sizes.
    pub fn institution(&self, spec: &InstitutionSpec) -> Result<Institution, Error> {
        // Authentication certificate: issued by the root.
        let auth_key = rsa_key(spec.auth_key_bits)?;
        let subject = build_name(&spec.subject_rdns())?;
        let auth = Issued {
            cert: end_entity_certificate(
                &self.root,
                &subject,
                &auth_key,
                spec.auth_validity,
                spec.auth_key_usage,
                Locations::of(spec),
            )?,
            key: auth_key,
        };

        // Encryption certificate: signed by the authentication key, so its
        // issuer is the holder itself; keyUsage is its only extension.
        let etk_key = rsa_key(spec.etk_key_bits)?;
        let etk_name = match &spec.etk_subject_override {
            Some(rdns) => build_name(rdns)?,
            None => subject,
        };
        let mut b = cert_builder(&etk_name, &etk_name, &etk_key, spec.etk_validity)?;
        spec.etk_key_usage.apply(&mut b)?;
        b.sign(&auth.key, MessageDigest::sha256())?;
        let etk_cert = b.build();

        let etk = self.sign_etk(&etk_cert, &auth.cert)?;

        Ok(Institution {
            auth,
            etk_cert,
            etk_key,
            etk,
            chain: vec![self.root.cert.clone()],
        })
    }

    /// An institution's authentication certificate, issued by the root as in
    /// [`TestPki::institution`], for a key generated elsewhere (an HSM): only its public
    /// half is needed. The encryption certificate must then be signed where the
    /// authentication key is (see `etee_formats::enc_cert`).
    pub fn authentication_certificate<T: HasPublic>(
        &self,
        spec: &InstitutionSpec,
        public_key: &PKeyRef<T>,
    ) -> Result<X509, Error> {
        let subject = build_name(&spec.subject_rdns())?;
        end_entity_certificate(
            &self.root,
            &subject,
            public_key,
            spec.auth_validity,
            spec.auth_key_usage,
            Locations::of(spec),
        )
    }

    /// A TLS server certificate issued by the root for `names` (DNS names, or IP
    /// addresses such as `127.0.0.1`), with extendedKeyUsage serverAuth. Costs one RSA-2048
    /// key generation.
    pub fn tls_server(&self, names: &[&str]) -> Result<Issued, Error> {
        let first = names
            .first()
            .ok_or_else(|| Error::InvalidSpec("a TLS server needs a name".into()))?;
        let key = rsa_key(2048)?;
        let subject = build_name(&[("C", "BE"), ("O", "etee test"), ("CN", first)])?;
        let validity = Validity::days_around_now(1, 2 * 365);
        let mut b = cert_builder(&subject, self.root.cert.subject_name(), &key, validity)?;
        b.append_extension(BasicConstraints::new().build()?)?;
        KeyUsageSpec {
            critical: true,
            digital_signature: true,
            key_encipherment: true,
            ..KeyUsageSpec::default()
        }
        .apply(&mut b)?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let mut san = SubjectAlternativeName::new();
        for name in names {
            if name.parse::<std::net::IpAddr>().is_ok() {
                san.ip(name);
            } else {
                san.dns(name);
            }
        }
        let san = san.build(&b.x509v3_context(Some(&self.root.cert), None))?;
        b.append_extension(san)?;
        add_key_ids(&mut b, Some(&self.root.cert))?;
        b.sign(&self.root.key, MessageDigest::sha256())?;
        Ok(Issued {
            cert: b.build(),
            key,
        })
    }

    /// An end-entity certificate of this root that signs on its behalf (an OCSP responder,
    /// a time-stamping authority): `C=BE, O=etee test, CN=<cn>`, valid from a day back to
    /// a year ahead, with `usage` and the extendedKeyUsage `eku` if any. One RSA-2048 key.
    pub(crate) fn delegated_signer(
        &self,
        cn: &str,
        usage: KeyUsageSpec,
        eku: Option<X509Extension>,
    ) -> Result<Issued, Error> {
        let key = rsa_key(2048)?;
        let name = build_name(&[("C", "BE"), ("O", "etee test"), ("CN", cn)])?;
        let mut b = cert_builder(
            &name,
            self.root.cert.subject_name(),
            &key,
            Validity::days_around_now(1, 365),
        )?;
        b.append_extension(BasicConstraints::new().build()?)?;
        usage.apply(&mut b)?;
        if let Some(eku) = eku {
            b.append_extension(eku)?;
        }
        add_key_ids(&mut b, Some(&self.root.cert))?;
        b.sign(&self.root.key, MessageDigest::sha256())?;
        Ok(Issued {
            cert: b.build(),
            key,
        })
    }

    /// Wraps an encryption certificate into an ETK: CMS SignedData (DER) over
    /// the certificate's DER as id-data content, signed by the RA with SHA-256
    /// and PKCS#1 v1.5, without signed attributes, carrying the RA, `auth` and
    /// root certificates. Exposed so tests can wrap hand-made certificates.
    pub fn sign_etk(&self, enc_cert: &X509Ref, auth: &X509Ref) -> Result<Vec<u8>, Error> {
        let content = enc_cert.to_der()?;
        // CMS_sign adds the signer (RA) certificate itself.
        let mut extra = Stack::new()?;
        extra.push(auth.to_owned())?;
        extra.push(self.root.cert.clone())?;
        // NOATTR: the eHealth ETK signature covers the content directly.
        // BINARY: the content is DER, no MIME canonicalisation.
        // Not DETACHED: the certificate must be inside the ETK.
        let flags = CMSOptions::NOATTR | CMSOptions::BINARY | CMSOptions::NOSMIMECAP;
        let cms = CmsContentInfo::sign(
            Some(&self.ra.cert),
            Some(&self.ra.key),
            Some(&extra),
            Some(&content),
            flags,
        )?;
        Ok(cms.to_der()?)
    }
}

/// Issues a non-CA certificate under `issuer` with SKI/AKI and basicConstraints
/// CA:false.
fn issue_end_entity(
    issuer: &Issued,
    subject: &X509NameRef,
    key: PKey<Private>,
    validity: Validity,
    usage: KeyUsageSpec,
) -> Result<Issued, Error> {
    Ok(Issued {
        cert: end_entity_certificate(issuer, subject, &key, validity, usage, Locations::default())?,
        key,
    })
}

/// Where an end-entity certificate says its status is published: an OCSP responder
/// (authorityInfoAccess) and its issuer's revocation list (crlDistributionPoints).
#[derive(Clone, Copy, Default)]
struct Locations<'a> {
    ocsp_url: Option<&'a str>,
    crl_url: Option<&'a str>,
}

impl<'a> Locations<'a> {
    fn of(spec: &'a InstitutionSpec) -> Self {
        Self {
            ocsp_url: spec.ocsp_url.as_deref(),
            crl_url: spec.crl_url.as_deref(),
        }
    }
}

/// The certificate of [`issue_end_entity`] for a public key whose private half is elsewhere.
fn end_entity_certificate<T: HasPublic>(
    issuer: &Issued,
    subject: &X509NameRef,
    key: &PKeyRef<T>,
    validity: Validity,
    usage: KeyUsageSpec,
    locations: Locations<'_>,
) -> Result<X509, Error> {
    let mut b = cert_builder(subject, issuer.cert.subject_name(), key, validity)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    usage.apply(&mut b)?;
    add_key_ids(&mut b, Some(&issuer.cert))?;
    // The openssl crate has no typed builders for these two extensions; the
    // config-string form is the one it offers.
    let config_extension = |b: &mut X509Builder, nid, value: &str| -> Result<(), Error> {
        #[allow(deprecated)]
        let ext = X509Extension::new_nid(
            None,
            Some(&b.x509v3_context(Some(&issuer.cert), None)),
            nid,
            value,
        )?;
        Ok(b.append_extension(ext)?)
    };
    if let Some(url) = locations.ocsp_url {
        // authorityInfoAccess with an id-ad-ocsp access description.
        config_extension(
            &mut b,
            openssl::nid::Nid::INFO_ACCESS,
            &format!("OCSP;URI:{url}"),
        )?;
    }
    if let Some(url) = locations.crl_url {
        // crlDistributionPoints: one DistributionPoint whose fullName is this URI (no
        // reasons, no cRLIssuer), the shape CAs give their certificates.
        if url.contains(',') || url.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(Error::InvalidSpec(format!(
                "distribution point {url:?}: a URL without commas or spaces"
            )));
        }
        config_extension(
            &mut b,
            openssl::nid::Nid::CRL_DISTRIBUTION_POINTS,
            &format!("URI:{url}"),
        )?;
    }
    b.sign(&issuer.key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// Everything issued for one institution.
#[derive(Clone)]
pub struct Institution {
    /// Authentication certificate (issued by the root) and its key.
    pub auth: Issued,
    /// Encryption certificate (signed by the authentication key).
    pub etk_cert: X509,
    /// Private key of the encryption certificate.
    pub etk_key: PKey<Private>,
    /// The ETK: CMS SignedData, DER.
    pub etk: Vec<u8>,
    /// CA certificates above the authentication certificate, root last.
    pub chain: Vec<X509>,
}

impl Institution {
    /// The encryption certificate's serial number in decimal.
    pub fn etk_serial_decimal(&self) -> String {
        let serial = self.etk_cert.serial_number();
        // Only fails on allocation failure.
        let bn = serial.to_bn().expect("serial number to BIGNUM");
        bn.to_dec_str().expect("BIGNUM to decimal").to_string()
    }

    /// The authentication certificate's subject as an RFC 4514 string
    /// (see [`name_to_rfc4514`]), e.g.
    /// `CN=NIHII-PHARMACY=12345678,OU=NIHII-PHARMACY=12345678,OU=Pharmacy,OU=eHealth-platform Belgium,O=Federal Government,C=BE`.
    pub fn subject_string(&self) -> String {
        name_to_rfc4514(self.auth.cert.subject_name())
    }
}
