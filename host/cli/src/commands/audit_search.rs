//! `etee audit search`: the records of the custody core's audit chain that match a filter
//! (time range, client, key, operation, outcome), found while the whole chain is verified:
//! what a hospital's auditor asks ("who used the ETK key last Tuesday, and was anything
//! refused?").
//!
//! Exit codes: 0 the chain is intact (whether anything matched or not); 1 it is broken
//! (the matches before the break are shown, and the break); 2 usage or I/O problems, or
//! no audit file.

use crate::CliError;
use etee_custody::audit::{AuditRecord, Operation, Outcome};
use etee_custody::file_sink::{scan, FileSinkError};
use serde_json::{json, Value};
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

/// What a record must be to match: every given criterion (none given: every record).
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    /// Milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<u64>,
    /// Milliseconds since the Unix epoch, exclusive.
    pub until_ms: Option<u64>,
    pub client: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub operations: Vec<Operation>,
    pub outcome: Option<OutcomeArg>,
}

impl Filter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let bytes = |field: Option<&[u8]>, wanted: &Option<Vec<u8>>| {
            wanted.as_deref().is_none_or(|w| field == Some(w))
        };
        self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms < t)
            && bytes(r.client.as_ref().map(|c| c.as_bytes()), &self.client)
            && bytes(r.key.as_ref().map(|k| k.as_bytes()), &self.key)
            && (self.operations.is_empty() || self.operations.contains(&r.operation))
            && self.outcome.is_none_or(|o| {
                matches!(
                    (o, r.outcome),
                    (OutcomeArg::Admitted, Outcome::Admitted)
                        | (OutcomeArg::Success, Outcome::Success)
                        | (OutcomeArg::Refused, Outcome::Refused(_))
                )
            })
    }
}

/// An RFC 3339 option as milliseconds since the Unix epoch (times before it are refused:
/// the chain has none).
fn time_ms(flag: &str, text: Option<&str>) -> Result<Option<u64>, CliError> {
    let Some(text) = text else { return Ok(None) };
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| CliError::Usage(format!("{flag} {text:?}: not an RFC 3339 time ({e})")))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(Some)
        .map_err(|_| CliError::Usage(format!("{flag} {text:?}: before 1970")))
}

impl TryFrom<&Args> for Filter {
    type Error = CliError;

