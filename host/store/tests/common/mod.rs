//! The behaviour every backend must show, written once and run against each of them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use etee_store::{
    audit, Attribute, AuditEvent, Change, Credential, Error, EtkRecord, Identifier, KeyRead,
    KgssKey, PublicKeyRecord, RegistryRead, Store, SCHEMA_VERSION,
};
use sha2::{Digest, Sha256};

/// A fresh, empty store location plus the out-of-band tampering the tests need.
pub trait Harness {
    /// Opens (another) handle on the location. The embedded file admits one handle at a time.
    fn open(&self) -> Arc<dyn Store>;
    /// What `etee_store::open` takes for this location.
    fn location(&self) -> String;
    /// Whether two handles may be open at once (several instances on one database).
    fn shared(&self) -> bool;
    /// Writes `version` as the schema version, behind the store's back (no handle open).
    fn set_schema_version(&self, version: u64);
    /// Damages the stored row of a KGSS key, behind the store's back (no handle open).
    fn corrupt_kgss_key(&self, id: &[u8; 16]);
    fn expected_backend(&self) -> &'static str;
}

/// Unique small numbers for names.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (std::process::id() as u64) << 32 ^ nanos << 8 ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn etk(body: &str, ids: &[(&str, &str)], app: Option<&str>, not_before: i64) -> EtkRecord {
    let etk = body.as_bytes().to_vec();
    EtkRecord {
        digest: Sha256::digest(&etk).into(),
        identifiers: ids
            .iter()
            .map(|(t, v)| Identifier::new(t, v, app))
            .collect(),
        etk,
        not_before,
        not_after: not_before + 3 * 365 * 86400,
        registered_at: 1_700_000_000,
    }
}

pub fn kgss_key(n: u128) -> KgssKey {
    KgssKey {
        id: n.to_be_bytes(),
        wrapped_key: vec![0xA5; 40],
        wrapping_key_label: "kgss-wrap-1".into(),
        creator: Identifier::new("NIHII-PHARMACY", "12345678", Some("KGSS")),
        allowed_readers: vec![
            Credential {
                namespace: "urn:be:fgov:certified-namespace:ehealth".into(),
                name: "urn:be:fgov:person:ssin".into(),
                values: vec!["85073003328".into()],
            },
            Credential {
                namespace: "urn:be:fgov:identification-namespace".into(),
                name: "urn:be:fgov:ehealth:1.0:certificateholder:hospital:nihii-number".into(),
                values: vec![],
            },
        ],
        excluded_readers: vec![],
        deletion_strategy: Some("creator".into()),
        created_at: 1_700_000_123,
    }
}

pub fn public_key(key_id: &[u8], holder: (&str, &str, Option<&str>)) -> PublicKeyRecord {
    PublicKeyRecord {
        key_id: key_id.to_vec(),
        holder: Identifier::new(holder.0, holder.1, holder.2),
        spki_der: vec![0x30, 0x59, 0x30, 0x13, 1, 2, 3],
        info: BTreeMap::from([("name".to_string(), "laptop".to_string())]),
        attestation: None,
        created_at: 1_700_000_000,
    }
}

fn attr(namespace: &str, name: &str, value: &str) -> Attribute {
    Attribute {
        namespace: namespace.into(),
        name: name.into(),
        value: value.into(),
    }
}

pub fn backend_and_open_helper(h: &impl Harness) {
    let store = h.open();
    assert_eq!(store.backend_name(), h.expected_backend());
    drop(store);
    let store = etee_store::open(&h.location()).unwrap();
    assert_eq!(store.backend_name(), h.expected_backend());
}

pub fn etks(h: &impl Harness) {
    let s = h.open();
    let old = etk("old", &[("CBE", "0123456789")], None, 100);
    let new = etk("new", &[("CBE", "0123456789")], None, 200);
    let kgss = etk(
        "kgss",
        &[("CBE", "0123456789"), ("NIHII-PHARMACY", "12345678")],
        Some("KGSS"),
        150,
    );
    let other = etk("other", &[("CBE", "0999999999")], None, 300);
    for r in [&old, &new, &kgss, &other] {
        s.put_etk(r).unwrap();
    }
    // Idempotent re-put.
    s.put_etk(&new).unwrap();

    let all = s.find_etks("CBE", "0123456789", None).unwrap();
    assert_eq!(
        all,
        vec![new.clone(), kgss.clone(), old.clone()],
        "newest first"
    );
    assert_eq!(
        s.find_etks("CBE", "0123456789", Some("KGSS")).unwrap(),
        vec![kgss.clone()]
    );
    assert!(s
        .find_etks("CBE", "0123456789", Some("OTHER"))
        .unwrap()
        .is_empty());
    assert_eq!(
        s.find_etks("NIHII-PHARMACY", "12345678", None).unwrap(),
        vec![kgss.clone()]
    );
    assert!(s.find_etks("SSIN", "0123456789", None).unwrap().is_empty());
    assert!(s.find_etks("CBE", "123456789", None).unwrap().is_empty());

    let removed = s.remove_etk(&kgss.digest).unwrap().expect("it was there");
    assert_eq!(removed.identifiers, kgss.identifiers);
    assert_eq!(removed.etk, kgss.etk);
    assert!(s.remove_etk(&kgss.digest).unwrap().is_none());
    assert!(s
        .find_etks("NIHII-PHARMACY", "12345678", None)
        .unwrap()
        .is_empty());
    assert_eq!(
        s.find_etks("CBE", "0123456789", None).unwrap(),
        vec![new.clone(), old]
    );
    // Removed, then registered again.
    s.put_etk(&kgss).unwrap();
    assert_eq!(
        s.find_etks("CBE", "0123456789", Some("KGSS")).unwrap(),
        vec![kgss]
    );
}

