//! OCSP: the answers a receiver accepts (signed by the issuer or a responder it
//! authorised, about the certificate asked, current), the answers a message carries
//! (revocationValues, used first), and the online client (nonce, cache, back-off), with
//! answers made by the test PKI and a transport in memory. Over a real socket against an
//! independent responder (`openssl ocsp`): tests/tests/ocsp_cli.rs.

mod support;

use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::keys::{KeyId, KeyRing, SignerRef, SigningKey};
use etee_formats::keystore::SoftwareKeys;
use etee_formats::ocsp::{
    self, CertId, OcspError, OcspTransport, Online, Responder, RevocationValues, Said,
    SealingStatus,
};
use etee_formats::revocation::{CertStatus, Revocation, RevocationPolicy, CLOCK_SKEW};
use etee_formats::trust::TrustAnchors;
use etee_formats::verdict::Error as E;
use etee_testpki::{Institution, InstitutionSpec, Issued, OcspAnswer, OcspStatus, TestPki};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const HOUR: i64 = 3600;

struct World {
    now: i64,
    pki: TestPki,
    /// Same root name as `pki`, another key.
    impostor: TestPki,
    responder: Issued,
    unauthorised: Issued,
    alice: Institution,
    bob: Institution,
    ring: KeyRing,
}

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let now = etee_formats::unix_now();
        let pki = TestPki::generate("ocsp").expect("PKI");
        let impostor = TestPki::generate("ocsp").expect("PKI");
        let inst = |id: &str, name: &str| {
            pki.institution(&InstitutionSpec::new("NIHII-HOSPITAL", id, name))
                .expect("institution")
        };
        let (alice, bob) = (inst("71000436", "Alice"), inst("27150201", "Bob"));
        let ring = support::etk_ring(&bob);
        World {
            now,
            responder: pki.ocsp_responder().expect("responder"),
            unauthorised: pki.ocsp_impostor().expect("impostor"),
            pki,
            impostor,
            alice,
            bob,
            ring,
        }
    })
}

fn alice_signer(w: &World) -> SigningKey {
    let mut keys = SoftwareKeys::new();
    keys.insert(KeyId("auth".into()), w.alice.auth.key.clone());
    SigningKey {
        ops: Arc::new(keys),
        key: KeyId("auth".into()),
        signer: SignerRef::Certificate {
            cert: cert(&w.alice.auth.cert),
            chain: vec![cert(&w.pki.root.cert)],
        },
    }
}

/// Alice's message to Bob signed at `signed_at`, carrying `values`.
fn sealed(values: Option<RevocationValues>, signed_at: i64) -> Vec<u8> {
    let w = world();
    let mut out = Vec::new();
    seal(
        &alice_signer(w),
        &[Recipient::Certificate(cert(&w.bob.etk_cert))],
        None,
        &b"ocsp test"[..],
        &mut out,
        &SealOptions {
            signing_time: Some(signed_at),
            revocation_values: values,
        },
    )
    .expect("seal");
    out
}

fn basic(answer: &OcspAnswer<'_>) -> Vec<u8> {
    let w = world();
    w.pki
        .ocsp_basic(&w.alice.auth.cert, answer)
        .expect("answer")
}

fn judge(answer: &OcspAnswer<'_>) -> Result<ocsp::Answer, OcspError> {
    let w = world();
    ocsp::judge(&basic(answer), &w.alice.auth.cert, &w.pki.root.cert, w.now)
}

#[test]
fn answers_signed_by_the_issuer_or_its_responder_are_read() {
    let w = world();
    let good = judge(&OcspAnswer::at(OcspStatus::Good, w.now)).expect("CA-signed answer");
    assert_eq!(good.said, Said::Good);
    assert_eq!(good.status_at(w.now), CertStatus::Good);
    assert_eq!(good.next_update, Some(w.now + HOUR));

    let delegated = OcspAnswer {
        signer: Some(&w.responder),
        ..OcspAnswer::at(OcspStatus::Revoked(w.now - HOUR), w.now)
    };
    let revoked = judge(&delegated).expect("answer of an authorised responder");
    // Checked once, remembered: but not beyond its responder certificate's validity (a
    // year).
    let again = basic(&delegated);
    let issuer = &w.pki.root.cert;
    assert!(ocsp::judge(&again, &w.alice.auth.cert, issuer, w.now).is_ok());
    assert!(matches!(
        ocsp::judge(&again, &w.alice.auth.cert, issuer, w.now + 400 * 86_400),
        Err(OcspError::NotTrusted)
    ));
    assert_eq!(revoked.said, Said::Revoked(Some(w.now - HOUR)));
    assert_eq!(revoked.status_at(w.now), CertStatus::Revoked);
    // A revocation after the evaluation time did not exist then, and vouches for nothing.
    assert_eq!(revoked.status_at(w.now - 2 * HOUR), CertStatus::Unknown);

    let unknown = judge(&OcspAnswer::at(OcspStatus::Unknown, w.now)).unwrap();
    assert_eq!(unknown.status_at(w.now), CertStatus::Unknown);
}

