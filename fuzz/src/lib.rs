//! The fuzz targets' bodies, and the key material they share.
//!
//! Keys are generated once per process (RSA key generation costs ~0.1 s; libFuzzer runs
//! the target thousands of times a second). Each body checks more than "no panic":
//!
//! - `unseal`: content is released only with a clean verdict; reading the message a few
//!   bytes at a time gives the verdict and content of reading it at once (unless the
//!   content key could not be recovered and a random one took its place, RFC 3218).
//! - `etk`: what parses also validates, names its key alias and identities.
//! - `ber`: `read_element` returns exactly the bytes it consumed; when the in-memory parser
//!   reads an OCTET STRING, the stream parser reads the same octets.
//!
//! The platform services' targets (`soap`, `kgss_xml`, `services_json`) are in
//! [`services`], which the stable-Rust mutation test of `etee-services` compiles too.

use etee_formats::ber::slice::{parse_exact, Tlv};
use etee_formats::ber::stream::BerStream;
use etee_formats::cert::Certificate;
use etee_formats::cms::{unseal as unseal_stream, unseal_to_vec, UnsealOptions};
use etee_formats::etk::Etk;
use etee_formats::keys::{DecryptionKey, KeyError, KeyId, KeyRing, PrivateKeyOps};
use etee_formats::keystore::SoftwareKeys;
use etee_formats::ocsp;
use etee_formats::revocation::{Revocation, RevocationPolicy};
use etee_formats::trust::TrustAnchors;
use etee_testpki::{InstitutionSpec, TestPki};
use std::cell::Cell;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

pub mod custody;
pub mod services;

/// The KEK of the `unseal` target. The seed corpus written by the robustness tests
/// (`write_fuzz_corpus`) carries a KEKRecipientInfo for it, so that inputs get past key
/// recovery into the inner layer.
pub const KEK: &[u8; 16] = b"etee-fuzzing-kek";

struct World {
    ring: KeyRing,
    empty: KeyRing,
    opts: UnsealOptions,
    kek_opts: UnsealOptions,
    anchors: TrustAnchors,
    at: i64,
    /// Bob's ETK certificate and its issuer (the test root), for the `revocation` target.
    subject: openssl::x509::X509,
    issuer: openssl::x509::X509,
}

thread_local! {
    static RANDOM_KEY: Cell<bool> = const { Cell::new(false) };
}

/// Software keys that note when key transport yields no 16-byte content key.
struct Witness(SoftwareKeys);

impl PrivateKeyOps for Witness {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.0.sign_pss_sha256(key, digest)
    }
    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let r = self.0.decrypt_pkcs1v15(key, blob);
        if !matches!(&r, Ok(k) if k.len() == 16) {
            RANDOM_KEY.with(|f| f.set(true));
        }
        r
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let pki = TestPki::generate("fuzz").expect("test PKI");
        let bob = pki
            .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "Bob"))
            .expect("institution");
        let cert = |x: &openssl::x509::X509| {
            Certificate::from_der(&x.to_der().expect("DER")).expect("certificate")
        };
        let etk_cert = cert(&bob.etk_cert);
        let mut keys = SoftwareKeys::new();
        keys.insert(KeyId("bob".into()), bob.etk_key.clone());
        let ops = Arc::new(Witness(keys));
        let mut ring = KeyRing::new();
        ring.add(DecryptionKey {
            ops: ops.clone(),
            key: KeyId("bob".into()),
            serial: etk_cert.serial().to_vec(),
            cert: Some(etk_cert),
            ski: None,
            modulus_bits: 2048,
        });
        // The same key by subjectKeyIdentifier (WEB_AUTHN recipients).
        ring.add(DecryptionKey {
            ops,
            key: KeyId("bob".into()),
            serial: vec![0x01],
            cert: None,
            ski: Some(b"bob".to_vec()),
            modulus_bits: 2048,
        });
        let anchors = TrustAnchors::new(vec![cert(&pki.root.cert)]);
        // Evaluation time fixed at start-up, inside the certificates' validity.
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let opts = UnsealOptions {
            anchors: anchors.clone(),
            at: Some(at),
            ..Default::default()
        };
        let kek_opts = UnsealOptions {
            kek: Some(Zeroizing::new(KEK.to_vec())),
            ..opts.clone()
        };
        World {
            ring,
            empty: KeyRing::new(),
            opts,
            kek_opts,
            anchors,
            at,
            subject: bob.etk_cert.clone(),
            issuer: pki.root.cert.clone(),
        }
    })
}