/// An empty application id asks for the ETKs *without* an application id (PostgreSQL:
/// `application_id IS NULL`); an absent one for all of them.
pub fn etks_without_application_id(h: &impl Harness) {
    let s = h.open();
    let default = etk("default", &[("CBE", "0406798006")], None, 100);
    let renewed = etk("default-renewed", &[("CBE", "0406798006")], None, 200);
    let app_a = etk("app-a", &[("CBE", "0406798006")], Some("APP-A"), 150);
    let app_b = etk(
        "app-b",
        &[("CBE", "0406798006"), ("EHP", "1990001916")],
        Some("APP-B"),
        300,
    );
    let other = etk("other", &[("CBE", "0999999999")], None, 400);
    for r in [&default, &renewed, &app_a, &app_b, &other] {
        s.put_etk(r).unwrap();
    }
    assert_eq!(
        s.find_etks("CBE", "0406798006", None).unwrap(),
        vec![
            app_b.clone(),
            renewed.clone(),
            app_a.clone(),
            default.clone()
        ]
    );
    assert_eq!(
        s.find_etks("CBE", "0406798006", Some("")).unwrap(),
        vec![renewed, default],
        "only the ETKs without application id, newest first"
    );
    assert_eq!(
        s.find_etks("CBE", "0406798006", Some("APP-A")).unwrap(),
        vec![app_a]
    );
    // A holder with application ids only has no ETK without one.
    assert!(s
        .find_etks("EHP", "1990001916", Some(""))
        .unwrap()
        .is_empty());
    assert_eq!(s.find_etks("EHP", "1990001916", None).unwrap(), vec![app_b]);
    assert!(s
        .find_etks("CBE", "0123456789", Some(""))
        .unwrap()
        .is_empty());
}

pub fn kgss_keys(h: &impl Harness) {
    let s = h.open();
    let key = kgss_key(1);
    assert_eq!(s.get_kgss_key(&key.id).unwrap(), None);
    s.insert_kgss_key(&key).unwrap();
    assert_eq!(s.get_kgss_key(&key.id).unwrap(), Some(key.clone()));

    let mut other = kgss_key(1);
    other.wrapped_key = vec![1; 40];
    assert!(matches!(
        s.insert_kgss_key(&other),
        Err(Error::AlreadyExists)
    ));
    assert_eq!(
        s.get_kgss_key(&key.id).unwrap(),
        Some(key.clone()),
        "unchanged"
    );

    let mut minimal = kgss_key(2);
    minimal.allowed_readers.clear();
    minimal.deletion_strategy = None;
    s.insert_kgss_key(&minimal).unwrap();
    assert_eq!(s.get_kgss_key(&minimal.id).unwrap(), Some(minimal.clone()));

    assert!(s.delete_kgss_key(&key.id).unwrap());
    assert_eq!(s.get_kgss_key(&key.id).unwrap(), None);
    assert!(!s.delete_kgss_key(&key.id).unwrap());
    assert_eq!(s.get_kgss_key(&minimal.id).unwrap(), Some(minimal));
    // The id is free again after deletion.
    s.insert_kgss_key(&key).unwrap();

    let debug = format!("{key:?}");
    assert!(debug.contains("<40 bytes>"), "{debug}");
    assert!(
        !debug.to_lowercase().contains("a5"),
        "wrapped key leaked: {debug}"
    );
}

/// The administrators' listing: every stored key once, in id order, page after page.
pub fn kgss_listing(h: &impl Harness) {
    let s = h.open();
    assert!(s.kgss_keys(None, 10).unwrap().is_empty(), "an empty store");
    // Ids whose byte order differs from their insertion order, and two at the ends.
    let ns: [u128; 6] = [7, u128::MAX, 3, 1 << 120, 0, 42];
    for n in ns {
        s.insert_kgss_key(&kgss_key(n)).unwrap();
    }
    let mut sorted = ns.to_vec();
    sorted.sort_unstable();
    let ids = |page: &[KgssKey]| -> Vec<u128> {
        page.iter().map(|k| u128::from_be_bytes(k.id)).collect()
    };
    assert_eq!(ids(&s.kgss_keys(None, 100).unwrap()), sorted);
    assert_eq!(
        s.kgss_keys(None, 100).unwrap()[0],
        kgss_key(0),
        "whole records"
    );
    assert!(s.kgss_keys(None, 0).unwrap().is_empty());

    // Paging: `after` is excluded, and pages of 4 then 2 then none.
    let first = s.kgss_keys(None, 4).unwrap();
    assert_eq!(ids(&first), sorted[..4]);
    let second = s.kgss_keys(Some(&first[3].id), 4).unwrap();
    assert_eq!(ids(&second), sorted[4..]);
    assert!(s.kgss_keys(Some(&second[1].id), 4).unwrap().is_empty());
    // An `after` that is not a stored id works as a bound all the same.
    assert_eq!(
        ids(&s.kgss_keys(Some(&8u128.to_be_bytes()), 10).unwrap()),
        sorted[3..]
    );

    // A deleted key is no longer listed.
    assert!(s.delete_kgss_key(&kgss_key(42).id).unwrap());
    let left: Vec<u128> = sorted.iter().copied().filter(|&n| n != 42).collect();
    assert_eq!(ids(&s.kgss_keys(None, 100).unwrap()), left);

    // A damaged row is an error, not a silent gap.
    drop(s);
    h.corrupt_kgss_key(&kgss_key(3).id);
    let s = h.open();
    match s.kgss_keys(None, 100) {
        Err(Error::Corrupt(_)) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        ids(&s.kgss_keys(Some(&kgss_key(3).id), 100).unwrap()),
        left[2..]
    );
}

