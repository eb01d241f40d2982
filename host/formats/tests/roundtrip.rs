//! Seal → unseal round trips as properties, over generated keys.
//!
//! - Any payload (0–200 000 bytes, with extra weight on the 1000-byte chunk and 16-byte
//!   AES block boundaries) sealed for any non-empty subset of {Bob, Carol, KEK} opens
//!   cleanly, with the same content, for every addressed opener; an opener that is not
//!   addressed gets the official fatal and no content.
//! - The WEB_AUTHN form (signer and recipient named by subjectKeyIdentifier) opens cleanly
//!   for the expected key id and not for a wrong one (spec §6).
//! - Sealing from a reader that yields one byte at a time and unsealing from a reader that
//!   yields 1–7 bytes at a time (into a writer that takes a few bytes at a time) gives the
//!   same message size and the same result as the in-memory path.

use etee_formats::cert::Certificate;
use etee_formats::cms::{
    addressees, seal, unseal, unseal_to_vec, AddresseeRef, ExpectedSigner, Kek, Recipient,
    SealOptions, UnsealOptions, Unsealed,
};
use etee_formats::keys::{DecryptionKey, KeyId, KeyRing, SignerRef, SigningKey};
use etee_formats::keystore::SoftwareKeys;
use etee_formats::trust::TrustAnchors;
use etee_formats::verdict::{Error as E, Fatal};
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use openssl::pkey::{PKey, Public};
use proptest::prelude::*;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

const ALICE_KEY_ID: &[u8] = b"alice-webauthn-key";
const BOB_KEY_ID: &[u8] = b"bob-webauthn-key";

/// Everything the properties share; RSA key generation is slow, so it is built once.
struct World {
    /// Evaluation time and signing time of every message.
    now: i64,
    anchors: TrustAnchors,
    /// Alice signing with her eHealth certificate (issuerAndSerialNumber, certs carried).
    alice: SigningKey,
    /// Alice signing as a WEB_AUTHN key: subjectKeyIdentifier, no certificates.
    alice_web: SigningKey,
    alice_auth_cert: Certificate,
    alice_public: PKey<Public>,
    carol_auth_public: PKey<Public>,
    bob: Party,
    carol: Party,
    /// Bob's ETK key addressed by key id (KeyDepot / WEB_AUTHN).
    bob_web_ring: KeyRing,
    bob_web_recipient: Recipient,
    kek: Kek,
}

struct Party {
    ring: KeyRing,
    recipient: Recipient,
}

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
}

