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
