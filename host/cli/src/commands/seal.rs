//! `etee seal`.
//!
//! Exit codes: 0 sealed; 1 a recipient's ETK fails the official checks, the sender's own
//! certificate is outside its validity period or revoked by the lists (`--crl`), or (with
//! `--ocsp`) the OCSP responder does not say it is good (refused, nothing written); 2
//! usage, I/O (also no OCSP answer), key store or HSM problems.

use crate::{inputs, output, CliError};
use etee_formats::cms::{self, Kek, Recipient, SealOptions};
use etee_formats::etk::Etk;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
// `--ocsp` is shared (inputs::RevocationArgs); what it covers is this command's own.
#[command(mut_arg("ocsp", |a| a.help(inputs::OCSP_HELP_SEAL)))]
pub struct Args {
    /// The sender's eHealth keystore (.p12); its `authentication` key signs.
    #[arg(
        long,
        value_name = "P12",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    keystore: Option<PathBuf>,
    /// HSM configuration (TOML): the token's `authentication` key signs, through the
    /// custody core (policy and audit chain).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// File holding the keystore password (else ETEE_KEYSTORE_PASSWORD).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// A recipient's ETK (repeat for several recipients).
    #[arg(long = "to", value_name = "ETK")]
    to: Vec<PathBuf>,
    /// KGSS key (hex) for unknown recipients; needs --kek-id (visible in `ps`: prefer --kek-file).
    #[arg(long, value_name = "HEX", conflicts_with = "kek_file")]
    kek: Option<String>,
    /// File holding the KGSS key in hex.
    #[arg(long, value_name = "FILE")]
    kek_file: Option<PathBuf>,
    /// KGSS key identifier (Base64), written in the KEKRecipientInfo.
    #[arg(long, value_name = "BASE64")]
    kek_id: Option<String>,
    /// Trust anchors for checking the recipients' ETKs before sealing.
    #[arg(long, value_name = "CERT")]
    trust: Vec<PathBuf>,
    #[command(flatten)]
    revocation: inputs::RevocationArgs,
    /// Seal even for ETKs that fail the official checks (without it such an ETK is
    /// refused, exit 1).
    #[arg(long)]
    skip_etk_check: bool,
    /// Plaintext (default: standard input).
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Sealed message (default: standard output).
    #[arg(long = "out", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Once sealed, print what was done as one JSON line on standard output
    /// (`{"out", "bytes", "recipients", "kek_id", "warnings"}`); needs --out.
    #[arg(long, requires = "output")]
    json: bool,
}

