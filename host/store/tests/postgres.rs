//! The shared suite against PostgreSQL. Needs a server: `ETEE_TEST_POSTGRES_URL` (e.g. from
//! `scripts/postgres`) names a database whose role may create databases; each test gets a
//! database of its own, dropped at the end.

mod common;

use std::sync::Arc;

use common::Harness;
use etee_store::scratch::ScratchDatabase;
use etee_store::{PgStore, Store};
use postgres::{Client, NoTls};

/// A scratch database per test.
struct Pg {
    db: ScratchDatabase,
}

impl Pg {
    fn new() -> Option<Self> {
        ScratchDatabase::for_tests(etee_testpki::skip::postgres_url()).map(|db| Pg { db })
    }

    fn client(&self) -> Client {
        Client::connect(self.db.url(), NoTls).unwrap()
    }
}

impl common::Harness for Pg {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(PgStore::connect(self.db.url(), 4).unwrap())
    }
    fn location(&self) -> String {
        self.db.url().to_owned()
    }
    fn shared(&self) -> bool {
        true
    }
    fn set_schema_version(&self, version: u64) {
        self.client()
            .execute("UPDATE etee_schema SET version = $1", &[&(version as i64)])
            .unwrap();
    }
    fn corrupt_kgss_key(&self, id: &[u8; 16]) {
        self.client()
            .execute(
                "UPDATE kgss_key SET creator = '\"not an identifier\"'::jsonb WHERE id = $1",
                &[&id.as_slice()],
            )
            .unwrap();
    }
    fn expected_backend(&self) -> &'static str {
        "postgres"
    }
}

store_suite!(Pg::new());

#[test]
fn instances_starting_together_migrate_once() {
    let Some(h) = Pg::new() else { return };
    let url = h.db.url().to_owned();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url, 1).map(|_| ()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let version: i64 = h
        .client()
        .query_one("SELECT version FROM etee_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version as u64, etee_store::SCHEMA_VERSION);
}

#[test]
fn unreachable_server_is_a_backend_error() {
    let Some(_h) = Pg::new() else { return };
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/none", 1).unwrap_err();
    assert!(matches!(err, etee_store::Error::Backend(_)), "{err:?}");
}

/// TLS to the server: `sslmode=require` with the server's certificate as `sslrootcert`
/// connects encrypted; with another root, or with the system's roots (the test server's
/// certificate is self-signed), it is refused; `sslmode=disable` goes in clear. Needs
/// `ETEE_TEST_POSTGRES_CA` (the certificate `scripts/postgres` gives its server).
#[test]
fn tls_is_verified_when_required() {
    let Some(h) = Pg::new() else { return };
    let Ok(ca) = std::env::var("ETEE_TEST_POSTGRES_CA") else {
        etee_testpki::skip::skip_postgres(
            "ETEE_TEST_POSTGRES_CA is not set (scripts/test sets it)",
        );
        return;
    };
    let with = |params: &str| {
        let sep = if h.db.url().contains('?') { '&' } else { '?' };
        format!("{}{sep}{params}", h.db.url())
    };
    let store = PgStore::connect(&with(&format!("sslmode=require&sslrootcert={ca}")), 2)
        .expect("TLS with the server's certificate as root");
    assert!(store.uses_tls().unwrap(), "the connection is encrypted");

    // Another root: the chain does not verify.
    let other = tempfile::NamedTempFile::new().unwrap();
    let stranger = {
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "127.0.0.1").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        b.build().to_pem().unwrap()
    };
    std::fs::write(other.path(), stranger).unwrap();
    let refused = PgStore::connect(
        &with(&format!(
            "sslmode=require&sslrootcert={}",
            other.path().display()
        )),
        2,
    );
    assert!(refused.is_err(), "a server certificate from another root");
    // The system's roots do not know the test server's self-signed certificate.
    assert!(PgStore::connect(&with("sslmode=require"), 2).is_err());
    // An unreadable root file is a clear configuration error.
    let missing = PgStore::connect(&with("sslmode=require&sslrootcert=/nonexistent/ca.pem"), 2)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("sslrootcert /nonexistent/ca.pem"),
        "{missing}"
    );

    let clear = PgStore::connect(&with("sslmode=disable"), 2).unwrap();
    assert!(!clear.uses_tls().unwrap());
}

