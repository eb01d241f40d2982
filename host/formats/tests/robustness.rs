//! Hostile input: truncated, bit-flipped, re-ordered, oversized and deeply nested messages,
//! wrong keys, damaged ETKs and keystores. Nothing may panic, nothing broken may come out
//! clean, and a wrong key must look like a damaged key.
//!
//! To reach the inner layers past the outer signature, some tests take a generated message
//! apart (the KEK recipient gives the content key), change one layer, and put it back
//! together: re-encrypting the inner layer and re-signing the outer layer as Alice.
//!
//! `cargo test -p etee-formats --test robustness -- --ignored fuzz_smoke` runs a bounded,
//! seeded mutation fuzzer over the same entry points as the cargo-fuzz targets in
//! `fuzz/` (see `fuzz/README.md`), on stable Rust.

mod support;

use etee_formats::ber::slice::{parse_exact, parse_one, Tlv};
use etee_formats::ber::stream::BerStream;
use etee_formats::ber::tag;
use etee_formats::ber::write::{cons, push_tlv, small_uint, tlv};
use etee_formats::cert::Certificate;
use etee_formats::cms::{
    seal, signer, unseal, unseal_to_vec, Kek, Recipient, SealOptions, UnsealOptions, Unsealed,
    MAX_CERTIFICATES, MAX_STRUCTURE,
};
use etee_formats::etk::Etk;
use etee_formats::keys::{DecryptionKey, KeyId, KeyRing, SignerRef, SigningKey};
use etee_formats::keystore::{write_pfx, EhealthKeystore, PfxEntry, Profile, SoftwareKeys};
use etee_formats::oid;
use etee_formats::trust::TrustAnchors;
use etee_formats::verdict::{Error as E, Fatal, Verdict};
use etee_testpki::{Institution, InstitutionSpec, TestPki};
use openssl::symm::Cipher;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

// ---- the largest single allocation, per thread ----------------------------------------

#[global_allocator]
static ALLOCATOR: etee_testpki::peak_alloc::PeakAlloc = etee_testpki::peak_alloc::PeakAlloc;

use etee_testpki::peak_alloc::peak_allocation;

// ---- known library panics ----------------------------------------------------------

/// Library panics reported but not yet fixed, each with an ignored test that reproduces
/// it. A mutation test that hits one counts it and carries on, so that the rest of its
/// inputs are still checked; any other panic fails the test. Empty: none is open.
const KNOWN_PANICS: &[(&str, &str)] = &[];

/// Runs `f`; `None` if it hit a known panic (reported on stdout).
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(payload) => {
            let msg = etee_testpki::panic_message(&*payload);
            match KNOWN_PANICS.iter().find(|(m, _)| msg.contains(m)) {
                Some((_, test)) => {
                    println!("{what}: KNOWN BUG (see {test}): {msg}");
                    None
                }
                None => std::panic::resume_unwind(payload),
            }
        }
    }
}

// ---- the world --------------------------------------------------------------------------

/// The same KEK as the cargo-fuzz `unseal` target, so that messages written by
/// `write_fuzz_corpus` open there.
const KEK: &[u8; 16] = b"etee-fuzzing-kek";

struct World {
    now: i64,
    anchors: TrustAnchors,
    alice: SigningKey,
    bob: Institution,
    bob_ring: KeyRing,
    bob_recipient: Recipient,
    /// Carol's ETK key, presenting itself as Bob's: same certificate, same serial.
    impostor_ring: KeyRing,
    impostor_key: openssl::pkey::PKey<openssl::pkey::Private>,
    bob_etk: Certificate,
    kek: Kek,
    /// Alice → Bob + KEK, 2500 bytes: several chunks in every layer.
    chunked: Vec<u8>,
    chunked_plain: Vec<u8>,
    /// Alice → Bob + KEK, 48 bytes: for byte-by-byte mutation.
    small: Vec<u8>,
    small_plain: Vec<u8>,
}

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

thread_local! {
    /// Whether a key-transport decryption on this thread gave no usable content key, so
    /// that the unsealer went on with a random one (and the verdict may vary from run to
    /// run: RFC 3218 §2.3).
    static RANDOM_KEY: Cell<bool> = const { Cell::new(false) };
    /// Key-transport decryptions asked of a [`Witness`] on this thread.
    static DECRYPTS: Cell<usize> = const { Cell::new(0) };
}

/// [`SoftwareKeys`] that note in [`RANDOM_KEY`] when decryption yields no 16-byte key.
struct Witness(SoftwareKeys);

impl etee_formats::keys::PrivateKeyOps for Witness {
    fn sign_pss_sha256(
        &self,
        key: &KeyId,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, etee_formats::keys::KeyError> {
        self.0.sign_pss_sha256(key, digest)
    }
    fn decrypt_pkcs1v15(
        &self,
        key: &KeyId,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, etee_formats::keys::KeyError> {
        DECRYPTS.with(|n| n.set(n.get() + 1));
        let r = self.0.decrypt_pkcs1v15(key, blob);
        if !matches!(&r, Ok(k) if k.len() == 16) {
            RANDOM_KEY.with(|f| f.set(true));
        }
        r
    }
}

/// Runs an unseal and says whether its verdict may depend on a random content key.
fn noting_random_key<T>(f: impl FnOnce() -> T) -> (T, bool) {
    RANDOM_KEY.with(|r| r.set(false));
    let out = f();
    (out, RANDOM_KEY.with(Cell::get))
}

fn ring_with(
    inst_key: &openssl::pkey::PKey<openssl::pkey::Private>,
    as_cert: &Certificate,
) -> KeyRing {
    let mut keys = SoftwareKeys::new();
    keys.insert(KeyId("etk".into()), inst_key.clone());
    let mut ring = KeyRing::new();
    ring.add(DecryptionKey {
        ops: Arc::new(Witness(keys)),
        key: KeyId("etk".into()),
        serial: as_cert.serial().to_vec(),
        cert: Some(as_cert.clone()),
        ski: None,
        modulus_bits: inst_key.bits(),
    });
    ring
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let pki = TestPki::generate("robustness").unwrap();
        let inst = |id: &str, name: &str| {
            pki.institution(&InstitutionSpec::new("NIHII-PHARMACY", id, name))
                .unwrap()
        };
        let (alice, bob, carol) = (
            inst("11111111", "Alice"),
            inst("27150201", "Bob"),
            inst("33333333", "Carol"),
        );
        let root = cert(&pki.root.cert);
        let mut alice_keys = SoftwareKeys::new();
        alice_keys.insert(KeyId("authentication".into()), alice.auth.key.clone());
        let bob_etk = cert(&bob.etk_cert);
        let mut w = World {
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
            anchors: TrustAnchors::new(vec![root.clone()]),
            alice: SigningKey {
                ops: Arc::new(alice_keys),
                key: KeyId("authentication".into()),
                signer: SignerRef::Certificate {
                    cert: cert(&alice.auth.cert),
                    chain: vec![root],
                },
            },
            bob_ring: ring_with(&bob.etk_key, &bob_etk),
            impostor_ring: ring_with(&carol.etk_key, &bob_etk),
            impostor_key: carol.etk_key.clone(),
            bob_etk: bob_etk.clone(),
            bob_recipient: Recipient::Certificate(bob_etk),
            bob,
            kek: Kek::new(KEK, b"kek-id").unwrap(),
            chunked: Vec::new(),
            chunked_plain: text(2500),
            small: Vec::new(),
            small_plain: text(48),
        };
        w.chunked = seal_for(&w, &w.chunked_plain, true);
        w.small = seal_for(&w, &w.small_plain, true);
        w
    })
}

fn text(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"etee robustness "[i % 16]).collect()
}

fn seal_for(w: &World, data: &[u8], with_kek: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let opts = SealOptions {
        signing_time: Some(w.now),
        ..Default::default()
    };
    let kek = with_kek.then_some(&w.kek);
    seal(
        &w.alice,
        std::slice::from_ref(&w.bob_recipient),
        kek,
        data,
        &mut out,
        &opts,
    )
    .unwrap();
    out
}

fn opts(w: &World) -> UnsealOptions {
    UnsealOptions {
        anchors: w.anchors.clone(),
        at: Some(w.now),
        ..Default::default()
    }
}

fn kek_opts(w: &World) -> UnsealOptions {
    UnsealOptions {
        kek: Some(Zeroizing::new(KEK.to_vec())),
        ..opts(w)
    }
}

/// Bob's ring and the KEK: the two ways into a generated message.
fn openers(w: &World) -> [(&'static str, &KeyRing, UnsealOptions); 2] {
    static EMPTY: OnceLock<KeyRing> = OnceLock::new();
    [
        ("bob", &w.bob_ring, opts(w)),
        ("kek", EMPTY.get_or_init(KeyRing::new), kek_opts(w)),
    ]
}

/// The official keystore and trust of `known_alice_to_bob.msg`, when the vectors exist.
struct Official {
    msg: Vec<u8>,
    plain: Vec<u8>,
    ring: KeyRing,
    opts: UnsealOptions,
}

fn official() -> Option<&'static Official> {
    static O: OnceLock<Option<Official>> = OnceLock::new();
    O.get_or_init(|| {
        let dir = support::vectors()?;
        let ks =
            std::fs::read(dir.join("egelke-etee/etee-crypto-test/bob/bobs_private_key_store.p12"))
                .unwrap();
        let anchors = [
            "CA.cer",
            "CA2.cer",
            "specimenCa.cer",
            "specimenCitizenCa.cer",
        ]
        .iter()
        .map(|f| support::read_cert(&dir.join("egelke-etee/etee-crypto-test/imports").join(f)))
        .collect();
        Some(Official {
            msg: std::fs::read(dir.join("generated-etee-crypto-lib-2.2.0/known_alice_to_bob.msg"))
                .unwrap(),
            plain: std::fs::read(dir.join("generated-etee-crypto-lib-2.2.0/plaintext.txt"))
                .unwrap(),
            ring: EhealthKeystore::load(&ks, "test").unwrap().key_ring(),
            opts: UnsealOptions {
                anchors: TrustAnchors::new(anchors),
                // The evaluation time of expected-verdicts.json: 2026-11-23T13:54:40Z.
                at: Some(1_795_442_080),
                ..Default::default()
            },
        })
    })
    .as_ref()
}

