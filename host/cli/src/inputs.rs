//! Reading what commands need: keystores and their password, certificates, times, KEKs.

use crate::CliError;
use etee_formats::cert::Certificate;
use etee_formats::cms::ExpectedSigner;
use etee_formats::keystore::EhealthKeystore;
use etee_formats::ocsp::Responder;
use etee_formats::revocation::RevocationPolicy;
use etee_formats::trust::TrustAnchors;
use etee_services::revocation::CrlFileError;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The largest keystore password file read (its first line is the password).
const MAX_PASSWORD_FILE: u64 = 4096;

/// Environment variable holding the keystore password (never a command-line argument).
pub const PASSWORD_ENV: &str = "ETEE_KEYSTORE_PASSWORD";

/// The largest certificate, ETK, keystore, trust or revocation-list file read: above the
/// largest real CRLs, and a bound for `/dev/zero` or a huge file given by mistake.
pub const MAX_INPUT_FILE: u64 = 64 * 1024 * 1024;

/// Reads a whole input file (not a message: those stream), at most [`MAX_INPUT_FILE`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    read_file_at_most(
        path,
        MAX_INPUT_FILE,
        "a certificate, ETK, keystore or revocation list",
    )
}

/// Reads a whole file of at most `limit` bytes (a multiple of a MiB); a larger one is
/// refused as not being `expected`.
pub fn read_file_at_most(path: &Path, limit: u64, expected: &str) -> Result<Vec<u8>, CliError> {
    let failed = |source| CliError::File {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(failed)?;
    if !etee_formats::read_at_most(file, limit, &mut bytes).map_err(failed)? {
        return Err(CliError::Usage(format!(
            "{}: larger than {} MiB: not {expected}",
            path.display(),
            limit >> 20
        )));
    }
    Ok(bytes)
}

/// A small secret file (a password, a KGSS key in hex), `what` in messages: at most
/// [`MAX_PASSWORD_FILE`] bytes, so that `/dev/zero` or a log file given by mistake cannot
/// fill the memory, read into room for all of them made from the start, so that growing
/// leaves no copy of the secret behind; wiped when dropped. `hint` follows the message
/// of a file too large.
fn read_secret_file(path: &Path, what: &str, hint: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let failed = |source| CliError::File {
        path: format!("{what} {}", path.display()),
        source,
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_FILE as usize + 1));
    let file =
        std::fs::File::open(path).map_err(|e| {
            match etee_hsm::config::missing_secret_file(path, &e) {
                Some((shown, reason)) => {
                    CliError::Usage(format!("{what} {}: {reason}", shown.display()))
                }
                None => failed(e),
            }
        })?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_PASSWORD_FILE + 1),
        &mut bytes,
    )
    .map_err(failed)?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE {
        return Err(CliError::Usage(format!(
            "{what} {}: larger than {MAX_PASSWORD_FILE} bytes{hint}",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The keystore password: `--password-file` (first line), else `ETEE_KEYSTORE_PASSWORD`.
pub fn password(file: Option<&PathBuf>) -> Result<Zeroizing<String>, CliError> {
    if let Some(path) = file {
        let bytes = read_secret_file(
            path,
            "keystore password file",
            " (the password is its first line)",
        )?;
        if let Some(w) = etee_hsm::config::permission_warning_for("keystore password file", path) {
            etee_hsm::warn_operator(&w);
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            CliError::Usage(format!(
                "keystore password file {}: not UTF-8",
                path.display()
            ))
        })?;
        let first = Zeroizing::new(text.lines().next().unwrap_or("").to_string());
        if first.is_empty() {
            // Else the keystore would say "wrong password", which sends one looking in
            // the wrong place.
            return Err(CliError::Usage(format!(
                "keystore password file {}: the password file is empty (the password is its \
                 first line)",
                path.display()
            )));
        }
        return Ok(first);
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) => Ok(Zeroizing::new(p)),
        Err(_) => Err(CliError::Usage(format!(
            "no keystore password: use --password-file FILE or set {PASSWORD_ENV}"
        ))),
    }
}

pub fn keystore(path: &Path, password: &str) -> Result<EhealthKeystore, CliError> {
    let bytes = Zeroizing::new(read_file(path)?);
    EhealthKeystore::load(&bytes, password).map_err(|source| {
        // A PEM file (a certificate, a key...) given by mistake: say what it is rather
        // than where its bytes stopped parsing as PKCS#12.
        if let Some(kind) = seems_to_be(&bytes, &[KEYSTORE]) {
            return CliError::Usage(format!(
                "{}: not a PKCS#12 keystore (.p12) but {kind}",
                path.display()
            ));
        }
        if matches!(
            source,
            etee_formats::keystore::KeystoreError::WrongPasswordOrCorrupt
        ) && password != password.trim()
        {
            return CliError::Usage(format!(
                "{}: {source}; the password given begins or ends with whitespace (a space, \
                 a tab, a carriage return from a Windows line ending?): is it part of it?",
                path.display()
            ));
        }
        CliError::Keystore {
            path: path.display().to_string(),
            source,
        }
    })
}

/// A certificate file: DER, PEM or bare Base64.
pub fn certificate(path: &Path) -> Result<Certificate, CliError> {
    let bytes = read_file(path)?;
    // Bare Base64 is a form this reads: its own error says what is wrong with it.
    Certificate::from_file_bytes(&bytes).map_err(|e| {
        match seems_to_be(&bytes, &[CERTIFICATE, "CERTIFICATE", BASE64]) {
            Some(kind) => {
                CliError::Usage(format!("{}: not a certificate but {kind}", path.display()))
            }
            None => CliError::Usage(format!("{}: not a certificate: {e}", path.display())),
        }
    })
}

const KEYSTORE: &str = "a PKCS#12 keystore (.p12)";
const CERTIFICATE: &str = "a DER certificate (or revocation list)";
pub(crate) const SIGNED_DATA: &str = "a CMS SignedData (an ETK, or a sealed message)";
pub(crate) const CMS: &str = "a CMS structure";
const BASE64: &str = "Base64 text (decode it first, e.g. with `base64 -d`)";

/// What a file given in the wrong place seems to be, from its first bytes (pure): empty,
/// Base64 or other text, or a DER PKCS#12 keystore, CMS structure or certificate. `None`
/// when it says nothing (PEM files are named by [`pem_label`]). Only to word an error.
pub fn looks_like(bytes: &[u8]) -> Option<&'static str> {
    if bytes.is_empty() {
        return Some("an empty file");
    }
    if bytes.starts_with(b"-----BEGIN ") {
        return None;
    }
    let head = &bytes[..bytes.len().min(512)];
    if head
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b))
    {
        return Some(BASE64);
    }
    if head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return Some("a text file");
    }
    // A DER SEQUENCE: what its first element is tells the three apart.
    if bytes.first() != Some(&0x30) {
        return None;
    }
    let content = match *bytes.get(1)? {
        // Short definite lengths, and BER's indefinite one (0x80).
        n if n <= 0x80 => 2,
        n @ 0x81..=0x84 => 2 + usize::from(n - 0x80),
        _ => return None,
    };
    const SIGNED_DATA_OID: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    match bytes.get(content)? {
        0x02 => Some(KEYSTORE),
        0x06 if bytes[content..].starts_with(SIGNED_DATA_OID) => Some(SIGNED_DATA),
        0x06 => Some(CMS),
        0x30 => Some(CERTIFICATE),
        _ => None,
    }
}

