//! The HTTP layer against fake servers on loopback: retries on a retryable SOA fault and on
//! 503 (bounded), none on a non-retryable fault; a KGSS request resealed for each attempt
//! and served by the real platform behind a flaky proxy; kept-alive connections reused;
//! timeouts (mute server, silent TLS server) within their bound; refused connections;
//! oversized answers; a busy platform's `Retry-After` honoured.

#[path = "../../platform/tests/common/mod.rs"]
mod common;
mod support;

use common::{Backend, World};
use etee_protocol::http::{HttpConfig, Request};
use etee_protocol::{EtkAnswer, EtkDepotClient, Flavour, KgssClient, ProtocolError};
use etee_services::etkdepot::{EtkJson, GetEtkResponse, Identifier};
use etee_services::soap::{Fault, SoaCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{fake_server, Answer};

fn fault(code: SoaCode) -> Answer {
    (
        500,
        "text/xml; charset=utf-8".into(),
        Fault::from_code(code, None).to_xml(),
    )
}

fn bob() -> Identifier {
    Identifier::new("NIHII-PHARMACY", common::PHARMACY, None)
}

fn bob_etk() -> Vec<u8> {
    common::pki().bob.etk.clone()
}

#[tokio::test]
async fn a_retryable_fault_is_retried_once_then_served() {
    let fake = fake_server(Arc::new(|n, _| {
        Box::pin(async move {
            if n == 0 {
                fault(SoaCode::ServiceUnavailable)
            } else {
                let ok = GetEtkResponse::found(vec![bob()], bob_etk()).to_xml();
                (200, "text/xml".into(), ok)
            }
        })
    }))
    .await;
    let depot = EtkDepotClient::new(
        support::http(fake.addr, None, support::quick()),
        Flavour::Soap,
    );
    assert_eq!(
        depot.get_etk(&bob()).await.unwrap(),
        EtkAnswer::Found(bob_etk())
    );
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2, "one retry");
}

