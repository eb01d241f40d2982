//! The policy table and its token buckets, on their own.

mod common;
use common::*;

use etee_custody::config::MAX_POLICY_RULES;
use etee_custody::policy::{Budget, Denial, KeyUse, Policy, PolicyError};

#[test]
fn default_deny() {
    let p = Policy::deny_all();
    assert_eq!(
        p.permit(&app(), &auth(), KeyUse::Sign).unwrap_err(),
        Denial::Denied
    );
    assert_eq!(
        policy()
            .permit(&app(), &auth(), KeyUse::Decrypt)
            .unwrap_err(),
        Denial::Denied
    );
    assert!(policy().permit(&app(), &auth(), KeyUse::Sign).is_ok());
}

#[test]
fn one_rule_per_client_and_key_and_a_bounded_table() {
    let mut p = policy();
    assert_eq!(
        p.allow(rule(app(), auth(), false, true, GENEROUS)),
        Err(PolicyError::Duplicate)
    );
    let mut p = Policy::deny_all();
    for i in 0..MAX_POLICY_RULES {
        p.allow(rule(
            client(&format!("c{i}")),
            auth(),
            true,
            false,
            GENEROUS,
        ))
        .unwrap();
    }
    assert_eq!(
        p.allow(rule(app(), auth(), true, false, GENEROUS)),
        Err(PolicyError::Full)
    );
    assert_eq!(p.rules().count(), MAX_POLICY_RULES);
}

fn spend(p: &mut Policy, now: u64) -> Result<(), Denial> {
    let grant = p.permit(&app(), &auth(), KeyUse::Sign)?;
    p.spend(grant, now)
}

fn with_budget(burst: u32, per_second: u32) -> Policy {
    let mut p = Policy::deny_all();
    p.allow(rule(
        app(),
        auth(),
        true,
        false,
        Budget { burst, per_second },
    ))
    .unwrap();
    p
}

#[test]
fn bucket_refills_at_the_rate_up_to_the_burst() {
    let mut p = with_budget(3, 10); // one use per 100 ms
    for _ in 0..3 {
        spend(&mut p, 0).unwrap();
    }
    assert_eq!(
        spend(&mut p, 0),
        Err(Denial::RateLimited {
            retry_after_ms: 100
        })
    );
    assert_eq!(
        spend(&mut p, 30),
        Err(Denial::RateLimited { retry_after_ms: 70 })
    );
    spend(&mut p, 100).unwrap();
    // A long pause refills to the burst, no more.
    for _ in 0..3 {
        spend(&mut p, 1_000_000).unwrap();
    }
    assert!(spend(&mut p, 1_000_000).is_err());
}

/// A clock stepped back refills nothing at once, and the budget refills again from the
/// new time: not stuck until the clock catches up with the time before the step (an hour
/// back would otherwise refuse every use past the burst for an hour).
#[test]
fn a_clock_going_back_refills_nothing_and_does_not_stop_the_refill() {
    let mut p = with_budget(1, 1);
    spend(&mut p, 5_000).unwrap();
    assert!(spend(&mut p, 0).is_err());
    assert_eq!(
        spend(&mut p, 999),
        Err(Denial::RateLimited { retry_after_ms: 1 })
    );
    spend(&mut p, 1_000).unwrap();
    // An hour back, after the burst is spent: one use a second again from there.
    let mut p = with_budget(3, 1);
    for _ in 0..3 {
        spend(&mut p, 3_600_000).unwrap();
    }
    assert!(spend(&mut p, 0).is_err());
    spend(&mut p, 1_000).unwrap();
    assert!(spend(&mut p, 1_500).is_err());
    spend(&mut p, 2_000).unwrap();
    // Callers whose times reach the core slightly out of order refill nothing twice.
    let mut p = with_budget(1, 1);
    spend(&mut p, 10_000).unwrap();
    assert!(spend(&mut p, 9_500).is_err());
    assert!(
        spend(&mut p, 10_999).is_err(),
        "refilled from 10 000, not from 9 500"
    );
    spend(&mut p, 11_000).unwrap();
}

#[test]
fn zero_rate_is_a_total() {
    let mut p = with_budget(2, 0);
    spend(&mut p, 0).unwrap();
    spend(&mut p, u64::MAX).unwrap();
    assert_eq!(
        spend(&mut p, u64::MAX),
        Err(Denial::RateLimited {
            retry_after_ms: u64::MAX
        })
    );
    let mut p = with_budget(0, 5);
    assert_eq!(
        spend(&mut p, 1_000),
        Err(Denial::RateLimited {
            retry_after_ms: u64::MAX
        })
    );
}

#[test]
fn extreme_values_do_not_overflow() {
    let mut p = with_budget(u32::MAX, u32::MAX);
    spend(&mut p, 0).unwrap();
    spend(&mut p, u64::MAX).unwrap();
    spend(&mut p, u64::MAX).unwrap();
}

