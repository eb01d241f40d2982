//! KeyDepot: public keys registered by their holders, with a proof of possession and
//! optionally an HSM attestation (spec §6; the REST design is etee's own, see the module
//! doc of [`etee_services::keydepot`]).
//!
//! - Register: the caller is the holder of the TLS client certificate. The key's holder is
//!   the caller's *first* identity (as [`crate::caller::store_identifier`] stores it: value
//!   zero-padded, application id of the certificate kept) — the identity an ETKDepot lookup
//!   of that certificate would use, so one certificate always registers under one holder.
//!   The proof of possession must verify; an attestation, when given, must verify
//!   ([`SignedAttestation::verify`]: statement, signature, key, non-exportable, signer names
//!   the holder) *and* its chain must lead to the platform's CA at registration time.
//!   A refused attestation refuses the registration; an accepted one is stored as given and
//!   makes the key `attested`. A key id is the key's RFC 5280 method-1 identifier
//!   ([`KeyId::of_public_key`], 400 otherwise) and unique across holders (409 when taken).
//! - Reads (one key, a holder's keys, the attestation, the holder) are open to anyone.
//! - Add info and delete: the holder only — same identifier type (`HUB` is `EHP`) and
//!   zero-padded value as the stored holder, the application id aside (one holder, several
//!   applications; as KGSS's delete). Deletion removes the row: every stored key is `active`, there is no
//!   revoked state.

use crate::caller::{store_identifier, stored_type, stored_value};
use etee_formats::identity::{normalize_value, Identity};
use etee_formats::trust::{PathCheck, TrustAnchors};
use etee_services::etkdepot::rest::IdentifierJson;
use etee_services::etkdepot::Identifier;
use etee_services::keydepot::{
    HolderInfo, KeyId, KeyInfo, KeyListResponse, KeyRecord, KeyStatus, KeyUse, RegisterKeyRequest,
};
use etee_store::{Change, PublicKeyRecord, Store};
use std::collections::BTreeMap;

/// How far in the future an attestation's `issuedAt` may be (clock skew), in seconds.
pub const MAX_CLOCK_SKEW: i64 = 300;

/// Why a KeyDepot request was not served. Each has an HTTP status and a problem title.
#[derive(Debug, thiserror::Error)]
pub enum KeyDepotError {
    /// The body, a key id or an identifier is not what the operation expects.
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("a write needs a TLS client certificate of the platform's CA, valid and not revoked")]
    Unauthenticated,
    #[error("the client certificate names no eHealth identity")]
    NoIdentity,
    #[error("the proof of possession does not verify")]
    ProofOfPossession,
    #[error("the attestation was refused: {0}")]
    Attestation(String),
    #[error("only the key's holder may change or delete it")]
    NotHolder,
    #[error("no such key")]
    UnknownKey,
    #[error("the key has no attestation")]
    NoAttestation,
    #[error("a key with this key id is already registered")]
    Duplicate,
    /// The holder has `limit` keys registered (`max_keys_per_holder`).
    #[error(
        "the holder already has {limit} keys registered, the most this platform keeps for \
         one holder: delete one before registering another"
    )]
    TooManyKeys { limit: usize },
    /// The key's information kept changing while this change was being made (other
    /// changes at the same moment): nothing was changed by this one.
    #[error("the key's information changed meanwhile; nothing was changed, send the change again")]
    Contended,
    /// The store failed, or holds what it should not (detail for the logs only).
    #[error("store: {0}")]
    Store(#[from] etee_store::Error),
}

