//! Unlock, lock and the wrong-PIN counter.

mod common;
use common::*;

use etee_custody::audit::{Operation, Outcome};
use etee_custody::config::{MAX_PIN_ATTEMPTS, MAX_PIN_LEN};
use etee_custody::insecure::Call;
use etee_custody::lock::LockState;
use etee_custody::token::{ckr, TokenError, TokenFunction};
use etee_custody::wire::{request_id, Error, Request, Response, StatusReply};

fn status(core: &mut Core) -> StatusReply {
    match call(core, &Request::Status, 0) {
        Response::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

fn logins(core: &Core) -> usize {
    core.token()
        .calls()
        .iter()
        .filter(|c| **c == Call::Login)
        .count()
}

#[test]
fn starts_locked_and_unlocks_with_the_pin() {
    let mut core = core();
    assert_eq!(
        status(&mut core),
        StatusReply {
            state: LockState::Locked,
            pin_tries_left: MAX_PIN_ATTEMPTS
        }
    );
    assert_eq!(call(&mut core, &unlock(PIN), 1), Response::Unlocked);
    assert!(core.token().is_logged_in());
    assert_eq!(status(&mut core).state, LockState::Unlocked);
}

#[test]
fn wrong_pins_count_down_then_lock_out() {
    let mut core = core();
    for left in (0..MAX_PIN_ATTEMPTS).rev() {
        assert_eq!(
            call(&mut core, &unlock(WRONG_PIN), 1),
            Response::Error(Error::PinIncorrect { tries_left: left })
        );
        assert_eq!(status(&mut core).pin_tries_left, left);
    }
    assert_eq!(status(&mut core).state, LockState::LockedOut);
    assert_eq!(logins(&core), MAX_PIN_ATTEMPTS as usize);

    // Now even the right PIN is not passed to the token.
    assert_eq!(
        call(&mut core, &unlock(PIN), 2),
        Response::Error(Error::PinLockedOut)
    );
    assert_eq!(
        call(&mut core, &unlock(WRONG_PIN), 3),
        Response::Error(Error::PinLockedOut)
    );
    assert_eq!(logins(&core), MAX_PIN_ATTEMPTS as usize);
    assert!(!core.token().is_logged_in());
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(last.operation, Operation::Unlock);
    assert_eq!(last.outcome, Outcome::Refused(Error::PinLockedOut));

    // Until the administrator resets the counter (on record).
    core.reset_pin_counter(4).unwrap();
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(last.operation, Operation::PinReset);
    assert_eq!(
        status(&mut core),
        StatusReply {
            state: LockState::Locked,
            pin_tries_left: MAX_PIN_ATTEMPTS
        }
    );
    assert_eq!(call(&mut core, &unlock(PIN), 5), Response::Unlocked);
}

#[test]
fn a_right_pin_resets_the_count() {
    let mut core = core();
    for _ in 0..MAX_PIN_ATTEMPTS - 1 {
        call(&mut core, &unlock(WRONG_PIN), 1);
    }
    assert_eq!(call(&mut core, &unlock(PIN), 2), Response::Unlocked);
    assert_eq!(status(&mut core).pin_tries_left, MAX_PIN_ATTEMPTS);
    assert_eq!(call(&mut core, &Request::Lock, 3), Response::Locked);
    assert_eq!(
        call(&mut core, &unlock(WRONG_PIN), 4),
        Response::Error(Error::PinIncorrect {
            tries_left: MAX_PIN_ATTEMPTS - 1
        })
    );
}

#[test]
fn other_login_failures_count_too_and_keep_their_code() {
    let mut core = core();
    let e = TokenError::new(TokenFunction::Login, ckr::DEVICE_ERROR);
    core.token().fail_next(e);
    assert_eq!(
        call(&mut core, &unlock(PIN), 1),
        Response::Error(Error::Token(e))
    );
    assert_eq!(status(&mut core).pin_tries_left, MAX_PIN_ATTEMPTS - 1);
}

#[test]
fn unlocking_an_unlocked_core_does_not_try_the_pin() {
    let mut core = unlocked();
    let before = logins(&core);
    assert_eq!(call(&mut core, &unlock(WRONG_PIN), 1), Response::Unlocked);
    assert_eq!(logins(&core), before);
    assert_eq!(status(&mut core).pin_tries_left, MAX_PIN_ATTEMPTS);
}

#[test]
fn lock_logs_out() {
    let mut core = unlocked();
    assert_eq!(call(&mut core, &Request::Lock, 1), Response::Locked);
    assert_eq!(core.token().calls().last(), Some(&Call::Logout));
    assert_eq!(status(&mut core).state, LockState::Locked);
    // Locking a locked core is harmless and does not reach the token.
    let n = core.token().calls_total();
    assert_eq!(call(&mut core, &Request::Lock, 2), Response::Locked);
    assert_eq!(core.token().calls_total(), n);
}

#[test]
fn an_overlong_pin_is_a_bad_frame_and_is_never_tried() {
    let mut core = core();
    let mut frame = vec![0, 2, request_id::UNLOCK, (MAX_PIN_LEN + 1) as u8];
    frame.extend(std::iter::repeat_n(b'1', MAX_PIN_LEN + 1));
    assert_eq!(
        etee_custody::wire::decode_response(&call_raw(&mut core, &frame, 1)).unwrap(),
        Response::Error(Error::BadFrame)
    );
    assert_eq!(logins(&core), 0);
    assert_eq!(status(&mut core).pin_tries_left, MAX_PIN_ATTEMPTS);
    assert!(core.audit_sink().records().is_empty());
}

/// The security officer setting the user PIN (`etee hsm init-pin`) ends a lock-out, on
/// record, and a restart that recounts the chain agrees.
#[test]
fn the_officer_setting_the_user_pin_ends_a_lock_out_on_record() {
    use etee_custody::audit::PinHistory;
    let mut core = core();
    for t in 0..MAX_PIN_ATTEMPTS {
        call(&mut core, &unlock(WRONG_PIN), u64::from(t));
    }
    assert_eq!(status(&mut core).state, LockState::LockedOut);
    let recount = |core: &Core| {
        let mut h = PinHistory::new();
        core.audit_sink()
            .records()
            .iter()
            .for_each(|r| h.observe(r));
        h.failures()
    };
    assert_eq!(recount(&core), MAX_PIN_ATTEMPTS);

    core.user_pin_set(10).unwrap();
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(last.operation, Operation::UserPinSet);
    assert_eq!(last.outcome, Outcome::Success);
    assert_eq!(last.client, None);
    assert_eq!(
        status(&mut core),
        StatusReply {
            state: LockState::Locked,
            pin_tries_left: MAX_PIN_ATTEMPTS
        }
    );
    assert_eq!(recount(&core), 0);
    assert_eq!(call(&mut core, &unlock(PIN), 11), Response::Unlocked);
    // Appended after the others: the postcard index on the chain is 7.
    let mut buf = [0u8; 4];
    assert_eq!(
        postcard::to_slice(&Operation::UserPinSet, &mut buf).unwrap(),
        &[7]
    );
}

/// What a restart counts: the chain recounted with `PinHistory`.
fn recounted(records: &[etee_custody::AuditRecord]) -> u8 {
    let mut h = etee_custody::audit::PinHistory::new();
    records.iter().for_each(|r| h.observe(r));
    h.failures()
}

/// A login try is on record before the PIN reaches the token, and counts as a failure
/// until its outcome says otherwise: a try whose outcome never made it to the chain (a
/// crash, a full disk) is not a free guess after a restart.
#[test]
fn a_try_without_its_outcome_counts_after_a_restart() {
    let mut core = core();
    assert!(matches!(
        call(&mut core, &unlock(WRONG_PIN), 1),
        Response::Error(Error::PinIncorrect { .. })
    ));
    let records = core.audit_sink().records().to_vec();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].operation, records[0].outcome),
        (Operation::Unlock, Outcome::Admitted)
    );
    // Counted once, not at the try and again at its outcome.
    assert_eq!(recounted(&records), 1);
    // The outcome lost: the try still counts.
    assert_eq!(recounted(&records[..1]), 1);
    // A right PIN: its try, then its success, end the run.
    assert_eq!(call(&mut core, &unlock(PIN), 2), Response::Unlocked);
    let records = core.audit_sink().records().to_vec();
    assert_eq!(records.len(), 4);
    assert_eq!(recounted(&records), 0);
    assert_eq!(
        recounted(&records[..3]),
        2,
        "a try cut off after one failure"
    );
}