fn party(name: &str, inst: &Institution) -> Party {
    let mut keys = SoftwareKeys::new();
    let id = KeyId(format!("{name}-etk"));
    keys.insert(id.clone(), inst.etk_key.clone());
    let etk_cert = cert(&inst.etk_cert);
    let mut ring = KeyRing::new();
    ring.add(DecryptionKey {
        ops: Arc::new(keys),
        key: id,
        serial: etk_cert.serial().to_vec(),
        cert: Some(etk_cert.clone()),
        ski: None,
        modulus_bits: inst.etk_key.bits(),
    });
    Party {
        ring,
        recipient: Recipient::Certificate(etk_cert),
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let pki = TestPki::generate("roundtrip").expect("test PKI");
        let inst = |id: &str, name: &str| {
            pki.institution(&InstitutionSpec::new("NIHII-PHARMACY", id, name))
                .expect("institution")
        };
        let (alice, bob, carol) = (
            inst("11111111", "Alice"),
            inst("27150201", "Bob"),
            inst("33333333", "Carol"),
        );
        let root = cert(&pki.root.cert);

        let mut alice_keys = SoftwareKeys::new();
        alice_keys.insert(KeyId("authentication".into()), alice.auth.key.clone());
        let alice_keys = Arc::new(alice_keys);
        let alice_auth_cert = cert(&alice.auth.cert);
        let signer = |signer| SigningKey {
            ops: alice_keys.clone(),
            key: KeyId("authentication".into()),
            signer,
        };

        let mut bob_keys = SoftwareKeys::new();
        bob_keys.insert(KeyId("bob-web".into()), bob.etk_key.clone());
        let mut bob_web_ring = KeyRing::new();
        bob_web_ring.add(DecryptionKey {
            ops: Arc::new(bob_keys),
            key: KeyId("bob-web".into()),
            cert: None,
            // A serial no KTRI of these tests uses: only the key id must match.
            serial: vec![0x7f, 0x7e, 0x7d],
            ski: Some(BOB_KEY_ID.to_vec()),
            modulus_bits: bob.etk_key.bits(),
        });
        let bob_etk_public =
            PKey::public_key_from_der(&bob.etk_key.public_key_to_der().unwrap()).unwrap();

        World {
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
            anchors: TrustAnchors::new(vec![root.clone()]),
            alice: signer(SignerRef::Certificate {
                cert: alice_auth_cert.clone(),
                chain: vec![root],
            }),
            alice_web: signer(SignerRef::KeyId(ALICE_KEY_ID.to_vec())),
            alice_public: alice_auth_cert.public_key().unwrap(),
            alice_auth_cert,
            carol_auth_public: cert(&carol.auth.cert).public_key().unwrap(),
            bob: party("bob", &bob),
            carol: party("carol", &carol),
            bob_web_ring,
            bob_web_recipient: Recipient::KeyId {
                ski: BOB_KEY_ID.to_vec(),
                public_key: bob_etk_public,
            },
            kek: Kek::new(b"0123456789abcdef", b"kgss-key-id-1").unwrap(),
        }
    })
}

/// Deterministic bytes from a seed (xorshift64*), cheaper than shrinking a huge Vec.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Lengths up to `max`, weighted towards chunk (1000) and AES block (16) boundaries.
fn length(max: usize) -> impl Strategy<Value = usize> {
    let near = move |unit: usize, d: i64, k: usize| ((k * unit) as i64 + d).clamp(0, max as i64);
    prop_oneof![
        3 => 0..max,
        2 => (0..=max / 1000, -2i64..=2).prop_map(move |(k, d)| near(1000, d, k) as usize),
        2 => (0..=64usize, -1i64..=1).prop_map(move |(k, d)| near(16, d, k) as usize),
        1 => 0..48usize,
    ]
}

fn seal_options(w: &World) -> SealOptions {
    SealOptions {
        signing_time: Some(w.now),
        ..Default::default()
    }
}

fn unseal_options(w: &World) -> UnsealOptions {
    UnsealOptions {
        anchors: w.anchors.clone(),
        at: Some(w.now),
        ..Default::default()
    }
}

fn seal_vec(
    signer: &SigningKey,
    recipients: &[Recipient],
    kek: Option<&Kek>,
    data: &[u8],
) -> Vec<u8> {
    let mut msg = Vec::new();
    let n = seal(
        signer,
        recipients,
        kek,
        data,
        &mut msg,
        &seal_options(world()),
    )
    .expect("seal");
    assert_eq!(n, data.len() as u64);
    msg
}

fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

/// A clean verdict (no fatal, errors or warnings) that released exactly `data`.
fn assert_opens(result: &(Unsealed, Option<Vec<u8>>), data: &[u8], who: &str) {
    let (u, content) = result;
    assert!(
        u.verdict.fatal.is_none() && u.verdict.errors.is_empty() && u.verdict.warnings.is_empty(),
        "{who}: verdict {:?}",
        u.verdict
    );
    assert!(
        content.as_deref() == Some(data),
        "{who}: content differs ({} bytes released, {} sealed)",
        content.as_ref().map_or(0, Vec::len),
        data.len()
    );
    assert_eq!(u.content_len, data.len() as u64, "{who}");
    assert_eq!(u.content_sha256, sha256(data), "{who}");
}

