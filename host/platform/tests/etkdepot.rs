//! ETKDepot over real sockets on loopback, TLS, with the embedded store: SOAP `GetEtk`
//! and REST lookups return ETKs that our unsealer and `openssl cms` accept; bad input gets
//! the right SOA fault or problem; slow clients are cut off; the server stops cleanly.

mod common;

on_both_stores!(
    soap_get_etk_answers_etk_matching_and_errors,
    soap_bad_input_gets_soa_faults,
    a_wcf_security_header_is_accepted,
    a_persons_etk_is_found_by_a_doctors_number,
    a_renewal_without_extra_identifiers_replaces_the_etk,
    an_etk_ends_with_its_authentication_certificate,
    rest_etks_and_jwks,
    slow_and_silent_clients_are_cut_off,
    client_certificates_from_the_platform_ca_are_accepted,
    default_etk_beside_application_etks,
    identifier_types_and_values_are_normalised,
    a_busy_platform_sheds_lookups_retryably,
    one_caller_cannot_take_every_turn,
    readiness_follows_the_store,
    the_status_can_be_kept_to_the_host_or_to_certified_callers,
    a_body_declared_too_large_is_refused_before_it_comes,
    one_address_cannot_hold_every_connection,
    soap_is_parsed_in_the_work_pool
);

use common::{World, PHARMACY};
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::etk::Etk;
use etee_services::etkdepot::jwks::JwkSet;
use etee_services::etkdepot::rest::{EtkJson, Problem};
use etee_services::etkdepot::{EtkResult, GetEtkRequest, GetEtkResponse, Identifier};
use etee_services::soap::{self, Fault};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn get_etk(ids: &[Identifier]) -> Vec<u8> {
    GetEtkRequest {
        identifiers: ids.to_vec(),
    }
    .to_xml()
}

/// `GetEtk` for one identifier over SOAP; the answer must be HTTP 200.
async fn ask(
    c: &mut etee_platform::client::Connection,
    id_type: &str,
    value: &str,
    application_id: Option<&str>,
) -> GetEtkResponse {
    let a = c
        .soap(
            "/EtkDepot/v1",
            get_etk(&[Identifier::new(id_type, value, application_id)]),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.content_type.starts_with("text/xml"), "{}", a.content_type);
    GetEtkResponse::parse(&a.body).unwrap()
}

/// A `GetEtk` for Bob whose request element declares `n` namespaces besides its own.
fn many_namespaces(n: usize) -> Vec<u8> {
    let decls: String = (0..n).map(|i| format!(" xmlns:x{i}='urn:x{i}'")).collect();
    format!(
        "<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Body>\
         <GetEtkRequest xmlns='urn:be:fgov:ehealth:etkdepot:1_0:protocol'{decls}>\
         <SearchCriteria><Identifier><Type>NIHII-PHARMACY</Type><Value>{PHARMACY}</Value>\
         </Identifier></SearchCriteria></GetEtkRequest></s:Body></s:Envelope>"
    )
    .into_bytes()
}

fn fault_code(body: &[u8]) -> String {
    let fault = Fault::parse(body)
        .unwrap_or_else(|e| panic!("not a fault ({e}): {}", String::from_utf8_lossy(body)));
    fault.detail.expect("SOA detail").code
}

