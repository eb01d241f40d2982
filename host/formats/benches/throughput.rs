//! Throughput of sealing and unsealing with software keys, each as a ratio to the
//! primitive that bounds it, measured in the same run on the same machine:
//! - 1 KiB unseal ops/s ÷ RSA-2048 private-operation rate (one RSA decrypt per unseal),
//!   also with a revocation list of 10 000 entries checked (what `--crl` costs), and
//!   with the sender's OCSP answer carried in the message and checked under the
//!   mandatory policy (what an OCSP-embedding sender costs its receivers);
//! - 1 KiB seal ops/s ÷ half the RSA-2048 PSS sign rate (two signatures per seal);
//! - large seal/unseal MiB/s ÷ the serial AES-128-CBC + 2×SHA-256 limit, with peak RSS.
//!
//! `cargo bench -p etee-formats --bench throughput` (ETEE_BENCH_MIB sets the large size,
//! default 256, measured once, or as the best of five passes below 64 MiB;
//! ETEE_BENCH_SECONDS the time per measurement, default 2).

use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal, Recipient, SealOptions, UnsealOptions};
use etee_formats::keys::{DecryptionKey, KeyId, KeyRing, SignerRef, SigningKey};
use etee_formats::keystore::SoftwareKeys;
use etee_formats::revocation::{Revocation, RevocationPolicy};
use etee_formats::trust::TrustAnchors;
use etee_testpki::{InstitutionSpec, TestPki};
use openssl::hash::{Hasher, MessageDigest};
use openssl::pkey_ctx::PkeyCtx;
use openssl::symm::{Cipher, Crypter, Mode};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct World {
    signer: SigningKey,
    bob: Certificate,
    ring: KeyRing,
    anchors: TrustAnchors,
    /// The same anchors with a list of [`REVOKED`] other certificates, policy optional.
    anchors_with_crl: TrustAnchors,
    /// The same anchors, policy mandatory, no list: only a message's OCSP answer tells.
    anchors_mandatory: TrustAnchors,
    /// Alice's OCSP answer (good for an hour), as a sealer embeds it.
    alice_ocsp: etee_formats::ocsp::RevocationValues,
    rsa: openssl::pkey::PKey<openssl::pkey::Private>,
}

/// Entries of the benchmark's revocation list (a large CA's list is of this order).
const REVOKED: usize = 10_000;

fn world() -> World {
    let pki = TestPki::generate("bench").unwrap();
    let alice = pki
        .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Alice"))
        .unwrap();
    let bob = pki
        .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "Bob"))
        .unwrap();
    let c = |x: &openssl::x509::X509| Certificate::from_der(&x.to_der().unwrap()).unwrap();
    let mut keys = SoftwareKeys::new();
    keys.insert(KeyId("auth".into()), alice.auth.key.clone());
    keys.insert(KeyId("bob".into()), bob.etk_key.clone());
    let ops = Arc::new(keys);
    let bob_cert = c(&bob.etk_cert);
    let mut ring = KeyRing::new();
    ring.add(DecryptionKey {
        ops: ops.clone(),
        key: KeyId("bob".into()),
        serial: bob_cert.serial().to_vec(),
        cert: Some(bob_cert.clone()),
        ski: None,
        modulus_bits: 2048,
    });
    let anchors = TrustAnchors::new(vec![c(&pki.root.cert)]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let serials: Vec<_> = (0..REVOKED)
        .map(|_| etee_testpki::random_serial().unwrap())
        .collect();
    let entries: Vec<_> = serials.iter().map(|s| (s.as_ref(), now - 60)).collect();
    let crl = pki
        .crl(&entries, 1, now - 60, now + 3600)
        .unwrap()
        .to_der()
        .unwrap();
    let anchors_with_crl = anchors
        .clone()
        .with_revocation(Revocation::new(&[crl], RevocationPolicy::Optional).unwrap());
    let alice_ocsp = etee_formats::ocsp::RevocationValues {
        crls: vec![],
        ocsp: vec![pki
            .ocsp_basic(
                &alice.auth.cert,
                &etee_testpki::OcspAnswer::at(etee_testpki::OcspStatus::Good, now),
            )
            .unwrap()],
    };
    let anchors_mandatory = anchors
        .clone()
        .with_revocation(Revocation::new(&[], RevocationPolicy::Mandatory).unwrap());
    World {
        alice_ocsp,
        anchors_mandatory,
        signer: SigningKey {
            ops,
            key: KeyId("auth".into()),
            signer: SignerRef::Certificate {
                cert: c(&alice.auth.cert),
                chain: vec![c(&pki.root.cert)],
            },
        },
        bob: bob_cert,
        ring,
        anchors,
        anchors_with_crl,
        rsa: bob.etk_key,
    }
}

