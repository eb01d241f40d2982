//! KGSS: keys for unknown recipients, released only to readers meeting the creator's
//! conditions (spec §5).
//!
//! Requests are sealed (sign → encrypt → sign) to KGSS's ETK by the caller; the caller is
//! the signer of the sealed request, verified against the platform's CA. So:
//!
//! - `GetNewKey`: the content names the readers (`AllowedReader`, `ExludedReader`) and the
//!   requester's ETK. KGSS makes a 128-bit key and a 16-byte random key id, has the key
//!   wrapped by its HSM-resident AES key ([`KeyWrapper`]: `CKM_AES_KEY_WRAP` through the
//!   custody core), stores the wrapped key in one durable transaction, and only then
//!   answers, sealed to the requester's ETK. A crash before the store commits leaves
//!   nothing; after it, a key nobody was told about.
//! - `GetKey`: the content names the key and how to answer (the requester's ETK, or a
//!   one-off KEK). The caller's attributes — from the platform's attribute registry (e.g.
//!   "recognised pharmacy"), plus what its certificate proves (its SSIN) — are evaluated
//!   against the creator's conditions; the key is unwrapped in the HSM and sealed back.
//!   An exclusion the platform could never evaluate is refused at `GetNewKey`
//!   (`check_excluded`): it would exclude nobody.
//! - Delete: the holder (the creator) only; the row is removed.
//!
//! Where ours differs from the real KGSS: the real `GetKey` authenticates the caller with
//! a SAML holder-of-key token and reads its attributes from it; here the caller is the
//! signer of the sealed request and the attributes come from the registry the platform
//! keeps. A SAML attribute source would plug in where `get_key` reads the registry
//! (`Kgss::registry_reads`, which `Kgss::caller_attributes` shares), and would need the
//! same check at the commit that `Store::remember_key_read` makes for the registry.
//!
//! Every sealed request is remembered (by the SHA-256 of its outer signature in a canonical
//! form, whatever its encoding) for [`REPLAY_WINDOW`] and refused if
//! it comes again; older requests are refused by their signing time. `GetNewKey` remembers
//! it with the key it creates, `GetKey` once the decision is made, each in the same store
//! transaction as its audit event (one durable commit, not two): a request refused before
//! that is no replay when it comes again.

use crate::caller::{store_identifier, stored_type, stored_value};
use etee_custody::KeyKind;
use etee_formats::cms::{seal, unseal_to_vec, Kek, Recipient, SealOptions, UnsealOptions};
use etee_formats::etk::Etk;
use etee_formats::identity::Identity;
use etee_formats::keys::{KeyError, KeyRing, SigningKey};
use etee_formats::trust::TrustAnchors;
use etee_services::kgss::{
    evaluate, implicit_attributes, vocabulary, Attribute, Credential, GetKeyRequestContent,
    GetKeyResponseContent, GetNewKeyRequestContent, GetNewKeyResponseContent, ReplyTo,
};
use etee_services::kgss::{MAX_CONDITION_VALUES, MAX_READER_CONDITIONS};
use etee_services::secret::SecretBytes;
use etee_store::{KgssKey, Store};
use std::sync::Arc;
use zeroize::Zeroizing;

/// How old a request's signing time may be, in seconds (and [`CLOCK_SKEW`] more).
pub const SIGNING_TIME_WINDOW: i64 = 300;

/// How far the callers' clocks may be from the service's, either way, in seconds: the
/// official library's default (`CLOCK_SKEW = 300000` ms, spec §1.6), so that a request
/// its unsealer would accept is not refused here for its signing time.
pub const CLOCK_SKEW: i64 = 300;

/// How long a sealed request is remembered against replays, in seconds. A request signed
/// at `t` is accepted between `t - CLOCK_SKEW` and `t + SIGNING_TIME_WINDOW + CLOCK_SKEW`:
/// it is remembered at least that long after it was first served, so that no copy comes
/// after the table has forgotten it and is still fresh.
pub const REPLAY_WINDOW: i64 = SIGNING_TIME_WINDOW + 2 * CLOCK_SKEW;

/// Length of the keys KGSS makes (AES-128, as the real one).
pub const KEY_LEN: usize = 16;

/// The HSM-resident AES key that wraps the stored keys.
pub trait KeyWrapper: Send + Sync {
    /// The wrapping key's label (stored beside each wrapped key).
    fn label(&self) -> &str;
    /// RFC 3394 AES key wrap of `secret`.
    fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, KgssError>;
    /// The reverse; any failure is one opaque error.
    fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KgssError>;
}

/// **INSECURE, tests only** (feature `insecure`, which only the crate's tests enable): the
/// wrapping key in process memory, so that the service logic can be tested without an
/// HSM. The platform never uses it; the same behaviour is tested with the HSM-backed
/// wrapper against SoftHSM.
#[cfg(any(test, feature = "insecure"))]
pub struct InsecureMemoryWrapper {
    key: Zeroizing<Vec<u8>>,
}

#[cfg(any(test, feature = "insecure"))]
impl InsecureMemoryWrapper {
    pub fn new_random() -> Self {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        openssl::rand::rand_bytes(&mut key).expect("random bytes");
        Self { key }
    }
}

#[cfg(any(test, feature = "insecure"))]
impl KeyWrapper for InsecureMemoryWrapper {
    fn label(&self) -> &str {
        "insecure-memory"
    }

    fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, KgssError> {
        let key = openssl::aes::AesKey::new_encrypt(&self.key)
            .map_err(|_| KgssError::Custody("wrapping".into()))?;
        let mut out = vec![0u8; secret.len() + 8];
        openssl::aes::wrap_key(&key, None, &mut out, secret)
            .map_err(|_| KgssError::Custody("wrapping".into()))?;
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KgssError> {
        let fail = || KgssError::Custody("unwrapping".into());
        let key = openssl::aes::AesKey::new_decrypt(&self.key).map_err(|_| fail())?;
        let n = wrapped
            .len()
            .checked_sub(8)
            .filter(|n| *n >= 16)
            .ok_or_else(fail)?;
        let mut out = Zeroizing::new(vec![0u8; n]);
        openssl::aes::unwrap_key(&key, None, &mut out, wrapped).map_err(|_| fail())?;
        Ok(out)
    }
}

/// The wrapping key in KGSS's HSM token, used through the custody core (policy and audit
/// record for every wrap and unwrap).
pub struct CustodyWrapper {
    /// In this process, or `etee custody serve` (`[custody] mode = "process"`).
    pub keys: etee_hsm::CustodyHandle,
    /// The CKA_ID of the AES wrapping key.
    pub key_id: String,
}

impl KeyWrapper for CustodyWrapper {
    fn label(&self) -> &str {
        &self.key_id
    }

    fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, KgssError> {
        self.keys
            .wrap_secret(&self.key_id, secret)
            .map_err(|e| KgssError::Custody(format!("wrapping: {e}")))
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KgssError> {
        self.keys
            .unwrap_secret(&self.key_id, wrapped)
            .map_err(|e| KgssError::Custody(format!("unwrapping: {e}")))
    }
}

impl Kgss {
    /// KGSS with its keys in the HSM token of the `etee` HSM configuration at `hsm_config`
    /// (the authentication key, the ETK key(s) and the AES key `wrapping_key`), all used
    /// through the custody core — in this process, or in `etee custody serve` when the
    /// configuration says `[custody] mode = "process"` — whose audit chain records every use.
    pub fn from_hsm(
        hsm_config: &std::path::Path,
        wrapping_key: &str,
        anchors: TrustAnchors,
    ) -> Result<Self, KgssError> {
        let keys = etee_hsm::Config::load(hsm_config)
            .and_then(|c| etee_hsm::CustodyHandle::open(&c))
            .map_err(|e| KgssError::Custody(e.to_string()))?;
        let signer = keys
            .signing_key()
            .map_err(|e| KgssError::Custody(format!("KGSS authentication key: {e}")))?;
        let ring = keys
            .key_ring()
            .map_err(|e| KgssError::Custody(format!("KGSS ETK keys: {e}")))?;
        if ring.keys().is_empty() {
            return Err(KgssError::Custody("the KGSS token holds no ETK key".into()));
        }
        // Checked now: a key that is missing or refused would otherwise fail every request
        // (502), with only the custody core's verdict ("refused by policy") in the log.
        check_key(&keys, hsm_config, wrapping_key, Role::Wrapping)?;
        check_key(&keys, hsm_config, &signer.key.0, Role::Authentication)?;
        for k in ring.keys() {
            check_key(&keys, hsm_config, &k.key.0, Role::Etk)?;
        }
        Ok(Self {
            signer,
            ring,
            wrapper: Arc::new(CustodyWrapper {
                keys,
                key_id: wrapping_key.to_owned(),
            }),
            anchors,
        })
    }
}

/// What KGSS needs a key of its token for (start checks' messages).
#[derive(Clone, Copy)]
enum Role {
    Wrapping,
    Authentication,
    Etk,
}

impl Role {
    fn kind(self) -> KeyKind {
        match self {
            Role::Wrapping => KeyKind::Wrapping,
            Role::Authentication => KeyKind::Authentication,
            Role::Etk => KeyKind::Encryption,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Wrapping => "the wrapping key ([kgss] wrapping_key)",
            Role::Authentication => "KGSS's authentication key",
            Role::Etk => "KGSS's ETK key",
        }
    }