// ---- taking messages apart ----------------------------------------------------------------

fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Where the parts of one ContentInfo(SignedData) are, as we write it.
struct SignedLayout {
    /// The eContent element (`24 80 … 00 00`) and its chunks.
    econtent: Range<usize>,
    chunks: Vec<Range<usize>>,
    certs: Option<Range<usize>>,
    signer_infos: Range<usize>,
}

fn signed_layout(bytes: &[u8]) -> SignedLayout {
    let ci = parse_exact(bytes).unwrap();
    let mut f = ci.seq().unwrap();
    f.next(tag::OID).unwrap();
    let sd = f.next(0xa0).unwrap().children().next().unwrap().unwrap();
    let mut s = sd.seq().unwrap();
    s.next(tag::INTEGER).unwrap();
    s.next(tag::SET).unwrap();
    let mut eci = s.next(tag::SEQUENCE).unwrap().seq().unwrap();
    eci.next(tag::OID).unwrap();
    let octets = eci.next(0xa0).unwrap().children().next().unwrap().unwrap();
    let chunks = octets
        .children()
        .map(|c| range_in(bytes, c.unwrap().raw))
        .collect();
    let certs = s.optional(0xa0).unwrap().map(|c| range_in(bytes, c.raw));
    let signer_infos = range_in(bytes, s.next(tag::SET).unwrap().raw);
    SignedLayout {
        econtent: range_in(bytes, octets.raw),
        chunks,
        certs,
        signer_infos,
    }
}

/// The concatenated content octets of a SignedData.
fn signed_content(bytes: &[u8]) -> Vec<u8> {
    let l = signed_layout(bytes);
    parse_exact(&bytes[l.econtent])
        .unwrap()
        .octets()
        .unwrap()
        .into_owned()
}

/// Where the parts of one ContentInfo(EnvelopedData) are, as we write it.
struct EnvelopedLayout {
    recipient_infos: Range<usize>,
    content_alg: Range<usize>,
    iv: Vec<u8>,
    /// The encryptedContent element (`a0 80 … 00 00`) and its chunks.
    encrypted: Range<usize>,
    chunks: Vec<Range<usize>>,
    kek_wrapped: Vec<u8>,
    ktri_encrypted_key: Range<usize>,
}

fn enveloped_layout(bytes: &[u8]) -> EnvelopedLayout {
    let ci = parse_exact(bytes).unwrap();
    let mut f = ci.seq().unwrap();
    f.next(tag::OID).unwrap();
    let ed = f.next(0xa0).unwrap().children().next().unwrap().unwrap();
    let mut s = ed.seq().unwrap();
    s.next(tag::INTEGER).unwrap();
    let ris = s.next(tag::SET).unwrap();
    let mut kek_wrapped = Vec::new();
    let mut ktri_encrypted_key = 0..0;
    for ri in ris.children() {
        let ri = ri.unwrap();
        let mut fields = ri.seq().unwrap();
        let last = loop {
            let t = fields.any().unwrap();
            if !fields.has_more().unwrap() {
                break t;
            }
        };
        match ri.tag {
            0xa2 => kek_wrapped = last.content.to_vec(),
            _ => ktri_encrypted_key = range_in(bytes, last.content),
        }
    }
    let mut eci = s.next(tag::SEQUENCE).unwrap().seq().unwrap();
    eci.next(tag::OID).unwrap();
    let alg = eci.next(tag::SEQUENCE).unwrap();
    let mut a = alg.seq().unwrap();
    a.next(tag::OID).unwrap();
    let iv = a.next(tag::OCTET_STRING).unwrap().content.to_vec();
    let enc = eci.next(0xa0).unwrap();
    EnvelopedLayout {
        recipient_infos: range_in(bytes, ris.raw),
        content_alg: range_in(bytes, alg.raw),
        iv,
        encrypted: range_in(bytes, enc.raw),
        chunks: enc
            .children()
            .map(|c| range_in(bytes, c.unwrap().raw))
            .collect(),
        kek_wrapped,
        ktri_encrypted_key,
    }
}

