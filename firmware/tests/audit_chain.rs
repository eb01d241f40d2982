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

/// A core that has done a bit of everything: 16 records (a key use or a login that reaches
/// the token takes two: its admission, then its outcome).
fn busy_core() -> Core {
    let mut core = core();
    call(&mut core, &unlock(WRONG_PIN), 1); // 0 (admitted), 1
    call(&mut core, &unlock(PIN), 2); // 2 (admitted), 3
    call(&mut core, &sign(app(), auth(), [1; 32]), 3); // 4 (admitted), 5
    call(&mut core, &sign(other(), auth(), [2; 32]), 4); // 6 (denied)
    let blob = blob_for(&etk(), b"0123456789abcdef");
    call(&mut core, &decrypt(app(), etk(), &blob), 5); // 7 (admitted), 8
    call(&mut core, &decrypt(app(), etk(), &[0; 40]), 6); // 9 (admitted), 10 (fails)
    call(&mut core, &Request::Status, 7); // not recorded
    call(&mut core, &Request::AuditHead, 7); // not recorded
    call(&mut core, &sign(app(), etk(), [3; 32]), 8); // 11 (no rule to sign with an ETK key)
    call(&mut core, &Request::Lock, 9); // 12
    call(&mut core, &sign(app(), auth(), [4; 32]), 10); // 13 (locked)
    call(&mut core, &unlock(PIN), 11); // 14 (admitted), 15
    core
}

fn records(core: &Core) -> Vec<AuditRecord> {
    core.audit_sink().records().to_vec()
}

#[test]
fn the_chain_verifies_and_ends_at_the_core_head() {
    let core = busy_core();
    let recs = records(&core);
    assert_eq!(recs.len(), 16);
    let (count, head) = verify_chain(&recs).unwrap();
    assert_eq!(count, 16);
    assert_eq!(head, core.audit_head());
    assert_eq!(verify_chain_to(&recs, &core.audit_head()), Ok(16));
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
    let ops: Vec<(Operation, Outcome)> = recs.iter().map(|r| (r.operation, r.outcome)).collect();
    use Operation::*;
    use Outcome::*;
    let token_failure = recs[10].outcome;
    assert!(matches!(token_failure, Refused(Error::Token(_))));
    assert_eq!(
        ops,
        [
            (Unlock, Admitted),
            (Unlock, Refused(Error::PinIncorrect { tries_left: 4 })),
            (Unlock, Admitted),
            (Unlock, Success),
            (SignPssSha256, Admitted),
            (SignPssSha256, Success),
            (SignPssSha256, Refused(Error::PolicyDenied)),
            (DecryptPkcs1v15, Admitted),
            (DecryptPkcs1v15, Success),
            (DecryptPkcs1v15, Admitted),
            (DecryptPkcs1v15, token_failure),
            (SignPssSha256, Refused(Error::PolicyDenied)),
            (Lock, Success),
            (SignPssSha256, Refused(Error::Locked)),
            (Unlock, Admitted),
            (Unlock, Success),
        ]
    );
    // Each outcome names the use (or the login) it ends.
    for (admitted, outcome) in [(0, 1), (2, 3), (4, 5), (7, 8), (9, 10), (14, 15)] {
        assert!(recs[outcome].concludes(&recs[admitted]), "{outcome}");
        assert_eq!(recs[outcome].input_digest, recs[admitted].input_digest);
    }
    assert!(!recs[8].concludes(&recs[4]));
    assert!(!recs[6].concludes(&recs[4]), "a refusal of another client");
    assert!(recs.iter().enumerate().all(|(i, r)| r.sequence == i as u64));
    assert_eq!(recs[4].time_ms, 3);
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
    bad.swap(9, 10);
    assert_eq!(
        verify_chain(&bad),
        Err(ChainBreak {
            sequence: 9,
            reason: BreakReason::SequenceMismatch { found: 10 }
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
    assert!(verify_chain(&recs[..12]).is_ok());
    // ... which the anchored head exposes.
    assert_eq!(
        verify_chain_to(&recs[..12], &head),
        Err(ChainBreak {
            sequence: 12,
            reason: BreakReason::Truncated
        })
    );

    // Someone who rewrites a record and recomputes every later link gets a valid chain,
    // but not the anchored head.
    let mut forged = recs.clone();
    forged[10].outcome = Outcome::Success;
    for i in 11..forged.len() {
        forged[i].prev_hash = forged[i - 1].hash();
    }
    assert!(verify_chain(&forged).is_ok());
    assert_eq!(
        verify_chain_to(&forged, &head),
        Err(ChainBreak {
            sequence: 15,
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
    assert_eq!(v.count(), 12);
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
    assert_eq!(count, 16);
    let mut core = Custody::new(token, sink, policy(), head);
    call(&mut core, &unlock(PIN), 20);
    call(&mut core, &sign(app(), auth(), [5; 32]), 21);
    let recs = records(&core);
    assert_eq!(verify_chain_to(&recs, &core.audit_head()), Ok(20));
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
    // The head has not moved: the chain has no gap. And the token was not asked: no use
    // of a key without its use record.
    assert_eq!(core.audit_head(), head);
    assert!(!core
        .token()
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Sign(_) | Call::Decrypt(_))));

    core.audit_sink().set_failing(false);
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [1; 32]), 4),
        Response::Signature(_)
    ));
    let recs = records(&core);
    assert_eq!(verify_chain_to(&recs, &core.audit_head()), Ok(4));
}