/// How many sessions on the test's database wait for a lock.
fn waiting(h: &Pg) -> i64 {
    h.client()
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND a.datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Waits (at most 30 s) until `n` sessions on the test's database wait for a lock.
fn until_waiting(h: &Pg, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while waiting(h) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} sessions never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A registration that starts while a deletion of the same key id is uncommitted waits for
/// it and is then refused: the id was retired, and a retired id is never handed out again
/// (under READ COMMITTED alone, its NOT EXISTS on the retired ids would read a snapshot
/// from before the deletion, and its insert, once the old row is gone, would succeed).
#[test]
fn registration_racing_a_deletion_of_its_id_is_refused() {
    let Some(h) = Pg::new() else { return };
    let store = h.open();
    let id = format!("race-{}", common::unique()).into_bytes();
    let holder = common::public_key(&id, ("SSIN", "85073003328", None));
    store.insert_public_key(&holder).unwrap();

    // Holds the deletion uncommitted: it deletes the key and retires the id, then waits
    // to append its audit event (the way KeyDepot deletes) behind this lock on the chain.
    let mut blocker = h.client();
    let mut hold = blocker.transaction().unwrap();
    hold.batch_execute("LOCK TABLE audit_event IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let deleter = {
        let (store, id) = (store.clone(), id.clone());
        std::thread::spawn(move || {
            store.apply_with_event(
                etee_store::Change::DeletePublicKey(&id),
                &common::audit_event(1, "deleted"),
            )
        })
    };
    until_waiting(&h, 1);

    // Somebody else registers the same id meanwhile: it must wait for the deletion.
    let registrar = {
        let store = store.clone();
        let mut other = common::public_key(&id, ("CBE", "0123456789", None));
        other.spki_der.push(0xEE);
        std::thread::spawn(move || store.insert_public_key(&other))
    };
    until_waiting(&h, 2);
    assert!(!registrar.is_finished(), "the registration waits");

    hold.rollback().unwrap();
    assert_eq!(deleter.join().unwrap().unwrap(), Some(1), "deleted");
    let registered = registrar.join().unwrap();
    assert!(
        matches!(registered, Err(etee_store::Error::AlreadyExists)),
        "the retired id was handed out again: {registered:?}"
    );
    assert_eq!(store.get_public_key(&id).unwrap(), None);

    // And afterwards: the id stays retired, for its former holder too.
    assert!(matches!(
        store.insert_public_key(&holder),
        Err(etee_store::Error::AlreadyExists)
    ));
    assert!(!store.delete_public_key(&id).unwrap(), "nothing to delete");

    // An existing key is still deleted, once.
    let id2 = format!("race-{}", common::unique()).into_bytes();
    store
        .insert_public_key(&common::public_key(&id2, ("SSIN", "85073003328", None)))
        .unwrap();
    assert!(store.delete_public_key(&id2).unwrap());
    assert_eq!(store.get_public_key(&id2).unwrap(), None);
    assert!(!store.delete_public_key(&id2).unwrap());
}

/// A key registered under an id that was already retired (what the race above could do
/// before registrations took the id's lock) can still be deleted by its holder: the
/// deletion counts the key removed, not the id newly retired.
#[test]
fn key_under_an_already_retired_id_can_be_deleted() {
    let Some(h) = Pg::new() else { return };
    let store = h.open();
    let id = format!("damaged-{}", common::unique()).into_bytes();
    store
        .insert_public_key(&common::public_key(&id, ("SSIN", "85073003328", None)))
        .unwrap();
    h.client()
        .execute(
            "INSERT INTO retired_key_id (key_id, retired_at) VALUES ($1, 1)",
            &[&id],
        )
        .unwrap();
    assert_eq!(
        store
            .apply_with_event(
                etee_store::Change::DeletePublicKey(&id),
                &common::audit_event(1, "deleted"),
            )
            .unwrap(),
        Some(1)
    );
    assert_eq!(store.get_public_key(&id).unwrap(), None);
    let retired_at: i64 = h
        .client()
        .query_one(
            "SELECT retired_at FROM retired_key_id WHERE key_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(retired_at, 1, "the first retirement is kept");
}

fn event(n: usize) -> etee_store::AuditEvent {
    etee_store::AuditEvent {
        at: 1,
        action: "test.append".into(),
        actor: format!("thread {n}"),
        subject: "s".into(),
        outcome: "done".into(),
        detail: None,
    }
}

/// A database whose default isolation is REPEATABLE READ (a DBA's choice): instances
/// starting together still migrate once, and audit appends from two instances at once
/// still all succeed, in one chain that verifies. Each transaction of the store asks for
/// READ COMMITTED itself (a snapshot taken before the audit lock's grant would read a
/// stale head: duplicate sequences; or miss the tables another instance just created).
#[test]
fn a_stricter_default_isolation_changes_nothing() {
    let Some(h) = Pg::new() else { return };
    let name = h.db.name().to_owned();
    h.client()
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'"
        ))
        .unwrap();
    let url = h.db.url().to_owned();
    let starting: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url, 3).map(Arc::new))
        })
        .collect();
    let stores: Vec<Arc<PgStore>> = starting
        .into_iter()
        .map(|t| t.join().unwrap().expect("an instance starts"))
        .collect();
    let writers: Vec<_> = (0..6)
        .map(|n| {
            let store = stores[n % 2].clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    store.append_event(&event(n * 100 + i)).expect("an append");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let events = stores[0].events(0, 1000).unwrap();
    assert_eq!(events.len(), 60);
    etee_store::audit::verify(0, etee_store::audit::GENESIS, &events).expect("one chain");
}

/// A database (or role) configured with `synchronous_commit = off` would acknowledge
/// commits a server crash can lose: the store's sessions set it on again, and keep their
/// lock and idle timeouts.
#[test]
fn commits_are_synchronous_whatever_the_database_says() {
    let Some(h) = Pg::new() else { return };
    let name = h.db.name().to_owned();
    h.client()
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET synchronous_commit = off;
             ALTER DATABASE {name} SET lock_timeout = 0"
        ))
        .unwrap();
    let store = PgStore::connect(h.db.url(), 2).unwrap();
    assert_eq!(store.setting("synchronous_commit").unwrap(), "on");
    assert_eq!(store.setting("lock_timeout").unwrap(), "10s");
    assert_eq!(
        store
            .setting("idle_in_transaction_session_timeout")
            .unwrap(),
        "30s"
    );
    // The database's own default is what the test changed: a plain session sees it.
    let row = h
        .client()
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "off");
}

