//! Signature timestamps (RFC 3161 tokens on the outer signature, spec §1.4 and §1.6), with
//! tokens made by the `openssl` command, not by us: a token of a trusted authority
//! holds, and gives the time the sender's certificate is judged at when the message has
//! no signing time; an untrusted authority, a token over something else, a token without
//! its ESS signing-certificate attribute or signed by a certificate that is not a
//! time-stamping one, and a damaged token each give their official error.
//!
//! Skipped, saying so, when the `openssl` command is missing.

use etee_formats::ber::slice::parse_exact;
use etee_formats::ber::tag;
use etee_formats::ber::write::{octets, seq, set_of, small_uint, tlv, uint};
use etee_formats::cert::Certificate;
use etee_formats::cms::timestamp::{attach, outer_signature};
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions, Unsealed};
use etee_formats::keys::KeyRing;
use etee_formats::oid;
use etee_formats::trust::TrustAnchors;
use etee_formats::verdict::{Error as E, Warning};
use etee_testpki::tsa::{openssl_cms_token, openssl_ts_token, EssVersion, TsaUsage};
use etee_testpki::{Institution, InstitutionSpec, Issued, TestPki, Validity};
use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};
use std::sync::OnceLock;

mod support;

const PLAIN: &[u8] = b"a message with a signature timestamp";
/// Alice's authentication certificate ends this many days from now.
const ALICE_DAYS: i64 = 30;

struct World {
    now: i64,
    pki: TestPki,
    alice: Institution,
    bob_ring: KeyRing,
    anchors: TrustAnchors,
    tsa: Issued,
    /// Alice to Bob, as sealed (signing times on both layers).
    sealed: Vec<u8>,
}

fn cert(x: &openssl::x509::X509Ref) -> Certificate {
    Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
}

fn openssl_cli() -> bool {
    let there = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !there {
        etee_testpki::skip::skip("openssl not on PATH");
    }
    there
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let pki = TestPki::generate("timestamps").expect("test PKI");
        let alice = pki
            .institution(
                &InstitutionSpec::new("NIHII-PHARMACY", "11111111", "Alice")
                    .with_auth_validity(Validity::days_around_now(1, ALICE_DAYS)),
            )
            .expect("Alice");
        let bob = pki
            .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "Bob"))
            .expect("Bob");
        let root = cert(&pki.root.cert);
        let signer = support::auth_signer(&alice, vec![root.clone()]);
        let mut sealed = Vec::new();
        seal(
            &signer,
            &[Recipient::Certificate(cert(&bob.etk_cert))],
            None,
            PLAIN,
            &mut sealed,
            &SealOptions {
                signing_time: Some(now),
                ..Default::default()
            },
        )
        .expect("seal");
        World {
            now,
            tsa: pki
                .timestamp_authority(TsaUsage::TimeStamping)
                .expect("TSA"),
            bob_ring: support::etk_ring(&bob),
            anchors: TrustAnchors::new(vec![root]),
            alice,
            pki,
            sealed,
        }
    })
}

/// The SHA-256 of the outer signature of `message`: what a token must stamp.
fn imprint(message: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(&outer_signature(message).expect("outer signature"))
}

fn token_for(message: &[u8], ess: EssVersion) -> Vec<u8> {
    let w = world();
    openssl_ts_token(&w.tsa, &[&w.pki.root.cert], &imprint(message), ess).expect("openssl ts")
}

/// Unseals as Bob at `at`, the TSA's root trusted for timestamps or not.
fn open(message: &[u8], at: i64, trust_tsa: bool) -> (Unsealed, Option<Vec<u8>>) {
    let w = world();
    let opts = UnsealOptions {
        anchors: w.anchors.clone(),
        tsa_anchors: if trust_tsa {
            w.anchors.clone()
        } else {
            TrustAnchors::default()
        },
        at: Some(at),
        ..Default::default()
    };
    unseal_to_vec(message, &w.bob_ring, &opts).expect("unseal")
}

fn errors(r: &Unsealed) -> Vec<E> {
    assert_eq!(r.verdict.fatal, None, "{:?}", r.verdict);
    r.verdict.errors.clone()
}