/// Content octets framed as we write them: `tag 80`, 1000-byte chunks, `00 00`.
fn framed(t: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![t, 0x80];
    for c in content.chunks(1000) {
        push_tlv(&mut out, tag::OCTET_STRING, c);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// A ContentInfo(SignedData) around an eContent element whose octets are `content`,
/// signed by Alice at `now`, with the given certificate set element.
fn signed_data(econtent: &[u8], content: &[u8], certs: Option<&[u8]>) -> Vec<u8> {
    let w = world();
    let digest = openssl::sha::sha256(content);
    let si = signer::build(&w.alice, &digest, w.now, None).unwrap();
    let mut out = vec![0x30, 0x80];
    out.extend(oid::der(oid::SIGNED_DATA));
    out.extend([0xa0, 0x80, 0x30, 0x80]);
    out.extend(small_uint(1));
    out.extend(cons(tag::SET, &[oid::ALG_SHA256]));
    out.extend([0x30, 0x80]);
    out.extend(oid::der(oid::DATA));
    out.extend([0xa0, 0x80]);
    out.extend_from_slice(econtent);
    out.extend([0, 0, 0, 0]);
    if let Some(c) = certs {
        out.extend_from_slice(c);
    }
    out.extend(tlv(tag::SET, &si));
    out.extend([0, 0, 0, 0, 0, 0]);
    out
}

/// A generated message taken apart: the middle layer, the content key, the inner layer.
struct Parts {
    outer: Vec<u8>,
    middle: Vec<u8>,
    cek: Vec<u8>,
    inner: Vec<u8>,
}

impl Parts {
    fn of(msg: &[u8]) -> Self {
        let middle = signed_content(msg);
        let env = enveloped_layout(&middle);
        let mut cek = vec![0u8; 16];
        let key = openssl::aes::AesKey::new_decrypt(KEK).unwrap();
        openssl::aes::unwrap_key(&key, None, &mut cek, &env.kek_wrapped).unwrap();
        let ciphertext = parse_exact(&middle[env.encrypted.clone()])
            .unwrap()
            .octets()
            .unwrap()
            .into_owned();
        let inner = openssl::symm::decrypt(Cipher::aes_128_cbc(), &cek, Some(&env.iv), &ciphertext)
            .unwrap();
        Parts {
            outer: msg.to_vec(),
            middle,
            cek,
            inner,
        }
    }

    /// The outer layer re-signed around `middle`, with the original certificates.
    fn with_middle(&self, middle: &[u8]) -> Vec<u8> {
        let l = signed_layout(&self.outer);
        let certs = l.certs.map(|r| &self.outer[r]);
        signed_data(
            &framed(tag::OCTET_STRING_CONSTRUCTED, middle),
            middle,
            certs,
        )
    }

    /// The middle layer with this encryptedContent element, re-signed.
    fn with_encrypted(&self, encrypted: &[u8]) -> Vec<u8> {
        let env = enveloped_layout(&self.middle);
        let mut m = self.middle.clone();
        m.splice(env.encrypted, encrypted.iter().copied());
        self.with_middle(&m)
    }

    /// `inner` encrypted with the message's key and IV, re-signed.
    fn with_inner(&self, inner: &[u8]) -> Vec<u8> {
        let env = enveloped_layout(&self.middle);
        let ct =
            openssl::symm::encrypt(Cipher::aes_128_cbc(), &self.cek, Some(&env.iv), inner).unwrap();
        self.with_encrypted(&framed(0xa0, &ct))
    }
}

fn splice(bytes: &[u8], at: Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.splice(at, with.iter().copied());
    v
}

fn swap(bytes: &[u8], a: &Range<usize>, b: &Range<usize>) -> Vec<u8> {
    assert!(a.end <= b.start);
    [
        &bytes[..a.start],
        &bytes[b.clone()],
        &bytes[a.end..b.start],
        &bytes[a.clone()],
        &bytes[b.end..],
    ]
    .concat()
}

fn duplicate(bytes: &[u8], r: &Range<usize>) -> Vec<u8> {
    splice(bytes, r.start..r.start, &bytes[r.clone()])
}

// ---- verdict helpers ---------------------------------------------------------------------

fn open(msg: &[u8], ring: &KeyRing, o: &UnsealOptions) -> (Unsealed, Option<Vec<u8>>) {
    unseal_to_vec(msg, ring, o).unwrap()
}

/// Unseals with every opener: never clean, never content.
fn assert_rejected(msg: &[u8], what: &str) -> Vec<Verdict> {
    let w = world();
    openers(w)
        .iter()
        .map(|(name, ring, o)| {
            let (u, content) = open(msg, ring, o);
            assert!(
                !u.verdict.is_clean(),
                "{what} ({name}): came out clean: {:?}",
                u.verdict
            );
            assert!(content.is_none(), "{what} ({name}): content released");
            u.verdict
        })
        .collect()
}

fn fatal_or_errors(v: &Verdict) -> String {
    match v.fatal {
        Some(f) => f.to_string(),
        None => format!("{:?}", v.errors),
    }
}

// ---- (a) truncation ------------------------------------------------------------------

/// Every prefix among the first and last 300 bytes, and ~300 in between.
fn truncation_lengths(len: usize) -> Vec<usize> {
    let step = (len / 300).max(1);
    let mut v: BTreeSet<usize> = (0..len.min(300)).collect();
    v.extend(len.saturating_sub(300)..len);
    v.extend((0..len).step_by(step));
    v.into_iter().collect()
}

fn check_truncations(msg: &[u8], ring: &KeyRing, o: &UnsealOptions, what: &str) -> usize {
    let lengths = truncation_lengths(msg.len());
    for &n in &lengths {
        let mut sink = Vec::new();
        match unseal(&msg[..n], &mut sink, ring, o) {
            Ok(u) => assert!(
                !u.verdict.is_clean(),
                "{what}: truncated to {n} of {} bytes came out clean",
                msg.len()
            ),
            Err(e) => panic!("{what}: truncated to {n}: reading a slice failed: {e}"),
        }
        if n % 7 == 0 {
            assert!(open(&msg[..n], ring, o).1.is_none(), "{what}: {n}: content");
        }
    }
    lengths.len()
}

#[test]
fn truncations_never_open() {
    let w = world();
    let mut count = 0;
    for (name, ring, o) in openers(w) {
        // The untruncated message opens: the truncations fail because they are truncated.
        assert!(open(&w.chunked, ring, &o).0.verdict.is_clean());
        count += check_truncations(&w.chunked, ring, &o, &format!("generated/{name}"));
    }
    if let Some(off) = official() {
        let (u, content) = open(&off.msg, &off.ring, &off.opts);
        assert!(u.verdict.is_clean(), "{:?}", u.verdict);
        assert_eq!(content.as_deref(), Some(off.plain.as_slice()));
        count += check_truncations(&off.msg, &off.ring, &off.opts, "known_alice_to_bob.msg");
    }
    println!("{count} truncations rejected");
}

// ---- (b) bit flips ---------------------------------------------------------------------

/// Flips one bit of every byte (bit `i % 8` of byte `i`, stepping `stride`) of `layer`,
/// rebuilds the message with `rebuild`, and unseals it with Bob's key. A clean verdict is
/// tolerated only with the original content; those positions are returned.
fn flip_every_byte(
    layer: &[u8],
    stride: usize,
    rebuild: impl Fn(&[u8]) -> Vec<u8>,
    ring: &KeyRing,
    o: &UnsealOptions,
    plain: &[u8],
    what: &str,
) -> Vec<usize> {
    let mut clean = Vec::new();
    for i in (0..layer.len()).step_by(stride) {
        let mut m = layer.to_vec();
        m[i] ^= 1 << (i % 8);
        let msg = rebuild(&m);
        let Some((u, content)) = guarded(&format!("{what}: flip at {i}"), || open(&msg, ring, o))
        else {
            continue;
        };
        if u.verdict.is_clean() {
            assert_eq!(
                content.as_deref(),
                Some(plain),
                "{what}: flipping bit {} of byte {i} gives a clean verdict with other content",
                i % 8
            );
            clean.push(i);
        } else {
            assert!(content.is_none());
        }
    }
    println!(
        "{what}: {} of {} flips still open cleanly, same content, at {}",
        clean.len(),
        layer.len().div_ceil(stride),
        describe(layer, &clean)
    );
    clean
}

/// Positions as compact ranges, with the byte found there.
fn describe(layer: &[u8], at: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < at.len() {
        let mut j = i;
        while j + 1 < at.len() && at[j + 1] == at[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            format!("{} (0x{:02x})", at[i], layer[at[i]])
        } else {
            format!("{}..={}", at[i], at[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "nowhere".into()
    } else {
        out.join(", ")
    }
}

#[test]
fn bit_flips_in_the_whole_message() {
    let w = world();
    let clean = flip_every_byte(
        &w.small,
        1,
        <[u8]>::to_vec,
        &w.bob_ring,
        &opts(w),
        &w.small_plain,
        "outer (raw)",
    );
    // Where a flip may go unnoticed: the unsigned parts. Never in the signed content or in
    // the signer's own certificate.
    let l = signed_layout(&w.small);
    let certs = l.certs.clone().unwrap();
    let (signer_cert, _) = parse_one(&w.small[certs.start + 4..certs.end], 0).unwrap();
    let signer_cert = certs.start + 4..certs.start + 4 + signer_cert.raw.len();
    let regions = [
        (
            "SignedData header (version, digestAlgorithms)",
            0..l.econtent.start,
        ),
        ("content", l.econtent.clone()),
        ("certificates: Alice's", signer_cert.clone()),
        ("certificates: the root's copy", signer_cert.end..certs.end),
        ("SignerInfos", l.signer_infos.clone()),
    ];
    for (name, r) in &regions {
        let n = clean.iter().filter(|i| r.contains(i)).count();
        println!("  clean flips in {name} ({} bytes): {n}", r.len());
    }
    for &i in &clean {
        assert!(
            !l.econtent.contains(&i) && !signer_cert.contains(&i),
            "a flip at {i}, in the signed content or the signer's certificate, kept the verdict clean"
        );
    }
}

#[test]
fn bit_flips_in_the_middle_layer() {
    let w = world();
    let parts = Parts::of(&w.small);
    // Sanity: rebuilding without a change opens cleanly.
    assert!(
        open(&parts.with_middle(&parts.middle), &w.bob_ring, &opts(w))
            .0
            .verdict
            .is_clean()
    );
    flip_every_byte(
        &parts.middle,
        1,
        |m| parts.with_middle(m),
        &w.bob_ring,
        &opts(w),
        &w.small_plain,
        "middle (outer re-signed)",
    );
}

#[test]
fn bit_flips_in_the_inner_layer() {
    let w = world();
    let parts = Parts::of(&w.small);
    let (u, content) = open(&parts.with_inner(&parts.inner), &w.bob_ring, &opts(w));
    assert!(u.verdict.is_clean(), "{:?}", u.verdict);
    assert_eq!(content.as_deref(), Some(w.small_plain.as_slice()));
    for (name, ring, o) in openers(w) {
        flip_every_byte(
            &parts.inner,
            1,
            |m| parts.with_inner(m),
            ring,
            &o,
            &w.small_plain,
            &format!("inner (re-encrypted, re-signed)/{name}"),
        );
    }
}

#[test]
fn bit_flips_in_the_official_message() {
    let Some(off) = official() else { return };
    // Every third byte: each flip costs an RSA decryption and three signature checks.
    flip_every_byte(
        &off.msg,
        3,
        <[u8]>::to_vec,
        &off.ring,
        &off.opts,
        &off.plain,
        "known_alice_to_bob.msg (every 3rd byte)",
    );
}

// ---- (c) re-ordered structures ---------------------------------------------------------

/// A WEB_AUTHN signer (subjectKeyIdentifier) accepts RSASSA-PSS only, as the official
/// library (spec §1.2): the same message with its outer signatureAlgorithm changed to
/// sha256WithRSAEncryption is refused for the algorithm, not only for the signature, and
/// not for its digest or key length.
#[test]
fn a_web_authn_signer_must_use_pss() {
    let w = world();
    let ski = b"robustness-web-key".to_vec();
    let mut keys = SoftwareKeys::new();
    keys.insert(KeyId("web".into()), w.bob.auth.key.clone());
    let signer = SigningKey {
        ops: Arc::new(keys),
        key: KeyId("web".into()),
        signer: SignerRef::KeyId(ski.clone()),
    };
    let mut msg = Vec::new();
    seal(
        &signer,
        std::slice::from_ref(&w.bob_recipient),
        None,
        &w.small_plain[..],
        &mut msg,
        &SealOptions {
            signing_time: Some(w.now),
            ..Default::default()
        },
    )
    .unwrap();
    let public =
        openssl::pkey::PKey::public_key_from_der(&w.bob.auth.key.public_key_to_der().unwrap())
            .unwrap();
    let o = UnsealOptions {
        expected_signers: vec![etee_formats::cms::ExpectedSigner::KeyId {
            ski,
            public_key: public,
        }],
        ..opts(w)
    };
    let (u, content) = open(&msg, &w.bob_ring, &o);
    assert!(u.verdict.is_clean(), "{:?}", u.verdict);
    assert!(content.is_some());
    // The outer signatureAlgorithm is the last id-RSASSA-PSS OID in the clear (the one
    // in cmsAlgorithmProtect, inside the signed attributes, comes before it).
    let pss = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
    ];
    let at = msg.windows(pss.len()).rposition(|x| x == pss).unwrap();
    msg[at + pss.len() - 1] = 0x0b; // sha256WithRSAEncryption
    let (u, content) = open(&msg, &w.bob_ring, &o);
    assert!(content.is_none());
    assert!(
        u.verdict
            .errors
            .contains(&E::OUTER_SIGNATURE_ALGORITHM_UNAUTHORIZED),
        "{:?}",
        u.verdict
    );
    // The signer stays under WEB_AUTHN (spec §1.4 step 2): its SHA-256 digest and 2048-bit
    // key are allowed, so only the algorithm is unauthorised.
    for allowed in [
        E::OUTER_SIGNATURE_DIGEST_ALGORITHM_UNAUTHORIZED,
        E::OUTER_SIGNATURE_KEY_LENGTH_UNAUTHORIZED,
    ] {
        assert!(!u.verdict.errors.contains(&allowed), "{:?}", u.verdict);
    }
}

#[test]
fn many_recipient_infos_for_our_key_cost_one_decryption() {
    // Thousands of KeyTransRecipientInfos naming Bob's ETK, garbage blobs but for the
    // last, re-signed: every one would be a private-key operation (in the HSM, through the
    // custody core) before any signature is checked. Each key is tried once, with the
    // first recipient info naming it, as the official library takes the first.
    let w = world();
    let parts = Parts::of(&w.small);
    let env = enveloped_layout(&parts.middle);
    let set = parse_exact(&parts.middle[env.recipient_infos.clone()]).unwrap();
    let ktri = set
        .children()
        .map(Result::unwrap)
        .find(|ri| ri.tag == tag::SEQUENCE)
        .unwrap();
    let blob = range_in(ktri.raw, &parts.middle[env.ktri_encrypted_key.clone()]);
    let mut garbage = ktri.raw.to_vec();
    garbage[blob].fill(0x5a);
    let mut infos = garbage.repeat(3000);
    infos.extend_from_slice(ktri.raw);
    let mut set_bytes = Vec::new();
    push_tlv(&mut set_bytes, tag::SET, &infos);
    let msg = parts.with_middle(&splice(
        &parts.middle,
        env.recipient_infos.clone(),
        &set_bytes,
    ));

    DECRYPTS.with(|n| n.set(0));
    let (u, content) = open(&msg, &w.bob_ring, &opts(w));
    assert_eq!(DECRYPTS.with(Cell::get), 1, "one try for one key");
    assert!(
        content.is_none() && !u.verdict.is_clean(),
        "{:?}",
        u.verdict
    );

    // A ring with more keys claiming Bob's certificate than the cap (all wrong): each is
    // a private-key operation, and no more than MAX_KEY_ATTEMPTS are made.
    let mut crowd = KeyRing::new();
    for i in 0..12 {
        let mut keys = SoftwareKeys::new();
        keys.insert(KeyId(format!("etk-{i}")), w.impostor_key.clone());
        crowd.add(DecryptionKey {
            ops: Arc::new(Witness(keys)),
            key: KeyId(format!("etk-{i}")),
            serial: w.bob_etk.serial().to_vec(),
            cert: Some(w.bob_etk.clone()),
            ski: None,
            modulus_bits: 2048,
        });
    }
    DECRYPTS.with(|n| n.set(0));
    let (u, content) = open(&w.small, &crowd, &opts(w));
    assert!(content.is_none() && !u.verdict.is_clean());
    assert_eq!(
        DECRYPTS.with(Cell::get),
        etee_formats::cms::unseal::MAX_KEY_ATTEMPTS
    );

    // The same message with the good recipient info first opens cleanly, with one try.
    let mut infos = ktri.raw.to_vec();
    infos.extend_from_slice(&garbage.repeat(3000));
    let mut set_bytes = Vec::new();
    push_tlv(&mut set_bytes, tag::SET, &infos);
    let msg = parts.with_middle(&splice(&parts.middle, env.recipient_infos, &set_bytes));
    DECRYPTS.with(|n| n.set(0));
    let (u, content) = open(&msg, &w.bob_ring, &opts(w));
    assert_eq!(DECRYPTS.with(Cell::get), 1);
    assert!(u.verdict.is_clean(), "{:?}", u.verdict);
    assert_eq!(content.as_deref(), Some(&w.small_plain[..]));
}

#[test]
fn reordered_structures_are_rejected() {
    let w = world();
    let msg = &w.chunked;
    let l = signed_layout(msg);
    assert!(l.chunks.len() >= 3, "want several outer chunks");
    let parts = Parts::of(msg);
    let env = enveloped_layout(&parts.middle);
    assert!(env.chunks.len() >= 3);
    let inner = signed_layout(&parts.inner);
    assert!(inner.chunks.len() >= 3);
    assert!(inner.certs.is_none());

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "outer: chunks 0 and 1 swapped",
            swap(msg, &l.chunks[0], &l.chunks[1]),
        ),
        (
            "outer: chunks 1 and 2 swapped",
            swap(msg, &l.chunks[1], &l.chunks[2]),
        ),
        ("outer: chunk 1 twice", duplicate(msg, &l.chunks[1])),
        (
            "outer: last chunk twice",
            duplicate(msg, l.chunks.last().unwrap()),
        ),
        (
            "outer: chunk 1 removed",
            splice(msg, l.chunks[1].clone(), &[]),
        ),
        (
            "outer: certificates removed",
            splice(msg, l.certs.clone().unwrap(), &[]),
        ),
        (
            "outer: certificates after the SignerInfos",
            swap(msg, &l.certs.clone().unwrap(), &l.signer_infos),
        ),
        (
            "outer: certificates twice",
            duplicate(msg, &l.certs.clone().unwrap()),
        ),
        ("outer: SignerInfos twice", duplicate(msg, &l.signer_infos)),
    ];
    // Re-signed over the re-ordered content: the outer signature holds, the middle breaks.
    let mut swapped = parts.middle.clone();
    swapped[..2000].rotate_left(1000);
    cases.push((
        "outer: chunks swapped, re-signed",
        parts.with_middle(&swapped),
    ));
    let m = &parts.middle;
    cases.extend([
        (
            "middle: ciphertext chunks 0 and 1 swapped, re-signed",
            parts.with_middle(&swap(m, &env.chunks[0], &env.chunks[1])),
        ),
        (
            "middle: ciphertext chunk 1 twice, re-signed",
            parts.with_middle(&duplicate(m, &env.chunks[1])),
        ),
        (
            "middle: last ciphertext chunk removed, re-signed",
            parts.with_middle(&splice(m, env.chunks.last().unwrap().clone(), &[])),
        ),
        (
            "middle: recipientInfos removed, re-signed",
            parts.with_middle(&splice(m, env.recipient_infos.clone(), &[])),
        ),
    ]);
    let i = &parts.inner;
    cases.extend([
        (
            "inner: chunks 0 and 1 swapped",
            parts.with_inner(&swap(i, &inner.chunks[0], &inner.chunks[1])),
        ),
        (
            "inner: chunk 1 twice",
            parts.with_inner(&duplicate(i, &inner.chunks[1])),
        ),
        (
            "inner: chunk 2 removed",
            parts.with_inner(&splice(i, inner.chunks[2].clone(), &[])),
        ),
        (
            "inner: SignerInfos twice",
            parts.with_inner(&duplicate(i, &inner.signer_infos)),
        ),
        (
            "inner: SignerInfos removed",
            parts.with_inner(&splice(i, inner.signer_infos.clone(), &[])),
        ),
        (
            "inner: content removed",
            parts.with_inner(&splice(i, inner.econtent.clone(), &[])),
        ),
    ]);
    for (what, m) in &cases {
        let verdicts = assert_rejected(m, what);
        println!("{what}: {}", fatal_or_errors(&verdicts[0]));
    }

    // Control: the same surgery with a legitimate change (Alice's certificates added to
    // the inner layer, where they may be) stays clean, so the rejections above are due to
    // the re-ordering and not to the rebuilding.
    let with_certs = parts.with_inner(&splice(
        i,
        inner.signer_infos.start..inner.signer_infos.start,
        &msg[l.certs.clone().unwrap()],
    ));
    let (u, content) = open(&with_certs, &w.bob_ring, &opts(w));
    assert!(u.verdict.is_clean(), "{:?}", u.verdict);
    assert_eq!(content.as_deref(), Some(w.chunked_plain.as_slice()));
}

/// Content-encryption AlgorithmIdentifiers other than aes128-CBC with a 16-byte IV: each
/// message re-signed, so that only the parameters are wrong.
#[test]
fn odd_content_encryption_parameters_are_rejected() {
    let w = world();
    let parts = Parts::of(&w.small);
    let env = enveloped_layout(&parts.middle);
    let alg = |o: &[u8], params: Option<Vec<u8>>| {
        let mut fields = oid::der(o);
        fields.extend(params.unwrap_or_default());
        tlv(tag::SEQUENCE, &fields)
    };
    let iv = |n: usize| Some(tlv(tag::OCTET_STRING, &vec![0x5a; n]));
    const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
    const DES_EDE3_CBC: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x03, 0x07];
    const AES128_GCM: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x06];
    let cases = [
        ("aes128-CBC, IV of 17 bytes", alg(oid::AES128_CBC, iv(17))),
        ("aes128-CBC, IV of 32 bytes", alg(oid::AES128_CBC, iv(32))),
        ("aes128-CBC, IV of 15 bytes", alg(oid::AES128_CBC, iv(15))),
        ("aes128-CBC, empty IV", alg(oid::AES128_CBC, iv(0))),
        ("aes128-CBC, no parameters", alg(oid::AES128_CBC, None)),
        (
            "aes128-CBC, NULL parameters",
            alg(oid::AES128_CBC, Some(vec![5, 0])),
        ),
        ("aes256-CBC (key of 16 bytes)", alg(AES256_CBC, iv(16))),
        ("des-ede3-CBC, IV of 8 bytes", alg(DES_EDE3_CBC, iv(8))),
        ("des-ede3-CBC, IV of 16 bytes", alg(DES_EDE3_CBC, iv(16))),
        ("aes128-GCM", alg(AES128_GCM, iv(12))),
    ];
    let mut known = 0;
    for (what, a) in &cases {
        let m = parts.with_middle(&splice(&parts.middle, env.content_alg.clone(), a));
        match guarded(what, || assert_rejected(&m, what)) {
            Some(v) => println!("{what}: {}", fatal_or_errors(&v[0])),
            None => known += 1,
        }
    }
    println!("{known} of {} cases hit a known bug", cases.len());
}