    /// How the key gets into the token.
    fn remedy(self, id: &str, hsm_config: &std::path::Path) -> String {
        let config = hsm_config.display();
        match self {
            Role::Wrapping if id == etee_hsm::config::KGSS_WRAP_ID => format!(
                "generate it once with `etee keys generate --config {config} --profile {id}`"
            ),
            Role::Wrapping => format!(
                "generate it once with `etee keys generate --config {config} --profile NAME`, \
                 NAME a profile of that file with role = \"wrapping\" and id = {id:?} (or set \
                 [kgss] wrapping_key to the CKA_ID of the wrapping key the token holds)"
            ),
            Role::Authentication | Role::Etk => format!(
                "import KGSS's eHealth keystore with `etee keys import --config {config} \
                 --p12 FILE` (or make a local world's with `etee platform pki world --hsm \
                 kgss={config}`)"
            ),
        }
    }
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Authentication => "a signing key",
        KeyKind::Encryption => "an ETK (decryption) key",
        KeyKind::Wrapping => "an AES wrapping key",
    }
}

/// Requires key `id` of KGSS's token to be there, of the kind `role` needs, and usable
/// through the custody core (asked with `DescribeKey`, which is on the audit chain); the
/// error names the key and what to do.
fn check_key(
    keys: &etee_hsm::CustodyHandle,
    hsm_config: &std::path::Path,
    id: &str,
    role: Role,
) -> Result<(), KgssError> {
    let what = role.name();
    let missing = || {
        KgssError::Custody(format!(
            "{what} {id:?} (CKA_ID) is not in the token of {}: {}",
            hsm_config.display(),
            role.remedy(id, hsm_config)
        ))
    };
    let wrong_kind = |kind: KeyKind| {
        KgssError::Custody(format!(
            "{what} {id:?} (CKA_ID) in the token of {} is {}, not {}",
            hsm_config.display(),
            kind_name(kind),
            kind_name(role.kind())
        ))
    };
    // In this process the token's keys are known: a missing key is told apart from one
    // the policy refuses (the core refuses both the same way).
    if let Some(core) = keys.in_process() {
        match core.token().keys().find(|(k, _)| *k == id.as_bytes()) {
            None => return Err(missing()),
            Some((_, kind)) if kind != role.kind() => return Err(wrong_kind(kind)),
            Some(_) => {}
        }
    }
    match keys.describe_key(id) {
        Ok(facts) if facts.kind == role.kind() => Ok(()),
        Ok(facts) => Err(wrong_kind(facts.kind)),
        Err(KeyError::UnknownKey(_)) => Err(missing()),
        // Another process's core refuses a key it does not have and a key its policy gives
        // this client no rule for alike.
        Err(e @ KeyError::Refused(_)) if keys.in_process().is_none() => {
            Err(KgssError::Custody(format!(
                "{what} {id:?} (CKA_ID) cannot be used through the custody process ({e}): \
                 either its token has no such key ({}), or its policy gives this client no \
                 rule for it",
                role.remedy(id, hsm_config)
            )))
        }
        Err(e) => Err(KgssError::Custody(format!(
            "{what} {id:?} (CKA_ID) cannot be used through the custody core: {e}"
        ))),
    }
}

/// The whole of what a caller learns of a refused seal (see [`KgssError::public_message`]).
pub const SEAL_REFUSED: &str = "the sealed request was refused: it does not open and verify \
     as a request to KGSS from a known caller (the reason is in the service's log, under \
     this answer's id)";

/// Why a KGSS request was not served. Each has a business code for the SOAP `Error` and an
/// HTTP status for REST.
#[derive(Debug, thiserror::Error)]
pub enum KgssError {
    /// The sealed request does not open cleanly (not for KGSS, bad signature, unknown CA…).
    #[error("the sealed request was refused: {0}")]
    Seal(String),
    /// The inner content is not what the operation expects.
    #[error("invalid request content: {0}")]
    Content(String),
    #[error("the caller does not meet the key's reader conditions")]
    AccessDenied,
    /// A deletion by anyone but the key's holder.
    #[error("only the key's holder (the institution that created it) may delete it")]
    NotHolder,
    #[error("no such key")]
    UnknownKey,
    #[error("this sealed request was already served")]
    Replay,
    #[error("a request needs an authenticated caller: a TLS client certificate of the platform's CA, valid and not revoked")]
    Unauthenticated,
    /// The HSM (through the custody core) refused or failed.
    #[error("key custody: {0}")]
    Custody(String),
    #[error("store: {0}")]
    Store(#[from] etee_store::Error),
}

/// A KGSS event on the platform's audit chain ([`crate::audit`]).
fn audit(
    store: &dyn Store,
    at: i64,
    action: &str,
    actor: &Identity,
    key_id: &[u8; 16],
    outcome: &str,
    detail: Option<String>,
) -> Result<(), KgssError> {
    crate::audit::record(
        store,
        at,
        action,
        actor,
        hex::encode(key_id),
        outcome,
        detail,
    )?;
    Ok(())
}

impl KgssError {
    /// The `Error/Code` of a SOAP answer (the real service's codes are not known, §10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Seal(_) => "KGSS_INVALID_SEAL",
            Self::Content(_) => "KGSS_INVALID_REQUEST",
            Self::AccessDenied | Self::NotHolder => "KGSS_ACCESS_DENIED",
            Self::UnknownKey => "KGSS_UNKNOWN_KEY",
            Self::Replay => "KGSS_REPLAYED_REQUEST",
            Self::Unauthenticated => "KGSS_NOT_AUTHENTICATED",
            Self::Store(etee_store::Error::Busy(_)) => "KGSS_SERVICE_BUSY",
            Self::Custody(_) | Self::Store(_) => "KGSS_SERVICE_ERROR",
        }
    }

    /// The HTTP status of a REST answer (and the `Status/Code` of a SOAP one).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Seal(_) | Self::Content(_) => 400,
            Self::Unauthenticated => 401,
            Self::AccessDenied | Self::NotHolder => 403,
            Self::UnknownKey => 404,
            Self::Replay => 409,
            // Nothing was written: the same request may be sent again (REST adds
            // `Retry-After`).
            Self::Store(etee_store::Error::Busy(_)) => 503,
            Self::Custody(_) | Self::Store(_) => 500,
        }
    }

    /// What the caller is told: the detail of a service error stays in the logs, and so
    /// does why a seal was refused. The verdict of an unseal tells a bad CBC padding from
    /// a good one (`DECRYPTION_SYMMETRIC_KEY_ALGORITHM_PADDING_UNAUTHORIZED`, or which
    /// inner structure failed); given to anyone who can send a request, it would be a
    /// padding oracle on captured requests, whose content may carry a reply KEK.
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(etee_store::Error::Busy(_)) => {
                "service busy; send the request again".into()
            }
            Self::Custody(_) | Self::Store(_) => "service error".into(),
            Self::Seal(_) => SEAL_REFUSED.into(),
            e => e.to_string(),
        }
    }
}

/// A key id as KGSS makes them (16 bytes). Another length names no key that could
/// exist: a bad request, not an unknown key (which would read as "already deleted").
fn key_id(id: &[u8]) -> Result<[u8; 16], KgssError> {
    id.try_into().map_err(|_| {
        KgssError::Content(format!(
            "a key id is 16 bytes, this one is {} bytes",
            id.len()
        ))
    })
}

/// A value of attribute `(namespace, name)` as it is compared: the number of a person's
/// SSIN or a care provider's NIHII11 zero-padded ([`vocabulary::value_type`]), any other
/// value as written.
fn comparable_value(namespace: &str, name: &str, value: &str) -> Result<String, String> {
    match vocabulary::value_type(namespace, name) {
        Some(t) => etee_formats::identity::normalize_value(t, value)
            .map_err(|e| format!("{value:?} is not a {t} number: {e}")),
        None => Ok(value.to_owned()),
    }
}

