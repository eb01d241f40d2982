//! Certificate revocation: from the OCSP answers a message carries (its outer signer's
//! `revocationValues`, spec §1.2), the CAs' revocation lists (X.509 CRLs, RFC 5280 §5;
//! downloaded by the operator, or made by `etee pki revoke` for a local world) and an
//! OCSP responder asked online ([`crate::ocsp`]; spec §1.6, `OCSPPolicy`), in that order.
//! What they say is reported with the official notifications:
//! `{INNER,OUTER}_CERTIFICATE_REVOKED` / `_STATUS_UNKNOWN` for a message's signers,
//! `ETK_AUTHENTICATION_CERT_REVOKED` / `_STATUS_UNKNOWN` for an ETK.
//!
//! A certificate's status is judged at the evaluation time (now unless `--at`), not at the
//! signing time, as an OCSP check at unsealing is: the signing time is the signer's own
//! claim, and a stolen key's holder could set it before the revocation.

use crate::ber::slice::parse_exact;
use crate::ber::tag;
use crate::cert::{same_name, Certificate};
use crate::ocsp::{Online, RevocationValues};
use openssl::pkey::{PKey, PKeyRef, Public};
use openssl::x509::{CrlStatus, X509Crl, X509NameRef, X509Ref};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How revocation is checked; `None` is the default (and the official verdicts of record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RevocationPolicy {
    /// Not checked.
    #[default]
    None,
    /// A certificate revoked by a current list or an OCSP answer is refused; one whose
    /// status nothing gives passes.
    Optional,
    /// Also a certificate whose status nothing gives is refused (`STATUS_UNKNOWN`).
    Mandatory,
}

impl FromStr for RevocationPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "mandatory" => Ok(Self::Mandatory),
            other => Err(format!(
                "unknown revocation policy {other:?}: none, optional or mandatory"
            )),
        }
    }
}

impl RevocationPolicy {
    /// The policy in force when `given` (or nothing) is configured beside `lists` files
    /// and, when `online`, an OCSP responder: by default optional with either and none
    /// without. Refused: sources that would not be used (none), and a policy without a
    /// source (nothing could be checked).
    pub fn effective(given: Option<Self>, lists: usize, online: bool) -> Result<Self, String> {
        let sources = lists > 0 || online;
        match (given, sources) {
            (None | Some(Self::None), false) => Ok(Self::None),
            (None, true) => Ok(Self::Optional),
            (Some(Self::None), true) => Err(
                "revocation lists or an OCSP responder with the policy none: they would not \
                 be used"
                    .into(),
            ),
            (Some(Self::Mandatory), false) => Err(
                "the mandatory revocation policy needs the CAs' lists or an OCSP responder: \
                 without one no status can be known"
                    .into(),
            ),
            (Some(Self::Optional), false) => Err(
                "the optional revocation policy needs the CAs' lists or an OCSP responder: \
                 without one nothing would be checked"
                    .into(),
            ),
            (Some(p), true) => Ok(p),
        }
    }
}

impl fmt::Display for RevocationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Mandatory => "mandatory",
        })
    }
}

/// Why a revocation list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("not a certificate revocation list (neither DER nor PEM X509 CRL)")]
    NotACrl,
    #[error("revocation list with a thisUpdate or nextUpdate time OpenSSL cannot read")]
    BadTime,
    #[error("the revocation list of {issuer} is not signed by that trust anchor's key")]
    NotSignedByAnchor { issuer: String },
    #[error(
        "the revocation list of {issuer} is older (an earlier thisUpdate) than the one in \
         use: refused, as it would undo revocations made since (restart to go back \
         deliberately)"
    )]
    Older { issuer: String },
    #[error("the revocation list of {issuer} has no issuer certificate of that name to check it")]
    NoIssuer { issuer: String },
}

/// One list, as a fetcher reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListSummary {
    /// The issuer's name, as text.
    pub issuer: String,
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// Revoked certificates listed.
    pub entries: usize,
    /// Whether it covers all of its issuer's certificates (not a delta or partitioned list).
    pub complete: bool,
}

