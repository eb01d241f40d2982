//! ETKDepot: which ETKs answer a search, and the SOAP and REST answers built from them.
//!
//! The lookup rules (spec §3.4, §4.1):
//! - each search identifier is normalised first: the canonical type name (`cbe` → `CBE`,
//!   `HUB` → `EHP`) and the value formatted as the official connector does (zero-padded,
//!   or cut to the type's length); an unknown type or an impossible value is the caller's
//!   error; registered ETKs are stored under their DN's identifiers formatted the same way
//!   ([`depot_identifier`]), so that the DN's own value finds them;
//! - an identifier matches every ETK whose holder DN carries it (any of the DN's
//!   identifiers), or that was published under it besides ([`register_with_extra`]: a
//!   person's ETK under a doctor's NIHII); without an application id (no `ApplicationID`), ETKs of every
//!   application id of the holder match, the one without an application id included; with
//!   an *empty* application id (`<ApplicationID/>`, `applicationIdentifier=`), only the
//!   holder's ETK(s) without one (etee's own convention, `docs/platform.md`); with an
//!   application id, only that application's; several identifiers in one request add up
//!   their matches;
//! - only ETKs valid now are answered (both certificates within their validity), and of
//!   several ETKs of one holder (its DN's identifiers, not those it was published under
//!   besides) and application id (a renewed ETK beside the old one), the newest;
//! - one ETK left: `ETK`; several (several application ids): `MatchingEtk`, one per ETK,
//!   with its full identifiers, an ETK without application id carrying an empty
//!   `ApplicationID`, so that asking again with any of its identifiers answers exactly that
//!   ETK; none: an `Error` with code [`NOT_FOUND`] (SOAP) or 404 (REST).

