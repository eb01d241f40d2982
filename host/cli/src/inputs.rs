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
    let failed = |source| CliError::File {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(failed)?;
    if !etee_formats::read_at_most(file, MAX_INPUT_FILE, &mut bytes).map_err(failed)? {
        return Err(CliError::Usage(format!(
            "{}: larger than {} MiB: not a certificate, ETK, keystore or revocation list",
            path.display(),
            MAX_INPUT_FILE >> 20
        )));
    }
    Ok(bytes)
}

/// The keystore password: `--password-file` (first line), else `ETEE_KEYSTORE_PASSWORD`.
pub fn password(file: Option<&PathBuf>) -> Result<Zeroizing<String>, CliError> {
    if let Some(path) = file {
        let failed = |source| CliError::File {
            path: format!("keystore password file {}", path.display()),
            source,
        };
        // Bounded, as PIN files are: `/dev/zero` or a log file given by mistake must not
        // fill the memory. Room for the largest accepted file from the start, so that
        // growing leaves no copy of the password behind.
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_FILE as usize + 1));
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(failed)?,
                MAX_PASSWORD_FILE + 1,
            ),
            &mut bytes,
        )
        .map_err(failed)?;
        if bytes.len() as u64 > MAX_PASSWORD_FILE {
            return Err(CliError::Usage(format!(
                "keystore password file {}: larger than {MAX_PASSWORD_FILE} bytes (the password \
                 is its first line)",
                path.display()
            )));
        }
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
        if let Some(label) = pem_label(&bytes) {
            return CliError::Usage(format!(
                "{}: not a PKCS#12 keystore (.p12) but a PEM file holding a {label}",
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
    Certificate::from_file_bytes(&bytes).map_err(|e| match pem_label(&bytes) {
        Some(label) if label != "CERTIFICATE" => CliError::Usage(format!(
            "{}: not a certificate but a PEM file holding a {label}",
            path.display()
        )),
        _ => CliError::Usage(format!("{}: not a certificate: {e}", path.display())),
    })
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
            let bytes = Zeroizing::new(read_file(path)?);
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

#[cfg(test)]
mod tests {
    use super::{pem_label, pem_labels};

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
