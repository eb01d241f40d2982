//! Revocation lists (CRLs) against messages' signers and ETKs: what each policy reports,
//! and which lists count (signed by the issuer's key, current at the evaluation time).

mod support;

use etee_formats::ber::write::tlv as der;

use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::etk::Etk;
use etee_formats::keys::{KeyId, KeyRing, SignerRef, SigningKey};
use etee_formats::keystore::SoftwareKeys;
use etee_formats::revocation::{CertStatus, Revocation, RevocationError, RevocationPolicy};
use etee_formats::trust::{PathCheck, TrustAnchors};
use etee_formats::verdict::Error as E;
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use openssl::x509::X509Crl;
use std::sync::{Arc, OnceLock};

const HOUR: i64 = 3600;

struct World {
    now: i64,
    pki: TestPki,
    /// Same root name as `pki`, another key: its lists must not count.
    impostor: TestPki,
    alice: Institution,
    dave: Institution,
    bob: Institution,
    /// Bob's ETK key.
    ring: KeyRing,
    /// Alice's message to Bob, and Dave's.
    from_alice: Vec<u8>,
    from_dave: Vec<u8>,
}

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
}

/// `content` sealed by `inst` (its certificate and the CA certificates `chain` in the
/// message) to `to`'s ETK, signed at `now`.
fn sealed_by(
    inst: &Institution,
    chain: Vec<Certificate>,
    to: &Institution,
    content: &[u8],
    now: i64,
) -> Vec<u8> {
    let mut keys = SoftwareKeys::new();
    keys.insert(KeyId("auth".into()), inst.auth.key.clone());
    let signer = SigningKey {
        ops: Arc::new(keys),
        key: KeyId("auth".into()),
        signer: SignerRef::Certificate {
            cert: cert(&inst.auth.cert),
            chain,
        },
    };
    let mut out = Vec::new();
    seal(
        &signer,
        &[Recipient::Certificate(cert(&to.etk_cert))],
        None,
        content,
        &mut out,
        &SealOptions {
            signing_time: Some(now),
            ..Default::default()
        },
    )
    .expect("seal");
    out
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let pki = TestPki::generate("revocation").expect("PKI");
        let impostor = TestPki::generate("revocation").expect("PKI");
        let inst = |id: &str, name: &str| {
            pki.institution(&InstitutionSpec::new("NIHII-HOSPITAL", id, name))
                .expect("institution")
        };
        let (alice, dave, bob) = (
            inst("71000436", "Alice"),
            inst("71000535", "Dave"),
            inst("27150201", "Bob"),
        );
        let ring = support::etk_ring(&bob);
        World {
            from_alice: sealed_by(&alice, vec![], &bob, b"revocation test", now),
            from_dave: sealed_by(&dave, vec![], &bob, b"revocation test", now),
            now,
            pki,
            impostor,
            alice,
            dave,
            bob,
            ring,
        }
    })
}

/// A list of `pki`'s root revoking Alice's authentication certificate an hour ago,
/// current from two hours ago until `next_update`.
fn alice_revoked_by(pki: &TestPki, next_update: i64) -> Vec<u8> {
    let w = world();
    let serial = w.alice.auth.cert.serial_number();
    pki.crl(&[(serial, w.now - HOUR)], 1, w.now - 2 * HOUR, next_update)
        .expect("CRL")
        .to_der()
        .expect("DER")
}

fn anchors(lists: &[Vec<u8>], policy: RevocationPolicy) -> TrustAnchors {
    let w = world();
    TrustAnchors::new(vec![cert(&w.pki.root.cert)])
        .with_revocation(Revocation::new(lists, policy).expect("lists"))
}

fn errors(msg: &[u8], anchors: TrustAnchors) -> (Vec<E>, bool) {
    let w = world();
    let opts = UnsealOptions {
        anchors,
        at: Some(w.now),
        ..Default::default()
    };
    let (result, content) = unseal_to_vec(msg, &w.ring, &opts).unwrap();
    assert!(result.verdict.fatal.is_none(), "{:?}", result.verdict);
    (result.verdict.errors, content.is_some())
}