#[test]
fn a_trusted_authoritys_token_holds_and_names_its_time() {
    if !openssl_cli() {
        return;
    }
    let w = world();
    for ess in [EssVersion::V1, EssVersion::V2] {
        let stamped = attach(&w.sealed, &token_for(&w.sealed, ess)).expect("attach");
        assert_ne!(stamped, w.sealed);
        let (r, content) = open(&stamped, w.now, true);
        assert!(r.verdict.is_clean(), "{ess:?}: {:?}", r.verdict);
        assert_eq!(content.as_deref(), Some(PLAIN));
        let at = r.timestamp.expect("the token's time");
        assert!(
            (at - w.now).abs() < 600,
            "{ess:?}: genTime {at}, now {}",
            w.now
        );
        assert_eq!(r.signing_time, Some(w.now));

        // Without the authority among the timestamp anchors: the official error, and no
        // time taken from the token; the message's own checks are unchanged.
        let (r, content) = open(&stamped, w.now, false);
        assert_eq!(errors(&r), vec![E::TIMESTAMPTOKEN_TRUST_FAILED]);
        assert_eq!(r.timestamp, None);
        assert_eq!(content, None);
    }
}

#[test]
fn a_token_stamping_something_else_does_not_match() {
    if !openssl_cli() {
        return;
    }
    let w = world();
    let other = openssl_ts_token(
        &w.tsa,
        &[&w.pki.root.cert],
        &openssl::sha::sha256(b"another signature"),
        EssVersion::V2,
    )
    .expect("openssl ts");
    let (r, _) = open(&attach(&w.sealed, &other).expect("attach"), w.now, true);
    assert_eq!(
        errors(&r),
        vec![E::TIMESTAMPTOKEN_DOES_NOT_MATCH_OUTER_SIGNATURE]
    );
    assert_eq!(r.timestamp, None);
}

/// A TSTInfo (RFC 3161 §2.4.2) over `imprint` at `gen_time`, policy 1.3.6.1.4.1.99999.1.
fn tst_info(imprint: &[u8; 32], gen_time: &str) -> Vec<u8> {
    let sha256 = seq(&[&oid::der(oid::SHA256), &[0x05, 0x00]]);
    seq(&[
        &small_uint(1),
        &oid::der(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x86, 0x8d, 0x1f, 0x01]),
        &seq(&[&sha256, &octets(imprint)]),
        &small_uint(7),
        &tlv(tag::GENERALIZED_TIME, gen_time.as_bytes()),
    ])
}

#[test]
fn a_token_without_its_ess_attribute_or_from_a_non_authority_is_invalid() {
    if !openssl_cli() {
        return;
    }
    let w = world();
    let info = tst_info(&imprint(&w.sealed), "20261207120000Z");
    // `openssl cms -sign` adds no ESS signing-certificate attribute: even the authority's
    // own certificate does not make such a token valid.
    for (what, signer) in [
        ("the authority, no ESS attribute", w.tsa.clone()),
        ("Alice's authentication key", w.alice.auth.clone()),
    ] {
        let token = openssl_cms_token(&signer, &info, false).expect("openssl cms");
        let (r, _) = open(&attach(&w.sealed, &token).expect("attach"), w.now, true);
        assert_eq!(errors(&r), vec![E::TIMESTAMPTOKEN_INVALID], "{what}");
        assert_eq!(r.timestamp, None, "{what}");
    }
}

/// With its ESS attribute (`openssl cms -sign -cades`), a token holds when the authority's
/// certificate is a time-stamping one, at whatever time its TSTInfo says; by a certificate
/// whose extended key usage is not critical, or not time-stamping alone, it is invalid.
#[test]
fn only_a_time_stamping_certificate_makes_a_token_valid() {
    if !openssl_cli() {
        return;
    }
    let w = world();
    let info = tst_info(&imprint(&w.sealed), "20261207120000Z");
    let token = openssl_cms_token(&w.tsa, &info, true).expect("openssl cms");
    let (r, content) = open(&attach(&w.sealed, &token).expect("attach"), w.now, true);
    assert!(r.verdict.is_clean(), "{:?}", r.verdict);
    assert_eq!(content.as_deref(), Some(PLAIN));
    assert_eq!(r.timestamp, Some(1_796_644_800), "2026-12-07T12:00:00Z");
    for usage in [
        TsaUsage::NotCritical,
        TsaUsage::WithClientAuth,
        TsaUsage::Absent,
    ] {
        let signer = w.pki.timestamp_authority(usage).expect("certificate");
        let token = openssl_cms_token(&signer, &info, true).expect("openssl cms");
        let (r, _) = open(&attach(&w.sealed, &token).expect("attach"), w.now, true);
        assert_eq!(errors(&r), vec![E::TIMESTAMPTOKEN_INVALID], "{usage:?}");
    }
}