/// `path` cannot be an ETK: an error saying what it seems to be instead, when its bytes
/// say (an ETK is a CMS SignedData).
pub fn not_an_etk(path: &Path, bytes: &[u8]) -> Option<CliError> {
    // Base64 is a form of ETK this reads: its own error says what is wrong.
    let kind = seems_to_be(bytes, &[SIGNED_DATA, BASE64])?;
    Some(CliError::Usage(format!(
        "{}: not an ETK but {kind}",
        path.display()
    )))
}

/// What `bytes` seem to be, when that is none of `expected` (kinds of [`looks_like`] or
/// PEM labels): a PEM file named by its first label, else [`looks_like`]'s kind; `None`
/// when the bytes say nothing or say what was expected (pure). Only to word an error.
pub fn seems_to_be(bytes: &[u8], expected: &[&str]) -> Option<String> {
    match pem_label(bytes) {
        Some(label) => {
            (!expected.contains(&label.as_str())).then(|| format!("a PEM file holding a {label}"))
        }
        None => looks_like(bytes)
            .filter(|k| !expected.contains(k))
            .map(str::to_string),
    }
}

/// The label of the first PEM block in `bytes` (`CERTIFICATE REQUEST`, `PRIVATE KEY`...),
/// if they hold one: to tell an operator which file they gave.
fn pem_label(bytes: &[u8]) -> Option<String> {
    pem_labels(bytes).into_iter().next()
}