/// A verdict with exactly this fatal (nothing else) and no content.
fn assert_fatal(result: &(Unsealed, Option<Vec<u8>>), fatal: Fatal, who: &str) {
    let (u, content) = result;
    assert_eq!(u.verdict.fatal, Some(fatal), "{who}: {:?}", u.verdict);
    assert!(content.is_none(), "{who}: content released with a fatal");
}

#[derive(Clone, Copy, Debug)]
enum Opener {
    Bob,
    Carol,
    Kek,
}

fn open(w: &World, msg: &[u8], opener: Opener) -> (Unsealed, Option<Vec<u8>>) {
    let mut opts = unseal_options(w);
    let ring = match opener {
        Opener::Bob => &w.bob.ring,
        Opener::Carol => &w.carol.ring,
        Opener::Kek => {
            opts.kek = Some(Zeroizing::new(w.kek.key().to_vec()));
            static EMPTY: OnceLock<KeyRing> = OnceLock::new();
            EMPTY.get_or_init(KeyRing::new)
        }
    };
    unseal_to_vec(msg, ring, &opts).unwrap()
}

/// `cases` by default (the suite stays a few seconds in debug builds); `PROPTEST_CASES`
/// overrides it for a longer run.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Keep the test tree clean: failures print their minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Seal for a subset of {Bob, Carol, KEK}; every opener gets what it is entitled to.
    #[test]
    fn every_addressed_opener_gets_the_content(
        len in length(200_000),
        seed in any::<u64>(),
        mask in 1u8..8,
    ) {
        let w = world();
        let data = payload(len, seed);
        let (to_bob, to_carol, to_kek) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0);
        let mut recipients = Vec::new();
        if to_bob {
            recipients.push(w.bob.recipient.clone());
        }
        if to_carol {
            recipients.push(w.carol.recipient.clone());
        }
        let msg = seal_vec(&w.alice, &recipients, to_kek.then_some(&w.kek), &data);

        for (opener, addressed) in [
            (Opener::Bob, to_bob),
            (Opener::Carol, to_carol),
            (Opener::Kek, to_kek),
        ] {
            let who = format!("{opener:?} (mask {mask:03b}, {len} bytes)");
            let result = open(w, &msg, opener);
            if addressed {
                assert_opens(&result, &data, &who);
                let sender = result.0.sender.as_ref().expect("sender");
                prop_assert_eq!(sender.certificate.as_ref(), Some(&w.alice_auth_cert));
                prop_assert_eq!(result.0.signing_time, Some(w.now));
            } else {
                let fatal = match opener {
                    Opener::Kek => Fatal::ENVELOPED_DATA_CONTAINS_NO_KEKRECIPIENTINFOS,
                    // A KEK-only message has no KTRI at all: that is the official fatal.
                    _ if recipients.is_empty() => {
                        Fatal::ENVELOPED_DATA_CONTAINS_NO_KEYTRANSRECIPIENTINFOS
                    }
                    _ => Fatal::DECRYPTION_PRIVATE_KEY_NOT_FOUND,
                };
                assert_fatal(&result, fatal, &who);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(12))]

    /// WEB_AUTHN: signer and recipient by subjectKeyIdentifier (spec §6).
    #[test]
    fn web_authn_key_ids(len in length(20_000), seed in any::<u64>()) {
        let w = world();
        let data = payload(len, seed);
        let msg = seal_vec(&w.alice_web, std::slice::from_ref(&w.bob_web_recipient), None, &data);
        let expect = |ski: &[u8], public_key: &PKey<Public>| UnsealOptions {
            expected_signers: vec![ExpectedSigner::KeyId {
                ski: ski.to_vec(),
                public_key: public_key.clone(),
            }],
            ..unseal_options(w)
        };

        let good = unseal_to_vec(&msg, &w.bob_web_ring, &expect(ALICE_KEY_ID, &w.alice_public)).unwrap();
        assert_opens(&good, &data, "expected key id");
        let sender = good.0.sender.as_ref().expect("sender");
        prop_assert_eq!(sender.key_id.as_deref(), Some(ALICE_KEY_ID));
        prop_assert!(sender.certificate.is_none());

        // A wrong key id: the signature cannot be verified, as in the official library.
        let (u, content) =
            unseal_to_vec(&msg, &w.bob_web_ring, &expect(b"mallory-key", &w.alice_public)).unwrap();
        prop_assert_eq!(u.verdict.fatal, None);
        prop_assert!(u.verdict.errors.contains(&E::OUTER_SIGNATURE_COULD_NOT_BE_VERIFIED), "{:?}", u.verdict);
        prop_assert!(u.verdict.errors.contains(&E::INNER_SIGNATURE_COULD_NOT_BE_VERIFIED), "{:?}", u.verdict);
        prop_assert!(content.is_none());

        // No expected signer at all: same.
        let (u, content) = unseal_to_vec(&msg, &w.bob_web_ring, &unseal_options(w)).unwrap();
        prop_assert!(u.verdict.errors.contains(&E::OUTER_SIGNATURE_COULD_NOT_BE_VERIFIED), "{:?}", u.verdict);
        prop_assert!(content.is_none());

        // The right key id with someone else's public key: the signature does not match.
        let (u, content) =
            unseal_to_vec(&msg, &w.bob_web_ring, &expect(ALICE_KEY_ID, &w.carol_auth_public)).unwrap();
        prop_assert!(
            u.verdict.errors.contains(&E::OUTER_SIGNATURE_DOES_NOT_MATCH_AUTHENTICATION_CERTIFICATE),
            "{:?}", u.verdict
        );
        prop_assert!(content.is_none());

        // Bob's certificate-addressed key does not answer to a key id.
        let result = unseal_to_vec(&msg, &w.bob.ring, &expect(ALICE_KEY_ID, &w.alice_public)).unwrap();
        assert_fatal(&result, Fatal::DECRYPTION_PRIVATE_KEY_NOT_FOUND, "serial-only ring");
    }
}