pub fn public_keys(h: &impl Harness) {
    let s = h.open();
    let a = public_key(b"key-a", ("SSIN", "85073003328", None));
    let mut b = public_key(b"key-b", ("SSIN", "85073003328", Some("KGSS")));
    b.attestation = Some(vec![9; 70]);
    let c = public_key(b"key-c", ("SSIN", "99999999999", None));
    for r in [&b, &a, &c] {
        s.insert_public_key(r).unwrap();
    }
    assert!(matches!(
        s.insert_public_key(&public_key(b"key-a", ("CBE", "1", None))),
        Err(Error::AlreadyExists)
    ));
    assert!(matches!(
        s.insert_public_key(&public_key(b"", ("CBE", "1", None))),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.insert_public_key(&public_key(&[7; 65], ("CBE", "1", None))),
        Err(Error::Invalid(_))
    ));
    s.insert_public_key(&public_key(&[7; 64], ("CBE", "1", None)))
        .unwrap();

    assert_eq!(s.get_public_key(b"key-b").unwrap(), Some(b.clone()));
    assert_eq!(s.get_public_key(b"nope").unwrap(), None);
    assert_eq!(
        s.list_public_keys("SSIN", "85073003328", None).unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        s.list_public_keys("SSIN", "85073003328", Some("KGSS"))
            .unwrap(),
        vec![b.clone()]
    );
    assert!(s
        .list_public_keys("CBE", "85073003328", None)
        .unwrap()
        .is_empty());

    let update = BTreeMap::from([
        ("name".to_string(), "phone".to_string()),
        ("os".to_string(), "android".to_string()),
    ]);
    assert!(s
        .update_public_key_info(b"key-a", &a.info, &update)
        .unwrap());
    assert!(!s
        .update_public_key_info(b"nope", &BTreeMap::new(), &update)
        .unwrap());
    // Conditional: information that is no longer what the caller read stays as it is.
    let x = BTreeMap::from([("x".to_string(), "1".to_string())]);
    assert!(matches!(
        s.update_public_key_info(b"key-a", &a.info, &x),
        Err(Error::Conflict)
    ));
    assert_eq!(s.get_public_key(b"key-a").unwrap().unwrap().info, update);
    let mut with_x = update.clone();
    with_x.extend(x);
    assert!(s
        .update_public_key_info(b"key-a", &update, &with_x)
        .unwrap());
    let got = s.get_public_key(b"key-a").unwrap().unwrap();
    assert_eq!(
        got.info,
        BTreeMap::from([
            ("name".to_string(), "phone".to_string()),
            ("os".to_string(), "android".to_string()),
            ("x".to_string(), "1".to_string()),
        ])
    );
    assert_eq!(got.spki_der, a.spki_der);

    assert!(s.delete_public_key(b"key-a").unwrap());
    assert!(!s.delete_public_key(b"key-a").unwrap());
    assert_eq!(s.get_public_key(b"key-a").unwrap(), None);
    assert_eq!(
        s.list_public_keys("SSIN", "85073003328", None).unwrap(),
        vec![b.clone()]
    );
    // A deleted key's id is retired: not given out again, to its holder or anybody else
    // (a sender holding the old id must never reach another key under it).
    assert!(matches!(s.insert_public_key(&a), Err(Error::AlreadyExists)));
    let mut someone_else = b.clone();
    someone_else.key_id = b"key-a".to_vec();
    assert!(matches!(
        s.insert_public_key(&someone_else),
        Err(Error::AlreadyExists)
    ));
    let mut fresh = a.clone();
    fresh.key_id = b"key-a2".to_vec();
    s.insert_public_key(&fresh).unwrap();
}

pub fn attributes(h: &impl Harness) {
    let s = h.open();
    assert!(s.list_attribute_holders().unwrap().is_empty());
    let ns = "urn:etee:attributes";
    assert!(s
        .set_attribute("NIHII-PHARMACY", "12345678", &attr(ns, "recognised", "yes"))
        .unwrap());
    // The same value again changes nothing, and says so.
    assert!(!s
        .set_attribute("NIHII-PHARMACY", "12345678", &attr(ns, "recognised", "yes"))
        .unwrap());
    s.set_attribute("NIHII-PHARMACY", "12345678", &attr(ns, "chain", "A"))
        .unwrap();
    assert!(s
        .set_attribute("NIHII-PHARMACY", "12345678", &attr(ns, "recognised", "no"))
        .unwrap());
    s.set_attribute("CBE", "0123456789", &attr("b", "x", "1"))
        .unwrap();
    s.set_attribute("CBE", "0123456789", &attr("a", "y", "2"))
        .unwrap();
    // A holder whose value extends another's must not leak into it.
    s.set_attribute("CBE", "01234567890", &attr("a", "z", "3"))
        .unwrap();

    assert_eq!(
        s.attributes("NIHII-PHARMACY", "12345678").unwrap(),
        vec![attr(ns, "chain", "A"), attr(ns, "recognised", "no")]
    );
    assert_eq!(
        s.attributes("CBE", "0123456789").unwrap(),
        vec![attr("a", "y", "2"), attr("b", "x", "1")]
    );
    assert!(s.attributes("CBE", "1").unwrap().is_empty());
    assert_eq!(
        s.list_attribute_holders().unwrap(),
        vec![
            (
                "CBE".to_string(),
                "0123456789".to_string(),
                vec![attr("a", "y", "2"), attr("b", "x", "1")]
            ),
            (
                "CBE".to_string(),
                "01234567890".to_string(),
                vec![attr("a", "z", "3")]
            ),
            (
                "NIHII-PHARMACY".to_string(),
                "12345678".to_string(),
                vec![attr(ns, "chain", "A"), attr(ns, "recognised", "no")]
            ),
        ]
    );
    assert!(s
        .remove_attribute("NIHII-PHARMACY", "12345678", ns, "chain")
        .unwrap());
    assert!(!s
        .remove_attribute("NIHII-PHARMACY", "12345678", ns, "chain")
        .unwrap());
    assert!(!s.remove_attribute("CBE", "0123456789", "a", "z").unwrap());
    assert_eq!(
        s.attributes("NIHII-PHARMACY", "12345678").unwrap(),
        vec![attr(ns, "recognised", "no")]
    );
}