use etee_formats::identity::{lookup_identifier, Identity};
use etee_services::etkdepot::rest::EtkJson;
use etee_services::etkdepot::{
    EtkDepotError, EtkResult, GetEtkRequest, GetEtkResponse, Identifier, MatchingEtk, Status,
};
use etee_store::{EtkRecord, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The `Error/Code` of a search without a valid ETK (the real service's codes are not
/// known, spec §10).
pub const NOT_FOUND: &str = "ETK_NOT_FOUND";

/// Why a search could not be answered with ETKs.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The criteria are not ETKDepot criteria (unknown type, impossible value).
    #[error("unknown search criteria: {0}")]
    Criteria(String),
    #[error(transparent)]
    Store(#[from] etee_store::Error),
}

/// The ETKs answering `criteria` at time `now`: at most one per holder and application id
/// (the newest), newest first.
pub fn lookup(
    store: &dyn Store,
    criteria: &[Identifier],
    now: i64,
) -> Result<Vec<EtkRecord>, LookupError> {
    if criteria.is_empty() {
        return Err(LookupError::Criteria("no identifier".into()));
    }
    // Each is a store query; a request read from XML is already bounded, this bounds any.
    if criteria.len() > etee_services::etkdepot::MAX_IDENTIFIERS {
        return Err(LookupError::Criteria(
            etee_services::etkdepot::too_many_identifiers(criteria.len()),
        ));
    }
    let mut found: Vec<(EtkRecord, Holder)> = Vec::new();
    for criterion in criteria {
        // The reason alone: the answer (fault or problem) says what kind of error it is.
        let c = criterion.normalized().map_err(|e| {
            LookupError::Criteria(match e {
                etee_services::Error::Content(why) => why,
                e => e.to_string(),
            })
        })?;
        for record in store.find_etks(&c.id_type, &c.value, c.application_id.as_deref())? {
            // The record's window (the encryption certificate's) first: it spares reading
            // ETKs long expired.
            let maybe_valid = record.not_before <= now && now < record.not_after;
            if !maybe_valid || found.iter().any(|(f, _)| f.digest == record.digest) {
                continue;
            }
            if let Some(holder) = valid_holder(&record, now) {
                found.push((record, holder));
            }
        }
    }
    // Newest first, then keep the first of each holder and application id. Criteria naming
    // two holders thus find two ETKs (MatchingEtk over SOAP: the client chooses), not the
    // newer of the two.
    found.sort_by_key(|(r, _)| std::cmp::Reverse(r.not_before));
    let mut seen: Vec<Holder> = Vec::new();
    let mut kept = Vec::with_capacity(found.len());
    for (record, holder) in found {
        if !seen.contains(&holder) {
            seen.push(holder);
            kept.push(record);
        }
    }
    Ok(kept)
}

/// Who an ETK belongs to, for keeping one per holder: the identifiers of its DN as the
/// depot stores them (type and value, sorted), and its application id.
type Holder = (Vec<(String, String)>, Option<String>);

/// The holder of the ETK of `record` if that ETK is valid at `now`, else `None`; both read
/// from the ETK itself, as the record's fields do not tell them:
/// - its validity is the intersection of its encryption and authentication certificates'
///   (the official check refuses an ETK whose authentication certificate has expired,
///   ETK_AUTHENTICATION_CERT_EXPIRED), while the record keeps the encryption
///   certificate's;
/// - its holder is its DN's identifiers only: the record's also holds those it was
///   published under besides (`--also`), which find it but must not make a renewal
///   registered without them another holder (two ETKs answered for one person, the old
///   one included).
///
/// A stored ETK that cannot be read (it was read at registration) is left out, logged.
fn valid_holder(record: &EtkRecord, now: i64) -> Option<Holder> {
    let judged = judged(record)?;
    (judged.not_before <= now && now < judged.not_after).then(|| judged.holder.clone())
}

/// What a stored ETK says of itself for lookups: the window of both its certificates and
/// its holder.
struct Judged {
    not_before: i64,
    not_after: i64,
    holder: Holder,
}

/// ETKs judged, at most this many kept (the map is cleared when full): reading an ETK at
/// every lookup cost a tenth of the lookup rate, and a depot's answers come back to the
/// same ETKs.
const JUDGED_CACHE_LIMIT: usize = 4096;

/// [`Judged`] for the ETK of `record`, kept by the SHA-256 of its bytes (an ETK's bytes
/// say all of it, whatever the record's other fields); `None` for an unreadable one,
/// logged each time.
fn judged(record: &EtkRecord) -> Option<Arc<Judged>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Arc<Judged>>>> = OnceLock::new();
    let key = openssl::sha::sha256(&record.etk);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(j) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Some(j);
    }
    let etk = match etee_formats::etk::Etk::parse(&record.etk) {
        Ok(etk) => etk,
        Err(e) => {
            tracing::warn!(
                "ETKDepot: stored ETK {} is unreadable, not answered: {e}",
                hex::encode(record.digest)
            );
            return None;
        }
    };
    let (enc, auth) = (etk.encryption_cert(), etk.authentication_cert());
    let own: Vec<etee_store::Identifier> = etk.identities().iter().map(depot_identifier).collect();
    let mut holder: Vec<(String, String)> = own
        .iter()
        .map(|i| (i.id_type.clone(), i.value.clone()))
        .collect();
    holder.sort_unstable();
    let application = own.first().and_then(|i| i.application_id.clone());
    let judged = Arc::new(Judged {
        not_before: enc.not_before().max(auth.not_before()),
        not_after: enc.not_after().min(auth.not_after()),
        holder: (holder, application),
    });
    if let Ok(mut c) = cache.lock() {
        if c.len() >= JUDGED_CACHE_LIMIT {
            c.clear();
        }
        c.insert(key, judged.clone());
    }
    Some(judged)
}

/// The identifiers of an ETK as an answer gives them: an ETK without application id has an
/// empty one, which asks for exactly that ETK when sent back (an absent one would ask for
/// all the holder's ETKs again).
fn identifiers(record: &EtkRecord) -> Vec<Identifier> {
    record
        .identifiers
        .iter()
        .map(|i| {
            Identifier::new(
                &i.id_type,
                &i.value,
                Some(i.application_id.as_deref().unwrap_or("")),
            )
        })
        .collect()
}

/// The SOAP answer to `request` (a lookup error other than bad criteria is the caller's
/// to turn into a fault).
pub fn get_etk(
    store: &dyn Store,
    request: &GetEtkRequest,
    now: i64,
) -> Result<GetEtkResponse, LookupError> {
    let found = lookup(store, &request.identifiers, now)?;
    let result = match found.as_slice() {
        [] => EtkResult::Errors(vec![EtkDepotError {
            code: NOT_FOUND.into(),
            message: "There exists no ETK matching your search criteria".into(),
        }]),
        [one] => EtkResult::Etk(one.etk.clone()),
        several => EtkResult::MatchingEtk(
            several
                .iter()
                .map(|r| MatchingEtk {
                    identifiers: identifiers(r),
                })
                .collect(),
        ),
    };
    Ok(GetEtkResponse {
        id: Some(response_id()),
        status: Status::ok(),
        given_search_criteria: Some(request.identifiers.clone()),
        result,
    })
}