/// Uses recorded before a restart are spent again, at their times, so a restart refills
/// no more than the time since them would have.
#[test]
fn uses_before_a_restart_count_against_the_budget() {
    let mut p = with_budget(3, 10); // one use per 100 ms
    for at in [0, 10, 20] {
        p.replay(&app(), &auth(), Some(KeyUse::Sign), at);
    }
    // 3 - 3 uses + 0.2 refilled by t = 20.
    assert_eq!(
        spend(&mut p, 20),
        Err(Denial::RateLimited { retry_after_ms: 80 })
    );
    spend(&mut p, 100).unwrap();

    // Uses no rule allows now, or of another operation, change nothing.
    let mut p = with_budget(1, 1);
    p.replay(&app(), &auth(), Some(KeyUse::Decrypt), 0);
    p.replay(&app(), &etk(), Some(KeyUse::Sign), 0);
    p.replay(&client("other"), &auth(), Some(KeyUse::Sign), 0);
    spend(&mut p, 0).unwrap();

    // More recorded uses than the burst leave the budget empty, no lower.
    let mut p = with_budget(2, 1);
    for _ in 0..5 {
        p.replay(&app(), &auth(), Some(KeyUse::Sign), 1_000);
    }
    assert!(spend(&mut p, 1_999).is_err());
    spend(&mut p, 2_000).unwrap();

    // A question about the key (`DescribeKey`) spends from the key's rule, whatever use
    // it allows; not from another key's.
    let mut p = with_budget(1, 1);
    p.replay(&app(), &etk(), None, 0);
    spend(&mut p, 0).unwrap();
    let mut p = with_budget(1, 1);
    p.replay(&app(), &auth(), None, 0);
    assert!(spend(&mut p, 0).is_err());

    // A total (no refill) stays spent.
    let mut p = with_budget(2, 0);
    p.replay(&app(), &auth(), Some(KeyUse::Sign), 0);
    p.replay(&app(), &auth(), Some(KeyUse::Sign), 5);
    assert!(spend(&mut p, 1_000_000).is_err());
}

#[test]
fn the_replay_window_is_the_longest_refill() {
    assert_eq!(Policy::deny_all().replay_window_ms(), Some(0));
    assert_eq!(with_budget(3, 10).replay_window_ms(), Some(300));
    assert_eq!(with_budget(10_000, 1_000).replay_window_ms(), Some(10_000));
    assert_eq!(with_budget(1, 3).replay_window_ms(), Some(334));
    assert_eq!(with_budget(2, 0).replay_window_ms(), None);
    let mut p = with_budget(3, 10);
    p.allow(rule(
        app(),
        etk(),
        false,
        true,
        Budget {
            burst: 5,
            per_second: 1,
        },
    ))
    .unwrap();
    assert_eq!(p.replay_window_ms(), Some(5_000));
    assert_eq!(
        with_budget(u32::MAX, 1).replay_window_ms(),
        Some(u64::from(u32::MAX) * 1000)
    );
}

/// Which audit records stand for a spent budget use: key uses' use records only.
#[test]
fn budget_uses_are_the_admitted_key_uses() {
    use etee_custody::audit::{AuditHead, Operation, Outcome};
    use etee_custody::token::{TokenError, TokenFunction};
    use etee_custody::wire::Error;
    use etee_custody::AuditRecord;
    let record = |operation, outcome, client: Option<_>, key: Option<_>| AuditRecord {
        sequence: 0,
        time_ms: 7,
        client,
        operation,
        key,
        input_digest: [0; 32],
        outcome,
        prev_hash: AuditHead::GENESIS.hash,
    };
    for (operation, usage) in [
        (Operation::SignPssSha256, KeyUse::Sign),
        (Operation::DecryptPkcs1v15, KeyUse::Decrypt),
        (Operation::WrapSecret, KeyUse::Wrap),
        (Operation::UnwrapSecret, KeyUse::Unwrap),
    ] {
        let r = record(operation, Outcome::Admitted, Some(app()), Some(auth()));
        assert_eq!(r.budget_use(), Some((&app(), &auth(), Some(usage))));
        let r = record(operation, Outcome::Success, Some(app()), Some(auth()));
        assert_eq!(r.budget_use(), None, "an outcome is not a second use");
    }
    for operation in [Operation::Unlock, Operation::KeyDestroy] {
        let r = record(operation, Outcome::Admitted, Some(app()), Some(auth()));
        assert_eq!(r.budget_use(), None, "{operation:?}");
    }
    // A question about a key spends a use once it passed the policy and the budget: when
    // answered, or when the token failed; not when refused before.
    let token_failed = Outcome::Refused(Error::Token(TokenError::new(
        TokenFunction::GetAttributeValue,
        0x30,
    )));
    for outcome in [Outcome::Success, token_failed] {
        let r = record(Operation::DescribeKey, outcome, Some(app()), Some(auth()));
        assert_eq!(r.budget_use(), Some((&app(), &auth(), None)), "{outcome:?}");
    }
    for outcome in [
        Outcome::Admitted,
        Outcome::Refused(Error::PolicyDenied),
        Outcome::Refused(Error::Locked),
        Outcome::Refused(Error::UnknownKey),
        Outcome::Refused(Error::RateLimited { retry_after_ms: 5 }),
    ] {
        let r = record(Operation::DescribeKey, outcome, Some(app()), Some(auth()));
        assert_eq!(r.budget_use(), None, "{outcome:?}");
    }
}
