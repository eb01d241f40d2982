//! The split flow for concurrent callers (admit → execute on the caller's token handle →
//! conclude → release) answers and records exactly as the one-call flow, refuses at
//! admission without touching any token, and withholds a result whose record is not
//! durable.

mod common;

use common::*;
use etee_custody::audit::{AuditError, AuditRecord, Outcome};
use etee_custody::custody::Admission;
use etee_custody::insecure::InsecureMemoryToken;
use etee_custody::token::{ckr, TokenError, TokenFunction};
use etee_custody::wire::{Error, Request, Response};
use etee_custody::Token;

/// A second handle on the same (insecure) token, logged in: what a concurrent caller holds.
fn handle() -> InsecureMemoryToken {
    let mut t = token();
    t.login(PIN).unwrap();
    t.clear_calls();
    t
}

/// One request through the split flow, the token operation on `handle`.
fn split(
    core: &mut Core,
    handle: &mut InsecureMemoryToken,
    request: &Request,
    now: u64,
) -> Response {
    let concluded = match core.admit(request, now) {
        Admission::Answered(c) => c,
        Admission::Admitted(ticket) => {
            let executed = ticket.execute(handle);
            core.conclude(executed, now)
        }
    };
    concluded.release(Ok(()))
}

fn records(core: &Core) -> Vec<AuditRecord> {
    core.audit_sink().records().to_vec()
}

#[test]
fn the_split_flow_answers_and_records_as_the_one_call_flow() {
    let requests = [
        sign(app(), auth(), [7; 32]),
        decrypt(app(), etk(), &blob_for(&etk(), b"content key 16 b")),
        // Refusals: no rule, wrong key kind, a bad blob (token error).
        sign(other(), auth(), [8; 32]),
        decrypt(app(), auth(), b"whatever"),
        decrypt(app(), etk(), &blob_for(&etk_old(), b"for the other key")),
        Request::Status,
        Request::Lock,
        sign(app(), auth(), [9; 32]),
    ];
    let mut one_call = unlocked();
    let mut split_core = unlocked();
    let mut h = handle();
    for (i, request) in requests.iter().enumerate() {
        let now = 10 + i as u64;
        let expected = one_call.handle_request(request, now);
        let got = split(&mut split_core, &mut h, request, now);
        assert_eq!(got, expected, "request {i}");
    }
    assert_eq!(records(&split_core), records(&one_call));
    assert_eq!(split_core.audit_head(), one_call.audit_head());
    // The admitted key uses (sign, decrypt, the failed decrypt, and nothing else) ran on
    // the caller's handle, never on the core's token.
    assert_eq!(h.key_uses(), 3);
    assert_eq!(split_core.token().key_uses(), 0);
}

#[test]
fn a_refusal_is_answered_at_admission_and_never_reaches_a_token() {
    let mut core = unlocked();
    let request = sign(other(), auth(), [1; 32]);
    let concluded = match core.admit(&request, 5) {
        Admission::Answered(c) => c,
        Admission::Admitted(_) => panic!("a client without a rule was admitted"),
    };
    assert_eq!(
        concluded.release(Ok(())),
        Response::Error(Error::PolicyDenied)
    );
    let last = records(&core).pop().unwrap();
    assert_eq!(last.outcome, Outcome::Refused(Error::PolicyDenied));
    assert_eq!(core.token().key_uses(), 0);
}

#[test]
fn a_result_whose_record_is_not_durable_is_withheld() {
    let mut core = unlocked();
    let mut h = handle();
    let request = decrypt(app(), etk(), &blob_for(&etk(), b"secret content k"));
    let Admission::Admitted(ticket) = core.admit(&request, 5) else {
        panic!("not admitted")
    };
    let concluded = core.conclude(ticket.execute(&mut h), 6);
    assert_eq!(
        concluded.release(Err(AuditError::Storage)),
        Response::Error(Error::AuditUnavailable)
    );
}

#[test]
fn a_token_failure_on_a_handle_is_one_uniform_decrypt_error() {
    let mut core = unlocked();
    let mut h = handle();
    let detail = TokenError::new(TokenFunction::Decrypt, ckr::DEVICE_ERROR);
    h.fail_next(detail);
    let request = decrypt(app(), etk(), &blob_for(&etk(), b"secret content k"));
    assert_eq!(
        split(&mut core, &mut h, &request, 5),
        Response::Error(Error::DecryptFailed)
    );
    // The record keeps the detail.
    let last = records(&core).pop().unwrap();
    assert_eq!(last.outcome, Outcome::Refused(Error::Token(detail)));
}

#[test]
fn requests_that_use_no_key_are_answered_at_admission() {
    let mut core = core();
    match core.admit(&unlock(PIN), 1) {
        Admission::Answered(c) => assert_eq!(c.release(Ok(())), Response::Unlocked),
        Admission::Admitted(_) => panic!("an unlock became a ticket"),
    }
    assert!(matches!(
        core.admit(&Request::Status, 2),
        Admission::Answered(_)
    ));
}