/// The window in which lookups answer the ETK of `record`: where both its certificates
/// are valid (the record's dates are the encryption certificate's alone). `None` for a
/// stored ETK that cannot be read, which is never answered.
pub fn answered_window(record: &EtkRecord) -> Option<(i64, i64)> {
    judged(record).map(|j| (j.not_before, j.not_after))
}

/// The REST answer: every ETK found (an empty list is the caller's 404).
pub fn etks_json(found: &[EtkRecord]) -> Vec<EtkJson> {
    found
        .iter()
        .map(|r| {
            let (not_before, not_after) = answered_window(r).unwrap_or((r.not_before, r.not_after));
            EtkJson {
                identifiers: identifiers(r).iter().map(Into::into).collect(),
                etk: r.etk.clone(),
                not_before,
                not_after,
            }
        })
        .collect()
}

/// A fresh `Id` for a response.
pub fn response_id() -> String {
    let mut id = [0u8; 12];
    let _ = openssl::rand::rand_bytes(&mut id);
    format!("etee-{}", hex::encode(id))
}

/// An identifier of an ETK's holder as the depot stores it: formatted exactly as a lookup
/// formats its criterion (the canonical type name, `HUB` being `EHP`; the value zero-padded,
/// or its first digits when it has more than its type allows, as the official connector
/// does), so that a lookup with the DN's own value finds it. A type the depot does not know
/// is kept as written (no lookup can name it).
pub fn depot_identifier(identity: &Identity) -> etee_store::Identifier {
    let (id_type, value) = match lookup_identifier(&identity.id_type, &identity.value) {
        Ok((t, v)) => (t.to_owned(), v),
        Err(_) => (identity.id_type.clone(), identity.value.clone()),
    };
    etee_store::Identifier::new(&id_type, &value, identity.application_id.as_deref())
}

/// Registers `etk` in the depot under every identifier of its holder's DN, after checking
/// it as the official checker does (spec §3.2) against `anchors` at `now`. Returns the
/// stored record.
pub fn register(
    store: &dyn Store,
    etk: &[u8],
    anchors: &etee_formats::trust::TrustAnchors,
    now: i64,
) -> Result<EtkRecord, RegisterError> {
    register_with_extra(store, etk, anchors, now, &[]).map(|r| r.record)
}

/// The types an ETK may be published under besides its DN's identifiers
/// ([`register_with_extra`]): a doctor's numbers, which the real depot answers with the
/// doctor's own ETK (a natural person's, registered under the SSIN), and for which our
/// client accepts an ETK whose certificate names an SSIN (the official connector for
/// `NIHII` only, spec §4.1; `docs/deviations.md` row 23).
pub const EXTRA_TYPES: [&str; 2] = ["NIHII", "NIHII11"];

/// What a registration left in the depot.
#[derive(Clone, Debug)]
pub struct Registered {
    /// The ETK's record as stored: its DN's identifiers, then the extra ones.
    pub record: EtkRecord,
    /// Whether it was stored by this call (else it was already, as it is).
    pub new: bool,
    /// The identifiers it is published under besides its DN's.
    pub extra: Vec<etee_store::Identifier>,
}

/// [`register`], publishing the ETK also under the identifiers `also` (`(type, value)`):
/// allowed only for a natural person's ETK (its holder's DN names an SSIN) and only of the
/// [`EXTRA_TYPES`], each value formatted as lookups format it and given the ETK's own
/// application id, if it has one. An extra identifier that already finds another holder's
/// ETK is refused (one number, one holder).
///
/// The store keeps an ETK's identifiers as first registered: registering it again with
/// extra identifiers it does not have is refused ([`RegisterError::AlreadyRegistered`]);
/// again with fewer, the answer is what is stored.
pub fn register_with_extra(
    store: &dyn Store,
    etk: &[u8],
    anchors: &etee_formats::trust::TrustAnchors,
    now: i64,
    also: &[(String, String)],
) -> Result<Registered, RegisterError> {
    register_as(store, etk, anchors, now, also, None)
}

