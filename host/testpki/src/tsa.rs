//! Time-stamping authorities and RFC 3161 time-stamp tokens for tests.
//!
//! The tokens come from the `openssl` command (`openssl ts -reply`, or `openssl cms -sign`
//! around a TSTInfo for tokens a real authority would not make): an implementation
//! independent of etee's reader. Tests using them skip when the command is missing.

use crate::{Error, Issued, KeyUsageSpec, TestPki};
use openssl::x509::extension::ExtendedKeyUsage;
use openssl::x509::X509Ref;
use std::path::Path;
use std::process::Command;

/// What a test authority's certificate says in its extendedKeyUsage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsaUsage {
    /// Critical, id-kp-timeStamping alone: what RFC 3161 §2.3 requires.
    TimeStamping,
    /// id-kp-timeStamping, not marked critical.
    NotCritical,
    /// id-kp-timeStamping beside id-kp-clientAuth.
    WithClientAuth,
    /// No extendedKeyUsage at all.
    Absent,
}

/// Which ESS signing-certificate attribute `openssl ts` puts in a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EssVersion {
    /// signingCertificate (RFC 2634): a SHA-1 hash of the authority's certificate.
    V1,
    /// signingCertificateV2 (RFC 5035), with a SHA-256 hash.
    V2,
}

impl TestPki {
    /// A time-stamping authority of this CA, valid from a day back to a year ahead. One
    /// RSA-2048 key.
    pub fn timestamp_authority(&self, usage: TsaUsage) -> Result<Issued, Error> {
        let mut eku = ExtendedKeyUsage::new();
        match usage {
            TsaUsage::TimeStamping => {
                eku.critical().time_stamping();
            }
            TsaUsage::NotCritical => {
                eku.time_stamping();
            }
            TsaUsage::WithClientAuth => {
                eku.critical().time_stamping().client_auth();
            }
            TsaUsage::Absent => {}
        }
        let eku = match usage {
            TsaUsage::Absent => None,
            _ => Some(eku.build()?),
        };
        self.delegated_signer(
            "etee Test Time-Stamping Authority",
            KeyUsageSpec {
                critical: true,
                digital_signature: true,
                non_repudiation: true,
                ..KeyUsageSpec::default()
            },
            eku,
        )
    }
}

/// A time-stamp token (a CMS ContentInfo, DER) from `openssl ts -reply` by `tsa` over the
/// SHA-256 `imprint`, its time the current time, carrying the authority's certificate and
/// `chain`. `openssl ts` refuses an authority whose certificate is not a proper
/// time-stamping one ([`TsaUsage::TimeStamping`]).
pub fn openssl_ts_token(
    tsa: &Issued,
    chain: &[&X509Ref],
    imprint: &[u8; 32],
    ess: EssVersion,
) -> Result<Vec<u8>, Error> {
    openssl_ts(tsa, chain, Query::Imprint(imprint), ess, true)
}

/// [`openssl_ts_token`]'s whole answer: the TimeStampResp (status granted, then the token)
/// an authority sends.
pub fn openssl_ts_reply(
    tsa: &Issued,
    chain: &[&X509Ref],
    imprint: &[u8; 32],
    ess: EssVersion,
) -> Result<Vec<u8>, Error> {
    openssl_ts(tsa, chain, Query::Imprint(imprint), ess, false)
}

/// The TimeStampResp `openssl ts -reply` makes for a given TimeStampReq (DER), as an
/// authority answering over HTTP would: what `openssl` makes of a request of ours
/// (its nonce repeated, certReq obeyed), and the answer to bring back.
pub fn openssl_ts_reply_to_query(
    tsa: &Issued,
    chain: &[&X509Ref],
    query: &[u8],
    ess: EssVersion,
) -> Result<Vec<u8>, Error> {
    openssl_ts(tsa, chain, Query::Given(query), ess, false)
}