/// An instance that stalls while holding the audit chain's lock (paused, cut off between
/// its lock and its commit) does not hang the others: their audited writes fail after the
/// lock timeout (10 s) instead of waiting for it, and go through once it is released.
#[test]
fn a_stalled_lock_holder_does_not_hang_the_others() {
    let Some(h) = Pg::new() else { return };
    let store = PgStore::connect(h.db.url(), 2).unwrap();
    store.append_event(&event(0)).unwrap();
    let mut holder = h.client();
    let mut tx = holder.transaction().unwrap();
    // The audit lock's key (pg.rs AUDIT_LOCK, "etee-aud").
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&0x6574_6565_2d61_7564i64],
    )
    .unwrap();
    let started = std::time::Instant::now();
    // Meanwhile an administrator's change with its event: it fails whole, the change is
    // not left behind without its event.
    let store = Arc::new(store);
    let admin = {
        let store = store.clone();
        std::thread::spawn(move || {
            let attribute = etee_store::Attribute {
                namespace: "ns".into(),
                name: "recognised".into(),
                value: "true".into(),
            };
            store.apply_with_event(
                etee_store::Change::SetAttribute {
                    id_type: "NIHII-PHARMACY",
                    value: "12345678",
                    attribute: &attribute,
                },
                &event(9),
            )
        })
    };
    let err = store.append_event(&event(1)).unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(9) && waited < std::time::Duration::from_secs(25),
        "{waited:?}"
    );
    assert!(err.to_string().contains("lock timeout"), "{err}");
    // Told apart from a failure: the same request may succeed when tried again.
    assert!(matches!(err, etee_store::Error::Busy(_)), "{err:?}");
    let admin = admin.join().unwrap().unwrap_err();
    assert!(matches!(admin, etee_store::Error::Busy(_)), "{admin:?}");
    tx.rollback().unwrap();
    assert!(
        store
            .attributes("NIHII-PHARMACY", "12345678")
            .unwrap()
            .is_empty(),
        "the change committed without its event"
    );
    assert_eq!(store.append_event(&event(2)).unwrap(), 2);
}

