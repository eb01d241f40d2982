//! `DescribeKey`: what the token says about a key's custody, for an attestation. The same
//! gates as a key use (lock, a rule for the client and key, its budget), the key known,
//! nothing used, and one record on the chain whatever the outcome.

mod common;
use common::*;

use etee_custody::audit::{verify_chain_to, Operation, Outcome};
use etee_custody::insecure::Call;
use etee_custody::policy::{Budget, Policy};
use etee_custody::token::{KeyFacts, KeyKind};
use etee_custody::wire::{Error, Request, Response};
use etee_custody::{ClientId, KeyId};

fn describe(client: ClientId, key: KeyId) -> Request {
    Request::DescribeKey { client, key }
}

/// The last record: one `DescribeKey` by `client` about `key` with `outcome`.
fn assert_recorded(core: &Core, client: &ClientId, key: &KeyId, outcome: Outcome) {
    let last = core.audit_sink().records().last().unwrap();
    assert_eq!(last.operation, Operation::DescribeKey);
    assert_eq!(last.client.as_ref(), Some(client));
    assert_eq!(last.key.as_ref(), Some(key));
    assert_eq!(last.outcome, outcome);
}

#[test]
fn a_client_with_a_rule_learns_the_facts_and_uses_nothing() {
    for (key, kind) in [
        (auth(), KeyKind::Authentication),
        (etk(), KeyKind::Encryption),
        (kgss(), KeyKind::Wrapping),
    ] {
        let mut core = unlocked();
        let records = core.audit_sink().records().len();
        let answer = call(&mut core, &describe(app(), key.clone()), 5);
        // The insecure token holds plain bytes it never generated: it says so.
        assert_eq!(
            answer,
            Response::KeyFacts(KeyFacts {
                kind,
                sensitive: Some(false),
                extractable: Some(true),
                never_extractable: Some(false),
                local: Some(false),
            })
        );
        assert!(key_uses(&core).is_empty(), "{:?}", core.token().calls());
        assert_eq!(
            core.token().calls().last(),
            Some(&Call::Describe(key.clone()))
        );
        // One record, on the chain.
        assert_eq!(core.audit_sink().records().len(), records + 1);
        assert_recorded(&core, &app(), &key, Outcome::Success);
        let head = core.audit_head();
        assert_eq!(
            verify_chain_to(core.audit_sink().records(), &head),
            Ok(core.audit_sink().records().len() as u64)
        );
    }
}

#[test]
fn without_a_rule_nothing_is_said_about_the_key_even_whether_it_exists() {
    let mut core = unlocked();
    // `other` has a rule for the old ETK key only; the standard policy has no rule for
    // "no-such-key" at all.
    for (client, key) in [
        (other(), auth()),
        (other(), etk()),
        (app(), key("no-such-key")),
    ] {
        let calls = core.token().calls_total();
        assert_eq!(
            call(&mut core, &describe(client.clone(), key.clone()), 5),
            Response::Error(Error::PolicyDenied)
        );
        assert_eq!(core.token().calls_total(), calls, "the token is not asked");
        assert_recorded(&core, &client, &key, Outcome::Refused(Error::PolicyDenied));
    }
}

#[test]
fn a_rule_that_allows_no_use_does_not_let_a_client_ask() {
    let mut policy = Policy::deny_all();
    policy
        .allow(rule(app(), auth(), false, false, GENEROUS))
        .unwrap();
    let mut core = unlocked_with(policy);
    assert_eq!(
        call(&mut core, &describe(app(), auth()), 5),
        Response::Error(Error::PolicyDenied)
    );
}

#[test]
fn a_rule_for_a_key_the_token_does_not_have_is_an_unknown_key() {
    let mut policy = policy();
    policy
        .allow(rule(app(), key("gone"), true, false, GENEROUS))
        .unwrap();
    let mut core = unlocked_with(policy);
    assert_eq!(
        call(&mut core, &describe(app(), key("gone")), 5),
        Response::Error(Error::UnknownKey)
    );
    assert_recorded(
        &core,
        &app(),
        &key("gone"),
        Outcome::Refused(Error::UnknownKey),
    );
}

#[test]
fn a_locked_core_says_nothing() {
    let mut core = core();
    assert_eq!(
        call(&mut core, &describe(app(), auth()), 5),
        Response::Error(Error::Locked)
    );
    assert_recorded(&core, &app(), &auth(), Outcome::Refused(Error::Locked));
    assert!(!core
        .token()
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Describe(_))));
}

#[test]
fn asking_spends_the_rule_s_budget() {
    let mut policy = Policy::deny_all();
    let once = Budget {
        burst: 1,
        per_second: 0,
    };
    policy
        .allow(rule(app(), auth(), true, false, once))
        .unwrap();
    let mut core = unlocked_with(policy);
    assert!(matches!(
        call(&mut core, &describe(app(), auth()), 5),
        Response::KeyFacts(_)
    ));
    let refused = call(&mut core, &describe(app(), auth()), 6);
    assert!(
        matches!(refused, Response::Error(Error::RateLimited { .. })),
        "{refused:?}"
    );
    // And the budget it spent is the key's: no signature either.
    assert!(matches!(
        call(&mut core, &sign(app(), auth(), [1; 32]), 7),
        Response::Error(Error::RateLimited { .. })
    ));
}

#[test]
fn the_frame_path_answers_the_same() {
    let mut core = unlocked();
    let frame = encode(&describe(app(), auth()));
    let answer = call_raw(&mut core, &frame, 5);
    let decoded = etee_custody::wire::decode_response(&answer).unwrap();
    assert!(
        matches!(decoded, Response::KeyFacts(f) if f.kind == KeyKind::Authentication),
        "{decoded:?}"
    );
}
