//! Fetching certificate revocation lists from their CAs' distribution points, for the
//! `crl` files the appliance and the platform follow (`etee crl fetch`, run from a timer).
//!
//! The core, [`fetch_lists`], is given the download as a function: each URL's answer must
//! be lists (DER or PEM) each signed by a given issuer certificate of its name, and none
//! older than the list of the same issuer already held (a replayed or stale copy would
//! undo revocations). What passes is merged with what is held, one list per issuer, and
//! returned for writing only when something is new, so that the services re-read the
//! file only when it changed. [`HttpGet`] is the download: plain HTTP, as distribution
//! points are published (the lists are signed; RFC 5280 §4.2.1.13), bounded in time and
//! size, no redirects.
//!
//! Where to look can also be read from certificates: [`distribution_points`] reads a
//! certificate's crlDistributionPoints extension (RFC 5280 §4.2.1.13), and [`Discovery`]
//! joins the URLs given with those the certificates name, each once, remembering where
//! each came from. A certificate only says where its issuer's list is published, never
//! whom to trust: every list fetched must still be signed by an issuer certificate the
//! caller gives.

use etee_formats::ber::slice::{parse_exact, Tlv};
use etee_formats::ber::{tag, BerError, BerErrorKind};
use etee_formats::cert::Certificate;
use etee_formats::revocation::{
    Freshness, ListSummary, Revocation, RevocationError, RevocationPolicy,
};
use std::time::Duration;

/// Why nothing can be fetched at all (a URL that fails is an [`Outcome::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "the file to update does not hold revocation lists ({0}): not overwritten; \
         remove it or name another file"
    )]
    Held(RevocationError),
    #[error("writing the lists: {0}")]
    Encode(RevocationError),
}

/// What became of one URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its lists passed the checks: each with how it compares with the list held.
    Taken(Vec<(ListSummary, Freshness)>),
    /// Not taken, and why; the list held for its issuer, if any, stays.
    Refused(String),
}

/// What a fetch found and what to write.
#[derive(Debug)]
pub struct Report {
    /// Each URL, in the order given, with its outcome.
    pub urls: Vec<(String, Outcome)>,
    /// The new content of the file (PEM, every issuer's list once), when a list was new
    /// or newer than the one held; `None`: leave the file as it is.
    pub write: Option<Vec<u8>>,
    /// The lists the file holds after the fetch (written or not).
    pub lists: Vec<ListSummary>,
}

impl Report {
    /// Whether every URL gave lists that were taken.
    pub fn all_taken(&self) -> bool {
        self.urls
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Taken(_)))
    }
}

/// Fetches `urls` with `get`, checks each answer against `issuers` (the CA certificates
/// whose lists are wanted: anchors or intermediates) and against `held` (the current
/// content of the file, if it exists), and says what to write.
pub fn fetch_lists(
    urls: &[String],
    issuers: &[Certificate],
    held: Option<&[u8]>,
    get: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Report, FetchError> {
    let held = match held {
        Some(bytes) => Revocation::new(&[bytes.to_vec()], RevocationPolicy::Optional)
            .map_err(FetchError::Held)?,
        None => Revocation::default(),
    };
    let mut taken = Vec::new();
    let mut changed = false;
    let mut outcomes = Vec::with_capacity(urls.len());
    for url in urls {
        let outcome = match get(url).and_then(|bytes| check_one(&bytes, issuers, &held)) {
            Ok((lists, freshness)) => {
                changed |= freshness
                    .iter()
                    .any(|f| matches!(f, Freshness::New | Freshness::Newer));
                let summary = lists.summaries().into_iter().zip(freshness).collect();
                taken.push(lists);
                Outcome::Taken(summary)
            }
            Err(why) => Outcome::Refused(why),
        };
        outcomes.push((url.clone(), outcome));
    }
    let result = Revocation::merged(&held, &taken);
    let write = if changed {
        Some(result.to_pem().map_err(FetchError::Encode)?)
    } else {
        None
    };
    Ok(Report {
        urls: outcomes,
        write,
        lists: result.summaries(),
    })
}

/// One answer: lists, each signed by its issuer among `issuers`, none older than held.
fn check_one(
    bytes: &[u8],
    issuers: &[Certificate],
    held: &Revocation,
) -> Result<(Revocation, Vec<Freshness>), String> {
    let lists = Revocation::new(&[bytes.to_vec()], RevocationPolicy::Optional)
        .map_err(|e| e.to_string())?;
    if lists.lists() == 0 {
        return Err("the answer holds no revocation list".into());
    }
    lists.check_issued_by(issuers).map_err(|e| e.to_string())?;
    let freshness = lists.freshness_against(held);
    if let Some((list, _)) = lists
        .summaries()
        .into_iter()
        .zip(&freshness)
        .find(|(_, f)| **f == Freshness::Older)
    {
        return Err(RevocationError::Older {
            issuer: list.issuer,
        }
        .to_string());
    }
    Ok((lists, freshness))
}

/// A download over plain HTTP, bounded: `timeout` for the whole exchange, at most
/// `max_bytes`, no redirects (a distribution point answers the list itself).
#[derive(Clone, Debug)]
pub struct HttpGet {
    pub timeout: Duration,
    pub max_bytes: u64,
}

impl Default for HttpGet {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            // National CAs' lists run to tens of megabytes.
            max_bytes: 256 << 20,
        }
    }
}