    fn try_from(a: &Args) -> Result<Self, CliError> {
        let filter = Filter {
            since_ms: time_ms("--since", a.since.as_deref())?,
            until_ms: time_ms("--until", a.until.as_deref())?,
            client: a.client.as_ref().map(|c| c.as_bytes().to_vec()),
            key: a.key.as_ref().map(|k| k.as_bytes().to_vec()),
            operations: a.operation.iter().map(|o| o.operation()).collect(),
            outcome: a.outcome,
        };
        if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms) {
            if until <= since {
                return Err(CliError::Usage(format!(
                    "--until {} is not after --since {}: no record could match",
                    a.until.as_deref().unwrap_or_default(),
                    a.since.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(filter)
    }
}

/// RFC 3339 text, to the millisecond, of a record's time.
pub fn record_time(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let filter = Filter::try_from(&args)?;
    let path = super::audit::audit_file(&args.config)?;
    let limit = usize::try_from(args.limit).unwrap_or(MAX_LIMIT);
    let mut shown: Vec<Value> = Vec::new();
    let mut matched = 0u64;
    let mut intact = 0u64;
    let mut next = 0u64;
    let result = scan(&path, |r| {
        intact += 1;
        next = r.sequence.saturating_add(1);
        if filter.matches(r) {
            matched += 1;
            if shown.len() < limit {
                let mut entry = super::audit::describe(r);
                entry["time"] = Value::String(record_time(r.time_ms));
                shown.push(entry);
            }
        }
    });
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
                "sequence": next, "reason": e.to_string() } }),
            format!(
                "BROKEN  the chain breaks at record {next} ({e}): {matched} matching record(s) \
                 among the {intact} before it only; `etee audit verify` says more"
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
        outln!(
            "#{:<7} {:<24} {:<16} {:<16} {:<20} {}",
            r["sequence"],
            r["time"].as_str().unwrap_or(""),
            r["operation"].as_str().unwrap_or(""),
            r["client"].as_str().unwrap_or("-"),
            r["key"].as_str().unwrap_or("-"),
            r["outcome"].as_str().unwrap_or("")
        )?;
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
    use etee_custody::audit::AuditHead;
    use etee_custody::wire::Error;
    use etee_custody::{ClientId, KeyId};

    fn record(time_ms: u64, client: &str, key: &str, op: Operation, o: Outcome) -> AuditRecord {
        AuditRecord {
            sequence: 0,
            time_ms,
            client: Some(ClientId::try_from(client).unwrap()),
            operation: op,
            key: Some(KeyId::try_from(key).unwrap()),
            input_digest: [0; 32],
            outcome: o,
            prev_hash: AuditHead::GENESIS.hash,
        }
    }

    #[test]
    fn every_criterion_must_hold() {
        let r = record(
            1_000,
            "app",
            "etk",
            Operation::DecryptPkcs1v15,
            Outcome::Success,
        );
        assert!(Filter::default().matches(&r));
        let f = |edit: &dyn Fn(&mut Filter)| {
            let mut f = Filter::default();
            edit(&mut f);
            f.matches(&r)
        };
        assert!(f(&|f| f.since_ms = Some(1_000)), "since is inclusive");
        assert!(!f(&|f| f.since_ms = Some(1_001)));
        assert!(f(&|f| f.until_ms = Some(1_001)));
        assert!(!f(&|f| f.until_ms = Some(1_000)), "until is exclusive");
        assert!(f(&|f| f.client = Some(b"app".to_vec())));
        assert!(!f(&|f| f.client = Some(b"ap".to_vec())));
        assert!(f(&|f| f.key = Some(b"etk".to_vec())));
        assert!(!f(&|f| f.key = Some(b"auth".to_vec())));
        assert!(f(
            &|f| f.operations = vec![Operation::SignPssSha256, Operation::DecryptPkcs1v15]
        ));
        assert!(!f(&|f| f.operations = vec![Operation::SignPssSha256]));
        assert!(f(&|f| f.outcome = Some(OutcomeArg::Success)));
        assert!(!f(&|f| f.outcome = Some(OutcomeArg::Refused)));
        assert!(!f(&|f| {
            f.client = Some(b"app".to_vec());
            f.key = Some(b"auth".to_vec());
        }));
        let refused = record(
            5,
            "app",
            "etk",
            Operation::SignPssSha256,
            Outcome::Refused(Error::PolicyDenied),
        );
        let only_refused = Filter {
            outcome: Some(OutcomeArg::Refused),
            ..Filter::default()
        };
        assert!(only_refused.matches(&refused));
        // A record without a client (an unlock) matches no client criterion.
        let mut unlock = record(5, "app", "etk", Operation::Unlock, Outcome::Success);
        unlock.client = None;
        unlock.key = None;
        assert!(!Filter {
            client: Some(b"app".to_vec()),
            ..Filter::default()
        }
        .matches(&unlock));
        assert!(Filter {
            operations: vec![Operation::Unlock],
            ..Filter::default()
        }
        .matches(&unlock));
    }

    #[test]
    fn times_are_rfc3339_to_the_millisecond() {
        assert_eq!(
            time_ms("--since", Some("1970-01-01T00:00:01.5Z")).unwrap(),
            Some(1_500)
        );
        assert_eq!(
            time_ms("--since", Some("2026-12-07T02:00:00+01:00")).unwrap(),
            time_ms("--since", Some("2026-12-07T01:00:00Z")).unwrap()
        );
        assert!(time_ms("--since", Some("yesterday")).is_err());
        assert!(time_ms("--until", Some("1969-12-31T23:59:59Z")).is_err());
        assert_eq!(record_time(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(record_time(u64::MAX), format!("{} ms", u64::MAX));
    }

    #[test]
    fn an_empty_time_range_is_a_usage_error() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["search", "--config", "c.toml"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.args)
        };
        let a = parse(&[
            "--since",
            "2026-12-07T00:00:00Z",
            "--until",
            "2026-12-07T00:00:00Z",
        ])
        .unwrap();
        assert!(Filter::try_from(&a)
            .unwrap_err()
            .to_string()
            .contains("not after"));
        let a = parse(&[
            "--operation",
            "sign",
            "--operation",
            "unwrap",
            "--outcome",
            "refused",
        ])
        .unwrap();
        let f = Filter::try_from(&a).unwrap();
        assert_eq!(
            f.operations,
            [Operation::SignPssSha256, Operation::UnwrapSecret]
        );
        assert_eq!(f.outcome, Some(OutcomeArg::Refused));
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--operation", "frobnicate"]).is_err());
    }
}