/// The decryption policy's errors come in the official order (spec §1.4 step 3): the
/// key-encryption algorithm before the content algorithm. A KEK-only message whose
/// KEKRecipientInfo says aes256-wrap (the key is wrapped with the 16-byte KEK, which is
/// what the unsealer uses) and whose content is aes256-CBC under a 32-byte key: it opens,
/// with these two errors and no other.
#[test]
fn decryption_policy_errors_come_in_the_official_order() {
    const AES256_WRAP: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2d];
    const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
    let w = world();
    let mut sealed = Vec::new();
    let o = SealOptions {
        signing_time: Some(w.now),
        ..Default::default()
    };
    seal(
        &w.alice,
        &[],
        Some(&w.kek),
        &w.small_plain[..],
        &mut sealed,
        &o,
    )
    .unwrap();
    let parts = Parts::of(&sealed);
    let env = enveloped_layout(&parts.middle);

    let cek = [0x42u8; 32];
    let iv = [0x17u8; 16];
    let mut wrapped = [0u8; 40];
    let kek = openssl::aes::AesKey::new_encrypt(KEK).unwrap();
    openssl::aes::wrap_key(&kek, None, &mut wrapped, &cek).unwrap();
    let kekri = cons(
        0xa2,
        &[
            &tlv(tag::INTEGER, &[4]),
            &tlv(tag::SEQUENCE, &tlv(tag::OCTET_STRING, b"kek-id")),
            &tlv(tag::SEQUENCE, &oid::der(AES256_WRAP)),
            &tlv(tag::OCTET_STRING, &wrapped),
        ],
    );
    let content_alg = {
        let mut fields = oid::der(AES256_CBC);
        fields.extend(tlv(tag::OCTET_STRING, &iv));
        tlv(tag::SEQUENCE, &fields)
    };
    let ct = openssl::symm::encrypt(Cipher::aes_256_cbc(), &cek, Some(&iv), &parts.inner).unwrap();
    // From the end, so that the earlier ranges stay where they are.
    let middle = splice(&parts.middle, env.encrypted, &framed(0xa0, &ct));
    let middle = splice(&middle, env.content_alg, &content_alg);
    let middle = splice(&middle, env.recipient_infos, &tlv(tag::SET, &kekri));
    let msg = parts.with_middle(&middle);

    let (u, content) = open(&msg, &KeyRing::new(), &kek_opts(w));
    assert_eq!(u.verdict.fatal, None, "{:?}", u.verdict);
    assert_eq!(
        u.verdict.errors,
        [
            E::DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED,
            E::DECRYPTION_SYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED,
        ],
        "{:?}",
        u.verdict
    );
    assert!(content.is_none());
}

