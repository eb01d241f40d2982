//! The PostgreSQL backend, for several platform instances sharing one database.
//!
//! Writes that must be decided exactly once across instances are single statements
//! (`INSERT ... ON CONFLICT`), atomic under PostgreSQL's default isolation without explicit
//! locks; the exception is a KeyDepot key id's registration and deletion, serialised by an
//! advisory lock on the id (see [`lock_key_id`]). Structured fields (identifiers, reader
//! credentials, key information) are JSONB; keys and blobs are BYTEA with length checks in
//! the schema. Connections come from a small bounded pool.
//!
//! TLS: the URL's `sslmode` decides, as with libpq: `disable`; `prefer` (the default): TLS
//! when the server offers it, its certificate not verified (as libpq; against passive
//! listeners only); `require`: TLS or no connection, and the server's certificate verified,
//! chain and host name, against the system's trust store or the PEM file of
//! `sslrootcert=PATH` (a libpq parameter this store reads itself; given, it makes `prefer`
//! verify too). For a database on another machine use `sslmode=require`.

use std::collections::BTreeMap;

use postgres_openssl::MakeTlsConnector;
use r2d2_postgres::postgres::config::SslMode;
use r2d2_postgres::postgres::types::{FromSql, Json};
use r2d2_postgres::postgres::{Client, Config, GenericClient, IsolationLevel, Row, Transaction};
use r2d2_postgres::{r2d2, PostgresConnectionManager};
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditEvent, StoredEvent};
use crate::{
    check_key_id, Attribute, AttributeHolder, Change, Credential, Error, EtkRecord, Identifier,
    IdentifierTaken, KeyRead, KgssKey, OrBackend, PublicKeyRecord, RegistryRead, Result, Store,
    SCHEMA_VERSION,
};

/// Advisory lock key serialising migrations between instances starting at once.
const MIGRATION_LOCK: i64 = 0x6574_6565_2d73_746f; // "etee-sto"
/// Advisory lock key serialising audit appends (read the head, insert after it).
const AUDIT_LOCK: i64 = 0x6574_6565_2d61_7564; // "etee-aud"
/// Advisory lock key letting one instance at a time purge the replay table.
const PURGE_LOCK: i64 = 0x6574_6565_2d70_7567; // "etee-pug"
/// Advisory lock key serialising ETK registrations ([`lock_etk_registrations`]).
const ETK_REGISTRATION_LOCK: i64 = 0x6574_6565_2d65_746b; // "etee-etk"

/// Session settings of every connection (`options` of the connection, after any the URL
/// gives, so that these win). A lock wait (the audit chain's advisory lock, a row lock)
/// ends in an error after `lock_timeout` instead of hanging every instance behind one that
/// stalled while holding it; and the server ends a transaction left idle for
/// `idle_in_transaction_session_timeout` (an instance paused or cut off between its lock
/// and its commit), which releases its locks; its commit then fails, so nothing it did
/// was acknowledged. Every transaction of the store is a few statements long. And every
/// commit is durable on the server before it returns (`synchronous_commit=on`), whatever
/// the database or its role says: an acknowledged KGSS key must survive a server crash.
const SESSION_OPTIONS: &str = "-c lock_timeout=10000 -c idle_in_transaction_session_timeout=30000 \
                               -c synchronous_commit=on";
/// First half of the two-`int4` advisory lock keys serialising the registration and the
/// deletion of one KeyDepot key id (the second half is a hash of the id, see
/// [`lock_key_id`]). PostgreSQL keeps two-`int4` keys apart from one-`bigint` keys such as
/// [`MIGRATION_LOCK`] and [`AUDIT_LOCK`], so no id can ever hash onto those.
const KEY_ID_LOCK_CLASS: i32 = 0x6574_6565; // "etee"
/// First half of the advisory lock keys serialising the registrations of one KeyDepot
/// holder, so that its count of keys holds to the commit ([`lock_holder`]).
const HOLDER_LOCK_CLASS: i32 = 0x6574_6568; // "eteh"

/// Numbered migrations: entry `n` brings the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE etk (
    digest BYTEA PRIMARY KEY CHECK (length(digest) = 32),
    etk BYTEA NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    registered_at BIGINT NOT NULL
);
CREATE TABLE etk_identifier (
    digest BYTEA NOT NULL REFERENCES etk (digest) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    application_id TEXT,
    PRIMARY KEY (digest, position)
);
CREATE INDEX etk_identifier_holder ON etk_identifier (id_type, value, application_id);

