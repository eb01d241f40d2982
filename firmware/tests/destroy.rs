//! An administrator's key destruction through the core: refused while locked, on the chain
//! before the token is asked (not asked at all if that cannot be recorded), the outcome
//! after, and the key gone for every later request.

mod common;
use common::*;

use etee_custody::audit::{verify_chain_to, Operation, Outcome};
use etee_custody::insecure::Call;
use etee_custody::token::{ckr, TokenFunction};
use etee_custody::wire::{Error, Request, Response};
use etee_custody::DestroyError;

fn sign_with_auth(core: &mut Core, now: u64) -> Response {
    let request = Request::SignPssSha256 {
        client: app(),
        key: auth(),
        digest: [7; 32],
    };
    call(core, &request, now)
}

#[test]
fn a_destroyed_key_is_on_record_and_gone() {
    let mut core = unlocked();
    assert!(matches!(
        sign_with_auth(&mut core, 1),
        Response::Signature(_)
    ));
    let before = core.audit_sink().records().len();

    assert_eq!(core.destroy_key(&auth(), 2), Ok(1));
    let records = &core.audit_sink().records()[before..];
    assert_eq!(records.len(), 2);
    let (used, outcome) = (&records[0], &records[1]);
    assert_eq!(used.operation, Operation::KeyDestroy);
    assert_eq!(used.outcome, Outcome::Admitted);
    assert_eq!(used.key, Some(auth()));
    assert_eq!(used.client, None);
    assert_eq!(outcome.outcome, Outcome::Success);
    assert!(outcome.concludes(used));
    assert_eq!(core.token().calls().last(), Some(&Call::Destroy(auth())));

    // The key is gone for the core too: no token call for it any more.
    let calls = core.token().calls_total();
    assert_eq!(
        sign_with_auth(&mut core, 3),
        Response::Error(Error::UnknownKey)
    );
    assert_eq!(core.token().calls_total(), calls);
    // The other keys are still there.
    use etee_custody::Token;
    assert!(core.token().key_kind(&auth()).is_none());
    assert!(core.token().key_kind(&etk()).is_some());
    assert!(core.token().key_kind(&kgss()).is_some());
    let head = core.audit_head();
    assert_eq!(
        verify_chain_to(core.audit_sink().records(), &head),
        Ok(core.audit_sink().records().len() as u64)
    );

    // Destroying it again: the token says there is no such key, on record as well.
    let e = core.destroy_key(&auth(), 4).unwrap_err();
    assert!(
        matches!(e, DestroyError::Failed(t) if t.function == TokenFunction::DestroyObject
            && t.ckr == ckr::KEY_HANDLE_INVALID),
        "{e:?}"
    );
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(last.operation, Operation::KeyDestroy);
    assert!(matches!(last.outcome, Outcome::Refused(Error::Token(_))));
}

#[test]
fn a_locked_core_destroys_nothing_and_records_nothing() {
    let mut core = core();
    let records = core.audit_sink().records().len();
    assert_eq!(
        core.destroy_key(&etk(), 1),
        Err(DestroyError::NotAsked(Error::Locked))
    );
    assert_eq!(core.audit_sink().records().len(), records);
    assert!(!core
        .token()
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Destroy(_))));
}

#[test]
fn no_record_no_destruction() {
    let mut core = unlocked();
    core.audit_sink().set_failing(true);
    assert_eq!(
        core.destroy_key(&etk(), 1),
        Err(DestroyError::NotAsked(Error::AuditUnavailable))
    );
    core.audit_sink().set_failing(false);
    assert!(!core
        .token()
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Destroy(_))));
    // Once the chain takes records again, the destruction goes ahead.
    assert_eq!(core.destroy_key(&etk(), 2), Ok(1));
}

/// The token destroyed the key but its outcome could not be recorded: the error says so
/// (the key is gone), and the chain shows the use without an outcome.
#[test]
fn a_destruction_whose_outcome_is_not_recorded_says_the_key_is_gone() {
    let mut core = unlocked();
    let before = core.audit_sink().records().len();
    core.audit_sink().fail_after(1);
    assert_eq!(
        core.destroy_key(&etk(), 1),
        Err(DestroyError::OutcomeUnrecorded { destroyed: Ok(1) })
    );
    core.audit_sink().set_failing(false);
    assert_eq!(core.token().calls().last(), Some(&Call::Destroy(etk())));
    use etee_custody::Token;
    assert!(core.token().key_kind(&etk()).is_none(), "the key is gone");
    let records = &core.audit_sink().records()[before..];
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].operation, records[0].outcome),
        (Operation::KeyDestroy, Outcome::Admitted)
    );
}