#[test]
fn answers_from_anyone_else_are_refused() {
    let w = world();
    // A certificate of the CA without id-kp-OCSPSigning.
    let unauthorised = OcspAnswer {
        signer: Some(&w.unauthorised),
        ..OcspAnswer::at(OcspStatus::Good, w.now)
    };
    assert!(matches!(judge(&unauthorised), Err(OcspError::NotTrusted)));
    // Another CA under the same name: its own CertID does not name Alice's issuer's key;
    // copying the right CertID into its answer, its signature does not verify.
    let forged = w
        .impostor
        .ocsp_basic(&w.alice.auth.cert, &OcspAnswer::at(OcspStatus::Good, w.now))
        .unwrap();
    assert!(matches!(
        ocsp::judge(&forged, &w.alice.auth.cert, &w.pki.root.cert, w.now),
        Err(OcspError::NotAbout)
    ));
    let serial = w.alice.auth.cert.serial_number().to_bn().unwrap().to_vec();
    let copied_id = w.pki.ocsp_cert_id(&serial).unwrap();
    let forged = w
        .impostor
        .ocsp_basic_for(
            &[(copied_id, OcspStatus::Good)],
            &OcspAnswer::at(OcspStatus::Good, w.now),
        )
        .unwrap();
    assert!(matches!(
        ocsp::judge(&forged, &w.alice.auth.cert, &w.pki.root.cert, w.now),
        Err(OcspError::NotTrusted)
    ));
    // A valid answer about another certificate.
    let about_bob = w
        .pki
        .ocsp_basic(&w.bob.auth.cert, &OcspAnswer::at(OcspStatus::Good, w.now))
        .unwrap();
    assert!(matches!(
        ocsp::judge(&about_bob, &w.alice.auth.cert, &w.pki.root.cert, w.now),
        Err(OcspError::NotAbout)
    ));
    // A damaged signature.
    let mut damaged = basic(&OcspAnswer::at(OcspStatus::Good, w.now));
    let n = damaged.len();
    damaged[n - 5] ^= 1;
    assert!(matches!(
        ocsp::judge(&damaged, &w.alice.auth.cert, &w.pki.root.cert, w.now),
        Err(OcspError::NotTrusted)
    ));
    // Not DER at all, truncated: an error, not a panic.
    let good = basic(&OcspAnswer::at(OcspStatus::Good, w.now));
    for cut in [0, 1, 10, good.len() / 2, good.len() - 1] {
        assert!(ocsp::judge(&good[..cut], &w.alice.auth.cert, &w.pki.root.cert, w.now).is_err());
    }
}

#[test]
fn good_counts_only_while_the_answer_is_current() {
    let w = world();
    let stale = OcspAnswer {
        this_update: w.now - 3 * HOUR,
        next_update: Some(w.now - HOUR),
        produced_at: w.now - 3 * HOUR,
        ..OcspAnswer::at(OcspStatus::Good, w.now)
    };
    assert_eq!(judge(&stale).unwrap().status_at(w.now), CertStatus::Unknown);
    // Without nextUpdate an answer speaks of its thisUpdate, give or take the clock skew.
    let undated = OcspAnswer {
        next_update: None,
        ..OcspAnswer::at(OcspStatus::Good, w.now)
    };
    let a = judge(&undated).unwrap();
    assert_eq!(a.status_at(w.now + CLOCK_SKEW), CertStatus::Good);
    assert_eq!(a.status_at(w.now + CLOCK_SKEW + 1), CertStatus::Unknown);
    // Issued in the future beyond the skew.
    let ahead = OcspAnswer::at(OcspStatus::Good, w.now + CLOCK_SKEW + 60);
    assert_eq!(judge(&ahead).unwrap().status_at(w.now), CertStatus::Unknown);
}

#[test]
fn revocation_values_round_trip_and_travel_in_the_outer_signer_info() {
    let w = world();
    let values = RevocationValues {
        crls: vec![],
        ocsp: vec![basic(&OcspAnswer::at(OcspStatus::Good, w.now))],
    };
    let attr = values.attribute();
    // Attribute { revocationValues OID, SET { RevocationValues } }: the value is the
    // last element; parsing it gives the answers back.
    let value_at = attr
        .windows(ocsp::ATTR_REVOCATION_VALUES.len())
        .position(|win| win == ocsp::ATTR_REVOCATION_VALUES)
        .unwrap()
        + ocsp::ATTR_REVOCATION_VALUES.len();
    let parsed = RevocationValues::parse(strip_set(&attr[value_at..]));
    assert_eq!(parsed.expect("RevocationValues"), values);

    let msg = sealed(Some(values.clone()), w.now);
    assert!(
        msg.windows(values.ocsp[0].len())
            .any(|win| win == values.ocsp[0].as_slice()),
        "the answer is in the message"
    );
    // Without the answer, the same message layout (no empty attribute).
    let plain = sealed(None, w.now);
    assert!(!plain
        .windows(ocsp::ATTR_REVOCATION_VALUES.len())
        .any(|win| win == ocsp::ATTR_REVOCATION_VALUES));
}