/// [`register_with_extra`] by an administrator, `actor` (e.g. `admin uid 0`): a newly
/// stored ETK and its `etkdepot.register` audit event (naming its identifiers, the extra
/// ones after `also`) are written in one transaction, or neither; an ETK stored already
/// adds no event.
pub fn register_audited(
    store: &dyn Store,
    etk: &[u8],
    anchors: &etee_formats::trust::TrustAnchors,
    now: i64,
    also: &[(String, String)],
    actor: &str,
) -> Result<Registered, RegisterError> {
    register_as(store, etk, anchors, now, also, Some(actor))
}

/// How an audit event names a registered ETK's identifiers: the DN's, then the extra ones
/// after `also`.
pub fn registration_detail(
    own: &[etee_store::Identifier],
    extra: &[etee_store::Identifier],
) -> String {
    if extra.is_empty() {
        describe(own)
    } else {
        format!("{}; also {}", describe(own), describe(extra))
    }
}

/// Removes the ETK of `digest` (the SHA-256 of its bytes) by an administrator, `actor`:
/// the removal and its `etkdepot.remove` audit event (naming every identifier it was
/// published under) in one transaction. The removed record, or `None` when it was not
/// published.
pub fn remove_audited(
    store: &dyn Store,
    digest: &[u8; 32],
    now: i64,
    actor: &str,
) -> Result<Option<EtkRecord>, etee_store::Error> {
    let event = |record: &EtkRecord| {
        crate::audit::event(
            now,
            "etkdepot.remove",
            actor,
            hex::encode(digest),
            "done",
            Some(describe(&record.identifiers)),
        )
    };
    Ok(store
        .remove_etk_with_event(digest, &event)?
        .map(|(record, sequence)| {
            crate::audit::log(sequence, &event(&record));
            record
        }))
}

fn register_as(
    store: &dyn Store,
    etk: &[u8],
    anchors: &etee_formats::trust::TrustAnchors,
    now: i64,
    also: &[(String, String)],
    actor: Option<&str>,
) -> Result<Registered, RegisterError> {
    let parsed =
        etee_formats::etk::Etk::parse(etk).map_err(|e| RegisterError::Invalid(e.to_string()))?;
    let problems = parsed.validate(anchors, now);
    if !problems.is_empty() {
        let names: Vec<String> = problems.iter().map(|n| format!("{n:?}")).collect();
        return Err(RegisterError::Invalid(names.join(", ")));
    }
    let identities = parsed.identities();
    if identities.is_empty() {
        return Err(RegisterError::Invalid(
            "the holder's DN carries no ETKDepot identifier".into(),
        ));
    }
    // Stored as lookups format their criteria (`HUB` is `EHP`, values padded or cut).
    let own: Vec<etee_store::Identifier> = identities.iter().map(depot_identifier).collect();
    let extra = extra_identifiers(&own, also)?;
    let enc = parsed.encryption_cert();
    let record = EtkRecord {
        digest: openssl::sha::sha256(parsed.der()),
        identifiers: own.iter().chain(&extra).cloned().collect(),
        etk: parsed.der().to_vec(),
        not_before: enc.not_before(),
        not_after: enc.not_after(),
        registered_at: now,
    };
    let stored_before = |i: &etee_store::Identifier| {
        store
            .find_etks(&i.id_type, &i.value, None)
            .map(|found| found.iter().any(|r| r.digest == record.digest))
    };
    let mut already = match own.first() {
        Some(i) => stored_before(i)?,
        None => false,
    };
    // The check of `extra_identifiers` again, in the transaction that stores the ETK: an
    // ETK of another holder registered meanwhile under one of its numbers refuses it.
    let holder: Vec<etee_store::Identifier> = own
        .iter()
        .filter(|i| i.id_type == "SSIN")
        .cloned()
        .collect();
    let taken = |e: etee_store::Error| match e {
        etee_store::Error::IdentifierTaken(taken) => RegisterError::Extra(format!(
            "{}={}: it already finds the ETK of another holder ({})",
            taken.identifier.id_type,
            taken.identifier.value,
            describe(&taken.by)
        )),
        e => RegisterError::Store(e),
    };
    let change = etee_store::Change::PutEtkExclusive {
        record: &record,
        exclusive: &extra,
        holder: &holder,
    };
    match actor {
        None => {
            store.apply(change).map_err(taken)?;
        }
        Some(actor) => {
            let event = crate::audit::event(
                now,
                "etkdepot.register",
                actor,
                hex::encode(record.digest),
                "done",
                Some(registration_detail(&own, &extra)),
            );
            match store.apply_with_event(change, &event).map_err(taken)? {
                Some(sequence) => crate::audit::log(sequence, &event),
                // Stored meanwhile by a registration of the same ETK, whose event it is.
                None => already = true,
            }
        }
    }
    // An ETK already stored is left as it is: answer with what is stored.
    let stored = own
        .iter()
        .map(|i| store.find_etks(&i.id_type, &i.value, None))
        .find_map(|found| match found {
            Ok(found) => found
                .into_iter()
                .find(|r| r.digest == record.digest)
                .map(Ok),
            Err(e) => Some(Err(e)),
        })
        .transpose()?;
    let Some(stored) = stored else {
        return Err(RegisterError::AlreadyRegistered(
            "under other identifiers (an older registration)".into(),
        ));
    };
    if !record
        .identifiers
        .iter()
        .all(|i| stored.identifiers.contains(i))
    {
        return Err(RegisterError::AlreadyRegistered(format!(
            "under {}",
            describe(&stored.identifiers)
        )));
    }
    let extra = stored
        .identifiers
        .iter()
        .filter(|i| !own.contains(i))
        .cloned()
        .collect();
    Ok(Registered {
        record: stored,
        new: !already,
        extra,
    })
}