/// Runs `f` repeatedly for about `secs`; returns operations per second.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Rates of a primitive and of our operation measured in alternating rounds, so that a
/// noisy machine affects both alike: (median primitive rate, median own rate, median of the
/// per-round ratios, each ratio = own ÷ (primitive × `scale`)).
fn paired(
    secs: f64,
    scale: f64,
    mut primitive: impl FnMut(),
    mut ours: impl FnMut(),
) -> (f64, f64, f64) {
    const ROUNDS: usize = 7;
    let each = secs / 2.0;
    let (mut p, mut o, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let a = rate(each, &mut primitive);
        let b = rate(each, &mut ours);
        p.push(a);
        o.push(b);
        r.push(b / (a * scale));
    }
    (median(p), median(o), median(r))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Bytes per second of `f` over `buf`.
fn throughput(secs: f64, len: usize, f: impl FnMut()) -> f64 {
    rate(secs, f) * len as f64
}

/// A reader producing `n` bytes of a cheap pattern without holding them.
struct Pattern {
    left: u64,
}
impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        static BLOCK: [u8; 4096] = {
            let mut b = [0u8; 4096];
            let mut i = 0;
            while i < 4096 {
                b[i] = (i as u8).wrapping_mul(31);
                i += 1;
            }
            b
        };
        let k = (buf.len() as u64).min(self.left) as usize;
        for (dst, src) in buf[..k]
            .chunks_mut(BLOCK.len())
            .zip(std::iter::repeat(&BLOCK))
        {
            dst.copy_from_slice(&src[..dst.len()]);
        }
        self.left -= k as u64;
        Ok(k)
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn mib() -> u64 {
    std::env::var("ETEE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn secs() -> f64 {
    std::env::var("ETEE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0)
}

/// Resets the kernel's peak-RSS counter so the next phase reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("throughput: bench");
        return;
    }
    let secs = secs();
    let w = world();

    // Primitives.
    let blob = {
        let mut ctx = PkeyCtx::new(&w.rsa).unwrap();
        ctx.encrypt_init().unwrap();
        ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
        let mut out = vec![];
        ctx.encrypt_to_vec(&[7u8; 16], &mut out).unwrap();
        out
    };
    // The two RSA primitives: printed here, and paired with our operations below.
    let rsa_decrypt = || {
        let mut ctx = PkeyCtx::new(&w.rsa).unwrap();
        ctx.decrypt_init().unwrap();
        ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
        let mut out = vec![];
        ctx.decrypt_to_vec(&blob, &mut out).unwrap();
    };
    let digest = [1u8; 32];
    let rsa_sign_once = || {
        w.signer
            .ops
            .sign_pss_sha256(&w.signer.key, &digest)
            .unwrap();
    };
    let rsa_private = rate(secs, rsa_decrypt);
    let rsa_sign = rate(secs, rsa_sign_once);
    let buf = vec![0x5au8; 1 << 20];
    let mut out = vec![0u8; buf.len() + 32];
    let aes_enc = throughput(secs, buf.len(), || {
        let mut c = Crypter::new(
            Cipher::aes_128_cbc(),
            Mode::Encrypt,
            &[1; 16],
            Some(&[2; 16]),
        )
        .unwrap();
        c.update(&buf, &mut out).unwrap();
    });
    let aes_dec = throughput(secs, buf.len(), || {
        let mut c = Crypter::new(
            Cipher::aes_128_cbc(),
            Mode::Decrypt,
            &[1; 16],
            Some(&[2; 16]),
        )
        .unwrap();
        c.pad(false);
        c.update(&buf, &mut out).unwrap();
    });
    let sha = throughput(secs, buf.len(), || {
        let mut h = Hasher::new(MessageDigest::sha256()).unwrap();
        h.update(&buf).unwrap();
        h.finish().unwrap();
    });
    let seal_limit = 1.0 / (1.0 / aes_enc + 2.0 / sha);
    let unseal_limit = 1.0 / (1.0 / aes_dec + 2.0 / sha);
    let m = 1048576.0;
    println!("primitives (this machine, this run)");
    println!("  RSA-2048 private op (PKCS#1 v1.5 decrypt)  {rsa_private:9.0} /s");
    println!("  RSA-2048 PSS sign                          {rsa_sign:9.0} /s");
    println!(
        "  AES-128-CBC encrypt / decrypt             {:9.0} / {:.0} MiB/s",
        aes_enc / m,
        aes_dec / m
    );
    println!(
        "  SHA-256                                    {:9.0} MiB/s",
        sha / m
    );
    println!(
        "  serial limit seal (AES enc + 2 SHA)        {:9.0} MiB/s",
        seal_limit / m
    );
    println!(
        "  serial limit unseal (AES dec + 2 SHA)      {:9.0} MiB/s",
        unseal_limit / m
    );

    // 1 KiB messages.
    let small = vec![0x42u8; 1024];
    let seal_small = |out: &mut Vec<u8>| {
        let recipients = [Recipient::Certificate(w.bob.clone())];
        seal(
            &w.signer,
            &recipients,
            None,
            &small[..],
            out,
            &SealOptions::default(),
        )
        .unwrap();
    };
    let mut sealed = Vec::new();
    seal_small(&mut sealed);
    let opts = UnsealOptions {
        anchors: w.anchors.clone(),
        ..Default::default()
    };
    let (sign_p, seal_rate, seal_ratio) = paired(secs, 0.5, rsa_sign_once, || {
        seal_small(&mut Vec::with_capacity(8192));
    });
    let (dec_p, unseal_rate, unseal_ratio) = paired(secs, 1.0, rsa_decrypt, || {
        let r = unseal(&sealed[..], io::sink(), &w.ring, &opts).unwrap();
        assert!(r.verdict.is_clean());
    });
    let opts_crl = UnsealOptions {
        anchors: w.anchors_with_crl.clone(),
        ..Default::default()
    };
    let (crl_p, crl_rate, crl_ratio) = paired(secs, 1.0, rsa_decrypt, || {
        let r = unseal(&sealed[..], io::sink(), &w.ring, &opts_crl).unwrap();
        assert!(r.verdict.is_clean());
    });
    let mut with_ocsp = Vec::new();
    seal(
        &w.signer,
        &[Recipient::Certificate(w.bob.clone())],
        None,
        &small[..],
        &mut with_ocsp,
        &SealOptions {
            revocation_values: Some(w.alice_ocsp.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let opts_ocsp = UnsealOptions {
        anchors: w.anchors_mandatory.clone(),
        ..Default::default()
    };
    let (ocsp_p, ocsp_rate, ocsp_ratio) = paired(secs, 1.0, rsa_decrypt, || {
        let r = unseal(&with_ocsp[..], io::sink(), &w.ring, &opts_ocsp).unwrap();
        assert!(r.verdict.is_clean(), "{:?}", r.verdict);
    });
    println!("1 KiB messages (software keys; medians of 7 alternating rounds)");
    println!("  seal    {seal_rate:7.0} /s   ratio to RSA sign/2      {seal_ratio:.2}   (sign {sign_p:.0}/s)");
    println!("  unseal  {unseal_rate:7.0} /s   ratio to RSA private op  {unseal_ratio:.2}   (private op {dec_p:.0}/s)");
    println!("  unseal, {REVOKED}-entry CRL checked  {crl_rate:7.0} /s   ratio {crl_ratio:.2}   (private op {crl_p:.0}/s)");
    println!("  unseal, embedded OCSP answer, mandatory  {ocsp_rate:7.0} /s   ratio {ocsp_ratio:.2}   (private op {ocsp_p:.0}/s)");

    // Large messages: plaintext generated on the fly, sealed message on disk, content to
    // a sink, so the peak RSS is the sealer's and unsealer's own.
    let size = mib() << 20;
    // On tmpfs when there is one: the figures are the library's, not the disk's write-back.
    let shm = std::path::Path::new("/dev/shm");
    let file = if shm.is_dir() {
        tempfile::NamedTempFile::new_in(shm)
    } else {
        tempfile::NamedTempFile::new()
    }
    .unwrap();
    println!(
        "{} MiB messages (streamed from a generator, sealed message in a tmpfs file)",
        mib()
    );
    // One pass for a large message; below 64 MiB a single pass is dominated by one-off
    // costs (a new file, the first hashing threads), so the best of several is shown.
    let passes = if size >= 64 << 20 { 1 } else { 5 };
    let recipients = [Recipient::Certificate(w.bob.clone())];
    let (mut seal_mibs, mut unseal_mibs) = (0f64, 0f64);
    let (mut seal_rss, mut unseal_rss) = (0f64, 0f64);
    for _ in 0..passes {
        reset_peak_rss();
        let start = Instant::now();
        let out = io::BufWriter::new(std::fs::File::create(file.path()).unwrap());
        seal(
            &w.signer,
            &recipients,
            None,
            Pattern { left: size },
            out,
            &SealOptions::default(),
        )
        .unwrap();
        seal_mibs = seal_mibs.max(size as f64 / start.elapsed().as_secs_f64() / m);
        seal_rss = seal_rss.max(peak_rss_mib());
        reset_peak_rss();
        let start = Instant::now();
        let r = unseal(
            std::fs::File::open(file.path()).unwrap(),
            io::sink(),
            &w.ring,
            &opts,
        )
        .unwrap();
        assert!(r.verdict.is_clean(), "{:?}", r.verdict);
        assert_eq!(r.content_len, size);
        unseal_mibs = unseal_mibs.max(size as f64 / start.elapsed().as_secs_f64() / m);
        unseal_rss = unseal_rss.max(peak_rss_mib());
    }
    if passes > 1 {
        println!("  (best of {passes} passes; peak RSS the highest)");
    }
    println!("  seal    {seal_mibs:7.0} MiB/s   ratio to serial limit  {:.2}   peak RSS {seal_rss:.1} MiB", seal_mibs * m / seal_limit);
    println!("  unseal  {unseal_mibs:7.0} MiB/s   ratio to serial limit  {:.2}   peak RSS {unseal_rss:.1} MiB", unseal_mibs * m / unseal_limit);
    let _ = io::stdout().flush();
}