impl KeyDepotError {
    /// The problem's `title` (etee's own codes: the real service's are unknown, §10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "KEYDEPOT_INVALID_REQUEST",
            Self::Unauthenticated => "KEYDEPOT_NOT_AUTHENTICATED",
            Self::NoIdentity | Self::NotHolder => "KEYDEPOT_ACCESS_DENIED",
            Self::ProofOfPossession => "KEYDEPOT_INVALID_PROOF_OF_POSSESSION",
            Self::Attestation(_) => "KEYDEPOT_INVALID_ATTESTATION",
            Self::UnknownKey => "KEYDEPOT_UNKNOWN_KEY",
            Self::NoAttestation => "KEYDEPOT_NO_ATTESTATION",
            Self::Duplicate => "KEYDEPOT_DUPLICATE_KEY_ID",
            Self::TooManyKeys { .. } => "KEYDEPOT_TOO_MANY_KEYS",
            Self::Contended => "KEYDEPOT_CONFLICT",
            Self::Store(etee_store::Error::Busy(_)) => "KEYDEPOT_SERVICE_BUSY",
            Self::Store(_) => "KEYDEPOT_SERVICE_ERROR",
        }
    }

    /// The HTTP status: malformed input 400; well-formed proofs that do not verify 422.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::Unauthenticated => 401,
            Self::NoIdentity | Self::NotHolder => 403,
            Self::UnknownKey | Self::NoAttestation => 404,
            // The holder's state refuses it until it deletes a key: not a rate limit (429).
            Self::Duplicate | Self::Contended | Self::TooManyKeys { .. } => 409,
            Self::ProofOfPossession | Self::Attestation(_) => 422,
            // Nothing was written: retryable (with `Retry-After`).
            Self::Store(etee_store::Error::Busy(_)) => 503,
            Self::Store(_) => 500,
        }
    }

    /// What the caller is told: a store failure's detail stays in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(etee_store::Error::Busy(_)) => {
                "service busy; send the request again".into()
            }
            Self::Store(_) => "service error".into(),
            e => e.to_string(),
        }
    }

    /// A request that does not parse (body, key id).
    pub fn invalid(e: impl std::fmt::Display) -> Self {
        Self::Invalid(e.to_string())
    }
}

// --- KeyInfo in the store ------------------------------------------------------------------

const LABEL: &str = "label";
const USE: &str = "use";
const APPLICATION_ID: &str = "applicationId";
/// Prefix of the free properties, so that a property can never shadow a named field.
const PROPERTY: &str = "property.";

/// A key's information as the store keeps it: `label`, `use` (`enc`/`sig`), `applicationId`,
/// and `property.<name>` for each free property; unset fields have no entry. Since unset
/// fields are absent, the store's merge of these entries is [`KeyInfo::merge`].
pub fn info_to_map(info: &KeyInfo) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(label) = &info.label {
        map.insert(LABEL.to_owned(), label.clone());
    }
    if let Some(u) = info.key_use {
        let name = match u {
            KeyUse::Enc => "enc",
            KeyUse::Sig => "sig",
        };
        map.insert(USE.to_owned(), name.to_owned());
    }
    if let Some(app) = &info.application_id {
        map.insert(APPLICATION_ID.to_owned(), app.clone());
    }
    for (k, v) in &info.properties {
        map.insert(format!("{PROPERTY}{k}"), v.clone());
    }
    map
}

/// The reverse of [`info_to_map`]; entries it would not write are ignored.
pub fn info_from_map(map: &BTreeMap<String, String>) -> KeyInfo {
    let mut info = KeyInfo::default();
    for (k, v) in map {
        match k.as_str() {
            LABEL => info.label = Some(v.clone()),
            USE => info.key_use = KeyUse::from_name(v),
            APPLICATION_ID => info.application_id = Some(v.clone()),
            _ => {
                if let Some(name) = k.strip_prefix(PROPERTY) {
                    info.properties.insert(name.to_owned(), v.clone());
                }
            }
        }
    }
    info
}

// --- Answers --------------------------------------------------------------------------------

fn identifier_json(holder: &etee_store::Identifier) -> IdentifierJson {
    IdentifierJson {
        id_type: holder.id_type.clone(),
        value: holder.value.clone(),
        application_identifier: holder.application_id.clone(),
    }
}

/// The holder as KeyDepot knows it: the stored identifier (no name: it is not stored).
fn holder_info(holder: &etee_store::Identifier) -> HolderInfo {
    HolderInfo {
        identifiers: vec![identifier_json(holder)],
        name: None,
    }
}