/// What a token is asked for: a request `openssl ts -query` makes for an imprint (no
/// nonce), or one given.
enum Query<'a> {
    Imprint(&'a [u8; 32]),
    Given(&'a [u8]),
}

fn openssl_ts(
    tsa: &Issued,
    chain: &[&X509Ref],
    query: Query<'_>,
    ess: EssVersion,
    token_only: bool,
) -> Result<Vec<u8>, Error> {
    let dir = scratch_dir()?;
    let d = dir.path();
    write_signer(d, tsa)?;
    let mut pem = Vec::new();
    for c in chain {
        pem.extend(c.to_pem()?);
    }
    write(d, "chain.pem", &pem)?;
    write(d, "serial", b"01\n")?;
    let ess_alg = match ess {
        EssVersion::V1 => "sha1",
        EssVersion::V2 => "sha256",
    };
    let config = format!(
        "[ tsa ]\ndefault_tsa = etee_test\n[ etee_test ]\nserial = {}\n\
         signer_digest = sha256\ndefault_policy = 1.3.6.1.4.1.99999.1\n\
         digests = sha256\naccuracy = secs:1\nordering = no\ntsa_name = no\n\
         ess_cert_id_alg = {ess_alg}\ness_cert_id_chain = no\n",
        d.join("serial").display()
    );
    write(d, "ts.cnf", config.as_bytes())?;
    match query {
        Query::Imprint(imprint) => {
            let hex: String = imprint.iter().map(|b| format!("{b:02x}")).collect();
            run(Command::new("openssl")
                .args(["ts", "-query", "-sha256", "-cert", "-no_nonce", "-digest"])
                .arg(&hex)
                .arg("-out")
                .arg(d.join("query.tsq")))?;
        }
        Query::Given(query) => write(d, "query.tsq", query)?,
    }
    run(Command::new("openssl")
        .args(["ts", "-reply"])
        .args(token_only.then_some("-token_out"))
        .arg("-config")
        .arg(d.join("ts.cnf"))
        .arg("-queryfile")
        .arg(d.join("query.tsq"))
        .args(signer_args(d))
        .arg("-chain")
        .arg(d.join("chain.pem")))?;
    std::fs::read(d.join("token.der")).map_err(io)
}

/// A CMS SignedData (DER) by `signer` over `tst_info` with eContentType id-ct-TSTInfo,
/// made by `openssl cms -sign`: with `ess`, it carries the ESS signing-certificate
/// attribute (`-cades`: signingCertificateV2, SHA-256), as a token must; without, it is a
/// token no conforming authority makes. Signed by any certificate, at any `genTime` the
/// TSTInfo says.
pub fn openssl_cms_token(signer: &Issued, tst_info: &[u8], ess: bool) -> Result<Vec<u8>, Error> {
    let dir = scratch_dir()?;
    let d = dir.path();
    write_signer(d, signer)?;
    write(d, "tst.der", tst_info)?;
    run(Command::new("openssl")
        .args([
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-nosmimecap",
            "-md",
            "sha256",
            "-outform",
            "DER",
            "-econtent_type",
            "1.2.840.113549.1.9.16.1.4",
        ])
        .args(ess.then_some("-cades"))
        .arg("-in")
        .arg(d.join("tst.der"))
        .args(signer_args(d)))?;
    std::fs::read(d.join("token.der")).map_err(io)
}

/// The signer's certificate and key as `signer.pem` and `signer.key` in `dir`.
fn write_signer(dir: &Path, signer: &Issued) -> Result<(), Error> {
    write(dir, "signer.pem", &signer.cert.to_pem()?)?;
    write(dir, "signer.key", &signer.key.private_key_to_pem_pkcs8()?)
}

/// `-signer`, `-inkey` (the files of [`write_signer`]) and `-out token.der`: the arguments
/// of both `openssl ts -reply` and `openssl cms -sign`.
fn signer_args(dir: &Path) -> [std::ffi::OsString; 6] {
    [
        "-signer".into(),
        dir.join("signer.pem").into(),
        "-inkey".into(),
        dir.join("signer.key").into(),
        "-out".into(),
        dir.join("token.der").into(),
    ]
}

/// A private directory removed when dropped.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir() -> Result<ScratchDir, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "etee-testpki-tsa-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir(&path).map_err(io)?;
    Ok(ScratchDir(path))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(dir.join(name), bytes).map_err(io)
}

fn run(cmd: &mut Command) -> Result<(), Error> {
    let out = cmd.output().map_err(io)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Command(e.to_string())
}
