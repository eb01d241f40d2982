//! `etee audit verify`: walks the custody core's audit chain (`etee audit search`, in
//! [`super::audit_search`], finds records in it).
//!
//! The result (text, or one JSON line with `--json`) is on standard output; a progress
//! line is on standard error, only on a terminal.
//!
//! Exit codes: 0 the chain is intact; 1 it is broken (the first break is reported);
//! 2 usage or I/O problems, and a chain with no record at all (no file, or an empty one:
//! nothing to verify).

use crate::progress::Meter;
use crate::CliError;
use etee_custody::file_sink::{scan, FileSinkError};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Verify the hash chain of the audit file of the configured token. The result, with
    /// the head to record with each backup, is on standard output.
    Verify {
        /// The TOML configuration (its audit file).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the result as one JSON line on standard output.
        #[arg(long)]
        json: bool,
        /// Also show the last N intact records.
        #[arg(long, value_name = "N", default_value_t = 0)]
        tail: usize,
        /// A head recorded earlier (the `anchor` line of an earlier run, RECORDS:HASH):
        /// the chain must still contain it, else it was cut or rewritten since (exit 1).
        #[arg(long, value_name = "RECORDS:HASH")]
        expect_head: Option<String>,
    },
    /// Show the records that match a filter (time range, client, key, operation, outcome),
    /// verifying the whole chain on the way: who used which key when, what was refused.
    /// Exit 0 when the chain is intact, 1 when it is broken (the matches before the break
    /// are shown).
    Search(super::audit_search::Args),
}

/// An `--expect-head` value: the head after `RECORDS` records.
fn parse_anchor(text: &str) -> Result<etee_custody::AuditHead, CliError> {
    etee_custody::AuditHead::from_anchor(text).ok_or_else(|| {
        CliError::Usage(format!(
            "--expect-head {text:?}: expected RECORDS:HASH (the `anchor` line of `etee audit \
             verify`, e.g. 1042:5f3a…, 64 hex digits after the colon)"
        ))
    })
}

/// What the chain says about a recorded head.
enum AnchorCheck {
    /// The chain passes through it.
    Found,
    /// The record at that place hashes differently: the chain was rewritten.
    Differs,
    /// The chain ends before it: records were removed.
    Cut { records: u64 },
    /// It lies in archived segments no longer present.
    Unavailable { first: u64 },
}

pub use etee_appliance::report::audit_record as describe;