/// Instances purging the replay table at once take turns (two deleting the same rows
/// deadlock): while another purges, an instance leaves it be.
#[test]
fn one_instance_purges_at_a_time() {
    let Some(h) = Pg::new() else { return };
    let store = PgStore::connect(h.db.url(), 2).unwrap();
    for i in 0..5u8 {
        assert!(store.remember_request(&[i; 32], 10, 0).unwrap());
    }
    let mut other = h.client();
    let mut tx = other.transaction().unwrap();
    // The purge lock's key (pg.rs PURGE_LOCK, "etee-pug").
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&0x6574_6565_2d70_7567i64],
    )
    .unwrap();
    assert_eq!(
        store.purge_expired(100).unwrap(),
        0,
        "another instance is purging"
    );
    tx.rollback().unwrap();
    assert_eq!(store.purge_expired(100).unwrap(), 5);
}

/// A registration under a number while another instance's registration of another holder
/// under it is uncommitted waits for it, then is refused: without the registrations' lock it
/// would read the stored ETKs before that commit and both would be stored (two holders
/// answered for one number).
#[test]
fn etk_registration_waits_for_one_under_way() {
    let Some(h) = Pg::new() else { return };
    let store = h.open();
    let n = common::unique() % 100_000_000;
    let number = format!("{n:08}004");
    let other = common::etk(
        &format!("other {n}"),
        &[("SSIN", "85073003328"), ("NIHII", &number)],
        None,
        0,
    );

    // Another instance registering `other`, holding the registrations' lock (the key
    // `etee-etk` of the store) with its rows written and not yet committed.
    let mut blocker = h.client();
    let mut under_way = blocker.transaction().unwrap();
    under_way
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&0x6574_6565_2d65_746b_i64],
        )
        .unwrap();
    under_way
        .execute(
            "INSERT INTO etk (digest, etk, not_before, not_after, registered_at)
             VALUES ($1, $2, 0, 1, 0)",
            &[&other.digest.as_slice(), &other.etk],
        )
        .unwrap();
    for (position, id) in other.identifiers.iter().enumerate() {
        under_way
            .execute(
                "INSERT INTO etk_identifier (digest, position, id_type, value)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &other.digest.as_slice(),
                    &(position as i32),
                    &id.id_type,
                    &id.value,
                ],
            )
            .unwrap();
    }

    let mine = common::etk(
        &format!("mine {n}"),
        &[("SSIN", "71010112345"), ("NIHII", &number)],
        None,
        0,
    );
    let registrar = {
        let (store, number) = (store.clone(), number.clone());
        std::thread::spawn(move || {
            store.put_etk_exclusive(
                &mine,
                &[etee_store::Identifier::new("NIHII", &number, None)],
                &[etee_store::Identifier::new("SSIN", "71010112345", None)],
            )
        })
    };
    until_waiting(&h, 1);
    assert!(!registrar.is_finished(), "the registration waits");
    under_way.commit().unwrap();

    let registered = registrar.join().unwrap();
    assert!(
        matches!(registered, Err(etee_store::Error::IdentifierTaken(_))),
        "two holders under one number: {registered:?}"
    );
    let found = store.find_etks("NIHII", &number, None).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest, other.digest);
}

/// Every pooled connection taken (here the only one, by a caller waiting for the audit
/// chain's lock): another caller waits for one, then is told the store is busy
/// (`Error::Busy`, a retryable 503 upstream), not that it failed; once the connection
/// is free again it is served.
#[test]
fn an_exhausted_pool_is_busy() {
    let Some(h) = Pg::new() else { return };
    let wait = std::time::Duration::from_millis(300);
    let store: Arc<dyn Store> = Arc::new(PgStore::connect_waiting(h.db.url(), 1, wait).unwrap());
    let mut blocker = h.client();
    let mut hold = blocker.transaction().unwrap();
    hold.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&0x6574_6565_2d61_7564_i64],
    )
    .unwrap();
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || store.append_event(&common::audit_event(1, "done")))
    };
    until_waiting(&h, 1);
    let started = std::time::Instant::now();
    let busy = store.find_etks("SSIN", "85073003328", None);
    assert!(
        matches!(busy, Err(etee_store::Error::Busy(_))),
        "all connections taken: {busy:?}"
    );
    assert!(
        started.elapsed() >= wait,
        "it waited for a connection first"
    );
    hold.rollback().unwrap();
    assert_eq!(appender.join().unwrap().unwrap(), 1);
    assert!(store
        .find_etks("SSIN", "85073003328", None)
        .unwrap()
        .is_empty());
}
