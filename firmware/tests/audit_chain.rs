//! The audit hash chain: it verifies, breaks are found at the right record, and the core
//! withholds results it cannot record.

mod common;
use common::*;

use etee_custody::audit::{
    verify_chain, verify_chain_to, AuditHead, AuditRecord, BreakReason, ChainBreak, ChainVerifier,
    Operation, Outcome,
};
use etee_custody::insecure::Call;
use etee_custody::lock::LockState;
use etee_custody::wire::{Error, Request, Response};
use etee_custody::Custody;

/// A core that has done a bit of everything: 10 records.
fn busy_core() -> Core {
    let mut core = core();
    call(&mut core, &unlock(WRONG_PIN), 1); // 0
    call(&mut core, &unlock(PIN), 2); // 1
    call(&mut core, &sign(app(), auth(), [1; 32]), 3); // 2
    call(&mut core, &sign(other(), auth(), [2; 32]), 4); // 3 (denied)
    let blob = blob_for(&etk(), b"0123456789abcdef");
    call(&mut core, &decrypt(app(), etk(), &blob), 5); // 4
    call(&mut core, &decrypt(app(), etk(), &[0; 40]), 6); // 5 (fails)
    call(&mut core, &Request::Status, 7); // not recorded
    call(&mut core, &Request::AuditHead, 7); // not recorded
    call(&mut core, &sign(app(), etk(), [3; 32]), 8); // 6 (wrong kind)
    call(&mut core, &Request::Lock, 9); // 7
    call(&mut core, &sign(app(), auth(), [4; 32]), 10); // 8 (locked)
    call(&mut core, &unlock(PIN), 11); // 9
    core
}

fn records(core: &Core) -> Vec<AuditRecord> {
    core.audit_sink().records().to_vec()
}

#[test]
fn the_chain_verifies_and_ends_at_the_core_head() {
    let core = busy_core();
    let recs = records(&core);
    assert_eq!(recs.len(), 10);
    let (count, head) = verify_chain(&recs).unwrap();
    assert_eq!(count, 10);
    assert_eq!(head, core.audit_head());
    assert_eq!(verify_chain_to(&recs, &core.audit_head()), Ok(10));
    assert_eq!(
        verify_chain(std::iter::empty::<AuditRecord>()),
        Ok((0, AuditHead::GENESIS))
    );

    let mut core = core;
    assert_eq!(
        call(&mut core, &Request::AuditHead, 12),
        Response::AuditHead(head)
    );

    // What each record says.
    let ops: Vec<Operation> = recs.iter().map(|r| r.operation).collect();
    use Operation::*;
    assert_eq!(
        ops,
        [
            Unlock,
            Unlock,
            SignPssSha256,
            SignPssSha256,
            DecryptPkcs1v15,
            DecryptPkcs1v15,
            SignPssSha256,
            Lock,
            SignPssSha256,
            Unlock
        ]
    );
    assert_eq!(recs[3].outcome, Outcome::Refused(Error::PolicyDenied));
    assert_eq!(recs[8].outcome, Outcome::Refused(Error::Locked));
    assert!(recs.iter().enumerate().all(|(i, r)| r.sequence == i as u64));
    assert_eq!(recs[2].time_ms, 3);
    // Unlocks record neither a client nor anything derived from the PIN.
    for r in recs.iter().filter(|r| r.operation == Unlock) {
        assert_eq!(r.client, None);
        assert_eq!(r.key, None);
        assert_eq!(r.input_digest, [0; 32]);
    }
}

#[test]
fn an_altered_record_is_found_at_its_sequence() {
    let recs = records(&busy_core());
    for k in 0..recs.len() - 1 {
        let mut bad = recs.clone();
        bad[k].outcome = Outcome::Success; // e.g. hide a refusal
        bad[k].time_ms += 1;
        assert_eq!(
            verify_chain(&bad),
            Err(ChainBreak {
                sequence: k as u64,
                reason: BreakReason::Altered
            }),
            "record {k}"
        );
    }
    // The last record has no successor: only the anchored head shows it.
    let mut bad = recs.clone();
    let last = bad.len() - 1;
    bad[last].client = Some(client("mallory"));
    let head = verify_chain(&recs).unwrap().1;
    assert!(verify_chain(&bad).is_ok());
    assert_eq!(
        verify_chain_to(&bad, &head),
        Err(ChainBreak {
            sequence: last as u64,
            reason: BreakReason::Altered
        })
    );
}