/// Yields at most one byte per `read`.
struct OneByte<'a>(&'a [u8]);

impl Read for OneByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((&b, rest)), Some(out)) => {
                *out = b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// Yields 1–7 bytes per `read`, the sizes drawn from a seed.
struct Trickle<'a> {
    data: &'a [u8],
    state: u64,
}

impl Trickle<'_> {
    fn step(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % 7) as usize
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step().min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Accepts 1–5 bytes per `write` (short writes, which `write_all` must handle).
struct ShortWriter {
    out: Vec<u8>,
    calls: usize,
}

impl Write for ShortWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        let n = buf.len().min(1 + self.calls % 5);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(12))]

    /// Streaming with tiny reads and writes on both sides gives the in-memory result.
    #[test]
    fn tiny_reads_and_writes(len in length(40_000), seed in any::<u64>(), kek in any::<bool>()) {
        let w = world();
        let data = payload(len, seed);
        let recipients = [w.bob.recipient.clone()];
        let kek = kek.then_some(&w.kek);

        let mut sealed = ShortWriter { out: Vec::new(), calls: 0 };
        let n = seal(&w.alice, &recipients, kek, OneByte(&data), &mut sealed, &seal_options(w))
            .expect("seal from a one-byte reader");
        prop_assert_eq!(n, data.len() as u64);
        let msg = sealed.out;
        // CEK, IV and PSS salt are random, but every length is fixed: same size as in memory.
        let reference = seal_vec(&w.alice, &recipients, kek, &data);
        prop_assert_eq!(msg.len(), reference.len());

        let mut content = ShortWriter { out: Vec::new(), calls: 0 };
        let trickle = Trickle { data: &msg, state: seed | 1 };
        let streamed = unseal(trickle, &mut content, &w.bob.ring, &unseal_options(w))
            .expect("unseal from a trickling reader");
        let in_memory = open(w, &msg, Opener::Bob);
        assert_opens(&in_memory, &data, "in memory");
        prop_assert_eq!(&streamed.verdict, &in_memory.0.verdict);
        prop_assert_eq!(content.out, data);
        prop_assert_eq!(streamed.content_sha256, in_memory.0.content_sha256);
        prop_assert_eq!(streamed.opened_with, in_memory.0.opened_with);

        // And the reference message, sealed in one go, trickles out the same way.
        let mut content = Vec::new();
        let trickle = Trickle { data: &reference, state: seed.rotate_left(17) | 1 };
        let again = unseal(trickle, &mut content, &w.bob.ring, &unseal_options(w)).unwrap();
        prop_assert!(again.verdict.is_clean() && again.verdict.warnings.is_empty());
        prop_assert_eq!(content.len(), len);
    }
}