/// The sender's own certificate path (its issuers from the keystore's chain and the trust
/// anchors): refused when the lists (`--crl`) revoke it, since every receiver holding them
/// would; with an OCSP responder, its answers, to embed (the official sealer refuses to
/// seal when they do not say good).
fn own_certificate_values(
    signer: &etee_formats::keys::SigningKey,
    anchors: &etee_formats::trust::TrustAnchors,
    now: i64,
) -> Result<Option<etee_formats::ocsp::RevocationValues>, CliError> {
    anchors
        .revocation()
        .sealing_values(&signer.signer, anchors.certs(), now)
        .map_err(|e| match e.kind() {
            etee_formats::ocsp::NotVouched::NotGood => {
                CliError::Refused(format!("not sealed: {e}"))
            }
            _ => CliError::Usage(format!("--ocsp: not sealed: {e}")),
        })
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let kek_key = inputs::kek_arg(args.kek.as_deref(), args.kek_file.as_deref())?;
    if args.to.is_empty() && kek_key.is_none() {
        return Err(CliError::Usage(
            "give at least one recipient: --to ETK and/or --kek HEX (or --kek-file) with --kek-id BASE64".into(),
        ));
    }
    if kek_key.is_some() != args.kek_id.is_some() {
        return Err(CliError::Usage(
            "--kek/--kek-file and --kek-id go together".into(),
        ));
    }
    // Said on standard error as they come, and repeated in the JSON line.
    let mut warnings = Vec::new();
    let mut warn = |text: String| {
        eprintln!("etee: warning: {text}");
        warnings.push(text);
    };
    if let Some(k) = kek_key.as_ref().filter(|k| k.len() != 16) {
        // Allowed on purpose (docs/deviations.md #20), but rarely what an ETEE sender means.
        warn(format!(
            "the KEK is {} bytes (AES-{}): the official Java library, and `etee unseal`, \
             open only 16-byte (AES-128) KEKs, as KGSS issues them, and withhold the content \
             with DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED (the .NET library \
             accepts it); see docs/deviations.md, row 20",
            k.len(),
            k.len() * 8
        ));
    }
    let signer = match (&args.keystore, &args.config) {
        (Some(path), _) => {
            let password = inputs::password(args.password_file.as_ref())?;
            let store = inputs::keystore(path, &password)?;
            store.authentication().ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: no `authentication` key in this keystore",
                    path.display()
                ))
            })?
        }
        (None, Some(config)) => inputs::custody_keys(config)?.signing_key()?,
        (None, None) => {
            return Err(CliError::Usage(
                "give --keystore P12 or --config FILE".into(),
            ))
        }
    };
    let now = inputs::evaluation_time(None)?;
    let anchors = inputs::anchors(&args.trust, &args.revocation, now)?;
    let mut recipients = Vec::new();
    for path in &args.to {
        let bytes = inputs::read_file(path)?;
        let etk = Etk::parse(&bytes).map_err(|source| {
            inputs::not_an_etk(path, &bytes).unwrap_or_else(|| CliError::Etk {
                path: path.display().to_string(),
                source,
            })
        })?;
        if !args.skip_etk_check {
            let mut errors = etk.validate(&anchors, now);
            if anchors.is_empty() {
                // Without anchors the chain cannot be judged; every other check still applies.
                eprintln!(
                    "etee: note: no --trust given, the chain of ETK {} was not checked",
                    path.display()
                );
                errors.retain(|e| {
                    !e.name().ends_with("STATUS_UNKNOWN") && !e.name().contains("CHAIN")
                });
            }
            if !errors.is_empty() {
                let names: Vec<&str> = errors.iter().map(|e| e.name()).collect();
                return Err(CliError::Refused(etk_refusal(
                    &path.display().to_string(),
                    &names,
                )));
            }
        }
        recipients.push(Recipient::Certificate(etk.encryption_cert().clone()));
    }
    let kek = match (&kek_key, &args.kek_id) {
        (Some(k), Some(id)) => {
            use base64::Engine;
            let id = base64::engine::general_purpose::STANDARD
                .decode(id.trim())
                .map_err(|_| CliError::Usage("--kek-id must be Base64".into()))?;
            Some(Kek::new(k, &id)?)
        }
        _ => None,
    };
    let opts = SealOptions {
        revocation_values: own_certificate_values(&signer, &anchors, now)?,
        ..Default::default()
    };
    // Refused above once it has ended; before that, a reminder from 30 days out.
    if let etee_formats::keys::SignerRef::Certificate { cert, .. } = &signer.signer {
        use etee_services::lifetime::{OwnCertificate, Role};
        if let Some(warning) = OwnCertificate::of(Role::Authentication, cert).warning(now) {
            warn(warning);
        }
    }
    let input = super::input(args.input.as_deref(), args.output.as_deref(), "sealing")?;
    let mut bytes = 0u64;
    output::write_sealed(args.output.as_deref(), |w| {
        let mut counted = Counted { inner: w, bytes: 0 };
        cms::seal(
            &signer,
            &recipients,
            kek.as_ref(),
            input,
            &mut counted,
            &opts,
        )?;
        bytes = counted.bytes;
        Ok(())
    })?;
    if args.json {
        let names: Vec<String> = recipients
            .iter()
            .filter_map(|r| match r {
                Recipient::Certificate(c) => Some(c.subject_string()),
                _ => None,
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "out": args.output.as_deref().map(|p| p.display().to_string()),
                "bytes": bytes,
                "recipients": names,
                "kek_id": args.kek_id.as_deref().map(str::trim),
                "warnings": warnings,
            })
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A writer counting what passes through it (the sealed message's size, for `--json`).
struct Counted<'a> {
    inner: &'a mut dyn std::io::Write,
    bytes: u64,
}

impl std::io::Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Why a recipient's ETK is refused, with what to do about it: the failed checks, a hint
/// per kind of problem, that a failing ETK may be a substituted key, and last the
/// deliberate override.
fn etk_refusal(path: &str, names: &[&str]) -> String {
    let mut text = format!("ETK {path} fails the official checks: {}", names.join(", "));
    for hint in inputs::etk_hints(names, "--trust names") {
        text.push_str("\n  - ");
        text.push_str(&hint);
    }
    text.push_str(
        "\n  - an ETK that fails its checks may be a substituted key (someone else's, under \
         the recipient's name): do not seal for it before knowing why it fails\n  \
         (--skip-etk-check seals anyway, as a deliberate override)",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::etk_refusal;

    #[test]
    fn the_refusal_fits_the_problem_and_ends_with_the_override() {
        let chain = etk_refusal("bob.etk", &["ETK_AUTHENTICATION_CERT_STATUS_UNKNOWN"]);
        assert!(chain.contains("--trust"), "{chain}");
        assert!(chain.contains("substituted"), "{chain}");
        assert!(!chain.contains("expired"), "{chain}");
        assert!(
            chain.trim_end().ends_with("deliberate override)"),
            "{chain}"
        );
        assert!(
            chain.find("--trust").unwrap() < chain.find("--skip-etk-check").unwrap(),
            "{chain}"
        );

        let expired = etk_refusal("bob.etk", &["ETK_ENCRYPTION_CERT_EXPIRED"]);
        assert!(expired.contains("current ETK"), "{expired}");
        assert!(!expired.contains("--trust"), "{expired}");
        assert!(expired.contains("--skip-etk-check"), "{expired}");

        let revoked = etk_refusal("bob.etk", &["ETK_AUTHENTICATION_CERT_REVOKED"]);
        assert!(revoked.contains("revoked"), "{revoked}");
        assert!(!revoked.contains("--trust anchor"), "{revoked}");
        assert!(!revoked.contains("malformed"), "{revoked}");

        let bad = etk_refusal("bob.etk", &["ETK_CERTS_DO_NOT_MATCH"]);
        assert!(bad.contains("malformed"), "{bad}");
        assert!(
            !bad.contains("--trust") && !bad.contains("current ETK"),
            "{bad}"
        );
    }
}