/// The labels of the PEM blocks in `bytes`, in order (none for a file that is not PEM).
pub(crate) fn pem_labels(bytes: &[u8]) -> Vec<String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut labels = Vec::new();
    let mut rest = bytes;
    while let Some(start) = rest.windows(BEGIN.len()).position(|w| w == BEGIN) {
        rest = &rest[start + BEGIN.len()..];
        let Some(end) = rest.windows(5).position(|w| w == b"-----") else {
            break;
        };
        let label = std::str::from_utf8(&rest[..end]).ok().filter(|l| {
            !l.is_empty() && l.len() <= 64 && l.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        });
        labels.extend(label.map(str::to_string));
        rest = &rest[end + 5..];
    }
    labels
}

pub fn certificates(paths: &[PathBuf]) -> Result<Vec<Certificate>, CliError> {
    paths.iter().map(|p| certificate(p)).collect()
}

/// Revocation lists and how to use them: flattened into the commands that check chains.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RevocationArgs {
    /// A CA's certificate revocation list (DER or PEM, repeatable): a signer or ETK whose
    /// certificate it lists is refused (…_CERTIFICATE_REVOKED); `seal` refuses to sign
    /// with a sender's certificate it lists.
    #[arg(long = "crl", value_name = "FILE")]
    pub crl: Vec<PathBuf>,
    /// none, optional or mandatory (every certificate's status must be given by a current
    /// list of its CA or an OCSP answer, else …_STATUS_UNKNOWN). Default: optional with
    /// --crl or --ocsp, else none.
    #[arg(long, value_name = "POLICY")]
    pub revocation: Option<RevocationPolicy>,
    /// Ask OCSP for a certificate's status when no list gives it: `auto` (the responder
    /// each certificate names) or an http:// address. Each command says which
    /// certificates (`OCSP_HELP_*`).
    #[arg(long, value_name = "RESPONDER")]
    pub ocsp: Option<Responder>,
}

/// `--ocsp` of `seal`: the recipients' ETKs are checked, and its own answer travels.
pub const OCSP_HELP_SEAL: &str = "Ask OCSP for the status of the recipients' ETK \
    certificates when no list gives it, and for the sender's own certificate, whose answer \
    is embedded in the message (revocationValues), as the official library does (nothing \
    is sealed unless the responder says that certificate is good): `auto` (the responder \
    each certificate names) or an http:// address";

/// `--ocsp` of `unseal`: the signers' certificates, unless the message vouches for them.
pub const OCSP_HELP_UNSEAL: &str = "Ask OCSP for the status of the message's signer \
    certificates when neither the answers embedded in the message nor a list gives it: \
    `auto` (the responder each certificate names) or an http:// address";

/// `--ocsp` of `etk verify`: the ETK's certificates.
pub const OCSP_HELP_ETK: &str = "Ask OCSP for the status of the certificates on the path of \
    the ETK's authentication certificate when no list gives it: `auto` (the responder each \
    certificate names) or an http:// address";

/// The trust anchors of `--trust`, with the revocation lists of `--crl`.
/// `at` is the evaluation time, for the note on stale lists.
pub fn anchors(
    trust: &[PathBuf],
    revocation: &RevocationArgs,
    at: i64,
) -> Result<TrustAnchors, CliError> {
    let config = etee_services::revocation::RevocationConfig {
        crl: revocation.crl.clone(),
        policy: revocation.revocation,
        ocsp: revocation.ocsp.clone(),
        ..Default::default()
    };
    // Each file read once, its lists checked against the anchors; errors name the file.
    let anchors = config
        .load_noting(TrustAnchors::new(certificates(trust)?), |line| {
            eprintln!("etee: note: {line}")
        })
        .map_err(|e| match e {
            CrlFileError::Policy(e) => CliError::Usage(format!("--crl/--ocsp/--revocation: {e}")),
            e => CliError::Usage(format!("--crl: {e}")),
        })?;
    let revocation = anchors.revocation();
    for issuer in revocation.stale_at(at) {
        eprintln!(
            "etee: note: the revocation list of {issuer} is past its nextUpdate: it gives no \
             status now (only its revocations count); get a current one"
        );
    }
    for issuer in revocation.incomplete() {
        eprintln!(
            "etee: note: the revocation list of {issuer} is partial (a delta list, one limited \
             to some certificates or reasons, or one with a critical extension etee does not \
             know): its revocations count, but it gives no certificate's status"
        );
    }
    Ok(anchors)
}