/// `TYPE=VALUE (APP), …` for messages.
pub fn describe(identifiers: &[etee_store::Identifier]) -> String {
    identifiers
        .iter()
        .map(|i| match &i.application_id {
            Some(a) => format!("{}={} ({a})", i.id_type, i.value),
            None => format!("{}={}", i.id_type, i.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The extra identifiers `also` of an ETK whose DN's identifiers are `own`, as the depot
/// stores them, or why their form is refused (whether another holder has one is the
/// store's check, as it stores the ETK).
fn extra_identifiers(
    own: &[etee_store::Identifier],
    also: &[(String, String)],
) -> Result<Vec<etee_store::Identifier>, RegisterError> {
    let application_id = own.first().and_then(|i| i.application_id.as_deref());
    let mut extra: Vec<etee_store::Identifier> = Vec::new();
    for (id_type, value) in also {
        let named = format!("{}={}", id_type.trim(), value.trim());
        let refused = |why: String| RegisterError::Extra(format!("{named}: {why}"));
        let Some(id_type) =
            etee_formats::identity::canonical_type(id_type).filter(|t| EXTRA_TYPES.contains(t))
        else {
            return Err(refused(
                "an ETK is published under an extra identifier of type NIHII or NIHII11 \
                 only (a doctor's numbers: the queries for which etee's client accepts an \
                 ETK naming an SSIN)"
                    .into(),
            ));
        };
        if !own.iter().any(|i| i.id_type == "SSIN") {
            return Err(refused(format!(
                "only a natural person's ETK (its holder SSIN=…) is published under an extra \
                 identifier; this ETK's holder is {}",
                describe(own)
            )));
        }
        let (_, value) = lookup_identifier(id_type, value).map_err(|e| refused(e.to_string()))?;
        let id = etee_store::Identifier::new(id_type, &value, application_id);
        // One number, one holder: checked by the store as it stores the ETK
        // (`Change::PutEtkExclusive`), so that concurrent registrations cannot both pass.
        if !own.contains(&id) && !extra.contains(&id) {
            extra.push(id);
        }
    }
    Ok(extra)
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("not a valid ETK: {0}")]
    Invalid(String),
    /// An extra identifier ([`register_with_extra`]) the rules refuse.
    #[error("extra identifier {0}")]
    Extra(String),
    /// The ETK is stored already, without some of the identifiers asked for: a
    /// registration does not change a stored ETK's identifiers.
    #[error(
        "already registered {0}; registering it again does not change the identifiers it is \
         published under"
    )]
    AlreadyRegistered(String),
    #[error(transparent)]
    Store(#[from] etee_store::Error),
}