#[test]
fn a_damaged_token_is_invalid() {
    if !openssl_cli() {
        return;
    }
    let w = world();
    let mut token = token_for(&w.sealed, EssVersion::V2);
    // The policy OID's last octet, inside the signed TSTInfo: the signature no longer holds.
    let policy = oid::der(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x86, 0x8d, 0x1f, 0x01]);
    let at = token
        .windows(policy.len())
        .position(|w| w == policy.as_slice())
        .expect("the policy in the token")
        + policy.len()
        - 1;
    token[at] ^= 0x02;
    let (r, _) = open(&attach(&w.sealed, &token).expect("attach"), w.now, true);
    assert_eq!(errors(&r), vec![E::TIMESTAMPTOKEN_INVALID]);

    // Not a token at all: refused by attach, before any message is made; nor is a second
    // token added (receivers read the first only).
    assert!(attach(&w.sealed, b"\x04\x03abc").is_err());
    assert!(attach(b"not a message", &token).is_err());
    let stamped = attach(&w.sealed, &token).unwrap();
    let again = attach(&stamped, &token).unwrap_err();
    assert!(
        again.to_string().contains("signature timestamp already"),
        "{again}"
    );
}

/// The sealed message's outer layer made again, definite lengths, with a SignerInfo by
/// Alice that has no signing time (as v1.6.1 messages, spec §1.7).
fn without_signing_time(sealed: &[u8]) -> Vec<u8> {
    let w = world();
    let ci = parse_exact(sealed).unwrap();
    let sd = ci.seq().unwrap().nth_child(1).seq().unwrap().any().unwrap();
    let mut fields = sd.seq().unwrap();
    fields.next(tag::INTEGER).unwrap();
    fields.next(tag::SET).unwrap();
    let encap = fields.next(tag::SEQUENCE).unwrap();
    let middle = encap
        .seq()
        .unwrap()
        .nth_child(1)
        .seq()
        .unwrap()
        .any()
        .unwrap()
        .octets()
        .unwrap()
        .into_owned();
    let attrs = set_of(vec![
        seq(&[
            &oid::der(oid::ATTR_CONTENT_TYPE),
            &tlv(tag::SET, &oid::der(oid::DATA)),
        ]),
        seq(&[
            &oid::der(oid::ATTR_MESSAGE_DIGEST),
            &tlv(tag::SET, &octets(&openssl::sha::sha256(&middle))),
        ]),
    ]);
    let mut signer = Signer::new(MessageDigest::sha256(), &w.alice.auth.key).unwrap();
    signer.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
    signer
        .set_rsa_pss_saltlen(RsaPssSaltlen::custom(32))
        .unwrap();
    signer.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
    let signature = signer.sign_oneshot_to_vec(&attrs).unwrap();
    let mut implicit = attrs;
    implicit[0] = tag::ctx_cons(0);
    let alice = cert(&w.alice.auth.cert);
    let si = seq(&[
        &small_uint(1),
        &seq(&[alice.issuer_der(), &uint(alice.serial())]),
        oid::ALG_SHA256,
        &implicit,
        oid::ALG_RSASSA_PSS_SHA256,
        &octets(&signature),
    ]);
    let certs = [alice.der(), &w.pki.root.cert.to_der().unwrap()].concat();
    let signed_data = seq(&[
        &small_uint(1),
        &tlv(tag::SET, oid::ALG_SHA256),
        &seq(&[
            &oid::der(oid::DATA),
            &tlv(tag::ctx_cons(0), &octets(&middle)),
        ]),
        &tlv(tag::ctx_cons(0), &certs),
        &tlv(tag::SET, &si),
    ]);
    seq(&[
        &oid::der(oid::SIGNED_DATA),
        &tlv(tag::ctx_cons(0), &signed_data),
    ])
}

/// Child `n` of a constructed element's reader (test shorthand).
trait NthChild<'a> {
    fn nth_child(self, n: usize) -> etee_formats::ber::slice::Tlv<'a>;
}

impl<'a> NthChild<'a> for etee_formats::ber::slice::Seq<'a> {
    fn nth_child(mut self, n: usize) -> etee_formats::ber::slice::Tlv<'a> {
        for _ in 0..n {
            self.any().unwrap();
        }
        self.any().unwrap()
    }
}

