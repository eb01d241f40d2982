//! The platform's audit log: who created, read (or was refused) and deleted which KGSS key,
//! kept in the store beside the keys, as a hash chain.
//!
//! Each stored event carries `hash = SHA-256(previous hash ‖ sequence (u64 BE) ‖ event JSON)`,
//! the first one chaining to 32 zero bytes. Sequences start at 1 and have no gaps; both
//! backends append under a write lock (redb's single writer; a `FOR UPDATE` on the chain head
//! in PostgreSQL, so instances sharing a database append one at a time). [`verify`] walks a
//! listing and reports the first break: an edited, removed or reordered event shows.
//!
//! Events never carry key material: key ids, holders, decisions.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub at: i64,
    /// What happened, e.g. `kgss.create`, `kgss.read`, `kgss.delete`.
    pub action: String,
    /// Who asked: the caller's identifier, `TYPE=VALUE` (then ` (APPLICATION)` if any).
    pub actor: String,
    /// What it was about (a KGSS key id in hex).
    pub subject: String,
    /// `granted`, `denied`, `created`, `deleted`, ...
    pub outcome: String,
    /// Anything else worth keeping (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An event as stored: its place in the chain and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub sequence: u64,
    pub event: AuditEvent,
    pub hash: [u8; 32],
}

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The canonical bytes of an event (serde_json of the struct: fixed field order).
pub fn event_bytes(event: &AuditEvent) -> Vec<u8> {
    // Serialising a struct of strings and integers cannot fail.
    serde_json::to_vec(event).unwrap_or_default()
}

/// The hash of event `sequence` after `previous`.
pub fn chain_hash(previous: &[u8; 32], sequence: u64, event_json: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(sequence.to_be_bytes());
    h.update(event_json);
    h.finalize().into()
}

/// Where a listing stops being a chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("event {found} follows event {expected_after}: a gap or a reordering")]
    Sequence { expected_after: u64, found: u64 },
    #[error("event {0} does not match its hash: edited, or an earlier event was removed")]
    Hash(u64),
}

/// Verifies `events` (in order) as the continuation of a chain at (`after`, `previous`):
/// `(0, GENESIS)` for a full listing. Returns the last sequence and hash.
pub fn verify(
    after: u64,
    previous: [u8; 32],
    events: &[StoredEvent],
) -> Result<(u64, [u8; 32]), ChainBreak> {
    let (mut seq, mut hash) = (after, previous);
    for e in events {
        if e.sequence != seq + 1 {
            return Err(ChainBreak::Sequence {
                expected_after: seq,
                found: e.sequence,
            });
        }
        if chain_hash(&hash, e.sequence, &event_bytes(&e.event)) != e.hash {
            return Err(ChainBreak::Hash(e.sequence));
        }
        (seq, hash) = (e.sequence, e.hash);
    }
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u8) -> AuditEvent {
        AuditEvent {
            at: 1_700_000_000 + i64::from(n),
            action: "kgss.read".into(),
            actor: "NIHII-PHARMACY=27150201".into(),
            subject: hex::encode([n; 16]),
            outcome: "granted".into(),
            detail: None,
        }
    }

    fn chain(n: u8) -> Vec<StoredEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|i| {
                let event = event(i);
                let hash = chain_hash(&prev, u64::from(i), &event_bytes(&event));
                prev = hash;
                StoredEvent {
                    sequence: u64::from(i),
                    event,
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn a_chain_verifies_and_every_change_shows() {
        let good = chain(4);
        assert_eq!(verify(0, GENESIS, &good).unwrap(), (4, good[3].hash));
        // Continuing from a known head.
        assert_eq!(verify(2, good[1].hash, &good[2..]).unwrap().0, 4);

        let mut edited = good.clone();
        edited[1].event.outcome = "denied".into();
        assert_eq!(verify(0, GENESIS, &edited), Err(ChainBreak::Hash(2)));

        let mut removed = good.clone();
        removed.remove(1);
        assert_eq!(
            verify(0, GENESIS, &removed),
            Err(ChainBreak::Sequence {
                expected_after: 1,
                found: 3
            })
        );

        let mut renumbered = removed;
        renumbered[1].sequence = 2;
        renumbered[2].sequence = 3;
        assert_eq!(verify(0, GENESIS, &renumbered), Err(ChainBreak::Hash(2)));
    }
}