/// The answer for a stored key; `status` is always `active` (deletion removes the row).
pub fn key_record(record: &PublicKeyRecord) -> Result<KeyRecord, KeyDepotError> {
    let key_id = KeyId::new(record.key_id.clone()).map_err(|e| {
        KeyDepotError::Store(etee_store::Error::Corrupt(format!("stored key id: {e}")))
    })?;
    Ok(KeyRecord {
        key_id,
        public_key: record.spki_der.clone(),
        holder: holder_info(&record.holder),
        info: info_from_map(&record.info),
        attested: record.attestation.is_some(),
        status: KeyStatus::Active,
        created_at: record.created_at,
    })
}

// --- Operations -----------------------------------------------------------------------------

/// The caller's first identity (see the module doc), or why there is none.
fn caller_identity(caller: &[Identity]) -> Result<&Identity, KeyDepotError> {
    caller.first().ok_or(KeyDepotError::NoIdentity)
}

/// Same holder: canonical type (`HUB` is `EHP`, as the holder is stored) and zero-padded
/// value; the application id is not compared.
fn is_holder(caller: &[Identity], holder: &etee_store::Identifier) -> bool {
    let holder_type =
        etee_formats::identity::canonical_type(&holder.id_type).unwrap_or(holder.id_type.as_str());
    caller
        .iter()
        .any(|c| stored_type(c) == holder_type && stored_value(c) == holder.value)
}

/// The key id must be the key's own ([`KeyId::of_public_key`]): ids are unique and retired
/// for ever, so a free choice would let anyone take the id of another's key.
fn check_key_id(request: &RegisterKeyRequest) -> Result<(), KeyDepotError> {
    let own = KeyId::of_public_key(&request.public_key).map_err(KeyDepotError::invalid)?;
    if own != request.key_id {
        return Err(KeyDepotError::Invalid(format!(
            "keyId must be the key's RFC 5280 method-1 identifier (SHA-1 of the \
             subjectPublicKey bits): {}",
            own.to_url_string()
        )));
    }
    Ok(())
}

/// Registers a key for `caller` (the identities of its TLS client certificate), unless
/// its holder already has `max_keys_per_holder` keys.
pub fn register(
    store: &dyn Store,
    anchors: &TrustAnchors,
    caller: &[Identity],
    request: &RegisterKeyRequest,
    now: i64,
    max_keys_per_holder: usize,
) -> Result<KeyRecord, KeyDepotError> {
    let identity = caller_identity(caller)?;
    let holder = store_identifier(identity);
    request.check_limits().map_err(KeyDepotError::invalid)?;
    check_key_id(request)?;
    request
        .verify_proof_of_possession(identity)
        .map_err(|_| KeyDepotError::ProofOfPossession)?;
    let attestation = match &request.attestation {
        None => None,
        Some(a) => {
            let as_identifier = Identifier::new(
                &holder.id_type,
                &holder.value,
                holder.application_id.as_deref(),
            );
            let verified = a
                .verify(&request.key_id, &request.public_key, &as_identifier)
                .map_err(|e| KeyDepotError::Attestation(e.to_string()))?;
            // verify() checks the chain links, not whom it leads to: that is ours to decide,
            // with the platform's revocation lists when it has them.
            match anchors.check(&verified.signer, &verified.chain, now, now) {
                PathCheck::Trusted => {}
                PathCheck::Untrusted => {
                    return Err(KeyDepotError::Attestation(
                        "the signer's certificate does not chain to the platform's CA".into(),
                    ))
                }
                PathCheck::Revoked => {
                    return Err(KeyDepotError::Attestation(
                        "the signer's certificate is revoked (by its CA's list or OCSP \
                         responder)"
                            .into(),
                    ))
                }
                PathCheck::StatusUnknown => {
                    return Err(KeyDepotError::Attestation(
                        "neither a current revocation list nor an OCSP answer gives the \
                         status of the signer's certificate (mandatory policy)"
                            .into(),
                    ))
                }
            }
            if verified.statement.issued_at > now + MAX_CLOCK_SKEW {
                return Err(KeyDepotError::Attestation(
                    "the statement is issued in the future".into(),
                ));
            }
            Some(a.to_json())
        }
    };
    let record = PublicKeyRecord {
        key_id: request.key_id.as_bytes().to_vec(),
        holder,
        spki_der: request.public_key.clone(),
        info: info_to_map(&request.info),
        attestation,
        created_at: now,
    };
    // The key and its event in one transaction, which also counts the holder's keys.
    let event = crate::audit::event(
        now,
        "keydepot.register",
        &identity.to_string(),
        request.key_id.to_url_string(),
        "registered",
        Some(
            if record.attestation.is_some() {
                "attested"
            } else {
                "not attested"
            }
            .into(),
        ),
    );
    let change = Change::InsertPublicKeyWithin {
        record: &record,
        max_per_holder: max_keys_per_holder,
    };
    match store.apply_with_event(change, &event) {
        Ok(Some(sequence)) => crate::audit::log(sequence, &event),
        Ok(None) => {
            return Err(KeyDepotError::Store(etee_store::Error::Invalid(
                "the key was not stored".into(),
            )))
        }
        Err(etee_store::Error::AlreadyExists) => return Err(KeyDepotError::Duplicate),
        Err(etee_store::Error::TooManyKeys { limit }) => {
            return Err(KeyDepotError::TooManyKeys { limit })
        }
        Err(e) => return Err(e.into()),
    }
    key_record(&record)
}

