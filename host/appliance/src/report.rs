//! What the API (and `etee unseal --json`) says about an unsealed message and about the
//! custody core's audit records: JSON for machines, the official notification names.

use etee_custody::audit::{AuditRecord, Operation, Outcome};
use etee_custody::file_sink::{scan, FileSinkError};
use etee_custody::token::ckr;
use etee_custody::wire::Error;
use etee_formats::cms::unseal::OpenedWith;
use etee_formats::cms::Unsealed;
use serde_json::{json, Value};
use std::path::Path;

pub use etee_formats::rfc3339;

/// The verdict of an unsealed message: the official fatal, errors and warnings, the
/// sender (certificate and eHealth identities) and, only when clean, the content's
/// length and SHA-256.
pub fn unseal_report(r: &Unsealed) -> Value {
    use base64::Engine;
    let clean = r.verdict.is_clean();
    let sender = r.sender.as_ref().map(|s| {
        let cert = s.certificate.as_ref();
        json!({
            "subject": cert.map(|c| c.subject_string()),
            "issuer": cert.map(|c| c.issuer_string()),
            "serial": cert.map(|c| c.serial_decimal()),
            "identities": s.identities(),
            "key_id": s.key_id.as_ref().map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
        })
    });
    json!({
        "fatal": r.verdict.fatal.map(|f| f.name()),
        "errors": r.verdict.errors.iter().map(|e| e.name()).collect::<Vec<_>>(),
        "warnings": r.verdict.warnings.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "content_len": clean.then_some(r.content_len),
        "content_sha256": clean.then(|| hex::encode(r.content_sha256)),
        "sender": sender,
        "signing_time": r.signing_time.map(rfc3339),
        "timestamp": r.timestamp.map(rfc3339),
        "opened_with": r.opened_with.as_ref().map(|o| match o {
            OpenedWith::Key(k) => format!("key:{k}"),
            OpenedWith::Kek => "kek".to_string(),
        }),
    })
}

/// RFC 3339 text, to the millisecond, of an audit record's time (milliseconds since the
/// Unix epoch; the number itself if out of range).
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

/// Whether `r` is a decryption the token tried (succeeded, or refused as the token does a
/// bad padding): its outcome is a padding verdict on the blob, which the custody core
/// gives no caller (one uniform error) and the audit API must not give its readers either
/// (an `audit` client able to have blobs decrypted, e.g. by sending messages, would have
/// a Bleichenbacher oracle on the ETK key). The record on disk keeps it for the operator.
pub fn is_tried_decryption(r: &AuditRecord) -> bool {
    r.operation == Operation::DecryptPkcs1v15
        && match r.outcome {
            Outcome::Success => true,
            Outcome::Refused(Error::Token(t)) => !ckr::token_unavailable(t.ckr),
            _ => false,
        }
}

/// One custody audit record as the operator reads it on the host (`etee audit verify`,
/// `etee audit search`): every outcome as recorded.
pub fn audit_record(r: &AuditRecord) -> Value {
    record_json(r, false)
}

/// One custody audit record as the audit API shows it: a decryption the token tried is
/// `concluded`, whether it succeeded or not ([`is_tried_decryption`]).
pub fn audit_record_shown(r: &AuditRecord) -> Value {
    record_json(r, true)
}

fn record_json(r: &AuditRecord, hide_decryptions: bool) -> Value {
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    let outcome = match r.outcome {
        _ if hide_decryptions && is_tried_decryption(r) => "concluded".to_string(),
        Outcome::Success => "success".to_string(),
        Outcome::Refused(e) => format!("refused: {e}"),
        Outcome::Admitted => "admitted".to_string(),
    };
    json!({
        "sequence": r.sequence,
        "time_ms": r.time_ms,
        "time": record_time(r.time_ms),
        "client": text(r.client.as_ref().map(|c| c.as_bytes())),
        "operation": format!("{:?}", r.operation),
        "key": text(r.key.as_ref().map(|k| k.as_bytes())),
        "input_sha256": hex::encode(r.input_digest),
        "outcome": outcome,
    })
}

/// The names audit searches give operations by (`etee audit search --operation`, `GET
/// /v1/audit?operation=`), with what each stands for.
pub const OPERATION_NAMES: [(&str, Operation); 10] = [
    ("sign", Operation::SignPssSha256),
    ("decrypt", Operation::DecryptPkcs1v15),
    ("wrap", Operation::WrapSecret),
    ("unwrap", Operation::UnwrapSecret),
    ("describe", Operation::DescribeKey),
    ("destroy", Operation::KeyDestroy),
    ("unlock", Operation::Unlock),
    ("lock", Operation::Lock),
    ("pin-reset", Operation::PinReset),
    ("user-pin-set", Operation::UserPinSet),
];

