//! ETKDepot lookups against the platform on loopback, SOAP and REST, and the ETK cache on
//! top of them: found, the MatchingEtk rule (one holder, two application ids), not found,
//! an unknown type; cache hits, expiry at a far-future instant, ETKs failing the checks.

#[path = "../../platform/tests/common/mod.rs"]
mod common;
mod support;

use common::{foreign_institution, Backend, World};
use etee_formats::trust::TrustAnchors;
use etee_protocol::{EtkAnswer, EtkCache, Flavour, ProtocolError};
use etee_services::etkdepot::Identifier;

const BOTH: [Flavour; 2] = [Flavour::Soap, Flavour::Rest];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_in_both_flavours() {
    let w = World::new("protocol-lookups", Backend::Embedded).await;
    for flavour in BOTH {
        let depot = support::depot(&w, flavour);
        // Found.
        let bob = Identifier::new("NIHII-PHARMACY", common::PHARMACY, None);
        assert_eq!(
            depot.get_etk(&bob).await.unwrap(),
            EtkAnswer::Found(w.bob.etk.clone()),
            "{flavour:?}"
        );
        let kgss = depot
            .get_etk(&etee_protocol::kgss_identifier())
            .await
            .unwrap();
        assert_eq!(kgss, EtkAnswer::Found(w.kgss.etk.clone()), "{flavour:?}");

        // One holder with two application ids: the identifiers of both.
        let two = Identifier::new("CBE", "406798006", None);
        match depot.get_etk(&two).await.unwrap() {
            EtkAnswer::Matching(list) => {
                let mut apps: Vec<_> = list
                    .iter()
                    .map(|ids| ids[0].application_id.clone().unwrap())
                    .collect();
                apps.sort();
                assert_eq!(apps, ["APP-A", "APP-B"], "{flavour:?}");
            }
            other => panic!("{flavour:?}: {other:?}"),
        }
        let b = Identifier::new("CBE", "0406798006", Some("APP-B"));
        assert_eq!(
            depot.get_etk(&b).await.unwrap(),
            EtkAnswer::Found(w.app_b.etk.clone())
        );

        // Nobody.
        let nobody = Identifier::new("NIHII-PHARMACY", "99999999", None);
        assert_eq!(depot.get_etk(&nobody).await.unwrap(), EtkAnswer::NotFound);

        // An unknown type is the service's error.
        let unknown = Identifier::new("NOT-A-TYPE", "1", None);
        match (flavour, depot.get_etk(&unknown).await) {
            (Flavour::Soap, Err(ProtocolError::SoapFault { code, .. })) => {
                assert_eq!(code, "SOA-03007")
            }
            (
                Flavour::Rest,
                Err(ProtocolError::Http {
                    status: 400,
                    problem: Some(p),
                }),
            ) => assert_eq!(p.title.as_deref(), Some("Unknown search criteria")),
            (f, other) => panic!("{f:?}: {other:?}"),
        }
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_checks_chooses_and_counts() {
    let w = World::new("protocol-cache", Backend::Embedded).await;
    for flavour in BOTH {
        let cache = support::cache(&w, flavour);
        let bob = Identifier::new("NIHII-PHARMACY", common::PHARMACY, None);
        let first = cache.get(&bob).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].der(), w.bob.etk.as_slice());
        let second = cache.get(&bob).await.unwrap();
        assert_eq!(second[0].der(), first[0].der());
        assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));

        // The MatchingEtk rule: without an application id, both ETKs of the holder, each
        // fetched separately; with one, exactly that one. The value is zero-padded for the
        // cache key, so the unpadded and padded forms are one entry.
        let unpadded = cache
            .get(&Identifier::new("CBE", "406798006", None))
            .await
            .unwrap();
        let both = cache
            .get(&Identifier::new("CBE", "0406798006", None))
            .await
            .unwrap();
        assert_eq!(both.len(), 2, "{flavour:?}");
        assert_eq!(unpadded.len(), 2);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 2, 2));
        let mut apps: Vec<_> = both
            .iter()
            .map(|e| e.identities()[0].application_id.clone().unwrap())
            .collect();
        apps.sort();
        assert_eq!(apps, ["APP-A", "APP-B"]);
        let b = cache
            .get(&Identifier::new("CBE", "0406798006", Some("APP-B")))
            .await
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].der(), w.app_b.etk.as_slice());

        // KGSS's ETK, as the KGSS client needs it.
        let kgss = cache.get(&etee_protocol::kgss_identifier()).await.unwrap();
        assert_eq!(kgss[0].der(), w.kgss.etk.as_slice());

        // Nobody; an unknown type is refused before asking.
        assert!(matches!(
            cache
                .get(&Identifier::new("NIHII-PHARMACY", "99999999", None))
                .await,
            Err(ProtocolError::NotFound)
        ));
        assert!(matches!(
            cache.get(&Identifier::new("NOT-A-TYPE", "1", None)).await,
            Err(ProtocolError::InvalidRequest(_))
        ));

        // Far in the future the cached entry has expired, and the ETK ETKDepot still
        // serves is not valid then: refused, never returned.
        let later = etee_platform::unix_now() + 50 * 365 * 24 * 3600;
        let misses = cache.stats().misses;
        assert!(matches!(
            cache.get_at(&bob, later).await,
            Err(ProtocolError::EtkExpired { .. })
        ));
        assert_eq!(
            cache.stats().misses,
            misses + 1,
            "an expired entry is a miss"
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etks_failing_the_official_checks_are_refused() {
    let w = World::new("protocol-cache-checks", Backend::Embedded).await;
    // Trusting another CA: the ETKs of this world do not chain to it.
    let foreign = foreign_institution();
    let anchors = TrustAnchors::new(vec![common::cert(foreign.chain.last().unwrap())]);
    let cache = EtkCache::new(support::depot(&w, Flavour::Rest), anchors);
    match cache
        .get(&Identifier::new("NIHII-PHARMACY", common::PHARMACY, None))
        .await
    {
        Err(ProtocolError::EtkInvalid { problems, .. }) => {
            assert_eq!(problems, ["ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.stats().entries, 0, "a refused ETK is not cached");

    // A short TTL: the entry is fetched again once it has passed.
    let cache = support::cache(&w, Flavour::Soap).with_ttl(std::time::Duration::from_secs(60));
    let bob = Identifier::new("NIHII-PHARMACY", common::PHARMACY, None);
    let now = etee_platform::unix_now();
    cache.get_at(&bob, now).await.unwrap();
    cache.get_at(&bob, now + 30).await.unwrap();
    cache.get_at(&bob, now + 61).await.unwrap();
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (1, 2));
    w.stop().await;
}

/// A holder with an ETK without application id beside two application ETKs: the lookup
/// without application id gives all three (the default one reached again through its
/// entry's empty ApplicationID), in both flavours; an empty application id gives exactly
/// the default one, and is a cache entry of its own. Type names are canonical in the cache
/// keys (`cbe` and `CBE` are one entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_etk_is_reached_beside_application_etks() {
    let w = World::new("protocol-default-etk", Backend::Embedded).await;
    let p = common::pki();
    let default = p
        .pki
        .institution(&etee_testpki::InstitutionSpec::new(
            "CBE",
            "0406798006",
            "Two Apps",
        ))
        .unwrap();
    let now = etee_platform::unix_now();
    w.store(|s| etee_platform::etkdepot::register(s, &default.etk, &w.anchors, now))
        .unwrap();
    let mut expected = vec![
        default.etk.clone(),
        p.app_a.etk.clone(),
        p.app_b.etk.clone(),
    ];
    expected.sort();

    for flavour in BOTH {
        // The depot's answer: the default ETK's entry has an empty application id, and
        // asking with it gives that ETK.
        let depot = support::depot(&w, flavour);
        let EtkAnswer::Matching(list) = depot
            .get_etk(&Identifier::new("CBE", "0406798006", None))
            .await
            .unwrap()
        else {
            panic!("{flavour:?}: not a list")
        };
        let entry = list
            .iter()
            .map(|ids| ids[0].clone())
            .find(|i| i.application_id.as_deref() == Some(""))
            .unwrap_or_else(|| panic!("{flavour:?}: {list:?}"));
        assert_eq!(
            depot.get_etk(&entry).await.unwrap(),
            EtkAnswer::Found(default.etk.clone()),
            "{flavour:?}"
        );

        let cache = support::cache(&w, flavour);
        let all = cache
            .get(&Identifier::new("CBE", "0406798006", None))
            .await
            .unwrap();
        let mut ders: Vec<_> = all.iter().map(|e| e.der().to_vec()).collect();
        ders.sort();
        assert_eq!(ders, expected, "{flavour:?}: every ETK of the holder");

        let only = cache
            .get(&Identifier::new("CBE", "406798006", Some("")))
            .await
            .unwrap();
        assert_eq!(only.len(), 1, "{flavour:?}");
        assert_eq!(only[0].der(), default.etk.as_slice(), "{flavour:?}");
        assert_eq!(
            cache.stats().entries,
            2,
            "{flavour:?}: Some(\"\") is not None"
        );

        // The same lookups with the type in lower case are cache hits.
        let hits = cache.stats().hits;
        cache
            .get(&Identifier::new("cbe", "0406798006", None))
            .await
            .unwrap();
        cache
            .get(&Identifier::new("Cbe", "0406798006", Some("")))
            .await
            .unwrap();
        let s = cache.stats();
        assert_eq!((s.hits, s.entries), (hits + 2, 2), "{flavour:?}");
    }
    w.stop().await;
}

/// A natural person's ETK (holder SSIN), published by the platform also under the
/// doctor's NIHII11 and NIHII (`etee platform etk register --also`): our client, asking
/// for the doctor's numbers, accepts it (an SSIN holder answers a NIHII query, spec
/// §4.1), in both flavours; and for the SSIN itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_etk_is_accepted_for_a_doctors_number() {
    let w = World::new("protocol-person", Backend::Embedded).await;
    let person = common::pki()
        .pki
        .institution(&etee_testpki::InstitutionSpec::new(
            "SSIN",
            "85010112345",
            "Dr Person",
        ))
        .unwrap();
    let now = etee_platform::unix_now();
    let also = [
        ("NIHII11".to_owned(), "9876543210".to_owned()),
        ("NIHII".to_owned(), "9876543".to_owned()),
    ];
    w.store(|s| {
        etee_platform::etkdepot::register_with_extra(s, &person.etk, &w.anchors, now, &also)
    })
    .unwrap();
    for flavour in BOTH {
        let cache = support::cache(&w, flavour);
        for (id_type, value) in [
            ("NIHII11", "09876543210"),
            ("NIHII", "09876543"),
            ("SSIN", "85010112345"),
        ] {
            let found = cache
                .get(&Identifier::new(id_type, value, None))
                .await
                .unwrap_or_else(|e| panic!("{flavour:?} {id_type}={value}: {e:?}"));
            assert_eq!(found.len(), 1, "{flavour:?} {id_type}={value}");
            assert_eq!(
                found[0].der(),
                person.etk.as_slice(),
                "{flavour:?} {id_type}={value}"
            );
        }
    }
    w.stop().await;
}

/// A holder whose DN value has more digits than its type (the official vectors' NIHII
/// 987456321, 9 digits for an 8-digit type): ETKDepot finds it under the value's first 8
/// digits, and our client, reading the DN the same way, accepts it, asked for by the DN's
/// own value or by those digits, in both flavours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dn_value_longer_than_its_type_is_accepted() {
    let w = World::new("protocol-long-value", Backend::Embedded).await;
    let long = common::pki()
        .pki
        .institution(&etee_testpki::InstitutionSpec::new(
            "NIHII",
            "987456321",
            "Long Number",
        ))
        .unwrap();
    let now = etee_platform::unix_now();
    w.store(|s| etee_platform::etkdepot::register(s, &long.etk, &w.anchors, now))
        .unwrap();
    for flavour in BOTH {
        let cache = support::cache(&w, flavour);
        for value in ["987456321", "98745632"] {
            let found = cache
                .get(&Identifier::new("NIHII", value, None))
                .await
                .unwrap_or_else(|e| panic!("{flavour:?} NIHII={value}: {e:?}"));
            assert_eq!(found.len(), 1, "{flavour:?} NIHII={value}");
            assert_eq!(found[0].der(), long.etk.as_slice(), "{flavour:?}");
        }
    }
    w.stop().await;
}

/// A hostile or broken ETKDepot's `MatchingEtk` list cannot multiply one lookup: entries
/// naming the same holder are asked about once (and the ETK kept once), a list of more
/// than `MAX_MATCHING` different entries is refused before any follow-up, and follow-ups
/// that stall cannot hold the lookup past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_list_cannot_multiply_the_lookups() {
    use etee_formats::etk::Etk;
    use etee_services::etkdepot::rest::{EtkJson, IdentifierJson};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let w = World::new("protocol-matching-bounds", Backend::Embedded).await;
    let bob_etk = Etk::parse(&w.bob.etk).unwrap();
    let genuine = EtkJson::list_to_json(&[EtkJson::from_etk(&bob_etk)]);
    let entry = |value: String| {
        let mut e = EtkJson::from_etk(&bob_etk);
        e.etk = vec![0];
        e.identifiers = vec![IdentifierJson {
            id_type: "NIHII-PHARMACY".into(),
            value,
            application_identifier: Some(String::new()),
        }];
        e
    };
    let bob = Identifier::new("NIHII-PHARMACY", common::PHARMACY, None);
    // Answers `list` first, then Bob's genuine ETK after `delay`.
    let depot = |list: Vec<EtkJson>, delay: Duration| {
        let (list, genuine) = (EtkJson::list_to_json(&list), genuine.clone());
        support::fake_server(Arc::new(move |n, _| {
            let (list, genuine) = (list.clone(), genuine.clone());
            Box::pin(async move {
                if n == 0 {
                    return (200, "application/json".into(), list);
                }
                tokio::time::sleep(delay).await;
                (200, "application/json".into(), genuine)
            })
        }))
    };
    let cache_of = |fake: &support::Fake| {
        EtkCache::new(
            etee_protocol::EtkDepotClient::new(
                support::http(fake.addr, None, support::quick()),
                Flavour::Rest,
            ),
            w.anchors.clone(),
        )
    };

    // 500 copies of Bob's entry (two spellings of his number among them): one follow-up.
    let mut copies = vec![entry(common::PHARMACY.into()); 499];
    copies.push(entry(format!("000{}", common::PHARMACY)));
    let fake = depot(copies, Duration::ZERO).await;
    let etks = cache_of(&fake).get(&bob).await.unwrap();
    assert_eq!(etks.len(), 1);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);

    // More different entries than are ever followed: refused at once.
    let many: Vec<_> = (0..etee_protocol::etk_cache::MAX_MATCHING + 1)
        .map(|i| entry(format!("{}", 27_150_300 + i)))
        .collect();
    let fake = depot(many, Duration::ZERO).await;
    match cache_of(&fake).get(&bob).await {
        Err(ProtocolError::Malformed(why)) => assert!(why.contains("at most 32"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);

    // Follow-ups that take 2 s each: the lookup ends at its 1 s deadline.
    let slow = vec![
        entry(common::PHARMACY.into()),
        entry("27150301".into()),
        entry("27150302".into()),
    ];
    let fake = depot(slow, Duration::from_secs(2)).await;
    let started = Instant::now();
    let cache = cache_of(&fake).with_lookup_deadline(Duration::from_secs(1));
    match cache.get(&bob).await {
        Err(ProtocolError::Timeout { what, .. }) => assert_eq!(what, "ETK lookup"),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}
