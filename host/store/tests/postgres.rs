//! The shared suite against PostgreSQL. Needs a server: `ETEE_TEST_POSTGRES_URL` (e.g. from
//! `scripts/postgres`) names a database whose role may create databases; each test gets a
//! database of its own, dropped at the end.

mod common;

use std::sync::Arc;

use etee_store::{PgStore, Store};
use postgres::{Client, NoTls};

const URL_VAR: &str = "ETEE_TEST_POSTGRES_URL";

struct Pg {
    admin_url: String,
    name: String,
    url: String,
}

impl Pg {
    fn new() -> Option<Self> {
        let Ok(admin_url) = std::env::var(URL_VAR) else {
            eprintln!("skipped: set {URL_VAR}, e.g. via scripts/postgres");
            return None;
        };
        let name = format!("etee_t_{:x}", common::unique());
        Client::connect(&admin_url, NoTls)
            .unwrap()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = with_database(&admin_url, &name);
        Some(Pg {
            admin_url,
            name,
            url,
        })
    }

    fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&self.admin_url, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let authority = url.find("://").expect("a URL") + 3;
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let base = match head[authority..].find('/') {
        Some(slash) => &head[..authority + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

impl common::Harness for Pg {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(PgStore::connect(&self.url, 4).unwrap())
    }
    fn location(&self) -> String {
        self.url.clone()
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
    let url = h.url.clone();
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

#[test]
fn url_rewriting() {
    assert_eq!(
        with_database("postgres://u@h:1/db?sslmode=disable", "x"),
        "postgres://u@h:1/x?sslmode=disable"
    );
    assert_eq!(with_database("postgresql://u@h", "x"), "postgresql://u@h/x");
}
