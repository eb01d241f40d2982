//! ETKDepot: which ETKs answer a search, and the SOAP and REST answers built from them.
//!
//! The lookup rules (spec §3.4, §4.1):
//! - each search identifier is normalised first: the canonical type name (`cbe` → `CBE`,
//!   `HUB` → `EHP`) and the value formatted as the official connector does (zero-padded,
//!   or cut to the type's length); an unknown type or an impossible value is the caller's
//!   error; registered ETKs are stored under their DN's identifiers formatted the same way
//!   ([`depot_identifier`]), so that the DN's own value finds them;
//! - an identifier matches every ETK whose holder DN carries it (any of the DN's
//!   identifiers); without an application id (no `ApplicationID`), ETKs of every
//!   application id of the holder match, the one without an application id included; with
//!   an *empty* application id (`<ApplicationID/>`, `applicationIdentifier=`), only the
//!   holder's ETK(s) without one (etee's own convention, `docs/platform.md`); with an
//!   application id, only that application's; several identifiers in one request add up
//!   their matches;
//! - only ETKs valid now are answered, and of several ETKs of one holder and application
//!   id (a renewed ETK beside the old one), the newest;
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

/// The ETKs answering `criteria` at time `now`: at most one per application id, newest
/// first.
pub fn lookup(
    store: &dyn Store,
    criteria: &[Identifier],
    now: i64,
) -> Result<Vec<EtkRecord>, LookupError> {
    if criteria.is_empty() {
        return Err(LookupError::Criteria("no identifier".into()));
    }
    let mut found: Vec<EtkRecord> = Vec::new();
    for criterion in criteria {
        // The reason alone: the answer (fault or problem) says what kind of error it is.
        let c = criterion.normalized().map_err(|e| {
            LookupError::Criteria(match e {
                etee_services::Error::Content(why) => why,
                e => e.to_string(),
            })
        })?;
        for record in store.find_etks(&c.id_type, &c.value, c.application_id.as_deref())? {
            let valid = record.not_before <= now && now < record.not_after;
            if valid && !found.iter().any(|f| f.digest == record.digest) {
                found.push(record);
            }
        }
    }
    // Newest first, then keep the first of each application id.
    found.sort_by_key(|r| std::cmp::Reverse(r.not_before));
    let mut seen = Vec::new();
    found.retain(|r| {
        let app = application_id(r);
        if seen.contains(&app) {
            false
        } else {
            seen.push(app);
            true
        }
    });
    Ok(found)
}

fn application_id(record: &EtkRecord) -> Option<String> {
    record
        .identifiers
        .first()
        .and_then(|i| i.application_id.clone())
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

/// The REST answer: every ETK found (an empty list is the caller's 404).
pub fn etks_json(found: &[EtkRecord]) -> Vec<EtkJson> {
    found
        .iter()
        .map(|r| EtkJson {
            identifiers: identifiers(r).iter().map(Into::into).collect(),
            etk: r.etk.clone(),
            not_before: r.not_before,
            not_after: r.not_after,
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
    let enc = parsed.encryption_cert();
    let record = EtkRecord {
        digest: openssl::sha::sha256(parsed.der()),
        // Stored as lookups format their criteria (`HUB` is `EHP`, values padded or cut).
        identifiers: identities.iter().map(depot_identifier).collect(),
        etk: parsed.der().to_vec(),
        not_before: enc.not_before(),
        not_after: enc.not_after(),
        registered_at: now,
    };
    store.put_etk(&record)?;
    Ok(record)
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("not a valid ETK: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] etee_store::Error),
}