#[test]
fn a_missing_record_is_found() {
    let recs = records(&busy_core());
    let mut bad = recs.clone();
    bad.remove(4);
    assert_eq!(
        verify_chain(&bad),
        Err(ChainBreak {
            sequence: 4,
            reason: BreakReason::SequenceMismatch { found: 5 }
        })
    );
    // Missing and renumbered: the links give it away.
    let mut bad = recs.clone();
    bad.remove(4);
    for r in &mut bad[4..] {
        r.sequence -= 1;
    }
    assert_eq!(
        verify_chain(&bad),
        Err(ChainBreak {
            sequence: 3,
            reason: BreakReason::Altered
        })
    );
}

#[test]
fn reordered_and_duplicated_records_are_found() {
    let recs = records(&busy_core());
    let mut bad = recs.clone();
    bad.swap(6, 7);
    assert_eq!(
        verify_chain(&bad),
        Err(ChainBreak {
            sequence: 6,
            reason: BreakReason::SequenceMismatch { found: 7 }
        })
    );
    let mut bad = recs.clone();
    bad.insert(3, recs[2].clone());
    assert_eq!(
        verify_chain(&bad),
        Err(ChainBreak {
            sequence: 3,
            reason: BreakReason::SequenceMismatch { found: 2 }
        })
    );
}

#[test]
fn a_first_record_that_does_not_start_the_chain_is_found() {
    let mut recs = records(&busy_core());
    recs[0].prev_hash[0] ^= 1;
    assert_eq!(
        verify_chain(&recs),
        Err(ChainBreak {
            sequence: 0,
            reason: BreakReason::Unlinked
        })
    );
}

#[test]
fn truncation_and_rewrites_need_the_anchor() {
    let recs = records(&busy_core());
    let head = verify_chain(&recs).unwrap().1;

    // Dropping the tail leaves a valid, shorter chain ...
    assert!(verify_chain(&recs[..7]).is_ok());
    // ... which the anchored head exposes.
    assert_eq!(
        verify_chain_to(&recs[..7], &head),
        Err(ChainBreak {
            sequence: 7,
            reason: BreakReason::Truncated
        })
    );

    // Someone who rewrites a record and recomputes every later link gets a valid chain,
    // but not the anchored head.
    let mut forged = recs.clone();
    forged[5].outcome = Outcome::Success;
    for i in 6..forged.len() {
        forged[i].prev_hash = forged[i - 1].hash();
    }
    assert!(verify_chain(&forged).is_ok());
    assert_eq!(
        verify_chain_to(&forged, &head),
        Err(ChainBreak {
            sequence: 9,
            reason: BreakReason::Altered
        })
    );

    // Records past the anchor.
    let earlier = verify_chain(&recs[..5]).unwrap().1;
    assert_eq!(
        verify_chain_to(&recs, &earlier),
        Err(ChainBreak {
            sequence: 5,
            reason: BreakReason::BeyondHead
        })
    );
}

#[test]
fn segments_verify_from_a_checkpoint() {
    let recs = records(&busy_core());
    let checkpoint = verify_chain(&recs[..4]).unwrap().1;
    let mut v = ChainVerifier::new(checkpoint);
    for r in &recs[4..] {
        v.push(r).unwrap();
    }
    assert_eq!(v.count(), 6);
    assert_eq!(v.head(), verify_chain(&recs).unwrap().1);
    // The wrong checkpoint.
    let mut v = ChainVerifier::new(verify_chain(&recs[..3]).unwrap().1);
    assert_eq!(
        v.push(&recs[3]).and_then(|()| v.push(&recs[5])),
        Err(ChainBreak {
            sequence: 4,
            reason: BreakReason::SequenceMismatch { found: 5 }
        })
    );
}

#[test]
fn the_chain_continues_across_restarts() {
    let core = busy_core();
    let (token, sink) = core.into_parts();
    let (count, head) = verify_chain(sink.records()).unwrap();
    assert_eq!(count, 10);
    let mut core = Custody::new(token, sink, policy(), head);
    call(&mut core, &unlock(PIN), 20);
    call(&mut core, &sign(app(), auth(), [5; 32]), 21);
    let recs = records(&core);
    assert_eq!(verify_chain_to(&recs, &core.audit_head()), Ok(12));
}