#[test]
fn a_revoked_sender_is_refused_under_either_policy_and_the_others_open() {
    let w = world();
    let list = vec![alice_revoked_by(&w.pki, w.now + HOUR)];
    for policy in [RevocationPolicy::Optional, RevocationPolicy::Mandatory] {
        let (errs, released) = errors(&w.from_alice, anchors(&list, policy));
        assert_eq!(errs, vec![E::OUTER_CERTIFICATE_REVOKED], "{policy}");
        assert!(!released, "content of a revoked sender released ({policy})");
        let (errs, released) = errors(&w.from_dave, anchors(&list, policy));
        assert_eq!(errs, vec![], "{policy}");
        assert!(released);
    }
    // Without a policy the lists are not looked at (the official verdicts of record).
    let (errs, released) = errors(&w.from_alice, anchors(&list, RevocationPolicy::None));
    assert_eq!(errs, vec![]);
    assert!(released);
}

#[test]
fn mandatory_needs_a_current_list_signed_by_the_issuer() {
    let w = world();
    let mandatory = |lists: &[Vec<u8>]| anchors(lists, RevocationPolicy::Mandatory);
    // No list at all: nobody's status is known.
    assert_eq!(
        errors(&w.from_dave, mandatory(&[])).0,
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    // A list under the root's name but signed by another key: ignored, so Alice is not
    // revoked by it and her status stays unknown.
    let forged = vec![alice_revoked_by(&w.impostor, w.now + HOUR)];
    let forged_anchors = mandatory(&forged);
    assert!(forged_anchors.revocation().unverified().is_empty());
    assert_eq!(
        errors(&w.from_alice, forged_anchors.clone()).0,
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    assert_eq!(
        forged_anchors.revocation().unverified().len(),
        1,
        "the failed check is reported"
    );
    // The optional policy lets unknown statuses pass.
    let optional = anchors(&forged, RevocationPolicy::Optional);
    assert_eq!(errors(&w.from_alice, optional).0, vec![]);
    // A stale list (nextUpdate passed) says nothing of Dave now, but still lists Alice.
    let stale = vec![alice_revoked_by(&w.pki, w.now - 60)];
    assert_eq!(
        errors(&w.from_dave, mandatory(&stale)).0,
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    assert_eq!(
        errors(&w.from_alice, mandatory(&stale)).0,
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
}

#[test]
fn statuses_follow_the_evaluation_time() {
    let w = world();
    let list = vec![alice_revoked_by(&w.pki, w.now + HOUR)];
    let revocation = Revocation::new(&list, RevocationPolicy::Mandatory).unwrap();
    let (alice, root) = (&w.alice.auth.cert, &w.pki.root.cert);
    assert_eq!(revocation.status(alice, root, w.now), CertStatus::Revoked);
    // Before the revocation (the list was current from two hours ago): not revoked yet,
    // but a list that names her is no proof of good standing: unknown. Dave, whom it does
    // not name, was good then.
    assert_eq!(
        revocation.status(alice, root, w.now - 90 * 60),
        CertStatus::Unknown
    );
    assert_eq!(
        revocation.status(&w.dave.auth.cert, root, w.now - 90 * 60),
        CertStatus::Good
    );
    // Before the list: it cannot speak for that time.
    assert_eq!(
        revocation.status(alice, root, w.now - 3 * HOUR),
        CertStatus::Unknown
    );
    // After its nextUpdate: stale for Dave, Alice stays revoked.
    let dave = &w.dave.auth.cert;
    assert_eq!(revocation.status(dave, root, w.now), CertStatus::Good);
    assert_eq!(
        revocation.status(dave, root, w.now + 2 * HOUR),
        CertStatus::Unknown
    );
    assert_eq!(
        revocation.status(alice, root, w.now + 2 * HOUR),
        CertStatus::Revoked
    );
    // The path check: the leaf against the root; an untrusted leaf is not looked up.
    let anchors = TrustAnchors::new(vec![cert(root)]).with_revocation(revocation);
    assert_eq!(
        anchors.check(&cert(alice), &[], w.now, w.now),
        PathCheck::Revoked
    );
    assert_eq!(
        anchors.check(&cert(dave), &[], w.now, w.now),
        PathCheck::Trusted
    );
    let stranger = w
        .impostor
        .institution(&InstitutionSpec::new("SSIN", "12345678901", "X"));
    let stranger = cert(&stranger.expect("institution").auth.cert);
    assert_eq!(
        anchors.check(&stranger, &[], w.now, w.now),
        PathCheck::Untrusted
    );
}

#[test]
fn an_etk_with_a_revoked_authentication_certificate_is_refused() {
    let w = world();
    let list = vec![alice_revoked_by(&w.pki, w.now + HOUR)];
    let etk = Etk::parse(&w.alice.etk).expect("ETK");
    let none = TrustAnchors::new(vec![cert(&w.pki.root.cert)]);
    assert_eq!(etk.validate(&none, w.now), vec![]);
    assert_eq!(
        etk.validate(&anchors(&list, RevocationPolicy::Optional), w.now),
        vec![E::ETK_AUTHENTICATION_CERT_REVOKED]
    );
    let bob = Etk::parse(&w.bob.etk).expect("ETK");
    assert_eq!(
        bob.validate(&anchors(&list, RevocationPolicy::Mandatory), w.now),
        vec![]
    );
    assert_eq!(
        bob.validate(&anchors(&[], RevocationPolicy::Mandatory), w.now),
        vec![E::ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN]
    );
}

#[test]
fn lists_are_read_from_der_and_pem_and_garbage_is_refused() {
    let w = world();
    let der = alice_revoked_by(&w.pki, w.now + HOUR);
    let pem = X509Crl::from_der(&der).unwrap().to_pem().unwrap();
    let mut two = pem.clone();
    two.extend_from_slice(&X509Crl::from_der(&der).unwrap().to_pem().unwrap());
    assert_eq!(
        Revocation::new(std::slice::from_ref(&der), RevocationPolicy::Optional)
            .unwrap()
            .lists(),
        1
    );
    assert_eq!(
        Revocation::new(&[pem, two], RevocationPolicy::Optional)
            .unwrap()
            .lists(),
        3
    );
    for bad in [
        b"".to_vec(),
        b"not a list".to_vec(),
        der[..der.len() / 2].to_vec(),
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_vec(),
        b"-----BEGIN X509 CRL-----\nno end".to_vec(),
        w.pki.root.cert.to_pem().unwrap(),
    ] {
        assert!(
            matches!(
                Revocation::new(&[bad], RevocationPolicy::Optional),
                Err(RevocationError::NotACrl)
            ),
            "accepted as a list"
        );
    }
    assert_eq!(
        "mandatory".parse::<RevocationPolicy>(),
        Ok(RevocationPolicy::Mandatory)
    );
    assert!("sometimes".parse::<RevocationPolicy>().is_err());
}

#[test]
fn replaced_lists_reach_every_clone_and_a_bad_replacement_changes_nothing() {
    let w = world();
    let anchors = anchors(&[], RevocationPolicy::Optional);
    let held_elsewhere = anchors.clone();
    assert_eq!(errors(&w.from_alice, held_elsewhere.clone()).0, vec![]);
    let list = alice_revoked_by(&w.pki, w.now + HOUR);
    assert_eq!(
        anchors
            .revocation()
            .replace(std::slice::from_ref(&list), anchors.certs())
            .unwrap(),
        1
    );
    assert_eq!(
        errors(&w.from_alice, held_elsewhere.clone()).0,
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    // A list under the root's name that its key did not sign, or garbage: refused, and
    // the list in use stays.
    let forged = alice_revoked_by(&w.impostor, w.now + HOUR);
    for bad in [forged, b"garbage".to_vec()] {
        assert!(anchors
            .revocation()
            .replace(&[bad], anchors.certs())
            .is_err());
        assert_eq!(
            errors(&w.from_alice, held_elsewhere.clone()).0,
            vec![E::OUTER_CERTIFICATE_REVOKED]
        );
    }
    assert_eq!(
        anchors.revocation().replace(&[], anchors.certs()).unwrap(),
        0
    );
    assert_eq!(errors(&w.from_alice, held_elsewhere).0, vec![]);
}

/// An institution under an intermediate CA, its message to Bob carrying the intermediate,
/// and the root's and the intermediate's lists.
struct Below {
    intermediate: TestPki,
    carol: Institution,
    message: Vec<u8>,
}

fn below() -> &'static Below {
    static B: OnceLock<Below> = OnceLock::new();
    B.get_or_init(|| {
        let w = world();
        let intermediate = w.pki.subordinate("revocation").expect("intermediate");
        let carol = intermediate
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000634", "Carol"))
            .expect("institution");
        let message = sealed_by(
            &carol,
            vec![cert(&intermediate.root.cert)],
            &w.bob,
            b"from below",
            w.now,
        );
        Below {
            intermediate,
            carol,
            message,
        }
    })
}

/// A current list of `ca` revoking `revoked` (serials) an hour ago.
fn list_of(ca: &TestPki, revoked: &[&openssl::x509::X509]) -> Vec<u8> {
    let w = world();
    let entries: Vec<_> = revoked
        .iter()
        .map(|x| (x.serial_number(), w.now - HOUR))
        .collect();
    ca.crl(&entries, 1, w.now - 2 * HOUR, w.now + HOUR)
        .unwrap()
        .to_der()
        .unwrap()
}

#[test]
fn every_ca_on_the_path_is_looked_up_also_one_trusted_directly() {
    let (w, b) = (world(), below());
    let root = cert(&w.pki.root.cert);
    let inter = cert(&b.intermediate.root.cert);
    let with = |anchors: Vec<Certificate>, lists: &[Vec<u8>], policy| {
        TrustAnchors::new(anchors).with_revocation(Revocation::new(lists, policy).unwrap())
    };
    let good_root = list_of(&w.pki, &[]);
    let good_inter = list_of(&b.intermediate, &[]);
    let inter_revoked = list_of(&w.pki, &[&b.intermediate.root.cert]);
    let carol_revoked = list_of(&b.intermediate, &[&b.carol.auth.cert]);
    let mandatory = RevocationPolicy::Mandatory;
    // Both lists current and empty: good, under either set of anchors.
    for anchors in [vec![root.clone()], vec![root.clone(), inter.clone()]] {
        let a = with(anchors, &[good_root.clone(), good_inter.clone()], mandatory);
        assert_eq!(errors(&b.message, a).0, vec![]);
    }
    // The leaf revoked by the intermediate's list.
    let a = with(
        vec![root.clone()],
        &[good_root.clone(), carol_revoked],
        mandatory,
    );
    assert_eq!(errors(&b.message, a).0, vec![E::OUTER_CERTIFICATE_REVOKED]);
    // The intermediate revoked by the root's list: also when the intermediate is itself
    // an anchor (OpenSSL's path then stops at it).
    for anchors in [vec![root.clone()], vec![root.clone(), inter.clone()]] {
        let a = with(
            anchors,
            &[inter_revoked.clone(), good_inter.clone()],
            RevocationPolicy::Optional,
        );
        assert_eq!(errors(&b.message, a).0, vec![E::OUTER_CERTIFICATE_REVOKED]);
    }
    // Mandatory without the intermediate's list: the leaf's status is unknown.
    let a = with(vec![root], &[good_root], mandatory);
    assert_eq!(
        errors(&b.message, a).0,
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
}

#[test]
fn a_partial_list_revokes_but_never_vouches() {
    use openssl::asn1::{Asn1Object, Asn1OctetString};
    use openssl::x509::X509Extension;
    let w = world();
    let ext = |oid: &str, critical: bool, der: &[u8]| {
        X509Extension::new_from_der(
            &Asn1Object::from_str(oid).unwrap(),
            critical,
            &Asn1OctetString::new_from_bytes(der).unwrap(),
        )
        .unwrap()
    };
    let partial = |revoked: &[&Institution], e: X509Extension| {
        let entries: Vec<_> = revoked
            .iter()
            .map(|i| (i.auth.cert.serial_number(), w.now - HOUR))
            .collect();
        w.pki
            .crl_with(&entries, 2, w.now - 2 * HOUR, w.now + HOUR, vec![e])
            .unwrap()
            .to_der()
            .unwrap()
    };
    let kinds = [
        // deltaCRLIndicator (base CRL number 1)
        || ("2.5.29.27", true, vec![0x02, 0x01, 0x01]),
        // issuingDistributionPoint: onlyContainsCACerts
        || ("2.5.29.28", true, vec![0x30, 0x03, 0x82, 0x01, 0xff]),
        // an extension nobody knows, critical
        || ("1.3.6.1.4.1.99999.1", true, vec![0x05, 0x00]),
    ];
    for kind in kinds {
        let (oid, critical, der) = kind();
        let list = vec![partial(&[&w.alice], ext(oid, critical, &der))];
        let a = anchors(&list, RevocationPolicy::Mandatory);
        assert_eq!(a.revocation().incomplete().len(), 1, "{oid}");
        assert_eq!(
            errors(&w.from_alice, a.clone()).0,
            vec![E::OUTER_CERTIFICATE_REVOKED],
            "{oid}"
        );
        assert_eq!(
            errors(&w.from_dave, a).0,
            vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN],
            "{oid}: a partial list said good"
        );
    }
    // Delta and partitioned lists are partial also when not marked critical.
    for (oid, der) in [
        ("2.5.29.27", vec![0x02, 0x01, 0x01]),
        ("2.5.29.28", vec![0x30, 0x03, 0x82, 0x01, 0xff]),
    ] {
        let list = vec![partial(&[&w.alice], ext(oid, false, &der))];
        let a = anchors(&list, RevocationPolicy::Mandatory);
        assert_eq!(a.revocation().incomplete().len(), 1, "{oid} non-critical");
        assert_eq!(
            errors(&w.from_dave, a).0,
            vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN],
            "{oid} non-critical: a partial list said good"
        );
    }
    // A non-critical unknown extension changes nothing.
    let list = vec![partial(
        &[],
        ext("1.3.6.1.4.1.99999.1", false, &[0x05, 0x00]),
    )];
    let a = anchors(&list, RevocationPolicy::Mandatory);
    assert!(a.revocation().incomplete().is_empty());
    assert_eq!(errors(&w.from_dave, a).0, vec![]);
}

#[test]
fn an_expired_certificate_needs_a_list_that_keeps_expired_ones() {
    use openssl::asn1::{Asn1Object, Asn1OctetString};
    use openssl::x509::X509Extension;
    let w = world();
    let expired = w
        .pki
        .institution(
            &InstitutionSpec::new("NIHII-HOSPITAL", "71000832", "Eve").with_auth_validity(
                etee_testpki::Validity {
                    not_before: w.now - 30 * 24 * HOUR,
                    not_after: w.now - 24 * HOUR,
                },
            ),
        )
        .unwrap();
    let (leaf, root) = (&expired.auth.cert, &w.pki.root.cert);
    let plain = Revocation::new(&[list_of(&w.pki, &[])], RevocationPolicy::Mandatory).unwrap();
    // A CA may drop an expired certificate from its list: not listed says nothing.
    assert_eq!(plain.status(leaf, root, w.now), CertStatus::Unknown);
    let keeps = w
        .pki
        .crl_with(
            &[],
            2,
            w.now - 2 * HOUR,
            w.now + HOUR,
            vec![X509Extension::new_from_der(
                &Asn1Object::from_str("2.5.29.60").unwrap(),
                false,
                // GeneralizedTime 20200101000000Z
                &Asn1OctetString::new_from_bytes(b"\x18\x0f20200101000000Z").unwrap(),
            )
            .unwrap()],
        )
        .unwrap()
        .to_der()
        .unwrap();
    let keeps = Revocation::new(&[keeps], RevocationPolicy::Mandatory).unwrap();
    assert_eq!(keeps.status(leaf, root, w.now), CertStatus::Good);
}

#[test]
fn times_allow_the_official_clock_skew() {
    let w = world();
    let (alice, root) = (&w.alice.auth.cert, &w.pki.root.cert);
    let serial = alice.serial_number();
    // Issued two minutes "in the future" by a CA whose clock runs ahead, revoking Alice
    // one minute ahead: both count now.
    let ahead = w
        .pki
        .crl(&[(serial, w.now + 60)], 1, w.now + 120, w.now + HOUR)
        .unwrap()
        .to_der()
        .unwrap();
    let r = Revocation::new(&[ahead], RevocationPolicy::Mandatory).unwrap();
    assert_eq!(r.status(alice, root, w.now), CertStatus::Revoked);
    assert_eq!(r.status(&w.dave.auth.cert, root, w.now), CertStatus::Good);
    // Beyond the skew they do not.
    assert_eq!(
        r.status(alice, root, w.now - 3600),
        CertStatus::Unknown,
        "a list from the future vouched"
    );
}

/// A list of the root, made and signed here, whose one entry (Alice's certificate,
/// revoked an hour ago) carries `entry_extension` (an Extension's DER): the test PKI's
/// builder cannot add entry extensions.
fn list_with_entry_extension(entry_extension: &[u8]) -> Vec<u8> {
    use openssl::hash::MessageDigest;
    use openssl::sign::Signer;
    let w = world();
    let time = |t: i64| {
        let s = time::OffsetDateTime::from_unix_timestamp(t)
            .unwrap()
            .format(&time::macros::format_description!(
                "[year repr:last_two][month][day][hour][minute][second]Z"
            ))
            .unwrap();
        der(0x17, s.as_bytes())
    };
    // sha256WithRSAEncryption with NULL parameters.
    let alg = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let serial = w.alice.auth.cert.serial_number().to_bn().unwrap().to_vec();
    let serial = if serial[0] & 0x80 != 0 {
        [vec![0], serial].concat()
    } else {
        serial
    };
    let entry = der(
        0x30,
        &[
            der(0x02, &serial),
            time(w.now - HOUR),
            der(0x30, entry_extension),
        ]
        .concat(),
    );
    let tbs = der(
        0x30,
        &[
            der(0x02, &[1]),
            alg.clone(),
            w.pki.root.cert.subject_name().to_der().unwrap(),
            time(w.now - 2 * HOUR),
            time(w.now + HOUR),
            der(0x30, &entry),
        ]
        .concat(),
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &w.pki.root.key).unwrap();
    signer.update(&tbs).unwrap();
    let signature = signer.sign_to_vec().unwrap();
    der(
        0x30,
        &[tbs, alg, der(0x03, &[vec![0], signature].concat())].concat(),
    )
}

#[test]
fn a_list_with_an_entry_extension_it_does_not_know_is_partial() {
    let w = world();
    // An unknown critical entry extension (RFC 5280 §5.3: the list must not be used to
    // say a certificate is good); its revocation still counts.
    let unknown = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x86, 0x8d, 0x1f, 0x02],
            ),
            der(0x01, &[0xff]),
            der(0x04, &[0x05, 0x00]),
        ]
        .concat(),
    );
    let list = vec![list_with_entry_extension(&unknown)];
    let a = anchors(&list, RevocationPolicy::Mandatory);
    assert_eq!(a.revocation().incomplete().len(), 1);
    assert_eq!(
        errors(&w.from_alice, a.clone()).0,
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    assert_eq!(
        errors(&w.from_dave, a).0,
        vec![E::OUTER_CERTIFICATE_STATUS_UNKNOWN]
    );
    // A reason code (keyCompromise), critical or not, is understood: the list is complete.
    let reason = der(
        0x30,
        &[
            der(0x06, &[0x55, 0x1d, 0x15]),
            der(0x01, &[0xff]),
            der(0x04, &der(0x0a, &[1])),
        ]
        .concat(),
    );
    let list = vec![list_with_entry_extension(&reason)];
    let a = anchors(&list, RevocationPolicy::Mandatory);
    assert!(a.revocation().incomplete().is_empty());
    assert_eq!(
        errors(&w.from_alice, a.clone()).0,
        vec![E::OUTER_CERTIFICATE_REVOKED]
    );
    assert_eq!(errors(&w.from_dave, a).0, vec![]);
}

