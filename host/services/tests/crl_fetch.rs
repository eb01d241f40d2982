//! Fetching revocation lists: what is taken, refused and written (the download injected),
//! and the HTTP download over a real loopback socket.

use etee_formats::cert::Certificate;
use etee_formats::revocation::{Freshness, Revocation, RevocationPolicy};
use etee_services::crl_fetch::{fetch_lists, HttpGet, Outcome};
use etee_testpki::TestPki;
use std::collections::HashMap;
use std::io::{Read, Write};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn cert(pki: &TestPki) -> Certificate {
    Certificate::from_der(&pki.root.cert.to_der().unwrap()).unwrap()
}

/// A list of `pki`'s root made `age` seconds ago, revoking `revoked` serials.
fn list(pki: &TestPki, age: i64, revoked: &[u32], der: bool) -> Vec<u8> {
    let serials: Vec<_> = revoked
        .iter()
        .map(|s| {
            openssl::bn::BigNum::from_u32(*s)
                .unwrap()
                .to_asn1_integer()
                .unwrap()
        })
        .collect();
    let entries: Vec<_> = serials.iter().map(|s| (s.as_ref(), now() - DAY)).collect();
    let crl = pki
        .crl(&entries, 1, now() - age, now() - age + 7 * DAY)
        .unwrap();
    if der {
        crl.to_der().unwrap()
    } else {
        crl.to_pem().unwrap()
    }
}

fn served(answers: Vec<(&str, Vec<u8>)>) -> impl Fn(&str) -> Result<Vec<u8>, String> {
    let map: HashMap<String, Vec<u8>> = answers
        .into_iter()
        .map(|(u, b)| (u.to_owned(), b))
        .collect();
    move |url: &str| {
        map.get(url)
            .cloned()
            .ok_or_else(|| format!("{url}: connection refused"))
    }
}

fn urls(u: &[&str]) -> Vec<String> {
    u.iter().map(|s| s.to_string()).collect()
}

#[test]
fn lists_are_taken_merged_and_written_only_when_newer() {
    let a = TestPki::generate("crl-fetch a").unwrap();
    let b = TestPki::generate("crl-fetch b").unwrap();
    let issuers = [cert(&a), cert(&b)];

    // Nothing held: both lists (one DER, one PEM) are new and written.
    let first = fetch_lists(
        &urls(&["http://a/crl", "http://b/crl"]),
        &issuers,
        None,
        served(vec![
            ("http://a/crl", list(&a, 3600, &[7], true)),
            ("http://b/crl", list(&b, 3600, &[], false)),
        ]),
    )
    .unwrap();
    assert!(first.all_taken(), "{:?}", first.urls);
    let written = first.write.clone().expect("new lists are written");
    let back = Revocation::new(std::slice::from_ref(&written), RevocationPolicy::Optional).unwrap();
    assert_eq!(back.lists(), 2);
    assert_eq!(first.lists.len(), 2);
    assert_eq!(
        first.lists.iter().map(|l| l.entries).sum::<usize>(),
        1,
        "{:?}",
        first.lists
    );
    for (_, o) in &first.urls {
        let Outcome::Taken(lists) = o else {
            panic!("{o:?}")
        };
        assert_eq!(lists[0].1, Freshness::New);
    }

    // The same lists again: nothing to write.
    let again = fetch_lists(
        &urls(&["http://a/crl"]),
        &issuers,
        Some(&written),
        served(vec![("http://a/crl", first_as_der(&written))]),
    )
    .unwrap();
    assert!(again.all_taken());
    assert!(again.write.is_none(), "an unchanged list is not written");
    assert_eq!(again.lists.len(), 2, "the other issuer's list is kept");

    // A newer list of a replaces a's, b's stays; an older one of b is refused.
    let newer = fetch_lists(
        &urls(&["http://a/crl", "http://b/crl"]),
        &issuers,
        Some(&written),
        served(vec![
            ("http://a/crl", list(&a, 60, &[7, 8], true)),
            ("http://b/crl", list(&b, 2 * 3600, &[], true)),
        ]),
    )
    .unwrap();
    assert!(!newer.all_taken());
    match &newer.urls[1].1 {
        Outcome::Refused(why) => assert!(why.contains("older"), "{why}"),
        other => panic!("{other:?}"),
    }
    let written = newer.write.expect("a's newer list is written");
    let lists = Revocation::new(&[written], RevocationPolicy::Optional)
        .unwrap()
        .summaries();
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert_eq!(
        lists.iter().map(|l| l.entries).sum::<usize>(),
        2,
        "a's new list (two entries) and b's held one (none): {lists:?}"
    );
}