/// A slice reader that yields 1–8 bytes per call.
struct Trickle<'a>(&'a [u8], u64);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 = self
            .1
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let n = (1 + (self.1 >> 61) as usize)
            .min(buf.len())
            .min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

pub fn unseal(data: &[u8]) {
    let w = world();
    for (ring, opts) in [(&w.ring, &w.opts), (&w.empty, &w.kek_opts)] {
        RANDOM_KEY.with(|r| r.set(false));
        // Software keys always try (a failed decryption goes on with a random key): no
        // `UnsealError::Key` here.
        let (u, content) = unseal_to_vec(data, ring, opts).expect("software keys can try");
        let random = RANDOM_KEY.with(Cell::get);
        assert_eq!(content.is_some(), u.verdict.is_clean());
        let mut streamed = Vec::new();
        let s = unseal_stream(Trickle(data, data.len() as u64), &mut streamed, ring, opts)
            .expect("reading a slice cannot fail");
        if !random {
            assert_eq!(s.verdict, u.verdict, "streamed verdict differs");
            assert_eq!(
                s.content_sha256, u.content_sha256,
                "streamed content differs"
            );
        }
    }
}

/// Bytes as a revocation source from the network or a message: an OCSPResponse (an
/// answer fetched from a responder), a BasicOCSPResponse (as a message's
/// revocationValues carry it), a RevocationValues attribute, and a CRL file. Whatever
/// reads is judged against Bob's ETK certificate; an attribute that reads is written and
/// read back to the same value.
pub fn revocation(data: &[u8]) {
    let w = world();
    let judge = |basic: &[u8]| {
        if let Ok(answer) = ocsp::judge(basic, &w.subject, &w.issuer, w.at) {
            let _ = answer.status_at(w.at);
        }
    };
    if let Ok(basic) = ocsp::basic_of(data) {
        judge(&basic);
    }
    judge(data);
    if let Ok(values) = ocsp::RevocationValues::parse(data) {
        let attribute = values.attribute();
        let value = parse_exact(&attribute)
            .and_then(|t| {
                let mut fields = t.seq()?;
                fields.next(etee_formats::ber::tag::OID)?;
                let set = fields.next(etee_formats::ber::tag::SET)?;
                let first = set.children().next().expect("one value")?;
                Ok(first.raw.to_vec())
            })
            .expect("the written attribute reads");
        let again =
            ocsp::RevocationValues::parse(&value).expect("a written RevocationValues reads back");
        assert_eq!(
            again, values,
            "RevocationValues changed when written and read back"
        );
        let lists = Revocation::new(&values.crls, RevocationPolicy::Mandatory);
        if let Ok(lists) = lists {
            let _ = lists.status(&w.subject, &w.issuer, w.at);
        }
    }
    if let Ok(lists) = Revocation::new(&[data.to_vec()], RevocationPolicy::Mandatory) {
        let _ = lists.status(&w.subject, &w.issuer, w.at);
        let _ = lists.check_against(&[
            Certificate::from_der(&w.issuer.to_der().expect("DER")).expect("root")
        ]);
        let _ = lists.stale_at(w.at);
        let _ = lists.earliest_next_update();
    }
}

pub fn etk(data: &[u8]) {
    if let Ok(etk) = Etk::parse(data) {
        let w = world();
        let _ = etk.validate(&w.anchors, w.at);
        let _ = etk.key_alias();
        let _ = etk.identities();
    }
}

pub fn ber(data: &[u8]) {
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