/// How a fetched list compares with the list of the same issuer already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// No list of that issuer was held.
    New,
    /// A later thisUpdate than the one held (or the same time but other content: the
    /// CA issued again within the second, and the list it serves now is its latest).
    Newer,
    /// The same list: nothing to replace.
    Same,
    /// An earlier thisUpdate: taking it would undo revocations (a replayed or stale copy).
    Older,
}

/// What the lists and OCSP answers say of one certificate at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CertStatus {
    /// A current list of its issuer, with a valid signature, does not list it, or a
    /// current OCSP answer says good.
    Good,
    /// Neither is known.
    Unknown,
    /// A validly signed list of its issuer or OCSP answer says it is revoked at or before
    /// that time.
    Revoked,
}

struct Crl {
    crl: X509Crl,
    this_update: i64,
    next_update: Option<i64>,
    /// Whether the list covers every certificate of its issuer, so that not being on it
    /// means good: not a delta list, not limited by an issuingDistributionPoint (to CA or
    /// user certificates, some reasons, one partition), no critical extension we do not
    /// know (RFC 5280 §5.2). A list that is not complete still counts for what it revokes.
    complete: bool,
    /// expiredCertsOnCRL (RFC 5280 §5.2.7): revoked certificates stay on the list after
    /// they expire. Without it a CA may drop an expired certificate from its list, so the
    /// list does not give the status of an expired certificate.
    keeps_expired: bool,
    /// The last signature checks: issuer keys and the answers (a few, for a CA's key
    /// rollover). Every unseal asks again, and a list is signed by one key. (Keys are
    /// compared with `EVP_PKEY_eq`: encoding one to DER costs OpenSSL 3.0 more than the
    /// rest of the check.)
    checked: Mutex<Vec<(PKey<Public>, bool)>>,
    /// Set when a certificate's issuer of this list's name did not verify it: a damaged
    /// list, or one of another CA under the same name (reported by
    /// [`Revocation::unverified`]).
    failed_check: AtomicBool,
}

/// Signature answers remembered per list.
const CHECKED_KEYS: usize = 4;

impl Crl {
    fn signed_by(&self, key: &PKeyRef<Public>) -> bool {
        if let Some(answer) = self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| k.public_eq(key))
            .map(|(_, a)| *a)
        {
            return answer;
        }
        // Verified outside the lock: a large list takes a while.
        let answer = self.crl.verify(key).unwrap_or(false);
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.len() >= CHECKED_KEYS {
            checked.remove(0);
        }
        checked.push((key.to_owned(), answer));
        answer
    }
}

/// Clock skew allowed between a CA and this machine (as the official CLOCK_SKEW, 300 s):
/// a list issued "in the future" and a revocation dated a little ahead still count.
pub const CLOCK_SKEW: i64 = 300;

/// The revocation lists a receiver knows, and how it uses them. Cheap to clone; clones
/// share the lists, so that [`Revocation::replace`] (a long-running service re-reading
/// its files) reaches every holder at once. Each list is shared too, so that lists read
/// once can be combined ([`Revocation::combined`], [`Revocation::replace_with`]) without
/// being parsed or their signatures checked again.
#[derive(Clone, Default)]
pub struct Revocation {
    crls: Arc<RwLock<Arc<Vec<Arc<Crl>>>>>,
    policy: RevocationPolicy,
    /// The OCSP responder asked when nothing else gives a status.
    online: Option<Arc<Online>>,
}

impl fmt::Debug for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocation")
            .field("policy", &self.policy)
            .field("lists", &self.lists())
            .field(
                "ocsp",
                &self.online.as_ref().map(|o| o.responder().to_string()),
            )
            .finish()
    }
}