pub fn replay(h: &impl Harness) {
    let s = h.open();
    let d1 = [1u8; 32];
    let d2 = [2u8; 32];
    let d3 = [3u8; 32];
    assert!(!s.request_seen(&d1, 1000).unwrap(), "not yet");
    assert!(s.remember_request(&d1, 1100, 1000).unwrap(), "fresh");
    assert!(s.request_seen(&d1, 1099).unwrap(), "remembered");
    assert!(!s.request_seen(&d1, 1100).unwrap(), "expired at its expiry");
    assert!(!s.request_seen(&d2, 1000).unwrap(), "another digest");
    assert!(!s.remember_request(&d1, 1200, 1050).unwrap(), "replay");
    assert!(!s.remember_request(&d1, 1200, 1099).unwrap(), "replay");
    assert!(
        s.remember_request(&d1, 1300, 1100).unwrap(),
        "expired, so fresh"
    );
    assert!(
        !s.remember_request(&d1, 1400, 1299).unwrap(),
        "new expiry holds"
    );
    assert!(s.remember_request(&d2, 1150, 1000).unwrap());
    assert!(s.remember_request(&d3, 2000, 1000).unwrap());

    assert_eq!(s.purge_expired(1000).unwrap(), 0);
    assert_eq!(s.purge_expired(1200).unwrap(), 1, "d2 only");
    assert_eq!(s.purge_expired(1200).unwrap(), 0);
    assert!(!s.remember_request(&d1, 1400, 1200).unwrap());
    assert!(!s.remember_request(&d3, 2100, 1999).unwrap());
    assert_eq!(s.purge_expired(5000).unwrap(), 2);
    assert!(s.remember_request(&d3, 6000, 5000).unwrap());
    assert!(s.remember_request(&d2, 6000, 5000).unwrap());
}

pub fn persistence(h: &impl Harness) {
    let s = h.open();
    let record = etk("persist", &[("SSIN", "85073003328")], None, 5);
    s.put_etk(&record).unwrap();
    s.insert_kgss_key(&kgss_key(7)).unwrap();
    let pk = public_key(b"persist", ("SSIN", "85073003328", None));
    s.insert_public_key(&pk).unwrap();
    s.set_attribute("SSIN", "85073003328", &attr("n", "a", "v"))
        .unwrap();
    assert!(s.remember_request(&[7; 32], 100, 10).unwrap());
    drop(s);

    let s = h.open();
    assert_eq!(
        s.find_etks("SSIN", "85073003328", None).unwrap(),
        vec![record]
    );
    assert_eq!(s.get_kgss_key(&kgss_key(7).id).unwrap(), Some(kgss_key(7)));
    assert_eq!(s.get_public_key(b"persist").unwrap(), Some(pk));
    assert_eq!(
        s.attributes("SSIN", "85073003328").unwrap(),
        vec![attr("n", "a", "v")]
    );
    assert!(!s.remember_request(&[7; 32], 100, 20).unwrap());
}

pub fn schema_too_new(h: &impl Harness) {
    drop(h.open());
    h.set_schema_version(SCHEMA_VERSION + 1);
    let err = etee_store::open(&h.location()).err().expect("must refuse");
    match err {
        Error::SchemaTooNew { found, supported } => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION))
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // Still refused: opening did not touch the record.
    assert!(matches!(
        etee_store::open(&h.location()),
        Err(Error::SchemaTooNew { .. })
    ));
    h.set_schema_version(SCHEMA_VERSION);
    drop(h.open());
}

