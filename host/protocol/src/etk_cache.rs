//! The ETKs of recipients, looked up in ETKDepot, checked, chosen and cached.
//!
//! Sealing for a recipient needs its ETK for every message, and ETKDepot answers are
//! stable for hours, so lookups are cached per (type, zero-padded value, application id).
//! What the cache never does is hand out an ETK that must not be used:
//!
//! - every ETK passes the official checks (`Etk::validate`, spec §3.2) at the evaluation
//!   time before it is cached, and is refused on any finding: [`ProtocolError::EtkExpired`]
//!   when a certificate is outside its validity (the other findings then follow from it),
//!   [`ProtocolError::EtkInvalid`] otherwise;
//! - an entry expires at the earliest of its encryption certificates' `notAfter` and the
//!   fetch time plus a TTL (default one hour, so that a replaced ETK is seen), and is checked
//!   again for validity when served (and, with revocation lists, for revocation: the lists
//!   may have been replaced since);
//! - the choice rule of spec §4.1: without an application id, when ETKDepot answers
//!   several `MatchingEtk`, each is fetched separately, as the official connector does,
//!   by the entry's own identifier, and kept if its authentication certificate names the
//!   holder asked for (type and value, the certificate's value formatted as the lookup's:
//!   zero-padded, or its first digits; an SSIN is accepted for a NIHII query, a care
//!   provider's, as the official connector does, and for a NIHII11 query too, which it
//!   does not: `docs/deviations.md` row 23); with an application id, only the ETK of that application;
//!   with an empty one (`Some("")`), only the ETK without application id. An entry without
//!   application id carries an empty `ApplicationID` (etee's convention, `docs/platform.md`),
//!   so asking again with it answers exactly that ETK; an entry from a service that leaves
//!   the element out is asked for with an empty one too (re-asking without one would only
//!   repeat the list). The result is every ETK kept: one or more recipients.
//!
//! Lookups are keyed and sent as [`Identifier::normalized`] gives them: the canonical type
//! name (`cbe` → `CBE`, `HUB` → `EHP`), the value formatted as the connector does, and the
//! application id, an empty one kept apart from an absent one.
//!
//! Concurrent misses for the same key are not coalesced (each fetches; the last one
//! stored wins), which keeps the cache a plain map under a mutex held only briefly.

use crate::error::{ProtocolError, Result};
use crate::etkdepot::{EtkAnswer, EtkDepotClient};
use etee_formats::etk::Etk;
use etee_formats::identity::{canonical_type, lookup_identifier, Identity};
use etee_formats::revocation::RevocationPolicy;
use etee_formats::trust::TrustAnchors;
use etee_services::etkdepot::Identifier;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The default time an answer is kept.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries currently held (expired ones included until they are next asked for).
    pub entries: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    id_type: String,
    value: String,
    application_id: Option<String>,
}

struct Entry {
    etks: Vec<Etk>,
    expires_at: i64,
}

/// The most `MatchingEtk` entries one lookup follows: a holder has an ETK per
/// application, a handful; a longer list is refused (`Malformed`) rather than asked about
/// entry by entry.
pub const MAX_MATCHING: usize = 32;

/// The longest one lookup may take, `MatchingEtk` follow-ups and their retries included
/// (each exchange has its own timeout besides).
pub const DEFAULT_LOOKUP_DEADLINE: Duration = Duration::from_secs(120);

/// The most holders' entries kept: past it, expired entries go first, then those that
/// expire soonest.
pub const MAX_ENTRIES: usize = 10_000;

/// A caching, checking ETK lookup.
pub struct EtkCache {
    depot: EtkDepotClient,
    anchors: TrustAnchors,
    ttl: i64,
    lookup_deadline: Duration,
    entries: Mutex<HashMap<CacheKey, Entry>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for EtkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtkCache")
            .field("depot", &self.depot)
            .field("ttl", &self.ttl)
            .field("stats", &self.stats())
            .finish()
    }
}

