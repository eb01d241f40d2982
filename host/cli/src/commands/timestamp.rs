//! `etee timestamp`: puts a signature timestamp (RFC 3161) on a sealed message, as the .NET
//! library's T level does: the hash to have stamped (`imprint`), then the authority's
//! answer attached to the outer signature (`attach`). The signatures do not change, so the
//! message opens as before; a receiver trusting the authority (`unseal --tsa-trust`) gets
//! its time, which judges the sender's certificate when the message has no signing time.

use crate::{inputs, CliError};
use etee_formats::cms::timestamp;
use etee_formats::trust::TrustAnchors;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The most a sealed message to stamp may weigh: `attach` holds it in memory (twice).
const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// The most an authority's answer may weigh (a token is a few KiB).
const MAX_REPLY_BYTES: u64 = 1 << 20;

/// The sealed message of `--in`.
fn message(path: &Path) -> Result<Vec<u8>, CliError> {
    inputs::read_file_at_most(path, MAX_MESSAGE_BYTES, "a sealed message to stamp here")
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the SHA-256 (hex) of the message's outer signature: what a time-stamping
    /// authority must stamp (`openssl ts -query -sha256 -cert -digest HEX`).
    Imprint {
        /// The sealed message.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
    /// Attach the authority's answer (a TimeStampResp, `.tsr`, or a bare token) to the
    /// message's outer signature, once it is checked to stamp that signature and to be a
    /// valid token (and, with --tsa-trust, to come from a trusted authority).
    Attach {
        /// The sealed message.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The authority's answer: a TimeStampResp or a time-stamp token (DER).
        #[arg(long, value_name = "FILE")]
        reply: PathBuf,
        /// Refuse the token unless its authority chains to one of these (repeatable).
        #[arg(long, value_name = "CERT")]
        tsa_trust: Vec<PathBuf>,
        /// The stamped message (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Imprint { input } => {
            let message = message(&input)?;
            let signature = timestamp::outer_signature(&message)
                .map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
            outln!("{}", hex::encode(openssl::sha::sha256(&signature)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Attach {
            input,
            reply,
            tsa_trust,
            out,
        } => {
            let message = message(&input)?;
            let signature = timestamp::outer_signature(&message)
                .map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
            let token = timestamp::token_of_reply(&inputs::read_file_at_most(
                &reply,
                MAX_REPLY_BYTES,
                "a time-stamp reply",
            )?)
            .map_err(|e| CliError::Usage(format!("{}: {e}", reply.display())))?;
            let anchors = TrustAnchors::new(inputs::certificates(&tsa_trust)?);
            let checked = timestamp::check(&token, &signature, &anchors);
            if let Some(e) = checked.error {
                // Without --tsa-trust whom to trust is the receiver's choice.
                let untrusted_is_fine = tsa_trust.is_empty()
                    && e == etee_formats::verdict::Error::TIMESTAMPTOKEN_TRUST_FAILED;
                if !untrusted_is_fine {
                    return Err(CliError::Refused(format!(
                        "{}: {e} (the token must stamp the outer signature of {}, whose \
                         imprint `etee timestamp imprint` prints)",
                        reply.display(),
                        input.display()
                    )));
                }
            }
            let stamped = timestamp::attach(&message, &token)
                .map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
            crate::output::write_file(&out, &stamped, false)?;
            match checked.gen_time {
                Some(t) => eprintln!(
                    "etee: stamped at {} ({} bytes to {})",
                    inputs::rfc3339(t),
                    stamped.len(),
                    out.display()
                ),
                None => eprintln!(
                    "etee: stamped ({} bytes to {})",
                    stamped.len(),
                    out.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
