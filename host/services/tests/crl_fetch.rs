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