pub fn corrupt_row(h: &impl Harness) {
    let s = h.open();
    s.insert_kgss_key(&kgss_key(5)).unwrap();
    s.insert_kgss_key(&kgss_key(6)).unwrap();
    drop(s);
    h.corrupt_kgss_key(&kgss_key(5).id);
    let s = h.open();
    match s.get_kgss_key(&kgss_key(5).id) {
        Err(Error::Corrupt(_)) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(s.get_kgss_key(&kgss_key(6).id).unwrap(), Some(kgss_key(6)));
    assert!(
        s.delete_kgss_key(&kgss_key(5).id).unwrap(),
        "can be cleared"
    );
}

/// Runs `job(store, thread, barrier)` on `threads` threads at once, alternating between
/// `first` and a second handle (another one when the backend allows it, as two platform
/// instances would be; else `first` again); their results, in thread order.
fn race<T: Send + 'static>(
    h: &impl Harness,
    first: &Arc<dyn Store>,
    threads: usize,
    job: impl Fn(Arc<dyn Store>, usize, Arc<Barrier>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let second = if h.shared() { h.open() } else { first.clone() };
    let barrier = Arc::new(Barrier::new(threads));
    let job = Arc::new(job);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let s = if t % 2 == 0 { first } else { &second }.clone();
            let (barrier, job) = (barrier.clone(), job.clone());
            std::thread::spawn(move || job(s, t, barrier))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Several threads (on two handles when the backend allows it, as two platform instances would
/// be) race on the same request digests and insert keys concurrently.
pub fn concurrency(h: &impl Harness) {
    const THREADS: usize = 8;
    const ROUNDS: u8 = 10;
    let first = h.open();
    let results = race(h, &first, THREADS, |s, t, barrier| {
        let mut wins = Vec::new();
        for round in 0..ROUNDS {
            barrier.wait();
            if s.remember_request(&[round; 32], 100, 0).unwrap() {
                wins.push(round);
            }
            let key = kgss_key(1000 + (t as u128) * 100 + round as u128);
            s.insert_kgss_key(&key).unwrap();
        }
        // Same id from every thread: exactly one insert succeeds.
        barrier.wait();
        let won_key = s.insert_kgss_key(&kgss_key(99)).is_ok();
        (wins, won_key)
    });
    let mut wins = vec![0; ROUNDS as usize];
    let mut key_winners = 0;
    for (won, won_key) in results {
        for round in won {
            wins[round as usize] += 1;
        }
        key_winners += won_key as usize;
    }
    assert_eq!(
        wins,
        vec![1; ROUNDS as usize],
        "exactly one fresh per digest"
    );
    assert_eq!(key_winners, 1);
    for t in 0..THREADS {
        for round in 0..ROUNDS {
            let id = kgss_key(1000 + (t as u128) * 100 + round as u128).id;
            assert!(first.get_kgss_key(&id).unwrap().is_some());
        }
    }
}

/// `InsertPublicKeyWithin` counts the holder's keys (type and value, any application id)
/// in the registration's transaction: at the limit it refuses with `TooManyKeys` and
/// records no event; a deletion makes room; racing registrations stop at the limit.
pub fn keys_per_holder(h: &impl Harness) {
    const LIMIT: usize = 3;
    let s = h.open();
    let value = format!("{:011}", unique() % 100_000_000_000);
    let other = format!("{:011}", (unique() + 1) % 100_000_000_000);
    let n = unique();
    let id = |i: usize| format!("cap-{n}-{i}").into_bytes();
    let within = |record: &PublicKeyRecord| -> Result<Option<u64>, Error> {
        s.apply_with_event(
            Change::InsertPublicKeyWithin {
                record,
                max_per_holder: LIMIT,
            },
            &audit_event(0, "registered"),
        )
    };
    let events_before = s.events(0, 10_000).unwrap().len();
    for i in 0..LIMIT {
        let app = (i == 1).then_some("APP");
        within(&public_key(&id(i), ("SSIN", &value, app))).unwrap();
    }
    let over = public_key(&id(LIMIT), ("SSIN", &value, Some("OTHER")));
    assert!(
        matches!(within(&over), Err(Error::TooManyKeys { limit: LIMIT })),
        "a fourth key of the holder"
    );
    assert_eq!(
        s.events(0, 10_000).unwrap().len(),
        events_before + LIMIT,
        "no event for the refused one"
    );
    assert_eq!(s.get_public_key(&id(LIMIT)).unwrap(), None);
    // Another holder has its own count; the insertion without a limit has none.
    within(&public_key(&id(10), ("SSIN", &other, None))).unwrap();
    s.insert_public_key(&public_key(&id(11), ("SSIN", &value, None)))
        .unwrap();
    assert!(s.delete_public_key(&id(11)).unwrap());
    // A deletion makes room.
    assert!(s.delete_public_key(&id(0)).unwrap());
    within(&over).unwrap();
    assert_eq!(
        s.list_public_keys("SSIN", &value, None).unwrap().len(),
        LIMIT
    );

    // Racing registrations of a new holder, on two handles when the backend allows it.
    const THREADS: usize = 8;
    let racer = format!("{:011}", (unique() + 2) % 100_000_000_000);
    let holder = racer.clone();
    let stored = race(h, &s, THREADS, move |s, t, barrier| {
        let key_id = format!("race-{n}-{t}").into_bytes();
        let record = public_key(&key_id, ("SSIN", &holder, None));
        barrier.wait();
        let change = Change::InsertPublicKeyWithin {
            record: &record,
            max_per_holder: LIMIT,
        };
        match s.apply_with_event(change, &audit_event(t as u32, "registered")) {
            Ok(stored) => stored.is_some(),
            Err(Error::TooManyKeys { limit: LIMIT }) => false,
            Err(e) => panic!("{e}"),
        }
    })
    .into_iter()
    .filter(|stored| *stored)
    .count();
    assert_eq!(stored, LIMIT);
    assert_eq!(
        s.list_public_keys("SSIN", &racer, None).unwrap().len(),
        LIMIT
    );
}

pub fn audit_event(n: u32, outcome: &str) -> AuditEvent {
    AuditEvent {
        at: 1_700_000_000 + i64::from(n),
        action: "kgss.read".into(),
        actor: "NIHII-PHARMACY=27150201".into(),
        subject: format!("{n:032x}"),
        outcome: outcome.into(),
        detail: n
            .is_multiple_of(2)
            .then(|| "reader conditions: recognised pharmacy".into()),
    }
}

pub fn audit_chain(h: &impl Harness) {
    let s = h.open();
    assert_eq!(s.events(0, 10).unwrap(), vec![]);
    for n in 1..=5 {
        assert_eq!(
            s.append_event(&audit_event(n, "granted")).unwrap(),
            u64::from(n)
        );
    }
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[2].event, audit_event(3, "granted"));
    let (last, head) = audit::verify(0, audit::GENESIS, &all).unwrap();
    assert_eq!((last, head), (5, all[4].hash));
    // Pages continue the chain.
    let page = s.events(2, 2).unwrap();
    assert_eq!(
        page.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![3, 4]
    );
    audit::verify(2, all[1].hash, &page).unwrap();
    // It survives a reopen and goes on from the head.
    drop(s);
    let s = h.open();
    assert_eq!(s.append_event(&audit_event(6, "denied")).unwrap(), 6);
    audit::verify(0, audit::GENESIS, &s.events(0, 100).unwrap()).unwrap();
}

pub fn concurrent_audit_appends(h: &impl Harness) {
    const THREADS: u32 = 6;
    const EACH: u32 = 10;
    let first = h.open();
    let second = if h.shared() { h.open() } else { first.clone() };
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = if t % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..EACH)
                    .map(|i| {
                        s.append_event(&audit_event(t * 100 + i, "granted"))
                            .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut sequences: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    sequences.sort_unstable();
    let n = u64::from(THREADS * EACH);
    assert_eq!(sequences, (1..=n).collect::<Vec<_>>(), "gaps or duplicates");
    let all = first.events(0, 1000).unwrap();
    assert_eq!(audit::verify(0, audit::GENESIS, &all).unwrap().0, n);
}

/// The replay check and an audit event in one transaction: both written, or (a replay)
/// neither.
/// A change and its event go together: both, or (nothing to act on, a taken id) neither.
pub fn apply_with_event(h: &impl Harness) {
    let s = h.open();
    let key = kgss_key(7);
    assert_eq!(
        s.apply_with_event(Change::InsertKgssKey(&key), &audit_event(0, "created"))
            .unwrap(),
        Some(1)
    );
    assert!(matches!(
        s.apply_with_event(Change::InsertKgssKey(&key), &audit_event(0, "created")),
        Err(Error::AlreadyExists)
    ));
    let pk = public_key(b"key-d", ("SSIN", "85073003328", None));
    s.insert_public_key(&pk).unwrap();
    assert_eq!(
        s.apply_with_event(Change::DeleteKgssKey(&key.id), &audit_event(1, "deleted"))
            .unwrap(),
        Some(2)
    );
    assert_eq!(s.get_kgss_key(&key.id).unwrap(), None);
    assert_eq!(
        s.apply_with_event(
            Change::DeletePublicKey(b"key-d"),
            &audit_event(2, "deleted")
        )
        .unwrap(),
        Some(3)
    );
    assert_eq!(s.get_public_key(b"key-d").unwrap(), None);
    // The public key's id is retired with it.
    assert!(matches!(
        s.insert_public_key(&pk),
        Err(Error::AlreadyExists)
    ));
    // Nothing (left) to delete: no event.
    assert_eq!(
        s.apply_with_event(Change::DeleteKgssKey(&key.id), &audit_event(3, "deleted"))
            .unwrap(),
        None
    );
    assert_eq!(
        s.apply_with_event(
            Change::DeletePublicKey(b"never"),
            &audit_event(3, "deleted")
        )
        .unwrap(),
        None
    );
    // Insertion and update with their events; a taken id is refused with no event.
    let fresh = public_key(b"key-e", ("SSIN", "85073003328", None));
    assert_eq!(
        s.apply_with_event(
            Change::InsertPublicKey(&fresh),
            &audit_event(3, "registered")
        )
        .unwrap(),
        Some(4)
    );
    assert!(matches!(
        s.apply_with_event(
            Change::InsertPublicKey(&fresh),
            &audit_event(4, "registered")
        ),
        Err(Error::AlreadyExists)
    ));
    let info = BTreeMap::from([("label".to_string(), "x".to_string())]);
    let update = |key_id: &'static [u8]| Change::UpdatePublicKeyInfo {
        key_id,
        expected: &fresh.info,
        info: &info,
    };
    assert_eq!(
        s.apply_with_event(update(b"key-e"), &audit_event(4, "updated"))
            .unwrap(),
        Some(5)
    );
    assert_eq!(
        s.get_public_key(b"key-e")
            .unwrap()
            .unwrap()
            .info
            .get("label"),
        Some(&"x".to_string())
    );
    assert_eq!(
        s.apply_with_event(update(b"never"), &audit_event(5, "updated"))
            .unwrap(),
        None
    );
    // The information is no longer what it was: the same change conflicts, and its event is not
    // appended either.
    assert!(matches!(
        s.apply_with_event(update(b"key-e"), &audit_event(5, "updated")),
        Err(Error::Conflict)
    ));
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 5);
    audit::verify(0, audit::GENESIS, &all).unwrap();
}

pub fn remember_with_event(h: &impl Harness) {
    let s = h.open();
    let d = [4u8; 32];
    assert_eq!(s.append_event(&audit_event(1, "granted")).unwrap(), 1);
    let fresh = |s: &dyn Store, expires_at, now, n| {
        s.remember_request_with_event(&d, expires_at, now, &audit_event(n, "granted"))
            .unwrap()
    };
    assert_eq!(
        fresh(&*s, 1100, 1000, 2),
        Some(2),
        "fresh: remembered, event 2"
    );
    assert_eq!(fresh(&*s, 1200, 1050, 3), None, "replay");
    assert_eq!(fresh(&*s, 1200, 1099, 3), None, "replay");
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 2, "a replay appends nothing");
    assert_eq!(all[1].event, audit_event(2, "granted"));
    audit::verify(0, audit::GENESIS, &all).unwrap();
    // The same replay table as remember_request, both ways.
    assert!(!s.remember_request(&d, 1200, 1099).unwrap());
    assert!(s.remember_request(&[5; 32], 1100, 1000).unwrap());
    assert_eq!(
        s.remember_request_with_event(&[5; 32], 1100, 1000, &audit_event(3, "denied"))
            .unwrap(),
        None
    );
    // Expired at `now` (expires_at <= now): fresh again, and the new expiry holds.
    assert_eq!(fresh(&*s, 1300, 1100, 3), Some(3), "expired, so fresh");
    assert_eq!(fresh(&*s, 1400, 1299, 4), None, "new expiry holds");
    assert!(!s.remember_request(&d, 1400, 1299).unwrap());
    // A purged entry is fresh.
    assert_eq!(s.purge_expired(1300).unwrap(), 2);
    assert_eq!(fresh(&*s, 1400, 1300, 4), Some(4));
    // Durable, and the chain goes on from the head.
    drop(s);
    let s = h.open();
    assert_eq!(fresh(&*s, 1500, 1399, 5), None);
    assert_eq!(s.append_event(&audit_event(5, "granted")).unwrap(), 5);
    let all = s.events(0, 100).unwrap();
    assert_eq!(audit::verify(0, audit::GENESIS, &all).unwrap().0, 5);
    assert_eq!(all[3].event, audit_event(4, "granted"));
}

