//! What unsealing does with key providers that fail: a decryption that fails is part of
//! the message's verdict (a random key carries on, no padding oracle), a provider that
//! could not try at all (unreachable, refusing) stops the unseal with
//! `UnsealError::Key`; and every candidate key is asked, whatever the ones before it gave,
//! so that neither the keys asked nor a provider's refusal depend on whether an earlier
//! blob decrypted.

use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealError, UnsealOptions};
use etee_formats::keys::{
    DecryptionKey, KeyError, KeyId, KeyRing, PrivateKeyOps, SignerRef, SigningKey,
};
use etee_formats::keystore::SoftwareKeys;
use etee_formats::trust::TrustAnchors;
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use zeroize::Zeroizing;

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
}

/// A provider that counts the decryptions asked of it, and either hands them to `inner`
/// or answers `Unavailable` (a custody process gone).
struct Provider {
    inner: Option<SoftwareKeys>,
    asked: AtomicUsize,
}

impl PrivateKeyOps for Provider {
    fn sign_pss_sha256(&self, key: &KeyId, _: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnknownKey(key.clone()))
    }

    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        match &self.inner {
            Some(keys) => keys.decrypt_pkcs1v15(key, blob),
            None => Err(KeyError::Unavailable("custody process: gone".into())),
        }
    }
}

/// `who`'s ETK certificate in a ring, its decryptions done by `inner`'s key `etk` (any
/// key: a wrong one fails every decryption) or, without one, unavailable.
fn holding(
    who: &Institution,
    inner: Option<&openssl::pkey::PKey<openssl::pkey::Private>>,
) -> (DecryptionKey, Arc<Provider>) {
    let provider = Arc::new(Provider {
        inner: inner.map(|k| {
            let mut keys = SoftwareKeys::new();
            keys.insert(KeyId("etk".into()), k.clone());
            keys
        }),
        asked: AtomicUsize::new(0),
    });
    let etk = cert(&who.etk_cert);
    let key = DecryptionKey {
        ops: provider.clone(),
        key: KeyId("etk".into()),
        serial: etk.serial().to_vec(),
        cert: Some(etk),
        ski: None,
        modulus_bits: 2048,
    };
    (key, provider)
}

struct World {
    pki: TestPki,
    alice: Institution,
    bob: Institution,
    carol: Institution,
}

fn world() -> World {
    let pki = TestPki::generate("key providers").expect("PKI");
    let inst = |id: &str, name: &str| {
        pki.institution(&InstitutionSpec::new("NIHII-HOSPITAL", id, name))
            .expect("institution")
    };
    let (alice, bob, carol) = (
        inst("71000436", "alice"),
        inst("71000535", "bob"),
        inst("71000634", "carol"),
    );
    World {
        pki,
        alice,
        bob,
        carol,
    }
}

/// Alice's message for the recipients `to`, in that order.
fn sealed(w: &World, to: &[&Institution]) -> Vec<u8> {
    let mut keys = SoftwareKeys::new();
    keys.insert(KeyId("auth".into()), w.alice.auth.key.clone());
    let signer = SigningKey {
        ops: Arc::new(keys),
        key: KeyId("auth".into()),
        signer: SignerRef::Certificate {
            cert: cert(&w.alice.auth.cert),
            chain: vec![],
        },
    };
    let recipients: Vec<Recipient> = to
        .iter()
        .map(|i| Recipient::Certificate(cert(&i.etk_cert)))
        .collect();
    let mut out = Vec::new();
    seal(
        &signer,
        &recipients,
        None,
        &b"for the ring"[..],
        &mut out,
        &SealOptions::default(),
    )
    .expect("seal");
    out
}

fn options(w: &World) -> UnsealOptions {
    UnsealOptions {
        anchors: TrustAnchors::new(vec![cert(&w.pki.root.cert)]),
        ..Default::default()
    }
}

#[test]
fn a_provider_that_cannot_try_stops_the_unseal_whatever_the_other_keys_give() {
    let w = world();
    for order in [[&w.bob, &w.carol], [&w.carol, &w.bob]] {
        let (bob_key, bob) = holding(&w.bob, Some(&w.bob.etk_key));
        let (carol_key, carol) = holding(&w.carol, None);
        let mut ring = KeyRing::new();
        ring.add(bob_key);
        ring.add(carol_key);
        match unseal_to_vec(&sealed(&w, &order), &ring, &options(&w)) {
            Err(UnsealError::Key(KeyError::Unavailable(why))) => assert!(why.contains("gone")),
            Err(e) => panic!("{e}"),
            Ok((r, _)) => panic!(
                "a verdict although a key could not be asked: {:?}",
                r.verdict
            ),
        }
        // Both asked, once each, in either order: Bob's key opening it first did not
        // spare Carol's provider the question.
        assert_eq!(
            (
                bob.asked.load(Ordering::SeqCst),
                carol.asked.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
    }
}

#[test]
fn every_candidate_is_asked_even_after_one_opened_the_message() {
    let w = world();
    // Carol's certificate, but a key that is not hers: every decryption fails.
    let (bob_key, bob) = holding(&w.bob, Some(&w.bob.etk_key));
    let (carol_key, carol) = holding(&w.carol, Some(&w.alice.etk_key));
    let mut ring = KeyRing::new();
    ring.add(bob_key);
    ring.add(carol_key);
    let (result, content) = unseal_to_vec(&sealed(&w, &[&w.bob, &w.carol]), &ring, &options(&w))
        .expect("no provider failed");
    assert!(result.verdict.is_clean(), "{:?}", result.verdict);
    assert_eq!(content.as_deref(), Some(&b"for the ring"[..]));
    assert_eq!(
        (
            bob.asked.load(Ordering::SeqCst),
            carol.asked.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}
