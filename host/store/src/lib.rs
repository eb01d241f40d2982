//! Storage for the platform services (ETKDepot, KGSS, KeyDepot): one trait, two backends.
//!
//! The services see only the [`Store`] trait, a synchronous, `Send + Sync` interface meant to be
//! shared as `Arc<dyn Store>` and called from `tokio::task::spawn_blocking`. The store holds plain
//! data: it never parses certificates nor does cryptography (KGSS keys arrive already wrapped by
//! an HSM key), so both backends stay small and easy to audit.
//!
//! - [`EmbeddedStore`] is the default: one file, no server, built on `redb` (an ACID, copy-on-write
//!   embedded database). Every write is one transaction committed with immediate durability, so a
//!   call that returned `Ok` survives a crash and a crash before that leaves nothing half-written.
//! - [`PgStore`] is for deployments where several platform instances share one PostgreSQL
//!   database. Writes that must be decided once across instances (duplicate ids, replay detection)
//!   are single statements (`INSERT ... ON CONFLICT`), so they are atomic without locks; a
//!   KeyDepot key id's registration and deletion also take an advisory lock on the id, so that
//!   a registration racing the id's deletion cannot slip past its retirement.
//!
//! Both keep a schema-version record and apply numbered migrations in one transaction when
//! opened; a store written by a newer build is refused with [`Error::SchemaTooNew`] rather than
//! misread. [`open`] picks the backend from a URL or a path:
//!
//! ```no_run
//! let store = etee_store::open("/var/lib/etee/store.redb")?; // or "postgres://..."
//! let fresh = store.remember_request(&[0; 32], 1_700_000_300, 1_700_000_000)?;
//! # let _ = fresh;
//! # Ok::<(), etee_store::Error>(())
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod audit;
mod embedded;
mod pg;
pub mod scratch;

pub use audit::{AuditEvent, StoredEvent};
pub use embedded::EmbeddedStore;
pub use pg::PgStore;

/// The schema version this build writes and understands (both backends share the numbering).
pub const SCHEMA_VERSION: u64 = 3;

/// Pool size used by [`open`] for PostgreSQL.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// What can go wrong. Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record with the same unique key is already stored.
    #[error("a record with this id already exists")]
    AlreadyExists,
    /// The store was written by a newer build; reading it could misinterpret data.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: u64, supported: u64 },
    /// Stored data that does not decode (damaged row, foreign writer).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The caller passed a value the store refuses (e.g. a key id of the wrong length).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The record changed since the caller read it (a conditional update found another
    /// version): read it again and retry.
    #[error("the record changed since it was read")]
    Conflict,
    /// The database engine failed; the message is the engine's.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The database could not do it now, and nothing was written: a lock waited for past
    /// `lock_timeout` (an instance stalled holding it, or heavy contention), a deadlock or
    /// serialization failure, a statement cancelled, or no free connection in time. The
    /// same request may succeed when tried again.
    #[error("storage busy: {0}")]
    Busy(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The holder already has the most public keys allowed
    /// ([`Change::InsertPublicKeyWithin`]).
    #[error("the holder already has {limit} keys, the most allowed")]
    TooManyKeys { limit: usize },
    /// [`Change::PutEtkExclusive`]: an identifier already finds the ETK of another holder.
    #[error("{}={} already finds the ETK of another holder", .0.identifier.id_type, .0.identifier.value)]
    IdentifierTaken(Box<IdentifierTaken>),
    /// The embedded store's file is open in another process (one process per file).
    #[error(
        "the store file is in use by another process (probably a running `etee platform \
         serve`): stop it and run this command again (an embedded store serves one process \
         at a time; a PostgreSQL store can be changed while the platform runs)"
    )]
    InUse,
}

/// What [`Error::IdentifierTaken`] found: the identifier asked for, and the identifiers of
/// the other holder's ETK stored under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierTaken {
    pub identifier: Identifier,
    pub by: Vec<Identifier>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `ids` name one of `holder` by type and value (any application id).
pub(crate) fn names_holder(ids: &[Identifier], holder: &[Identifier]) -> bool {
    ids.iter().any(|i| {
        holder
            .iter()
            .any(|h| h.id_type == i.id_type && h.value == i.value)
    })
}

/// An identifier of a holder as ETKDepot looks it up: type ("CBE", "NIHII-PHARMACY", "SSIN",
/// ...), value (already normalised by the caller) and an optional application id ("KGSS").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    pub id_type: String,
    pub value: String,
    pub application_id: Option<String>,
}