/// `--at` as unix seconds; now when absent.
pub fn evaluation_time(at: Option<&str>) -> Result<i64, CliError> {
    match at {
        None => Ok(etee_formats::unix_now()),
        Some(s) => time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(|e| CliError::Usage(format!("--at {s:?}: not an RFC 3339 time ({e})"))),
    }
}

/// A KEK given as hex (16, 24 or 32 bytes).
pub fn kek(hex_text: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let key = Zeroizing::new(
        hex::decode(hex_text.trim()).map_err(|_| CliError::Usage("--kek must be hex".into()))?,
    );
    if ![16, 24, 32].contains(&key.len()) {
        return Err(CliError::Usage(format!(
            "--kek must be 16, 24 or 32 bytes, not {}",
            key.len()
        )));
    }
    Ok(key)
}

/// The KEK from `--kek HEX` or `--kek-file FILE` (hex inside), if either is given.
pub fn kek_arg(
    hex_text: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Zeroizing<Vec<u8>>>, CliError> {
    match (hex_text, file) {
        (Some(h), _) => kek(h).map(Some),
        (None, Some(path)) => {
            // A KGSS key opens every message sealed for it: as secret as a password.
            if let Some(w) = etee_hsm::config::permission_warning_for("KEK file", path) {
                etee_hsm::warn_operator(&w);
            }
            let bytes = read_secret_file(path, "KEK file", "")?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| CliError::Usage(format!("{}: not hex text", path.display())))?;
            kek(text).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Expected signers: certificates, and KeyDepot keys given as `KEYID,FILE` (Base64 key id,
/// PEM public key or certificate).
pub fn expected_signers(
    certs: &[PathBuf],
    keys: &[String],
) -> Result<Vec<ExpectedSigner>, CliError> {
    use base64::Engine;
    let mut out: Vec<ExpectedSigner> = certificates(certs)?
        .into_iter()
        .map(ExpectedSigner::Certificate)
        .collect();
    for spec in keys {
        let (id, file) = spec.split_once(',').ok_or_else(|| {
            CliError::Usage(format!("--expect-key {spec:?}: expected KEYID,FILE"))
        })?;
        let ski = base64::engine::general_purpose::STANDARD
            .decode(id)
            .map_err(|_| CliError::Usage(format!("--expect-key: key id {id:?} is not Base64")))?;
        let path = Path::new(file);
        let bytes = read_file(path)?;
        let public_key = openssl::pkey::PKey::public_key_from_pem(&bytes)
            .or_else(|_| openssl::x509::X509::from_pem(&bytes).and_then(|x| x.public_key()))
            .map_err(|_| {
                CliError::Usage(format!(
                    "{}: not a PEM public key or certificate",
                    path.display()
                ))
            })?;
        out.push(ExpectedSigner::KeyId { ski, public_key });
    }
    Ok(out)
}

pub use etee_formats::rfc3339;

/// The token's keys behind the custody core (in this process, or in `etee custody serve`
/// when the configuration says `[custody] mode = "process"`), from an HSM configuration.
pub fn custody_keys(config: &Path) -> Result<etee_hsm::CustodyHandle, CliError> {
    let config = etee_hsm::Config::load(config)?;
    Ok(etee_hsm::CustodyHandle::open(&config)?)
}

/// What to do about an ETK's failed checks (`names`), one hint per kind of problem (pure):
/// a chain that reaches no anchor (`anchors` says where the anchors come from, e.g.
/// `--trust names` or `client_ca (the platform's configuration) names`), a revocation,
/// dates, anything else.
pub fn etk_hints(names: &[&str], anchors: &str) -> Vec<String> {
    let chain = names
        .iter()
        .any(|n| n.ends_with("STATUS_UNKNOWN") || n.contains("CHAIN"));
    let revoked = names.iter().any(|n| n.ends_with("REVOKED"));
    let dates = names
        .iter()
        .any(|n| n.ends_with("EXPIRED") || n.ends_with("NOT_YET_VALID"));
    let other = names.iter().any(|n| {
        !(n.ends_with("STATUS_UNKNOWN")
            || n.ends_with("REVOKED")
            || n.contains("CHAIN")
            || n.ends_with("EXPIRED")
            || n.ends_with("NOT_YET_VALID"))
    });
    let mut hints = Vec::new();
    if chain {
        hints.push(format!(
            "its certificate does not chain to a trusted CA (or, with --revocation \
             mandatory, no current --crl gives its status): check that {anchors} the CA the \
             ETK's authentication certificate must chain to (not the ETK registration \
             authority's certificate)"
        ));
    }
    if revoked {
        hints.push(
            "its CA has revoked the holder's certificate (--crl): do not use this key; ask \
             the holder for its current ETK"
                .into(),
        );
    }
    if dates {
        hints.push(
            "it is expired or not yet valid: get the holder's current ETK (e.g. from \
             ETKDepot), and check this machine's clock"
                .into(),
        );
    }
    if other {
        hints.push("it is malformed, or its certificates do not belong together".into());
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_wrong_place_is_named_by_its_first_bytes() {
        use etee_testpki::{InstitutionSpec, TestPki};
        let pki = TestPki::generate("looks-like").unwrap();
        let alice = pki
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Alice"))
            .unwrap();
        let cert = alice.auth.cert.to_der().unwrap();
        assert_eq!(looks_like(&cert), Some(CERTIFICATE));
        assert_eq!(looks_like(&alice.etk), Some(SIGNED_DATA));
        let p12 = openssl::pkcs12::Pkcs12::builder()
            .name("x")
            .pkey(&alice.auth.key)
            .cert(&alice.auth.cert)
            .build2("pw")
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(looks_like(&p12), Some(KEYSTORE));
        assert_eq!(looks_like(b""), Some("an empty file"));
        assert_eq!(looks_like(b"MIIBIjANBgkqhkiG9w0B\nAQEFAAOC"), Some(BASE64));
        assert_eq!(looks_like(b"hello, world\n"), Some("a text file"));
        assert_eq!(looks_like(b"-----BEGIN CERTIFICATE-----\n"), None);
        assert_eq!(looks_like(&[0x30, 0x85, 0, 0]), None);
        assert_eq!(looks_like(&[0x30, 0x81]), None);
        assert_eq!(looks_like(&[0x04, 0x00, 0xff]), None);
        // What was expected, PEM label or kind, says nothing.
        assert_eq!(
            seems_to_be(b"-----BEGIN CERTIFICATE-----\n", &["CERTIFICATE"]),
            None
        );
        assert_eq!(seems_to_be(&p12, &[KEYSTORE]), None);
        assert_eq!(seems_to_be(&p12, &[CERTIFICATE]).as_deref(), Some(KEYSTORE));
        // An ETK's own failures are left to its parser; anything else is named.
        let path = Path::new("x");
        assert!(not_an_etk(path, &alice.etk).is_none());
        assert!(not_an_etk(path, b"TUlJ").is_none());
        let said = not_an_etk(path, &p12).unwrap().to_string();
        assert!(
            said.contains("x: not an ETK but a PKCS#12 keystore"),
            "{said}"
        );
        let said = not_an_etk(path, b"-----BEGIN CERTIFICATE-----\n")
            .unwrap()
            .to_string();
        assert!(said.contains("a PEM file holding a CERTIFICATE"), "{said}");
    }

    #[test]
    fn pem_labels_name_the_file_given() {
        let csr =
            b"junk\n-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(pem_label(csr).as_deref(), Some("CERTIFICATE REQUEST"));
        assert_eq!(
            pem_label(b"-----BEGIN PRIVATE KEY-----\n").as_deref(),
            Some("PRIVATE KEY")
        );
        assert_eq!(
            pem_labels(
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                -----BEGIN RSA PRIVATE KEY-----\n"
            ),
            ["CERTIFICATE", "RSA PRIVATE KEY"]
        );
        for not_pem in [
            &b""[..],
            b"\x30\x82\x01",
            b"-----BEGIN ",
            b"-----BEGIN -----",
        ] {
            assert_eq!(pem_label(not_pem), None, "{not_pem:?}");
        }
    }
}