/// `addressees` reads whom a message is for from its head alone: the key-transport
/// recipients (issuer and serial, or key id) and the KGSS key id of a KEK recipient; a
/// receiver's ring is recognised, another's is not; garbage is the unsealer's fatal.
#[test]
fn addressees_are_read_from_the_head() {
    let w = world();
    let both = seal_vec(
        &w.alice,
        &[w.bob.recipient.clone(), w.bob_web_recipient.clone()],
        Some(&w.kek),
        b"for Bob and for KGSS readers",
    );
    let a = addressees(&both[..]).expect("head parses");
    assert_eq!(a.kek_ids, vec![b"kgss-key-id-1".to_vec()]);
    assert_eq!(a.key_transport.len(), 2);
    assert!(a
        .key_transport
        .iter()
        .any(|r| matches!(r, AddresseeRef::Ski(ski) if ski == BOB_KEY_ID)));
    assert!(a.has_key_in(&w.bob.ring));
    assert!(a.has_key_in(&w.bob_web_ring));
    assert!(!a.has_key_in(&w.carol.ring));

    let kek_only = seal_vec(&w.alice, &[], Some(&w.kek), b"unknown recipient");
    let a = addressees(&kek_only[..]).expect("head parses");
    assert!(a.key_transport.is_empty());
    assert_eq!(a.kek_ids.len(), 1);
    assert!(!a.has_key_in(&w.bob.ring));

    // Only the head is read: a message cut after its recipient infos still answers.
    let head_only = &both[..both.len() / 2];
    assert_eq!(addressees(head_only).expect("head parses").kek_ids.len(), 1);
    assert_eq!(
        addressees(&b"not a CMS message"[..]),
        Err(Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT)
    );
}

/// The middle layer of a sealed message: the BER of its ContentInfo(EnvelopedData), the
/// EnvelopedData version, and the keyEncryptionAlgorithm OID (content octets) of each
/// KEKRecipientInfo.
fn middle_layer(msg: &[u8]) -> (Vec<u8>, i64, Vec<Vec<u8>>) {
    use etee_formats::ber::slice::parse_exact;
    use etee_formats::ber::tag;
    let outer = parse_exact(msg).unwrap();
    let mut ci = outer.seq().unwrap();
    ci.next(tag::OID).unwrap();
    let signed = ci
        .next(tag::ctx_cons(0))
        .unwrap()
        .seq()
        .unwrap()
        .any()
        .unwrap();
    let mut sd = signed.seq().unwrap();
    sd.next(tag::INTEGER).unwrap();
    sd.next(tag::SET).unwrap();
    let mut encap = sd.next(tag::SEQUENCE).unwrap().seq().unwrap();
    encap.next(tag::OID).unwrap();
    let econtent = encap
        .next(tag::ctx_cons(0))
        .unwrap()
        .seq()
        .unwrap()
        .any()
        .unwrap();
    let middle = econtent.octets().unwrap().into_owned();

    let ci = parse_exact(&middle).unwrap();
    let mut ci = ci.seq().unwrap();
    ci.next(tag::OID).unwrap();
    let env = ci
        .next(tag::ctx_cons(0))
        .unwrap()
        .seq()
        .unwrap()
        .any()
        .unwrap();
    let mut env = env.seq().unwrap();
    let version = env.next(tag::INTEGER).unwrap().small_int().unwrap();
    let infos = env.next(tag::SET).unwrap();
    let mut wraps = Vec::new();
    for ri in infos.children() {
        let ri = ri.unwrap();
        if ri.tag == tag::ctx_cons(2) {
            let mut kekri = ri.seq().unwrap();
            assert_eq!(kekri.next(tag::INTEGER).unwrap().small_int().unwrap(), 4);
            kekri.next(tag::SEQUENCE).unwrap();
            let mut alg = kekri.next(tag::SEQUENCE).unwrap().seq().unwrap();
            wraps.push(alg.next(tag::OID).unwrap().content.to_vec());
            assert!(!alg.has_more().unwrap(), "wrap parameters must be absent");
        }
    }
    (middle, version, wraps)
}