/// The audit file of the configuration at `config`; a usage error when neither it nor an
/// archived segment of it exists.
pub fn audit_file(config: &Path) -> Result<PathBuf, CliError> {
    let path = super::hsm::load_config(config)?.custody.audit_file;
    if !path.is_file()
        && etee_custody::file_sink::segments(&path)
            .unwrap_or_default()
            .is_empty()
    {
        return Err(CliError::Usage(format!(
            "{}: no audit file (nothing was done through the custody core yet?)",
            path.display()
        )));
    }
    Ok(path)
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    let (config, json, tail, expect_head) = match command {
        Command::Verify {
            config,
            json,
            tail,
            expect_head,
        } => (config, json, tail, expect_head),
        Command::Search(args) => return super::audit_search::run(args),
    };
    let expected = expect_head.as_deref().map(parse_anchor).transpose()?;
    // Whether the record that ends the expected head hashes as recorded (None: not seen).
    let mut anchor_matches: Option<bool> = None;
    let path = audit_file(&config)?;
    let segments = etee_custody::file_sink::segments(&path).unwrap_or_default();
    let mut intact = 0u64;
    // The sequence after the last intact record (where a break is).
    let mut next = 0u64;
    let mut last = std::collections::VecDeque::with_capacity(tail);
    let mut progress = Progress::new(&segments, std::io::stderr().is_terminal());
    let result = scan(&path, |r| {
        intact += 1;
        next = r.sequence.saturating_add(1);
        if let Some(e) = &expected {
            if r.sequence.saturating_add(1) == e.next_sequence {
                anchor_matches = Some(r.hash() == e.hash);
            }
        }
        progress.record(r.sequence, intact);
        if tail > 0 {
            if last.len() == tail {
                last.pop_front();
            }
            last.push_back(describe(r));
        }
    });
    progress.finish();
    let last: Vec<_> = last.into_iter().collect();
    let file = path.display().to_string();
    let (report, text, code) = match result {
        // Not a verified chain: nothing to verify (a file made by a command that failed
        // before its first record, or emptied). With a recorded head to check, the
        // comparison below says what became of it.
        Ok(s) if is_empty(&s) && expected.is_none() => {
            return Err(CliError::Usage(format!(
                "{file}: the audit chain has no record at all: nothing was recorded through \
                 the custody core on it (or its records were removed); there is nothing to \
                 verify"
            )));
        }
        Ok(s) => {
            let head = hex::encode(s.head.hash);
            let mut text = format!(
                "{}{} records{}, head {head}{}",
                if is_empty(&s) { "EMPTY   " } else { "OK      " },
                s.count,
                match (s.segments, s.first_sequence) {
                    (0, _) => String::new(),
                    (n, 0) => format!(" in {} files ({n} archived segments)", n + 1),
                    (n, first) => format!(
                        " in {} files ({n} archived segments), from record #{first} (older \
                         segments are not here: the first checkpoint is trusted)",
                        n + 1
                    ),
                },
                if s.torn_tail {
                    "\nWARNING the last record is incomplete or damaged: a crash while it was written, \
                     or an alteration (they look alike). The core cuts it when it next opens the \
                     file and keeps its bytes in <file>.torn-<offset>; with no crash to explain \
                     it, compare the head with one recorded elsewhere"
                } else {
                    ""
                }
            );
            if !s.unconcluded.is_empty() {
                let seqs: Vec<String> = s.unconcluded.iter().map(|q| format!("#{q}")).collect();
                text.push_str(&format!(
                    "\nNOTE    {} key use(s) admitted without a recorded outcome (the core stopped \
                     while the token worked; the key may have been used): {}",
                    s.unconcluded.len(),
                    seqs.join(" ")
                ));
            }
            let anchor = s.head.anchor().to_string();
            text.push_str(&format!(
                "\nanchor  {anchor} (keep it on another system; `--expect-head {anchor}` checks a \
                 later chain against it)"
            ));
            let check = expected.map(|e| match anchor_matches {
                _ if e.next_sequence == 0 && e.hash == etee_custody::AuditHead::GENESIS.hash => {
                    AnchorCheck::Found
                }
                _ if e.next_sequence == 0 => AnchorCheck::Differs,
                Some(true) => AnchorCheck::Found,
                Some(false) => AnchorCheck::Differs,
                None if e.next_sequence > s.head.next_sequence => AnchorCheck::Cut {
                    records: s.head.next_sequence,
                },
                // The head the oldest segment present starts from (its checkpoint).
                None if e.next_sequence == s.first_head.next_sequence => {
                    if e.hash == s.first_head.hash {
                        AnchorCheck::Found
                    } else {
                        AnchorCheck::Differs
                    }
                }
                None => AnchorCheck::Unavailable {
                    first: s.first_sequence,
                },
            });
            let (expected_json, code) = match (&check, &expected) {
                (Some(c), Some(e)) => {
                    let recorded = e.anchor().to_string();
                    let (verdict, line) = match c {
                        AnchorCheck::Found => (
                            "found",
                            format!("HEAD    the chain still holds the recorded head {recorded}"),
                        ),
                        AnchorCheck::Differs => (
                            "differs",
                            format!(
                                "ALTERED record #{} does not hash to the recorded head {recorded}: \
                                 the chain was rewritten since it was recorded",
                                e.next_sequence.saturating_sub(1)
                            ),
                        ),
                        AnchorCheck::Cut { records } => (
                            "cut",
                            format!(
                                "CUT     the chain ends after {records} records, before the \
                                 recorded head {recorded}: records were removed"
                            ),
                        ),
                        AnchorCheck::Unavailable { first } => (
                            "unavailable",
                            format!(
                                "UNKNOWN the recorded head {recorded} lies before record #{first}, \
                                 in archived segments that are not here: restore them to check it"
                            ),
                        ),
                    };
                    text.push('\n');
                    text.push_str(&line);
                    let code = if matches!(c, AnchorCheck::Found) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    };
                    (json!({ "head": recorded, "verdict": verdict }), code)
                }
                _ => (serde_json::Value::Null, ExitCode::SUCCESS),
            };
            let report = json!({
                "file": file, "intact": true, "records": s.count, "empty": is_empty(&s),
                "segments": s.segments, "first_sequence": s.first_sequence,
                "head": head, "anchor": anchor, "torn_tail": s.torn_tail,
                "pin_failures": s.pin_failures, "unconcluded": s.unconcluded,
                "tail": last, "expected_head": expected_json,
            });
            (report, text, code)
        }
        Err(FileSinkError::Io(e)) => {
            return Err(CliError::File {
                path: file,
                source: e,
            });
        }
        Err(FileSinkError::Corrupt {
            file: damaged,
            offset,
        }) => {
            let damaged = damaged.display().to_string();
            let text = format!(
                "BROKEN  record {next} is damaged ({damaged}, byte {offset}); {intact} record(s) before it are intact"
            );
            let report = json!({
                "file": file, "intact": false, "records_intact": intact,
                "break": { "sequence": next, "file": damaged, "offset": offset, "reason": "damaged record" },
            });
            (report, text, ExitCode::from(1))
        }
        Err(FileSinkError::Chain(b)) => {
            let reason = format!("{:?}", b.reason);
            let text = format!("BROKEN  chain broken at record {}: {reason}", b.sequence);
            let report = json!({
                "file": file, "intact": false, "records_intact": b.sequence,
                "break": { "sequence": b.sequence, "reason": reason },
            });
            (report, text, ExitCode::from(1))
        }
        Err(e) => return Err(CliError::Usage(format!("{file}: {e}"))),
    };
    // The result goes to standard output, text or JSON, so that `etee audit verify
    // --config F > head.txt` keeps the head to record with a backup; only the progress
    // line (on a terminal) is on standard error.
    if json {
        outln!("{report}")?;
    } else {
        outln!("{text}")?;
        outln!("file    {file}")?;
        for r in &last {
            outln!("  {}", record_line(r))?;
        }
    }
    Ok(code)
}

