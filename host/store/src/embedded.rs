//! The embedded backend: one `redb` file, no server.
//!
//! Rows are JSON (bytes as hex) keyed by their id, so the on-disk format is explicit and
//! independent of Rust struct layout; lookups by holder go through index tables kept in the same
//! transaction as the rows. Every write transaction commits with `Durability::Immediate`: when a
//! method returns `Ok` the data is on disk, and redb's copy-on-write commit means a crash at any
//! earlier point leaves the previous state intact.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use redb::{
    Database, Durability, MultimapTableDefinition, ReadableMultimapTable, ReadableTable,
    TableDefinition, WriteTransaction,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::audit::{self, AuditEvent, StoredEvent};
use crate::{
    backend_error, check_key_id, Attribute, AttributeHolder, Change, Credential, Error, EtkRecord,
    Identifier, IdentifierTaken, KeyRead, KgssKey, OrBackend, PublicKeyRecord, RegistryRead,
    Result, Store, SCHEMA_VERSION,
};

/// `"schema_version"` → the version of the last migration applied.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

const ETK: TableDefinition<&[u8], &[u8]> = TableDefinition::new("etk");
/// `(id_type, value)` → digests of the ETKs with that identifier.
const ETK_BY_HOLDER: MultimapTableDefinition<(&str, &str), &[u8]> =
    MultimapTableDefinition::new("etk_by_holder");
const KGSS_KEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kgss_key");
const PUBLIC_KEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("public_key");
/// `(id_type, value)` → key ids of the holder's public keys.
const PUBLIC_KEY_BY_HOLDER: MultimapTableDefinition<(&str, &str), &[u8]> =
    MultimapTableDefinition::new("public_key_by_holder");
/// `(id_type, value, namespace, name)` → attribute value.
const ATTRIBUTE: TableDefinition<(&str, &str, &str, &str), &str> =
    TableDefinition::new("attribute");
/// Request digest → expiry.
const SEEN_REQUEST: TableDefinition<&[u8], i64> = TableDefinition::new("seen_request");
/// `(expiry, digest)`, so purging reads only what is expired.
const SEEN_BY_EXPIRY: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("seen_by_expiry");
/// Audit sequence → `{"event": .., "hash": hex}` (schema 2).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_event");
/// Key ids of deleted public keys (never given out again), with their deletion time.
const RETIRED_KEY_ID: TableDefinition<&[u8], i64> = TableDefinition::new("retired_key_id");

/// Numbered migrations: entry `n` brings the schema from version `n` to `n + 1`.
const MIGRATIONS: &[fn(&WriteTransaction) -> Result<()>] =
    &[create_tables_v1, audit_table_v2, retired_key_ids_v3];
const _: () = assert!(MIGRATIONS.len() as u64 == SCHEMA_VERSION);

fn create_tables_v1(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(ETK).db()?;
    txn.open_multimap_table(ETK_BY_HOLDER).db()?;
    txn.open_table(KGSS_KEY).db()?;
    txn.open_table(PUBLIC_KEY).db()?;
    txn.open_multimap_table(PUBLIC_KEY_BY_HOLDER).db()?;
    txn.open_table(ATTRIBUTE).db()?;
    txn.open_table(SEEN_REQUEST).db()?;
    txn.open_table(SEEN_BY_EXPIRY).db()?;
    Ok(())
}

fn audit_table_v2(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(AUDIT).db()?;
    Ok(())
}