// ---- (d) oversized and deeply nested --------------------------------------------------

const HUGE: [u8; 9] = [0x88, 0x10, 0, 0, 0, 0, 0, 0, 0]; // length 2^60

fn with_length(bytes: &[u8], header_at: usize, old_len_octets: usize, new_len: &[u8]) -> Vec<u8> {
    splice(
        bytes,
        header_at + 1..header_at + 1 + old_len_octets,
        new_len,
    )
}

fn len_octets(b: u8) -> usize {
    if b < 0x80 {
        1
    } else {
        1 + usize::from(b & 0x7f)
    }
}

#[test]
fn oversized_lengths_and_deep_nesting_are_fatal() {
    let w = world();
    let msg = &w.chunked;
    let l = signed_layout(msg);
    let parts = Parts::of(msg);
    let env = enveloped_layout(&parts.middle);
    let claim = |at: usize| with_length(msg, at, len_octets(msg[at + 1]), &HUGE);

    let certs = l.certs.clone().unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("ContentInfo of 2^60 bytes", claim(0)),
        ("SignedData version of 2^60 bytes", claim(17)),
        ("outer chunk of 2^60 bytes", claim(l.chunks[0].start)),
        ("outer certificates of 2^60 bytes", claim(certs.start)),
        (
            "outer SignerInfos of 2^60 bytes",
            claim(l.signer_infos.start),
        ),
        (
            "recipientInfos of 2^60 bytes",
            parts.with_middle(&with_length(
                &parts.middle,
                env.recipient_infos.start,
                len_octets(parts.middle[env.recipient_infos.start + 1]),
                &HUGE,
            )),
        ),
    ];
    assert_eq!(msg[17], tag::INTEGER);

    // Real sizes just above MAX_STRUCTURE, definite and indefinite.
    let big = MAX_STRUCTURE as usize + 16;
    let filler = vec![0x42u8; big];
    cases.push((
        "certificates SET of 4 MiB + 16 (definite)",
        splice(msg, certs.clone(), &tlv(0xa0, &filler)),
    ));
    // The first certificate of the set (header `a0 82 LL LL`).
    let (first, _) = parse_one(&msg[certs.start + 4..], 0).unwrap();
    let one = first.raw.to_vec();
    let mut indefinite = vec![0xa0, 0x80];
    while indefinite.len() < big {
        indefinite.extend_from_slice(&one);
    }
    indefinite.extend([0, 0]);
    cases.push((
        "certificates SET of > 4 MiB (indefinite, repeated certificate)",
        splice(msg, certs.clone(), &indefinite),
    ));
    let mut ris = vec![0x31, 0x80];
    while ris.len() < big {
        ris.extend_from_slice(&parts.middle[env.recipient_infos.clone()][4..]);
    }
    ris.extend([0, 0]);
    cases.push((
        "recipientInfos of > 4 MiB (indefinite)",
        parts.with_middle(&splice(&parts.middle, env.recipient_infos.clone(), &ris)),
    ));

    // Deep nesting.
    let nest = |open: &[u8], n: usize| {
        let mut v = open.repeat(n);
        v.extend(vec![0u8; 2 * n]);
        v
    };
    cases.push(("10 000 × 30 80", nest(&[0x30, 0x80], 10_000)));
    cases.push((
        "certificates: a0 80 + 10 000 × 30 80",
        splice(
            msg,
            certs.clone(),
            &[&[0xa0, 0x80][..], &nest(&[0x30, 0x80], 10_000), &[0, 0]].concat(),
        ),
    ));
    cases.push((
        "SignerInfos: 31 80 + 10 000 × 30 80",
        splice(
            msg,
            l.signer_infos.clone(),
            &[&[0x31, 0x80][..], &nest(&[0x30, 0x80], 10_000), &[0, 0]].concat(),
        ),
    ));
    cases.push((
        "outer content: 10 000 × 24 80",
        splice(msg, l.chunks[0].clone(), &nest(&[0x24, 0x80], 10_000)),
    ));
    cases.push((
        "inner layer: 10 000 × 30 80",
        parts.with_inner(&nest(&[0x30, 0x80], 10_000)),
    ));
    cases.push((
        "inner content: 10 000 × 24 80",
        parts.with_inner(&splice(
            &parts.inner,
            signed_layout(&parts.inner).econtent,
            &[&[0x24, 0x80][..], &nest(&[0x24, 0x80], 10_000), &[0, 0]].concat(),
        )),
    ));

    for (what, m) in &cases {
        let (verdicts, peak) = peak_allocation(|| assert_rejected(m, what));
        println!(
            "{what}: {} (largest allocation {} KiB)",
            fatal_or_errors(&verdicts[0]),
            peak / 1024
        );
        assert!(
            verdicts.iter().all(|v| v.fatal.is_some()),
            "{what}: not fatal: {verdicts:?}"
        );
        // Bounded by MAX_STRUCTURE (and its doubling while an indefinite set grows).
        assert!(
            peak <= 2 * MAX_STRUCTURE as usize + (1 << 20),
            "{what}: allocated {peak} bytes at once"
        );
    }
}

#[test]
fn a_certificate_set_past_max_certificates_is_fatal() {
    let w = world();
    let msg = &w.small;
    let certs = signed_layout(msg).certs.unwrap();
    let set = parse_exact(&msg[certs.clone()]).unwrap();
    let theirs: Vec<&[u8]> = set.children().map(|c| c.unwrap().raw).collect();
    // The message's own certificates, then copies of its last one: n in all.
    let with = |n: usize| {
        let mut set = vec![0xa0, 0x80];
        for i in 0..n {
            set.extend_from_slice(theirs[i.min(theirs.len() - 1)]);
        }
        set.extend([0, 0]);
        splice(msg, certs.clone(), &set)
    };
    for (name, ring, o) in openers(w) {
        let (u, content) = open(&with(MAX_CERTIFICATES), ring, &o);
        assert!(u.verdict.is_clean(), "{name}: {:?}", u.verdict);
        assert_eq!(content.as_deref(), Some(&w.small_plain[..]), "{name}");
    }
    // One more: refused before any is parsed, as a set of too many bytes is.
    let what = "one certificate more than MAX_CERTIFICATES";
    for v in assert_rejected(&with(MAX_CERTIFICATES + 1), what) {
        assert_eq!(v.fatal, Some(Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT));
    }
}

// ---- (e) a wrong key must look like a damaged key ----------------------------------------

