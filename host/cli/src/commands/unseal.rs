//! `etee unseal`.

use crate::{inputs, output::Pending, CliError};
use etee_formats::cms::{self, UnsealOptions, Unsealed};
use etee_formats::keys::KeyRing;
use etee_formats::trust::TrustAnchors;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The widest signing-time window the options accept: a hundred years, in seconds (far
/// beyond any use, far below arithmetic trouble).
const MAX_WINDOW_SECONDS: i64 = 100 * 366 * 86_400;

#[derive(clap::Args)]
// `--ocsp` is shared (inputs::RevocationArgs); what it covers is this command's own.
#[command(mut_arg("ocsp", |a| a.help(inputs::OCSP_HELP_UNSEAL)))]
pub struct Args {
    /// The receiver's eHealth keystore(s); every ETK key in them may open the message.
    #[arg(long, value_name = "P12", conflicts_with = "config")]
    keystore: Vec<PathBuf>,
    /// HSM configuration (TOML): every ETK key in the token may open the message, through
    /// the custody core (policy and audit chain).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// File holding the keystore password (else ETEE_KEYSTORE_PASSWORD). Repeat it, once
    /// per --keystore in the same order, for keystores with different passwords (a
    /// renewed keystore beside the old one); given once, it is every keystore's.
    #[arg(long, value_name = "FILE")]
    password_file: Vec<PathBuf>,
    /// KGSS key (hex) to open an unknown-recipient message (visible in `ps`: prefer --kek-file).
    #[arg(long, value_name = "HEX", conflicts_with = "kek_file")]
    kek: Option<String>,
    /// File holding the KGSS key in hex.
    #[arg(long, value_name = "FILE")]
    kek_file: Option<PathBuf>,
    /// Only accept messages signed with this certificate (repeatable).
    #[arg(long, value_name = "CERT")]
    expect_signer: Vec<PathBuf>,
    /// A KeyDepot (WEB_AUTHN) signer: its Base64 key id and a PEM public key or certificate.
    #[arg(long, value_name = "KEYID,FILE")]
    expect_key: Vec<String>,
    /// Trust anchors (certificate files) for the signers' chains.
    #[arg(long, value_name = "CERT")]
    trust: Vec<PathBuf>,
    /// Trust anchors for time-stamping authorities (repeatable): a signature timestamp on
    /// the outer signature holds only when its authority chains to one of them (else
    /// TIMESTAMPTOKEN_TRUST_FAILED, as the official library with no TSA trust store).
    #[arg(long, value_name = "CERT")]
    tsa_trust: Vec<PathBuf>,
    #[command(flatten)]
    revocation: inputs::RevocationArgs,
    /// Evaluate at this time (RFC 3339) instead of now, for reproducible verdicts.
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// How old the signing time may be, in seconds (official default 300; at most 100
    /// years).
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(i64).range(0..=MAX_WINDOW_SECONDS))]
    signing_time_expiration: i64,
    /// Clock skew allowed, in seconds (official default 300; at most 100 years).
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(i64).range(0..=MAX_WINDOW_SECONDS))]
    clock_skew: i64,
    /// Print the verdict as one JSON line on standard output.
    #[arg(long)]
    json: bool,
    /// Sealed message (default: standard input).
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Where the content goes (default: standard output; with --json, only to --out).
    #[arg(long = "out", value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let kek = inputs::kek_arg(args.kek.as_deref(), args.kek_file.as_deref())?;
    if args.keystore.is_empty() && args.config.is_none() && kek.is_none() {
        return Err(CliError::Usage(
            "give --keystore P12 or --config FILE (known recipient) or --kek/--kek-file (unknown recipient)".into(),
        ));
    }
    let mut ring = KeyRing::new();
    match args.password_file.len() {
        0 | 1 => {
            if !args.keystore.is_empty() {
                let password = inputs::password(args.password_file.first())?;
                for path in &args.keystore {
                    ring.extend(inputs::keystore(path, &password)?.decryption_keys());
                }
            }
        }
        n if n == args.keystore.len() => {
            for (path, file) in args.keystore.iter().zip(&args.password_file) {
                let password = inputs::password(Some(file))?;
                ring.extend(inputs::keystore(path, &password)?.decryption_keys());
            }
        }
        n => {
            return Err(CliError::Usage(format!(
                "{n} --password-file for {} --keystore: give one for every keystore, in the \
                 same order, or one for all",
                args.keystore.len()
            )))
        }
    }
    // Keeps the custody core (and its PKCS#11 sessions) open until the message is read.
    let _custody = match &args.config {
        Some(config) => {
            let keys = inputs::custody_keys(config)?;
            let decryption = keys.decryption_keys()?;
            if decryption.is_empty() {
                eprintln!(
                    "etee: note: the token of {} holds no ETK (decryption) key: only a KGSS \
                     key (--kek) can open a message here; import the institution's keystore \
                     (`etee keys import`)",
                    config.display()
                );
            }
            ring.extend(decryption);
            Some(keys)
        }
        None => None,
    };
    let at = inputs::evaluation_time(args.at.as_deref())?;
    let opts = UnsealOptions {
        anchors: inputs::anchors(&args.trust, &args.revocation, at)?,
        kek,
        expected_signers: inputs::expected_signers(&args.expect_signer, &args.expect_key)?,
        at: Some(at),
        signing_time_expiration: args.signing_time_expiration,
        clock_skew: args.clock_skew,
        tsa_anchors: TrustAnchors::new(inputs::certificates(&args.tsa_trust)?),
        ..Default::default()
    };
    let input = super::input(args.input.as_deref(), args.output.as_deref(), "unsealing")?;
    // With --json and no --out, content is not written anywhere (stdout carries the verdict).
    let mut pending = if args.json && args.output.is_none() {
        None
    } else {
        Some(Pending::new(args.output.as_deref())?)
    };
    let result = match pending.as_mut() {
        Some(p) => {
            let w = p.plain_writer();
            let r = cms::unseal(input, &mut *w, &ring, &opts)?;
            w.flush()?;
            r
        }
        None => cms::unseal(input, std::io::sink(), &ring, &opts)?,
    };
    let clean = result.verdict.is_clean();
    if clean {
        if let Some(p) = pending {
            p.commit()?;
        }
    }
    if args.json {
        outln!("{}", report(&result))?;
    } else {
        eprint!("{}", human(&result));
        if let (Some(_), Some(path)) = (result.verdict.fatal, args.input.as_deref()) {
            if let Some(note) = not_a_message_note(path) {
                eprintln!("{note}");
            }
        }
        if args.trust.is_empty() {
            if let Some(note) = no_trust_note(&result) {
                eprintln!("{note}");
            }
        }
        if args.tsa_trust.is_empty()
            && result
                .verdict
                .errors
                .contains(&etee_formats::verdict::Error::TIMESTAMPTOKEN_TRUST_FAILED)
        {
            eprintln!(
                "etee: note: no --tsa-trust given, so no signature timestamp can be trusted: \
                 give --tsa-trust CERT, the CA of the time-stamping authority"
            );
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The one-line JSON verdict (the appliance's API answers the same).
pub fn report(r: &Unsealed) -> serde_json::Value {
    etee_appliance::report::unseal_report(r)
}

/// For a message refused as a whole: what the `--in` file seems to be instead, when its
/// first bytes say (empty, text, a keystore, a certificate), since the verdict's code
/// alone (`OUTER_SIGNED_DATA_STRUCTURE_INCORRECT`) does not.
fn not_a_message_note(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .ok()?
        .take(512)
        .read_to_end(&mut head)
        .ok()?;
    let kind = inputs::seems_to_be(&head, &[inputs::SIGNED_DATA, inputs::CMS])?;
    Some(format!(
        "etee: note: {} is {kind}, not a sealed message",
        path.display()
    ))
}

/// Without `--trust` no certificate chain can be trusted: a hint when the verdict says so
/// (`seal` says the same of the ETKs it could not check).
fn no_trust_note(r: &Unsealed) -> Option<String> {
    let untrusted: Vec<&str> = r
        .verdict
        .errors
        .iter()
        .map(|e| e.name())
        .filter(|n| n.ends_with("CHAIN_NOT_TRUSTED"))
        .collect();
    (!untrusted.is_empty()).then(|| {
        format!(
            "etee: note: no --trust given, so no certificate chain can be trusted ({}): give \
             --trust CERT, the CA the sender's certificate must chain to",
            untrusted.join(", ")
        )
    })
}

fn human(r: &Unsealed) -> String {
    let mut s = String::new();
    match r.verdict.fatal {
        Some(f) => s.push_str(&format!("FATAL   {f}\n")),
        None if r.verdict.errors.is_empty() => {
            s.push_str(&format!("OK      {} bytes of content\n", r.content_len))
        }
        None => s.push_str("FAILED  content withheld\n"),
    }
    for e in &r.verdict.errors {
        s.push_str(&format!("error   {e}\n"));
    }
    for w in &r.verdict.warnings {
        s.push_str(&format!("warning {w}\n"));
    }
    if let Some(c) = r.sender.as_ref().and_then(|x| x.certificate.as_ref()) {
        s.push_str(&format!("sender  {}\n", c.subject_string()));
    }
    if let Some(t) = r.signing_time {
        s.push_str(&format!("signed  {}\n", inputs::rfc3339(t)));
    }
    if let Some(t) = r.timestamp {
        s.push_str(&format!(
            "stamped {} (trusted timestamp)\n",
            inputs::rfc3339(t)
        ));
    }
    s
}