fn retired_key_ids_v3(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(RETIRED_KEY_ID).db()?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct AuditRow {
    event: AuditEvent,
    hash: String,
}

/// The embedded store. Cheap to share: wrap it in an `Arc`.
pub struct EmbeddedStore {
    db: Database,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

impl EmbeddedStore {
    /// Opens the store file, creating it when missing (its directory must exist) readable
    /// by its owner only, and brings its schema up to date. A file another process has
    /// open (redb locks it) is [`Error::InUse`].
    pub fn open(path: &Path) -> Result<Self> {
        // Created 0600 from the start: it holds wrapped KGSS keys, the attribute registry
        // and the audit chain. An existing file keeps the mode it has.
        let new = !path.exists();
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?
        };
        if new {
            // The file's name must survive a power cut too, or the commits made durable
            // in it would go with it.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        let db = Database::builder().create_file(file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse,
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Error::Io(io),
            other => backend_error(&other),
        })?;
        let store = EmbeddedStore { db };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let txn = self.write()?;
        let found = {
            let meta = txn.open_table(META).db()?;
            let found = meta.get(SCHEMA_KEY).db()?.map(|v| v.value());
            found.unwrap_or(0)
        };
        if found > SCHEMA_VERSION {
            txn.abort().db()?;
            return Err(Error::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == SCHEMA_VERSION {
            return txn.abort().db();
        }
        for migration in &MIGRATIONS[found as usize..] {
            migration(&txn)?;
        }
        txn.open_table(META)
            .db()?
            .insert(SCHEMA_KEY, SCHEMA_VERSION)
            .db()?;
        txn.commit().db()
    }

    fn write(&self) -> Result<WriteTransaction> {
        let mut txn = self.db.begin_write().db()?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }
}

/// Whether a stored ETK identifier answers an ETK lookup: the holder `(id_type, value)`,
/// and then any application id (`None`), none (`Some("")`: an ETK without application id,
/// as PostgreSQL's `application_id IS NULL`) or exactly `application_id`.
fn etk_identifier_matches(
    i: &Identifier,
    id_type: &str,
    value: &str,
    application_id: Option<&str>,
) -> bool {
    i.id_type == id_type
        && i.value == value
        && match application_id {
            None => true,
            Some("") => i.application_id.as_deref().unwrap_or("").is_empty(),
            Some(a) => i.application_id.as_deref() == Some(a),
        }
}

impl Store for EmbeddedStore {
    fn backend_name(&self) -> &'static str {
        "embedded"
    }

    fn apply(&self, change: Change<'_>) -> Result<bool> {
        let txn = self.write()?;
        let changed = apply_in(&txn, change)?;
        commit_if(txn, changed)
    }

    fn write_with_event(
        &self,
        request: Option<(&[u8; 32], i64, i64)>,
        change: Option<Change<'_>>,
        event: &AuditEvent,
    ) -> Result<Option<u64>> {
        let txn = self.write()?;
        let fresh = match request {
            Some((digest, expires_at, now)) => remember_in(&txn, digest, expires_at, now)?,
            None => true,
        };
        let acted = fresh
            && match change {
                Some(change) => apply_in(&txn, change)?,
                None => true,
            };
        if !acted {
            txn.abort().db()?;
            return Ok(None);
        }
        let sequence = append_in(&txn, event)?;
        txn.commit().db()?;
        Ok(Some(sequence))
    }

    fn find_etks(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<Vec<EtkRecord>> {
        let txn = self.db.begin_read().db()?;
        let etks = txn.open_table(ETK).db()?;
        let index = txn.open_multimap_table(ETK_BY_HOLDER).db()?;
        let mut found = Vec::new();
        for digest in index.get((id_type, value)).db()? {
            let digest = digest.db()?;
            let digest = digest.value();
            let row = etks
                .get(digest)
                .db()?
                .ok_or_else(|| Error::Corrupt("ETK index names a missing ETK".into()))?;
            let record = decode::<EtkRow>(row.value())?.into_record(digest)?;
            if record
                .identifiers
                .iter()
                .any(|i| etk_identifier_matches(i, id_type, value, application_id))
            {
                found.push(record);
            }
        }
        found.sort_by(|a, b| {
            b.not_before
                .cmp(&a.not_before)
                .then_with(|| a.digest.cmp(&b.digest))
        });
        Ok(found)
    }

    fn remove_etk(&self, digest: &[u8; 32]) -> Result<Option<EtkRecord>> {
        let txn = self.write()?;
        let removed = remove_etk_in(&txn, digest)?;
        commit_if(txn, removed.is_some())?;
        removed.map(|row| row.into_record(&digest[..])).transpose()
    }

    fn remove_etk_with_event(
        &self,
        digest: &[u8; 32],
        event: &dyn Fn(&EtkRecord) -> AuditEvent,
    ) -> Result<Option<(EtkRecord, u64)>> {
        let txn = self.write()?;
        let Some(row) = remove_etk_in(&txn, digest)? else {
            txn.abort().db()?;
            return Ok(None);
        };
        let record = row.into_record(&digest[..])?;
        let sequence = append_in(&txn, &event(&record))?;
        txn.commit().db()?;
        Ok(Some((record, sequence)))
    }

    fn get_kgss_key(&self, id: &[u8; 16]) -> Result<Option<KgssKey>> {
        let txn = self.db.begin_read().db()?;
        let keys = txn.open_table(KGSS_KEY).db()?;
        let row = keys.get(&id[..]).db()?;
        row.map(|row| decode::<KgssRow>(row.value())?.into_key(*id))
            .transpose()
    }

    fn kgss_keys(&self, after: Option<&[u8; 16]>, limit: usize) -> Result<Vec<KgssKey>> {
        let txn = self.db.begin_read().db()?;
        let keys = txn.open_table(KGSS_KEY).db()?;
        let rows = match after {
            Some(after) => keys.range::<&[u8]>((Bound::Excluded(&after[..]), Bound::Unbounded)),
            None => keys.range::<&[u8]>(..),
        }
        .db()?;
        rows.take(limit)
            .map(|row| {
                let (id, row) = row.db()?;
                let id = <[u8; 16]>::try_from(id.value())
                    .map_err(|_| Error::Corrupt("a KGSS key id that is not 16 bytes".into()))?;
                decode::<KgssRow>(row.value())?.into_key(id)
            })
            .collect()
    }

    fn get_public_key(&self, key_id: &[u8]) -> Result<Option<PublicKeyRecord>> {
        let txn = self.db.begin_read().db()?;
        let keys = txn.open_table(PUBLIC_KEY).db()?;
        let row = keys.get(key_id).db()?;
        row.map(|row| decode::<PublicKeyRow>(row.value())?.into_record(key_id))
            .transpose()
    }

    fn list_public_keys(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<Vec<PublicKeyRecord>> {
        let txn = self.db.begin_read().db()?;
        let keys = txn.open_table(PUBLIC_KEY).db()?;
        let index = txn.open_multimap_table(PUBLIC_KEY_BY_HOLDER).db()?;
        let mut found = Vec::new();
        // Multimap values come back in key-id order.
        for key_id in index.get((id_type, value)).db()? {
            let key_id = key_id.db()?;
            let key_id = key_id.value();
            let row = keys
                .get(key_id)
                .db()?
                .ok_or_else(|| Error::Corrupt("public key index names a missing key".into()))?;
            let record = decode::<PublicKeyRow>(row.value())?.into_record(key_id)?;
            if record.holder.matches(id_type, value, application_id) {
                found.push(record);
            }
        }
        Ok(found)
    }

    fn attributes(&self, id_type: &str, value: &str) -> Result<Vec<Attribute>> {
        let txn = self.db.begin_read().db()?;
        attributes_in(&txn.open_table(ATTRIBUTE).db()?, id_type, value)
    }

    fn list_attribute_holders(&self) -> Result<Vec<AttributeHolder>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(ATTRIBUTE).db()?;
        let mut holders: Vec<AttributeHolder> = Vec::new();
        for entry in table.iter().db()? {
            let (key, attribute_value) = entry.db()?;
            let (t, v, namespace, name) = key.value();
            let attribute = Attribute {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                value: attribute_value.value().to_owned(),
            };
            match holders.last_mut() {
                Some((ht, hv, attributes)) if ht == t && hv == v => attributes.push(attribute),
                _ => holders.push((t.to_owned(), v.to_owned(), vec![attribute])),
            }
        }
        Ok(holders)
    }

    fn remember_request(&self, digest: &[u8; 32], expires_at: i64, now: i64) -> Result<bool> {
        let txn = self.write()?;
        let fresh = remember_in(&txn, digest, expires_at, now)?;
        commit_if(txn, fresh)
    }

    fn request_seen(&self, digest: &[u8; 32], now: i64) -> Result<bool> {
        let txn = self.db.begin_read().db()?;
        let seen = txn.open_table(SEEN_REQUEST).db()?;
        let expires_at = seen.get(&digest[..]).db()?.map(|v| v.value());
        Ok(expires_at.is_some_and(|expires_at| expires_at > now))
    }

    fn purge_expired(&self, now: i64) -> Result<u64> {
        let txn = self.write()?;
        let mut purged = 0;
        {
            let mut by_expiry = txn.open_table(SEEN_BY_EXPIRY).db()?;
            let mut seen = txn.open_table(SEEN_REQUEST).db()?;
            let expired: Vec<(i64, Vec<u8>)> = by_expiry
                .range(..=(now, &[0xffu8; 33][..]))
                .db()?
                .map(|entry| {
                    let (key, _) = entry.db()?;
                    let (expiry, digest) = key.value();
                    Ok((expiry, digest.to_vec()))
                })
                .collect::<Result<_>>()?;
            for (expiry, digest) in expired {
                by_expiry.remove((expiry, digest.as_slice())).db()?;
                seen.remove(digest.as_slice()).db()?;
                purged += 1;
            }
        }
        commit_if(txn, purged > 0)?;
        Ok(purged)
    }

    fn append_event(&self, event: &AuditEvent) -> Result<u64> {
        let txn = self.write()?;
        let sequence = append_in(&txn, event)?;
        txn.commit().db()?;
        Ok(sequence)
    }

    fn remember_key_read(
        &self,
        key_id: &[u8; 16],
        digest: &[u8; 32],
        expires_at: i64,
        now: i64,
        event: &AuditEvent,
        registry: &[RegistryRead],
    ) -> Result<KeyRead> {
        // One writer at a time: a deletion or a registry change commits wholly before or
        // after this.
        let txn = self.write()?;
        let stored = txn
            .open_table(KGSS_KEY)
            .db()?
            .get(&key_id[..])
            .db()?
            .is_some();
        if !stored {
            txn.abort().db()?;
            return Ok(KeyRead::KeyGone);
        }
        if !remember_in(&txn, digest, expires_at, now)? {
            txn.abort().db()?;
            return Ok(KeyRead::Replay);
        }
        let changed = {
            let table = txn.open_table(ATTRIBUTE).db()?;
            let mut changed = false;
            for read in registry {
                if attributes_in(&table, &read.id_type, &read.value)? != read.attributes {
                    changed = true;
                    break;
                }
            }
            changed
        };
        if changed {
            txn.abort().db()?;
            return Ok(KeyRead::RegistryChanged);
        }
        let sequence = append_in(&txn, event)?;
        txn.commit().db()?;
        Ok(KeyRead::Recorded(sequence))
    }

    fn events(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(AUDIT).db()?;
        let start = after.saturating_add(1);
        table
            .range(start..)
            .db()?
            .take(limit)
            .map(|entry| {
                let (k, v) = entry.db()?;
                let row: AuditRow = decode(v.value())?;
                Ok(StoredEvent {
                    sequence: k.value(),
                    event: row.event,
                    hash: fixed("audit hash", &unhex("audit hash", &row.hash)?)?,
                })
            })
            .collect()
    }
}

/// Records `digest` in `txn` unless it is there unexpired; true when it was fresh.
/// redb runs one write transaction at a time, so check-then-insert is atomic.
fn remember_in(
    txn: &WriteTransaction,
    digest: &[u8; 32],
    expires_at: i64,
    now: i64,
) -> Result<bool> {
    let mut seen = txn.open_table(SEEN_REQUEST).db()?;
    let previous = seen.get(&digest[..]).db()?.map(|v| v.value());
    if previous.is_some_and(|previous| previous > now) {
        return Ok(false);
    }
    let mut by_expiry = txn.open_table(SEEN_BY_EXPIRY).db()?;
    if let Some(previous) = previous {
        by_expiry.remove((previous, &digest[..])).db()?;
    }
    seen.insert(&digest[..], expires_at).db()?;
    by_expiry.insert((expires_at, &digest[..]), ()).db()?;
    Ok(true)
}

/// Appends `event` after the chain head, in `txn`; returns its sequence. redb has one writer
/// at a time: reading the head and appending are atomic.
fn append_in(txn: &WriteTransaction, event: &AuditEvent) -> Result<u64> {
    let mut table = txn.open_table(AUDIT).db()?;
    let (last, previous) = match table.last().db()? {
        None => (0, audit::GENESIS),
        Some((k, v)) => {
            let row: AuditRow = decode(v.value())?;
            (
                k.value(),
                fixed("audit hash", &unhex("audit hash", &row.hash)?)?,
            )
        }
    };
    let sequence = last + 1;
    let hash = audit::chain_hash(&previous, sequence, &audit::event_bytes(event));
    let row = AuditRow {
        event: event.clone(),
        hash: hex::encode(hash),
    };
    table.insert(sequence, &*encode(&row)?).db()?;
    Ok(sequence)
}

/// A holder's attributes, ordered by namespace and name (the table's key order).
fn attributes_in(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str, &'static str), &'static str>,
    id_type: &str,
    value: &str,
) -> Result<Vec<Attribute>> {
    let mut found = Vec::new();
    // Keys sort element by element, so the holder's rows are one contiguous range.
    for entry in table.range((id_type, value, "", "")..).db()? {
        let (key, attribute_value) = entry.db()?;
        let (t, v, namespace, name) = key.value();
        if (t, v) != (id_type, value) {
            break;
        }
        found.push(Attribute {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            value: attribute_value.value().to_owned(),
        });
    }
    Ok(found)
}

/// Removes the ETK of `digest` and its index entries inside `txn`: its row, if it was
/// stored.
fn remove_etk_in(txn: &WriteTransaction, digest: &[u8; 32]) -> Result<Option<EtkRow>> {
    let removed = {
        let mut etks = txn.open_table(ETK).db()?;
        let row = etks.remove(&digest[..]).db()?;
        match row {
            None => None,
            Some(row) => Some(decode::<EtkRow>(row.value())?),
        }
    };
    if let Some(row) = &removed {
        let mut index = txn.open_multimap_table(ETK_BY_HOLDER).db()?;
        for id in &row.identifiers {
            index
                .remove((id.id_type.as_str(), id.value.as_str()), &digest[..])
                .db()?;
        }
    }
    Ok(removed)
}

/// Stores the ETK of `record` under its identifiers; false when it is stored already.
fn put_etk_in(txn: &WriteTransaction, record: &EtkRecord) -> Result<bool> {
    let mut etks = txn.open_table(ETK).db()?;
    if etks.get(&record.digest[..]).db()?.is_some() {
        return Ok(false);
    }
    etks.insert(&record.digest[..], &*encode(&EtkRow::from(record))?)
        .db()?;
    let mut index = txn.open_multimap_table(ETK_BY_HOLDER).db()?;
    for id in &record.identifiers {
        index
            .insert((id.id_type.as_str(), id.value.as_str()), &record.digest[..])
            .db()?;
    }
    Ok(true)
}

/// The identifiers of each stored ETK found under `id`'s type and value (any application
/// id), read inside `txn`.
fn holders_under(txn: &WriteTransaction, id: &Identifier) -> Result<Vec<Vec<Identifier>>> {
    let etks = txn.open_table(ETK).db()?;
    let index = txn.open_multimap_table(ETK_BY_HOLDER).db()?;
    let mut found = Vec::new();
    for digest in index.get((id.id_type.as_str(), id.value.as_str())).db()? {
        let digest = digest.db()?;
        let row = etks
            .get(digest.value())
            .db()?
            .ok_or_else(|| Error::Corrupt("ETK index names a missing ETK".into()))?;
        found.push(decode::<EtkRow>(row.value())?.identifiers);
    }
    Ok(found)
}

/// Makes `change` inside `txn`: true when it changed something, false when it found
/// nothing to act on; a taken or retired key id for an insertion is `AlreadyExists`.
fn apply_in(txn: &WriteTransaction, change: Change<'_>) -> Result<bool> {
    match change {
        Change::PutEtk(record) => put_etk_in(txn, record),
        Change::PutEtkExclusive {
            record,
            exclusive,
            holder,
        } => {
            // redb has one write transaction at a time: the check holds to the commit.
            for id in exclusive {
                if let Some(other) = holders_under(txn, id)?
                    .into_iter()
                    .find(|ids| !crate::names_holder(ids, holder))
                {
                    return Err(Error::IdentifierTaken(Box::new(IdentifierTaken {
                        identifier: id.clone(),
                        by: other,
                    })));
                }
            }
            put_etk_in(txn, record)
        }
        Change::InsertKgssKey(key) => {
            let mut keys = txn.open_table(KGSS_KEY).db()?;
            if keys.get(&key.id[..]).db()?.is_some() {
                return Err(Error::AlreadyExists);
            }
            keys.insert(&key.id[..], &*encode(&KgssRow::from(key))?)
                .db()?;
            Ok(true)
        }
        Change::DeleteKgssKey(id) => Ok(txn
            .open_table(KGSS_KEY)
            .db()?
            .remove(&id[..])
            .db()?
            .is_some()),
        Change::DeletePublicKey(key_id) => {
            let removed = {
                let mut keys = txn.open_table(PUBLIC_KEY).db()?;
                let row = keys.remove(key_id).db()?;
                match row {
                    None => None,
                    Some(row) => Some(decode::<PublicKeyRow>(row.value())?),
                }
            };
            let Some(row) = removed else {
                return Ok(false);
            };
            txn.open_multimap_table(PUBLIC_KEY_BY_HOLDER)
                .db()?
                .remove(
                    (row.holder.id_type.as_str(), row.holder.value.as_str()),
                    key_id,
                )
                .db()?;
            txn.open_table(RETIRED_KEY_ID)
                .db()?
                .insert(key_id, now_unix())
                .db()?;
            Ok(true)
        }
        Change::InsertPublicKey(record) => insert_public_key(txn, record, None),
        Change::InsertPublicKeyWithin {
            record,
            max_per_holder,
        } => insert_public_key(txn, record, Some(max_per_holder)),
        Change::UpdatePublicKeyInfo {
            key_id,
            expected,
            info,
        } => {
            let mut keys = txn.open_table(PUBLIC_KEY).db()?;
            let row = match keys.get(key_id).db()? {
                None => None,
                Some(row) => Some(decode::<PublicKeyRow>(row.value())?),
            };
            match row {
                None => Ok(false),
                // The write transaction excludes other writers: the comparison holds to
                // the commit.
                Some(row) if row.info != *expected => Err(Error::Conflict),
                Some(mut row) => {
                    row.info = info.clone();
                    keys.insert(key_id, &*encode(&row)?).db()?;
                    Ok(true)
                }
            }
        }
        Change::SetAttribute {
            id_type,
            value,
            attribute,
        } => {
            let mut table = txn.open_table(ATTRIBUTE).db()?;
            let key = (
                id_type,
                value,
                attribute.namespace.as_str(),
                attribute.name.as_str(),
            );
            let old = table.get(key).db()?.map(|v| v.value().to_owned());
            let changed = old.as_deref() != Some(attribute.value.as_str());
            if changed {
                table.insert(key, attribute.value.as_str()).db()?;
            }
            Ok(changed)
        }
        Change::RemoveAttribute {
            id_type,
            value,
            namespace,
            name,
        } => Ok(txn
            .open_table(ATTRIBUTE)
            .db()?
            .remove((id_type, value, namespace, name))
            .db()?
            .is_some()),
    }
}

/// A public key's insertion; with `max_per_holder`, refused when its holder has that many.
fn insert_public_key(
    txn: &WriteTransaction,
    record: &PublicKeyRecord,
    max_per_holder: Option<usize>,
) -> Result<bool> {
    check_key_id(&record.key_id)?;
    let mut keys = txn.open_table(PUBLIC_KEY).db()?;
    let retired = txn
        .open_table(RETIRED_KEY_ID)
        .db()?
        .get(record.key_id.as_slice())
        .db()?
        .is_some();
    if retired || keys.get(record.key_id.as_slice()).db()?.is_some() {
        return Err(Error::AlreadyExists);
    }
    let holder = &record.holder;
    let mut by_holder = txn.open_multimap_table(PUBLIC_KEY_BY_HOLDER).db()?;
    if let Some(limit) = max_per_holder {
        // The write transaction excludes other writers: the count holds to the commit.
        let held = by_holder
            .get((holder.id_type.as_str(), holder.value.as_str()))
            .db()?
            .len();
        if held >= limit as u64 {
            return Err(Error::TooManyKeys { limit });
        }
    }
    keys.insert(
        record.key_id.as_slice(),
        &*encode(&PublicKeyRow::from(record))?,
    )
    .db()?;
    by_holder
        .insert(
            (holder.id_type.as_str(), holder.value.as_str()),
            record.key_id.as_slice(),
        )
        .db()?;
    Ok(true)
}

/// Commits when something changed, else aborts (which costs no sync).
fn commit_if(txn: WriteTransaction, changed: bool) -> Result<bool> {
    if changed {
        txn.commit().db()?;
    } else {
        txn.abort().db()?;
    }
    Ok(changed)
}

fn encode<T: Serialize>(row: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(row).map_err(|e| Error::Corrupt(format!("cannot encode row: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("undecodable row: {e}")))
}

fn unhex(field: &str, text: &str) -> Result<Vec<u8>> {
    // Into a buffer of the right size: `hex::decode`'s iterator chain made decoding a
    // stored ETK (6 KB of hex) the largest cost of an ETK lookup.
    let mut out = vec![0; text.len() / 2];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| Error::Corrupt(format!("{field} is not hex")))?;
    Ok(out)
}

fn fixed<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("{field} is not {N} bytes")))
}

#[derive(Serialize, Deserialize)]
struct EtkRow {
    identifiers: Vec<Identifier>,
    etk: String,
    not_before: i64,
    not_after: i64,
    registered_at: i64,
}

impl From<&EtkRecord> for EtkRow {
    fn from(r: &EtkRecord) -> Self {
        EtkRow {
            identifiers: r.identifiers.clone(),
            etk: hex::encode(&r.etk),
            not_before: r.not_before,
            not_after: r.not_after,
            registered_at: r.registered_at,
        }
    }
}

impl EtkRow {
    fn into_record(self, digest: &[u8]) -> Result<EtkRecord> {
        Ok(EtkRecord {
            digest: fixed("ETK digest", digest)?,
            identifiers: self.identifiers,
            etk: unhex("etk", &self.etk)?,
            not_before: self.not_before,
            not_after: self.not_after,
            registered_at: self.registered_at,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct KgssRow {
    wrapped_key: String,
    wrapping_key_label: String,
    creator: Identifier,
    allowed_readers: Vec<Credential>,
    excluded_readers: Vec<Credential>,
    deletion_strategy: Option<String>,
    created_at: i64,
}

impl From<&KgssKey> for KgssRow {
    fn from(k: &KgssKey) -> Self {
        KgssRow {
            wrapped_key: hex::encode(&k.wrapped_key),
            wrapping_key_label: k.wrapping_key_label.clone(),
            creator: k.creator.clone(),
            allowed_readers: k.allowed_readers.clone(),
            excluded_readers: k.excluded_readers.clone(),
            deletion_strategy: k.deletion_strategy.clone(),
            created_at: k.created_at,
        }
    }
}

impl KgssRow {
    fn into_key(self, id: [u8; 16]) -> Result<KgssKey> {
        Ok(KgssKey {
            id,
            wrapped_key: unhex("wrapped key", &self.wrapped_key)?,
            wrapping_key_label: self.wrapping_key_label,
            creator: self.creator,
            allowed_readers: self.allowed_readers,
            excluded_readers: self.excluded_readers,
            deletion_strategy: self.deletion_strategy,
            created_at: self.created_at,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct PublicKeyRow {
    holder: Identifier,
    spki_der: String,
    info: BTreeMap<String, String>,
    attestation: Option<String>,
    created_at: i64,
}

impl From<&PublicKeyRecord> for PublicKeyRow {
    fn from(r: &PublicKeyRecord) -> Self {
        PublicKeyRow {
            holder: r.holder.clone(),
            spki_der: hex::encode(&r.spki_der),
            info: r.info.clone(),
            attestation: r.attestation.as_ref().map(hex::encode),
            created_at: r.created_at,
        }
    }
}

impl PublicKeyRow {
    fn into_record(self, key_id: &[u8]) -> Result<PublicKeyRecord> {
        Ok(PublicKeyRecord {
            key_id: key_id.to_vec(),
            holder: self.holder,
            spki_der: unhex("SPKI", &self.spki_der)?,
            info: self.info,
            attestation: self
                .attestation
                .map(|a| unhex("attestation", &a))
                .transpose()?,
            created_at: self.created_at,
        })
    }
}

/// Seconds since the epoch (0 if the clock is before it).
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditEvent, Credential};

    fn public_key(id: &[u8]) -> PublicKeyRecord {
        PublicKeyRecord {
            key_id: id.to_vec(),
            holder: Identifier::new("NIHII-HOSPITAL", "71000436", None),
            spki_der: vec![0x30, 0x00],
            info: BTreeMap::new(),
            attestation: None,
            created_at: 1,
        }
    }

    fn event(action: &str) -> AuditEvent {
        AuditEvent {
            at: 2,
            action: action.into(),
            actor: "test".into(),
            subject: "s".into(),
            outcome: "done".into(),
            detail: None,
        }
    }

    /// A store written at schema version 1 (no audit table, no retired key ids) keeps its
    /// data when a newer etee opens it, and gains what versions 2 and 3 brought: an audit
    /// chain, and key ids retired when deleted. Version 1 is made by taking the later
    /// tables out of a new store, which is what a version-1 file holds.
    #[test]
    fn a_version_1_store_with_data_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let kgss = KgssKey {
            id: [5; 16],
            wrapped_key: vec![1; 24],
            wrapping_key_label: "kgss-wrap".into(),
            creator: Identifier::new("NIHII-HOSPITAL", "71000436", None),
            allowed_readers: vec![Credential {
                namespace: "urn:ns".into(),
                name: "name".into(),
                values: vec!["true".into()],
            }],
            excluded_readers: vec![],
            deletion_strategy: None,
            created_at: 1,
        };
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.apply(Change::InsertKgssKey(&kgss)).unwrap();
            store
                .apply(Change::InsertPublicKey(&public_key(b"kd-1")))
                .unwrap();
            let txn = store.write().unwrap();
            assert!(txn.delete_table(AUDIT).unwrap());
            assert!(txn.delete_table(RETIRED_KEY_ID).unwrap());
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 1).unwrap();
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        {
            let txn = store.db.begin_read().unwrap();
            let version = txn.open_table(META).unwrap().get(SCHEMA_KEY).unwrap();
            assert_eq!(version.map(|v| v.value()), Some(SCHEMA_VERSION));
        }
        assert_eq!(store.get_kgss_key(&[5; 16]).unwrap(), Some(kgss));
        assert_eq!(
            store.get_public_key(b"kd-1").unwrap(),
            Some(public_key(b"kd-1"))
        );
        // Version 2: the audit chain.
        let seq = store
            .apply_with_event(Change::DeletePublicKey(b"kd-1"), &event("delete"))
            .unwrap();
        assert_eq!(seq, Some(1));
        assert_eq!(store.events(0, 10).unwrap().len(), 1);
        // Version 3: the deleted id is retired.
        assert!(matches!(
            store.apply(Change::InsertPublicKey(&public_key(b"kd-1"))),
            Err(Error::AlreadyExists)
        ));
    }
}