#[test]
fn an_unlock_that_cannot_be_recorded_does_not_stand() {
    // No room for the try itself: the PIN does not reach the token.
    let mut core = core();
    core.audit_sink().set_failing(true);
    assert_eq!(
        call(&mut core, &unlock(PIN), 1),
        Response::Error(Error::AuditUnavailable)
    );
    assert_eq!(core.status().state, LockState::Locked);
    assert!(!core.token().is_logged_in());
    assert_eq!(core.token().calls(), []);

    // Room for the try, not for its outcome: the login is undone.
    let mut core: Custody<_, etee_custody::insecure::InsecureMemoryAuditSink<1>> = Custody::new(
        token(),
        etee_custody::insecure::InsecureMemoryAuditSink::new(),
        policy(),
        AuditHead::GENESIS,
    );
    let mut out = [0u8; etee_custody::config::MAX_RESPONSE_FRAME];
    let n = core.handle(&encode(&unlock(PIN)), 1, &mut out);
    assert_eq!(
        etee_custody::wire::decode_response(&out[..n]).unwrap(),
        Response::Error(Error::AuditUnavailable)
    );
    assert_eq!(core.status().state, LockState::Locked);
    assert!(!core.token().is_logged_in());
    assert_eq!(core.token().calls(), [Call::Login, Call::Logout]);
    let recs = core.audit_sink().records();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].operation, recs[0].outcome),
        (Operation::Unlock, Outcome::Admitted)
    );
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
    // Room for the unlock (2 records), one whole use (2) and one more use record.
    let mut core: Custody<_, etee_custody::insecure::InsecureMemoryAuditSink<5>> = Custody::new(
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
    // The use record fits, its outcome does not: the signature is withheld (the use
    // record shows the key was used).
    assert_eq!(
        send(&mut core, &sign(app(), auth(), [1; 32])),
        Response::Error(Error::AuditUnavailable)
    );
    assert_eq!(core.audit_sink().records().len(), 5);
    assert_eq!(core.audit_sink().records()[4].outcome, Outcome::Admitted);
    // No room for a use record: the token is not asked.
    let before = core.token().key_uses();
    assert_eq!(
        send(&mut core, &sign(app(), auth(), [2; 32])),
        Response::Error(Error::AuditUnavailable)
    );
    assert_eq!(core.token().key_uses(), before);
}

/// An anchor is `NEXT_SEQUENCE:HASH` and reads back as the same head; anything else is
/// refused.
#[test]
fn anchors_read_back_as_their_head() {
    use etee_custody::AuditHead;
    let head = AuditHead {
        next_sequence: 1042,
        hash: core::array::from_fn(|i| i as u8 * 7),
    };
    let text = head.anchor().to_string();
    assert_eq!(
        text,
        "1042:00070e151c232a31383f464d545b626970777e858c939aa1a8afb6bdc4cbd2d9"
    );
    assert_eq!(AuditHead::from_anchor(&text), Some(head));
    assert_eq!(
        AuditHead::from_anchor(&format!(" {} ", text.to_uppercase())),
        Some(head)
    );
    assert_eq!(
        AuditHead::GENESIS.anchor().to_string(),
        format!("0:{}", "0".repeat(64))
    );
    for bad in [
        "",
        "1042",
        ":00",
        "x:00070e151c232a31383f464d545b626970777e858c939aa1a8afb6bdc4cbd2d9",
        "1042:00070e151c232a31383f464d545b626970777e858c939aa1a8afb6bdc4cbd2d",
        "1042:00070e151c232a31383f464d545b626970777e858c939aa1a8afb6bdc4cbd2d9aa",
        "1042:zz070e151c232a31383f464d545b626970777e858c939aa1a8afb6bdc4cbd2d9",
        "1042:12:nothex",
    ] {
        assert_eq!(AuditHead::from_anchor(bad), None, "{bad:?}");
    }
}