impl EtkCache {
    /// A cache over `depot`, checking ETK chains against `anchors`, with [`DEFAULT_TTL`].
    pub fn new(depot: EtkDepotClient, anchors: TrustAnchors) -> Self {
        Self {
            depot,
            anchors,
            ttl: DEFAULT_TTL.as_secs() as i64,
            lookup_deadline: DEFAULT_LOOKUP_DEADLINE,
            entries: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The same with another TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// The same with another bound on one lookup ([`DEFAULT_LOOKUP_DEADLINE`]).
    pub fn with_lookup_deadline(mut self, deadline: Duration) -> Self {
        self.lookup_deadline = deadline;
        self
    }

    /// The usable ETKs of `id`, now.
    pub async fn get(&self, id: &Identifier) -> Result<Vec<Etk>> {
        self.get_at(id, etee_formats::unix_now()).await
    }

    /// The usable ETKs of `id` at `now` (unix seconds): validity and the entries' expiry
    /// are evaluated at that instant.
    pub async fn get_at(&self, id: &Identifier, now: i64) -> Result<Vec<Etk>> {
        let wanted = id
            .normalized()
            .map_err(|e| ProtocolError::InvalidRequest(e.to_string()))?;
        let key = CacheKey {
            id_type: wanted.id_type.clone(),
            value: wanted.value.clone(),
            application_id: wanted.application_id.clone(),
        };
        if let Some(etks) = self.cached(&key, now).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(etks);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let etks = tokio::time::timeout(self.lookup_deadline, self.fetch(&wanted, now))
            .await
            .map_err(|_| ProtocolError::Timeout {
                what: "ETK lookup",
                after: self.lookup_deadline,
            })??;
        let expires_at = etks
            .iter()
            .map(|e| e.encryption_cert().not_after())
            .fold(now.saturating_add(self.ttl), i64::min);
        let mut entries = self.lock();
        make_room(&mut entries, now);
        entries.insert(
            key,
            Entry {
                etks: etks.clone(),
                expires_at,
            },
        );
        Ok(etks)
    }

    /// Forgets what is cached for `id`.
    pub fn invalidate(&self, id: &Identifier) {
        if let Ok(n) = id.normalized() {
            self.lock().remove(&CacheKey {
                id_type: n.id_type,
                value: n.value,
                application_id: n.application_id,
            });
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live entry's ETKs, if still valid at `now`; a dead entry is removed.
    async fn cached(&self, key: &CacheKey, now: i64) -> Option<Vec<Etk>> {
        let (etks, expires_at) = {
            let entries = self.lock();
            let entry = entries.get(key)?;
            (entry.etks.clone(), entry.expires_at)
        };
        // Revocation lists may have been replaced since the fetch (a service re-reading
        // its files), an OCSP answer may have changed: a cached ETK is checked again.
        // Outside the lock: with an OCSP responder the check may wait for it.
        let anchors = self.anchors.clone();
        let checked = etks.clone();
        let live = now < expires_at
            && off_the_workers(&self.anchors, move || {
                let revocation = anchors.revocation().policy() != RevocationPolicy::None;
                checked.iter().all(|e| {
                    e.encryption_cert().valid_at(now) == etee_formats::cert::Validity::Valid
                        && e.authentication_cert().valid_at(now)
                            == etee_formats::cert::Validity::Valid
                        && (!revocation || e.chain_errors(&anchors, now).is_empty())
                })
            })
            .await
            .unwrap_or(false);
        if live {
            Some(etks)
        } else {
            self.lock().remove(key);
            None
        }
    }

    /// Looks `wanted` up and applies the checks and the choice rule.
    async fn fetch(&self, wanted: &Identifier, now: i64) -> Result<Vec<Etk>> {
        let name = describe(wanted);
        let candidates: Vec<Vec<u8>> = match self.depot.get_etk(wanted).await? {
            EtkAnswer::NotFound => return Err(ProtocolError::NotFound),
            EtkAnswer::Found(der) => vec![der],
            EtkAnswer::Matching(list) => {
                let chosen = choose_matching(wanted, &list);
                if chosen.len() > MAX_MATCHING {
                    return Err(ProtocolError::Malformed(format!(
                        "ETKDepot answered {} different matching ETKs for {name}; at most \
                         {MAX_MATCHING} are followed",
                        chosen.len()
                    )));
                }
                let mut ders = Vec::new();
                for entry in chosen {
                    let query = requery_identifier(&entry);
                    match self.depot.get_etk(&query).await {
                        Ok(EtkAnswer::Found(der)) => ders.push(der),
                        // A MatchingEtk that is gone on its own is skipped.
                        Ok(EtkAnswer::NotFound) => {}
                        Ok(EtkAnswer::Matching(_)) => {
                            tracing::warn!(
                                "ETK of {name}: ETKDepot answered {} with a list again; skipped",
                                describe(&query)
                            );
                        }
                        // The empty ApplicationID is our convention: a service that does
                        // not know it may refuse it. That entry is then skipped, as it
                        // would have been without it.
                        Err(e) if entry.application_id.is_none() => {
                            tracing::warn!(
                                "ETK of {name}: ETKDepot refused {}: {e}; skipped",
                                describe(&query)
                            );
                        }
                        Err(e) => return Err(e),
                    }
                }
                ders
            }
        };
        let mut kept: Vec<Etk> = Vec::new();
        let mut refusal = None;
        let mut seen = std::collections::HashSet::new();
        // The same ETK under two entries is checked and kept once.
        for der in candidates
            .into_iter()
            .filter(|der| seen.insert(der.clone()))
        {
            let (anchors, wanted) = (self.anchors.clone(), wanted.clone());
            let checked = off_the_workers(&self.anchors, move || {
                check_candidate(&anchors, &wanted, &der, now)
            })
            .await
            .unwrap_or_else(|| {
                Err(ProtocolError::EtkInvalid {
                    identifier: name.clone(),
                    problems: vec!["its check did not finish".into()],
                })
            });
            match checked {
                Ok(Some(etk)) => kept.push(etk),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("ETK of {name} refused: {e}");
                    refusal.get_or_insert(e);
                }
            }
        }
        if kept.is_empty() {
            return Err(refusal.unwrap_or(ProtocolError::NoValidEtk { identifier: name }));
        }
        Ok(kept)
    }
}

/// One candidate: parsed, checked; `None` when it is not the holder asked for.
fn check_candidate(
    anchors: &TrustAnchors,
    wanted: &Identifier,
    der: &[u8],
    now: i64,
) -> Result<Option<Etk>> {
    let name = describe(wanted);
    let etk = Etk::parse(der).map_err(|e| ProtocolError::EtkInvalid {
        identifier: name.clone(),
        problems: vec![format!("unreadable: {e}")],
    })?;
    if !holder_matches(wanted, &etk.identities()) {
        return Ok(None);
    }
    check_findings(&name, &etk.validate(anchors, now))?;
    Ok(Some(etk))
}

/// Runs `check` (a certificate check under `anchors`) here, or, when `anchors` may ask an
/// OCSP responder (a blocking network exchange, up to its timeouts), on the blocking
/// pool so that no async worker waits for it. `None` if the check panicked.
pub async fn off_the_workers<T: Send + 'static>(
    anchors: &TrustAnchors,
    check: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if anchors.revocation().online().is_none() {
        return Some(check());
    }
    tokio::task::spawn_blocking(check).await.ok()
}

/// `TYPE=value (app)` for messages.
fn describe(id: &Identifier) -> String {
    match id.application_id.as_deref() {
        Some("") => format!("{}={} (no application id)", id.id_type, id.value),
        Some(app) => format!("{}={} ({app})", id.id_type, id.value),
        None => format!("{}={}", id.id_type, id.value),
    }
}

/// Whether two identifier type names are the same type (canonical names: `cbe` is `CBE`,
/// `HUB` is `EHP`; unknown names compared case-insensitively).
fn same_type(a: &str, b: &str) -> bool {
    match (canonical_type(a), canonical_type(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.trim().eq_ignore_ascii_case(b.trim()),
    }
}

/// Whether an application id (absent meaning none) answers `wanted`: `None` any,
/// `Some("")` none, `Some(app)` exactly `app`.
fn application_matches(wanted: Option<&str>, has: Option<&str>) -> bool {
    match wanted {
        None => true,
        Some(app) => has.unwrap_or("") == app,
    }
}

/// The official findings of an ETK as a refusal, if there are any (pure).
pub fn check_findings(identifier: &str, findings: &[etee_formats::verdict::Error]) -> Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = findings.iter().map(|n| n.name().to_owned()).collect();
    if names
        .iter()
        .any(|n| n.ends_with("_CERT_EXPIRED") || n.ends_with("_CERT_NOT_YET_VALID"))
    {
        return Err(ProtocolError::EtkExpired {
            identifier: identifier.to_owned(),
        });
    }
    Err(ProtocolError::EtkInvalid {
        identifier: identifier.to_owned(),
        problems: names,
    })
}

/// Which `MatchingEtk` entries to fetch for `wanted` (pure): with an application id, the
/// entries of exactly that application (with an empty one, the entries without application
/// id); without, all of them. Each is given by the identifier of the entry of the wanted
/// type (or its first), as the entry has it; [`requery_identifier`] makes the lookup.
pub fn choose_matching(wanted: &Identifier, matching: &[Vec<Identifier>]) -> Vec<Identifier> {
    let mut seen = std::collections::HashSet::new();
    matching
        .iter()
        .filter_map(|ids| {
            let pick = ids
                .iter()
                .find(|i| same_type(&i.id_type, &wanted.id_type))
                .or_else(|| ids.first())?;
            application_matches(
                wanted.application_id.as_deref(),
                pick.application_id.as_deref(),
            )
            .then(|| pick.clone())
        })
        // An entry listed twice (the same identifier, however written) is asked once.
        .filter(|pick| {
            let id = pick.normalized().unwrap_or_else(|_| pick.clone());
            seen.insert((id.id_type, id.value, id.application_id))
        })
        .collect()
}

/// Keeps the cache within [`MAX_ENTRIES`] before one more entry goes in (pure but for
/// the map): expired entries first, then the one that expires soonest.
fn make_room(entries: &mut HashMap<CacheKey, Entry>, now: i64) {
    if entries.len() < MAX_ENTRIES {
        return;
    }
    entries.retain(|_, e| e.expires_at > now);
    while entries.len() >= MAX_ENTRIES {
        let Some(soonest) = entries
            .iter()
            .min_by_key(|(_, e)| e.expires_at)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        entries.remove(&soonest);
    }
}

/// The lookup for one `MatchingEtk` entry (pure): its identifier, with an empty application
/// id when it has none, so that it asks for exactly that ETK and not for the list again.
pub fn requery_identifier(entry: &Identifier) -> Identifier {
    Identifier {
        application_id: Some(entry.application_id.clone().unwrap_or_default()),
        ..entry.clone()
    }
}

/// Whether an ETK whose authentication certificate names `holder` belongs to `wanted`
/// (pure): same type (canonical names) and value, both formatted as an ETKDepot lookup
/// formats them (`lookup_identifier`: zero-padded, or the first digits of a value longer
/// than its type, as the depot registers a DN's value, so that the ETK the depot found
/// under a DN value such as the official vectors' 9-digit `NIHII=987456321` is kept), or an
/// SSIN for a `NIHII` or `NIHII11` query (a care provider's certificates name the person;
/// the official connector accepts it for `NIHII` only, `docs/deviations.md` row 23; an
/// institution's `NIHII-*` types never do, so an SSIN is no answer to them), and the
/// application id asked for: any when none is, none when it is empty, else exactly that
/// one.
pub fn holder_matches(wanted: &Identifier, holder: &[Identity]) -> bool {
    let wanted_type = canonical_type(&wanted.id_type).unwrap_or(&wanted.id_type);
    let wanted_id = lookup_identifier(&wanted.id_type, &wanted.value).ok();
    holder.iter().any(|h| {
        let same_id =
            wanted_id.is_some() && lookup_identifier(&h.id_type, &h.value).ok() == wanted_id;
        let ssin_for_nihii =
            matches!(wanted_type, "NIHII" | "NIHII11") && same_type(&h.id_type, "SSIN");
        let same_app = application_matches(
            wanted.application_id.as_deref(),
            h.application_id.as_deref(),
        );
        (same_id || ssin_for_nihii) && same_app
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_formats::verdict::Error as Finding;

    #[test]
    fn a_full_cache_drops_the_expired_then_the_soonest_to_expire() {
        let key = |i: usize| CacheKey {
            id_type: "CBE".into(),
            value: format!("{i:010}"),
            application_id: None,
        };
        let entry = |expires_at| Entry {
            etks: Vec::new(),
            expires_at,
        };
        let mut entries = HashMap::new();
        for i in 0..MAX_ENTRIES {
            // Ten expired at 1 000, the rest later, the soonest of them at 1 010.
            let expires_at = if i < 10 { 990 } else { 1_010 + i as i64 };
            entries.insert(key(i), entry(expires_at));
        }
        make_room(&mut entries, 1_000);
        assert_eq!(entries.len(), MAX_ENTRIES - 10, "the expired ones went");
        assert!((10..MAX_ENTRIES).all(|i| entries.contains_key(&key(i))));
        for i in 0..10 {
            entries.insert(key(MAX_ENTRIES + i), entry(5_000_000));
        }
        make_room(&mut entries, 1_000);
        assert_eq!(entries.len(), MAX_ENTRIES - 1, "room for one");
        assert!(
            !entries.contains_key(&key(10)),
            "the soonest to expire went"
        );
        assert!(entries.contains_key(&key(11)));
        // Below the bound nothing goes, expired or not.
        let mut few = HashMap::from([(key(0), entry(0))]);
        make_room(&mut few, 1_000);
        assert_eq!(few.len(), 1);
    }

    #[test]
    fn an_entry_listed_twice_is_chosen_once() {
        let wanted = id("NIHII-PHARMACY", "27150201", None);
        let list = vec![
            vec![id("NIHII-PHARMACY", "27150201", None)],
            vec![id("NIHII-PHARMACY", "00027150201", None)],
            vec![id("NIHII-PHARMACY", "27150201", Some("APP"))],
            vec![id("NIHII-PHARMACY", "27150201", None)],
        ];
        let chosen = choose_matching(&wanted, &list);
        assert_eq!(chosen.len(), 2, "{chosen:?}");
    }

    fn id(t: &str, v: &str, app: Option<&str>) -> Identifier {
        Identifier::new(t, v, app)
    }
    fn holder(t: &str, v: &str, app: Option<&str>) -> Identity {
        Identity {
            id_type: t.into(),
            value: v.into(),
            application_id: app.map(Into::into),
        }
    }

    #[test]
    fn holders() {
        let cbe = id("CBE", "0406798006", None);
        assert!(holder_matches(
            &cbe,
            &[holder("CBE", "406798006", Some("A"))]
        ));
        assert!(!holder_matches(&cbe, &[holder("CBE", "0809394427", None)]));
        assert!(!holder_matches(&cbe, &[holder("EHP", "0406798006", None)]));
        let with_app = id("CBE", "0406798006", Some("A"));
        assert!(holder_matches(
            &with_app,
            &[holder("CBE", "0406798006", Some("A"))]
        ));
        assert!(!holder_matches(
            &with_app,
            &[holder("CBE", "0406798006", Some("B"))]
        ));
        assert!(!holder_matches(
            &with_app,
            &[holder("CBE", "0406798006", None)]
        ));
        let nihii = id("NIHII11", "10203040506", None);
        assert!(holder_matches(
            &nihii,
            &[holder("SSIN", "85010112345", None)]
        ));
        assert!(holder_matches(
            &id("nihii", "10203040", None),
            &[holder("SSIN", "85010112345", None)]
        ));
        assert!(!holder_matches(
            &cbe,
            &[holder("SSIN", "85010112345", None)]
        ));
        // An institution's number is never answered by a person's certificate.
        for institution in ["NIHII-PHARMACY", "NIHII-HOSPITAL", "nihii-labo"] {
            assert!(
                !holder_matches(
                    &id(institution, "27150201", None),
                    &[holder("SSIN", "85010112345", None)]
                ),
                "{institution}"
            );
        }
        assert!(!holder_matches(&cbe, &[]));
    }

    /// A DN value longer than its type (the official vectors' `NIHII=987456321`, 9 digits
    /// for an 8-digit type) is read as ETKDepot reads it: its first digits, the value the
    /// lookup asks for. So the ETK the depot found under it is the holder asked for.
    #[test]
    fn a_dn_value_longer_than_its_type_is_read_as_lookups_read_it() {
        let dn = [holder("NIHII", "987456321", None)];
        for asked in ["987456321", "98745632"] {
            let wanted = id("NIHII", asked, None).normalized().unwrap();
            assert_eq!(wanted.value, "98745632");
            assert!(holder_matches(&wanted, &dn), "{asked}");
        }
        assert!(!holder_matches(&id("NIHII", "98745633", None), &dn));
        // A NIHII-11 written as NIHII in the DN answers its first 8 digits.
        assert!(holder_matches(
            &id("NIHII", "10203040", None),
            &[holder("NIHII", "10203040506", None)]
        ));
    }

    #[test]
    fn matching_choice() {
        let m = vec![
            vec![id("CBE", "0406798006", Some("APP-A"))],
            vec![
                id("EHP", "1", Some("APP-B")),
                id("CBE", "0406798006", Some("APP-B")),
            ],
            vec![],
        ];
        assert_eq!(
            choose_matching(&id("CBE", "0406798006", None), &m),
            vec![
                id("CBE", "0406798006", Some("APP-A")),
                id("CBE", "0406798006", Some("APP-B"))
            ]
        );
        assert_eq!(
            choose_matching(&id("CBE", "0406798006", Some("APP-B")), &m),
            vec![id("CBE", "0406798006", Some("APP-B"))]
        );
        assert!(choose_matching(&id("CBE", "0406798006", Some("APP-C")), &m).is_empty());
    }

    #[test]
    fn holders_without_application_id_and_canonical_types() {
        let default = id("CBE", "0406798006", Some(""));
        assert!(holder_matches(
            &default,
            &[holder("CBE", "0406798006", None)]
        ));
        assert!(!holder_matches(
            &default,
            &[holder("CBE", "0406798006", Some("APP-A"))]
        ));
        // Types by their canonical names: HUB is EHP, any case.
        let ehp = id("EHP", "1990001916", None);
        assert!(holder_matches(&ehp, &[holder("HUB", "1990001916", None)]));
        let cbe = id("CBE", "0406798006", None);
        assert!(holder_matches(&cbe, &[holder("cbe", "406798006", None)]));
    }

    #[test]
    fn matching_entries_without_application_id() {
        // As etee's ETKDepot answers: the default ETK's identifiers have an empty
        // ApplicationID; as another service might: none at all.
        let ours = vec![
            vec![id("CBE", "0406798006", Some(""))],
            vec![id("CBE", "0406798006", Some("APP-A"))],
        ];
        let theirs = vec![
            vec![id("CBE", "0406798006", None)],
            vec![id("CBE", "0406798006", Some("APP-A"))],
        ];
        for m in [&ours, &theirs] {
            let all = choose_matching(&id("cbe", "0406798006", None), m);
            assert_eq!(all.len(), 2);
            // Every entry is asked for by itself: the default one with an empty
            // application id, never with none (that would give the list again).
            let queries: Vec<_> = all.iter().map(requery_identifier).collect();
            assert_eq!(
                queries,
                vec![
                    id("CBE", "0406798006", Some("")),
                    id("CBE", "0406798006", Some("APP-A"))
                ]
            );
            assert_eq!(
                choose_matching(&id("CBE", "0406798006", Some("")), m)
                    .iter()
                    .map(requery_identifier)
                    .collect::<Vec<_>>(),
                vec![id("CBE", "0406798006", Some(""))]
            );
            assert_eq!(
                choose_matching(&id("CBE", "0406798006", Some("APP-A")), m),
                vec![id("CBE", "0406798006", Some("APP-A"))]
            );
        }
        // The entry of the wanted type is picked by canonical name (HUB is EHP).
        let m = vec![vec![
            id("CBE", "0406798006", Some("X")),
            id("EHP", "1990001916", Some("X")),
        ]];
        assert_eq!(
            choose_matching(&id("HUB", "1990001916", None), &m),
            vec![id("EHP", "1990001916", Some("X"))]
        );
    }

    #[test]
    fn findings() {
        assert!(check_findings("x", &[]).is_ok());
        assert!(matches!(
            check_findings(
                "x",
                &[
                    Finding::ETK_ENCRYPTION_CERT_EXPIRED,
                    Finding::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN
                ]
            ),
            Err(ProtocolError::EtkExpired { .. })
        ));
        match check_findings("x", &[Finding::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN]) {
            Err(ProtocolError::EtkInvalid { problems, .. }) => {
                assert_eq!(problems, ["ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"])
            }
            other => panic!("{other:?}"),
        }
    }
}