/// Whether the `openssl` command is there (tests using it are skipped otherwise).
fn openssl_cli() -> bool {
    let there = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok();
    if !there {
        etee_testpki::skip::skip("openssl not on PATH");
    }
    there
}

/// A KEK of 16, 24 or 32 bytes: the KEKRecipientInfo names the AES key wrap of that size
/// (id-aes128/192/256-wrap, as BouncyCastle labels it); the EnvelopedData is version 2; the
/// KEK opens the message; `openssl cms -decrypt -secretkey` decrypts the middle layer.
#[test]
fn kek_of_each_size_is_labelled_with_its_wrap() {
    let w = world();
    let data = payload(2500, 7);
    let key_id = b"kgss-key-id-sizes";
    for (len, last_arc) in [(16usize, 5u8), (24, 25), (32, 45)] {
        let key: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) ^ 0x5a).collect();
        let kek = Kek::new(&key, key_id).unwrap();
        for recipients in [vec![], vec![w.bob.recipient.clone()]] {
            let who = format!("{len}-byte KEK, {} KTRI", recipients.len());
            let msg = seal_vec(&w.alice, &recipients, Some(&kek), &data);
            let (middle, version, wraps) = middle_layer(&msg);
            assert_eq!(version, 2, "{who}");
            assert_eq!(
                wraps,
                vec![vec![
                    0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, last_arc
                ]],
                "{who}"
            );

            // Our unsealer unwraps with every size. The official policy (LIB220
            // UNKNOWN_RECIPIENT) authorises id-aes128-wrap only, so the larger wraps are
            // reported as it reports them, and the content is then withheld.
            let mut opts = unseal_options(w);
            opts.kek = Some(Zeroizing::new(key.clone()));
            let result = unseal_to_vec(&msg, &KeyRing::new(), &opts).unwrap();
            if len == 16 {
                assert_opens(&result, &data, &who);
            } else {
                let (u, _) = &result;
                assert_eq!(u.verdict.fatal, None, "{who}: {:?}", u.verdict);
                assert_eq!(
                    u.verdict.errors,
                    vec![E::DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED],
                    "{who}"
                );
                assert_eq!(u.content_sha256, sha256(&data), "{who}: decrypted content");
            }
            // A wrong KEK of the same size does not open it.
            let mut wrong = key.clone();
            wrong[0] ^= 1;
            opts.kek = Some(Zeroizing::new(wrong));
            let (u, content) = unseal_to_vec(&msg, &KeyRing::new(), &opts).unwrap();
            assert_eq!(
                u.verdict.fatal,
                Some(Fatal::SECRET_KEY_CAN_NOT_DECRYPT_KEKRECIPIENTINFOS),
                "{who}"
            );
            assert!(content.is_none());

            if !openssl_cli() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let (input, output) = (dir.path().join("middle.der"), dir.path().join("inner.der"));
            std::fs::write(&input, &middle).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["cms", "-decrypt", "-binary", "-inform", "DER", "-in"])
                .arg(&input)
                .args(["-secretkey", &hex::encode(&key)])
                .args(["-secretkeyid", &hex::encode(key_id)])
                .arg("-out")
                .arg(&output)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{who}: openssl cms -decrypt failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // What openssl decrypted is the inner SignedData, holding the plaintext.
            let inner = std::fs::read(&output).unwrap();
            let ci = etee_formats::ber::slice::parse_exact(&inner).unwrap();
            let mut ci = ci.seq().unwrap();
            ci.next(etee_formats::ber::tag::OID).unwrap();
            let sd = ci
                .next(etee_formats::ber::tag::ctx_cons(0))
                .unwrap()
                .seq()
                .unwrap()
                .any()
                .unwrap();
            let mut sd = sd.seq().unwrap();
            sd.any().unwrap();
            sd.any().unwrap();
            let mut encap = sd.any().unwrap().seq().unwrap();
            encap.any().unwrap();
            let econtent = encap.any().unwrap().seq().unwrap().any().unwrap();
            assert_eq!(econtent.octets().unwrap().as_ref(), &data[..], "{who}");
        }
    }
}