impl Identifier {
    pub fn new(id_type: &str, value: &str, application_id: Option<&str>) -> Self {
        Identifier {
            id_type: id_type.to_owned(),
            value: value.to_owned(),
            application_id: application_id.map(str::to_owned),
        }
    }

    /// Whether this identifier is the holder `(id_type, value)`, restricted to `application_id`
    /// when one is given.
    pub fn matches(&self, id_type: &str, value: &str, application_id: Option<&str>) -> bool {
        self.id_type == id_type
            && self.value == value
            && match application_id {
                None => true,
                // Empty: the ETK without an application id (see `Store::find_etks`).
                Some("") => self.application_id.as_deref().is_none_or(str::is_empty),
                Some(a) => self.application_id.as_deref() == Some(a),
            }
    }
}

/// An ETK registered in the depot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtkRecord {
    /// SHA-256 of `etk`, computed by the caller; the primary key, so re-putting is idempotent.
    pub digest: [u8; 32],
    /// Every identifier in the holder's DN (each with the same application id).
    pub identifiers: Vec<Identifier>,
    /// The ETK (CMS SignedData), opaque here.
    pub etk: Vec<u8>,
    /// Validity of the encryption certificate, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub registered_at: i64,
}

/// A reader condition of a KGSS key: a credential with one of `values` (empty: any value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub namespace: String,
    pub name: String,
    pub values: Vec<String>,
}

/// A KGSS key. `Debug` shows the wrapped key's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct KgssKey {
    /// Random key id.
    pub id: [u8; 16],
    /// The AES key wrapped by an HSM key (opaque here).
    pub wrapped_key: Vec<u8>,
    /// Which HSM key wrapped it.
    pub wrapping_key_label: String,
    /// The holder that created it (and may delete it).
    pub creator: Identifier,
    pub allowed_readers: Vec<Credential>,
    pub excluded_readers: Vec<Credential>,
    pub deletion_strategy: Option<String>,
    pub created_at: i64,
}

impl fmt::Debug for KgssKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KgssKey")
            .field("id", &hex::encode(self.id))
            .field(
                "wrapped_key",
                &format_args!("<{} bytes>", self.wrapped_key.len()),
            )
            .field("wrapping_key_label", &self.wrapping_key_label)
            .field("creator", &self.creator)
            .field("allowed_readers", &self.allowed_readers)
            .field("excluded_readers", &self.excluded_readers)
            .field("deletion_strategy", &self.deletion_strategy)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A public key registered in KeyDepot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyRecord {
    /// Unique, 1..=64 bytes.
    pub key_id: Vec<u8>,
    pub holder: Identifier,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// Holder-supplied information.
    pub info: BTreeMap<String, String>,
    pub attestation: Option<Vec<u8>>,
    pub created_at: i64,
}

/// Longest KeyDepot key id accepted.
pub const MAX_KEY_ID_LEN: usize = 64;

/// An extra authenticated attribute of a caller (e.g. "recognised pharmacy").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attribute {
    pub namespace: String,
    pub name: String,
    pub value: String,
}

/// A holder and its attributes, as listed for administrators: `(id_type, value, attributes)`.
pub type AttributeHolder = (String, String, Vec<Attribute>);

/// The storage of the platform services. Every method is one transaction.
pub trait Store: Send + Sync {
    /// "embedded" or "postgres", for logs and status pages.
    fn backend_name(&self) -> &'static str;

    /// How many callers the store serves at once, when it has a bound (a connection
    /// pool): more wait inside the store. `None`: no bound of its own.
    fn concurrency(&self) -> Option<usize> {
        None
    }