/// Each way of failing to recover the content key, unsealed `n` times (the unsealer then
/// continues with a random key, so the verdict may vary with it).
#[test]
fn wrong_key_and_damaged_key_look_the_same() {
    let w = world();
    let msg = seal_for(w, &w.small_plain, false);
    let parts = Parts::of(&seal_for(w, &w.small_plain, true));
    let env = enveloped_layout(&parts.middle);
    let key = env.ktri_encrypted_key.clone();
    let mut flipped = parts.middle.clone();
    flipped[key.start + 100] ^= 0x10;
    let mut all_ff = parts.middle.clone();
    all_ff[key.clone()].fill(0xff);
    // Well-formed PKCS#1 v1.5 blocks under Bob's key, but the wrong content key.
    let bob_public = w.bob.etk_cert.public_key().unwrap();
    let encrypt_to_bob = |cek: &[u8]| {
        let mut e = openssl::encrypt::Encrypter::new(&bob_public).unwrap();
        e.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
        let mut out = vec![0u8; e.encrypt_len(cek).unwrap()];
        let n = e.encrypt(cek, &mut out).unwrap();
        out.truncate(n);
        out
    };
    let mut short_cek = parts.middle.clone();
    short_cek[key.clone()].copy_from_slice(&encrypt_to_bob(&[7u8; 15]));
    let mut other_cek = parts.middle.clone();
    other_cek[key.clone()].copy_from_slice(&encrypt_to_bob(&[7u8; 16]));

    let cases: Vec<(&str, Vec<u8>, &KeyRing)> = vec![
        ("impostor key with Bob's serial", msg, &w.impostor_ring),
        (
            "encryptedKey bit flipped",
            parts.with_middle(&flipped),
            &w.bob_ring,
        ),
        (
            "encryptedKey all 0xff (≥ modulus)",
            parts.with_middle(&all_ff),
            &w.bob_ring,
        ),
        (
            "encryptedKey: valid padding, 15-byte key",
            parts.with_middle(&short_cek),
            &w.bob_ring,
        ),
        (
            "encryptedKey: valid padding, other key",
            parts.with_middle(&other_cek),
            &w.bob_ring,
        ),
    ];
    let mut seen: Vec<(&str, BTreeSet<String>)> = Vec::new();
    for (what, m, ring) in &cases {
        let mut kinds = BTreeSet::new();
        for _ in 0..12 {
            let ((u, content), random) = noting_random_key(|| open(m, ring, &opts(w)));
            assert!(content.is_none(), "{what}");
            // The key answering to the serial was tried (and gave no usable key, except
            // for the well-formed block that carries another 16-byte key).
            assert!(
                random || what.ends_with("other key"),
                "{what}: no key was tried"
            );
            assert_ne!(
                u.verdict.fatal,
                Some(Fatal::DECRYPTION_PRIVATE_KEY_NOT_FOUND),
                "{what}: the key with the right serial was not tried"
            );
            kinds.insert(format!(
                "fatal {:?}, errors {:?}, warnings {:?}, opened with {:?}",
                u.verdict.fatal, u.verdict.errors, u.verdict.warnings, u.opened_with
            ));
        }
        println!("{what}: {kinds:#?}");
        seen.push((what, kinds));
    }
    // Normalised over the random key, every case gives the same notification set.
    // (The padding error depends on the last block decrypted with the random key.)
    let expected = [
        format!(
            "fatal {:?}, errors {:?}, warnings [], opened with None",
            Some(Fatal::INNER_SIGNED_DATA_STRUCTURE_INCORRECT),
            [E::DECRYPTION_SYMMETRIC_KEY_ALGORITHM_PADDING_UNAUTHORIZED]
        ),
        format!(
            "fatal {:?}, errors [], warnings [], opened with None",
            Some(Fatal::INNER_SIGNED_DATA_STRUCTURE_INCORRECT)
        ),
    ];
    for (what, kinds) in &seen {
        for k in kinds {
            assert!(expected.contains(k), "{what}: unexpected verdict {k}");
        }
    }
}

// ---- (f) ETKs ------------------------------------------------------------------------

