//! The shared suite against the embedded (redb) store.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use etee_store::{EmbeddedStore, Store};
use redb::{Database, TableDefinition};

struct Embedded {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Embedded {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        Embedded { _dir: dir, path }
    }

    /// Writes into the file as a foreign writer would, with redb itself.
    fn tamper(&self, f: impl FnOnce(&redb::WriteTransaction)) {
        let db = Database::create(&self.path).unwrap();
        let txn = db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    }
}

impl common::Harness for Embedded {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(&self.path).unwrap())
    }
    fn location(&self) -> String {
        self.path.to_str().unwrap().to_owned()
    }
    fn shared(&self) -> bool {
        false
    }
    fn set_schema_version(&self, version: u64) {
        self.tamper(|txn| {
            let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
            txn.open_table(meta)
                .unwrap()
                .insert("schema_version", version)
                .unwrap();
        });
    }
    fn corrupt_kgss_key(&self, id: &[u8; 16]) {
        self.tamper(|txn| {
            let keys: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kgss_key");
            txn.open_table(keys)
                .unwrap()
                .insert(&id[..], &b"\xff{not json"[..])
                .unwrap();
        });
    }
    fn expected_backend(&self) -> &'static str {
        "embedded"
    }
}

store_suite!(Some(Embedded::new()));

#[test]
fn missing_parent_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddedStore::open(&dir.path().join("missing/store.redb")).unwrap_err();
    assert!(matches!(err, etee_store::Error::Io(_)), "{err:?}");
}

/// A second opener (an admin command while `etee platform serve` runs) is told the file
/// is in use and what to do, not redb's "Database already open. Cannot acquire lock.".
#[test]
fn second_handle_on_the_same_file_is_refused_cleanly() {
    let h = Embedded::new();
    let _first = EmbeddedStore::open(&h.path).unwrap();
    let err = EmbeddedStore::open(&h.path).unwrap_err();
    assert!(matches!(err, etee_store::Error::InUse), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("in use by another process")
            && text.contains("etee platform serve")
            && text.contains("stop it"),
        "{text}"
    );
    let err = etee_store::open(h.path.to_str().unwrap()).err().unwrap();
    assert!(matches!(err, etee_store::Error::InUse), "{err:?}");
}

/// The file holds wrapped KGSS keys, the attribute registry and the audit chain: it is
/// created readable by its owner only, whatever the umask.
#[test]
fn a_new_store_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let h = Embedded::new();
    drop(EmbeddedStore::open(&h.path).unwrap());
    let mode = std::fs::metadata(&h.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    // An existing file keeps the mode its operator gave it.
    std::fs::set_permissions(&h.path, std::fs::Permissions::from_mode(0o640)).unwrap();
    drop(EmbeddedStore::open(&h.path).unwrap());
    let mode = std::fs::metadata(&h.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "{mode:o}");
}