/// A KGSS release is recorded only while its key is stored: once a deletion committed,
/// `remember_key_read` writes nothing (neither the digest nor the event).
pub fn remember_key_read(h: &impl Harness) {
    let s = h.open();
    let key = kgss_key(7);
    s.insert_kgss_key(&key).unwrap();
    let read = |s: &dyn Store, id: &[u8; 16], d: u8, n| {
        s.remember_key_read(id, &[d; 32], 1100, 1000, &audit_event(n, "granted"), &[])
            .unwrap()
    };
    assert_eq!(read(&*s, &key.id, 1, 1), KeyRead::Recorded(1));
    assert_eq!(read(&*s, &key.id, 1, 2), KeyRead::Replay);
    assert_eq!(read(&*s, &[9; 16], 2, 2), KeyRead::KeyGone, "never stored");
    assert_eq!(
        s.apply_with_event(Change::DeleteKgssKey(&key.id), &audit_event(2, "deleted"))
            .unwrap(),
        Some(2)
    );
    assert_eq!(read(&*s, &key.id, 3, 3), KeyRead::KeyGone, "deleted");
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 2, "nothing recorded for a deleted key");
    assert_eq!(all[1].event, audit_event(2, "deleted"));
    assert!(
        s.remember_request(&[3; 32], 1100, 1000).unwrap(),
        "nor its digest remembered"
    );
}