/// Reader conditions as they are compared later: no empty value (it would match nobody, and
/// an exclusion would silently not apply), and an SSIN or NIHII11 in its 11-digit form (a
/// value without its leading zeros would not match the caller's either).
fn normalize_credential(c: &mut Credential) -> Result<(), KgssError> {
    let bad = |why: String| KgssError::Content(format!("reader {} {}: {why}", c.namespace, c.name));
    if c.values.iter().any(|v| v.is_empty()) {
        return Err(bad("an empty Value matches nobody".into()));
    }
    let values = c
        .values
        .iter()
        .map(|v| comparable_value(&c.namespace, &c.name, v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    c.values = values;
    Ok(())
}

/// Refuses a `GetNewKey` over [`MAX_READER_CONDITIONS`] or [`MAX_CONDITION_VALUES`].
fn check_reader_bounds(request: &GetNewKeyRequestContent) -> Result<(), KgssError> {
    let all = request.allowed_readers.len() + request.excluded_readers.len();
    if all > MAX_READER_CONDITIONS {
        return Err(KgssError::Content(format!(
            "{all} reader conditions: at most {MAX_READER_CONDITIONS}"
        )));
    }
    match request
        .allowed_readers
        .iter()
        .chain(&request.excluded_readers)
        .find(|c| c.values.len() > MAX_CONDITION_VALUES)
    {
        Some(c) => Err(KgssError::Content(format!(
            "reader {} {}: {} values, at most {MAX_CONDITION_VALUES}",
            c.namespace,
            c.name,
            c.values.len()
        ))),
        None => Ok(()),
    }
}

/// Refuses an `ExludedReader` the platform cannot evaluate: one whose `(namespace, name)`
/// is neither of §5.1's vocabulary (the registry's certified names, the SSIN a
/// certificate proves) nor a name the attribute registry holds for some holder. Such an
/// exclusion would never match, and the readers it meant to exclude would pass. An
/// `AllowedReader` of such a name may stay: it matches nobody, which fails closed. The
/// registry is read once a request, and only for names outside the vocabulary.
fn check_excluded(store: &dyn Store, excluded: &[Credential]) -> Result<(), KgssError> {
    let mut registry: Option<std::collections::HashSet<(String, String)>> = None;
    for c in excluded {
        if vocabulary::is_known(&c.namespace, &c.name) {
            continue;
        }
        let names = match &mut registry {
            Some(names) => names,
            None => registry.insert(
                store
                    .list_attribute_holders()?
                    .into_iter()
                    .flat_map(|(_, _, attributes)| attributes)
                    .map(|a| (a.namespace, a.name))
                    .collect(),
            ),
        };
        if !names.contains(&(c.namespace.clone(), c.name.clone())) {
            return Err(KgssError::Content(format!(
                "excluded reader {} {}: the platform never attests this attribute, so the \
                 exclusion would exclude nobody",
                c.namespace, c.name
            )));
        }
    }
    Ok(())
}

/// The replay table's key of a request: SHA-256 of its outer signature in one canonical
/// form. Other forms of a signature verify too, and would make a copy a new request: an
/// RSA signature with its leading zero bytes stripped (OpenSSL's PSS verification takes a
/// signature shorter than the modulus; one in 256 starts with a zero byte) is left-padded
/// to the modulus length; an ECDSA `(r, s)` is taken with the smaller of `s` and `n − s`
/// (both verify). Another key type, or a value that does not parse, is hashed as given.
fn replay_digest(
    signature: &[u8],
    signer: &openssl::pkey::PKeyRef<openssl::pkey::Public>,
) -> [u8; 32] {
    let canonical = match signer.id() {
        openssl::pkey::Id::RSA => {
            let size = signer.size();
            (signature.len() < size).then(|| {
                let mut padded = vec![0u8; size - signature.len()];
                padded.extend_from_slice(signature);
                padded
            })
        }
        openssl::pkey::Id::EC => low_s_ecdsa(signature, signer),
        _ => None,
    };
    openssl::sha::sha256(canonical.as_deref().unwrap_or(signature))
}

/// An ECDSA signature (DER) with `s` replaced by `n − s` when that is smaller; `None` when
/// it does not parse or is already so.
fn low_s_ecdsa(
    signature: &[u8],
    signer: &openssl::pkey::PKeyRef<openssl::pkey::Public>,
) -> Option<Vec<u8>> {
    let key = signer.ec_key().ok()?;
    let sig = openssl::ecdsa::EcdsaSig::from_der(signature).ok()?;
    let mut ctx = openssl::bn::BigNumContext::new().ok()?;
    let mut n = openssl::bn::BigNum::new().ok()?;
    key.group().order(&mut n, &mut ctx).ok()?;
    let mut high = openssl::bn::BigNum::new().ok()?;
    high.checked_sub(&n, sig.s()).ok()?;
    if sig.s() <= &*high {
        return None;
    }
    openssl::ecdsa::EcdsaSig::from_private_components(sig.r().to_owned().ok()?, high)
        .ok()?
        .to_der()
        .ok()
}

/// A verified request: its content, who sent it, and its digest for the replay table (of
/// its outer signature; not remembered yet: each operation does that where it fits).
struct Opened {
    content: Zeroizing<Vec<u8>>,
    identities: Vec<Identity>,
    digest: [u8; 32],
}

/// A new key's answer.
pub struct NewKey {
    pub key_id: [u8; 16],
    /// `GetNewKeyResponseContent`, sealed to the requester's ETK.
    pub sealed_response: Vec<u8>,
}

/// The service: KGSS's own keys (in the HSM, through the custody core) and the wrapper.
pub struct Kgss {
    /// KGSS's authentication key: signs the answers.
    pub signer: SigningKey,
    /// KGSS's ETK keys: open the requests.
    pub ring: KeyRing,
    pub wrapper: Arc<dyn KeyWrapper>,
    /// The CA(s) callers' certificates chain to.
    pub anchors: TrustAnchors,
}

impl Kgss {
    /// KGSS seals its answers with its authentication certificate: once the lists the
    /// platform follows revoke it (or an issuer), every client would refuse them
    /// (`OUTER_CERTIFICATE_REVOKED`). Refused before any key work, as a service error whose
    /// reason goes to the log.
    fn own_certificate_usable(&self, now: i64) -> Result<(), KgssError> {
        use etee_formats::revocation::CertStatus;
        let status =
            self.anchors
                .revocation()
                .own_status(&self.signer.signer, self.anchors.certs(), now);
        if status == CertStatus::Revoked {
            return Err(KgssError::Custody(
                "KGSS's own authentication certificate, or one of its issuers, is revoked by \
                 the revocation lists the platform follows: clients would refuse every answer \
                 (OUTER_CERTIFICATE_REVOKED); renew it"
                    .into(),
            ));
        }
        Ok(())
    }

    fn open(&self, sealed: &[u8], now: i64) -> Result<Opened, KgssError> {
        let opts = UnsealOptions {
            anchors: self.anchors.clone(),
            at: Some(now),
            signing_time_expiration: SIGNING_TIME_WINDOW,
            clock_skew: CLOCK_SKEW,
            ..Default::default()
        };
        // A request whose outer layer fails (a signer KGSS does not trust, a signature
        // that does not verify) is refused before KGSS's ETK key is used: anyone can seal
        // to KGSS's public ETK, and each decryption costs an HSM operation, a use of the
        // custody budget and an audit record. Checked with no key (the unsealer reports
        // the outer layer all the same); it costs a parse and a signature verification.
        let (outer, _) = unseal_to_vec(sealed, &KeyRing::new(), &opts)
            .map_err(|e| KgssError::Custody(e.to_string()))?;
        let v = &outer.verdict;
        let outer_problems: Vec<&str> = v
            .fatal
            .iter()
            .map(|f| f.name())
            .chain(v.errors.iter().map(|e| e.name()))
            .filter(|name| name.starts_with("OUTER_"))
            .collect();
        if !outer_problems.is_empty() {
            return Err(KgssError::Seal(outer_problems.join(", ")));
        }
        // KGSS's ETK key could not be used (custody process, token): not the caller's fault.
        let (result, content) = unseal_to_vec(sealed, &self.ring, &opts)
            .map_err(|e| KgssError::Custody(e.to_string()))?;
        let content = match content {
            Some(c) if result.verdict.is_clean() => Zeroizing::new(c),
            _ => {
                let v = &result.verdict;
                let mut why: Vec<String> = v.fatal.iter().map(|f| format!("{f:?}")).collect();
                why.extend(v.errors.iter().map(|e| format!("{e:?}")));
                return Err(KgssError::Seal(why.join(", ")));
            }
        };
        // The verdict only warns of a stale or missing signing time (and a timestamp
        // stands in for it); KGSS needs it fresh, or the replay table could have
        // forgotten the request, and the signer's certificate was judged at that time.
        let fresh = |t: i64| now - SIGNING_TIME_WINDOW - CLOCK_SKEW < t && t < now + CLOCK_SKEW;
        if !result.signing_time.is_some_and(fresh) {
            return Err(KgssError::Seal(format!(
                "signing time {:?} is not within {SIGNING_TIME_WINDOW} s (± {CLOCK_SKEW} s) \
                 of the service's clock ({now})",
                result.signing_time
            )));
        }
        let identities = result
            .sender
            .as_ref()
            .map(|s| s.identities())
            .unwrap_or_default();
        if identities.is_empty() {
            return Err(KgssError::Seal(
                "the signer's certificate names no eHealth identity".into(),
            ));
        }
        // The replay table remembers the outer signature, not the bytes received: the same
        // request re-encoded (BER has many forms) or with bytes appended opens just as
        // cleanly, and would otherwise be a new request. Only the signer can make another
        // signature (RSASSA-PSS is randomised: two sealings never share one), but anyone
        // can write the same one in another form that verifies: see replay_digest.
        let signature = result
            .outer_signature
            .as_deref()
            .ok_or_else(|| KgssError::Seal("a clean seal without an outer signature".into()))?;
        let signer_key = result
            .sender
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .and_then(|c| c.public_key().ok())
            .ok_or_else(|| KgssError::Seal("a clean seal without a signer's key".into()))?;
        Ok(Opened {
            content,
            identities,
            digest: replay_digest(signature, &signer_key),
        })
    }

    /// An ETK of the caller's own (to seal the answer to), valid now.
    fn callers_etk(&self, etk: &[u8], caller: &[Identity], now: i64) -> Result<Etk, KgssError> {
        let etk = Etk::parse(etk).map_err(|e| KgssError::Content(format!("ETK: {e}")))?;
        let problems = etk.validate(&self.anchors, now);
        if !problems.is_empty() {
            return Err(KgssError::Content(format!("ETK: {problems:?}")));
        }
        let holder = etk.identities();
        if !holder
            .iter()
            .any(|h| caller.iter().any(|c| same_holder(h, c)))
        {
            return Err(KgssError::Content(
                "the ETK is not the signer's: KGSS answers only to the requester".into(),
            ));
        }
        Ok(etk)
    }

    fn seal_to(
        &self,
        content: &[u8],
        recipient: Option<&Etk>,
        kek: Option<&Kek>,
    ) -> Result<Vec<u8>, KgssError> {
        let recipients: Vec<Recipient> = recipient
            .map(|e| Recipient::Certificate(e.encryption_cert().clone()))
            .into_iter()
            .collect();
        let mut out = Vec::with_capacity(content.len() + 8192);
        seal(
            &self.signer,
            &recipients,
            kek,
            content,
            &mut out,
            &SealOptions::default(),
        )
        .map_err(|e| KgssError::Custody(format!("sealing the answer: {e}")))?;
        Ok(out)
    }

    /// `GetNewKey`.
    pub fn get_new_key(
        &self,
        store: &dyn Store,
        sealed: &[u8],
        now: i64,
    ) -> Result<NewKey, KgssError> {
        self.own_certificate_usable(now)?;
        let opened = self.open(sealed, now)?;
        // A replay is refused before any work (a read); the request is remembered with the
        // key it creates, in one transaction (below): a request refused for its content, or
        // whose key could not be stored (a busy store), is no replay when sent again.
        if store.request_seen(&opened.digest, now)? {
            return Err(KgssError::Replay);
        }
        let mut request = GetNewKeyRequestContent::parse(&opened.content)
            .map_err(|e| KgssError::Content(e.to_string()))?;
        check_reader_bounds(&request)?;
        for c in request
            .allowed_readers
            .iter_mut()
            .chain(request.excluded_readers.iter_mut())
        {
            normalize_credential(c)?;
        }
        check_excluded(store, &request.excluded_readers)?;
        let etk = self.callers_etk(&request.etk, &opened.identities, now)?;
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        openssl::rand::rand_bytes(&mut key).map_err(|e| KgssError::Custody(e.to_string()))?;
        let creator = &opened.identities[0];
        let mut record = KgssKey {
            id: [0; 16],
            wrapped_key: Vec::new(),
            wrapping_key_label: self.wrapper.label().to_owned(),
            creator: store_identifier(creator),
            allowed_readers: request
                .allowed_readers
                .iter()
                .map(store_credential)
                .collect(),
            excluded_readers: request
                .excluded_readers
                .iter()
                .map(store_credential)
                .collect(),
            deletion_strategy: request.deletion_strategy.then(|| "holder".to_owned()),
            created_at: now,
        };
        // The key, its event and the request's digest in one transaction: the chain names
        // every stored key, and only those. The answer is sealed before: once the request
        // is remembered with its key, nothing may fail before the answer leaves (a request
        // answered with an error after its key was stored would be a replay when sent
        // again, and its key an orphan).
        for _ in 0..2 {
            openssl::rand::rand_bytes(&mut record.id)
                .map_err(|e| KgssError::Custody(e.to_string()))?;
            // Wrapped with its binding, which names the id: a new id, a new wrap.
            record.wrapped_key = self.wrap_bound(&key, &record)?;
            let answer = GetNewKeyResponseContent {
                new_key_identifier: record.id.to_vec(),
                new_key: SecretBytes::from_slice(&key),
            }
            .to_xml();
            let sealed_response = self.seal_to(&answer, Some(&etk), None)?;
            let event = crate::audit::event(
                now,
                "kgss.create",
                &creator.to_string(),
                hex::encode(record.id),
                "created",
                None,
            );
            match store.remember_request_with_change(
                &opened.digest,
                now + REPLAY_WINDOW,
                now,
                etee_store::Change::InsertKgssKey(&record),
                &event,
            ) {
                Ok(Some(sequence)) => {
                    crate::audit::log(sequence, &event);
                    return Ok(NewKey {
                        key_id: record.id,
                        sealed_response,
                    });
                }
                // A copy of this request was served meanwhile (an insertion always acts).
                Ok(None) => return Err(KgssError::Replay),
                // A clash of 128-bit random ids means a broken generator; once more anyway.
                Err(etee_store::Error::AlreadyExists) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(KgssError::Custody(
            "no free key id in two draws: the random generator is broken".into(),
        ))
    }

    /// `GetKey`.
    pub fn get_key(
        &self,
        store: &dyn Store,
        sealed: &[u8],
        now: i64,
    ) -> Result<Vec<u8>, KgssError> {
        self.own_certificate_usable(now)?;
        // Not remembered here but with the audit event below: a request whose content is
        // malformed or names an unknown key is not in the replay table, and may come again
        // to the same answer; nothing is released to it.
        let opened = self.open(sealed, now)?;
        let request = GetKeyRequestContent::parse(&opened.content)
            .map_err(|e| KgssError::Content(e.to_string()))?;
        let id = key_id(&request.key_identifier)?;
        let record = store.get_kgss_key(&id)?.ok_or(KgssError::UnknownKey)?;
        let allowed: Vec<Credential> = record
            .allowed_readers
            .iter()
            .map(service_credential)
            .collect();
        let excluded: Vec<Credential> = record
            .excluded_readers
            .iter()
            .map(service_credential)
            .collect();
        // The answer, once sealed, is the same whatever the decision's attributes: a
        // decision made again (the registry changed under it) reuses it.
        let mut sealed_answer: Option<Result<Vec<u8>, KgssError>> = None;
        for _ in 0..REGISTRY_ATTEMPTS {
            let registry = self.registry_reads(store, &opened.identities)?;
            let attributes = attributes_of(&opened.identities, &registry);
            let decision = evaluate(&allowed, &excluded, &attributes);
            // Recorded before anything is released, refusals too; no record, no key. The
            // replay check is in the same transaction: a replay is refused with no event, a
            // fresh request is remembered together with its event.
            let outcome = if decision.is_allowed() {
                "granted"
            } else {
                "denied"
            };
            let event = crate::audit::event(
                now,
                "kgss.read",
                &opened.identities[0].to_string(),
                hex::encode(id),
                outcome,
                Some(format!("{decision:?}")),
            );
            // The key is looked for again in that transaction: a deletion may have committed
            // (and been confirmed) since the read above, and nothing is released after it;
            // so is the registry: a change confirmed since it was read means deciding again.
            let remember = || {
                store.remember_key_read(
                    &id,
                    &opened.digest,
                    now + REPLAY_WINDOW,
                    now,
                    &event,
                    &registry,
                )
            };
            if !decision.is_allowed() {
                let read = remember()?;
                if read == etee_store::KeyRead::RegistryChanged {
                    continue;
                }
                let sequence = recorded_read(read)?;
                crate::audit::log(sequence, &event);
                return Err(KgssError::AccessDenied);
            }
            // A replay is refused before any key work (a read). Then the record is committed
            // while the key is unwrapped and the answer sealed, and the answer leaves only
            // once the record is durable: no record, no key. The commit alone decides
            // between concurrent copies of one request; the loser's answer is dropped.
            if store.request_seen(&opened.digest, now)? {
                return Err(KgssError::Replay);
            }
            let (recorded, answer) = match sealed_answer.take() {
                Some(answer) => (remember(), answer),
                // The key is unwrapped before the commit starts: the custody core's audit
                // sync and the store's commit, started together, queue in the disk's
                // journal and the unwrap waits for both; the commit then runs beside the
                // sealing, which takes longer.
                None => {
                    let key = self.unwrap_bound(&record);
                    std::thread::scope(|scope| {
                        let commit = scope.spawn(remember);
                        let answer = key.and_then(|key| {
                            self.get_key_answer(&key, &request.reply_to, &opened, now)
                        });
                        let recorded = commit
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (recorded, answer)
                    })
                }
            };
            let recorded = recorded?;
            if recorded == etee_store::KeyRead::RegistryChanged {
                sealed_answer = Some(answer);
                continue;
            }
            let sequence = recorded_read(recorded)?;
            crate::audit::log(sequence, &event);
            if let Err(e) = &answer {
                // The grant is on the chain, but nothing was released: say so after it (a
                // failure to record this as well leaves the grant alone, which errs on the
                // side of reporting a release).
                let _ = audit(
                    store,
                    now,
                    "kgss.read",
                    &opened.identities[0],
                    &id,
                    "failed",
                    Some(format!("nothing released: {}", e.public_message())),
                );
            }
            return answer;
        }
        tracing::warn!(
            "KGSS GetKey: the attribute registry changed under {REGISTRY_ATTEMPTS} decisions \
             in a row; nothing released"
        );
        Err(KgssError::Store(etee_store::Error::Busy(format!(
            "the attribute registry changed under {REGISTRY_ATTEMPTS} decisions in a row"
        ))))
    }

    /// `key` followed by its record's [`binding`], wrapped by the HSM key.
    fn wrap_bound(&self, key: &[u8], record: &KgssKey) -> Result<Vec<u8>, KgssError> {
        let mut secret = Zeroizing::new(Vec::with_capacity(KEY_LEN + BINDING_LEN));
        secret.extend_from_slice(key);
        secret.extend_from_slice(&binding(record));
        self.wrapper.wrap(&secret)
    }

    /// The key of `record`, unwrapped in the HSM, once the binding wrapped with it is found
    /// to be the record's own. A record's conditions changed in the store by anyone but
    /// KGSS (or its wrapped key copied into another record) release nothing: the store's
    /// writers cannot wrap, only the HSM can. A key stored before bindings were wrapped
    /// (the key alone) is released as before.
    pub fn unwrap_bound(&self, record: &KgssKey) -> Result<Zeroizing<Vec<u8>>, KgssError> {
        let mut secret = self.wrapper.unwrap(&record.wrapped_key)?;
        match secret.len() {
            KEY_LEN => Ok(secret),
            n if n == KEY_LEN + BINDING_LEN => {
                if !openssl::memcmp::eq(&secret[KEY_LEN..], &binding(record)) {
                    return Err(KgssError::Custody(format!(
                        "key {}: its reader conditions, creator or id in the store are not \
                         those it was created with (the store was changed outside KGSS); \
                         nothing is released",
                        hex::encode(record.id)
                    )));
                }
                secret.truncate(KEY_LEN);
                Ok(secret)
            }
            n => Err(KgssError::Custody(format!(
                "key {}: the stored key unwraps to {n} bytes",
                hex::encode(record.id)
            ))),
        }
    }

    /// The sealed `GetKey` answer: the stored key (unwrapped in the HSM, through the
    /// custody core) sealed to the caller's ETK or one-off KEK.
    fn get_key_answer(
        &self,
        key: &[u8],
        reply_to: &ReplyTo,
        opened: &Opened,
        now: i64,
    ) -> Result<Vec<u8>, KgssError> {
        let answer = GetKeyResponseContent {
            key: SecretBytes::from_slice(key),
        }
        .to_xml();
        match reply_to {
            ReplyTo::Etk(etk) => {
                let etk = self.callers_etk(etk, &opened.identities, now)?;
                self.seal_to(&answer, Some(&etk), None)
            }
            ReplyTo::Kek {
                key,
                key_identifier,
            } => {
                let id = match key_identifier {
                    Some(id) => id.clone(),
                    None => {
                        let mut id = vec![0u8; 16];
                        openssl::rand::rand_bytes(&mut id)
                            .map_err(|e| KgssError::Custody(e.to_string()))?;
                        id
                    }
                };
                let kek = Kek::new(key.expose(), &id)
                    .map_err(|e| KgssError::Content(format!("KeyEncryptionKey: {e}")))?;
                self.seal_to(&answer, None, Some(&kek))
            }
        }
    }

    /// Deletes a key for its holder (`caller` are the identities of the TLS client
    /// certificate).
    pub fn delete_key(
        &self,
        store: &dyn Store,
        caller: &[Identity],
        id: &[u8],
        now: i64,
    ) -> Result<(), KgssError> {
        if caller.is_empty() {
            return Err(KgssError::Unauthenticated);
        }
        let id = key_id(id)?;
        let record = store.get_kgss_key(&id)?.ok_or(KgssError::UnknownKey)?;
        let creator = Identity {
            id_type: record.creator.id_type.clone(),
            value: record.creator.value.clone(),
            application_id: None,
        };
        if !caller.iter().any(|c| same_holder(c, &creator)) {
            audit(store, now, "kgss.delete", &caller[0], &id, "denied", None)?;
            return Err(KgssError::NotHolder);
        }
        // The deletion and its event in one transaction: the chain shows it exactly when
        // it happened.
        let event = crate::audit::event(
            now,
            "kgss.delete",
            &caller[0].to_string(),
            hex::encode(id),
            "deleted",
            None,
        );
        let sequence = store
            .apply_with_event(etee_store::Change::DeleteKgssKey(&id), &event)?
            .ok_or(KgssError::UnknownKey)?;
        crate::audit::log(sequence, &event);
        Ok(())
    }

    /// The caller's attributes: those the registry holds for any of its identities, and
    /// those its certificate proves (its SSIN).
    pub fn caller_attributes(
        &self,
        store: &dyn Store,
        identities: &[Identity],
    ) -> Result<Vec<Attribute>, KgssError> {
        Ok(attributes_of(
            identities,
            &self.registry_reads(store, identities)?,
        ))
    }

    /// What the attribute registry holds for each of `identities`, as a decision reads it
    /// (and [`Store::remember_key_read`] checks it again).
    fn registry_reads(
        &self,
        store: &dyn Store,
        identities: &[Identity],
    ) -> Result<Vec<etee_store::RegistryRead>, KgssError> {
        identities
            .iter()
            .map(|id| {
                // The registry keys holders as the platform stores them (`HUB` is `EHP`).
                let (id_type, value) = (stored_type(id), stored_value(id));
                let attributes = store.attributes(&id_type, &value)?;
                Ok(etee_store::RegistryRead {
                    id_type,
                    value,
                    attributes,
                })
            })
            .collect()
    }
}

/// How many times GetKey decides again when the attribute registry changed under its
/// decision before it could be recorded (an administrator's change: rare).
const REGISTRY_ATTEMPTS: usize = 3;

/// A caller's attributes: those its identities imply, then the registry's (`registry`).
fn attributes_of(identities: &[Identity], registry: &[etee_store::RegistryRead]) -> Vec<Attribute> {
    let mut out = implicit_attributes(identities);
    for a in registry.iter().flat_map(|r| &r.attributes) {
        // A registry value set in another form is compared as the conditions are.
        let value =
            comparable_value(&a.namespace, &a.name, &a.value).unwrap_or_else(|_| a.value.clone());
        let a = Attribute::new(&a.namespace, &a.name, &value);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The sequence of a read's recorded event, or why nothing was recorded.
fn recorded_read(read: etee_store::KeyRead) -> Result<u64, KgssError> {
    match read {
        etee_store::KeyRead::Recorded(sequence) => Ok(sequence),
        etee_store::KeyRead::Replay => Err(KgssError::Replay),
        etee_store::KeyRead::KeyGone => Err(KgssError::UnknownKey),
        // Handled by deciding again; never passed here.
        etee_store::KeyRead::RegistryChanged => Err(KgssError::Store(etee_store::Error::Conflict)),
    }
}

/// Same holder: same identifier type and the same value once zero-padded (application
/// ids aside: one holder, several applications).
pub fn same_holder(a: &Identity, b: &Identity) -> bool {
    stored_type(a) == stored_type(b) && stored_value(a) == stored_value(b)
}

/// Bytes of a stored key's [`binding`], wrapped after the key.
const BINDING_LEN: usize = 16;

/// What the release of a stored key depends on, hashed (SHA-256, the first
/// [`BINDING_LEN`] bytes, under a label of its own): its id, its creator (who may delete
/// it), its reader conditions and its deletion strategy, each field length-prefixed so
/// that no two records share an encoding.
fn binding(record: &KgssKey) -> [u8; BINDING_LEN] {
    let mut h = openssl::sha::Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"etee KGSS key binding v1");
    field(&record.id);
    let optional = |o: &Option<String>| {
        o.as_deref()
            .map_or(vec![0], |s| [b"\x01", s.as_bytes()].concat())
    };
    field(record.creator.id_type.as_bytes());
    field(record.creator.value.as_bytes());
    field(&optional(&record.creator.application_id));
    for list in [&record.allowed_readers, &record.excluded_readers] {
        field(&(list.len() as u64).to_be_bytes());
        for c in list {
            field(c.namespace.as_bytes());
            field(c.name.as_bytes());
            field(&(c.values.len() as u64).to_be_bytes());
            for v in &c.values {
                field(v.as_bytes());
            }
        }
    }
    field(&optional(&record.deletion_strategy));
    let digest = h.finish();
    let mut out = [0u8; BINDING_LEN];
    out.copy_from_slice(&digest[..BINDING_LEN]);
    out
}

fn store_credential(c: &Credential) -> etee_store::Credential {
    etee_store::Credential {
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        values: c.values.clone(),
    }
}

fn service_credential(c: &etee_store::Credential) -> Credential {
    Credential {
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        values: c.values.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_formats::cert::Certificate;
    use etee_formats::keystore::{ehealth_entries, EhealthKeystore};
    use etee_store::EmbeddedStore;
    use etee_testpki::{Institution, InstitutionSpec, TestPki};

    fn keystore(inst: &Institution) -> EhealthKeystore {
        let chain = std::iter::once(&inst.auth.cert).chain(&inst.chain).cloned();
        let entries = ehealth_entries(
            inst.auth.key.clone(),
            chain.collect(),
            inst.etk_key.clone(),
            inst.etk_cert.clone(),
        );
        EhealthKeystore::from_entries(entries.unwrap()).unwrap()
    }

    fn seal_for(from: &Institution, to: &Institution, content: &[u8]) -> Vec<u8> {
        let to = Certificate::from_der(&to.etk_cert.to_der().unwrap()).unwrap();
        let mut out = Vec::new();
        let signer = keystore(from).authentication().unwrap();
        seal(
            &signer,
            &[Recipient::Certificate(to)],
            None,
            content,
            &mut out,
            &SealOptions::default(),
        )
        .unwrap();
        out
    }

    fn reads(store: &dyn Store) -> Vec<String> {
        let events = store.events(0, 100).unwrap();
        etee_store::audit::verify(0, etee_store::audit::GENESIS, &events).unwrap();
        events
            .into_iter()
            .filter(|e| e.event.action == "kgss.read")
            .map(|e| e.event.outcome)
            .collect()
    }

    /// GetKey remembers the request with its audit event: a replay (of a granted or a
    /// denied read) is refused and leaves no `kgss.read` event; a request that names no key
    /// is not remembered.
    #[test]
    fn reader_conditions_are_normalised_or_refused() {
        let ssin =
            |v: &[&str]| Credential::new(vocabulary::IDENTIFICATION_NS, vocabulary::PERSON_SSIN, v);
        // A patient's SSIN without its leading zeros is padded, so that it matches.
        let mut c = ssin(&["1234567890"]);
        normalize_credential(&mut c).unwrap();
        assert_eq!(c.values, ["01234567890"]);
        // Not an SSIN, or an empty value (which would match nobody, so an exclusion would
        // silently not apply): refused.
        for bad in [ssin(&["12345678901234"]), ssin(&["abc"]), ssin(&[""])] {
            let mut c = bad.clone();
            assert!(
                matches!(normalize_credential(&mut c), Err(KgssError::Content(_))),
                "{bad:?}"
            );
        }
        let mut empty = vocabulary::recognised_pharmacy();
        empty.values = vec![String::new()];
        assert!(normalize_credential(&mut empty).is_err());
        // Other credentials are left as they are.
        let mut doctor = vocabulary::any_doctor();
        normalize_credential(&mut doctor).unwrap();
        assert_eq!(doctor, vocabulary::any_doctor());
        let mut pharmacy = vocabulary::recognised_pharmacy();
        normalize_credential(&mut pharmacy).unwrap();
        assert_eq!(pharmacy, vocabulary::recognised_pharmacy());
        // A care provider's NIHII11, of each *:nihii11 name, is padded as the SSIN is; not
        // a NIHII11 is refused.
        for name in vocabulary::NIHII11_NAMES {
            let nihii11 = |v: &[&str]| Credential::new(vocabulary::CERTIFIED_NS, name, v);
            let mut c = nihii11(&["10203040", "12345678901"]);
            normalize_credential(&mut c).unwrap();
            assert_eq!(c.values, ["00010203040", "12345678901"], "{name}");
            for bad in [nihii11(&["123456789012"]), nihii11(&["x1"])] {
                let mut c = bad.clone();
                assert!(
                    matches!(normalize_credential(&mut c), Err(KgssError::Content(_))),
                    "{bad:?}"
                );
            }
        }
    }

    /// A KGSS of `pki` (its anchors unused by the tests that take it).
    fn kgss_of(pki: &TestPki) -> Kgss {
        let kgss_inst = pki
            .institution(&InstitutionSpec::new("CBE", "0809394427", "KGSS"))
            .unwrap();
        Kgss {
            signer: keystore(&kgss_inst).authentication().unwrap(),
            ring: keystore(&kgss_inst).key_ring(),
            wrapper: Arc::new(InsecureMemoryWrapper::new_random()),
            anchors: TrustAnchors::new(vec![]),
        }
    }

    /// An embedded store (in a temporary directory, kept as long as the handle) whose
    /// attribute registry says that holder `(id_type, value)` is a recognised pharmacy.
    fn store_recognising(id_type: &str, value: &str) -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let recognised = etee_store::Attribute {
            namespace: vocabulary::CERTIFIED_NS.into(),
            name: vocabulary::RECOGNISED_PHARMACY.into(),
            value: "true".into(),
        };
        store.set_attribute(id_type, value, &recognised).unwrap();
        (dir, store)
    }

    /// A caller whose certificate says `HUB=` has the attributes the registry holds for
    /// `EHP` (as `etee platform attributes set --holder HUB=…` stores them).
    #[test]
    fn a_hub_caller_has_its_ehp_attributes() {
        let (_dir, store) = store_recognising("EHP", "1990001916");
        let pki = TestPki::generate("kgss-hub").unwrap();
        let hub = pki
            .institution(&InstitutionSpec::new("HUB", "1990001916", "A Hub"))
            .unwrap();
        let identities = etee_formats::identity::identities(
            &Certificate::from_der(&hub.auth.cert.to_der().unwrap()).unwrap(),
        );
        assert_eq!(identities[0].id_type, "HUB");
        let attributes = kgss_of(&pki)
            .caller_attributes(&store, &identities)
            .unwrap();
        assert!(
            vocabulary::recognised_pharmacy().matches(&attributes),
            "{attributes:?}"
        );
    }

    /// A key's reader conditions are bounded, in number and in values each.
    #[test]
    fn reader_conditions_are_bounded() {
        let request = |allowed: usize, excluded: usize, values: usize| {
            let v: Vec<String> = (0..values).map(|i| format!("{i:011}")).collect();
            let v: Vec<&str> = v.iter().map(String::as_str).collect();
            let c = Credential::new(vocabulary::IDENTIFICATION_NS, vocabulary::PERSON_SSIN, &v);
            GetNewKeyRequestContent {
                allowed_readers: vec![c.clone(); allowed],
                excluded_readers: vec![c; excluded],
                etk: vec![1],
                deletion_strategy: false,
            }
        };
        assert!(check_reader_bounds(&request(60, 4, 64)).is_ok());
        for bad in [request(60, 5, 1), request(65, 0, 1), request(1, 0, 65)] {
            assert!(matches!(
                check_reader_bounds(&bad),
                Err(KgssError::Content(_))
            ));
        }
    }

    /// An exclusion is refused when the platform never attests its name: neither §5.1's
    /// vocabulary nor a name the registry holds. Registry values are compared in the
    /// conditions' form.
    #[test]
    fn exclusions_must_name_what_the_platform_attests() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let ssin = Credential::new(
            vocabulary::IDENTIFICATION_NS,
            vocabulary::PERSON_SSIN,
            &["01234567890"],
        );
        let nurse = Credential::new(vocabulary::CERTIFIED_NS, vocabulary::NURSE_NIHII11, &[]);
        let custom = Credential::new("urn:example", "urn:example:blocked", &["yes"]);
        let known = [
            ssin,
            nurse,
            vocabulary::any_doctor(),
            vocabulary::recognised_pharmacy(),
        ];
        check_excluded(&store, &known).unwrap();
        // An SSIN asked in the certified namespace is not the SSIN a certificate proves.
        let misplaced = Credential::new(vocabulary::CERTIFIED_NS, vocabulary::PERSON_SSIN, &[]);
        for bad in [&misplaced, &custom] {
            assert!(
                matches!(
                    check_excluded(&store, std::slice::from_ref(bad)),
                    Err(KgssError::Content(_))
                ),
                "{bad:?}"
            );
        }
        // The operator's own name, once the registry holds it (for anybody), is evaluated.
        let attribute = |ns: &str, name: &str, value: &str| etee_store::Attribute {
            namespace: ns.into(),
            name: name.into(),
            value: value.into(),
        };
        store
            .set_attribute(
                "NIHII-PHARMACY",
                "27150201",
                &attribute("urn:example", "urn:example:blocked", "yes"),
            )
            .unwrap();
        check_excluded(&store, &[custom]).unwrap();

        // A registry NIHII11 value set without its leading zeros (`--attribute` stores it
        // as given; the holder is stored padded) matches the padded condition.
        store
            .set_attribute(
                "NIHII11",
                "00010203040",
                &attribute(
                    vocabulary::CERTIFIED_NS,
                    vocabulary::NURSE_NIHII11,
                    "10203040",
                ),
            )
            .unwrap();
        let kgss = kgss_of(&TestPki::generate("kgss-nihii11").unwrap());
        let nurse = Identity {
            id_type: "NIHII11".into(),
            value: "10203040".into(),
            application_id: None,
        };
        let attributes = kgss.caller_attributes(&store, &[nurse]).unwrap();
        let mut excluded = Credential::new(
            vocabulary::CERTIFIED_NS,
            vocabulary::NURSE_NIHII11,
            &["10203040"],
        );
        normalize_credential(&mut excluded).unwrap();
        assert!(excluded.matches(&attributes), "{attributes:?}");
    }

    /// A signature written in another form that still verifies has the same replay key:
    /// an RSA-PSS signature whose leading zero byte is stripped (OpenSSL takes it), an
    /// ECDSA one with `n − s`. Distinct signatures keep distinct keys.
    #[test]
    fn a_signature_in_another_form_is_the_same_request() {
        use openssl::hash::MessageDigest;
        use openssl::pkey::{PKey, Private};
        use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
        let pss = |key: &PKey<Private>| {
            let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
            s.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
            s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
            s.update(b"request").unwrap();
            s.sign_to_vec().unwrap()
        };
        let pss_verifies = |key: &PKey<Private>, sig: &[u8]| {
            let mut v = Verifier::new(MessageDigest::sha256(), key).unwrap();
            v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
            v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
            v.update(b"request").unwrap();
            v.verify(sig).unwrap_or(false)
        };
        let rsa = etee_testpki::rsa_key(2048).unwrap();
        let public = PKey::public_key_from_der(&rsa.public_key_to_der().unwrap()).unwrap();
        // One signature in 256 starts with a zero byte.
        let full = (0..5000)
            .map(|_| pss(&rsa))
            .find(|s| s[0] == 0)
            .expect("a signature starting with 0x00");
        let stripped = &full[1..];
        assert!(pss_verifies(&rsa, stripped), "OpenSSL takes it");
        assert_ne!(openssl::sha::sha256(&full), openssl::sha::sha256(stripped));
        assert_eq!(
            replay_digest(&full, &public),
            replay_digest(stripped, &public)
        );
        let other = pss(&rsa);
        assert_ne!(
            replay_digest(&other, &public),
            replay_digest(&full, &public)
        );

        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let ec = openssl::ec::EcKey::generate(&group).unwrap();
        let ec_public = PKey::from_ec_key(
            openssl::ec::EcKey::from_public_key(&group, ec.public_key()).unwrap(),
        )
        .unwrap();
        let digest = openssl::sha::sha256(b"request");
        let sig = openssl::ecdsa::EcdsaSig::sign(&digest, &ec).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let mut n = openssl::bn::BigNum::new().unwrap();
        group.order(&mut n, &mut ctx).unwrap();
        let mut flipped_s = openssl::bn::BigNum::new().unwrap();
        flipped_s.checked_sub(&n, sig.s()).unwrap();
        let flipped = openssl::ecdsa::EcdsaSig::from_private_components(
            sig.r().to_owned().unwrap(),
            flipped_s,
        )
        .unwrap();
        assert!(flipped.verify(&digest, &ec).unwrap(), "n − s verifies too");
        let (a, b) = (sig.to_der().unwrap(), flipped.to_der().unwrap());
        assert_ne!(a, b);
        assert_eq!(replay_digest(&a, &ec_public), replay_digest(&b, &ec_public));
        let again = openssl::ecdsa::EcdsaSig::sign(&digest, &ec)
            .unwrap()
            .to_der()
            .unwrap();
        assert_ne!(
            replay_digest(&again, &ec_public),
            replay_digest(&a, &ec_public)
        );
    }

    /// KGSS (trusting its PKI's root, keys wrapped by `wrapper`) and Bob, a pharmacy.
    struct Pharmacy {
        kgss_inst: Institution,
        bob: Institution,
        kgss: Kgss,
    }

    impl Pharmacy {
        fn new(pki: &TestPki, wrapper: Arc<dyn KeyWrapper>) -> Self {
            let kgss_spec =
                InstitutionSpec::new("CBE", "0809394427", "KGSS").with_application_id("KGSS");
            let kgss_inst = pki.institution(&kgss_spec).unwrap();
            let bob = pki
                .institution(&InstitutionSpec::new(
                    "NIHII-PHARMACY",
                    "27150201",
                    "Bob Pharmacy",
                ))
                .unwrap();
            let kgss = Kgss {
                signer: keystore(&kgss_inst).authentication().unwrap(),
                ring: keystore(&kgss_inst).key_ring(),
                wrapper,
                anchors: TrustAnchors::new(vec![Certificate::from_der(
                    &pki.root.cert.to_der().unwrap(),
                )
                .unwrap()]),
            };
            Pharmacy {
                kgss_inst,
                bob,
                kgss,
            }
        }

        /// Bob's GetNewKey for recognised pharmacies, sealed to KGSS.
        fn new_key_request(&self) -> Vec<u8> {
            let content = GetNewKeyRequestContent {
                allowed_readers: vec![vocabulary::recognised_pharmacy()],
                excluded_readers: vec![],
                etk: self.bob.etk.clone(),
                deletion_strategy: false,
            };
            seal_for(&self.bob, &self.kgss_inst, &content.to_xml())
        }

        /// Bob's GetKey of `key_id`, the answer sealed to his ETK.
        fn get_key_request(&self, key_id: &[u8]) -> Vec<u8> {
            let content = GetKeyRequestContent {
                key_identifier: key_id.to_vec(),
                reply_to: ReplyTo::Etk(self.bob.etk.clone()),
            };
            seal_for(&self.bob, &self.kgss_inst, &content.to_xml())
        }
    }

    /// A wrapping key that, at its first unwrap, has an administrator remove the caller's
    /// "recognised pharmacy" attribute (with its event, as `etee platform attributes
    /// remove` does): between GetKey's decision and its record, deterministically.
    struct RemovingAtUnwrap {
        inner: InsecureMemoryWrapper,
        store: Arc<EmbeddedStore>,
        removed: std::sync::atomic::AtomicBool,
    }

    impl KeyWrapper for RemovingAtUnwrap {
        fn label(&self) -> &str {
            self.inner.label()
        }
        fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, KgssError> {
            self.inner.wrap(secret)
        }
        fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KgssError> {
            if !self.removed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let event = crate::audit::event(
                    1,
                    "attributes.remove",
                    "admin",
                    "bob".into(),
                    "done",
                    None,
                );
                let change = etee_store::Change::RemoveAttribute {
                    id_type: "NIHII-PHARMACY",
                    value: "27150201",
                    namespace: vocabulary::CERTIFIED_NS,
                    name: vocabulary::RECOGNISED_PHARMACY,
                };
                assert!(self
                    .store
                    .apply_with_event(change, &event)
                    .unwrap()
                    .is_some());
            }
            self.inner.unwrap(wrapped)
        }
    }

    /// GetKey decided on an attribute that an administrator removed (and saw confirmed)
    /// before the decision was recorded: the record finds the registry changed, the request
    /// is decided again, denied, and the chain has the removal before the denial, no grant.
    #[test]
    fn a_registry_change_under_a_decision_is_decided_again() {
        let (_dir, store) = store_recognising("NIHII-PHARMACY", "27150201");
        let store = Arc::new(store);
        let p = Pharmacy::new(
            &TestPki::generate("kgss-registry").unwrap(),
            Arc::new(RemovingAtUnwrap {
                inner: InsecureMemoryWrapper::new_random(),
                store: store.clone(),
                removed: false.into(),
            }),
        );
        let now = crate::unix_now();
        let id = p
            .kgss
            .get_new_key(&*store, &p.new_key_request(), now)
            .unwrap()
            .key_id;
        let get_key = p.get_key_request(&id);
        let kgss = &p.kgss;
        assert!(matches!(
            kgss.get_key(&*store, &get_key, now),
            Err(KgssError::AccessDenied)
        ));
        let events = store.events(0, 100).unwrap();
        let actions: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.event.action.as_str(), e.event.outcome.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("kgss.create", "created"),
                ("attributes.remove", "done"),
                ("kgss.read", "denied")
            ]
        );
    }

    #[test]
    fn get_key_replays_are_refused_without_an_event() {
        let p = Pharmacy::new(
            &TestPki::generate("kgss-unit").unwrap(),
            Arc::new(InsecureMemoryWrapper::new_random()),
        );
        let (kgss, bob, kgss_inst) = (&p.kgss, &p.bob, &p.kgss_inst);
        let (_dir, store) = store_recognising("NIHII-PHARMACY", "27150201");
        let now = crate::unix_now();

        let new_key = p.new_key_request();
        let id = kgss.get_new_key(&store, &new_key, now).unwrap().key_id;
        assert!(matches!(
            kgss.get_new_key(&store, &new_key, now),
            Err(KgssError::Replay)
        ));

        let get_key = |key_id: &[u8]| p.get_key_request(key_id);
        let granted = get_key(&id);
        kgss.get_key(&store, &granted, now).unwrap();
        assert_eq!(reads(&store), ["granted"]);
        assert!(matches!(
            kgss.get_key(&store, &granted, now),
            Err(KgssError::Replay)
        ));
        assert_eq!(reads(&store), ["granted"], "a replay leaves no event");

        // Granted, but the answer cannot be made (the reply ETK is not Bob's): the chain
        // says that nothing was released after all.
        let not_his = seal_for(
            bob,
            kgss_inst,
            &GetKeyRequestContent {
                key_identifier: id.to_vec(),
                reply_to: ReplyTo::Etk(kgss_inst.etk.clone()),
            }
            .to_xml(),
        );
        assert!(matches!(
            kgss.get_key(&store, &not_his, now),
            Err(KgssError::Content(_))
        ));
        assert_eq!(reads(&store), ["granted", "granted", "failed"]);

        store
            .remove_attribute(
                "NIHII-PHARMACY",
                "27150201",
                vocabulary::CERTIFIED_NS,
                vocabulary::RECOGNISED_PHARMACY,
            )
            .unwrap();
        let denied = get_key(&id);
        assert!(matches!(
            kgss.get_key(&store, &denied, now),
            Err(KgssError::AccessDenied)
        ));
        assert!(matches!(
            kgss.get_key(&store, &denied, now),
            Err(KgssError::Replay)
        ));
        assert_eq!(reads(&store), ["granted", "granted", "failed", "denied"]);

        // Names no key: nothing released, nothing remembered, so the same answer again.
        let unknown = get_key(&[9; 16]);
        for _ in 0..2 {
            assert!(matches!(
                kgss.get_key(&store, &unknown, now),
                Err(KgssError::UnknownKey)
            ));
        }
        assert_eq!(reads(&store), ["granted", "granted", "failed", "denied"]);
    }

    /// Private-key uses counted, for the tests that check none happens.
    struct Counting {
        inner: Arc<dyn etee_formats::keys::PrivateKeyOps>,
        decryptions: std::sync::atomic::AtomicUsize,
    }

    impl etee_formats::keys::PrivateKeyOps for Counting {
        fn sign_pss_sha256(
            &self,
            key: &etee_formats::keys::KeyId,
            digest: &[u8; 32],
        ) -> Result<Vec<u8>, KeyError> {
            self.inner.sign_pss_sha256(key, digest)
        }

        fn decrypt_pkcs1v15(
            &self,
            key: &etee_formats::keys::KeyId,
            blob: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
            self.decryptions
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.decrypt_pkcs1v15(key, blob)
        }
    }

    /// A request from a signer KGSS does not trust is refused before KGSS's ETK key is
    /// used (no HSM operation, budget use or audit record for anyone who can seal to
    /// KGSS's public ETK); a trusted signer's request is opened with one decryption.
    #[test]
    fn an_untrusted_signer_costs_no_private_key_operation() {
        let pki = TestPki::generate("kgss-outer").unwrap();
        let elsewhere = TestPki::generate("kgss-outer-foreign").unwrap();
        let kgss_inst = pki
            .institution(&InstitutionSpec::new("CBE", "0809394427", "KGSS"))
            .unwrap();
        let spec = InstitutionSpec::new("NIHII-PHARMACY", "27150201", "bob");
        let (bob, impostor) = (
            pki.institution(&spec).unwrap(),
            elsewhere.institution(&spec).unwrap(),
        );
        let counting = Arc::new(Counting {
            inner: keystore(&kgss_inst).key_ring().keys()[0].ops.clone(),
            decryptions: Default::default(),
        });
        let mut ring = KeyRing::new();
        for mut k in keystore(&kgss_inst).key_ring().keys().iter().cloned() {
            k.ops = counting.clone();
            ring.add(k);
        }
        let root = Certificate::from_der(&pki.root.cert.to_der().unwrap()).unwrap();
        let kgss = Kgss {
            ring,
            anchors: TrustAnchors::new(vec![root]),
            ..kgss_of(&pki)
        };
        let now = etee_formats::unix_now();
        let refused = kgss.open(&seal_for(&impostor, &kgss_inst, b"<x/>"), now);
        assert!(
            matches!(&refused, Err(KgssError::Seal(why)) if why.contains("OUTER_CERTIFICATE_CHAIN_NOT_TRUSTED")),
            "{:?}",
            refused.err()
        );
        assert_eq!(
            counting
                .decryptions
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        let opened = kgss
            .open(&seal_for(&bob, &kgss_inst, b"<x/>"), now)
            .unwrap();
        assert_eq!(&opened.content[..], b"<x/>");
        assert_eq!(
            counting
                .decryptions
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    /// A stored key is released only with the binding it was wrapped with: the record's
    /// own. A key wrapped alone (stored before bindings were wrapped) is still released;
    /// a wrap of any other length is refused.
    #[test]
    fn a_stored_key_is_released_with_its_own_binding_only() {
        let pki = TestPki::generate("kgss-binding").unwrap();
        let kgss = kgss_of(&pki);
        let key = [7u8; KEY_LEN];
        let mut record = KgssKey {
            id: [1; 16],
            wrapped_key: Vec::new(),
            wrapping_key_label: kgss.wrapper.label().to_owned(),
            creator: etee_store::Identifier::new("NIHII-HOSPITAL", "71000436", None),
            allowed_readers: vec![store_credential(&vocabulary::recognised_pharmacy())],
            excluded_readers: vec![],
            deletion_strategy: Some("holder".into()),
            created_at: 0,
        };
        record.wrapped_key = kgss.wrap_bound(&key, &record).unwrap();
        assert_eq!(kgss.unwrap_bound(&record).unwrap().as_slice(), key);
        let changes: [fn(&mut KgssKey); 6] = [
            |r| r.id[0] ^= 1,
            |r| r.creator.value = "71000437".into(),
            |r| r.creator.application_id = Some("APP".into()),
            |r| r.allowed_readers[0].values.clear(),
            |r| r.excluded_readers.push(r.allowed_readers[0].clone()),
            |r| r.deletion_strategy = None,
        ];
        for change in changes {
            let mut changed = record.clone();
            change(&mut changed);
            assert!(matches!(
                kgss.unwrap_bound(&changed),
                Err(KgssError::Custody(m)) if m.contains("changed outside KGSS")
            ));
        }
        // Moving a value from one reader list to the other changes the binding too.
        let mut moved = record.clone();
        moved.excluded_readers = std::mem::take(&mut moved.allowed_readers);
        assert!(kgss.unwrap_bound(&moved).is_err());

        let legacy = KgssKey {
            wrapped_key: kgss.wrapper.wrap(&key).unwrap(),
            ..record.clone()
        };
        assert_eq!(kgss.unwrap_bound(&legacy).unwrap().as_slice(), key);
        let odd = KgssKey {
            wrapped_key: kgss.wrapper.wrap(&[7u8; 24]).unwrap(),
            ..record
        };
        assert!(
            matches!(kgss.unwrap_bound(&odd), Err(KgssError::Custody(m)) if m.contains("24 bytes"))
        );
    }
}