/// RFC 5652 §6.1: EnvelopedData version 0 only when every recipient info is version 0
/// (KTRIs by issuer and serial); a KTRI by subjectKeyIdentifier (version 2) or a KEK
/// recipient makes it 2. Every form opens cleanly for its recipient.
#[test]
fn enveloped_data_version_follows_the_recipient_infos() {
    let w = world();
    let data = b"versions";
    let cases: Vec<(&str, Vec<Recipient>, Option<&Kek>, i64)> = vec![
        (
            "certificates",
            vec![w.bob.recipient.clone(), w.carol.recipient.clone()],
            None,
            0,
        ),
        ("key id", vec![w.bob_web_recipient.clone()], None, 2),
        (
            "certificate and key id",
            vec![w.bob.recipient.clone(), w.bob_web_recipient.clone()],
            None,
            2,
        ),
        (
            "certificate and KEK",
            vec![w.bob.recipient.clone()],
            Some(&w.kek),
            2,
        ),
        ("KEK", vec![], Some(&w.kek), 2),
    ];
    for (what, recipients, kek, expected) in cases {
        let msg = seal_vec(&w.alice, &recipients, kek, data);
        assert_eq!(middle_layer(&msg).1, expected, "{what}");
        let result = if recipients.is_empty() {
            open(w, &msg, Opener::Kek)
        } else if matches!(recipients[0], Recipient::KeyId { .. }) {
            unseal_to_vec(&msg, &w.bob_web_ring, &unseal_options(w)).unwrap()
        } else {
            open(w, &msg, Opener::Bob)
        };
        assert_opens(&result, data, what);
    }
}

/// The signing-time window is the caller's (`signing_time_expiration`, `clock_skew`): any
/// values give a verdict, none an arithmetic overflow; the widest window takes every time
/// and an empty one none.
#[test]
fn signing_time_windows_of_any_width_give_a_verdict() {
    use etee_formats::verdict::Warning;
    let w = world();
    let msg = seal_vec(
        &w.alice,
        std::slice::from_ref(&w.bob.recipient),
        None,
        b"any window",
    );
    let expired = |expiration: i64, skew: i64, at: i64| {
        let opts = UnsealOptions {
            signing_time_expiration: expiration,
            clock_skew: skew,
            at: Some(at),
            ..unseal_options(w)
        };
        let (u, _) = unseal_to_vec(&msg, &w.bob.ring, &opts).unwrap();
        u.verdict.warnings.contains(&Warning::SIGNING_TIME_EXPIRED)
    };
    assert!(!expired(300, 300, w.now));
    for extreme in [i64::MAX, i64::MIN] {
        for at in [w.now, i64::MAX, i64::MIN] {
            // No panic, whatever the verdict.
            let _ = expired(extreme, extreme, at);
            let _ = expired(extreme, 300, at);
            let _ = expired(300, extreme, at);
        }
    }
    assert!(!expired(i64::MAX, i64::MAX, w.now), "the widest window");
    assert!(expired(0, 0, w.now + 1), "an empty window");
}