fn stored(store: &dyn Store, key_id: &KeyId) -> Result<PublicKeyRecord, KeyDepotError> {
    store
        .get_public_key(key_id.as_bytes())?
        .ok_or(KeyDepotError::UnknownKey)
}

/// One key.
pub fn get(store: &dyn Store, key_id: &KeyId) -> Result<KeyRecord, KeyDepotError> {
    key_record(&stored(store, key_id)?)
}

/// The keys of holder `(id_type, value)` — normalised as ETKDepot does (type
/// case-insensitive, value zero-padded; an unknown type or impossible value is invalid) —
/// of any application id, or only of `application_id`. None is an empty list.
pub fn list(
    store: &dyn Store,
    id_type: &str,
    value: &str,
    application_id: Option<&str>,
) -> Result<KeyListResponse, KeyDepotError> {
    let id_type = etee_formats::identity::canonical_type(id_type.trim())
        .ok_or_else(|| KeyDepotError::invalid(format!("unknown identifier type {id_type:?}")))?;
    let value = normalize_value(id_type, value).map_err(KeyDepotError::invalid)?;
    let found = store.list_public_keys(id_type, &value, application_id)?;
    let holder = etee_store::Identifier::new(id_type, &value, application_id);
    Ok(KeyListResponse {
        holder: holder_info(&holder),
        keys: found.iter().map(key_record).collect::<Result<_, _>>()?,
    })
}

/// The caller's identity when it holds `key_id`; otherwise the refusal, on the audit
/// chain.
fn holder_or_denied<'c>(
    store: &dyn Store,
    caller: &'c [Identity],
    key_id: &KeyId,
    action: &str,
    now: i64,
) -> Result<&'c Identity, KeyDepotError> {
    let identity = caller_identity(caller)?;
    let record = stored(store, key_id)?;
    if is_holder(caller, &record.holder) {
        return Ok(identity);
    }
    crate::audit::record(
        store,
        now,
        action,
        identity,
        key_id.to_url_string(),
        "denied",
        None,
    )?;
    Err(KeyDepotError::NotHolder)
}