CREATE TABLE kgss_key (
    id BYTEA PRIMARY KEY CHECK (length(id) = 16),
    wrapped_key BYTEA NOT NULL,
    wrapping_key_label TEXT NOT NULL,
    creator JSONB NOT NULL,
    allowed_readers JSONB NOT NULL,
    excluded_readers JSONB NOT NULL,
    deletion_strategy TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE public_key (
    key_id BYTEA PRIMARY KEY CHECK (length(key_id) BETWEEN 1 AND 64),
    holder_type TEXT NOT NULL,
    holder_value TEXT NOT NULL,
    holder_application_id TEXT,
    spki_der BYTEA NOT NULL,
    info JSONB NOT NULL,
    attestation BYTEA,
    created_at BIGINT NOT NULL
);
CREATE INDEX public_key_holder ON public_key (holder_type, holder_value);

-- "C" collation: byte order, the same listing order as the embedded store.
CREATE TABLE attribute (
    holder_type TEXT COLLATE "C" NOT NULL,
    holder_value TEXT COLLATE "C" NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (holder_type, holder_value, namespace, name)
);

CREATE TABLE seen_request (
    digest BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX seen_request_expiry ON seen_request (expires_at);
"#,
    r#"
CREATE TABLE audit_event (
    seq BIGINT PRIMARY KEY CHECK (seq > 0),
    event BYTEA NOT NULL,
    hash BYTEA NOT NULL CHECK (length(hash) = 32)
);
"#,
    r#"
CREATE TABLE retired_key_id (
    key_id BYTEA PRIMARY KEY CHECK (length(key_id) BETWEEN 1 AND 64),
    retired_at BIGINT NOT NULL
);
"#,
];
const _: () = assert!(MIGRATIONS.len() as u64 == SCHEMA_VERSION);

/// The PostgreSQL store: a bounded pool of connections to one database.
pub struct PgStore {
    pool: r2d2::Pool<PostgresConnectionManager<MakeTlsConnector>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`, libpq-style), brings the schema up
    /// to date and keeps up to `pool_size` connections; a caller waits up to 30 s for one
    /// of them to be free, then gets [`Error::Busy`].
    pub fn connect(url: &str, pool_size: usize) -> Result<Self> {
        Self::connect_waiting(url, pool_size, POOL_WAIT)
    }

    /// [`connect`](Self::connect), a caller waiting up to `wait` for a free connection.
    pub fn connect_waiting(url: &str, pool_size: usize, wait: std::time::Duration) -> Result<Self> {
        let (url, root) = take_root_cert(url);
        let mut config: Config = url
            .parse()
            .map_err(|e| Error::Invalid(format!("PostgreSQL URL: {e}")))?;
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_owned(),
        };
        config.options(&options);
        let verify = root.is_some() || config.get_ssl_mode() == SslMode::Require;
        let tls = tls_connector(root.as_deref(), verify)?;
        // A direct first connection reports a bad URL, a down server or a refused
        // certificate at once, where the pool would retry until its timeout.
        let mut client = config.connect(tls.clone()).db()?;
        migrate(&mut client)?;
        drop(client);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.clamp(1, u32::MAX as usize) as u32)
            .min_idle(Some(0))
            .connection_timeout(wait)
            .build(PostgresConnectionManager::new(config, tls))
            .db()?;
        Ok(PgStore { pool })
    }

    /// Whether this store's connections to the server are encrypted (what an operator
    /// wants to see at start when the database is on another machine).
    pub fn uses_tls(&self) -> Result<bool> {
        let row = self
            .conn()?
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .db()?;
        get(&row, 0)
    }

    /// The value of a server setting on this store's connections (`SHOW name`), for
    /// diagnostics: what the session options made of the server's defaults.
    pub fn setting(&self, name: &str) -> Result<String> {
        let row = self
            .conn()?
            .query_one("SELECT current_setting($1)", &[&name])
            .db()?;
        get(&row, 0)
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<MakeTlsConnector>>> {
        self.pool.get().db()
    }
}

/// A READ COMMITTED transaction, whatever the server's `default_transaction_isolation`:
/// every transaction here relies on each statement seeing what was committed before it
/// started (a snapshot per statement), not a snapshot taken at the transaction's first
/// statement. Under REPEATABLE READ the snapshot predates the advisory lock's grant: the
/// audit chain's head read under the lock would be stale (a duplicate sequence), and
/// instances migrating at once would each create the tables.
fn begin(client: &mut Client) -> Result<Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .db()
}

/// The URL without its `sslrootcert` parameter, and that parameter's value (a path; the
/// client library would refuse the parameter).
fn take_root_cert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| match p.strip_prefix("sslrootcert=") {
            Some(path) => {
                root = Some(path.to_owned());
                false
            }
            None => true,
        })
        .collect();
    match kept.is_empty() {
        true => (base.to_owned(), root),
        false => (format!("{base}?{}", kept.join("&")), root),
    }
}

/// OpenSSL, minimum TLS 1.2; with `verify`, checking the server's chain (system trust
/// store, or only `root` when given) and its host name.
fn tls_connector(root: Option<&str>, verify: bool) -> Result<MakeTlsConnector> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let failed = |what: &str, e: openssl::error::ErrorStack| {
        Error::Invalid(format!("PostgreSQL TLS: {what}: {e}"))
    };
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| failed("OpenSSL", e))?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| failed("OpenSSL", e))?;
    if let Some(path) = root {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Invalid(format!("PostgreSQL TLS: sslrootcert {path}: {e}")))?;
        let mut store =
            openssl::x509::store::X509StoreBuilder::new().map_err(|e| failed("OpenSSL", e))?;
        let certs = openssl::x509::X509::stack_from_pem(&pem)
            .map_err(|e| failed(&format!("sslrootcert {path}"), e))?;
        if certs.is_empty() {
            return Err(Error::Invalid(format!(
                "PostgreSQL TLS: sslrootcert {path}: no PEM certificate"
            )));
        }
        for cert in certs {
            store.add_cert(cert).map_err(|e| failed("sslrootcert", e))?;
        }
        builder
            .set_verify_cert_store(store.build())
            .map_err(|e| failed("sslrootcert", e))?;
    }
    if !verify {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if !verify {
        connector.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// Applies the missing migrations in one transaction, under an advisory lock so that
/// instances starting together apply each migration once.
fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = begin(client)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .db()?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS etee_schema (
             singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
             version BIGINT NOT NULL
         )",
    )
    .db()?;
    let found = match tx.query_opt("SELECT version FROM etee_schema", &[]).db()? {
        None => 0,
        Some(row) => {
            let v: i64 = get(&row, 0)?;
            u64::try_from(v).map_err(|_| Error::Corrupt(format!("schema version {v}")))?
        }
    };
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return tx.commit().db();
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.batch_execute(sql).db()?;
    }
    tx.execute(
        "INSERT INTO etee_schema (singleton, version) VALUES (TRUE, $1)
         ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        &[&(SCHEMA_VERSION as i64)],
    )
    .db()?;
    tx.commit().db()
}

const ETK_COLUMNS: &str = "e.digest, e.etk, e.not_before, e.not_after, e.registered_at,
    COALESCE((SELECT jsonb_agg(jsonb_build_object(
                  'id_type', i.id_type, 'value', i.value, 'application_id', i.application_id)
                  ORDER BY i.position)
              FROM etk_identifier i WHERE i.digest = e.digest), '[]'::jsonb)";

const KGSS_COLUMNS: &str = "id, wrapped_key, wrapping_key_label, creator, allowed_readers,
    excluded_readers, deletion_strategy, created_at";

const PUBLIC_KEY_COLUMNS: &str = "key_id, holder_type, holder_value, holder_application_id,
    spki_der, info, attestation, created_at";

impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn apply(&self, change: Change<'_>) -> Result<bool> {
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        let changed = apply_in(&mut tx, change)?;
        match changed {
            true => tx.commit().db()?,
            false => tx.rollback().db()?,
        }
        Ok(changed)
    }

    fn write_with_event(
        &self,
        request: Option<(&[u8; 32], i64, i64)>,
        change: Option<Change<'_>>,
        event: &AuditEvent,
    ) -> Result<Option<u64>> {
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        // The digest's row first: a replay leaves without touching the audit lock. Then the
        // change's locks (a key id's, its rows), then the audit lock: every transaction
        // takes its row locks before the advisory lock (append_event takes only the
        // latter), so none can deadlock. A concurrent same-digest request waits on the
        // uncommitted row and sees it as a replay once this commits (nothing, if it rolls
        // back).
        let fresh = match request {
            Some((digest, expires_at, now)) => remember_in(&mut tx, digest, expires_at, now)?,
            None => true,
        };
        let acted = fresh
            && match change {
                Some(change) => apply_in(&mut tx, change)?,
                None => true,
            };
        if !acted {
            tx.rollback().db()?;
            return Ok(None);
        }
        let sequence = append_in(&mut tx, event)?;
        tx.commit().db()?;
        Ok(Some(sequence))
    }

    fn concurrency(&self) -> Option<usize> {
        Some(self.pool.max_size() as usize)
    }

    fn find_etks(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<Vec<EtkRecord>> {
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {ETK_COLUMNS} FROM etk e
                     WHERE EXISTS (SELECT 1 FROM etk_identifier i
                                   WHERE i.digest = e.digest AND i.id_type = $1
                                     AND i.value = $2
                                     AND ($3::text IS NULL OR i.application_id = $3
                                          OR ($3 = '' AND i.application_id IS NULL)))
                     ORDER BY e.not_before DESC, e.digest"
                ),
                &[&id_type, &value, &application_id],
            )
            .db()?;
        rows.iter().map(etk_from_row).collect()
    }

    fn remove_etk(&self, digest: &[u8; 32]) -> Result<Option<EtkRecord>> {
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        let removed = remove_etk_in(&mut tx, digest)?;
        tx.commit().db()?;
        Ok(removed)
    }

    fn remove_etk_with_event(
        &self,
        digest: &[u8; 32],
        event: &dyn Fn(&EtkRecord) -> AuditEvent,
    ) -> Result<Option<(EtkRecord, u64)>> {
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        let Some(record) = remove_etk_in(&mut tx, digest)? else {
            tx.rollback().db()?;
            return Ok(None);
        };
        let sequence = append_in(&mut tx, &event(&record))?;
        tx.commit().db()?;
        Ok(Some((record, sequence)))
    }

    fn get_kgss_key(&self, id: &[u8; 16]) -> Result<Option<KgssKey>> {
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {KGSS_COLUMNS} FROM kgss_key WHERE id = $1"),
                &[&id.as_slice()],
            )
            .db()?;
        row.as_ref().map(kgss_from_row).transpose()
    }

    fn kgss_keys(&self, after: Option<&[u8; 16]>, limit: usize) -> Result<Vec<KgssKey>> {
        // Ids are 16 bytes (a CHECK), so the empty string sorts before every one of them.
        let after: &[u8] = after.map_or(&[], |a| &a[..]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .query(
                &format!("SELECT {KGSS_COLUMNS} FROM kgss_key WHERE id > $1 ORDER BY id LIMIT $2"),
                &[&after, &limit],
            )
            .db()?;
        rows.iter().map(kgss_from_row).collect()
    }

    fn get_public_key(&self, key_id: &[u8]) -> Result<Option<PublicKeyRecord>> {
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {PUBLIC_KEY_COLUMNS} FROM public_key WHERE key_id = $1"),
                &[&key_id],
            )
            .db()?;
        row.as_ref().map(public_key_from_row).transpose()
    }

    fn list_public_keys(
        &self,
        id_type: &str,
        value: &str,
        application_id: Option<&str>,
    ) -> Result<Vec<PublicKeyRecord>> {
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {PUBLIC_KEY_COLUMNS} FROM public_key
                     WHERE holder_type = $1 AND holder_value = $2
                       AND ($3::text IS NULL OR holder_application_id = $3)
                     ORDER BY key_id"
                ),
                &[&id_type, &value, &application_id],
            )
            .db()?;
        rows.iter().map(public_key_from_row).collect()
    }

    fn attributes(&self, id_type: &str, value: &str) -> Result<Vec<Attribute>> {
        attributes_in(&mut *self.conn()?, id_type, value)
    }

    fn list_attribute_holders(&self) -> Result<Vec<AttributeHolder>> {
        let rows = self
            .conn()?
            .query(
                "SELECT holder_type, holder_value, namespace, name, value FROM attribute
                 ORDER BY holder_type, holder_value, namespace, name",
                &[],
            )
            .db()?;
        let mut holders: Vec<AttributeHolder> = Vec::new();
        for row in &rows {
            let (t, v): (String, String) = (get(row, 0)?, get(row, 1)?);
            let attribute = Attribute {
                namespace: get(row, 2)?,
                name: get(row, 3)?,
                value: get(row, 4)?,
            };
            match holders.last_mut() {
                Some((ht, hv, attributes)) if *ht == t && *hv == v => attributes.push(attribute),
                _ => holders.push((t, v, vec![attribute])),
            }
        }
        Ok(holders)
    }

    fn remember_request(&self, digest: &[u8; 32], expires_at: i64, now: i64) -> Result<bool> {
        // On the connection itself: one autocommitted statement, no BEGIN/COMMIT round trips.
        remember_in(&mut *self.conn()?, digest, expires_at, now)
    }

    fn request_seen(&self, digest: &[u8; 32], now: i64) -> Result<bool> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT 1 FROM seen_request WHERE digest = $1 AND expires_at > $2",
                &[&digest.as_slice(), &now],
            )
            .db()?;
        Ok(row.is_some())
    }

    fn purge_expired(&self, now: i64) -> Result<u64> {
        // One purge at a time across the instances sharing the database: two deleting the
        // same rows deadlock (40P01). An instance that finds another purging leaves it be.
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PURGE_LOCK])
            .db()?
            .get(0);
        if !ours {
            tx.rollback().db()?;
            return Ok(0);
        }
        let purged = tx
            .execute("DELETE FROM seen_request WHERE expires_at <= $1", &[&now])
            .db()?;
        tx.commit().db()?;
        Ok(purged)
    }

    fn append_event(&self, event: &AuditEvent) -> Result<u64> {
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        let sequence = append_in(&mut tx, event)?;
        tx.commit().db()?;
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
        let mut conn = self.conn()?;
        let mut tx = begin(&mut conn)?;
        // The key's row first, shared: a deletion (which locks it, then the audit lock)
        // waits for this commit, or committed before and the row is gone. Then the digest
        // and the audit lock, in the order of remember_request_with_event.
        let stored = tx
            .query_opt(
                "SELECT 1 FROM kgss_key WHERE id = $1 FOR SHARE",
                &[&key_id.as_slice()],
            )
            .db()?
            .is_some();
        if !stored {
            tx.rollback().db()?;
            return Ok(KeyRead::KeyGone);
        }
        if !remember_in(&mut tx, digest, expires_at, now)? {
            tx.rollback().db()?;
            return Ok(KeyRead::Replay);
        }
        // A registry change commits holding the audit lock (its event): once this holds
        // it, every change not seen here will follow this event on the chain.
        lock_audit(&mut tx)?;
        for read in registry {
            if attributes_in(&mut tx, &read.id_type, &read.value)? != read.attributes {
                tx.rollback().db()?;
                return Ok(KeyRead::RegistryChanged);
            }
        }
        let sequence = append_in(&mut tx, event)?;
        tx.commit().db()?;
        Ok(KeyRead::Recorded(sequence))
    }

    fn events(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .query(
                "SELECT seq, event, hash FROM audit_event WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )
            .db()?;
        rows.iter()
            .map(|row| {
                let seq: i64 = get(row, 0)?;
                let json: Vec<u8> = get(row, 1)?;
                Ok(StoredEvent {
                    sequence: u64::try_from(seq)
                        .map_err(|_| Error::Corrupt(format!("audit sequence {seq}")))?,
                    event: serde_json::from_slice(&json)
                        .map_err(|e| Error::Corrupt(format!("audit event {seq}: {e}")))?,
                    hash: fixed("audit hash", get(row, 2)?)?,
                })
            })
            .collect()
    }
}

/// Records `digest` unless it is there unexpired; true when it was fresh. One statement: a
/// concurrent insert of the same digest makes this one wait, then take the conflict branch
/// and see the winner's unexpired row, so exactly one caller gets a row count of 1.
fn remember_in(
    client: &mut impl GenericClient,
    digest: &[u8; 32],
    expires_at: i64,
    now: i64,
) -> Result<bool> {
    let n = client
        .execute(
            "INSERT INTO seen_request (digest, expires_at) VALUES ($1, $2)
             ON CONFLICT (digest) DO UPDATE SET expires_at = EXCLUDED.expires_at
             WHERE seen_request.expires_at <= $3",
            &[&digest.as_slice(), &expires_at, &now],
        )
        .db()?;
    Ok(n == 1)
}

/// Takes, until `tx` ends, the advisory lock of KeyDepot key id `key_id`: a registration
/// and a deletion of one id never overlap, also across instances sharing the database.
///
/// Why: a registration is `INSERT .. WHERE NOT EXISTS (retired id) ON CONFLICT DO NOTHING`.
/// Alone, its NOT EXISTS reads the statement's snapshot: started while a deletion of the
/// same id was uncommitted, it saw no retired row, waited on the unique index for the
/// deleter and, the old row gone at the deleter's commit, inserted: the retired id was
/// handed out again (and that key could then never be deleted). With the lock taken first,
/// in its own statement, the registration's INSERT starts (READ COMMITTED: a new snapshot)
/// only after the deleter committed, so it sees the retired id, and the other way round a
/// deletion sees a registration that won. Chosen over a table of every id ever claimed
/// (registration inserting, deletion never removing): no schema change, which the two
/// backends share (a migration would bump the version for both, and older builds would
/// then refuse the database). The id is hashed to 32 bits with SHA-256 (the same on every
/// instance and build); two ids sharing a hash only wait for each other. Lock order in a
/// transaction: this lock, then row locks, then [`AUDIT_LOCK`], which nothing holds while
/// waiting for another lock, so no deadlock.
fn lock_key_id(tx: &mut Transaction<'_>, key_id: &[u8]) -> Result<()> {
    let digest = Sha256::digest(key_id);
    let hash = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&KEY_ID_LOCK_CLASS, &hash],
    )
    .db()?;
    Ok(())
}

/// Serialises the registrations of `holder` (type and value, as keys are counted), taken
/// after [`lock_key_id`] and only by registrations, so no deadlock.
fn lock_holder(tx: &mut Transaction<'_>, holder: &Identifier) -> Result<()> {
    let mut digest = Sha256::new();
    digest.update(holder.id_type.as_bytes());
    digest.update([0]);
    digest.update(holder.value.as_bytes());
    let digest = digest.finalize();
    let hash = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&HOLDER_LOCK_CLASS, &hash],
    )
    .db()?;
    Ok(())
}

/// A public key's registration (after [`lock_key_id`]); with `max_per_holder`, refused
/// when its holder has that many keys (counted after [`lock_holder`]).
fn insert_public_key(
    tx: &mut Transaction<'_>,
    record: &PublicKeyRecord,
    max_per_holder: Option<usize>,
) -> Result<u64> {
    check_key_id(&record.key_id)?;
    lock_key_id(tx, &record.key_id)?;
    if let Some(limit) = max_per_holder {
        lock_holder(tx, &record.holder)?;
        // After the lock, in a statement of its own (READ COMMITTED: a new snapshot), so
        // the registrations of the holder committed before are counted.
        let row = tx
            .query_one(
                "SELECT count(*) FROM public_key WHERE holder_type = $1 AND holder_value = $2",
                &[&record.holder.id_type, &record.holder.value],
            )
            .db()?;
        let held: i64 = get(&row, 0)?;
        if held >= limit as i64 {
            return Err(Error::TooManyKeys { limit });
        }
    }
    let n = tx
        .execute(
            &format!(
                "INSERT INTO public_key ({PUBLIC_KEY_COLUMNS})
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8
                 WHERE NOT EXISTS (SELECT 1 FROM retired_key_id WHERE key_id = $1)
                 ON CONFLICT (key_id) DO NOTHING"
            ),
            &[
                &record.key_id,
                &record.holder.id_type,
                &record.holder.value,
                &record.holder.application_id,
                &record.spki_der,
                &Json(&record.info),
                &record.attestation,
                &record.created_at,
            ],
        )
        .db()?;
    if n == 0 {
        return Err(Error::AlreadyExists);
    }
    Ok(n)
}

/// Stores the ETK of `record` under its identifiers (1), or finds it stored already (0),
/// under the registrations' lock.
fn put_etk_in(tx: &mut Transaction<'_>, record: &EtkRecord) -> Result<u64> {
    lock_etk_registrations(tx)?;
    let inserted = tx
        .execute(
            "INSERT INTO etk (digest, etk, not_before, not_after, registered_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
            &[
                &record.digest.as_slice(),
                &record.etk,
                &record.not_before,
                &record.not_after,
                &record.registered_at,
            ],
        )
        .db()?;
    if inserted == 1 {
        let statement = tx
            .prepare(
                "INSERT INTO etk_identifier (digest, position, id_type, value, application_id)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .db()?;
        for (position, id) in record.identifiers.iter().enumerate() {
            let position = i32::try_from(position)
                .map_err(|_| Error::Invalid("too many identifiers".into()))?;
            tx.execute(
                &statement,
                &[
                    &record.digest.as_slice(),
                    &position,
                    &id.id_type,
                    &id.value,
                    &id.application_id,
                ],
            )
            .db()?;
        }
    }
    Ok(inserted)
}

/// Takes, until `tx` ends, the lock serialising ETK registrations (rare administrator
/// changes), also across instances: what a registration checks of the stored ETKs
/// ([`Change::PutEtkExclusive`]) holds to its commit. Lock order: this lock, then row
/// locks, then [`AUDIT_LOCK`].
fn lock_etk_registrations(tx: &mut Transaction<'_>) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&ETK_REGISTRATION_LOCK],
    )
    .db()?;
    Ok(())
}

/// Makes `change` within `tx` (one statement each, a public key's registration and
/// deletion after [`lock_key_id`]): true when it changed something, false when it found
/// nothing to act on; a taken or retired key id for an insertion is `AlreadyExists`. A
/// public key's deletion retires its id in the same statement.
fn apply_in(tx: &mut Transaction<'_>, change: Change<'_>) -> Result<bool> {
    let n = match change {
        Change::PutEtk(record) => put_etk_in(tx, record)?,
        Change::PutEtkExclusive {
            record,
            exclusive,
            holder,
        } => {
            // The registrations' lock first (put_etk_in takes it again: reentrant), so
            // that what is read here holds to the commit.
            lock_etk_registrations(tx)?;
            for id in exclusive {
                let rows = tx
                    .query(
                        "SELECT i.digest, i.id_type, i.value, i.application_id
                         FROM etk_identifier i
                         WHERE i.digest IN (SELECT digest FROM etk_identifier
                                            WHERE id_type = $1 AND value = $2)
                         ORDER BY i.digest, i.position",
                        &[&id.id_type, &id.value],
                    )
                    .db()?;
                let mut by_etk: Vec<(Vec<u8>, Vec<Identifier>)> = Vec::new();
                for row in &rows {
                    let digest: Vec<u8> = get(row, 0)?;
                    let found = Identifier {
                        id_type: get(row, 1)?,
                        value: get(row, 2)?,
                        application_id: get(row, 3)?,
                    };
                    match by_etk.last_mut() {
                        Some((d, ids)) if *d == digest => ids.push(found),
                        _ => by_etk.push((digest, vec![found])),
                    }
                }
                if let Some((_, other)) = by_etk
                    .into_iter()
                    .find(|(_, ids)| !crate::names_holder(ids, holder))
                {
                    return Err(Error::IdentifierTaken(Box::new(IdentifierTaken {
                        identifier: id.clone(),
                        by: other,
                    })));
                }
            }
            put_etk_in(tx, record)?
        }

        Change::InsertKgssKey(key) => {
            let n = tx
                .execute(
                    &format!(
                        "INSERT INTO kgss_key ({KGSS_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
                    ),
                    &[
                        &key.id.as_slice(),
                        &key.wrapped_key,
                        &key.wrapping_key_label,
                        &Json(&key.creator),
                        &Json(&key.allowed_readers),
                        &Json(&key.excluded_readers),
                        &key.deletion_strategy,
                        &key.created_at,
                    ],
                )
                .db()?;
            if n == 0 {
                return Err(Error::AlreadyExists);
            }
            n
        }
        Change::DeleteKgssKey(id) => tx
            .execute("DELETE FROM kgss_key WHERE id = $1", &[&id.as_slice()])
            .db()?,
        Change::DeletePublicKey(key_id) => {
            lock_key_id(tx, key_id)?;
            // Counts the keys deleted, not the ids newly retired: an id already retired
            // (a key registered again under it before registrations took the lock) is
            // still deleted, keeping its first retirement.
            let row = tx
                .query_one(
                    "WITH gone AS (DELETE FROM public_key WHERE key_id = $1 RETURNING key_id),
                     retired AS (INSERT INTO retired_key_id (key_id, retired_at)
                                 SELECT key_id, extract(epoch FROM now())::bigint FROM gone
                                 ON CONFLICT (key_id) DO NOTHING)
                     SELECT count(*) FROM gone",
                    &[&key_id],
                )
                .db()?;
            let n: i64 = get(&row, 0)?;
            n as u64
        }
        Change::InsertPublicKey(record) => insert_public_key(tx, record, None)?,
        Change::InsertPublicKeyWithin {
            record,
            max_per_holder,
        } => insert_public_key(tx, record, Some(max_per_holder))?,
        // A concurrent update committed first makes the row fail the condition when it is
        // re-checked (READ COMMITTED): no row, then tell a missing key from a changed one.
        Change::UpdatePublicKeyInfo {
            key_id,
            expected,
            info,
        } => {
            let n = tx
                .execute(
                    "UPDATE public_key SET info = $3 WHERE key_id = $1 AND info = $2",
                    &[&key_id, &Json(expected), &Json(info)],
                )
                .db()?;
            if n == 0
                && tx
                    .query_opt("SELECT 1 FROM public_key WHERE key_id = $1", &[&key_id])
                    .db()?
                    .is_some()
            {
                return Err(Error::Conflict);
            }
            n
        }
        // A registry change holds the audit lock to its commit, with or without an event
        // (`set_attribute`): `remember_key_read` relies on it to see every change that
        // commits before its decision's event. The lock first, as `append_in` would take
        // it after a row lock no decision waits for. The WHERE leaves an equal row alone:
        // no row counted, nothing written.
        Change::SetAttribute {
            id_type,
            value,
            attribute,
        } => {
            lock_audit(tx)?;
            tx.execute(
                "INSERT INTO attribute (holder_type, holder_value, namespace, name, value)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (holder_type, holder_value, namespace, name)
                 DO UPDATE SET value = EXCLUDED.value
                 WHERE attribute.value IS DISTINCT FROM EXCLUDED.value",
                &[
                    &id_type,
                    &value,
                    &attribute.namespace,
                    &attribute.name,
                    &attribute.value,
                ],
            )
            .db()?
        }
        Change::RemoveAttribute {
            id_type,
            value,
            namespace,
            name,
        } => {
            lock_audit(tx)?;
            tx.execute(
                "DELETE FROM attribute WHERE holder_type = $1 AND holder_value = $2
                   AND namespace = $3 AND name = $4",
                &[&id_type, &value, &namespace, &name],
            )
            .db()?
        }
    };
    Ok(n > 0)
}

/// Removes the ETK of `digest` within `tx`: the record as it was removed (its identifiers
/// go with it: ON DELETE CASCADE).
fn remove_etk_in(tx: &mut Transaction<'_>, digest: &[u8; 32]) -> Result<Option<EtkRecord>> {
    let row = tx
        .query_opt(
            &format!("SELECT {ETK_COLUMNS} FROM etk e WHERE e.digest = $1 FOR UPDATE"),
            &[&digest.as_slice()],
        )
        .db()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let record = etk_from_row(&row)?;
    tx.execute("DELETE FROM etk WHERE digest = $1", &[&digest.as_slice()])
        .db()?;
    Ok(Some(record))
}

/// Whether `e` is a PostgreSQL or pool failure that trying again may cure (nothing was
/// written): a lock wait past `lock_timeout` (55P03), a deadlock (40P01), a serialization
/// failure (40001), a cancelled statement (57014), or no pooled connection in time.
pub(crate) fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    use postgres::error::SqlState;
    if let Some(e) = e.downcast_ref::<postgres::Error>() {
        return e.code().is_some_and(|code| {
            [
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::QUERY_CANCELED,
            ]
            .contains(code)
        });
    }
    // The pool's only error is a checkout that timed out: busy when every connection was
    // taken, not when connecting failed (the server down, a bad password), which the error
    // then names after its fixed text.
    e.is::<r2d2::Error>() && e.to_string() == POOL_TIMEOUT
}

/// How long a caller waits for a free pooled connection by default.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What r2d2 says of a checkout that timed out while connections existed but were all
/// taken (with `": "` and the last connection error after it when connecting failed).
const POOL_TIMEOUT: &str = "timed out waiting for connection";

/// Takes the audit chain's lock until `tx` ends (again: advisory locks are reentrant).
fn lock_audit(tx: &mut Transaction) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .db()?;
    Ok(())
}

/// A holder's attributes, ordered by namespace and name.
fn attributes_in(
    client: &mut impl GenericClient,
    id_type: &str,
    value: &str,
) -> Result<Vec<Attribute>> {
    let rows = client
        .query(
            "SELECT namespace, name, value FROM attribute
             WHERE holder_type = $1 AND holder_value = $2 ORDER BY namespace, name",
            &[&id_type, &value],
        )
        .db()?;
    rows.iter()
        .map(|row| {
            Ok(Attribute {
                namespace: get(row, 0)?,
                name: get(row, 1)?,
                value: get(row, 2)?,
            })
        })
        .collect()
}

/// Appends `event` after the chain head within `tx`; returns its sequence. The advisory lock
/// is held to commit: the head read is the one this event follows, also across instances
/// sharing the database.
fn append_in(tx: &mut Transaction, event: &AuditEvent) -> Result<u64> {
    lock_audit(tx)?;
    let (last, previous) = match tx
        .query_opt(
            "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .db()?
    {
        None => (0u64, audit::GENESIS),
        Some(row) => {
            let seq: i64 = get(&row, 0)?;
            let seq =
                u64::try_from(seq).map_err(|_| Error::Corrupt(format!("audit sequence {seq}")))?;
            (seq, fixed("audit hash", get(&row, 1)?)?)
        }
    };
    let sequence = last + 1;
    let json = audit::event_bytes(event);
    let hash = audit::chain_hash(&previous, sequence, &json);
    let seq =
        i64::try_from(sequence).map_err(|_| Error::Invalid("the audit log is full".into()))?;
    tx.execute(
        "INSERT INTO audit_event (seq, event, hash) VALUES ($1, $2, $3)",
        &[&seq, &json, &hash.as_slice()],
    )
    .db()?;
    Ok(sequence)
}

/// A column, with a wrong type or undecodable JSON reported as corruption (never a panic).
fn get<'a, T: FromSql<'a>>(row: &'a Row, column: usize) -> Result<T> {
    row.try_get(column)
        .map_err(|e| Error::Corrupt(format!("column {column}: {e}")))
}

fn fixed<const N: usize>(field: &str, bytes: Vec<u8>) -> Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("{field} is not {N} bytes")))
}

fn etk_from_row(row: &Row) -> Result<EtkRecord> {
    let Json(identifiers): Json<Vec<Identifier>> = get(row, 5)?;
    Ok(EtkRecord {
        digest: fixed("ETK digest", get(row, 0)?)?,
        identifiers,
        etk: get(row, 1)?,
        not_before: get(row, 2)?,
        not_after: get(row, 3)?,
        registered_at: get(row, 4)?,
    })
}

fn kgss_from_row(row: &Row) -> Result<KgssKey> {
    let Json(creator): Json<Identifier> = get(row, 3)?;
    let Json(allowed_readers): Json<Vec<Credential>> = get(row, 4)?;
    let Json(excluded_readers): Json<Vec<Credential>> = get(row, 5)?;
    Ok(KgssKey {
        id: fixed("KGSS key id", get(row, 0)?)?,
        wrapped_key: get(row, 1)?,
        wrapping_key_label: get(row, 2)?,
        creator,
        allowed_readers,
        excluded_readers,
        deletion_strategy: get(row, 6)?,
        created_at: get(row, 7)?,
    })
}

fn public_key_from_row(row: &Row) -> Result<PublicKeyRecord> {
    let Json(info): Json<BTreeMap<String, String>> = get(row, 5)?;
    Ok(PublicKeyRecord {
        key_id: get(row, 0)?,
        holder: Identifier {
            id_type: get(row, 1)?,
            value: get(row, 2)?,
            application_id: get(row, 3)?,
        },
        spki_der: get(row, 4)?,
        info,
        attestation: get(row, 6)?,
        created_at: get(row, 7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDatabase;
    use crate::Change;

    /// A database at schema version 1 (no audit table, no retired key ids) keeps its rows
    /// when a newer etee connects, and gains what versions 2 and 3 brought. Version 1 is
    /// made by dropping the later tables from a new database and setting its version,
    /// which is what a version-1 database holds. Skipped without a test server.
    #[test]
    fn a_version_1_database_with_data_is_brought_up_to_date() {
        let Some(db) = ScratchDatabase::for_tests(etee_testpki::skip::postgres_url()) else {
            return;
        };
        let url = db.url().to_owned();
        std::thread::spawn(move || {
            let record = PublicKeyRecord {
                key_id: b"kd-1".to_vec(),
                holder: Identifier::new("NIHII-HOSPITAL", "71000436", None),
                spki_der: vec![0x30, 0x00],
                info: BTreeMap::new(),
                attestation: None,
                created_at: 1,
            };
            {
                let store = PgStore::connect(&url, 1).unwrap();
                store
                    .apply_with_event(
                        Change::InsertPublicKey(&record),
                        &crate::audit::AuditEvent {
                            at: 1,
                            action: "insert".into(),
                            actor: "test".into(),
                            subject: "kd-1".into(),
                            outcome: "done".into(),
                            detail: None,
                        },
                    )
                    .unwrap();
                store
                    .conn()
                    .unwrap()
                    .batch_execute(
                        "DROP TABLE audit_event; DROP TABLE retired_key_id;
                         UPDATE etee_schema SET version = 1;",
                    )
                    .unwrap();
            }
            let store = PgStore::connect(&url, 1).unwrap();
            let version: i64 = store
                .conn()
                .unwrap()
                .query_one("SELECT version FROM etee_schema", &[])
                .unwrap()
                .get(0);
            assert_eq!(version as u64, SCHEMA_VERSION);
            assert_eq!(store.get_public_key(b"kd-1").unwrap(), Some(record.clone()));
            // Version 2: the audit chain (empty: version 1 had none).
            assert!(store.events(0, 10).unwrap().is_empty());
            let event = crate::audit::AuditEvent {
                at: 2,
                action: "delete".into(),
                actor: "test".into(),
                subject: "kd-1".into(),
                outcome: "done".into(),
                detail: None,
            };
            let seq = store
                .apply_with_event(Change::DeletePublicKey(b"kd-1"), &event)
                .unwrap();
            assert_eq!(seq, Some(1));
            // Version 3: the deleted id is retired.
            assert!(matches!(
                store.apply_with_event(Change::InsertPublicKey(&record), &event),
                Err(Error::AlreadyExists)
            ));
        })
        .join()
        .unwrap();
    }
}