/// The operation an audit search names `name` (see [`OPERATION_NAMES`]).
pub fn operation_named(name: &str) -> Option<Operation> {
    OPERATION_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, op)| *op)
}

/// An outcome an audit search asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    /// A key use's record made before the token was asked.
    Admitted,
    Success,
    /// Refusals and failures.
    Refused,
    /// A decryption the token tried, however it went ([`is_tried_decryption`]): what the
    /// audit API shows of one, in place of success or refused.
    Concluded,
}

impl AuditOutcome {
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "admitted" => Some(Self::Admitted),
            "success" => Some(Self::Success),
            "refused" => Some(Self::Refused),
            "concluded" => Some(Self::Concluded),
            _ => None,
        }
    }
}

/// Which audit records a search shows: every criterion given must hold (none given:
/// every record).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    /// Milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<u64>,
    /// Milliseconds since the Unix epoch, exclusive.
    pub until_ms: Option<u64>,
    pub client: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// Any of these (none: any operation).
    pub operations: Vec<Operation>,
    pub outcome: Option<AuditOutcome>,
}

impl AuditFilter {
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
                    (AuditOutcome::Admitted, Outcome::Admitted)
                        | (AuditOutcome::Success, Outcome::Success)
                        | (AuditOutcome::Refused, Outcome::Refused(_))
                ) || o == AuditOutcome::Concluded && is_tried_decryption(r)
            })
    }

    /// [`matches`](Self::matches) as the audit API shows records ([`audit_record_shown`]): a
    /// decryption the token tried is only `concluded`, never `success` or `refused`.
    pub fn matches_as_shown(&self, r: &AuditRecord) -> bool {
        match self.outcome {
            Some(AuditOutcome::Success | AuditOutcome::Refused) if is_tried_decryption(r) => false,
            _ => self.matches(r),
        }
    }

    /// The filter of these criteria, as a caller gives them: `since` and `until` in RFC
    /// 3339 (`until` after `since`), each operation kept once however often given (the
    /// list is checked against every record). The error leaves naming the criterion to
    /// the caller (`since`, `--since`).
    pub fn new(
        since: Option<&str>,
        until: Option<&str>,
        client: Option<&str>,
        key: Option<&str>,
        operations: impl IntoIterator<Item = Operation>,
        outcome: Option<AuditOutcome>,
    ) -> Result<Self, AuditFilterError> {
        let since_ms = since
            .map(time_ms)
            .transpose()
            .map_err(AuditFilterError::Since)?;
        let until_ms = until
            .map(time_ms)
            .transpose()
            .map_err(AuditFilterError::Until)?;
        if matches!((since_ms, until_ms), (Some(s), Some(u)) if u <= s) {
            return Err(AuditFilterError::EmptyRange);
        }
        let operations = operations.into_iter().fold(Vec::new(), |mut ops, op| {
            if !ops.contains(&op) {
                ops.push(op);
            }
            ops
        });
        Ok(Self {
            since_ms,
            until_ms,
            client: client.map(|c| c.as_bytes().to_vec()),
            key: key.map(|k| k.as_bytes().to_vec()),
            operations,
            outcome,
        })
    }
}

/// Why criteria make no [`AuditFilter`] ([`AuditFilter::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditFilterError {
    /// `since` is not an RFC 3339 time from 1970 on: why.
    Since(String),
    /// `until` is not an RFC 3339 time from 1970 on: why.
    Until(String),
    /// `until` is not after `since`: no record could match.
    EmptyRange,
}

/// An RFC 3339 time as milliseconds since the Unix epoch (the records' times); a message
/// saying why not otherwise (times before 1970 included: the chain has none).
pub fn time_ms(text: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?}: not an RFC 3339 time ({e})"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{text:?}: before 1970"))
}