#[tokio::test]
async fn a_non_retryable_fault_is_not_retried() {
    let fake = fake_server(Arc::new(|_, _| {
        Box::pin(async { fault(SoaCode::MalformedMessage) })
    }))
    .await;
    let depot = EtkDepotClient::new(
        support::http(fake.addr, None, support::quick()),
        Flavour::Soap,
    );
    match depot.get_etk(&bob()).await {
        Err(ProtocolError::SoapFault { code, .. }) => assert_eq!(code, "SOA-03001"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn service_unavailable_is_retried_up_to_the_bound() {
    let handler: support::Handler = Arc::new(|n, _| {
        Box::pin(async move {
            if n < 2 {
                (503, "text/plain".into(), b"busy".to_vec())
            } else {
                let etk = etee_formats::etk::Etk::parse(&bob_etk()).unwrap();
                let list = EtkJson::list_to_json(&[EtkJson::from_etk(&etk)]);
                (200, "application/json".into(), list)
            }
        })
    });
    // Two retries: the third attempt is served.
    let fake = fake_server(handler.clone()).await;
    let depot = EtkDepotClient::new(
        support::http(fake.addr, None, support::quick()),
        Flavour::Rest,
    );
    assert_eq!(
        depot.get_etk(&bob()).await.unwrap(),
        EtkAnswer::Found(bob_etk())
    );
    assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        fake.connections.load(Ordering::SeqCst),
        1,
        "the connection is kept alive across attempts"
    );

    // One retry only: the last answer, a 503, is the error.
    let fake = fake_server(handler).await;
    let config = HttpConfig {
        retries: 1,
        ..support::quick()
    };
    let depot = EtkDepotClient::new(support::http(fake.addr, None, config), Flavour::Rest);
    assert!(matches!(
        depot.get_etk(&bob()).await,
        Err(ProtocolError::Http {
            status: 503,
            problem: None
        })
    ));
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kgss_requests_are_sealed_afresh_for_each_attempt() {
    let w = World::new("protocol-retry-kgss", Backend::Embedded).await;
    // A proxy answering SOA-00001 first, then passing requests to the platform.
    let (addr, tls) = (w.addr, w.client_config(None));
    let fake = fake_server(Arc::new(move |n, body| {
        let tls = tls.clone();
        Box::pin(async move {
            if n == 0 {
                return fault(SoaCode::ServiceError);
            }
            let mut c = etee_platform::client::Connection::open(addr, "localhost", tls)
                .await
                .unwrap();
            let a = c.soap("/Kgss/v1", body.to_vec()).await.unwrap();
            (a.status, a.content_type, a.body.to_vec())
        })
    }))
    .await;
    let kgss_etk = etee_formats::etk::Etk::parse(&w.kgss.etk).unwrap();
    let c = KgssClient::new(
        Flavour::Soap,
        Some(support::http(fake.addr, None, support::quick())),
        None,
    )
    .unwrap();
    let alice = support::caller(&w, &w.alice);
    let new = c
        .new_key(
            &alice,
            &kgss_etk,
            vec![etee_services::kgss::vocabulary::recognised_pharmacy()],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(new.key.len(), 16);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
    let bodies = fake.bodies.lock().unwrap().clone();
    assert_ne!(bodies[0], bodies[1], "each attempt is sealed afresh");
    w.stop().await;
}

#[tokio::test]
async fn connections_are_reused() {
    let fake = fake_server(Arc::new(|_, _| {
        Box::pin(async { (200, "text/plain".into(), b"ok".to_vec()) })
    }))
    .await;
    let http = support::http(fake.addr, None, support::quick());
    for _ in 0..3 {
        let r = http.send(Request::get("/health")).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
    assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_mute_server_times_out_at_connect() {
    let addr = support::mute_server().await;
    let config = HttpConfig {
        connect_timeout: Duration::from_millis(300),
        timeout: Duration::from_millis(300),
        retries: 0,
        ..support::quick()
    };
    let http = support::http(addr, None, config);
    let start = Instant::now();
    match http.send(Request::get("/")).await {
        Err(ProtocolError::Timeout { what, .. }) => assert_eq!(what, "connect"),
        other => panic!("{other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_silent_server_times_out_and_is_not_retried() {
    let addr = support::silent_tls_server().await;
    let config = HttpConfig {
        timeout: Duration::from_millis(400),
        retries: 2,
        ..support::quick()
    };
    let http = support::http(addr, None, config);
    let start = Instant::now();
    match http.send(Request::get("/")).await {
        Err(ProtocolError::Timeout { what, after }) => {
            assert_eq!((what, after), ("request", Duration::from_millis(400)))
        }
        other => panic!("{other:?}"),
    }
    // One attempt: the request may have been served, so it is not sent again.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let http = support::http(port, None, support::quick());
    let start = Instant::now();
    assert!(matches!(
        http.send(Request::get("/")).await,
        Err(ProtocolError::Connect { .. })
    ));
    // Two retries after 20 ms and 40 ms.
    assert!(start.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn answers_are_bounded() {
    let fake = fake_server(Arc::new(|_, _| {
        Box::pin(async { (200, "application/json".into(), vec![b' '; 64 * 1024]) })
    }))
    .await;
    let config = HttpConfig {
        max_body: 16 * 1024,
        ..support::quick()
    };
    let depot = EtkDepotClient::new(support::http(fake.addr, None, config), Flavour::Rest);
    assert!(matches!(
        depot.get_etk(&bob()).await,
        Err(ProtocolError::TooLarge { limit: 16384 })
    ));
}

#[tokio::test]
async fn hostile_answers_are_errors() {
    let fake = fake_server(Arc::new(|n, _| {
        Box::pin(async move {
            match n {
                0 => (
                    200,
                    "text/xml".into(),
                    b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>".to_vec(),
                ),
                1 => (200, "application/json".into(), b"[{\"etk\": 5}]".to_vec()),
                _ => (200, "text/xml".into(), vec![0xff; 100]),
            }
        })
    }))
    .await;
    let http = support::http(fake.addr, None, support::quick());
    let soap = EtkDepotClient::new(http.clone(), Flavour::Soap);
    let rest = EtkDepotClient::new(http, Flavour::Rest);
    assert!(matches!(
        soap.get_etk(&bob()).await,
        Err(ProtocolError::Malformed(_))
    ));
    assert!(matches!(
        rest.get_etk(&bob()).await,
        Err(ProtocolError::Malformed(_))
    ));
    assert!(matches!(
        soap.get_etk(&bob()).await,
        Err(ProtocolError::Malformed(_))
    ));
}

/// The real platform, busy (its one turn of work held for 800 ms): the client's first
/// lookup is refused with `Retry-After: 1` (REST 503, then SOAP SOA-02001); the client
/// waits that second (not its 20 ms backoff, after which the platform would still be
/// busy: three quick attempts end within 500 ms) and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_platform_is_asked_again_after_its_retry_after() {
    let mut w = World::new("protocol-retry-after", Backend::Embedded).await;
    let platform = w.restart_with_one_turn().await;
    for (refusals, flavour) in [(1, Flavour::Rest), (2, Flavour::Soap)] {
        let held = platform.work.permit().await.unwrap();
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            drop(held);
        });
        let depot = EtkDepotClient::new(support::http(w.addr, None, support::quick()), flavour);
        assert_eq!(
            depot.get_etk(&bob()).await.unwrap(),
            EtkAnswer::Found(bob_etk())
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{flavour:?} served after {:?}: the Retry-After was not waited for",
            started.elapsed()
        );
        assert_eq!(
            platform.work.refused(),
            refusals,
            "one refusal, then served"
        );
    }
    drop(platform);
    w.stop().await;
}

/// A request that must not be carried out twice (here a KeyDepot deletion) is asked again
/// after a 503 (refused before any work) but not after a gateway's 504, whose outcome is
/// unknown: one request, and an error that says so. A read is asked again after a 504.
#[tokio::test]
async fn a_request_not_to_be_done_twice_is_not_repeated_after_an_unknown_outcome() {
    use etee_protocol::KeyDepotClient;
    use etee_services::keydepot::KeyId;
    let key = KeyId::new(vec![7; 20]).unwrap();
    let first_then_204 = |first: u16| {
        fake_server(Arc::new(move |n, _| {
            Box::pin(async move {
                match n {
                    0 => (first, "text/plain".into(), b"gateway".to_vec()),
                    _ => (204, "text/plain".into(), Vec::new()),
                }
            })
        }))
    };
    let fake = first_then_204(504).await;
    let keydepot = KeyDepotClient::new(support::http(fake.addr, None, support::quick()));
    match keydepot.delete(&key).await {
        Err(e @ ProtocolError::OutcomeUnknown { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with("HTTP 504 after the request was sent"),
                "{text}"
            );
            assert!(
                text.contains("may or may not have been carried out"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1, "not sent again");

    let fake = first_then_204(503).await;
    let keydepot = KeyDepotClient::new(support::http(fake.addr, None, support::quick()));
    keydepot.delete(&key).await.unwrap();
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        2,
        "a refusal is asked again"
    );

    // A read is harmless to repeat: asked again after the 504.
    let fake = first_then_204(504).await;
    let http = support::http(fake.addr, None, support::quick());
    let answer = http.send(Request::get("/anything")).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
}

/// A key provider that takes 1.5 s to sign (a slow or busy HSM).
struct SlowSigner(Arc<dyn etee_formats::keys::PrivateKeyOps>);

impl etee_formats::keys::PrivateKeyOps for SlowSigner {
    fn sign_pss_sha256(
        &self,
        key: &etee_formats::keys::KeyId,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, etee_formats::keys::KeyError> {
        std::thread::sleep(Duration::from_millis(1500));
        self.0.sign_pss_sha256(key, digest)
    }
    fn decrypt_pkcs1v15(
        &self,
        key: &etee_formats::keys::KeyId,
        blob: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, etee_formats::keys::KeyError> {
        self.0.decrypt_pkcs1v15(key, blob)
    }
}

/// The handshake's signature by a slow HSM does not stop the runtime: on a one-worker
/// runtime another task keeps running while it signs (it stalled for the whole signature
/// before), and the exchange then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_hsm_signing_a_handshake_does_not_stall_the_runtime() {
    let w = World::new("protocol-slow-hsm", Backend::Embedded).await;
    let signing = common::keystore_of(&w.alice).authentication().unwrap();
    let identity = etee_protocol::tls::TlsIdentity::new(&etee_formats::keys::SigningKey {
        ops: Arc::new(SlowSigner(signing.ops.clone())),
        ..signing
    })
    .unwrap();
    let http = support::http(w.addr, Some(identity), support::quick());
    let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let started = Instant::now();
    // KeyDepot asks for the client certificate: the handshake signs, in a task on the
    // runtime's one worker (the test's own body runs beside the workers).
    let answer = tokio::spawn(async move {
        http.send(Request::get("/etee/v1/keydepot/keys/AQID"))
            .await
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    ticker.abort();
    assert_eq!(
        answer.status,
        404,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        took >= Duration::from_millis(1500),
        "the handshake signed: {took:?}"
    );
    let ticked = ticks.load(Ordering::SeqCst);
    assert!(
        ticked >= 15,
        "the other task ran {ticked} times in {took:?}"
    );
}