/// The first list of a PEM file, as DER (the held list served again).
fn first_as_der(pem: &[u8]) -> Vec<u8> {
    openssl::x509::X509Crl::from_pem(pem)
        .unwrap()
        .to_der()
        .unwrap()
}

#[test]
fn lists_that_cannot_be_checked_are_refused() {
    let a = TestPki::generate("crl-fetch mine").unwrap();
    let other = TestPki::generate("crl-fetch other").unwrap();
    let issuers = [cert(&a)];
    // Signed by another CA under a's name: a forgery.
    let forged = {
        let mut impostor = TestPki::generate("crl-fetch impostor").unwrap();
        impostor.root.cert = a.root.cert.clone();
        list(&impostor, 60, &[], true)
    };
    let report = fetch_lists(
        &urls(&[
            "http://other/crl",
            "http://forged/crl",
            "http://junk/crl",
            "http://down/crl",
        ]),
        &issuers,
        None,
        served(vec![
            ("http://other/crl", list(&other, 60, &[], true)),
            ("http://forged/crl", forged),
            ("http://junk/crl", b"<html>not found</html>".to_vec()),
        ]),
    )
    .unwrap();
    let why: Vec<String> = report
        .urls
        .iter()
        .map(|(_, o)| match o {
            Outcome::Refused(why) => why.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(why[0].contains("no issuer certificate"), "{}", why[0]);
    assert!(why[1].contains("not signed"), "{}", why[1]);
    assert!(
        why[2].contains("not a certificate revocation list"),
        "{}",
        why[2]
    );
    assert!(why[3].contains("connection refused"), "{}", why[3]);
    assert!(report.write.is_none(), "nothing taken, nothing written");

    // A file that is not lists is never overwritten.
    let e = fetch_lists(
        &urls(&["http://other/crl"]),
        &issuers,
        Some(b"PIN=1234\n"),
        served(vec![]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not overwritten"), "{e}");
}

/// The download over a real socket: a list is read, a redirect is not followed, a body
/// over the bound is refused, https is refused before any connection.
#[test]
fn lists_are_downloaded_over_http_within_bounds() {
    let pki = TestPki::generate("crl-fetch http").unwrap();
    let body = list(&pki, 60, &[1, 2, 3], true);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served_body = body.clone();
    let server = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let answer = match path.as_str() {
                "/ca.crl" => {
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        served_body.len()
                    )
                    .into_bytes();
                    a.extend(&served_body);
                    a
                }
                "/moved" => b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
                _ => {
                    let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\
                                  Connection: close\r\n\r\n"
                        .to_vec();
                    a.extend(vec![b'x'; 100_000]);
                    a
                }
            };
            let _ = s.write_all(&answer);
        }
    });
    let get = HttpGet {
        timeout: std::time::Duration::from_secs(10),
        max_bytes: 50_000,
    };
    assert_eq!(
        get.get(&format!("http://127.0.0.1:{port}/ca.crl")).unwrap(),
        body
    );
    let e = get
        .get(&format!("http://127.0.0.1:{port}/moved"))
        .unwrap_err();
    assert!(e.contains("HTTP 302"), "{e}");
    let e = get
        .get(&format!("http://127.0.0.1:{port}/big"))
        .unwrap_err();
    assert!(e.to_lowercase().contains("limit"), "{e}");
    server.join().unwrap();
    let e = get.get("https://127.0.0.1:1/ca.crl").unwrap_err();
    assert!(e.contains("only http://"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Discovery: the distribution points a certificate names
// ---------------------------------------------------------------------------------------

mod discovery {
    use super::*;
    use etee_formats::ber::write::{seq, tlv};
    use etee_services::crl_fetch::{
        distribution_points, Discovery, Points, PointsError, Skipped, Source,
    };
    use etee_testpki::InstitutionSpec;
    use openssl::asn1::{Asn1Object, Asn1OctetString};
    use openssl::hash::MessageDigest;
    use openssl::x509::{X509Builder, X509Extension, X509Name};
    use std::sync::OnceLock;

    fn pki() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| TestPki::generate("crl discovery").unwrap())
    }

    /// A certificate `CN=<cn>` issued by the test root (or by itself, `self_issued`),
    /// carrying these crlDistributionPoints extension values as they are (malformed ones
    /// included: OpenSSL does not look inside).
    fn cert_with(cn: &str, values: &[Vec<u8>], self_issued: bool) -> Certificate {
        try_cert_with(cn, values, self_issued).unwrap()
    }

    /// [`cert_with`], or why etee does not read it as a certificate at all (an extension
    /// value that is not one element).
    fn try_cert_with(
        cn: &str,
        values: &[Vec<u8>],
        self_issued: bool,
    ) -> Result<Certificate, etee_formats::cert::CertError> {
        let pki = pki();
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let serial = etee_testpki::random_serial().unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_subject_name(&name).unwrap();
        if self_issued {
            b.set_issuer_name(&name).unwrap();
        } else {
            b.set_issuer_name(pki.root.cert.subject_name()).unwrap();
        }
        b.set_pubkey(&pki.ra.key).unwrap();
        let from = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        let to = openssl::asn1::Asn1Time::days_from_now(30).unwrap();
        b.set_not_before(&from).unwrap();
        b.set_not_after(&to).unwrap();
        let oid = Asn1Object::from_str("2.5.29.31").unwrap();
        for v in values {
            let v = Asn1OctetString::new_from_bytes(v).unwrap();
            b.append_extension(X509Extension::new_from_der(&oid, false, &v).unwrap())
                .unwrap();
        }
        b.sign(&pki.root.key, MessageDigest::sha256()).unwrap();
        Certificate::from_der(&b.build().to_der().unwrap())
    }

    fn uri(u: &str) -> Vec<u8> {
        tlv(0x86, u.as_bytes())
    }

    /// distributionPoint [0] { fullName [0] names }
    fn full_name(names: &[Vec<u8>]) -> Vec<u8> {
        tlv(0xa0, &tlv(0xa0, &names.concat()))
    }

    /// A DistributionPoint from its fields.
    fn point(fields: &[Vec<u8>]) -> Vec<u8> {
        seq(&fields.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    /// CRLDistributionPoints from its points.
    fn points(list: &[Vec<u8>]) -> Vec<u8> {
        seq(&list.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    /// cRLIssuer [2] { directoryName [4] the root's name }
    fn crl_issuer() -> Vec<u8> {
        let name = pki().root.cert.subject_name().to_der().unwrap();
        tlv(0xa2, &tlv(0xa4, &name))
    }

    /// reasons [1]: keyCompromise only.
    fn reasons() -> Vec<u8> {
        tlv(0x81, &[0x06, 0x40])
    }

    fn strings(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_institution_certificate_names_its_cas_list() {
        let spec = InstitutionSpec::new("NIHII-PHARMACY", "27150201", "crl-dp")
            .with_crl_url("http://crl.example.org/ca.crl");
        let inst = pki().institution(&spec).unwrap();
        let auth = Certificate::from_der(&inst.auth.cert.to_der().unwrap()).unwrap();
        let p = distribution_points(&auth).unwrap();
        assert_eq!(p.urls, strings(&["http://crl.example.org/ca.crl"]));
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        assert!(!p.missing());
        // OpenSSL reads the same point in it.
        let dp = inst
            .auth
            .cert
            .crl_distribution_points()
            .expect("the extension");
        let full = dp.get(0).unwrap().distpoint().unwrap().fullname().unwrap();
        assert_eq!(
            full.get(0).unwrap().uri(),
            Some("http://crl.example.org/ca.crl")
        );
    }

    #[test]
    fn several_points_give_their_http_urls_each_once_in_order() {
        let ext = points(&[
            point(&[full_name(&[
                uri("ldap://ldap.example.org/cn=CA?certificateRevocationList"),
                uri("http://a.example.org/1.crl"),
            ])]),
            point(&[full_name(&[
                uri("HTTP://b.example.org/2.crl"),
                uri("https://c.example.org/3.crl"),
                tlv(0x82, b"crl.example.org"),
            ])]),
            point(&[full_name(&[uri("http://a.example.org/1.crl")])]),
        ]);
        let p = distribution_points(&cert_with("several", &[ext], false)).unwrap();
        assert_eq!(
            p.urls,
            strings(&["http://a.example.org/1.crl", "http://b.example.org/2.crl"])
        );
        assert_eq!(
            p.skipped,
            vec![
                Skipped::NotHttp("ldap://ldap.example.org/cn=CA?certificateRevocationList".into()),
                Skipped::NotHttp("https://c.example.org/3.crl".into()),
                Skipped::NotUri("dNSName (a host name)"),
            ]
        );
        assert!(!p.missing());
        assert!(p.skipped[0].to_string().contains("only http://"));
    }

    #[test]
    fn a_certificate_without_points_is_missing_unless_issued_under_its_own_name() {
        let none = distribution_points(&cert_with("no points", &[], false)).unwrap();
        assert_eq!(none.urls, Vec::<String>::new());
        assert_eq!(none.skipped, vec![Skipped::NoExtension]);
        assert!(none.missing(), "an issued certificate that names no list");
        assert!(
            none.skipped[0]
                .to_string()
                .contains("no crlDistributionPoints"),
            "{}",
            none.skipped[0]
        );
        // A root (and an eHealth encryption certificate): no list is expected.
        let root = Certificate::from_der(&pki().root.cert.to_der().unwrap()).unwrap();
        let p = distribution_points(&root).unwrap();
        assert!(p.self_issued && !p.missing(), "{p:?}");
        let own = distribution_points(&cert_with("own name", &[], true)).unwrap();
        assert!(!own.missing(), "{own:?}");
    }

    #[test]
    fn ldap_only_points_give_nothing_and_say_why() {
        let ext = points(&[point(&[full_name(&[
            uri("ldap://ldap.example.org/cn=CA"),
            uri("https://crl.example.org/ca.crl"),
            uri("urn:x"),
        ])])]);
        let p = distribution_points(&cert_with("ldap", &[ext], false)).unwrap();
        assert!(p.urls.is_empty());
        assert_eq!(
            p.skipped,
            vec![
                Skipped::NotHttp("ldap://ldap.example.org/cn=CA".into()),
                Skipped::NotHttp("https://crl.example.org/ca.crl".into()),
                Skipped::NotHttp("urn:x".into()),
            ]
        );
        assert!(p.missing(), "points, but none fetched");
        // Even issued under its own name: it names points, none of them fetched.
        let own = distribution_points(&cert_with(
            "ldap own",
            &[points(&[point(&[full_name(&[uri("ldap://l/x")])])])],
            true,
        ))
        .unwrap();
        assert!(own.missing());
    }

    #[test]
    fn indirect_and_partitioned_points_are_skipped_whole() {
        let relative = tlv(0xa0, &tlv(0xa1, &tlv(0x31, &seq(&[]))));
        let ext = points(&[
            // An indirect list: another authority issues it.
            point(&[
                full_name(&[uri("http://indirect.example.org/x.crl")]),
                crl_issuer(),
            ]),
            // A list of some reasons only.
            point(&[
                full_name(&[uri("http://reasons.example.org/kc.crl")]),
                reasons(),
            ]),
            // Both: indirect.
            point(&[
                full_name(&[uri("http://both.example.org/b.crl")]),
                reasons(),
                crl_issuer(),
            ]),
            // Only the list's issuer, no place.
            point(&[crl_issuer()]),
            // A name relative to the issuer: no URL.
            point(std::slice::from_ref(&relative)),
            // A directory name as the full name.
            point(&[full_name(&[tlv(
                0xa4,
                &pki().root.cert.subject_name().to_der().unwrap(),
            )])]),
            // And one plain point, which is taken.
            point(&[full_name(&[uri("http://plain.example.org/ca.crl")])]),
        ]);
        let p = distribution_points(&cert_with("indirect", &[ext], false)).unwrap();
        assert_eq!(p.urls, strings(&["http://plain.example.org/ca.crl"]));
        assert_eq!(
            p.skipped,
            vec![
                Skipped::Indirect(strings(&["http://indirect.example.org/x.crl"])),
                Skipped::Reasons(strings(&["http://reasons.example.org/kc.crl"])),
                Skipped::Indirect(strings(&["http://both.example.org/b.crl"])),
                Skipped::IssuerOnly,
                Skipped::RelativeName,
                Skipped::NotUri("directoryName (an X.500 name)"),
            ]
        );
        let why = p.skipped[0].to_string();
        assert!(
            why.contains("indirect")
                && why.contains("signed by an issuer certificate of its own name"),
            "{why}"
        );
        assert!(p.skipped[1].to_string().contains("some revocation reasons"));
        // Only such points: nothing to fetch.
        let only = points(&[point(&[
            full_name(&[uri("http://indirect.example.org/x.crl")]),
            crl_issuer(),
        ])]);
        let p = distribution_points(&cert_with("only indirect", &[only], false)).unwrap();
        assert!(p.urls.is_empty() && p.missing(), "{p:?}");
    }

    fn malformed(values: &[Vec<u8>]) -> PointsError {
        distribution_points(&cert_with("malformed", values, false)).unwrap_err()
    }

    #[test]
    fn a_malformed_extension_is_a_clear_error() {
        let good = points(&[point(&[full_name(&[uri("http://a/1.crl")])])]);
        let e = malformed(&[b"\x04\x03abc".to_vec()]);
        assert!(matches!(e, PointsError::Malformed(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("crlDistributionPoints extension is malformed"),
            "{e}"
        );
        assert!(matches!(malformed(&[seq(&[])]), PointsError::Empty));
        assert!(matches!(
            malformed(&[points(&[point(&[])])]),
            PointsError::Nameless
        ));
        assert!(matches!(
            malformed(&[points(&[point(&[reasons()])])]),
            PointsError::Nameless
        ));
        assert!(matches!(
            malformed(&[points(&[point(&[full_name(&[uri("http://a/b c")])])])]),
            PointsError::NotAUri
        ));
        assert!(matches!(
            malformed(&[points(&[point(&[full_name(&[uri("http://a/\u{e9}")])])])]),
            PointsError::NotAUri
        ));
        assert!(matches!(
            malformed(&[points(&[point(&[full_name(&[uri("")])])])]),
            PointsError::NotAUri
        ));
        assert!(matches!(
            malformed(&[good.clone(), good.clone()]),
            PointsError::Repeated
        ));
        // A field after cRLIssuer, a choice of an unknown form, trailing bytes.
        assert!(matches!(
            malformed(&[points(&[point(&[crl_issuer(), reasons()])])]),
            PointsError::Malformed(_)
        ));
        assert!(matches!(
            malformed(&[points(&[point(&[tlv(0xa0, &tlv(0xa5, b""))])])]),
            PointsError::Malformed(_)
        ));
        // An extension value that is not one element: not read as a certificate at all.
        let mut trailing = good.clone();
        trailing.push(0);
        let e = try_cert_with("trailing", &[trailing], false).unwrap_err();
        assert!(e.to_string().contains("trailing data"), "{e}");

        // Every truncation and every flipped bit of a full extension: an answer (taken or
        // an error), never a panic.
        let full = points(&[
            point(&[
                full_name(&[uri("ldap://l/x"), uri("http://a/1.crl"), tlv(0x82, b"h")]),
                reasons(),
            ]),
            point(&[full_name(&[uri("http://b/2.crl")]), crl_issuer()]),
            point(&[crl_issuer()]),
            point(&[full_name(&[uri("http://c/3.crl")])]),
        ]);
        let mut variants: Vec<Vec<u8>> = (0..full.len()).map(|n| full[..n].to_vec()).collect();
        for i in 0..full.len() {
            for bit in 0..8 {
                let mut v = full.clone();
                v[i] ^= 1 << bit;
                variants.push(v);
            }
        }
        let (mut read, mut refused) = (0, 0);
        for v in variants {
            match try_cert_with("variant", &[v], false) {
                Ok(cert) => match distribution_points(&cert) {
                    Ok(_) => read += 1,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        refused += 1;
                    }
                },
                Err(_) => refused += 1,
            }
        }
        assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any bytes in a SEQUENCE as the extension's value: read or refused, no panic.
        #[test]
        fn any_extension_value_is_read_or_refused(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)
        ) {
            if let Ok(cert) = try_cert_with("any", &[seq(&[&body])], false) {
                let _ = distribution_points(&cert);
            }
        }
    }

    #[test]
    fn discovery_joins_given_urls_and_certificates_each_url_once() {
        let a = cert_with(
            "a",
            &[points(&[point(&[full_name(&[
                uri("http://one.example.org/ca.crl"),
                uri("http://two.example.org/ca.crl"),
            ])])])],
            false,
        );
        let b = cert_with(
            "b",
            &[points(&[point(&[full_name(&[uri(
                "HTTP://one.example.org/ca.crl",
            )])])])],
            false,
        );
        let none = cert_with("none", &[], false);
        let d = Discovery::new(
            &strings(&[
                "http://two.example.org/ca.crl",
                "http://two.example.org/ca.crl",
            ]),
            &[a, b, none],
        )
        .unwrap();
        assert_eq!(
            d.urls,
            vec![
                (
                    "http://two.example.org/ca.crl".to_string(),
                    vec![Source::Given, Source::Certificate(0)]
                ),
                (
                    "http://one.example.org/ca.crl".to_string(),
                    vec![Source::Certificate(0), Source::Certificate(1)]
                ),
            ]
        );
        assert_eq!(
            d.url_list(),
            strings(&[
                "http://two.example.org/ca.crl",
                "http://one.example.org/ca.crl"
            ])
        );
        assert_eq!(d.certificates.len(), 3);
        assert!(d.any_missing(), "the third names no list");
        assert_eq!(
            d.certificates[2],
            Points {
                urls: vec![],
                skipped: vec![Skipped::NoExtension],
                self_issued: false
            }
        );
        // A malformed certificate stops it, naming which.
        let bad = cert_with("bad", &[seq(&[])], false);
        let (i, e) = Discovery::new(&[], &[cert_with("ok", &[], true), bad]).unwrap_err();
        assert_eq!(i, 1);
        assert!(matches!(e, PointsError::Empty));
    }
}