/// Complements tests/etk.rs (single flips, truncations): every bit of the first and last
/// 128 bytes, and length octets replaced with hostile values everywhere.
#[test]
fn etk_mutations_give_typed_errors() {
    let w = world();
    let etk = &w.bob.etk;
    Etk::parse(etk).expect("the generated ETK parses");
    let (mut ok, mut err) = (0, 0);
    let mut check = |bytes: &[u8]| match Etk::parse(bytes) {
        Ok(e) => {
            ok += 1;
            let _ = e.validate(&w.anchors, w.now);
            let _ = e.key_alias();
        }
        Err(e) => {
            err += 1;
            let _ = e.to_string();
        }
    };
    let n = etk.len();
    for i in (0..128.min(n)).chain(n.saturating_sub(128)..n) {
        for bit in 0..8 {
            let mut m = etk.clone();
            m[i] ^= 1 << bit;
            check(&m);
        }
    }
    for i in 0..n {
        if etk[i] & 0x80 != 0 && i > 0 {
            for v in [0x80, 0x84, 0x88, 0x89, 0xff] {
                let mut m = etk.clone();
                m[i] = v;
                check(&m);
            }
        }
    }
    for len in (0..n).step_by(5) {
        check(&etk[..len]);
    }
    // Deep nesting and huge claims.
    check(&[0x30, 0x80].repeat(10_000));
    check(&[0x30, 0x88, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    check(&[&[0x30, 0x80][..], &etk[..]].concat());
    println!("ETK mutations: {ok} parsed, {err} typed errors");
}

// ---- (g) keystores ---------------------------------------------------------------------

use etee_testpki::XorShift;

#[test]
fn keystore_garbage_is_an_error() {
    let w = world();
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    for i in 0..300 {
        let n = rng.below(4096);
        let mut b = rng.bytes(n);
        if i % 3 == 0 && n > 4 {
            // A plausible outer SEQUENCE, so that parsing gets a little further.
            b[0] = 0x30;
            b[1] = 0x82;
            b[2] = ((n - 4) >> 8) as u8;
            b[3] = (n - 4) as u8;
        }
        assert!(
            EhealthKeystore::load(&b, "test").is_err(),
            "random bytes #{i} loaded"
        );
    }
    assert!(EhealthKeystore::load(&[], "").is_err());
    assert!(EhealthKeystore::load(&[0x30, 0x80].repeat(10_000), "x").is_err());

    // A real keystore: every truncation errs; flips err or load the same keys.
    let entries = vec![PfxEntry {
        alias: w.bob.etk_serial_decimal(),
        key: w.bob.etk_key.clone(),
        chain: vec![w.bob.etk_cert.clone()],
    }];
    let p12 = write_pfx(&entries, "test", Profile::Modern).unwrap();
    let good = EhealthKeystore::load(&p12, "test").unwrap();
    assert_eq!(good.entries().len(), 1);
    for len in (0..p12.len()).step_by(p12.len() / 60 + 1) {
        assert!(
            EhealthKeystore::load(&p12[..len], "test").is_err(),
            "truncated to {len}"
        );
    }
    let mut accepted = Vec::new();
    for _ in 0..60 {
        let i = rng.below(p12.len());
        let mut m = p12.clone();
        m[i] ^= 1 << (i % 8);
        if let Ok(ks) = EhealthKeystore::load(&m, "test") {
            let e = &ks.entries()[0];
            assert_eq!(e.alias, good.entries()[0].alias, "flip at {i}");
            assert_eq!(e.serial, good.entries()[0].serial, "flip at {i}");
            accepted.push(i);
        }
    }
    println!("keystore flips accepted (same keys) at {accepted:?}");
}

// ---- known bugs ------------------------------------------------------------------------

/// A definite length near 2^64 once overflowed `Header::end` (offset + header + length):
/// "attempt to add with overflow" in debug builds and under cargo-fuzz.
#[test]
fn length_near_u64_max_is_fatal() {
    let mut m = vec![0x30, 0x80];
    m.extend(oid::der(oid::SIGNED_DATA));
    m.extend([0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x01, 0x31, 0x00]);
    // EncapsulatedContentInfo claiming 2^64 - 1 bytes.
    m.extend([0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    m.extend(oid::der(oid::DATA));
    let (u, content) = unseal_to_vec(&m, &KeyRing::new(), &UnsealOptions::default()).unwrap();
    assert_eq!(
        u.verdict.fatal,
        Some(Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT)
    );
    assert!(content.is_none());
}

/// Regression (found by fuzzing): a content-encryption IV shorter than the cipher's
/// (absent, empty, or 15 bytes for AES) used to reach `openssl::symm::Crypter::new`, whose
/// `assert!(iv_len <= iv.len())` panicked. One bit flip of a genuine message (IV length
/// `04 10` → `04 00`) was enough. Now a fatal.
#[test]
fn content_iv_shorter_than_the_block_is_fatal() {
    let w = world();
    let parts = Parts::of(&w.small);
    let env = enveloped_layout(&parts.middle);
    // AlgorithmIdentifier { aes128-CBC } without parameters: 30 0b 06 09 60 86 48 01 65 03 04 01 02.
    let no_iv = tlv(tag::SEQUENCE, &oid::der(oid::AES128_CBC));
    let msg = parts.with_middle(&splice(&parts.middle, env.content_alg, &no_iv));
    let (u, content) = unseal_to_vec(&msg, &w.bob_ring, &opts(w)).unwrap();
    assert_eq!(
        u.verdict.fatal,
        Some(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT)
    );
    assert!(content.is_none());
}

// ---- bounded fuzzing on stable Rust ----------------------------------------------------

/// The checks of the cargo-fuzz targets (`fuzz/src/lib.rs`), for the smoke runner below.
mod entry {
    use super::*;

    /// A slice reader that yields 1–7 bytes per call, to shake out buffer-boundary bugs.
    struct Trickle<'a>(&'a [u8], u64);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1.wrapping_mul(6364136223846793005).wrapping_add(1);
            let n = (1 + (self.1 >> 61) as usize)
                .min(buf.len())
                .min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Content only with a clean verdict, and the same outcome whether the message is
    /// read at once or a few bytes at a time. Returns the content released, if any.
    pub fn unseal_any(data: &[u8]) -> Vec<Option<Vec<u8>>> {
        let w = world();
        openers(w)
            .iter()
            .map(|(name, ring, o)| {
                let ((u, content), random) =
                    noting_random_key(|| unseal_to_vec(data, ring, o).unwrap());
                assert_eq!(content.is_some(), u.verdict.is_clean(), "{name}");
                let mut streamed = Vec::new();
                let s = unseal(Trickle(data, data.len() as u64), &mut streamed, ring, o)
                    .expect("reading a slice cannot fail");
                // With a random content key, only the absence of content is certain.
                if !random {
                    assert_eq!(s.verdict, u.verdict, "{name}: streamed verdict differs");
                    assert_eq!(
                        s.content_sha256, u.content_sha256,
                        "{name}: content differs"
                    );
                }
                content
            })
            .collect()
    }

    pub fn etk_any(data: &[u8]) {
        if let Ok(etk) = Etk::parse(data) {
            let w = world();
            let _ = etk.validate(&w.anchors, w.now);
            let _ = etk.key_alias();
            let _ = etk.identities();
        }
    }

    pub fn ber_any(data: &[u8]) {
        let slice = parse_exact(data);
        if let Ok(t) = &slice {
            walk(t, 0);
        }
        let mut s = BerStream::new(data);
        if let Ok(el) = s.read_element(1 << 20) {
            assert!(
                data.starts_with(&el),
                "read_element must return the bytes read"
            );
            assert_eq!(s.pos(), el.len() as u64);
        }
        let _ = BerStream::new(data).skip_element();
        let mut s = BerStream::new(data);
        if let Ok(h) = s.read_header() {
            if matches!(h.tag, 0x04 | 0x24 | 0x80 | 0xa0) {
                let mut out = Vec::new();
                let streamed = s.octet_stream(h, 1).read_to_end(&mut out);
                assert!(out.len() <= data.len());
                // What the in-memory parser accepts, the stream parser reads the same.
                if let Ok(Ok(octets)) = slice.map(|t| t.octets()) {
                    assert!(
                        streamed.is_ok(),
                        "stream refused octets the slice parser read"
                    );
                    assert_eq!(out, octets.as_ref(), "stream and slice octets differ");
                }
            }
        }
    }

    fn walk(t: &Tlv<'_>, depth: usize) {
        let _ = t.octets();
        let _ = t.uint_bytes();
        let _ = t.small_int();
        if t.is_constructed() && depth < 64 {
            for c in t.children().flatten() {
                walk(&c, depth + 1);
            }
        }
    }
}

/// Mutates `seed` in one to four random ways.
fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if m.is_empty() {
            m.push(0x30);
        }
        let i = rng.below(m.len());
        match rng.below(10) {
            0 => m[i] ^= 1 << rng.below(8),
            1 => m[i] = [0x00, 0x80, 0x81, 0x82, 0x84, 0x88, 0xff, 0x24, 0x30][rng.below(9)],
            2 => m.truncate(i),
            3 => {
                let n = rng.below(64).min(m.len() - i);
                m.drain(i..i + n);
            }
            4 => {
                let ins: &[u8] =
                    [&[0x30, 0x80][..], &[0x24, 0x80], &[0, 0], &[0x04, 0x00]][rng.below(4)];
                m.splice(i..i, ins.iter().copied());
            }
            5 => {
                let n = rng.below(1200).min(m.len() - i);
                let copy = m[i..i + n].to_vec();
                let at = rng.below(m.len());
                m.splice(at..at, copy);
            }
            6 => {
                let j = rng.below(m.len());
                m.swap(i, j);
            }
            7 => {
                let n = 1 + rng.below(8);
                let v = rng.bytes(n);
                let end = (i + v.len()).min(m.len());
                m.splice(i..end, v);
            }
            8 => {
                // A long-form length octet made huge: 2^60, or close to 2^64.
                if let Some(j) = (i..m.len()).find(|&j| matches!(m[j], 0x81..=0x84)) {
                    let n = usize::from(m[j] & 0x7f);
                    let end = (j + 1 + n).min(m.len());
                    let huge: &[u8] = if rng.below(2) == 0 {
                        &[0x88, 0x10, 0, 0, 0, 0, 0, 0, 0]
                    } else {
                        &[0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0]
                    };
                    m.splice(j..end, huge.iter().copied());
                }
            }
            _ => m[i] = m[i].wrapping_add(1 + rng.below(3) as u8),
        }
    }
    m
}

/// Where the smoke runner mutates: a whole input, or one layer of a generated message
/// that is then put back together (re-encrypted, re-signed) to get past the signatures.
enum Seed {
    Unseal(Vec<u8>, Option<Vec<u8>>),
    Middle(Parts, Vec<u8>),
    Inner(Parts, Vec<u8>),
    Etk(Vec<u8>),
    Ber(Vec<u8>),
}

fn seeds() -> Vec<Seed> {
    let w = world();
    let mut v = vec![
        Seed::Unseal(w.small.clone(), Some(w.small_plain.clone())),
        Seed::Unseal(w.chunked.clone(), Some(w.chunked_plain.clone())),
        Seed::Middle(Parts::of(&w.small), w.small_plain.clone()),
        Seed::Inner(Parts::of(&w.small), w.small_plain.clone()),
        Seed::Inner(Parts::of(&w.chunked), w.chunked_plain.clone()),
        Seed::Etk(w.bob.etk.clone()),
        Seed::Ber(w.small.clone()),
        Seed::Ber(w.bob.etk.clone()),
    ];
    if let Some(off) = official() {
        // Bob's official key is not in the fuzz ring: it opens nothing, but parses.
        v.push(Seed::Unseal(off.msg.clone(), None));
    }
    v
}

impl Seed {
    fn name(&self) -> &'static str {
        match self {
            Seed::Unseal(..) => "unseal",
            Seed::Middle(..) => "unseal (middle layer mutated, re-signed)",
            Seed::Inner(..) => "unseal (inner layer mutated, re-encrypted, re-signed)",
            Seed::Etk(..) => "etk_parse",
            Seed::Ber(..) => "ber",
        }
    }
}

/// One mutated input: the target, the bytes, and the content it may release if clean.
struct Input<'a> {
    target: &'static str,
    bytes: Vec<u8>,
    plain: Option<&'a [u8]>,
}

fn generate<'a>(rng: &mut XorShift, seed: &'a Seed) -> Input<'a> {
    let (target, bytes, plain) = match seed {
        Seed::Unseal(base, plain) => ("unseal", mutate(rng, base), plain.as_deref()),
        Seed::Middle(parts, plain) => (
            "unseal",
            parts.with_middle(&mutate(rng, &parts.middle)),
            Some(plain.as_slice()),
        ),
        Seed::Inner(parts, plain) => (
            "unseal",
            parts.with_inner(&mutate(rng, &parts.inner)),
            Some(plain.as_slice()),
        ),
        Seed::Etk(base) => ("etk_parse", mutate(rng, base), None),
        Seed::Ber(base) => ("ber", mutate(rng, base), None),
    };
    Input {
        target,
        bytes,
        plain,
    }
}

/// Runs one input; panics on a failed check. A clean verdict must give back the original
/// content: a mutation that keeps the verdict clean may only have touched unsigned parts.
fn check(input: &Input<'_>) {
    match input.target {
        "unseal" => {
            for c in entry::unseal_any(&input.bytes).into_iter().flatten() {
                if let Some(p) = input.plain {
                    assert_eq!(c, p, "a mutated message opened cleanly with other content");
                }
            }
        }
        "etk_parse" => entry::etk_any(&input.bytes),
        _ => entry::ber_any(&input.bytes),
    }
}

/// Bounded mutation fuzzing of the cargo-fuzz entry points on stable Rust:
/// `ETEE_FUZZ_SECS` (default 30) seconds, `ETEE_FUZZ_SEED` (default: the clock, printed).
/// Panics are collected by site (known ones included), each with the seed and input
/// number that reproduce it; the test fails if there was any. With `ETEE_FUZZ_DUMP=dir`,
/// the first input of each panic site is written there, named after its target, for
/// replaying with `cargo fuzz run <target> <file>` or `replay_fuzz_inputs`.
#[test]
#[ignore = "bounded fuzzing: run with --ignored fuzz_smoke"]
fn fuzz_smoke() {
    use std::panic;
    let (secs, seed) = etee_testpki::fuzz_run_settings();
    println!("fuzz_smoke: seed {seed}, {secs} s");
    let seeds = seeds();
    let mut rng = XorShift(seed | 1);

    // Record where each panic happened; silence the default report (one per input).
    let site: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let hook_site = site.clone();
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        let msg = etee_testpki::panic_message(info.payload());
        *hook_site.lock().unwrap() = Some(format!("{at}: {msg}"));
    }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let dump = std::env::var_os("ETEE_FUZZ_DUMP").map(etee_testpki::from_project_root);
    let mut found: std::collections::BTreeMap<String, (u64, &str, u64)> = Default::default();
    let mut runs = 0u64;
    while std::time::Instant::now() < deadline {
        let s = &seeds[rng.below(seeds.len())];
        runs += 1;
        let input = generate(&mut rng, s);
        if panic::catch_unwind(|| check(&input)).is_err() {
            let key = site.lock().unwrap().take().unwrap_or_default();
            let entry = found.entry(key).or_insert((runs, s.name(), 0));
            entry.2 += 1;
            if let (Some(dir), 1) = (&dump, entry.2) {
                std::fs::create_dir_all(dir).unwrap();
                let file = dir.join(format!("{}-{seed}-{runs}", input.target));
                std::fs::write(&file, &input.bytes).unwrap();
                println!("dumped {}", file.display());
            }
        }
    }
    panic::set_hook(previous);
    println!("fuzz_smoke: {runs} inputs");
    for (site, (run, target, count)) in &found {
        println!("PANIC {site}\n  {count}×, first at input #{run} ({target}; seed {seed})");
    }
    assert!(found.is_empty(), "{} distinct panic sites", found.len());
}