/// A login that fails before the PIN reaches the token (no session, say) is no guess: not
/// counted, in the core or by a restart.
#[test]
fn a_login_that_never_reached_the_token_is_not_counted() {
    let mut core = core();
    let e = TokenError::new(TokenFunction::OpenSession, ckr::DEVICE_ERROR);
    core.token().fail_next(e);
    assert_eq!(
        call(&mut core, &unlock(PIN), 1),
        Response::Error(Error::Token(e))
    );
    assert_eq!(status(&mut core).pin_tries_left, MAX_PIN_ATTEMPTS);
    assert_eq!(recounted(core.audit_sink().records()), 0);
}

/// A segment's checkpoint keeps a try whose outcome is still to come, so that the outcome,
/// at the start of the next segment, is not counted a second time.
#[test]
fn the_checkpoint_byte_keeps_a_pending_try() {
    use etee_custody::audit::PinHistory;
    let mut core = core();
    call(&mut core, &unlock(WRONG_PIN), 1);
    call(&mut core, &unlock(WRONG_PIN), 2);
    let records = core.audit_sink().records().to_vec();
    assert_eq!(records.len(), 4);
    // A checkpoint after the second try, before its outcome.
    let mut before = PinHistory::new();
    records[..3].iter().for_each(|r| before.observe(r));
    let mut after = PinHistory::continuing(before.checkpoint_byte());
    after.observe(&records[3]);
    assert_eq!(after.failures(), 2);
    assert_eq!(PinHistory::continuing(2).checkpoint_byte(), 2);
    assert_eq!(PinHistory::continuing(0x85).failures(), 5);
}