/// The audit chain at `path` from record `from` (a sequence number), at most `limit` of
/// the records that `filter` lets through, with how many it lets through from `from` on
/// (`matched`) and the result of verifying the whole chain: `{"intact", "records",
/// "torn_tail", "matched", "entries"}` (or `{"intact": false, "break", "matched",
/// "entries"}`: the matches before the break). No hash of the chain: every field of a
/// record but a tried decryption's outcome is shown, so its head would let a reader try
/// the few outcomes one could have and learn the hidden one (a padding verdict).
pub fn audit_export(
    path: &Path,
    from: u64,
    limit: usize,
    filter: &AuditFilter,
) -> Result<Value, FileSinkError> {
    let mut out = Vec::new();
    let mut matched = 0u64;
    let scanned = scan(path, |r| {
        if r.sequence >= from && filter.matches_as_shown(r) {
            matched += 1;
            if out.len() < limit {
                out.push(audit_record_shown(r));
            }
        }
    });
    Ok(match scanned {
        Ok(s) => json!({
            "intact": true,
            "records": s.count,
            "segments": s.segments,
            "first_sequence": s.first_sequence,
            "torn_tail": s.torn_tail,
            "unconcluded": s.unconcluded,
            "matched": matched,
            "entries": out,
        }),
        Err(FileSinkError::Io(e)) => return Err(FileSinkError::Io(e)),
        Err(e) => json!({
            "intact": false,
            "break": e.to_string(),
            "matched": matched,
            "entries": out,
        }),
    })
}

#[cfg(test)]
mod audit_filter_tests {
    use super::*;
    use etee_custody::audit::AuditHead;
    use etee_custody::wire::Error;
    use etee_custody::{ClientId, KeyId};

    fn record(time_ms: u64, op: Operation, outcome: Outcome) -> AuditRecord {
        AuditRecord {
            sequence: 0,
            time_ms,
            client: Some(ClientId::try_from("app").unwrap()),
            operation: op,
            key: Some(KeyId::try_from("etk").unwrap()),
            input_digest: [0; 32],
            outcome,
            prev_hash: AuditHead::GENESIS.hash,
        }
    }

