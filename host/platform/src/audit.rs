//! The platform's audit trail: every KGSS key creation, read (granted or denied) and
//! deletion, every KeyDepot registration, change and deletion, and the administrative
//! commands (ETK registrations, attribute registry changes), appended to the hash
//! chain in the store (`etee_store::audit`) and mirrored as an `etee::audit` log event.
//! `etee platform audit` walks and verifies the chain.
//!
//! The services record before they act (a read's key is released, a deletion happens, only
//! once its event is stored) or, for creations, right after the commit, so that an event
//! never names something that was not stored. Events never carry key material.

use etee_formats::identity::Identity;
use etee_store::{AuditEvent, Store};

/// Appends one event; `subject` is what it is about (a key id).
pub fn record(
    store: &dyn Store,
    at: i64,
    action: &str,
    actor: &Identity,
    subject: String,
    outcome: &str,
    detail: Option<String>,
) -> Result<u64, etee_store::Error> {
    let actor = actor.to_string();
    append(store, &event(at, action, &actor, subject, outcome, detail))
}

/// The event [`record`] appends (`actor` an identity's text), for a caller that appends it
/// together with something else in one store transaction (KGSS GetKey's replay check);
/// then [`log`] it.
pub fn event(
    at: i64,
    action: &str,
    actor: &str,
    subject: String,
    outcome: &str,
    detail: Option<String>,
) -> AuditEvent {
    AuditEvent {
        at,
        action: action.into(),
        actor: actor.into(),
        subject,
        outcome: outcome.into(),
        detail,
    }
}

/// Appends `event` and mirrors it in the log.
fn append(store: &dyn Store, event: &AuditEvent) -> Result<u64, etee_store::Error> {
    let sequence = store.append_event(event)?;
    log(sequence, event);
    Ok(sequence)
}

/// The `etee::audit` log line mirroring an appended event.
pub fn log(sequence: u64, event: &AuditEvent) {
    tracing::info!(
        target: "etee::audit",
        sequence,
        action = event.action.as_str(),
        subject = %event.subject,
        actor = %event.actor,
        outcome = event.outcome.as_str(),
        detail = event.detail.as_deref().unwrap_or(""),
        "audit"
    );
}