/// A sealer's own certificate path against its lists (`Revocation::own_status`): the leaf
/// or an intermediate revoked is `Revoked`; a complete current list of every issuer not
/// naming them is `Good`; no lists, a missing issuer or a key-id signer say nothing.
#[test]
fn a_sealers_own_path_is_judged_by_the_lists() {
    let (w, b) = (world(), below());
    let root = cert(&w.pki.root.cert);
    let signer = |inst: &Institution, chain: Vec<Certificate>| SignerRef::Certificate {
        cert: cert(&inst.auth.cert),
        chain,
    };
    let lists = |lists: &[Vec<u8>]| Revocation::new(lists, RevocationPolicy::Optional).unwrap();
    let alice = signer(&w.alice, vec![]);
    let dave = signer(&w.dave, vec![]);
    let revoking_alice = lists(&[alice_revoked_by(&w.pki, w.now + HOUR)]);
    let anchors = [root.clone()];
    assert_eq!(
        revoking_alice.own_status(&alice, &anchors, w.now),
        CertStatus::Revoked
    );
    assert_eq!(
        revoking_alice.own_status(&dave, &anchors, w.now),
        CertStatus::Good
    );
    // Before the revocation date she was not revoked yet (the list naming her is no proof
    // of good standing then: unknown, so she would have sealed).
    assert_eq!(
        revoking_alice.own_status(&alice, &anchors, w.now - 3 * HOUR / 2),
        CertStatus::Unknown
    );
    // No lists; the issuer nowhere (neither in the chain nor among the anchors); no
    // certificate at all.
    assert_eq!(
        Revocation::default().own_status(&alice, &anchors, w.now),
        CertStatus::Unknown
    );
    assert_eq!(
        revoking_alice.own_status(&alice, &[], w.now),
        CertStatus::Unknown
    );
    assert_eq!(
        revoking_alice.own_status(&SignerRef::KeyId(vec![1; 20]), &anchors, w.now),
        CertStatus::Unknown
    );
    // Below an intermediate (carried in the signer's chain): the intermediate revoked by
    // the root's list revokes the path; the leaf's own list missing leaves it unknown.
    let carol = signer(&b.carol, vec![cert(&b.intermediate.root.cert)]);
    let good_inter = list_of(&b.intermediate, &[]);
    let inter_revoked = list_of(&w.pki, &[&b.intermediate.root.cert]);
    assert_eq!(
        lists(&[inter_revoked, good_inter.clone()]).own_status(&carol, &anchors, w.now),
        CertStatus::Revoked
    );
    assert_eq!(
        lists(&[list_of(&w.pki, &[]), good_inter]).own_status(&carol, &anchors, w.now),
        CertStatus::Good
    );
    assert_eq!(
        lists(&[list_of(&w.pki, &[])]).own_status(&carol, &anchors, w.now),
        CertStatus::Unknown
    );
}