/// What a message brings for its signers' revocation checks: the outer SignerInfo's
/// `revocationValues` (OCSP answers and lists its sender fetched when sealing), and the
/// signing time, before which an answer must not have been produced (spec §1.6).
#[derive(Clone, Default)]
pub struct Evidence {
    ocsp: Vec<Vec<u8>>,
    crls: Vec<Arc<Crl>>,
    signed_at: Option<i64>,
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evidence")
            .field("ocsp", &self.ocsp.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

impl Evidence {
    /// The evidence of `values` for a message signed at `signed_at`. A list that cannot be
    /// read is left out: evidence only ever adds to what the receiver knows.
    pub fn new(values: &RevocationValues, signed_at: Option<i64>) -> Self {
        let crls = values
            .crls
            .iter()
            .filter_map(|der| read_all(std::slice::from_ref(der)).ok())
            .flatten()
            .collect();
        Self {
            ocsp: values.ocsp.clone(),
            crls,
            signed_at,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ocsp.is_empty() && self.crls.is_empty()
    }
}

/// An ASN.1 time (a list's update times, a revocation date) as unix seconds.
pub fn unix(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

impl Revocation {
    /// Reads lists from files' bytes: each a DER CRL or one or more PEM `X509 CRL` blocks.
    pub fn new(files: &[Vec<u8>], policy: RevocationPolicy) -> Result<Self, RevocationError> {
        Ok(Self {
            crls: Arc::new(RwLock::new(Arc::new(read_all(files)?))),
            policy,
            online: None,
        })
    }

    /// The lists of `parts` (read and checked before) under `policy`, shared with them.
    pub fn combined(parts: &[Revocation], policy: RevocationPolicy) -> Self {
        Self {
            crls: Arc::new(RwLock::new(Arc::new(Self::lists_of(parts)))),
            policy,
            online: None,
        }
    }

    /// The same, asking `online` about certificates whose status nothing else gives.
    pub fn with_online(mut self, online: Online) -> Self {
        self.online = Some(Arc::new(online));
        self
    }
    pub fn online(&self) -> Option<&Online> {
        self.online.as_deref()
    }

    /// Replaces the lists (for this value and every clone) with those of `files`, checked
    /// as [`Revocation::check_against`] does; on an error the lists in use stay.
    /// Returns how many lists are now in use.
    pub fn replace(
        &self,
        files: &[Vec<u8>],
        anchors: &[Certificate],
    ) -> Result<usize, RevocationError> {
        let fresh = Self::new(files, self.policy)?;
        fresh.check_against(anchors)?;
        Ok(self.replace_with(&[fresh]))
    }

    /// Replaces the lists (for this value and every clone) with those of `parts`, read
    /// and checked before. Returns how many lists are now in use.
    pub fn replace_with(&self, parts: &[Revocation]) -> usize {
        let lists = Self::lists_of(parts);
        let n = lists.len();
        *self.crls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(lists);
        n
    }

    fn lists_of(parts: &[Revocation]) -> Vec<Arc<Crl>> {
        parts
            .iter()
            .flat_map(|p| p.current().iter().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn current(&self) -> Arc<Vec<Arc<Crl>>> {
        self.crls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn policy(&self) -> RevocationPolicy {
        self.policy
    }
    /// How many lists were read.
    pub fn lists(&self) -> usize {
        self.current().len()
    }

    /// The status of `cert`, issued by `issuer`, at `at` (unix seconds), from the lists
    /// alone ([`Revocation::status_with`] asks the other sources too).
    pub fn status(&self, cert: &X509Ref, issuer: &X509Ref, at: i64) -> CertStatus {
        self.lists_status(cert, issuer, at, &[])
    }

    /// The status of `cert`, issued by `issuer`, at `at`: a revocation found anywhere
    /// revokes. The message's OCSP answers first (each checked as [`crate::ocsp::judge`]
    /// does, and not produced before the signing time), then the lists (the receiver's
    /// and the message's); only when neither gives good, the OCSP responder, if one is
    /// configured (a failure there leaves the status unknown).
    pub fn status_with(
        &self,
        cert: &X509Ref,
        issuer: &X509Ref,
        at: i64,
        evidence: &Evidence,
    ) -> CertStatus {
        let mut status = CertStatus::Unknown;
        for basic in &evidence.ocsp {
            let Ok(answer) = crate::ocsp::judge(basic, cert, issuer, at) else {
                continue;
            };
            if evidence
                .signed_at
                .is_some_and(|t| answer.produced_at < t - CLOCK_SKEW)
            {
                continue;
            }
            match answer.status_at(at) {
                CertStatus::Revoked => return CertStatus::Revoked,
                CertStatus::Good => status = CertStatus::Good,
                CertStatus::Unknown => {}
            }
        }
        match self.lists_status(cert, issuer, at, &evidence.crls) {
            CertStatus::Revoked => return CertStatus::Revoked,
            CertStatus::Good => status = CertStatus::Good,
            CertStatus::Unknown => {}
        }
        if status == CertStatus::Good {
            // What the message or a list vouches for does not undo a revocation this
            // receiver has already heard of from its responder (no question is sent).
            let heard = self
                .online
                .as_ref()
                .and_then(|o| o.remembered(cert, issuer, at));
            if heard.is_some_and(|a| a.status_at(at) == CertStatus::Revoked) {
                return CertStatus::Revoked;
            }
            return status;
        }
        match &self.online {
            Some(online) => online
                .answer(cert, issuer, at, crate::unix_now())
                .map_or(CertStatus::Unknown, |a| a.status_at(at)),
            None => CertStatus::Unknown,
        }
    }

    /// The status from the lists in use and `more`. A list counts only when `issuer`'s
    /// key signed it (indirect CRLs are not supported). Any such list that names the
    /// certificate revokes it (from its revocation date, or at once when that date cannot
    /// be read). Good needs a complete list ([`Crl::complete`]) that speaks for `at`
    /// (between its thisUpdate and nextUpdate; without nextUpdate it never goes stale)
    /// and, for a certificate expired at `at`, one that keeps expired certificates. Times
    /// allow [`CLOCK_SKEW`].
    fn lists_status(
        &self,
        cert: &X509Ref,
        issuer: &X509Ref,
        at: i64,
        more: &[Arc<Crl>],
    ) -> CertStatus {
        let Ok(issuer_key) = issuer.public_key() else {
            return CertStatus::Unknown;
        };
        let expired = unix(cert.not_after()).is_none_or(|not_after| at > not_after);
        let mut status = CertStatus::Unknown;
        for c in self.current().iter().chain(more) {
            if !same_name(c.crl.issuer_name(), cert.issuer_name()) {
                continue;
            }
            if !c.signed_by(&issuer_key) {
                c.failed_check.store(true, Ordering::Relaxed);
                continue;
            }
            // A list that names the certificate never vouches for it: a revocation dated
            // after `at` (`--at` in the past) did not exist then, but the list is no proof
            // of good standing either; nor is a removeFromCRL entry outside a delta list.
            let named = match c.crl.get_by_cert(&cert.to_owned()) {
                CrlStatus::Revoked(entry) => {
                    if unix(entry.revocation_date()).is_none_or(|d| d <= at + CLOCK_SKEW) {
                        return CertStatus::Revoked;
                    }
                    true
                }
                CrlStatus::RemoveFromCrl(_) => true,
                CrlStatus::NotRevoked => false,
            };
            let current = c.this_update <= at + CLOCK_SKEW && c.next_update.is_none_or(|n| at <= n);
            if c.complete && current && !named && (!expired || c.keeps_expired) {
                status = CertStatus::Good;
            }
        }
        status
    }

    /// Checks the lists issued under a trust anchor's name against that anchor's key, so
    /// that a damaged or forged list is reported when it is loaded rather than ignored at
    /// each use. Lists of other CAs (intermediates) are checked at use, against the issuer
    /// on the path.
    pub fn check_against(&self, anchors: &[Certificate]) -> Result<(), RevocationError> {
        check_signed(&self.current(), anchors)
    }

    /// The issuers (as text) of lists whose nextUpdate has passed at `at`: they still
    /// list revocations, but give no status for that time.
    pub fn stale_at(&self, at: i64) -> Vec<String> {
        self.issuers_where(|c| c.next_update.is_some_and(|n| n < at))
    }

    /// The earliest nextUpdate (unix seconds) of the lists in use: when the first of them
    /// goes stale unless its file is replaced.
    pub fn earliest_next_update(&self) -> Option<i64> {
        self.current().iter().filter_map(|c| c.next_update).min()
    }

    /// The issuer (as text) of a list of `candidate` older (an earlier thisUpdate) than a
    /// list of the same issuer in use here, if any: replacing the lists with it would bring
    /// back an earlier state, in which certificates revoked since are not yet revoked (a
    /// replayed download).
    pub fn older_than_in_use(&self, candidate: &Revocation) -> Option<String> {
        let in_use = self.current();
        candidate.current().iter().find_map(|new| {
            in_use
                .iter()
                .any(|old| {
                    old.this_update > new.this_update
                        && same_name(old.crl.issuer_name(), new.crl.issuer_name())
                })
                .then(|| name_text(new.crl.issuer_name()))
        })
    }

    /// Checks every list against the certificates of `issuers` (trust anchors or
    /// intermediate CAs) of its issuer's name: unlike [`Revocation::check_against`], a list
    /// none of them names is refused too (a fetcher takes only lists it can check).
    pub fn check_issued_by(&self, issuers: &[Certificate]) -> Result<(), RevocationError> {
        let lists = self.current();
        check_signed(&lists, issuers)?;
        match lists.iter().find(|c| {
            !issuers
                .iter()
                .filter_map(|i| i.x509())
                .any(|i| same_name(i.subject_name(), c.crl.issuer_name()))
        }) {
            Some(c) => Err(RevocationError::NoIssuer {
                issuer: name_text(c.crl.issuer_name()),
            }),
            None => Ok(()),
        }
    }

    /// The lists, as a fetcher reports them.
    pub fn summaries(&self) -> Vec<ListSummary> {
        self.current()
            .iter()
            .map(|c| ListSummary {
                issuer: name_text(c.crl.issuer_name()),
                this_update: c.this_update,
                next_update: c.next_update,
                entries: c.crl.get_revoked().map_or(0, |r| r.len()),
                complete: c.complete,
            })
            .collect()
    }

    /// For each list of `self` (in order), how it compares with the list of the same
    /// issuer in `held` (the latest one, if `held` has several).
    pub fn freshness_against(&self, held: &Revocation) -> Vec<Freshness> {
        let held = held.current();
        self.current()
            .iter()
            .map(|new| {
                let latest = held
                    .iter()
                    .filter(|old| same_name(old.crl.issuer_name(), new.crl.issuer_name()))
                    .max_by_key(|old| old.this_update);
                match latest {
                    None => Freshness::New,
                    Some(old) if old.this_update < new.this_update => Freshness::Newer,
                    Some(old) if old.this_update > new.this_update => Freshness::Older,
                    Some(old) if old.crl.to_der().ok() == new.crl.to_der().ok() => Freshness::Same,
                    Some(_) => Freshness::Newer,
                }
            })
            .collect()
    }

    /// The lists of `held` whose issuer has no list in `taken`, then those of `taken`:
    /// what a fetcher writes back (every issuer once, with the list it just took).
    pub fn merged(held: &Revocation, taken: &[Revocation]) -> Revocation {
        let taken = Self::lists_of(taken);
        let mut lists: Vec<Arc<Crl>> = held
            .current()
            .iter()
            .filter(|old| {
                !taken
                    .iter()
                    .any(|new| same_name(old.crl.issuer_name(), new.crl.issuer_name()))
            })
            .cloned()
            .collect();
        lists.extend(taken);
        Self {
            crls: Arc::new(RwLock::new(Arc::new(lists))),
            policy: held.policy,
            online: None,
        }
    }

    /// Every list as a PEM `X509 CRL` block, in order (what [`Revocation::new`] reads back).
    pub fn to_pem(&self) -> Result<Vec<u8>, RevocationError> {
        let mut out = Vec::new();
        for c in self.current().iter() {
            out.extend(c.crl.to_pem().map_err(|_| RevocationError::NotACrl)?);
        }
        Ok(out)
    }

    /// The issuers (as text) of lists that a certificate's issuer of the same name did not
    /// verify since they were read: damaged, or another CA's under the same name. Such a
    /// list is never used; the anchors' lists are checked when read, an intermediate's
    /// only at use.
    pub fn unverified(&self) -> Vec<String> {
        self.issuers_where(|c| c.failed_check.load(Ordering::Relaxed))
    }

    /// The issuers (as text) of lists that are not complete (delta, partitioned, or with
    /// an unknown critical extension): they revoke, but never say a certificate is good.
    pub fn incomplete(&self) -> Vec<String> {
        self.issuers_where(|c| !c.complete)
    }

    /// The issuers (as text) of the lists in use that `pick` picks, for messages.
    fn issuers_where(&self, pick: impl Fn(&Crl) -> bool) -> Vec<String> {
        self.current()
            .iter()
            .filter(|c| pick(c))
            .map(|c| name_text(c.crl.issuer_name()))
            .collect()
    }

    /// What the lists say of a sealer's own certificate path (its issuers from its chain
    /// and `anchors`): a sealer whose certificate they revoke must not sign, since every
    /// receiver holding the same lists reports `OUTER_CERTIFICATE_REVOKED`. A key-id signer
    /// (no certificate) is `Unknown`. The lists alone: OCSP is the responder's part.
    pub fn own_status(
        &self,
        signer: &crate::keys::SignerRef,
        anchors: &[Certificate],
        at: i64,
    ) -> CertStatus {
        if self.lists() == 0 {
            return CertStatus::Unknown;
        }
        match crate::trust::signer_path(signer, anchors) {
            Some(path) => self.own_path_status(&path, at),
            None => CertStatus::Unknown,
        }
    }

    /// [`Revocation::own_status`] of a path already built (leaf first).
    fn own_path_status(&self, path: &[Certificate], at: i64) -> CertStatus {
        // A certificate whose issuer is not at hand has no status from the lists.
        if self.lists() == 0 || path.len() < 2 {
            return CertStatus::Unknown;
        }
        worst_along(path, |cert, issuer| self.status(cert, issuer, at))
    }

    /// The sealer's rule for its own certificate path: refused when a certificate of it is
    /// outside its validity period at `at` or the lists revoke it
    /// ([`Revocation::own_status`]); then, with an OCSP responder, its answers, to embed
    /// in the message (the official sealer refuses to seal unless they say good). `None`
    /// without a responder.
    pub fn sealing_values(
        &self,
        signer: &crate::keys::SignerRef,
        anchors: &[Certificate],
        at: i64,
    ) -> Result<Option<RevocationValues>, crate::ocsp::SealingStatus> {
        // The path is built once (its issuers' signatures checked) for all three steps.
        let path = crate::trust::signer_path(signer, anchors);
        if let Some(path) = &path {
            path_validity(path, at)?;
            if self.own_path_status(path, at) == CertStatus::Revoked {
                return Err(crate::ocsp::SealingStatus::RevokedByLists);
            }
        }
        match (self.online(), path) {
            (Some(online), Some(path)) => online.values_for(&path, at).map(Some),
            (Some(_), None) => Err(crate::ocsp::SealingStatus::NoCertificate),
            (None, _) => Ok(None),
        }
    }

    /// The worst status along a verified path (leaf first, anchor last): every certificate
    /// but the anchor is checked against the next one as its issuer.
    pub fn path_status(&self, path: &[Certificate], at: i64, evidence: &Evidence) -> CertStatus {
        worst_along(path, |cert, issuer| {
            self.status_with(cert, issuer, at, evidence)
        })
    }
}

/// Whether every certificate of a sealer's own path (its certificate, then the issuers
/// found among its chain and the anchors) is within its validity period at `at`:
/// receivers judge them at the signing time, which is `at` for a message sealed now.
fn path_validity(path: &[Certificate], at: i64) -> Result<(), crate::ocsp::SealingStatus> {
    for cert in path {
        let outside = if at > cert.not_after() {
            Some((cert.not_after(), true))
        } else if at < cert.not_before() {
            Some((cert.not_before(), false))
        } else {
            None
        };
        if let Some((bound, expired)) = outside {
            return Err(crate::ocsp::SealingStatus::OutsideValidity {
                subject: cert.subject_string(),
                at: bound,
                expired,
            });
        }
    }
    Ok(())
}

/// The worst of `status` along `path` (leaf first): each certificate against the next as
/// its issuer; a certificate OpenSSL cannot read is unknown. Stops at the first revoked.
fn worst_along(
    path: &[Certificate],
    status: impl Fn(&X509Ref, &X509Ref) -> CertStatus,
) -> CertStatus {
    let mut worst = CertStatus::Good;
    for pair in path.windows(2) {
        let here = match (pair[0].x509(), pair[1].x509()) {
            (Some(cert), Some(issuer)) => status(cert, issuer),
            _ => CertStatus::Unknown,
        };
        worst = worst.max(here);
        if worst == CertStatus::Revoked {
            break;
        }
    }
    worst
}

/// A name for messages, `CN=…, O=…` (last RDN first, as certificates are shown here).
fn name_text(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join(", ")
}

fn check_signed(crls: &[Arc<Crl>], anchors: &[Certificate]) -> Result<(), RevocationError> {
    for c in crls {
        let named: Vec<&X509Ref> = anchors
            .iter()
            .filter_map(|a| a.x509())
            .filter(|a| same_name(a.subject_name(), c.crl.issuer_name()))
            .map(|a| a.as_ref())
            .collect();
        let signed = named
            .iter()
            .any(|a| a.public_key().is_ok_and(|k| c.signed_by(&k)));
        if !named.is_empty() && !signed {
            return Err(RevocationError::NotSignedByAnchor {
                issuer: name_text(c.crl.issuer_name()),
            });
        }
    }
    Ok(())
}

/// What a list's extensions say of its scope.
struct Scope {
    complete: bool,
    keeps_expired: bool,
}

impl Scope {
    /// Reads the extensions of a CertificateList's DER (RFC 5280 §5.1): the list's own
    /// (crlExtensions) and its entries' (crlEntryExtensions, §5.3).
    fn of(der: &[u8]) -> Result<Self, RevocationError> {
        // id-ce 2.5.29.x: the extensions a complete list may carry, and the others.
        const CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
        const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
        const ISSUER_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x12];
        const FRESHEST_CRL: &[u8] = &[0x55, 0x1d, 0x2e];
        const EXPIRED_CERTS_ON_CRL: &[u8] = &[0x55, 0x1d, 0x3c];
        const DELTA_CRL_INDICATOR: &[u8] = &[0x55, 0x1d, 0x1b];
        const ISSUING_DISTRIBUTION_POINT: &[u8] = &[0x55, 0x1d, 0x1c];
        const AUTHORITY_INFO_ACCESS: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x01];
        // Entry extensions understood here; certificateIssuer (2.5.29.29) is not: it makes
        // an indirect list, whose entries belong to other issuers.
        const REASON_CODE: &[u8] = &[0x55, 0x1d, 0x15];
        const HOLD_INSTRUCTION: &[u8] = &[0x55, 0x1d, 0x17];
        const INVALIDITY_DATE: &[u8] = &[0x55, 0x1d, 0x18];
        let bad = |_| RevocationError::NotACrl;
        let list = parse_exact(der).map_err(bad)?;
        let tbs = list.seq().map_err(bad)?.next(tag::SEQUENCE).map_err(bad)?;
        let mut scope = Scope {
            complete: true,
            keeps_expired: false,
        };
        // version, signature, issuer, thisUpdate; then nextUpdate, revokedCertificates and
        // [0] crlExtensions, each optional.
        let mut fields = tbs.seq().map_err(bad)?;
        fields.optional(tag::INTEGER).map_err(bad)?;
        fields.next(tag::SEQUENCE).map_err(bad)?;
        fields.next(tag::SEQUENCE).map_err(bad)?;
        fields.any().map_err(bad)?;
        while fields.has_more().map_err(bad)? {
            let field = fields.any().map_err(bad)?;
            if field.tag == tag::SEQUENCE {
                let mut entries = field.seq().map_err(bad)?;
                while entries.has_more().map_err(bad)? {
                    let mut entry = entries
                        .next(tag::SEQUENCE)
                        .map_err(bad)?
                        .seq()
                        .map_err(bad)?;
                    entry.next(tag::INTEGER).map_err(bad)?;
                    entry.any().map_err(bad)?;
                    if let Some(exts) = entry.optional(tag::SEQUENCE).map_err(bad)? {
                        for (oid, critical) in extensions(&exts).map_err(bad)? {
                            match oid {
                                REASON_CODE | HOLD_INSTRUCTION | INVALIDITY_DATE => {}
                                _ if critical => scope.complete = false,
                                _ => {}
                            }
                        }
                    }
                }
            } else if field.tag == tag::ctx_cons(0) {
                let exts = field.seq().map_err(bad)?.next(tag::SEQUENCE).map_err(bad)?;
                for (oid, critical) in extensions(&exts).map_err(bad)? {
                    match oid {
                        DELTA_CRL_INDICATOR | ISSUING_DISTRIBUTION_POINT => scope.complete = false,
                        EXPIRED_CERTS_ON_CRL => scope.keeps_expired = true,
                        CRL_NUMBER
                        | AUTHORITY_KEY_ID
                        | ISSUER_ALT_NAME
                        | FRESHEST_CRL
                        | AUTHORITY_INFO_ACCESS => {}
                        _ if critical => scope.complete = false,
                        _ => {}
                    }
                }
            }
        }
        Ok(scope)
    }
}

/// The (OID content, critical) pairs of an Extensions SEQUENCE.
fn extensions<'a>(
    seq: &crate::ber::slice::Tlv<'a>,
) -> Result<Vec<(&'a [u8], bool)>, crate::ber::BerError> {
    let mut out = Vec::new();
    let mut each = seq.seq()?;
    while each.has_more()? {
        let mut ext = each.next(tag::SEQUENCE)?.seq()?;
        let oid = ext.next(tag::OID)?.content;
        let critical = ext
            .optional(tag::BOOLEAN)?
            .is_some_and(|b| b.content.first().is_some_and(|&v| v != 0));
        out.push((oid, critical));
    }
    Ok(out)
}

fn read_all(files: &[Vec<u8>]) -> Result<Vec<Arc<Crl>>, RevocationError> {
    let mut crls = Vec::new();
    for bytes in files {
        for crl in parse(bytes)? {
            let this_update = unix(crl.last_update()).ok_or(RevocationError::BadTime)?;
            let next_update = match crl.next_update() {
                Some(t) => Some(unix(t).ok_or(RevocationError::BadTime)?),
                None => None,
            };
            let scope = Scope::of(&crl.to_der().map_err(|_| RevocationError::NotACrl)?)?;
            crls.push(Arc::new(Crl {
                crl,
                this_update,
                next_update,
                complete: scope.complete,
                keeps_expired: scope.keeps_expired,
                checked: Mutex::new(Vec::new()),
                failed_check: AtomicBool::new(false),
            }));
        }
    }
    Ok(crls)
}

fn parse(bytes: &[u8]) -> Result<Vec<X509Crl>, RevocationError> {
    if let Ok(crl) = X509Crl::from_der(bytes) {
        return Ok(vec![crl]);
    }
    // PEM: every `X509 CRL` block in the file, as a CA bundle might hold several.
    let text = std::str::from_utf8(bytes).map_err(|_| RevocationError::NotACrl)?;
    const BEGIN: &str = "-----BEGIN X509 CRL-----";
    const END: &str = "-----END X509 CRL-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let end = rest[start..].find(END).ok_or(RevocationError::NotACrl)? + start + END.len();
        let crl = X509Crl::from_pem(&rest.as_bytes()[start..end])
            .map_err(|_| RevocationError::NotACrl)?;
        out.push(crl);
        rest = &rest[end..];
    }
    if out.is_empty() {
        return Err(RevocationError::NotACrl);
    }
    Ok(out)
}