/// A KGSS decision is recorded only while the attribute registry holds what it read:
/// after a change (made with its event, as the admin commands do) `remember_key_read`
/// says so and writes nothing; a holder with no attributes counts too (one added since).
pub fn remember_key_read_with_registry(h: &impl Harness) {
    let s = h.open();
    let key = kgss_key(8);
    s.insert_kgss_key(&key).unwrap();
    let pharmacy = Attribute {
        namespace: "urn:be:fgov:certified-namespace:ehealth".into(),
        name: "urn:be:fgov:ehealth:1.0:pharmacy:nihii-number:recognisedpharmacy:boolean".into(),
        value: "true".into(),
    };
    let set = Change::SetAttribute {
        id_type: "NIHII-PHARMACY",
        value: "12345678",
        attribute: &pharmacy,
    };
    assert_eq!(
        s.apply_with_event(set, &audit_event(1, "set")).unwrap(),
        Some(1)
    );
    assert_eq!(
        s.apply_with_event(set, &audit_event(2, "set")).unwrap(),
        None,
        "set again: nothing changed, no event"
    );
    let seen = |attributes: Vec<Attribute>| RegistryRead {
        id_type: "NIHII-PHARMACY".into(),
        value: "12345678".into(),
        attributes,
    };
    let other = RegistryRead {
        id_type: "SSIN".into(),
        value: "70010112345".into(),
        attributes: vec![],
    };
    let read = |d: u8, n, registry: &[RegistryRead]| {
        s.remember_key_read(
            &key.id,
            &[d; 32],
            1100,
            1000,
            &audit_event(n, "granted"),
            registry,
        )
        .unwrap()
    };
    let as_read = [seen(vec![pharmacy.clone()]), other.clone()];
    assert_eq!(read(1, 2, &as_read), KeyRead::Recorded(2));
    assert_eq!(
        read(2, 3, &[seen(vec![])]),
        KeyRead::RegistryChanged,
        "read before the attribute was set"
    );
    let remove = Change::RemoveAttribute {
        id_type: "NIHII-PHARMACY",
        value: "12345678",
        namespace: &pharmacy.namespace,
        name: &pharmacy.name,
    };
    assert_eq!(
        s.apply_with_event(remove, &audit_event(3, "removed"))
            .unwrap(),
        Some(3)
    );
    assert_eq!(
        s.apply_with_event(remove, &audit_event(4, "removed"))
            .unwrap(),
        None
    );
    assert_eq!(
        read(3, 4, &as_read),
        KeyRead::RegistryChanged,
        "removed since"
    );
    assert_eq!(read(3, 4, &[seen(vec![]), other]), KeyRead::Recorded(4));
    let all = s.events(0, 100).unwrap();
    let outcomes: Vec<&str> = all.iter().map(|e| e.event.outcome.as_str()).collect();
    assert_eq!(outcomes, ["set", "granted", "removed", "granted"]);
    assert!(
        s.remember_request(&[2; 32], 1100, 1000).unwrap(),
        "a refused record leaves its digest unremembered"
    );
    assert!(s
        .attributes("NIHII-PHARMACY", "12345678")
        .unwrap()
        .is_empty());
}

/// A change made once per request: the digest, the change and the event are written
/// together; a replay writes none of them, nor does a change that fails (its digest is
/// not remembered, so the request is no replay when it comes again).
pub fn remember_request_with_change(h: &impl Harness) {
    let s = h.open();
    let key = kgss_key(31);
    let insert = Change::InsertKgssKey(&key);
    let write = |d: u8, n, change| {
        s.remember_request_with_change(&[d; 32], 1100, 1000, change, &audit_event(n, "created"))
    };
    assert_eq!(write(1, 1, insert).unwrap(), Some(1));
    assert!(s.get_kgss_key(&key.id).unwrap().is_some());
    let other = kgss_key(32);
    assert_eq!(
        write(1, 2, Change::InsertKgssKey(&other)).unwrap(),
        None,
        "a replay"
    );
    assert!(
        s.get_kgss_key(&other.id).unwrap().is_none(),
        "nothing of a replay"
    );
    assert!(matches!(write(2, 2, insert), Err(Error::AlreadyExists)));
    assert!(
        s.remember_request(&[2; 32], 1100, 1000).unwrap(),
        "the failed request's digest is not remembered"
    );
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].event, audit_event(1, "created"));

    // Copies of one request at once (on two handles when allowed), each with a key id of
    // its own: one is served, one key stored, one event.
    let second = if h.shared() { h.open() } else { s.clone() };
    let barrier = Arc::new(Barrier::new(4));
    let racers: Vec<_> = (0..4u128)
        .map(|n| {
            let s = if n % 2 == 0 {
                s.clone()
            } else {
                second.clone()
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let key = kgss_key(100 + n);
                barrier.wait();
                let won = s
                    .remember_request_with_change(
                        &[7; 32],
                        1100,
                        1000,
                        Change::InsertKgssKey(&key),
                        &audit_event(10 + n as u32, "created"),
                    )
                    .unwrap();
                won.map(|_| key.id)
            })
        })
        .collect();
    let won: Vec<[u8; 16]> = racers
        .into_iter()
        .filter_map(|r| r.join().unwrap())
        .collect();
    assert_eq!(won.len(), 1, "one copy served");
    let stored = (0..4u128)
        .filter(|n| s.get_kgss_key(&kgss_key(100 + n).id).unwrap().is_some())
        .count();
    assert_eq!(stored, 1);
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 2);
    audit::verify(0, audit::GENESIS, &all).unwrap();
}

/// An ETK stored and removed together with its audit event, as the admin commands do:
/// nothing to act on (stored already, not stored) adds no event; the removal's event is
/// made from the record removed.
pub fn etk_changes_with_events(h: &impl Harness) {
    let s = h.open();
    let record = etk("etk of 21", &[("SSIN", "70010112345")], None, 1_700_000_000);
    let put = Change::PutEtk(&record);
    assert_eq!(
        s.apply_with_event(put, &audit_event(1, "put")).unwrap(),
        Some(1)
    );
    assert_eq!(
        s.apply_with_event(put, &audit_event(2, "put")).unwrap(),
        None
    );
    assert_eq!(
        s.find_etks("SSIN", "70010112345", None).unwrap(),
        vec![record.clone()]
    );
    let removal = |r: &EtkRecord| AuditEvent {
        subject: format!("{} identifiers", r.identifiers.len()),
        ..audit_event(2, "removed")
    };
    let (removed, sequence) = s
        .remove_etk_with_event(&record.digest, &removal)
        .unwrap()
        .expect("stored");
    assert_eq!((removed, sequence), (record.clone(), 2));
    assert!(s.find_etks("SSIN", "70010112345", None).unwrap().is_empty());
    assert_eq!(
        s.remove_etk_with_event(&record.digest, &removal).unwrap(),
        None
    );
    let all = s.events(0, 100).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].event.subject, "1 identifiers");
    audit::verify(0, audit::GENESIS, &all).unwrap();
}