/// A sealer's own certificate outside its validity period is refused whatever the
/// revocation configuration (every receiver would report `OUTER_CERTIFICATE_EXPIRED` or
/// `_NOT_YET_VALID`), the bound named; inside it (to the second) the lists decide as
/// before; a key-id signer has no certificate to judge.
#[test]
fn a_sealer_outside_its_certificates_validity_is_refused() {
    use etee_formats::ocsp::{NotVouched, SealingStatus};
    let w = world();
    let validity = etee_testpki::Validity {
        not_before: w.now - 30 * 24 * HOUR,
        not_after: w.now - 24 * HOUR,
    };
    let eve = w
        .pki
        .institution(
            &InstitutionSpec::new("NIHII-HOSPITAL", "71000833", "Eve").with_auth_validity(validity),
        )
        .unwrap();
    let signer = |inst: &Institution| SignerRef::Certificate {
        cert: cert(&inst.auth.cert),
        chain: vec![],
    };
    let anchors = [cert(&w.pki.root.cert)];
    let none = Revocation::default();

    let refused = none
        .sealing_values(&signer(&eve), &anchors, w.now)
        .unwrap_err();
    assert_eq!(refused.kind(), NotVouched::NotGood);
    assert!(
        matches!(&refused, SealingStatus::OutsideValidity { at, expired: true, .. } if *at == validity.not_after),
        "{refused:?}"
    );
    let text = refused.to_string();
    assert!(text.contains("Eve"), "the certificate is named: {text}");
    assert!(
        text.contains("OUTER_CERTIFICATE_EXPIRED") && text.contains("renew"),
        "{text}"
    );
    assert!(
        text.contains(&etee_formats::rfc3339(validity.not_after)),
        "{text}"
    );
    // Without anchors the certificate alone is judged.
    assert!(none.sealing_values(&signer(&eve), &[], w.now).is_err());
    // At its last second it was still valid; before its first, not yet.
    assert!(none
        .sealing_values(&signer(&eve), &anchors, validity.not_after)
        .is_ok());
    let early = none
        .sealing_values(&signer(&eve), &anchors, validity.not_before - 1)
        .unwrap_err();
    assert!(
        matches!(early, SealingStatus::OutsideValidity { expired: false, .. }),
        "{early:?}"
    );
    assert!(early.to_string().contains("NOT_YET_VALID"), "{early}");
    // Lists that vouch for everyone do not make an expired certificate good.
    let good_lists = Revocation::new(&[list_of(&w.pki, &[])], RevocationPolicy::Optional).unwrap();
    assert!(matches!(
        good_lists.sealing_values(&signer(&eve), &anchors, w.now),
        Err(SealingStatus::OutsideValidity { .. })
    ));
    // A valid sealer, and a key-id signer.
    assert_eq!(
        none.sealing_values(&signer(&w.alice), &anchors, w.now)
            .unwrap(),
        None
    );
    assert!(none
        .sealing_values(&SignerRef::KeyId(vec![1; 20]), &anchors, w.now)
        .is_ok());
}