/// Adds information to a key (fields given replace those stored), for its holder.
pub fn add_info(
    store: &dyn Store,
    caller: &[Identity],
    key_id: &KeyId,
    info: &KeyInfo,
    now: i64,
) -> Result<KeyRecord, KeyDepotError> {
    info.check_limits().map_err(KeyDepotError::invalid)?;
    let identity = holder_or_denied(store, caller, key_id, "keydepot.add_info", now)?;
    let event = crate::audit::event(
        now,
        "keydepot.add_info",
        &identity.to_string(),
        key_id.to_url_string(),
        "updated",
        None,
    );
    let addition = info_to_map(info);
    // Information only grows: the bounds hold for what it becomes. The store replaces the
    // information only if it is still what was read, so that changes made at the same
    // moment cannot each pass against the same reading (together beyond the bounds).
    for _ in 0..MAX_INFO_UPDATE_TRIES {
        let mut record = stored(store, key_id)?;
        let mut after = record.info.clone();
        after.extend(addition.iter().map(|(k, v)| (k.clone(), v.clone())));
        info_from_map(&after)
            .check_limits()
            .map_err(KeyDepotError::invalid)?;
        // The change and its event in one transaction.
        let change = Change::UpdatePublicKeyInfo {
            key_id: key_id.as_bytes(),
            expected: &record.info,
            info: &after,
        };
        match store.apply_with_event(change, &event) {
            Ok(Some(sequence)) => {
                crate::audit::log(sequence, &event);
                // The key as written: the record read, with the information it now has.
                record.info = after;
                return key_record(&record);
            }
            Ok(None) => return Err(KeyDepotError::UnknownKey),
            Err(etee_store::Error::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(KeyDepotError::Contended)
}

/// How many times [`add_info`] reads and tries again when the information changed between
/// its reading and its change.
const MAX_INFO_UPDATE_TRIES: usize = 8;

/// The attestation given at registration, as it was stored (the JSON of a
/// `SignedAttestation`).
pub fn attestation(store: &dyn Store, key_id: &KeyId) -> Result<Vec<u8>, KeyDepotError> {
    stored(store, key_id)?
        .attestation
        .ok_or(KeyDepotError::NoAttestation)
}

/// The holder of a key.
pub fn holder(store: &dyn Store, key_id: &KeyId) -> Result<HolderInfo, KeyDepotError> {
    Ok(holder_info(&stored(store, key_id)?.holder))
}

/// Deletes a key for good, for its holder.
pub fn delete(
    store: &dyn Store,
    caller: &[Identity],
    key_id: &KeyId,
    now: i64,
) -> Result<(), KeyDepotError> {
    let identity = holder_or_denied(store, caller, key_id, "keydepot.delete", now)?;
    // The deletion and its event in one transaction: the chain shows it exactly when it
    // happened.
    let event = crate::audit::event(
        now,
        "keydepot.delete",
        &identity.to_string(),
        key_id.to_url_string(),
        "deleted",
        None,
    );
    let sequence = store
        .apply_with_event(Change::DeletePublicKey(key_id.as_bytes()), &event)?
        .ok_or(KeyDepotError::UnknownKey)?;
    crate::audit::log(sequence, &event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_through_the_store_map() {
        let info = KeyInfo {
            label: Some("laptop".into()),
            key_use: Some(KeyUse::Sig),
            application_id: Some("APP".into()),
            properties: [
                ("label".to_owned(), "a property, not the label".to_owned()),
                ("x.y".to_owned(), String::new()),
            ]
            .into(),
        };
        let map = info_to_map(&info);
        assert_eq!(map.get("label").map(String::as_str), Some("laptop"));
        assert_eq!(map.get("use").map(String::as_str), Some("sig"));
        assert_eq!(map.get("applicationId").map(String::as_str), Some("APP"));
        assert_eq!(
            map.get("property.label").map(String::as_str),
            Some("a property, not the label")
        );
        assert_eq!(info_from_map(&map), info);
        assert_eq!(
            info_from_map(&info_to_map(&KeyInfo::default())),
            KeyInfo::default()
        );
        assert!(info_to_map(&KeyInfo::default()).is_empty());

        // add_info's merge of the entries (before the conditional update) is KeyInfo::merge.
        let add = KeyInfo {
            key_use: Some(KeyUse::Enc),
            properties: [("z".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        };
        let mut merged_map = map.clone();
        merged_map.extend(info_to_map(&add));
        let mut merged = info.clone();
        merged.merge(&add);
        assert_eq!(info_from_map(&merged_map), merged);

        // Entries it would not write are ignored.
        let odd: BTreeMap<String, String> = [
            ("use".to_owned(), "both".to_owned()),
            ("other".to_owned(), "x".to_owned()),
        ]
        .into();
        assert_eq!(info_from_map(&odd), KeyInfo::default());
    }
}