#[test]
fn records_round_trip_and_their_hash_is_pinned() {
    let record = AuditRecord {
        sequence: 7,
        time_ms: 1_700_000_000_000,
        client: Some(app()),
        operation: Operation::SignPssSha256,
        key: Some(auth()),
        input_digest: [0x11; 32],
        outcome: Outcome::Refused(Error::PolicyDenied),
        prev_hash: [0x22; 32],
    };
    let mut buf = [0u8; etee_custody::config::MAX_AUDIT_RECORD_LEN];
    let bytes = record.encode(&mut buf).unwrap().to_vec();
    assert_eq!(AuditRecord::decode(&bytes), Some(record.clone()));
    assert_eq!(AuditRecord::decode(&bytes[..bytes.len() - 1]), None);

    // hash = SHA-256(prev_hash ‖ the encoding without its trailing prev_hash).
    use sha2::{Digest, Sha256};
    let fields = &bytes[..bytes.len() - 32];
    let expected: [u8; 32] = Sha256::new()
        .chain_update(record.prev_hash)
        .chain_update(fields)
        .finalize()
        .into();
    assert_eq!(record.hash(), expected);
    // Old logs must keep verifying: the record format is pinned.
    assert_eq!(hex(&record.hash()), PINNED_HASH);
}

/// Computed independently (Python: hashlib over the hand-written postcard bytes).
const PINNED_HASH: &str = "f22d8613e152628a4dcd80e888d94695d20d71f64387b45bb645bb08e91b090e";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --- Fail closed --------------------------------------------------------------------------

#[test]
fn a_result_that_cannot_be_recorded_is_withheld() {
    let mut core = unlocked();
    let head = core.audit_head();
    core.audit_sink().set_failing(true);

    assert_eq!(
        call(&mut core, &sign(app(), auth(), [1; 32]), 1),
        Response::Error(Error::AuditUnavailable)
    );
    let blob = blob_for(&etk(), b"0123456789abcdef");
    assert_eq!(
        call(&mut core, &decrypt(app(), etk(), &blob), 2),
        Response::Error(Error::AuditUnavailable)
    );
    // Refusals too: nothing is answered off the record.
    assert_eq!(
        call(&mut core, &sign(other(), auth(), [1; 32]), 3),
        Response::Error(Error::AuditUnavailable)
    );
    // The head has not moved: the chain has no gap.
    assert_eq!(core.audit_head(), head);

    core.audit_sink().set_failing(false);
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [1; 32]), 4),
        Response::Signature(_)
    ));
    let recs = records(&core);
    assert_eq!(verify_chain_to(&recs, &core.audit_head()), Ok(2));
}

#[test]
fn an_unlock_that_cannot_be_recorded_does_not_stand() {
    let mut core = core();
    core.audit_sink().set_failing(true);
    assert_eq!(
        call(&mut core, &unlock(PIN), 1),
        Response::Error(Error::AuditUnavailable)
    );
    assert_eq!(core.status().state, LockState::Locked);
    assert!(!core.token().is_logged_in());
    assert_eq!(core.token().calls(), [Call::Login, Call::Logout]);
}

#[test]
fn a_lock_that_cannot_be_recorded_still_locks() {
    let mut core = unlocked();
    core.audit_sink().set_failing(true);
    assert_eq!(
        call(&mut core, &Request::Lock, 1),
        Response::Error(Error::AuditUnavailable)
    );
    assert_eq!(core.status().state, LockState::Locked);
    assert!(!core.token().is_logged_in());
}

#[test]
fn a_full_sink_fails_closed() {
    let mut core: Custody<_, etee_custody::insecure::InsecureMemoryAuditSink<2>> = Custody::new(
        token(),
        etee_custody::insecure::InsecureMemoryAuditSink::new(),
        policy(),
        AuditHead::GENESIS,
    );
    let mut out = [0u8; etee_custody::config::MAX_RESPONSE_FRAME];
    let mut send = |core: &mut Custody<_, _>, r: &Request| {
        let n = core.handle(&encode(r), 0, &mut out);
        etee_custody::wire::decode_response(&out[..n]).unwrap()
    };
    assert_eq!(send(&mut core, &unlock(PIN)), Response::Unlocked);
    assert!(matches!(
        send(&mut core, &sign(app(), auth(), [0; 32])),
        Response::Signature(_)
    ));
    assert_eq!(
        send(&mut core, &sign(app(), auth(), [0; 32])),
        Response::Error(Error::AuditUnavailable)
    );
}