/// One record ([`describe`]) as a line of text: sequence, time, operation, client, key,
/// outcome.
pub(crate) fn record_line(r: &serde_json::Value) -> String {
    format!(
        "#{:<7} {:<24} {:<16} {:<16} {:<20} {}",
        r["sequence"],
        r["time"].as_str().unwrap_or(""),
        r["operation"].as_str().unwrap_or(""),
        r["client"].as_str().unwrap_or("-"),
        r["key"].as_str().unwrap_or("-"),
        r["outcome"].as_str().unwrap_or("")
    )
}

/// A chain without a single record: no file of it holds one, whole or torn, and no
/// archived segment says records came before.
fn is_empty(s: &etee_custody::file_sink::Scan) -> bool {
    s.count == 0 && !s.torn_tail && s.segments == 0 && s.first_sequence == 0
}

/// A progress line on a terminal while a long chain is verified (a chain kept for years
/// spans many segments and takes a while to hash): refreshed at most once a second, and
/// only after the first second, so short runs print nothing.
pub(crate) struct Progress {
    /// The first sequence of each segment after the first, from the archived names
    /// (`None`: a chain not kept in segments, such as the platform's).
    boundaries: Option<Vec<u64>>,
    /// What is counted: "records", "events".
    unit: &'static str,
    meter: Meter,
}

impl Progress {
    pub(crate) fn new(segments: &[PathBuf], enabled: bool) -> Self {
        Self {
            boundaries: Some(
                segments
                    .iter()
                    .filter_map(|s| etee_custody::file_sink::segment_end(Path::new(s)))
                    .collect(),
            ),
            ..Self::unsegmented("records", enabled)
        }
    }

    /// For a chain of `unit` not kept in segments.
    pub(crate) fn unsegmented(unit: &'static str, enabled: bool) -> Self {
        Self {
            boundaries: None,
            unit,
            meter: Meter::new(enabled),
        }
    }

    pub(crate) fn record(&mut self, sequence: u64, verified: u64) {
        // Looking at the clock every 4096 records keeps the cost out of the hash loop.
        if !verified.is_multiple_of(4096) {
            return;
        }
        self.tick(sequence, verified);
    }

    /// Shows the line if a second has passed since the last one (the caller decides how
    /// often to ask).
    pub(crate) fn tick(&mut self, sequence: u64, verified: u64) {
        let Self {
            boundaries,
            unit,
            meter,
        } = self;
        meter.show(|elapsed| {
            Self::line_for(boundaries.as_deref(), unit, sequence, verified, elapsed)
        });
    }

    #[cfg(test)]
    fn line(&self, sequence: u64, verified: u64) -> String {
        let elapsed = self.meter.elapsed();
        Self::line_for(
            self.boundaries.as_deref(),
            self.unit,
            sequence,
            verified,
            elapsed,
        )
    }

    /// What the line says: records so far, which segment, and the rate.
    fn line_for(
        boundaries: Option<&[u64]>,
        unit: &str,
        sequence: u64,
        verified: u64,
        elapsed: Duration,
    ) -> String {
        let rate = verified as f64 / elapsed.as_secs_f64().max(1e-3);
        match boundaries {
            Some(boundaries) => {
                let segment = boundaries.partition_point(|&b| b <= sequence) + 1;
                format!(
                    "verifying: {verified} {unit}, segment {segment} of {}, {rate:.0} {unit}/s",
                    boundaries.len() + 1,
                )
            }
            None => format!("verifying: {verified} {unit}, {rate:.0} {unit}/s"),
        }
    }

    pub(crate) fn finish(&mut self) {
        self.meter.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_names_the_segment_from_the_archived_names() {
        let segments: Vec<PathBuf> = [
            "audit.log.00000000000000000100",
            "audit.log.00000000000000000250",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let progress = Progress::new(&segments, true);
        assert_eq!(progress.boundaries.as_deref(), Some(&[100, 250][..]));
        assert!(progress.line(0, 1).contains("segment 1 of 3"));
        assert!(progress.line(99, 100).contains("segment 1 of 3"));
        assert!(progress.line(100, 101).contains("segment 2 of 3"));
        assert!(progress.line(300, 301).contains("segment 3 of 3"));
    }

    #[test]
    fn an_unsegmented_chain_counts_its_unit() {
        let line = Progress::unsegmented("events", true).line(10, 11);
        assert!(
            line.starts_with("verifying: 11 events, ") && line.ends_with(" events/s"),
            "{line}"
        );
        assert!(!line.contains("segment"), "{line}");
    }

    #[test]
    fn short_runs_and_pipes_print_no_progress() {
        let mut progress = Progress::new(&[], false);
        progress.record(4095, 4096);
        assert!(!progress.meter.shown());
        let mut progress = Progress::new(&[], true);
        progress.record(4095, 4096);
        assert!(!progress.meter.shown(), "nothing in the first second");
    }
}