    /// What the audit API shows of a decryption the token tried is `concluded`, whether it
    /// succeeded or the token refused the padding: no search by outcome tells them apart
    /// (an oracle on the ETK key); a decryption the core refused before the token (policy)
    /// or the token could not try (no session) is shown as refused, and the operator's
    /// own search (`matches`) still tells success from failure.
    #[test]
    fn the_api_shows_a_tried_decryption_as_concluded_only() {
        use etee_custody::token::{TokenError, TokenFunction};
        let token =
            |ckr| Outcome::Refused(Error::Token(TokenError::new(TokenFunction::Decrypt, ckr)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let outcomes = [
            Outcome::Admitted,
            Outcome::Success,
            Outcome::Admitted,
            token(ckr::GENERAL_ERROR),
            Outcome::Refused(Error::PolicyDenied),
            token(ckr::SESSION_HANDLE_INVALID),
        ];
        {
            use etee_custody::AuditSink;
            let (mut sink, head) = etee_custody::file_sink::FileAuditSink::open(&path).unwrap();
            let mut prev = head.hash;
            for (i, outcome) in outcomes.into_iter().enumerate() {
                let mut r = record(1_000 + i as u64, Operation::DecryptPkcs1v15, outcome);
                r.sequence = head.next_sequence + i as u64;
                r.prev_hash = prev;
                sink.append(&r).unwrap();
                prev = r.hash();
            }
        }
        let shown = |outcome: Option<AuditOutcome>| -> Vec<String> {
            let filter = AuditFilter {
                outcome,
                ..AuditFilter::default()
            };
            let export = audit_export(&path, 0, 100, &filter).unwrap();
            assert_eq!(export["intact"], true, "{export}");
            // No hash of the chain, from which the hidden outcomes could be recomputed.
            assert!(
                export.get("head").is_none() && export.get("anchor").is_none(),
                "{export}"
            );
            export["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["outcome"].as_str().unwrap().to_owned())
                .collect()
        };
        let all = shown(None);
        assert_eq!(all[..4], ["admitted", "concluded", "admitted", "concluded"]);
        assert!(all[4].starts_with("refused: refused by policy"), "{all:?}");
        assert!(all[5].starts_with("refused: "), "{all:?}");
        assert!(shown(Some(AuditOutcome::Success)).is_empty());
        assert_eq!(shown(Some(AuditOutcome::Refused)).len(), 2);
        assert_eq!(
            shown(Some(AuditOutcome::Concluded)),
            ["concluded", "concluded"]
        );

        // The operator's view of the same records.
        let success = record(1, Operation::DecryptPkcs1v15, Outcome::Success);
        let failed = record(1, Operation::DecryptPkcs1v15, token(ckr::GENERAL_ERROR));
        let wanted = |o| AuditFilter {
            outcome: Some(o),
            ..AuditFilter::default()
        };
        assert!(wanted(AuditOutcome::Success).matches(&success));
        assert!(!wanted(AuditOutcome::Success).matches(&failed));
        assert!(wanted(AuditOutcome::Refused).matches(&failed));
        assert!(wanted(AuditOutcome::Concluded).matches(&success));
        // Another operation's success is no decryption.
        let signed = record(1, Operation::SignPssSha256, Outcome::Success);
        assert!(!is_tried_decryption(&signed));
        assert!(wanted(AuditOutcome::Success).matches_as_shown(&signed));
    }

    #[test]
    fn every_criterion_must_hold() {
        let r = record(1_000, Operation::DecryptPkcs1v15, Outcome::Success);
        let with = |edit: &dyn Fn(&mut AuditFilter)| {
            let mut f = AuditFilter::default();
            edit(&mut f);
            f.matches(&r)
        };
        assert!(with(&|_| {}));
        assert!(with(&|f| f.since_ms = Some(1_000)), "since is inclusive");
        assert!(!with(&|f| f.since_ms = Some(1_001)));
        assert!(with(&|f| f.until_ms = Some(1_001)));
        assert!(!with(&|f| f.until_ms = Some(1_000)), "until is exclusive");
        assert!(with(&|f| f.client = Some(b"app".to_vec())));
        assert!(!with(&|f| f.client = Some(b"ap".to_vec())));
        assert!(with(&|f| f.key = Some(b"etk".to_vec())));
        assert!(!with(&|f| f.key = Some(b"auth".to_vec())));
        assert!(with(
            &|f| f.operations = vec![Operation::SignPssSha256, Operation::DecryptPkcs1v15]
        ));
        assert!(!with(&|f| f.operations = vec![Operation::SignPssSha256]));
        assert!(with(&|f| f.outcome = Some(AuditOutcome::Success)));
        assert!(!with(&|f| f.outcome = Some(AuditOutcome::Refused)));
        assert!(!with(&|f| {
            f.client = Some(b"app".to_vec());
            f.key = Some(b"auth".to_vec());
        }));
        let refused = record(
            5,
            Operation::SignPssSha256,
            Outcome::Refused(Error::PolicyDenied),
        );
        let refusals = AuditFilter {
            outcome: Some(AuditOutcome::Refused),
            ..AuditFilter::default()
        };
        assert!(refusals.matches(&refused) && !refusals.matches(&r));
        // A record without a client or key (an unlock) matches no client or key criterion.
        let mut unlock = record(5, Operation::Unlock, Outcome::Success);
        unlock.client = None;
        unlock.key = None;
        let by_client = AuditFilter {
            client: Some(b"app".to_vec()),
            ..AuditFilter::default()
        };
        assert!(!by_client.matches(&unlock));
        let unlocks = AuditFilter {
            operations: vec![operation_named("unlock").unwrap()],
            ..AuditFilter::default()
        };
        assert!(unlocks.matches(&unlock));
    }

    #[test]
    fn names_and_times() {
        for (name, op) in OPERATION_NAMES {
            assert_eq!(operation_named(name), Some(op));
        }
        assert_eq!(operation_named("Sign"), None);
        assert_eq!(AuditOutcome::named("refused"), Some(AuditOutcome::Refused));
        assert_eq!(AuditOutcome::named("failed"), None);
        assert_eq!(time_ms("1970-01-01T00:00:01.5Z"), Ok(1_500));
        assert_eq!(
            time_ms("2026-12-07T02:00:00+01:00"),
            time_ms("2026-12-07T01:00:00Z")
        );
        assert!(time_ms("yesterday").is_err());
        assert!(time_ms("1969-12-31T23:59:59Z")
            .unwrap_err()
            .contains("before 1970"));
        assert_eq!(record_time(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(record_time(u64::MAX), format!("{} ms", u64::MAX));
        let range = |s, u| AuditFilter::new(Some(s), Some(u), None, None, [], None);
        let (t5, t6) = ("1970-01-01T00:00:05Z", "1970-01-01T00:00:06Z");
        assert_eq!(range(t5, t5), Err(AuditFilterError::EmptyRange));
        assert_eq!(range(t6, t5), Err(AuditFilterError::EmptyRange));
        assert_eq!(
            range(t5, t6).map(|f| (f.since_ms, f.until_ms)),
            Ok((Some(5_000), Some(6_000)))
        );
        assert!(matches!(range("x", t5), Err(AuditFilterError::Since(_))));
        assert!(matches!(range(t5, "x"), Err(AuditFilterError::Until(_))));
        let ops = [Operation::Lock, Operation::Unlock, Operation::Lock];
        let f = AuditFilter::new(None, None, Some("app"), Some("etk"), ops, None).unwrap();
        assert_eq!(
            f.operations,
            [Operation::Lock, Operation::Unlock],
            "each once"
        );
        assert_eq!(
            (f.client.as_deref(), f.key.as_deref()),
            (Some(&b"app"[..]), Some(&b"etk"[..]))
        );
    }
}
