//! `etee timestamp`: puts a signature timestamp (RFC 3161) on a sealed message, as the .NET
//! library's T level does: the hash to have stamped (`imprint`), then the authority's
//! answer attached to the outer signature (`attach`), or both at once from an authority
//! answering RFC 3161 over HTTP (`fetch`). The signatures do not change, so the message
//! opens as before; a receiver trusting the authority (`unseal --tsa-trust`) gets its
//! time, which judges the sender's certificate when the message has no signing time.

use crate::{inputs, CliError};
use etee_formats::cms::timestamp;
use etee_formats::trust::TrustAnchors;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    /// Ask a time-stamping authority over HTTP (RFC 3161: a TimeStampReq POSTed as
    /// application/timestamp-query) to stamp the message's outer signature, and attach
    /// its token once checked as `attach` does, and to answer this request (its nonce).
    Fetch {
        /// The sealed message.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The authority's http:// URL (the token is signed and checked: plain HTTP, as
        /// authorities publish it).
        #[arg(long, value_name = "URL")]
        url: String,
        /// Refuse the token unless its authority chains to one of these (repeatable).
        #[arg(long, value_name = "CERT")]
        tsa_trust: Vec<PathBuf>,
        /// Seconds to connect, and again to read the answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
        /// The stamped message (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Imprint { input } => {
            let message = message(&input)?;
            let signature = outer_signature(&message, &input)?;
            outln!("{}", hex::encode(openssl::sha::sha256(&signature)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Attach {
            input,
            reply,
            tsa_trust,
            out,
        } => {
            let stamp = Stamp::of(&input, &tsa_trust, &out)?;
            let answer = inputs::read_file_at_most(&reply, MAX_REPLY_BYTES, "a time-stamp reply")?;
            stamp.attach(&answer, &reply.display().to_string(), None)
        }
        Command::Fetch {
            input,
            url,
            tsa_trust,
            timeout,
            out,
        } => {
            if !url.starts_with("http://") {
                return Err(CliError::Usage(format!(
                    "--url {url}: only http:// is asked (a token is signed and checked, \
                     and authorities answer RFC 3161 over plain HTTP)"
                )));
            }
            let stamp = Stamp::of(&input, &tsa_trust, &out)?;
            let imprint = openssl::sha::sha256(&stamp.signature);
            let nonce = timestamp::new_nonce()
                .map_err(|e| CliError::Usage(format!("random nonce: {e}")))?;
            eprintln!("etee: asking {url} to stamp {}", input.display());
            let answer = etee_services::http_client::DerPost {
                content_type: "application/timestamp-query",
                accept: "application/timestamp-reply",
                connect_timeout: Duration::from_secs(timeout),
                read_timeout: Duration::from_secs(timeout),
                max_answer: MAX_REPLY_BYTES,
            }
            .send(&url, &timestamp::request(&imprint, &nonce))
            .map_err(|e| CliError::Refused(format!("{url}: {e}")))?;
            stamp.attach(&answer, &url, Some(&nonce))
        }
    }
}

/// The outer signature of the message read from `input`.
fn outer_signature(message: &[u8], input: &Path) -> Result<Vec<u8>, CliError> {
    timestamp::outer_signature(message)
        .map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))
}

/// A sealed message to stamp, and where the stamped one goes.
struct Stamp<'a> {
    message: Vec<u8>,
    input: &'a Path,
    signature: Vec<u8>,
    tsa_trust: &'a [PathBuf],
    out: &'a Path,
}

impl<'a> Stamp<'a> {
    /// The message of `input`, read, and its outer signature found.
    fn of(input: &'a Path, tsa_trust: &'a [PathBuf], out: &'a Path) -> Result<Self, CliError> {
        let message = message(input)?;
        let signature = outer_signature(&message, input)?;
        Ok(Self {
            message,
            input,
            signature,
            tsa_trust,
            out,
        })
    }

    /// Checks the authority's `answer` (from `source`) and writes the message with its
    /// token: the token must stamp this outer signature, be valid, come from a trusted
    /// authority when `--tsa-trust` names some, and repeat `nonce` when one was asked.
    fn attach(
        &self,
        answer: &[u8],
        source: &str,
        nonce: Option<&[u8; 8]>,
    ) -> Result<ExitCode, CliError> {
        // A file given is the caller's to fix (usage); an authority's answer, refused.
        let token = timestamp::token_of_reply(answer).map_err(|e| match nonce {
            Some(_) => CliError::Refused(format!("{source}: {e}")),
            None => CliError::Usage(format!("{source}: {e}")),
        })?;
        let anchors = TrustAnchors::new(inputs::certificates(self.tsa_trust)?);
        let checked = timestamp::check(&token, &self.signature, &anchors);
        if let Some(e) = checked.error {
            // Without --tsa-trust whom to trust is the receiver's choice.
            let untrusted_is_fine = self.tsa_trust.is_empty()
                && e == etee_formats::verdict::Error::TIMESTAMPTOKEN_TRUST_FAILED;
            if !untrusted_is_fine {
                return Err(CliError::Refused(format!(
                    "{source}: {e} (the token must stamp the outer signature of {}, whose \
                     imprint `etee timestamp imprint` prints)",
                    self.input.display()
                )));
            }
        }
        if let Some(nonce) = nonce {
            if checked.nonce.as_deref() != Some(&nonce[..]) {
                return Err(CliError::Refused(format!(
                    "{source}: the token does not repeat this request's nonce: an answer \
                     made for another request (replayed, or from a cache), not attached"
                )));
            }
        }
        let stamped = timestamp::attach(&self.message, &token)
            .map_err(|e| CliError::Usage(format!("{}: {e}", self.input.display())))?;
        crate::output::write_file(self.out, &stamped, false)?;
        match checked.gen_time {
            Some(t) => eprintln!(
                "etee: stamped at {} ({} bytes to {})",
                inputs::rfc3339(t),
                stamped.len(),
                self.out.display()
            ),
            None => eprintln!(
                "etee: stamped ({} bytes to {})",
                stamped.len(),
                self.out.display()
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}