    /// Makes `change` in a transaction of its own, committed when it changed something:
    /// true then, false (nothing written) when it found nothing to act on; a taken or
    /// retired key id for an insertion is [`Error::AlreadyExists`]. What each single-change
    /// writer below does ([`put_etk`](Store::put_etk), [`set_attribute`](Store::set_attribute),
    /// ...).
    fn apply(&self, change: Change<'_>) -> Result<bool>;

    /// In one transaction: `request`'s digest remembered (digest, expiry, now; as by
    /// [`remember_request`](Store::remember_request)), then `change` made, then `event`
    /// appended, returning its sequence; `None`, and nothing written, for a replay or a
    /// change with nothing to act on. What [`apply_with_event`](Store::apply_with_event),
    /// [`remember_request_with_event`](Store::remember_request_with_event) and
    /// [`remember_request_with_change`](Store::remember_request_with_change) do.
    fn write_with_event(
        &self,
        request: Option<(&[u8; 32], i64, i64)>,
        change: Option<Change<'_>>,
        event: &AuditEvent,
    ) -> Result<Option<u64>>;

    /// Registers an ETK; putting one whose digest is already stored changes nothing.
    fn put_etk(&self, record: &EtkRecord) -> Result<()> {
        self.apply(Change::PutEtk(record)).map(drop)
    }
    /// [`put_etk`](Store::put_etk) under the rule of [`Change::PutEtkExclusive`]:
    /// refused with [`Error::IdentifierTaken`] when an identifier of `exclusive` already
    /// finds an ETK of another holder than `holder`.
    fn put_etk_exclusive(
        &self,
        record: &EtkRecord,
        exclusive: &[Identifier],
        holder: &[Identifier],
    ) -> Result<()> {
        self.apply(Change::PutEtkExclusive {
            record,
            exclusive,
            holder,
        })
        .map(drop)
    }
    /// The ETKs of holder `(id_type, value)`: all of them when `application_id` is `None`,
    /// only those without an application id when it is `Some("")` (the holder's default
    /// ETK), else only those with that application id. Newest (by `not_before`) first.
    fn find_etks(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<Vec<EtkRecord>>;
    /// Removes an ETK: the record removed (with every identifier it was published under),
    /// `None` when it was not there.
    fn remove_etk(&self, digest: &[u8; 32]) -> Result<Option<EtkRecord>>;

    /// Stores a new KGSS key, durably when it returns `Ok`; [`Error::AlreadyExists`] if the id is
    /// taken.
    fn insert_kgss_key(&self, key: &KgssKey) -> Result<()> {
        self.apply(Change::InsertKgssKey(key)).map(drop)
    }
    fn get_kgss_key(&self, id: &[u8; 16]) -> Result<Option<KgssKey>>;
    /// Deletes a KGSS key for good; false when it was not there.
    fn delete_kgss_key(&self, id: &[u8; 16]) -> Result<bool> {
        self.apply(Change::DeleteKgssKey(id))
    }
    /// A page of the stored KGSS keys, in id order: at most `limit` of those whose id
    /// comes after `after` (from the first when `None`). For administrators' listings;
    /// page on with the last id returned. The wrapped keys come along, opaque as ever.
    fn kgss_keys(&self, after: Option<&[u8; 16]>, limit: usize) -> Result<Vec<KgssKey>>;

    /// Stores a new public key; [`Error::AlreadyExists`] on a key id that is taken, or was
    /// ever taken (see [`Store::delete_public_key`]).
    fn insert_public_key(&self, record: &PublicKeyRecord) -> Result<()> {
        self.apply(Change::InsertPublicKey(record)).map(drop)
    }
    fn get_public_key(&self, key_id: &[u8]) -> Result<Option<PublicKeyRecord>>;
    /// The public keys of holder `(id_type, value)`, any application id when `None`; by key id.
    fn list_public_keys(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<Vec<PublicKeyRecord>>;
    /// Replaces the key's information by `info` if it is still `expected` (what the caller
    /// read and built `info` from); false when the key is not there, [`Error::Conflict`]
    /// when its information is no longer `expected`. Conditional, so that bounds checked on
    /// the new information hold against concurrent changes.
    fn update_public_key_info(
        &self,
        key_id: &[u8],
        expected: &BTreeMap<String, String>,
        info: &BTreeMap<String, String>,
    ) -> Result<bool> {
        self.apply(Change::UpdatePublicKeyInfo {
            key_id,
            expected,
            info,
        })
    }
    /// Deletes a public key for good (false when it was not there) and retires its key id
    /// in the same transaction: a key id names one key for ever, so that a sender holding
    /// an old id can never reach somebody else's key registered under it later.
    fn delete_public_key(&self, key_id: &[u8]) -> Result<bool> {
        self.apply(Change::DeletePublicKey(key_id))
    }

    /// Sets an attribute of holder `(id_type, value)`, replacing the value of the same
    /// namespace and name. False when the holder already had it with that value (nothing
    /// was written), so that a repeated administrative command adds no audit event.
    fn set_attribute(&self, id_type: &str, value: &str, attribute: &Attribute) -> Result<bool> {
        self.apply(Change::SetAttribute {
            id_type,
            value,
            attribute,
        })
    }
    fn remove_attribute(
        &self,
        id_type: &str,
        value: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool> {
        self.apply(Change::RemoveAttribute {
            id_type,
            value,
            namespace,
            name,
        })
    }
    /// The holder's attributes, by namespace then name.
    fn attributes(&self, id_type: &str, value: &str) -> Result<Vec<Attribute>>;
    /// Every holder with at least one attribute, by holder.
    fn list_attribute_holders(&self) -> Result<Vec<AttributeHolder>>;

    /// Records a request digest for replay protection: true if it is fresh (not seen, or seen
    /// but expired at `now`), false if it is a replay. Atomic, also across instances sharing
    /// one database. An entry is expired when `expires_at <= now`.
    fn remember_request(&self, digest: &[u8; 32], expires_at: i64, now: i64) -> Result<bool>;
    /// Whether `digest` is remembered and not expired at `now`: a read, no write. For
    /// refusing a replay before costly work; only [`remember_request`](Store::remember_request),
    /// [`remember_request_with_event`](Store::remember_request_with_event),
    /// [`remember_request_with_change`](Store::remember_request_with_change) and
    /// [`remember_key_read`](Store::remember_key_read) decide.
    fn request_seen(&self, digest: &[u8; 32], now: i64) -> Result<bool>;
    /// Forgets the expired request digests; returns how many.
    fn purge_expired(&self, now: i64) -> Result<u64>;

    /// Appends `event` to the audit chain (see [`audit`]), durably when it returns `Ok`;
    /// returns its sequence number. Appends from instances sharing one database are
    /// serialised.
    fn append_event(&self, event: &AuditEvent) -> Result<u64>;
    /// [`remember_request`](Store::remember_request) and [`append_event`](Store::append_event)
    /// in one transaction (one durable commit instead of two, for KGSS `GetKey`): a fresh
    /// `digest` is recorded and `event` appended together, returning the event's sequence; a
    /// replay returns `None` and writes nothing, neither the digest nor the event. Same replay
    /// semantics (expiry included) and the same chaining and serialisation as the two methods.
    fn remember_request_with_event(
        &self,
        digest: &[u8; 32],
        expires_at: i64,
        now: i64,
        event: &AuditEvent,
    ) -> Result<Option<u64>> {
        self.write_with_event(Some((digest, expires_at, now)), None, event)
    }
    /// [`apply_with_event`](Store::apply_with_event) for a request that must be served once
    /// (KGSS `GetNewKey`): `digest` is remembered as by
    /// [`remember_request`](Store::remember_request) in the same transaction, so that a
    /// request whose change failed (a busy store, a crash) is not taken for a replay when
    /// it is sent again. `None`, and nothing written, for a replay or a change with
    /// nothing to act on.
    fn remember_request_with_change(
        &self,
        digest: &[u8; 32],
        expires_at: i64,
        now: i64,
        change: Change<'_>,
        event: &AuditEvent,
    ) -> Result<Option<u64>> {
        self.write_with_event(Some((digest, expires_at, now)), Some(change), event)
    }
    /// [`remember_request_with_event`](Store::remember_request_with_event) for a release of
    /// KGSS key `key_id`, in a transaction that also finds the key still stored (PostgreSQL:
    /// locked against a concurrent deletion until commit): a deletion committed before
    /// gives [`KeyRead::KeyGone`] and writes nothing, so that no release is recorded after
    /// a deletion was confirmed. Likewise the attribute registry must still hold what the
    /// decision read from it (`registry`), checked once no registry change can commit
    /// before this event: else [`KeyRead::RegistryChanged`] and nothing written, so that no
    /// decision is recorded after a registry change it did not see was confirmed.
    fn remember_key_read(
        &self,
        key_id: &[u8; 16],
        digest: &[u8; 32],
        expires_at: i64,
        now: i64,
        event: &AuditEvent,
        registry: &[RegistryRead],
    ) -> Result<KeyRead>;
    /// Applies `change` and appends `event` in one transaction, or neither: the audit chain
    /// shows a change exactly when it happened (a crash between two writes could otherwise
    /// leave an event for a key still served, or a key without its event). `None`, and no
    /// event, when the change found nothing to act on (a deletion or an update of a key
    /// that is not there); an insertion of a taken (or retired) key id is
    /// [`Error::AlreadyExists`], with no event either.
    fn apply_with_event(&self, change: Change<'_>, event: &AuditEvent) -> Result<Option<u64>> {
        self.write_with_event(None, Some(change), event)
    }
    /// [`remove_etk`](Store::remove_etk) and the append of `event(removed record)` in one
    /// transaction, or neither: the removed record and the event's sequence, `None` (and
    /// no event) when no ETK of `digest` is stored.
    fn remove_etk_with_event(
        &self,
        digest: &[u8; 32],
        event: &dyn Fn(&EtkRecord) -> AuditEvent,
    ) -> Result<Option<(EtkRecord, u64)>>;
    /// The audit events after sequence `after` (0: from the start), at most `limit`, in order.
    fn events(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;
}

/// What [`Store::remember_key_read`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRead {
    /// The digest is remembered and the event appended with this sequence.
    Recorded(u64),
    /// The digest is remembered and not expired: nothing written.
    Replay,
    /// The key is not stored (deleted): nothing written.
    KeyGone,
    /// The attribute registry changed since the decision read it: nothing written; decide
    /// again.
    RegistryChanged,
}

/// What a decision read from the attribute registry: one holder and all its attributes
/// then (in the order [`Store::attributes`] gives them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRead {
    pub id_type: String,
    pub value: String,
    pub attributes: Vec<Attribute>,
}

/// A change [`Store::apply_with_event`] makes together with its audit event; each is what
/// the store method of the same name does.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// See [`Store::put_etk`]: nothing to act on when the ETK is stored already.
    PutEtk(&'a EtkRecord),
    /// [`Change::PutEtk`] unless an identifier of `exclusive` (type and value, any
    /// application id) already finds a stored ETK none of whose identifiers is one of
    /// `holder` (compared by type and value: the holder's other application ids are the
    /// same holder): then [`Error::IdentifierTaken`]. One number, one holder: a doctor's NIHII published
    /// beside the SSIN of the doctor's ETK must not also find another person's ETK. Checked
    /// in the transaction that stores the ETK, serialised with every other ETK
    /// registration (also across instances sharing a database), so that two holders
    /// registered at once under one number cannot both succeed.
    PutEtkExclusive {
        record: &'a EtkRecord,
        exclusive: &'a [Identifier],
        holder: &'a [Identifier],
    },
    InsertKgssKey(&'a KgssKey),
    DeleteKgssKey(&'a [u8; 16]),
    /// Its id is retired with it (see [`Store::delete_public_key`]).
    DeletePublicKey(&'a [u8]),
    InsertPublicKey(&'a PublicKeyRecord),
    /// [`Change::InsertPublicKey`] unless the holder `(id_type, value)` (any application id)
    /// already has `max_per_holder` keys: then [`Error::TooManyKeys`]. Counted in the same
    /// transaction, so that concurrent registrations cannot go past it.
    InsertPublicKeyWithin {
        record: &'a PublicKeyRecord,
        max_per_holder: usize,
    },
    /// Conditional: see [`Store::update_public_key_info`].
    UpdatePublicKeyInfo {
        key_id: &'a [u8],
        expected: &'a BTreeMap<String, String>,
        info: &'a BTreeMap<String, String>,
    },
    /// See [`Store::set_attribute`]: nothing to act on when the holder has it already.
    SetAttribute {
        id_type: &'a str,
        value: &'a str,
        attribute: &'a Attribute,
    },
    /// See [`Store::remove_attribute`].
    RemoveAttribute {
        id_type: &'a str,
        value: &'a str,
        namespace: &'a str,
        name: &'a str,
    },
}

/// Opens a store: a `postgres://` or `postgresql://` URL connects to PostgreSQL (pool of
/// [`DEFAULT_POOL_SIZE`]), anything else is the path of an embedded store file.
pub fn open(url_or_path: &str) -> Result<Arc<dyn Store>> {
    open_with(url_or_path, DEFAULT_POOL_SIZE)
}

/// [`open`] with a PostgreSQL pool of `pool_size` connections (ignored for an embedded
/// store).
pub fn open_with(url_or_path: &str, pool_size: usize) -> Result<Arc<dyn Store>> {
    if url_or_path.starts_with("postgres://") || url_or_path.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url_or_path, pool_size)?))
    } else {
        Ok(Arc::new(EmbeddedStore::open(Path::new(url_or_path))?))
    }
}

fn check_key_id(key_id: &[u8]) -> Result<()> {
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
        return Err(Error::Invalid(format!(
            "key id must be 1..={MAX_KEY_ID_LEN} bytes, got {}",
            key_id.len()
        )));
    }
    Ok(())
}

/// An engine error with its chain of causes, as one message.
fn backend_error(e: &(dyn std::error::Error + 'static)) -> Error {
    let mut message = e.to_string();
    let mut busy = pg::is_transient(e);
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        busy |= pg::is_transient(s);
        source = s.source();
    }
    if busy {
        Error::Busy(message)
    } else {
        Error::Backend(message)
    }
}

/// Maps any engine, driver or pool error to [`Error::Backend`], or [`Error::Busy`] when
/// trying again may succeed.
trait OrBackend<T> {
    fn db(self) -> Result<T>;
}

impl<T, E: std::error::Error + 'static> OrBackend<T> for std::result::Result<T, E> {
    fn db(self) -> Result<T> {
        self.map_err(|e| backend_error(&e))
    }
}