impl HttpGet {
    pub fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        if !url.starts_with("http://") {
            return Err(
                "only http:// distribution points are fetched (the lists are signed, and \
                 CAs publish them over plain HTTP)"
                    .into(),
            );
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .max_redirects(0)
            .build()
            .into();
        let mut answer = agent
            .get(url)
            .header(
                "Accept",
                "application/pkix-crl, application/x-pkcs7-crl, */*",
            )
            .call()
            .map_err(|e| e.to_string())?;
        // A redirect is not followed (and other statuses are errors already).
        if answer.status() != 200 {
            return Err(format!(
                "HTTP {}: a distribution point answers the list itself",
                answer.status()
            ));
        }
        answer
            .body_mut()
            .with_config()
            .limit(self.max_bytes)
            .read_to_vec()
            .map_err(|e| e.to_string())
    }
}

/// Why a certificate's distribution points cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PointsError {
    #[error("the certificate cannot be read up to its extensions: {0}")]
    Certificate(etee_formats::cert::CertError),
    #[error("it has more than one crlDistributionPoints extension (RFC 5280 §4.2: at most one)")]
    Repeated,
    #[error("its crlDistributionPoints extension is malformed: {0}")]
    Malformed(BerError),
    #[error("its crlDistributionPoints extension holds no distribution point")]
    Empty,
    #[error(
        "its crlDistributionPoints extension holds a distribution point with neither a name \
         nor a cRLIssuer (RFC 5280 §4.2.1.13: one of them must be present)"
    )]
    Nameless,
    #[error(
        "its crlDistributionPoints extension holds a uniformResourceIdentifier with bytes \
         outside printable ASCII: not a URI"
    )]
    NotAUri,
}

/// What of a certificate's crlDistributionPoints is not fetched, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The certificate has no crlDistributionPoints extension.
    NoExtension,
    /// A URI of another scheme than http (ldap, https, ...).
    NotHttp(String),
    /// A full name that is not a URI (a directory name, a DNS name, ...): which form.
    NotUri(&'static str),
    /// A point named relative to its CRL issuer: no address.
    RelativeName,
    /// A point that names only its list's issuer (cRLIssuer), not where the list is.
    IssuerOnly,
    /// A point limited to some revocation reasons (`reasons`): its URIs.
    Reasons(Vec<String>),
    /// A point whose list another authority issues (`cRLIssuer`, an indirect list): its
    /// URIs.
    Indirect(Vec<String>),
}

impl Skipped {
    /// A short name for JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoExtension => "no-extension",
            Self::NotHttp(_) => "not-http",
            Self::NotUri(_) => "not-uri",
            Self::RelativeName => "relative-name",
            Self::IssuerOnly => "issuer-only",
            Self::Reasons(_) => "reasons",
            Self::Indirect(_) => "indirect",
        }
    }
}

/// "a distribution point" or its URIs.
fn point_text(uris: &[String]) -> String {
    if uris.is_empty() {
        "a distribution point".into()
    } else {
        format!("the distribution point {}", uris.join(" "))
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoExtension => f.write_str(
                "no crlDistributionPoints extension: it does not say where its issuer's \
                 list is published",
            ),
            Self::NotHttp(uri) => write!(
                f,
                "{uri}: not fetched, only http:// distribution points are (the lists are \
                 signed; CAs publish them over plain HTTP)"
            ),
            Self::NotUri(form) => write!(
                f,
                "a distribution point named by a {form}, not a URL: not fetched"
            ),
            Self::RelativeName => f.write_str(
                "a distribution point named relative to its CRL issuer, not by a URL: not \
                 fetched",
            ),
            Self::IssuerOnly => f.write_str(
                "a distribution point that names only its list's issuer (cRLIssuer: an \
                 indirect list), not where it is published: not fetched",
            ),
            Self::Reasons(uris) => write!(
                f,
                "{}: a list of some revocation reasons only (reasons), which could never \
                 show a certificate good: not fetched",
                point_text(uris)
            ),
            Self::Indirect(uris) => write!(
                f,
                "{}: an indirect list, issued by another authority (cRLIssuer) than the \
                 certificate's issuer: not fetched (each list fetched must be signed by an \
                 issuer certificate of its own name, and a list speaks only for the \
                 certificates of its own issuer)",
                point_text(uris)
            ),
        }
    }
}

