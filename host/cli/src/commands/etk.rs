//! `etee etk verify`.

use crate::{inputs, CliError};
use etee_formats::etk::Etk;
use etee_formats::identity;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check an ETK with the official rules and show whose it is.
    #[command(mut_arg("ocsp", |a| a.help(inputs::OCSP_HELP_ETK)))]
    Verify {
        /// The ETK file (BER or Base64).
        etk: PathBuf,
        /// Trust anchors for the authentication certificate's chain.
        #[arg(long, value_name = "CERT")]
        trust: Vec<PathBuf>,
        #[command(flatten)]
        revocation: inputs::RevocationArgs,
        /// Evaluate at this time (RFC 3339) instead of now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print the result as one JSON line.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    let Command::Verify {
        etk: path,
        trust,
        revocation,
        at,
        json,
    } = command;
    // An ETK that does not even parse fails the check (exit 1), like one that fails a rule.
    let bytes = inputs::read_file(&path)?;
    let etk = match Etk::parse(&bytes) {
        Ok(etk) => etk,
        Err(e) => {
            // What the file seems to be instead, if its bytes say.
            let e = match inputs::not_an_etk(&path, &bytes) {
                Some(CliError::Usage(what)) => format!("{what} ({e})"),
                _ => e.to_string(),
            };
            if json {
                // `errors` is null, not empty: no check could run, and a script testing
                // for an empty list must not take this for a valid ETK.
                outln!(
                    "{}",
                    json!({ "valid": false, "errors": null, "parse_error": e.to_string() })
                )?;
            } else {
                outln!("verdict     not an ETK: {e}")?;
            }
            return Ok(ExitCode::from(1));
        }
    };
    let at = inputs::evaluation_time(at.as_deref())?;
    let anchors = inputs::anchors(&trust, &revocation, at)?;
    let errors = etk.validate(&anchors, at);
    if anchors.is_empty() && !errors.is_empty() {
        eprintln!(
            "etee: note: no --trust given, so the ETK's certificate chain cannot be checked \
             (its status is unknown): give --trust CERT, the CA the ETK's authentication \
             certificate must chain to"
        );
    }
    let names: Vec<&str> = errors.iter().map(|e| e.name()).collect();
    // Without anchors the note above says what to do; with them, what each problem means.
    let hints = if anchors.is_empty() {
        Vec::new()
    } else {
        inputs::etk_hints(&names, "--trust names")
    };
    let enc = etk.encryption_cert();
    let auth = etk.authentication_cert();
    if json {
        outln!(
            "{}",
            json!({
                "valid": errors.is_empty(),
                "errors": errors.iter().map(|e| e.name()).collect::<Vec<_>>(),
                "identities": identity::identities(auth),
                "subject": auth.subject_string(),
                "encryption_serial": enc.serial_decimal(),
                "not_before": inputs::rfc3339(enc.not_before()),
                "not_after": inputs::rfc3339(enc.not_after()),
                "hints": hints,
            })
        )?;
    } else {
        outln!("holder      {}", auth.subject_string())?;
        for id in identity::identities(auth) {
            outln!(
                "identifier  {}={}{}",
                id.id_type,
                id.value,
                id.application_id
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default()
            )?;
        }
        outln!("serial      {}", enc.serial_decimal())?;
        outln!(
            "valid       {} .. {}",
            inputs::rfc3339(enc.not_before()),
            inputs::rfc3339(enc.not_after())
        )?;
        if errors.is_empty() {
            outln!("verdict     OK")?;
        }
        for e in &errors {
            outln!("error       {e}")?;
        }
        for hint in &hints {
            eprintln!("etee: note: {hint}");
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
