//! What the API (and `etee unseal --json`) says about an unsealed message and about the
//! custody core's audit records: JSON for machines, the official notification names.

use etee_custody::audit::{AuditRecord, Outcome};
use etee_custody::file_sink::{scan, FileSinkError};
use etee_formats::cms::unseal::OpenedWith;
use etee_formats::cms::Unsealed;
use serde_json::{json, Value};
use std::path::Path;

/// RFC 3339 for unix seconds (the number itself if out of range).
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

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
        "opened_with": r.opened_with.as_ref().map(|o| match o {
            OpenedWith::Key(k) => format!("key:{k}"),
            OpenedWith::Kek => "kek".to_string(),
        }),
    })
}

/// One custody audit record as an operator reads it.
pub fn audit_record(r: &AuditRecord) -> Value {
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    let outcome = match r.outcome {
        Outcome::Success => "success".to_string(),
        Outcome::Refused(e) => format!("refused: {e}"),
        Outcome::Admitted => "admitted".to_string(),
    };
    json!({
        "sequence": r.sequence,
        "time_ms": r.time_ms,
        "client": text(r.client.as_ref().map(|c| c.as_bytes())),
        "operation": format!("{:?}", r.operation),
        "key": text(r.key.as_ref().map(|k| k.as_bytes())),
        "input_sha256": hex::encode(r.input_digest),
        "outcome": outcome,
    })
}

/// The audit chain at `path` from record `from` (a sequence number), at most `limit`
/// records, with the result of verifying the whole chain: `{"intact", "records", "head",
/// "anchor", "torn_tail", "entries"}` (or `{"intact": false, "break", "entries"}`).
pub fn audit_export(path: &Path, from: u64, limit: usize) -> Result<Value, FileSinkError> {
    let mut out = Vec::new();
    let scanned = scan(path, |r| {
        if r.sequence >= from && out.len() < limit {
            out.push(audit_record(r));
        }
    });
    Ok(match scanned {
        Ok(s) => json!({
            "intact": true,
            "records": s.count,
            "segments": s.segments,
            "first_sequence": s.first_sequence,
            "head": hex::encode(s.head.hash),
            "anchor": s.head.anchor().to_string(),
            "torn_tail": s.torn_tail,
            "unconcluded": s.unconcluded,
            "entries": out,
        }),
        Err(FileSinkError::Io(e)) => return Err(FileSinkError::Io(e)),
        Err(e) => json!({
            "intact": false,
            "break": e.to_string(),
            "entries": out,
        }),
    })
}