/// What a certificate's crlDistributionPoints give the fetcher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Points {
    /// The `http://` URLs of its points, in its order, each once (the scheme written in
    /// lower case).
    pub urls: Vec<String>,
    /// What is not fetched, and why, in its order.
    pub skipped: Vec<Skipped>,
    /// Whether the certificate is issued under its own name (subject = issuer: a root CA,
    /// or an eHealth encryption certificate, signed by its holder's authentication key).
    pub self_issued: bool,
}

impl Points {
    /// Whether the certificate gives no URL where one was expected: it has points but
    /// none fetched, or has none and is not issued under its own name (no list is
    /// expected to speak for such a certificate: a root's status is its trust, an
    /// encryption certificate's its ETK).
    pub fn missing(&self) -> bool {
        self.urls.is_empty() && !(self.self_issued && self.skipped == [Skipped::NoExtension])
    }
}

/// Reads `cert`'s crlDistributionPoints (RFC 5280 §4.2.1.13): the `http://` URIs of the
/// full names of its points, and a [`Skipped`] for the rest. A point limited to some
/// reasons, or whose list another authority issues (cRLIssuer), is skipped whole: the
/// fetcher takes only lists signed by an issuer of their own name, and etee uses a list
/// only for the certificates of its own issuer.
pub fn distribution_points(cert: &Certificate) -> Result<Points, PointsError> {
    let mut points = Points {
        self_issued: cert.subject_der() == cert.issuer_der(),
        ..Points::default()
    };
    let mut values = cert
        .extension_values(etee_formats::oid::EXT_CRL_DISTRIBUTION_POINTS)
        .map_err(PointsError::Certificate)?;
    let value = match values.len() {
        0 => {
            points.skipped.push(Skipped::NoExtension);
            return Ok(points);
        }
        1 => values.remove(0),
        _ => return Err(PointsError::Repeated),
    };
    read_points(&value, &mut points)?;
    Ok(points)
}

/// The forms of GeneralName (RFC 5280 §4.2.1.6) by tag number, for notes.
const GENERAL_NAME_FORMS: [&str; 9] = [
    "otherName",
    "rfc822Name (an e-mail address)",
    "dNSName (a host name)",
    "x400Address",
    "directoryName (an X.500 name)",
    "ediPartyName",
    "uniformResourceIdentifier",
    "iPAddress",
    "registeredID",
];