/// Threads (on two handles when allowed) race on the same digests with
/// `remember_request_with_event` while also appending plain events: one winner per digest,
/// one event per win, and an unbroken chain.
pub fn concurrent_remember_with_event(h: &impl Harness) {
    const THREADS: u32 = 6;
    const ROUNDS: u8 = 8;
    let first = h.open();
    let second = if h.shared() { h.open() } else { first.clone() };
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = if t % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut wins = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait();
                    let event = audit_event(t * 100 + u32::from(round), "granted");
                    if let Some(seq) = s
                        .remember_request_with_event(&[round; 32], 100, 0, &event)
                        .unwrap()
                    {
                        wins.push((round, seq));
                    }
                    s.append_event(&audit_event(10_000 + t * 100 + u32::from(round), "denied"))
                        .unwrap();
                }
                wins
            })
        })
        .collect();
    let wins: Vec<(u8, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut rounds: Vec<u8> = wins.iter().map(|w| w.0).collect();
    rounds.sort_unstable();
    assert_eq!(
        rounds,
        (0..ROUNDS).collect::<Vec<_>>(),
        "one winner per digest"
    );
    let all = first.events(0, 1000).unwrap();
    let n = u64::from(ROUNDS) + u64::from(THREADS) * u64::from(ROUNDS);
    assert_eq!(audit::verify(0, audit::GENESIS, &all).unwrap().0, n);
    for (_, seq) in wins {
        assert_eq!(all[seq as usize - 1].event.outcome, "granted");
    }
}

/// `PutEtkExclusive`: an extra number finds one holder's ETKs only. Another holder's ETK
/// under a taken number is refused (`IdentifierTaken`, naming the holder found, nothing
/// stored), the same holder's renewal is not; racing registrations of different holders
/// under one number: exactly one stored.
pub fn etk_one_number_one_holder(h: &impl Harness) {
    let s = h.open();
    let n = unique() % 100_000_000;
    let number = format!("{n:08}001");
    let ssin = |k: u64| Identifier::new("SSIN", &format!("{:011}", n * 10 + k), None);
    let nihii = Identifier::new("NIHII", &number, None);
    let register = |s: &Arc<dyn Store>, body: String, k: u64| {
        let record = etk(
            &body,
            &[("SSIN", &ssin(k).value), ("NIHII", &number)],
            None,
            1_700_000_000,
        );
        s.put_etk_exclusive(&record, std::slice::from_ref(&nihii), &[ssin(k)])
            .map(|()| record)
    };

    let first = register(&s, format!("doctor {n}"), 1).unwrap();
    register(&s, format!("doctor {n}"), 1).unwrap();
    register(&s, format!("doctor {n}, renewed"), 1).unwrap();
    match register(&s, format!("somebody else {n}"), 2) {
        Err(Error::IdentifierTaken(taken)) => {
            assert_eq!(taken.identifier, nihii);
            assert_eq!(taken.by, first.identifiers);
        }
        other => panic!("another holder under a taken number: {other:?}"),
    }
    // The doctor's ETK of an application: the same holder, whatever the application id.
    let with_app = |id: &Identifier| Identifier::new(&id.id_type, &id.value, Some("APP"));
    let app_etk = etk(
        &format!("doctor {n}, application"),
        &[("SSIN", &ssin(1).value), ("NIHII", &number)],
        Some("APP"),
        1_700_000_000,
    );
    s.put_etk_exclusive(&app_etk, &[with_app(&nihii)], &[with_app(&ssin(1))])
        .unwrap();
    let found = s.find_etks("NIHII", &number, None).unwrap();
    assert_eq!(found.len(), 3, "the doctor's three ETKs, no other");
    assert!(found
        .iter()
        .all(|r| r.identifiers.iter().any(|i| i.value == ssin(1).value)));

    // A number some ETK holds as its own (an institution's, no SSIN) is taken as well.
    let institution = format!("{:08}002", n);
    s.put_etk(&etk(
        &format!("institution {n}"),
        &[("NIHII", &institution)],
        None,
        0,
    ))
    .unwrap();
    let doctor = etk(
        &format!("doctor {n} again"),
        &[("SSIN", &ssin(3).value), ("NIHII", &institution)],
        None,
        0,
    );
    let taken = s.put_etk_exclusive(
        &doctor,
        &[Identifier::new("NIHII", &institution, None)],
        &[ssin(3)],
    );
    assert!(matches!(taken, Err(Error::IdentifierTaken(_))), "{taken:?}");
    assert!(s
        .find_etks("SSIN", &ssin(3).value, None)
        .unwrap()
        .is_empty());

    // Different holders at once under a fresh number: one wins.
    const THREADS: usize = 8;
    let contested = format!("{:08}003", n);
    let results = race(h, &s, THREADS, move |s, t, barrier| {
        let holder = Identifier::new("SSIN", &format!("{:011}", n * 100 + t as u64), None);
        let record = etk(
            &format!("contender {n} {t}"),
            &[("SSIN", &holder.value), ("NIHII", &contested)],
            None,
            0,
        );
        barrier.wait();
        s.put_etk_exclusive(
            &record,
            &[Identifier::new("NIHII", &contested, None)],
            &[holder],
        )
    });
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(()) | Err(Error::IdentifierTaken(_)))));
    let contested = format!("{:08}003", n);
    assert_eq!(s.find_etks("NIHII", &contested, None).unwrap().len(), 1);
}

/// One `#[test]` per suite function, for a harness made by `$make` (`None`: skipped).
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@tests $make;
            backend_and_open_helper, etks, etks_without_application_id, kgss_keys, kgss_listing, public_keys, attributes, replay,
            persistence, schema_too_new, corrupt_row, concurrency, audit_chain,
            concurrent_audit_appends, remember_with_event, concurrent_remember_with_event,
            apply_with_event, remember_key_read, remember_key_read_with_registry, etk_changes_with_events, remember_request_with_change, keys_per_holder, etk_one_number_one_holder);
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                if let Some(harness) = $make {
                    common::$name(&harness);
                }
            }
        )*
    };
}