#[test]
fn without_a_signing_time_the_trusted_tokens_time_judges_the_senders_certificate() {
    if !openssl_cli() {
        return;
    }
    let w = world();
    let bare = without_signing_time(&w.sealed);
    // Now the message opens: the sender's certificate is valid at the evaluation time.
    let (r, content) = open(&bare, w.now, true);
    assert_eq!(errors(&r), vec![]);
    assert_eq!(r.verdict.warnings, vec![Warning::SIGNING_TIME_MISSING]);
    assert_eq!(
        content.as_deref(),
        Some(PLAIN),
        "a warning keeps nothing back"
    );
    // Later, Alice's certificate has expired: judged at the evaluation time, it fails.
    let later = w.now + (ALICE_DAYS + 30) * 86_400;
    let (r, _) = open(&bare, later, true);
    assert!(
        errors(&r).contains(&E::OUTER_CERTIFICATE_EXPIRED),
        "{:?}",
        r.verdict
    );
    // With a trusted token made now (the definite-length layers re-encoded around it),
    // the certificate is judged at the token's time, and the message opens later too.
    let stamped = attach(&bare, &token_for(&bare, EssVersion::V2)).expect("attach");
    let (r, content) = open(&stamped, later, true);
    assert!(r.verdict.is_clean(), "{:?}", r.verdict);
    assert_eq!(content.as_deref(), Some(PLAIN));
    assert_eq!(r.signing_time, None);
    assert!(r.timestamp.is_some());
    // An untrusted token gives no time: the certificate is judged later, and expired.
    let (r, _) = open(&stamped, later, false);
    let errors = errors(&r);
    assert!(
        errors.contains(&E::TIMESTAMPTOKEN_TRUST_FAILED),
        "{errors:?}"
    );
    assert!(errors.contains(&E::OUTER_CERTIFICATE_EXPIRED), "{errors:?}");
}

#[test]
fn only_a_critical_time_stamping_only_usage_makes_an_authority() {
    let w = world();
    assert!(cert(&w.tsa.cert).is_timestamping_only());
    for usage in [
        TsaUsage::NotCritical,
        TsaUsage::WithClientAuth,
        TsaUsage::Absent,
    ] {
        let other = w.pki.timestamp_authority(usage).expect("certificate");
        assert!(!cert(&other.cert).is_timestamping_only(), "{usage:?}");
    }
    assert!(!cert(&w.alice.auth.cert).is_timestamping_only());
}

/// Our TimeStampReq is one an independent authority (`openssl ts -reply`) answers: the
/// token stamps the imprint asked for, repeats the request's nonce, carries the
/// authority's certificate (certReq) and holds once attached; a token made for another
/// request (no nonce, another nonce) does not repeat it.
#[test]
fn our_request_is_answered_with_its_nonce() {
    use etee_formats::cms::timestamp::{check, new_nonce, request, token_of_reply};
    if !openssl_cli() {
        return;
    }
    let w = world();
    let signature = outer_signature(&w.sealed).expect("outer signature");
    let nonce = new_nonce().expect("nonce");
    assert!((0x01..=0x7f).contains(&nonce[0]), "{nonce:?}");
    assert_ne!(nonce, new_nonce().expect("nonce"), "random");
    let query = request(&imprint(&w.sealed), &nonce);
    let reply = etee_testpki::tsa::openssl_ts_reply_to_query(
        &w.tsa,
        &[&w.pki.root.cert],
        &query,
        EssVersion::V2,
    )
    .expect("openssl ts -reply answers our request");
    let token = token_of_reply(&reply).expect("granted");
    let checked = check(&token, &signature, &w.anchors);
    assert_eq!(checked.error, None);
    assert_eq!(checked.nonce.as_deref(), Some(&nonce[..]));
    let (r, content) = open(&attach(&w.sealed, &token).expect("attach"), w.now, true);
    assert!(r.verdict.is_clean(), "{:?}", r.verdict);
    assert_eq!(content.as_deref(), Some(PLAIN));

    // A token asked for without a nonce says none; one for another request, another.
    let plain = check(
        &token_for(&w.sealed, EssVersion::V2),
        &signature,
        &w.anchors,
    );
    assert_eq!(plain.error, None);
    assert_eq!(plain.nonce, None);
    let other = new_nonce().expect("nonce");
    let reply = etee_testpki::tsa::openssl_ts_reply_to_query(
        &w.tsa,
        &[&w.pki.root.cert],
        &request(&imprint(&w.sealed), &other),
        EssVersion::V2,
    )
    .expect("openssl ts -reply");
    let checked = check(
        &token_of_reply(&reply).expect("granted"),
        &signature,
        &w.anchors,
    );
    assert_ne!(checked.nonce.as_deref(), Some(&nonce[..]));
}