/// Reads a CRLDistributionPoints value into `out`.
fn read_points(value: &[u8], out: &mut Points) -> Result<(), PointsError> {
    let bad = PointsError::Malformed;
    let list = parse_exact(value)
        .and_then(|t| t.expect(tag::SEQUENCE))
        .map_err(bad)?;
    let mut any = false;
    for point in list.children() {
        any = true;
        // DistributionPoint ::= SEQUENCE { distributionPoint [0] DistributionPointName
        // OPTIONAL, reasons [1] ReasonFlags OPTIONAL, cRLIssuer [2] GeneralNames OPTIONAL }
        // (implicit tags; the name, a CHOICE, is tagged explicitly).
        let mut fields = point
            .and_then(|p| p.expect(tag::SEQUENCE))
            .and_then(|p| p.seq())
            .map_err(bad)?;
        let name = fields.optional(tag::ctx_cons(0)).map_err(bad)?;
        let reasons = match fields.optional(tag::ctx_prim(1)).map_err(bad)? {
            Some(r) => Some(r),
            // BER: a constructed BIT STRING.
            None => fields.optional(tag::ctx_cons(1)).map_err(bad)?,
        };
        let crl_issuer = fields.optional(tag::ctx_cons(2)).map_err(bad)?;
        fields.finish().map_err(bad)?;
        // The full name's entries in order: a URI, or the form of a name that is not one.
        let mut names: Vec<Result<String, &'static str>> = Vec::new();
        let mut unnamed = None;
        match name {
            None if crl_issuer.is_none() => return Err(PointsError::Nameless),
            None => unnamed = Some(Skipped::IssuerOnly),
            Some(name) => {
                let choice = parse_exact(name.content).map_err(bad)?;
                if choice.tag == tag::ctx_cons(0) {
                    for general_name in choice.children() {
                        names.push(uri(&general_name.map_err(bad)?)?);
                    }
                } else if choice.tag == tag::ctx_cons(1) {
                    unnamed = Some(Skipped::RelativeName);
                } else {
                    return Err(bad(choice.err(BerErrorKind::UnexpectedTag {
                        expected: tag::ctx_cons(0),
                        found: choice.tag,
                    })));
                }
            }
        }
        let uris = || names.iter().filter_map(|n| n.clone().ok()).collect();
        if crl_issuer.is_some() && name.is_some() {
            out.skipped.push(Skipped::Indirect(uris()));
            continue;
        }
        if reasons.is_some() && crl_issuer.is_none() {
            out.skipped.push(Skipped::Reasons(uris()));
            continue;
        }
        out.skipped.extend(unnamed);
        for n in names {
            match n {
                Ok(u) => match http_url(&u) {
                    Some(url) if !out.urls.contains(&url) => out.urls.push(url),
                    Some(_) => {}
                    None => out.skipped.push(Skipped::NotHttp(u)),
                },
                Err(form) => out.skipped.push(Skipped::NotUri(form)),
            }
        }
    }
    if !any {
        return Err(PointsError::Empty);
    }
    Ok(())
}

/// A GeneralName: the URI it holds, or the name of its form when it is not a URI.
fn uri(name: &Tlv<'_>) -> Result<Result<String, &'static str>, PointsError> {
    let number = name.tag & 0x1f;
    if name.tag & 0xc0 != 0x80 || usize::from(number) >= GENERAL_NAME_FORMS.len() {
        return Ok(Err("name of an unknown form"));
    }
    if number != 6 {
        return Ok(Err(GENERAL_NAME_FORMS[usize::from(number)]));
    }
    // uniformResourceIdentifier [6] IMPLICIT IA5String (constructed in BER: OCTET STRING
    // segments).
    let bytes = name.octets().map_err(PointsError::Malformed)?;
    if bytes.is_empty() || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(PointsError::NotAUri);
    }
    // Checked above: printable ASCII.
    Ok(Ok(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `uri` as an `http://` URL (scheme in lower case: schemes are case-insensitive, RFC
/// 3986 §3.1), or `None` for another scheme.
fn http_url(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    (scheme.eq_ignore_ascii_case("http") && rest.starts_with("//")).then(|| format!("http:{rest}"))
}

/// Where a URL to fetch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Given by the caller (`--url`).
    Given,
    /// A certificate's crlDistributionPoints: its index among the certificates given.
    Certificate(usize),
}

/// The URLs to fetch: those given, then those the certificates name, each once, with where
/// each came from; and what each certificate gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The URLs in order (given first, then by certificate), each with its sources.
    pub urls: Vec<(String, Vec<Source>)>,
    /// What each certificate gave, in the order given.
    pub certificates: Vec<Points>,
}

impl Discovery {
    /// Joins `given` with the distribution points of `certificates`. A certificate whose
    /// extension cannot be read stops it: its index and why.
    pub fn new(
        given: &[String],
        certificates: &[Certificate],
    ) -> Result<Self, (usize, PointsError)> {
        let mut d = Discovery::default();
        for url in given {
            d.add(url, Source::Given);
        }
        for (i, cert) in certificates.iter().enumerate() {
            let points = distribution_points(cert).map_err(|e| (i, e))?;
            for url in &points.urls {
                d.add(url, Source::Certificate(i));
            }
            d.certificates.push(points);
        }
        Ok(d)
    }

    fn add(&mut self, url: &str, source: Source) {
        match self.urls.iter_mut().find(|(u, _)| u == url) {
            Some((_, sources)) if sources.contains(&source) => {}
            Some((_, sources)) => sources.push(source),
            None => self.urls.push((url.to_owned(), vec![source])),
        }
    }

    /// The URLs alone, for [`fetch_lists`].
    pub fn url_list(&self) -> Vec<String> {
        self.urls.iter().map(|(u, _)| u.clone()).collect()
    }

    /// Whether a certificate gave no URL where one was expected ([`Points::missing`]).
    pub fn any_missing(&self) -> bool {
        self.certificates.iter().any(Points::missing)
    }
}