/// The content of a DER SET (tag 0x31), for a value of any length.
fn strip_set(set: &[u8]) -> &[u8] {
    assert_eq!(set[0], 0x31);
    let (len, head) = match set[1] {
        l if l < 0x80 => (l as usize, 2),
        l => {
            let n = (l & 0x7f) as usize;
            let len = set[2..2 + n]
                .iter()
                .fold(0usize, |a, b| a << 8 | *b as usize);
            (len, 2 + n)
        }
    };
    &set[head..head + len]
}

fn unseal_errors(msg: &[u8], anchors: TrustAnchors) -> Vec<E> {
    unseal_errors_at(msg, anchors, world().now)
}

fn unseal_errors_at(msg: &[u8], anchors: TrustAnchors, at: i64) -> Vec<E> {
    let w = world();
    let opts = UnsealOptions {
        anchors,
        at: Some(at),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(msg, &w.ring, &opts).unwrap();
    let errors = result.verdict.errors.clone();
    if errors.is_empty() {
        assert_eq!(content.as_deref(), Some(&b"ocsp test"[..]));
    }
    errors
}

fn mandatory(online: Option<Online>) -> TrustAnchors {
    let w = world();
    let mut revocation = Revocation::new(&[], RevocationPolicy::Mandatory).unwrap();
    if let Some(online) = online {
        revocation = revocation.with_online(online);
    }
    TrustAnchors::new(vec![cert(&w.pki.root.cert)]).with_revocation(revocation)
}

#[test]
fn a_message_s_own_answers_are_used_first() {
    let w = world();
    let with = |answer: &OcspAnswer<'_>| {
        sealed(
            Some(RevocationValues {
                crls: vec![],
                ocsp: vec![basic(answer)],
            }),
            w.now,
        )
    };
    // Mandatory, no list, no responder: the message's good answer gives the status.
    let good = with(&OcspAnswer::at(OcspStatus::Good, w.now));
    assert_eq!(unseal_errors(&good, mandatory(None)), vec![]);
    // Without it, nothing does.
    assert_eq!(
        unseal_errors(&sealed(None, w.now), mandatory(None)),
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    // A revoked answer in the message revokes (under optional too).
    let revoked = with(&OcspAnswer::at(OcspStatus::Revoked(w.now - HOUR), w.now));
    assert_eq!(
        unseal_errors(&revoked, mandatory(None)),
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    let optional = TrustAnchors::new(vec![cert(&w.pki.root.cert)])
        .with_revocation(Revocation::new(&[], RevocationPolicy::Optional).unwrap());
    assert_eq!(
        unseal_errors(&revoked, optional),
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    // Policy none (the default): the message's answers are not looked at.
    let none = TrustAnchors::new(vec![cert(&w.pki.root.cert)]);
    assert_eq!(unseal_errors(&revoked, none), vec![]);
    // An answer produced before the signing time (less the skew) is not used (spec §1.6).
    let early = OcspAnswer {
        produced_at: w.now - CLOCK_SKEW - 60,
        this_update: w.now - CLOCK_SKEW - 60,
        ..OcspAnswer::at(OcspStatus::Good, w.now)
    };
    assert_eq!(
        unseal_errors(&with(&early), mandatory(None)),
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    // A forged answer in the message is evidence of nothing.
    let forged = sealed(
        Some(RevocationValues {
            crls: vec![],
            ocsp: vec![w
                .impostor
                .ocsp_basic(&w.alice.auth.cert, &OcspAnswer::at(OcspStatus::Good, w.now))
                .unwrap()],
        }),
        w.now,
    );
    assert_eq!(
        unseal_errors(&forged, mandatory(None)),
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    // Lists the message carries count as the receiver's own.
    let list = w
        .pki
        .crl(
            &[(w.alice.auth.cert.serial_number(), w.now - HOUR)],
            1,
            w.now - 2 * HOUR,
            w.now + HOUR,
        )
        .unwrap()
        .to_der()
        .unwrap();
    let listed = sealed(
        Some(RevocationValues {
            crls: vec![list],
            ocsp: vec![],
        }),
        w.now,
    );
    assert_eq!(
        unseal_errors(&listed, mandatory(None)),
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
}

/// A responder in memory: answers with what `answer` makes of the request's nonce, and
/// counts the requests.
type Answering = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

struct Canned {
    answer: Answering,
    asked: Arc<AtomicUsize>,
    last_url: Arc<Mutex<String>>,
}

impl OcspTransport for Canned {
    fn post(&self, url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        *self.last_url.lock().unwrap() = url.to_string();
        // The request must be a well-formed OCSPRequest for OpenSSL too.
        openssl::ocsp::OcspRequest::from_der(request).map_err(|e| e.to_string())?;
        // The nonce is the last 16 bytes (the extension ends the request).
        (self.answer)(&request[request.len() - 16..])
    }
}

fn canned(
    answer: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
) -> (Online, Arc<AtomicUsize>, Arc<Mutex<String>>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let last_url = Arc::new(Mutex::new(String::new()));
    let online = Online::new(
        Responder::Url("http://ocsp.test/".into()),
        Box::new(Canned {
            answer: Box::new(answer),
            asked: asked.clone(),
            last_url: last_url.clone(),
        }),
    );
    (online, asked, last_url)
}

fn answering(status: OcspStatus, echo_nonce: bool) -> impl Fn(&[u8]) -> Result<Vec<u8>, String> {
    move |nonce: &[u8]| {
        let w = world();
        let answer = OcspAnswer {
            nonce: echo_nonce.then(|| nonce.to_vec()),
            ..OcspAnswer::at(status, etee_formats::unix_now())
        };
        w.pki
            .ocsp_response(&w.alice.auth.cert, &answer)
            .map_err(|e| e.to_string())
    }
}

/// A responder answering good about Alice at the real time, echoing the nonce, with
/// `adjust` applied to the answer (given that time).
fn answering_adjusted(
    adjust: impl Fn(&mut OcspAnswer<'static>, i64) + Send + Sync + 'static,
) -> impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static {
    move |nonce: &[u8]| {
        let w = world();
        let t = etee_formats::unix_now();
        let mut answer = OcspAnswer {
            nonce: Some(nonce.to_vec()),
            ..OcspAnswer::at(OcspStatus::Good, t)
        };
        adjust(&mut answer, t);
        w.pki
            .ocsp_response(&w.alice.auth.cert, &answer)
            .map_err(|e| e.to_string())
    }
}

/// Eight threads asking `online` about Alice at once.
fn eight_at_once(online: &Arc<Online>, now: i64) -> Vec<Result<ocsp::Answer, OcspError>> {
    (0..8)
        .map(|_| {
            let online = online.clone();
            std::thread::spawn(move || {
                let w = world();
                online.answer(&w.alice.auth.cert, &w.pki.root.cert, now, now)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn the_responder_is_asked_when_nothing_else_tells_and_its_answer_is_remembered() {
    let w = world();
    let (online, asked, url) = canned(answering(OcspStatus::Good, true));
    let anchors = mandatory(Some(online));
    let msg = sealed(None, w.now);
    assert_eq!(unseal_errors(&msg, anchors.clone()), vec![]);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(*url.lock().unwrap(), "http://ocsp.test/");
    // The answer is current for an hour: not asked again.
    assert_eq!(unseal_errors(&msg, anchors.clone()), vec![]);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let stats = anchors.revocation().online().unwrap().stats();
    assert_eq!((stats.asked, stats.remembered, stats.failed), (1, 1, 0));

    let (online, _, _) = canned(answering(OcspStatus::Revoked(w.now - HOUR), true));
    assert_eq!(
        unseal_errors(&msg, mandatory(Some(online))),
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    // A message's own good answer spares the question.
    let (online, asked, _) = canned(answering(OcspStatus::Good, true));
    let carried = sealed(
        Some(RevocationValues {
            crls: vec![],
            ocsp: vec![basic(&OcspAnswer::at(OcspStatus::Good, w.now))],
        }),
        w.now,
    );
    assert_eq!(unseal_errors(&carried, mandatory(Some(online))), vec![]);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

#[test]
fn a_replayed_or_unreachable_answer_leaves_the_status_unknown() {
    let w = world();
    let msg = sealed(None, w.now);
    // Another request's nonce: a replay.
    let (online, _, _) = canned(|_nonce| answering(OcspStatus::Good, true)(&[7u8; 16]));
    assert!(matches!(
        online.answer(&w.alice.auth.cert, &w.pki.root.cert, w.now, w.now),
        Err(OcspError::NonceMismatch)
    ));
    assert_eq!(
        unseal_errors(&msg, mandatory(Some(online))),
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    // No nonce in the answer (a pre-produced answer) is accepted.
    let (online, _, _) = canned(answering(OcspStatus::Good, false));
    assert_eq!(unseal_errors(&msg, mandatory(Some(online))), vec![]);
    // A responder that cannot be reached is not asked again for a while.
    let (online, asked, _) = canned(|_| Err("connection refused".into()));
    let anchors = mandatory(Some(online));
    assert_eq!(
        unseal_errors(&msg, anchors.clone()),
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    assert_eq!(
        unseal_errors(&msg, anchors.clone()),
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "asked again during the back-off"
    );
    let stats = anchors.revocation().online().unwrap().stats();
    assert_eq!((stats.asked, stats.failed), (1, 2));
    // Under optional the same failure lets the message through.
    let (online, _, _) = canned(|_| Err("connection refused".into()));
    let optional = TrustAnchors::new(vec![cert(&w.pki.root.cert)]).with_revocation(
        Revocation::new(&[], RevocationPolicy::Optional)
            .unwrap()
            .with_online(online),
    );
    assert_eq!(unseal_errors(&msg, optional), vec![]);
    // A responder that answers an error status.
    let (online, _, _) = canned(|_| Ok(vec![0x30, 0x03, 0x0a, 0x01, 0x03]));
    assert!(matches!(
        online.answer(&w.alice.auth.cert, &w.pki.root.cert, w.now, w.now),
        Err(OcspError::NotSuccessful("tryLater"))
    ));
}

#[test]
fn a_sealer_embeds_its_good_answers_and_refuses_to_seal_otherwise() {
    let w = world();
    let path = [cert(&w.alice.auth.cert), cert(&w.pki.root.cert)];
    let now = etee_formats::unix_now();
    let (online, asked, _) = canned(answering(OcspStatus::Good, true));
    let values = online.values_for(&path, now).expect("good answers");
    assert_eq!(
        values.ocsp.len(),
        1,
        "one answer: the root is not asked about"
    );
    // Reused while its nextUpdate (an hour here) is more than 300 s away...
    assert_eq!(online.values_for(&path, now).unwrap(), values);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // A message sealed half a minute later with the reused answer is accepted by a
    // receiver with nothing else to go by (the answer was produced less than 300 s before
    // its signing time, spec §1.6).
    let reused = online.values_for(&path, now + 30).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        unseal_errors_at(&sealed(Some(reused), now + 30), mandatory(None), now + 40),
        vec![]
    );
    // ...and not once it was produced more than a minute ago (a receiver would soon
    // ignore it), nor when its nextUpdate comes within 300 s.
    online.values_for(&path, now + 61).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    let (closing, asked, _) = canned(answering_adjusted(|a, t| a.next_update = Some(t + 320)));
    closing.values_for(&path, now).unwrap();
    closing.values_for(&path, now + 30).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    // Answers current for 300 s or less (`etee pki ocsp`'s default) or without nextUpdate
    // are asked for at every seal, even within the same second: a revocation stops the
    // sender at once.
    for next_update in [Some(300), None] {
        let (short, asked, _) = canned(answering_adjusted(move |a, t| {
            a.next_update = next_update.map(|d| t + d)
        }));
        let at = etee_formats::unix_now();
        short.values_for(&path, at).unwrap();
        short.values_for(&path, at).unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2, "{next_update:?}");
    }
    // The message carries it; a receiver with no other source accepts it.
    let msg = sealed(Some(values), w.now);
    assert_eq!(unseal_errors(&msg, mandatory(None)), vec![]);

    let (online, _, _) = canned(answering(OcspStatus::Revoked(w.now - HOUR), true));
    assert!(matches!(
        online.values_for(&path, w.now),
        Err(SealingStatus::Revoked(_))
    ));
    let (online, _, _) = canned(answering(OcspStatus::Unknown, true));
    assert!(matches!(
        online.values_for(&path, w.now),
        Err(SealingStatus::Unknown(_))
    ));
    let (online, _, _) = canned(|_| Err("timed out".into()));
    assert!(matches!(
        online.values_for(&path, w.now),
        Err(SealingStatus::NoAnswer(_, OcspError::Transport { .. }))
    ));
    assert!(matches!(
        online.values_for(&path[..1], w.now),
        Err(SealingStatus::NoIssuer(_))
    ));
    // The signer's own path, found from its chain, as a sealer asks.
    let (online, _, _) = canned(answering(OcspStatus::Good, true));
    let sealer = Revocation::default().with_online(online);
    let values = sealer
        .sealing_values(&alice_signer(w).signer, &[], w.now)
        .unwrap()
        .expect("values with a responder");
    assert_eq!(values.ocsp.len(), 1);
    assert!(matches!(
        sealer.sealing_values(&SignerRef::KeyId(vec![1; 20]), &[], w.now),
        Err(SealingStatus::NoCertificate)
    ));
}

#[test]
fn requests_name_the_certificate_as_openssl_does() {
    let w = world();
    let id = CertId::of(&w.alice.auth.cert, &w.pki.root.cert).unwrap();
    let ours = ocsp::request(&id, &[1u8; 16]);
    let theirs = openssl::ocsp::OcspCertId::from_cert(
        openssl::hash::MessageDigest::sha1(),
        &w.alice.auth.cert,
        &w.pki.root.cert,
    )
    .unwrap();
    let mut req = openssl::ocsp::OcspRequest::new().unwrap();
    req.add_id(theirs).unwrap();
    let theirs = req.to_der().unwrap();
    // OpenSSL's request without a nonce holds the same CertID as ours.
    assert!(theirs
        .windows(id.der().len())
        .any(|win| win == id.der().as_slice()));
    assert!(ours.ends_with(&[1u8; 16]));
    openssl::ocsp::OcspRequest::from_der(&ours).expect("OpenSSL reads our request");
}

#[test]
fn the_policy_needs_a_source_and_a_source_needs_a_policy() {
    use RevocationPolicy as P;
    assert_eq!(P::effective(None, 0, true), Ok(P::Optional));
    assert_eq!(P::effective(Some(P::Mandatory), 0, true), Ok(P::Mandatory));
    assert!(P::effective(Some(P::None), 0, true).is_err());
    assert!(P::effective(Some(P::Mandatory), 0, false)
        .unwrap_err()
        .contains("OCSP"));
    assert_eq!(P::effective(None, 0, false), Ok(P::None));
    assert_eq!("auto".parse::<Responder>(), Ok(Responder::FromCertificate));
    assert!("https://x".parse::<Responder>().is_err());
    assert!("ldap://x".parse::<Responder>().is_err());
}

/// A real message with embedded revocation values: `LT_eHTSA.msg` (made by the .NET
/// library in 2014, signed with a Belgian eID; it carries the eID OCSP responder's answer
/// and the CAs' lists). Its answer verifies with its own certificates; trusting the root
/// it carries and judging at its signing time, with no list and no responder of ours, its
/// evidence alone gives every status on the outer signer's path; a day later the answer
/// is no longer current and the status is unknown.
#[test]
fn a_real_message_s_embedded_ocsp_answer_and_lists_are_read() {
    let Some(dir) = support::vectors() else {
        return;
    };
    let msg = std::fs::read(dir.join("egelke-etee/etee-crypto-test/msg/LT_eHTSA.msg")).unwrap();
    let p7 = openssl::pkcs7::Pkcs7::from_der(&msg).expect("SignedData");
    let certs: Vec<openssl::x509::X509> = p7
        .signed()
        .and_then(|s| s.certificates())
        .expect("certificates")
        .iter()
        .map(|c| c.to_owned())
        .collect();
    let attr = msg
        .windows(ocsp::ATTR_REVOCATION_VALUES.len())
        .position(|win| win == ocsp::ATTR_REVOCATION_VALUES)
        .expect("revocationValues")
        + ocsp::ATTR_REVOCATION_VALUES.len();
    let values = RevocationValues::parse(strip_set(&msg[attr..])).expect("RevocationValues");
    assert!(
        !values.ocsp.is_empty() && !values.crls.is_empty(),
        "{values:?}"
    );
    let signed_at = 1_396_274_600; // 2014-03-31T14:03:20Z, beside its timestamp's genTime
    let issued_by = |c: &openssl::x509::X509, i: &openssl::x509::X509| {
        i.public_key().is_ok_and(|k| c.verify(&k).unwrap_or(false))
    };
    let mut good = Vec::new();
    for basic in &values.ocsp {
        for c in &certs {
            for i in certs.iter().filter(|i| issued_by(c, i)) {
                if let Ok(answer) = ocsp::judge(basic, c, i, signed_at) {
                    if answer.status_at(signed_at) == CertStatus::Good {
                        good.push(format!("{:?}", c.subject_name()));
                    }
                }
            }
        }
    }
    assert_eq!(
        good.len(),
        1,
        "one certificate vouched for by the eID responder: {good:?}"
    );

    let roots: Vec<Certificate> = certs
        .iter()
        .filter(|c| etee_formats::cert::same_name(c.subject_name(), c.issuer_name()))
        .map(|c| Certificate::from_der(&c.to_der().unwrap()).unwrap())
        .collect();
    let outer_errors = |at: i64| {
        let opts = UnsealOptions {
            anchors: TrustAnchors::new(roots.clone())
                .with_revocation(Revocation::new(&[], RevocationPolicy::Mandatory).unwrap()),
            at: Some(at),
            ..Default::default()
        };
        // No key of Bob's here: only the outer layer is judged, which is what carries them.
        let (result, _) = unseal_to_vec(&msg, &KeyRing::new(), &opts).unwrap();
        result
            .verdict
            .errors
            .iter()
            .map(|e| e.name())
            .filter(|n| n.starts_with("OUTER_CERTIFICATE"))
            .collect::<Vec<_>>()
    };
    assert_eq!(outer_errors(signed_at), Vec::<&str>::new());
    assert_eq!(
        outer_errors(signed_at + 86_400),
        vec!["OUTER_CERTIFICATE_STATUS_UNKNOWN"]
    );
}

#[test]
fn one_question_per_certificate_at_a_time() {
    let w = world();
    let (online, asked, _) = canned(|nonce: &[u8]| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        answering(OcspStatus::Good, true)(nonce)
    });
    let online = Arc::new(online);
    let now = etee_formats::unix_now();
    let answers = eight_at_once(&online, now);
    assert!(answers
        .iter()
        .all(|a| a.as_ref().is_ok_and(|a| a.said == Said::Good)));
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "asked more than once at the same time"
    );
    assert_eq!(online.stats().remembered, 7);
    let _ = w;
}

#[test]
fn a_revocation_heard_from_the_responder_outweighs_a_message_s_good_answer() {
    let w = world();
    let (online, _, _) = canned(answering(OcspStatus::Revoked(w.now - HOUR), true));
    let anchors = mandatory(Some(online));
    assert_eq!(
        unseal_errors(&sealed(None, w.now), anchors.clone()),
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    // Alice (or a thief with her key) brings an older good answer: still revoked.
    let carried = sealed(
        Some(RevocationValues {
            crls: vec![],
            ocsp: vec![basic(&OcspAnswer::at(OcspStatus::Good, w.now))],
        }),
        w.now,
    );
    assert_eq!(
        unseal_errors(&carried, anchors),
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
}

/// A certificate of the CA like Alice's, with this serial number (and a new key).
fn alice_like_with_serial(serial: &openssl::bn::BigNumRef) -> openssl::x509::X509 {
    let w = world();
    let key = etee_testpki::rsa_key(2048).unwrap();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(w.alice.auth.cert.subject_name())
        .unwrap();
    b.set_issuer_name(w.pki.root.cert.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(w.alice.auth.cert.not_before()).unwrap();
    b.set_not_after(w.alice.auth.cert.not_after()).unwrap();
    b.sign(&w.pki.root.key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    b.build()
}

#[test]
fn negative_serials_and_floods_of_answers_are_not_taken() {
    let w = world();
    // A certificate with serial -0x1234 (RFC 5280 forbids it; OpenSSL makes it): OCSP
    // cannot name it, and an answer for +0x1234 does not speak of it.
    let negative = alice_like_with_serial(&openssl::bn::BigNum::from_dec_str("-4660").unwrap());
    assert!(matches!(
        CertId::of(&negative, &w.pki.root.cert),
        Err(OcspError::NegativeSerial)
    ));
    let positive_id = w.pki.ocsp_cert_id(&[0x12, 0x34]).unwrap();
    let good_for_positive = w
        .pki
        .ocsp_basic_for(
            &[(positive_id, OcspStatus::Good)],
            &OcspAnswer::at(OcspStatus::Good, w.now),
        )
        .unwrap();
    assert!(ocsp::judge(&good_for_positive, &negative, &w.pki.root.cert, w.now).is_err());

    // Forty answers in one attribute: sixteen are kept.
    let one = basic(&OcspAnswer::at(OcspStatus::Good, w.now));
    let many = RevocationValues {
        crls: vec![],
        ocsp: vec![one; 40],
    };
    let attr = many.attribute();
    let at = attr
        .windows(ocsp::ATTR_REVOCATION_VALUES.len())
        .position(|win| win == ocsp::ATTR_REVOCATION_VALUES)
        .unwrap()
        + ocsp::ATTR_REVOCATION_VALUES.len();
    let parsed = RevocationValues::parse(strip_set(&attr[at..])).unwrap();
    assert_eq!(parsed.ocsp.len(), ocsp::MAX_EMBEDDED);
    let mut merged = parsed.clone();
    merged.add(parsed);
    assert_eq!(merged.ocsp.len(), ocsp::MAX_EMBEDDED);
}

#[test]
fn failed_questions_are_not_repeated_at_once() {
    let w = world();
    let now = etee_formats::unix_now();
    // Eight at once, the responder slow and then "tryLater": one request.
    let (online, asked, _) = canned(|_| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(vec![0x30, 0x03, 0x0a, 0x01, 0x03])
    });
    let told = Arc::new(AtomicUsize::new(0));
    let counted = told.clone();
    let online = Arc::new(online.with_observer(move |url, e| {
        assert_eq!(url, "http://ocsp.test/");
        assert!(matches!(e, OcspError::NotSuccessful("tryLater")), "{e}");
        counted.fetch_add(1, Ordering::SeqCst);
    }));
    let outcomes = eight_at_once(&online, now);
    assert!(outcomes.iter().all(|o| o.is_err()));
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "asked again after a failure"
    );
    // Nor right after: the certificate backs off.
    assert!(matches!(
        online.answer(&w.alice.auth.cert, &w.pki.root.cert, now, now),
        Err(OcspError::Recently)
    ));
    assert_eq!(
        told.load(Ordering::SeqCst),
        1,
        "the observer hears of each failure once"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // An "unknown" answer likewise.
    let (online, asked, _) = canned(answering(OcspStatus::Unknown, true));
    for _ in 0..5 {
        let _ = online.answer(&w.alice.auth.cert, &w.pki.root.cert, now, now);
    }
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // A sealer does not embed an answer produced too long ago for a receiver to use.
    let (old, _, _) = canned(answering_adjusted(|a, t| {
        a.produced_at = t - 400;
        a.this_update = t - 400;
    }));
    let path = [cert(&w.alice.auth.cert), cert(&w.pki.root.cert)];
    assert!(matches!(
        old.values_for(&path, now),
        Err(SealingStatus::NoAnswer(_, OcspError::TooOld))
    ));
}

#[test]
fn an_answer_about_a_negative_serial_or_too_many_certificates_is_not_taken() {
    use etee_formats::ber::write::{octets, seq, tlv};
    let w = world();
    // A certificate with serial +0xEDCC, and an answer about the INTEGER −0x1234, whose
    // two's-complement bytes are ED CC.
    let positive = alice_like_with_serial(&openssl::bn::BigNum::from_u32(0xedcc).unwrap());
    let sha1 = |d: &[u8]| openssl::sha::sha1(d).to_vec();
    let key_bits = w
        .pki
        .root
        .cert
        .public_key()
        .unwrap()
        .rsa()
        .unwrap()
        .public_key_to_der_pkcs1()
        .unwrap();
    let negative_id = seq(&[
        &seq(&[
            &etee_formats::oid::der(etee_formats::oid::SHA1),
            &tlv(0x05, &[]),
        ]),
        &octets(&sha1(&w.pki.root.cert.subject_name().to_der().unwrap())),
        &octets(&sha1(&key_bits)),
        &tlv(0x02, &[0xed, 0xcc]),
    ]);
    let answer = OcspAnswer::at(OcspStatus::Good, w.now);
    let about_negative = w
        .pki
        .ocsp_basic_for(&[(negative_id, OcspStatus::Good)], &answer)
        .unwrap();
    assert!(matches!(
        ocsp::judge(&about_negative, &positive, &w.pki.root.cert, w.now),
        Err(OcspError::NotAbout)
    ));
    // The same certificate named rightly is answered for.
    let right = w.pki.ocsp_basic(&positive, &answer).unwrap();
    assert!(ocsp::judge(&right, &positive, &w.pki.root.cert, w.now).is_ok());

    // An answer with more SingleResponses than any responder gives is refused unread.
    let id = w
        .pki
        .ocsp_cert_id(&w.alice.auth.cert.serial_number().to_bn().unwrap().to_vec())
        .unwrap();
    let many: Vec<_> = (0..ocsp::MAX_SINGLES + 1)
        .map(|_| (id.clone(), OcspStatus::Good))
        .collect();
    let flood = w.pki.ocsp_basic_for(&many, &answer).unwrap();
    assert!(matches!(
        ocsp::judge(&flood, &w.alice.auth.cert, &w.pki.root.cert, w.now),
        Err(OcspError::Malformed)
    ));
}

/// The certificates an answer carries are counted before they are copied (its signature
/// is not yet checked): up to `MAX_CARRIED` the responder is found among them, one more
/// and the answer is refused as malformed.
#[test]
fn an_answer_carries_a_bounded_number_of_certificates() {
    use etee_formats::ber::slice::parse_exact;
    use etee_formats::ber::write::{cons, seq, tlv};
    let w = world();
    let delegated = OcspAnswer {
        signer: Some(&w.responder),
        ..OcspAnswer::at(OcspStatus::Good, w.now)
    };
    let original = basic(&delegated);
    let top = parse_exact(&original).unwrap();
    let mut f = top.seq().unwrap();
    let (tbs, alg, sig) = (f.any().unwrap(), f.any().unwrap(), f.any().unwrap());
    let responder = w.responder.cert.to_der().unwrap();
    let carrying = |n: usize| {
        let certs = vec![responder.as_slice(); n];
        cons(0x30, &[tbs.raw, alg.raw, sig.raw, &tlv(0xa0, &seq(&certs))])
    };
    let judge = |b: &[u8]| ocsp::judge(b, &w.alice.auth.cert, &w.pki.root.cert, w.now);
    let most = judge(&carrying(ocsp::MAX_CARRIED)).expect("as many as allowed");
    assert_eq!(most.said, Said::Good);
    assert!(judge(&carrying(ocsp::MAX_CARRIED + 1)).is_err());
}
