//! `etee audit search`: the records of the custody core's audit chain that match a filter
//! (time range, client, key, operation, outcome), found while the whole chain is verified:
//! what a hospital's auditor asks ("who used the ETK key last Tuesday, and was anything
//! refused?").
//!
//! A progress line is on standard error while a long chain is read, only on a terminal.
//!
//! Exit codes: 0 the chain is intact (whether anything matched or not); 1 it is broken
//! (the matches before the break are shown, and the break); 2 usage or I/O problems, or
//! no audit file.

use crate::CliError;
use etee_appliance::report::{AuditFilter, AuditFilterError, AuditOutcome};
use etee_custody::audit::Operation;
use etee_custody::file_sink::{scan, FileSinkError};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// The most records one search shows (`--limit`): the rest are counted, not kept.
pub const MAX_LIMIT: usize = 1_000_000;

#[derive(clap::Args)]
pub struct Args {
    /// The TOML configuration (its audit file).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Records made at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    since: Option<String>,
    /// Records made before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    until: Option<String>,
    /// Records of this client (as the policy names it: `[custody] client`, an appliance
    /// caller's name).
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// Records of this key (its id in the token, as `etee keys list` shows it).
    #[arg(long, value_name = "ID")]
    key: Option<String>,
    /// Records of this operation (repeat for several).
    #[arg(long, value_name = "OPERATION", value_enum)]
    operation: Vec<OperationArg>,
    /// Records with this outcome: `admitted` (a key use's record made before the token was
    /// asked), `success`, or `refused` (refusals and failures).
    #[arg(long, value_name = "OUTCOME", value_enum)]
    outcome: Option<OutcomeArg>,
    /// Show at most N matching records (the first ones; all are counted).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT as u64))]
    limit: u64,
    /// Print the result as one JSON document on standard output.
    #[arg(long)]
    json: bool,
}

/// `--operation` values: the operations of the audit chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OperationArg {
    /// RSA-PSS signatures (`SignPssSha256`).
    Sign,
    /// Key-transport decryptions (`DecryptPkcs1v15`).
    Decrypt,
    /// Secrets wrapped (`WrapSecret`).
    Wrap,
    /// Secrets unwrapped (`UnwrapSecret`).
    Unwrap,
    /// Questions about a key's custody (`DescribeKey`).
    Describe,
    /// Keys destroyed (`KeyDestroy`).
    Destroy,
    /// Logins / unlocks of the core (`Unlock`).
    Unlock,
    /// Locks of the core (`Lock`).
    Lock,
    /// Wrong-PIN counter resets (`PinReset`).
    PinReset,
    /// User PINs set by the security officer (`UserPinSet`).
    UserPinSet,
}

impl OperationArg {
    /// The operation; its name here is the shared one (`report::OPERATION_NAMES`, also the
    /// API's: a test compares them).
    fn operation(self) -> Operation {
        match self {
            Self::Sign => Operation::SignPssSha256,
            Self::Decrypt => Operation::DecryptPkcs1v15,
            Self::Wrap => Operation::WrapSecret,
            Self::Unwrap => Operation::UnwrapSecret,
            Self::Describe => Operation::DescribeKey,
            Self::Destroy => Operation::KeyDestroy,
            Self::Unlock => Operation::Unlock,
            Self::Lock => Operation::Lock,
            Self::PinReset => Operation::PinReset,
            Self::UserPinSet => Operation::UserPinSet,
        }
    }
}

/// `--outcome` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutcomeArg {
    Admitted,
    Success,
    Refused,
}

