//! The shared suite against PostgreSQL. Needs a server: `ETEE_TEST_POSTGRES_URL` (e.g. from
//! `scripts/postgres`) names a database whose role may create databases; each test gets a
//! database of its own, dropped at the end.

mod common;

use std::sync::Arc;

use etee_store::scratch::ScratchDatabase;
use etee_store::{PgStore, Store};
use postgres::{Client, NoTls};

/// A scratch database per test.
struct Pg {
    db: ScratchDatabase,
}

impl Pg {
    fn new() -> Option<Self> {
        ScratchDatabase::for_tests().map(|db| Pg { db })
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