async fn soap_get_etk_answers_etk_matching_and_errors(w: World) {
    let mut c = w.connect(None).await;

    // One ETK: Bob's, by his NIHII-PHARMACY number; the answer seals to Bob.
    let r = ask(&mut c, "NIHII-PHARMACY", PHARMACY, None).await;
    assert!(r.status.is_ok());
    let EtkResult::Etk(etk) = r.result else {
        panic!("{:?}", r.result)
    };
    assert_eq!(etk, w.bob.etk);
    w.check_etk_opens(&etk);

    // The KGSS ETK by CBE and application id, the value given without its leading zero.
    let r = ask(&mut c, "CBE", "809394427", Some("KGSS")).await;
    assert_eq!(r.result, EtkResult::Etk(w.kgss.etk.clone()));

    // A holder with two application ids: MatchingEtk, each with its application id; asking
    // again with one of them gives that ETK.
    let r = ask(&mut c, "CBE", "0406798006", None).await;
    let EtkResult::MatchingEtk(matching) = r.result else {
        panic!("{:?}", r.result)
    };
    let mut apps: Vec<_> = matching
        .iter()
        .map(|m| m.identifiers[0].application_id.clone().unwrap())
        .collect();
    apps.sort();
    assert_eq!(apps, ["APP-A", "APP-B"]);
    let r = ask(&mut c, "CBE", "0406798006", Some("APP-B")).await;
    assert_eq!(r.result, EtkResult::Etk(w.app_b.etk.clone()));

    // Identifiers of two holders (Bob's and Alice's, neither with an application id):
    // MatchingEtk naming both, not one of the two ETKs.
    let both = c
        .soap(
            "/EtkDepot/v1",
            get_etk(&[
                Identifier::new("NIHII-PHARMACY", PHARMACY, None),
                Identifier::new("NIHII-HOSPITAL", "71000436", None),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(both.status, 200);
    let r = GetEtkResponse::parse(&both.body).unwrap();
    let EtkResult::MatchingEtk(matching) = r.result else {
        panic!("{:?}", r.result)
    };
    let mut holders: Vec<_> = matching
        .iter()
        .map(|m| {
            (
                m.identifiers[0].id_type.clone(),
                m.identifiers[0].value.clone(),
            )
        })
        .collect();
    holders.sort();
    assert_eq!(
        holders,
        [
            ("NIHII-HOSPITAL".to_string(), "71000436".to_string()),
            ("NIHII-PHARMACY".to_string(), PHARMACY.to_string())
        ]
    );

    // Nobody: status 200 with an Error.
    let r = ask(&mut c, "NIHII-PHARMACY", "99999999", None).await;
    assert!(r.status.is_ok());
    assert!(
        matches!(r.result, EtkResult::Errors(ref e) if e[0].code == "ETK_NOT_FOUND"),
        "{:?}",
        r.result
    );
    w.stop().await;
}

async fn soap_bad_input_gets_soa_faults(w: World) {
    let mut c = w.connect(None).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown identifier type",
            get_etk(&[Identifier::new("PLANET", "1", None)]),
            "SOA-03007",
        ),
        ("not XML", b"GET me an ETK".to_vec(), "SOA-03001"),
        (
            "entity expansion",
            br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><x>&b;</x>"#.to_vec(),
            "SOA-03001",
        ),
        (
            "external entity",
            br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#.to_vec(),
            "SOA-03001",
        ),
        (
            "SOAP 1.2",
            br#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>"#.to_vec(),
            "SOA-03002",
        ),
        (
            "no body",
            br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"/>"#.to_vec(),
            "SOA-03003",
        ),
        (
            "wrong operation",
            soap::envelope(etee_services::xml::Element::new(Some("urn:other"), "GetPizza")),
            "SOA-03006",
        ),
        (
            "too many namespace declarations on one element",
            many_namespaces(17),
            "SOA-03001",
        ),
        (
            "more than ten identifiers",
            get_etk(
                &(0..11)
                    .map(|_| Identifier::new("NIHII-PHARMACY", PHARMACY, None))
                    .collect::<Vec<_>>(),
            ),
            "SOA-03007",
        ),
    ];
    for (what, body, code) in cases {
        let a = c.soap("/EtkDepot/v1", body).await.unwrap();
        assert_eq!(a.status, 500, "{what}");
        assert_eq!(fault_code(&a.body), code, "{what}");
        // The code's message is said once, then the reason.
        let detail = Fault::parse(&a.body).unwrap().detail.unwrap();
        let text = detail.messages[0].text.to_lowercase();
        let said = etee_services::soap::SoaCode::from_code(code)
            .unwrap()
            .message()
            .to_lowercase();
        assert_eq!(text.matches(&said).count(), 1, "{what}: {text}");
        assert!(
            text.len() > said.len() || code == "SOA-03003",
            "{what}: {text}"
        );
    }
    // The connection is still usable after all of that.
    ask(&mut c, "NIHII-PHARMACY", PHARMACY, None).await;

    // A SOAP 1.2 envelope is a version mismatch (SOAP 1.1 §4.4.1), not a client error.
    let soap12 =
        br#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>"#;
    for path in ["/EtkDepot/v1", "/Kgss/v1"] {
        let a = c.soap(path, soap12.to_vec()).await.unwrap();
        assert_eq!(a.status, 500, "{path}");
        let fault = Fault::parse(&a.body).unwrap();
        assert_eq!(fault.fault_code, soap::FaultCode::VersionMismatch, "{path}");
        assert_eq!(fault.detail.unwrap().code, "SOA-03002", "{path}");
    }

    // A header block the sender says must be understood, other than WS-Security's
    // Security: refused with a MustUnderstand fault rather than served without it, on
    // each SOAP service (a Security block of another namespace too). One marked optional,
    // or for another actor, is ignored.
    let get = get_etk(&[Identifier::new("NIHII-PHARMACY", PHARMACY, None)]);
    let with_header = |header: &str| -> Vec<u8> {
        let envelope = String::from_utf8(get.clone()).unwrap();
        let at = envelope.find("<soap:Body").expect("the envelope's body");
        format!(
            "{}<soap:Header>{header}</soap:Header>{}",
            &envelope[..at],
            &envelope[at..]
        )
        .into_bytes()
    };
    let wsse = soap::WSSE_NS;
    let old_wsse = "http://schemas.xmlsoap.org/ws/2002/07/secext";
    for path in ["/EtkDepot/v1", "/Kgss/v1"] {
        for (header, name) in [
            (
                r#"<h:Note xmlns:h="urn:x" soap:mustUnderstand="1"/>"#.to_owned(),
                "Note",
            ),
            (
                r#"<h:Note xmlns:h="urn:x" soap:mustUnderstand="true"/>"#.to_owned(),
                "Note",
            ),
            (
                format!(r#"<w:Security xmlns:w="{old_wsse}" soap:mustUnderstand="1"/>"#),
                old_wsse,
            ),
        ] {
            let a = c.soap(path, with_header(&header)).await.unwrap();
            assert_eq!(a.status, 500, "{path} {header}");
            let fault = Fault::parse(&a.body).unwrap();
            assert_eq!(fault.fault_code, soap::FaultCode::MustUnderstand, "{path}");
            assert!(fault.fault_string.contains(name), "{fault:?}");
            // SOAP 1.1 §4.4: no detail for a header's error; the SOA code opens the string.
            assert!(fault.detail.is_none(), "{fault:?}");
            assert!(fault.fault_string.starts_with("SOA-03005 "), "{fault:?}");
        }
        for header in [
            r#"<h:Note xmlns:h="urn:x" soap:mustUnderstand="maybe"/>"#.to_owned(),
            format!(r#"<w:Security xmlns:w="{wsse}" soap:mustUnderstand="maybe"/>"#),
        ] {
            let a = c.soap(path, with_header(&header)).await.unwrap();
            assert_eq!(fault_code(&a.body), "SOA-03006", "{path} {header}");
        }
    }
    for header in [
        format!(r#"<w:Security xmlns:w="{wsse}" soap:mustUnderstand="1"/>"#),
        format!(r#"<w:Security xmlns:w="{wsse}" soap:mustUnderstand="true"/>"#),
        format!(r#"<w:Security xmlns:w="{wsse}" soap:mustUnderstand="0"/>"#),
        format!(r#"<w:Security xmlns:w="{old_wsse}" soap:mustUnderstand="1" soap:actor="urn:a-gateway"/>"#),
        r#"<h:Note xmlns:h="urn:x" soap:actor="http://schemas.xmlsoap.org/soap/actor/next">hi</h:Note>"#.to_owned(),
    ] {
        let a = c.soap("/EtkDepot/v1", with_header(&header)).await.unwrap();
        assert_eq!(a.status, 200, "{header}: {}", String::from_utf8_lossy(&a.body));
    }

    // An oversized body is refused too, and its connection closed (the body is not read).
    let mut big = w.connect(None).await;
    let a = big
        .soap("/EtkDepot/v1", vec![b' '; 70 * 1024])
        .await
        .unwrap();
    assert_eq!(a.status, 500);
    assert_eq!(fault_code(&a.body), "SOA-03001");
    w.stop().await;
}

/// A request as WCF (`BasicHttpBinding` with message security, the `_X509` binding) and
/// WSS4J send it: a `wsse:Security` header marked `mustUnderstand="1"` holding a
/// Timestamp (and a token nobody checks), the body with a `wsu:Id`. ETKDepot understands
/// the header (accepts it without evaluating it) and answers the lookup.
async fn a_wcf_security_header_is_accepted(w: World) {
    let mut c = w.connect(None).await;
    let body = common::wcf_envelope(&format!(
        r#"<GetEtkRequest xmlns="urn:be:fgov:ehealth:etkdepot:1_0:protocol"><SearchCriteria><Identifier><Type>NIHII-PHARMACY</Type><Value>{PHARMACY}</Value></Identifier></SearchCriteria></GetEtkRequest>"#
    ));
    let a = c.soap("/EtkDepot/v1", body).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let r = GetEtkResponse::parse(&a.body).unwrap();
    assert_eq!(r.result, EtkResult::Etk(w.bob.etk.clone()));
    w.stop().await;
}

async fn rest_etks_and_jwks(w: World) {
    let mut c = w.connect(None).await;

    let a = c
        .get(&format!(
            "/etee/v1/etks?identifier={PHARMACY}&type=nihii-pharmacy"
        ))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.content_type, "application/json");
    let list = EtkJson::parse_list(&a.body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].etk, w.bob.etk);
    assert!(list[0]
        .identifiers
        .iter()
        .any(|i| i.id_type == "NIHII-PHARMACY" && i.value == PHARMACY));
    w.check_etk_opens(&list[0].etk);

    // Two application ids: both, in one list.
    let a = c
        .get("/etee/v1/etks?identifier=0406798006&type=CBE")
        .await
        .unwrap();
    assert_eq!(EtkJson::parse_list(&a.body).unwrap().len(), 2);

    // 404 for nobody, 400 for unknown criteria; problem+json each time.
    for (query, status) in [
        ("identifier=99999999&type=NIHII-PHARMACY", 404),
        ("identifier=1&type=PLANET", 400),
        ("type=CBE", 400),
        ("identifier=0406798006", 400),
        ("identifier=0406798006&type=CBE&colour=blue", 400),
    ] {
        let a = c.get(&format!("/etee/v1/etks?{query}")).await.unwrap();
        assert_eq!(a.status, status, "{query}");
        assert_eq!(a.content_type, "application/problem+json", "{query}");
        let p = Problem::parse(&a.body).unwrap();
        assert_eq!(p.status, Some(status), "{query}");
    }

    // JWKS: the encryption key for use=enc, the authentication key for use=sig.
    for (use_, cert) in [("enc", &w.bob.etk_cert), ("sig", &w.bob.auth.cert)] {
        let a = c
            .get(&format!(
                "/etee/v1/pubKeys/cacerts/jwks?identifier={PHARMACY}&type=NIHII-PHARMACY&use={use_}"
            ))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let set = JwkSet::parse(&a.body).unwrap();
        assert_eq!(set.keys.len(), 1, "{use_}");
        let key = set.keys[0].public_key().unwrap();
        assert!(key.public_eq(&cert.public_key().unwrap()), "{use_}");
    }
    let a = c
        .get(&format!(
            "/etee/v1/pubKeys/cacerts/jwks?identifier={PHARMACY}&type=NIHII-PHARMACY&use=both"
        ))
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    let a = c.get("/no/such/thing").await.unwrap();
    assert_eq!(a.status, 404);
    w.stop().await;
}

async fn slow_and_silent_clients_are_cut_off(mut w: World) {
    w.restart_with(etee_platform::config::Limits {
        handshake_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    // Silent: TCP connected, no TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server kept a silent client longer than its handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)));

    // Slow: TLS done, then half a request line and nothing more.
    let config = w.client_config(None);
    let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /health HT").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server kept a slow client longer than its request timeout"
    );

    // A body that does not come, on a SOAP route: a retryable SOAP fault (not a REST
    // problem) when the request time is out, and the connection closed.
    let soap = w
        .raw_head("POST /EtkDepot/v1 HTTP/1.1\r\nContent-Type: text/xml\r\nContent-Length: 100")
        .await;
    let body = String::from_utf8_lossy(&soap.body);
    assert_eq!(soap.status, 500, "{body}");
    assert!(
        soap.content_type.starts_with("text/xml"),
        "{}",
        soap.content_type
    );
    assert!(body.contains("SOA-02001"), "{body}");
    assert_eq!(soap.connection.as_deref(), Some("close"));
    assert!(soap.elapsed < Duration::from_secs(5), "{:?}", soap.elapsed);
    w.stop().await;
}

/// An address stalling its connections in the TLS handshake holds at most
/// `max_connections_per_peer` of them: one more is closed at once, and another address is
/// served meanwhile (127.0.0.2 is this host too).
async fn one_address_cannot_hold_every_connection(mut w: World) {
    w.restart_with(etee_platform::config::Limits {
        max_connections: 4,
        max_connections_per_peer: 2,
        handshake_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(w.addr)
    };
    let stalled = [
        from("127.0.0.1").await.unwrap(),
        from("127.0.0.1").await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = from("127.0.0.1").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("a third stalled connection of the same address was kept");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    let tcp = from("127.0.0.2").await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(w.client_config(None))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Gone, so that stopping does not wait for their handshake timeout.
    drop(stalled);
    w.stop().await;
}

async fn client_certificates_from_the_platform_ca_are_accepted(w: World) {
    // A client certificate of the platform's CA: the handshake succeeds.
    let mut c = w.connect(Some(&w.bob)).await;
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    // One from another CA: refused during the handshake (nothing is answered).
    let stranger = common::foreign_institution();
    let refused = match w.try_connect(Some(&stranger)).await {
        Err(_) => true,
        Ok(mut c) => c.get("/health").await.is_err(),
    };
    assert!(refused, "a client certificate of a foreign CA was accepted");
    w.stop().await;
}

/// Our unsealer opens a message sealed to the ETK (with Bob's key), and `openssl cms`
/// verifies the ETK's RA signature.
impl World {
    fn check_etk_opens(&self, etk: &[u8]) {
        let etk = Etk::parse(etk).unwrap();
        assert!(etk
            .validate(&self.anchors, etee_platform::unix_now())
            .is_empty());
        let mut sealed = Vec::new();
        let plain = b"for the pharmacy found in the depot";
        seal(
            &self.alice_signer(),
            &[Recipient::Certificate(etk.encryption_cert().clone())],
            None,
            &plain[..],
            &mut sealed,
            &SealOptions::default(),
        )
        .unwrap();
        let opts = UnsealOptions {
            anchors: self.anchors.clone(),
            ..Default::default()
        };
        let (result, content) = unseal_to_vec(&sealed, &self.bob_ring(), &opts).unwrap();
        assert!(result.verdict.is_clean(), "{:?}", result.verdict);
        assert_eq!(content.as_deref(), Some(&plain[..]));
        self.openssl_accepts(etk.der());
    }
}

/// More holders, registered by the tests that need them: the holder with two application
/// ids (CBE 0406798006) also gets an ETK without application id; an EHP holder; a holder
/// whose certificate names its type `HUB`.
struct Extra {
    default: etee_testpki::Institution,
    ehp: etee_testpki::Institution,
    hub: etee_testpki::Institution,
    /// A holder whose DN's NIHII has more digits than the type's 8 (a NIHII-11 written
    /// as NIHII).
    long_nihii: etee_testpki::Institution,
}

fn extra() -> &'static Extra {
    static EXTRA: std::sync::OnceLock<Extra> = std::sync::OnceLock::new();
    EXTRA.get_or_init(|| {
        let pki = &common::pki().pki;
        let inst = |t: &str, v: &str, name: &str| {
            pki.institution(&etee_testpki::InstitutionSpec::new(t, v, name))
                .unwrap()
        };
        Extra {
            default: inst("CBE", "0406798006", "Two Apps"),
            ehp: inst("EHP", "1990001916", "A Hub"),
            hub: inst("HUB", "1990001917", "Another Hub"),
            long_nihii: inst("NIHII", "10203040506", "Long Number"),
        }
    })
}

impl World {
    fn register(&self, etk: &[u8]) {
        let now = etee_platform::unix_now();
        self.store(|s| etee_platform::etkdepot::register(s, etk, &self.anchors, now))
            .unwrap();
    }
}

/// A holder with an ETK without application id beside two application ETKs: no
/// ApplicationID gives the three as MatchingEtk, the default one with an empty
/// ApplicationID; asking again with each entry's first identifier, as the official
/// connector does, gives each ETK, the default one included; an empty ApplicationID
/// (`applicationIdentifier=` in REST) gives exactly the default one.
async fn default_etk_beside_application_etks(w: World) {
    let x = extra();
    w.register(&x.default.etk);
    let (app_a, app_b) = (&common::pki().app_a.etk, &w.app_b.etk);
    let mut c = w.connect(None).await;

    let r = ask(&mut c, "CBE", "0406798006", None).await;
    let EtkResult::MatchingEtk(matching) = r.result else {
        panic!("{:?}", r.result)
    };
    let mut apps: Vec<_> = matching
        .iter()
        .map(|m| m.identifiers[0].application_id.clone())
        .collect();
    apps.sort();
    assert_eq!(
        apps,
        [Some("".into()), Some("APP-A".into()), Some("APP-B".into())]
    );
    let mut found = Vec::new();
    for m in &matching {
        let first = &m.identifiers[0];
        let r = ask(
            &mut c,
            &first.id_type,
            &first.value,
            first.application_id.as_deref(),
        )
        .await;
        let EtkResult::Etk(etk) = r.result else {
            panic!("{first:?}: {:?}", r.result)
        };
        found.push(etk);
    }
    found.sort();
    let mut expected = vec![x.default.etk.clone(), app_a.clone(), app_b.clone()];
    expected.sort();
    assert_eq!(found, expected, "every ETK reachable from its entry");

    // The empty ApplicationID on its own, written by hand as another client would.
    let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<GetEtkRequest xmlns="urn:be:fgov:ehealth:etkdepot:1_0:protocol"><SearchCriteria>
<Identifier><Type>CBE</Type><Value>406798006</Value><ApplicationID/></Identifier>
</SearchCriteria></GetEtkRequest></s:Body></s:Envelope>"#;
    let a = c.soap("/EtkDepot/v1", body.to_vec()).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let r = GetEtkResponse::parse(&a.body).unwrap();
    assert_eq!(r.result, EtkResult::Etk(x.default.etk.clone()));
    // A holder without such an ETK: not found.
    let r = ask(&mut c, "CBE", "0809394427", Some("")).await;
    assert!(
        matches!(r.result, EtkResult::Errors(ref e) if e[0].code == "ETK_NOT_FOUND"),
        "{:?}",
        r.result
    );

    // REST: the same rule.
    let a = c
        .get("/etee/v1/etks?identifier=0406798006&type=CBE")
        .await
        .unwrap();
    let list = EtkJson::parse_list(&a.body).unwrap();
    assert_eq!(list.len(), 3);
    let default = list
        .iter()
        .find(|e| e.etk == x.default.etk)
        .expect("the default ETK is listed");
    assert_eq!(
        default.identifiers[0].application_identifier.as_deref(),
        Some("")
    );
    let a = c
        .get("/etee/v1/etks?identifier=0406798006&type=CBE&applicationIdentifier=")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let list = EtkJson::parse_list(&a.body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].etk, x.default.etk);
    let a = c
        .get("/etee/v1/etks?identifier=0809394427&type=CBE&applicationIdentifier=")
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    w.stop().await;
}

/// A natural person's ETK (holder SSIN) registered also under a doctor's NIHII11 and NIHII
/// (`etee platform etk register --also`, values zero-padded as lookups pad them) is found,
/// by SOAP and REST, under each of them and under the SSIN. Refused: extra identifiers
/// for an institution's ETK, of another type than NIHII/NIHII11, or that already find
/// another holder's ETK; and new extra identifiers for an ETK already registered.
async fn a_persons_etk_is_found_by_a_doctors_number(w: World) {
    use etee_platform::etkdepot::{register_with_extra, RegisterError};
    let pki = &common::pki().pki;
    let person = |ssin: &str| {
        pki.institution(&etee_testpki::InstitutionSpec::new(
            "SSIN",
            ssin,
            "Dr Person",
        ))
        .unwrap()
    };
    let (dirk, other) = (person("85010112345"), person("85010154321"));
    let also = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_string()))
            .collect()
    };
    let now = etee_platform::unix_now();
    let register = |etk: &[u8], pairs: &[(&str, &str)]| {
        w.store(|s| register_with_extra(s, etk, &w.anchors, now, &also(pairs)))
    };
    let registered = register(
        &dirk.etk,
        &[("nihii11", "9876543210"), ("NIHII", "9876543")],
    )
    .unwrap();
    let extra: Vec<_> = registered
        .extra
        .iter()
        .map(|i| format!("{}={}", i.id_type, i.value))
        .collect();
    assert_eq!(extra, ["NIHII11=09876543210", "NIHII=09876543"]);

    let mut c = w.connect(None).await;
    for (id_type, value) in [
        ("NIHII11", "09876543210"),
        ("NIHII11", "9876543210"),
        ("NIHII", "9876543"),
        ("SSIN", "85010112345"),
    ] {
        let r = ask(&mut c, id_type, value, None).await;
        assert_eq!(
            r.result,
            EtkResult::Etk(dirk.etk.clone()),
            "{id_type}={value}"
        );
        let a = c
            .get(&format!("/etee/v1/etks?identifier={value}&type={id_type}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{id_type}={value}");
        let list = EtkJson::parse_list(&a.body).unwrap();
        assert_eq!(list.len(), 1, "{id_type}={value}");
        assert_eq!(list[0].etk, dirk.etk, "{id_type}={value}");
        let ids: Vec<_> = list[0]
            .identifiers
            .iter()
            .map(|i| i.id_type.as_str())
            .collect();
        assert_eq!(ids, ["SSIN", "NIHII11", "NIHII"], "{id_type}={value}");
    }

    // Refused, and nothing stored for them.
    let refused = |etk: &[u8], pairs: &[(&str, &str)], why: &str| match register(etk, pairs) {
        Err(RegisterError::Extra(e)) => assert!(e.contains(why), "{pairs:?}: {e}"),
        other => panic!("{pairs:?}: {other:?}"),
    };
    refused(&w.bob.etk, &[("NIHII", "11111111")], "natural person");
    refused(&other.etk, &[("CBE", "0406798006")], "NIHII or NIHII11");
    refused(
        &other.etk,
        &[("NIHII-PHARMACY", "11111111")],
        "NIHII or NIHII11",
    );
    refused(&other.etk, &[("NIHII11", "9876543210")], "another holder");
    refused(&other.etk, &[("NIHII11", "10203040506")], "another holder");
    refused(&other.etk, &[("NIHII11", "1020304050x")], "not all digits");
    let r = ask(&mut c, "SSIN", "85010154321", None).await;
    assert!(matches!(r.result, EtkResult::Errors(_)), "{:?}", r.result);
    // Registered again: as before, the same extra identifiers or none (what is stored is
    // answered); new ones are refused, as the store keeps an ETK's identifiers.
    for pairs in [&[("NIHII11", "09876543210")][..], &[]] {
        let again = register(&dirk.etk, pairs).unwrap();
        assert_eq!(again.record.identifiers, registered.record.identifiers);
    }
    assert!(matches!(
        register(&dirk.etk, &[("NIHII11", "11111111111")]),
        Err(RegisterError::AlreadyRegistered(_))
    ));
    let r = ask(&mut c, "NIHII11", "11111111111", None).await;
    assert!(matches!(r.result, EtkResult::Errors(_)), "{:?}", r.result);
    w.stop().await;
}

/// An answer in a few words for a failed assertion: an ETK by the start of its SHA-256
/// (its bytes would fill the screen).
fn summary(result: &EtkResult) -> String {
    match result {
        EtkResult::Etk(der) => format!("ETK {}", hex::encode(&openssl::sha::sha256(der)[..8])),
        other => format!("{other:?}"),
    }
}

/// A doctor's person ETK registered with `--also NIHII11=…` and its renewal registered
/// without it are one holder (the DN's SSIN; extra identifiers only find): a lookup by the
/// SSIN answers the renewal alone (`ETK`, REST a list of one), not both as `MatchingEtk`,
/// which the official Java connector fails on and the .NET client throws at.
async fn a_renewal_without_extra_identifiers_replaces_the_etk(w: World) {
    use etee_testpki::{InstitutionSpec, Validity};
    let pki = &common::pki().pki;
    let now = etee_platform::unix_now();
    let issued = |not_before: i64| {
        pki.institution(
            &InstitutionSpec::new("SSIN", "85010167890", "Dr Renewed").with_etk_validity(
                Validity {
                    not_before,
                    not_after: now + 365 * 86_400,
                },
            ),
        )
        .unwrap()
    };
    let (old, renewed) = (issued(now - 20 * 3600), issued(now - 3600));
    let also = [("NIHII11".to_owned(), "10987654321".to_owned())];
    w.store(|s| etee_platform::etkdepot::register_with_extra(s, &old.etk, &w.anchors, now, &also))
        .unwrap();
    w.register(&renewed.etk);

    let mut c = w.connect(None).await;
    let r = ask(&mut c, "SSIN", "85010167890", None).await;
    assert!(
        r.result == EtkResult::Etk(renewed.etk.clone()),
        "{}",
        summary(&r.result)
    );
    let a = c
        .get("/etee/v1/etks?identifier=85010167890&type=SSIN")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let list = EtkJson::parse_list(&a.body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].etk, renewed.etk);
    // The renewal was not published under the NIHII11: that number still finds the old
    // ETK, the one published under it.
    let r = ask(&mut c, "NIHII11", "10987654321", None).await;
    assert!(
        r.result == EtkResult::Etk(old.etk.clone()),
        "{}",
        summary(&r.result)
    );
    w.stop().await;
}

/// An ETK is valid while both its certificates are (the official check refuses an expired
/// authentication certificate, ETK_AUTHENTICATION_CERT_EXPIRED): one whose authentication
/// certificate ended before its encryption certificate is answered until that end, then
/// neither by SOAP (ETK_NOT_FOUND) nor by REST or JWKS (404).
async fn an_etk_ends_with_its_authentication_certificate(w: World) {
    use etee_testpki::{InstitutionSpec, Validity};
    let now = etee_platform::unix_now();
    let inst = common::pki()
        .pki
        .institution(
            &InstitutionSpec::new("NIHII-PHARMACY", "27150299", "Short Auth")
                .with_auth_validity(Validity {
                    not_before: now - 20 * 3600,
                    not_after: now - 60,
                })
                .with_etk_validity(Validity {
                    not_before: now - 10 * 3600,
                    not_after: now + 365 * 86_400,
                }),
        )
        .unwrap();
    // Registered while both were valid.
    let then = now - 2 * 3600;
    w.store(|s| etee_platform::etkdepot::register(s, &inst.etk, &w.anchors, then))
        .unwrap();
    let criteria = [Identifier::new("NIHII-PHARMACY", "27150299", None)];
    let found = w
        .store(|s| etee_platform::etkdepot::lookup(s, &criteria, then))
        .unwrap();
    assert_eq!(found.len(), 1, "answered before the end");
    assert_eq!(found[0].etk, inst.etk);
    // The REST form gives the window it is answered in: from the encryption certificate's
    // start to the authentication certificate's end.
    let json = etee_platform::etkdepot::etks_json(&found);
    assert_eq!(
        (json[0].not_before, json[0].not_after),
        (now - 10 * 3600, now - 60)
    );
    assert_eq!(
        etee_platform::etkdepot::answered_window(&found[0]),
        Some((now - 10 * 3600, now - 60)),
        "what `etee platform etk find` shows"
    );

    let mut c = w.connect(None).await;
    let r = ask(&mut c, "NIHII-PHARMACY", "27150299", None).await;
    assert!(
        matches!(r.result, EtkResult::Errors(ref e) if e[0].code == "ETK_NOT_FOUND"),
        "{}",
        summary(&r.result)
    );
    for path in [
        "/etee/v1/etks?identifier=27150299&type=NIHII-PHARMACY",
        "/etee/v1/pubKeys/cacerts/jwks?identifier=27150299&type=NIHII-PHARMACY",
    ] {
        let a = c.get(path).await.unwrap();
        assert_eq!(
            a.status,
            404,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    w.stop().await;
}

/// SOAP types are looked up by their canonical name (any case; `HUB` is `EHP`), as REST
/// already did; a value longer than its type is cut as the official connector cuts it.
async fn identifier_types_and_values_are_normalised(w: World) {
    let x = extra();
    w.register(&x.ehp.etk);
    w.register(&x.hub.etk);
    let mut c = w.connect(None).await;

    let r = ask(&mut c, "cbe", "809394427", Some("KGSS")).await;
    assert_eq!(r.result, EtkResult::Etk(w.kgss.etk.clone()));
    let r = ask(&mut c, "nihii-pharmacy", PHARMACY, None).await;
    assert_eq!(r.result, EtkResult::Etk(w.bob.etk.clone()));
    // HUB is EHP: an EHP holder found as HUB, and a certificate saying HUB found as EHP.
    let r = ask(&mut c, "HUB", "1990001916", None).await;
    assert_eq!(r.result, EtkResult::Etk(x.ehp.etk.clone()));
    let r = ask(&mut c, "hub", "1990001916", None).await;
    assert_eq!(r.result, EtkResult::Etk(x.ehp.etk.clone()));
    let r = ask(&mut c, "EHP", "1990001917", None).await;
    assert_eq!(r.result, EtkResult::Etk(x.hub.etk.clone()));
    let r = ask(&mut c, "HUB", "1990001917", None).await;
    assert_eq!(r.result, EtkResult::Etk(x.hub.etk.clone()));
    // Too long: the first 8 digits (the connector's substring(0, 8)).
    let r = ask(&mut c, "NIHII-PHARMACY", &format!("{PHARMACY}9"), None).await;
    assert_eq!(r.result, EtkResult::Etk(w.bob.etk.clone()));
    // A DN whose value is too long for its type is registered as lookups format it: its
    // own value finds it, and so do its first 8 digits.
    w.register(&x.long_nihii.etk);
    for value in ["10203040506", "10203040"] {
        let r = ask(&mut c, "NIHII", value, None).await;
        assert_eq!(
            r.result,
            EtkResult::Etk(x.long_nihii.etk.clone()),
            "{value}"
        );
        let a = c
            .get(&format!("/etee/v1/etks?identifier={value}&type=nihii"))
            .await
            .unwrap();
        assert_eq!(
            a.status,
            200,
            "{value}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let list = EtkJson::parse_list(&a.body).unwrap();
        assert_eq!(list.len(), 1, "{value}");
        assert_eq!(list[0].identifiers[0].value, "10203040", "{value}");
    }

    for query in [
        "identifier=1990001916&type=hub",
        "identifier=1990001916&type=EHP",
    ] {
        let a = c.get(&format!("/etee/v1/etks?{query}")).await.unwrap();
        assert_eq!(a.status, 200, "{query}");
        let list = EtkJson::parse_list(&a.body).unwrap();
        assert_eq!(list.len(), 1, "{query}");
        assert_eq!(list[0].etk, x.ehp.etk, "{query}");
    }
    w.stop().await;
}

/// With every turn of blocking work taken (by slow requests, or by abandoned ones whose
/// work still runs: here the test holds the one turn), lookups wait `queue_timeout` and
/// are refused retryably — REST 503 with `Retry-After`, SOAP `SOA-02001` — and are served
/// again on the same connection once the turn is free.
async fn a_busy_platform_sheds_lookups_retryably(mut w: World) {
    let platform = w.restart_with_one_turn().await;
    let mut c = w.connect(None).await;
    let path = format!("/etee/v1/etks?identifier={PHARMACY}&type=nihii-pharmacy");
    let held = platform.work.permit().await.unwrap();
    let asked = std::time::Instant::now();
    let a = c.get(&path).await.unwrap();
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        asked.elapsed() >= Duration::from_millis(100),
        "refused before the queue timeout"
    );
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(
        Problem::parse(&a.body).unwrap().title.as_deref(),
        Some("Service busy")
    );
    let a = c
        .soap(
            "/EtkDepot/v1",
            get_etk(&[Identifier::new("NIHII-PHARMACY", PHARMACY, None)]),
        )
        .await
        .unwrap();
    assert_eq!(fault_code(&a.body), "SOA-02001");
    // Busy is still ready (a load balancer must not pull every saturated instance), and
    // the probe takes no turn.
    let ready = |a: &etee_platform::client::Answer| {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        (
            a.status,
            v["status"].as_str().unwrap_or("").to_owned(),
            v["busy"].clone(),
        )
    };
    assert_eq!(
        ready(&c.get("/ready").await.unwrap()),
        (200, "ready".into(), true.into())
    );
    drop(held);
    let a = c.get(&path).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(EtkJson::parse_list(&a.body).unwrap()[0].etk, w.bob.etk);
    assert_eq!(platform.work.in_use(), 0);
    assert_eq!(
        ready(&c.get("/ready").await.unwrap()),
        (200, "ready".into(), false.into())
    );

    // What the operator sees: each answer by service and status, the refusals.
    w.metrics_have(&[
        "etee_platform_requests_total{service=\"etkdepot\",status=\"200\"} 1\n",
        "etee_platform_requests_total{service=\"etkdepot\",status=\"503\"} 1\n",
        // The SOAP fault (HTTP 500, told apart).
        "etee_platform_requests_total{service=\"etkdepot\",status=\"soap-fault\"} 1\n",
        "etee_platform_requests_total{service=\"platform\",status=\"200\"} 2\n",
        "etee_platform_request_seconds_count{service=\"etkdepot\"} 3\n",
        "etee_platform_work_refused_total 2\n",
        "etee_platform_work_limit 1\n",
        "etee_platform_work_in_use 0\n",
    ])
    .await;

    // A request whose time runs out while it waits for a turn: the request arrived whole,
    // the platform was slow: 504 (it was 408, which blamed the caller), counted as
    // abandoned.
    common::drop_platform(platform).await;
    let platform = w
        .restart_with(etee_platform::config::Limits {
            max_concurrent_work: 1,
            queue_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .await;
    let held = platform.work.permit().await.unwrap();
    let a = w.connect(None).await.get(&path).await.unwrap();
    assert_eq!(a.status, 504, "{}", String::from_utf8_lossy(&a.body));
    let p = Problem::parse(&a.body).unwrap();
    assert_eq!(p.title.as_deref(), Some("Work timeout"));
    drop(held);
    w.metrics_have(&[
        "etee_platform_requests_total{service=\"etkdepot\",status=\"abandoned\"} 1\n",
    ])
    .await;
    common::drop_platform(platform).await;
    w.stop().await;
}

/// A SOAP body is parsed in the work pool, not on the async workers that serve every
/// connection: with the one turn of work held, a SOAP request waits for it and is refused
/// as busy (SOA-02001) however it is written, while `/health` answers; with the turn back,
/// a body over the namespace limits gets its fault (SOA-03001) and a normal one its ETK.
/// KGSS's SOAP requests are read the same way (the restarted platform has no KGSS: it is
/// asked first).
async fn soap_is_parsed_in_the_work_pool(mut w: World) {
    let over_the_limit = |a: &etee_platform::client::Answer, path: &str| {
        assert_eq!(fault_code(&a.body), "SOA-03001", "{path}");
        let detail = Fault::parse(&a.body).unwrap().detail.unwrap();
        assert!(
            detail.messages[0]
                .text
                .contains("namespace declarations on one element exceeds the limit of 16"),
            "{path}: {:?}",
            detail.messages
        );
    };
    let mut c = w.connect(None).await;
    let a = c.soap("/Kgss/v1", many_namespaces(17)).await.unwrap();
    over_the_limit(&a, "/Kgss/v1");

    let platform = w.restart_with_one_turn().await;
    let mut c = w.connect(None).await;
    let held = platform.work.permit().await.unwrap();
    let a = c.soap("/EtkDepot/v1", many_namespaces(17)).await.unwrap();
    assert_eq!(fault_code(&a.body), "SOA-02001");
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    drop(held);
    let a = c.soap("/EtkDepot/v1", many_namespaces(17)).await.unwrap();
    over_the_limit(&a, "/EtkDepot/v1");
    let a = c.soap("/EtkDepot/v1", many_namespaces(3)).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let r = GetEtkResponse::parse(&a.body).unwrap();
    assert_eq!(r.result, EtkResult::Etk(w.bob.etk.clone()));
    common::drop_platform(platform).await;
    w.stop().await;
}

/// A caller (here: anonymous, known by its address) with `max_requests_per_caller` (1)
/// requests under way — a SOAP request whose body is still coming — gets its next one
/// refused retryably after `queue_timeout`, while another caller (a client certificate)
/// is served; once its first request ends, it is served again.
async fn one_caller_cannot_take_every_turn(mut w: World) {
    let platform = w
        .restart_with(etee_platform::config::Limits {
            max_requests_per_caller: Some(1),
            queue_timeout: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
    // The work limit (64 by default) never exceeds the store's own bound: with
    // PostgreSQL, its pool of connections less those of /ready.
    let expected_work_limit = match w.backend {
        common::Backend::Embedded => 64,
        // Connections of the pool are left to /ready's checks.
        common::Backend::Postgres(_) => {
            etee_store::DEFAULT_POOL_SIZE - etee_platform::routes::READY_CHECKS
        }
    };
    assert_eq!(platform.work.max(), expected_work_limit);
    let body = get_etk(&[Identifier::new("NIHII-PHARMACY", PHARMACY, None)]);
    let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut slow = tokio_rustls::TlsConnector::from(w.client_config(None))
        .connect(name, tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /EtkDepot/v1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: text/xml\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    slow.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while platform.shares.callers() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let path = format!("/etee/v1/etks?identifier={PHARMACY}&type=nihii-pharmacy");
    let a = w.connect(None).await.get(&path).await.unwrap();
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    let a = w.connect(Some(&w.alice)).await.get(&path).await.unwrap();
    assert_eq!(a.status, 200, "another caller is served");

    slow.write_all(&body[10..]).await.unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.ok();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let a = w.connect(None).await.get(&path).await.unwrap();
    assert_eq!(a.status, 200, "served again once its request ended");
    assert_eq!(platform.shares.refused(), 1);
    w.metrics_have(&[
        "etee_platform_caller_refused_total 1\n",
        "etee_platform_callers 0\n",
        "etee_platform_requests_total{service=\"etkdepot\",status=\"503\"} 1\n",
    ])
    .await;
    common::drop_platform(platform).await;
    w.stop().await;
}

/// The statuses of `n` `GET /ready` sent at once, each on a connection of its own.
async fn ready_at_once(w: &World, n: usize) -> Vec<u16> {
    let mut probes = Vec::new();
    for _ in 0..n {
        let mut c = w.connect(None).await;
        probes.push(tokio::spawn(async move {
            c.get("/ready").await.unwrap().status
        }));
    }
    let mut statuses = Vec::new();
    for p in probes {
        statuses.push(p.await.unwrap());
    }
    statuses
}

/// `GET /ready` says whether the store answers: ready on both stores; with PostgreSQL, a
/// store that fails its read (here its replay table renamed away with `psql`) makes the
/// platform unready (503 `store-unavailable`) until it is back.
async fn readiness_follows_the_store(w: World) {
    let mut c = w.connect(None).await;
    let ready = |a: etee_platform::client::Answer| {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        (
            a.status,
            v["status"].as_str().unwrap_or("").to_owned(),
            v["store"].clone(),
        )
    };
    let store = w.platform.store.backend_name();
    assert_eq!(
        ready(c.get("/ready").await.unwrap()),
        (200, "ready".into(), store.into())
    );
    // Probes at once (several load balancers) all get the store's answer.
    let reuse = etee_platform::routes::READY_REUSE + Duration::from_millis(100);
    tokio::time::sleep(reuse).await;
    assert_eq!(ready_at_once(&w, 8).await, [200; 8]);
    if let common::Backend::Postgres(db) = &w.backend {
        let url = db.url().to_owned();
        let psql = move |sql: &'static str| {
            let url = url.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    std::process::Command::new("psql")
                        .arg(&url)
                        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
                        .output()
                })
                .await
                .unwrap()
            }
        };
        match psql("SELECT 1").await {
            Ok(out) if out.status.success() => {}
            other => {
                etee_testpki::skip::skip_postgres(&format!(
                    "the unready half: psql is not usable here ({other:?})"
                ));
                w.stop().await;
                return;
            }
        }
        // A slow store (its replay table locked for 0.6 s): probes at once wait for the
        // one check under way and all get its answer, ready.
        tokio::time::sleep(reuse).await;
        let lock = tokio::spawn(psql(
            "BEGIN; LOCK TABLE seen_request IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_sleep(0.6); COMMIT;",
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = std::time::Instant::now();
        assert_eq!(
            ready_at_once(&w, 8).await,
            [200; 8],
            "probes while the store is slow"
        );
        assert!(
            asked.elapsed() >= Duration::from_millis(200),
            "the probes did not wait for the slow store ({:?})",
            asked.elapsed()
        );
        let succeeded = |out: std::io::Result<std::process::Output>| {
            let out = out.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        succeeded(lock.await.unwrap());
        succeeded(psql("ALTER TABLE seen_request RENAME TO seen_request_away").await);
        // A check's result answers for READY_REUSE: ask after it.
        tokio::time::sleep(reuse).await;
        assert_eq!(
            ready(c.get("/ready").await.unwrap()),
            (503, "store-unavailable".into(), store.into())
        );
        succeeded(psql("ALTER TABLE seen_request_away RENAME TO seen_request").await);
        tokio::time::sleep(reuse).await;
        assert_eq!(
            ready(c.get("/ready").await.unwrap()),
            (200, "ready".into(), store.into())
        );
    }
    w.stop().await;
}

/// `status_access` keeps `/ready` and `/metrics` to loopback clients (here every client
/// is on loopback: served) or to clients with a certificate (anonymous: 403); `/health`
/// answers anyone.
async fn the_status_can_be_kept_to_the_host_or_to_certified_callers(mut w: World) {
    use etee_platform::config::StatusAccess;
    let status = |a: etee_platform::client::Answer| a.status;
    let platform = w
        .restart_configured(|c| c.status_access = StatusAccess::Loopback)
        .await;
    let mut anonymous = w.connect(None).await;
    assert_eq!(status(anonymous.get("/metrics").await.unwrap()), 200);
    assert_eq!(status(anonymous.get("/ready").await.unwrap()), 200);
    common::drop_platform(platform).await;

    let platform = w
        .restart_configured(|c| c.status_access = StatusAccess::Certificate)
        .await;
    let mut anonymous = w.connect(None).await;
    let a = anonymous.get("/metrics").await.unwrap();
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(status(anonymous.get("/ready").await.unwrap()), 403);
    assert_eq!(status(anonymous.get("/health").await.unwrap()), 200);
    let mut alice = w.connect(Some(&w.alice)).await;
    assert_eq!(status(alice.get("/metrics").await.unwrap()), 200);
    assert_eq!(status(alice.get("/ready").await.unwrap()), 200);
    common::drop_platform(platform).await;
    w.stop().await;
}

/// A request whose `Content-Length` is over `max_body_bytes` (64 KiB here) is answered at
/// once, before any of its body is sent: the SOAP services with the fault of an oversized
/// message, REST with 413; the connection is then closed (the body is not read).
async fn a_body_declared_too_large_is_refused_before_it_comes(w: World) {
    let cases = [
        ("/EtkDepot/v1", None),
        ("/Kgss/v1", None),
        ("/etee/v1/kgss/keys", Some("KGSS_INVALID_REQUEST")),
        ("/etee/v1/kgss/keys/retrieve", Some("KGSS_INVALID_REQUEST")),
        ("/etee/v1/keydepot/keys", Some("KEYDEPOT_INVALID_REQUEST")),
    ];
    for (path, title) in cases {
        let a = w
            .raw_head(&format!(
                "POST {path} HTTP/1.1\r\nContent-Type: text/xml\r\nContent-Length: 2000000"
            ))
            .await;
        // The request timeout is 30 s: an answer this soon did not wait for the body.
        assert!(a.elapsed < Duration::from_secs(5), "{path}: {a:?}");
        assert_eq!(a.connection.as_deref(), Some("close"), "{path}");
        match title {
            None => {
                assert_eq!(a.status, 500, "{path}");
                assert!(a.content_type.starts_with("text/xml"), "{path}: {a:?}");
                assert_eq!(fault_code(&a.body), "SOA-03001", "{path}");
            }
            Some(title) => {
                assert_eq!(a.status, 413, "{path}");
                assert_eq!(a.content_type, "application/problem+json", "{path}");
                let p = Problem::parse(&a.body).unwrap();
                assert_eq!(p.title.as_deref(), Some(title), "{path}");
                assert_eq!(p.status, Some(413), "{path}");
            }
        }
    }
    // A client waiting for `100 Continue` is not invited to send the body.
    let a = w
        .raw_head(
            "POST /etee/v1/kgss/keys HTTP/1.1\r\nContent-Length: 2000000\r\nExpect: 100-continue",
        )
        .await;
    assert_eq!(a.status, 413, "{a:?}");
    // A declared length within the limit is served as before.
    let mut c = w.connect(None).await;
    ask(&mut c, "NIHII-PHARMACY", PHARMACY, None).await;
    w.metrics_have(&[
        "etee_platform_requests_total{service=\"kgss\",status=\"413\"} 3\n",
        "etee_platform_requests_total{service=\"keydepot\",status=\"413\"} 1\n",
    ])
    .await;
    w.stop().await;
}