/// The filter the arguments ask for.
fn filter(a: &Args) -> Result<AuditFilter, CliError> {
    AuditFilter::new(
        a.since.as_deref(),
        a.until.as_deref(),
        a.client.as_deref(),
        a.key.as_deref(),
        a.operation.iter().map(|o| o.operation()),
        a.outcome.map(|o| match o {
            OutcomeArg::Admitted => AuditOutcome::Admitted,
            OutcomeArg::Success => AuditOutcome::Success,
            OutcomeArg::Refused => AuditOutcome::Refused,
        }),
    )
    .map_err(|e| {
        CliError::Usage(match e {
            AuditFilterError::Since(why) => format!("--since {why}"),
            AuditFilterError::Until(why) => format!("--until {why}"),
            AuditFilterError::EmptyRange => format!(
                "--until {} is not after --since {}: no record could match",
                a.until.as_deref().unwrap_or_default(),
                a.since.as_deref().unwrap_or_default()
            ),
        })
    })
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let filter = filter(&args)?;
    let path = super::audit::audit_file(&args.config)?;
    let limit = usize::try_from(args.limit).unwrap_or(MAX_LIMIT);
    let mut shown: Vec<Value> = Vec::new();
    let mut matched = 0u64;
    let mut intact = 0u64;
    let mut next = 0u64;
    let segments = etee_custody::file_sink::segments(&path).unwrap_or_default();
    let mut progress = super::audit::Progress::new(&segments, std::io::stderr().is_terminal());
    let result = scan(&path, |r| {
        intact += 1;
        next = r.sequence.saturating_add(1);
        progress.record(r.sequence, intact);
        if filter.matches(r) {
            matched += 1;
            if shown.len() < limit {
                shown.push(super::audit::describe(r));
            }
        }
    });
    progress.finish();
    let file = path.display().to_string();
    let truncated = matched > shown.len() as u64;
    let (chain, summary, code) = match result {
        Ok(s) => (
            json!({ "intact": true, "records": s.count, "head": hex::encode(s.head.hash),
                    "torn_tail": s.torn_tail }),
            format!(
                "{matched} matching record(s) of {} (chain intact{})",
                s.count,
                if s.torn_tail {
                    "; its last record is incomplete: see `etee audit verify`"
                } else {
                    ""
                }
            ),
            ExitCode::SUCCESS,
        ),
        Err(FileSinkError::Io(e)) => {
            return Err(CliError::File {
                path: file,
                source: e,
            })
        }
        Err(e @ (FileSinkError::Corrupt { .. } | FileSinkError::Chain(_))) => (
            json!({ "intact": false, "records_intact": intact, "break": {
                "sequence": match &e {
                    FileSinkError::Chain(b) => b.sequence,
                    _ => next,
                },
                "reason": e.to_string() } }),
            format!(
                "BROKEN  the chain breaks ({e}): {matched} matching record(s) among the \
                 {intact} intact before it only; `etee audit verify` says more"
            ),
            ExitCode::from(1),
        ),
        Err(e) => return Err(CliError::Usage(format!("{file}: {e}"))),
    };
    if args.json {
        outln!(
            "{}",
            json!({ "file": file, "chain": chain, "matched": matched, "truncated": truncated,
                    "entries": shown })
        )?;
        return Ok(code);
    }
    for r in &shown {
        outln!("{}", super::audit::record_line(r))?;
    }
    if truncated {
        outln!("(the first {} shown; --limit shows more)", shown.len())?;
    }
    outln!("{summary}")?;
    outln!("file    {file}")?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use etee_appliance::report::operation_named;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["search", "--config", "c.toml"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn arguments_make_the_filter() {
        let a = parse(&[
            "--since",
            "2026-12-07T00:00:00Z",
            "--until",
            "2026-12-07T00:00:00Z",
        ])
        .unwrap();
        assert!(filter(&a).unwrap_err().to_string().contains("not after"));
        let a = parse(&["--since", "yesterday"]).unwrap();
        assert!(filter(&a).unwrap_err().to_string().contains("--since"));
        let a = parse(&[
            "--operation",
            "sign",
            "--operation",
            "unwrap",
            "--operation",
            "sign",
            "--outcome",
            "refused",
            "--key",
            "etk",
            "--client",
            "app",
            "--since",
            "1970-01-01T00:00:01Z",
        ])
        .unwrap();
        let f = filter(&a).unwrap();
        assert_eq!(
            f.operations,
            [Operation::SignPssSha256, Operation::UnwrapSecret]
        );
        assert_eq!(f.outcome, Some(AuditOutcome::Refused));
        assert_eq!(
            (f.key.as_deref(), f.client.as_deref()),
            (Some(&b"etk"[..]), Some(&b"app"[..]))
        );
        assert_eq!((f.since_ms, f.until_ms), (Some(1_000), None));
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--operation", "frobnicate"]).is_err());
    }

    #[test]
    fn every_operation_value_has_its_shared_name() {
        use clap::ValueEnum;
        for v in OperationArg::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(operation_named(&name), Some(v.operation()), "{name}");
        }
        assert_eq!(
            OperationArg::value_variants().len(),
            etee_appliance::report::OPERATION_NAMES.len()
        );
    }
}