/// Replays the files in `ETEE_FUZZ_REPLAY` (a directory, or one file) through the
/// checks. The target comes from the file name's prefix (`unseal-…`, as `fuzz_smoke`
/// dumps them) or the directory's name (`fuzz/artifacts/unseal/crash-…`); otherwise the
/// file goes through every target.
#[test]
#[ignore = "replays dumped inputs: run with --ignored replay_fuzz_inputs"]
fn replay_fuzz_inputs() {
    let Some(path) = std::env::var_os("ETEE_FUZZ_REPLAY").map(etee_testpki::from_project_root)
    else {
        println!("set ETEE_FUZZ_REPLAY to a file or directory");
        return;
    };
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![path]
    };
    const TARGETS: [&str; 3] = ["unseal", "etk_parse", "ber"];
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let dir = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let named: Vec<&str> = TARGETS
            .into_iter()
            .filter(|t| name.starts_with(t) || dir == *t)
            .collect();
        let targets = if named.is_empty() {
            TARGETS.to_vec()
        } else {
            named
        };
        println!("{} ({} bytes): {targets:?}", f.display(), bytes.len());
        for target in targets {
            check(&Input {
                target,
                bytes: bytes.clone(),
                plain: None,
            });
        }
    }
}

/// Writes seed inputs for the cargo-fuzz targets: `ETEE_FUZZ_CORPUS=fuzz/corpus`.
/// The messages carry a KEKRecipientInfo for the `unseal` target's fixed KEK, so that
/// libFuzzer starts past the key recovery.
#[test]
#[ignore = "writes files: run with --ignored write_fuzz_corpus"]
fn write_fuzz_corpus() {
    let Some(dir) = etee_testpki::fuzz_corpus_dir() else {
        return;
    };
    let w = world();
    let parts = Parts::of(&w.small);
    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        ("unseal", "small.msg", w.small.clone()),
        ("unseal", "chunked.msg", w.chunked.clone()),
        ("unseal", "kek-only.msg", {
            let mut out = Vec::new();
            let o = SealOptions {
                signing_time: Some(w.now),
                ..Default::default()
            };
            seal(&w.alice, &[], Some(&w.kek), &b"kek only"[..], &mut out, &o).unwrap();
            out
        }),
        ("etk_parse", "bob.etk", w.bob.etk.clone()),
        ("ber", "message.ber", w.small.clone()),
        ("ber", "inner.ber", parts.inner.clone()),
        ("ber", "etk.der", w.bob.etk.clone()),
    ];
    let files = files.into_iter().chain(revocation_seeds(w.now));
    for (target, name, bytes) in files {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
        println!("wrote {}", d.join(name).display());
    }
}

/// Seeds of the `revocation` target: OCSP answers (whole, basic, by a delegated responder,
/// with a nonce), a message's RevocationValues and a CRL (DER and PEM).
fn revocation_seeds(now: i64) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use etee_testpki::{OcspAnswer, OcspStatus};
    let pki = TestPki::generate("fuzz-seeds").unwrap();
    let bob = pki
        .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "Bob"))
        .unwrap();
    let responder = pki.ocsp_responder().unwrap();
    let good = OcspAnswer::at(OcspStatus::Good, now);
    let delegated = OcspAnswer {
        nonce: Some(vec![7; 16]),
        signer: Some(&responder),
        ..OcspAnswer::at(OcspStatus::Revoked(now - 60), now)
    };
    let basic = pki.ocsp_basic(&bob.etk_cert, &good).unwrap();
    let serial = bob.etk_cert.serial_number();
    let crl = pki.crl(&[(serial, now - 60)], 1, now, now + 3600).unwrap();
    let values = etee_formats::ocsp::RevocationValues {
        crls: vec![crl.to_der().unwrap()],
        ocsp: vec![basic.clone()],
    };
    let attribute = values.attribute();
    // The attribute's value (what `RevocationValues::parse` reads): its SET's one element.
    let value = {
        let t = parse_exact(&attribute).unwrap();
        let mut fields = t.seq().unwrap();
        fields.next(tag::OID).unwrap();
        let set = fields.next(tag::SET).unwrap();
        let first = set.children().next().unwrap().unwrap();
        first.raw.to_vec()
    };
    vec![
        (
            "revocation",
            "good.ocsp",
            pki.ocsp_response(&bob.etk_cert, &good).unwrap(),
        ),
        (
            "revocation",
            "delegated-revoked.ocsp",
            pki.ocsp_response(&bob.etk_cert, &delegated).unwrap(),
        ),
        ("revocation", "good.basic", basic),
        ("revocation", "values.der", value),
        ("revocation", "list.crl", crl.to_der().unwrap()),
        ("revocation", "list.pem", crl.to_pem().unwrap()),
    ]
}

// ---- sets an attacker fills with tiny values -----------------------------------------

/// The SET of `first` followed by `n` NULLs (two bytes each), DER.
fn set_with_nulls(first: &[u8], n: usize) -> Vec<u8> {
    let mut content = first.to_vec();
    content.extend([tag::NULL, 0].repeat(n));
    tlv(tag::SET, &content)
}

/// Sets anyone may fill (the unsigned timestamp attribute, a signed attribute's values
/// before the signature is checked, the SignerInfos) are read through, not copied
/// element by element: with 300 000 two-byte values no single allocation reaches the
/// set's own size (a vector of their copies or slices would be ten times as large), and
/// what they mean is kept (the first token, a faulty attribute, more than one signer).
#[test]
fn sets_of_a_great_many_tiny_values_are_not_copied() {
    const N: usize = 300_000;
    let w = world();
    let si = signer::build(&w.alice, &[7; 32], w.now, None).unwrap();
    let si_content = parse_exact(&si).unwrap().content.to_vec();

    // A timestamp attribute of a first "token" and N more values, unsigned.
    let attr = cons(
        tag::SEQUENCE,
        &[
            &oid::der(oid::ATTR_SIGNATURE_TIMESTAMP),
            &set_with_nulls(&[0x30, 0], N),
        ],
    );
    let with_tokens = cons(tag::SEQUENCE, &[&si_content, &tlv(0xa1, &attr)]);
    let (parsed, peak) =
        peak_allocation(|| signer::SignerInfo::parse(&parse_exact(&with_tokens).unwrap()).unwrap());
    assert_eq!(parsed.timestamp.as_deref(), Some(&[0x30, 0][..]));
    assert!(
        peak < 2 * N,
        "largest allocation {peak} B for a {} B set",
        2 * N
    );

    // A signed messageDigest attribute with N + 1 values: faulty, read in place.
    let digest_attr = cons(
        tag::SEQUENCE,
        &[
            &oid::der(oid::ATTR_MESSAGE_DIGEST),
            &set_with_nulls(&tlv(tag::OCTET_STRING, &[1; 32]), N),
        ],
    );
    let parsed_si = parse_exact(&si).unwrap();
    let mut s = parsed_si.seq().unwrap();
    let (version, sid, digest_alg) = (s.any().unwrap(), s.any().unwrap(), s.any().unwrap());
    s.next(0xa0).unwrap();
    let (sig_alg, sig) = (s.any().unwrap(), s.any().unwrap());
    let faulty = cons(
        tag::SEQUENCE,
        &[
            version.raw,
            sid.raw,
            digest_alg.raw,
            &tlv(0xa0, &digest_attr),
            sig_alg.raw,
            sig.raw,
        ],
    );
    let (parsed, peak) =
        peak_allocation(|| signer::SignerInfo::parse(&parse_exact(&faulty).unwrap()).unwrap());
    assert!(parsed.attribute_fault, "more than one value");
    assert_eq!(parsed.message_digest.as_deref(), Some(&[1; 32][..]));
    // The signed attributes themselves are kept (what is signed): one copy of them.
    assert!(
        peak < 3 * N,
        "largest allocation {peak} B for a {} B set",
        2 * N
    );

    // The outer SignerInfos: one and N NULLs is more than one signer, found without a
    // copy of them.
    let msg = seal_for(w, b"one signer", false);
    let l = signed_layout(&msg);
    let first = parse_exact(&msg[l.signer_infos.clone()])
        .unwrap()
        .content
        .to_vec();
    let crowded = splice(&msg, l.signer_infos, &set_with_nulls(&first, N));
    let ((u, _), peak) = peak_allocation(|| open(&crowded, &w.bob_ring, &opts(w)));
    assert_eq!(
        u.verdict.fatal,
        Some(Fatal::MESSAGE_OUTER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION)
    );
    // The tail of the layer is read whole (bounded by MAX_STRUCTURE): one copy of it.
    assert!(
        peak < 3 * N,
        "largest allocation {peak} B for a {} B set",
        2 * N
    );
}
